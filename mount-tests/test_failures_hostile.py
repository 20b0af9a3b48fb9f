"""Hostile store layouts (issue 10): FIFOs, sockets, devices and directories where store files are
expected, a huge metadata.json, the mountpoint inside the store; and --log-file holding the whole log.

Every operation on a hostile store runs in a child process with a timeout: a hang fails the test
instead of hanging it, and the hung mount is taken down (the daemon killed, which aborts the FUSE
connection, then the mount detached) so that the client in D state can end.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    bookkeeping, imagefs_bin, is_fuse_mounted, pid_alive, snapshot,
)

HANG = 10  # seconds: each of these answers at once when right
FUSECTL = Path("/sys/fs/fuse/connections")


def abort_fuse_under(path: Path):
    """Aborts every FUSE connection mounted at or under path (fusectl's abort), mounting fusectl
    for it if needed and unmounting it after. A daemon whose own thread waits on its mount
    cannot die of SIGKILL (the thread sits in D state); the abort frees it and its clients."""
    path = os.path.abspath(path)
    conns = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        mp, fstype = f[4].replace("\\040", " "), f[f.index("-") + 1]
        if fstype.startswith("fuse") and (mp == path or mp.startswith(path + "/")):
            conns.append(f[2].split(":")[1])
    if not conns:
        return
    ours = not any(line.split()[2] == "fusectl" for line in Path("/proc/mounts").read_text().splitlines())
    if ours:
        subprocess.run(["mount", "-t", "fusectl", "none", str(FUSECTL)], check=False, timeout=10)
    try:
        for c in conns:
            try:
                (FUSECTL / c / "abort").write_text("1")
            except OSError:
                pass
    finally:
        if ours:
            subprocess.run(["umount", str(FUSECTL)], check=False, timeout=10)


def imagefs_pids_naming(path: Path) -> list[int]:
    """imagefs processes with path among their arguments, compared as text: resolving a path
    (realpath, as helpers.find_daemon_pids does) would stat through the hung mount."""
    want = os.path.abspath(path).encode()
    pids = []
    for d in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0") if d.isdigit() else []
        except OSError:
            continue
        if argv and b"imagefs" in os.path.basename(argv[0]) and want in argv[1:]:
            pids.append(int(d))
    return pids


def take_down(mnt: Path, pids=()):
    """Ends a hung mount: the daemons killed, the connections aborted, the mounts detached.
    Never stats through the mount (that would hang too)."""
    mnt = os.path.abspath(mnt)
    for pid in {*pids, *imagefs_pids_naming(mnt)}:
        if pid and pid_alive(pid):
            os.kill(pid, 9)
    abort_fuse_under(mnt)
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        mp = line.split()[4]
        if mp == mnt or mp.startswith(mnt + "/"):
            subprocess.run(["umount", "-l", mp], check=False, timeout=10)


def bounded(m, argv, timeout=HANG) -> subprocess.CompletedProcess:
    """Runs argv against mount m; if it hangs, takes the mount down and fails."""
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        take_down(m.mnt, [m.daemon_pid])
        p.kill()
        p.communicate(timeout=30)
        pytest.fail(f"{' '.join(map(str, argv))}: hung for {timeout}s (mount taken down)")
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


PROBE = r"""
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "listdir":
        os.listdir(path)
    elif op == "read":
        with open(path, "rb") as f:
            f.read(4096)
    else:
        os.stat(path)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""


def probe(m, op: str, path: Path) -> str:
    """'ok' or the errno name of op (listdir, read, stat) on path, in a child process, bounded."""
    r = bounded(m, [sys.executable, "-c", PROBE, op, path])
    return r.stdout.strip()


def make_special(path: Path, kind: str):
    """Replaces path by a `kind`: fifo, socket, directory or chardev (/dev/null's numbers)."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "socket":
        s, cwd = socket.socket(socket.AF_UNIX), os.getcwd()
        os.chdir(path.parent)  # sun_path holds 108 bytes: bind by the short name
        try:
            s.bind(path.name)
        finally:
            os.chdir(cwd)
            s.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "chardev":
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        raise AssertionError(kind)


# ------------------------------------------------------------------ bug 4: metadata.json a FIFO
def test_fifo_metadata_json_blocks_nothing_and_is_never_collected(store, mounter):
    hx = store.add_digest("hostile-fifo-md")
    other = store.add_digest("hostile-other")
    store.tag("docker.io/library/fifo", "latest", hx)
    make_special(store.content_dir(hx) / "metadata.json", "fifo")
    m = mounter(store)
    mnt = m.mnt

    r = bounded(m, ["ls", "-l", mnt / "digests"])
    assert r.returncode == 0, r.stderr
    assert hx in r.stdout and other in r.stdout
    # Its status is unknown: not ready, so no rootfs/; its listing still works.
    r = bounded(m, ["ls", mnt / "digests" / hx])
    assert r.returncode == 0 and "rootfs" not in r.stdout.split(), (r.stdout, r.stderr)
    # The last tag goes; a digest whose status is unknown is never collected.
    r = bounded(m, ["rm", mnt / "tags/docker.io/library/fifo/latest"])
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.lstat(store.content_dir(hx) / "metadata.json").st_mode)
    # The store lock is free: an unrelated tag goes in at once.
    r = bounded(m, ["ln", "-s", other, mnt / "tags/docker.io/library/fifo/other"])
    assert r.returncode == 0, r.stderr
    assert os.readlink(store.content_tag_path("docker.io/library/fifo", "other")).endswith(other)
    assert "not a regular file (a FIFO)" in m.log_text()


# ------------------------------------------------------------------ bug 4 and the smaller one: rootfs.erofs
@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev", "directory"])
def test_rootfs_erofs_that_is_no_file_answers_eio_at_once(store, mounter, kind):
    hx = store.add_digest(f"hostile-img-{kind}")
    good = store.add_digest("hostile-good")
    make_special(store.content_dir(hx) / "rootfs.erofs", kind)
    m = mounter(store)
    d = m.mnt / "digests" / hx

    r = bounded(m, ["ls", "-l", d])  # the listing answers (what does not open is left out)
    assert r.returncode == 0 and "metadata.json" in r.stdout, (r.stdout, r.stderr)
    assert probe(m, "listdir", d / "rootfs") == "EIO"
    assert probe(m, "stat", d / "rootfs.erofs") == "EIO"
    assert probe(m, "read", d / "rootfs.erofs") == "EIO"
    assert probe(m, "read", d / "metadata.json") == "ok"
    assert probe(m, "listdir", m.mnt / "digests" / good / "rootfs") == "ok"
    what = {"fifo": "a FIFO", "socket": "a socket", "chardev": "a character device",
            "directory": "a directory"}[kind]
    log = m.log_text()
    assert f"rootfs.erofs: not a regular file ({what})" in log and hx in log, m.log_tail()
    # Still there: a hostile entry is reported, never removed.
    assert os.path.lexists(store.content_dir(hx) / "rootfs.erofs")


# ------------------------------------------------------------------ bug 13: a huge metadata.json
def test_huge_metadata_json_is_not_read(store, mounter):
    hx = store.add_digest("hostile-huge-md")
    store.tag("docker.io/library/huge", "latest", hx)
    md = store.content_dir(hx) / "metadata.json"
    with open(md, "r+b") as f:  # sparse: no disk space, but 384 MiB to whoever reads it whole
        f.truncate(384 << 20)
    m = mounter(store)
    t0 = time.monotonic()
    r = bounded(m, ["ls", "-l", m.mnt / "digests", m.mnt / "digests" / hx])
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "rootfs" not in r.stdout.split(), r.stdout  # status unknown: not served as ready
    # Its bytes are still served as a file (read in pieces, never whole).
    assert probe(m, "read", m.mnt / "digests" / hx / "metadata.json") == "ok"
    # Untagged, it is not collected: its status is unknown.
    r = bounded(m, ["rm", m.mnt / "tags/docker.io/library/huge/latest"])
    assert r.returncode == 0, r.stderr
    assert md.exists()
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{m.daemon_pid}/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    assert hwm < 128 * 1024, f"daemon's peak resident memory {hwm} KiB: the file was read whole"
    assert took < 2, took
    assert "larger than the 1048576 bytes imagefs reads of it" in m.log_text(), m.log_tail()


# ------------------------------------------------------------------ bug 5: mountpoint and store nested
def _mount_cmd(store_root: Path, mp: Path, timeout=20):
    """`imagefs mount` (daemonizing) bounded; a hang takes down what it mounted and fails."""
    argv = [str(imagefs_bin()), "mount", "--store", str(store_root), str(mp)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        take_down(mp, [p.pid])
        p.communicate(timeout=30)
        pytest.fail(f"{' '.join(argv)}: did not return in {timeout}s (mount taken down)")
    return p.returncode, out, err


@pytest.mark.parametrize("where", ["below", "same", "above", "bookkeeping", "bind"])
def test_mountpoint_and_store_nested_are_refused(workdir, images, where):
    from helpers import Store
    alias = workdir / "alias"
    if where == "above":  # the store inside the mountpoint
        mp = workdir / "outer"
        store = Store(mp / "store", images)
    else:
        store = Store(workdir / "store", images)
        mp = {"below": store.root / "mnt", "same": store.root, "bind": alias / "mnt",
              "bookkeeping": bookkeeping(store.root) / "mnt"}[where]
    hx = store.add_digest("hostile-nested")
    store.tag("docker.io/library/nested", "latest", hx)
    (store.root / "mnt").mkdir()
    if where == "bind":  # the store seen through a bind mount of it: another path, same directory
        alias.mkdir()
        subprocess.run(["mount", "--bind", str(store.root), str(alias)], check=True, timeout=10)
    mp.mkdir(parents=True, exist_ok=True)
    before = snapshot(workdir)
    try:
        rc, _, err = _mount_cmd(store.root, mp)
        assert rc == 1, err
        assert str(store.root) in err and str(mp) in err, err
        assert not is_fuse_mounted(str(mp))
        assert snapshot(workdir) == before, "the refused mount changed something"
    finally:
        take_down(mp)
        if where == "bind":
            subprocess.run(["umount", "-l", str(alias)], check=False, timeout=10)


# ------------------------------------------------------------------ bug 14: --log-file from the start
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemonized"])
def test_log_file_has_the_scan_and_recovery_from_the_start(store, mounter, workdir, foreground):
    hx = store.add_digest("hostile-log")
    store.tag("docker.io/library/logged", "latest", hx)
    (store.root / "stray-file").write_bytes(b"not a repository\n")
    # A leftover of an interrupted tag install: the mount's recovery removes it.
    leftover = store.root / "repositories/docker.io/library/logged/.imagefs-tmp-1-2-3-link"
    os.symlink("nowhere", leftover)
    log = workdir / "daemon-own.log"
    m = mounter(store, foreground=foreground, extra_args=["--log-file", str(log)])
    assert os.path.isdir(m.mnt / "digests" / hx)
    assert not os.path.lexists(leftover)
    text = log.read_text()
    assert f"{store.root / 'stray-file'}: stray file; ignored" in text, text
    assert f"removed leftover {leftover}" in text, text
    assert f"store {store.root}: recovery: 1 steps taken, 0 failed" in text, text
    assert f"store {store.root}: 1 tags, 1 digests" in text, text
    assert "mounted" in text, text
