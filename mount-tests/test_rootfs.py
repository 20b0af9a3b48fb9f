"""digests/<hex>/rootfs/: the image's file tree served from rootfs.erofs, exactly as the kernel's erofs
driver shows it (DESIGN.md 2), images in use never yanked (DESIGN.md 4), bad images fail with EIO.

The oracle is the kernel: every image is also loop-mounted with `mount -t erofs -o loop,ro`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from helpers import bookkeeping
from helpers import expect_errno, pid_alive, read_at, refusals, require
from rootfs_tree import StoreRoot
from rootfs_tree import (
    BIG_DIR, BIG_DIR_ENTRIES, VARIANTS, add_image, add_raw_digest, build_busybox_tree, build_varied_tree,
    compare, describe, describe_entry, drop_caches, inode_partition, kernel_mount, kernel_umount, mkfs,
    release_lines, run, sha256_bytes_of, trash_released, wait_until,
)

REPO = "rootfs-test/varied"


@pytest.fixture
def mounter(mounter):
    """This file tests the user-space reader against the kernel: image trees are mounted the FUSE way
    (`--rootfs-mounts=fuse`) unless a test says how. The kernel's erofs way: test_kernel_erofs.py."""
    def factory(store_root, mnt=None, **opts):
        args = list(opts.pop("extra_args", ()))
        if not any(a.startswith("--rootfs-mounts") or a.startswith("--no-rootfs-mounts") or "rootfs_mounts" in a
                   for a in args):
            args = ["--rootfs-mounts", "fuse", *args]
        return mounter(store_root, mnt, extra_args=args, **opts)
    return factory


# ------------------------------------------------------------------ session fixtures: images + kernel oracle
@pytest.fixture(scope="session")
def varied_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("rootfs-images")
    tree = d / "tree"
    build_varied_tree(tree)
    imgs = {v: mkfs(d / f"{v}.erofs", tree, v) for v in VARIANTS}
    return tree, imgs


@pytest.fixture(scope="session")
def kernel_views(varied_images, tmp_path_factory):
    """variant -> kernel loop mount dir (mounted for the whole session, always unmounted)."""
    _, imgs = varied_images
    base = tmp_path_factory.mktemp("kernel-erofs")
    with contextlib.ExitStack() as stack:
        views = {v: stack.enter_context(kernel_mount(img, base / v)) for v, img in imgs.items()}
        yield views


_desc_cache: dict = {}


def kernel_desc(kernel_views, variant):
    if variant not in _desc_cache:
        _desc_cache[variant] = describe(kernel_views[variant])
    return _desc_cache[variant]


@pytest.fixture
def varied_mount(varied_images, workdir, mounter):
    """A store holding every variant as a tagged ready digest, mounted. -> (mount, {variant: hex})."""
    _, imgs = varied_images
    root = workdir / "rstore"
    root.mkdir()
    hexes = {v: add_image(root, img, repo=REPO, tag=v) for v, img in imgs.items()}
    m = mounter(StoreRoot(root))
    m.store_root = root
    return m, hexes


def R(m, hx) -> Path:
    return m.mnt / "digests" / hx / "rootfs"


# ------------------------------------------------------------------ 1. differential fidelity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_walk_matches_kernel(varied_mount, kernel_views, variant):
    m, hexes = varied_mount
    k = kernel_desc(kernel_views, variant)
    # the oracle really holds the varied tree (so this test cannot pass vacuously)
    types = {d["type"] for d in k.values()}
    assert {"reg", "dir", "lnk", "chr", "blk", "fifo"} <= types, types
    assert len(k) > BIG_DIR_ENTRIES + 200
    assert k[b"names/\xff\xfe\xfd-not-utf8"]["type"] == "reg"
    assert k[b"links/orig"]["nlink"] == 3
    assert k[b"xattrs/many"]["xattrs"]["user.binary"] == bytes(range(256))
    assert k[b"dev/bigmajor"]["rdev"] == (4000, 1000000)

    f = describe(R(m, hexes[variant]))
    diffs = compare(k, f)
    assert not diffs, (f"{variant}: rootfs/ differs from the kernel's erofs mount in {len(diffs)} ways:\n"
                       + "\n".join(diffs[:60]))
    # hard links: the partition of paths by st_ino must be the kernel's
    kp, fp = inode_partition(k), inode_partition(f)
    only_k = sorted((sorted(c) for c in kp - fp), key=str)[:10]
    only_f = sorted((sorted(c) for c in fp - kp), key=str)[:10]
    detail = [f"{p!r}: kernel ino {k[p]['ino']} nlink {k[p]['nlink']}, imagefs ino {f[p]['ino']} nlink {f[p]['nlink']}"
              for c in kp ^ fp for p in sorted(c)][:20]
    assert kp == fp, (f"{variant}: hard-link classes (paths by st_ino) differ.\nkernel only: {only_k}\n"
                      f"imagefs only: {only_f}\n" + "\n".join(detail))
    # directories have distinct inode numbers, and no directory shares one with a file
    inos = [d["ino"] for d in f.values() if d["type"] == "dir"]
    assert len(inos) == len(set(inos)), f"{variant}: directories share inode numbers"
    assert not set(inos) & {d["ino"] for d in f.values() if d["type"] != "dir"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tar_matches_kernel(varied_mount, kernel_views, variant, workdir):
    """The strongest single check: tar records names, types, modes, owners, mtimes, link targets,
    hard links, device numbers, xattrs and every byte."""
    m, hexes = varied_mount
    outs = {}
    for who, root in (("kernel", kernel_views[variant]), ("imagefs", R(m, hexes[variant]))):
        out = workdir / f"{who}.tar"
        with open(out, "wb") as f:
            r = subprocess.run(["tar", "--sort=name", "--numeric-owner", "--xattrs", "--xattrs-include=*",
                                "--pax-option=delete=atime,delete=ctime", "-cf", "-", "."],
                               cwd=root, stdout=f, stderr=subprocess.PIPE, timeout=300)
        assert r.returncode == 0, f"tar of the {who} tree failed: {r.stderr[-2000:]!r}"
        outs[who] = out
    hk, hf = sha256_bytes_of(outs["kernel"]), sha256_bytes_of(outs["imagefs"])
    if hk != hf:
        lk = run("tar", "--numeric-owner", "--xattrs", "-tvvf", outs["kernel"]).stdout.splitlines()
        lf = run("tar", "--numeric-owner", "--xattrs", "-tvvf", outs["imagefs"]).stdout.splitlines()
        diff = [f"kernel : {a!r}\nimagefs: {b!r}" for a, b in zip(lk, lf) if a != b][:15]
        pytest.fail(f"{variant}: tar --sort=name --numeric-owner of rootfs/ differs from the kernel's "
                    f"(sha256 {hk[:16]} vs {hf[:16]}, sizes {outs['kernel'].stat().st_size} vs "
                    f"{outs['imagefs'].stat().st_size}, {len(lk)} vs {len(lf)} members); first differing "
                    f"members:\n" + "\n".join(diff))


@pytest.mark.parametrize("variant", ["plain", "lz4"])
def test_inode_numbers_stable_across_forget(varied_mount, kernel_views, variant):
    """st_ino is a property of the image's inode (the kernel uses the nid): the same file, and every hard
    link of it, keeps its inode number when the kernel forgets the inode and looks it up again
    (drop_caches between the stats). tar, du, find -samefile and rsync -H depend on this."""
    m, hexes = varied_mount
    root = R(m, hexes[variant])
    kroot = kernel_views[variant]
    paths = ["big/random-3M", "links/big-link", "links/orig", "links/link2", "sizes/link3-of-orig",
             "links/empty", "links/empty-link", "sizes/text-4097", "deep"]
    seen: dict = {}
    bad = []
    for rnd_ in range(3):
        for p in paths:
            ino = os.lstat(root / p).st_ino
            seen.setdefault(p, []).append(ino)
            drop_caches()
    for p, inos in seen.items():
        if len(set(inos)) != 1:
            bad.append(f"{p}: st_ino {inos} across three lookups with drop_caches in between "
                       f"(kernel: {os.lstat(kroot / p).st_ino} every time)")
    for group in (["big/random-3M", "links/big-link"], ["links/orig", "links/link2", "sizes/link3-of-orig"],
                  ["links/empty", "links/empty-link"]):
        got = {p: seen[p] for p in group}
        if len({i for v in got.values() for i in v}) != 1:
            bad.append(f"hard links {group} must share one st_ino, got {got}")
    assert not bad, f"{variant}:\n" + "\n".join(bad)


def test_inode_numbers_unique_across_images(varied_mount):
    """All images share the mount's st_dev, so (st_dev, st_ino) must not collide between two images
    (tar, cp -a, rsync -H, du would take two unrelated files for hard links of each other)."""
    m, hexes = varied_mount
    owner: dict = {}
    clashes = []
    for v, hx in hexes.items():
        d = describe(R(m, hx), hash_contents=False, xattrs=False)
        for path, e in d.items():
            prev = owner.setdefault(e["ino"], (v, path))
            if prev[0] != v:
                clashes.append(f"st_ino {e['ino']}: {prev[0]}:{prev[1]!r} and {v}:{path!r}")
    assert not clashes, f"{len(clashes)} inode numbers shared between different images, e.g.:\n" + \
        "\n".join(clashes[:10])


@pytest.mark.parametrize("variant", ["lz4", "lz4-pcluster64k", "plain"])
def test_concurrent_reads_match_kernel(varied_mount, kernel_views, variant):
    import concurrent.futures
    m, hexes = varied_mount
    files = [b"big/text-6M", b"big/mixed", b"big/random-3M", b"sizes/text-131073"]
    kdata = {f: open(os.path.join(os.fsencode(kernel_views[variant]), f), "rb").read() for f in files}

    def worker(seed):
        rnd = random.Random(seed)
        bad = []
        fds = {f: os.open(os.path.join(os.fsencode(R(m, hexes[variant])), f), os.O_RDONLY) for f in files}
        try:
            for _ in range(150):
                f = rnd.choice(files)
                off = rnd.randrange(0, len(kdata[f]))
                ln = rnd.choice([1, 4096, 5000, 65536, 131072, 300000])
                got = os.pread(fds[f], ln, off)
                if got != kdata[f][off:off + ln]:
                    bad.append(f"{f!r} pread({ln}, {off}) differs ({len(got)} bytes)")
        finally:
            for fd in fds.values():
                os.close(fd)
        return bad
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        bad = [b for r in ex.map(worker, range(12)) for b in r]
    assert not bad, f"{variant}: concurrent reads differ from the kernel:\n" + "\n".join(bad[:20])


_lgetxattr = ctypes.CDLL(None, use_errno=True).lgetxattr
_llistxattr = ctypes.CDLL(None, use_errno=True).llistxattr


def _xattr_call(fn, *args):
    r = fn(*args)
    return r if r >= 0 else -ctypes.get_errno()


def test_xattr_edge_cases_match_kernel(varied_mount, kernel_views):
    """Size probes (size 0), ERANGE for a too-small buffer, ENODATA for an absent name, as the kernel."""
    m, hexes = varied_mount
    bad = []
    for rel in (b"xattrs/many", b"xattrs/long-user", b"xattrs/long-security", b"xattrs/shared-07", b"xattrs",
                b"xattrs/symlink-with-xattr", b"sizes/rand-1", b"dev/fifo", b"dev/null"):
        res = {}
        for who, root in (("kernel", kernel_views["lz4"]), ("imagefs", R(m, hexes["lz4"]))):
            p = os.path.join(os.fsencode(root), rel)
            buf = ctypes.create_string_buffer(1)
            r = [_xattr_call(_llistxattr, p, None, 0), _xattr_call(_llistxattr, p, buf, 1)]
            for name in (b"user.long", b"security.long", b"user.shared", b"user.empty", b"user.absent",
                         b"security.on-symlink", b"trusted.absent", b"user." + b"k" * 200):
                r += [_xattr_call(_lgetxattr, p, name, None, 0), _xattr_call(_lgetxattr, p, name, buf, 1)]
            res[who] = r
        if res["kernel"] != res["imagefs"]:
            bad.append(f"{rel!r}: kernel {res['kernel']} imagefs {res['imagefs']}")
    assert not bad, "xattr size probes / errnos differ (negative = -errno):\n" + "\n".join(bad)


SYS_getdents64 = 217
_libc = ctypes.CDLL(None, use_errno=True)


def getdents_all(fd: int, bufsize: int) -> list[tuple[bytes, int]]:
    """(name, d_off) of every entry, read with a tiny getdents64 buffer (forces many resumptions)."""
    buf = ctypes.create_string_buffer(bufsize)
    out = []
    while True:
        n = _libc.syscall(SYS_getdents64, fd, buf, bufsize)
        if n < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        if n == 0:
            return out
        pos = 0
        raw = buf.raw
        while pos < n:
            d_off = int.from_bytes(raw[pos + 8:pos + 16], "little", signed=True)
            reclen = int.from_bytes(raw[pos + 16:pos + 18], "little")
            name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
            out.append((name, d_off))
            pos += reclen


@pytest.mark.parametrize("variant", ["plain", "lz4"])
def test_big_directory_readdir(varied_mount, kernel_views, variant):
    m, hexes = varied_mount
    kd = kernel_views[variant] / BIG_DIR
    fd_ = R(m, hexes[variant]) / BIG_DIR
    want = set(os.listdir(os.fsencode(kd)))
    assert len(want) == BIG_DIR_ENTRIES
    got = os.listdir(os.fsencode(fd_))
    assert len(got) == len(set(got)), f"duplicate names in readdir: {len(got)} entries, {len(set(got))} distinct"
    assert set(got) == want, f"missing {sorted(want - set(got))[:5]}, extra {sorted(set(got) - want)[:5]}"
    r = run("sh", "-c", "ls -f | wc -l", cwd=fd_)
    assert int(r.stdout) == BIG_DIR_ENTRIES + 2, f"ls -f | wc -l: {r.stdout!r}"
    r = run("sh", "-c", "ls -f | wc -l", cwd=kd)
    assert int(r.stdout) == BIG_DIR_ENTRIES + 2

    # tiny getdents buffers: every resumption continues exactly where the last one stopped
    fd = os.open(fd_, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ents = getdents_all(fd, 280)
        names = [n for n, _ in ents]
        assert len(names) == len(set(names)), "getdents64 (280-byte buffer) returned duplicates"
        assert set(names) == want | {b".", b".."}, \
            f"getdents64 (280-byte buffer): missing {sorted(want - set(names))[:5]}"
        # seek back to a remembered d_off (telldir/seekdir): the rest of the listing is the same
        for idx in (0, 1, 7, 1000, 2500, len(ents) - 2):
            os.lseek(fd, ents[idx][1], os.SEEK_SET)
            rest = [n for n, _ in getdents_all(fd, 4096)]
            assert rest == names[idx + 1:], (
                f"after lseek(dir, d_off of entry #{idx} = {ents[idx][1]}), readdir gave {len(rest)} entries "
                f"starting {rest[:3]}, expected {len(names) - idx - 1} starting {names[idx + 1:idx + 4]}")
        os.lseek(fd, 0, os.SEEK_SET)
        assert [n for n, _ in getdents_all(fd, 65536)] == names, "rewinddir gives a different listing"
    finally:
        os.close(fd)
    # two interleaved readers of the same directory don't disturb each other
    a, b = os.scandir(os.fsencode(fd_)), os.scandir(os.fsencode(fd_))
    try:
        la, lb = [], []
        for ea, eb in zip(a, b):
            la.append(ea.name)
            lb.append(eb.name)
        la += [e.name for e in a]
        lb += [e.name for e in b]
    finally:
        a.close()
        b.close()
    assert set(la) == want and set(lb) == want and len(la) == len(lb) == BIG_DIR_ENTRIES
    # lookups of every name (fresh, no readdir-plus help): all found with the kernel's types
    for n in sorted(want)[::97]:
        ks, fs = os.lstat(os.path.join(os.fsencode(kd), n)), os.lstat(os.path.join(os.fsencode(fd_), n))
        assert (ks.st_mode, ks.st_size) == (fs.st_mode, fs.st_size), n


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_find_matches_kernel(varied_mount, kernel_views, variant):
    m, hexes = varied_mount
    res = {}
    for who, root in (("kernel", kernel_views[variant]), ("imagefs", R(m, hexes[variant]))):
        c = run("sh", "-c", "find . | wc -l", cwd=root)
        p = run("find", ".", "-printf", r"%y %m %U %G %s %T@ %n %l|%p\0", cwd=root)
        res[who] = (int(c.stdout), sorted(p.stdout.split(b"\0")))
    assert res["kernel"][0] > BIG_DIR_ENTRIES + 200
    assert res["imagefs"][0] == res["kernel"][0], f"find | wc -l: imagefs {res['imagefs'][0]} != kernel {res['kernel'][0]}"
    diff = sorted(set(res["kernel"][1]) ^ set(res["imagefs"][1]))[:20]
    assert res["imagefs"][1] == res["kernel"][1], f"find -printf differs: {diff}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_reads_match_kernel(varied_mount, kernel_views, variant):
    """pread at odd offsets/lengths (across block and cluster boundaries, past EOF), and mmap."""
    m, hexes = varied_mount
    rnd = random.Random(7)
    files = [b"big/random-3M", b"big/text-6M", b"big/mixed", b"big/zeros-2M", b"sizes/text-131073",
             b"sizes/rand-8193", b"sizes/rand-4097", b"links/big-link", b"xattrs/many"]
    bad = []
    for rel in files:
        kp = os.path.join(os.fsencode(kernel_views[variant]), rel)
        fp = os.path.join(os.fsencode(R(m, hexes[variant])), rel)
        size = os.path.getsize(kp)
        kf, ff = os.open(kp, os.O_RDONLY), os.open(fp, os.O_RDONLY)
        try:
            probes = [(0, 1), (4095, 2), (4096, 4096), (size - 1, 10), (size, 10), (size + 4096, 1),
                      (max(0, size - 70000), 140000), (65535, 3), (131071, 65537)]
            probes += [(rnd.randrange(0, size + 1), rnd.choice([1, 17, 4095, 4096, 4097, 65536, 200000]))
                       for _ in range(60)]
            for off, ln in probes:
                a, b = os.pread(kf, ln, off), os.pread(ff, ln, off)
                if a != b:
                    bad.append(f"{rel!r} pread({ln}, {off}): kernel {len(a)} bytes, imagefs {len(b)} bytes, "
                               f"equal prefix {os.path.commonprefix([a, b]).__len__()}")
            # sequential reads with odd chunk sizes
            os.lseek(ff, 0, os.SEEK_SET)
            h = hashlib.sha256()
            while chunk := os.read(ff, 12345):
                h.update(chunk)
            if h.hexdigest() != sha256_bytes_of(kp):
                bad.append(f"{rel!r}: sequential 12345-byte reads give other bytes")
            if size:
                with mmap.mmap(ff, size, prot=mmap.PROT_READ) as mm:
                    if hashlib.sha256(mm[:]).hexdigest() != sha256_bytes_of(kp):
                        bad.append(f"{rel!r}: mmap gives other bytes")
        finally:
            os.close(kf)
            os.close(ff)
    assert not bad, f"{variant}:\n" + "\n".join(bad[:30])


def test_tag_path_serves_the_same_tree(varied_mount, kernel_views):
    m, hexes = varied_mount
    via_tag = m.mnt / "tags" / REPO / "lz4" / "rootfs"
    assert sorted(os.listdir(os.fsencode(via_tag))) == sorted(os.listdir(os.fsencode(kernel_views["lz4"])))
    assert (via_tag / "deep").is_dir()
    p = via_tag / "/".join(f"level-{i:02d}" for i in range(30))
    assert (m.mnt / "tags" / REPO / "lz4" / "rootfs" / "deep" / p.relative_to(via_tag) / "bottom.txt").read_bytes() \
        == b"the bottom of 30 levels\n"
    assert os.path.realpath(via_tag) == str(R(m, hexes["lz4"]))


def test_rootfs_is_read_only(varied_mount, kernel_views, workdir):
    m, hexes = varied_mount
    root = R(m, hexes["lz4"])
    before = describe(root / "modes", hash_contents=True)
    f = root / "sizes" / "text-4097"
    d = root / "sym"
    E = errno.EROFS
    ops = [
        ("create O_CREAT", lambda: os.open(root / "newfile", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("open O_WRONLY", lambda: os.open(f, os.O_WRONLY)),
        ("open O_RDWR", lambda: os.open(f, os.O_RDWR)),
        ("open O_WRONLY|O_TRUNC", lambda: os.open(f, os.O_WRONLY | os.O_TRUNC)),
        ("truncate", lambda: os.truncate(f, 0)),
        ("mkdir", lambda: os.mkdir(root / "newdir")),
        ("mkdir in a sticky 1777 dir", lambda: os.mkdir(root / "modes" / "sticky-dir" / "x")),
        ("unlink", lambda: os.unlink(f)),
        ("unlink symlink", lambda: os.unlink(d / "rel")),
        ("rmdir", lambda: os.rmdir(root / "modes" / "sticky-dir")),
        ("rename", lambda: os.rename(f, root / "sizes" / "renamed")),
        ("rename dir", lambda: os.rename(d, root / "sym2")),
        ("chmod", lambda: os.chmod(f, 0o600)),
        ("chown", lambda: os.chown(f, 1, 1)),
        ("utime", lambda: os.utime(f, (1, 1))),
        ("setxattr", lambda: os.setxattr(f, "user.new", b"x")),
        ("setxattr replace", lambda: os.setxattr(root / "xattrs" / "many", "user.empty", b"x")),
        ("removexattr", lambda: os.removexattr(root / "xattrs" / "many", "user.empty")),
        ("symlink", lambda: os.symlink("x", root / "newlink")),
        ("link", lambda: os.link(f, root / "newhard")),
        ("mknod fifo", lambda: os.mkfifo(root / "newfifo")),
        # rmdir and rename of a mountpoint are refused by the kernel itself (EBUSY), before
        # imagefs is asked: rootfs/ is a read-only mount of its own (README, "rootfs/").
        ("rmdir rootfs itself", lambda: os.rmdir(root), errno.EBUSY if os.path.ismount(root) else E),
        ("rename rootfs itself", lambda: os.rename(root, root.parent / "rootfs2"),
         errno.EBUSY if os.path.ismount(root) else E),
        ("setxattr on rootfs itself", lambda: os.setxattr(root, "user.x", b"1")),
        ("chmod rootfs itself", lambda: os.chmod(root, 0o700)),
        ("mknod chr", lambda: os.mknod(root / "newchr", stat.S_IFCHR | 0o600, os.makedev(1, 3))),
    ]
    failures = refusals(ops, E)
    not_installed = []
    for cmd in (["touch", f], ["touch", root / "new"], ["mkdir", root / "nd"], ["rm", "-f", f],
                ["mv", f, root / "mv"], ["chmod", "777", f], ["setfattr", "-n", "user.x", "-v", "1", f],
                ["ln", "-s", "a", root / "s"], ["rm", "-rf", root / "deep"]):
        if shutil.which(str(cmd[0])) is None:
            not_installed.append(str(cmd[0]))
            continue
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=30)
        if r.returncode == 0 or "Read-only file system" not in r.stderr:
            failures.append(f"{' '.join(map(str, cmd))}: exit {r.returncode}, stderr {r.stderr.strip()[:200]!r}")
    assert not failures, "changes under rootfs/ must fail with EROFS:\n" + "\n".join(failures)
    assert describe(root / "modes", hash_contents=True) == before
    assert compare(kernel_desc(kernel_views, "lz4"), describe(root)) == []
    require(not not_installed, f"{not_installed} not installed: their EROFS checks were not made")


# ------------------------------------------------------------------ 2. in use is never yanked
def _busybox_store(workdir, variant, repo):
    """A busybox tree, its image (mkfs VARIANT) and a store holding it tagged REPO:only."""
    tree = workdir / "bbtree"
    build_busybox_tree(tree)
    img = mkfs(workdir / "bb.erofs", tree, variant)
    root = workdir / "rstore"
    root.mkdir()
    return tree, root, add_image(root, img, repo=repo, tag="only")


def _kill(p: subprocess.Popen):
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.mark.parametrize("trees", ["own-mounts", "main-mount"])
def test_in_use_never_yanked(workdir, mounter, trees):
    tree, root, hx = _busybox_store(workdir, "lz4", "busybox/inuse")
    m = mounter(StoreRoot(root), extra_args=[] if trees == "own-mounts" else ["--no-rootfs-mounts"])
    rootfs = R(m, hx)
    # Both ways of serving the tree: a read-only mount of its own (the default), or the main mount.
    assert wait_until(lambda: os.path.ismount(rootfs) == (trees == "own-mounts"), 5), \
        f"rootfs/ ismount={os.path.ismount(rootfs)} with {trees}"
    expect = {rel: (tree / rel).read_bytes() for rel in ("data/random-2M", "data/text", "etc/hostname")}
    big_want = hashlib.sha256(expect["data/random-2M"]).hexdigest()

    procs: list[subprocess.Popen] = []
    fd = os.open(rootfs / "data" / "random-2M", os.O_RDONLY)
    dfd = os.open(rootfs / "data" / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.pread(fd, 4096, 0) == expect["data/random-2M"][:4096]
        cwdp = subprocess.Popen(["sleep", "1000"], cwd=rootfs / "data", stdin=subprocess.DEVNULL)
        procs.append(cwdp)
        hb = workdir / "chroot-heartbeat"
        # a process whose root is inside rootfs/: reads its files every 0.2 s, exits 3 when a read fails
        chp = subprocess.Popen(
            ["chroot", str(rootfs), "/bin/sh", "-c",
             "while true; do cat /etc/hostname || exit 3; sha256sum /data/text || exit 4; "
             "ls /data/sub | wc -l || exit 5; sleep 0.2; done"],
            stdout=open(hb, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(chp)
        assert wait_until(lambda: b"/data/text" in hb.read_bytes(), 5), \
            f"the chrooted shell never ran: {hb.read_bytes()[-500:]!r}"
        assert wait_until(lambda: os.path.realpath(f"/proc/{cwdp.pid}/cwd") == str(rootfs / "data"), 5)
        assert chp.poll() is None, f"the chrooted shell exited {chp.returncode}: {hb.read_bytes()[-500:]!r}"
        assert os.readlink(f"/proc/{chp.pid}/root") == str(rootfs)

        # remove the last tag, through the mount
        os.unlink(m.mnt / "tags" / "busybox" / "inuse" / "only")
        assert not (root / "content" / hx).exists(), "the digest directory must leave STORE/content at once"
        assert hx not in os.listdir(m.mnt / "digests"), "the digest must leave MNT/digests at once"
        expect_errno(errno.ENOENT, os.stat, m.mnt / "digests" / hx)

        problems = []

        def check(desc, fn):
            try:
                r = fn()
                if r is not True:
                    problems.append(f"{desc}: wrong result {str(r)[:200]}")
            except OSError as e:
                problems.append(f"{desc}: {e!r}")

        # (a) the open file still reads fully and correctly
        def read_all():
            data, off = b"", 0
            while chunk := os.pread(fd, 1 << 17, off):
                data += chunk
                off += len(chunk)
            return hashlib.sha256(data).hexdigest() == big_want or f"{len(data)} bytes, other content"
        check("open file: read it all", read_all)
        check("open file: fstat", lambda: os.fstat(fd).st_size == len(expect["data/random-2M"]))
        check("open dir fd: readdir", lambda: sorted(os.listdir(dfd)) == [f"f{i:02d}" for i in range(30)]
              or sorted(os.listdir(dfd)))
        check("open dir fd: openat a never-looked-up file",
              lambda: read_at(dfd, "f29", 1 << 20) == b"sub file 29\n" * 30)
        # (b) the cwd process: list and read through /proc/PID/cwd, incl. names never looked up before
        cwd = f"/proc/{cwdp.pid}/cwd"
        check("cwd: listdir", lambda: sorted(os.listdir(cwd)) == ["random-2M", "sub", "text"] or os.listdir(cwd))
        check("cwd: read text", lambda: Path(cwd, "text").read_bytes() == expect["data/text"])
        check("cwd: read sub/f07 (never looked up)", lambda: Path(cwd, "sub", "f07").read_bytes() == b"sub file 7\n" * 8)
        check("cwd: stat ..", lambda: stat.S_ISDIR(os.stat(Path(cwd, "..")).st_mode))
        # (c) the chrooted process, and lookups through its root
        rt = f"/proc/{chp.pid}/root"
        check("root: listdir /", lambda: {"bin", "etc", "data", "proc", "tmp"} <= set(os.listdir(rt)) or os.listdir(rt))
        check("root: read /etc/hostname", lambda: Path(rt, "etc", "hostname").read_bytes() == expect["etc/hostname"])
        check("root: readlink /bin/ls", lambda: os.readlink(Path(rt, "bin", "ls")) == "busybox")
        check("root: read /etc/passwd (never looked up)", lambda: b"root:x:0:0" in Path(rt, "etc", "passwd").read_bytes())
        time.sleep(2)
        check("chrooted shell still running", lambda: chp.poll() is None or f"exited {chp.returncode}: "
              f"{hb.read_bytes()[-300:]!r}")
        n1 = hb.stat().st_size
        time.sleep(1)
        check("chrooted shell still reading", lambda: hb.stat().st_size > n1 or "heartbeat stopped")
        check("cwd process still running", lambda: cwdp.poll() is None)
        assert not problems, "in-use image yanked after its last tag went:\n" + "\n".join(problems)
        assert not release_lines(m, hx), \
            "the log says the image was released while it is still in use"
    finally:
        os.close(fd)
        os.close(dfd)
        for p in procs:
            _kill(p)
    # the last users are gone: the space is released and the log says so
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: trash_released(root), 5, 0.2), \
        f"the bookkeeping's trash/ still holds {os.listdir(trash)} 5 s after the last user went"
    assert not (root / "content" / hx).exists()
    # (the log line is written right after the trash entry goes: wait for it briefly)
    assert wait_until(lambda: release_lines(m, hx), 2), f"the daemon log never says it released {hx}:\n{m.log_tail(20)}"
    assert pid_alive(m.daemon_pid)


def test_bind_mount_of_rootfs_survives_untag(workdir, mounter):
    """DESIGN.md 4 lists "a bind mount of it" among the users that keep an image alive."""
    tree, root, hx = _busybox_store(workdir, "lz4hc", "busybox/bind")
    m = mounter(StoreRoot(root))
    bind = workdir / "bind"
    bind.mkdir()
    run("mount", "--bind", R(m, hx), bind)
    try:
        os.unlink(m.mnt / "tags" / "busybox" / "bind" / "only")
        assert not (root / "content" / hx).exists()
        assert hx not in os.listdir(m.mnt / "digests")
        drop_caches()
        time.sleep(0.5)
        problems = []
        try:
            if sorted(os.listdir(bind)) != sorted(os.listdir(tree)):
                problems.append(f"listdir of the bind mount: {sorted(os.listdir(bind))}")
            for rel in ("etc/hostname", "data/text", "data/random-2M", "data/sub/f17", "bin/busybox"):
                if sha256_bytes_of(bind / rel) != sha256_bytes_of(tree / rel):
                    problems.append(f"{rel} reads wrong through the bind mount")
            if os.readlink(bind / "bin" / "sh") != "busybox":
                problems.append("readlink bin/sh")
        except OSError as e:
            problems.append(f"{e!r}")
        assert not problems, "bind mount of an untagged image yanked:\n" + "\n".join(problems)
        assert not release_lines(m, hx)
    finally:
        kernel_umount(bind)
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: trash_released(root), 5, 0.2), \
        f"trash still holds {os.listdir(trash)} after the bind mount went"


# ------------------------------------------------------------------ 3. bad images
def _extent_of(img: Path, path: str) -> tuple[int, int]:
    """(first physical byte, last physical byte + 1) of a file's data, from dump.erofs -e."""
    r = run("dump.erofs", "-e", f"--path={path}", img)
    out = r.stdout.decode()
    phys = [(int(a), int(b)) for a, b in re.findall(r"\|\s*\d+\s*:\s*(\d+)\s*\.\.\s*(\d+)\s*\|", out)]
    assert phys, f"no extents parsed from dump.erofs:\n{out}"
    return min(a for a, _ in phys), max(b for _, b in phys)


def _walk_all(root: Path) -> tuple[list, int, list]:
    """Walks and reads everything; -> (errors [(op, path, errno)], ops done, short reads)."""
    errs, short = [], []
    ops = 0
    stack = [os.fsencode(str(root))]
    while stack:
        d = stack.pop()
        ops += 1
        try:
            names = os.listdir(d)
        except OSError as e:
            errs.append(("readdir", d, e.errno))
            continue
        for n in names:
            p = os.path.join(d, n)
            ops += 1
            try:
                st = os.lstat(p)
            except OSError as e:
                errs.append(("lstat", p, e.errno))
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)
            elif stat.S_ISREG(st.st_mode):
                ops += 1
                try:
                    with open(p, "rb") as f:
                        n_read = len(f.read())
                    if n_read != st.st_size:
                        short.append((p, st.st_size, n_read))
                except OSError as e:
                    errs.append(("read", p, e.errno))
    return errs, ops, short


EIO = (errno.EIO, errno.EUCLEAN)


def _fails_with_eio(what: str, fn, times: int = 15) -> list:
    """Calls fn `times` times: each call must fail with EIO. Returns the problems."""
    for _ in range(times):
        try:
            r = fn()
        except OSError as e:
            if e.errno not in EIO:
                return [f"{what}: {errno.errorcode.get(e.errno)} instead of EIO"]
            continue
        return [f"{what}: succeeded ({len(r)} bytes or names)"]
    return []


def _walk_problems(label: str, root) -> tuple:
    """Reads every file under root (_walk_all): (errors seen, problems: errnos other than EIO, short reads)."""
    errs, ops, short = _walk_all(root)
    print(f"{label} image: {ops} ops, {len(errs)} errors, e.g. {errs[:3]}")
    problems = [f"{label}: {op} {pp!r}: {errno.errorcode.get(en)} (not EIO)" for op, pp, en in errs if en not in EIO]
    problems += [f"{label}: short read without error {pp!r}: size {a}, read {b}" for pp, a, b in short]
    return errs, problems


def test_bad_images_fail_with_eio(workdir, mounter):
    tree = workdir / "bbtree"
    build_busybox_tree(tree, hostname=b"good\n")
    good = mkfs(workdir / "good.erofs", tree, "lz4")
    tree2 = workdir / "bbtree2"
    build_busybox_tree(tree2, hostname=b"bad\n")
    bad = mkfs(workdir / "bad.erofs", tree2, "lz4")
    raw = bad.read_bytes()

    # truncated: cut in the middle of data/random-2M's data (the superblock and most metadata survive)
    lo, hi = _extent_of(bad, "/data/random-2M")
    cut = (lo + hi) // 2 // 4096 * 4096
    truncated = raw[:cut]
    # corrupted: the compressed extents of data/text overwritten with 0xff (an invalid lz4 stream)
    tlo, thi = _extent_of(bad, "/data/text")
    corrupt = bytearray(raw)
    corrupt[tlo:thi] = b"\xff" * (thi - tlo)
    corrupt = bytes(corrupt)
    # garbage superblock: the whole image is unreadable
    nosb = bytearray(raw)
    nosb[1024:1024 + 128] = bytes(range(128))
    nosb = bytes(nosb)

    root = workdir / "rstore"
    root.mkdir()
    hx_good = add_image(root, good, repo="bad/images", tag="good")
    hx_tr = add_raw_digest(root, hashlib.sha256(truncated).hexdigest(), truncated, repo="bad/images", tag="truncated")
    hx_co = add_raw_digest(root, hashlib.sha256(corrupt).hexdigest(), corrupt, repo="bad/images", tag="corrupt")
    hx_sb = add_raw_digest(root, hashlib.sha256(nosb).hexdigest(), nosb, repo="bad/images", tag="nosb")
    m = mounter(StoreRoot(root))

    # the truncated image: data/random-2M fails with EIO, never a short read
    problems = _fails_with_eio(f"truncated: read data/random-2M (image cut at {cut}, file data at {lo}..{hi})",
                               lambda: (R(m, hx_tr) / "data" / "random-2M").read_bytes())
    errs, walk_problems = _walk_problems("truncated", R(m, hx_tr))
    problems += walk_problems
    if not errs:
        problems.append("truncated: a walk reading every file of the truncated image saw no error")
    # the corrupted image: data/text fails with EIO every time; other files of it still read
    problems += _fails_with_eio("corrupt: read data/text", lambda: (R(m, hx_co) / "data" / "text").read_bytes())
    problems += _walk_problems("corrupt", R(m, hx_co))[1]
    try:
        if (R(m, hx_co) / "etc" / "hostname").read_bytes() != b"bad\n":
            problems.append("corrupt: an intact file of the corrupt image reads wrong")
    except OSError as e:
        problems.append(f"corrupt: an intact file of the corrupt image fails: {e!r}")
    # the image with a garbage superblock: the lookup of rootfs or its listing fails with EIO
    problems += _fails_with_eio("garbage superblock: listdir(rootfs)", lambda: os.listdir(R(m, hx_sb)), times=10)
    # the daemon is alive, the mount works, the good image is intact
    assert pid_alive(m.daemon_pid), f"the daemon died:\n{m.log_tail(30)}"
    assert (R(m, hx_good) / "etc" / "hostname").read_bytes() == b"good\n"
    gd = describe(R(m, hx_good))
    for rel, d in gd.items():
        if d["type"] == "reg":
            want = sha256_bytes_of(os.path.join(os.fsencode(tree), rel)) if rel != b"." else None
            if d["sha256"] != want:
                problems.append(f"good image: {rel!r} reads wrong next to the bad images")
    assert len(gd) == sum(len(ds) + len(fs) for _, ds, fs in os.walk(tree)) + 1
    assert sorted(os.listdir(m.mnt / "digests")) == sorted([hx_good, hx_tr, hx_co, hx_sb])
    assert not problems, "\n".join(problems)
    # logged once per bad digest, naming it (not once per failing request); counted from the
    # mount's start, since mounting the image trees right after it already meets the bad images
    new = m.log_text().splitlines()
    print("\n".join(ln for ln in new if "ioctl" not in ln and ln.startswith("[")))
    assert not [ln for ln in new if "panic" in ln.lower()], "\n".join(new[-30:])
    for name, hx in (("truncated", hx_tr), ("corrupt", hx_co), ("garbage superblock", hx_sb)):
        lines = [ln for ln in new if hx in ln]
        assert len(lines) == 1, (f"{name} image {hx}: the log should name it exactly once after all those failing "
                                 f"requests, it does {len(lines)} times:\n" + "\n".join(lines[:10]))
    assert not [ln for ln in new if hx_good in ln], "the good image is logged as bad"
