"""Issue 9: living beside the real hypeman (../shared/HYPEMAN.md, DESIGN.md 1, 3, 4).

`hypeman.py` re-implements how each hypeman version writes and lists the store (no lock, legacy
remove-then-create retag, content tag-before-ready with staging names, DeleteImage = unlink, count,
RemoveAll, layers/). This file

- races that writer against the mount, pair by pair, for IMAGEFS_RACES races each (default 200),
  once with image trees mounted on their own connection and once with rootfs/ served by the main
  mount (`--no-rootfs-mounts`), and prints per pair and way: tagged images lost, directories removed while a tag named them, images deleted
  that no one removed, dangling tags imagefs could have prevented, unpreventable races (and how many
  of them were logged, counted in the metrics and reported by fsck). The "must be 0" ones are asserted.
- pins every numbered finding of issue 9 with a test that sets up the exact order of events.

Tests that fail on today's main carry `xfail(strict=True, reason="issue 9 finding N: ...")`: when a
fix lands, its test XPASSes, which fails the run until the marker is removed.

How a race is run: hypeman's operation runs in a thread, the mount's in the main thread after a
random delay; hypeman takes a random pause (up to GAP) at the points where its goroutine can be
descheduled between two system calls (`Hypeman.gaps`), as on a loaded machine.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import threading
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import helpers
from helpers import (bookkeeping, gc_intent, imagefs_bin, is_fuse_mounted, mount_target, mounts_at, require,
                     scan_store, sh, wait_trash_empty)
from hypeman import Content, Legacy, NotFound, manifest_hex, normalize_repo, phantoms

RACES = int(os.environ.get("IMAGEFS_RACES", "200"))
GAP = float(os.environ.get("IMAGEFS_RACE_GAP", "0.002"))   # seconds: max pause at a preemption point
KEYS = ["hm-a", "hm-b", "hm-c"]   # real erofs images (ImageCache keys)
# How rootfs/ is served: image trees mounted on their own connection (the default as root, with the
# kernel's mount API) or the main mount (--no-rootfs-mounts). Every race pair and finding 5 run both.
# image-trees: FUSE image trees, whose images the daemon keeps in its trash while in use (what these
# tests check); the kernel's erofs trees hold the file in the kernel (test_kernel_erofs.py).
SERVED_BY = {"image-trees": ["--rootfs-mounts", "fuse"], "main-mount": ["--no-rootfs-mounts"]}
VERSIONS = {"legacy": Legacy, "content": Content}


def xfail(n: int, why: str):
    return pytest.mark.xfail(strict=True, reason=f"issue 9 finding {n}: {why}")


eventually = functools.partial(helpers.eventually, step=0.01, ignore=OSError)


def T(mnt, repo, tag=None) -> Path:
    p = Path(mnt) / "tags" / repo
    return p / tag if tag else p


def imagefs(*args, timeout=120):
    return sh(imagefs_bin(), *args, timeout=timeout)


def metrics(mnt) -> str:
    try:
        return (Path(mnt) / ".imagefs" / "metrics").read_text()
    except OSError:
        return ""


def metric_value(mnt, name) -> float | None:
    """The value of the unlabelled metric `name`, None if absent."""
    for line in metrics(mnt).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def dangling_metric(mnt) -> float:
    """The sum of every metric sample whose name says 'dangling' (issue 9: 'a metric')."""
    total = 0.0
    for line in metrics(mnt).splitlines():
        if line.startswith("#") or "dangling" not in line.lower():
            continue
        try:
            total += float(line.rsplit(None, 1)[1])
        except (IndexError, ValueError):
            pass
    return total


def warned_about(log: str, tag: str) -> bool:
    """A WARN (or ERROR) line of the daemon's log that names the tag."""
    return any(tag in ln and ("WARN" in ln or "ERROR" in ln) for ln in log.splitlines())


def quick_pull(hm, repo, tag, hx, key):
    """A setup pull: every step of hypeman's, without writing layers/ (the content version)."""
    if isinstance(hm, Content):
        return hm.pull(repo, tag, hx, key, layers=0)
    return hm.pull(repo, tag, hx, key)


def hexes(n: int, prefix: str) -> list[str]:
    return [manifest_hex(f"{prefix}-{i}") for i in range(n)]


# ------------------------------------------------------------------------------------ race machinery
@pytest.fixture(params=list(SERVED_BY))
def served_by(request) -> str:
    return request.param


def race_mount(store, mounter, served_by):
    """Mounts the store for a race pair, rootfs/ served as `served_by` says."""
    m = mounter(store, extra_args=SERVED_BY[served_by])
    if served_by == "image-trees":
        def trees_mounted():
            return any(is_fuse_mounted(m.mnt / "digests" / hx / "rootfs") for hx in os.listdir(m.mnt / "digests"))
        require(eventually(trees_mounted, timeout=3.0),
                "image trees are not mounted on their own here (needs root and the kernel's mount API)")
    return m


def race(h, m, jitter: float):
    """Runs h() in a thread and m() in this one after a random delay up to jitter; returns
    (h's result or exception, m's result or exception, monotonic times m began and returned)."""
    out: dict = {}
    barrier = threading.Barrier(2)

    def th():
        barrier.wait()
        try:
            out["h"] = h()
        except Exception as e:  # noqa: BLE001 - hypeman only logs its errors
            out["h"] = e

    t = threading.Thread(target=th, daemon=True)
    t.start()
    barrier.wait()
    time.sleep(random.uniform(0, jitter))
    out["m_start"] = time.monotonic()
    try:
        out["m"] = m()
    except OSError as e:
        out["m"] = e
    out["m_end"] = time.monotonic()
    t.join(30)
    assert not t.is_alive(), "hypeman's operation hung"
    return out.get("h"), out["m"], out["m_start"], out["m_end"]


@dataclass
class Counts:
    pair: str
    races: int = 0
    lost: int = 0                 # a tag names it, it is gone, hypeman did not remove it
    removed_while_named: int = 0  # imagefs removed it while a tag in the store named it
    deleted_unremoved: int = 0    # gone, though no one (imagefs's rm, hypeman's DeleteImage) removed it
    dangling_preventable: int = 0
    unpreventable: int = 0
    logged: int = 0
    fsck_reported: int = 0
    metric: float = 0.0
    extra: dict = field(default_factory=dict)

    def line(self) -> str:
        ex = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"[{self.pair}] races={self.races} tagged-images-lost={self.lost} "
                f"dirs-removed-while-tagged={self.removed_while_named} deleted-by-no-one={self.deleted_unremoved} "
                f"dangling-preventable={self.dangling_preventable} unpreventable={self.unpreventable} "
                f"(logged {self.logged}, fsck {self.fsck_reported}, metric {self.metric:g}) {ex}").rstrip()


def report(capsys, c: Counts):
    with capsys.disabled():
        print("\n" + c.line(), flush=True)


def converge_failures(root, mnt, timeout=1.5) -> list[str]:
    """The mount shows exactly the store's tags that name a digest directory (within timeout)."""
    def diff():
        st = scan_store(root)
        want = {k for k, v in st.tags.items() if v}
        have = set()
        base = Path(mnt) / "tags"
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            for n in dirnames + filenames:
                if os.path.islink(os.path.join(dirpath, n)):
                    have.add(("" if rel == "." else rel, n))
        return sorted(f"missing {k}" for k in want - have) + sorted(f"extra {k}" for k in have - want)
    out = diff()
    t0 = time.monotonic()
    while out and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
        out = diff()
    return out


def bystander(hm, root) -> str:
    """A digest-only image (content) or an untagged digest (legacy) that nobody removes: it must survive."""
    hx = manifest_hex("bystander")
    hm.pull("docker.io/library/bystander", None, hx, KEYS[0])
    return hx


def bystander_gone(hm, root, hx) -> int:
    d = hm.content_dir(hx) if isinstance(hm, Content) else root / "docker.io/library/bystander" / hx
    return 0 if d.is_dir() else 1


# ==================================================================================== the race pairs
@pytest.mark.races
def test_race_legacy_retag_vs_rm_sibling(store, mounter, capsys, served_by):
    """Legacy retag (remove, then create) of tag a x `rm` of sibling tag b through the mount."""
    root = store.root
    hm = Legacy(root, store.images)
    repo = "docker.io/library/retag"
    hs = hexes(RACES, "retag")
    for i, hx in enumerate(hs):
        hm.pull(repo, f"a{i}", hx, KEYS[i % 3])
        hm.retag(repo, f"b{i}", hx)
    by = bystander(hm, root)
    mnt = race_mount(store, mounter, served_by).mnt
    hm.gaps = {"retag": GAP}
    c = Counts(f"legacy retag x rm sibling, {served_by}")
    for i, hx in enumerate(hs):
        d = root / repo / hx

        def mount_rm(i=i, d=d):
            os.unlink(T(mnt, repo, f"b{i}"))
            # right after rm returned: was the directory gone while a tag named it?
            return (not d.exists()) and os.path.lexists(root / repo / f"a{i}")

        h, m, _, _ = race(lambda i=i, hx=hx: hm.retag(repo, f"a{i}", hx), mount_rm, GAP)
        c.races += 1
        assert not isinstance(m, Exception), f"race {i}: rm failed: {m}"
        if m is True:
            c.removed_while_named += 1
        if not d.exists() and os.path.lexists(root / repo / f"a{i}"):
            c.lost += 1
    c.deleted_unremoved = bystander_gone(hm, root, by)
    c.extra["not-converged"] = len(converge_failures(root, mnt))
    # How many rm's landed in hypeman's gap (the mount put their collection off), and how those
    # ended once the store was quiet: each must be dropped, as tag a came back.
    assert eventually(lambda: metric_value(mnt, "imagefs_gc_deferred") == 0, timeout=5.0), metrics(mnt)
    for name in ("deferred", "deferred_collected", "deferred_dropped"):
        c.extra[f"gc-{name.replace('_', '-')}"] = int(metric_value(mnt, f"imagefs_gc_{name}_total") or 0)
    report(capsys, c)
    assert (c.lost, c.removed_while_named, c.deleted_unremoved, c.extra["not-converged"]) == (0, 0, 0, 0), c.line()
    assert c.extra["gc-deferred-collected"] == 0, c.line()


@pytest.mark.parametrize("version", ["legacy", "content"])
@pytest.mark.races
def test_race_delete_image_vs_ln(store, mounter, capsys, served_by, version):
    """hypeman DeleteImage (resolve, unlink, count, RemoveAll) x `ln -s` of a new tag through the mount."""
    root = store.root
    hm = VERSIONS[version](root, store.images)
    repo = "docker.io/library/del"
    hs = hexes(RACES, f"del-{version}")
    for i, hx in enumerate(hs):
        quick_pull(hm, repo, f"a{i}", hx, KEYS[i % 3])
    by = bystander(hm, root)
    mt = race_mount(store, mounter, served_by)
    mnt = mt.mnt
    hm.gaps = {"unlink": GAP / 2, "count": 2 * GAP}
    # hypeman's counting takes a while (content: a walk of every tag): spread the ln -s over it.
    t0 = time.monotonic()
    hm.count_tags_for_digest(repo, hs[0])
    if version == "content":
        hm.content_tag_count(hs[0])
    jitter = 1.5 * GAP + 2 * (time.monotonic() - t0)
    c = Counts(f"{version} DeleteImage x ln -s, {served_by}")
    dangling_unpreventable = []
    for i, hx in enumerate(hs):
        tag = f"ln-{i:05d}-x"
        h, m, m_start, m_end = race(lambda i=i: hm.delete_image(repo, f"a{i}"),
                           lambda hx=hx, tag=tag: os.symlink(hx, T(mnt, repo, tag)), jitter)
        c.races += 1
        assert not isinstance(h, Exception), f"race {i}: DeleteImage failed: {h!r}"
        ddir = hm.content_dir(hx) if version == "content" else root / repo / hx
        tagp = (root / "repositories" / repo / tag) if version == "content" else root / repo / tag
        if isinstance(m, Exception) or not os.path.lexists(tagp) or ddir.exists():
            continue
        # The mount's tag names a directory hypeman removed.
        if h.removed and h.removeall_end and m_start > h.removeall_end:
            c.dangling_preventable += 1     # ln -s began after hypeman's RemoveAll had finished
        else:
            c.unpreventable += 1            # the tag was in before the directory was gone
            dangling_unpreventable.append(tag)
    time.sleep(1.2)
    mlog = mt.log_text()
    c.logged = sum(1 for t in dangling_unpreventable if warned_about(mlog, t))
    hidden = sum(1 for t in dangling_unpreventable if not os.path.lexists(T(mnt, repo, t)))
    c.metric = dangling_metric(mnt)
    fsck = imagefs("fsck", "--store", root)
    c.fsck_reported = sum(1 for t in dangling_unpreventable if t in fsck.stdout + fsck.stderr)
    c.deleted_unremoved = bystander_gone(hm, root, by)
    c.extra["hidden-in-mount"] = hidden
    report(capsys, c)
    assert c.dangling_preventable == 0, c.line()
    assert c.deleted_unremoved == 0, c.line()
    assert hidden == c.unpreventable, f"the mount still shows a dangling tag: {c.line()}"
    assert c.logged == c.unpreventable and c.fsck_reported == c.unpreventable, \
        f"unpreventable dangling tags must each be logged (naming the tag) and reported by fsck: {c.line()}"
    assert c.metric >= c.unpreventable, f"no metric counts the dangling tags: {c.line()}"


STAGING = re.compile(r"(\.tmp|\.tmp-.*|^\.install-.*|^\.tag-stage-.*)$")


@pytest.mark.parametrize("version", [
    pytest.param("legacy"),
    pytest.param("content"),
])
@pytest.mark.races
def test_race_pull_vs_listing(store, mounter, capsys, served_by, version):
    """A hypeman pull, step by step (first pulls into new repositories), x listings through the mount:
    digests/ shows only digest directories, a digest directory none of hypeman's staging files, and
    every pull's tag shows within a second once the pull is done."""
    root = store.root
    hm = VERSIONS[version](root, store.images)
    hm.pull("docker.io/library/seed", "v", manifest_hex(f"seed-{version}"), KEYS[0])
    mnt = race_mount(store, mounter, served_by).mnt
    hm.gaps = {"metadata-tmp": 5 * GAP, "mkfs": GAP / 4, "install": GAP, "tag-stage": GAP, "pull": GAP}
    n = max(1, RACES // 20)     # a pull is ~10 steps; every listing during it is a race
    hs = hexes(n, f"pull-{version}")
    known = {manifest_hex(f"seed-{version}")} | set(hs)
    c = Counts(f"{version} pull x listing, {served_by}")
    wrong: list[str] = []
    not_converged: list[str] = []
    for i, hx in enumerate(hs):
        repo = f"docker.io/p{i % 7}/img{i}"
        t = threading.Thread(target=hm.pull, args=(repo, "latest", hx, KEYS[i % 3]), daemon=True)
        t.start()
        while t.is_alive():
            try:
                for name in os.listdir(mnt / "digests"):
                    c.races += 1
                    if name not in known:
                        wrong.append(f"digests/{name}")
                tnames = os.listdir(T(mnt, repo)) if os.path.isdir(T(mnt, repo)) else []
                wrong += [f"tags/{repo}/{n}" for n in tnames if n != "latest"]
                names = os.listdir(mnt / "digests" / hx)
            except OSError:
                continue
            c.races += 1
            for name in names:
                if STAGING.search(name):
                    wrong.append(f"digests/{hx[:12]}/{name}")
            time.sleep(0.0005)
        t.join(30)
        ok = eventually(lambda: os.readlink(T(mnt, repo, "latest")) == mount_target(repo, hx)
                        and "rootfs" in os.listdir(T(mnt, repo, "latest")), timeout=1.0)
        if not ok:
            not_converged.append(f"{repo}:latest: {late_state(mnt, repo, hx)}")
    st = scan_store(root)
    c.lost = sum(1 for v in st.tags.values() if v is None)
    c.extra["wrong-entries"] = len(wrong)
    c.extra["tags-not-shown-within-1s"] = len(not_converged)
    report(capsys, c)
    assert not wrong, f"{len(wrong)} wrong entries, e.g. {sorted(set(wrong))[:8]}: {c.line()}"
    assert not not_converged, f"pulls whose tag the mount did not show within 1 s: {not_converged[:8]}"
    assert c.lost == 0, c.line()


def late_state(mnt, repo, hx) -> str:
    """What a late pull showed 1 s after it ended, and how long the mount took to show it all."""
    def part(f):
        try:
            return repr(f())
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
    shown = (f"readlink {part(lambda: os.readlink(T(mnt, repo, 'latest')))}, "
             f"tags/{repo} {part(lambda: os.listdir(T(mnt, repo)))}, "
             f"digests/{hx[:12]} {part(lambda: os.listdir(mnt / 'digests' / hx))}, "
             f"via tag {part(lambda: os.listdir(T(mnt, repo, 'latest')))}")
    t0 = time.monotonic()
    ok = eventually(lambda: os.readlink(T(mnt, repo, "latest")) == mount_target(repo, hx)
                    and "rootfs" in os.listdir(T(mnt, repo, "latest")), timeout=10.0, ignore=OSError)
    return f"{shown}; {'all shown after' if ok else 'still not shown after'} {time.monotonic() - t0:.2f} s more"


@pytest.mark.races
def test_race_hypeman_gc_vs_mount_gc(store, mounter, capsys, served_by):
    """Content: hypeman DeleteImage of tag a x `rm` of tag b through the mount, both last-reference
    collections of one digest. Then hypeman re-pulls every digest as a digest-only image (kept by
    hypeman) and the store is mounted again: nothing a leftover intent names may go."""
    root = store.root
    hm = Content(root, store.images)
    repo = "docker.io/library/gc"
    hs = hexes(RACES, "gc")
    for i, hx in enumerate(hs):
        quick_pull(hm, repo, f"a{i}", hx, KEYS[i % 3])
        hm.retag(repo, f"b{i}", hx)
    by = bystander(hm, root)
    m1 = race_mount(store, mounter, served_by)
    mnt = m1.mnt
    hm.gaps = {"unlink": GAP, "count": GAP}
    c = Counts(f"content DeleteImage x rm (both collect), {served_by}")
    for i, hx in enumerate(hs):
        def mount_rm(i=i, hx=hx):
            os.unlink(T(mnt, repo, f"b{i}"))
            return (not hm.content_dir(hx).exists()) and any(
                os.path.lexists(root / "repositories" / repo / t) for t in (f"a{i}", f"b{i}"))
        h, m, _, _ = race(lambda i=i: hm.delete_image(repo, f"a{i}"), mount_rm, GAP)
        c.races += 1
        assert not isinstance(m, Exception), f"race {i}: rm failed: {m}"
        if m is True:
            c.removed_while_named += 1
    # Every digest lost both tags: someone must collect it (imagefs may wait for the store to be quiet).
    eventually(lambda: not any(hm.content_dir(hx).exists() for hx in hs), timeout=5.0, step=0.1)
    left = [hx for hx in hs if hm.content_dir(hx).exists()]
    c.extra["not-collected"] = len(left)
    # hypeman pulls each again by digest: a ready, untagged image hypeman keeps.
    for i, hx in enumerate(hs):
        quick_pull(hm, repo, None, hx, KEYS[i % 3])
    m1.stop()
    intents = bookkeeping(root) / "intents"
    c.extra["intents-left"] = len(os.listdir(intents)) if intents.is_dir() else 0
    race_mount(store, mounter, served_by)
    time.sleep(0.5)
    c.deleted_unremoved = sum(1 for hx in hs if not hm.content_dir(hx).is_dir()) + bystander_gone(hm, root, by)
    report(capsys, c)
    assert (c.removed_while_named, c.deleted_unremoved, len(left)) == (0, 0, 0), c.line()


@pytest.mark.parametrize("version", [
    "legacy",
    pytest.param("content"),
])
@pytest.mark.races
def test_race_listing_vs_collections_in_use(store, mounter, capsys, served_by, version):
    """hypeman's listing x collections through the mount, every other image kept in use (an open
    rootfs.erofs): the listing never shows an entry that is no image of the store."""
    root = store.root
    hm = VERSIONS[version](root, store.images)
    repo = "docker.io/library/inuse"
    n = max(2, RACES // 2)      # a listing walks the whole store: fewer, longer races
    hs = hexes(n, f"inuse-{version}")
    for i, hx in enumerate(hs):
        quick_pull(hm, repo, f"t{i}", hx, KEYS[i % 3])
    mnt = race_mount(store, mounter, served_by).mnt
    held = [os.open(mnt / "digests" / hx / "rootfs.erofs", os.O_RDONLY) for hx in hs[::2]]
    c = Counts(f"{version} listing x collections in use, {served_by}")
    seen: list = []
    try:
        for i, hx in enumerate(hs):
            h, m, _, _ = race(hm.list_images, lambda i=i: os.unlink(T(mnt, repo, f"t{i}")), 0.005)
            c.races += 1
            assert not isinstance(m, Exception), f"race {i}: rm failed: {m}"
            assert not isinstance(h, Exception), f"race {i}: listing failed: {h!r}"
            seen += phantoms(h, root)
        after = phantoms(hm.list_images(), root)       # all collected, half of them still in use
        seen += after
    finally:
        for fd in held:
            os.close(fd)
    wait_trash_empty(root)
    final = phantoms(hm.list_images(), root)
    c.extra["phantoms-during"] = len(seen)
    c.extra["phantoms-after-release"] = len(final)
    c.extra["collected"] = sum(1 for hx in hs if not (hm.content_dir(hx) if version == "content"
                                                        else root / repo / hx).exists())
    report(capsys, c)
    assert not seen and not final, \
        f"phantom images in hypeman's listing, e.g. {[(p.name, p.source) for p in (seen + final)[:4]]}: {c.line()}"
    assert c.extra["collected"] == n, c.line()


# ============================================================================ findings, one test each
@pytest.mark.parametrize("intent", ["current", "older imagefs"])
def test_finding1_leftover_intent_never_deletes_digest_only_image(store, mounter, intent):
    root = store.root
    hm = Content(root, store.images)
    repo = "docker.io/library/f1"
    hx = manifest_hex("f1")
    hm.pull(repo, "t", hx, KEYS[0])
    m = mounter(store)
    m.stop()
    # imagefs recorded its GC intent for the directory, then hypeman's GC removed it first: the
    # rename into the trash found nothing. The intent is left behind (a crash, or an older
    # imagefs that kept it "to retry at next mount").
    if intent == "current":
        gc_intent(root, f"content/{hx}")
    else:
        intents = root / ".imagefs" / "intents"
        intents.mkdir(parents=True, exist_ok=True)
        os.symlink(f"content/{hx}", intents / f"{time.time_ns():x}-{os.getpid()}-0-intent.gc")
    hm.delete_image(repo, "t")
    assert not hm.content_dir(hx).exists()
    # hypeman pulls the digest again by digest: ready, no tag, kept by hypeman.
    assert hm.pull(repo, None, hx, KEYS[0]) == "ready"
    mnt = mounter(store).mnt
    assert hm.content_dir(hx).is_dir(), "the next mount replayed the stale intent and deleted an image nobody removed"
    assert hx in os.listdir(mnt / "digests")


def test_finding2_legacy_retag_never_costs_the_image(store, mounter):
    root = store.root
    hm = Legacy(root, store.images)
    repo = "docker.io/library/f2"
    hx = manifest_hex("f2")
    hm.pull(repo, "a", hx, KEYS[0])
    hm.retag(repo, "b", hx)
    mnt = mounter(store).mnt
    assert os.path.isdir(T(mnt, repo, "b"))
    rm = {}
    # The rm through the mount lands between hypeman's unlink of a and its symlink of a.
    hm.hooks["retag"] = lambda: rm.setdefault("r", os.unlink(T(mnt, repo, "b")))
    hm.retag(repo, "a", hx)
    assert "r" in rm
    assert (root / repo / hx).is_dir(), "the image hypeman was re-tagging was collected"
    time.sleep(2.5)     # a deferred collection, retried once the store is quiet, must be dropped
    assert (root / repo / hx / "rootfs.erofs").is_file(), "collected later although tag a names it"
    assert eventually(lambda: os.readlink(T(mnt, repo, "a")) == mount_target(repo, hx))


def test_finding2_a_deferred_collection_is_done_once_the_store_is_quiet(store, mounter):
    """hypeman moves tag a to another image (remove, then create) while the mount removes b, the
    image's other tag: the rm is put off, and the image is collected once the store is quiet, as
    its own rm would have: gone from the store and digests/, logged, counted."""
    root = store.root
    hm = Legacy(root, store.images)
    repo = "docker.io/library/f2q"
    hx, other = manifest_hex("f2q"), manifest_hex("f2q-other")
    hm.pull(repo, "a", hx, KEYS[0])
    hm.retag(repo, "b", hx)
    hm.pull(repo, "c", other, KEYS[1])
    m = mounter(store)
    mnt = m.mnt
    assert hx in os.listdir(mnt / "digests")
    rm = {}
    hm.hooks["retag"] = lambda: rm.setdefault("r", os.unlink(T(mnt, repo, "b")))
    hm.retag(repo, "a", other)      # afterwards no tag names hx
    assert "r" in rm
    assert (root / repo / hx).is_dir(), "collected at once although another writer had just untagged it"
    assert eventually(lambda: not (root / repo / hx).exists(), timeout=4.0), \
        "the deferred collection was never done:\n" + m.log_tail()
    assert eventually(lambda: hx not in os.listdir(mnt / "digests"), timeout=1.0)
    assert other in os.listdir(mnt / "digests")
    log = m.log_text()
    assert f"{repo}/{hx}: last tag removed; not collected now" in log, m.log_tail()
    assert f"{repo}/{hx}: deferred collection: no tag came back; collecting" in log, m.log_tail()
    assert (metric_value(mnt, "imagefs_gc_deferred_total"),
            metric_value(mnt, "imagefs_gc_deferred_collected_total"),
            metric_value(mnt, "imagefs_gc_deferred_dropped_total"),
            metric_value(mnt, "imagefs_gc_deferred")) == (1, 1, 0, 0), metrics(mnt)
    assert wait_trash_empty(root) == [], "the collected image was never freed"


@pytest.mark.parametrize("version", ["legacy", "content"])
def test_finding3_delete_image_vs_ln_is_detected(store, mounter, version):
    root = store.root
    hm = VERSIONS[version](root, store.images)
    repo = "docker.io/library/f3"
    hx = manifest_hex(f"f3-{version}")
    hm.pull(repo, "a", hx, KEYS[0])
    m = mounter(store)
    mnt = m.mnt
    made = {}
    hm.hooks["count"] = lambda: made.setdefault("ln", os.symlink(hx, T(mnt, repo, "late-tag")))
    r = hm.delete_image(repo, "a")
    assert "ln" in made and r.count == 0 and r.removed, r
    # Unpreventable (hypeman counted, then deleted): imagefs must notice within a second.
    assert eventually(lambda: not os.path.lexists(T(mnt, repo, "late-tag")), timeout=1.0), \
        "the mount still shows a tag whose directory is gone"
    assert eventually(lambda: warned_about(m.log_text(), "late-tag"), timeout=1.0), \
        "no warning in the log names the dangling tag"
    assert dangling_metric(mnt) >= 1, "no metric counts the dangling tag:\n" + metrics(mnt)
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 1 and "late-tag" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)


def test_finding4_new_legacy_repository_with_tag_and_digest_at_once(store, mounter, workdir):
    root = store.root
    Legacy(root, store.images).pull("docker.io/library/other", "v1", manifest_hex("f4-other"), KEYS[0])
    mnt = mounter(store).mnt
    # A digest name sorting after the tag "1.0" (digits sort before letters).
    seed = 0
    while not manifest_hex(f"f4-{seed}")[0].isalpha():
        seed += 1
    hx = manifest_hex(f"f4-{seed}")
    repo = "quay.io/team/app"
    # The repository, its digest directory and its tag appear at once (one rename of a tree
    # hypeman's code built: metadata, mkfs onto rootfs.erofs, ready, tag).
    stage = workdir / "stage"
    Legacy(stage, store.images).pull(repo, "1.0", hx, KEYS[1])
    os.rename(stage / "quay.io", root / "quay.io")
    assert eventually(lambda: os.readlink(T(mnt, repo, "1.0")) == mount_target(repo, hx), timeout=2.0), \
        f"tags/{repo}/1.0 not shown within 2 s: {os.listdir(T(mnt, repo)) if T(mnt, repo).is_dir() else 'no dir'}"


def test_finding4_first_pulls_into_new_legacy_repositories(store, mounter):
    """The way hypeman makes them: 8 first pulls into new repositories (metadata, mkfs, ready, then
    the tag), each digest name sorting after the tag "1.0"."""
    root = store.root
    hm = Legacy(root, store.images)
    hm.pull("docker.io/library/other", "v1", manifest_hex("f4b-other"), KEYS[0])
    mnt = mounter(store).mnt
    hs = [h for h in (manifest_hex(f"f4b-{i}") for i in range(40)) if h > "1.0"][:8]
    missing = []
    for i, hx in enumerate(hs):
        repo = f"docker.io/new{i}/app"
        hm.pull(repo, "1.0", hx, KEYS[i % 3])
        if not eventually(lambda: os.readlink(T(mnt, repo, "1.0")) == mount_target(repo, hx), timeout=2.0):
            missing.append(repo)
    assert not missing, f"first pulls whose tag never showed: {missing}"


def mount_serving_rootfs(store, mounter, served_by, hx):
    """Mounts the store with rootfs/ served as asked; returns (mount, digests/<hx>/rootfs)."""
    m = mounter(store, extra_args=SERVED_BY[served_by])
    rootfs = m.mnt / "digests" / hx / "rootfs"
    # The binder mounts the tree just after the mount answers (read from the mount table: a
    # stat of the path would keep the main mount's copy in use and the tree unmounted).
    on_its_own = eventually(lambda: any(t.startswith("fuse") for t in mounts_at(rootfs)),
                            timeout=5.0 if served_by == "image-trees" else 0.3)
    if served_by == "image-trees":
        require(on_its_own, "image trees are not mounted on their own here (needs root and the kernel's mount API)")
    else:
        assert not on_its_own, f"--no-rootfs-mounts, yet {rootfs} is a mount: {mounts_at(rootfs)}"
    return m, rootfs


def still_served_then_released(m, hx, remove, gone):
    """Holds a file and a directory under digests/<hx>/rootfs/ (never read before, so nothing is in
    the page cache), lets remove() take the digest out of the store from outside the mount, and checks
    that both keep being served until they are closed, and that the daemon then releases the image
    and says so."""
    rootfs = m.mnt / "digests" / hx / "rootfs"
    fd = os.open(rootfs / "bin" / "sh", os.O_RDONLY)
    dfd = os.open(rootfs / "etc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove()
        assert gone(), "the digest directory is still in the store"
        assert eventually(lambda: hx not in os.listdir(m.mnt / "digests"), timeout=1.0)
        time.sleep(0.5)     # the watcher has applied the removal (it shows within a second)
        assert os.pread(fd, 4096, 0) == b"#!fake\n" + KEYS[0].encode() * 64
        assert os.fstat(fd).st_size == len(b"#!fake\n" + KEYS[0].encode() * 64)
        with open(os.open("os-release", os.O_RDONLY, dir_fd=dfd), "rb") as f:   # never looked up before
            assert f"KEY={KEYS[0]}".encode() in f.read()
        assert os.listdir(dfd) == ["os-release"]
        assert not released(m, hx), "the log says the image was released while it is still in use"
        assert in_use_only(m) == 1, metrics(m.mnt)
    finally:
        os.close(fd)
        os.close(dfd)
    # The last holders went: the kernel forgets the inodes (drop_caches evicts what it only caches).
    def dropped():
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return released(m, hx)
    assert eventually(dropped, timeout=5.0, step=0.2), f"no log line says the image was released:\n{m.log_tail(20)}"
    assert in_use_only(m) == 0, metrics(m.mnt)


def in_use_only(m) -> int:
    """The metric of removed images still served to their users."""
    found = re.search(r"^imagefs_in_use_only_images (\d+)$", metrics(m.mnt), re.M)
    assert found, metrics(m.mnt)
    return int(found.group(1))


def released(m, hx) -> bool:
    return f"released the image of sha256:{hx}" in m.log_text()


def test_finding5_in_use_never_yanked_by_hypeman(store, mounter, served_by):
    root = store.root
    hm = Content(root, store.images)
    repo = "docker.io/library/f5"
    hx = manifest_hex(f"f5-{served_by}")
    hm.pull(repo, "t", hx, KEYS[0])
    m, _ = mount_serving_rootfs(store, mounter, served_by, hx)
    still_served_then_released(m, hx, lambda: hm.delete_image(repo, "t"),
                               lambda: not hm.content_dir(hx).exists())


def test_finding5_in_use_never_yanked_by_imagefs_gc(store, mounter, served_by):
    """`imagefs gc` run beside the mount (another process: the lock, an intent, the rename into the
    trash, the deletion) removes an untagged image that is in use through the mount."""
    root = store.root
    hm = Content(root, store.images)
    hx = manifest_hex(f"f5-gc-{served_by}")
    hm.pull("docker.io/library/f5gc", None, hx, KEYS[0])      # a digest-only pull: no tag names it
    m, _ = mount_serving_rootfs(store, mounter, served_by, hx)

    def gc():
        r = imagefs("gc", "--store", root)
        assert r.returncode == 0 and f"content/{hx}" in r.stdout, (r.returncode, r.stdout, r.stderr)
    still_served_then_released(m, hx, gc, lambda: not hm.content_dir(hx).exists())


@pytest.mark.parametrize("version", [
    "legacy",
    pytest.param("content"),
])
def test_finding6_no_phantom_images_with_image_in_use(store, mounter, version):
    root = store.root
    hm = VERSIONS[version](root, store.images)
    repo = "docker.io/library/f6"
    hx, keep = manifest_hex(f"f6-{version}"), manifest_hex(f"f6-keep-{version}")
    hm.pull(repo, "t", hx, KEYS[0])
    hm.pull(repo, "keep", keep, KEYS[1])
    mnt = mounter(store).mnt
    assert phantoms(hm.list_images(), root) == []
    fd = os.open(mnt / "digests" / hx / "rootfs.erofs", os.O_RDONLY)
    try:
        os.unlink(T(mnt, repo, "t"))           # collected, kept in use
        listing = hm.list_images()
        ph = phantoms(listing, root)
        assert not ph, f"phantom images: {[(p.name, p.source) for p in ph]}"
        assert sorted(im.name for im in listing if im.name.startswith(repo)) == [f"{repo}:keep"], \
            [(im.name, im.source) for im in listing]
    finally:
        os.close(fd)
    wait_trash_empty(root)
    assert phantoms(hm.list_images(), root) == []


def test_finding7_legacy_store_stays_legacy(store, mounter):
    root = store.root
    hm = Legacy(root, store.images)
    a, b = "docker.io/library/f7a", "docker.io/library/f7b"
    hx = manifest_hex("f7")
    hm.pull(a, "a", hx, KEYS[0])
    mnt = mounter(store).mnt
    os.makedirs(T(mnt, b))
    os.symlink(str(T(mnt, a, "a")), T(mnt, b, "b"))
    assert os.readlink(T(mnt, b, "b")) == mount_target(b, hx)
    assert not (root / "content").exists(), "the legacy store got a content/ directory"
    assert hm.get_image(a, "a")["digest"] == "sha256:" + hx
    assert hm.get_image(b, "b")["digest"] == "sha256:" + hx
    listed = [im for im in hm.list_images() if im.hex == hx]
    assert len(listed) == 2 and not phantoms(listed, root), [(im.name, im.source) for im in listed]
    hm.delete_image(b, "b")
    assert hm.get_image(a, "a")["status"] == "ready"
    assert eventually(lambda: not os.path.lexists(T(mnt, b, "b")))
    assert os.path.isdir(T(mnt, a, "a") / "rootfs")


def test_finding8_same_digest_in_two_legacy_repositories(store, mounter):
    root = store.root
    hm = Legacy(root, store.images)
    a, b = "docker.io/library/f8a", "docker.io/library/f8b"
    hx = manifest_hex("f8")
    hm.pull(a, "t", hx, KEYS[0])
    hm.pull(b, "t", hx, KEYS[1])     # same manifest digest, other image bytes (other mkfs run)
    assert (root / a / hx / "rootfs.erofs").read_bytes() != (root / b / hx / "rootfs.erofs").read_bytes()
    mnt = mounter(store).mnt
    for repo in (a, b):
        for f in ("metadata.json", "rootfs.erofs"):
            assert (T(mnt, repo, "t") / f).read_bytes() == (root / repo / hx / f).read_bytes(), \
                f"tags/{repo}/t/{f} does not show {repo}'s own bytes"


def _hello(key: str) -> str:
    """rootfs/hello.txt of the image of ImageCache key `key`."""
    return ("hello from " + key + "\n") * 50


def _two_pulls(store, name: str):
    """Legacy hypeman pulls one manifest digest into two repositories (other mkfs runs: other
    bytes). Returns (hypeman, repo a, repo b, hex, b's digests/ entry)."""
    hm = Legacy(store.root, store.images)
    a, b = f"docker.io/library/{name}a", f"docker.io/library/{name}b"
    hx = manifest_hex(name)
    hm.pull(a, "t", hx, KEYS[0])
    hm.pull(b, "t", hx, KEYS[1])
    return hm, a, b, hx, f"{hx}@{b.replace('/', '+')}"


def _released(root) -> bool:
    """The kernel forgot every inode of the collected images (it forgets unused dentries
    lazily: drop its caches to hurry it), so the trash is empty."""
    if wait_trash_empty(root, timeout=1.0):
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    return wait_trash_empty(root) == []


def test_finding8_each_repositorys_directory_is_listed_tagged_and_served(store, mounter):
    root = store.root
    hm, a, b, hx, extra = _two_pulls(store, "s8")
    mnt = mounter(store).mnt
    assert sorted(os.listdir(mnt / "digests")) == [hx, extra]
    assert os.readlink(T(mnt, a, "t")) == mount_target(a, hx)
    assert os.readlink(T(mnt, b, "t")) == mount_target(b, extra)
    for repo, key, entry in ((a, KEYS[0], hx), (b, KEYS[1], extra)):
        for base in (mnt / "digests" / entry, T(mnt, repo, "t")):
            for f in ("metadata.json", "rootfs.erofs"):
                assert (base / f).read_bytes() == (root / repo / hx / f).read_bytes(), f"{base}/{f}"
            assert (base / "rootfs" / "hello.txt").read_text() == _hello(key), base
    # ln -s takes the entry as a target: in b, b's own directory; in a new repository of this
    # legacy store, a copy of b's (shown with b's: one image), and a tag of b resolves the same.
    os.symlink(f"../../../../digests/{extra}", T(mnt, b, "u"))
    os.makedirs(T(mnt, "docker.io/library/s8c"))
    os.symlink(str(mnt / "digests" / extra), T(mnt, "docker.io/library/s8c", "x"))
    os.symlink(str(T(mnt, b, "t")), T(mnt, "docker.io/library/s8c", "y"))
    for repo, tag in ((b, "u"), ("docker.io/library/s8c", "x"), ("docker.io/library/s8c", "y")):
        assert os.readlink(T(mnt, repo, tag)) == mount_target(repo, extra), (repo, tag)
        assert (T(mnt, repo, tag) / "rootfs" / "hello.txt").read_text() == _hello(KEYS[1])
    assert sorted(os.listdir(mnt / "digests")) == [hx, extra]
    assert not (root / "content").exists()
    assert (root / "docker.io/library/s8c" / hx / "rootfs.erofs").stat().st_ino == \
        (root / b / hx / "rootfs.erofs").stat().st_ino
    # hypeman sees every tag, each with its own repository's directory, and nothing else.
    listing = hm.list_images()
    assert not phantoms(listing, root), [(im.name, im.source) for im in listing]
    assert sorted((im.name, os.path.relpath(im.source, root)) for im in listing if im.hex == hx) == sorted([
        (f"{a}:t", f"{a}/{hx}/metadata.json"),
        (f"{b}:t", f"{b}/{hx}/metadata.json"),
        (f"{b}:t", f"{b}/{hx}/metadata.json"),
        ("docker.io/library/s8c:x", f"docker.io/library/s8c/{hx}/metadata.json"),
        ("docker.io/library/s8c:x", f"docker.io/library/s8c/{hx}/metadata.json"),
    ])
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("trees", ["own-mounts", "main-mount"])
def test_finding8_rm_of_one_repositorys_last_tag_keeps_the_other_and_every_user(store, mounter, trees):
    root = store.root
    hm, a, b, hx, extra = _two_pulls(store, "r8")
    mnt = mounter(store, extra_args=[] if trees == "own-mounts" else ["--no-rootfs-mounts"]).mnt
    # b's directory goes (not the primary) while a file of its tree is open.
    fb = open(mnt / "digests" / extra / "rootfs" / "hello.txt", "rb")
    try:
        os.unlink(T(mnt, b, "t"))
        assert not (root / b / hx).exists() and (root / a / hx).is_dir()
        assert sorted(os.listdir(mnt / "digests")) == [hx]
        assert fb.read() == _hello(KEYS[1]).encode(), "an open file of the collected directory"
        assert (T(mnt, a, "t") / "rootfs" / "hello.txt").read_text() == _hello(KEYS[0])
    finally:
        fb.close()
    assert _released(root)
    # Pulled again into b; now a's directory (the primary) goes while a file of it is open:
    # b's becomes digests/<hex>, and b's tag, which the kernel had cached, reads so.
    hm.pull(b, "t", hx, KEYS[1])
    assert eventually(lambda: sorted(os.listdir(mnt / "digests")) == [hx, extra], timeout=2.0)
    # The pull writes the directory, then the tag: each shows within a second of its own
    # write (seen once under load: the directory listed, the tag not yet).
    assert eventually(lambda: os.path.lexists(T(mnt, b, "t")), timeout=2.0)
    assert os.readlink(T(mnt, b, "t")) == mount_target(b, extra)
    fa = open(T(mnt, a, "t") / "rootfs" / "hello.txt", "rb")
    try:
        os.unlink(T(mnt, a, "t"))
        assert not (root / a / hx).exists() and (root / b / hx).is_dir()
        assert sorted(os.listdir(mnt / "digests")) == [hx]
        assert os.readlink(T(mnt, b, "t")) == mount_target(b, hx)
        assert (T(mnt, b, "t") / "rootfs" / "hello.txt").read_text() == _hello(KEYS[1])
        assert (mnt / "digests" / hx / "rootfs.erofs").read_bytes() == (root / b / hx / "rootfs.erofs").read_bytes()
        assert fa.read() == _hello(KEYS[0]).encode(), "an open file of the collected primary"
    finally:
        fa.close()
    assert _released(root)
    assert not phantoms(hm.list_images(), root)
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_finding7_copies_through_the_mount_are_legacy_and_collected_alone(store, mounter):
    root = store.root
    hm = Legacy(root, store.images)
    a, b, c = "docker.io/library/c7a", "docker.io/library/c7b", "docker.io/library/c7c"
    hx = manifest_hex("c7")
    hm.pull(a, "a", hx, KEYS[0])
    mnt = mounter(store).mnt
    for r in (b, c):
        os.makedirs(T(mnt, r))
    os.symlink(hx, T(mnt, b, "b"))
    os.symlink(f"sha256:{hx}", T(mnt, b, "b2"))
    os.rename(T(mnt, b, "b2"), T(mnt, c, "c"))        # mv across repositories: c gets its copy
    assert not (root / "content").exists()
    for r, t in ((a, "a"), (b, "b"), (c, "c")):
        assert os.readlink(T(mnt, r, t)) == mount_target(r, hx)
        assert os.readlink(root / r / t) == hx, "a legacy tag, as legacy hypeman writes them"
        assert hm.get_image(r, t)["status"] == "ready"
    assert sorted(os.listdir(mnt / "digests")) == [hx]
    assert json.loads((root / c / hx / "metadata.json").read_text())["name"] == f"{c}:c"
    # The copy's last tag goes: only its directory does.
    os.unlink(T(mnt, b, "b"))
    assert not (root / b / hx).exists()
    assert (root / a / hx / "rootfs.erofs").is_file() and (root / c / hx / "rootfs.erofs").is_file()
    # The source's last tag goes: the copy keeps the image.
    os.unlink(T(mnt, a, "a"))
    assert not (root / a / hx).exists()
    assert (T(mnt, c, "c") / "rootfs" / "hello.txt").read_text() == _hello(KEYS[0])
    assert [im.name for im in hm.list_images() if im.hex == hx] == [f"{c}:c"]
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_finding9_layers_are_not_digests(store, mounter):
    root = store.root
    hm = Content(root, store.images)
    hx = manifest_hex("f9a")
    hm.pull("docker.io/library/f9", "t", hx, KEYS[0])
    layers = os.listdir(root / "layers")
    assert layers
    mnt = mounter(store).mnt
    assert sorted(os.listdir(mnt / "digests")) == [hx]
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_finding9_staging_files_not_served(store, mounter):
    root = store.root
    hm = Content(root, store.images)
    hx = manifest_hex("f9b")
    assert hm.pull("docker.io/library/f9", "t", hx, KEYS[0], stop_after="converting") == "converting"
    os.mkdir(hm.content_dir(hx) / ".install-123456789")       # an install in flight
    assert any(n.startswith("rootfs.erofs.tmp-") for n in os.listdir(hm.content_dir(hx)))
    mnt = mounter(store).mnt
    names = os.listdir(mnt / "digests" / hx)
    assert not [n for n in names if STAGING.search(n)], names
    assert sorted(names) == ["metadata.json"], names


def test_finding9_fsck_clean_on_legacy_store(store):
    root = store.root
    hm = Legacy(root, store.images)
    for i in range(3):
        hm.pull(f"docker.io/library/f9c{i}", "latest", manifest_hex(f"f9c-{i}"), KEYS[i])
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_finding9_fsck_clean_with_tag_stage_leftover(store, mounter):
    root = store.root
    hm = Content(root, store.images)
    repo = "docker.io/library/f9d"
    hx = manifest_hex("f9d")
    hm.pull(repo, "t", hx, KEYS[0])
    # hypeman stopped between staging a tag and renaming it into place.
    stage = root / "repositories" / repo / ".tag-stage-4242"
    stage.mkdir()
    os.symlink(os.path.relpath(hm.content_dir(hx), root / "repositories" / repo), stage / "u")
    r = imagefs("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr
    mnt = mounter(store).mnt
    assert sorted(os.listdir(T(mnt, repo))) == ["t"]


def test_finding10_names_hypeman_uses(store, mounter):
    root = store.root
    hm = Content(root, store.images)
    hx = manifest_hex("f10")
    hm.pull("docker.io/library/f10", "seed", hx, KEYS[0])
    m = mounter(store)
    mnt = m.mnt
    try:
        os.makedirs(T(mnt, "alpine"), exist_ok=True)
        os.symlink(hx, T(mnt, "alpine", "latest"))
    except OSError as e:
        assert e.errno == errno.EINVAL, e
        assert eventually(lambda: "docker.io/library/alpine" in m.log_text()), \
            "the refusal's log line does not name the normalized form"
        return
    assert normalize_repo("alpine") == "docker.io/library/alpine"
    img = hm.get_image(normalize_repo("alpine"), "latest")      # NotFound today
    assert img["digest"] == "sha256:" + hx
