"""A random differential test through the real mount (issue 10, "How to test": "Through the real
mount"): a seeded RNG issues real system calls against `MNT/tags` and `MNT/digests` (symlink in
every target form, unlink, rename with no flag, RENAME_NOREPLACE and RENAME_EXCHANGE, mkdir, rmdir,
rename of repository directories, readlink, listdir, reads of files under `rootfs/`) and compares
each result, the return value or the errno, with a Python model of the mount (below), and the whole
tree (every tag's target text, every directory, `digests/`, and the store on disk) every
CHECK_EVERY operations.

Interleaved: changes another writer makes directly in the store, played by the hypeman model
(`hypeman.Content`: a pull with its tag, `DeleteImage`, a retag), each followed by a bounded wait for
the mount to show it (DESIGN.md: within one second; the bound here is CONVERGE seconds) and by the
quiet window after which imagefs collects a digest another writer touched (watch.rs `QUIET`,
1 s); and now and then a `kill -9` of the daemon, a remount and a full comparison: every
acknowledged operation holds.

IMAGEFS_RANDOM_SEED (printed) replays a run; IMAGEFS_RANDOM_OPS (default 1500) sets its length. It
runs once per way of serving `rootfs/` (`--rootfs-mounts=none|kernel|fuse`): image trees mounted
under the mount change what a removal must detach and what a kill -9 leaves behind.
On a mismatch the seed and the tail of the operation log are printed.

Semantics the model holds (DESIGN.md section 3, and the kernel's own checks first): ENOENT for a
missing source or parent; EEXIST for an existing name (symlink, mkdir, RENAME_NOREPLACE); ENOENT for
RENAME_EXCHANGE with a missing side; EINVAL for a tag directly in `tags/` or under a repository name
hypeman would not use (`reg.io` alone); ENOENT for a target naming no digest or tag, EAGAIN for a
pending digest; ENOTEMPTY for rmdir of a repository holding tags or directories; EINVAL for moving a
directory into itself; the readlink of a tag is `../` per level, then `digests/<hex>`; removing the
last tag of a ready digest removes it from `digests/` at once; another writer's removal of a tag
collects nothing.
"""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest

from helpers import (
    RENAME_EXCHANGE, RENAME_NOREPLACE, check_invariants, force_unmount, is_fuse_mounted, mount_target,
    mount_view, renameat2, scan_store, wait_trash_empty,
)
from hypeman import Content

SEED = int(os.environ.get("IMAGEFS_RANDOM_SEED", str(int(time.time()))))
OPS = int(os.environ.get("IMAGEFS_RANDOM_OPS", "1500"))
# How `rootfs/` is served: by the main mount (`none`, the full run), or by image trees of their own
# with the kernel's erofs or FUSE (a third of the operations each).
ROOTFS_MODES = {"none": 1.0, "kernel": 1 / 3, "fuse": 1 / 3}
CHECK_EVERY = 100
CONVERGE = 3.0
QUIET = 1.2
HOST = "reg.io"
LEGACY = "leg.io/old"
COMPONENTS = ["a", "b", "x"]
DIRS = [HOST] + [f"{HOST}/{c}" for c in COMPONENTS] + [f"{HOST}/{c}/{d}" for c in COMPONENTS for d in COMPONENTS]
TAGS = ["t0", "t1", "t2", "t3"]
POOL = 5


def parent(p: str) -> str:
    return p.rsplit("/", 1)[0] if "/" in p else ""


class MountModel:
    """What MNT/tags and MNT/digests must show."""

    def __init__(self):
        self.dirs: set = set()            # repository directories under tags/, e.g. "reg.io/a"
        self.tags: dict = {}              # (repo, tag) -> hex
        self.digests: dict = {}           # hex -> status
        self.keys: dict = {}              # hex -> image key (its files' bytes)

    # -- queries
    def has_children(self, d: str) -> bool:
        return any(parent(x) == d for x in self.dirs) or any(r == d for r, _ in self.tags)

    def listing(self, d: str) -> set:
        return {x.rsplit("/", 1)[-1] for x in self.dirs if parent(x) == d} | {t for r, t in self.tags if r == d}

    def _collect(self, hx):
        if hx and hx not in self.tags.values() and self.digests.get(hx) == "ready":
            del self.digests[hx]

    @staticmethod
    def normalized(repo: str) -> bool:
        return repo.count("/") >= 1

    def _exists_dir(self, d):
        return d == "" or d in self.dirs

    # -- operations: each returns 0 or the errno, and changes the model when it succeeds
    def symlink(self, repo, tag, target):
        """target: ("hex", hx) or ("tag", repo, tag) (already parsed from the target text)."""
        if not self._exists_dir(repo):
            return errno.ENOENT
        if (repo, tag) in self.tags:
            return errno.EEXIST
        if not self.normalized(repo):
            return errno.EINVAL
        if target[0] == "tag":
            hx = self.tags.get((target[1], target[2]))
        else:
            hx = target[1] if target[1] in self.digests else None
        if hx is None:
            return errno.ENOENT
        if self.digests[hx] != "ready":
            return errno.EAGAIN
        self.tags[(repo, tag)] = hx
        return 0

    def unlink(self, repo, tag):
        if (repo, tag) not in self.tags:
            return errno.ENOENT
        self._collect_after(self.tags.pop((repo, tag)))
        return 0

    def rename_tag(self, a, b, flags):
        if a not in self.tags or not self._exists_dir(b[0]):
            return errno.ENOENT
        if flags == RENAME_NOREPLACE and b in self.tags:
            return errno.EEXIST
        if flags == RENAME_EXCHANGE and b not in self.tags:
            return errno.ENOENT
        if not self.normalized(b[0]):
            return errno.EINVAL
        if a == b:
            return 0
        if flags == RENAME_EXCHANGE:
            self.tags[a], self.tags[b] = self.tags[b], self.tags[a]
            return 0
        old = self.tags.pop(b, None)
        self.tags[b] = self.tags.pop(a)
        self._collect_after(old)
        return 0

    def _collect_after(self, hx):
        self._collect(hx)

    def mkdir(self, d):
        if not self._exists_dir(parent(d)):
            return errno.ENOENT
        if d in self.dirs:
            return errno.EEXIST
        self.dirs.add(d)
        return 0

    def rmdir(self, d):
        if d not in self.dirs:
            return errno.ENOENT
        if self.has_children(d):
            return errno.ENOTEMPTY
        self.dirs.discard(d)
        return 0

    def rename_dir(self, s, d, flags):
        if s not in self.dirs or not self._exists_dir(parent(d)):
            return errno.ENOENT
        if flags == RENAME_NOREPLACE and d in self.dirs:
            return errno.EEXIST
        if s == d:
            return 0
        if d.startswith(s + "/"):
            return errno.EINVAL
        if d in self.dirs:
            if self.has_children(d):
                return errno.ENOTEMPTY
            self.dirs.discard(d)

        def moved(r):
            return d + r[len(s):] if r == s or r.startswith(s + "/") else r
        self.dirs = {moved(r) for r in self.dirs}
        self.tags = {(moved(r), t): hx for (r, t), hx in self.tags.items()}
        return 0

    def add_dirs(self, repo):
        while repo:
            self.dirs.add(repo)
            repo = parent(repo)


def errname(code) -> str:
    return "0" if code == 0 else errno.errorcode.get(code, str(code))


def call(fn, *a) -> tuple:
    try:
        r = fn(*a)
        return 0, r
    except OSError as e:
        return e.errno, None


class Run:
    def __init__(self, store, images, mounter, workdir):
        self.store, self.images, self.mounter = store, images, mounter
        self.rnd = random.Random(SEED)
        self.mnt = workdir / "mnt"
        self.mnt.mkdir()
        self.model = MountModel()
        self.log: list[str] = []
        self.counts: dict = {}
        self.hm = Content(store.root, images, seed=SEED)
        self.pulls = 0
        self.m = None
        self.held: list = []      # (fd, image key, path) of files kept open through the mount

    # -- bookkeeping
    def fail(self, msg):
        tail = "\n".join(self.log[-30:])
        raise AssertionError(f"IMAGEFS_RANDOM_SEED={SEED}, after {len(self.log)} operations: {msg}\n"
                             f"--- the last operations:\n{tail}")

    def count(self, k):
        self.counts[k] = self.counts.get(k, 0) + 1

    def expect(self, desc, got, want):
        self.log.append(f"{len(self.log)}: {desc} -> {errname(got)}" + ("" if got == want else f" (model: {errname(want)})"))
        self.count(desc.split()[0] + ":" + errname(got))
        if got != want:
            self.fail(f"{desc} returned {errname(got)}, the model says {errname(want)}")

    def t(self, *parts) -> Path:
        return self.mnt.joinpath("tags", *[p for p in parts if p])

    def mount(self):
        self.m = self.mounter(self.store, self.mnt, extra_args=[f"--rootfs-mounts={self.rootfs_mounts}"])

    # -- the store to start from
    def build(self):
        s, mo = self.store, self.model
        for i in range(POOL):
            key = f"random-{i}"
            hx = s.add_digest(key)
            mo.digests[hx], mo.keys[hx] = "ready", key
        p = s.add_digest("random-pending", status="pending", with_image=False)
        mo.digests[p], mo.keys[p] = "pending", "random-pending"
        self.pending = p
        self.pool = [h for h in mo.digests if h != p]
        for j, (repo, tag) in enumerate([(f"{HOST}/a", "t0"), (f"{HOST}/a", "t1"), (f"{HOST}/b", "t0"),
                                         (f"{HOST}/x/a", "t2"), (f"{HOST}/b", "t3")]):
            hx = self.pool[j % POOL]
            s.tag(repo, tag, hx, layout="content")
            mo.tags[(repo, tag)] = hx
            mo.add_dirs(repo)
        s.tag(f"{HOST}/b", "t1", p, layout="content")
        mo.tags[(f"{HOST}/b", "t1")] = p
        # A legacy repository with its own digest: moving its tags elsewhere promotes the digest
        # into content/, moving the repository moves both halves; the mount shows neither.
        lg = s.add_digest("random-legacy", layout="legacy", repo=LEGACY)
        mo.digests[lg], mo.keys[lg] = "ready", "random-legacy"
        self.pool.append(lg)
        for tag in ("t0", "t1"):
            s.tag(LEGACY, tag, lg, layout="legacy")
            mo.tags[(LEGACY, tag)] = lg
        mo.add_dirs(LEGACY)
        self.never = "f" * 64 if "f" * 64 not in mo.digests else "e" * 64

    # -- random choices
    def any_dir(self):
        r = self.rnd.random()
        if r < 0.03:
            return ""
        if r < 0.8 and self.model.dirs:
            return self.rnd.choice(sorted(self.model.dirs))
        return self.rnd.choice(DIRS)

    def any_tag(self):
        if self.model.tags and self.rnd.random() < 0.85:
            return self.rnd.choice(sorted(self.model.tags))
        return (self.any_dir(), self.rnd.choice(TAGS))

    def target(self, repo, tag):
        """A target text in one of the forms `ln -s` takes, and what it names for the model."""
        rnd = self.rnd
        k = rnd.random()
        if k < 0.6 or not self.model.tags:
            live = sorted(self.model.digests)
            hx = rnd.choice(live if live and k < 0.5 else self.pool + [self.pending] + [self.never])
            form = rnd.randrange(4)
            link_dir = self.t(repo)
            text = [hx, "sha256:" + hx, str(self.mnt / "digests" / hx),
                    os.path.relpath(self.mnt / "digests" / hx, link_dir)][form]
            return text, ("hex", hx)
        r2, t2 = self.any_tag()
        if k < 0.8:
            return str(self.t(r2, t2)), ("tag", r2, t2)
        return os.path.relpath(self.t(r2, t2), self.t(repo)), ("tag", r2, t2)

    # -- one random operation
    def step(self):
        rnd, mo = self.rnd, self.model
        k = rnd.random()
        if k < 0.30:
            repos = sorted(r for r in mo.dirs if mo.normalized(r))
            repo = rnd.choice(repos) if repos and rnd.random() < 0.85 else self.any_dir()
            tag = rnd.choice(TAGS)
            text, tgt = self.target(repo, tag)
            want = mo.symlink(repo, tag, tgt)
            got, _ = call(os.symlink, text, self.t(repo, tag))
            self.expect(f"symlink {text} tags/{repo}/{tag}", got, want)
        elif k < 0.42:
            repo, tag = self.any_tag()
            want = mo.unlink(repo, tag)
            got, _ = call(os.unlink, self.t(repo, tag))
            self.expect(f"unlink tags/{repo}/{tag}", got, want)
        elif k < 0.56:
            a, b = self.any_tag(), self.any_tag() if rnd.random() < 0.5 else (self.any_dir(), rnd.choice(TAGS))
            flags = rnd.choice([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE])
            if a == b and flags:
                return
            want = mo.rename_tag(a, b, flags)
            got, _ = call(renameat2, self.t(*a), self.t(*b), flags)
            self.expect(f"rename{['', '-noreplace', '-exchange'][flags]} tags/{a[0]}/{a[1]} tags/{b[0]}/{b[1]}",
                        got, want)
        elif k < 0.63:
            d = rnd.choice(DIRS)
            want = mo.mkdir(d)
            got, _ = call(os.mkdir, self.t(d))
            self.expect(f"mkdir tags/{d}", got, want)
        elif k < 0.69:
            d = rnd.choice(sorted(mo.dirs - {HOST})) if len(mo.dirs) > 1 and rnd.random() < 0.8 else rnd.choice(DIRS)
            want = mo.rmdir(d)
            got, _ = call(os.rmdir, self.t(d))
            self.expect(f"rmdir tags/{d}", got, want)
        elif k < 0.75:
            srcs = sorted(mo.dirs - {HOST, "leg.io"})
            if not srcs:
                return
            s, d = rnd.choice(srcs), rnd.choice(DIRS[1:])
            flags = rnd.choice([0, 0, RENAME_NOREPLACE])
            want = mo.rename_dir(s, d, flags)
            got, _ = call(renameat2, self.t(s), self.t(d), flags)
            self.expect(f"rename{['', '-noreplace'][flags]} tags/{s} tags/{d}", got, want)
        elif k < 0.85:
            repo, tag = self.any_tag()
            got, text = call(os.readlink, self.t(repo, tag))
            hx = mo.tags.get((repo, tag))
            want = 0 if hx else errno.ENOENT
            self.expect(f"readlink tags/{repo}/{tag}", got, want)
            if hx and text != mount_target(repo, hx):
                self.fail(f"readlink tags/{repo}/{tag} = {text!r}, the model says {mount_target(repo, hx)!r}")
        elif k < 0.93:
            d = self.any_dir()
            got, names = call(os.listdir, self.t(d) if d else self.mnt / "tags")
            want = 0 if (d == "" or d in mo.dirs) else errno.ENOENT
            self.expect(f"listdir tags/{d}", got, want)
            if got == 0 and set(names) != mo.listing(d):
                self.fail(f"listdir tags/{d} = {sorted(names)}, the model says {sorted(mo.listing(d))}")
        elif k < 0.97:
            self.read_files()
        else:
            self.hold_or_release()

    def hold_or_release(self):
        """Keeps a file of an image open through a tag (a process using it); when its last tag goes,
        the digest leaves digests/ at once, and the open file must read on (DESIGN.md section 4)."""
        mo, rnd = self.model, self.rnd
        if self.held and (len(self.held) >= 3 or rnd.random() < 0.4):
            fd, key, desc = self.held.pop(rnd.randrange(len(self.held)))
            self.check_held(fd, key, desc)
            os.close(fd)
            self.log.append(f"{len(self.log)}: close {desc}")
            return
        ready = [k for k, hx in sorted(mo.tags.items()) if mo.digests.get(hx) == "ready"]
        if not ready:
            return
        repo, tag = rnd.choice(ready)
        p = self.t(repo, tag, "rootfs", "hello.txt")
        got, fd = call(os.open, p, os.O_RDONLY)
        self.expect(f"open {p.relative_to(self.mnt)}", got, 0)
        self.held.append((fd, mo.tags[(repo, tag)], str(p.relative_to(self.mnt))))
        self.count("held")

    def check_held(self, fd, hx, desc):
        key = self.model.keys[hx]
        if hx not in self.model.digests:
            self.count("held-read-after-removal")
        try:
            data = os.pread(fd, 1 << 16, 0).decode()
        except OSError as e:
            self.fail(f"read of {desc}, held open, failed: {e}")
        if data != ("hello from " + key + "\n") * 50:
            self.fail(f"{desc}, held open, reads {data[:60]!r}..., not the bytes of image {key}")

    def release_all(self):
        for fd, _, _ in self.held:
            os.close(fd)
        self.held = []

    def read_files(self):
        mo, rnd = self.model, self.rnd
        got, names = call(os.listdir, self.mnt / "digests")
        self.expect("listdir digests", got, 0)
        if set(names) != set(mo.digests):
            self.fail(f"digests/ lists {sorted(set(names) ^ set(mo.digests))} differently from the model")
        ready = [k for k, hx in sorted(mo.tags.items()) if mo.digests.get(hx) == "ready"]
        if ready and rnd.random() < 0.5:
            repo, tag = rnd.choice(ready)
            hx = mo.tags[(repo, tag)]
            p = self.t(repo, tag, "rootfs", "hello.txt")
        else:
            hx = rnd.choice(sorted(h for h in mo.digests if mo.digests[h] == "ready") or [None])
            if hx is None:
                return
            p = self.mnt / "digests" / hx / "rootfs" / "hello.txt"
        got, data = call(Path.read_text, p)
        self.expect(f"read {p.relative_to(self.mnt)}", got, 0)
        want = ("hello from " + mo.keys[hx] + "\n") * 50
        if data != want:
            self.fail(f"{p} holds {data[:60]!r}..., expected the bytes of image {mo.keys[hx]}")

    # -- whole-tree comparison
    def compare(self, why):
        mo = self.model
        try:
            view = mount_view(self.mnt)
        except OSError as e:
            self.fail(f"{why}: walking tags/: {e}")
        want = {k: mount_target(k[0], hx) for k, hx in mo.tags.items()}
        if view != want:
            diff = sorted(set(view.items()) ^ set(want.items()))[:10]
            self.fail(f"{why}: tags/ differs from the model (mount vs model, symmetric difference): {diff}")
        dirs = set()
        for dirpath, _, _ in os.walk(self.mnt / "tags"):
            rel = os.path.relpath(dirpath, self.mnt / "tags")
            if rel != ".":
                dirs.add(rel)
        if dirs != mo.dirs:
            self.fail(f"{why}: directories of tags/ {sorted(dirs ^ mo.dirs)} differ from the model")
        if set(os.listdir(self.mnt / "digests")) != set(mo.digests):
            self.fail(f"{why}: digests/ differs from the model: "
                      f"{sorted(set(os.listdir(self.mnt / 'digests')) ^ set(mo.digests))}")
        st = scan_store(self.store.root)
        if st.tags != mo.tags:
            self.fail(f"{why}: the store's tags differ from the model: {sorted(set(st.tags.items()) ^ set(mo.tags.items()))[:10]}")
        # hypeman's layer store (STORE/layers/<hex>/) is no digest directory; the scanner sees it as one
        disk = {hx for hx, locs in st.locations.items() if locs != [("legacy", "layers")]}
        if disk != set(mo.digests):
            self.fail(f"{why}: the store's digests differ from the model: {sorted(disk ^ set(mo.digests))}")
        for fd, key, desc in self.held:
            self.check_held(fd, key, desc)
        self.count("full-comparisons")

    # -- the other writer
    def other_writer(self):
        mo, rnd, hm = self.model, self.rnd, self.hm
        repos = sorted(r for r in mo.dirs if mo.normalized(r))
        k = rnd.random()
        tagged = sorted(k2 for k2, hx in mo.tags.items() if mo.digests.get(hx) == "ready")
        # hypeman (content version) retags to content/<hex>: a digest that is only a legacy
        # repository's (never promoted) would make a dangling tag, which the mount hides.
        in_content = sorted(h for h in mo.digests
                            if mo.digests[h] == "ready" and (self.store.root / "content" / h).is_dir())
        if k < 0.5 or not tagged or (k >= 0.7 and not in_content):
            # a new image, or one of the pool again (collected since, or a retag)
            key = rnd.choice([f"random-pull-{rnd.randrange(4)}", f"random-{rnd.randrange(POOL)}"])
            repo = rnd.choice(repos) if repos and rnd.random() < 0.8 else f"{HOST}/hm"
            tag = rnd.choice(TAGS)
            _, hx = self.images.get(key)
            status = hm.pull(repo, tag, hx, key)
            desc = f"hypeman pull {repo}:{tag} ({key}, {hx[:12]}) -> {status}"
            mo.digests[hx], mo.keys[hx] = "ready", key
            mo.tags[(repo, tag)] = hx
            mo.add_dirs(repo)
            if hx not in self.pool:
                self.pool.append(hx)
        elif k < 0.7:
            repo, tag = rnd.choice(tagged)
            r = hm.delete_image(repo, tag)
            desc = f"hypeman DeleteImage {repo}:{tag} (removed {r.removed})"
            hx = mo.tags.pop((repo, tag))
            if hx not in mo.tags.values():
                mo.digests.pop(hx, None)
        else:
            repo, tag = rnd.choice(tagged)
            hx = rnd.choice(in_content)
            hm.retag(repo, tag, hx)
            desc = f"hypeman retag {repo}:{tag} -> {hx[:12]}"
            mo.tags[(repo, tag)] = hx   # the old digest stays: imagefs collects for no other writer
        self.log.append(f"{len(self.log)}: {desc}")
        self.count("other-writer")
        deadline = time.monotonic() + CONVERGE
        while True:
            try:
                self.compare("after another writer's change")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    self.compare(f"{CONVERGE} s after another writer's change")
                time.sleep(0.05)
        time.sleep(QUIET)   # past the window in which imagefs defers collecting what it touched

    def crash(self):
        self.log.append(f"{len(self.log)}: kill -9 of the daemon, remount")
        self.release_all()   # their mount goes with the daemon
        self.m.kill9()
        force_unmount(str(self.mnt))
        assert not is_fuse_mounted(self.mnt)
        self.mount()
        self.compare("after kill -9 and a remount")
        self.count("kill-9")


@pytest.mark.parametrize("rootfs_mounts", list(ROOTFS_MODES))
def test_random_mount(store, images, mounter, workdir, rootfs_mounts):
    ops = max(1, int(OPS * ROOTFS_MODES[rootfs_mounts]))
    print(f"\nIMAGEFS_RANDOM_SEED={SEED} IMAGEFS_RANDOM_OPS={OPS}: {ops} operations with --rootfs-mounts={rootfs_mounts}")
    run = Run(store, images, mounter, workdir)
    run.rootfs_mounts = rootfs_mounts
    run.build()
    run.mount()
    run.compare("at the start")
    t0 = time.monotonic()
    for i in range(1, ops + 1):
        r = run.rnd.random()
        if r < 0.01:
            run.other_writer()
        elif r < 0.014:
            run.crash()
        else:
            run.step()
        if i % CHECK_EVERY == 0:
            run.compare(f"after operation {i}")
    run.compare("at the end")
    run.release_all()
    left = wait_trash_empty(store.root, timeout=1.0)
    if left:
        # The kernel forgets inodes lazily: drop its caches to hurry it (as test_hypeman_gc.py does).
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        left = wait_trash_empty(store.root)
    assert not left, f"IMAGEFS_RANDOM_SEED={SEED}: the trash still holds {left} after every file was closed"
    v = check_invariants(store.root, ever_tagged=set(run.pool), check_hashes=False)
    v = [x for x in v if "leaked" not in x]   # another writer's untagging collects nothing, by design
    assert not v, f"IMAGEFS_RANDOM_SEED={SEED}: " + "\n".join(v)
    assert run.m.stop() == 0
    line = ", ".join(f"{k}={n}" for k, n in sorted(run.counts.items()))
    print(f"random mount ({rootfs_mounts}): {ops} operations in {time.monotonic() - t0:.1f} s: {line}")
