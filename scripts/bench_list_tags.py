#!/usr/bin/env python3
"""Listing every tag through the mount, binaries alternated: wall and daemon CPU per repository.

    python3 scripts/bench_list_tags.py --store STORE [--mnt DIR] [--reps 6] [--floor FLOOR] BIN [BIN...]

STORE is a store kept by `scripts/bench_tags.py --keep` (its `store-<n>` directory, tags in
`repositories/bench.local/repoNNNN`). Each repetition mounts STORE with each binary in turn
(`--rootfs-mounts none`: no tree mounts being made beside the listing), lists every
repository with os.scandir as bench_tags.py's list_all does (the first listing after the
mount), then the raw store's the same way (list_all_raw), and unmounts. Reported per
repository: wall time, the daemon's CPU time (its threads' /proc/PID/task/*/schedstat, which
the machine's load moves less than wall time), the ratio to the raw listing, and the FUSE
requests from .imagefs/metrics. Medians at the end. With `--floor` (the binary of
examples/list_floor.rs), each repetition also lists through a FUSE server that does no work:
the least any FUSE server can take for this listing here. Run it under the shared benchmark lock
(flock /tmp/imagefs-bench.lock ...).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import subprocess
import tempfile
import time

from bench_tags import wait_for_dir


def cpu_ns(pid: int) -> int:
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def requests(mnt: str) -> dict:
    v = {}
    try:
        with open(f"{mnt}/.imagefs/metrics") as fh:
            text = fh.read()
    except OSError:
        return v
    for line in text.splitlines():
        m = re.match(r'imagefs_requests_total\{op="(\w+)"\} (\d+)$', line)
        if m:
            v[m[1]] = int(m[2])
    return v


def list_all(root: str, repos: list[str]) -> int:
    seen = 0
    for r in repos:
        with os.scandir(f"{root}/{r}") as it:
            seen += sum(1 for e in it if e.is_symlink())
    return seen


def one(binary: str, store: str, mnt: str, repos: list[str], rootfs_mounts: str = "none", settle: float = 0.3) -> dict:
    p = subprocess.Popen([binary, "mount", "--store", store, mnt, "--foreground", "--rootfs-mounts", rootfs_mounts],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, RUST_LOG="warn"), start_new_session=True)
    try:
        wait_for_dir(f"{mnt}/tags/bench.local", p, 120, binary)
        time.sleep(settle)
        r0, c0 = requests(mnt), cpu_ns(p.pid)
        t0 = time.perf_counter_ns()
        seen = list_all(f"{mnt}/tags", repos)
        wall = time.perf_counter_ns() - t0
        c1, r1 = cpu_ns(p.pid), requests(mnt)
        t0 = time.perf_counter_ns()
        raw_seen = list_all(f"{store}/repositories", repos)
        raw = time.perf_counter_ns() - t0
        if seen != raw_seen:
            raise RuntimeError(f"{binary}: {seen} tags through the mount, {raw_seen} in the store")
        n = len(repos)
        return {"wall_us": wall / n / 1e3, "cpu_us": (c1 - c0) / n / 1e3, "raw_us": raw / n / 1e3,
                "ratio": wall / raw, "tags": seen,
                "requests": {k: round((r1[k] - r0.get(k, 0)) / n, 3) for k in r1 if r1[k] != r0.get(k, 0)}}
    finally:
        # `imagefs umount`: a plain fusermount3 -u is refused while image trees are mounted
        subprocess.run([binary, "umount", mnt], capture_output=True)
        p.wait(timeout=60)


def one_floor(floor: str, mnt: str, repos: list[str], tags_per_repo: int) -> dict:
    """The same listing through examples/list_floor.rs (a FUSE server doing no work)."""
    p = subprocess.Popen([floor, mnt, str(len(repos)), str(tags_per_repo)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_dir(f"{mnt}/tags/bench.local", p, 30, floor)
        time.sleep(0.3)
        t0 = time.perf_counter_ns()
        seen = list_all(f"{mnt}/tags", repos)
        wall = time.perf_counter_ns() - t0
        return {"wall_us": wall / len(repos) / 1e3, "tags": seen}
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        p.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a store-<n> directory kept by bench_tags.py --keep")
    ap.add_argument("--mnt", help="mount point (default: a new temporary directory)")
    ap.add_argument("--reps", type=int, default=6, help="mounts per binary, alternated")
    ap.add_argument("--rootfs-mounts", default="none",
                    help="the daemon's --rootfs-mounts (default none: no tree mounts made beside the listing)")
    ap.add_argument("--settle", type=float, default=0.3,
                    help="seconds between the mount answering and the listing (default 0.3)")
    ap.add_argument("--floor", help="examples/list_floor (target/release/examples/list_floor): list through it "
                                    "too in every repetition, after the binaries")
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()
    store = os.path.abspath(a.store)
    repos = sorted(f"bench.local/{d}" for d in os.listdir(f"{store}/repositories/bench.local"))
    mnt = a.mnt or tempfile.mkdtemp(prefix="imagefs-list-")
    res = {b: [] for b in a.binaries}
    floor = []
    tags_per_repo = len(os.listdir(f"{store}/repositories/{repos[0]}")) if repos else 0
    for i in range(a.reps):
        for b in a.binaries:
            r = one(b, store, mnt, repos, a.rootfs_mounts, a.settle)
            res[b].append(r)
            print(f"rep {i} {b}: wall {r['wall_us']:.1f} us/repo, daemon CPU {r['cpu_us']:.1f} us/repo, "
                  f"raw {r['raw_us']:.1f} us/repo (x{r['ratio']:.2f}), {r['tags']} tags, "
                  f"requests/repo {r['requests']}", flush=True)
        if a.floor:
            f = one_floor(a.floor, mnt, repos, tags_per_repo)
            floor.append(f)
            print(f"rep {i} floor: wall {f['wall_us']:.1f} us/repo, {f['tags']} tags", flush=True)
    for b in a.binaries:
        med = {k: statistics.median(r[k] for r in res[b]) for k in ("wall_us", "cpu_us", "ratio")}
        print(f"{b}: {len(repos)} repositories, medians: wall {med['wall_us']:.1f} us/repo, "
              f"daemon CPU {med['cpu_us']:.1f} us/repo, x{med['ratio']:.2f} the raw listing")
    if floor:
        fw = statistics.median(f["wall_us"] for f in floor)
        raw = statistics.median(r["raw_us"] for b in a.binaries for r in res[b])
        print(f"floor (a FUSE server doing no work): median wall {fw:.1f} us/repo, x{fw / raw:.2f} the raw "
              f"listing's median ({raw:.1f} us/repo)")
        for b in a.binaries:
            print(f"{b}: x{statistics.median(r['wall_us'] for r in res[b]) / fw:.2f} the floor")
    if not a.mnt:
        os.rmdir(mnt)


if __name__ == "__main__":
    main()
