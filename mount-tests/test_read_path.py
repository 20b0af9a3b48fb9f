"""The daemon's read path inside an image tree (README, "The read path").

Reads of an image's file go through the daemon without the inode table or any other
process-wide lock (issue 13): these tests pin what that must keep. Several threads read one
file in parallel, each through its own open file, while the image's last tag is removed: every
read returns the right bytes (no torn or stale data), and no open file loses its image (in use
is never yanked). Both of the daemon's ways of serving a tree: its image-tree connection
(`--rootfs-mounts fuse`, reads by inode number) and the main mount (`--rootfs-mounts none`,
whose opens of an image's file keep no handle: reads by number too).
"""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from rootfs_tree import StoreRoot, add_image, build_busybox_tree, mkfs, wait_until

READERS = 4
SIZES = (4096, 128 * 1024, 4096 + 17)


@pytest.fixture(params=["fuse", "none"])
def way(request):
    """--rootfs-mounts: the daemon serves the tree (never the kernel's erofs)."""
    return request.param


def reader(path, want, stop, out, seed):
    """Reads random ranges of `path` until `stop`, dropping the pages it read so that every
    read reaches the daemon; records (reads, reads after `stop.removed`, first mismatch)."""
    rnd = random.Random(seed)
    reads = after = 0
    bad = None
    fd = os.open(path, os.O_RDONLY)
    try:
        while not stop.is_set():
            size = rnd.choice(SIZES)
            off = rnd.randrange(0, len(want) - 1)
            # Page-aligned most of the time, as the kernel's readahead asks; some not.
            if rnd.random() < 0.8:
                off -= off % 4096
            got = os.pread(fd, size, off)
            if got != want[off:off + size]:
                bad = (off, size, len(got))
                break
            reads += 1
            if stop.removed:
                after += 1
            os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
    except OSError as e:
        bad = repr(e)
    finally:
        os.close(fd)
    out.append((reads, after, bad))


def daemon_reads(mnt) -> int:
    """READ requests the daemon has served (its metrics)."""
    for line in (mnt / ".imagefs" / "metrics").read_text().splitlines():
        if line.startswith('imagefs_requests_total{op="read"}'):
            return int(line.rsplit(" ", 1)[1])
    return 0


def test_parallel_reads_of_one_file_survive_the_removal_of_its_last_tag(workdir, mounter, way):
    tree = workdir / "tree"
    build_busybox_tree(tree)
    want = (tree / "data" / "random-2M").read_bytes()
    img = mkfs(workdir / "a.erofs", tree, "lz4")
    root = workdir / "store"
    root.mkdir()
    hx = add_image(root, img, repo="reads/a", tag="v1")
    m = mounter(StoreRoot(root), extra_args=["--rootfs-mounts", way])
    path = m.mnt / "digests" / hx / "rootfs" / "data" / "random-2M"
    if way == "fuse":
        # Its tree is a mount of its own, of the image-tree connection.
        assert wait_until(lambda: os.stat(path.parent.parent).st_dev != os.stat(m.mnt).st_dev, 5), \
            m.log_tail()

    served = daemon_reads(m.mnt)
    stop = threading.Event()
    stop.removed = False
    out: list = []
    threads = [threading.Thread(target=reader, args=(path, want, stop, out, i)) for i in range(READERS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        os.unlink(m.mnt / "tags" / "reads" / "a" / "v1")
        stop.removed = True
        assert not (root / "content" / hx).exists(), "the image is collected, but in use"
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(out) == READERS, f"a reader hung: {out}\n{m.log_tail()}"
    for reads, after, bad in out:
        assert bad is None, f"a read went wrong: {bad} ({reads} good reads before)\n{m.log_tail()}"
        assert after > 0, f"a reader read nothing after the removal: {out}"
    # The reads reached the daemon (not only the kernel's page cache).
    total = sum(r for r, _, _ in out)
    assert daemon_reads(m.mnt) - served >= total // 2, (daemon_reads(m.mnt) - served, total)
    # The open files closed, the image is let go.
    assert wait_until(lambda: not path.exists(), 5)
    assert m.proc.poll() is None, m.log_tail()
