"""Issue 10, bugs 1, 2, 3 and 6: collecting an image where deletion or the trash meets the world.

1. A collection never deletes anything outside the digest directory's own filesystem (a bind mount,
   a read-only mount inside it), an entry that cannot be deleted (a mount point, an immutable file)
   stays in the trash, is reported, and never stops the next mount or `fsck --repair`.
2. A store spread over several filesystems (`content/` or a legacy repository a mount of its own):
   `rm` of the last tag frees the image, and the store mounts again.
3. On a full disk, `rm` of the last tag and `imagefs gc` free space.
6. `imagefs gc` never deletes an image a process uses through the mount (cwd in `rootfs/etc`).

Filesystems are tmpfs and small loop-mounted ext4 images under the test's own directory; every mount
made here is undone in a `finally`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import bookkeeping, eventually, imagefs_bin, require, sh, trash_entries
from hypeman import Content, Legacy

REPO = "docker.io/library/trash"
SERVED_BY = {"image-trees": [], "main-mount": ["--no-rootfs-mounts"]}


def imagefs(*args, timeout=60):
    return sh(imagefs_bin(), *map(str, args), timeout=timeout)


def T(mnt, repo, tag=None) -> Path:
    p = Path(mnt) / "tags" / repo
    return p / tag if tag else p


def umount(p):
    for _ in range(50):
        if sh("umount", p).returncode == 0 or not os.path.ismount(p):
            return
        time.sleep(0.1)
    sh("umount", "-l", p)


def unmount_under(prefix: Path):
    """Lazily unmounts every mount at or below `prefix` (a mount that moved with its directory into a
    trash, say), deepest first."""
    prefix = str(prefix).rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for p in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")}, key=len, reverse=True):
        sh("umount", "-l", p)


@contextlib.contextmanager
def mounted(what: list, at: Path):
    """`mount WHAT... AT`, undone on exit."""
    at.mkdir(parents=True, exist_ok=True)
    r = sh("mount", *what, at)
    require(r.returncode == 0, f"cannot mount {what} on {at}: {r.stderr}")
    try:
        yield at
    finally:
        umount(at)


@contextlib.contextmanager
def ext4(workdir: Path, at: Path, mib: int):
    """A loop-mounted ext4 of `mib` MiB at `at` (the loop device goes with the unmount)."""
    img = workdir / f"{at.name}.ext4"
    with open(img, "wb") as f:
        f.truncate(mib << 20)
    r = sh("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", img)
    require(r.returncode == 0, f"mkfs.ext4: {r.stderr}")
    with mounted(["-o", "loop", str(img)], at):
        yield at


def fill(fs: Path):
    """Fills the filesystem at `fs` to its last block (root's reserve included): allocates files of
    halving sizes until not even one block can be had."""
    size, i = 1 << 30, 0
    while size >= 512:
        fd = os.open(fs / f"filler-{i}", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
            i += 1
        except OSError:
            size //= 2
        finally:
            os.close(fd)
    os.sync()


def free_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


# ---------------------------------------------------------------- bug 1
@pytest.mark.parametrize("inside", ["bind", "ro-mount"])
def test_collection_never_deletes_through_a_mount_inside_the_digest_dir(store, mounter, workdir, inside):
    """`mount --bind OTHER STORE/content/<hex>/debug` (or a read-only mount there): `rm` of the last
    tag returns 0, every file of OTHER stays, the mountpoint waits in the trash, the log names it and
    why; the next mount and `fsck --repair` still run; once it is unmounted the next mount deletes it."""
    hx = store.add_digest("trash-bind")
    store.tag(REPO, "t", hx)
    other = workdir / "other"
    (other / "sub").mkdir(parents=True)
    (other / "precious").write_text("keep me\n")
    (other / "sub" / "deep").write_text("me too\n")
    debug = store.content_dir(hx) / "debug"
    debug.mkdir()
    what = ["--bind", str(other)] if inside == "bind" else ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(unmount_under, bookkeeping(store.root) / "trash")
        cleanup.enter_context(mounted(what, debug))
        m = mounter(store.root)
        os.unlink(T(m.mnt, REPO, "t"))                          # returns 0
        assert not store.content_dir(hx).exists(), "the digest directory is still in the store"
        assert (other / "precious").read_text() == "keep me\n", "a file outside the store was deleted"
        assert (other / "sub" / "deep").read_text() == "me too\n"
        assert eventually(lambda: "a mount point" in m.log_text(), timeout=2.0), m.log_tail(20)
        left = trash_entries(store.root)
        assert len(left) == 1, left
        m.stop()
        trashed = bookkeeping(store.root) / "trash" / left[0]
        assert sh("mountpoint", "-q", trashed / "debug").returncode == 0, "the mount moved with its directory"
        m2 = mounter(store.root)                                # the next mount mounts
        assert os.listdir(m2.mnt / "digests") == []
        assert (other / "precious").exists()
        m2.stop()
        r = imagefs("fsck", "--store", store.root)
        assert r.returncode == 1 and left[0] in r.stdout, (r.returncode, r.stdout, r.stderr)
        r = imagefs("fsck", "--store", store.root, "--repair")
        assert r.returncode == 1 and "busy" not in r.stderr.lower(), (r.returncode, r.stdout, r.stderr)
        assert "a mount point" in r.stdout, r.stdout
        assert (other / "precious").read_text() == "keep me\n"
        umount(trashed / "debug")
    m3 = mounter(store.root)                                    # retried: now it goes
    assert trash_entries(store.root) == []
    assert (other / "precious").read_text() == "keep me\n"
    m3.stop()


def test_an_immutable_file_stays_in_the_trash_and_never_stops_a_mount(images, workdir, mounter):
    """`chattr +i` on a file of a digest directory (ext4): `rm` returns 0, the file waits in the
    trash, the next mount mounts, and once the flag is gone the next mount deletes it."""
    require(sh("which", "chattr").returncode == 0, "needs chattr (e2fsprogs)")
    from helpers import Store
    with ext4(workdir, workdir / "vol", 32) as vol:
        store = Store(vol / "store", images)
        hx = store.add_digest("trash-immutable")
        store.tag(REPO, "t", hx)
        pinned = store.content_dir(hx) / "pinned"
        pinned.write_text("immutable\n")
        r = sh("chattr", "+i", pinned)
        require(r.returncode == 0, f"chattr +i: {r.stderr}")
        try:
            m = mounter(store.root)
            os.unlink(T(m.mnt, REPO, "t"))
            assert not store.content_dir(hx).exists()
            assert eventually(lambda: "Operation not permitted" in m.log_text(), timeout=2.0), m.log_tail(20)
            left = trash_entries(store.root)
            assert len(left) == 1, left
            m.stop()
            m2 = mounter(store.root)
            m2.stop()
            r = imagefs("fsck", "--store", store.root, "--repair")
            assert r.returncode == 1 and "Operation not permitted" in r.stdout, (r.returncode, r.stdout, r.stderr)
            kept = bookkeeping(store.root) / "trash" / left[0] / "pinned"
            assert kept.read_text() == "immutable\n"
        finally:
            for p in vol.rglob("pinned"):
                sh("chattr", "-i", p)
        m3 = mounter(store.root)
        assert trash_entries(store.root) == []
        m3.stop()


# ---------------------------------------------------------------- bug 2
@pytest.mark.parametrize("layout", ["content", "legacy"])
def test_a_store_spread_over_filesystems_collects_and_mounts_again(store, mounter, layout):
    """`content/` (or a legacy repository) on a filesystem of its own: the rename into the trash
    beside the store would cross filesystems (EXDEV). `rm` frees the image, hypeman lists no phantom,
    and the store mounts again."""
    sub = store.root / ("content" if layout == "content" else REPO)
    with mounted(["-t", "tmpfs", "-o", "size=16m", "tmpfs"], sub):
        hm = (Content if layout == "content" else Legacy)(store.root, store.images)
        if layout == "content":
            hx, keep = store.add_digest("spread-a"), store.add_digest("spread-b")
        else:
            hx = store.add_digest("spread-a", layout="legacy", repo=REPO)
            keep = store.add_digest("spread-b", layout="legacy", repo=REPO)
        store.tag(REPO, "t", hx)
        store.tag(REPO, "keep", keep)
        d = store.content_dir(hx) if layout == "content" else store.legacy_dir(REPO, hx)
        m = mounter(store.root)
        os.unlink(T(m.mnt, REPO, "t"))
        assert not d.exists(), "the digest directory is still in the store"
        assert hx not in os.listdir(m.mnt / "digests")
        assert "will retry" not in m.log_text(), m.log_tail(20)
        listed = [(im.name, im.source) for im in hm.list_images()]
        assert not [x for x in listed if hx in x[1] or ".imagefs-trash" in x[1]], listed    # no phantom
        # Its image tree may have been mounted: then it waits in the side trash until the kernel
        # releases it (moments after the lazy detach).
        want = [(store.content_dir(keep) if layout == "content" else store.legacy_dir(REPO, keep)) / "rootfs.erofs"]
        assert eventually(lambda: list(sub.rglob("rootfs.erofs")) == want, timeout=5.0), \
            (list(sub.rglob("rootfs.erofs")), m.log_tail(20))
        m.stop()
        m2 = mounter(store.root)                                  # the next mount mounts
        assert os.listdir(m2.mnt / "digests") == [keep]
        m2.stop()
        r = imagefs("fsck", "--store", store.root)
        assert r.returncode == 0, (r.stdout, r.stderr)


# ---------------------------------------------------------------- bug 3
@pytest.mark.parametrize("layout", ["content", "legacy"])
def test_a_full_disk_still_frees_space(images, workdir, mounter, layout):
    """On an ext4 filled to the last block, `rm` of the last tag and `imagefs gc` collect. A legacy
    repository name longer than 25 bytes makes the GC record's symlink target too long to live in the
    inode (it needs a data block: ENOSPC before the fix)."""
    from helpers import Store
    repo = "registry.example.com/a-team/with-a-long-repository-name" if layout == "legacy" else REPO
    with ext4(workdir, workdir / "full", 24) as vol:
        store = Store(vol / "store", images)
        kw = {"layout": "legacy", "repo": repo} if layout == "legacy" else {}
        a = store.add_digest("full-a", **kw)
        b = store.add_digest("full-b", **kw)           # never tagged: for imagefs gc
        store.tag(repo, "t", a)
        da = store.legacy_dir(repo, a) if layout == "legacy" else store.content_dir(a)
        db = store.legacy_dir(repo, b) if layout == "legacy" else store.content_dir(b)
        m = mounter(store.root)
        fill(vol)
        assert free_bytes(vol) == 0, free_bytes(vol)
        os.unlink(T(m.mnt, repo, "t"))                 # ENOSPC before the fix
        assert not da.exists()
        m.stop()
        fill(vol)
        r = imagefs("gc", "--store", store.root)
        assert r.returncode == 0 and b in r.stdout, (r.returncode, r.stdout, r.stderr)
        assert not db.exists()
        for f in vol.glob("filler-*"):
            f.unlink()
        m2 = mounter(store.root)
        assert os.listdir(m2.mnt / "digests") == []
        m2.stop()
        r = imagefs("fsck", "--store", store.root)
        assert r.returncode == 0, (r.stdout, r.stderr)


# ---------------------------------------------------------------- bug 6
@pytest.mark.parametrize("served_by", list(SERVED_BY))
@pytest.mark.parametrize("untagged_by", ["never-tagged", "other-writer"])
def test_gc_never_deletes_an_image_a_process_works_in(store, mounter, served_by, untagged_by):
    """A process whose cwd is `digests/<hex>/rootfs/etc` of an untagged image (never tagged, or whose
    tag another writer removed in the store) reads `os-release` after `imagefs gc` collected it."""
    hx = store.add_digest("bug6")
    if untagged_by == "other-writer":
        link = store.tag(REPO, "t", hx)
    m = mounter(store.root, extra_args=SERVED_BY[served_by])
    etc = m.mnt / "digests" / hx / "rootfs" / "etc"
    p = subprocess.Popen(["sh", "-c", f"cd '{etc}' && echo in && read go && cat os-release"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "in\n"
        if untagged_by == "other-writer":
            os.unlink(link)
            assert eventually(lambda: not os.path.lexists(T(m.mnt, REPO, "t")), timeout=3.0)
        r = imagefs("gc", "--store", store.root)
        assert r.returncode == 0 and f"content/{hx}" in r.stdout, (r.returncode, r.stdout, r.stderr)
        assert not store.content_dir(hx).exists()
        out, err = p.communicate("go\n", timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "KEY=bug6" in out, (p.returncode, out, err)


def test_a_legacy_copy_into_a_repository_on_its_own_filesystem(store, mounter):
    """A legacy store whose repository B is a filesystem of its own: tagging A's image in B makes B's
    legacy copy (built beside B, on B's filesystem: the bookkeeping's trash is on another), and
    removing that tag collects it."""
    a, b = "docker.io/library/copy-a", "docker.io/library/copy-b"
    with mounted(["-t", "tmpfs", "-o", "size=16m", "tmpfs"], store.root / b):
        hx = store.add_digest("copy-a", layout="legacy", repo=a)
        store.tag(a, "t", hx)
        m = mounter(store.root)
        os.symlink(hx, T(m.mnt, b, "t"))                          # EXDEV before the fix
        assert (store.legacy_dir(b, hx) / "rootfs.erofs").is_file()
        assert os.readlink(store.root / b / "t") == hx
        assert (T(m.mnt, b, "t") / "rootfs" / "etc" / "os-release").read_text().endswith("KEY=copy-a\n")
        os.unlink(T(m.mnt, b, "t"))
        assert eventually(lambda: not store.legacy_dir(b, hx).exists(), timeout=5.0)
        assert (store.legacy_dir(a, hx) / "rootfs.erofs").is_file()
        m.stop()
        m2 = mounter(store.root)
        assert os.listdir(m2.mnt / "digests") == [hx]
        assert not (store.root / b / ".imagefs-trash").exists()
        m2.stop()
