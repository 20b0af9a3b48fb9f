"""rootfs/ mounted with the kernel's own erofs (`--rootfs-mounts=kernel`, the default as root).

The daemon mounts each ready image's rootfs.erofs, from a read-only autoclearing loop device bound to
the file, on its digests/<hex>/rootfs: the tests check the mount (type erofs, read-only, nosuid,nodev, or only
nodev with --allow-setuid), that it shows what a loop mount of the same image shows, that a
process inside keeps its tree when the image is collected and the kernel lets the image (and the
loop device) go once the process leaves, that an image the reader refuses falls back (a log line, an error, no hang),
and that `--rootfs-mounts=fuse` / `none` give the FUSE ways. About 15 s.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import force_unmount, terminate, trash_entries, wait_trash_empty
from rootfs_tree import (StoreRoot, add_image, add_raw_digest, assert_own_superblock, build_busybox_tree,
                         build_varied_tree, compare, describe, erofs_superblocks, inode_partition, kernel_mount, mkfs,
                         wait_until)

def tree_mount(mnt: Path, hx: str) -> Path:
    return mnt / "digests" / hx / "rootfs"


def mountinfo_at(point: Path) -> tuple[list[str], str, list[str]] | None:
    """(mount options, filesystem type, superblock options) of the mount on point, if any."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields, rest = left.split(), right.split()
            if fields[4] == str(point):
                return fields[5].split(","), rest[0], rest[2].split(",")
    return None


def mounts_below(mnt: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{mnt}/")]


@pytest.fixture
def varied(workdir):
    tree = workdir / "tree-varied"
    build_varied_tree(tree)
    return mkfs(workdir / "varied.erofs", tree, "lz4")


@pytest.fixture
def busybox(workdir):
    tree = workdir / "tree-bb"
    build_busybox_tree(tree)
    return mkfs(workdir / "bb.erofs", tree, "lz4")


def store_with(workdir, img, repo="k/a", tag="v1") -> tuple[Path, str]:
    root = workdir / "store"
    root.mkdir(exist_ok=True)
    return root, add_image(root, img, repo=repo, tag=tag)


def in_use_only(m) -> int:
    """The metric of collected images still kept for their users."""
    for line in (m.mnt / ".imagefs" / "metrics").read_text().splitlines():
        if line.startswith("imagefs_in_use_only_images "):
            return int(line.split()[1])
    raise AssertionError("no imagefs_in_use_only_images metric")


def mounted_by_kernel(m, hx) -> bool:
    info = mountinfo_at(tree_mount(m.mnt, hx))
    return info is not None and info[1] == "erofs"


def test_rootfs_is_a_kernel_erofs_mount_showing_the_loop_mounts_tree(workdir, varied, mounter):
    root, hx = store_with(workdir, varied)
    m = mounter(StoreRoot(root))
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), f"no kernel erofs on rootfs/\n{m.log_tail()}"
    opts, fstype, sb = mountinfo_at(tree_mount(m.mnt, hx))
    assert {"ro", "nosuid", "nodev"} <= set(opts), opts
    assert "ro" in sb, sb
    with kernel_mount(varied, workdir / "loop") as loop:
        want = describe(loop)
        got = describe(tree_mount(m.mnt, hx))
    diffs = compare(want, got)
    assert not diffs, "\n".join(diffs[:40])
    assert inode_partition(want) == inode_partition(got)
    # the same tree through tags/
    via_tag = m.mnt / "tags" / "k" / "a" / "v1" / "rootfs"
    assert os.stat(via_tag).st_dev == os.stat(tree_mount(m.mnt, hx)).st_dev


def test_the_oracle_of_the_trees_own_file_has_a_superblock_of_its_own(workdir, busybox, mounter):
    """The kernel oracle (`kernel_mount`) of the very file the daemon's tree is mounted from gets a
    superblock of its own, and its check fails on one it shares: `mount -o loop` of that file, which the
    oracle used to do, reuses the tree's read-only loop device and erofs hands back the tree's superblock."""
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root))
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), f"no kernel erofs on rootfs/\n{m.log_tail()}"
    tree = tree_mount(m.mnt, hx)
    image = root / "content" / hx / "rootfs.erofs"
    with kernel_mount(image, workdir / "oracle") as oracle:
        assert os.stat(oracle).st_dev != os.stat(tree).st_dev
        assert_own_superblock(oracle)
    shared = workdir / "shared"
    shared.mkdir()
    subprocess.run(["mount", "-t", "erofs", "-o", "loop,ro", str(image), str(shared)], check=True,
                   capture_output=True, timeout=60)
    try:
        if os.stat(shared).st_dev != os.stat(tree).st_dev:
            pytest.skip("mount -o loop did not reuse the tree's loop device here (util-linux without it)")
        with pytest.raises(AssertionError, match="shares its superblock"):
            assert_own_superblock(shared)
    finally:
        subprocess.run(["umount", str(shared)], capture_output=True, timeout=60)


def loop_of(point: Path) -> str | None:
    """The loop device (loopN) the mount on point is made from, if any."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            if left.split()[4] == str(point):
                src = right.split()[1]
                return src.removeprefix("/dev/") if src.startswith("/dev/loop") else None
    return None


def loop_attr(dev: str, name: str) -> str | None:
    try:
        return (Path("/sys/block") / dev / "loop" / name).read_text().strip()
    except OSError:
        return None


def test_rootfs_is_mounted_from_a_read_only_autoclear_loop_device_that_goes_with_the_image(workdir, busybox,
                                                                                          mounter):
    """Issue 13: a file-backed erofs (6.18) reads its image synchronously and its metadata 4 KiB at a time
    (cold dd 1.3x, stat 1.2x the loop mount); a loop device bound to the file reads like the loop mount."""
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root))
    point = tree_mount(m.mnt, hx)
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
    dev = loop_of(point)
    assert dev, f"rootfs/ is not mounted from a loop device: {mountinfo_at(point)}\n{m.log_tail()}"
    image = root / "content" / hx / "rootfs.erofs"
    assert loop_attr(dev, "backing_file") == str(image.resolve())
    assert (Path("/sys/block") / dev / "ro").read_text().strip() == "1"
    assert loop_attr(dev, "autoclear") == "1"
    assert (point / "etc" / "hostname").read_bytes() == b"imagefs-busybox\n"
    # Collected while nobody uses it: the tree is detached, and autoclear unbinds the device with it.
    os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
    assert wait_until(lambda: loop_attr(dev, "backing_file") is None or hx not in loop_attr(dev, "backing_file"), 2), \
        f"/dev/{dev} still bound: {loop_attr(dev, 'backing_file')}"
    left = wait_trash_empty(root, 2)
    assert not left, f"{left} still in the trash\n{m.log_tail()}"


def test_without_loop_devices_the_image_file_itself_is_mounted(workdir, busybox):
    """No usable /dev/loop-control (here /dev/null bound over it, in a mount namespace of the daemon's own):
    said once in the log, and the kernel mounts the image file itself. The tree is looked at through
    /proc/PID/root, the daemon's namespace; it goes with the namespace when the daemon exits."""
    from helpers import imagefs_bin
    root, hx = store_with(workdir, busybox)
    mnt = workdir / "mnt-noloop"
    mnt.mkdir()
    log = workdir / "noloop.log"
    script = 'mount --bind /dev/null /dev/loop-control && exec "$0" mount --store "$1" "$2" --foreground'
    with open(log, "ab") as lf:
        p = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                              str(imagefs_bin()), str(root), str(mnt)], stdin=subprocess.DEVNULL, stdout=lf,
                             stderr=lf, env=dict(os.environ, RUST_LOG="info"), start_new_session=True)
    try:
        point = str(tree_mount(mnt, hx))

        def source():
            try:
                with open(f"/proc/{p.pid}/mountinfo") as f:
                    for line in f:
                        left, right = line.split(" - ", 1)
                        if left.split()[4] == point:
                            return right.split()[0], right.split()[1]
            except OSError:
                pass
            return None
        assert wait_until(lambda: source() is not None, 10), log.read_text(errors="replace")
        fstype, src = source()
        assert fstype == "erofs" and not src.startswith("/dev/loop"), (fstype, src)
        hostname = Path(f"/proc/{p.pid}/root{point}/etc/hostname")
        assert hostname.read_bytes() == b"imagefs-busybox\n"
        text = log.read_text(errors="replace")
        assert text.count("no loop device for image trees") == 1, text
    finally:
        terminate(p, 15)


def test_allow_setuid_lifts_nosuid_only(workdir, busybox, mounter):
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root), extra_args=["--allow-setuid"])
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
    opts, _, _ = mountinfo_at(tree_mount(m.mnt, hx))
    assert "nodev" in opts and "nosuid" not in opts, opts


def mount_with_a_process_in_the_tree(workdir, busybox, mounter):
    """A mount of a store of one image tagged k/a:v1 whose kernel tree is mounted, and a process
    whose working directory is inside that tree. Returns the store, the digest, the mount, the
    tree's path, the erofs superblocks the tree added and the process (the caller kills it)."""
    before = erofs_superblocks()
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root))
    rootfs = tree_mount(m.mnt, hx)
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
    ours = erofs_superblocks() - before
    inside = rootfs / "data"
    p = subprocess.Popen(["sleep", "1000"], cwd=inside, stdin=subprocess.DEVNULL)
    if not wait_until(lambda: os.path.realpath(f"/proc/{p.pid}/cwd") == str(inside), 5):
        p.kill()
        p.wait()
        raise AssertionError(f"the process did not start in {inside}")
    return root, hx, m, rootfs, ours, p


def test_collected_image_in_use_keeps_working_and_goes_once_left(workdir, busybox, mounter):
    root, hx, m, rootfs, ours, p = mount_with_a_process_in_the_tree(workdir, busybox, mounter)
    try:
        os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
        # Gone from the mount when rm returns; its tree is detached just after, unawaited.
        expect_enoent(rootfs)
        assert wait_until(lambda: str(rootfs) not in mounts_below(m.mnt), 5), mounts_below(m.mnt)
        assert not (root / "content" / hx).exists()
        # the process still reads its tree, names never looked up before too
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"]
        assert (cwd / "sub" / "f07").read_bytes() == b"sub file 7\n" * 8
        assert len((cwd / "random-2M").read_bytes()) == (2 << 20) + 3
        if len(ours) == 1:
            assert ours <= erofs_superblocks(), "the kernel let go of an image still in use"
        # As with a FUSE tree: the collected directory waits in the trash while in use, the
        # metric counts it, and nothing says it was released.
        time.sleep(0.3)
        assert len(trash_entries(root)) == 1, trash_entries(root)
        assert in_use_only(m) == 1
        assert f"released sha256:{hx}" not in m.log_tail(200)
    finally:
        p.kill()
        p.wait()
    # once left, the kernel drops the superblock (and its reference on the unlinked file)
    if len(ours) == 1:
        assert wait_until(lambda: not (ours & erofs_superblocks()), 5), f"{ours} still there"
    assert m.proc.poll() is None
    assert os.listdir(m.mnt / "digests") == []
    # and the daemon deletes the directory, says so, and counts it no more
    left = wait_trash_empty(root, 5)
    assert not left, f"{left} still in the trash once the kernel let go\n{m.log_tail()}"
    assert in_use_only(m) == 0
    assert f"released sha256:{hx}" in m.log_tail(200), m.log_tail()


def expect_enoent(p: Path) -> None:
    try:
        os.lstat(p)
    except FileNotFoundError:
        return
    raise AssertionError(f"{p} still there")


def test_rm_of_a_last_tag_waits_for_no_tree_detach_and_its_image_is_gone_at_once(workdir, busybox, mounter,
                                                                                 monkeypatch):
    """rm of a last tag whose image has a kernel tree mounted returns without waiting for the kernel
    to detach the tree (a lazy unmount, an RCU grace period: the largest part of such an rm): it
    waits only for `digests/<hex>` to expire (FUSE_EXPIRE_ONLY), and the invalidations that detach
    (the `rootfs` entry, then the digest's) go on the lane nobody waits for. Pinned by what the
    daemon sent on which lane (its debug log), not by time: the detach itself takes ~0.1-3 ms,
    as long as the rm's return, so the mount table cannot tell. And what rm guarantees holds: the
    digest, its rootfs and its listing entry answer as gone at once (no stale dentry is served),
    a process inside a tree keeps reading it, the trees are detached, and each image leaves the
    trash once the kernel lets go."""
    monkeypatch.setenv("IMAGEFS_RUST_LOG", "info,imagefs::fs::changes=debug")
    root = workdir / "store"
    root.mkdir()
    image = busybox.read_bytes()
    n = 12
    hexes = [add_raw_digest(root, f"{i + 1:02x}" * 32, image, repo=f"k/r{i}", tag="v1") for i in range(n)]
    m = mounter(StoreRoot(root))
    assert wait_until(lambda: all(mounted_by_kernel(m, hx) for hx in hexes), 10), m.log_tail()
    # A process inside the first tree, with a file of it open.
    inside = tree_mount(m.mnt, hexes[0]) / "data"
    held = open(tree_mount(m.mnt, hexes[0]) / "etc" / "hostname", "rb")
    p = subprocess.Popen(["sleep", "1000"], cwd=inside, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.realpath(f"/proc/{p.pid}/cwd") == str(inside), 5)
        for i, hx in enumerate(hexes):
            rootfs = tree_mount(m.mnt, hx)
            os.stat(rootfs / "etc")  # the kernel caches the digest's, rootfs' and etc's dentries
            os.unlink(m.mnt / "tags" / "k" / f"r{i}" / "v1")
            expect_enoent(m.mnt / "digests" / hx)
            expect_enoent(rootfs)
            expect_enoent(rootfs / "etc")
            assert hx not in os.listdir(m.mnt / "digests")
        # The in-use tree keeps working, names never looked up before too.
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"]
        assert (cwd / "sub" / "f07").read_bytes() == b"sub file 7\n" * 8
        assert held.read() == b"imagefs-busybox\n"
        assert wait_until(lambda: mounts_below(m.mnt) == [], 5), mounts_below(m.mnt)
        # Every image nobody uses left the trash; the one in use waits for its users.
        assert wait_until(lambda: len(trash_entries(root)) == 1, 5), f"{trash_entries(root)}\n{m.log_tail()}"
    finally:
        p.kill()
        p.wait()
        held.close()
    left = wait_trash_empty(root, 5)
    assert not left, f"{left} still in the trash once the kernel let go\n{m.log_tail()}"
    assert m.proc.poll() is None
    sent = [ln.split("invalidations: ", 1)[1] for ln in m.log_text().splitlines() if "invalidations: awaited" in ln]
    for hx in hexes:
        mine = [s for s in sent if f'"{hx}"' in s]
        assert len(mine) == 1, f"the rm of sha256:{hx} sent {mine}\n{m.log_tail()}"
        awaited, unawaited = mine[0].split("; unawaited ", 1)
        assert f'Expire(3, "{hx}")' in awaited and "Entry(" not in awaited, f"rm waited for a detach: {mine[0]}"
        assert unawaited.index('"rootfs")') < unawaited.index(f'Entry(3, "{hx}")'), mine[0]


def test_a_daemon_killed_while_a_kernel_tree_is_held_leaves_the_image_to_the_next_mount(workdir, busybox, mounter):
    """kill -9 while a collected image waits in the trash for the kernel to let go of its file: the
    process inside keeps its tree (the detached erofs mount does not depend on the daemon), and the
    next mount empties the trash at start-up without waiting for the process (the kernel's own
    reference keeps the unlinked file's data until it leaves)."""
    root, hx, m, rootfs, ours, p = mount_with_a_process_in_the_tree(workdir, busybox, mounter)
    try:
        os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
        assert len(trash_entries(root)) == 1, trash_entries(root)
        m.kill9()
        force_unmount(str(m.mnt))
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert (cwd / "sub" / "f07").read_bytes() == b"sub file 7\n" * 8
        m2 = mounter(StoreRoot(root))
        left = wait_trash_empty(root, 5)
        assert not left, f"{left} left in the trash by the next mount\n{m2.log_tail()}"
        assert os.listdir(m2.mnt / "digests") == []
        assert not (root / "content" / hx).exists()
        # the process still reads its tree, also what it never read before
        assert len((cwd / "random-2M").read_bytes()) == (2 << 20) + 3
        if len(ours) == 1:
            assert ours <= erofs_superblocks(), "the kernel let go of an image still in use"
    finally:
        p.kill()
        p.wait()
    if len(ours) == 1:
        assert wait_until(lambda: not (ours & erofs_superblocks()), 5), f"{ours} still there"
    assert m2.proc.poll() is None


def test_another_writer_deleting_an_image_whose_kernel_tree_is_in_use(workdir, busybox, mounter):
    """hypeman's DeleteImage (unlink of the tag, RemoveAll of content/<hex>) while a process runs
    inside the image's kernel tree: the process keeps its tree, the image leaves digests/ and its
    tree mount is detached, the daemon keeps answering, and nothing of it is left in the trash
    (it never was imagefs's to delete)."""
    root, hx, m, rootfs, _, p = mount_with_a_process_in_the_tree(workdir, busybox, mounter)
    try:
        os.unlink(root / "repositories" / "k" / "a" / "v1")
        shutil.rmtree(root / "content" / hx)
        assert wait_until(lambda: hx not in os.listdir(m.mnt / "digests"), 5), m.log_tail()
        assert wait_until(lambda: str(rootfs) not in mounts_below(m.mnt), 5), mounts_below(m.mnt)
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"]
        assert len((cwd / "random-2M").read_bytes()) == (2 << 20) + 3
        assert not (m.mnt / "tags" / "k" / "a" / "v1").exists()
        assert trash_entries(root) == []
        # the mount still takes changes
        hx2 = add_image(root, busybox, repo="k/b", tag="v2")
        assert hx2 == hx
        assert wait_until(lambda: (m.mnt / "tags" / "k" / "b" / "v2").exists(), 5), m.log_tail()
        assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
        assert (tree_mount(m.mnt, hx) / "etc" / "hostname").read_bytes() == b"imagefs-busybox\n"
    finally:
        p.kill()
        p.wait()
    assert m.proc.poll() is None


def test_collected_image_nobody_uses_leaves_the_trash_at_once(workdir, busybox, mounter):
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root))
    assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
    os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
    # The invalidation detached the unused tree; the kernel lets go of the file at once.
    left = wait_trash_empty(root, 1.0)
    assert not left, f"{left} still in the trash\n{m.log_tail()}"
    assert in_use_only(m) == 0


def test_corrupt_image_falls_back_with_a_log_line_and_never_hangs(workdir, busybox, mounter):
    root, good = store_with(workdir, busybox)
    bad = add_raw_digest(root, "ab" * 32, b"\0" * 8192 + os.urandom(8192), repo="k/bad", tag="v1")
    m = mounter(StoreRoot(root))
    assert wait_until(lambda: mounted_by_kernel(m, good), 5), m.log_tail()
    assert wait_until(lambda: bad in m.log_text() and "refused" in m.log_text(), 5), m.log_tail()
    assert not mounted_by_kernel(m, bad)
    t0 = time.monotonic()
    r = subprocess.run(["ls", str(tree_mount(m.mnt, bad))], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and ("Input/output error" in r.stderr or "No such file" in r.stderr), r
    assert time.monotonic() - t0 < 10
    with pytest.raises(OSError) as e:
        os.listdir(m.mnt / "tags" / "k" / "bad" / "v1" / "rootfs")
    assert e.value.errno in (errno.EIO, errno.ENOENT)
    # the good image is untouched, and the daemon said why once
    assert (tree_mount(m.mnt, good) / "etc" / "hostname").read_bytes() == b"imagefs-busybox\n"
    time.sleep(2.5)  # another round of the binder says nothing more
    lines = [ln for ln in m.log_text().splitlines() if bad in ln and "refused" in ln]
    assert len(lines) == 1, lines


@pytest.mark.parametrize("how", [["--rootfs-mounts", "fuse"], ["-o", "rootfs_mounts=fuse"]])
def test_fuse_trees_on_request(workdir, busybox, mounter, how):
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root), extra_args=how)
    point = tree_mount(m.mnt, hx)
    assert wait_until(lambda: mountinfo_at(point) is not None, 5), m.log_tail()
    opts, fstype, _ = mountinfo_at(point)
    assert fstype == "fuse.imagefs" and {"ro", "nosuid", "nodev"} <= set(opts), (fstype, opts)
    assert (point / "etc" / "hostname").read_bytes() == b"imagefs-busybox\n"


@pytest.mark.parametrize("how", [["--rootfs-mounts", "none"], ["--no-rootfs-mounts"], ["-o", "rootfs_mounts=none"]])
def test_no_tree_mounts_on_request(workdir, busybox, mounter, how):
    root, hx = store_with(workdir, busybox)
    m = mounter(StoreRoot(root), extra_args=how)
    assert (tree_mount(m.mnt, hx) / "etc" / "hostname").read_bytes() == b"imagefs-busybox\n"
    time.sleep(0.5)
    assert mounts_below(m.mnt) == []


def test_an_image_listing_a_name_with_a_slash_is_not_given_to_the_kernel(workdir, mounter):
    """A name with a / (patched in: mkfs.erofs makes none) makes the kernel fail the whole listing of its
    directory (the VFS refuses such names: EIO). The daemon lists the kernel's mount before attaching it
    and serves such an image from a FUSE tree, whose reader skips just that name."""
    tree = workdir / "names"
    tree.mkdir()
    for n in ("a_slash_b", "keep"):
        (tree / n).write_text("data\n")
    data = bytearray(mkfs(workdir / "names.erofs", tree, "plain").read_bytes())
    assert data.count(b"a_slash_b") == 1
    i = data.index(b"a_slash_b")
    data[i:i + 9] = b"a/slash/b"
    assert data[1024:1028] == b"\xe2\xe1\xf5\xe0", "erofs magic"
    data[1032] &= ~1 & 0xFF  # no superblock checksum (the patch may be in its block)
    img = workdir / "crafted.erofs"
    img.write_bytes(bytes(data))
    root, hx = store_with(workdir, img)
    m = mounter(StoreRoot(root))
    point = tree_mount(m.mnt, hx)
    assert wait_until(lambda: mountinfo_at(point) is not None, 5), m.log_tail()
    assert mountinfo_at(point)[1] == "fuse.imagefs"
    assert f"sha256:{hx}: its tree failed the names check" in m.log_text(), m.log_tail(20)
    assert sorted(os.listdir(point)) == ["keep"]


def test_an_unmount_right_after_a_collection_leaves_nothing_in_the_trash(workdir, busybox, mounter):
    """rm of an image's last tag, then at once an unmount: the collection's tree detach may not
    have run yet, and the binder looks only every 50 ms; the unmount detaches every tree, so the
    daemon deletes the collected image before it exits instead of leaving it to the next mount."""
    root, hx = store_with(workdir, busybox)
    left = []
    for i in range(6):
        m = mounter(StoreRoot(root))
        assert wait_until(lambda: mounted_by_kernel(m, hx), 5), m.log_tail()
        os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
        assert m.stop() == 0, m.log_tail()
        left += trash_entries(root)
        if left:
            break
        hx = add_image(root, busybox, repo="k/a", tag="v1")
    assert not left, f"after {i + 1} unmounts: {left} left in the trash"


def test_an_unmount_while_a_collected_image_is_in_use_leaves_it_to_the_next_mount(workdir, busybox, mounter):
    """The binder's last pass at unmount must not delete a collected image a process still runs
    in: the unmount returns, the process keeps its tree, the image waits in the trash, and the
    next mount, once the process left, empties the trash."""
    root, hx, m, rootfs, ours, p = mount_with_a_process_in_the_tree(workdir, busybox, mounter)
    try:
        os.unlink(m.mnt / "tags" / "k" / "a" / "v1")
        assert m.stop() == 0, m.log_tail()
        assert len(trash_entries(root)) == 1, trash_entries(root)
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert len((cwd / "random-2M").read_bytes()) == (2 << 20) + 3
    finally:
        p.kill()
        p.wait()
    if len(ours) == 1:
        assert wait_until(lambda: not (ours & erofs_superblocks()), 5), f"{ours} still there"
    m2 = mounter(StoreRoot(root))
    left = wait_trash_empty(root, 5)
    assert not left, f"{left} left in the trash by the next mount\n{m2.log_tail()}"
