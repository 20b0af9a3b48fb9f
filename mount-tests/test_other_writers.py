"""Other writers (DESIGN.md 4): changes made directly in the store while it is mounted show
in the mount within a second, with the kernel's caches dropped; eager GC never removes a
digest another writer tagged meanwhile; imagefs never collects on their behalf."""
import os
import functools
import time

import helpers
from helpers import flock_store

WITHIN = 1.0


eventually = functools.partial(helpers.eventually, timeout=WITHIN)


def T(mnt, repo, tag):
    return mnt / "tags" / repo / tag


def test_cached_tag_retargeted_and_removed_by_another_writer(store, mounter):
    a = store.add_digest("ow-a")
    b = store.add_digest("ow-b")
    store.tag("docker.io/library/ow", "t", a)
    store.tag("docker.io/library/ow", "gone", a)
    mnt = mounter(store).mnt
    # The kernel has both cached now.
    assert os.readlink(T(mnt, "docker.io/library/ow", "t")).endswith(a)
    assert os.path.isdir(T(mnt, "docker.io/library/ow", "gone"))
    link = store.root / "repositories/docker.io/library/ow/t"
    with flock_store(store.root):
        tmp = link.with_name(".retarget")
        os.symlink(os.readlink(link).replace(a, b), tmp)
        os.rename(tmp, link)
        os.unlink(store.root / "repositories/docker.io/library/ow/gone")
    assert eventually(lambda: os.readlink(T(mnt, "docker.io/library/ow", "t")).endswith(b)), \
        "a tag another writer retargeted still shows its old digest"
    assert eventually(lambda: not os.path.lexists(T(mnt, "docker.io/library/ow", "gone")))
    # Not collected on the other writer's behalf: a is untagged now but stays.
    assert (store.root / "content" / a).is_dir()
    assert eventually(lambda: a in os.listdir(mnt / "digests"))


def test_digest_and_repository_added_by_another_writer(store, mounter):
    mnt = mounter(store).mnt
    assert os.listdir(mnt / "tags") == []
    with flock_store(store.root):
        hx = store.add_digest("ow-new")
        store.tag("quay.io/team/app", "v1", hx)
    assert eventually(lambda: os.path.lexists(T(mnt, "quay.io/team/app", "v1")))
    assert os.readlink(T(mnt, "quay.io/team/app", "v1")) == f"../../../../digests/{hx}"
    assert (mnt / "digests" / hx / "metadata.json").is_file()
    # And it can be tagged through the mount right away.
    os.symlink(hx, T(mnt, "quay.io/team/app", "v2"))


def test_gc_never_removes_a_digest_another_writer_tagged_meanwhile(store, mounter):
    mnt = mounter(store).mnt
    os.makedirs(mnt / "tags/docker.io/library/race")
    for i in range(20):
        hx = store.add_digest(f"race-{i}")
        os.symlink(hx, T(mnt, "docker.io/library/race", f"mine{i}"))
        # Another writer tags it too, then our rm of the last tag we knew of comes at once.
        with flock_store(store.root):
            store.tag("elsewhere.io/x", f"theirs{i}", hx)
        os.unlink(T(mnt, "docker.io/library/race", f"mine{i}"))
        assert (store.root / "content" / hx).is_dir(), f"iteration {i}: a tagged digest was collected"
    assert eventually(lambda: len(os.listdir(mnt / "tags/elsewhere.io/x")) == 20)


def test_cached_listings_follow_other_writers(store, mounter):
    """Listings are cached by the kernel (no OPENDIR): another writer's changes must still
    show in readdir of tags/ repositories and of digests/ within a second."""
    a = store.add_digest("ls-a")
    store.tag("docker.io/library/ls", "one", a)
    mnt = mounter(store).mnt
    repo = mnt / "tags/docker.io/library/ls"
    # Fill the kernel's caches.
    assert os.listdir(repo) == ["one"]
    assert os.listdir(mnt / "digests") == [a]
    with flock_store(store.root):
        b = store.add_digest("ls-b")
        store.tag("docker.io/library/ls", "two", b)
        os.unlink(store.root / "repositories/docker.io/library/ls/one")
    assert eventually(lambda: sorted(os.listdir(repo)) == ["two"]), os.listdir(repo)
    assert eventually(lambda: sorted(os.listdir(mnt / "digests")) == sorted([a, b]))
    # Our own GC empties digests/ before rm returns, cached listing or not.
    os.unlink(repo / "two")
    assert b not in os.listdir(mnt / "digests")
    # And a removal by another writer (imagefs gc would do this) leaves the listing too.
    with flock_store(store.root):
        import shutil
        shutil.rmtree(store.root / "content" / a)
    assert eventually(lambda: os.listdir(mnt / "digests") == [])


def test_a_pull_that_finishes_shows_rootfs(store, mounter):
    """A pending digest's listing has no rootfs/; once the puller marks it ready, the
    (cached) listing shows it within a pending digest's attribute timeout (a quarter of a
    second: with the 1 s of other nodes it took a second, the whole of the promise, and a pull
    racing listings was seen late)."""
    hx = store.add_digest("pull", status="pending")
    mnt = mounter(store).mnt
    d = mnt / "digests" / hx
    assert "rootfs" not in os.listdir(d) and "rootfs.erofs" not in os.listdir(d)
    md = store.root / "content" / hx / "metadata.json"
    time.sleep(0.01)
    with flock_store(store.root):
        tmp = md.with_name(".metadata.json.tmp")
        tmp.write_bytes(md.read_bytes().replace(b'"pending"', b'"ready"'))
        os.rename(tmp, md)
    t0 = time.monotonic()
    assert eventually(lambda: {"rootfs", "rootfs.erofs"} <= set(os.listdir(d)), timeout=2.5), os.listdir(d)
    took = time.monotonic() - t0
    assert took < 0.6, f"a finished pull showed rootfs/ after {took:.2f} s"
    assert os.listdir(d / "rootfs")
