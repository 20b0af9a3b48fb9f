#!/usr/bin/env python3
"""Benchmark of digests/<hex>/rootfs/: imagefs against the kernel's erofs loop
mount and against squashfuse_ll, on the same tree, in one run (issue 3, "Speed").

This is a benchmark, not a test: it reports figures and evaluates them against
the targets of issue 3 (warm within 1.2x of the kernel, cold within 2x of the
kernel, faster than squashfuse_ll on every row); it never fails on a slow result.
It exits non-zero only if setup fails or a measured command fails.

What it does, in one run (everything cached under --work, default
/var/tmp/imagefs-bench, so a rerun skips steps 1-2):

  1. Source tree WORK/src/ (deterministic for a given machine's /usr):
       tree/share/...  regular files <= --max-file-kib and symlinks of /usr/share,
       tree/lib/...    and of /usr/lib, each walked in sorted order until
                       --src-mb / 2 of file bytes is taken from each
       bigfile         --big-mib (default 1024) MiB: the regular files of /usr/bin
                       then /usr/lib/x86_64-linux-gnu concatenated in sorted
                       order (repeated if short): mixed compressibility, not zeros
  2. Images of WORK/src:  mkfs.erofs --quiet -T0 --all-root -zlz4 rootfs.erofs src
                          mksquashfs src rootfs.sqfs -comp lz4 -noappend -quiet
     and a store WORK/store/content/<hex>/{rootfs.erofs (hard link), metadata.json
     with "status": "ready"}, hex = sha256 of the erofs image.
  3. Mounts (all read-only):
       kernel      losetup --find --read-only rootfs.erofs; mount -t erofs -o ro
                   /dev/loopN WORK/mnt/kernel (a device of its own: see Kernel.mount)
       squashfuse  squashfuse_ll -f rootfs.sqfs WORK/mnt/squashfuse  (our child)
       imagefs     $IMAGEFS_BIN mount --store WORK/store WORK/mnt/imagefs --foreground
                   (our child, with --rootfs-mounts X if given); the tree is WORK/mnt/imagefs/digests/<hex>/rootfs
     IMAGEFS_BIN (or --bin) defaults to <repo>/target/release/imagefs, rebuilt with
     `cargo build --release` if missing or older than the newest file in src/.
  4. Operations (ROOT = the mounted image root; the walks use ROOT/tree, which
     does not contain the big file):
       find   cd ROOT && find tree | wc -l   (relative: each mount prints the same
              bytes; from ROOT/tree, imagefs's longer root, digests/<hex>/rootfs,
              made its output 2.3 MB larger, 4-5% of a warm find)
       stat   find ROOT/tree -printf '%s %m %u\\n' > /dev/null   (lstat()s every entry)
       tar    tar -cf - -C ROOT/tree . | cat > /dev/null
       dd     dd if=ROOT/bigfile of=/dev/null bs=1M
     each run by `bash -o pipefail -c`, timed with time.perf_counter around
     subprocess.run. Per repetition and per filesystem: `sync; echo 3 >
     /proc/sys/vm/drop_caches`, the cold run, then the warm run right after.
     Mounts are NOT remounted between cold runs: for the FUSE mounts, cold means
     the kernel's page, dentry and inode caches are dropped (so the daemon sees
     FORGETs and its preads of the image hit the disk), while the daemon's own
     user-space caches survive. --remount-cold adds rows "cold+remount" where
     every filesystem (the kernel's too) is unmounted and mounted again before
     the cold run, which also empties the daemons' own caches.
     The order of the filesystems changes with each repetition as the rows of a
     balanced Latin square (Williams): over 6 repetitions with three filesystems,
     4 with --control, each takes each place and follows each other one equally
     often (a run's after-effects, such as a daemon restarted by cold+remount, land
     on every filesystem alike; a plain rotation had each one always follow the same
     other).
     --control adds a fourth mount, "kernel2": a second kernel erofs mount, on a
     loop device of its own, of the same image (the store's hard link, the file
     imagefs's tree reads), measured like the others; kernel2/kernel is the kernel
     against itself, the noise band of each row in that run (an A/A control
     for the default mode, where imagefs's tree is that same kind of mount).
     A cold..warm sequence during which ANOTHER process dropped the caches
     (/proc/vmstat drop_pagecache moved while a command ran: e.g. a test suite
     running alongside) is measured again, up to --retries times; what was kept
     anyway is listed. The load average is printed: on this 2-core machine any
     other work skews every figure (--wait-idle waits for a quiet machine).
     Daemon CPU (user/sys of squashfuse_ll and imagefs) is recorded per row.
  5. Prints a table (median of --reps runs) and writes JSON to --out, including the
     imagefs FUSE request counts (MNT/.imagefs/metrics deltas) of every row.
  6. Always unmounts everything and ends its own children (by pid), even on
     error or SIGINT/SIGTERM, then checks /proc/mounts for leftovers.

Optional: --profile strace|perf runs each of the --profile-rows (default: the
imagefs rows furthest above the kernel) once more with `strace -c -f -p PID` or
`perf record -g -p PID` attached to the imagefs daemon, and prints the summary.

Usage:
  python3 scripts/bench_rootfs.py [--work DIR] [--reps 3] [--out FILE]
         [--ops find,stat,tar,dd] [--remount-cold] [--profile none|strace|perf]
         [--wait-idle SECONDS] [--retries 3] [--bin PATH] [--threads N]

Needs root (loop mount, drop_caches). Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import stat
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OPS = {
    "find": "cd {root} && find tree | wc -l",
    "stat": "find {tree} -printf '%s %m %u\\n' > /dev/null",
    "tar": "tar -cf - -C {tree} . | cat > /dev/null",
    "dd": "dd if={big} of=/dev/null bs=1M",
}
FSES = ("kernel", "squashfuse", "imagefs")
CONTROL = "kernel2"      # --control: the kernel's erofs a second time, same file
TARGET_WARM, TARGET_COLD = 1.2, 2.0
SRC_VERSION = 2          # bump when the source-tree recipe changes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} "
                           f"exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


# ---------------------------------------------------------------- setup

def ensure_tools() -> None:
    need = {"mkfs.erofs": "erofs-utils", "mksquashfs": "squashfs-tools",
            "squashfuse_ll": "squashfuse", "fusermount3": "fuse3"}
    missing = sorted({pkg for tool, pkg in need.items() if not shutil.which(tool)})
    if missing:
        log(f"installing {' '.join(missing)}")
        run(["apt-get", "update", "-q"], check=False)
        run(["apt-get", "install", "-y", "-q", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_binary(args) -> str:
    binary = args.bin or os.environ.get("IMAGEFS_BIN") or str(REPO / "target/release/imagefs")
    if args.bin or os.environ.get("IMAGEFS_BIN") or args.no_build:
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} is not an executable")
        return binary
    newest = max((p.stat().st_mtime for p in (REPO / "src").rglob("*") if p.is_file()), default=0)
    for extra in ("Cargo.toml", "Cargo.lock"):
        if (REPO / extra).exists():
            newest = max(newest, (REPO / extra).stat().st_mtime)
    if not os.path.exists(binary) or os.stat(binary).st_mtime < newest:
        log("cargo build --release")
        r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            if os.path.exists(binary):
                log(f"WARNING: cargo build failed, using the existing (older) {binary}:\n{r.stderr[-1500:]}")
            else:
                raise RuntimeError(f"cargo build --release failed:\n{r.stderr[-3000:]}")
    return binary


def select_files(root: str, budget: int, max_file: int) -> list[tuple[str, str, int]]:
    """(relative path, kind 'f'|'l', size) in sorted walk order until budget bytes."""
    out, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "l", 0))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= max_file and os.access(p, os.R_OK):
                out.append((rel, "f", st.st_size))
                total += st.st_size
                if total >= budget:
                    return out
    return out


def build_source(args, work: Path) -> dict:
    src = work / "src"
    params = {"version": SRC_VERSION, "src_mb": args.src_mb, "max_file_kib": args.max_file_kib,
              "big_mib": args.big_mib}
    marker = work / "src.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("params") == params and src.is_dir():
            log(f"source tree cached: {info['files']} files, {info['symlinks']} symlinks, "
                f"{info['dirs']} dirs, {info['bytes'] / 1e6:.0f} MB + bigfile {args.big_mib} MiB")
            return info
    log("building the source tree")
    if src.exists():
        shutil.rmtree(src)
    (src / "tree").mkdir(parents=True)
    budget = args.src_mb * 1_000_000 // 2
    man = hashlib.sha256()
    files = links = nbytes = 0
    for part in ("share", "lib"):
        base = f"/usr/{part}"
        for rel, kind, size in select_files(base, budget, args.max_file_kib * 1024):
            dst = src / "tree" / part / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            s = os.path.join(base, rel)
            try:
                if kind == "l":
                    os.symlink(os.readlink(s), dst)
                    links += 1
                else:
                    shutil.copy2(s, dst)
                    files += 1
                    nbytes += size
            except OSError as e:
                log(f"skip {s}: {e}")
                continue
            man.update(f"{part}/{rel}\0{kind}\0{size}\n".encode())
    dirs = sum(len(d) for _, d, _ in os.walk(src / "tree"))
    # The big file: binaries concatenated, repeated until big_mib MiB.
    want = args.big_mib << 20
    parts = []
    for base in ("/usr/bin", "/usr/lib/x86_64-linux-gnu"):
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for n in sorted(filenames):
                p = os.path.join(dirpath, n)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_size > 0 and os.access(p, os.R_OK):
                    parts.append(p)
    if not parts:
        raise RuntimeError("no binaries found in /usr/bin for the big file")
    written = 0
    with open(src / "bigfile", "wb") as out:
        while written < want:
            for p in parts:
                with open(p, "rb") as f:
                    while written < want:
                        b = f.read(min(1 << 20, want - written))
                        if not b:
                            break
                        out.write(b)
                        written += len(b)
                if written >= want:
                    break
    info = {"params": params, "files": files, "symlinks": links, "dirs": dirs, "bytes": nbytes,
            "manifest_sha256": man.hexdigest(), "bigfile_bytes": written,
            "bigfile_sources": "/usr/bin + /usr/lib/x86_64-linux-gnu, sorted, concatenated, repeated"}
    marker.write_text(json.dumps(info, indent=2))
    log(f"source tree: {files} files, {links} symlinks, {dirs} dirs, {nbytes / 1e6:.0f} MB + bigfile")
    return info


def build_images(work: Path, src_info: dict) -> dict:
    img = work / "img"
    img.mkdir(exist_ok=True)
    marker = img / "images.json"
    key = src_info["manifest_sha256"] + str(src_info["params"])
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("key") == key and all((img / n).exists() for n in ("rootfs.erofs", "rootfs.sqfs")):
            log("images cached")
            return info
    src = work / "src"
    t = {}
    for n in ("rootfs.erofs", "rootfs.sqfs"):
        (img / n).unlink(missing_ok=True)
    log("mkfs.erofs -zlz4")
    t0 = time.perf_counter()
    run(["mkfs.erofs", "--quiet", "-T0", "--all-root", "-zlz4", str(img / "rootfs.erofs"), str(src)])
    t["mkfs.erofs_s"] = round(time.perf_counter() - t0, 2)
    log("mksquashfs -comp lz4")
    t0 = time.perf_counter()
    run(["mksquashfs", str(src), str(img / "rootfs.sqfs"), "-comp", "lz4", "-noappend", "-quiet"])
    t["mksquashfs_s"] = round(time.perf_counter() - t0, 2)
    h = hashlib.sha256()
    with open(img / "rootfs.erofs", "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    info = {"key": key, "hex": h.hexdigest(), "build": t,
            "erofs_bytes": (img / "rootfs.erofs").stat().st_size,
            "sqfs_bytes": (img / "rootfs.sqfs").stat().st_size,
            "erofs_cmd": "mkfs.erofs --quiet -T0 --all-root -zlz4 rootfs.erofs src",
            "sqfs_cmd": "mksquashfs src rootfs.sqfs -comp lz4 -noappend -quiet"}
    marker.write_text(json.dumps(info, indent=2))
    return info


def build_store(work: Path, img_info: dict) -> Path:
    store = work / "store"
    hexd = img_info["hex"]
    d = store / "content" / hexd
    if store.exists() and not d.exists():
        shutil.rmtree(store)
    d.mkdir(parents=True, exist_ok=True)
    (store / "repositories").mkdir(exist_ok=True)
    erofs = d / "rootfs.erofs"
    srcimg = work / "img" / "rootfs.erofs"
    if not erofs.exists() or not os.path.samefile(erofs, srcimg):
        erofs.unlink(missing_ok=True)
        try:
            os.link(srcimg, erofs)
        except OSError:
            shutil.copyfile(srcimg, erofs)
    meta = {"name": "bench.local/rootfs:latest", "digest": f"sha256:{hexd}", "status": "ready",
            "size_bytes": img_info["erofs_bytes"], "entrypoint": ["/bin/sh"], "cmd": [],
            "env": {"PATH": "/usr/bin:/bin"}, "working_dir": "/", "created_at": "2025-01-01T00:00:00Z"}
    (d / "metadata.json").write_text(json.dumps(meta, indent=2))
    return store


# ---------------------------------------------------------------- mounts

def unescape_mountinfo(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(len(p) > 4 and unescape_mountinfo(p[4]) == path for p in (l.split(" ") for l in f))


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, logf: Path | None = None):
    t0 = time.monotonic()
    while not pred():
        if proc is not None and proc.poll() is not None:
            tail = logf.read_text(errors="replace")[-3000:] if logf and logf.exists() else ""
            raise RuntimeError(f"{what}: process exited {proc.returncode}\n{tail}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not ready within {timeout} s")
        time.sleep(0.01)


class Fs:
    name = ""

    def __init__(self, work: Path, img: Path | None = None):
        self.mnt = work / "mnt" / self.name
        self.img = img  # the image a kernel or squashfuse mount serves
        self.proc: subprocess.Popen | None = None
        self.logf = work / f"{self.name}.log"

    @property
    def root(self) -> Path:
        return self.mnt

    def mount(self): ...

    def unmount_cmd(self) -> list:
        return ["fusermount3", "-u", str(self.mnt)]

    def _fuse_stop(self):
        m = str(self.mnt)
        if mounted(m):
            r = run(self.unmount_cmd(), check=False)
            if r.returncode != 0:
                log(f"{' '.join(self.unmount_cmd())}: {r.stderr.strip()}; lazy unmount")
                run(["umount", "-l", m], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{self.name} pid {self.proc.pid} still running: SIGTERM")
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def unmount(self): ...

    def remount(self):
        self.unmount()
        self.mount()


class Kernel(Fs):
    name = "kernel"

    def __init__(self, work: Path, img: Path, name: str = "kernel"):
        self.name = name
        super().__init__(work, img)

    def mount(self):
        # A loop device of its own: `mount -o loop` of a read-only image reuses a loop
        # device already bound to the same file, which imagefs's kernel tree is (the
        # store holds a hard link of this image), and erofs then shares that device's
        # superblock: the "kernel" row would measure imagefs's own tree.
        self.mnt.mkdir(parents=True, exist_ok=True)
        dev = run(["losetup", "--find", "--show", "--read-only", str(self.img)]).stdout.strip()
        try:
            run(["mount", "-t", "erofs", "-o", "ro", dev, str(self.mnt)])
        finally:
            # Mounted, the device is only marked autoclear and goes with the mount (as with
            # `mount -o loop`); not mounted, it is freed now.
            run(["losetup", "-d", dev], check=False)

    def unmount(self):
        if mounted(str(self.mnt)):
            r = run(["umount", str(self.mnt)], check=False)
            if r.returncode != 0:
                log(f"umount {self.mnt}: {r.stderr.strip()}; lazy unmount")
                run(["umount", "-l", str(self.mnt)], check=False)


class Squash(Fs):
    name = "squashfuse"

    def mount(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        with open(self.logf, "ab") as lf:
            self.proc = subprocess.Popen(["squashfuse_ll", "-f", str(self.img), str(self.mnt)],
                                         stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True)
        wait_for(lambda: mounted(str(self.mnt)) and (self.mnt / "bigfile").exists(), 30,
                 "squashfuse_ll", self.proc, self.logf)

    def unmount(self):
        self._fuse_stop()


class ImageFs(Fs):
    name = "imagefs"

    def __init__(self, work, binary, store, hexd, threads, rootfs_mounts=""):
        super().__init__(work)
        self.binary, self.store, self.hexd, self.threads = binary, store, hexd, threads
        self.rootfs_mounts = rootfs_mounts

    def unmount_cmd(self) -> list:
        # Also unmounts the image trees mounted inside (fusermount3 -u would say busy).
        return [str(self.binary), "umount", str(self.mnt)]

    @property
    def root(self) -> Path:
        return self.mnt / "digests" / self.hexd / "rootfs"

    def mount(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "mount", "--store", str(self.store), str(self.mnt), "--foreground"]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.rootfs_mounts:
            cmd += ["--rootfs-mounts", self.rootfs_mounts]
        env = {**os.environ}
        env.setdefault("RUST_LOG", "warn")
        with open(self.logf, "ab") as lf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf,
                                         env=env, start_new_session=True)
        self.cmd = " ".join(cmd)
        wait_for(lambda: mounted(str(self.mnt)) and (self.root / "bigfile").exists(), 30,
                 "imagefs", self.proc, self.logf)
        # The image tree is a read-only mount of its own on rootfs/, made right after the
        # main mount answers (unless --no-rootfs-mounts or not possible): measure that.
        own = lambda: os.stat(self.root).st_dev != os.stat(self.mnt).st_dev
        deadline = time.monotonic() + 5
        while not own() and time.monotonic() < deadline:
            time.sleep(0.05)
        fstype = next((ln.split(" - ")[1].split()[0] for ln in open("/proc/self/mountinfo")
                       if ln.split()[4] == str(self.root)), None)
        log(f"imagefs: rootfs/ is {f'a read-only {fstype} mount of its own' if own() else 'served by the main mount'}")

    def unmount(self):
        self._fuse_stop()

    def metrics(self) -> dict[str, int]:
        out = {}
        try:
            text = (self.mnt / ".imagefs" / "metrics").read_text()
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("imagefs_requests_total{op=\""):
                op = line.split('"')[1]
                out[op] = int(line.rsplit(" ", 1)[1])
            elif line.startswith("imagefs_errors_total{errno=\""):
                out["error_errno_" + line.split('"')[1]] = int(line.rsplit(" ", 1)[1])
        return out


# ---------------------------------------------------------------- measuring

def proc_cpu(proc) -> tuple[float, float] | None:
    """(user, sys) CPU seconds of a child process, all its threads."""
    if proc is None:
        return None
    try:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def vmstat_drops() -> tuple[int, int]:
    """drop_caches writes so far (ours and anyone's)."""
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in ("drop_pagecache", "drop_slab"):
                out[k] = int(v)
    return out.get("drop_pagecache", 0), out.get("drop_slab", 0)


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Load:
    """`--load`: a second workload running during each measured operation (issue 13: the FUSE
    modes "also with a second workload running"). Two processes, started right before the
    operation and killed right after it: a CPU-bound shell loop (not pinned: the scheduler
    places it as it would any job) and a reader of an unrelated 256 MiB file with O_DIRECT
    in 1 MiB requests, over and over (it competes for the disk but leaves the page cache,
    and so the cold runs, alone)."""

    def __init__(self, work: Path):
        self.file = work / "load.bin"
        if not self.file.exists() or self.file.stat().st_size != 256 << 20:
            run(["dd", "if=/dev/urandom", f"of={self.file}", "bs=1M", "count=256", "status=none"])
        self.procs: list[subprocess.Popen] = []

    def start(self):
        cmds = [["sh", "-c", "while :; do :; done"],
                ["sh", "-c", f"while :; do dd if={self.file} of=/dev/null bs=1M iflag=direct status=none; done"]]
        self.procs = [subprocess.Popen(c, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True) for c in cmds]

    def stop(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        self.procs = []


def timed(cmd: str, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                       timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"`{cmd}` exited {r.returncode}: {r.stderr.strip()[-1500:]}")
    return dt, r.stdout.strip()


def balanced_order(n: int, rep: int) -> list[int]:
    """Row `rep` of a balanced Latin square of `n` (Williams design): the first row is 0, 1,
    n-1, 2, n-2, ..., each next one adds 1 mod n; for odd n the rows are then taken again
    reversed. Over n rows (2n for odd n) every ordered pair of neighbours occurs equally
    often."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    period = n if n % 2 == 0 else 2 * n
    r = rep % period
    row = [(x + r) % n for x in first]
    if r >= n:
        row.reverse()
    return row


def check_distinct(fsmap: dict) -> None:
    """Each mount its own superblock: two roots on one device would compare a filesystem
    with itself."""
    devs: dict[int, str] = {}
    for n, fs in fsmap.items():
        d = os.stat(fs.root).st_dev
        if d in devs:
            raise RuntimeError(f"{n} and {devs[d]} share a superblock (device {d}): not two filesystems")
        devs[d] = n


def op_cmd(op: str, fs: Fs) -> str:
    return OPS[op].format(root=fs.root, tree=fs.root / "tree", big=fs.root / "bigfile")


def metrics_delta(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in sorted(set(a) | set(b)) if b.get(k, 0) - a.get(k, 0)}


def fmt_ratio(x):
    return "   -  " if x is None else f"{x:6.2f}"


def check_row(mode: str, im: float, k: float, sq: float, k2: float | None = None) -> dict:
    target = TARGET_WARM if mode == "warm" else TARGET_COLD
    rk = im / k if k else None
    rs = im / sq if sq else None
    out = {"vs_kernel": rk, "vs_squashfuse": rs, "kernel_target": target,
           "meets_kernel_target": rk is not None and rk <= target,
           "beats_squashfuse": rs is not None and rs < 1.0}
    if k2 is not None:
        out["control_vs_kernel"] = k2 / k if k else None
    return out


def print_table(rows: list[dict]) -> None:
    control = any(CONTROL in r["median_s"] for r in rows)
    hdr = f"{'operation':<22}{'kernel s':>10}{'squashfuse_ll s':>17}{'imagefs s':>11}" \
          f"{'imagefs/kernel':>16}{'imagefs/squashfuse':>20}" \
          + (f"{'kernel2/kernel':>16}" if control else "") + "  verdict"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        m = r["median_s"]
        c = r["check"]
        verdict = []
        verdict.append(("ok" if c["meets_kernel_target"] else "MISS") + f" <= {c['kernel_target']}x kernel")
        verdict.append("ok" if c["beats_squashfuse"] else "MISS")
        verdict = f"{verdict[0]}; {verdict[1]} < squashfuse"
        aa = f"{fmt_ratio(c.get('control_vs_kernel')):>16}" if control else ""
        print(f"{r['op'] + ' ' + r['mode']:<22}{m['kernel']:>10.3f}{m['squashfuse']:>17.3f}{m['imagefs']:>11.3f}"
              f"{fmt_ratio(c['vs_kernel']):>16}{fmt_ratio(c['vs_squashfuse']):>20}{aa}  {verdict}")


def profile_rows(args, fsmap: dict, rows: list[dict], work: Path) -> list[dict]:
    im: ImageFs = fsmap["imagefs"]
    wanted = [s for s in args.profile_rows.split(",") if s] if args.profile_rows else \
        [f"{r['op']}:{r['mode']}" for r in sorted(rows, key=lambda r: -(r["check"]["vs_kernel"] or 0))[:3]]
    out = []
    for spec in wanted:
        op, _, mode = spec.partition(":")
        mode = mode or "cold"
        cmd = op_cmd(op, im)
        pdir = work / "profile"
        pdir.mkdir(exist_ok=True)
        if mode.startswith("cold"):
            drop_caches()
        elif mode == "warm":
            timed(cmd, args.timeout)
        pid = im.proc.pid
        if args.profile == "strace":
            outf = pdir / f"strace-{op}-{mode}.txt"
            tool = subprocess.Popen(["strace", "-c", "-f", "-w", "-o", str(outf), "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            outf = pdir / f"perf-{op}-{mode}.data"
            tool = subprocess.Popen(["perf", "record", "-g", "-F", "999", "-o", str(outf), "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        before = im.metrics()
        dt, _ = timed(cmd, args.timeout)
        after = im.metrics()
        time.sleep(0.3)
        tool.send_signal(signal.SIGINT)
        try:
            tool.wait(timeout=60)
        except subprocess.TimeoutExpired:
            tool.kill()
            tool.wait()
        if args.profile == "strace":
            summary = outf.read_text(errors="replace") if outf.exists() else ""
        else:
            r = run(["perf", "report", "-i", str(outf), "--no-children", "--stdio", "--percent-limit", "1.5",
                     "--sort", "dso,symbol", "-g", "none"], check=False)
            summary = "\n".join(l for l in r.stdout.splitlines() if l and not l.startswith("#"))[:6000]
        out.append({"row": f"{op} {mode}", "seconds_under_tool": round(dt, 3), "tool": args.profile,
                    "requests": metrics_delta(before, after), "summary": summary, "file": str(outf)})
        print(f"\n== {args.profile}: imagefs {op} {mode} ({dt:.2f} s under the tool) ==")
        print(f"FUSE requests: {metrics_delta(before, after)}")
        print(summary)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/var/tmp/imagefs-bench")
    ap.add_argument("--out", default=None, help="JSON results (default WORK/results.json)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ops", default="find,stat,tar,dd")
    ap.add_argument("--src-mb", type=int, default=400, help="file bytes of the tree (half /usr/share, half /usr/lib)")
    ap.add_argument("--max-file-kib", type=int, default=1024, help="largest file taken into the tree")
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--bin", default=None, help="imagefs binary (else $IMAGEFS_BIN, else target/release/imagefs)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="imagefs --threads (0: its default)")
    ap.add_argument("--rootfs-mounts", choices=("kernel", "fuse", "none"), default="",
                    help="imagefs --rootfs-mounts (default: the binary's default, kernel where it can)")
    ap.add_argument("--remount-cold", action="store_true", help="add cold+remount rows")
    ap.add_argument("--control", action="store_true",
                    help="also measure a second kernel loop mount of the same image file ('kernel2'): "
                         "kernel2/kernel shows how far the kernel's erofs is from itself in this run")
    ap.add_argument("--profile", choices=("none", "strace", "perf"), default="none")
    ap.add_argument("--profile-rows", default="", help="e.g. tar:cold,stat:cold (default: 3 worst vs kernel)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--retries", type=int, default=3,
                    help="re-measure a cold/warm sequence up to this many times when another process dropped "
                         "the page cache during it (seen in /proc/vmstat drop_pagecache)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before measuring, wait up to SECONDS for the 1-minute load average to fall below 0.5 "
                         "(other work on this 2-core machine skews every figure)")
    ap.add_argument("--load", action="store_true",
                    help="run a second workload during each measured operation, started right before it and "
                         "killed right after: a CPU-bound shell loop (not pinned) and an O_DIRECT reader of an "
                         "unrelated 256 MiB file in WORK (1 MiB requests, in a loop); combine with --wait-idle 0 "
                         "(the default) for issue 13's 'second workload' figures")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loop mount, drop_caches)", file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    for o in ops:
        if o not in OPS:
            ap.error(f"unknown op {o}")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out) if args.out else work / "results.json"

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    ensure_tools()
    binary = ensure_binary(args)
    src_info = build_source(args, work)
    img_info = build_images(work, src_info)
    store = build_store(work, img_info)
    fsmap: dict[str, Fs] = {
        "kernel": Kernel(work, work / "img" / "rootfs.erofs"),
        "squashfuse": Squash(work, work / "img" / "rootfs.sqfs"),
        "imagefs": ImageFs(work, binary, store, img_info["hex"], args.threads, args.rootfs_mounts),
    }
    fses = FSES
    if args.control:
        # The store's own hard link: the same inode the imagefs tree's loop device reads.
        fsmap[CONTROL] = Kernel(work, store / "content" / img_info["hex"] / "rootfs.erofs", CONTROL)
        fses = FSES + (CONTROL,)
    load = Load(work) if args.load else None
    modes = ["cold", "warm"] + (["cold+remount"] if args.remount_cold else [])
    samples = {(op, mode, fs): [] for op in ops for mode in modes for fs in fses}
    reqs = {(op, mode): [] for op in ops for mode in modes}
    cpu = {(op, mode, fs): [] for op in ops for mode in modes for fs in fses}
    contaminated = []
    outputs = {}
    result = {"ok": False}
    leftovers = []
    try:
        for fs in fsmap.values():
            if mounted(str(fs.mnt)):
                log(f"{fs.mnt} is mounted from an earlier run: unmounting it")
                run(["umount", "-l", str(fs.mnt)], check=False)
            fs.mount()
        log("mounted: " + ", ".join(f"{n} at {f.root}" for n, f in fsmap.items()))
        check_distinct(fsmap)
        # Sanity: the three show the same tree (warm-up, not measured).
        sig = {}
        for n, fs in fsmap.items():
            # Directory sizes differ between erofs and squashfs by design: left out.
            _, s = timed(f"cd {fs.root} && {{ find . ! -type d -printf '%P %y %s %m %U %G %l\\n'; "
                         f"find . -type d -printf '%P %y %m %U %G\\n'; }} | LC_ALL=C sort | sha256sum", 600)
            sig[n] = s.split()[0]
        if len(set(sig.values())) != 1:
            log(f"WARNING: the three mounts list different trees: {sig}")
        im: ImageFs = fsmap["imagefs"]
        if args.wait_idle > 0:
            t_end = time.monotonic() + args.wait_idle
            while loadavg()[0] >= 0.5 and time.monotonic() < t_end:
                time.sleep(5)
        load_start = loadavg()
        if load_start[0] >= 1.0:
            log(f"WARNING: load average {load_start} at the start: other work is running, figures are skewed")
        metrics_start = im.metrics()
        for rep in range(args.reps):
            order = [fses[i] for i in balanced_order(len(fses), rep)]
            for op in ops:
                for n in order:
                    fs = fsmap[n]
                    cmd = op_cmd(op, fs)
                    # One cold..warm sequence; redone if another process dropped the caches
                    # while a command ran (/proc/vmstat drop_pagecache moved): a warm run
                    # made cold by someone else is not a warm figure.
                    for attempt in range(args.retries + 1):
                        seq, foreign = [], []
                        for mode in modes:
                            if mode == "cold+remount":
                                fs.remount()
                                check_distinct(fsmap)
                            if mode.startswith("cold"):
                                drop_caches()
                            m0 = im.metrics() if n == "imagefs" else None
                            c0 = proc_cpu(fs.proc)
                            v0 = vmstat_drops()
                            if load:
                                load.start()
                            try:
                                dt, stdout = timed(cmd, args.timeout)
                            finally:
                                if load:
                                    load.stop()
                            v1 = vmstat_drops()
                            c1 = proc_cpu(fs.proc)
                            # The metrics read itself costs a lookup+open+read+release: negligible.
                            m1 = metrics_delta(m0, im.metrics()) if n == "imagefs" else None
                            if v1 != v0:
                                foreign.append(mode)
                            seq.append((mode, dt, stdout, c0, c1, m1))
                            log(f"rep {rep + 1}/{args.reps} {op:<4} {mode:<12} {n:<10} {dt:8.3f} s"
                                + ("   (caches dropped by another process meanwhile)" if v1 != v0 else ""))
                        if not foreign:
                            break
                        contaminated.append({"rep": rep + 1, "op": op, "fs": n, "modes": foreign,
                                             "attempt": attempt + 1, "kept": attempt == args.retries})
                        if attempt < args.retries:
                            log("  another process dropped the caches during this sequence: measuring it again")
                    for mode, dt, stdout, c0, c1, m1 in seq:
                        if c0 and c1:
                            cpu[(op, mode, n)].append((c1[0] - c0[0], c1[1] - c0[1]))
                        if m1 is not None:
                            reqs[(op, mode)].append(m1)
                        samples[(op, mode, n)].append(dt)
                        if op == "find":
                            outputs.setdefault(n, stdout)
        metrics_end = im.metrics()
        load_end = loadavg()
        if len(set(outputs.values())) > 1:
            log(f"WARNING: find | wc -l differs: {outputs}")
        rows = []
        for op in ops:
            for mode in modes:
                med = {n: statistics.median(samples[(op, mode, n)]) for n in fses}
                rows.append({"op": op, "mode": mode, "command": OPS[op].replace("{root}", "ROOT").replace("{tree}", "ROOT/tree")
                             .replace("{big}", "ROOT/bigfile"),
                             "median_s": med,
                             "samples_s": {n: [round(x, 4) for x in samples[(op, mode, n)]] for n in fses},
                             "imagefs_requests": reqs[(op, mode)][-1] if reqs[(op, mode)] else {},
                             "daemon_cpu_s": {n: {"user": round(statistics.median(u for u, _ in cpu[(op, mode, n)]), 3),
                                                  "sys": round(statistics.median(k for _, k in cpu[(op, mode, n)]), 3)}
                                              for n in ("squashfuse", "imagefs") if cpu[(op, mode, n)]},
                             "check": check_row(mode, med["imagefs"], med["kernel"], med["squashfuse"],
                                                med.get(CONTROL))})
        print()
        print(f"tree: {src_info['files']} files, {src_info['symlinks']} symlinks, {src_info['dirs']} dirs, "
              f"{src_info['bytes'] / 1e6:.0f} MB; find | wc -l = {outputs.get('kernel')}; bigfile "
              f"{src_info['bigfile_bytes'] >> 20} MiB; erofs lz4 {img_info['erofs_bytes'] / 1e6:.0f} MB, "
              f"squashfs lz4 {img_info['sqfs_bytes'] / 1e6:.0f} MB; median of {args.reps}; "
              f"kernel {platform.release()}, {os.cpu_count()} cpus")
        print(f"load average at start {load_start}, at end {load_end} (2 cores: above ~0.5 means other work "
              f"ran alongside and skews the figures)")
        if load:
            print("--load: a CPU-bound loop and an O_DIRECT reader of an unrelated file ran during every "
                  "measured operation")
        kept = [c for c in contaminated if c["kept"]]
        if contaminated:
            print(f"another process dropped the page cache during {len(contaminated)} sequence(s); "
                  f"{len(kept)} kept after {args.retries} retries: "
                  + (", ".join(f"rep {c['rep']} {c['op']} {c['fs']} {'/'.join(c['modes'])}" for c in kept) or "none"))
        print_table(rows)
        print("\ndaemon CPU per row (median; user+sys seconds of the daemon process, all threads):")
        for r in rows:
            c = r["daemon_cpu_s"]
            print(f"  {r['op'] + ' ' + r['mode']:<20} " + "   ".join(
                f"{n}: {v['user']:.2f} user + {v['sys']:.2f} sys" for n, v in c.items()))
        print("\nimagefs FUSE requests per row (last repetition):")
        for r in rows:
            print(f"  {r['op'] + ' ' + r['mode']:<20} {r['imagefs_requests']}")
        misses = [f"{r['op']} {r['mode']}" for r in rows
                  if not (r["check"]["meets_kernel_target"] and r["check"]["beats_squashfuse"])]
        print(f"\ntargets (warm <= {TARGET_WARM}x kernel, cold <= {TARGET_COLD}x kernel, < squashfuse_ll): "
              + ("all met" if not misses else f"missed on {len(misses)}/{len(rows)} rows: {', '.join(misses)}"))
        prof = profile_rows(args, fsmap, rows, work) if args.profile != "none" else []
        try:
            git = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
        except OSError:
            git = ""
        result = {"ok": True, "rows": rows, "targets": {"warm": TARGET_WARM, "cold": TARGET_COLD},
                  "missed": misses, "foreign_cache_drops": contaminated, "source": src_info, "images": img_info, "tree_signatures": sig,
                  "find_counts": outputs, "imagefs_metrics_total_delta": metrics_delta(metrics_start, metrics_end),
                  "imagefs_metrics_end": metrics_end, "profile": prof,
                  "env": {"kernel": platform.release(), "cpus": os.cpu_count(), "imagefs_bin": binary,
                          "loadavg_start": load_start, "loadavg_end": load_end,
                          "second_workload": Load.__doc__.split("\n\n")[0] if load else None,
                          "imagefs_cmd": getattr(im, "cmd", ""), "git": git, "reps": args.reps,
                          "cold": "sync; echo 3 > /proc/sys/vm/drop_caches, no remount (daemons keep their "
                                  "own caches)" + ("; cold+remount rows remount first" if args.remount_cold else ""),
                          "stat_method": "find -printf '%s %m %u' (GNU find lstat()s each entry)"}}
    finally:
        for fs in fsmap.values():
            try:
                fs.unmount()
            except Exception as e:  # keep unmounting the others
                log(f"unmount {fs.name}: {e}")
        with open("/proc/mounts") as f:
            leftovers = [l.split()[1] for l in f if unescape_mountinfo(l.split()[1]).startswith(str(work / "mnt"))]
        if leftovers:
            log(f"WARNING: still mounted: {leftovers}")
        else:
            log("all unmounted; /proc/mounts has nothing under " + str(work / "mnt"))
        result["leftover_mounts"] = leftovers
        if result.get("ok"):
            out_path.write_text(json.dumps(result, indent=2))
            log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
