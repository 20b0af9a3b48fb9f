"""Issue 13, listing tags: a listing of a tags/ directory or of digests/ makes no inode per entry.

The kernel lists with READDIRPLUS at offset 0; every entry of such a reply but `.` and `..` becomes
a kernel inode and an entry of the daemon's inode table (a million of them after listing a million
tags). imagefs answers that first reply with `.`, `..` and the subdirectories only, so the tags
come by plain READDIR. Checked through `.imagefs/metrics`: the inode-table gauge, and the LOOKUPs
an lstat of every tag costs afterwards (none had been handed out). Then that the listing is right
(os.scandir, `find -type l`, `ls -l`, readlink) and follows our own and another writer's changes,
in both store layouts, with more tags than one reply holds.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from pathlib import Path

import pytest

from helpers import eventually, mount_target, sh

N_TAGS = 600   # several READDIR replies (256 entries at most each, 32 KiB)
N_DIGESTS = 20


def metrics(mnt) -> dict:
    v = {}
    for line in (Path(mnt) / ".imagefs" / "metrics").read_text().splitlines():
        m = re.match(r'imagefs_requests_total\{op="(\w+)"\} (\d+)$', line)
        if m:
            v[m[1]] = int(m[2])
        m = re.match(r"(imagefs_\w+) (\d+)$", line)
        if m:
            v[m[1]] = int(m[2])
    return v


def inodes(mnt) -> int:
    v = metrics(mnt)
    assert "imagefs_inodes" in v, "no imagefs_inodes gauge in .imagefs/metrics"
    return v["imagefs_inodes"]


def tag_name(i: int) -> str:
    return f"release-{i:04d}-{'x' * (i % 17)}"


@pytest.fixture(params=["content", "legacy"])
def big(request, store, mounter):
    """A repository of N_TAGS tags over N_DIGESTS digests, and one subdirectory (a repository
    below it, one tag), in one layout; mounted. (repo, {tag: hex}, mnt, store)."""
    layout = request.param
    repo = "docker.io/library/many" if layout == "content" else "legacy.example.com/acme/many"
    hexes = [store.add_digest(f"list-{layout}-{i}", layout=layout, repo=repo) for i in range(N_DIGESTS)]
    tags = {}
    for i in range(N_TAGS):
        tags[tag_name(i)] = hexes[i % N_DIGESTS]
        store.tag(repo, tag_name(i), hexes[i % N_DIGESTS], layout)
    sub_hex = store.add_digest(f"list-{layout}-sub", layout=layout, repo=repo + "/sub")
    store.tag(repo + "/sub", "v1", sub_hex, layout)
    # No image-tree mounts: the daemon mounting them over digests/<hex>/rootfs after start
    # makes the kernel hold inodes of its own, which would blur the inode count.
    m = mounter(store, extra_args=["--no-rootfs-mounts"])
    return repo, tags, Path(m.mnt), store, layout


def scandir(d: Path) -> dict:
    """name -> (is_symlink, is_dir without following, d_ino) of a listing."""
    with os.scandir(d) as it:
        return {e.name: (e.is_symlink(), e.is_dir(follow_symlinks=False), e.inode()) for e in it}


def test_listing_makes_no_inode_per_tag(big):
    repo, tags, mnt, store, _ = big
    rdir = mnt / "tags" / repo
    os.stat(rdir)  # the repository directory's own inode (and its parents') first
    before = inodes(mnt)
    seen = scandir(rdir)
    assert set(seen) == set(tags) | {"sub"}, sorted(set(seen) ^ (set(tags) | {"sub"}))
    bad = [n for n, (link, isdir, ino) in seen.items() if n != "sub" and not (link and not isdir and ino)]
    assert not bad, f"not listed as a symlink with a number: {bad[:5]}"
    assert seen["sub"][:2] == (False, True)
    r = sh("find", rdir, "-mindepth", "1", "-maxdepth", "1", "-type", "l")
    assert r.returncode == 0, r.stderr
    assert sorted(Path(p).name for p in r.stdout.split()) == sorted(tags)
    # digests/ likewise: no inode per digest (it would also hold the digest's image).
    assert set(os.listdir(mnt / "digests")) >= set(tags.values())
    made = inodes(mnt) - before
    assert made <= 5, f"listing {len(tags)} tags and digests/ made {made} inodes (sub/ and the metrics file are 2)"

    # None was handed out: an lstat of each asks the daemon. (Not the other way round: a
    # drop_caches elsewhere on the machine makes the kernel forget, and ask again.)
    m0 = metrics(mnt)
    for t in tags:
        os.lstat(rdir / t)
    looked = metrics(mnt)["lookup"] - m0["lookup"]
    assert looked >= len(tags), f"lstat of {len(tags)} tags after the listing: {looked} LOOKUPs"


def test_listing_is_complete_and_follows_changes(big):
    repo, tags, mnt, store, layout = big
    rdir = mnt / "tags" / repo
    r = sh("ls", "-l", rdir)
    assert r.returncode == 0, r.stderr
    got = {}
    for line in r.stdout.splitlines()[1:]:  # "total N" first
        m = re.match(r"^(\S)\S* .* (\S+) -> (\S+)$", line)
        if m:
            assert m[1] == "l", line
            got[m[2]] = m[3]
        else:
            assert line.startswith("d") and line.endswith(" sub"), line
    assert got == {t: mount_target(repo, hx) for t, hx in tags.items()}
    for t in list(tags)[::37]:
        assert os.readlink(rdir / t) == mount_target(repo, tags[t])

    # Our own changes: ln -s, rm, mv show in the next listing at once.
    first, second = tag_name(0), tag_name(1)
    os.symlink(tags[first], rdir / "added")
    os.unlink(rdir / first)
    os.rename(rdir / second, rdir / "moved")
    want = (set(tags) - {first, second}) | {"added", "moved", "sub"}
    seen = scandir(rdir)
    assert set(seen) == want, sorted(set(seen) ^ want)
    assert seen["added"][0] and seen["moved"][0]
    assert os.readlink(rdir / "moved") == mount_target(repo, tags[second])

    # Another writer's: a tag made and one removed in the store show within the listing TTL.
    store.tag(repo, "other", tags[tag_name(2)], layout)
    gone = tag_name(3)
    os.unlink((store.root / "repositories" / repo / gone) if layout == "content" else (store.root / repo / gone))
    want = (want | {"other"}) - {gone}
    assert eventually(lambda: set(scandir(rdir)) == want, timeout=5.0), sorted(set(scandir(rdir)) ^ want)
    time.sleep(0.1)
    assert os.readlink(rdir / "other") == mount_target(repo, tags[tag_name(2)])


SYS_getdents64 = 217  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)


def getdents(path: Path, bufsize: int) -> list[tuple[str, int, int]]:
    """(name, d_ino, d_type) of every entry, `.` and `..` included, read `bufsize` bytes at a time."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = ctypes.create_string_buffer(bufsize)
        out = []
        while (n := _libc.syscall(SYS_getdents64, fd, buf, bufsize)) != 0:
            if n < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            raw, pos = buf.raw, 0
            while pos < n:
                ino = int.from_bytes(raw[pos:pos + 8], "little")
                reclen = int.from_bytes(raw[pos + 16:pos + 18], "little")
                name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode()
                out.append((name, ino, raw[pos + 18]))
                pos += reclen
        return out
    finally:
        os.close(fd)


DT_DIR, DT_LNK = 4, 10


def test_dot_entries_and_resumed_listings_keep_their_numbers(big):
    """The first reply's `.` and `..` (READDIRPLUS; their attributes are made up, the kernel
    reads none) still carry the directory's number and type, and a listing read a few entries
    at a time gives every name once, tags as symlinks with the numbers a full read gives."""
    repo, tags, mnt, _, _ = big
    rdir = mnt / "tags" / repo
    st = os.stat(rdir)
    small = getdents(rdir, 300)
    assert small[:2] == [(".", st.st_ino, DT_DIR), ("..", st.st_ino, DT_DIR)], small[:2]
    names = [n for n, _, _ in small[2:]]
    assert sorted(names) == sorted(set(tags) | {"sub"}) and len(names) == len(set(names))
    assert all(t == DT_LNK and ino for n, ino, t in small[2:] if n != "sub")
    # Read again in one go (the kernel's cached listing, or the daemon's again): the same.
    assert getdents(rdir, 65536) == small
