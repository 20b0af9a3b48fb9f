"""Shared helpers for the imagefs mount tests.

Nothing in here knows about pytest fixtures; conftest.py wires these into fixtures.

Missing prerequisites (root, /dev/fuse, mkfs.erofs, the kernel's erofs mount, a tool a test runs) go
through `require`: the test FAILS with IMAGEFS_TESTS_STRICT=1 (CI) and is skipped with the reason
otherwise; never a silent pass.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

HEX_RE = re.compile(r"^[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
NOT_READY = ("pending", "pulling", "converting")
COLLECTABLE = ("ready", "failed")
STORE_SPECIAL = ("content", "repositories", ".imagefs")


STRICT = os.environ.get("IMAGEFS_TESTS_STRICT") == "1"


def require(ok, reason: str) -> None:
    """The one policy for a missing prerequisite: unless ok, the test fails under
    IMAGEFS_TESTS_STRICT=1 and is skipped with the reason otherwise."""
    if ok:
        return
    if STRICT:
        pytest.fail(f"{reason} (IMAGEFS_TESTS_STRICT=1: a missing prerequisite fails)", pytrace=False)
    pytest.skip(reason)


def imagefs_bin() -> Path:
    b = Path(os.environ.get("IMAGEFS_BIN", "target/debug/imagefs"))
    if not b.is_absolute():
        b = REPO_ROOT / b
    return b


def sha256_file(p) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sh(*args, check=False, timeout=60, **kw) -> subprocess.CompletedProcess:
    """Run a real tool. Returns CompletedProcess with text stdout/stderr."""
    args = [str(a) for a in args]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check, **kw)


def terminate(p: subprocess.Popen, wait: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `wait` seconds; reaps it either way."""
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def read_at(dfd: int, name, size: int) -> bytes:
    """Up to size bytes of the file name in the directory open as dfd (one read)."""
    f = os.open(name, os.O_RDONLY, dir_fd=dfd)
    try:
        return os.read(f, size)
    finally:
        os.close(f)


def expect_errno(code: int, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except OSError as e:
        assert e.errno == code, (
            f"{getattr(fn, '__name__', fn)}{a}: expected {errno.errorcode[code]}, "
            f"got {errno.errorcode.get(e.errno, e.errno)} ({e})"
        )
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{a}: expected {errno.errorcode[code]}, but it succeeded")


def refusals(cases, want: int, *, unchanged: Path | None = None) -> list[str]:
    """Runs each case (desc, fn) or (desc, fn, errno), which must fail with `want` (or the case's own
    errno); an fd a case returns is closed. Returns a line per case that did not: it succeeded, or
    failed with another errno, or (with `unchanged`) changed the snapshot of that directory."""
    failures = []
    for desc, fn, *own in cases:
        code = own[0] if own else want
        before = snapshot(unchanged) if unchanged is not None else None
        try:
            r = fn()
            if isinstance(r, int):
                os.close(r)
            failures.append(f"{desc}: succeeded, expected {errno.errorcode[code]}")
        except OSError as e:
            if e.errno != code:
                failures.append(f"{desc}: got {errno.errorcode.get(e.errno, e.errno)} ({e}), "
                                f"expected {errno.errorcode[code]}")
        if unchanged is not None and snapshot(unchanged) != before:
            failures.append(f"{desc}: changed the store")
    return failures


# ---------------------------------------------------------------- renameat2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old, new, flags: int):
    r = _libc.renameat2(AT_FDCWD, os.fsencode(str(old)), AT_FDCWD, os.fsencode(str(new)), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old), None, str(new))


# ---------------------------------------------------------------- erofs images
class ImageCache:
    """Builds one LZ4 erofs image per distinct content key (reproducible), cached per session."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, tuple[Path, str]] = {}

    def get(self, key: str) -> tuple[Path, str]:
        if key in self._cache:
            return self._cache[key]
        kid = hashlib.sha256(key.encode()).hexdigest()[:16]
        tree = self.dir / f"tree-{kid}"
        if tree.exists():
            shutil.rmtree(tree)
        (tree / "etc").mkdir(parents=True)
        (tree / "bin").mkdir()
        (tree / "etc" / "os-release").write_text(f"NAME=imagefs-test\nID={kid}\nKEY={key}\n")
        (tree / "hello.txt").write_text(("hello from " + key + "\n") * 50)
        (tree / "bin" / "sh").write_bytes(b"#!fake\n" + key.encode() * 64)
        os.chmod(tree / "bin" / "sh", 0o755)
        os.symlink("sh", tree / "bin" / "ash")
        img = self.dir / f"{kid}.erofs"
        r = sh("mkfs.erofs", "-zlz4", "-T0", "-U", "6f1d2d4e-0000-4000-8000-000000000000", img, tree)
        assert r.returncode == 0, f"mkfs.erofs failed: {r.stderr}"
        hx = sha256_file(img)
        self._cache[key] = (img, hx)
        return img, hx


# ---------------------------------------------------------------- store builder
def _mkdirs(p: Path, mode=0o755):
    missing = []
    q = Path(p)
    while not q.exists():
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        os.mkdir(d)
        os.chmod(d, mode)


class Store:
    """A hypeman image store in a tmp dir, content and legacy layouts mixed."""

    def __init__(self, root: Path, images: ImageCache):
        self.root = Path(root)
        self.images = images
        _mkdirs(self.root)
        os.chmod(self.root, 0o755)
        # bookkeeping used by the invariant checks
        self.ever_tagged: set[str] = set()
        self.status: dict[str, str] = {}

    # -- digests
    def add_digest(self, key: str, *, layout="content", repo: str | None = None, status="ready",
                   with_image=True, extra: dict[str, bytes] | None = None, name: str | None = None) -> str:
        img, hx = self.images.get(key)
        if layout == "content":
            d = self.root / "content" / hx
        else:
            assert repo, "legacy digests belong to a repository"
            d = self.root / repo / hx
        _mkdirs(d)
        if with_image:
            shutil.copyfile(img, d / "rootfs.erofs")
            os.chmod(d / "rootfs.erofs", 0o644)
        meta = {
            "name": name or f"docker.io/library/test-{key}",
            "digest": f"sha256:{hx}",
            "status": status,
            "size_bytes": os.path.getsize(img),
            "entrypoint": ["/bin/sh"],
            "cmd": ["-c", "echo " + key],
            "env": {"PATH": "/usr/bin:/bin", "KEY": key},
            "working_dir": "/",
            "created_at": "2026-01-02T03:04:05Z",
            "x_unknown_field": {"kept": True, "key": key},
        }
        (d / "metadata.json").write_bytes(json.dumps(meta, indent=2).encode() + b"\n")
        os.chmod(d / "metadata.json", 0o644)
        for fname, data in (extra or {}).items():
            (d / fname).write_bytes(data)
            os.chmod(d / fname, 0o644)
        self.status[hx] = status
        return hx

    def add_tagged(self, prefix: str, repo: str, n: int, *, tag_prefix="v") -> list[str]:
        """n content digests (keys PREFIX-0 ...), the i-th tagged REPO:<tag_prefix>i; their hexes."""
        hexes = []
        for i in range(n):
            hx = self.add_digest(f"{prefix}-{i}")
            self.tag(repo, f"{tag_prefix}{i}", hx)
            hexes.append(hx)
        return hexes

    def content_dir(self, hx) -> Path:
        return self.root / "content" / hx

    def legacy_dir(self, repo, hx) -> Path:
        return self.root / repo / hx

    # -- tags
    def tag(self, repo: str, tag: str, hx: str, layout: str | None = None) -> Path:
        if layout is None:
            layout = "content" if (self.root / "content" / hx).is_dir() else "legacy"
        if layout == "content":
            p = self.root / "repositories" / repo / tag
            target = "../" * (1 + len(repo.split("/"))) + "content/" + hx
        else:
            assert (self.root / repo / hx).is_dir(), "legacy tag must name a digest of its repository"
            p = self.root / repo / tag
            target = hx
        _mkdirs(p.parent)
        os.symlink(target, p)
        self.ever_tagged.add(hx)
        return p

    def content_tag_path(self, repo, tag) -> Path:
        return self.root / "repositories" / repo / tag

    def legacy_tag_path(self, repo, tag) -> Path:
        return self.root / repo / tag


def content_target(repo: str, hx: str) -> str:
    return "../" * (1 + len(repo.split("/"))) + "content/" + hx


def mount_target(repo: str, hx: str) -> str:
    """The canonical readlink of a tag in the mount."""
    return "../" * (1 + len(repo.split("/"))) + "digests/" + hx


# ---------------------------------------------------------------- store scanning
@dataclass
class StoreState:
    tags: dict = field(default_factory=dict)        # (repo, tag) -> hex or None (dangling)
    tag_layout: dict = field(default_factory=dict)  # (repo, tag) -> "content" | "legacy"
    tag_target: dict = field(default_factory=dict)  # (repo, tag) -> raw symlink target
    locations: dict = field(default_factory=dict)   # hex -> list of ("content", None) / ("legacy", repo)
    strays: list = field(default_factory=list)      # paths that are neither tag, repo dir nor digest dir
    problems: list = field(default_factory=list)

    def digests(self) -> set:
        return set(self.locations)


def _read_status(d: Path):
    try:
        return json.loads((d / "metadata.json").read_bytes()).get("status")
    except Exception as e:  # noqa: BLE001
        return f"<unreadable: {e}>"


def scan_store(root: Path) -> StoreState:
    root = Path(root)
    st = StoreState()
    croot = root / "content"
    if croot.is_dir():
        for e in os.scandir(croot):
            if HEX_RE.match(e.name) and e.is_dir(follow_symlinks=False):
                st.locations.setdefault(e.name, []).append(("content", None))
            else:
                st.strays.append(e.path)
    rroot = root / "repositories"

    def walk_content(d: Path, rel: str):
        for e in os.scandir(d):
            repo = rel
            if e.is_symlink():
                key = (repo, e.name)
                tgt = os.readlink(e.path)
                st.tag_target[key] = tgt
                st.tag_layout[key] = "content"
                m = re.fullmatch(r"((?:\.\./)+)content/([0-9a-f]{64})", tgt)
                if not m or not TAG_RE.match(e.name) or not rel:
                    st.strays.append(e.path)
                    st.problems.append(f"malformed content tag {e.path} -> {tgt!r}")
                    st.tags[key] = None
                    continue
                real = Path(os.path.realpath(e.path))
                ok = real == (root / "content" / m.group(2)).resolve() and (real / "metadata.json").is_file()
                st.tags[key] = m.group(2) if ok else None
                if not ok:
                    st.problems.append(f"dangling content tag {e.path} -> {tgt!r}")
            elif e.is_dir(follow_symlinks=False):
                walk_content(Path(e.path), f"{rel}/{e.name}" if rel else e.name)
            else:
                st.strays.append(e.path)

    if rroot.is_dir():
        walk_content(rroot, "")

    def walk_legacy(d: Path, rel: str):
        for e in os.scandir(d):
            if e.is_symlink():
                key = (rel, e.name)
                tgt = os.readlink(e.path)
                st.tag_target[key] = tgt
                st.tag_layout[key] = "legacy"
                if not HEX_RE.match(tgt) or not TAG_RE.match(e.name):
                    st.strays.append(e.path)
                    st.problems.append(f"malformed legacy tag {e.path} -> {tgt!r}")
                    st.tags[key] = None
                    continue
                ok = (d / tgt / "metadata.json").is_file()
                st.tags[key] = tgt if ok else None
                if not ok:
                    st.problems.append(f"dangling legacy tag {e.path} -> {tgt!r}")
            elif e.is_dir(follow_symlinks=False):
                if HEX_RE.match(e.name):
                    st.locations.setdefault(e.name, []).append(("legacy", rel))
                else:
                    walk_legacy(Path(e.path), f"{rel}/{e.name}" if rel else e.name)
            else:
                st.strays.append(e.path)

    for e in os.scandir(root):
        if e.name in STORE_SPECIAL:
            continue
        if e.is_dir(follow_symlinks=False):
            walk_legacy(Path(e.path), e.name)
        else:
            st.strays.append(e.path)
    return st


def location_path(root: Path, hx: str, loc) -> Path:
    kind, repo = loc
    return Path(root) / "content" / hx if kind == "content" else Path(root) / repo / hx


def eventually(pred, timeout=1.0, step=0.02, ignore=()):
    """Polls pred until it holds (True) or timeout seconds pass (False); exceptions of the kinds in
    ignore count as "not yet" (a file read while another writer replaces it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except ignore:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def bookkeeping(root) -> Path:
    """imagefs's bookkeeping directory (lock, intents/, trash/, import/) of the store at root:
    beside it, <parent>/.imagefs-<name>, out of hypeman's listings; STORE/.imagefs only where
    the store's root is a mount point of its own."""
    root = Path(os.path.realpath(root))
    if os.path.ismount(root):
        return root / ".imagefs"
    return root.parent / f".imagefs-{root.name}"


def gc_intent(root, rel_dir: str, name: str = "0001") -> Path:
    """A GC intent as imagefs records it for the directory STORE/rel_dir as it is now:
    intents/<name>.<hex>.gc -> <inode>.c<ctime ns>[:<legacy repo>] (all hex). Returns its path."""
    d = Path(root) / rel_dir
    repo, hx = rel_dir.rsplit("/", 1)
    st = os.stat(d, follow_symlinks=False)
    target = f"{st.st_ino:x}.c{st.st_ctime_ns:x}" + ("" if repo == "content" else f":{repo}")
    p = bookkeeping(root) / "intents" / f"{name}.{hx}.gc"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.symlink_to(target)
    return p


def trash_entries(root: Path) -> list:
    t = bookkeeping(root) / "trash"
    if not t.exists():
        return []
    return sorted(os.listdir(t))


def wait_trash_empty(root: Path, timeout=5.0) -> list:
    """An image the kernel still holds inodes of goes to the bookkeeping's trash/ and is freed on FUSE forget,
    which follows the kernel's invalidation shortly: wait for it. Returns what is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = trash_entries(root)
        if not left:
            return []
        time.sleep(0.02)
    return trash_entries(root)


def bookkeeping_left(root: Path) -> list[str]:
    """Work left in the bookkeeping (intents, trash, import work directories...) as
    `<dir>/<entry>`; spare/<n>.slot files kept for a full disk count only when in use (their
    first byte is not zero). Empty after a clean mount's replay."""
    priv = bookkeeping(root)
    if not priv.is_dir():
        return []
    return [f"{d.name}/{e.name}" for d in sorted(priv.iterdir()) if d.is_dir() for e in sorted(d.iterdir())
            if not (d.name == "spare" and e.read_bytes()[:1] == b"\0")]


def check_invariants(root: Path, *, ever_tagged: set, never_tagged: set = frozenset(),
                     check_hashes=True) -> list[str]:
    """The store invariants of DESIGN.md section 4, checked on disk. Returns a list of violations."""
    root = Path(root)
    st = scan_store(root)
    v = list(st.problems)
    for s in st.strays:
        if s not in " ".join(st.problems):
            v.append(f"stray entry (temp file / half-written tag?) {s}")
    tr = trash_entries(root)
    if tr:
        v.append(f"trash not empty: {tr}")
    # references per location
    refs: dict = {}
    for (repo, tag), hx in st.tags.items():
        if hx is None:
            continue
        loc = ("content", None) if st.tag_layout[(repo, tag)] == "content" else ("legacy", repo)
        refs.setdefault((hx, loc), set()).add((repo, tag))
    for hx, locs in st.locations.items():
        for loc in locs:
            d = location_path(root, hx, loc)
            status = _read_status(d)
            if check_hashes and status in ("ready", "failed") and (d / "rootfs.erofs").exists():
                if sha256_file(d / "rootfs.erofs") != hx:
                    v.append(f"digest dir {d}: rootfs.erofs does not hash to its name")
            if not (hx, loc) in refs and status in COLLECTABLE and hx in ever_tagged:
                v.append(f"leaked: {status} digest {d} was tagged and has no tag left, but was not collected")
    for hx in never_tagged:
        if hx not in st.locations:
            v.append(f"never-tagged digest {hx} was removed")
    return v


def mount_view(mnt: Path) -> dict:
    """(repo, tag) -> readlink target for every tag visible in MNT/tags."""
    out = {}
    base = Path(mnt) / "tags"

    def walk(d: Path, rel: str):
        for e in os.scandir(d):
            if e.is_symlink():
                out[(rel, e.name)] = os.readlink(e.path)
            elif e.is_dir(follow_symlinks=False):
                walk(Path(e.path), f"{rel}/{e.name}" if rel else e.name)
            else:
                out[(rel, e.name)] = f"<non-symlink entry, mode {oct(e.stat(follow_symlinks=False).st_mode)}>"

    walk(base, "")
    return out


def snapshot(root: Path) -> dict:
    """Everything a user can see in the store (minus .imagefs): used to prove failed ops change nothing."""
    root = Path(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".imagefs" or rel.startswith(".imagefs/"):
            dirnames[:] = []
            continue
        st = os.lstat(dirpath)
        snap[rel] = ("d", st.st_mode, st.st_uid, st.st_gid)
        for n in list(dirnames):
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                snap[os.path.relpath(p, root)] = ("l", os.readlink(p))
        for n in filenames:
            p = os.path.join(dirpath, n)
            r = os.path.relpath(p, root)
            if os.path.islink(p):
                snap[r] = ("l", os.readlink(p))
            else:
                snap[r] = ("f", sha256_file(p))
    return snap


# ---------------------------------------------------------------- mounts
def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mountinfo():
    """(mountpoint, fstype) of every mount, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            yield _unescape(left.split()[4]), right.split()[0]


def mounts_of_device(dev: int) -> list[str]:
    """Mountpoints of every mount of the superblock on device number `dev` (an `st_dev`)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if line.split()[2] == want]


def mounts_at(path) -> list[str]:
    """fstypes of every mount whose mountpoint is exactly path. Only the parent is resolved: a lookup
    of `digests/<hex>/rootfs` itself would hold the main mount's copy of the tree, which keeps the
    daemon from mounting the tree over it while a test polls."""
    head, tail = os.path.split(str(path).rstrip("/"))
    path = os.path.join(os.path.realpath(head), tail)
    return [fstype for mp, fstype in _mountinfo() if mp == path]


def is_fuse_mounted(path) -> bool:
    return any(t.startswith("fuse") for t in mounts_at(path))


def fuse_mounts_under(prefix) -> list[str]:
    prefix = os.path.realpath(str(prefix))
    return [mp for mp, fstype in _mountinfo()
            if fstype.startswith("fuse") and (mp == prefix or mp.startswith(prefix + "/"))]


def force_unmount(path):
    for cmd in (["fusermount3", "-u", path], ["umount", "-l", path], ["fusermount3", "-u", "-z", path]):
        if not is_fuse_mounted(path):
            return
        try:
            sh(*cmd, timeout=15)
        except subprocess.TimeoutExpired:
            pass


def find_daemon_pids(mnt) -> list[int]:
    """pids of imagefs processes whose argv names this mountpoint."""
    mnt = os.path.realpath(str(mnt))
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if not args or "imagefs" not in os.path.basename(args[0]):
            continue
        if "mount" in args and any(os.path.realpath(a) == mnt for a in args[1:] if a.startswith("/")):
            pids.append(int(d))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


class Mount:
    def __init__(self, store: Path, mnt: Path, log: Path, *, allow_other=False, threads=None,
                 foreground=True, extra_args=()):
        self.store, self.mnt, self.log = Path(store), Path(mnt), Path(log)
        self.allow_other, self.threads, self.foreground = allow_other, threads, foreground
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.daemon_pid: int | None = None
        self.final_log = ""
        self.exit_code = None

    def argv(self):
        a = [str(imagefs_bin()), "mount", "--store", str(self.store), str(self.mnt)]
        if self.foreground:
            a.append("--foreground")
        if self.allow_other:
            a.append("--allow-other")
        if self.threads:
            a += ["--threads", str(self.threads)]
        return a + self.extra_args

    def start(self, timeout=15.0):
        b = imagefs_bin()
        if not os.access(b, os.X_OK):
            raise AssertionError(f"imagefs binary not found at {b} (set IMAGEFS_BIN)")
        env = dict(os.environ, RUST_LOG=os.environ.get("IMAGEFS_RUST_LOG", "info"), RUST_BACKTRACE="1")
        logf = open(self.log, "ab")
        logf.write(f"=== test harness: starting {' '.join(self.argv())} at {time.time():.3f}\n".encode())
        logf.flush()
        already = len([t for t in mounts_at(self.mnt) if t.startswith("fuse")])
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                     start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len([t for t in mounts_at(self.mnt) if t.startswith("fuse")]) > already:
                break
            rc = self.proc.poll()
            if rc is not None and self.foreground:
                raise AssertionError(f"imagefs mount exited with {rc} before mounting:\n{self.log_tail()}")
            time.sleep(0.02)
        else:
            raise AssertionError(f"{self.mnt} not a fuse mount after {timeout}s:\n{self.log_tail()}")
        if self.foreground:
            self.daemon_pid = self.proc.pid
        else:
            rc = self.proc.wait(timeout=max(1, deadline - time.monotonic()))
            if rc != 0:
                raise AssertionError(f"imagefs mount (daemonizing) exited {rc}:\n{self.log_tail()}")
            pids = find_daemon_pids(self.mnt)
            self.daemon_pid = pids[0] if pids else None
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return self.final_log

    def log_tail(self, n=80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def kill9(self):
        if self.daemon_pid and pid_alive(self.daemon_pid):
            os.kill(self.daemon_pid, signal.SIGKILL)
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, wait=8.0):
        """Unmount (fusermount3 -u, umount -l, fusermount3 -u -z), wait for the daemon, kill it if needed.
        Returns the daemon's exit code when known (None when it had to be killed)."""
        force_unmount(str(self.mnt))
        killed = False
        pids = set(find_daemon_pids(self.mnt))
        if self.daemon_pid:
            pids.add(self.daemon_pid)
        deadline = time.monotonic() + wait
        if self.proc is not None:
            try:
                self.exit_code = self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in pids:
            if pid_alive(p):
                killed = True
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.final_log = self.log_text()
        if killed:
            self.exit_code = None
        return self.exit_code


def flock_store(root: Path):
    """Take the store's writer lock like another writer would (context manager)."""
    class _L:
        def __enter__(self_):
            d = bookkeeping(root)
            d.mkdir(exist_ok=True)
            self_.f = open(d / "lock", "a+")
            fcntl.flock(self_.f, fcntl.LOCK_EX)
            return self_

        def __exit__(self_, *a):
            fcntl.flock(self_.f, fcntl.LOCK_UN)
            self_.f.close()
    return _L()


def make_workdir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    d = Path(tempfile.mkdtemp(prefix="t-", dir=base))
    os.chmod(d, 0o755)
    return d
