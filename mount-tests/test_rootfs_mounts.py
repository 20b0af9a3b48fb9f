"""digests/<hex>/rootfs/ as a read-only mount of its own (README, "rootfs/: a mount of its own").

The daemon serves the image trees from a second FUSE superblock, read-only, and mounts one
directory of it on every ready digest's rootfs/. These tests check that the mounts follow the
store (a new or finished image gets one, the last untag drops it and releases the image), that a
process inside one keeps working through an untag or an unmount, and that `imagefs umount`,
`--no-rootfs-mounts` and the plain-unmount refusal behave as the README says.

Each test runs with both ways of mounting a tree: `--rootfs-mounts=kernel` (the default: the
image file mounted with the kernel's erofs) and `--rootfs-mounts=fuse` (an image tree of the
daemon's read-only FUSE connection). test_kernel_erofs.py has what only the kernel's way does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import bookkeeping
from helpers import expect_errno, imagefs_bin, pid_alive, sh
from rootfs_tree import StoreRoot, add_image, build_busybox_tree, mkfs, wait_until


def mounts_below(mnt: Path) -> dict[str, list[str]]:
    """Mount point -> mountinfo fields, for every mount strictly below mnt."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].startswith(f"{mnt}/"):
                out[fields[4]] = fields
    return out


def tree_mount(mnt: Path, hx: str) -> Path:
    return mnt / "digests" / hx / "rootfs"


def is_own_mount(mnt: Path, hx: str) -> bool:
    """Is a tree mounted on digests/<hx>/rootfs? Read from the mount table: a stat of the path
    would look up the main mount's copy, which keeps the tree from being mounted over it
    (rootfs_mounts.rs) while a test polls it every 50 ms."""
    return str(tree_mount(mnt, hx)) in mounts_below(mnt)


@pytest.fixture(params=["kernel", "fuse"])
def how(request):
    """--rootfs-mounts: how each tree is mounted."""
    return request.param


@pytest.fixture
def tree_mounter(mounter, how):
    """The mounter, trees mounted the `how` way (extra arguments after it)."""
    def factory(store_root, **opts):
        opts["extra_args"] = ["--rootfs-mounts", how, *opts.get("extra_args", [])]
        return mounter(store_root, **opts)
    return factory


@pytest.fixture
def images(workdir):
    """Two busybox images (different hostnames), built once per test."""
    out = []
    for name in ("a", "b"):
        tree = workdir / f"tree-{name}"
        build_busybox_tree(tree, hostname=f"host-{name}\n".encode())
        out.append(mkfs(workdir / f"{name}.erofs", tree, "lz4"))
    return out


def mount_one(workdir, images, tree_mounter, **opts):
    """A store with image a tagged mounts/a:v1, mounted; its tree's own mount is awaited
    unless the options turn tree mounts off. Returns (store root, hex of a, mount)."""
    root = workdir / "store"
    root.mkdir()
    ha = add_image(root, images[0], repo="mounts/a", tag="v1")
    m = tree_mounter(StoreRoot(root), **opts)
    if not opts:
        assert wait_until(lambda: is_own_mount(m.mnt, ha), 5), f"no mount on rootfs/ of {ha}\n{m.log_tail()}"
    return root, ha, m


def test_ready_images_are_read_only_mounts_of_their_own(workdir, images, tree_mounter, how):
    root = workdir / "store"
    root.mkdir()
    ha = add_image(root, images[0], repo="mounts/a", tag="v1")
    hb = add_image(root, images[1], repo="mounts/b", tag="v1", status="pulling")
    m = tree_mounter(StoreRoot(root))
    assert wait_until(lambda: is_own_mount(m.mnt, ha), 5), f"no mount on rootfs/ of {ha}\n{m.log_tail()}"
    below = mounts_below(m.mnt)
    fields = below.get(str(tree_mount(m.mnt, ha)))
    assert fields, f"{tree_mount(m.mnt, ha)} not in mountinfo: {list(below)}"
    sep = fields.index("-")
    assert {"ro", "nosuid", "nodev"} <= set(fields[5].split(",")), f"mount options {fields[5]}"
    assert fields[sep + 1] == {"kernel": "erofs", "fuse": "fuse.imagefs"}[how], fields
    assert "ro" in fields[sep + 3].split(","), f"superblock options {fields[sep + 3]}: not read-only"
    assert str(tree_mount(m.mnt, hb)) not in below, "an image still pulling has no rootfs/ yet"

    if how == "fuse":
        # the same inode number as the main mount lists for it (the kernel's erofs numbers
        # its root itself)
        ent = {e.name: e.inode() for e in os.scandir(m.mnt / "digests" / ha)}
        assert os.stat(tree_mount(m.mnt, ha)).st_ino == ent["rootfs"]
    # the same tree through digests/ and tags/
    via_tag = m.mnt / "tags" / "mounts" / "a" / "v1" / "rootfs"
    assert os.stat(via_tag).st_dev == os.stat(tree_mount(m.mnt, ha)).st_dev
    assert (via_tag / "etc" / "hostname").read_bytes() == b"host-a\n"
    expect_errno(errno.EROFS, os.open, via_tag / "new", os.O_CREAT | os.O_WRONLY, 0o644)
    expect_errno(errno.EROFS, os.mkdir, via_tag / "newdir")

    # the pull finishes: its tree is mounted within a few seconds
    meta = root / "content" / hb / "metadata.json"
    doc = json.loads(meta.read_text())
    doc["status"] = "ready"
    tmp = meta.with_name(".tmp-meta")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, meta)
    assert wait_until(lambda: is_own_mount(m.mnt, hb), 6), f"finished pull: no mount on rootfs/\n{m.log_tail()}"
    assert (tree_mount(m.mnt, hb) / "etc" / "hostname").read_bytes() == b"host-b\n"


def test_new_image_gets_a_mount_and_last_untag_drops_it(workdir, images, tree_mounter):
    root, ha, m = mount_one(workdir, images, tree_mounter)

    # another writer adds an image and its tag
    hb = add_image(root, images[1], repo="mounts/b", tag="v1")
    assert wait_until(lambda: is_own_mount(m.mnt, hb), 5), f"new image: no mount on rootfs/\n{m.log_tail()}"
    rb = tree_mount(m.mnt, hb)
    assert (rb / "etc" / "hostname").read_bytes() == b"host-b\n"
    subprocess.run(["find", str(rb)], check=True, capture_output=True)  # the kernel now caches its tree

    os.unlink(m.mnt / "tags" / "mounts" / "b" / "v1")
    # Gone when rm returns; the tree is detached just after (rm does not wait for it).
    assert not os.path.lexists(rb)
    assert not os.path.lexists(m.mnt / "digests" / hb)
    assert wait_until(lambda: str(rb) not in mounts_below(m.mnt), 5), "the mount of a collected image stays"
    assert hb not in os.listdir(m.mnt / "digests")
    assert not (root / "content" / hb).exists()
    # nothing uses it: the image is released (its trash entry deleted) without any cache drop
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: not trash.exists() or not os.listdir(trash), 5), \
        f"collected image kept: {os.listdir(trash)}\n{m.log_tail()}"
    # the other image is untouched
    assert is_own_mount(m.mnt, ha)
    assert (tree_mount(m.mnt, ha) / "etc" / "hostname").read_bytes() == b"host-a\n"


@contextlib.contextmanager
def process_inside(m, hx: str):
    """A process whose cwd is `data/` of digest hx's tree, for the `with` block; yields its
    cwd as /proc sees it (which keeps working after the tree left the mount), having listed
    it once. Killed at the end of the block."""
    inside = tree_mount(m.mnt, hx) / "data"
    p = subprocess.Popen(["sleep", "1000"], cwd=inside, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.realpath(f"/proc/{p.pid}/cwd") == str(inside), 5)
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"]
        yield cwd
    finally:
        p.kill()
        p.wait()


def still_reads(cwd: Path):
    """The process's tree still reads (names not looked up before, too)."""
    assert (cwd / "sub" / "f11").read_bytes() == b"sub file 11\n" * 12
    assert len(os.listdir(cwd / "sub")) > 2


@pytest.mark.parametrize("how", ["kernel", "fuse", "none"])
def test_a_collected_tree_in_use_is_released_once_its_user_left(workdir, images, tree_mounter, how):
    """The last tag of an image goes while a process works inside its tree: the process keeps
    reading, and once it exits the collected copy's space is freed (its trash entry deleted)
    within seconds, with no cache drop: the kernel must not keep the tree's entries cached
    out of reach of every invalidation (the daemon would wait for them forever). With
    `none`, `rootfs/` is the main mount's own."""
    if how == "none":
        root = workdir / "store"
        root.mkdir()
        ha = add_image(root, images[0], repo="mounts/a", tag="v1")
        m = tree_mounter(StoreRoot(root))
    else:
        root, ha, m = mount_one(workdir, images, tree_mounter)
    with process_inside(m, ha) as cwd:
        os.unlink(m.mnt / "tags" / "mounts" / "a" / "v1")
        assert not (root / "content" / ha).exists()
        still_reads(cwd)
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: not trash.exists() or not os.listdir(trash), 10), \
        f"collected copy kept after its last user left: {os.listdir(trash)}\n{m.log_tail()}"
    assert wait_until(lambda: "released sha256:" + ha in m.log_text(), 2), m.log_tail()


@pytest.mark.parametrize("how", ["fuse", "none"])
def test_an_image_another_writer_removed_in_use_is_closed_once_its_user_left(workdir, images, tree_mounter, how):
    """hypeman removes a digest (tag, then directory) while a process works inside its tree,
    served by the daemon (FUSE trees, or the main mount's own `rootfs/`): the process keeps
    reading from the image the daemon keeps open, and once it exits the daemon closes the
    image (the removed file's space is freed) within seconds, with no cache drop."""
    root = workdir / "store"
    root.mkdir()
    ha = add_image(root, images[0], repo="mounts/a", tag="v1")
    m = tree_mounter(StoreRoot(root))
    if how == "fuse":
        assert wait_until(lambda: is_own_mount(m.mnt, ha), 5), m.log_tail()
    with process_inside(m, ha) as cwd:
        os.unlink(root / "repositories" / "mounts" / "a" / "v1")
        shutil.rmtree(root / "content" / ha)
        assert wait_until(lambda: "left the store (another writer removed it)" in m.log_text(), 5), m.log_tail()
        still_reads(cwd)
    assert wait_until(lambda: f"released the image of sha256:{ha}" in m.log_text(), 10), \
        f"the removed image stays open after its last user left\n{m.log_tail()}"


def test_an_image_pulled_again_right_after_its_collection_is_served_and_kept(workdir, images, tree_mounter, how):
    """hypeman pulls a digest again the moment `rm` collected it (same digest, new directory),
    while a process still works inside the collected copy's tree. The process keeps reading,
    `digests/<hex>/rootfs` serves the new copy at once, the new copy gets a tree mount of its
    own (with FUSE trees once the process left the old one: a tree in use is never mounted
    over, and the daemon tells the two apart only by digest), and nothing deletes the new
    copy: not the release of the collected one, not the next mount."""
    root, ha, m = mount_one(workdir, images, tree_mounter)
    with process_inside(m, ha) as cwd:
        os.unlink(m.mnt / "tags" / "mounts" / "a" / "v1")
        assert not (root / "content" / ha).exists()
        # pulled again at once, as another writer: the same image under the same digest
        assert add_image(root, images[0], repo="mounts/a", tag="v2") == ha
        hostname = tree_mount(m.mnt, ha) / "etc" / "hostname"
        assert wait_until(lambda: hostname.exists(), 5), f"the new copy is not served\n{m.log_tail()}"
        assert hostname.read_bytes() == b"host-a\n"
        if how == "kernel":
            assert wait_until(lambda: is_own_mount(m.mnt, ha), 8), f"no tree for the new copy\n{m.log_tail()}"
        assert os.readlink(m.mnt / "tags" / "mounts" / "a" / "v2").endswith(ha)
        # the process still reads the collected copy's tree
        still_reads(cwd)
        assert (cwd / "random-2M").stat().st_size == 2 * 1024 * 1024 + 3
    assert wait_until(lambda: is_own_mount(m.mnt, ha), 10), f"no tree for the new copy\n{m.log_tail()}"
    assert hostname.read_bytes() == b"host-a\n"
    # the collected copy is released (its trash entry deleted); the new one stays
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: not trash.exists() or not os.listdir(trash), 10), \
        f"collected copy kept: {os.listdir(trash)}\n{m.log_tail()}"
    time.sleep(2.5)  # a binder round (2 s) after the release
    assert (root / "content" / ha / "rootfs.erofs").is_file(), m.log_tail()
    r = sh(imagefs_bin(), "umount", m.mnt, timeout=30)
    assert r.returncode == 0, r.stderr
    assert m.proc.wait(timeout=10) == 0, m.log_tail()
    m2 = tree_mounter(StoreRoot(root))
    assert wait_until(lambda: is_own_mount(m2.mnt, ha), 5), m2.log_tail()
    assert (tree_mount(m2.mnt, ha) / "etc" / "hostname").read_bytes() == b"host-a\n"
    assert (root / "content" / ha / "rootfs.erofs").is_file()


def test_umount_takes_the_image_trees_along(workdir, images, tree_mounter):
    _, ha, m = mount_one(workdir, images, tree_mounter)
    r = sh(imagefs_bin(), "umount", m.mnt, timeout=30)
    assert r.returncode == 0, r.stderr
    assert mounts_below(m.mnt) == {}
    assert m.proc.wait(timeout=10) == 0, m.log_tail()


def test_plain_unmount_of_the_parent_is_refused_while_trees_are_mounted(workdir, images, tree_mounter):
    _, ha, m = mount_one(workdir, images, tree_mounter)
    r = sh("fusermount3", "-u", m.mnt)
    assert r.returncode != 0 and "busy" in r.stderr.lower(), (r.returncode, r.stderr)
    # nothing was lost: the mount still works
    assert (tree_mount(m.mnt, ha) / "etc" / "hostname").read_bytes() == b"host-a\n"
    assert os.listdir(m.mnt / "tags" / "mounts" / "a") == ["v1"]


def test_a_process_inside_a_tree_outlives_umount(workdir, images, tree_mounter, how):
    _, ha, m = mount_one(workdir, images, tree_mounter)
    inside = tree_mount(m.mnt, ha) / "data"
    p = subprocess.Popen(["sleep", "1000"], cwd=inside, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: os.path.realpath(f"/proc/{p.pid}/cwd") == str(inside), 5)
        r = sh(imagefs_bin(), "umount", m.mnt, timeout=30)
        assert r.returncode == 0, r.stderr
        assert mounts_below(m.mnt) == {}
        # the process still reads its tree (names never looked up before, too)
        cwd = Path(f"/proc/{p.pid}/cwd")
        assert sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"]
        assert (cwd / "sub" / "f11").read_bytes() == b"sub file 11\n" * 12
        if how == "fuse":
            time.sleep(0.5)
            assert m.proc.poll() is None, "the daemon must keep serving a tree still in use"
        else:
            # the kernel serves the tree itself: the daemon may go, the tree stays
            assert m.proc.wait(timeout=10) == 0, m.log_tail()
            assert (cwd / "sub" / "f12").read_bytes() == b"sub file 12\n" * 13
            assert sorted(os.listdir(cwd / "sub"))[:2] == ["f00", "f01"]
    finally:
        p.kill()
        p.wait()
    assert m.proc.wait(timeout=10) == 0, m.log_tail()
    assert not pid_alive(m.proc.pid)


def test_no_rootfs_mounts_serves_rootfs_from_the_main_mount(workdir, images, tree_mounter):
    _, ha, m = mount_one(workdir, images, tree_mounter, extra_args=["-o", "no_rootfs_mounts"])
    rootfs = tree_mount(m.mnt, ha)
    assert (rootfs / "etc" / "hostname").read_bytes() == b"host-a\n"
    time.sleep(0.5)
    assert mounts_below(m.mnt) == {}
    assert os.stat(rootfs).st_dev == os.stat(m.mnt).st_dev


def test_a_tree_in_use_through_the_main_mount_is_never_mounted_over(workdir, images, tree_mounter):
    """A process inside the main mount's copy of a tree (it got there before the tree's own mount
    existed) must not have a mount land over it: `..` would then lead into another device and
    find/tar would stop short. The daemon waits until the tree is no longer in use."""
    _, ha, m = mount_one(workdir, images, tree_mounter)
    target = str(tree_mount(m.mnt, ha))
    want = len(subprocess.run(["find", "."], cwd=workdir / "tree-a" / "data", capture_output=True,
                              check=True).stdout.splitlines())
    p = None
    for _ in range(3):
        # Take the tree's own mount away (as a failed `imagefs umount` would) and step into the
        # main mount's copy before the daemon's next round (every 2 s) mounts it again.
        assert sh("umount", "-l", target).returncode == 0
        p = subprocess.Popen(["sleep", "1000"], cwd=tree_mount(m.mnt, ha) / "data", stdin=subprocess.DEVNULL)
        if os.stat(f"/proc/{p.pid}/cwd").st_dev == os.stat(m.mnt).st_dev:
            break
        p.kill()
        p.wait()  # the daemon was quicker: try again
    else:
        pytest.fail("could not get a process into the main mount's copy of the tree")
    try:
        cwd = f"/proc/{p.pid}/cwd"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = subprocess.run(["find", "."], cwd=cwd, capture_output=True)
            assert r.returncode == 0, r.stderr
            assert len(r.stdout.splitlines()) == want
            assert target not in mounts_below(m.mnt), "a mount landed on a tree in use"
            time.sleep(0.2)
    finally:
        p.kill()
        p.wait()
    # nobody is inside any more: the daemon drops what the kernel only caches and mounts the tree
    assert wait_until(lambda: target in mounts_below(m.mnt), 10), m.log_tail()
    assert (tree_mount(m.mnt, ha) / "etc" / "hostname").read_bytes() == b"host-a\n"


def test_at_most_rootfs_mounts_max_trees_are_mounted(workdir, images, tree_mounter):
    root = workdir / "store"
    root.mkdir()
    hexes = [add_image(root, img, repo=f"mounts/{n}", tag="v1") for n, img in zip("ab", images)]
    m = tree_mounter(StoreRoot(root), extra_args=["-o", "rootfs_mounts_max=1"])
    assert wait_until(lambda: len(mounts_below(m.mnt)) == 1, 5), m.log_tail()
    time.sleep(2.5)  # a later round mounts no more
    assert len(mounts_below(m.mnt)) == 1
    # both trees read the same, one through its own mount, the other through the main mount
    assert sorted(is_own_mount(m.mnt, hx) for hx in hexes) == [False, True]
    for hx, name in zip(hexes, "ab"):
        assert (tree_mount(m.mnt, hx) / "etc" / "hostname").read_bytes() == f"host-{name}\n".encode()
