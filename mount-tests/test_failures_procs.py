"""Issue 10, processes around a store: one live mount per store whatever the path it is given by
(bug 7), a killed import leaves no running mkfs.erofs and no work directory behind (bug 12), and a
refused `imagefs umount` changes nothing."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import (
    bookkeeping, eventually, imagefs_bin, is_fuse_mounted, mounts_at, pid_alive,
    require, sh, trash_entries,
)

REPO = "docker.io/library/procs"


def run(*args, timeout=60):
    return sh(imagefs_bin(), *args, timeout=timeout)


def two_images(store) -> tuple[str, str]:
    """a (kept tagged) and b (about to lose its tag while in use), both content layout."""
    a = store.add_digest("procs-a", name=f"{REPO}:a")
    b = store.add_digest("procs-b", name=f"{REPO}:b")
    store.tag(REPO, "a", a)
    store.tag(REPO, "b", b)
    return a, b


def hold_cwd(path: Path) -> subprocess.Popen:
    """A process whose cwd is path (a container inside an image tree), until killed."""
    p = subprocess.Popen(["sleep", "120"], cwd=str(path), start_new_session=True)
    assert eventually(lambda: os.path.realpath(f"/proc/{p.pid}/cwd").endswith(str(path)[-20:]), 5)
    return p


# These tests need the daemon to keep an image in use in its trash: image trees are FUSE trees
# (with the kernel's erofs, the kernel holds the image file itself; see test_kernel_erofs.py).
FUSE_TREES = ["--rootfs-mounts", "fuse"]


def untag_in_use(m, b: str) -> subprocess.Popen:
    """Holds a cwd in b's image tree, then removes b's last tag: b waits in the trash, served."""
    user = hold_cwd(m.mnt / "digests" / b / "rootfs" / "etc")
    try:
        os.unlink(m.mnt / "tags" / REPO / "b")
        assert trash_entries(m.store), f"b in use but not kept in the trash:\n{m.log_tail(20)}"
    except BaseException:
        stop(user)
        raise
    return user


def still_served(user: subprocess.Popen) -> str:
    return Path(f"/proc/{user.pid}/cwd/os-release").read_text()


def stop(p: subprocess.Popen):
    if p.poll() is None:
        p.kill()
        p.wait(10)


def second_mount(store_arg, mnt2: Path, *extra) -> subprocess.CompletedProcess:
    """Runs `imagefs mount --foreground` of store_arg on mnt2: it should fail at once (within its
    5-second grace for a mount that is exiting). One that mounts is unmounted and killed."""
    mnt2.mkdir(exist_ok=True)
    argv = [str(imagefs_bin()), "mount", "--store", str(store_arg), str(mnt2), "--foreground", *extra]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=15)
        return subprocess.CompletedProcess(argv, p.returncode, out, "")
    except subprocess.TimeoutExpired:
        sh("umount", "-R", "-l", mnt2)
        p.kill()
        out, _ = p.communicate(timeout=10)
        return subprocess.CompletedProcess(argv, 0, out + "\n(it mounted: killed after 15 s)", "")


# ------------------------------------------------------------------ bug 7: one mount per store

@pytest.mark.parametrize("alias", ["symlink", "dotdot", "bind"])
def test_a_second_mount_of_the_same_store_by_another_path_is_refused_and_changes_nothing(
        store, mounter, workdir, alias):
    a, b = two_images(store)
    root = store.root
    m = mounter(store, extra_args=FUSE_TREES)
    user = untag_in_use(m, b)
    trash = trash_entries(root)
    if alias == "symlink":
        path = workdir / "store-link"
        path.symlink_to(root)
    elif alias == "dotdot":
        path = Path(f"{root}/../{root.name}")
    else:
        path = workdir / "store-bind"
        path.mkdir()
        r = sh("mount", "--bind", root, path)
        require(r.returncode == 0, f"cannot bind-mount the store: {r.stderr}")
    try:
        r = second_mount(path, workdir / "second")
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"a second mount of the store (by {alias}) was accepted:\n{out}"
        assert "already mounted" in out, out
        assert str(m.daemon_pid) in out, f"the refusal does not name the live mount's pid {m.daemon_pid}:\n{out}"
        assert str(m.mnt) in out, f"the refusal does not name the live mount's mountpoint {m.mnt}:\n{out}"
        assert not mounts_at(workdir / "second")
        assert trash_entries(root) == trash, "the refused mount emptied the live mount's trash"
        assert not (root / ".imagefs").exists(), "the refused mount made bookkeeping inside the store"
        assert "KEY=procs-b" in still_served(user)
        assert os.listdir(m.mnt / "tags" / REPO) == ["a"]
    finally:
        stop(user)
        if alias == "bind":
            sh("umount", "-l", path)


@pytest.mark.parametrize("trees", ["rootfs-mounts", "no-rootfs-mounts"])
def test_a_remount_after_sigterm_while_busy_never_serves_the_store_twice(store, mounter, workdir, trees):
    """SIGTERM while a process is inside an image tree: the old daemon goes on serving that process
    (lazy unmount). A new mount meanwhile must be refused (the old daemon still keeps an in-use image
    in its trash), and once the process leaves and the old daemon exits, a new mount works."""
    a, b = two_images(store)
    root = store.root
    extra = ["--no-rootfs-mounts"] if trees == "no-rootfs-mounts" else FUSE_TREES
    m = mounter(store, extra_args=extra)
    old = m.daemon_pid
    user = untag_in_use(m, b)
    trash = trash_entries(root)
    alias = workdir / "store-bind"
    alias.mkdir()
    r = sh("mount", "--bind", root, alias)
    require(r.returncode == 0, f"cannot bind-mount the store: {r.stderr}")
    try:
        os.kill(old, signal.SIGTERM)
        assert eventually(lambda: not is_fuse_mounted(m.mnt), 5), "SIGTERM did not unmount"
        assert pid_alive(old), "the old daemon left while a process was still in an image tree"
        # Remount by another path to the store (a bind mount of it) elsewhere, and where it was.
        for store_arg, mnt2 in ((alias, workdir / "second"), (root, m.mnt)):
            r = second_mount(store_arg, mnt2, *extra)
            out = r.stdout + r.stderr
            both = pid_alive(old) and r.returncode == 0
            assert not both, f"two daemons served the store at once (new mount on {mnt2}):\n{out}"
            assert r.returncode != 0 and "already mounted" in out, out
            assert str(old) in out, f"the refusal does not name the live daemon {old}:\n{out}"
            assert trash_entries(root) == trash, "the new mount emptied the old daemon's trash"
            assert "KEY=procs-b" in still_served(user)
    finally:
        stop(user)
        sh("umount", "-l", alias)
    assert eventually(lambda: not pid_alive(old), 10), "the old daemon did not exit once its user left"
    m2 = mounter(store)
    assert os.listdir(m2.mnt / "tags" / REPO) == ["a"]
    assert not trash_entries(root)
    assert not (root / "content" / b).exists()


# ------------------------------------------------------------------ bug 12: a killed import

def mkfs_of(import_dir: Path) -> list[int]:
    """pids of mkfs.erofs processes writing into import_dir."""
    r = sh("pgrep", "-f", f"mkfs.erofs.*{import_dir}")
    return [int(p) for p in r.stdout.split()]


def bytes_under(d: Path) -> int:
    """Bytes in the regular files below d (0 when it is gone); files may vanish while we walk."""
    total = 0
    for dirpath, _, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def dead_import_dirs(root) -> list[Path]:
    d = bookkeeping(root) / "import"
    return sorted(d.iterdir()) if d.is_dir() else []


def fake_dead_import(root, name: str) -> Path:
    """What a killed import leaves: import/<unique>/ with a half-built image, nobody holding its lock."""
    d = bookkeeping(root) / "import" / name
    (d / "digest").mkdir(parents=True)
    (d / "digest" / "rootfs.erofs").write_bytes(b"\0" * 300_000)
    return d


def test_a_killed_import_leaves_no_mkfs_running_and_its_leftovers_are_found_and_removed(store, mounter, workdir):
    require(sh("which", "pgrep").returncode == 0, "needs pgrep (procps)")
    a, _ = two_images(store)
    root = store.root
    src = workdir / "big"
    src.mkdir()
    for i in range(3):  # incompressible: mkfs.erofs -zlz4 needs a second or more for it
        (src / f"blob{i}").write_bytes(os.urandom(16 << 20))
    imports = bookkeeping(root) / "import"
    p = subprocess.Popen([str(imagefs_bin()), "import", "--store", str(root), "--tag", f"{REPO}:big", str(src)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert eventually(lambda: mkfs_of(imports), 10, 0.01), "mkfs.erofs never started"
        # Kill once mkfs has written something, so the leftovers have a size fsck must report.
        assert eventually(lambda: bytes_under(imports) >= 100_000 or p.poll() is not None, 20, 0.01), \
            "mkfs.erofs wrote nothing"
        assert p.poll() is None, "the import finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert eventually(lambda: not mkfs_of(imports), 2), f"mkfs.erofs outlived the killed import: {mkfs_of(imports)}"
    finally:
        for pid in mkfs_of(imports):
            os.kill(pid, signal.SIGKILL)
    left = dead_import_dirs(root)
    assert len(left) == 1, left
    # A live import's directory (its flock held) is neither reported nor removed.
    live = bookkeeping(root) / "import" / "import-live"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        f = run("fsck", "--store", root)
        assert f.returncode == 1, f.stdout + f.stderr
        lines = [ln for ln in f.stdout.splitlines() if str(left[0]) in ln]
        assert lines and lines[0].startswith("problem:"), f.stdout
        assert any(u in lines[0] for u in ("MB", "kB")), f"no size in {lines[0]!r}"
        assert str(live) not in f.stdout, f.stdout
        g = run("gc", "--store", root)
        assert g.returncode == 0, g.stdout + g.stderr
        assert dead_import_dirs(root) == [live], "gc did not remove a killed import's leftovers"
        assert str(left[0]) in g.stdout, g.stdout
        # fsck --repair and mount remove them too.
        dead = fake_dead_import(root, "import-dead-1")
        f = run("fsck", "--store", root, "--repair")
        assert not dead.exists(), f"fsck --repair left {dead}:\n{f.stdout}"
        assert f.returncode == 0, f.stdout + f.stderr
        dead = fake_dead_import(root, "import-dead-2")
        m = mounter(store)
        assert not dead.exists(), f"the mount left {dead}:\n{m.log_tail(20)}"
        assert live.is_dir(), "a live import's work directory was removed"
        assert os.listdir(m.mnt / "tags" / REPO) == ["a", "b"]
    finally:
        os.close(fd)


# ------------------------------------------------------------------ a refused imagefs umount

def mount_ids(mnt: Path) -> dict[str, str]:
    """Mount point -> mount id, for the mount on mnt and every mount below it."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mnt) or fields[4].startswith(f"{mnt}/"):
                out[fields[4]] = fields[0]
    return out


def test_a_refused_imagefs_umount_of_a_busy_mount_changes_nothing(store, mounter):
    a, b = two_images(store)
    m = mounter(store)
    tree = m.mnt / "digests" / a / "rootfs"
    # Waits on the mount table, not on stat: a lookup polling the main mount's copy of a tree
    # keeps it in use there, and the daemon never mounts over a copy in use.
    require(eventually(lambda: len(mount_ids(m.mnt)) == 3, 10),
            f"the image trees are not mounts of their own here (needs root and the mount API): {mount_ids(m.mnt)}")
    assert os.stat(tree).st_dev != os.stat(m.mnt).st_dev
    before = mount_ids(m.mnt)
    holder = hold_cwd(m.mnt / "tags" / REPO)  # keeps the main mount busy
    inside = hold_cwd(tree / "etc")  # a container in an image tree
    try:
        r = run("umount", m.mnt, timeout=30)
        assert r.returncode != 0 and "busy" in r.stderr, r.stdout + r.stderr
        assert mount_ids(m.mnt) == before, "a refused umount detached (or remounted) the image trees"
        assert str(holder.pid) in r.stderr, f"the refusal does not name the process holding it:\n{r.stderr}"
        assert Path(f"/proc/{inside.pid}/cwd/os-release").read_text().startswith("NAME=")
        assert os.listdir(m.mnt / "tags" / REPO) == ["a", "b"]
        stop(holder)
        r = run("umount", m.mnt, timeout=30)
        assert r.returncode == 0, r.stderr
        assert not mount_ids(m.mnt)
        assert "KEY=procs-a" in Path(f"/proc/{inside.pid}/cwd/os-release").read_text()
    finally:
        stop(holder)
        stop(inside)
    assert m.proc.wait(timeout=10) == 0, m.log_tail()
