#!/usr/bin/env python3
"""Benchmark of tag operations: imagefs (through a real FUSE mount) against
hypeman's own algorithm run on a raw copy of the same store, in one run.

This is a benchmark, not a test: it reports figures and evaluates them against
the targets of issue 2, it never fails on a slow result.

For every store size (default 1,000 / 10,000 / 100,000 tags; always 100 tags
per repository and 10 tags per digest, so the largest store is 100,000 tags
over 10,000 digests in 1,000 repositories) it:

  1. builds the store (setup, not measured):
       STORE/content/<hex>/rootfs.erofs     a copy (not a hard link) of one tiny
                                            real erofs image (mkfs.erofs -zlz4)
       STORE/content/<hex>/metadata.json    hypeman's fields, "status": "ready"
       STORE/repositories/bench.local/repoNNNN/tNNN -> ../../../content/<hex>
     <hex> are distinct 64-hex names (sha256 of a counter), NOT the sha256 of
     the image bytes; every digest's tags live in one repository.
  2. runs hypeman's algorithm on a raw (unmounted) copy of the store,
  3. mounts a fresh copy with `imagefs mount --store STORE MNT --foreground`,
     measures start-up time and daemon RSS, and runs the same operation plan
     through the mount with direct syscalls (os.unlink / os.symlink).

The operation plan is a sequence of cycles. One cycle takes one digest (10
tags) of one repository: it removes 9 of its tags (each "rm, not last"), then
the 10th ("rm, last": the digest directory must go), then creates 10 new tags
in the same repository with `ln -s <hex>` naming that repository's keeper
digest ("ln -s"), so repositories stay between 90 and 100 tags.

Usage:
  python3 scripts/bench_tags.py [--sizes 1000,10000,100000] [--reps 100]
                                [--bin PATH] [--out results.json] [--keep]

IMAGEFS_BIN (or --bin) selects the binary; the default is
<repo>/target/release/imagefs, built with `cargo build --release` if missing
(unless --no-build).  Python 3.11, standard library only.  Needs /dev/fuse and
fusermount3 for the imagefs half; the hypeman half always runs.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import platform
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "imagefs"
now_ns = time.perf_counter_ns


# --------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------

@dataclass
class Layout:
    n_tags: int
    tags_per_repo: int
    tags_per_digest: int
    repo_prefix: str = "bench.local/repo"

    def __post_init__(self):
        if self.n_tags % self.tags_per_repo:
            raise SystemExit(f"--sizes: {self.n_tags} is not a multiple of --tags-per-repo {self.tags_per_repo}")
        if self.tags_per_repo % self.tags_per_digest:
            raise SystemExit("--tags-per-repo must be a multiple of --tags-per-digest")
        self.n_repos = self.n_tags // self.tags_per_repo
        self.digests_per_repo = self.tags_per_repo // self.tags_per_digest
        self.n_digests = self.n_repos * self.digests_per_repo
        self._rw = max(4, len(str(self.n_repos - 1)))
        self._tw = max(3, len(str(self.tags_per_repo - 1)))
        self._hex = [hashlib.sha256(f"imagefs-bench/digest/{d}".encode()).hexdigest()
                     for d in range(self.n_digests)]

    def repo(self, r: int) -> str:
        return f"{self.repo_prefix}{r:0{self._rw}d}"

    def tag(self, t: int) -> str:
        return f"t{t:0{self._tw}d}"

    def digest_of(self, r: int, t: int) -> int:
        # interleaved: tags t, t+dpr, t+2*dpr, ... of a repository share a digest
        return r * self.digests_per_repo + t % self.digests_per_repo

    def hex(self, d: int) -> str:
        return self._hex[d]

    def describe(self) -> dict:
        return {
            "tags": self.n_tags,
            "repositories": self.n_repos,
            "tags_per_repository": self.tags_per_repo,
            "digests": self.n_digests,
            "tags_per_digest": self.tags_per_digest,
            "digests_per_repository": self.digests_per_repo,
            "repository_names": f"{self.repo(0)} .. {self.repo(self.n_repos - 1)}",
            "tag_names": f"{self.tag(0)} .. {self.tag(self.tags_per_repo - 1)}",
            "tag_symlink_target": "../../../content/<hex> (relative, from STORE/repositories/<repo>/)",
            "digest_of_tag": "repo r, tag t -> digest r*digests_per_repo + t % digests_per_repo (all of a digest's tags in one repository)",
            "hex_names": "sha256('imagefs-bench/digest/<n>'), distinct, NOT the sha256 of the image bytes",
        }


def rel_prefix(repo: str) -> str:
    # the tag lives in STORE/repositories/<repo>/ : one ../ per directory level
    return "../" * (1 + repo.count("/") + 1)


def make_payload(workdir: Path) -> tuple[Path, str]:
    """A tiny real erofs image (mkfs.erofs -zlz4), or a 4 KiB file if mkfs.erofs is missing."""
    out = workdir / "payload.erofs"
    mkfs = shutil.which("mkfs.erofs")
    if mkfs:
        src = workdir / "payload-src"
        (src / "bin").mkdir(parents=True, exist_ok=True)
        (src / "etc").mkdir(exist_ok=True)
        (src / "etc" / "os-release").write_text("NAME=imagefs-bench\n")
        (src / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
        os.chmod(src / "bin" / "hello", 0o755)
        r = subprocess.run([mkfs, "-zlz4", "-T0", "--all-root", "--quiet", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return out, f"real erofs image, mkfs.erofs -zlz4 of a 3-file dir, {out.stat().st_size} bytes, copied (not hard-linked) into every digest"
        print(f"warning: mkfs.erofs failed ({r.stderr.strip()}); using a plain file", file=sys.stderr)
    out.write_bytes(b"\0" * 4096)
    return out, "NOT an erofs image (mkfs.erofs missing: apt-get install -y erofs-utils): a 4096-byte file, copied into every digest"


def metadata_for(layout: Layout, d: int, size: int) -> bytes:
    r = d // layout.digests_per_repo
    first_tag = d % layout.digests_per_repo
    meta = {
        "name": f"{layout.repo(r)}:{layout.tag(first_tag)}",
        "digest": f"sha256:{layout.hex(d)}",
        "status": "ready",
        "size_bytes": size,
        "entrypoint": ["/bin/hello"],
        "cmd": [],
        "env": {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
        "working_dir": "/",
        "created_at": "2025-01-01T00:00:00Z",
    }
    return json.dumps(meta, indent=2).encode()


def build_store(store: Path, layout: Layout, payload: Path) -> float:
    """Setup, not measured. Threads, because on some VMs each ext4 create costs
    hundreds of microseconds of kernel time and the syscalls release the GIL."""
    t0 = time.monotonic()
    size = payload.stat().st_size
    content = store / "content"
    content.mkdir(parents=True)
    (store / "repositories").mkdir()
    data = payload.read_bytes()

    def make_digests(ds):
        for d in ds:
            dd = f"{content}/{layout.hex(d)}"
            os.mkdir(dd)
            with open(f"{dd}/rootfs.erofs", "wb") as f:      # a real copy, not a hard link
                f.write(data)
            with open(f"{dd}/metadata.json", "wb") as f:
                f.write(metadata_for(layout, d, size))

    def make_repo(r):
        repo = layout.repo(r)
        rd = f"{store}/repositories/{repo}"
        os.makedirs(rd)
        prefix = rel_prefix(repo) + "content/"
        for t in range(layout.tags_per_repo):
            os.symlink(prefix + layout.hex(layout.digest_of(r, t)), f"{rd}/{layout.tag(t)}")

    chunk = 100
    with ThreadPoolExecutor(max(4, 2 * (os.cpu_count() or 1))) as ex:
        futs = [ex.submit(make_digests, range(i, min(i + chunk, layout.n_digests)))
                for i in range(0, layout.n_digests, chunk)]
        futs += [ex.submit(make_repo, r) for r in range(layout.n_repos)]
        for f in futs:
            f.result()
    return time.monotonic() - t0


# --------------------------------------------------------------------------
# the operation plan
# --------------------------------------------------------------------------

@dataclass
class Cycle:
    repo: str
    digest_hex: str
    rm_order: list          # tag names; the last one is the digest's last reference
    keeper_hex: str
    new_tags: list          # created with ln -s <keeper_hex>


def make_plan(layout: Layout, reps: int, seed: int) -> list[Cycle]:
    rng = random.Random(seed)
    repos = list(range(layout.n_repos))
    rng.shuffle(repos)
    consumable = layout.n_repos * (layout.digests_per_repo - 1)   # local digest 0 is the keeper
    n = min(reps, consumable)
    plan = []
    for i in range(n):
        r = repos[i % layout.n_repos]
        k = 1 + i // layout.n_repos
        tags = [layout.tag(t) for t in range(layout.tags_per_repo) if t % layout.digests_per_repo == k]
        rng.shuffle(tags)
        plan.append(Cycle(
            repo=layout.repo(r),
            digest_hex=layout.hex(r * layout.digests_per_repo + k),
            rm_order=tags,
            keeper_hex=layout.hex(r * layout.digests_per_repo),
            new_tags=[f"n{i:05d}-{j}" for j in range(layout.tags_per_digest)],
        ))
    return plan


# --------------------------------------------------------------------------
# hypeman's algorithm (mirrors kernel/hypeman lib/images/storage.go,
# storage_refs.go and manager.go DeleteImage / TagImage)
# --------------------------------------------------------------------------

class NotFound(Exception):
    pass


class HypemanStore:
    """STORE here is hypeman's `images/` directory (paths.ImagesDir())."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.repos_dir = f"{self.root}/repositories"

    # paths.Paths
    def new_tag(self, repo, tag):            # ImageRepositoryTagSymlink
        return f"{self.repos_dir}/{repo}/{tag}"

    def legacy_tag(self, repo, tag):         # ImageTagSymlink
        return f"{self.root}/{repo}/{tag}"

    def content_dir(self, hexd):             # ImageContentDir
        return f"{self.root}/content/{hexd}"

    def legacy_dir(self, repo, hexd):        # ImageDigestDir
        return f"{self.root}/{repo}/{hexd}"

    @staticmethod
    def _exists(path, lstat=False):
        try:
            (os.lstat if lstat else os.stat)(path)
            return True
        except FileNotFoundError:
            return False

    # tagSymlinkPath: Lstat the content-layout path, fall back to the legacy one
    def tag_symlink_path(self, repo, tag):
        p = self.new_tag(repo, tag)
        if self._exists(p, lstat=True):
            return p
        return self.legacy_tag(repo, tag)

    # resolveTag
    def resolve_tag(self, repo, tag, link=None):
        link = link or self.tag_symlink_path(repo, tag)
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            raise NotFound(f"{repo}:{tag}")
        if os.path.isabs(target):
            raise ValueError("invalid symlink target")
        hexd = os.path.basename(target.rstrip("/")) or "/"
        if hexd in (".", "/"):
            raise ValueError("invalid symlink target")
        if target != hexd:
            resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
            if resolved != os.path.normpath(self.content_dir(hexd)):
                raise ValueError("invalid symlink target")
        return hexd

    # listTags (storage_refs.go): os.ReadDir (sorted, d_type) of both layouts' dirs
    def list_tags(self, repo):
        seen = set()
        tags = []
        for d in (f"{self.repos_dir}/{repo}", f"{self.root}/{repo}"):
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for e in entries:
                if not e.is_symlink():
                    continue
                if e.name in seen:
                    continue
                seen.add(e.name)
                tags.append(e.name)
        return tags

    # countTagsForDigest: listTags + resolveTag of every tag
    def count_tags_for_digest(self, repo, hexd):
        n = 0
        for tag in self.list_tags(repo):
            try:
                if self.resolve_tag(repo, tag) == hexd:
                    n += 1
            except (NotFound, ValueError, OSError):
                continue
        return n

    # deleteTag (storage_refs.go): Lstat + Remove in both layouts
    def delete_tag(self, repo, tag):
        found = False
        for p in (self.new_tag(repo, tag), self.legacy_tag(repo, tag)):
            try:
                os.lstat(p)
            except FileNotFoundError:
                continue
            found = True
            os.remove(p)
        if not found:
            raise NotFound(f"{repo}:{tag}")

    @staticmethod
    def _remove_all(path):
        # os.RemoveAll: nothing there is not an error
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.remove(path)

    # deleteDigest (storage.go): RemoveAll of the content and the legacy dir
    def delete_digest(self, repo, hexd):
        self._remove_all(self.content_dir(hexd))
        self._remove_all(self.legacy_dir(repo, hexd))

    # contentTagCount (storage_refs.go): filepath.Walk of all of repositories/
    # (Lstat of every entry, names sorted), resolveTag of every symlink
    def content_tag_count(self, hexd):
        root = self.repos_dir
        count = 0
        try:
            os.lstat(root)
        except FileNotFoundError:
            return 0

        def walk(d, rel):
            nonlocal count
            try:
                names = sorted(os.listdir(d))
            except OSError:
                return
            for name in names:
                p = f"{d}/{name}"
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                r = f"{rel}/{name}" if rel else name
                if stat.S_ISDIR(st.st_mode):
                    walk(p, r)
                elif stat.S_ISLNK(st.st_mode):
                    parts = r.split("/")
                    if len(parts) < 2:
                        continue
                    try:
                        if self.resolve_tag("/".join(parts[:-1]), parts[-1]) == hexd:
                            count += 1
                    except (NotFound, ValueError, OSError):
                        pass

        walk(root, "")
        return count

    def _metadata(self, hexd):
        with open(f"{self.content_dir(hexd)}/metadata.json", "rb") as f:
            return json.loads(f.read())

    # removeDigestIfUnreferenced (storage_refs.go), preserveDigestOnly=true
    def remove_digest_if_unreferenced(self, repo, hexd):
        content_exists = self._exists(self.content_dir(hexd))
        self._remove_all(self.legacy_dir(repo, hexd))
        if not content_exists:
            return
        if self.content_tag_count(hexd) > 0:
            return
        try:
            if self._metadata(hexd).get("status") in ("pending", "pulling", "converting"):
                return                                   # contentPullInProgress
        except (OSError, ValueError):
            pass
        try:
            if "@" in self._metadata(hexd).get("name", ""):
                return                                   # contentIsDigestOnly
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.content_dir(hexd))

    # manager.DeleteImage for a tag reference.
    #  walk_all=False: the algorithm of issue 2 / hypeman PR #111: resolve the
    #    tag, unlink it, count the repository's remaining tags naming the
    #    digest (listTags + readlink of each), remove the digest dir if zero.
    #  walk_all=True: hypeman's current code: when the repository count is
    #    zero, removeDigestIfUnreferenced also walks ALL of repositories/
    #    (contentTagCount) before removing content/<hex>.
    def delete_image(self, repo, tag, walk_all=False):
        hexd = self.resolve_tag(repo, tag)
        self.delete_tag(repo, tag)
        count = self.count_tags_for_digest(repo, hexd)
        if count == 0:
            if walk_all:
                self.remove_digest_if_unreferenced(repo, hexd)
            else:
                self.delete_digest(repo, hexd)
        return count

    # --- floor: the least any "unlink, then scan the repository" scheme must do
    # (readlink + unlink of the tag, readdir of its repository + readlink of
    # each symlink, rmtree if none names the digest; no validation, no lstat)
    def delete_image_floor(self, repo, tag):
        d = f"{self.repos_dir}/{repo}"
        link = f"{d}/{tag}"
        suffix = "/" + os.path.basename(os.readlink(link))
        os.unlink(link)
        count = 0
        with os.scandir(d) as it:
            for e in it:
                if e.is_symlink() and os.readlink(e.path).endswith(suffix):
                    count += 1
        if count == 0:
            shutil.rmtree(self.root + "/content" + suffix)
        return count

    def tag_image_floor(self, repo, tag, hexd):
        os.symlink(rel_prefix(repo) + "content/" + hexd, f"{self.repos_dir}/{repo}/{tag}")

    # resolveImageLayout (content layout, no legacy copy present)
    def _resolve_layout(self, repo, hexd):
        ld = self.legacy_dir(repo, hexd)
        legacy_meta = self._exists(f"{ld}/metadata.json")
        legacy_disk = self._exists(f"{ld}/rootfs.erofs")
        if legacy_meta and legacy_disk:
            raise RuntimeError("legacy layout not expected in this benchmark")
        cd = self.content_dir(hexd)
        if self._exists(f"{cd}/metadata.json") or self._exists(f"{cd}/rootfs.erofs"):
            return cd
        raise NotFound(hexd)

    # readMetadataAt: read + unmarshal, stat the disk when ready
    def _read_metadata_at(self, d):
        try:
            with open(f"{d}/metadata.json", "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError:
            raise NotFound(d)
        if meta.get("status") == "ready":
            os.stat(f"{d}/rootfs.erofs")
        return meta

    # manager.TagImage with a digest source in the same repository:
    # readyTagImage -> resolve the existing target tag -> installTagSymlink
    # (stageTagSymlink: temp dir + symlink + rename; removeStaleTagSymlink).
    # Not mirrored: the in-process mutex, the tag-generation bookkeeping and
    # installTag's rewrite of metadata.json after the tag is installed.
    def tag_image(self, repo, tag, hexd):
        d = self._resolve_layout(repo, hexd)
        meta = self._read_metadata_at(d)
        if meta.get("status") != "ready":
            raise RuntimeError("not ready")
        try:
            self.resolve_tag(repo, tag)          # previousDigest
        except NotFound:
            pass
        # stageTagSymlink
        layout_dir = self._resolve_layout(repo, hexd)
        link = self.new_tag(repo, tag)
        parent = os.path.dirname(link)
        target = os.path.relpath(layout_dir, parent)
        for p in (link, self.legacy_tag(repo, tag)):         # readSymlinkState x2
            try:
                os.readlink(p)
            except FileNotFoundError:
                pass
        try:                                                 # MkdirAll
            if not stat.S_ISDIR(os.stat(parent).st_mode):
                raise NotADirectoryError(parent)
        except FileNotFoundError:
            os.makedirs(parent, 0o755)
        tmpdir = tempfile.mkdtemp(prefix=".tag-stage-", dir=parent)
        tmp = f"{tmpdir}/{tag}"
        os.symlink(target, tmp)
        os.rename(tmp, link)
        try:                                                 # removeStaleTagSymlink
            os.remove(self.legacy_tag(repo, tag))
        except FileNotFoundError:
            pass
        os.rmdir(tmpdir)                                     # RemoveAll(tempDir)


# --------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------

def summarize(samples_ns: list) -> dict | None:
    if not samples_ns:
        return None
    s = sorted(samples_ns)
    n = len(s)

    def q(p):  # nearest rank
        return s[max(0, math.ceil(p * n) - 1)] / 1000.0

    mid = (s[(n - 1) // 2] + s[n // 2]) / 2 / 1000.0
    return {"n": n, "median_us": round(mid, 1), "p90_us": round(q(0.9), 1),
            "min_us": round(s[0] / 1000.0, 1), "max_us": round(s[-1] / 1000.0, 1),
            "mean_us": round(sum(s) / n / 1000.0, 1)}


# --------------------------------------------------------------------------
# raw-store half
# --------------------------------------------------------------------------

class RawRunner:
    """One side of the comparison on a raw store. variant: 'scan' (issue 2 /
    hypeman PR #111), 'walk' (hypeman's current code), 'floor'."""

    def __init__(self, store: Path, variant: str):
        self.hs = hs = HypemanStore(store)
        self.variant = variant
        if variant == "floor":
            self.delete, self.tag_image = hs.delete_image_floor, hs.tag_image_floor
        else:
            walk_all = variant == "walk"
            self.delete = lambda repo, tag: hs.delete_image(repo, tag, walk_all=walk_all)
            self.tag_image = hs.tag_image
        self.samples = {"rm_not_last": [], "rm_last": [], "ln": [], "rm_binary": []}
        self.problems = []

    def cycle(self, c: Cycle):
        res = self.samples
        for i, tag in enumerate(c.rm_order):
            last = i == len(c.rm_order) - 1
            t0 = now_ns()
            left = self.delete(c.repo, tag)
            dt = now_ns() - t0
            res["rm_last" if last else "rm_not_last"].append(dt)
            gone = not os.path.lexists(self.hs.content_dir(c.digest_hex))
            if last != gone or (left == 0) != last:
                self.problems.append(f"{c.repo}:{tag} last={last} left={left} digest_gone={gone}")
        for tag in c.new_tags:
            t0 = now_ns()
            self.tag_image(c.repo, tag, c.keeper_hex)
            res["ln"].append(now_ns() - t0)

    def rm_binary(self, c: Cycle):
        p = self.hs.new_tag(c.repo, c.new_tags[0])
        t0 = now_ns()
        subprocess.run(["rm", p], check=True)
        self.samples["rm_binary"].append(now_ns() - t0)


# --------------------------------------------------------------------------
# imagefs half
# --------------------------------------------------------------------------

def _unescape_mountinfo(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_points() -> set:
    with open("/proc/self/mountinfo") as f:
        return {_unescape_mountinfo(line.split(" ")[4]) for line in f if line.count(" ") > 4}


def mount_entry(mnt: str) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split(" ")
            if len(parts) > 4 and _unescape_mountinfo(parts[4]) == mnt:
                sep = parts.index("-") if "-" in parts else -1
                return parts[sep + 1] if sep > 0 else "?"
    return None


def proc_status_kib(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class Watchdog(threading.Thread):
    """Kills our own daemon (by its pid) if the benchmark makes no progress, so a
    hung FUSE request cannot hang the benchmark: the kernel then fails the
    pending request with ENOTCONN."""

    def __init__(self, timeout: float, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.timeout, self.proc = timeout, proc
        self.last = time.monotonic()
        self.stopped = threading.Event()
        self.fired = False

    def kick(self):
        self.last = time.monotonic()

    def run(self):
        while not self.stopped.wait(1.0):
            if time.monotonic() - self.last > self.timeout:
                self.fired = True
                print(f"watchdog: no progress for {self.timeout:.0f} s, killing imagefs pid {self.proc.pid}",
                      file=sys.stderr)
                try:
                    self.proc.kill()
                except OSError:
                    pass
                return


class Mount:
    def __init__(self, binary: str, store: Path, mnt: Path, log: Path, extra_args: list):
        self.binary, self.store, self.mnt, self.log = binary, store, str(mnt), log
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> dict:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        cmd = [self.binary, "mount", "--store", str(self.store), self.mnt, "--foreground", *self.extra_args]
        logf = open(self.log, "wb")
        t0 = now_ns()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        logf.close()
        t_mountinfo = None
        tags = os.path.join(self.mnt, "tags")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imagefs exited with {self.proc.returncode} before the mount answered; "
                                   f"log tail:\n{self.log_tail()}")
            if t_mountinfo is None and mount_entry(self.mnt) is not None:
                t_mountinfo = now_ns()
            if t_mountinfo is not None:
                try:
                    st = os.stat(tags)
                    if stat.S_ISDIR(st.st_mode):
                        break
                except OSError:
                    pass
            if (now_ns() - t0) / 1e9 > timeout:
                raise RuntimeError(f"mount did not answer a stat of {tags} within {timeout} s; "
                                   f"log tail:\n{self.log_tail()}")
            time.sleep(0.0005)
        t_ready = now_ns()
        return {"startup_s": round((t_ready - t0) / 1e9, 4),
                "mountinfo_s": round((t_mountinfo - t0) / 1e9, 4),
                "fstype": mount_entry(self.mnt),
                "command": " ".join(cmd),
                "pid": self.proc.pid}

    def log_tail(self, n=4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> dict:
        info = {}
        if mount_entry(self.mnt) is not None:
            r = subprocess.run(["fusermount3", "-u", self.mnt], capture_output=True, text=True)
            info["fusermount3"] = r.returncode
            if r.returncode != 0:
                info["fusermount3_err"] = r.stderr.strip()
                r2 = subprocess.run(["umount", "-l", self.mnt], capture_output=True, text=True)
                info["umount_l"] = r2.returncode
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                info["sigterm"] = True
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    info["sigkill"] = True
                    self.proc.kill()
                    self.proc.wait()
        if self.proc is not None:
            info["exit_code"] = self.proc.returncode
        if mount_entry(self.mnt) is not None:       # daemon gone but mount left: lazy unmount
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        return info


class MountRunner:
    """imagefs through the mount, direct syscalls."""

    def __init__(self, mnt: Path, store: Path, wd: Watchdog):
        self.tags, self.store, self.wd = f"{mnt}/tags", store, wd
        self.mnt = str(mnt)
        self.samples = {"rm_not_last": [], "rm_last": [], "ln": [], "rm_binary": [],
                        "rm_last_tree": [], "rm_last_no_tree": []}
        self.problems = []

    def cycle(self, c: Cycle):
        res, tags = self.samples, self.tags
        for i, tag in enumerate(c.rm_order):
            last = i == len(c.rm_order) - 1
            p = f"{tags}/{c.repo}/{tag}"
            os.lstat(p)                        # untimed, as rm's own fstatat: the dentry is warm
            # untimed: does the image have a tree mounted of its own (whose detach rm waits for)?
            tree = last and f"{self.mnt}/digests/{c.digest_hex}/rootfs" in mount_points()
            t0 = now_ns()
            os.unlink(p)
            dt = now_ns() - t0
            self.wd.kick()
            res["rm_last" if last else "rm_not_last"].append(dt)
            if last:
                res["rm_last_tree" if tree else "rm_last_no_tree"].append(dt)
            gone = not os.path.lexists(f"{self.store}/content/{c.digest_hex}")
            if last != gone:
                self.problems.append(f"{c.repo}:{tag} last={last} but digest dir in store gone={gone} right after unlink")
        for tag in c.new_tags:
            p = f"{tags}/{c.repo}/{tag}"
            try:
                os.lstat(p)                    # untimed (negative lookup), as ln's own checks
            except FileNotFoundError:
                pass
            t0 = now_ns()
            os.symlink(c.keeper_hex, p)
            dt = now_ns() - t0
            self.wd.kick()
            res["ln"].append(dt)

    def rm_binary(self, c: Cycle):
        p = f"{self.tags}/{c.repo}/{c.new_tags[0]}"
        t0 = now_ns()
        subprocess.run(["rm", p], check=True)
        self.samples["rm_binary"].append(now_ns() - t0)
        self.wd.kick()


def check_store_after(store: Path, plan: list[Cycle], rm_binary_reps: int) -> dict:
    """After unmount: consumed digests gone from content/, keepers and new tags present, trash empty."""
    content = store / "content"
    consumed_left = sum(1 for c in plan if os.path.lexists(content / c.digest_hex))
    keepers_missing = sum(1 for h in {c.keeper_hex for c in plan} if not (content / h).is_dir())
    new_tags_missing = 0
    for i, c in enumerate(plan):
        for j, tag in enumerate(c.new_tags):
            if i < rm_binary_reps and j == 0:
                continue
            if not os.path.islink(store / "repositories" / c.repo / tag):
                new_tags_missing += 1
    trash = store / ".imagefs" / "trash"
    trash_entries = len(os.listdir(trash)) if trash.is_dir() else 0
    return {"consumed_digest_dirs_left": consumed_left, "consumed_digests": len(plan),
            "keeper_digests_missing": keepers_missing, "created_tags_missing_in_store": new_tags_missing,
            "trash_entries": trash_entries}


# --------------------------------------------------------------------------
# binary
# --------------------------------------------------------------------------

def resolve_binary(args) -> tuple[str | None, str]:
    explicit = args.bin or os.environ.get("IMAGEFS_BIN")
    if explicit:
        p = Path(explicit)
        if p.is_file() and os.access(p, os.X_OK):
            return str(p), f"{p} (given)"
        return None, f"{p} does not exist or is not executable"
    if DEFAULT_BIN.is_file():
        return str(DEFAULT_BIN), f"{DEFAULT_BIN}"
    if args.no_build:
        return None, f"{DEFAULT_BIN} missing (--no-build)"
    if not shutil.which("cargo"):
        return None, f"{DEFAULT_BIN} missing and cargo not found"
    print(f"{DEFAULT_BIN} missing: running `cargo build --release` in {REPO_ROOT} ...", flush=True)
    t0 = time.monotonic()
    r = subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT, capture_output=True, text=True)
    if r.returncode != 0 or not DEFAULT_BIN.is_file():
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        return None, f"cargo build --release failed (exit {r.returncode}):\n{tail}"
    return str(DEFAULT_BIN), f"{DEFAULT_BIN} (built now in {time.monotonic() - t0:.0f} s)"


def imagefs_prereqs() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse missing"
    if not shutil.which("fusermount3"):
        return "fusermount3 missing (apt-get install -y fuse3)"
    return None


FLOOR_BIN = REPO_ROOT / "target" / "release" / "examples" / "list_floor"


def resolve_floor_binary(args) -> tuple[str | None, str]:
    """examples/list_floor.rs, the FUSE server that does no work (the listing's floor)."""
    if FLOOR_BIN.is_file():
        return str(FLOOR_BIN), str(FLOOR_BIN)
    if args.no_build or not shutil.which("cargo"):
        return None, f"{FLOOR_BIN} missing"
    r = subprocess.run(["cargo", "build", "--release", "--example", "list_floor"], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0 or not FLOOR_BIN.is_file():
        return None, f"cargo build --release --example list_floor failed (exit {r.returncode})"
    return str(FLOOR_BIN), f"{FLOOR_BIN} (built now)"


def kernel_caches() -> dict:
    """The kernel's dentry and inode caches and, where the boot line sets them, the sizes
    of their hash tables: each lookup of a name or an inode walks one chain of them, so a
    small table with millions of cached entries makes every lookup slower (the start-up
    reads a million links; every FUSE LOOKUP makes an inode)."""
    out = {}
    for key, path in (("dentries", "/proc/sys/fs/dentry-state"), ("inodes", "/proc/sys/fs/inode-nr")):
        try:
            out[key] = int(Path(path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    try:
        for word in Path("/proc/cmdline").read_text().split():
            k, _, v = word.partition("=")
            if k in ("dhash_entries", "ihash_entries") and v.isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


def readlink_floor(repos_dir: Path, repos: list[str]) -> dict:
    """The least time the kernel takes to read every tag's link: one `find -printf %l`
    process per CPU, each on its share of the repositories, all at once (the start-up's
    own scan is 8 threads over the same links)."""
    n = max(1, os.cpu_count() or 1)
    # Each share's names in a file (`-files0-from`), not on the command line: 100,000
    # repositories are more than an argument list holds (E2BIG).
    lists = []
    for i in range(n):
        share = repos[i::n]
        if share:
            f = tempfile.NamedTemporaryFile(prefix="imagefs-floor-", delete=False)
            f.write(b"".join(os.fsencode(r) + b"\0" for r in share))
            f.close()
            lists.append(f.name)
    t0 = now_ns()
    procs = [subprocess.Popen(["find", "-files0-from", lst, "-type", "l", "-printf", "%l\\n"], cwd=repos_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for lst in lists]
    counts = [0] * len(procs)

    def drain(i, p):  # all at once: a full pipe would stall its find behind the others
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
            counts[i] += chunk.count(b"\n")
        p.wait()
    threads = [threading.Thread(target=drain, args=(i, p)) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = round((now_ns() - t0) / 1e9, 4)
    for lst in lists:
        os.unlink(lst)
    return {"seconds": seconds, "processes": len(procs), "links": sum(counts)}


def list_repos(root: str, layout) -> int:
    """bench_tags.py's listing of every tag: os.scandir of each repository in turn."""
    seen = 0
    for r_ in range(layout.n_repos):
        with os.scandir(f"{root}/{layout.repo(r_)}") as it:
            seen += sum(1 for e in it if e.is_symlink())
    return seen


def wait_for_dir(path: str, proc: subprocess.Popen, timeout: float, what: str):
    """Waits until `path`, below the mount `proc` serves, stats as a directory."""
    t0 = time.monotonic()
    while not os.path.isdir(path):
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            err = proc.stderr.read().decode(errors="replace")[-300:] if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"{what}: the mount did not answer {err}".rstrip())
        time.sleep(0.005)


def floor_listing(floor_bin: str, mnt: Path, layout) -> dict:
    """The listing through examples/list_floor.rs: the same names from a FUSE server that
    answers from arithmetic, no OPENDIR, no READDIRPLUS: FUSE's own cost of the listing."""
    mnt.mkdir(exist_ok=True)
    p = subprocess.Popen([floor_bin, str(mnt), str(layout.n_repos), str(layout.tags_per_repo)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_dir(f"{mnt}/tags/bench.local", p, 30, "list_floor")
        t0 = now_ns()
        seen = list_repos(f"{mnt}/tags", layout)
        return {"seconds": round((now_ns() - t0) / 1e9, 4), "tags_seen": seen}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

OPS = [
    ("rm_not_last", "rm tag, not last ref (os.unlink)"),
    ("rm_last", "rm tag, LAST ref -> digest removed"),
    ("ln", "ln -s <hex> new tag (os.symlink)"),
]


def fmt(x, w=9):
    return f"{x:>{w}.1f}" if isinstance(x, (int, float)) else f"{'n/a':>{w}}"


def ratio(a, b):
    if a is None or b is None or not b.get("median_us"):
        return None
    return round(a["median_us"] / b["median_us"], 3)


def print_size(r: dict):
    L = r["layout"]
    print()
    print(f"=== store: {L['tags']:,} tags = {L['repositories']:,} repositories x {L['tags_per_repository']} tags; "
          f"{L['digests']:,} digests x {L['tags_per_digest']} tags ===")
    print(f"    plan: {r['cycles']} cycles (each: {L['tags_per_digest'] - 1} rm not-last, 1 rm last, "
          f"{L['tags_per_digest']} ln -s; hypeman-current {r['walk_cycles']}, floor {r['floor_cycles']} cycles); "
          f"store build (setup) {r['build_s']['raw_store']:.1f} s")
    print(f"    load average before/after: {r.get('loadavg_before')} / {r.get('loadavg_after')}")
    im = r.get("imagefs") or {}
    if im.get("error"):
        print(f"    imagefs: FAILED / NOT MEASURED: {im['error'].splitlines()[0]}")
    if im.get("list_all"):
        la = im["list_all"]
        rl = im.get("rss_after_listing_kib", {}).get("VmRSS", 0) / 1024
        print(f"    imagefs readdir of all {L['repositories']:,} repositories after start-up: {la['seconds'] * 1000:.1f} ms, "
              f"{la['tags_seen']:,} tags seen of {la['tags_expected']:,} expected; daemon RSS then {rl:.1f} MiB")
        if im.get("list_all_raw"):
            print(f"    the same readdir of the raw store behind the mount, right after: "
                  f"{im['list_all_raw']['seconds'] * 1000:.1f} ms; mount/raw x{la.get('ratio_to_raw')}")
        fl = im.get("list_all_fuse_floor")
        if fl and fl.get("error"):
            print(f"    the same readdir through a FUSE server doing no work: FAILED: {fl['error']}")
        elif fl:
            print(f"    the same readdir through a FUSE server doing no work (examples/list_floor.rs), next: "
                  f"{fl['seconds'] * 1000:.1f} ms, {fl['tags_seen']:,} tags; floor/raw x{fl.get('ratio_to_raw')}")
    if im.get("startup"):
        st = im["startup"]
        rss0, rss1 = im["rss_after_startup_kib"], im.get("rss_after_ops_kib", {})
        print(f"    imagefs mount start-up: {st['startup_s'] * 1000:.1f} ms (in mountinfo after "
              f"{st['mountinfo_s'] * 1000:.1f} ms); daemon RSS after start-up {rss0.get('VmRSS', 0) / 1024:.1f} MiB, "
              f"after ops {rss1.get('VmRSS', 0) / 1024:.1f} MiB (peak VmHWM {rss1.get('VmHWM', 0) / 1024:.1f} MiB, "
              f"{rss1.get('Threads', '?')} threads)")
        if im.get("startup_floor"):
            f = im["startup_floor"]
            print(f"    reading every tag's link, no index ({f['processes']} find processes at once, after the "
                  f"first mount): {f['seconds'] * 1000:.1f} ms, {f['links']:,} links")
        if im.get("kernel_caches_at_startup"):
            print(f"    kernel caches after the first start-up: {im['kernel_caches_at_startup']}")
        if im.get("startup_remount"):
            print(f"    imagefs second mount of the same store (from the index snapshot): "
                  f"{im['startup_remount']['startup_s'] * 1000:.1f} ms (RSS after start-up above is this mount's)")
    hdr = (f"    {'operation':<38} {'n':>7} | {'imagefs':>9} {'p90':>9} | {'hypeman':>9} {'p90':>9} | {'ratio':>6} "
           f"{'paired':>6} | {'floor':>8} {'ratio':>6}")
    print(hdr)
    print(f"    {'':<38} {'':>7} | {'median us':>9} {'us':>9} | {'median us':>9} {'us':>9} | {'im/hy':>6} "
          f"{'im/hy':>6} | {'med us':>8} {'im/fl':>6}")
    print("    " + "-" * (len(hdr) - 4))
    rows = r["rows"]
    for row in rows:
        a, b = row.get("imagefs"), row.get("hypeman")
        na, nb = (a or {}).get("n"), (b or {}).get("n")
        n = f"{na}/{nb}" if na and nb and na != nb else str(na or nb or 0)
        rt, fl, rf, pr = row.get("ratio"), row.get("floor"), row.get("ratio_floor"), row.get("paired_ratio")
        print(f"    {row['label']:<38} {n:>7} | {fmt(a and a['median_us'])} {fmt(a and a['p90_us'])} | "
              f"{fmt(b and b['median_us'])} {fmt(b and b['p90_us'])} | {(f'{rt:.2f}' if rt is not None else 'n/a'):>6} "
              f"{(f'{pr:.2f}' if pr is not None else 'n/a'):>6} "
              f"| {(fmt(fl['median_us'], 8) if fl else f'{chr(45):>8}')} "
              f"{(f'{rf:.2f}' if rf is not None else chr(45)):>6}")
    bt = r.get("imagefs_rm_last_by_tree") or {}
    if bt:
        def part(x):
            return f"{x['n']}, median {x['median_us']:.0f} us" if x else "0"
        print(f"    rm LAST, image tree mounted: {part(bt.get('tree_mounted'))}; "
              f"no tree mounted: {part(bt.get('no_tree'))}")
    for k in ("raw_problems", "imagefs_problems"):
        if r.get(k):
            print(f"    ! {k}: {len(r[k])}, e.g. {r[k][:3]}")
    if im.get("store_check"):
        print(f"    store after unmount: {im['store_check']}")


NOTES = """
Notes:
  * Times are wall-clock per operation (perf_counter_ns): for imagefs around ONE syscall through the mount
    (os.unlink / os.symlink; an untimed lstat of the path first, as rm and ln do, so the dentry is warm);
    the digest directory leaves the store inside that unlink (checked after every rm). For the raw store
    around the whole algorithm. All sides run interleaved cycle by cycle on the same filesystem.
  * 'hypeman' = Python mirror of kernel/hypeman lib/images (DeleteImage: resolveTag, deleteTag,
    countTagsForDigest = ReadDir of the repository + Lstat/Readlink/Clean of every tag, then RemoveAll of
    the digest dir if zero; TagImage: readMetadata, resolve the old tag, stage the symlink in a temp dir
    and rename it in). CPython is slower than Go at the path handling, so hypeman's own binary would sit
    between the 'hypeman' and 'floor' columns.
  * 'floor' = the least any "unlink, then scan the repository" scheme can do on this filesystem: readlink +
    unlink, readdir + readlink of each tag, rmtree if none left; for ln -s a bare symlink(2) in the store.
  * 'rm LAST vs hypeman current': hypeman's present code (storage_refs.go removeDigestIfUnreferenced ->
    contentTagCount) walks ALL of repositories/ when a repository has no tag left for the digest.
  * 'rm binary': coreutils rm as a process; the raw side is a plain rm of the symlink (no reference count).
  * 'ratio' = imagefs median / hypeman median; 'paired' = median of the per-sample ratios of samples taken in
    the same cycle (less sensitive to background load, which the load averages above show).
  * imagefs runs with its defaults (it fsyncs the repository directory after installing a tag; hypeman does
    not fsync); --mount-arg=--no-sync compares without that.
"""


def evaluate_million(results: list, sizes: list) -> list:
    """The targets of issue 13 ("a million tags"), for the largest size of the run: start-up
    under 1.5 s, RSS under 200 MiB after listing every tag, listing every tag through the
    mount within 2x of the raw store's listing in the same run, and rm / ln -s medians
    within 1.2x of those at the smallest size of the run."""
    ev = []
    by = {r["layout"]["tags"]: r for r in results}
    big, small = by.get(max(sizes)), by.get(min(sizes))

    def ok(b):
        return "MET" if b else "NOT MET"
    n = f"{max(sizes):,} tags"
    im = (big or {}).get("imagefs") or {}
    if not im.get("startup"):
        return ["issue 13 targets: imagefs not measured"]
    s = im["startup"]["startup_s"]
    ev.append(f"[issue 13] start-up < 1.5 s at {n}, first mount (no index snapshot): {s:.2f} s -> {ok(s < 1.5)}")
    if im.get("startup_floor"):
        f = im["startup_floor"]["seconds"]
        ev.append(f"[issue 13] (info) the kernel's floor for that: reading every link by {im['startup_floor']['processes']} "
                  f"processes at once, no index: {f:.2f} s{' (over 1.5 s itself)' if f >= 1.5 else ''}")
    if im.get("startup_remount"):
        s = im["startup_remount"]["startup_s"]
        ev.append(f"[issue 13] start-up < 1.5 s at {n}, second mount (from the snapshot): {s:.2f} s -> {ok(s < 1.5)}")
    r0 = im["rss_after_startup_kib"].get("VmRSS", 0) / 1024
    ev.append(f"[issue 13] (info) RSS after start-up at {n}: {r0:.1f} MiB "
              f"(peak VmHWM {im['rss_after_startup_kib'].get('VmHWM', 0) / 1024:.1f} MiB)")
    if im.get("rss_after_listing_kib"):
        r1 = im["rss_after_listing_kib"].get("VmRSS", 0) / 1024
        ev.append(f"[issue 13] RSS after listing every tag < 200 MiB at {n}: {r1:.1f} MiB -> {ok(r1 < 200)}")
    if im.get("list_all") and im.get("list_all_raw"):
        a, b = im["list_all"]["seconds"], im["list_all_raw"]["seconds"]
        q = a / b if b > 0 else float("inf")
        ev.append(f"[issue 13] listing every tag, mount {a:.2f} s vs raw store {b:.2f} s (same run): "
                  f"x{q:.2f} (target <= 2) -> {ok(q <= 2.0)}")
        fl = im.get("list_all_fuse_floor") or {}
        if fl.get("seconds") and b > 0:
            ev.append(f"[issue 13] (info) the same listing through a FUSE server doing no work: {fl['seconds']:.2f} s, "
                      f"x{fl['seconds'] / b:.2f} the raw store; imagefs/that x{a / fl['seconds']:.2f}")
    for key, what in (("rm_not_last", "rm, not last"), ("rm_last", "rm, last"), ("ln", "ln -s")):
        rows = [(sz, next(x for x in by[sz]["rows"] if x["key"] == key).get("imagefs")) for sz in sorted(by)]
        meds = ", ".join(f"{sz:,}: {row['median_us']:.0f} us" for sz, row in rows if row)
        line = f"[issue 13] imagefs {what} medians ({meds})"
        a = next(x for x in small["rows"] if x["key"] == key).get("imagefs") if small else None
        b = next(x for x in big["rows"] if x["key"] == key).get("imagefs")
        if a and b and small is not big:
            g = b["median_us"] / a["median_us"]
            line += f": {n} vs {min(sizes):,} x{g:.2f} (target <= 1.2) -> {ok(g <= 1.2)}"
        ev.append(line)
    # The same comparison on one path only: an `rm` of a last tag whose image has a kernel
    # tree mounted leaves the tree's deletion to the binder, one without deletes the image
    # itself. A small store has a tree for most images (up to the mount limit), a large one
    # for almost none, so the medians above mix the two paths in different shares.
    if small and small is not big:
        for kind, what in (("no_tree", "no image tree mounted"), ("tree_mounted", "image tree mounted")):
            a = (small.get("imagefs_rm_last_by_tree") or {}).get(kind)
            b = (big.get("imagefs_rm_last_by_tree") or {}).get(kind)
            if a and b and a.get("n", 0) >= 10 and b.get("n", 0) >= 10:
                g = b["median_us"] / a["median_us"]
                ev.append(f"[issue 13] imagefs rm, last, {what} at both sizes ({min(sizes):,}: "
                          f"{a['median_us']:.0f} us of {a['n']}, {n}: {b['median_us']:.0f} us of {b['n']}): "
                          f"x{g:.2f} (target <= 1.2) -> {ok(g <= 1.2)}")
    return ev


def evaluate(results: list, sizes: list) -> list:
    ev = []
    by = {r["layout"]["tags"]: r for r in results}
    big = by.get(max(sizes))
    small = by.get(min(sizes))

    def ok(b):
        return "MET" if b else "NOT MET"

    im = (big or {}).get("imagefs") or {}
    if im.get("startup"):
        s = im["startup"]["startup_s"]
        ev.append(f"mount start-up < 1 s at {max(sizes):,} tags: {s * 1000:.0f} ms -> {ok(s < 1.0)}")
        after = im.get("rss_after_ops_kib") or im["rss_after_startup_kib"]
        rss = max(im["rss_after_startup_kib"].get("VmRSS", 0), after.get("VmRSS", 0)) / 1024
        hwm = after.get("VmHWM", 0) / 1024
        ev.append(f"RSS < 100 MiB at {max(sizes):,} tags: {rss:.1f} MiB (peak {hwm:.1f} MiB) -> {ok(hwm < 100 and rss < 100)}")
    else:
        ev.append("start-up and RSS targets: imagefs not measured")
    ev.extend(evaluate_million(results, sizes))
    for r in results:
        row = next(x for x in r["rows"] if x["key"] == "rm_last")
        if row.get("imagefs") and row.get("hypeman"):
            fl = row.get("floor")
            fl_txt = (f"; vs the scan's syscall floor {fl['median_us']:.0f} us: ratio {row['ratio_floor']:.2f}"
                      if fl else "")
            ev.append(f"rm of last tag at {r['layout']['tags']:,} tags ({r['layout']['tags_per_repository']} tags/repo): "
                      f"imagefs median {row['imagefs']['median_us']:.0f} us (p90 {row['imagefs']['p90_us']:.0f}) vs "
                      f"hypeman repo scan {row['hypeman']['median_us']:.0f} us: ratio {row['ratio']:.2f} "
                      f"(paired {row['paired_ratio']:.2f}) -> {ok(row['ratio'] <= 1.0)}{fl_txt}")
    if big and small and big is not small:
        a = next(x for x in small["rows"] if x["key"] == "rm_last").get("imagefs")
        b = next(x for x in big["rows"] if x["key"] == "rm_last").get("imagefs")
        if a and b:
            g = b["median_us"] / a["median_us"]
            ev.append(f"flatness of imagefs rm-last median, {max(sizes):,} vs {min(sizes):,} tags: x{g:.2f} "
                      f"(criterion used: <= 1.5) -> {ok(g <= 1.5)}")
        for key, what in (("rm_not_last", "rm not-last"), ("ln", "ln -s")):
            a = next(x for x in small["rows"] if x["key"] == key).get("imagefs")
            b = next(x for x in big["rows"] if x["key"] == key).get("imagefs")
            if a and b:
                ev.append(f"(info) imagefs {what} median {max(sizes):,} vs {min(sizes):,} tags: x{b['median_us'] / a['median_us']:.2f}")
        a = next(x for x in small["rows"] if x["key"] == "rm_last_vs_walk").get("hypeman")
        b = next(x for x in big["rows"] if x["key"] == "rm_last_vs_walk").get("hypeman")
        if a and b:
            ev.append(f"(info) hypeman current code, rm-last median {max(sizes):,} vs {min(sizes):,} tags: "
                      f"x{b['median_us'] / a['median_us']:.1f} (it walks every tag of the store)")
    return ev


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

class Terminated(Exception):
    pass


def parse_sizes(s: str) -> list:
    out = []
    for part in s.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            mult, part = 1000, part[:-1]
        out.append(int(part) * mult)
    return sorted(set(out))


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            out = " ".join(f.read().split()[:3])
    except OSError:
        return "?"
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        out += f" (cpu pressure {some[1].replace('=', ' ')}%)"
    except (OSError, IndexError):
        pass
    return out


def run_size(n, args, work: Path, payload: Path, binary, imagefs_skip, mounts: list,
             floor_bin: str | None = None) -> dict:
    layout = Layout(n, args.tags_per_repo, args.tags_per_digest)
    plan = make_plan(layout, args.reps, args.seed)
    plan_b = make_plan(layout, args.walk_reps + args.reps, args.seed + 1)
    walk_plan = plan_b[:args.walk_reps]
    floor_plan = plan_b[args.walk_reps:]
    rbr = min(args.rm_binary_reps, len(plan))
    r = {"layout": layout.describe(), "cycles": len(plan), "walk_cycles": len(walk_plan),
         "floor_cycles": len(floor_plan), "build_s": {}, "rows": [], "loadavg_before": loadavg()}
    tag = f"[{n:,} tags]"
    # setup (not measured): three copies of the same store, built by the same code
    raw, raw_b, store, mnt = (work / f"raw-{n}", work / f"raw-b-{n}", work / f"store-{n}", work / f"mnt-{n}")
    print(f"\n{tag} building stores ...", flush=True)
    r["build_s"]["raw_store"] = round(build_store(raw, layout, payload), 2)
    if plan_b:
        build_store(raw_b, layout, payload)
    if not imagefs_skip:
        build_store(store, layout, payload)
        mnt.mkdir()
    print(f"{tag} one store built in {r['build_s']['raw_store']:.1f} s", flush=True)
    # The builds leave millions of dirty inodes and blocks; written back during the measured
    # part, they would make every fsync (imagefs's, after a tag change) and every metadata
    # call wait behind them: at 1,000,000 tags that made even the raw store's rm 20 times
    # slower than at 1,000. Setup, not measured.
    t0 = now_ns()
    os.sync()
    r["build_s"]["sync"] = round((now_ns() - t0) / 1e9, 2)
    print(f"{tag} written back (sync) in {r['build_s']['sync']:.1f} s", flush=True)

    scan = RawRunner(raw, "scan")
    walk = RawRunner(raw_b, "walk")
    floor = RawRunner(raw_b, "floor")
    im_runner = None
    im: dict = {}
    r["imagefs"] = im
    m = wd = None
    try:
        if imagefs_skip:
            im["error"] = imagefs_skip
        else:
            extra = (["--threads", str(args.threads)] if args.threads else []) + list(args.mount_arg)
            m = Mount(binary, store, mnt, work / f"imagefs-{n}.log", extra)
            mounts.append(m)
            try:
                print(f"{tag} mounting ...", flush=True)
                im["startup"] = m.start(args.mount_timeout)
                im["rss_after_startup_kib"] = proc_status_kib(m.proc.pid)
                print(f"{tag} mounted in {im['startup']['startup_s'] * 1000:.1f} ms", flush=True)
                im["kernel_caches_at_startup"] = kernel_caches()
                if not args.no_remount:
                    # The first mount of a store reads every tag; the unmount leaves the
                    # index snapshot in the bookkeeping, and a daemon restarted on the same
                    # store starts from it. Both start-ups are reported; the run goes on
                    # with the second mount.
                    im["stop_first"] = m.stop()
                    # The kernel's share of that first start-up, right after it (the links
                    # as warm as the start-up left them): reading every link, no index.
                    try:
                        im["startup_floor"] = readlink_floor(store / "repositories",
                                                             [layout.repo(r_) for r_ in range(layout.n_repos)])
                    except OSError as e:  # a reference, not the measured side
                        print(f"{tag} reading every link (the start-up's floor) failed: {e}", flush=True)
                    m = Mount(binary, store, mnt, work / f"imagefs-{n}-remount.log", extra)
                    mounts[-1] = m
                    im["startup_remount"] = m.start(args.mount_timeout)
                    im["rss_after_startup_kib"] = proc_status_kib(m.proc.pid)
                    print(f"{tag} unmounted and mounted again in {im['startup_remount']['startup_s'] * 1000:.1f} ms",
                          flush=True)
                # sanity + cost of a full listing: readdir of every repository through the mount
                t0 = now_ns()
                seen = list_repos(f"{mnt}/tags", layout)
                im["list_all"] = {"seconds": round((now_ns() - t0) / 1e9, 4), "tags_seen": seen,
                                  "tags_expected": layout.n_tags}
                im["rss_after_listing_kib"] = proc_status_kib(m.proc.pid)
                # the same listing of the raw store behind the mount, right after: the
                # reference for "listing every tag through the mount within 2x" (issue 13)
                t0 = now_ns()
                seen = list_repos(f"{store}/repositories", layout)
                im["list_all_raw"] = {"seconds": round((now_ns() - t0) / 1e9, 4), "tags_seen": seen}
                im["list_all"]["ratio_to_raw"] = (round(im["list_all"]["seconds"] / im["list_all_raw"]["seconds"], 2)
                                                  if im["list_all_raw"]["seconds"] > 0 else None)
                # and through a FUSE server that does no work: what FUSE itself costs
                if floor_bin:
                    try:
                        fl = floor_listing(floor_bin, work / f"floor-mnt-{n}", layout)
                        fl["ratio_to_raw"] = (round(fl["seconds"] / im["list_all_raw"]["seconds"], 2)
                                              if im["list_all_raw"]["seconds"] > 0 else None)
                        im["list_all_fuse_floor"] = fl
                    except Exception as e:  # noqa: BLE001 - a reference, not the measured side
                        im["list_all_fuse_floor"] = {"error": f"{type(e).__name__}: {e}"}
                wd = Watchdog(args.op_timeout, m.proc)
                wd.start()
                im_runner = MountRunner(mnt, store, wd)
            except Exception as e:  # noqa: BLE001
                im["error"] = f"{type(e).__name__}: {e}"
        # the measured part: all sides interleaved cycle by cycle, so that
        # background load and drift hit every side alike
        sides = [("hypeman", scan, plan), ("walk", walk, walk_plan), ("floor", floor, floor_plan)]
        if im_runner:
            sides.append(("imagefs", im_runner, plan))
        ncyc = max(len(p) for _, _, p in sides)
        print(f"{tag} {ncyc} interleaved cycles (imagefs {len(plan) if im_runner else 0}, hypeman {len(plan)}, "
              f"hypeman-current {len(walk_plan)}, floor {len(floor_plan)}) ...", flush=True)
        for i in range(ncyc):
            k = i % len(sides)
            for name, runner, pl in sides[k:] + sides[:k]:
                if i >= len(pl):
                    continue
                if runner is im_runner:
                    if im_runner is None:
                        continue
                    try:
                        runner.cycle(pl[i])
                    except Exception as e:  # noqa: BLE001 - record, go on with the raw sides
                        fired = wd is not None and wd.fired
                        im["error"] = (f"{'watchdog fired; ' if fired else ''}cycle {i}: {type(e).__name__}: {e}")
                        print(f"{tag} imagefs FAILED: {im['error']}", file=sys.stderr)
                        sides = [x for x in sides if x[1] is not im_runner]
                        im_runner = None
                else:
                    runner.cycle(pl[i])
        for i in range(rbr):
            scan.rm_binary(plan[i])
            if im_runner:
                try:
                    im_runner.rm_binary(plan[i])
                except Exception as e:  # noqa: BLE001
                    im["error"] = f"rm binary: {type(e).__name__}: {e}"
                    im_runner = None
        if im_runner:
            im["rss_after_ops_kib"] = proc_status_kib(m.proc.pid)
            try:
                im["metrics"] = (mnt / ".imagefs" / "metrics").read_text()[:20000]
            except OSError as e:
                im["metrics"] = f"unreadable: {e}"
    finally:
        if wd is not None:
            wd.stopped.set()
        if m is not None:
            im["stop"] = m.stop()
            mounts.remove(m)
            im["log_tail"] = m.log_tail(3000)
    r["loadavg_after"] = loadavg()
    r["raw_problems"] = scan.problems + walk.problems + floor.problems
    if m is not None and "startup" in im:
        r["imagefs_problems"] = im_runner.problems if im_runner else []
        if "error" not in im:
            im["store_check"] = check_store_after(store, plan, rbr)
    if not args.keep:
        for d in (raw, raw_b, store, mnt):
            shutil.rmtree(d, ignore_errors=True)

    def paired(ra, rb, key):
        # median of per-sample ratios between samples taken in the same cycle (robust to load drift)
        if not ra or not rb:
            return None
        xs, ys = ra.samples[key], rb.samples[key]
        rs = sorted(x / y for x, y in zip(xs, ys) if y > 0)
        if not rs:
            return None
        return round((rs[(len(rs) - 1) // 2] + rs[len(rs) // 2]) / 2, 3)

    def stats(runner, key):
        return summarize(runner.samples[key]) if runner and runner.samples[key] else None
    imr = im_runner if im_runner is not None else None
    # if imagefs failed midway its partial samples are not reported
    for key, label in OPS:
        a_, b_, f_ = stats(imr, key), stats(scan, key), stats(floor, key)
        r["rows"].append({"key": key, "label": label, "imagefs": a_, "hypeman": b_, "ratio": ratio(a_, b_),
                          "paired_ratio": paired(imr, scan, key),
                          "floor": f_, "ratio_floor": ratio(a_, f_),
                          "hypeman_algorithm": "repo-scan (issue 2 / hypeman PR #111)"})
    if imr is not None:
        r["imagefs_rm_last_by_tree"] = {"tree_mounted": stats(imr, "rm_last_tree"),
                                        "no_tree": stats(imr, "rm_last_no_tree")}
    a_, b_ = stats(imr, "rm_last"), stats(walk, "rm_last")
    r["rows"].append({"key": "rm_last_vs_walk", "label": "rm LAST vs hypeman current (walk all)",
                      "imagefs": a_, "hypeman": b_, "ratio": ratio(a_, b_), "paired_ratio": paired(imr, walk, "rm_last"),
                      "hypeman_algorithm": "current storage_refs.go: contentTagCount walks all of repositories/"})
    a_, b_ = stats(imr, "rm_binary"), stats(scan, "rm_binary")
    r["rows"].append({"key": "rm_binary", "label": "rm binary, not last (raw: plain rm)",
                      "imagefs": a_, "hypeman": b_, "ratio": ratio(a_, b_), "paired_ratio": paired(imr, scan, "rm_binary"),
                      "hypeman_algorithm": "none: coreutils rm of the raw symlink (process cost baseline)"})
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="tag counts, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--reps", type=int, default=100,
                    help="cycles per size = samples of 'rm last' (x9 'rm not last', x10 'ln -s'); "
                         "capped by the digests available (default 100)")
    ap.add_argument("--walk-reps", type=int, default=10,
                    help="cycles for hypeman's current algorithm (walks all of repositories/ on a last rm; "
                         "~1 s per last rm at 100,000 tags), default 10")
    ap.add_argument("--rm-binary-reps", type=int, default=20, help="samples of the coreutils rm binary row (default 20)")
    ap.add_argument("--tags-per-repo", type=int, default=100)
    ap.add_argument("--tags-per-digest", type=int, default=10)
    ap.add_argument("--bin", help="imagefs binary (default $IMAGEFS_BIN, else <repo>/target/release/imagefs)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build --release if the binary is missing")
    ap.add_argument("--threads", type=int, help="pass --threads N to imagefs mount")
    ap.add_argument("--mount-arg", action="append", default=[],
                    help="extra argument for imagefs mount (repeatable), e.g. --mount-arg=--no-sync")
    ap.add_argument("--out", help="write the results as JSON to this file")
    ap.add_argument("--no-remount", action="store_true",
                    help="measure only the first mount's start-up (default: also a second mount of the same store, "
                         "which starts from the index snapshot the first one left)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores and mountpoints")
    ap.add_argument("--tmpdir", help="where to create the work directory (default: the system temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mount-timeout", type=float, default=120.0)
    ap.add_argument("--op-timeout", type=float, default=120.0, help="watchdog: kill the daemon after this long without progress")
    args = ap.parse_args()
    sizes = parse_sizes(args.sizes)

    def on_term(signum, frame):
        raise Terminated(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    work = Path(tempfile.mkdtemp(prefix="imagefs-bench-", dir=args.tmpdir))
    mounts: list[Mount] = []
    results = []
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, "work_dir": str(work)}
    try:
        payload, payload_desc = make_payload(work)
        binary, bin_desc = resolve_binary(args)
        prereq = imagefs_prereqs() if binary else None
        imagefs_skip = None if (binary and not prereq) else (prereq or bin_desc)
        floor_bin, floor_desc = resolve_floor_binary(args) if not imagefs_skip else (None, "")
        fs_type = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
        report["environment"] = {
            "kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "work_dir_fs": fs_type, "imagefs_binary": bin_desc, "payload": payload_desc,
            "kernel_caches": kernel_caches(),
            "RUST_LOG": os.environ.get("RUST_LOG", "warn (set by the benchmark)"),
        }
        print(f"imagefs tag benchmark   work dir {work} ({fs_type}), kernel {platform.release()}, "
              f"{os.cpu_count()} cpus, python {platform.python_version()}")
        print(f"binary: {bin_desc if binary else 'NONE: ' + bin_desc}")
        if not imagefs_skip:
            print(f"FUSE floor (listing): {floor_desc if floor_bin else 'NONE: ' + floor_desc}")
        print(f"kernel caches: {kernel_caches()}")
        if imagefs_skip:
            print(f"imagefs half SKIPPED: {imagefs_skip}")
        print(f"rootfs.erofs: {payload_desc}")
        print(f"metadata.json: hypeman fields name, digest, status=ready, size_bytes, entrypoint, cmd, env, working_dir, created_at")
        print(f"layout: STORE/content/<hex>/{{rootfs.erofs,metadata.json}}; STORE/repositories/bench.local/repoNNNN/tNNN "
              f"-> ../../../content/<hex>; {args.tags_per_repo} tags/repository, {args.tags_per_digest} tags/digest "
              f"(a digest's tags all in one repository); hex names distinct but not the sha256 of the bytes")

        for n in sizes:
            results.append(run_size(n, args, work, payload, binary, imagefs_skip, mounts, floor_bin))
            print_size(results[-1])

        report["results"] = results
        report["targets"] = evaluate(results, sizes)
        print("\nTargets (issues 2 and 13), evaluated, not asserted:")
        for line in report["targets"]:
            print(f"  - {line}")
        print(NOTES)
    except (KeyboardInterrupt, Terminated) as e:
        print(f"\ninterrupted: {e!r}", file=sys.stderr)
        report["interrupted"] = repr(e)
        return_code = 130
    else:
        return_code = 0
    finally:
        for m in list(mounts):
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup of {m.mnt} failed: {e}", file=sys.stderr)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
            print(f"\nJSON written to {args.out}")
        if args.keep:
            print(f"kept work dir {work}")
        else:
            still = [m for m in mounts if mount_entry(m.mnt)]
            if not still:
                shutil.rmtree(work, ignore_errors=True)
    return return_code


if __name__ == "__main__":
    sys.exit(main())
