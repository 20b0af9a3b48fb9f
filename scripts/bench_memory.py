#!/usr/bin/env python3
"""Benchmark of the daemon's memory (issue 13, "Memory bounded by design").

This is a benchmark, not a test: it reports the imagefs daemon's RSS and evaluates it
against the issue's targets (under 150 MiB after reading 64 images in full with the
default cache budget; back near start-up once the images left the store); it never fails
on a high figure. It exits non-zero only if setup fails or a measured command fails.

What it does (everything cached under --work, default /var/tmp/imagefs-bench-memory):

  1. --images (default 64) source trees WORK/src/<i>/, each about --image-mb (default 8)
     MB of regular files (<= 2 MiB each) hard-linked (else copied) from /usr: even images
     take consecutive files of /usr/lib, odd ones of /usr/share, in sorted walk order, so
     every tree differs (shared libraries, text, icons, locale data).
  2. An image of each: mkfs.erofs --quiet -T0 --all-root -zlz4 WORK/img/<i>.erofs WORK/src/<i>
     (a few MB each), hex = sha256 of the image.
  3. Per --modes entry (default kernel,fuse,none; `--rootfs-mounts` of the daemon), a fresh
     store WORK/store: content/<hex>/{rootfs.erofs (hard link), metadata.json "ready"} and
     a tag repositories/bench/img<i> for each, mounted by
       $IMAGEFS_BIN mount --store WORK/store WORK/mnt --foreground --rootfs-mounts MODE [--daemon-args]
     (our child). With fuse and kernel, the image trees' own mounts are awaited.
  4. RSS of the daemon (VmRSS of /proc/<pid>/status; also RssAnon) at each step:
       start     after the mount (and its tree mounts) answer
       read      after `tar -cf - -C MNT/digests/<hex>/rootfs . | cat > /dev/null` of every image
       re-read   after `echo 1 > /proc/sys/vm/drop_caches` (page cache only: the kernel keeps
                 its inodes, the daemon serves every byte again) and the same tars
       idle      after --idle seconds (default 0: skipped) with nothing reading
       removed   after `rm MNT/tags/bench/img<i>` of every tag (the last reference: each
                 digest is collected), once MNT/digests/ is empty, plus --settle seconds
  5. Prints a table, writes JSON to --out.

IMAGEFS_BIN (or --bin) defaults to <repo>/target/release/imagefs. The load average is
printed before and after: on this 2-core machine any other work moves the figures.
Always unmounts what it mounted and ends its own child (by pid). Needs root.

Usage:
  python3 scripts/bench_memory.py [--images 64] [--image-mb 8] [--modes kernel,fuse,none]
         [--daemon-args '--cache-size 64M'] [--idle 0] [--settle 3] [--bin PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

# log and run are bench_rootfs.py's (same directory): the two benchmarks report and fail alike.
from bench_rootfs import log, run

REPO = Path(__file__).resolve().parent.parent
SRC_VERSION = 1
MAX_FILE = 2 << 20


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def walk_files(root: str):
    """Regular readable files <= MAX_FILE under root, in sorted walk order: (path, rel, size)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= MAX_FILE and os.access(p, os.R_OK):
                yield p, os.path.relpath(p, root), st.st_size


def build_images(args, work: Path) -> list[tuple[Path, str]]:
    """The images, built once: [(image path, hex)]."""
    params = {"version": SRC_VERSION, "images": args.images, "image_mb": args.image_mb}
    marker = work / "images.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        imgs = [(work / "img" / f"{i}.erofs", h) for i, h in enumerate(info.get("hexes", []))]
        if info.get("params") == params and all(p.exists() for p, _ in imgs):
            log(f"{len(imgs)} images cached, {sum(p.stat().st_size for p, _ in imgs) / 1e6:.0f} MB")
            return imgs
    for d in ("src", "img"):
        shutil.rmtree(work / d, ignore_errors=True)
        (work / d).mkdir(parents=True)
    budget = args.image_mb * 1_000_000
    sources = {"/usr/lib": walk_files("/usr/lib"), "/usr/share": walk_files("/usr/share")}
    out = []
    for i in range(args.images):
        base = "/usr/lib" if i % 2 == 0 else "/usr/share"
        tree = work / "src" / str(i)
        total = 0
        for p, rel, size in sources[base]:
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(p, dst)
            except OSError:
                try:
                    shutil.copy2(p, dst)
                except OSError:
                    continue
            total += size
            if total >= budget:
                break
        if total < budget // 2:
            raise RuntimeError(f"{base} ran out of files for image {i} ({total} bytes)")
        img = work / "img" / f"{i}.erofs"
        run(["mkfs.erofs", "--quiet", "-T0", "--all-root", "-zlz4", str(img), str(tree)])
        h = hashlib.sha256()
        with open(img, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append((img, h.hexdigest()))
        log(f"image {i}: {total / 1e6:.1f} MB of {base} -> {img.stat().st_size / 1e6:.1f} MB")
    shutil.rmtree(work / "src", ignore_errors=True)
    marker.write_text(json.dumps({"params": params, "hexes": [h for _, h in out]}))
    return out


def make_store(store: Path, imgs) -> None:
    shutil.rmtree(store, ignore_errors=True)
    for i, (img, hx) in enumerate(imgs):
        d = store / "content" / hx
        d.mkdir(parents=True)
        os.link(img, d / "rootfs.erofs")
        meta = {"name": f"docker.io/library/bench-{i}", "digest": f"sha256:{hx}", "status": "ready",
                "size_bytes": img.stat().st_size, "created_at": "2026-01-02T03:04:05Z"}
        (d / "metadata.json").write_text(json.dumps(meta) + "\n")
        t = store / "repositories" / "bench" / f"img{i}"
        t.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../content/{hx}", t)


def rss(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024  # MiB
    return out


def is_mounted(p: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(p) for line in f)


def own_mount(mnt: Path, hx: str) -> bool:
    try:
        return os.stat(mnt / "digests" / hx / "rootfs").st_dev != os.stat(mnt).st_dev
    except OSError:
        return False


def read_all(mnt: Path, imgs) -> float:
    t = time.perf_counter()
    for _, hx in imgs:
        root = mnt / "digests" / hx / "rootfs"
        run(["bash", "-o", "pipefail", "-c", f"tar -cf - -C {shlex.quote(str(root))} . | cat > /dev/null"])
    return time.perf_counter() - t


def unmount(mnt: Path) -> None:
    # The image trees first (lazily), then the main mount.
    with open("/proc/self/mountinfo") as f:
        below = [line.split()[4] for line in f if line.split()[4].startswith(f"{mnt}/")]
    for p in below:
        run(["umount", "-l", p], check=False)
    if is_mounted(mnt):
        if run(["fusermount3", "-u", str(mnt)], check=False).returncode != 0:
            run(["umount", "-l", str(mnt)], check=False)


def measure(args, binary: str, work: Path, imgs, mode: str) -> dict:
    store, mnt = work / "store", work / "mnt"
    make_store(store, imgs)
    mnt.mkdir(exist_ok=True)
    logf = open(work / f"imagefs-{mode}.log", "wb")
    argv = [binary, "mount", "--store", str(store), str(mnt), "--foreground", "--rootfs-mounts", mode,
            *shlex.split(args.daemon_args)]
    log(" ".join(argv))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True, env=dict(os.environ, RUST_LOG="info"))
    res: dict = {"mode": mode, "argv": argv}
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"imagefs did not mount ({mode}); see {logf.name}")
            time.sleep(0.05)
        if mode != "none":
            deadline = time.monotonic() + 60
            while not all(own_mount(mnt, hx) for _, hx in imgs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"image trees not mounted after 60 s ({mode})")
                time.sleep(0.1)
        time.sleep(0.5)
        res["start"] = rss(proc.pid)
        res["read_s"] = read_all(mnt, imgs)
        res["read"] = rss(proc.pid)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        res["reread_s"] = read_all(mnt, imgs)
        res["reread"] = rss(proc.pid)
        if args.idle > 0:
            time.sleep(args.idle)
            res["idle"] = rss(proc.pid)
        for i in range(len(imgs)):
            os.unlink(mnt / "tags" / "bench" / f"img{i}")
        deadline = time.monotonic() + 60
        while os.listdir(mnt / "digests"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"digests/ not empty 60 s after the last rm ({mode})")
            time.sleep(0.1)
        time.sleep(args.settle)
        res["removed"] = rss(proc.pid)
    finally:
        unmount(mnt)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        logf.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/var/tmp/imagefs-bench-memory")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--image-mb", type=int, default=8)
    ap.add_argument("--modes", default="kernel,fuse,none")
    ap.add_argument("--daemon-args", default="", help="more arguments for imagefs mount")
    ap.add_argument("--idle", type=float, default=0.0, help="seconds to wait idle before removing the tags")
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--bin")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounts, drop_caches)", file=sys.stderr)
        return 2
    binary = args.bin or os.environ.get("IMAGEFS_BIN") or str(REPO / "target/release/imagefs")
    if not os.access(binary, os.X_OK):
        print(f"{binary} is not an executable", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    imgs = build_images(args, work)
    before = loadavg()
    log(f"load average before: {before}")
    results = []
    for mode in [m for m in args.modes.split(",") if m]:
        results.append(measure(args, binary, work, imgs, mode))
    after = loadavg()
    log(f"load average after: {after}")
    size = sum(p.stat().st_size for p, _ in imgs) / 2**20
    print(f"\n{len(imgs)} images, {size:.0f} MiB of erofs; daemon: {binary} {args.daemon_args}")
    steps = ["start", "read", "reread"] + (["idle"] if args.idle > 0 else []) + ["removed"]
    print("| --rootfs-mounts | " + " | ".join(f"RSS {s} (MiB)" for s in steps) + " | read (s) | re-read (s) |")
    print("|---" * (len(steps) + 3) + "|")
    for r in results:
        cells = [f"{r[s]['VmRSS']:.1f}" for s in steps]
        print(f"| {r['mode']} | " + " | ".join(cells) + f" | {r['read_s']:.1f} | {r['reread_s']:.1f} |")
    print(f"load average: before {before}, after {after}")
    for r in results:
        ok_read = r["reread"]["VmRSS"] < 150
        ok_back = r["removed"]["VmRSS"] < r["start"]["VmRSS"] + 10
        print(f"{r['mode']}: under 150 MiB after reading: {'met' if ok_read else 'missed'}; "
              f"back near start-up (within 10 MiB) after removal: {'met' if ok_back else 'missed'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "load": [before, after]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
