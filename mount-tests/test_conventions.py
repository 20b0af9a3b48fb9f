"""How Linux users run FUSE filesystems: mount -t fuse.imagefs, fstab, -o options, --help."""
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers import fuse_mounts_under

BIN = Path(os.environ.get("IMAGEFS_BIN", Path(__file__).resolve().parent.parent / "target/debug/imagefs"))
# mount.fuse3 runs the helper through /bin/sh with the system's PATH.
SYSTEM_BIN = Path("/usr/local/bin/imagefs")


@pytest.fixture
def on_system_path():
    """Puts the binary under test where mount.fuse3 finds it, and restores what was there."""
    backup = None
    if SYSTEM_BIN.exists() or SYSTEM_BIN.is_symlink():
        backup = SYSTEM_BIN.with_name("imagefs.test-backup")
        os.replace(SYSTEM_BIN, backup)
    os.symlink(BIN, SYSTEM_BIN)
    try:
        yield
    finally:
        os.unlink(SYSTEM_BIN)
        if backup is not None:
            os.replace(backup, SYSTEM_BIN)


def mount_type(mnt: Path) -> tuple[str, str] | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        if pre.split()[4] == str(mnt):
            fields = post.split()
            return fields[0], ",".join(pre.split()[5:6] + fields[2:3])
    return None


def wait_gone(mnt: Path, timeout=5.0):
    t0 = time.monotonic()
    while mount_type(mnt) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)


@pytest.fixture
def tagged_store(store):
    hx = store.add_digest("conv")
    store.tag("docker.io/library/conv", "latest", hx)
    return store, hx


def cleanup(mnt: Path):
    if mount_type(mnt):
        subprocess.run(["umount", str(mnt)], capture_output=True)
        wait_gone(mnt)
    if mount_type(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_mount_t_fuse_imagefs_with_options(tagged_store, mnt, on_system_path):
    store, hx = tagged_store
    r = subprocess.run(["mount", "-t", "fuse.imagefs", str(store.root), str(mnt),
                        "-o", "allow_other,threads=2,nofail,x-systemd.automount"],
                       capture_output=True, text=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        kind, opts = mount_type(mnt)
        assert kind == "fuse.imagefs"
        assert "allow_other" in opts and "default_permissions" in opts
        assert os.readlink(mnt / "tags/docker.io/library/conv/latest") == f"../../../../digests/{hx}"
    finally:
        cleanup(mnt)
    assert not fuse_mounts_under(mnt)


def test_fstab_line_mounts_and_umount_ends_the_daemon(tagged_store, mnt, workdir, on_system_path):
    store, hx = tagged_store
    fstab = workdir / "fstab"
    log = workdir / "fstab-daemon.log"
    fstab.write_text(f"{store.root} {mnt} fuse.imagefs allow_other,log_file={log},nofail,noauto 0 0\n")
    r = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        assert mount_type(mnt)[0] == "fuse.imagefs"
        assert (mnt / "digests" / hx / "metadata.json").read_bytes() == \
            (store.root / "content" / hx / "metadata.json").read_bytes()
        r = subprocess.run([str(BIN), "umount", str(mnt)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        wait_gone(mnt)
        assert mount_type(mnt) is None
        t0 = time.monotonic()
        while "unmounted" not in log.read_text() and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert "unmounted" in log.read_text(), log.read_text()
    finally:
        cleanup(mnt)


def test_mount_subcommand_takes_dash_o(tagged_store, mnt):
    store, _ = tagged_store
    r = subprocess.run([str(BIN), "mount", "--store", str(store.root), str(mnt), "-o", "allow_other,nosuid,threads=3"],
                       capture_output=True, text=True, timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        kind, opts = mount_type(mnt)
        assert "nosuid" in opts and "allow_other" in opts, opts
    finally:
        cleanup(mnt)


@pytest.mark.parametrize("bad", ["bogus", "threads=0", "ro"])
def test_bad_mount_options_are_refused_before_mounting(tagged_store, mnt, bad):
    store, _ = tagged_store
    r = subprocess.run([str(BIN), "mount", "--store", str(store.root), str(mnt), "-o", bad],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert bad.split("=")[0] in r.stderr
    assert mount_type(mnt) is None


def test_store_root_is_refused(mnt):
    r = subprocess.run([str(BIN), "mount", "--store", "/", str(mnt)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "refusing" in r.stderr
    assert mount_type(mnt) is None


@pytest.mark.parametrize("sub,words", [
    ("mount", ["--store", "--foreground", "--allow-other", "--threads", "--log-file", "-o"]),
    ("umount", ["MOUNTPOINT"]),
    ("import", ["--store", "--tag", "SOURCE"]),
    ("ls", ["--store", "--json"]),
    ("fsck", ["--store", "--repair"]),
    ("gc", ["--store", "--dry-run"]),
])
def test_help_of_every_subcommand(sub, words):
    r = subprocess.run([str(BIN), sub, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for w in words:
        assert w in r.stdout, f"imagefs {sub} --help lacks {w}"


def test_systemd_unit_and_fstab_examples_ship():
    root = Path(__file__).resolve().parent.parent
    unit = (root / "contrib/imagefs.service").read_text()
    assert "ExecStart=/usr/local/bin/imagefs mount" in unit and "Type=forking" in unit
    assert "fuse.imagefs" in (root / "contrib/fstab.example").read_text()
