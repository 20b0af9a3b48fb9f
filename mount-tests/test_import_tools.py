"""`imagefs import` of images built by real tools (issue 12, "Tests that must exist"), and
`--platform`.

umoci (Debian package) builds an image from a varied tree with no network: regular, empty and
large sparse-ish files, directories with odd modes (1777, 0700, setgid), symlinks (absolute,
relative, dangling), hard-link groups, a fifo, char and block devices, other owners, a file
capability (setcap), POSIX ACLs (access and default, setfacl), user.* xattrs with binary values,
non-UTF-8 and 254-byte names (mkfs.erofs 1.5 stores no longer ones), distinct mtimes; a second layer deletes (whiteouts) and
`umoci insert --opaque` replaces a directory. skopeo copies it, offline, to an oci-archive, a
docker-archive (`docker save` form) and an OCI layout with zstd layers. Each form is imported,
the store mounted, and `digests/<hex>/rootfs/` compared entry by entry with `umoci unpack`'s
rootfs: names, types, modes, owners, sizes, content hashes, symlink targets, hard-link groups,
every xattr (security.capability and system.posix_acl_* included), device numbers; mtimes in a
test of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import require
from rootfs_tree import kernel_mount
from test_import import CONFIG, Oci, imported, make_tar, mount, new_store, rootfs_of, run_import

TOOLS = ("umoci", "skopeo", "setcap", "setfacl")
# cap_dac_override,cap_fowner+ep: its value holds a 0x0a byte (issue 12, bug 1)
CAPS = "cap_dac_override,cap_fowner+ep"
MTIME = 1_600_000_000


def run(*args, cwd=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, cwd=cwd, timeout=300)
    assert r.returncode == 0, f"{args}: {r.stderr.decode(errors='replace')}"
    return r


# ---------------------------------------------------------------- the tree umoci packs
def populate(root: Path):
    """The first layer's tree. Every entry gets its own mtime (directories last)."""
    d = lambda *p: root.joinpath(*p)
    for sub in ("etc", "bin", "sbin", "data", "links", "devs", "owners", "acl", "names"):
        d(sub).mkdir(exist_ok=True)
    d("etc/hostname").write_bytes(b"tools\n")
    d("etc/empty").write_bytes(b"")
    d("etc/script").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(d("etc/script"), 0o755)
    d("etc/suid").write_bytes(b"suid\n")
    os.chmod(d("etc/suid"), 0o4755)
    d("etc/sgid").write_bytes(b"sgid\n")
    os.chmod(d("etc/sgid"), 0o2711)
    d("etc/readonly").write_bytes(b"r\n")
    os.chmod(d("etc/readonly"), 0o400)
    # large and mostly holes: the tar holds all of it
    with open(d("data/sparse"), "wb") as f:
        f.truncate(6 << 20)
        for off in (0, 1 << 20, (5 << 20) + 123):
            f.seek(off)
            f.write(os.urandom(4096))
    d("data/big").write_bytes(hashlib.sha256(b"x").digest() * 40000)
    for name, mode in (("tmp", 0o1777), ("private", 0o700), ("shared", 0o2775), ("odd", 0o3751)):
        d("data", name).mkdir()
        os.chmod(d("data", name), mode)
        d("data", name, "inside").write_bytes(name.encode())
    os.symlink("/etc/hostname", d("links/absolute"))
    os.symlink("../etc/hostname", d("links/relative"))
    os.symlink("nowhere/at/all", d("links/dangling"))
    os.symlink(".", d("links/self"))
    # hard-link groups: three names, and two
    d("bin/tool").write_bytes(b"\x7fELF tool\n")
    os.link(d("bin/tool"), d("bin/tool-a"))
    os.link(d("bin/tool"), d("sbin/tool-b"))
    d("data/pair").write_bytes(b"pair\n")
    os.link(d("data/pair"), d("etc/pair"))
    os.mkfifo(d("devs/fifo"), 0o620)
    os.mknod(d("devs/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(d("devs/tty64"), 0o620 | stat.S_IFCHR, os.makedev(4, 64))
    os.mknod(d("devs/sda1"), 0o660 | stat.S_IFBLK, os.makedev(8, 1))
    os.mknod(d("devs/big"), 0o600 | stat.S_IFBLK, os.makedev(259, 70000))
    for name, uid, gid in (("user", 1000, 1000), ("nobody", 65534, 65534), ("mixed", 12345, 54321)):
        d("owners", name).write_bytes(name.encode())
        os.chown(d("owners", name), uid, gid)
    d("owners/dir").mkdir()
    os.chown(d("owners/dir"), 1000, 100)
    os.symlink("user", d("owners/link"))
    os.chown(d("owners/link"), 1001, 1002, follow_symlinks=False)
    # a file capability
    d("bin/ping").write_bytes(b"ping\n")
    run("setcap", CAPS, d("bin/ping"))
    # ACLs: an access ACL on a file; a directory with access and default ACLs, one child
    # written before the default ACL (no ACL of its own) and one after (inherits it)
    d("acl/file").write_bytes(b"acl\n")
    os.chmod(d("acl/file"), 0o640)
    run("setfacl", "-m", "u:1000:r,g:10:r", d("acl/file"))
    d("acl/dir").mkdir()
    d("acl/dir/before").write_bytes(b"before\n")
    os.chmod(d("acl/dir/before"), 0o640)
    run("setfacl", "-m", "u:10:rx", d("acl/dir"))
    run("setfacl", "-d", "-m", "u:1000:rwx,g:2000:rx", d("acl/dir"))
    d("acl/dir/after").write_bytes(b"after\n")
    d("acl/dir/sub").mkdir()
    # user.* xattrs with binary values (0x0a, 0x00, 0xff), on a file and a directory
    d("etc/attrs").write_bytes(b"attrs\n")
    os.setxattr(d("etc/attrs"), "user.bin", b"\x00\x01\n\xff\nend")
    os.setxattr(d("etc/attrs"), "user.text", b"hello world")
    os.setxattr(d("etc/attrs"), "user.empty", b"")
    os.setxattr(d("data"), "user.dir", b"line1\nline2\n")
    # names: not UTF-8, 255 bytes, spaces and newlines
    names = os.fsencode(str(d("names")))
    for n in (b"caf\xe9", b"\xff\xfe", b"n" * 254, "ünï cödé".encode(), b"new\nline", b" lead"):
        with open(names + b"/" + n, "wb") as f:
            f.write(n)
    os.mkdir(names + b"/" + b"d" * 254)
    with open(names + b"/" + b"d" * 254 + b"/" + b"f" * 254, "wb") as f:
        f.write(b"deep")
    # distinct mtimes, nanoseconds too (umoci keeps whole seconds); directories after their
    # contents, the root last
    stamp = MTIME
    for dirpath, dirnames, filenames in os.walk(os.fsencode(str(root)), topdown=False):
        for n in filenames + [x for x in dirnames if os.path.islink(os.path.join(dirpath, x))]:
            stamp += 7
            os.utime(os.path.join(dirpath, n), ns=(stamp * 10**9, stamp * 10**9 + 123456789),
                     follow_symlinks=False)
        for n in dirnames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                stamp += 11
                os.utime(p, ns=(stamp * 10**9, stamp * 10**9), follow_symlinks=False)
    os.utime(root, (stamp + 13, stamp + 13))


def second_layer(root: Path):
    """Deletions (whiteouts), a changed file, a new hard link to a first-layer file, and a
    replaced file type."""
    os.unlink(root / "etc/empty")
    shutil.rmtree(root / "data/private")
    os.unlink(root / "links/dangling")
    (root / "etc/hostname").write_bytes(b"changed\n")
    os.utime(root / "etc/hostname", (MTIME + 99999, MTIME + 99999))
    os.unlink(root / "devs/fifo")
    (root / "devs/fifo").mkdir()
    os.chmod(root / "devs/fifo", 0o750)
    os.utime(root / "devs/fifo", (MTIME + 5, MTIME + 5))
    for p in ("etc", "data", "links", "devs"):
        os.utime(root / p, (MTIME + 77777, MTIME + 77777))


@pytest.fixture(scope="module")
def tool_images(tmp_path_factory):
    """Builds the image with umoci, its forms with skopeo, and umoci's own unpack of it.
    Returns a dict: form -> source path, and "unpacked" -> umoci's rootfs."""
    for t in TOOLS:
        require(shutil.which(t) is not None, f"{t} is missing (scripts/setup.sh installs it)")
    w = tmp_path_factory.mktemp("tools")
    os.chmod(w, 0o755)
    lay = w / "layout"
    run("umoci", "init", "--layout", lay)
    run("umoci", "new", "--image", f"{lay}:t")
    run("umoci", "unpack", "--image", f"{lay}:t", w / "b1")
    populate(w / "b1" / "rootfs")
    run("umoci", "repack", "--image", f"{lay}:t", w / "b1")
    run("umoci", "unpack", "--image", f"{lay}:t", w / "b2")
    second_layer(w / "b2" / "rootfs")
    run("umoci", "repack", "--image", f"{lay}:t", w / "b2")
    # an opaque directory: /data/shared replaced by an empty one (umoci 0.4.7's insert of a
    # non-empty tree writes a cut layer: test_umoci_insert_cut_layer_is_refused), then filled
    empty = w / "empty"
    empty.mkdir()
    os.chmod(empty, 0o2770)
    run("umoci", "insert", "--image", f"{lay}:t", "--opaque", empty, "/data/shared")
    run("umoci", "unpack", "--image", f"{lay}:t", w / "b3")
    (w / "b3/rootfs/data/shared/only").write_bytes(b"only this\n")
    os.utime(w / "b3/rootfs/data/shared/only", (MTIME + 3, MTIME + 3))
    os.utime(w / "b3/rootfs/data/shared", (MTIME + 4, MTIME + 4))
    run("umoci", "repack", "--image", f"{lay}:t", w / "b3")
    run("umoci", "insert", "--image", f"{lay}:t", "--whiteout", "/data/odd")
    run("umoci", "config", "--image", f"{lay}:t", "--os", "linux", "--architecture", "amd64")
    run("umoci", "unpack", "--image", f"{lay}:t", w / "ref")
    forms = {"oci-dir": lay, "unpacked": w / "ref" / "rootfs"}
    run("skopeo", "copy", f"oci:{lay}:t", f"oci-archive:{w / 'oci.tar'}:t")
    forms["oci-archive"] = w / "oci.tar"
    run("skopeo", "copy", f"oci:{lay}:t", f"docker-archive:{w / 'docker.tar'}:test/tools:t")
    forms["docker-archive"] = w / "docker.tar"
    run("skopeo", "copy", "--dest-compress-format", "zstd", f"oci:{lay}:t", f"oci:{w / 'zstd'}:t")
    forms["oci-zstd"] = w / "zstd"
    return forms


def layer_types(layout: Path) -> list[str]:
    blob = lambda d: json.loads((layout / "blobs/sha256" / d.split(":")[1]).read_text())
    m = blob(json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])
    return [l["mediaType"] for l in m["layers"]]


# ---------------------------------------------------------------- comparing trees
def entries(root: Path) -> dict:
    """relative path (bytes) -> lstat of every entry of a tree, the root included as b"."."""
    broot = os.fsencode(str(root))
    out = {b".": os.lstat(broot)}
    for dirpath, dirnames, filenames in os.walk(broot):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, broot)] = os.lstat(p)
    return out


def kind(st) -> str:
    for k, f in (("dir", stat.S_ISDIR), ("reg", stat.S_ISREG), ("lnk", stat.S_ISLNK),
                 ("fifo", stat.S_ISFIFO), ("chr", stat.S_ISCHR), ("blk", stat.S_ISBLK)):
        if f(st.st_mode):
            return k
    return "other"


ACL_NAMES = ("system.posix_acl_access", "system.posix_acl_default")


def xattrs(p: bytes, acls: bool) -> dict:
    names = sorted(n for n in os.listxattr(p, follow_symlinks=False) if acls or n not in ACL_NAMES)
    return {n: os.getxattr(p, n, follow_symlinks=False) for n in names}


def facts(root: Path, rel: bytes, st, acls: bool) -> dict:
    p = os.path.join(os.fsencode(str(root)), rel)
    k = kind(st)
    f = {"type": k, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid,
         "xattrs": xattrs(p, acls)}
    if k == "lnk":
        f["mode"] = None  # a symlink's mode means nothing
        f["target"] = os.readlink(p)
    if k == "reg":
        f["size"] = st.st_size
        with open(p, "rb") as fh:
            f["sha256"] = hashlib.file_digest(fh, "sha256").hexdigest()
    if k in ("chr", "blk"):
        f["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return f


def link_groups(ents: dict) -> set:
    """The hard-link groups of a tree: sets of names sharing an inode (non-directories)."""
    by_ino: dict = {}
    for rel, st in ents.items():
        if not stat.S_ISDIR(st.st_mode):
            by_ino.setdefault(st.st_ino, set()).add(rel)
    return {frozenset(g) for g in by_ino.values() if len(g) > 1}


def differences(want_root: Path, got_root: Path, *, acls=True) -> list[str]:
    """acls=False: leave out the POSIX ACL xattrs (an imagefs mount is `noacl`: README)."""
    want, got = entries(want_root), entries(got_root)
    out = []
    if set(want) != set(got):
        out.append(f"names: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}")
    for rel in sorted(set(want) & set(got)):
        a, b = facts(want_root, rel, want[rel], acls), facts(got_root, rel, got[rel], acls)
        for k in a:
            if a[k] != b.get(k):
                out.append(f"{rel!r} {k}: umoci unpack has {a[k]!r}, the import {b.get(k)!r}")
    if link_groups(want) != link_groups(got):
        out.append(f"hard links: umoci unpack {sorted(map(sorted, link_groups(want)))}, "
                   f"the import {sorted(map(sorted, link_groups(got)))}")
    return out


def mtime_differences(want_root: Path, got_root: Path) -> list[str]:
    """Every entry's mtime (seconds and nanoseconds, symlinks and the root included), exactly
    as umoci unpack gives it."""
    want, got = entries(want_root), entries(got_root)
    assert set(want) == set(got)
    return [f"{rel!r}: umoci unpack {want[rel].st_mtime_ns}, the import {got[rel].st_mtime_ns}"
            for rel in sorted(want) if want[rel].st_mtime_ns != got[rel].st_mtime_ns]


FORMS = ["oci-dir", "oci-archive", "docker-archive", "oci-zstd"]
# How an imagefs mount serves digests/<hex>/rootfs/: the kernel's erofs (the default) or FUSE.
SERVED = {"kernel": [], "fuse": ["--rootfs-mounts", "fuse"]}


def import_form(workdir, tool_images, form) -> tuple[Path, str]:
    """Imports under umask 077: the image must not depend on it (issue 12, bug 7)."""
    store = new_store(workdir)
    old = os.umask(0o077)
    try:
        return store, imported(store, "docker.io/test/tools:t", tool_images[form])
    finally:
        os.umask(old)


def assert_same(want: Path, got: Path, what: str, **kw):
    diffs = differences(want, got, **kw)
    assert not diffs, f"{what}: {len(diffs)} differences:\n" + "\n".join(diffs[:40])


def test_the_reference_tree_is_what_was_built(tool_images):
    """The oracle itself holds what the test means to compare (so that a comparison cannot
    pass for want of cases)."""
    ref = tool_images["unpacked"]
    assert os.getxattr(ref / "bin/ping", "security.capability")[4] == 0x0A
    assert os.getxattr(ref / "acl/file", "system.posix_acl_access")
    assert os.getxattr(ref / "acl/dir", "system.posix_acl_default")
    assert os.getxattr(ref / "acl/dir/after", "system.posix_acl_access")
    assert "system.posix_acl_access" not in os.listxattr(ref / "acl/dir/before")
    assert b"\n" in os.getxattr(ref / "etc/attrs", "user.bin")
    assert (ref / "etc/hostname").read_bytes() == b"changed\n"
    assert not (ref / "etc/empty").exists() and not (ref / "data/private").exists()
    assert not os.path.lexists(ref / "links/dangling") and not (ref / "data/odd").exists()
    assert sorted(os.listdir(ref / "data/shared")) == ["only"]
    assert stat.S_ISDIR(os.lstat(ref / "devs/fifo").st_mode)
    assert os.lstat(ref / "bin/tool").st_nlink == 3
    assert os.path.exists(os.fsencode(str(ref / "names")) + b"/caf\xe9")
    assert len({st.st_mtime_ns for st in entries(ref).values()}) > 40


@pytest.mark.parametrize("form", FORMS)
def test_import_matches_umoci_unpack(workdir, mounter, tool_images, form):
    """Every field but mtimes, through the imagefs mount (both ways of serving a tree; POSIX
    ACLs are not served there, by design) and in the stored image itself (the kernel's erofs
    mount of rootfs.erofs, ACLs included)."""
    from types import SimpleNamespace
    store, hx = import_form(workdir, tool_images, form)
    ref = tool_images["unpacked"]
    for how, args in SERVED.items():
        (workdir / f"mnt-{how}").mkdir()
        m = mounter(SimpleNamespace(root=store), workdir / f"mnt-{how}", extra_args=args)
        assert_same(ref, rootfs_of(m, hx), f"{form}, imagefs mount ({how} trees)", acls=False)
        m.stop()
    with kernel_mount(store / "content" / hx / "rootfs.erofs",
                                                 workdir / "oracle") as k:
        assert_same(ref, k, f"{form}, the kernel's erofs mount of rootfs.erofs")


@pytest.mark.parametrize("form", FORMS)
def test_import_keeps_the_mtimes_umoci_unpack_gives(workdir, mounter, tool_images, form):
    store, hx = import_form(workdir, tool_images, form)
    rootfs = rootfs_of(mount(mounter, store), hx)
    diffs = mtime_differences(tool_images["unpacked"], rootfs)
    assert not diffs, f"{form}: {len(diffs)} mtimes differ:\n" + "\n".join(diffs[:40])


def test_every_form_is_the_same_image(workdir, tool_images):
    """The OCI forms keep the manifest skopeo wrote (zstd: another manifest); the docker-archive
    form, which has no manifest blob, is named by its erofs image, and that image is the OCI
    one's byte for byte."""
    digests = {}
    for form in FORMS:
        store = new_store(workdir, form)
        digests[form] = imported(store, "docker.io/test/tools:t", tool_images[form])
        digests[form + "/erofs"] = hashlib.sha256(
            (store / "content" / digests[form] / "rootfs.erofs").read_bytes()).hexdigest()
    assert len(layer_types(tool_images["oci-dir"])) == 5
    assert {t.rsplit("+", 1)[-1] for t in layer_types(tool_images["oci-dir"])} == {"gzip"}
    assert {t.rsplit("+", 1)[-1] for t in layer_types(tool_images["oci-zstd"])} == {"zstd"}
    idx = json.loads((tool_images["oci-dir"] / "index.json").read_text())
    assert digests["oci-dir"] == idx["manifests"][0]["digest"].split(":")[1]
    assert digests["oci-archive"] == digests["oci-dir"]
    assert digests["docker-archive"] == digests["oci-dir/erofs"]
    assert len({digests[f + "/erofs"] for f in FORMS}) == 1, digests


# ---------------------------------------------------------------- --platform
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"


def platform_index(root: Path, entries_: list[tuple[str, dict | None]]) -> dict:
    """An index of one-file images, each with file /which holding its name; entries_ is (name,
    platform) pairs. The configs say the platform's os/arch."""
    o = Oci(root)
    descs = []
    for name, plat in entries_:
        cfg = dict(CONFIG)
        if plat:
            cfg.update(os=plat["os"], architecture=plat["architecture"])
            if "variant" in plat:
                cfg["variant"] = plat["variant"]
        extra = {"platform": plat} if plat else {}
        descs.append(o.manifest([make_tar([("which", "file", 0o644, {"data": name.encode()})])], cfg, **extra))
    o.index(descs)
    return {name: d["digest"].split(":")[1] for (name, _), d in zip(entries_, descs)}


def test_platform_amd64_and_amd64_v3_in_one_index(workdir):
    amd = {"os": "linux", "architecture": HOST_ARCH}
    digests = platform_index(workdir / "oci", [
        ("v3", dict(amd, variant="v3")), ("plain", amd),
        ("other", {"os": "linux", "architecture": OTHER_ARCH})])
    src = workdir / "oci"
    # no --platform: this machine's, the entry without a variant (as docker and containerd pick)
    assert imported(new_store(workdir, "s1"), "test/p:1", src) == digests["plain"]
    r = run_import(new_store(workdir, "s2"), "test/p:2", src, "--platform", f"linux/{HOST_ARCH}/v3")
    assert r.returncode == 0, r.stderr
    assert digests["v3"] in r.stdout
    r = run_import(new_store(workdir, "s3"), "test/p:3", src, "--platform", f"linux/{OTHER_ARCH}")
    assert r.returncode == 0, r.stderr
    assert digests["other"] in r.stdout
    r = run_import(new_store(workdir, "s4"), "test/p:4", src, "--platform", "linux/s390x")
    assert r.returncode == 1 and "--platform linux/s390x" in r.stderr, r.stderr
    assert f"linux/{HOST_ARCH}/v3" in r.stderr, r.stderr
    r = run_import(new_store(workdir, "s5"), "test/p:5", src, "--platform", "linux")
    assert r.returncode != 0 and "os/arch" in r.stderr, r.stderr


def test_platform_chosen_image_whose_config_says_another_is_refused(workdir):
    # the index says arm64 but the config amd64 (or the other way round): named both
    o = Oci(workdir / "oci")
    cfg = dict(CONFIG, os="linux", architecture=HOST_ARCH)
    layer = make_tar([("f", "file", 0o644, {"data": b"x"})])
    o.index([o.manifest([layer], cfg, platform={"os": "linux", "architecture": OTHER_ARCH}),
             o.manifest([make_tar([("g", "file", 0o644)])], dict(CONFIG, architecture="s390x"),
                        platform={"os": "linux", "architecture": "s390x"})])
    store = new_store(workdir)
    r = run_import(store, "test/p:1", o.root, "--platform", f"linux/{OTHER_ARCH}")
    assert r.returncode == 1, r.stdout
    assert f"the image is for linux/{HOST_ARCH}, not for --platform linux/{OTHER_ARCH}" in r.stderr, r.stderr
    assert not (store / "content").exists() or not list((store / "content").iterdir())


def test_platform_of_a_docker_archive_config(workdir):
    """docker save has no index: the config's os/arch is checked against --platform."""
    from test_import import build_docker_save
    save = build_docker_save(workdir / "save.tar")
    r = run_import(new_store(workdir, "a"), "test/save:1", save, "--platform", f"linux/{OTHER_ARCH}")
    assert r.returncode == 1 and f"not for --platform linux/{OTHER_ARCH}" in r.stderr, r.stderr
    r = run_import(new_store(workdir, "b"), "test/save:1", save, "--platform", f"linux/{HOST_ARCH}")
    assert r.returncode == 0, r.stderr


def test_umoci_insert_cut_layer_is_refused(workdir):
    """umoci 0.4.7's `insert` of a non-empty tree writes a layer that stops inside its last
    entry's padding, without end-of-archive blocks (GNU tar: "Unexpected EOF in archive";
    Python's tarfile: "unexpected end of data"). `umoci unpack` takes it; imagefs
    refuses it, naming the layer, and stores nothing (README: "Images from real tools")."""
    for t in ("umoci", "tar"):
        require(shutil.which(t) is not None, f"{t} is missing")
    lay, src = workdir / "layout", workdir / "src"
    run("umoci", "init", "--layout", lay)
    run("umoci", "new", "--image", f"{lay}:t")
    run("umoci", "config", "--image", f"{lay}:t", "--os", "linux", "--architecture", HOST_ARCH)
    src.mkdir()
    (src / "f").write_bytes(b"abc")
    run("umoci", "insert", "--image", f"{lay}:t", src, "/x")
    m = json.loads((lay / "blobs/sha256" / json.loads((lay / "index.json").read_text())
                    ["manifests"][0]["digest"].split(":")[1]).read_text())
    cut = lay / "blobs/sha256" / m["layers"][-1]["digest"].split(":")[1]
    r = subprocess.run(["tar", "-tzf", cut], capture_output=True)
    require(r.returncode != 0, "this umoci writes whole insert layers (the case is gone)")
    store = new_store(workdir)
    r = run_import(store, "docker.io/test/insert:1", lay)
    assert r.returncode == 1, r.stdout
    assert cut.name in r.stderr and "truncated" in r.stderr, r.stderr
    assert not (store / "content").exists() or not list((store / "content").iterdir())
