"""Crash loop (DESIGN.md section 4, crash safety): start the daemon, run a stream of ln -s / rm / mv, kill -9
the daemon at a random moment, lazily unmount the dead mount, remount (which repairs), check the invariants:
no tagged digest lost, nothing in trash, no half-written tag, no collectable untagged digest whose tag
was removed. IMAGEFS_CRASH_ITERATIONS (default 20), IMAGEFS_CRASH_SEED."""

from __future__ import annotations

import os
import random
import time

import pytest

from helpers import force_unmount, is_fuse_mounted
from stressworld import StressWorld, mount_consistency, start_workers

ITERATIONS = int(os.environ.get("IMAGEFS_CRASH_ITERATIONS", "20"))
SEED = int(os.environ.get("IMAGEFS_CRASH_SEED", str(int(time.time()))))


@pytest.mark.slow
def test_crash_loop(store, mounter, workdir):
    rnd = random.Random(SEED)
    print(f"IMAGEFS_CRASH_SEED={SEED}")
    w = StressWorld(store, key="crash")
    mnt = workdir / "mnt"
    mnt.mkdir()
    history = []
    for i in range(ITERATIONS + 1):
        m = mounter(store, mnt)
        v = w.violations() + mount_consistency(mnt, store.root)
        assert not v, (f"iteration {i} (seed {SEED}; previous: {history[-1] if history else None}): "
                       f"after remount/repair:\n" + "\n".join(v) + "\n--- repair log:\n" + m.log_tail(30))
        if i == ITERATIONS:
            assert m.stop() == 0
            break
        st_digests = set(os.listdir(mnt / "digests"))
        if len(st_digests & set(w.pool)) < 3:
            assert m.stop() == 0
            w.replenish()
            m = mounter(store, mnt)
        procs = start_workers(mnt, w.spec(), rnd.choice([2, 4, 8]), 60, 1000 + i, workdir, crash=True)
        delay = rnd.uniform(0.02, 1.0)
        time.sleep(delay)
        m.kill9()
        for p, _ in procs:
            try:
                p.wait(timeout=15)
            except Exception:  # noqa: BLE001
                p.kill()
                p.wait()
                raise AssertionError(f"iteration {i}: a worker hung after the daemon was killed")
        force_unmount(str(mnt))
        assert not is_fuse_mounted(mnt)
        history.append(f"iteration {i}: killed after {delay:.3f}s")
