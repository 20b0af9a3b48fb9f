"""Issue 10, bugs 8-11 and the smaller rename ones: moves and removals of tags and repository
directories that failed halfway, left the kernel's cached tag text stale, or let a removed or
moved name come back after a remount. Each test failed on the code before its fix."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from helpers import (
    RENAME_EXCHANGE, eventually, expect_errno, imagefs_bin, mount_target, renameat2, require,
    sh, snapshot,
)

HOST = "example.com"


def T(mnt, repo, tag=None) -> Path:
    p = Path(mnt) / "tags" / repo
    return p / tag if tag else p


def remount(store, mounter, m):
    r = sh(imagefs_bin(), "umount", m.mnt)
    assert r.returncode == 0, r.stderr
    return mounter(store)


# ------------------------------------------------------------------ bug 8
@pytest.mark.parametrize("layout", ["content", "legacy"])
def test_bug8_tags_of_a_moved_repository_read_at_their_new_depth(store, mounter, layout):
    old = f"{HOST}/r/m"
    if layout == "content":
        a, b = store.add_digest("mv8-a"), store.add_digest("mv8-b")
    else:
        a = store.add_digest("mv8-a", layout="legacy", repo=old)
        b = store.add_digest("mv8-b", layout="legacy", repo=old)
    store.tag(old, "1", a)
    store.tag(old, "2", b)
    mnt = mounter(store).mnt
    assert os.readlink(T(mnt, old, "1")) == mount_target(old, a)
    same = f"{HOST}/r/n"
    r = sh("mv", "-T", T(mnt, old), T(mnt, same))
    assert r.returncode == 0, r.stderr
    assert os.readlink(T(mnt, same, "1")) == mount_target(same, a)
    assert os.readlink(T(mnt, same, "2")) == mount_target(same, b)
    deep = f"{HOST}/q/z/deep/n"
    assert sh("mkdir", "-p", T(mnt, f"{HOST}/q/z/deep")).returncode == 0
    r = sh("mv", "-T", T(mnt, same), T(mnt, deep))
    assert r.returncode == 0, r.stderr
    for tag, hx in (("1", a), ("2", b)):
        assert os.readlink(T(mnt, deep, tag)) == mount_target(deep, hx), \
            "the kernel kept the tag's text from before the move"
        assert (T(mnt, deep, tag) / "metadata.json").is_file()
    # And back up again.
    r = sh("mv", "-T", T(mnt, deep), T(mnt, old))
    assert r.returncode == 0, r.stderr
    assert os.readlink(T(mnt, old, "1")) == mount_target(old, a)


def test_bug8_a_repository_moved_by_another_writer_reads_at_its_new_depth(store, mounter):
    old = f"{HOST}/r/m"
    a = store.add_digest("mv8w-a", layout="legacy", repo=old)
    store.tag(old, "1", a)
    mnt = mounter(store).mnt
    assert os.readlink(T(mnt, old, "1")) == mount_target(old, a)
    deep = f"{HOST}/q/z/deep/n"
    (store.root / f"{HOST}/q/z/deep").mkdir(parents=True)
    os.rename(store.root / old, store.root / deep)
    assert eventually(lambda: os.path.lexists(T(mnt, deep, "1")), timeout=3)
    assert os.readlink(T(mnt, deep, "1")) == mount_target(deep, a)
    assert not os.path.lexists(T(mnt, old))


# ------------------------------------------------------------------ bug 9
def both_halves(store):
    """example.com/a with a content tag `c` and a legacy tag `l` (its own legacy digest)."""
    repo = f"{HOST}/a"
    c = store.add_digest("mv9-c")
    lx = store.add_digest("mv9-l", layout="legacy", repo=repo)
    store.tag(repo, "c", c)
    store.tag(repo, "l", lx)
    return repo, c, lx


def test_bug9_a_repository_move_blocked_by_a_stray_file_changes_nothing(store, mounter):
    repo, c, lx = both_halves(store)
    (store.root / f"{HOST}/b").write_text("stray\n")
    mnt = mounter(store).mnt
    before = snapshot(store.root)
    expect_errno(errno.EEXIST, os.rename, T(mnt, repo), T(mnt, f"{HOST}/b"))
    assert snapshot(store.root) == before, "a failed move changed the store"
    assert os.readlink(T(mnt, repo, "c")) == mount_target(repo, c)
    assert os.readlink(T(mnt, repo, "l")) == mount_target(repo, lx)
    assert not os.path.lexists(T(mnt, f"{HOST}/b"))


def test_bug9_a_repository_move_whose_legacy_half_fails_is_rolled_back(store, mounter):
    repo, c, lx = both_halves(store)
    legacy = store.root / repo
    r = sh("chattr", "+i", legacy) if shutil.which("chattr") else None
    require(r is not None and r.returncode == 0, "needs chattr +i (root, ext4/xfs/tmpfs)")
    try:
        mnt = mounter(store).mnt
        os.mkdir(T(mnt, f"{HOST}/q"))
        before = snapshot(store.root)
        # The content half moves first, then the legacy one fails (EPERM: immutable).
        expect_errno(errno.EPERM, os.rename, T(mnt, repo), T(mnt, f"{HOST}/q/deep"))
        after = snapshot(store.root)
    finally:
        sh("chattr", "-i", legacy)
    assert after == before, "a failed move changed the store"
    assert os.readlink(T(mnt, repo, "c")) == mount_target(repo, c)
    assert os.readlink(T(mnt, repo, "l")) == mount_target(repo, lx)
    assert not os.path.lexists(T(mnt, f"{HOST}/q/deep"))


# ------------------------------------------------------------------ bug 10
def test_bug10_a_repository_cannot_get_a_digest_shaped_name(store, mounter):
    bar = f"{HOST}/bar"
    hx = store.add_digest("mv10", layout="legacy", repo=bar)
    store.tag(bar, "v1", hx)
    m = mounter(store)
    mnt = m.mnt
    os.mkdir(T(mnt, f"{HOST}/foo"))
    shaped = "ab" * 32
    expect_errno(errno.EINVAL, os.rename, T(mnt, bar), T(mnt, f"{HOST}/foo/{shaped}"))
    expect_errno(errno.EINVAL, os.mkdir, T(mnt, f"{HOST}/foo/{shaped}"))
    expect_errno(errno.EINVAL, os.mkdir, T(mnt, f"{HOST}/{shaped}"))
    m2 = remount(store, mounter, m)
    assert os.readlink(T(m2.mnt, bar, "v1")) == mount_target(bar, hx)
    assert sorted(os.listdir(m2.mnt / "digests")) == [hx]


# ------------------------------------------------------------------ bug 11
def twins(store):
    """example.com/r:t in both layouts: the content one (shown) and a legacy one (shadowed),
    the only tag of its legacy digest."""
    repo = f"{HOST}/r"
    c = store.add_digest("mv11-c")
    lx = store.add_digest("mv11-l", layout="legacy", repo=repo)
    store.tag(repo, "t", c)
    store.tag(repo, "t", lx)
    return repo, c, lx


def test_bug11_a_removed_tag_does_not_come_back_from_the_other_layout(store, mounter):
    repo, c, lx = twins(store)
    m = mounter(store)
    assert os.readlink(T(m.mnt, repo, "t")) == mount_target(repo, c)
    os.unlink(T(m.mnt, repo, "t"))
    assert not os.path.lexists(store.legacy_tag_path(repo, "t")), "the shadowed twin stayed"
    assert not store.legacy_dir(repo, lx).exists(), "the twin's only image was not collected"
    m2 = remount(store, mounter, m)
    assert not os.path.lexists(T(m2.mnt, repo, "t")), "the removed tag came back"


def test_bug11_a_moved_tag_does_not_come_back_from_the_other_layout(store, mounter):
    repo, c, lx = twins(store)
    m = mounter(store)
    r = sh("mv", "-T", T(m.mnt, repo, "t"), T(m.mnt, repo, "u"))
    assert r.returncode == 0, r.stderr
    assert not os.path.lexists(store.legacy_tag_path(repo, "t")), "the shadowed twin stayed"
    m2 = remount(store, mounter, m)
    assert not os.path.lexists(T(m2.mnt, repo, "t")), "the moved name came back"
    assert os.readlink(T(m2.mnt, repo, "u")) == mount_target(repo, c)


# ------------------------------------------------------------------ smaller
def test_a_repository_path_past_255_bytes_is_enametoolong(store, mounter):
    repo = "docker.io/library/x"
    hx = store.add_digest("mv-long")
    store.tag(f"{repo}/y", "t", hx)
    mnt = mounter(store).mnt
    # The new name fits (254 bytes), the repository under it does not (256).
    long = "docker.io/library/" + "x" * 236
    expect_errno(errno.ENAMETOOLONG, os.rename, T(mnt, repo), T(mnt, long))
    assert os.readlink(T(mnt, f"{repo}/y", "t")) == mount_target(f"{repo}/y", hx)


def test_exchanging_a_tag_and_a_directory_is_einval_both_ways(store, mounter):
    repo = f"{HOST}/x"
    hx = store.add_digest("mv-xchg")
    store.tag(repo, "t", hx)
    mnt = mounter(store).mnt
    os.mkdir(T(mnt, repo, "d"))
    before = snapshot(store.root)
    expect_errno(errno.EINVAL, renameat2, T(mnt, repo, "t"), T(mnt, repo, "d"), RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, renameat2, T(mnt, repo, "d"), T(mnt, repo, "t"), RENAME_EXCHANGE)
    assert snapshot(store.root) == before
