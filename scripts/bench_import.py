#!/usr/bin/env python3
"""Benchmark: what real mtimes in imported images buy a Python image (issue 12).

Builds a rootfs tar from this machine's Python (the interpreter and its symlinks, its standard
library with the installed __pycache__, the libraries `ldd` names for it and for its lib-dynload
modules), all with their real mtimes (GNU tar, POSIX format: nanoseconds). Then:

  new    `imagefs import` of the tar with --new (default: target/release/imagefs)
  old    `imagefs import` of the tar with --old (default: /tmp/imagefs-start; before issue 12
         every mtime was 0, so every .pyc is stale against its source)
  mkfs   `mkfs.erofs -zlz4` of the tar extracted by GNU tar (the same tree, real mtimes)

Each image is mounted with the kernel's erofs (`mount -t erofs -o ro FILE DIR`) and
`chroot DIR python3 -c 'import ...'` is timed --runs times per image, the images taking turns
(one untimed warm-up run each first). Prints the import times, each image's median and mean, and
the ratios old/new and new/mkfs, all from this one run; --json writes them to a file. The
imports are timed --import-runs times each, taking turns (median).

With --debian TAR (a root tree as a tar, e.g. `mmdebstrap --variant=minbase bookworm deb.tar`)
it also times, --import-runs times each, taking turns: `imagefs import` (--new) of a one-layer
OCI layout (gzip) of that tar, against `umoci unpack` of the same layout followed by
`mkfs.erofs -zlz4` of its rootfs, with the peak extra disk use of each (the blocks under its
work directory, sampled every 0.1 s: the tree and the image while both exist).

Needs root (mount, chroot), tar, mkfs.erofs. Everything is made under --work (a fresh
temporary directory by default) and removed at the end unless --keep; the mounts are always
unmounted.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw)


def in_real_dir(p: str) -> str:
    """p with its directories resolved, its last component kept (a symlink stays one)."""
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def ldd_paths(binary: Path) -> set[str]:
    """The libraries `ldd` names for binary, each as its own path and its target's (a soname link
    and the file it names), in real directories (/lib is usr/lib on a merged-/usr system)."""
    r = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    out = set()
    for line in r.stdout.splitlines():
        for word in line.split():
            if word.startswith("/") and os.path.exists(word):
                out.add(in_real_dir(word))
                out.add(os.path.realpath(word))
    return out


def python_members(python: Path) -> list[str]:
    """Paths (relative to /) making a chroot-able Python: the interpreter, its stdlib, its
    libraries, and the top-level symlinks of a merged /usr (lib -> usr/lib...)."""
    real = Path(os.path.realpath(python))
    ver = real.name  # python3.11
    stdlib = Path("/usr/lib") / ver
    if not (stdlib / "__pycache__").is_dir():
        sys.exit(f"{stdlib}/__pycache__ is missing: run `{real} -m compileall {stdlib}` on a copy first")
    paths = {in_real_dir(str(python)), str(real)}
    for so in [real, *(stdlib / "lib-dynload").glob("*.so")]:
        paths |= ldd_paths(so)
    # The loader's absolute symlink (/lib64/ld-linux-x86-64.so.2 -> /lib/...) goes through these.
    paths |= {f"/{n}" for n in ("bin", "sbin", "lib", "lib64") if os.path.islink(f"/{n}")}
    return sorted(p.lstrip("/") for p in paths) + [str(stdlib).lstrip("/")]


def build_tar(python: Path, tar: Path) -> int:
    members = python_members(python)
    # POSIX format: PAX mtimes with their nanoseconds; no atime/ctime records.
    run("tar", "--format=posix", "--pax-option=delete=atime,delete=ctime", "-C", "/", "-cf", tar,
        "--exclude=test", "--exclude=idlelib", "--exclude=tkinter", *members)
    return len(members)


def timed_import(binary: Path, store: Path, tag: str, source: Path) -> tuple[str, float]:
    """Imports source into a fresh store; (its image, seconds)."""
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    t0 = time.perf_counter()
    r = run(binary, "import", "--store", store, "--tag", tag, source, "--quiet")
    dt = time.perf_counter() - t0
    hx = r.stdout.split("sha256:")[1].split()[0]
    return str(store / "content" / hx / "rootfs.erofs"), dt


def disk_use(d: Path) -> int:
    """Bytes allocated under d (st_blocks), not following symlinks; what vanishes meanwhile is skipped."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


class PeakDisk:
    """Samples disk_use(d) every 0.1 s while the block runs; .peak is the largest sample."""

    def __init__(self, d: Path):
        self.d, self.peak, self._stop = d, 0, threading.Event()

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, disk_use(self.d))
            self._stop.wait(0.1)

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, disk_use(self.d))


def oci_layout(tar: Path, layout: Path) -> None:
    """A one-layer OCI layout (gzip layer, tagged v1) of the root tree tar."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes, mt: str) -> dict:
        hx = hashlib.sha256(data).hexdigest()
        (blobs / hx).write_bytes(data)
        return {"mediaType": mt, "digest": f"sha256:{hx}", "size": len(data)}

    raw = tar.read_bytes()
    layer = blob(gzip.compress(raw, compresslevel=6, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]}}
    config = blob(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    man = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config, "layers": [layer]}).encode(),
               "application/vnd.oci.image.manifest.v1+json")
    man["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [man]}))


def bench_debian(a, work: Path) -> dict:
    layout = work / "deb-oci"
    oci_layout(a.debian, layout)
    secs: dict[str, list[float]] = {"imagefs": [], "umoci+mkfs": []}
    peak: dict[str, list[int]] = {"imagefs": [], "umoci+mkfs": []}
    for _ in range(a.import_runs):
        d = work / "deb-imagefs"
        d.mkdir()
        with PeakDisk(d) as p:
            img, dt = timed_import(a.new, d / "store", "bench/debian:1", layout)
        secs["imagefs"].append(dt)
        peak["imagefs"].append(p.peak - os.path.getsize(img))
        shutil.rmtree(d)
        d = work / "deb-umoci"
        d.mkdir()
        with PeakDisk(d) as p:
            t0 = time.perf_counter()
            run("umoci", "--log", "error", "unpack", "--image", f"{layout}:v1", d / "bundle")
            run("mkfs.erofs", "--quiet", "-zlz4", d / "rootfs.erofs", d / "bundle" / "rootfs")
            secs["umoci+mkfs"].append(time.perf_counter() - t0)
        peak["umoci+mkfs"].append(p.peak - os.path.getsize(d / "rootfs.erofs"))
        shutil.rmtree(d)
    return {"tar_mib": a.debian.stat().st_size / 2**20,
            "layer_gz_mib": sum(f.stat().st_size for f in (layout / "blobs" / "sha256").iterdir()) / 2**20,
            "seconds_median": {k: statistics.median(v) for k, v in secs.items()},
            "seconds": secs,
            "peak_extra_mib_median": {k: statistics.median(v) / 2**20 for k, v in peak.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=Path, default=REPO / "target/release/imagefs", help="imagefs with real mtimes")
    ap.add_argument("--old", type=Path, default=Path("/tmp/imagefs-start"),
                    help="imagefs from before issue 12 (mtimes 0); 'none' to skip")
    ap.add_argument("--python", type=Path, default=Path("/usr/bin/python3"), help="the Python to package")
    ap.add_argument("--imports", default="json, email, http.client", help="modules the timed command imports")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per image (default 10)")
    ap.add_argument("--import-runs", type=int, default=3, help="timed imports per variant (default 3)")
    ap.add_argument("--debian", type=Path, help="also compare with umoci unpack + mkfs.erofs on this root tree tar")
    ap.add_argument("--work", type=Path, help="work directory (default: a new one under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: mount and chroot")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-import-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    mounts: list[Path] = []
    try:
        tar = work / "python-rootfs.tar"
        n = build_tar(a.python, tar)
        print(f"rootfs tar: {tar} ({tar.stat().st_size / 2**20:.1f} MiB, {n} paths from {a.python})")
        images: dict[str, str] = {}
        import_runs: dict[str, list[float]] = {"new": [], "old": []} if str(a.old) != "none" else {"new": []}
        for _ in range(a.import_runs):
            for k in import_runs:
                images[k], dt = timed_import(a.new if k == "new" else a.old, work / f"store-{k}",
                                             f"bench/python:{k}", tar)
                import_runs[k].append(dt)
        import_s = {k: statistics.median(v) for k, v in import_runs.items()}
        tree = work / "extracted"
        tree.mkdir()
        run("tar", "-C", tree, "-xpf", tar, "--numeric-owner")
        t0 = time.perf_counter()
        run("mkfs.erofs", "--quiet", "-zlz4", work / "mkfs.erofs", tree)
        import_s["mkfs"] = time.perf_counter() - t0
        images["mkfs"] = str(work / "mkfs.erofs")
        for name, img in images.items():
            d = work / f"mnt-{name}"
            d.mkdir()
            run("mount", "-t", "erofs", "-o", "ro", img, d)
            mounts.append(d)
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        cmd = ["python3", "-c", f"import {a.imports}"]
        times: dict[str, list[float]] = {k: [] for k in images}
        for i in range(a.runs + 1):
            for name in images:
                t0 = time.perf_counter()
                subprocess.run([chroot, str(work / f"mnt-{name}"), *cmd], check=True,
                               env={"PATH": "/usr/bin:/bin", "LANG": "C"})
                if i > 0:  # the first round warms the page cache
                    times[name].append(time.perf_counter() - t0)
        res = {"runs": a.runs, "command": " ".join(cmd), "import_seconds": import_s,
               "median_ms": {k: statistics.median(v) * 1e3 for k, v in times.items()},
               "mean_ms": {k: statistics.mean(v) * 1e3 for k, v in times.items()},
               "load": os.getloadavg()}
        if a.debian:
            res["debian"] = bench_debian(a, work)
        med = res["median_ms"]
        if "old" in med:
            res["old_over_new"] = med["old"] / med["new"]
        res["new_over_mkfs"] = med["new"] / med["mkfs"]
        print(f"build (median of {a.import_runs}; mkfs: mkfs.erofs alone, once): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in import_s.items()))
        for k in images:
            print(f"{k:5} median {med[k]:7.1f} ms  mean {res['mean_ms'][k]:7.1f} ms  ({a.runs} runs of {' '.join(cmd)})")
        if "old_over_new" in res:
            print(f"old/new {res['old_over_new']:.2f}")
        print(f"new/mkfs {res['new_over_mkfs']:.2f}")
        if "debian" in res:
            d = res["debian"]
            print(f"debian tar {d['tar_mib']:.0f} MiB (layer {d['layer_gz_mib']:.0f} MiB gzip), median of "
                  f"{a.import_runs}: " + ", ".join(f"{k} {v:.1f} s" for k, v in d["seconds_median"].items())
                  + "; peak extra disk besides the image: "
                  + ", ".join(f"{k} {v:.0f} MiB" for k, v in d["peak_extra_mib_median"].items()))
        print(f"load average {res['load'][0]:.2f} {res['load'][1]:.2f} {res['load'][2]:.2f}")
        if a.json:
            a.json.write_text(json.dumps(res, indent=2) + "\n")
    finally:
        for d in reversed(mounts):
            subprocess.run(["umount", str(d)], capture_output=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
