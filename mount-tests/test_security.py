"""Issue 11: an image never hands a host user privileges through the mount (README "Security").

Images are untrusted. An image built here with `imagefs import` holds a setuid-root copy of id (4755),
a setgid-root copy (2755), a copy of cat with file capabilities (cap_dac_read_search+ep, which would read
/etc/shadow) and device nodes (0666 /dev/zero, /dev/null and a loop block device). Run as an unprivileged
user (setpriv, uid 1000, through `sh -c` or Python: setpriv's own exec keeps root's capabilities for the
path lookup), through tags/ and digests/<hex>/rootfs/, and through every way a tree is served (an image-tree
mount of its own, the main mount with --no-rootfs-mounts, the main mount beside mounted trees when
--rootfs-mounts-max is reached), with and without --allow-other: nothing elevates, no device opens.

The opt-in, --allow-setuid (-o allow_setuid): refused with --allow-other unless the mountpoint is under a
directory only root can enter; `-o suid,dev` (which mount.fuse3 appends to every mount) is not it; and as
root a runc container run as uid 1000 whose image has a setuid-root binary gets euid 0 when, and only
when, the operator opted in. And `imagefs import` keeps the tree it extracts (with the image's setuid
binaries and device nodes, on the host's filesystem) out of other users' reach while it builds.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import eventually, expect_errno, imagefs_bin, mounts_at, require, sh

UID = 1000
REPO = "docker.io/sec/hostile"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")

# Run as the unprivileged user with R = an image's rootfs: what each privileged file gives it.
PROBE = r"""
import errno, json, os, subprocess, sys
R = sys.argv[1]
def run(*a):
    try:
        p = subprocess.run(a, capture_output=True, text=True, timeout=30)
        return [p.returncode, p.stdout.strip(), p.stderr.strip()[-200:]]
    except OSError as e:
        return [None, "", errno.errorcode.get(e.errno, str(e.errno))]
out = {"euid": run(R + "/bin/id", "-u"), "egid": run(R + "/bin/gid", "-g"),
       "cap_shadow": run(R + "/bin/capcat", "/etc/shadow"),
       "cap_marker": run(R + "/bin/capcat", R + "/etc/marker")}
for name, flags in (("zero", os.O_RDONLY), ("null", os.O_WRONLY), ("loop0", os.O_RDONLY)):
    try:
        os.close(os.open(R + "/dev/" + name, flags))
        out[name] = "OK"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def as_user(*cmd, uid=UID, **kw) -> subprocess.CompletedProcess:
    return sh("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd, cwd="/", **kw)


def probe(rootfs) -> dict:
    r = as_user(PY, "-c", PROBE, str(rootfs))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _need_tools():
    for t in ("setcap", "getcap"):
        require(shutil.which(t), f"{t} (libcap2-bin) is not installed")


def build_hostile_tree(tree: Path, marker: str = "marker") -> Path:
    """The tree of an image whose files would hand out privileges on a suid, dev mount."""
    _need_tools()
    for d in ("bin", "dev", "etc"):
        (tree / d).mkdir(parents=True, exist_ok=True)
    for name, mode in (("id", 0o4755), ("gid", 0o2755)):
        shutil.copyfile("/usr/bin/id", tree / "bin" / name)
        os.chown(tree / "bin" / name, 0, 0)
        os.chmod(tree / "bin" / name, mode)
    shutil.copyfile("/usr/bin/cat", tree / "bin" / "capcat")
    os.chmod(tree / "bin" / "capcat", 0o755)
    r = sh("setcap", "cap_dac_read_search+ep", tree / "bin" / "capcat")
    require(r.returncode == 0, f"setcap on {tree}: {r.stderr.strip()}")
    for name, kind, dev in (("zero", stat.S_IFCHR, (1, 5)), ("null", stat.S_IFCHR, (1, 3)),
                            ("loop0", stat.S_IFBLK, (7, 0))):
        os.mknod(tree / "dev" / name, kind | 0o666, os.makedev(*dev))
        os.chmod(tree / "dev" / name, 0o666)
    (tree / "etc" / "marker").write_text(marker + "\n")
    os.chmod(tree / "etc" / "marker", 0o644)
    return tree


def import_tree(store: Path, ref: str, tree: Path) -> str:
    """`imagefs import` of a directory; the digest's hex."""
    r = sh(imagefs_bin(), "import", "--store", store, "--tag", ref, tree, timeout=120)
    assert r.returncode == 0, f"import {ref}: {r.stdout}{r.stderr}"
    return r.stdout.split("sha256:")[1].split()[0]


def mount_flags(path) -> list[str]:
    """Per-mount flags (nosuid, nodev, ...) of the mount on path, from /proc/self/mountinfo."""
    path = os.path.realpath(str(path))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return fields[5].split(",")
    return []


def fuse_mounts_below(mnt) -> list[str]:
    mnt = os.path.realpath(str(mnt))
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mp = left.split()[4]
            if right.startswith("fuse") and (mp == mnt or mp.startswith(mnt + "/")):
                out.append(mp)
    return out


def tree_mounted(m, hx) -> bool:
    return bool(mounts_at(m.mnt / "digests" / hx / "rootfs"))


def assert_image_carries_privileges(rootfs: Path):
    """As root, the mount shows what the image holds: only the mount flags keep it harmless."""
    assert stat.S_IMODE(os.stat(rootfs / "bin" / "id").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(rootfs / "bin" / "gid").st_mode) == 0o2755
    assert os.getxattr(rootfs / "bin" / "capcat", "security.capability")
    st = os.stat(rootfs / "dev" / "zero")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 5


def check_no_privileges(rootfs: Path, allow_other: bool) -> list[str]:
    """What a user got from the image at rootfs that it must not have: one line per finding."""
    got = probe(rootfs)
    bad = []
    if allow_other:
        # The user reaches the files (so the test is not vacuous) and gains nothing.
        if got["euid"] != [0, str(UID), ""]:
            bad.append(f"setuid-root id -u: {got['euid']}")
        if got["egid"] != [0, str(UID), ""]:
            bad.append(f"setgid-root id -g: {got['egid']}")
        if got["cap_marker"][0] != 0 or not got["cap_marker"][1].startswith("marker"):
            bad.append(f"capcat of a readable file did not run: {got['cap_marker']}")
        if got["cap_shadow"][0] == 0 or "Permission denied" not in got["cap_shadow"][2]:
            bad.append(f"capcat /etc/shadow (cap_dac_read_search): {got['cap_shadow']}")
    else:
        # Without --allow-other another user cannot even reach the files.
        for k in ("euid", "egid", "cap_shadow"):
            if got[k][0] is not None or got[k][2] != "EACCES":
                bad.append(f"{k} without --allow-other: {got[k]}")
    for k in ("zero", "null", "loop0"):
        if got[k] != "EACCES":
            bad.append(f"open of device node dev/{k}: {got[k]}")
    # nodev holds for root too.
    try:
        os.close(os.open(rootfs / "dev" / "zero", os.O_RDONLY))
        bad.append("root opened the image's dev/zero")
    except PermissionError:
        pass
    return bad


SERVING = {
    "tree-mounts": [],
    "main-mount": ["--no-rootfs-mounts"],
    "main-beside-trees": ["--rootfs-mounts-max", "1"],
}


@pytest.mark.parametrize("allow_other", [True, False], ids=["allow-other", "owner-only"])
@pytest.mark.parametrize("serving", list(SERVING))
def test_an_image_hands_no_privileges_to_other_users(workdir, mounter, serving, allow_other):
    store = workdir / "store"
    store.mkdir(mode=0o755)
    hexes = [import_tree(store, f"{REPO}:1", build_hostile_tree(workdir / "t1"))]
    if serving == "main-beside-trees":
        hexes.append(import_tree(store, f"{REPO}:2", build_hostile_tree(workdir / "t2", "marker\nsecond")))
    m = mounter(store, allow_other=allow_other, extra_args=SERVING[serving])
    if serving == "tree-mounts":
        assert eventually(lambda: tree_mounted(m, hexes[0]), 10), f"no image-tree mount:\n{m.log_tail(20)}"
    elif serving == "main-mount":
        assert not any(tree_mounted(m, h) for h in hexes)
    else:
        assert eventually(lambda: any(tree_mounted(m, h) for h in hexes), 10), m.log_tail(20)
        assert [tree_mounted(m, h) for h in hexes].count(True) == 1, "--rootfs-mounts-max 1"
    problems = [f"{mp}: mounted {flags}, not nosuid,nodev" for mp in fuse_mounts_below(m.mnt)
                for flags in [mount_flags(mp)] if not {"nosuid", "nodev"} <= set(flags)]
    for i, hx in enumerate(hexes):
        for rootfs in (m.mnt / "tags" / REPO / str(i + 1) / "rootfs", m.mnt / "digests" / hx / "rootfs"):
            assert_image_carries_privileges(rootfs)
            served = "its own mount" if tree_mounted(m, hx) else "the main mount"
            problems += [f"{rootfs.relative_to(m.mnt)} ({served}): {p}"
                         for p in check_no_privileges(rootfs, allow_other)]
    assert not problems, "an image handed out privileges:\n" + "\n".join(problems)


def test_metrics_name_nothing(workdir, mounter):
    """Anyone who reaches the mount reads .imagefs/metrics (0444): counts only, no repository or tag."""
    store = workdir / "store"
    store.mkdir(mode=0o755)
    import_tree(store, f"{REPO}:1", build_hostile_tree(workdir / "t1"))
    m = mounter(store, allow_other=True)
    r = as_user("cat", m.mnt / ".imagefs" / "metrics")
    assert r.returncode == 0 and "imagefs_tags 1" in r.stdout, r.stderr
    assert "hostile" not in r.stdout and "docker.io" not in r.stdout, r.stdout


# ---------------------------------------------------------------- the opt-in
def private_dir(workdir: Path) -> Path:
    """A directory only root can enter (0700, root's), as docker keeps /var/lib/docker."""
    p = workdir / "private"
    p.mkdir(mode=0o700)
    os.chmod(p, 0o700)
    (p / "mnt").mkdir(mode=0o755)
    return p


def mount_cmd(store, mnt, *args):
    return sh(imagefs_bin(), "mount", "--store", store, mnt, *args, timeout=30)


@pytest.mark.parametrize("spelling", [["--allow-other", "--allow-setuid"], ["-o", "allow_other,allow_setuid"]],
                         ids=["flags", "dash-o"])
def test_setuid_opt_in_is_refused_where_every_user_reaches_the_trees(workdir, mounter, spelling):
    store = workdir / "store"
    store.mkdir(mode=0o755)
    import_tree(store, f"{REPO}:1", build_hostile_tree(workdir / "t1"))
    mnt = workdir / "mnt"
    mnt.mkdir(mode=0o755)
    mounter(store, mnt, start=False)  # unmounts in teardown, should the refusal fail
    r = mount_cmd(store, mnt, *spelling)
    assert r.returncode == 1, f"exit {r.returncode}: {r.stdout}{r.stderr}"
    assert "refused" in r.stderr and "only root can enter" in r.stderr, r.stderr
    assert not fuse_mounts_below(mnt)
    # Contradicting options are refused too.
    r = mount_cmd(store, mnt, "-o", "allow_setuid,nosuid")
    assert r.returncode == 1 and "contradict" in r.stderr, f"exit {r.returncode}: {r.stderr}"
    assert not fuse_mounts_below(mnt)


def test_setuid_opt_in_under_a_root_only_directory(workdir, mounter):
    """Accepted, with a warning; mounts are suid but still nodev; other users cannot reach them."""
    store = workdir / "store"
    store.mkdir(mode=0o755)
    hx = import_tree(store, f"{REPO}:1", build_hostile_tree(workdir / "t1"))
    priv = private_dir(workdir)
    m = mounter(store, priv / "mnt", allow_other=True, extra_args=["--allow-setuid"])
    assert eventually(lambda: tree_mounted(m, hx), 10), m.log_tail(20)
    for mp in fuse_mounts_below(m.mnt):
        flags = mount_flags(mp)
        assert "nosuid" not in flags and "nodev" in flags, f"{mp}: {flags}"
    assert "WARN" in m.log_text() and "--allow-setuid" in m.log_text(), m.log_tail(20)
    rootfs = m.mnt / "digests" / hx / "rootfs"
    got = probe(rootfs)
    assert got["euid"] == [None, "", "EACCES"], got
    try:
        os.close(os.open(rootfs / "dev" / "zero", os.O_RDONLY))
        raise AssertionError("root opened the image's dev/zero under --allow-setuid")
    except PermissionError:
        pass


def test_suid_and_dev_that_mount_fuse3_adds_are_not_the_opt_in(workdir, mounter):
    """mount(8) and fstab go through mount.fuse3, which appends `dev,suid` to every mount it makes:
    `mount -t fuse.imagefs STORE MNT -o allow_other` runs `imagefs STORE MNT -o allow_other,dev,suid`."""
    require(shutil.which("mount.fuse3"), "mount.fuse3 (fuse3) is not installed")
    store = workdir / "store"
    store.mkdir(mode=0o755)
    hx = import_tree(store, f"{REPO}:1", build_hostile_tree(workdir / "t1"))
    bindir = workdir / "bin"
    bindir.mkdir()
    (bindir / "imagefs").symlink_to(imagefs_bin())
    mnt = workdir / "mnt"
    mnt.mkdir(mode=0o755)
    m = mounter(store, mnt, start=False)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    r = sh("mount.fuse3", store, mnt, "-t", "fuse.imagefs", "-o", f"allow_other,log_file={workdir}/helper.log",
           env=env, timeout=30)
    try:
        assert r.returncode == 0, f"mount.fuse3: {r.stdout}{r.stderr}"
        eventually(lambda: tree_mounted(m, hx), 5)  # either way serves it; both must be nosuid,nodev
        bad = [f"{mp}: mounted {flags}, not nosuid,nodev" for mp in fuse_mounts_below(mnt)
               for flags in [mount_flags(mp)] if not {"nosuid", "nodev"} <= set(flags)]
        bad += check_no_privileges(mnt / "digests" / hx / "rootfs", allow_other=True)
        assert not bad, "an image handed out privileges:\n" + "\n".join(bad)
    finally:
        sh(imagefs_bin(), "umount", mnt, timeout=30)


# ---------------------------------------------------------------- runc
def _copy_with_libs(binary: str, tree: Path, dest: str):
    """binary into tree at dest, with the shared libraries ldd names at their own paths."""
    r = sh("ldd", binary)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            to = tree / path.lstrip("/")
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, to)
            os.chmod(to, 0o755)
    shutil.copyfile(binary, tree / dest.lstrip("/"))


@pytest.mark.parametrize("opted_in", [False, True], ids=["default", "allow-setuid"])
def test_runc_container_gets_setuid_only_with_the_opt_in(workdir, mounter, opted_in):
    """root.readonly false: runc binds the rootfs, which keeps the mount's nosuid."""
    assert run_setuid_in_runc(workdir, mounter, opted_in, readonly=False) == ["1000", "0" if opted_in else "1000"]


def test_runc_readonly_root_drops_nosuid_itself(workdir, mounter):
    """A limit the README states: with root.readonly true, runc 1.1 remounts its bind of the rootfs with
    MS_BIND|MS_REMOUNT|MS_RDONLY alone, which clears nosuid on its own mount (in the container's mount
    namespace): the container's setuid binaries take effect without --allow-setuid. Host users gain
    nothing from it: they do not see that mount."""
    got = run_setuid_in_runc(workdir, mounter, False, readonly=True)
    assert got == ["1000", "0"], f"runc no longer clears nosuid with a read-only root ({got}): update the README"


def run_setuid_in_runc(workdir, mounter, opted_in, readonly) -> list[str]:
    """What `id -u` and a setuid-root id print in a runc container run as uid 1000 from an image tree."""
    from test_runc import _ensure_tools, make_bundle, runc
    from rootfs_tree import build_busybox_tree
    _ensure_tools()
    tree = workdir / "bbtree"
    build_busybox_tree(tree)
    _copy_with_libs("/usr/bin/id", tree, "/bin/suid-id")
    os.chown(tree / "bin" / "suid-id", 0, 0)
    os.chmod(tree / "bin" / "suid-id", 0o4755)
    store = workdir / "store"
    store.mkdir(mode=0o755)
    hx = import_tree(store, "docker.io/sec/runc:1", tree)
    priv = private_dir(workdir)
    # The container runs as uid 1000: it needs --allow-other to read its own rootfs at all.
    m = mounter(store, priv / "mnt", allow_other=True, extra_args=["--allow-setuid"] if opted_in else [])
    rootfs = os.path.realpath(m.mnt / "tags" / "docker.io" / "sec" / "runc" / "1") + "/rootfs"
    assert rootfs == str(m.mnt / "digests" / hx / "rootfs")
    bundle = make_bundle(workdir / "bundle", rootfs, ["/bin/sh", "-c", "id -u; /bin/suid-id -u"])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["readonly"] = readonly
    cfg["process"]["user"] = {"uid": UID, "gid": UID}
    cfg["process"]["noNewPrivileges"] = False  # runc spec's default would stop setuid on its own
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    cid = f"imagefs-sec-{os.getpid()}-{int(opted_in)}{int(readonly)}"
    try:
        r = runc("run", "--bundle", bundle, cid, timeout=90)
    finally:
        runc("delete", "-f", cid)
    assert r.returncode == 0, f"runc run exited {r.returncode}: {r.stdout!r} {r.stderr!r}"
    return r.stdout.split()


# ---------------------------------------------------------------- import
def test_import_keeps_the_extracted_tree_from_other_users(workdir):
    """A tar is extracted by `imagefs import` (as root) onto the host's filesystem, setuid files and device
    nodes as they are, then built by mkfs.erofs: while it builds, no other user may run or open them."""
    real = shutil.which("mkfs.erofs")
    require(real, "mkfs.erofs (erofs-utils) is not installed")
    tree = build_hostile_tree(workdir / "t1")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.add(tree, arcname=".")
    (workdir / "img.tar").write_bytes(buf.getvalue())
    out = workdir / "probe"
    out.mkdir()
    bindir = workdir / "bin"
    bindir.mkdir()
    wrapper = bindir / "mkfs.erofs"
    user = f"setpriv --reuid={UID} --regid={UID} --clear-groups sh -c"
    wrapper.write_text(f"""#!/bin/sh
for a in "$@"; do src="$a"; done
echo "$src" > {out}/src
ls -l "$src/bin/id" "$src/dev/zero" > {out}/ls 2>&1
{user} '"$1/bin/id" -u' sh "$src" > {out}/id 2>&1
{user} 'head -c 3 "$1/dev/zero" | od -An -c' sh "$src" > {out}/zero 2>&1
exec {real} "$@"
""")
    os.chmod(wrapper, 0o755)
    store = workdir / "store"
    store.mkdir(mode=0o755)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    r = sh(imagefs_bin(), "import", "--store", store, "--tag", f"{REPO}:1", workdir / "img.tar", env=env,
           timeout=120)
    assert r.returncode == 0, f"import: {r.stdout}{r.stderr}"
    seen = {p.name: p.read_text() for p in out.iterdir()}
    assert "rwsr-xr-x" in seen.get("ls", "") and "crw-rw-rw-" in seen["ls"], \
        f"the probe did not see the extracted tree: {seen}"
    assert "Permission denied" in seen["id"] and seen["id"].strip() != "0", \
        f"another user ran the extracted setuid-root id while mkfs.erofs built the image: {seen['id']!r}"
    assert "Permission denied" in seen["zero"], \
        f"another user opened the extracted dev/zero while mkfs.erofs built the image: {seen['zero']!r}"


# ---------------------------------------------------------------- xattrs
def _acl_granting_read(uid: int) -> bytes:
    """A POSIX access ACL (system.posix_acl_access, version 2) on a 0600 file that grants uid read."""
    import struct
    entries = [(0x01, 6, 0xFFFFFFFF), (0x02, 4, uid), (0x04, 0, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]  # USER_OBJ rw, USER uid r, GROUP_OBJ -, MASK r, OTHER -
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize("how", ["kernel", "fuse"])
def test_image_xattrs_grant_nothing(workdir, mounter, how):
    """An image's POSIX ACL grants no access (the kernel checks mode bits only: imagefs does not ask for
    FUSE_POSIX_ACL, and mounts the kernel's erofs `noacl`), and the values of its trusted.* xattrs stay
    hidden from users (the kernel's rule for trusted.*)."""
    tree = workdir / "t1"
    tree.mkdir()
    (tree / "secret").write_text("secret\n")
    os.chmod(tree / "secret", 0o600)
    try:
        os.setxattr(tree / "secret", "system.posix_acl_access", _acl_granting_read(UID))
    except OSError as e:
        require(False, f"setting a POSIX ACL on {workdir}: {e}")
    (tree / "x").write_text("x\n")
    os.setxattr(tree / "x", "trusted.imagefs-test", b"hidden")
    os.setxattr(tree / "x", "user.imagefs-test", b"shown")
    # On the source tree the ACL works: uid 1000 reads it (so the image does carry a grant).
    os.chmod(workdir, 0o755)
    assert as_user("cat", tree / "secret").returncode == 0
    store = workdir / "store"
    store.mkdir(mode=0o755)
    hx = import_tree(store, f"{REPO}:1", tree)
    m = mounter(store, allow_other=True, extra_args=["--rootfs-mounts", how])
    rootfs = m.mnt / "digests" / hx / "rootfs"
    require(eventually(lambda: os.stat(rootfs).st_dev != os.stat(m.mnt).st_dev, 5),
            "image trees are not mounted on their own here")
    if how == "fuse":
        assert os.getxattr(rootfs / "secret", "system.posix_acl_access"), "the image kept no ACL"
    else:
        # noacl: the kernel's erofs neither shows nor applies the image's ACL (the image does carry
        # one: the fuse case shows it from the same import)
        expect_errno(errno.EOPNOTSUPP, os.getxattr, rootfs / "secret", "system.posix_acl_access")
    assert os.getxattr(rootfs / "x", "trusted.imagefs-test") == b"hidden"
    r = as_user("cat", rootfs / "secret")
    assert r.returncode != 0 and "Permission denied" in r.stderr, f"the image's ACL granted read: {r}"
    # The value stays hidden (ENODATA), and so does the name: listed to root only, as the kernel's erofs does.
    assert "trusted.imagefs-test" in os.listxattr(rootfs / "x")
    code = ("import errno, os, sys\ntry:\n    print(os.getxattr(sys.argv[1], 'trusted.imagefs-test'))\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\nprint(os.getxattr(sys.argv[1], 'user.imagefs-test'))\n"
            "print(sorted(os.listxattr(sys.argv[1])))")
    r = as_user(PY, "-c", code, rootfs / "x")
    assert r.returncode == 0 and r.stdout.split("\n")[:3] == ["ENODATA", "b'shown'", "['user.imagefs-test']"], r


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("how", ["kernel", "fuse"])
def test_crafted_names_in_an_image_are_never_served(workdir, mounter, how):
    """Directory entries a crafted image names `..`, `a/slash/b` or with a NUL are skipped (logged), never
    served: no name in a tree leads out of it. (mkfs.erofs makes no such names: the bytes are patched.)
    The kernel's erofs would list them: the daemon checks the names of a kernel mount before attaching
    it, and such an image's tree is a FUSE tree, with the reader skipping them."""
    from rootfs_tree import StoreRoot, add_image, mkfs
    tree = workdir / "names"
    tree.mkdir()
    names = {b"a_slash_b": b"a/slash/b", b"._": b"..", b"n_ul": b"n\0ul"}  # each sorts where it was
    for n in [*names, b"keep", b"zzz"]:  # zzz: n\0ul is not the block's last name (which ends at a NUL)
        (tree / n.decode()).write_text("data\n")
    data = bytearray(mkfs(workdir / "names.erofs", tree, "plain").read_bytes())
    for old, new in names.items():
        assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times in the image"
        i = data.index(old)
        data[i:i + len(old)] = new
    # The patch may touch the superblock's block: drop its checksum (feature_compat bit 0, SB_CHKSUM).
    assert data[1024:1028] == b"\xe2\xe1\xf5\xe0", "erofs magic"
    data[1032] &= ~1 & 0xFF
    img = workdir / "crafted.erofs"
    img.write_bytes(bytes(data))
    root = workdir / "store"
    root.mkdir(mode=0o755)
    hx = add_image(root, img, repo="sec/names", tag="1")
    m = mounter(StoreRoot(root), allow_other=True, extra_args=["--rootfs-mounts", how])
    rootfs = m.mnt / "digests" / hx / "rootfs"
    require(eventually(lambda: os.stat(rootfs).st_dev != os.stat(m.mnt).st_dev, 5),
            "image trees are not mounted on their own here")
    fstype = [ln.split(" - ")[1].split()[0] for ln in open("/proc/self/mountinfo") if ln.split()[4] == str(rootfs)]
    assert fstype == ["fuse.imagefs"], fstype
    if how == "kernel":
        # (this kernel already fails listing the crafted directory: EIO; else the name with a / is named)
        assert f"sha256:{hx}: its tree failed the names check" in m.log_text(), m.log_tail(20)
    assert sorted(os.listdir(rootfs)) == ["keep", "zzz"], os.listdir(rootfs)
    assert not os.path.lexists(rootfs / "a") and not os.path.lexists(rootfs / "n")
    assert 'skipping untrusted entry name "a/slash/b"' in m.log_text(), m.log_tail(20)
    assert sorted(os.listdir(rootfs / "..")) == ["metadata.json", "rootfs", "rootfs.erofs"]
