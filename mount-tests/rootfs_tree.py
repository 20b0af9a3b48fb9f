"""Helpers for the rootfs/ mount tests (test_rootfs.py, test_runc.py).

- build_varied_tree(dir): the differential-fidelity tree (odd names, sizes around block boundaries,
  hard links, symlinks, fifos, devices, special mode bits, owners, a 5000-entry directory, deep paths,
  user.* and security.* xattrs, nanosecond mtimes).
- build_busybox_tree(dir): a tiny runnable rootfs (static busybox + applet symlinks).
- mkfs(img, tree, variant): mkfs.erofs with one of VARIANTS.
- add_image(store_root, img, ...): install an image as a ready content-layout digest, optionally tagged.
- kernel_mount(img, dir): context manager for the kernel's erofs on a loop device of its own (always unmounted).
- walk_tree(root) / compare_trees(a, b): the differential walk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

from helpers import mounts_at, mounts_of_device, require, trash_entries
from helpers import sha256_file as sha256_bytes_of  # noqa: F401 (re-exported to the tests)

# mkfs.erofs 1.5 variants: the three of the brief, plus two layouts the kernel also reads
# (tail-packed compressed tails and big physical clusters).
VARIANTS = {
    "plain": [],
    "lz4": ["-zlz4"],
    "lz4hc": ["-zlz4hc"],
    "lz4hc-ztailpacking": ["-zlz4hc,9", "-Eztailpacking"],
    "lz4-pcluster64k": ["-zlz4", "-C65536"],
}

BIG_DIR = "big-dir"          # the 5000-entry directory
BIG_DIR_ENTRIES = 5000
FIXED_UUID = "11111111-2222-4333-8444-555555555555"

BUSYBOX_APPLETS = ["sh", "ls", "cat", "echo", "sleep", "true", "false", "test", "[", "stat", "wc", "head",
                   "sha256sum", "find", "id", "hostname", "mkdir", "touch", "date", "grep"]


def run(*args, check=True, timeout=300, **kw):
    args = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run(args, capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]!r}")
    return r




# ------------------------------------------------------------------ tree builders
def _w(p: bytes, data: bytes, mode=0o644, uid=0, gid=0):
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    os.chown(p, uid, gid)


def build_varied_tree(root: Path, seed: int = 1234) -> None:
    rnd = random.Random(seed)
    R = os.fsencode(str(root))
    J = os.path.join
    os.mkdir(R)
    os.chmod(R, 0o755)

    # -- regular files: sizes around block boundaries, random and compressible data
    os.mkdir(J(R, b"sizes"))
    pattern = b"".join(b"line %06d: the quick brown fox jumps over the lazy dog\n" % i for i in range(200000))
    for n in (0, 1, 2, 63, 64, 100, 511, 512, 513, 2047, 2048, 3000, 4095, 4096, 4097, 8191, 8192, 8193,
              12287, 12288, 12289, 16383, 16384, 16385, 65535, 65536, 65537, 131071, 131072, 131073):
        _w(J(R, b"sizes", b"rand-%d" % n), rnd.randbytes(n))
        _w(J(R, b"sizes", b"text-%d" % n), pattern[:n])
        _w(J(R, b"sizes", b"zero-%d" % n), bytes(n))
    os.mkdir(J(R, b"big"))
    _w(J(R, b"big", b"random-3M"), rnd.randbytes(3 * 1024 * 1024 + 17))
    _w(J(R, b"big", b"text-6M"), pattern[:6 * 1024 * 1024 + 4097])
    _w(J(R, b"big", b"zeros-2M"), bytes(2 * 1024 * 1024))
    mixed = bytearray()
    for i in range(48):  # alternating incompressible/compressible 64 KiB-ish chunks
        mixed += rnd.randbytes(40000 + i) if i % 2 else pattern[i * 1000:i * 1000 + 70000 + i]
    _w(J(R, b"big", b"mixed"), bytes(mixed))
    _w(J(R, b"big", b"exactly-1M"), rnd.randbytes(1 << 20))

    # -- hard links (nlink 3 across directories; nlink 2 on an empty file; on an executable)
    os.mkdir(J(R, b"links"))
    _w(J(R, b"links", b"orig"), b"hard linked content\n" * 300, mode=0o640, uid=1000, gid=1000)
    os.link(J(R, b"links", b"orig"), J(R, b"links", b"link2"))
    os.link(J(R, b"links", b"orig"), J(R, b"sizes", b"link3-of-orig"))
    _w(J(R, b"links", b"empty"), b"")
    os.link(J(R, b"links", b"empty"), J(R, b"links", b"empty-link"))
    os.link(J(R, b"big", b"random-3M"), J(R, b"links", b"big-link"))

    # -- symlinks
    os.mkdir(J(R, b"sym"))
    os.symlink(b"../links/orig", J(R, b"sym", b"rel"))
    os.symlink(b"/etc/passwd", J(R, b"sym", b"abs"))
    os.symlink(b"does/not/exist", J(R, b"sym", b"dangling"))
    os.symlink(b"../sizes", J(R, b"sym", b"to-dir"))
    os.symlink(b"x", J(R, b"sym", b"one-char"))
    os.symlink(b"a/" * 100 + b"end", J(R, b"sym", b"long-203"))
    os.symlink((b"long-target-component/" * 186)[:4000], J(R, b"sym", b"long-4000"))
    os.symlink(b"t" * 4095, J(R, b"sym", b"max-4095"))
    os.symlink(b"\xff\xfe-non-utf8-target", J(R, b"sym", b"nonutf8-target"))
    os.lchown(J(R, b"sym", b"rel"), 1234, 5678)

    # -- special files
    os.mkdir(J(R, b"dev"))
    os.mkfifo(J(R, b"dev", b"fifo"), 0o600)
    os.mknod(J(R, b"dev", b"null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(J(R, b"dev", b"loop200"), stat.S_IFBLK | 0o660, os.makedev(7, 200))
    os.mknod(J(R, b"dev", b"bigminor"), stat.S_IFCHR | 0o600, os.makedev(250, 65537))
    os.mknod(J(R, b"dev", b"bigmajor"), stat.S_IFBLK | 0o600, os.makedev(4000, 1000000))
    os.chown(J(R, b"dev", b"loop200"), 0, 6)
    os.mknod(J(R, b"dev", b"sock-like-fifo"), stat.S_IFIFO | 0o644)

    # -- mode bits and owners
    os.mkdir(J(R, b"modes"))
    for name, mode in ((b"setuid", 0o4755), (b"setgid", 0o2755), (b"sticky-file", 0o1644), (b"all", 0o7777),
                       (b"none", 0o000), (b"wonly", 0o222), (b"xonly", 0o111), (b"g-s-noexec", 0o2644)):
        _w(J(R, b"modes", name), b"#!/bin/sh\necho " + name + b"\n", mode=mode)
    os.mkdir(J(R, b"modes", b"sticky-dir"))
    os.chmod(J(R, b"modes", b"sticky-dir"), 0o1777)
    os.mkdir(J(R, b"modes", b"setgid-dir"))
    os.chmod(J(R, b"modes", b"setgid-dir"), 0o2775)
    os.mkdir(J(R, b"modes", b"dir-000"))
    _w(J(R, b"modes", b"dir-000", b"inside"), b"hidden\n")
    os.chmod(J(R, b"modes", b"dir-000"), 0o000)
    os.mkdir(J(R, b"owners"))
    for uid, gid in ((0, 0), (1, 1), (1000, 1000), (65534, 65534), (65535, 65535), (65536, 70000),
                     (123456, 654321), (3000000000, 4000000000), (4242, 0), (0, 4242)):
        _w(J(R, b"owners", b"u%d-g%d" % (uid, gid)), b"%d:%d\n" % (uid, gid), uid=uid, gid=gid)
    os.mkdir(J(R, b"owners", b"dir-100000"))
    os.chown(J(R, b"owners", b"dir-100000"), 100000, 100001)

    # -- odd names
    os.mkdir(J(R, b"names"))
    for name in (b"with space", b"new\nline", b"tab\there", b"\xff\xfe\xfd-not-utf8", b"latin1-\xe9t\xe9",
                 "ünïcödé-名前".encode(), b"-leading-dash", b".hidden", b"...", b"..x", b"*?[]{}$`\\'\"",
                 b"n" * 254, b"\x01\x02\x1f-control", b"trailing-space ", b" leading-space", b"#hash", b"~tilde"):
        _w(J(R, b"names", name), b"name: " + name + b"\n")
    os.mkdir(J(R, b"names", b"dir \xff with odd"))
    _w(J(R, b"names", b"dir \xff with odd", b"f\n"), b"x")

    # -- a 5000-entry directory (files of a few sizes, subdirs, symlinks; long and short names)
    os.mkdir(J(R, BIG_DIR.encode()))
    for i in range(BIG_DIR_ENTRIES):
        p = J(R, BIG_DIR.encode(), (b"entry-%05d" % i) + (b"-" + b"L" * (i % 180) if i % 7 == 0 else b""))
        k = i % 50
        if k == 0:
            os.mkdir(p)
        elif k == 1:
            os.symlink(b"entry-%05d" % (i + 1), p)
        else:
            _w(p, b"%d\n" % i * (i % 5))

    # -- deep path (30 levels)
    d = J(R, b"deep")
    os.mkdir(d)
    for i in range(30):
        d = J(d, b"level-%02d" % i)
        os.mkdir(d)
    _w(J(d, b"bottom.txt"), b"the bottom of 30 levels\n")
    os.symlink(b"../" * 30 + b"sizes/text-4097", J(d, b"up-30"))

    # -- xattrs (user.* and security.*: short, empty, long, binary, shared by many inodes, on dirs)
    os.mkdir(J(R, b"xattrs"))
    for i in range(40):
        p = J(R, b"xattrs", b"shared-%02d" % i)
        _w(p, b"%d" % i)
        os.setxattr(p, b"user.shared", b"the same value on forty inodes")
        os.setxattr(p, b"security.shared", b"sec-shared")
        os.setxattr(p, b"user.own", b"own-%d" % i)
    p = J(R, b"xattrs", b"many")
    _w(p, rnd.randbytes(5000))
    os.setxattr(p, b"user.empty", b"")
    os.setxattr(p, b"user.binary", bytes(range(256)))
    os.setxattr(p, b"user." + b"k" * 200, b"long name")
    os.setxattr(p, b"security.selinux", b"system_u:object_r:bin_t:s0\x00")
    p = J(R, b"xattrs", b"long-user")
    _w(p, b"long user xattr")
    os.setxattr(p, b"user.long", (b"0123456789abcdef" * 256)[:3500])
    p = J(R, b"xattrs", b"long-security")
    _w(p, b"")
    os.setxattr(p, b"security.long", rnd.randbytes(3000))
    for i in range(20):
        os.setxattr(p, b"user.n%02d" % i, b"v" * i)
    os.setxattr(J(R, b"xattrs"), b"user.on-dir", b"directory xattr")
    os.setxattr(J(R, b"xattrs"), b"security.on-dir", b"sec dir")
    os.symlink(b"many", J(R, b"xattrs", b"symlink-with-xattr"))
    os.setxattr(J(R, b"xattrs", b"symlink-with-xattr"), b"security.on-symlink", b"sym", follow_symlinks=False)
    os.setxattr(J(R, b"big", b"text-6M"), b"user.big", b"compressed file with an xattr")
    os.setxattr(J(R, b"links", b"orig"), b"user.hardlinked", b"seen through every link")

    # -- mtimes with nanoseconds (set bottom-up, directories last), also on symlinks
    t0 = 1_600_000_000
    paths = []
    for dirpath, dirnames, filenames in os.walk(R, topdown=False):
        for n in filenames + dirnames:
            paths.append(J(dirpath, n))
        paths.append(dirpath)
    for i, p in enumerate(paths):
        if os.path.basename(p) == b"dir-000":
            continue
        ns = (t0 + i * 3607) * 10**9 + (i * 123456789) % 10**9
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.chmod(J(R, b"modes", b"dir-000"), 0o755)
    os.utime(J(R, b"modes", b"dir-000"), ns=(1234567890123456789,) * 2)
    os.chmod(J(R, b"modes", b"dir-000"), 0o000)
    os.utime(J(R, b"modes"), ns=(1_500_000_000_987_654_321,) * 2)
    os.utime(R, ns=(1_700_000_000_000_000_001,) * 2)


def build_busybox_tree(root: Path, *, hostname=b"imagefs-busybox\n", extra: dict | None = None) -> None:
    bb = shutil.which("busybox")
    require(bb, "busybox (busybox-static) is not installed")
    r = run("file", "-L", bb, check=False)
    assert b"statically linked" in r.stdout or r.returncode != 0, f"{bb} is not static: {r.stdout!r}"
    root = Path(root)
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc", "root", "data", "data/sub"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copyfile(bb, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for a in BUSYBOX_APPLETS:
        os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "hostname").write_bytes(hostname)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    rnd = random.Random(99)
    (root / "data" / "random-2M").write_bytes(rnd.randbytes(2 * 1024 * 1024 + 3))
    (root / "data" / "text").write_bytes(b"".join(b"text line %d\n" % i for i in range(50000)))
    for i in range(30):
        (root / "data" / "sub" / f"f{i:02d}").write_bytes(b"sub file %d\n" % i * (i + 1))
    for name, data in (extra or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def mkfs(img: Path, tree: Path, variant: str) -> Path:
    args = ["mkfs.erofs", "--quiet", *VARIANTS[variant], "-U", FIXED_UUID, img, tree]
    run(*args)
    return Path(img)


# ------------------------------------------------------------------ store
class StoreRoot:
    """What conftest's mounter takes: an object with .root (a bare Path would not do: Path.root is "/")."""

    def __init__(self, root: Path):
        self.root = Path(root)

def add_image(store_root: Path, img: Path, *, repo: str | None = None, tag: str | None = None,
              status="ready", copy=True) -> str:
    """Installs img as content/<hex>/{rootfs.erofs,metadata.json}; tags it when repo/tag are given."""
    store_root = Path(store_root)
    hx = sha256_bytes_of(img)
    d = store_root / "content" / hx
    d.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copyfile(img, d / "rootfs.erofs")
    else:
        os.link(img, d / "rootfs.erofs")
    os.chmod(d / "rootfs.erofs", 0o644)
    meta = {"name": f"docker.io/library/{repo or 'untagged'}", "digest": f"sha256:{hx}", "status": status,
            "size_bytes": os.path.getsize(img), "entrypoint": ["/bin/sh"], "cmd": [], "env": {},
            "working_dir": "/", "created_at": "2026-01-02T03:04:05Z"}
    (d / "metadata.json").write_bytes(json.dumps(meta).encode())
    if repo and tag:
        tag_store(store_root, repo, tag, hx)
    return hx


def add_raw_digest(store_root: Path, hx: str, image_bytes: bytes, *, repo=None, tag=None) -> str:
    """Installs arbitrary bytes (e.g. a corrupt image) under a given digest name."""
    d = Path(store_root) / "content" / hx
    d.mkdir(parents=True, exist_ok=True)
    (d / "rootfs.erofs").write_bytes(image_bytes)
    meta = {"name": f"docker.io/library/{repo or 'x'}", "digest": f"sha256:{hx}", "status": "ready",
            "size_bytes": len(image_bytes)}
    (d / "metadata.json").write_bytes(json.dumps(meta).encode())
    if repo and tag:
        tag_store(store_root, repo, tag, hx)
    return hx


def tag_store(store_root: Path, repo: str, tag: str, hx: str) -> Path:
    p = Path(store_root) / "repositories" / repo / tag
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("../" * (1 + len(repo.split("/"))) + "content/" + hx, p)
    return p


# ------------------------------------------------------------------ kernel mounts
def kernel_umount(d) -> None:
    for args in (["umount", str(d)], ["umount", "-l", str(d)]):
        if not mounts_at(d):
            return
        subprocess.run(args, capture_output=True, timeout=60)
    assert not mounts_at(d), f"could not unmount the kernel erofs mount at {d}"


@contextlib.contextmanager
def kernel_mount(img: Path, d: Path):
    """The oracle: the kernel's erofs on a loop device of its own. Not `mount -o loop`, which
    reuses a read-only loop device already bound to the same file: the store holds a hard
    link of `img`, the daemon's kernel tree may be on such a device, and erofs would then
    hand the oracle that tree's own superblock (a comparison of the tree with itself)."""
    Path(d).mkdir(parents=True, exist_ok=True)
    r = run("losetup", "--find", "--show", "--read-only", img, timeout=60, check=False)
    require(r.returncode == 0, f"no loop device for the kernel's erofs mount (the oracle): losetup {img} "
            f"exited {r.returncode}: {r.stderr[-500:]!r}")
    dev = r.stdout.strip()
    try:
        r = run("mount", "-t", "erofs", "-o", "ro", dev, d, timeout=60, check=False)
    finally:
        # Mounted, the device is only marked autoclear: it goes with the mount, however the
        # test ends (as `mount -o loop` does). Not mounted, it is freed now.
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)
    require(r.returncode == 0, f"the kernel's erofs mount (the oracle) is not available: mount -t erofs -o "
            f"ro {dev} ({img}) exited {r.returncode}: {r.stderr[-500:]!r}")
    try:
        assert_own_superblock(d)
        yield Path(d)
    finally:
        kernel_umount(d)


def assert_own_superblock(d) -> None:
    """The oracle mounted at `d` is no other mount's superblock (a daemon's kernel tree of the
    same image file would make every comparison with it a comparison of the tree with itself)."""
    here = os.path.realpath(d)
    others = [mp for mp in mounts_of_device(os.stat(here).st_dev) if mp != here]
    assert not others, f"the kernel oracle at {here} shares its superblock with {others}"


def erofs_superblocks() -> set[str]:
    """The kernel's erofs superblocks mounted from image files or loop devices (one /sys/fs/erofs/erofs-N or
    /sys/fs/erofs/loopN each): the daemon's kernel-mounted trees, lazily detached ones too."""
    d = Path("/sys/fs/erofs")
    return {p.name for p in d.iterdir() if p.name.startswith(("erofs-", "loop"))} if d.is_dir() else set()


# ------------------------------------------------------------------ releasing an image
def drop_caches() -> None:
    """Drops the kernel's dentry and inode caches, which hold an unused image tree's inodes."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def trash_released(root: Path) -> bool:
    """Drops the kernel's caches, then: is the store's trash empty (every collected image freed)?"""
    drop_caches()
    return not trash_entries(root)


def release_lines(m, hx: str) -> list[str]:
    """The daemon's log lines saying it released image hx (they may name it by a 12-hex-digit prefix,
    as the trash entry does)."""
    return [ln for ln in m.log_text().splitlines() if hx[:12] in ln and re.search(r"releas|freed", ln, re.I)]


# ------------------------------------------------------------------ the differential walk
def _err(e: OSError) -> str:
    return f"<{errno.errorcode.get(e.errno, e.errno)}>"


def describe(root: Path, *, hash_contents=True, xattrs=True) -> dict:
    """relpath (bytes) -> dict of everything the kernel shows for the entry."""
    R = os.fsencode(str(root))
    out = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(R, rel) if rel else R
        with os.scandir(full) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in entries:
            r = os.path.join(rel, name) if rel else name
            out[r] = describe_entry(os.path.join(R, r), hash_contents=hash_contents, xattrs=xattrs)
            if out[r]["type"] == "dir":
                stack.append(r)
    out[b"."] = describe_entry(R, hash_contents=hash_contents, xattrs=xattrs)
    return out


def describe_entry(p: bytes, *, hash_contents=True, xattrs=True) -> dict:
    st = os.lstat(p)
    m = st.st_mode
    t = ("dir" if stat.S_ISDIR(m) else "reg" if stat.S_ISREG(m) else "lnk" if stat.S_ISLNK(m) else
         "chr" if stat.S_ISCHR(m) else "blk" if stat.S_ISBLK(m) else "fifo" if stat.S_ISFIFO(m) else
         "sock" if stat.S_ISSOCK(m) else "?")
    d = {"type": t, "mode": oct(m), "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
         "mtime_ns": st.st_mtime_ns, "nlink": st.st_nlink, "ino": st.st_ino}
    if t in ("chr", "blk"):
        d["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if t == "lnk":
        try:
            d["target"] = os.readlink(p)
        except OSError as e:
            d["target"] = _err(e)
    if t == "reg" and hash_contents:
        try:
            h = hashlib.sha256()
            n = 0
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    n += len(chunk)
            d["sha256"] = h.hexdigest()
            d["bytes_read"] = n
        except OSError as e:
            d["sha256"] = _err(e)
    if xattrs:
        try:
            names = sorted(os.listxattr(p, follow_symlinks=False))
            xs = {}
            for n in names:
                try:
                    xs[n] = os.getxattr(p, n, follow_symlinks=False)
                except OSError as e:
                    xs[n] = _err(e)
            d["xattrs"] = xs
        except OSError as e:
            d["xattrs"] = _err(e)
    return d


def inode_partition(desc: dict) -> set:
    """The partition of paths by inode number, as a set of frozensets (only classes with >1 path or
    entries whose nlink > 1 matter, but every class is included)."""
    classes: dict = {}
    for path, d in desc.items():
        if d["type"] != "dir":
            classes.setdefault(d["ino"], set()).add(path)
    return {frozenset(v) for v in classes.values()}


def compare(kernel: dict, fuse: dict, *, fields=("type", "mode", "uid", "gid", "size", "mtime_ns", "nlink",
                                                 "rdev", "target", "sha256", "bytes_read", "xattrs")) -> list[str]:
    diffs = []
    only_k = sorted(set(kernel) - set(fuse))
    only_f = sorted(set(fuse) - set(kernel))
    for p in only_k[:20]:
        diffs.append(f"missing in imagefs: {p!r} ({kernel[p]['type']})")
    if len(only_k) > 20:
        diffs.append(f"... and {len(only_k) - 20} more missing in imagefs")
    for p in only_f[:20]:
        diffs.append(f"extra in imagefs: {p!r} ({fuse[p]['type']})")
    for p in sorted(set(kernel) & set(fuse)):
        k, f = kernel[p], fuse[p]
        for fld in fields:
            if k.get(fld) != f.get(fld):
                kv, fv = k.get(fld), f.get(fld)
                if fld == "xattrs" and isinstance(kv, dict) and isinstance(fv, dict):
                    kv = {n: (v if len(v) < 64 else v[:32] + b"...(%d bytes)" % len(v)) if isinstance(v, bytes) else v
                          for n, v in kv.items() if fv.get(n) != v}
                    fv = {n: (v if len(v) < 64 else v[:32] + b"...(%d bytes)" % len(v)) if isinstance(v, bytes) else v
                          for n, v in fv.items() if k["xattrs"].get(n) != v}
                diffs.append(f"{p!r}: {fld}: kernel {kv!r} != imagefs {fv!r}")
    return diffs


def wait_until(fn, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)
