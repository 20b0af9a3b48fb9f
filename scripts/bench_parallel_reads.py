#!/usr/bin/env python3
"""Parallel reads of one image file through imagefs: READ requests per second and MB/s
(issue 13, "the read path without shared locks or per-read allocation").

A benchmark, not a test. For each binary given (--bin LABEL=PATH, in turn, --rounds times so
that two binaries share the machine's load), it mounts --store with --rootfs-mounts MODE
(fuse: the image-tree connection, reads by inode number; none: the main mount, reads by
open handle) and runs READERS threads that each pread SIZE bytes at random SIZE-aligned
offsets of the first --window-mib of FILE (inside digests/<hex>/rootfs/) for --seconds,
dropping the pages read (POSIX_FADV_DONTNEED) so that every read is a READ to the daemon;
the window fits the reader's caches, so what is measured is the per-request path, not
decompression. Prints a table of the medians over rounds and the load average around.
Leaves no mount behind (imagefs umount, then umount -l).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def mounted(p: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == p for line in f)


def daemon_reads(mnt: Path) -> int:
    """READ requests the daemon has served (its metrics)."""
    for line in (mnt / ".imagefs" / "metrics").read_text().splitlines():
        if line.startswith('imagefs_requests_total{op="read"}'):
            return int(line.rsplit(" ", 1)[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_readers(path: Path, readers: int, size: int, window: int, seconds: float) -> tuple[int, int]:
    stop = threading.Event()
    counts = [0] * readers
    errors: list[str] = []

    def one(i: int) -> None:
        rnd = random.Random(i)
        fd = os.open(path, os.O_RDONLY)
        # No readahead: each pread is one READ of its size.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        slots = max(1, window // size)
        try:
            while not stop.is_set():
                off = rnd.randrange(slots) * size
                b = os.pread(fd, size, off)
                if len(b) != size:
                    errors.append(f"short read at {off}: {len(b)}")
                    return
                os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
                counts[i] += 1
        finally:
            os.close(fd)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(readers)]
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"{path}: {errors[0]}")
    n = sum(counts)
    return n, n * size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH, repeatable")
    ap.add_argument("--store", required=True, help="a store with one ready image")
    ap.add_argument("--hex", required=True, help="the image's digest (hex)")
    ap.add_argument("--file", default="bigfile", help="file inside the image")
    ap.add_argument("--mnt", default="/var/tmp/imagefs-parallel-reads-mnt")
    ap.add_argument("--rootfs-mounts", default="fuse", choices=("fuse", "none"))
    ap.add_argument("--readers", default="1,2,4")
    ap.add_argument("--sizes", default="4096,131072")
    ap.add_argument("--window-mib", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    readers = [int(x) for x in args.readers.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    mnt = Path(args.mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for r in range(args.rounds):
        for label, binary in bins:
            cmd = [binary, "mount", "--store", args.store, str(mnt), "--foreground",
                   "--rootfs-mounts", args.rootfs_mounts]
            log = open(f"{mnt}.{label}.log", "ab")
            env = {**os.environ, "RUST_LOG": "warn"}
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                    start_new_session=True)
            try:
                path = mnt / "digests" / args.hex / "rootfs" / args.file
                deadline = time.monotonic() + 30
                while not (mounted(str(mnt)) and path.exists()):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"{label}: not mounted (see {mnt}.{label}.log)")
                    time.sleep(0.05)
                if args.rootfs_mounts == "fuse":
                    root = path.parents[len(Path(args.file).parts) - 1]
                    while os.stat(root).st_dev == os.stat(mnt).st_dev and time.monotonic() < deadline:
                        time.sleep(0.05)
                run_readers(path, 1, 4096, args.window_mib << 20, 0.5)  # warm the daemon's caches
                for n in readers:
                    for size in sizes:
                        served, cpu = daemon_reads(mnt), cpu_seconds(proc.pid)
                        ops, nbytes = run_readers(path, n, size, args.window_mib << 20, args.seconds)
                        served, cpu = daemon_reads(mnt) - served, cpu_seconds(proc.pid) - cpu
                        us = cpu / max(served, 1) * 1e6
                        res.setdefault((label, n, size), []).append(
                            (ops / args.seconds, nbytes / args.seconds / 1e6, us))
                        print(f"round {r + 1} {label:8} readers {n} size {size:>6}: "
                              f"{ops / args.seconds:9.0f} reads/s {nbytes / args.seconds / 1e6:8.1f} MB/s "
                              f"(daemon READs {served / args.seconds:.0f}/s, {us:.1f} us CPU each)", flush=True)
            finally:
                if mounted(str(mnt)):
                    if subprocess.run([binary, "umount", str(mnt)], capture_output=True).returncode != 0:
                        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
    print(f"load average at end: {os.getloadavg()}")
    print(f"\nmedian over {args.rounds} rounds, --rootfs-mounts {args.rootfs_mounts}, window {args.window_mib} MiB")
    print("daemon CPU per READ: user+sys of the daemon over the run / READs it served")
    print(f"{'readers':>7} {'size':>7} "
          + " ".join(f"{lab + ' reads/s':>16} {lab + ' MB/s':>12} {lab + ' us/READ':>15}" for lab, _ in bins)
          + (f"  {bins[-1][0]}/{bins[0][0]} reads/s, us/READ" if len(bins) > 1 else ""))
    for n in readers:
        for size in sizes:
            med = [[statistics.median(x[k] for x in res[(lab, n, size)]) for k in range(3)] for lab, _ in bins]
            cells = " ".join(f"{a:16.0f} {b:12.1f} {c:15.1f}" for a, b, c in med)
            ratio = (f"  {med[-1][0] / med[0][0]:.2f}x, {med[-1][2] / med[0][2]:.2f}x"
                     if len(bins) > 1 and med[0][0] and med[0][2] else "")
            print(f"{n:7} {size:7} {cells}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
