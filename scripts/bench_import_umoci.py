#!/usr/bin/env python3
"""Import of an OCI image: `imagefs import` against `umoci unpack` + `mkfs.erofs -zlz4`
on the same input, in one run (issue 12, "Done means").

Both ways end with an LZ4 erofs image of the image's tree; the script reports, for each,
the wall time (median of --reps) and the peak extra disk space used while it ran, and the
ratios imagefs / umoci+mkfs. Both write into an ext4 filesystem of their own (a loop-mounted
file in --work, made and removed by the script; root needed), so its free space, sampled
every 10 ms, counts what they use and nothing else on the machine (the final image
included).

The input is an OCI image layout (--oci DIR:REF). Without one, the script makes a Debian
minbase image with mmdebstrap (needs the Debian mirror) and `umoci raw add-layer`, and keeps
it in --work for the next run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


class DiskPeak:
    """Peak of (free space at start - free space now) on the filesystem of `path`."""

    def __init__(self, path: Path):
        self.path = path
        self.peak = 0
        self._stop = threading.Event()
        self._start = self._free()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._start - self._free())
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._start - self._free())


def run(cmd: list[str], **kw) -> None:
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr[-2000:]}")


def sync_and_settle():
    os.sync()
    time.sleep(0.5)


def make_minbase(work: Path) -> str:
    layout = work / "oci"
    if (layout / "index.json").exists():
        return f"{layout}:minbase"
    tar = work / "minbase.tar"
    if not tar.exists():
        print("making a Debian minbase tree with mmdebstrap (a minute or two)...", file=sys.stderr)
        run(["mmdebstrap", "--variant=minbase", "--format=tar", "bookworm", str(tar)])
    shutil.rmtree(layout, ignore_errors=True)
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:minbase"])
    run(["umoci", "raw", "add-layer", "--image", f"{layout}:minbase", str(tar)])
    return f"{layout}:minbase"


class ScratchFs:
    """An ext4 filesystem on a loop-mounted sparse file, mounted at `mnt`."""

    def __init__(self, work: Path, gib: int):
        self.img = work / "scratch.ext4"
        self.mnt = work / "scratch"
        self.gib = gib

    def __enter__(self) -> Path:
        self.img.unlink(missing_ok=True)
        with open(self.img, "wb") as f:
            f.truncate(self.gib << 30)
        run(["mkfs.ext4", "-q", "-F", str(self.img)])
        self.mnt.mkdir(exist_ok=True)
        run(["mount", "-o", "loop", str(self.img), str(self.mnt)])
        return self.mnt

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.mnt)])
        self.img.unlink(missing_ok=True)


def one_imagefs(binary: str, layout: str, work: Path) -> tuple[float, int]:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    oci_dir = layout.rsplit(":", 1)[0]
    sync_and_settle()
    with DiskPeak(work) as disk:
        t = time.perf_counter()
        run([binary, "import", "-q", "--store", str(store), "--tag", "bench/minbase:1", oci_dir])
        os.sync()
        dt = time.perf_counter() - t
    shutil.rmtree(store)
    return dt, disk.peak


def one_umoci(layout: str, work: Path) -> tuple[float, int]:
    bundle = work / "bundle"
    out = work / "umoci.erofs"
    shutil.rmtree(bundle, ignore_errors=True)
    out.unlink(missing_ok=True)
    sync_and_settle()
    with DiskPeak(work) as disk:
        t = time.perf_counter()
        run(["umoci", "unpack", "--image", layout, str(bundle)])
        run(["mkfs.erofs", "-zlz4", str(out), str(bundle / "rootfs")])
        os.sync()
        dt = time.perf_counter() - t
    shutil.rmtree(bundle)
    out.unlink()
    return dt, disk.peak


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/imagefs-bench-import", help="work directory (input kept here)")
    ap.add_argument("--oci", help="OCI layout and reference, DIR:REF (default: a Debian minbase made here)")
    ap.add_argument("--bin", default=os.environ.get("IMAGEFS_BIN", "target/release/imagefs"), help="imagefs binary")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scratch-gib", type=int, default=8, help="size of the scratch filesystem")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    layout = a.oci or make_minbase(work)
    binary = str(Path(a.bin).resolve())
    rows = {"imagefs import": [], "umoci unpack + mkfs.erofs": []}
    print(f"load before: {os.getloadavg()}", file=sys.stderr)
    with ScratchFs(work, a.scratch_gib) as scratch:
        for _ in range(a.reps):  # alternate, so a change of load hits both
            rows["imagefs import"].append(one_imagefs(binary, layout, scratch))
            rows["umoci unpack + mkfs.erofs"].append(one_umoci(layout, scratch))
    print(f"load after: {os.getloadavg()}", file=sys.stderr)
    med = {k: (statistics.median(t for t, _ in v), max(d for _, d in v)) for k, v in rows.items()}
    print(f"input: {layout}; median of {a.reps} runs; peak extra disk = most of the runs")
    print(f"| way | wall time (s) | peak extra disk (MiB) |\n|---|---|---|")
    for k, (t, d) in med.items():
        print(f"| {k} | {t:.2f} | {d / 2**20:.0f} |")
    (ti, di), (tu, du) = med["imagefs import"], med["umoci unpack + mkfs.erofs"]
    print(f"ratio imagefs/umoci+mkfs: time {ti / tu:.2f}, peak disk {di / max(du, 1):.2f}")


if __name__ == "__main__":
    main()
