"""DESIGN.md section 2, permissions: with --allow-other an unprivileged user reads everything, but may tag
or untag only in a repository directory it owns in the store (kernel-checked, default_permissions)."""

from __future__ import annotations

import errno
import json
import os
import shutil

from helpers import sh
from world import assert_tag

UID = 4242
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else shutil.which("python3")

PROBE = r"""
import errno, json, os, sys
ops = json.loads(sys.argv[1])
out = []
for op in ops:
    name, args = op[0], op[1:]
    try:
        if name == "symlink": os.symlink(*args)
        elif name == "unlink": os.unlink(*args)
        elif name == "rename": os.rename(*args)
        elif name == "mkdir": os.mkdir(*args)
        elif name == "rmdir": os.rmdir(*args)
        elif name == "readlink": os.readlink(*args)
        elif name == "listdir": os.listdir(*args)
        elif name == "read": open(args[0], "rb").read()
        else: raise SystemExit("bad op " + name)
        out.append("OK")
    except OSError as e:
        out.append(errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps(out))
"""


def as_user(*cmd, uid=UID):
    return sh("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd, cwd="/")


def probe(ops, uid=UID):
    r = as_user(PY, "-c", PROBE, json.dumps([[str(a) for a in op] for op in ops]), uid=uid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_unprivileged_user(store, mounter):
    hx = store.add_digest("perm-a")
    hy = store.add_digest("perm-b")
    store.tag("docker.io/mine/app", "v1", hx)
    store.tag("docker.io/theirs/app", "v1", hy)
    store.tag("docker.io/theirs/app", "v2", hx)
    mine = store.root / "repositories/docker.io/mine/app"
    os.chown(mine, UID, UID)
    os.chmod(mine, 0o755)
    m = mounter(store, allow_other=True)
    mnt = m.mnt
    tm, tt = mnt / "tags/docker.io/mine/app", mnt / "tags/docker.io/theirs/app"

    # reading works everywhere
    r = as_user("ls", "-l", tm, tt, mnt / "digests", mnt / "digests" / hx)
    assert r.returncode == 0, r.stderr
    r = as_user("readlink", tt / "v1")
    assert r.returncode == 0 and r.stdout.strip() == "../../../../digests/" + hy, r
    r = as_user("cat", tt / "v1" / "metadata.json")
    assert r.returncode == 0 and r.stdout.encode() == (store.content_dir(hy) / "metadata.json").read_bytes(), r
    r = as_user("sha256sum", tm / "v1" / "rootfs.erofs")
    assert r.returncode == 0 and r.stdout.split()[0] == hx, r

    # tag / untag in the repository it owns
    r = as_user("ln", "-s", hy, tm / "new")
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, store, "docker.io/mine/app", "new", hy)
    assert os.lstat(mine / "new")  # on disk
    r = as_user("rm", tm / "new")
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(mine / "new")

    # and nowhere else: EACCES, store unchanged
    r = as_user("ln", "-s", hx, tt / "new")
    assert r.returncode == 1 and "Permission denied" in r.stderr, r
    res = probe([
        ["symlink", hx, tt / "new"],
        ["unlink", tt / "v1"],
        ["rename", tt / "v1", tt / "v3"],
        ["rename", tt / "v1", tm / "stolen"],
        ["rename", tm / "v1", tt / "given"],
        ["mkdir", tt / "sub"],
        ["mkdir", mnt / "tags/docker.io/newrepo"],
        ["symlink", hx, mnt / "tags/docker.io/theirs/new"],
        ["readlink", tt / "v2"],
        ["listdir", tt],
        ["read", mnt / "digests" / hy / "metadata.json"],
    ])
    assert res == ["EACCES"] * 8 + ["OK"] * 3, res
    assert_tag(mnt, store, "docker.io/theirs/app", "v1", hy)
    assert_tag(mnt, store, "docker.io/mine/app", "v1", hx)
    assert not os.path.lexists(store.root / "repositories/docker.io/theirs/app/new")
    r = as_user("rm", "-f", tt / "v1")
    assert r.returncode == 1 and "Permission denied" in r.stderr, r
    assert store.content_dir(hy).is_dir()

    # the unprivileged user removes the last tag in its own repo of a digest also tagged in theirs:
    res = probe([["unlink", tm / "v1"]])
    assert res == ["OK"]
    assert store.content_dir(hx).is_dir(), "digest still tagged in another repository was collected"

    # digests/ is read-only for everyone; tags/ refuses non-tags
    res = probe([["mkdir", mnt / "digests" / "x"], ["unlink", mnt / "digests" / hx / "metadata.json"]])
    assert all(e in ("EACCES", "EROFS") for e in res), res


def test_group_writable_repo(store, mounter):
    hx = store.add_digest("perm-g")
    store.tag("docker.io/team/app", "v1", hx)
    repo = store.root / "repositories/docker.io/team/app"
    os.chown(repo, 0, 4343)
    os.chmod(repo, 0o775)
    m = mounter(store, allow_other=True)
    t = m.mnt / "tags/docker.io/team/app"
    r = sh("setpriv", f"--reuid={UID}", f"--regid={UID}", "--groups=4343", "ln", "-s", hx, t / "v2", cwd="/")
    assert r.returncode == 0, r.stderr
    assert_tag(m.mnt, store, "docker.io/team/app", "v2", hx)
    res = probe([["unlink", t / "v2"]])  # no supplementary group -> no write permission
    assert res == ["EACCES"], res


def test_mkdir_by_user_gives_user_a_repository(store, mounter):
    """POSIX: a directory made with mkdir belongs to its maker. A user who makes a repository inside one it
    owns can then tag in it; the store dir carries that owner (and the mode asked for, less umask)."""
    hx = store.add_digest("perm-mk")
    store.tag("docker.io/mine/app", "v1", hx)
    mine = store.root / "repositories/docker.io/mine/app"
    os.chown(mine, UID, UID)
    m = mounter(store, allow_other=True)
    t = m.mnt / "tags/docker.io/mine/app"
    r = as_user("sh", "-c", f"umask 022 && mkdir -m 0750 {t}/sub && ln -s {hx} {t}/sub/v1")
    assert r.returncode == 0, r.stderr
    st = os.stat(store.root / "repositories/docker.io/mine/app/sub")
    assert (st.st_uid, st.st_gid) == (UID, UID), (st.st_uid, st.st_gid)
    assert oct(st.st_mode & 0o7777) == oct(0o750)
    mst = os.stat(t / "sub")
    assert (mst.st_uid, mst.st_gid, oct(mst.st_mode & 0o7777)) == (UID, UID, oct(0o750))
    assert_tag(m.mnt, store, "docker.io/mine/app/sub", "v1", hx)


def test_root_mkdir_mode(store, mounter):
    hx = store.add_digest("perm-mode")
    store.tag("x/y", "v1", hx)
    m = mounter(store)
    old = os.umask(0o022)
    try:
        os.mkdir(m.mnt / "tags/x/private", 0o700)
    finally:
        os.umask(old)
    assert oct(os.stat(store.root / "repositories/x/private").st_mode & 0o7777) == oct(0o700)
    assert oct(os.stat(m.mnt / "tags/x/private").st_mode & 0o7777) == oct(0o700)


def test_without_allow_other_other_users_are_kept_out(store, mounter):
    hx = store.add_digest("perm-noao")
    store.tag("a/b", "v1", hx)
    m = mounter(store)
    res = probe([["listdir", m.mnt / "tags"], ["readlink", m.mnt / "tags/a/b/v1"]])
    assert res == ["EACCES", "EACCES"], res
