"""`imagefs import` keeps real mtimes and stays reproducible (issue 12).

Tars with distinct mtimes (PAX fractions: nanoseconds) for files, directories, symlinks, a fifo
and a hard link are imported; the mount's rootfs/ (the FUSE reader, `--rootfs-mounts=fuse`) and the
kernel's erofs mount of rootfs.erofs show exactly those times. A directory whose later layer adds
to it or whites out a child keeps its tar mtime, as `umoci unpack` of the same layout leaves it
(compared when umoci is installed), and the same layers as a `docker save` tarball make the same
image bytes. The same input imported twice, under another umask and a
later wall clock, gives the same digest; a directory input keeps its own mtimes. About 10 s.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from helpers import imagefs_bin, require, sh, sha256_file
from rootfs_tree import kernel_mount
from test_import import CONFIG, Oci, imported, new_store, rootfs_of

NS = 1_000_000_000


def pax_tar(entries) -> bytes:
    """entries: (name, kind, "SECONDS[.FRACTION]", extra) with kind dir/file/symlink/hardlink/fifo and
    extra the data or link target. The mtime goes in a PAX record, as docker and buildah write it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, mtime, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "dir" else 0o644
            ti.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
                       "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            data = b""
            if kind in ("symlink", "hardlink"):
                ti.linkname = extra
            elif kind == "file":
                data = extra or b""
            ti.size = len(data)
            if mtime is not None:
                ti.pax_headers = {"mtime": mtime}
            t.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def ns_of(s: str) -> int:
    """"SECONDS[.FRACTION]" as nanoseconds (a fraction cut at 9 digits)."""
    secs, _, frac = s.partition(".")
    return int(secs) * NS + int((frac + "0" * 9)[:9])


def mtimes(root: Path, paths) -> dict:
    return {p: os.lstat(root / p).st_mtime_ns for p in paths}


FLAT = [
    ("./", "dir", "1000000000.5", None),
    ("etc/", "dir", "1100000000.25", None),
    ("etc/conf", "file", "1200000000.123456789", b"conf\n"),
    ("etc/conf-hl", "hardlink", "1250000000", "etc/conf"),
    ("etc/link", "symlink", "1300000000.000000001", "conf"),
    ("etc/dangling", "symlink", "1310000000.75", "/nowhere"),
    ("bin/", "dir", "1400000000", None),
    ("bin/tool", "file", "1500000000.999999999", b"#!tool\n"),
    ("run.fifo", "fifo", "1600000000.5", None),
    ("srv/", "dir", "1700000000.000001", None),
]
# A hard link has its target's inode, so its target's time.
FLAT_WANT = {"." if n == "./" else n.rstrip("/"): ns_of(m) for n, k, m, _ in FLAT if k != "hardlink"}
FLAT_WANT["etc/conf-hl"] = FLAT_WANT["etc/conf"]


def test_tar_mtimes_reach_rootfs_and_the_kernel_mount(workdir, mounter):
    tar = workdir / "flat.tar"
    tar.write_bytes(pax_tar(FLAT))
    store = new_store(workdir)
    hx = imported(store, "docker.io/mt/flat:1", tar)
    m = mounter(store, extra_args=["--rootfs-mounts", "fuse"])
    assert mtimes(rootfs_of(m, hx), FLAT_WANT) == FLAT_WANT, "the FUSE reader's rootfs/"
    with kernel_mount(store / "content" / hx / "rootfs.erofs", workdir / "k") as k:
        assert mtimes(k, FLAT_WANT) == FLAT_WANT, "the kernel's erofs"


BASE = [
    ("./", "dir", "1000000000.5", None),
    ("etc/", "dir", "1100000000.25", None),
    ("etc/keep", "file", "1110000000.1", b"k"),
    ("etc/gone", "file", "1120000000", b"g"),
    ("opq/", "dir", "1200000000.125", None),
    ("opq/old", "file", "1210000000", b"o"),
    ("deep/", "dir", "1300000000.333", None),
    ("deep/sub/", "dir", "1310000000.666", None),
    ("deep/sub/f", "file", "1320000000", b"f"),
    ("bin/", "dir", "1400000000", None),
    ("bin/sh", "file", "1410000000.5", b"sh"),
]
UPPER = [
    ("etc/.wh.gone", "file", "1500000000", None),
    ("etc/new", "file", "1510000000.2", b"n"),
    ("opq/.wh..wh..opq", "file", "1520000000", None),
    ("opq/fresh", "file", "1530000000.3", b"f"),
    ("deep/sub/g", "file", "1540000000.4", b"g"),
    ("bin/", "dir", "1550000000.55", None),
    ("bin/ash", "symlink", "1560000000.6", "sh"),
]
LAYERED_WANT = {
    ".": ns_of("1000000000.5"),
    "etc": ns_of("1100000000.25"),
    "etc/keep": ns_of("1110000000.1"),
    "etc/new": ns_of("1510000000.2"),
    "opq": ns_of("1200000000.125"),
    "opq/fresh": ns_of("1530000000.3"),
    "deep": ns_of("1300000000.333"),
    "deep/sub": ns_of("1310000000.666"),
    "deep/sub/f": ns_of("1320000000"),
    "deep/sub/g": ns_of("1540000000.4"),
    "bin": ns_of("1550000000.55"),
    "bin/sh": ns_of("1410000000.5"),
    "bin/ash": ns_of("1560000000.6"),
}


def umoci_unpack(layout: Path, ref: str, bundle: Path) -> Path | None:
    if not shutil.which("umoci"):
        return None
    r = sh("umoci", "--log", "error", "unpack", "--image", f"{layout}:{ref}", bundle, timeout=120)
    assert r.returncode == 0, r.stderr
    return bundle / "rootfs"


def docker_save(path: Path, layers: list[bytes]) -> Path:
    """A legacy `docker save` tarball of the layers (manifest.json, <id>.json config, <n>/layer.tar)."""
    diff_ids = [f"sha256:{hashlib.sha256(l).hexdigest()}" for l in layers]
    cfg = json.dumps(dict(CONFIG, rootfs={"type": "layers", "diff_ids": diff_ids})).encode()
    cfg_name = f"{hashlib.sha256(cfg).hexdigest()}.json"
    names = [f"{i:04d}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": ["mt/save:1"], "Layers": names}]).encode()
    with tarfile.open(path, "w") as t:
        for name, data in [(cfg_name, cfg), *zip(names, layers), ("manifest.json", manifest)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return path


def test_directory_mtimes_survive_later_layers_and_whiteouts(workdir, mounter):
    o = Oci(workdir / "oci")
    man = o.manifest([pax_tar(BASE), pax_tar(UPPER)], CONFIG,
                     annotations={"org.opencontainers.image.ref.name": "v1"})
    o.index([man])
    store = new_store(workdir)
    hx = imported(store, "docker.io/mt/layers:1", o.root)
    with kernel_mount(store / "content" / hx / "rootfs.erofs", workdir / "k") as k:
        assert not (k / "etc" / "gone").exists() and not (k / "opq" / "old").exists()
        got = mtimes(k, LAYERED_WANT)
    assert got == LAYERED_WANT
    m = mounter(store, extra_args=["--rootfs-mounts", "fuse"])
    assert mtimes(rootfs_of(m, hx), LAYERED_WANT) == LAYERED_WANT
    # umoci restores a parent's time after each entry it writes into it: the same times.
    rootfs = umoci_unpack(o.root, "v1", workdir / "bundle")
    if rootfs is not None:
        assert mtimes(rootfs, LAYERED_WANT) == LAYERED_WANT, "imagefs and umoci unpack differ"
    # The same layers as a `docker save` tarball: the same tree, so the same image bytes.
    save = docker_save(workdir / "save.tar", [pax_tar(BASE), pax_tar(UPPER)])
    sx = imported(store, "docker.io/mt/save:1", save)
    image = lambda h: sha256_file(store / "content" / h / "rootfs.erofs")
    assert image(sx) == image(hx)


def import_as(store: Path, ref: str, source: Path, umask: int) -> str:
    r = subprocess.run([str(imagefs_bin()), "import", "--store", str(store), "--tag", ref, str(source)],
                       capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr
    return r.stdout.split("sha256:")[1].split()[0]


def test_same_input_same_digest_across_umask_and_clock(workdir):
    """Two imports of one tar (implicit parents included), under umask 022 and 077 and more than a
    second apart, make the same bytes, and those bytes hold the tar's times."""
    entries = FLAT + [("implicit/deeper/file", "file", "1800000000.5", b"x")]
    tar = workdir / "t.tar"
    tar.write_bytes(pax_tar(entries))
    s1, s2 = new_store(workdir, "s1"), new_store(workdir, "s2")
    h1 = import_as(s1, "docker.io/mt/r:1", tar, 0o022)
    time.sleep(1.5)
    h2 = import_as(s2, "docker.io/mt/r:1", tar, 0o077)
    assert h1 == h2
    assert sha256_file(s1 / "content" / h1 / "rootfs.erofs") == sha256_file(s2 / "content" / h2 / "rootfs.erofs")
    with kernel_mount(s1 / "content" / h1 / "rootfs.erofs", workdir / "k") as k:
        assert mtimes(k, FLAT_WANT) == FLAT_WANT
        # Directories no entry describes have the epoch, not the time of the import.
        assert mtimes(k, ["implicit", "implicit/deeper"]) == {"implicit": 0, "implicit/deeper": 0}
        assert os.lstat(k / "implicit/deeper/file").st_mtime_ns == ns_of("1800000000.5")


def test_a_directory_input_keeps_its_mtimes(workdir):
    src = workdir / "tree"
    (src / "d" / "e").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    (src / "d" / "e" / "g").write_bytes(b"g")
    os.symlink("f", src / "d" / "l")
    want = {"d/e/g": 1_234_567_890_123_456_789, "d/f": 1_300_000_000_000_000_001,
            "d/l": 1_350_000_000_500_000_000, "d/e": 1_400_000_000_250_000_000,
            "d": 1_450_000_000_000_000_000, ".": 1_500_000_000_999_999_999}
    for p, t in want.items():  # children first: setting a child's time leaves its parent's alone
        os.utime(src / p, ns=(t, t), follow_symlinks=False)
    store = new_store(workdir)
    hx = imported(store, "docker.io/mt/dir:1", src)
    with kernel_mount(store / "content" / hx / "rootfs.erofs", workdir / "k") as k:
        assert mtimes(k, want) == want
    # Reading the tree (atimes change) and a later clock change nothing.
    for p in ("d/f", "d/e/g"):
        (src / p).read_bytes()
    time.sleep(1.1)
    assert imported(new_store(workdir, "s2"), "docker.io/mt/dir:1", src) == hx
