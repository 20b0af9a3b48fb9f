"""`imagefs import` of inputs real tools produce, and of broken ones (issue 12, "Bugs").

Each test pins one numbered bug of issue 12 and fails on the binary before its fix. Inputs are
built here with Python's tarfile (PAX headers with binary values, truncated archives) and GNU tar;
what the image holds is read back through the kernel's erofs mount of `rootfs.erofs` (the
oracle: it shows xattrs and ACLs exactly as a container would see them) or the imagefs mount.
Whole file: about 18 s (two cores shared).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import bookkeeping, imagefs_bin, sh
from rootfs_tree import kernel_mount
from test_import import CONFIG, Oci, gz, imported, make_tar, new_store, run_import

# A file capability, cap_dac_override,cap_fowner+ep (VFS_CAP_REVISION_2): its fifth byte is 0x0a.
CAP = bytes.fromhex("010000020a000000000000000000000000000000")


def acl(entries) -> bytes:
    """A POSIX ACL xattr value: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)


ANY = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
# user::rw-, user:1000:r--, group::r--, mask::r--, other::---
ACL_1000 = acl([(USER_OBJ, 6, ANY), (USER, 4, 1000), (GROUP_OBJ, 4, ANY), (MASK, 4, ANY), (OTHER, 0, ANY)])
# user:10:r-x -- the qualifier 10 is 0x0a.
# user:2000:rwx (no 0x0a byte: this one does not need the bug 1 fix)
ACL_2000 = acl([(USER_OBJ, 7, ANY), (USER, 7, 2000), (GROUP_OBJ, 5, ANY), (MASK, 5, ANY), (OTHER, 5, ANY)])
ACL_10 = acl([(USER_OBJ, 7, ANY), (USER, 5, 10), (GROUP_OBJ, 5, ANY), (MASK, 5, ANY), (OTHER, 5, ANY)])


def binary_pax(d: dict[str, bytes]) -> dict[str, str]:
    """pax_headers for tarfile: binary values go through surrogateescape (tarfile then writes
    hdrcharset=BINARY and the bytes as they are)."""
    return {k: v.decode("utf-8", "surrogateescape") for k, v in d.items()}


def layer_tar(entries) -> bytes:
    """entries: TarInfo, data-or-None pairs, written as a PAX archive."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def ti(name, typ=tarfile.REGTYPE, mode=0o644, size=0, uid=0, gid=0, pax=None, linkname=""):
    i = tarfile.TarInfo(name)
    i.type, i.mode, i.size, i.uid, i.gid, i.linkname = typ, mode, size, uid, gid, linkname
    i.mtime = 1_700_000_000
    if pax:
        i.pax_headers = pax
    return i


def oci_image(root: Path, layers: list[bytes], config=None) -> tuple[Path, str]:
    o = Oci(root)
    m = o.manifest(layers, config or CONFIG)
    o.index([m])
    return root, m["digest"].split(":")[1]


def image_of(store: Path, hx: str) -> Path:
    return store / "content" / hx / "rootfs.erofs"


def xattr(p: Path, name: str):
    try:
        return os.getxattr(p, name, follow_symlinks=False)
    except OSError:
        return None


# ---------------------------------------------------------------- bug 1: newlines in PAX values
def test_pax_values_with_newlines_keep_capabilities_and_acls(workdir):
    long = "deep/" * 30 + "tool"  # a PAX path record after the binary ones
    layer = layer_tar([
        (ti("bin/", tarfile.DIRTYPE, 0o755), None),
        (ti("bin/ping", size=4, mode=0o755,
            pax=binary_pax({"SCHILY.xattr.security.capability": CAP})), b"ping"),
        (ti("etc/", tarfile.DIRTYPE, 0o755), None),
        (ti("etc/shadow", size=2, mode=0o640,
            pax=binary_pax({"SCHILY.xattr.system.posix_acl_access": ACL_1000})), b"s\n"),
        (ti("etc/ten", size=1, mode=0o750,
            pax=binary_pax({"SCHILY.xattr.system.posix_acl_access": ACL_10,
                            "SCHILY.xattr.user.lines": b"a\n5 x=y\n"})), b"t"),
        (ti(long, size=1, pax=binary_pax({"SCHILY.xattr.user.cap": CAP})), b"L"),
    ])
    layout, manifest_hex = oci_image(workdir / "oci", [layer])
    store = new_store(workdir)
    r = run_import(store, "docker.io/test/caps:1", layout)
    assert r.returncode == 0, r.stderr
    hx = r.stdout.split("sha256:")[1].split()[0]
    assert hx == manifest_hex
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        assert xattr(k / "bin/ping", "security.capability") == CAP
        assert xattr(k / "etc/shadow", "system.posix_acl_access") == ACL_1000
        assert xattr(k / "etc/ten", "system.posix_acl_access") == ACL_10
        assert xattr(k / "etc/ten", "user.lines") == b"a\n5 x=y\n"
        assert xattr(k / long, "user.cap") == CAP
        assert (k / long).read_bytes() == b"L"


def test_gnu_tar_xattrs_and_acls_archive(workdir):
    """A root tree archived by GNU tar --xattrs --acls --format=posix (SCHILY.acl.* text records
    with newlines, SCHILY.xattr.* binary ones) imports with its capability and ACL xattrs."""
    src = workdir / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f")
    os.setxattr(src / "d" / "f", "security.capability", CAP)
    os.setxattr(src / "d" / "f", "system.posix_acl_access", ACL_1000)
    tarball = workdir / "tree.tar"
    r = sh("tar", "--xattrs", "--xattrs-include=*", "--acls", "--format=posix", "-C", src, "-cf", tarball, ".")
    assert r.returncode == 0, r.stderr
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/gnutar:1", tarball)
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        assert xattr(k / "d/f", "security.capability") == CAP
        assert xattr(k / "d/f", "system.posix_acl_access") == ACL_1000


# ---------------------------------------------------------------- bug 3: fsck after an OCI import
def test_fsck_is_clean_after_oci_and_docker_save_imports(workdir):
    from test_import import build_docker_save
    layout, manifest_hex = oci_image(workdir / "oci", [make_tar([("f", "file", 0o644, {"data": b"x"})])])
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/fsck:oci", layout)
    # the manifest the directory is named by, byte for byte, as hypeman's content layout keeps it
    manifest = (store / "content" / hx / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == hx == manifest_hex
    assert os.stat(store / "content" / hx / "manifest.json").st_mode & 0o777 == 0o644
    # a legacy docker save has no manifest blob: named by its image, and no manifest.json
    saved = imported(store, "docker.io/test/fsck:save", build_docker_save(workdir / "save.tar"))
    assert not (store / "content" / saved / "manifest.json").exists()
    r = sh(imagefs_bin(), "fsck", "--store", store, timeout=120)
    assert r.returncode == 0, f"fsck exited {r.returncode}: {r.stdout}{r.stderr}"


# ---------------------------------------------------------------- bug 7: the importing user's umask
def test_digest_does_not_depend_on_the_umask(workdir):
    # a/ and a/b/ have no entries of their own: the import creates them
    tarball = workdir / "implicit.tar"
    tarball.write_bytes(make_tar([("a/b/file", "file", 0o644, {"data": b"x"}), ("c/d", "file", 0o600)]))
    digests = {}
    for umask in (0o022, 0o077, 0o002):
        store = new_store(workdir, f"store-{umask:03o}")
        r = subprocess.run([str(imagefs_bin()), "import", "--store", str(store), "--tag", "docker.io/t/u:1",
                            str(tarball)], capture_output=True, text=True, timeout=120,
                           preexec_fn=lambda u=umask: os.umask(u))
        assert r.returncode == 0, r.stderr
        digests[umask] = (r.stdout.split("sha256:")[1].split()[0], store)
    assert len({d for d, _ in digests.values()}) == 1, f"digests differ by umask: {digests}"
    hx, store = digests[0o077]
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        for d in ("a", "a/b", "c"):
            st = os.lstat(k / d)
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0), d


# ---------------------------------------------------------------- bug 5: default ACLs leaking into children
def test_default_acls_do_not_leak_into_children(workdir):
    default = binary_pax({"SCHILY.xattr.system.posix_acl_default": ACL_1000})
    lower = layer_tar([
        (ti("shared/", tarfile.DIRTYPE, 0o755, pax=default), None),
        (ti("shared/secret", size=1, mode=0o640), b"s"),
        (ti("shared/sub/", tarfile.DIRTYPE, 0o700), None),
        (ti("shared/own", size=1, mode=0o755,
            pax=binary_pax({"SCHILY.xattr.system.posix_acl_access": ACL_2000})), b"o"),
    ])
    # a later layer writes below the directory too
    upper = layer_tar([(ti("shared/later", size=1, mode=0o600), b"l")])
    layout, _ = oci_image(workdir / "oci", [lower, upper])
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/acl:1", layout)
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        assert xattr(k / "shared", "system.posix_acl_default") == ACL_1000
        for f, mode in (("secret", 0o640), ("later", 0o600), ("sub", 0o700)):
            st = os.lstat(k / "shared" / f)
            assert st.st_mode & 0o7777 == mode, f
            assert xattr(k / "shared" / f, "system.posix_acl_access") is None, f"{f} got an inherited ACL"
            assert xattr(k / "shared" / f, "system.posix_acl_default") is None, f"{f} got an inherited ACL"
        # an ACL of its own is kept, and no more
        assert xattr(k / "shared/own", "system.posix_acl_access") == ACL_2000
        assert os.lstat(k / "shared/own").st_mode & 0o777 == 0o755


# ---------------------------------------------------------------- bug 8: whiteouts in their own layer
def test_a_whiteout_spares_what_its_own_layer_added(workdir):
    lower = make_tar([("a", "file", 0o644, {"data": b"lower"}), ("d/", "dir", 0o755),
                      ("d/old", "file", 0o644, {"data": b"1"})])
    upper = make_tar([("new", "file", 0o644, {"data": b"mine"}), (".wh.new", "file", 0o644),
                      ("d/mine", "file", 0o644, {"data": b"2"}), (".wh.d", "file", 0o644),
                      (".wh.a", "file", 0o644)])
    layout, _ = oci_image(workdir / "oci", [lower, upper])
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/wh:1", layout)
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        assert sorted(os.listdir(k)) == ["d", "new"]
        assert (k / "new").read_bytes() == b"mine"
        assert os.listdir(k / "d") == ["mine"]


# ---------------------------------------------------------------- bug 2: truncated image archives
def entries_end(data: bytes) -> int:
    """Where the last member's data ends (the end-of-archive blocks start)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        t.getmembers()
        return t.offset


def assert_refused_and_nothing_stored(store: Path, ref: str, source: Path, what: str):
    r = run_import(store, ref, source)
    assert r.returncode == 1, f"{what}: exit {r.returncode}, {r.stdout!r}"
    assert "panicked" not in r.stderr and r.stderr.startswith("imagefs import: "), f"{what}: {r.stderr!r}"
    assert not any((store / "content").glob("*")), f"{what}: an image was stored"
    assert not list((bookkeeping(store) / "import").iterdir()), f"{what}: work directory left"
    return r.stderr


def docker_and_oci_archives(workdir) -> dict[str, bytes]:
    """One image as a `docker save` tarball and as an oci-archive (a tar of its OCI layout)."""
    from test_import import build_docker_save, build_oci
    save = build_docker_save(workdir / "save.tar").read_bytes()
    layout, _ = build_oci(workdir / "oci")
    oci_tar = workdir / "oci.tar"
    with tarfile.open(oci_tar, "w") as t:
        t.add(layout, arcname=".")
    return {"docker-archive": save, "oci-archive": oci_tar.read_bytes()}


def test_every_cut_of_docker_and_oci_archives_is_refused(workdir):
    archives = docker_and_oci_archives(workdir)
    store = new_store(workdir)
    cut = workdir / "cut.tar"
    accepted = []
    n = 0
    for kind, data in archives.items():
        end = entries_end(data)
        # every block boundary (where a cut falls on an entry boundary or inside one), and
        # a few cuts inside blocks
        for at in sorted(set(range(512, end, 512)) | set(range(700, end, 5000))):
            cut.write_bytes(data[:at])
            r = run_import(store, "docker.io/test/cut:1", cut)
            n += 1
            if r.returncode == 0:
                accepted.append(f"{kind}[:{at}]")
                sh("rm", "-rf", store / "content", store / "repositories")
            else:
                assert_refused_and_nothing_stored(store, "docker.io/test/cut:1", cut, f"{kind}[:{at}]")
        # whole, and cut inside the end-of-archive blocks: still the whole image
        for at in (len(data), end + 512):
            cut.write_bytes(data[:at])
            r = run_import(new_store(workdir, f"whole-{kind}-{at}"), "docker.io/test/whole:1", cut)
            assert r.returncode == 0, f"{kind}[:{at}]: {r.stderr}"
    assert not accepted, f"{len(accepted)} of {n} cut archives were imported: {accepted}"


def test_every_flipped_byte_of_docker_and_oci_archives_is_refused_or_harmless(workdir):
    """A corruption sweep: one byte flipped at a time, in every 512-byte block (headers, checksums,
    magic, JSON, compressed and plain layer data, padding, end-of-archive blocks). Each import is
    refused cleanly (nothing stored, nothing left) or, where the byte changes nothing the image is
    made of (padding, a field no one reads), imports the very same image: never another one."""
    archives = docker_and_oci_archives(workdir)
    bad = workdir / "flipped.tar"
    other = []
    counts = {"refused": 0, "same image": 0}
    for kind, data in archives.items():
        whole = workdir / f"whole-{kind}.tar"
        whole.write_bytes(data)
        want = run_import(new_store(workdir, f"whole-{kind}"), "docker.io/test/flip:1", whole)
        assert want.returncode == 0, want.stderr
        store = new_store(workdir, f"flip-{kind}")
        # In every block: the name, mode, size, checksum, typeflag and magic fields of a
        # header, or the same places of a data block.
        offsets = (0, 100, 124, 148, 156, 257, 300, 511)
        for pos in sorted(at + o for at in range(0, len(data), 512) for o in offsets):
            if pos >= len(data):
                continue
            flipped = bytearray(data)
            flipped[pos] ^= 0x5A
            bad.write_bytes(flipped)
            r = run_import(store, "docker.io/test/flip:1", bad)
            what = f"{kind} byte {pos} flipped"
            assert "panicked" not in r.stderr, f"{what}: {r.stderr}"
            if r.returncode == 0:
                if r.stdout != want.stdout:
                    other.append(f"{what}: {r.stdout.strip()} (the archive is {want.stdout.strip()})")
                counts["same image"] += 1
                sh("rm", "-rf", store / "content", store / "repositories")
            else:
                assert_refused_and_nothing_stored(store, "docker.io/test/flip:1", bad, what)
                counts["refused"] += 1
    print(f"flipped bytes: {counts}")
    assert not other, f"{len(other)} corrupted archives imported as another image: {other[:10]}"
    assert counts["refused"] > counts["same image"], counts


def test_docker_save_layers_are_checked_against_the_diff_ids(workdir):
    from test_import import build_docker_save
    good = build_docker_save(workdir / "save.tar").read_bytes()
    store = new_store(workdir)
    with tarfile.open(fileobj=io.BytesIO(good)) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]

    def rebuild(path: Path, change) -> Path:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as out:
            for m, data in members:
                m = tarfile.TarInfo.frombuf(m.tobuf(), "utf-8", "surrogateescape")
                data = change(m.name, data)
                if data is not None:
                    m.size = len(data)
                out.addfile(m, io.BytesIO(data) if data is not None else None)
        path.write_bytes(buf.getvalue())
        return path

    # a layer swapped for another valid tar: only the config's diff_ids can tell
    from test_import import BASE_LAYER
    other = make_tar(BASE_LAYER + [("evil", "file", 0o644, {"data": b"x"})])
    swapped = rebuild(workdir / "swapped.tar", lambda n, d: other if n == "aaaa/layer.tar" else d)
    err = assert_refused_and_nothing_stored(store, "docker.io/test/save:1", swapped, "swapped layer")
    assert "diff_ids" in err, err
    # a config that lists no diff_ids (and is named by its digest, so it was rewritten)
    def no_ids(n, d):
        if n.endswith(".json") and n != "manifest.json":
            return json.dumps(dict(json.loads(d), rootfs={"type": "layers", "diff_ids": []})).encode()
        return d
    err = assert_refused_and_nothing_stored(store, "docker.io/test/save:1",
                                            rebuild(workdir / "noids.tar", no_ids), "no diff_ids")
    assert "does not match its name" in err or "diff_ids" in err, err


def test_oci_descriptor_sizes_are_checked(workdir):
    o = Oci(workdir / "oci")
    layer = gz(make_tar([("f", "file", 0o644, {"data": b"x"})]))
    desc = o.blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    desc["size"] += 7
    cfg = dict(CONFIG, rootfs={"type": "layers", "diff_ids": []})
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": o.blob(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json"),
         "layers": [desc]}
    o.index([o.blob(json.dumps(m).encode(), "application/vnd.oci.image.manifest.v1+json")])
    store = new_store(workdir)
    err = assert_refused_and_nothing_stored(store, "docker.io/test/size:1", o.root, "layer size")
    assert "descriptor says" in err, err


# ---------------------------------------------------------------- bug 9: clear mkfs.erofs errors
def test_trees_mkfs_erofs_cannot_build_are_refused_by_name(workdir):
    store = new_store(workdir)
    long_name = "n" * 255  # legal (NAME_MAX), but mkfs.erofs 1.5 fails on it
    tarball = workdir / "long.tar"
    tarball.write_bytes(make_tar([("dir/", "dir", 0o755), (f"dir/{long_name}", "file", 0o644, {"data": b"x"})]))
    err = assert_refused_and_nothing_stored(store, "docker.io/test/long:1", tarball, "255-byte name")
    assert f"dir/{long_name}" in err and "255 bytes" in err, err
    assert "Could not format" not in err, err
    # 254 bytes still import
    ok = workdir / "ok.tar"
    ok.write_bytes(make_tar([("n" * 254, "file", 0o644, {"data": b"x"})]))
    imported(new_store(workdir, "ok"), "docker.io/test/long:ok", ok)
    # a tree nested 2,000 deep crashed mkfs.erofs (SIGSEGV) with an empty error text
    deep = workdir / "deep.tar"
    deep.write_bytes(make_tar([("d/" * 2000 + "f", "file", 0o644, {"data": b"x"})]))
    err = assert_refused_and_nothing_stored(store, "docker.io/test/deep:1", deep, "deep tree")
    assert "nest more than 1000 deep" in err, err


# ---------------------------------------------------------------- bug 10: images for another machine, artifacts
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
OTHER_ARCH = "arm64" if HOST_ARCH != "arm64" else "amd64"


def test_an_index_whose_only_image_is_for_another_machine_is_refused(workdir):
    layer = make_tar([("f", "file", 0o644, {"data": b"x"})])
    other_cfg = dict(CONFIG, architecture=OTHER_ARCH)
    store = new_store(workdir)
    # the index entry says so
    o = Oci(workdir / "oci")
    o.index([o.manifest([layer], other_cfg, platform={"os": "linux", "architecture": OTHER_ARCH})])
    err = assert_refused_and_nothing_stored(store, "docker.io/test/arch:1", o.root, "platform")
    assert f"linux/{OTHER_ARCH}" in err and f"linux/{HOST_ARCH}" in err, err
    # no platform in the index (as umoci writes it): the config says so
    o2 = Oci(workdir / "oci2")
    o2.index([o2.manifest([layer], other_cfg)])
    err = assert_refused_and_nothing_stored(store, "docker.io/test/arch:2", o2.root, "config platform")
    assert f"linux/{OTHER_ARCH}" in err, err
    # this machine's image still imports
    o3 = Oci(workdir / "oci3")
    o3.index([o3.manifest([layer], CONFIG, platform={"os": "linux", "architecture": HOST_ARCH})])
    imported(new_store(workdir, "ok"), "docker.io/test/arch:3", o3.root)


def test_a_helm_chart_artifact_is_not_imported_as_a_rootfs(workdir):
    o = Oci(workdir / "oci")
    chart = gz(make_tar([("mychart/Chart.yaml", "file", 0o644, {"data": b"name: mychart\n"})]))
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": o.blob(b'{"name":"mychart","version":"0.1.0"}', "application/vnd.cncf.helm.config.v1+json"),
         "layers": [o.blob(chart, "application/vnd.cncf.helm.chart.content.v1.tar+gzip")]}
    o.index([o.blob(json.dumps(m).encode(), "application/vnd.oci.image.manifest.v1+json")])
    store = new_store(workdir)
    err = assert_refused_and_nothing_stored(store, "docker.io/test/chart:1", o.root, "helm chart")
    assert "artifact" in err and "helm" in err, err


# ---------------------------------------------------------------- bug 11: messages
def test_messages_for_encrypted_layers_platformless_indexes_and_multi_image_archives(workdir):
    store = new_store(workdir)
    # an encrypted layer: named by its media type, no raw bytes in the message
    o = Oci(workdir / "enc")
    secret = bytes(range(256)) * 8
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": o.blob(json.dumps(CONFIG).encode(), "application/vnd.oci.image.config.v1+json"),
         "layers": [o.blob(secret, "application/vnd.oci.image.layer.v1.tar+gzip+encrypted")]}
    o.index([o.blob(json.dumps(m).encode(), "application/vnd.oci.image.manifest.v1+json")])
    err = assert_refused_and_nothing_stored(store, "docker.io/test/enc:1", o.root, "encrypted")
    assert "encrypted" in err, err
    assert err.rstrip("\n").isprintable() and "\ufffd" not in err, repr(err)
    # two images without a platform field (as umoci writes them): say so, and name them
    layer = make_tar([("f", "file", 0o644, {"data": b"x"})])
    u = Oci(workdir / "umoci")
    u.index([u.manifest([layer], CONFIG, annotations={"org.opencontainers.image.ref.name": "one"}),
             u.manifest([make_tar([("g", "file", 0o644)])], CONFIG,
                        annotations={"org.opencontainers.image.ref.name": "two"})])
    err = assert_refused_and_nothing_stored(store, "docker.io/test/umoci:latest", u.root, "no platform")
    assert "none is for linux" not in err and "no platform" in err, err
    assert '"one"' in err and '"two"' in err, err
    assert imported(new_store(workdir, "two"), "docker.io/test/umoci:two", u.root)
    # a docker save of two images: the error lists the tags there are
    from test_import import build_docker_save
    one = build_docker_save(workdir / "one.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(one)) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, data in members:
            if m.name == "manifest.json":
                items = json.loads(data)
                items = [dict(items[0], RepoTags=["test/save:1"]), dict(items[0], RepoTags=["test/save:2"])]
                data = json.dumps(items).encode()
                m.size = len(data)
            out.addfile(m, io.BytesIO(data) if data is not None else None)
    two = workdir / "two.tar"
    two.write_bytes(buf.getvalue())
    err = assert_refused_and_nothing_stored(store, "docker.io/test/save:3", two, "two images")
    assert "test/save:1" in err and "test/save:2" in err, err


# ---------------------------------------------------------------- bug 6: an interrupted import's work directory
def test_an_interrupted_import_removes_its_work_directory(workdir):
    import signal
    import time
    src = workdir / "big"
    for i in range(1500):
        d = src / f"d{i % 30}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(20000))
    tarball = workdir / "big.tar"
    assert sh("tar", "-C", src, "-cf", tarball, ".").returncode == 0
    store = new_store(workdir)
    imports = bookkeeping(store) / "import"
    outcomes = []
    for phase, sig in (("extracting", signal.SIGINT), ("mkfs.erofs", signal.SIGTERM),
                       ("extracting", signal.SIGHUP)):
        p = subprocess.Popen([str(imagefs_bin()), "import", "--store", str(store), "--tag",
                              "docker.io/test/big:1", str(tarball)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            work = list(imports.glob("*/rootfs")) if imports.is_dir() else []
            if phase == "extracting" and work:
                break
            if phase == "mkfs.erofs" and sh("pgrep", "-f", f"mkfs.erofs.*{imports}").returncode == 0:
                break
            time.sleep(0.005)
        if p.poll() is not None:
            outcomes.append(f"{phase}: finished before the signal; cannot tell")
            continue
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
        left = [x.name for x in imports.iterdir()]
        outcomes.append((phase, sig.name, p.returncode, left))
        assert p.returncode in (128 + sig, -sig), (phase, p.returncode, err)
        assert not left, f"{phase}, {sig.name}: the interrupted import left {left} (exit {p.returncode}: {err})"
        assert not any((store / "content").glob("*")) if (store / "content").exists() else True
    assert sum(isinstance(o, tuple) for o in outcomes) >= 2, outcomes


# ---------------------------------------------------------------- bug 4: sparse files
@pytest.mark.parametrize("fmt", ["posix", "gnu"])
def test_sparse_files_from_gnu_tar(workdir, fmt):
    """GNU tar --sparse: PAX GNU.sparse 1.0 (--format=posix) was extracted as
    GNUSparseFile.<pid>/<name> holding the sparse map; old GNU 'S' entries (--format=gnu) worked."""
    src = workdir / "src"
    (src / "d").mkdir(parents=True)
    size = 64 << 20
    with open(src / "d" / "sparse", "wb") as f:
        f.write(b"head" * 1024)
        f.seek(size // 2)
        f.write(b"middle")
        f.truncate(size)
    tarball = workdir / "sparse.tar"
    r = sh("tar", f"--format={fmt}", "--sparse", "-C", src, "-cf", tarball, ".")
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(tarball) < 1 << 20, "GNU tar did not store the file sparse"
    store = new_store(workdir)
    hx = imported(store, "docker.io/test/sparse:1", tarball)
    with kernel_mount(image_of(store, hx), workdir / "k") as k:
        assert sorted(os.listdir(k / "d")) == ["sparse"]
        p = k / "d" / "sparse"
        assert os.path.getsize(p) == size
        with open(p, "rb") as f:
            assert f.read(4096) == b"head" * 1024
            f.seek(size // 2 - 10)
            assert f.read(20) == b"\0" * 10 + b"middle" + b"\0" * 4
