"""MNT/.imagefs/metrics: Prometheus text format, values that follow what happened."""
import errno
import os
import re

import pytest

LINE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"\})? (\d+)$')


def scrape(mnt):
    text = (mnt / ".imagefs/metrics").read_text()
    values, helps, types = {}, set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            types.add(line.split()[2])
        else:
            m = LINE.match(line)
            assert m, f"not Prometheus text format: {line!r}"
            values[m.group(1) + (m.group(2) or "")] = int(m.group(3))
    for name in {k.split("{")[0] for k in values}:
        assert name in types and name in helps, f"{name} lacks # TYPE/# HELP"
    return values


def test_metrics_follow_tags_collections_and_in_use_images(store, mounter):
    a = store.add_digest("met-a")
    b = store.add_digest("met-b")
    store.tag("docker.io/library/met", "a", a)
    store.tag("docker.io/library/met", "b", b)
    mnt = mounter(store).mnt
    v = scrape(mnt)
    assert v["imagefs_tags"] == 2 and v["imagefs_digests"] == 2
    size_a = sum(os.lstat(p).st_blocks * 512 for p in (store.root / "content" / a).iterdir())
    assert v["imagefs_store_bytes"] >= size_a
    assert v["imagefs_collections_total"] == 0
    # b is in use (an open file) when its last tag goes; a is not.
    fd = os.open(mnt / "digests" / b / "rootfs.erofs", os.O_RDONLY)
    try:
        os.unlink(mnt / "tags/docker.io/library/met/a")
        os.unlink(mnt / "tags/docker.io/library/met/b")
        v = scrape(mnt)
        assert v["imagefs_tags"] == 0 and v["imagefs_digests"] == 0
        assert v["imagefs_collections_total"] == 2
        assert v["imagefs_in_use_only_images"] == 1
        assert v["imagefs_reclaimed_bytes_total"] >= size_a
    finally:
        os.close(fd)
    with pytest.raises(OSError) as e:
        os.symlink("nope", mnt / "tags/docker.io/library/met/x")
    assert e.value.errno == errno.ENOENT
    v = scrape(mnt)
    assert v['imagefs_errors_total{errno="2"}'] >= 1
    assert v['imagefs_requests_total{op="symlink"}'] >= 1
    assert v['imagefs_requests_total{op="unlink"}'] == 2


def test_metrics_file_is_read_only(store, mounter):
    mnt = mounter(store).mnt
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            os.open(mnt / ".imagefs/metrics", flags)
        assert e.value.errno in (errno.EROFS, errno.EACCES)
