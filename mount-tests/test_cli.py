"""DESIGN.md section 5 / issue 2 item 4: imagefs mount / umount, daemonizing, signals, clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import (
    find_daemon_pids, force_unmount, imagefs_bin, is_fuse_mounted, mounts_at, pid_alive, sh,
)
from world import assert_tag


def _store(store):
    hx = store.add_digest("cli")
    store.tag("docker.io/library/cli", "latest", hx)
    return hx


def test_daemonizing_mount_and_umount(store, mnt, mounter):
    hx = _store(store)
    m = mounter(store, mnt, start=False, foreground=False)  # registered for cleanup
    env = dict(os.environ, RUST_LOG="info")
    with open(m.log, "ab") as log:
        r = subprocess.run([imagefs_bin(), "mount", "--store", store.root, mnt], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, env=env, timeout=30)
    assert r.returncode == 0, m.log_tail()
    # the command returns only once the mount answers
    assert is_fuse_mounted(mnt), "mount command returned before the mount was in place"
    assert set(os.listdir(mnt)) >= {"tags", "digests"}
    assert_tag(mnt, store, "docker.io/library/cli", "latest", hx)
    pids = find_daemon_pids(mnt)
    assert len(pids) == 1, f"expected one daemon for {mnt}, found {pids}"
    m.daemon_pid = pids[0]
    r = sh(imagefs_bin(), "umount", mnt, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not is_fuse_mounted(mnt), "still mounted after imagefs umount"
    deadline = time.monotonic() + 5
    while pid_alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pids[0]), "daemon still running 5 s after imagefs umount"


def test_foreground_exits_after_fusermount_u(store, mounter):
    # Plain `fusermount3 -u` unmounts a mount with no image trees mounted inside it.
    _store(store)
    m = mounter(store, extra_args=["--no-rootfs-mounts"])
    r = sh("fusermount3", "-u", m.mnt)
    assert r.returncode == 0, r.stderr
    rc = m.proc.wait(timeout=5)
    assert rc == 0, f"daemon exit code {rc} after fusermount3 -u\n{m.log_tail()}"


def test_foreground_exits_after_lazy_fusermount_u(store, mounter):
    # With the image trees mounted inside (the default), the kernel refuses a plain
    # unmount of the parent (EBUSY); `fusermount3 -u -z` takes the whole tree.
    _store(store)
    m = mounter(store)
    r = sh("fusermount3", "-u", "-z", m.mnt)
    assert r.returncode == 0, r.stderr
    rc = m.proc.wait(timeout=5)
    assert rc == 0, f"daemon exit code {rc} after fusermount3 -u -z\n{m.log_tail()}"
    assert not [l for l in open("/proc/self/mountinfo") if f" {m.mnt}" in l], "mounts left behind"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_cleanly(store, mounter, sig):
    _store(store)
    m = mounter(store)
    os.listdir(m.mnt / "tags")
    m.proc.send_signal(sig)
    rc = m.proc.wait(timeout=5)
    assert not is_fuse_mounted(m.mnt), f"still mounted after {sig.name}"
    assert rc == 0, f"exit code {rc} after {sig.name}\n{m.log_tail()}"


def test_threads_option(store, mounter):
    hx = _store(store)
    m = mounter(store, threads=4)
    assert_tag(m.mnt, store, "docker.io/library/cli", "latest", hx)


def test_umount_command_on_foreground_mount(store, mounter):
    _store(store)
    m = mounter(store)
    r = sh(imagefs_bin(), "umount", m.mnt)
    assert r.returncode == 0, r.stderr
    assert not is_fuse_mounted(m.mnt)
    assert m.proc.wait(timeout=5) == 0


def test_missing_store_is_a_clear_error(workdir, mnt):
    missing = workdir / "no-such-store"
    r = sh(imagefs_bin(), "mount", "--store", missing, mnt, "--foreground", timeout=20)
    try:
        assert r.returncode != 0
        assert str(missing) in r.stderr, f"error does not name the store: {r.stderr!r}"
        assert not is_fuse_mounted(mnt)
    finally:
        force_unmount(str(mnt))


def test_missing_mountpoint_is_a_clear_error(store, workdir):
    _store(store)
    missing = workdir / "no-such-mnt"
    r = sh(imagefs_bin(), "mount", "--store", store.root, missing, "--foreground", timeout=20)
    try:
        assert r.returncode != 0
        assert str(missing) in r.stderr, f"error does not name the mountpoint: {r.stderr!r}"
    finally:
        force_unmount(str(missing))


def test_busy_mountpoint_is_a_clear_error(store, mounter):
    _store(store)
    m = mounter(store)
    p = subprocess.Popen([imagefs_bin(), "mount", "--store", store.root, m.mnt, "--foreground"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("a second mount on a busy mountpoint is still running after 10 s (it mounted?)")
        assert p.returncode != 0, "a second mount on a busy mountpoint must fail"
        assert str(m.mnt) in err, err
        assert len([t for t in mounts_at(m.mnt) if t.startswith("fuse")]) == 1
        assert os.listdir(m.mnt / "tags") == ["docker.io"]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for _ in range(3):
            if len(mounts_at(m.mnt)) > 1:
                sh("umount", "-l", m.mnt)


def test_umount_of_a_non_mount_is_a_clear_error(workdir):
    d = workdir / "not-a-mount"
    d.mkdir()
    r = sh(imagefs_bin(), "umount", d, timeout=20)
    assert r.returncode != 0
    assert str(d) in r.stderr, r.stderr


def test_store_that_is_a_file_is_a_clear_error(workdir, mnt):
    f = workdir / "file-store"
    f.write_text("x")
    r = sh(imagefs_bin(), "mount", "--store", f, mnt, "--foreground", timeout=20)
    try:
        assert r.returncode != 0
        assert str(f) in r.stderr, r.stderr
    finally:
        force_unmount(str(mnt))
