"""imagefs's GC and bookkeeping next to the real hypeman (issue 9, findings 1 and 6).

hypeman is played with plain file operations, as HYPEMAN.md describes it: its listings walk the
whole store (both versions, as `hypeman.py` re-implements them from lib/images/storage.go
`listAllTags` and storage_refs.go `listAllMetadata`), its own GC `RemoveAll`s a digest directory without any lock,
and a pull by digest leaves a ready image no tag names, which hypeman keeps.

- Finding 6: while an image collected through the mount is kept for its users (in the trash), and
  while a GC intent is on disk, neither listing shows anything but the store's real images.
- Finding 1: hypeman's GC removes a directory while imagefs collects it; hypeman pulls the digest
  again as a digest-only image; the next mount must keep it (and fsck must not call it
  half-collected).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from helpers import bookkeeping, imagefs_bin, require, sh, terminate, trash_entries, wait_trash_empty
from hypeman import Content, Legacy
from rootfs_tree import wait_until


# ------------------------------------------------------------------ hypeman's listings

def content_listing(images: Path) -> list[tuple[str, str]]:
    """ListImages of the content-addressed hypeman (hypeman.Content, from storage_refs.go
    listAllMetadata): (name, digest directory) of every entry."""
    return [(i.name, str(Path(i.source).parent)) for i in Content(images, None).list_images()]


def legacy_listing(images: Path) -> list[tuple[str, str]]:
    """ListImages of the legacy hypeman (hypeman.Legacy, from storage.go listAllTags)."""
    return [(i.name, str(Path(i.source).parent)) for i in Legacy(images, None).list_images()]


def phantoms(root: Path, real_dirs: set[Path]) -> list[str]:
    """Entries of either listing read from anything but one of the store's real digest directories."""
    out = []
    for which, listing in (("content", content_listing(root)), ("legacy", legacy_listing(root))):
        for name, d in listing:
            if Path(d) not in real_dirs:
                out.append(f"{which} hypeman lists {name!r} from {d}")
    return out


def real_dirs(root: Path) -> set[Path]:
    root = Path(root)
    out = set()
    for base in [root / "content"] + [p for p in root.iterdir() if p.name not in ("content", "repositories")]:
        if not base.is_dir() or base.is_symlink():
            continue
        for dirpath, dirnames, _ in os.walk(base):
            for n in dirnames:
                if len(n) == 64 and all(c in "0123456789abcdef" for c in n):
                    out.add(Path(dirpath) / n)
    return out


def test_listings_re_implementation_sees_the_store():
    """The re-implemented listings, on a store built by hand, list exactly its images (and a trash
    kept inside the store, as imagefs did, shows up as a phantom: what finding 6 saw)."""
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        root = Path(t) / "images"
        c, lg = "c" * 64, "d" * 64
        for d, name in ((root / "content" / c, "docker.io/library/a:v1"), (root / "docker.io/library/l" / lg, "l")):
            d.mkdir(parents=True)
            (d / "metadata.json").write_text(json.dumps({"name": name, "status": "ready"}))
            (d / "rootfs.erofs").write_bytes(b"x")
        (root / "repositories/docker.io/library/a").mkdir(parents=True)
        os.symlink(f"../../../../content/{c}", root / "repositories/docker.io/library/a/v1")
        os.symlink(lg, root / "docker.io/library/l/latest")
        assert sorted(n for n, _ in content_listing(root)) == ["docker.io/library/a:v1", "docker.io/library/l:latest"]
        # (legacy hypeman's filepath.Join also resolves a content tag's relative text)
        assert sorted(n for n, _ in legacy_listing(root)) == ["docker.io/library/a:v1", "l"]
        assert not phantoms(root, real_dirs(root))
        trashed = root / ".imagefs" / "trash" / "x-1"
        shutil.copytree(root / "content" / c, trashed)
        assert phantoms(root, real_dirs(root)), "a trash inside the store is listed by hypeman"


# ------------------------------------------------------------------ helpers

def run(*args, timeout=60):
    return sh(imagefs_bin(), *args, timeout=timeout)


def _traced_tasks(pid: int, tracer: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for t in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{t}/status").read_text()
        except OSError:
            continue
        line = next((ln for ln in status.splitlines() if ln.startswith("TracerPid:")), "TracerPid: 0")
        if int(line.split()[1]) != tracer:
            return False
    return True


@contextlib.contextmanager
def renames_delayed(pid: int, seconds: float):
    """Every rename of the daemon waits `seconds` before it runs (strace's syscall fault injection):
    opens, deterministically, the window between imagefs's GC intent and its rename into the trash,
    which hypeman's own GC hits by chance."""
    require(shutil.which("strace"), "strace is not installed (apt-get install strace)")
    us = int(seconds * 1_000_000)
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid),
                          "-e", "trace=rename,renameat,renameat2",
                          "-e", f"inject=rename,renameat,renameat2:delay_enter={us}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ok = wait_until(lambda: _traced_tasks(pid, p.pid) or p.poll() is not None, 10, 0.02)
        if p.poll() is not None or not ok:
            err = p.stderr.read().decode(errors="replace") if p.poll() is not None else "timeout"
            require(False, f"strace cannot attach to the daemon: {err}")
        yield
    finally:
        terminate(p)


def hypeman_remove_all(d: Path):
    """hypeman's GC: os.RemoveAll, no lock."""
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ finding 6

def test_no_phantom_in_hypemans_listing_while_a_collected_image_is_kept_in_use(store, mounter):
    a = store.add_digest("hgc-a", name="docker.io/library/hgc-a:v1")
    lg = store.add_digest("hgc-l", layout="legacy", repo="docker.io/library/hgcl", name="docker.io/library/hgcl:v1")
    keep = store.add_digest("hgc-k", name="docker.io/library/hgc-k:v1")
    store.tag("docker.io/library/hgc-a", "v1", a)
    store.tag("docker.io/library/hgcl", "v1", lg)
    store.tag("docker.io/library/hgc-k", "v1", keep)
    root = store.root
    # FUSE image trees: the daemon keeps an image in use in its trash (with the kernel's erofs trees
    # the kernel holds the file itself, and the trash empties at once: test_kernel_erofs.py)
    m = mounter(store, extra_args=["--rootfs-mounts", "fuse"])
    assert not phantoms(root, real_dirs(root))
    tags = m.mnt / "tags" / "docker.io" / "library"
    held = [os.open(tags / "hgc-a" / "v1" / "rootfs" / "hello.txt", os.O_RDONLY),
            os.open(tags / "hgcl" / "v1" / "rootfs" / "hello.txt", os.O_RDONLY)]
    try:
        os.unlink(tags / "hgc-a" / "v1")
        os.unlink(tags / "hgcl" / "v1")
        assert not (root / "content" / a).exists() and not (root / "docker.io/library/hgcl" / lg).exists()
        p = phantoms(root, real_dirs(root))
        assert not p, "\n".join(p)
        assert not (root / ".imagefs").exists(), "imagefs's bookkeeping is inside the store"
        kept = trash_entries(root)
        assert len(kept) == 2, f"both images are kept for their users: {kept}\n{m.log_tail(20)}"
        names = sorted(n for n, _ in content_listing(root))
        assert names == ["docker.io/library/hgc-k:v1"], names
        names = sorted(n for n, _ in legacy_listing(root))
        assert names == ["docker.io/library/hgc-k:v1"], names
    finally:
        for fd in held:
            os.close(fd)
    left = wait_trash_empty(root)
    if left:
        # The kernel forgets inodes lazily; drop its caches to hurry it.
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        assert wait_until(lambda: not trash_entries(root), 5, 0.1), trash_entries(root)
    assert not phantoms(root, real_dirs(root))


def test_a_gc_intent_on_disk_is_no_tag_for_hypeman(store, mounter):
    a = store.add_digest("hgc-i", name="docker.io/library/hgc-i:v1")
    store.tag("docker.io/library/hgc-i", "v1", a)
    other = store.add_digest("hgc-j", name="docker.io/library/hgc-j:v1")
    store.tag("docker.io/library/hgc-j", "v1", other)
    root = store.root
    m = mounter(store)
    content, legacy, ph = [], [], []
    with renames_delayed(m.daemon_pid, 1.5):
        t = threading.Thread(target=os.unlink, args=(m.mnt / "tags/docker.io/library/hgc-i/v1",))
        t.start()
        # The intent is written and the tag gone; the rename into the trash waits.
        assert wait_until(lambda: not (root / "repositories/docker.io/library/hgc-i/v1").is_symlink(), 5, 0.01)
        assert (root / "content" / a).is_dir()
        content, legacy = content_listing(root), legacy_listing(root)
        ph = phantoms(root, real_dirs(root))
        t.join(10)
    assert not ph, "\n".join(ph)
    # The directory being collected is still there, untagged: hypeman lists it by its own name.
    # An intent symlink it took for a tag would show as "<its directory>:<its name>".
    allowed = {"docker.io/library/hgc-i:v1", "docker.io/library/hgc-j:v1"}
    assert {n for n, _ in content} <= allowed, f"hypeman's listing during a collection: {content}"
    assert {n for n, _ in legacy} <= allowed, f"legacy hypeman's listing during a collection: {legacy}"
    assert wait_until(lambda: not (root / "content" / a).exists(), 5)


def test_bookkeeping_of_an_older_imagefs_is_moved_out_of_the_store_and_one_mount_per_store(store, mounter, workdir):
    a = store.add_digest("hgc-o", name="docker.io/library/hgc-o:v1")
    u = store.add_digest("hgc-u", name="docker.io/library/hgc-u:v1")
    store.tag("docker.io/library/hgc-o", "v1", a)
    root = store.root
    old = root / ".imagefs"
    (old / "intents").mkdir(parents=True)
    (old / "trash" / "0-1-2-abcdef012345").mkdir(parents=True)
    shutil.copy(root / "content" / a / "metadata.json", old / "trash" / "0-1-2-abcdef012345" / "metadata.json")
    shutil.copy(root / "content" / a / "rootfs.erofs", old / "trash" / "0-1-2-abcdef012345" / "rootfs.erofs")
    (old / "lock").write_text("")
    # An older imagefs's intent for u names no identity: it is not replayed (u stays).
    (old / "intents" / "0001.gc").symlink_to(f"content/{u}")
    assert phantoms(root, real_dirs(root)), "the re-implemented listing sees the old trash"
    m = mounter(store)
    assert not old.exists(), f"STORE/.imagefs is still in the store:\n{m.log_tail(20)}"
    assert (bookkeeping(root) / "lock").is_file()
    assert (root / "content" / u).is_dir(), "an intent without identity removed a directory"
    assert not phantoms(root, real_dirs(root))
    assert not trash_entries(root)
    # One mount per store: a second mount is refused and changes nothing.
    mnt2 = workdir / "second"
    mnt2.mkdir()
    r = subprocess.run([str(imagefs_bin()), "mount", "--store", str(root), str(mnt2), "--foreground"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "already mounted" in r.stderr + r.stdout, r.stderr + r.stdout
    assert os.listdir(m.mnt / "tags" / "docker.io" / "library" / "hgc-o") == ["v1"]


# ------------------------------------------------------------------ finding 1

def test_a_directory_hypeman_removed_during_a_collection_and_pulled_again_survives_the_next_mount(
        store, mounter, workdir):
    a = store.add_digest("hgc-f1", name="docker.io/library/hgc-f1:v1")
    store.tag("docker.io/library/hgc-f1", "v1", a)
    root = store.root
    d = root / "content" / a
    mnt = workdir / "mnt"
    mnt.mkdir()
    m = mounter(store, mnt)
    with renames_delayed(m.daemon_pid, 1.5):
        t = threading.Thread(target=os.unlink, args=(mnt / "tags/docker.io/library/hgc-f1/v1",))
        t.start()
        # imagefs recorded its intent and removed the tag; before its rename into the trash,
        # hypeman's own GC (DeleteImage of the same tag: it counted no tag left) removes the directory.
        assert wait_until(lambda: not (root / "repositories/docker.io/library/hgc-f1/v1").is_symlink(), 5, 0.01)
        hypeman_remove_all(d)
        t.join(10)
        assert not t.is_alive()
    assert not d.exists()
    log1 = m.log_text()
    # hypeman pulls the digest again, by digest: a ready image no tag names, which hypeman keeps.
    time.sleep(0.05)
    store.add_digest("hgc-f1", name=f"docker.io/library/hgc-f1@sha256:{a}")
    assert m.stop() == 0
    f = run("fsck", "--store", root)
    assert "half-collected" not in f.stdout, f.stdout
    # The next mount replays whatever the first one left.
    m2 = mounter(store, mnt)
    assert d.is_dir(), (f"the next mount deleted an image nobody removed:\n--- first mount:\n{log1[-3000:]}"
                        f"\n--- second mount:\n{m2.log_tail(30)}")
    assert (d / "rootfs.erofs").is_file()
    assert a in os.listdir(mnt / "digests")
    assert not list((bookkeeping(root) / "intents").iterdir())
    names = [n for n, _ in content_listing(root)]
    assert f"docker.io/library/hgc-f1@sha256:{a}" in names, names
    assert "another writer" in log1, log1[-3000:]


def test_a_store_that_is_a_mount_point_keeps_its_bookkeeping_inside(store, mounter):
    """Where the store's root is a mount point of its own (here a bind mount of itself: same
    filesystem, but a rename to its parent fails with EXDEV), the bookkeeping stays in
    STORE/.imagefs, GC still works, and the log says why."""
    a = store.add_digest("hgc-mp", name="docker.io/library/hgc-mp:v1")
    store.tag("docker.io/library/hgc-mp", "v1", a)
    root = store.root
    r = subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True, text=True)
    require(r.returncode == 0, f"cannot bind-mount the store on itself: {r.stderr}")
    try:
        m = mounter(store)
        os.unlink(m.mnt / "tags/docker.io/library/hgc-mp/v1")
        assert not (root / "content" / a).exists(), m.log_tail(20)
        assert (root / ".imagefs" / "lock").is_file()
        assert not (root.parent / f".imagefs-{root.name}").exists()
        assert "mount point" in m.log_text(), m.log_tail(20)
        assert m.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
