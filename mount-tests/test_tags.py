"""DESIGN.md section 3, tags/: ln -s, rm, mv, ln -sfn, renameat2, mkdir, rmdir, rm -r, and their errnos,
in both store layouts (each store is mixed)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from helpers import (
    RENAME_EXCHANGE, RENAME_NOREPLACE, content_target, expect_errno, mount_target, renameat2,
    scan_store, sh, snapshot, trash_entries, check_invariants, wait_trash_empty, imagefs_bin,
)
from world import assert_tag, build_world

LAYOUTS = ["content", "legacy"]
UNKNOWN = "0123456789abcdef" * 4


@pytest.fixture(params=LAYOUTS)
def world(request, store):
    return build_world(store, request.param)


@pytest.fixture
def wm(world, mounter):
    """(world, mountpoint) with the world's store mounted."""
    m = mounter(world.store)
    return world, m.mnt


def T(mnt, repo, tag=None) -> Path:
    p = Path(mnt) / "tags" / repo
    return p / tag if tag else p


def no_garbage(w):
    left = wait_trash_empty(w.root)
    assert not left, f"trash not emptied within 5 s although nothing uses the images: {left}"
    v = check_invariants(w.root, ever_tagged=w.store.ever_tagged, never_tagged=w.never_tagged)
    assert not v, "store invariants violated:\n" + "\n".join(v)


# ------------------------------------------------------------------ the initial view
def test_initial_view(wm):
    w, mnt = wm
    assert sorted(os.listdir(mnt)) in (["digests", "tags"], [".imagefs", "digests", "tags"]), os.listdir(mnt)
    # digests/ lists every digest directory of the store, whatever its status and layout
    assert set(os.listdir(mnt / "digests")) == set(w.d.values())
    st = scan_store(w.root)
    assert len(st.tags) == 9
    for (repo, tag), hx in st.tags.items():
        assert hx
        assert_tag(mnt, w, repo, tag, hx)
    # every repository path component is a directory
    for repo in (w.r1, w.r2, w.orepo):
        parts = repo.split("/")
        for i in range(1, len(parts) + 1):
            p = mnt / "tags" / "/".join(parts[:i])
            assert p.is_dir() and not p.is_symlink(), p
    assert sorted(os.listdir(T(mnt, w.r1))) == sorted(["t1", "t2", "only", "pend", "pull", "conv", "broken"])
    # through a tag, the digest directory's files
    assert (T(mnt, w.r1, "t1") / "metadata.json").read_bytes() == (w.ddir("d1") / "metadata.json").read_bytes()


def test_ls_coreutils(wm):
    w, mnt = wm
    r = sh("ls", "-l", T(mnt, w.r1))
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.endswith(" -> " + mount_target(w.r1, w.d["d1"]))]
    assert len(line) == 2 and line[0].startswith("l"), r.stdout
    r = sh("readlink", "-f", T(mnt, w.r1, "only"))
    assert r.stdout.strip() == str(mnt.resolve() / "digests" / w.d["d2"])


# ------------------------------------------------------------------ ln -s target forms
FORMS = ["hex", "sha256", "rel-digests", "abs-digests", "any-path-digests", "rel-tag-same-repo",
         "dot-rel-tag", "rel-tag-other-repo", "rel-tag-via-mount-root", "abs-tag"]


@pytest.mark.parametrize("form", FORMS)
def test_symlink_target_forms(wm, form):
    w, mnt = wm
    repo = w.r1
    depth = 1 + len(repo.split("/"))
    if form in ("rel-tag-other-repo", "rel-tag-via-mount-root"):
        hx = w.d["dx"]
    else:
        hx = w.d["d1"] if "tag" in form else w.d["d3"]
    target = {
        "hex": hx,
        "sha256": "sha256:" + hx,
        "rel-digests": "../" * depth + "digests/" + hx,
        "abs-digests": str(mnt / "digests" / hx),
        "any-path-digests": "/nonexistent/elsewhere/digests/" + hx,
        "rel-tag-same-repo": "t1",
        "dot-rel-tag": "./t1",
        "rel-tag-via-mount-root": "../" * depth + "tags/" + w.r2 + "/v1",
        "rel-tag-other-repo": "../" * len(repo.split("/")) + w.r2 + "/v1",
        "abs-tag": str(mnt / "tags" / repo / "t1"),
    }[form]
    before = scan_store(w.root)
    r = sh("ln", "-s", target, T(mnt, repo, "new"))
    assert r.returncode == 0, f"ln -s {target}: {r.stderr}"
    st = assert_tag(mnt, w, repo, "new", hx)
    # the new tag went to the layout the digest lives in
    if w.layout == "content":
        assert os.readlink(w.root / "repositories" / repo / "new") == content_target(repo, hx)
    else:
        if form in ("rel-tag-other-repo", "rel-tag-via-mount-root"):
            # dx lived only in r2's legacy dir: tagging it in r1 promotes it into content/
            assert os.readlink(w.root / "repositories" / repo / "new") == content_target(repo, hx)
        else:
            assert os.readlink(w.root / repo / "new") == hx
    # nothing else changed
    assert {k: v for k, v in st.tags.items() if k != (repo, "new")} == before.tags or \
        form in ("rel-tag-other-repo", "rel-tag-via-mount-root")
    # readlink via coreutils
    assert sh("readlink", T(mnt, repo, "new")).stdout.strip() == mount_target(repo, hx)


def test_canonical_target_depths(store, mounter):
    hx = store.add_digest("depths")
    store.tag("one", "keep", hx)
    m = mounter(store)
    mnt = m.mnt
    # Depth 1: a tag already in the store (a new one there is refused: hypeman would look
    # for it under docker.io/library/one, see test_hypeman_names.py).
    assert os.readlink(T(mnt, "one", "keep")) == "../../digests/" + hx
    assert os.path.realpath(T(mnt, "one", "keep")) == str(mnt.resolve() / "digests" / hx)
    for repo in ["a.example.com/two", "docker.io/library/three", "localhost:5000/x/three",
                 "registry.example.com:443/a/b/c/four"]:
        r = sh("mkdir", "-p", T(mnt, repo))
        assert r.returncode == 0, r.stderr
        os.symlink(hx, T(mnt, repo, "latest"))
        got = os.readlink(T(mnt, repo, "latest"))
        assert got == "../" * (1 + len(repo.split("/"))) + "digests/" + hx, (repo, got)
        assert os.path.realpath(T(mnt, repo, "latest")) == str(mnt.resolve() / "digests" / hx)
        assert os.readlink(store.root / "repositories" / repo / "latest") == content_target(repo, hx)


def test_tag_of_128_bytes_ok(wm):
    w, mnt = wm
    name = "A" + "b" * 126 + "9"
    assert len(name) == 128
    os.symlink(w.d["d3"], T(mnt, w.r1, name))
    assert_tag(mnt, w, w.r1, name, w.d["d3"])


# ------------------------------------------------------------------ ln -s errors
def _symlink_cases(w, mnt):
    r1 = w.r1
    depth = 1 + len(r1.split("/"))
    ok = w.d["d3"]
    return [
        # ENOENT: names no digest / no tag
        ("unknown hex", UNKNOWN, T(mnt, r1, "n1"), errno.ENOENT),
        ("unknown sha256", "sha256:" + UNKNOWN, T(mnt, r1, "n2"), errno.ENOENT),
        ("unknown rel digests path", "../" * depth + "digests/" + UNKNOWN, T(mnt, r1, "n3"), errno.ENOENT),
        ("unknown abs digests path", str(mnt / "digests" / UNKNOWN), T(mnt, r1, "n4"), errno.ENOENT),
        ("unknown tag relative", "nosuchtag", T(mnt, r1, "n5"), errno.ENOENT),
        ("unknown tag absolute", str(mnt / "tags" / r1 / "nosuchtag"), T(mnt, r1, "n6"), errno.ENOENT),
        # EAGAIN: not ready
        ("pending", w.d["dp"], T(mnt, r1, "a1"), errno.EAGAIN),
        ("pulling", "sha256:" + w.d["dpull"], T(mnt, r1, "a2"), errno.EAGAIN),
        ("converting", str(mnt / "digests" / w.d["dconv"]), T(mnt, r1, "a3"), errno.EAGAIN),
        ("tag of a pending digest", "pend", T(mnt, r1, "a4"), errno.EAGAIN),
        # EINVAL: bad tag names, link directly in tags/
        ("tag starting with .", ok, T(mnt, r1, ".hidden"), errno.EINVAL),
        ("tag starting with -", ok, T(mnt, r1, "-dash"), errno.EINVAL),
        ("tag with :", ok, T(mnt, r1, "bad:name"), errno.EINVAL),
        ("tag with +", ok, T(mnt, r1, "bad+name"), errno.EINVAL),
        ("tag with space", ok, T(mnt, r1, "bad name"), errno.EINVAL),
        ("link directly in tags/", ok, mnt / "tags" / "toplevel", errno.EINVAL),
        # ENAMETOOLONG
        ("tag of 129 bytes", ok, T(mnt, r1, "a" * 129), errno.ENAMETOOLONG),
        # EEXIST
        ("existing tag", ok, T(mnt, r1, "t1"), errno.EEXIST),
        ("existing tag, same digest", w.d["d1"], T(mnt, r1, "t2"), errno.EEXIST),
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_symlink_errors(store, mounter, layout):
    w = build_world(store, layout)
    mnt = mounter(store).mnt
    os.mkdir(T(mnt, w.r1, "subrepo"))
    failures = []
    for desc, target, path, code in _symlink_cases(w, mnt) + [
            ("name of an existing repository dir", w.d["d3"], T(mnt, w.r1, "subrepo"), errno.EEXIST)]:
        before = snapshot(w.root)
        try:
            os.symlink(target, path)
            failures.append(f"{desc}: ln -s {target} {path}: succeeded, expected {errno.errorcode[code]}")
        except OSError as e:
            if e.errno != code:
                failures.append(f"{desc}: ln -s {target} {path}: got {errno.errorcode.get(e.errno)}, "
                                f"expected {errno.errorcode[code]}")
        after = snapshot(w.root)
        if after != before:
            diff = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            failures.append(f"{desc}: the failed ln -s changed the store: {sorted(diff)}")
    assert not failures, "\n".join(failures)


def test_symlink_error_coreutils_message(wm):
    w, mnt = wm
    r = sh("ln", "-s", UNKNOWN, T(mnt, w.r1, "x"))
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r
    r = sh("ln", "-s", w.d["dp"], T(mnt, w.r1, "x"))
    assert r.returncode == 1 and "Resource temporarily unavailable" in r.stderr, r
    r = sh("ln", "-s", w.d["d3"], T(mnt, w.r1, "bad:tag"))
    assert r.returncode == 1 and "Invalid argument" in r.stderr, r


def test_refusals_are_logged(store, mounter):
    w = build_world(store, "content")
    m = mounter(store)
    expect_errno(errno.EINVAL, os.symlink, w.d["d3"], T(m.mnt, w.r1, "refused:name"))
    expect_errno(errno.EAGAIN, os.symlink, w.d["dp"], T(m.mnt, w.r1, "refusedpending"))
    time.sleep(0.2)
    log = m.log_text()
    assert "refused:name" in log, "EINVAL refusal not logged with the tag name:\n" + m.log_tail(20)
    assert "refusedpending" in log, "EAGAIN refusal not logged with the tag name:\n" + m.log_tail(20)


# ------------------------------------------------------------------ rm and garbage collection
def test_rm_non_last_tag_keeps_digest(wm):
    w, mnt = wm
    r = sh("rm", T(mnt, w.r1, "t1"))
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(w.stag(w.r1, "t1"))
    assert w.ddir("d1").is_dir()
    assert w.d["d1"] in os.listdir(mnt / "digests")
    assert_tag(mnt, w, w.r1, "t2", w.d["d1"])
    expect_errno(errno.ENOENT, os.lstat, T(mnt, w.r1, "t1"))
    no_garbage(w)


def test_rm_last_tag_collects_digest(wm):
    w, mnt = wm
    hx = w.d["d2"]
    # the kernel has seen the digest (dentry + attrs cached) before it goes
    assert (mnt / "digests" / hx / "metadata.json").read_bytes()
    assert os.path.isdir(T(mnt, w.r1, "only"))
    r = sh("rm", T(mnt, w.r1, "only"))
    assert r.returncode == 0, r.stderr
    # gone from the store before rm returned
    assert not w.ddir("d2").exists(), f"{w.ddir('d2')} still in the store after rm of its last tag"
    assert not os.path.lexists(w.stag(w.r1, "only"))
    # (the kernel still held inodes of it, so it may sit in the bookkeeping's trash/ until FUSE forget: see no_garbage)
    assert hx not in os.listdir(mnt / "digests")
    expect_errno(errno.ENOENT, os.stat, mnt / "digests" / hx)
    expect_errno(errno.ENOENT, os.lstat, T(mnt, w.r1, "only"))
    # and it cannot be tagged again
    expect_errno(errno.ENOENT, os.symlink, hx, T(mnt, w.r1, "again"))
    no_garbage(w)


def test_rm_failed_digest_collected(wm):
    w, mnt = wm
    os.unlink(T(mnt, w.r1, "broken"))
    assert not w.ddir("df").exists()
    assert w.d["df"] not in os.listdir(mnt / "digests")


@pytest.mark.parametrize("role,tag", [("dp", "pend"), ("dpull", "pull"), ("dconv", "conv")])
def test_not_ready_digest_never_collected(wm, role, tag):
    w, mnt = wm
    os.unlink(T(mnt, w.r1, tag))
    assert not os.path.lexists(w.stag(w.r1, tag))
    assert w.ddir(role).is_dir(), f"{role} digest was collected"
    assert (w.ddir(role) / "metadata.json").is_file()
    assert w.d[role] in os.listdir(mnt / "digests")


def test_never_tagged_left_alone(wm):
    w, mnt = wm
    for t in ["t1", "t2", "only", "broken", "pend"]:
        os.unlink(T(mnt, w.r1, t))
    assert w.ddir("d3").is_dir()
    assert w.d["d3"] in os.listdir(mnt / "digests")
    no_garbage(w)


def test_shared_digest_across_repositories(store, mounter):
    hx = store.add_digest("shared")
    store.tag("docker.io/library/alpine", "latest", hx)
    store.tag("ghcr.io/acme/alpine-mirror", "3", hx)
    mnt = mounter(store).mnt
    os.unlink(T(mnt, "docker.io/library/alpine", "latest"))
    assert store.content_dir(hx).is_dir(), "digest shared with another repository was collected"
    assert_tag(mnt, store, "ghcr.io/acme/alpine-mirror", "3", hx)
    os.unlink(T(mnt, "ghcr.io/acme/alpine-mirror", "3"))
    assert not store.content_dir(hx).exists()
    assert hx not in os.listdir(mnt / "digests")


def test_tag_created_through_mount_then_removed_collects(wm):
    w, mnt = wm
    os.symlink(w.d["d3"], T(mnt, w.r1, "fresh"))
    assert_tag(mnt, w, w.r1, "fresh", w.d["d3"])
    os.unlink(T(mnt, w.r1, "fresh"))
    assert not w.ddir("d3").exists(), "a digest tagged through the mount and then untagged must be collected"


# ------------------------------------------------------------------ rename
def test_mv_retag_same_repo(wm):
    w, mnt = wm
    r = sh("mv", "-T", T(mnt, w.r1, "only"), T(mnt, w.r1, "renamed"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, w.r1, "renamed", w.d["d2"])
    expect_errno(errno.ENOENT, os.lstat, T(mnt, w.r1, "only"))
    assert not os.path.lexists(w.stag(w.r1, "only"))
    assert w.ddir("d2").is_dir()
    no_garbage(w)


def test_mv_retag_to_other_repo(wm):
    w, mnt = wm
    assert sh("mkdir", "-p", T(mnt, "quay.io/newrepo")).returncode == 0
    r = sh("mv", "-T", T(mnt, w.r1, "only"), T(mnt, "quay.io/newrepo", "moved"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, "quay.io/newrepo", "moved", w.d["d2"])
    expect_errno(errno.ENOENT, os.lstat, T(mnt, w.r1, "only"))
    hx = w.d["d2"]
    assert (w.root / "content" / hx).is_dir(), "a digest tagged in a new repository lives in content/"
    if w.layout == "legacy":
        assert not (w.root / w.r1 / hx).exists(), "legacy copy left behind after promotion"
    no_garbage(w)


def test_mv_over_existing_tag_drops_reference(wm):
    w, mnt = wm
    # t1 -> d1 is replaced by only -> d2; d1 keeps t2
    r = sh("mv", "-T", T(mnt, w.r1, "only"), T(mnt, w.r1, "t1"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, w.r1, "t1", w.d["d2"])
    assert w.ddir("d1").is_dir()
    # t2 -> d1 (the last reference) is replaced by t1 -> d2: d1 is collected
    r = sh("mv", "-T", T(mnt, w.r1, "t1"), T(mnt, w.r1, "t2"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, w.r1, "t2", w.d["d2"])
    assert not w.ddir("d1").exists(), "replaced tag held the last reference; digest must be collected"
    assert w.d["d1"] not in os.listdir(mnt / "digests")
    assert sorted(os.listdir(T(mnt, w.r1))) == sorted(["t2", "pend", "pull", "conv", "broken"])
    no_garbage(w)


def test_rename_over_self(wm):
    w, mnt = wm
    os.rename(T(mnt, w.r1, "only"), T(mnt, w.r1, "only"))
    assert_tag(mnt, w, w.r1, "only", w.d["d2"])
    assert w.ddir("d2").is_dir()


def test_ln_sfn_retag(wm):
    w, mnt = wm
    r = sh("ln", "-sfn", w.d["d3"], T(mnt, w.r1, "only"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, w.r1, "only", w.d["d3"])
    assert not w.ddir("d2").exists(), "ln -sfn replaced the last tag of d2; it must be collected"
    assert sorted(os.listdir(T(mnt, w.r1))) == sorted(["t1", "t2", "only", "pend", "pull", "conv", "broken"])
    w.store.ever_tagged.add(w.d["d3"])
    w.never_tagged.discard(w.d["d3"])
    no_garbage(w)


def test_ln_sf_to_same_digest_keeps_it(wm):
    w, mnt = wm
    r = sh("ln", "-sfn", "sha256:" + w.d["d2"], T(mnt, w.r1, "only"))
    assert r.returncode == 0, r.stderr
    assert_tag(mnt, w, w.r1, "only", w.d["d2"])
    assert w.ddir("d2").is_dir(), "retagging a tag to its own digest must not collect it"


def test_rename_noreplace(wm):
    w, mnt = wm
    before = snapshot(w.root)
    expect_errno(errno.EEXIST, renameat2, T(mnt, w.r1, "only"), T(mnt, w.r1, "t1"), RENAME_NOREPLACE)
    assert snapshot(w.root) == before
    assert_tag(mnt, w, w.r1, "t1", w.d["d1"])
    assert_tag(mnt, w, w.r1, "only", w.d["d2"])
    renameat2(T(mnt, w.r1, "only"), T(mnt, w.r1, "fresh"), RENAME_NOREPLACE)
    assert_tag(mnt, w, w.r1, "fresh", w.d["d2"])
    expect_errno(errno.ENOENT, os.lstat, T(mnt, w.r1, "only"))
    r = sh("mv", "-T", "--no-clobber", T(mnt, w.r1, "fresh"), T(mnt, w.r1, "t1"))
    assert_tag(mnt, w, w.r1, "t1", w.d["d1"])
    assert_tag(mnt, w, w.r1, "fresh", w.d["d2"])


def test_rename_exchange(wm):
    w, mnt = wm
    renameat2(T(mnt, w.r1, "t1"), T(mnt, w.r1, "only"), RENAME_EXCHANGE)
    assert_tag(mnt, w, w.r1, "t1", w.d["d2"])
    assert_tag(mnt, w, w.r1, "only", w.d["d1"])
    assert w.ddir("d1").is_dir() and w.ddir("d2").is_dir()
    expect_errno(errno.ENOENT, renameat2, T(mnt, w.r1, "t1"), T(mnt, w.r1, "nosuch"), RENAME_EXCHANGE)
    assert_tag(mnt, w, w.r1, "t1", w.d["d2"])
    no_garbage(w)


def test_rename_exchange_across_repos(wm):
    w, mnt = wm
    renameat2(T(mnt, w.r1, "t1"), T(mnt, w.r2, "v1"), RENAME_EXCHANGE)
    assert_tag(mnt, w, w.r1, "t1", w.d["dx"])
    assert_tag(mnt, w, w.r2, "v1", w.d["d1"])
    for role in ("d1", "dx"):
        assert w.d[role] in os.listdir(mnt / "digests")
    no_garbage(w)


def test_rename_posix_type_errors(wm):
    w, mnt = wm
    os.mkdir(T(mnt, w.r1, "subdir"))
    expect_errno(errno.EISDIR, os.rename, T(mnt, w.r1, "t1"), T(mnt, w.r1, "subdir"))
    expect_errno(errno.ENOTDIR, os.rename, T(mnt, w.r1, "subdir"), T(mnt, w.r1, "t1"))
    expect_errno(errno.ENOENT, os.rename, T(mnt, w.r1, "nosuch"), T(mnt, w.r1, "x"))
    expect_errno(errno.EINVAL, os.rename, T(mnt, w.r1, "t1"), T(mnt, w.r1, "bad:name"))
    expect_errno(errno.ENAMETOOLONG, os.rename, T(mnt, w.r1, "t1"), T(mnt, w.r1, "a" * 129))
    expect_errno(errno.EINVAL, os.rename, T(mnt, w.r1, "t1"), mnt / "tags" / "t1")
    assert_tag(mnt, w, w.r1, "t1", w.d["d1"])


def test_rename_repository_dir_moves_tags(wm):
    w, mnt = wm
    before = scan_store(w.root)
    old = w.r1
    # depth changes (3 -> 2): the canonical readlink must change too; a name hypeman uses
    new = "moved.example.com/repo"
    os.mkdir(T(mnt, "moved.example.com"))
    r = sh("mv", "-T", T(mnt, old), T(mnt, new))
    assert r.returncode == 0, r.stderr
    expect_errno(errno.ENOENT, os.lstat, T(mnt, old))
    for (repo, tag), hx in before.tags.items():
        if repo == old:
            assert_tag(mnt, w, new, tag, hx)
    after = scan_store(w.root)
    assert not [k for k in after.tags if k[0] == old], "tags left in the old repository on disk"
    if w.layout == "content":
        assert not (w.root / "repositories" / old).exists()
    # no digest lost or collected by a rename of a repository
    assert after.digests() == before.digests()
    no_garbage(w)


def test_rename_repository_dir_same_depth(wm):
    w, mnt = wm
    parts = w.r1.split("/")
    new = "/".join(parts[:-1] + [parts[-1] + "2"])
    os.rename(T(mnt, w.r1), T(mnt, new))
    assert_tag(mnt, w, new, "t1", w.d["d1"])
    assert_tag(mnt, w, new, "only", w.d["d2"])
    expect_errno(errno.EINVAL, os.rename, T(mnt, new), T(mnt, "/".join(parts[:-1] + ["Bad_Name"])))
    assert_tag(mnt, w, new, "t1", w.d["d1"])


def test_rename_parent_component_moves_nested_repos(store, mounter):
    hx = store.add_digest("nested")
    store.tag("example.com/team/app", "v1", hx)
    store.tag("example.com/team/lib", "v2", hx)
    mnt = mounter(store).mnt
    os.rename(T(mnt, "example.com/team"), T(mnt, "example.com/crew"))
    assert_tag(mnt, store, "example.com/crew/app", "v1", hx)
    assert_tag(mnt, store, "example.com/crew/lib", "v2", hx)
    assert not (store.root / "repositories/example.com/team").exists()
    assert store.content_dir(hx).is_dir()


# ------------------------------------------------------------------ mkdir / rmdir / rm -r
def test_mkdir_p_creates_repositories(wm):
    w, mnt = wm
    # Every separator of the grammar; under a host, as new tags need a name hypeman uses.
    for repo in ["a.example.com:5000/x/y", "docker.io/plain/sub__dir/name-with--dashes/v1.2"]:
        r = sh("mkdir", "-p", T(mnt, repo))
        assert r.returncode == 0, r.stderr
        assert T(mnt, repo).is_dir()
        assert (w.root / "repositories" / repo).is_dir(), "mkdir -p did not create the repository in the store"
        os.symlink(w.d["d3"], T(mnt, repo, "t"))
        assert_tag(mnt, w, repo, "t", w.d["d3"])
    expect_errno(errno.EEXIST, os.mkdir, T(mnt, "a.example.com:5000/x"))
    expect_errno(errno.EEXIST, os.mkdir, T(mnt, w.r1, "t1"))


@pytest.mark.parametrize("name", ["ok/Upper", "ok/a..b", "ok/-lead", "ok/trail-", "ok/a___b", "ok/_x",
                                  "_top", "ok/a:b", "ok/.hidden"])
def test_mkdir_invalid_names(store, mounter, name):
    hx = store.add_digest("mkdirinv")
    store.tag("ok", "v", hx)
    mnt = mounter(store).mnt
    before = snapshot(store.root)
    expect_errno(errno.EINVAL, os.mkdir, T(mnt, name))
    assert snapshot(store.root) == before
    r = sh("mkdir", "-p", T(mnt, name + "/deeper"))
    assert r.returncode == 1 and "Invalid argument" in r.stderr, r


def test_rmdir(wm):
    w, mnt = wm
    assert sh("mkdir", "-p", T(mnt, "e/f")).returncode == 0
    expect_errno(errno.ENOTEMPTY, os.rmdir, T(mnt, "e"))
    r = sh("rmdir", T(mnt, "e/f"))
    assert r.returncode == 0, r.stderr
    assert not (w.root / "repositories/e/f").exists()
    expect_errno(errno.ENOENT, os.stat, T(mnt, "e/f"))
    os.rmdir(T(mnt, "e"))
    assert not (w.root / "repositories/e").exists()
    expect_errno(errno.ENOTEMPTY, os.rmdir, T(mnt, w.r1))
    expect_errno(errno.ENOTDIR, os.rmdir, T(mnt, w.r1, "t1"))
    r = sh("rmdir", T(mnt, w.r1))
    assert r.returncode == 1 and "Directory not empty" in r.stderr
    assert_tag(mnt, w, w.r1, "t1", w.d["d1"])


def test_rm_r_repository(wm):
    w, mnt = wm
    r = sh("rm", "-r", T(mnt, w.r1))
    if w.layout == "content":
        assert r.returncode == 0, r.stderr
        expect_errno(errno.ENOENT, os.stat, T(mnt, w.r1))
    # (legacy: r1's store dir still holds untagged digests; whether rmdir then succeeds is checked
    #  separately in test_rm_r_legacy_repo_holding_untagged_digests)
    assert os.listdir(T(mnt, w.r1)) == [] if os.path.isdir(T(mnt, w.r1)) else True
    st = scan_store(w.root)
    assert not [k for k in st.tags if k[0] == w.r1]
    for role in ("d1", "d2", "df"):
        assert not w.ddir(role).exists(), f"{role}: last tag removed by rm -r but not collected"
        assert w.d[role] not in os.listdir(mnt / "digests")
    for role in ("d3", "dp", "dpull", "dconv", "dx", "dother"):
        assert w.d[role] in os.listdir(mnt / "digests"), f"{role} must survive rm -r of r1"
    if w.layout == "content":
        assert not (w.root / "repositories" / w.r1).exists()
    assert_tag(mnt, w, w.r2, "v1", w.d["dx"])
    no_garbage(w)


def test_rm_r_legacy_repo_holding_untagged_digests(store, mounter):
    """A legacy repository dir that, after its tags are gone, still holds never-tagged / pending digest
    dirs in the store: the mount shows it empty, so POSIX users expect rm -r (its rmdir) to succeed."""
    w = build_world(store, "legacy")
    mnt = mounter(store).mnt
    r = sh("rm", "-r", T(mnt, w.r1))
    assert not [t for t in scan_store(w.root).tags if t[0] == w.r1]
    assert w.ddir("d3").is_dir() and w.ddir("dp").is_dir()
    assert r.returncode == 0, f"rm -r of a repository whose listing is empty failed: {r.stderr}"
    expect_errno(errno.ENOENT, os.stat, T(mnt, w.r1))


# ------------------------------------------------------------------ promotion of legacy digests
def test_legacy_digest_promoted_when_tagged_in_other_repo(store, mounter):
    w = build_world(store, "legacy")
    mnt = mounter(store).mnt
    hx = w.d["d1"]
    meta = (store.root / w.r1 / hx / "metadata.json").read_bytes()
    manifest = (store.root / w.r1 / hx / "manifest.json").read_bytes()
    assert sh("mkdir", "-p", T(mnt, "docker.io/library/newhome")).returncode == 0
    r = sh("ln", "-s", "sha256:" + hx, T(mnt, "docker.io/library/newhome", "latest"))
    assert r.returncode == 0, r.stderr
    assert (store.root / "content" / hx / "rootfs.erofs").is_file(), "not promoted into content/<hex>"
    assert not (store.root / w.r1 / hx).exists(), "legacy digest dir still there after promotion"
    assert (store.root / "content" / hx / "metadata.json").read_bytes() == meta, "metadata.json changed"
    assert (store.root / "content" / hx / "manifest.json").read_bytes() == manifest
    assert os.readlink(store.root / "repositories/docker.io/library/newhome/latest") == \
        content_target("docker.io/library/newhome", hx)
    # r1's tags of d1 rewritten into repositories/, still resolving, readlink unchanged in the mount
    for t in ("t1", "t2"):
        assert not os.path.lexists(store.root / w.r1 / t), f"legacy tag {t} not rewritten"
        assert os.readlink(store.root / "repositories" / w.r1 / t) == content_target(w.r1, hx)
        assert_tag(mnt, store, w.r1, t, hx)
    assert_tag(mnt, store, "docker.io/library/newhome", "latest", hx)
    assert sha256_of(mnt / "digests" / hx / "rootfs.erofs") == hx
    # r1's other digests are untouched
    assert (store.root / w.r1 / w.d["d2"]).is_dir()
    assert_tag(mnt, store, w.r1, "only", w.d["d2"])
    v = check_invariants(store.root, ever_tagged=store.ever_tagged, never_tagged=w.never_tagged)
    assert not v, v
    # and the promoted digest is reference-counted across both repositories now
    for t in ("t1", "t2"):
        os.unlink(T(mnt, w.r1, t))
    assert (store.root / "content" / hx).is_dir()
    os.unlink(T(mnt, "docker.io/library/newhome", "latest"))
    assert not (store.root / "content" / hx).exists()


def sha256_of(p):
    from helpers import sha256_file
    return sha256_file(p)


def test_legacy_new_tag_same_repo_stays_legacy(store, mounter):
    w = build_world(store, "legacy")
    mnt = mounter(store).mnt
    os.symlink(w.d["d2"], T(mnt, w.r1, "another"))
    assert os.readlink(store.root / w.r1 / "another") == w.d["d2"]
    assert not (store.root / "content" / w.d["d2"]).exists()
    assert_tag(mnt, store, w.r1, "another", w.d["d2"])


# ------------------------------------------------------------------ other writers
def test_other_writer_changes_appear(store, mounter):
    from helpers import flock_store
    hx = store.add_digest("ext-a")
    store.tag("docker.io/library/ext", "old", hx)
    mnt = mounter(store).mnt
    assert os.listdir(T(mnt, "docker.io/library/ext")) == ["old"]
    with flock_store(store.root):
        hy = store.add_digest("ext-b")
        store.tag("docker.io/library/ext", "new", hy)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:
        if os.path.lexists(T(mnt, "docker.io/library/ext", "new")) and hy in os.listdir(mnt / "digests"):
            break
        time.sleep(0.05)
    assert os.path.lexists(T(mnt, "docker.io/library/ext", "new")), "tag added by another writer not visible"
    assert_tag(mnt, store, "docker.io/library/ext", "new", hy)
    with flock_store(store.root):
        os.unlink(store.root / "repositories/docker.io/library/ext/old")
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5 and os.path.lexists(T(mnt, "docker.io/library/ext", "old")):
        time.sleep(0.05)
    assert not os.path.lexists(T(mnt, "docker.io/library/ext", "old"))
    assert store.content_dir(hx).is_dir(), "imagefs must not collect on another writer's behalf"


def test_state_survives_remount(wm, mounter):
    w, mnt = wm
    os.symlink(w.d["d3"], T(mnt, w.r1, "n1"))
    os.rename(T(mnt, w.r1, "only"), T(mnt, w.r2, "moved"))
    os.unlink(T(mnt, w.r1, "broken"))
    assert sh("mkdir", "-p", T(mnt, "empty/repo")).returncode == 0
    renameat2(T(mnt, w.r1, "t1"), T(mnt, w.r2, "v1"), RENAME_EXCHANGE)
    view, digests = mount_view_of(mnt), sorted(os.listdir(mnt / "digests"))
    # (a plain fusermount3 -u is refused while image trees are mounted inside: one mount per
    # store, so the first one must really go)
    r = sh(imagefs_bin(), "umount", mnt)
    assert r.returncode == 0, r.stderr
    m2 = mounter(w.store)
    assert mount_view_of(m2.mnt) == view
    assert sorted(os.listdir(m2.mnt / "digests")) == digests
    assert T(m2.mnt, "empty/repo").is_dir()
    assert w.d["df"] not in digests
    no_garbage(w)


def mount_view_of(mnt):
    from helpers import mount_view
    return mount_view(mnt)


def test_collected_digest_leaves_digests_at_once(store, mounter):
    """Repeated: a digest the kernel has cached (dentry + attrs, long TTL) must be gone from digests/
    when the rm of its last tag returns, not a moment later."""
    n = 20
    hexes = store.add_tagged("inval", "docker.io/library/inval", n)
    mnt = mounter(store).mnt
    stale = []
    for i, hx in enumerate(hexes):
        os.stat(mnt / "digests" / hx / "metadata.json")
        os.unlink(T(mnt, "docker.io/library/inval", f"v{i}"))
        try:
            os.stat(mnt / "digests" / hx)
            stale.append(hx[:12])
        except FileNotFoundError:
            pass
    assert not stale, f"{len(stale)}/{n} collected digests still stat-able in digests/ right after rm returned"


def test_dereferencing_forms_hit_the_digest_dir(wm):
    """DESIGN.md's note: a tag is a symlink to a directory, so `ln -sf NEW TAG` / `mv A TAG` without the
    no-dereference flags act inside the digest directory: EROFS, and nothing changes."""
    w, mnt = wm
    before = snapshot(w.root)
    r = sh("ln", "-sf", w.d["d3"], T(mnt, w.r1, "only"))
    assert r.returncode == 1 and "Read-only file system" in r.stderr, r
    r = sh("mv", T(mnt, w.r1, "t1"), T(mnt, w.r1, "only"))
    assert r.returncode == 1 and "Read-only file system" in r.stderr, r
    assert snapshot(w.root) == before
    assert_tag(mnt, w, w.r1, "only", w.d["d2"])
    assert_tag(mnt, w, w.r1, "t1", w.d["d1"])


def test_other_writer_tag_races_gc(store, mounter):
    """Another writer (holding the store's lock, as DESIGN.md 4 says) tags a digest in the store while
    the mount removes that digest's last tag. Whoever takes the lock first wins, but a digest is never
    removed while a tag names it: if the writer's tag exists afterwards, so does the digest."""
    import threading
    from helpers import flock_store
    n = 30
    hexes = store.add_tagged("owr", "docker.io/library/owr", n)
    mnt = mounter(store).mnt
    problems, outcomes = [], {}
    for i, hx in enumerate(hexes):
        barrier = threading.Barrier(2)
        res = {}

        def writer():
            barrier.wait()
            with flock_store(store.root):
                if store.content_dir(hx).is_dir():
                    store.tag("docker.io/library/external", f"e{i}", hx)
                    res["w"] = "tagged"
                else:
                    res["w"] = "gone"

        def remover():
            barrier.wait()
            os.unlink(T(mnt, "docker.io/library/owr", f"v{i}"))

        ts = [threading.Thread(target=writer), threading.Thread(target=remover)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        outcomes[res.get("w")] = outcomes.get(res.get("w"), 0) + 1
        if res.get("w") == "tagged" and not store.content_dir(hx).is_dir():
            problems.append(f"{i}: digest collected although another writer's tag names it")
    print("outcomes:", outcomes)
    assert not problems, "\n".join(problems)
    time.sleep(1.5)
    for i, hx in enumerate(hexes):
        if os.path.lexists(store.root / "repositories/docker.io/library/external" / f"e{i}"):
            assert_tag(mnt, store, "docker.io/library/external", f"e{i}", hx)


# ------------------------------------------------------------------ issue 13: no change waits for a deletion
def test_no_change_waits_for_the_deletion_of_a_big_image(store, mounter):
    """`rm` of a big image's last tag deletes it before returning, but after the store lock: while that
    deletion runs, lookups, `ln -s` and `rm` of other images' last tags (each deleting its own image) go
    through and return, and the kernel no longer shows what each `rm` removed. Proved by order, not by
    timing: every other change has returned while the big image is still being deleted (its trash
    entry is there and its `rm` has not returned). With the lock held through the deletion (before
    issue 13), the first `ln -s` waited for the whole deletion, so the trash entry was gone by then."""
    import threading

    from helpers import bookkeeping, eventually

    repo, small_repo = "docker.io/library/big", "docker.io/library/small"
    big = store.add_digest("big")
    store.tag(repo, "t", big)
    # 200,000 files: a deletion of seconds, against milliseconds for the changes below.
    junk = store.content_dir(big) / "junk"
    for d in range(200):
        sub = junk / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(1000):
            os.close(os.open(sub / f"f{f:04}", os.O_CREAT | os.O_WRONLY, 0o644))
    smalls = store.add_tagged("small", small_repo, 3)
    keeper = store.add_digest("keeper")
    store.tag(small_repo, "keep", keeper)
    # Image trees served by the main mount: with trees mounted of their own, the kernel holds each
    # image (its `rootfs` mount point), so a collection keeps it until the kernel forgets it and the
    # deletion runs in that FORGET, never in `rm`.
    mnt = mounter(store, extra_args=["--no-rootfs-mounts"]).mnt
    trash = bookkeeping(store.root) / "trash"

    def big_in_trash():
        return [e for e in (os.listdir(trash) if trash.is_dir() else []) if e.endswith(big[:12])]

    returned = threading.Event()
    errors = []

    def rm_big():
        try:
            os.unlink(T(mnt, repo, "t"))
        except OSError as e:
            errors.append(e)
        finally:
            returned.set()

    th = threading.Thread(target=rm_big)
    th.start()
    try:
        # The deletion has begun: the directory left the store for the trash.
        assert eventually(lambda: not store.content_dir(big).exists() and big_in_trash(), timeout=60), \
            "the big image never reached the trash"
        # (Its invalidations are sent once the lock is released, a moment after the rename.)
        assert eventually(lambda: not os.path.lexists(mnt / "digests" / big), timeout=10), \
            "the big image is still shown while it is deleted"
        for i, hx in enumerate(smalls):
            tag = T(mnt, small_repo, f"v{i}")
            assert os.readlink(tag).endswith(f"digests/{hx}")            # lookups
            if i > 0:
                # In use through the mount: kept in the trash until the kernel forgets it (in a
                # FORGET). Small 0 is not: its `rm` deletes it.
                assert os.path.isdir(mnt / "digests" / hx / "rootfs")
            os.symlink(keeper, T(mnt, small_repo, f"new{i}"))           # ln -s
            os.unlink(tag)                                               # rm of a last tag
            assert not store.content_dir(hx).exists(), f"small {i}: not deleted before rm returned"
            assert not os.path.lexists(mnt / "digests" / hx), f"small {i}: still shown after rm returned"
            assert not os.path.lexists(tag)
        still_deleting = bool(big_in_trash()) and not returned.is_set()
        assert still_deleting, ("every other change waited for the big image's deletion: its trash entry was "
                                "gone when they returned")
    finally:
        th.join(120)
    assert returned.is_set() and not errors, errors
    assert not big_in_trash() and not store.content_dir(big).exists(), "deleted when its rm returned"
    assert not os.path.lexists(mnt / "digests" / big)
    assert sorted(os.listdir(T(mnt, small_repo))) == ["keep", "new0", "new1", "new2"]
