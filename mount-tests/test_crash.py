"""Crash loop (DESIGN.md section 4, crash safety): start the daemon, run a stream of ln -s / rm / mv, kill -9
the daemon at a random moment, lazily unmount the dead mount, remount (which repairs), check the invariants:
no tagged digest lost, nothing in trash, no half-written tag, no collectable untagged digest whose tag
was removed. IMAGEFS_CRASH_ITERATIONS (default 20), IMAGEFS_CRASH_SEED."""

from __future__ import annotations

import os
import random
import time

import pytest

from pathlib import Path

from helpers import bookkeeping
from helpers import force_unmount, is_fuse_mounted, scan_store
from stressworld import StressWorld, mount_consistency, start_workers

ITERATIONS = int(os.environ.get("IMAGEFS_CRASH_ITERATIONS", "20"))
SEED = int(os.environ.get("IMAGEFS_CRASH_SEED", str(int(time.time()))))


def interrupted_state(root: Path) -> list[str]:
    """What a kill -9 left behind before repair (informational): bookkeeping entries, temp files."""
    seen = []
    priv = bookkeeping(root)
    if priv.is_dir():
        for d in sorted(priv.iterdir()):
            if d.is_dir() and any(d.iterdir()):
                seen.append(f"{d.name}:{len(list(d.iterdir()))}")
    st = scan_store(root)
    if st.strays:
        seen.append(f"temp:{len(st.strays)}")
    dangling = [k for k, v in st.tags.items() if v is None]
    if dangling:
        seen.append(f"dangling:{len(dangling)}")
    return seen


@pytest.mark.slow
def test_crash_loop(store, mounter, workdir):
    rnd = random.Random(SEED)
    print(f"IMAGEFS_CRASH_SEED={SEED}")
    w = StressWorld(store, key="crash")
    mnt = workdir / "mnt"
    mnt.mkdir()
    history, states = [], []
    for i in range(ITERATIONS + 1):
        m = mounter(store, mnt)
        v = w.violations() + mount_consistency(mnt, store.root)
        assert not v, (f"iteration {i} (IMAGEFS_CRASH_SEED={SEED}; {history[-1] if history else ''}): "
                       f"after remount/repair:\n" + "\n".join(v) + "\n--- repair log:\n" + m.log_tail(30))
        priv = bookkeeping(store.root)
        # spare/<n>.slot: GC records kept for a full disk; only one in use (not starting with a zero
        # byte) is left work.
        left = [f"{d.name}/{e.name}" for d in priv.iterdir() if d.is_dir() for e in d.iterdir()
                if not (d.name == "spare" and e.read_bytes()[:1] == b"\0")] \
            if priv.is_dir() else []
        assert not left, f"iteration {i}: bookkeeping left after repair: {left}\n" + m.log_tail(30)
        assert m.stop() == 0
        if i == ITERATIONS:
            break
        w.replenish()
        m = mounter(store, mnt)
        procs = start_workers(mnt, w.spec(), rnd.choice([2, 4, 8]), 60, 1000 + i, workdir, crash=True)
        delay = 0.15 + rnd.uniform(0.0, 0.6)   # python start-up, then a random moment in the stream
        time.sleep(delay)
        m.kill9()
        for p, _ in procs:
            try:
                p.wait(timeout=15)
            except Exception:  # noqa: BLE001
                p.kill()
                p.wait()
                raise AssertionError(f"iteration {i}: a worker hung after the daemon was killed")
        force_unmount(str(mnt))
        assert not is_fuse_mounted(mnt)
        states.append(interrupted_state(store.root))
        history.append(f"iteration {i}: killed after {delay:.3f}s, left {states[-1]}")
    print("\n".join(history))


@pytest.mark.slow
def test_crash_during_promotion(workdir, images, mounter):
    """kill -9 in the middle of promoting a legacy digest with many tags into content/ (triggered by
    tagging it in another repository): after the remount every old tag still names the digest, the
    digest exists exactly once, and the new tag is either fully there or absent."""
    import threading
    from helpers import Store, scan_store
    from world import assert_tag
    rnd = random.Random(SEED + 1)
    n_tags = 150
    iterations = max(3, ITERATIONS // 2)
    seen = []
    for it in range(iterations):
        store = Store(workdir / f"promo-store-{it}", images)
        # A store with content/: a store without it stays legacy (a copy instead, below).
        os.mkdir(store.root / "content")
        hx = store.add_digest("promo", layout="legacy", repo="old.example.com/repo")
        other = store.add_digest("promo-other", layout="legacy", repo="old.example.com/repo")
        for i in range(n_tags):
            store.tag("old.example.com/repo", f"v{i}", hx, layout="legacy")
        store.tag("old.example.com/repo", "other", other, layout="legacy")
        mnt = workdir / f"promo-mnt-{it}"
        mnt.mkdir()
        m = mounter(store, mnt)
        os.makedirs(mnt / "tags/new.example.com/repo")
        res = {}

        def tag():
            try:
                os.symlink(hx, mnt / "tags/new.example.com/repo/latest")
                res["r"] = "ok"
            except OSError as e:
                res["r"] = e.errno

        t = threading.Thread(target=tag)
        t.start()
        delay = rnd.uniform(0.0, 0.15)
        time.sleep(delay)
        m.kill9()
        t.join(15)
        assert not t.is_alive(), "ln -s still blocked after the daemon was killed"
        force_unmount(str(mnt))
        pre = scan_store(store.root)
        rewritten = sum(1 for k, lay in pre.tag_layout.items() if k[0] == "old.example.com/repo" and lay == "content")
        seen.append(f"killed after {delay:.3f}s: digest at {[l[0] for l in pre.locations.get(hx, [])]}, "
                    f"{rewritten}/{n_tags + 1} tags rewritten, ln -s {res.get('r')}")
        m2 = mounter(store, mnt)
        v = check_invariants_promo(store, hx, other)
        assert not v, f"iteration {it} (killed after {delay:.3f}s, ln -s: {res}):\n" + "\n".join(v) + \
            "\n--- repair log:\n" + m2.log_tail(20)
        for i in range(0, n_tags, 37):
            assert_tag(mnt, store, "old.example.com/repo", f"v{i}", hx)
        assert_tag(mnt, store, "old.example.com/repo", "other", other)
        st = scan_store(store.root)
        if res.get("r") == "ok":
            assert st.tags.get(("new.example.com/repo", "latest")) == hx
        assert m2.stop() == 0
    print("\n".join(seen))


def test_crash_during_legacy_copy(workdir, images, mounter):
    """kill -9 around a cross-repository `ln -s` in a store without content/, which makes the new
    repository a legacy copy of the digest (issue 9, finding 7): after the remount the source keeps
    its tags, and the new tag is either there with its copy, or absent with no copy left behind."""
    import threading
    from helpers import Store, check_invariants, scan_store
    rnd = random.Random(SEED + 2)
    seen = []
    for it in range(max(3, ITERATIONS // 2)):
        store = Store(workdir / f"copy-store-{it}", images)
        hx = store.add_digest("copy", layout="legacy", repo="old.example.com/repo")
        for i in range(20):
            store.tag("old.example.com/repo", f"v{i}", hx, layout="legacy")
        mnt = workdir / f"copy-mnt-{it}"
        mnt.mkdir()
        # The main mount's rootfs/: a kill -9 in the first milliseconds, while the rootfs-mount
        # binder looks up a tree through its own connection, left the daemon a zombie with that
        # thread stuck (seen here; the README's known hang of the image-tree connection).
        m = mounter(store, mnt, extra_args=["--no-rootfs-mounts"])
        os.makedirs(mnt / "tags/new.example.com/repo")
        res = {}

        def tag():
            try:
                for i in range(20):
                    os.symlink(hx, mnt / f"tags/new.example.com/repo/n{i}")
                    os.unlink(mnt / f"tags/new.example.com/repo/n{i}")
                res["r"] = "ok"
            except OSError as e:
                res["r"] = e.errno

        t = threading.Thread(target=tag)
        t.start()
        delay = rnd.uniform(0.0, 0.05)
        time.sleep(delay)
        m.kill9()
        t.join(15)
        assert not t.is_alive(), "ln -s still blocked after the daemon was killed"
        force_unmount(str(mnt))
        m2 = mounter(store, mnt, extra_args=["--no-rootfs-mounts"])
        st = scan_store(store.root)
        v = check_invariants(store.root, ever_tagged={hx})
        new = sorted(t for (r, t), h in st.tags.items() if r == "new.example.com/repo" and h == hx)
        locs = st.locations.get(hx, [])
        if ("legacy", "old.example.com/repo") not in locs:
            v.append(f"the source directory is gone: {locs}")
        if sum(1 for (r, _), h in st.tags.items() if r == "old.example.com/repo" and h == hx) != 20:
            v.append("the source lost tags")
        if (("legacy", "new.example.com/repo") in locs) != bool(new):
            v.append(f"copy {locs} vs new tags {new}")
        if "content" in os.listdir(store.root):
            v.append("the legacy store got a content/ directory")
        seen.append(f"killed after {delay:.3f}s: {locs}, new tags {new}, ln -s {res.get('r')}")
        assert not v, f"iteration {it}:\n" + "\n".join(v) + "\n--- repair log:\n" + m2.log_tail(20)
        assert m2.stop() == 0
    print("\n".join(seen))


def check_invariants_promo(store, hx, other):
    from helpers import check_invariants, scan_store
    v = check_invariants(store.root, ever_tagged={hx, other})
    st = scan_store(store.root)
    if len(st.locations.get(hx, [])) != 1:
        v.append(f"digest {hx[:12]} at {st.locations.get(hx)} (expected exactly one place)")
    missing = [t for t in (f"v{i}" for i in range(150)) if st.tags.get(("old.example.com/repo", t)) != hx]
    if missing:
        v.append(f"{len(missing)} old tags lost or dangling, e.g. {missing[:5]}")
    return v
