"""What the kernel asks the daemon about an image's inodes (README, Performance, "Main mount").

Counted from `.imagefs/metrics`, so load does not move them. Both of the daemon's ways of
serving a tree: its image-tree connection (`--rootfs-mounts fuse`) and the main mount
(`--rootfs-mounts none`).
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from rootfs_tree import StoreRoot, add_image, build_busybox_tree, mkfs, wait_until


@pytest.fixture(params=["fuse", "none"])
def way(request):
    """--rootfs-mounts: the daemon serves the tree (never the kernel's erofs)."""
    return request.param


def requests(mnt) -> dict[str, int]:
    """Requests served so far, by operation."""
    out = {}
    for line in (mnt / ".imagefs" / "metrics").read_text().splitlines():
        if line.startswith('imagefs_requests_total{op="'):
            out[line.split('"')[1]] = int(line.rsplit(" ", 1)[1])
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def asked(mnt, run) -> dict[str, int]:
    """Requests that `run()` sends, less what reading the metrics itself sends (its file's
    LOOKUP, GETATTR, OPEN, READ: measured just before)."""
    first = requests(mnt)
    before = requests(mnt)
    run()
    got = delta(before, requests(mnt))
    for k, v in delta(first, before).items():
        got[k] = got.get(k, 0) - v
    return {k: v for k, v in got.items() if v}


def mounted_tree(workdir, mounter, way):
    tree = workdir / "tree"
    build_busybox_tree(tree)
    img = mkfs(workdir / "a.erofs", tree, "lz4")
    root = workdir / "store"
    root.mkdir()
    hx = add_image(root, img, repo="req/a", tag="v1")
    m = mounter(StoreRoot(root), extra_args=["--rootfs-mounts", way])
    rootfs = m.mnt / "digests" / hx / "rootfs"
    if way == "fuse":
        assert wait_until(lambda: os.stat(rootfs).st_dev != os.stat(m.mnt).st_dev, 5), m.log_tail()
    return m, rootfs


def test_a_missing_name_in_an_image_is_asked_once(workdir, mounter, way):
    m, rootfs = mounted_tree(workdir, mounter, way)
    missing = rootfs / "data" / "no-such-file"
    os.stat(rootfs / "data")
    os.stat(m.mnt / "tags" / "req" / "a" / "v1")

    def probe(path):
        for _ in range(3):
            with pytest.raises(FileNotFoundError):
                os.stat(path)

    # An image never changes: the kernel keeps the answer (a negative entry).
    got = asked(m.mnt, lambda: probe(missing))
    assert got.get("lookup", 0) == 1, got
    # Not so in tags/, where a tag may appear at any time: asked every time.
    got = asked(m.mnt, lambda: probe(m.mnt / "tags" / "req" / "a" / "v2"))
    assert got.get("lookup", 0) == 3, got
    # The name still cannot be created, and the tree still answers.
    with pytest.raises(OSError) as e:
        missing.write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    assert (rootfs / "data" / "random-2M").stat().st_size > 0


def test_a_walk_of_an_image_is_answered_by_the_kernel_once_warm(workdir, mounter, way):
    """After a walk and a second one (the first after a listing: on the main mount's writable
    superblock the kernel asks GETATTR once per directory it listed, for atime), a third
    sends nothing about the image."""
    m, rootfs = mounted_tree(workdir, mounter, way)
    walk = ["find", str(rootfs), "-printf", "%s %m %u\\n"]
    for _ in range(2):
        subprocess.run(walk, check=True, stdout=subprocess.DEVNULL)
    got = asked(m.mnt, lambda: subprocess.run(walk, check=True, stdout=subprocess.DEVNULL))
    for op in ("readdir", "readdirplus", "readlink", "getxattr", "listxattr"):
        assert got.get(op, 0) == 0, got
    # The tree has 10 directories and 56 other entries: one request per directory would
    # show. (Up to 3: the path down to rootfs/, digests/ whose TTL is a second.)
    assert got.get("lookup", 0) + got.get("getattr", 0) <= 3, got
