"""`imagefs import` end to end: OCI layouts and docker-save tarballs built here in Python, directories,
tar archives and erofs images are imported into a fresh store with the real binary; the store is
checked (content/<hex>, metadata.json, the tag symlink), then mounted and `digests/<hex>/rootfs/`
compared with the expected merged tree (names, types, modes, owners, contents, symlink targets,
device numbers, xattrs, hard links sharing st_ino).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import select
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import bookkeeping
from helpers import imagefs_bin, require, sh, sha256_file

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"


# ---------------------------------------------------------------- layers
def _ti(name, typ, mode, uid=0, gid=0, linkname="", size=0, dev=(0, 0), xattrs=None):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, ti.size = typ, mode, uid, gid, linkname, size
    ti.mtime = 1_700_000_000
    ti.devmajor, ti.devminor = dev
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
    return ti


def make_tar(entries) -> bytes:
    """entries: (name, kind, mode, opts) with kind in dir/file/symlink/hardlink/fifo/chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            name, kind, mode = e[0], e[1], e[2]
            o = e[3] if len(e) > 3 else {}
            uid, gid, x = o.get("uid", 0), o.get("gid", 0), o.get("xattrs")
            if kind == "dir":
                t.addfile(_ti(name, tarfile.DIRTYPE, mode, uid, gid, xattrs=x))
            elif kind == "file":
                data = o.get("data", b"")
                t.addfile(_ti(name, tarfile.REGTYPE, mode, uid, gid, size=len(data), xattrs=x), io.BytesIO(data))
            elif kind == "symlink":
                t.addfile(_ti(name, tarfile.SYMTYPE, mode, uid, gid, linkname=o["target"]))
            elif kind == "hardlink":
                t.addfile(_ti(name, tarfile.LNKTYPE, mode, uid, gid, linkname=o["target"]))
            elif kind == "fifo":
                t.addfile(_ti(name, tarfile.FIFOTYPE, mode, uid, gid))
            elif kind == "chr":
                t.addfile(_ti(name, tarfile.CHRTYPE, mode, uid, gid, dev=o["dev"]))
            else:
                raise ValueError(kind)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as g:
        g.write(data)
    return buf.getvalue()


BASE_LAYER = [
    ("./", "dir", 0o755),
    ("etc/", "dir", 0o755),
    ("etc/hostname", "file", 0o644, {"data": b"base\n", "xattrs": {"user.note": "hello"}}),
    ("etc/motd", "file", 0o644, {"data": b"old motd\n"}),
    ("etc/removed", "file", 0o644, {"data": b"bye\n"}),
    ("usr/", "dir", 0o755),
    ("usr/bin/", "dir", 0o755),
    ("usr/bin/tool", "file", 0o755, {"data": b"#!tool\n" * 100}),
    ("usr/bin/tool-hl", "hardlink", 0o755, {"target": "usr/bin/tool"}),
    ("usr/bin/sh", "symlink", 0o777, {"target": "tool"}),
    ("link-abs", "symlink", 0o777, {"target": "/etc/hostname"}),
    ("opt/", "dir", 0o750, {"uid": 1000, "gid": 1000}),
    ("opt/secret", "file", 0o600, {"uid": 1000, "gid": 1001, "data": b"s3cret"}),
    ("suid", "file", 0o4755, {"data": b"x"}),
    ("run.fifo", "fifo", 0o640),
    ("dev/", "dir", 0o755),
    ("dev/null", "chr", 0o666, {"dev": (1, 3)}),
    ("data/", "dir", 0o755),
    ("data/a", "file", 0o644, {"data": b"a"}),
    ("data/old/", "dir", 0o755),
    ("data/old/x", "file", 0o644, {"data": b"x"}),
    ("gone/", "dir", 0o755),
    ("gone/f", "file", 0o644, {"data": b"f"}),
]

UPPER_LAYER = [
    ("etc/", "dir", 0o755),
    ("etc/.wh.removed", "file", 0o644),
    ("etc/motd", "file", 0o644, {"data": b"new motd\n"}),
    ("data/", "dir", 0o755),
    ("data/.wh..wh..opq", "file", 0o644),
    ("data/new", "file", 0o644, {"data": b"new"}),
    (".wh.gone", "file", 0o644),
    ("usr/bin/tool2", "hardlink", 0o755, {"target": "usr/bin/tool"}),
]

# The merged tree: path -> (type, mode, uid, gid, content | target | rdev)
EXPECTED = {
    "etc": ("dir", 0o755, 0, 0, None),
    "etc/hostname": ("reg", 0o644, 0, 0, b"base\n"),
    "etc/motd": ("reg", 0o644, 0, 0, b"new motd\n"),
    "usr": ("dir", 0o755, 0, 0, None),
    "usr/bin": ("dir", 0o755, 0, 0, None),
    "usr/bin/tool": ("reg", 0o755, 0, 0, b"#!tool\n" * 100),
    "usr/bin/tool-hl": ("reg", 0o755, 0, 0, b"#!tool\n" * 100),
    "usr/bin/tool2": ("reg", 0o755, 0, 0, b"#!tool\n" * 100),
    "usr/bin/sh": ("lnk", None, 0, 0, "tool"),
    "link-abs": ("lnk", None, 0, 0, "/etc/hostname"),
    "opt": ("dir", 0o750, 1000, 1000, None),
    "opt/secret": ("reg", 0o600, 1000, 1001, b"s3cret"),
    "suid": ("reg", 0o4755, 0, 0, b"x"),
    "run.fifo": ("fifo", 0o640, 0, 0, None),
    "dev": ("dir", 0o755, 0, 0, None),
    "dev/null": ("chr", 0o666, 0, 0, os.makedev(1, 3)),
    "data": ("dir", 0o755, 0, 0, None),
    "data/new": ("reg", 0o644, 0, 0, b"new"),
}
HARDLINKED = {"usr/bin/tool", "usr/bin/tool-hl", "usr/bin/tool2"}

CONFIG = {
    "created": "2024-01-02T03:04:05Z",
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "Entrypoint": ["/usr/bin/tool"],
        "Cmd": ["--flag", "x"],
        "Env": ["PATH=/usr/bin:/bin", "FOO=bar=baz"],
        "WorkingDir": "/opt",
    },
    "rootfs": {"type": "layers", "diff_ids": []},
}


# ---------------------------------------------------------------- OCI layout / docker save
class Oci:
    """An OCI image layout directory written blob by blob."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def blob(self, data: bytes, media_type: str, **extra) -> dict:
        hx = hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / hx).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hx}", "size": len(data), **extra}

    def manifest(self, layers: list[bytes], config: dict, *, gzip_layers=True, **extra) -> dict:
        cfg = dict(config)
        cfg["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(l).hexdigest()}" for l in layers]}
        descs = [self.blob(gz(l) if gzip_layers else l, MT_LAYER_GZ if gzip_layers else MT_LAYER) for l in layers]
        m = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
             "config": self.blob(json.dumps(cfg).encode(), MT_CONFIG), "layers": descs}
        return self.blob(json.dumps(m).encode(), MT_MANIFEST, **extra)

    def index(self, manifests: list[dict]):
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                                                          "manifests": manifests}))


def build_oci(root: Path, *, gzip_layers=True) -> tuple[Path, str]:
    """The standard two-layer image. Returns (layout dir, manifest hex)."""
    o = Oci(root)
    m = o.manifest([make_tar(BASE_LAYER), make_tar(UPPER_LAYER)], CONFIG, gzip_layers=gzip_layers,
                   annotations={"org.opencontainers.image.ref.name": "v1"})
    o.index([m])
    return root, m["digest"].split(":")[1]


def build_docker_save(path: Path, *, compress=False) -> Path:
    """A legacy `docker save` tarball: manifest.json, <id>.json config, <id>/layer.tar layers; the second
    layer is a gzip blob reached through a symlink, as newer docker writes."""
    base, upper = make_tar(BASE_LAYER), make_tar(UPPER_LAYER)
    diff_ids = [f"sha256:{hashlib.sha256(l).hexdigest()}" for l in (base, upper)]
    cfg = json.dumps(dict(CONFIG, rootfs={"type": "layers", "diff_ids": diff_ids})).encode()
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    upper_gz = gz(upper)
    upper_hex = hashlib.sha256(upper_gz).hexdigest()
    manifest = [{"Config": f"{cfg_hex}.json", "RepoTags": ["test/save:1"],
                 "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"]}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        add(f"{cfg_hex}.json", cfg)
        add("aaaa/layer.tar", base)
        add(f"blobs/sha256/{upper_hex}", upper_gz)
        ti = tarfile.TarInfo("bbbb/layer.tar")
        ti.type, ti.linkname = tarfile.SYMTYPE, f"../blobs/sha256/{upper_hex}"
        t.addfile(ti)
        add("repositories", b"{}")
        add("manifest.json", json.dumps(manifest).encode())
    data = buf.getvalue()
    path.write_bytes(gz(data) if compress else data)
    return path


# ---------------------------------------------------------------- running and checking
def run_import(store: Path, ref: str, source, *extra) -> subprocess.CompletedProcess:
    return sh(imagefs_bin(), "import", "--store", store, "--tag", ref, source, *extra, timeout=120)


def imported(store: Path, ref: str, source) -> str:
    r = run_import(store, ref, source)
    assert r.returncode == 0, f"import failed ({r.returncode}): {r.stderr}"
    hx = r.stdout.split("sha256:")[1].split()[0]
    assert len(hx) == 64
    return hx


def new_store(workdir: Path, name="store") -> Path:
    s = workdir / name
    s.mkdir(mode=0o755)
    return s


def check_store(store: Path, repo: str, tag: str, hx: str, *, first_ref: str | None = None):
    """first_ref: the reference of the import that stored the digest (a reused digest keeps its metadata)."""
    d = store / "content" / hx
    assert (d / "rootfs.erofs").is_file() and (d / "metadata.json").is_file()
    link = store / "repositories" / repo / tag
    assert os.readlink(link) == "../" * (1 + len(repo.split("/"))) + "content/" + hx
    assert os.path.realpath(link) == str(d.resolve())
    meta = json.loads((d / "metadata.json").read_text())
    assert meta["digest"] == f"sha256:{hx}"
    assert meta["status"] == "ready"
    assert meta["size_bytes"] == os.path.getsize(d / "rootfs.erofs")
    assert meta["name"] == (first_ref or f"{repo}:{tag}")
    assert not list((bookkeeping(store) / "import").iterdir()), "work directories left behind"
    return meta


def describe(root: Path) -> dict:
    """path -> (type, mode, uid, gid, content | target | rdev, ino) of a tree, not following symlinks."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            m = st.st_mode
            if stat.S_ISDIR(m):
                out[rel] = ("dir", stat.S_IMODE(m), st.st_uid, st.st_gid, None, st.st_ino)
            elif stat.S_ISREG(m):
                out[rel] = ("reg", stat.S_IMODE(m), st.st_uid, st.st_gid, p.read_bytes(), st.st_ino)
            elif stat.S_ISLNK(m):
                out[rel] = ("lnk", None, st.st_uid, st.st_gid, os.readlink(p), st.st_ino)
            elif stat.S_ISFIFO(m):
                out[rel] = ("fifo", stat.S_IMODE(m), st.st_uid, st.st_gid, None, st.st_ino)
            elif stat.S_ISCHR(m):
                out[rel] = ("chr", stat.S_IMODE(m), st.st_uid, st.st_gid, st.st_rdev, st.st_ino)
            else:
                out[rel] = ("other", stat.S_IMODE(m), st.st_uid, st.st_gid, None, st.st_ino)
    return out


def check_merged_tree(rootfs: Path):
    got = describe(rootfs)
    assert sorted(got) == sorted(EXPECTED), f"names differ: extra {set(got) - set(EXPECTED)}, " \
                                            f"missing {set(EXPECTED) - set(got)}"
    for p, want in EXPECTED.items():
        assert got[p][:5] == want, f"{p}: got {got[p][:5]}, want {want}"
    inos = {got[p][5] for p in HARDLINKED}
    assert len(inos) == 1, f"hard links do not share an inode: {inos}"
    assert os.lstat(rootfs / "usr/bin/tool").st_nlink == 3
    others = {got[p][5] for p in got if p not in HARDLINKED}
    assert not inos & others
    assert os.getxattr(rootfs / "etc/hostname", "user.note", follow_symlinks=False) == b"hello"
    rs = os.stat(rootfs)
    assert (stat.S_IMODE(rs.st_mode), rs.st_uid, rs.st_gid) == (0o755, 0, 0)


def mount(mounter, store: Path):
    # The mounter takes an object with a `.root` (a Store); a bare pathlib.Path would be taken for
    # its own `.root` attribute ("/"), so wrap it.
    from types import SimpleNamespace
    assert store.is_dir() and store != Path("/")
    return mounter(SimpleNamespace(root=store))


def rootfs_of(m, hx) -> Path:
    return m.mnt / "digests" / hx / "rootfs"


# ---------------------------------------------------------------- OCI
def test_oci_layout_import(workdir, mounter):
    layout, manifest_hex = build_oci(workdir / "oci")
    store = new_store(workdir)
    hx = imported(store, "docker.io/library/merged:v1", layout)
    assert hx == manifest_hex, "an OCI image is named by its manifest digest"
    meta = check_store(store, "docker.io/library/merged", "v1", hx)
    assert meta["entrypoint"] == ["/usr/bin/tool"]
    assert meta["cmd"] == ["--flag", "x"]
    assert meta["env"] == {"PATH": "/usr/bin:/bin", "FOO": "bar=baz"}
    assert meta["working_dir"] == "/opt"
    assert meta["created_at"] == "2024-01-02T03:04:05Z"
    # the same layout as a tar archive (oci-archive), plain and gzip: the same digest, stored once
    oci_tar = workdir / "oci.tar"
    with tarfile.open(oci_tar, "w") as t:
        t.add(layout, arcname=".")
    assert imported(store, "docker.io/library/merged:tar", oci_tar) == hx
    oci_tgz = workdir / "oci.tgz"
    oci_tgz.write_bytes(gz(oci_tar.read_bytes()))
    assert imported(store, "docker.io/library/merged:tgz", oci_tgz) == hx
    assert [p.name for p in (store / "content").iterdir()] == [hx]
    m = mount(mounter, store)
    check_merged_tree(rootfs_of(m, hx))
    tag = m.mnt / "tags" / "docker.io/library/merged" / "v1"
    assert os.readlink(tag) == "../../../../digests/" + hx
    assert (tag / "rootfs" / "etc" / "motd").read_bytes() == b"new motd\n"


def zstd_frames(data: bytes, *, frames: int = 1, skippable: bool = False) -> bytes:
    """`data` compressed by the zstd CLI as `frames` frames one after another (as zstd:chunked writes
    them), with a skippable frame (zstd:chunked's table of contents) after the first if asked."""
    require(shutil.which("zstd") is not None, "no zstd here (package zstd)")
    step = -(-len(data) // frames)
    out = b""
    for i in range(frames):
        part = data[i * step:(i + 1) * step]
        out += subprocess.run(["zstd", "-q", "-c", "-3"], input=part, stdout=subprocess.PIPE, check=True).stdout
        if skippable and i == 0:
            payload = b"table of contents"
            out += (0x184D2A5E).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload
    return out


def test_oci_zstd_layers_import_as_their_tar(workdir, mounter):
    """Issue 12: zstd layers (`tar+zstd`, as skopeo and buildah write; zstd:chunked's many frames and its
    skippable table of contents) unpack to the same tree as the gzip ones: the same rootfs.erofs bytes."""
    o = Oci(workdir / "oci-zstd")
    base, upper = make_tar(BASE_LAYER), make_tar(UPPER_LAYER)
    cfg = dict(CONFIG)
    cfg["rootfs"] = {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(l).hexdigest()}" for l in (base, upper)]}
    mt = "application/vnd.oci.image.layer.v1.tar+zstd"
    layers = [o.blob(zstd_frames(base), mt), o.blob(zstd_frames(upper, frames=3, skippable=True), mt)]
    m = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": o.blob(json.dumps(cfg).encode(), MT_CONFIG),
         "layers": layers}
    o.index([o.blob(json.dumps(m).encode(), MT_MANIFEST)])
    gz_layout, gz_hex = build_oci(workdir / "oci-gz")
    store = new_store(workdir)
    hx = imported(store, "docker.io/library/zstd:v1", o.root)
    assert imported(store, "docker.io/library/gz:v1", gz_layout) == gz_hex
    img = lambda h: (store / "content" / h / "rootfs.erofs").read_bytes()
    assert img(hx) == img(gz_hex), "a zstd layer unpacked to another tree than its gzip twin"
    check_merged_tree(rootfs_of(mount(mounter, store), hx))
    # A cut zstd layer is refused, and nothing is stored.
    cut = Oci(workdir / "oci-cut")
    bad = zstd_frames(base)
    m2 = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
          "config": cut.blob(json.dumps(dict(cfg, rootfs={"type": "layers", "diff_ids": [cfg["rootfs"]["diff_ids"][0]]})).encode(), MT_CONFIG),
          "layers": [cut.blob(bad[:len(bad) // 2], mt)]}
    cut.index([cut.blob(json.dumps(m2).encode(), MT_MANIFEST)])
    before = sorted(p.name for p in (store / "content").iterdir())
    r = run_import(store, "docker.io/library/cut:v1", cut.root)
    assert r.returncode != 0, r.stdout + r.stderr
    assert sorted(p.name for p in (store / "content").iterdir()) == before


def test_oci_uncompressed_layers_and_nested_index(workdir, mounter):
    o = Oci(workdir / "oci")
    amd = o.manifest([make_tar(BASE_LAYER), make_tar(UPPER_LAYER)], CONFIG, gzip_layers=False,
                     platform={"os": "linux", "architecture": "amd64"})
    arm_cfg = dict(CONFIG, architecture="arm64")
    arm = o.manifest([make_tar([("arm", "file", 0o644, {"data": b"arm"})])], arm_cfg,
                     platform={"os": "linux", "architecture": "arm64"})
    attest = o.manifest([make_tar([("att", "file", 0o644)])], CONFIG,
                        platform={"os": "unknown", "architecture": "unknown"})
    nested = o.blob(json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX,
                                "manifests": [arm, amd, attest]}).encode(), MT_INDEX)
    o.index([nested])
    store = new_store(workdir)
    hx = imported(store, "docker.io/multi/arch:latest", o.root)
    assert hx == amd["digest"].split(":")[1], "the linux/amd64 manifest is chosen"
    meta = check_store(store, "docker.io/multi/arch", "latest", hx)
    assert meta.get("platform") == "linux/amd64"
    m = mount(mounter, store)
    check_merged_tree(rootfs_of(m, hx))


def test_docker_save_import(workdir, mounter):
    tarball = build_docker_save(workdir / "save.tar")
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/save:1", tarball)
    # no manifest blob in a legacy docker save: named by the image bytes
    assert hx == sha256_file(store / "content" / hx / "rootfs.erofs")
    meta = check_store(store, "docker.io/test/save", "1", hx)
    assert meta["entrypoint"] == ["/usr/bin/tool"] and meta["working_dir"] == "/opt"
    # the same layers give the same image bytes as the OCI import
    layout, _ = build_oci(workdir / "oci")
    oci_hex = imported(store, "docker.io/test/oci:1", layout)
    assert sha256_file(store / "content" / oci_hex / "rootfs.erofs") == hx
    # a gzip-compressed docker save works too, and is the same image
    gz_tarball = build_docker_save(workdir / "save.tar.gz", compress=True)
    assert imported(store, "docker.io/test/save:gz", gz_tarball) == hx
    m = mount(mounter, store)
    check_merged_tree(rootfs_of(m, hx))


# ---------------------------------------------------------------- directories, tars, erofs
def make_dir_tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "conf").write_text("k=v\n")
    (root / "bin").mkdir()
    (root / "bin" / "prog").write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    os.chmod(root / "bin" / "prog", 0o755)
    os.link(root / "bin" / "prog", root / "bin" / "prog2")
    os.symlink("prog", root / "bin" / "p")
    os.mkfifo(root / "fifo", 0o600)
    (root / "home").mkdir(mode=0o700)
    os.chown(root / "home", 4242, 4343)
    (root / "home" / "f").write_text("mine")
    os.chown(root / "home" / "f", 4242, 4343)
    os.chmod(root, 0o755)
    return root


def comparable(desc: dict) -> dict:
    return {k: v[:5] for k, v in desc.items()}


def whole_seconds(root: Path):
    """Cuts every mtime under `root` to whole seconds (a ustar header holds no more), so a tar of the
    tree describes it exactly."""
    for dirpath, dirnames, filenames in os.walk(root):
        for p in [Path(dirpath) / n for n in dirnames + filenames] + [Path(dirpath)]:
            s = os.lstat(p).st_mtime_ns // 1_000_000_000 * 1_000_000_000
            os.utime(p, ns=(s, s), follow_symlinks=False)


def test_directory_tar_and_erofs_import(workdir, mounter):
    src = make_dir_tree(workdir / "tree")
    # Real mtimes are imported: the tar below must hold the tree's exactly.
    whole_seconds(src)
    store = new_store(workdir)
    hx = imported(store, "docker.io/local/dir:1", src)
    assert hx == sha256_file(store / "content" / hx / "rootfs.erofs")
    check_store(store, "docker.io/local/dir", "1", hx)

    # the same tree as a tar.gz (detected by magic, whatever its name) is the same image
    tgz = workdir / "tree.bin"
    with tarfile.open(tgz, "w:gz") as t:
        t.add(src, arcname=".")
    assert imported(store, "docker.io/local/tgz:1", tgz) == hx
    plain = workdir / "tree.tar"
    with tarfile.open(plain, "w") as t:
        t.add(src, arcname=".")
    assert imported(store, "docker.io/local/tar:1", plain) == hx

    # an existing erofs image (uncompressed, own uuid) is used as is
    img = workdir / "other.img"
    other = workdir / "other"
    (other / "x").mkdir(parents=True)
    (other / "x" / "y").write_text("erofs as is\n")
    r = sh("mkfs.erofs", "-T0", img, other)
    assert r.returncode == 0, r.stderr
    ehx = imported(store, "docker.io/local/erofs:1", img)
    assert ehx == sha256_file(img)
    assert (store / "content" / ehx / "rootfs.erofs").read_bytes() == img.read_bytes()

    assert sorted(p.name for p in (store / "content").iterdir()) == sorted({hx, ehx})
    m = mount(mounter, store)
    want = describe(src)
    got = describe(rootfs_of(m, hx))
    assert comparable(got) == comparable(want)
    assert got["bin/prog"][5] == got["bin/prog2"][5] != got["bin/p"][5]
    assert (rootfs_of(m, ehx) / "x" / "y").read_text() == "erofs as is\n"
    # real mtimes (issue 12), the same from the directory and from its tars
    for p in ("etc/conf", "bin/p", "home", "."):
        assert os.lstat(rootfs_of(m, hx) / p).st_mtime_ns == os.lstat(src / p).st_mtime_ns, p


# ---------------------------------------------------------------- reproducibility
def test_same_input_same_digest_stored_once(workdir):
    layout, _ = build_oci(workdir / "oci")
    store = new_store(workdir)
    r1 = run_import(store, "docker.io/r/img:a", layout)
    r2 = run_import(store, "docker.io/r/img:b", layout)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    h1, h2 = (r.stdout.split("sha256:")[1].split()[0] for r in (r1, r2))
    assert h1 == h2
    assert "already in the store" in r2.stdout and "already" not in r1.stdout
    assert [p.name for p in (store / "content").iterdir()] == [h1]
    for t in ("a", "b"):
        check_store(store, "docker.io/r/img", t, h1, first_ref="docker.io/r/img:a")
    # a layout rebuilt from scratch, into another store: identical image bytes
    layout2, _ = build_oci(workdir / "oci2")
    store2 = new_store(workdir, "store2")
    assert imported(store2, "docker.io/r/img:a", layout2) == h1
    assert sha256_file(store2 / "content" / h1 / "rootfs.erofs") == sha256_file(store / "content" / h1 / "rootfs.erofs")
    # directories too
    src = make_dir_tree(workdir / "tree")
    d1 = imported(store, "docker.io/r/dir:1", src)
    d2 = imported(store2, "docker.io/r/dir:1", src)
    assert d1 == d2


def test_retag_moves_the_tag_and_a_legacy_twin(workdir):
    store = new_store(workdir)
    a = make_dir_tree(workdir / "a")
    b = workdir / "b"
    b.mkdir()
    (b / "only-b").write_text("b")
    ha = imported(store, "docker.io/x/y:t", a)
    hb = imported(store, "docker.io/x/y:t", b)
    assert ha != hb
    check_store(store, "docker.io/x/y", "t", hb)
    # the old image is not collected by import (imagefs gc does that)
    assert (store / "content" / ha).is_dir()
    # a legacy-layout tag of the same name is replaced by the content-layout one
    legacy = store / "docker.io" / "x" / "y"
    legacy.mkdir(parents=True)
    os.symlink(ha, legacy / "old")
    hc = imported(store, "docker.io/x/y:old", b)
    assert hc == hb and not os.path.lexists(legacy / "old")
    check_store(store, "docker.io/x/y", "old", hb, first_ref="docker.io/x/y:t")


def test_references_are_stored_as_hypeman_names_them(workdir):
    """`--tag alpine:1` is docker.io/library/alpine:1, where hypeman looks (docker's normalization)."""
    from hypeman import Content
    src = make_dir_tree(workdir / "tree")
    store = new_store(workdir)
    for given, repo, tag in [("alpine:1", "docker.io/library/alpine", "1"),
                             ("myuser/app", "docker.io/myuser/app", "latest"),
                             ("index.docker.io/library/alpine:2", "docker.io/library/alpine", "2"),
                             ("localhost:5000/a/b:3", "localhost:5000/a/b", "3")]:
        r = run_import(store, given, src)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{repo}:{tag} sha256:"), r.stdout
        hx = r.stdout.split("sha256:")[1].split()[0]
        check_store(store, repo, tag, hx, first_ref="docker.io/library/alpine:1")
        assert Content(store, None).get_image(repo, tag)["digest"] == f"sha256:{hx}"
    assert not (store / "repositories" / "alpine").exists()
    assert not (store / "repositories" / "myuser").exists()


def test_import_while_mounted(workdir, mounter):
    store = new_store(workdir)
    m = mount(mounter, store)
    src = make_dir_tree(workdir / "tree")
    hx = imported(store, "docker.io/live/img:1", src)
    check_store(store, "docker.io/live/img", "1", hx)
    m.stop()
    m2 = mount(mounter, store)
    assert comparable(describe(rootfs_of(m2, hx))) == comparable(describe(src))


# ---------------------------------------------------------------- bad inputs
def expect_failure(store: Path, ref: str, source, *needles):
    r = run_import(store, ref, source)
    assert r.returncode == 1, f"expected exit 1, got {r.returncode}: {r.stdout} {r.stderr}"
    assert r.stderr.startswith("imagefs import: "), r.stderr
    for n in needles:
        assert n in r.stderr, f"{n!r} not in {r.stderr!r}"
    assert "panicked" not in r.stderr
    assert not (store / "content").exists() or not any((store / "content").iterdir()), "content was installed"
    imp = bookkeeping(store) / "import"
    assert not imp.exists() or not any(imp.iterdir()), "work directory left behind"
    return r


def test_bad_inputs(workdir):
    store = new_store(workdir)
    good, _ = build_oci(workdir / "good")

    expect_failure(store, "a/b:1", workdir / "nope", str(workdir / "nope"), "No such file")
    junk = workdir / "junk.tar"
    junk.write_bytes(os.urandom(5000))
    expect_failure(store, "a/b:1", junk, str(junk), "not a directory, a tar archive")
    expect_failure(store, "Bad/Repo:1", good, "invalid reference", "Bad/Repo")
    expect_failure(store, "a/b:-x", good, "invalid reference")
    r = run_import(workdir / "no-store", "a/b:1", good)
    assert r.returncode == 1 and str(workdir / "no-store") in r.stderr

    # a truncated tar.gz
    tgz = workdir / "cut.tar.gz"
    full = gz(make_tar(BASE_LAYER))
    tgz.write_bytes(full[: len(full) // 2])
    expect_failure(store, "a/b:1", tgz, str(tgz))
    # a truncated plain tar (cut inside a file's data)
    cut = workdir / "cut.tar"
    t = make_tar([("big", "file", 0o644, {"data": os.urandom(20000)})])
    cut.write_bytes(t[:6000])
    expect_failure(store, "a/b:1", cut, str(cut), "truncated")

    # a missing layer blob
    miss, _ = build_oci(workdir / "missing")
    m = json.loads((miss / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    layer0 = json.loads((miss / "blobs/sha256" / m).read_text())["layers"][0]["digest"].split(":")[1]
    os.unlink(miss / "blobs/sha256" / layer0)
    expect_failure(store, "a/b:1", miss, layer0, "missing")

    # a layer whose bytes do not match its digest
    bad, _ = build_oci(workdir / "baddigest")
    m = json.loads((bad / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    layer1 = json.loads((bad / "blobs/sha256" / m).read_text())["layers"][1]["digest"].split(":")[1]
    (bad / "blobs/sha256" / layer1).write_bytes(gz(make_tar(UPPER_LAYER[:2])))
    expect_failure(store, "a/b:1", bad, layer1, "does not match its digest")

    # a manifest that is not JSON (with a correct digest)
    o = Oci(workdir / "badmanifest")
    o.index([o.blob(b"{not json", MT_MANIFEST)])
    expect_failure(store, "a/b:1", o.root, "malformed JSON")
    # an index with no manifests
    o2 = Oci(workdir / "empty")
    o2.index([])
    expect_failure(store, "a/b:1", o2.root, "no manifests")

    # layers that try to escape: ".." and a hard link out of the tree
    for i, entries in enumerate([
        [("../escaped", "file", 0o644, {"data": b"x"})],
        [("ok", "file", 0o644), ("hl", "hardlink", 0o644, {"target": "../../../etc/passwd"})],
    ]):
        o = Oci(workdir / f"escape{i}")
        o.index([o.manifest([make_tar(entries)], CONFIG)])
        expect_failure(store, "a/b:1", o.root, "leaves the image root")
    assert not (workdir / "escaped").exists()

    # a symlink to outside, then a write through it: lands inside the image, never outside
    victim = workdir / "victim"
    victim.mkdir()
    o = Oci(workdir / "via-symlink")
    o.index([o.manifest([make_tar([("out", "symlink", 0o777, {"target": str(victim)}),
                                   ("up", "symlink", 0o777, {"target": "../../../../../.."})]),
                         make_tar([("out/planted", "file", 0o644, {"data": b"x"}),
                                   (f"up{victim}/planted2", "file", 0o644, {"data": b"y"})])], CONFIG)])
    hx = imported(store, "docker.io/safe/img:1", o.root)
    assert not any(victim.iterdir()), list(victim.iterdir())


def test_progress_only_on_a_terminal(workdir):
    layout, _ = build_oci(workdir / "oci")
    store = new_store(workdir)
    # (a name hypeman uses: for others import warns that hypeman will not see the tag)
    r = run_import(store, "example.com/p/q:1", layout)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # stderr on a pty: progress lines
    master, slave = pty.openpty()
    p = subprocess.Popen([str(imagefs_bin()), "import", "--store", str(store), "--tag", "example.com/p/q:2", str(layout)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=60)
    os.close(master)
    assert p.returncode == 0
    text = out.decode(errors="replace")
    assert "layer 1/2" in text and "layer 2/2" in text and "building" in text, text


def test_leftovers_of_a_killed_import_are_swept(workdir):
    store = new_store(workdir)
    src = make_dir_tree(workdir / "tree")
    imported(store, "docker.io/s/w:1", src)
    stale = bookkeeping(store) / "import" / "dead-import"
    (stale / "rootfs" / "etc").mkdir(parents=True)
    (stale / "rootfs" / "etc" / "f").write_text("left by kill -9")
    imported(store, "docker.io/s/w:2", src)
    assert not stale.exists()
    assert not list((bookkeeping(store) / "import").iterdir())
