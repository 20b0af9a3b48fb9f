"""Concurrency stress (DESIGN.md section 4): 8 processes doing random ln -s / rm / mv over 20 tags in 3
repositories and 5 digests for IMAGEFS_STRESS_SECONDS (default 20), then the store's invariants on disk."""

from __future__ import annotations

import json
import os

import pytest

from stressworld import StressWorld, mount_consistency, start_workers

SECONDS = float(os.environ.get("IMAGEFS_STRESS_SECONDS", "20"))
WORKERS = int(os.environ.get("IMAGEFS_STRESS_WORKERS", "8"))


@pytest.mark.slow
def test_concurrent_tagging_stress(store, mounter, workdir):
    w = StressWorld(store)
    m = mounter(store)
    procs = start_workers(m.mnt, w.spec(), WORKERS, SECONDS, 1, workdir)
    results, crashed = [], []
    for p, out in procs:
        try:
            p.wait(timeout=SECONDS + 90)
        except Exception:  # noqa: BLE001
            p.kill()
            p.wait()
            crashed.append(f"worker {out.name} hung (a FUSE request never answered?)")
            continue
        if p.returncode != 0 or not out.exists():
            crashed.append(f"worker {out.name} rc={p.returncode}: {p.stderr.read().decode()[-500:]}")
        else:
            results.append(json.loads(out.read_text()))
    assert not crashed, "\n".join(crashed)
    counts = {}
    for r in results:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
    print("operation counts:", json.dumps(counts, sort_keys=True))
    unexpected = [u for r in results for u in r["unexpected"]]
    assert not unexpected, f"{sum(r['n_unexpected'] for r in results)} unexpected errors, e.g.:\n" + \
        "\n".join(unexpected[:20])
    assert counts.get("symlink:ok", 0) > 50 and counts.get("unlink:ok", 0) > 10, counts
    # the mount agrees with the store while still mounted
    v = mount_consistency(m.mnt, store.root)
    assert not v, "\n".join(v)
    rc = m.stop()
    assert rc == 0, f"daemon exit code {rc}"
    v = w.violations()
    assert not v, "store invariants violated after the stress:\n" + "\n".join(v)
    assert "panicked" not in m.log_text(), m.log_tail(40)
