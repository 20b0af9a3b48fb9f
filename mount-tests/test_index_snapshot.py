"""The index snapshot (src/store/snapshot.rs): a remount takes the repository directories it
holds unchanged from it instead of reading every tag link, and still shows exactly what is
on disk after another writer (hypeman) changed tags between the mounts, right after the
snapshot was written."""
from __future__ import annotations

import os
import re
import time

from helpers import bookkeeping, eventually, mount_view, mount_target, scan_store

# The racy window of the snapshot's trust rule (snapshot::RACY_NS), with a margin.
RACY = 2.3


def raw_view(root) -> dict:
    """(repo, tag) -> the readlink the mount must show, for every tag of the raw store."""
    st = scan_store(root)
    return {k: mount_target(k[0], hx) for k, hx in st.tags.items() if hx and hx in st.locations}


def from_snapshot(m) -> int:
    """How many repository directories the mount's scan took from the snapshot."""
    found = re.findall(r"(\d+) repository directories from the index snapshot", m.log_text())
    assert found, f"no snapshot line in the log:\n{m.log_tail(20)}"
    return int(found[-1])


def test_remount_after_hypeman_retags_shows_the_raw_store(store, mounter):
    hx = [store.add_digest(f"snap{i}") for i in range(4)]
    repos = ["docker.io/library/a", "reg.example.com/team/b", "reg.example.com/team/b/c",
             "localhost:5000/d"]
    for r in repos:
        for t in range(6):
            store.tag(r, f"v{t}", hx[t % 4])
    ldir = store.add_digest("snap-legacy", layout="legacy", repo="old.example.com/l")
    store.tag("old.example.com/l", "latest", ldir)
    # Older than the racy window of the first mount's scan: all of it goes in the snapshot.
    time.sleep(RACY)
    snap = bookkeeping(store.root) / "index-snapshot"
    m = mounter(store)
    assert mount_view(m.mnt) == raw_view(store.root)
    assert eventually(snap.exists, timeout=10), "no index snapshot written"
    m.stop()

    # hypeman, within the same second as the snapshot: its retag (unlink + symlink of the
    # same name), rm, a new tag, a new repository, a legacy retag.
    root = store.root
    t = root / "repositories" / "docker.io/library/a" / "v0"
    os.unlink(t)
    os.symlink("../../../../content/" + hx[3], t)
    os.unlink(root / "repositories" / "reg.example.com/team/b/c" / "v1")
    store.tag("reg.example.com/team/b", "new", hx[2])
    store.tag("reg.example.com/team/e", "v1", hx[1])
    lt = root / "old.example.com/l" / "latest"
    os.unlink(lt)
    ldir2 = store.add_digest("snap-legacy2", layout="legacy", repo="old.example.com/l")
    os.symlink(ldir2, lt)

    m2 = mounter(store)
    want = raw_view(root)
    assert want[("docker.io/library/a", "v0")].endswith(hx[3])
    assert mount_view(m2.mnt) == want
    # The directories nobody changed came from the snapshot (the test is not a full scan).
    assert from_snapshot(m2) >= 3, m2.log_tail(20)
    m2.stop()

    # Once more, the changes now old enough to be trusted in their turn.
    time.sleep(RACY)
    m3 = mounter(store)
    assert mount_view(m3.mnt) == want
    assert from_snapshot(m3) >= 3
