"""A real runtime on imagefs (issue 3, item 5): runc runs a busybox container whose root.path is
MNT/digests/<hex>/rootfs (the resolved tag), and a running container survives the removal of its
image's last tag (DESIGN.md 4: in use is never yanked)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import bookkeeping
from helpers import pid_alive, require
from rootfs_tree import (StoreRoot, add_image, build_busybox_tree, erofs_superblocks, mkfs, release_lines,
                         trash_released, wait_until)

HOSTNAME = b"imagefs-runc\n"


def _ensure_tools():
    if shutil.which("runc") is None or shutil.which("busybox") is None:
        subprocess.run(["apt-get", "install", "-y", "runc", "busybox-static"], capture_output=True, timeout=600)
    require(shutil.which("runc") and shutil.which("busybox"), "runc / busybox-static not installable")


def runc(*args, timeout=60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runc", *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def runc_ids() -> set[str]:
    r = runc("list", "-q")
    return set(r.stdout.split())


@pytest.fixture
def containers(mounter):
    """Records container ids; teardown kills and deletes them (before the mount is unmounted)."""
    _ensure_tools()
    ids: list[str] = []
    yield ids
    for cid in ids:
        runc("kill", cid, "KILL")
        runc("delete", "-f", cid)
    left = runc_ids() & set(ids)
    assert not left, f"containers left behind: {left}"


@pytest.fixture(params=["kernel", "fuse"])
def busybox_image(request, workdir, mounter, containers):
    """The busybox image in a store, mounted with its tree mounted the `--rootfs-mounts` way of the
    param (m.how): the kernel's erofs or a FUSE image tree."""
    tree = workdir / "bbtree"
    build_busybox_tree(tree, hostname=HOSTNAME)
    img = mkfs(workdir / "busybox.erofs", tree, "lz4")
    root = workdir / "rstore"
    root.mkdir()
    hx = add_image(root, img, repo="docker.io/library/busybox", tag="latest")
    sbs_before = erofs_superblocks()
    m = mounter(StoreRoot(root), extra_args=["--rootfs-mounts", request.param])
    m.how, m.sbs_before = request.param, sbs_before
    tree = m.mnt / "digests" / hx / "rootfs"
    require(wait_until(lambda: os.stat(tree).st_dev != os.stat(m.mnt).st_dev, 5),
            "image trees are not mounted on their own here (needs root and the kernel's mount API)")
    want = {"text": hashlib.sha256((tree / "data" / "text").read_bytes()).hexdigest(),
            "random": hashlib.sha256((tree / "data" / "random-2M").read_bytes()).hexdigest()}
    return m, root, hx, want


def make_bundle(bundle: Path, rootfs: str, args: list[str]) -> Path:
    bundle.mkdir()
    r = runc("spec", cwd=bundle)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"] = {"path": rootfs, "readonly": True}
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    cfg["hostname"] = "imagefs-test"
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    return bundle


def _rootfs_of_tag(m, repo, tag) -> str:
    real = os.path.realpath(m.mnt / "tags" / repo / tag)
    return real + "/rootfs"


def test_runc_runs_a_container_from_rootfs(busybox_image, containers, workdir):
    m, root, hx, want = busybox_image
    rootfs = _rootfs_of_tag(m, "docker.io/library/busybox", "latest")
    assert rootfs == str(m.mnt / "digests" / hx / "rootfs"), rootfs
    cid = f"imagefs-run-{os.getpid()}"
    containers.append(cid)
    bundle = make_bundle(workdir / "bundle", rootfs, [
        "/bin/sh", "-c",
        "cat /etc/hostname; ls /; sha256sum /data/text /data/random-2M; ls /data/sub | wc -l; "
        "stat -c '%a %u %g' /bin/busybox; readlink /bin/sh; id -u"])
    r = runc("run", "--bundle", bundle, cid, timeout=90)
    assert r.returncode == 0, f"runc run exited {r.returncode}: stdout {r.stdout!r} stderr {r.stderr!r}"
    lines = r.stdout.splitlines()
    assert lines[0] == HOSTNAME.decode().strip(), r.stdout
    assert lines[1:9] == ["bin", "data", "dev", "etc", "proc", "root", "sys", "tmp"], r.stdout
    assert f"{want['text']}  /data/text" in lines, r.stdout
    assert f"{want['random']}  /data/random-2M" in lines, r.stdout
    assert lines[-4:] == ["30", "755 0 0", "busybox", "0"], r.stdout
    assert cid not in runc_ids()


def test_running_container_survives_last_untag(busybox_image, containers, workdir):
    m, root, hx, want = busybox_image
    rootfs = _rootfs_of_tag(m, "docker.io/library/busybox", "latest")
    cid = f"imagefs-long-{os.getpid()}"
    bundle = make_bundle(workdir / "bundle", rootfs, [
        "/bin/sh", "-c", "while true; do cat /etc/hostname || exit 3; sleep 0.2; done"])
    out = workdir / "container.out"
    containers.append(cid)
    with open(out, "wb") as f:
        r = subprocess.run(["runc", "run", "-d", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL,
                           stdout=f, stderr=f, timeout=90)
    assert r.returncode == 0, f"runc run -d exited {r.returncode}: {out.read_bytes()[-1000:]!r}"

    def state():
        s = runc("state", cid)
        return json.loads(s.stdout) if s.returncode == 0 else {"status": f"<runc state failed: {s.stderr}>"}
    assert state()["status"] == "running"
    assert wait_until(lambda: out.read_bytes().count(HOSTNAME) >= 3, 10), out.read_bytes()[-500:]
    init_pid = state()["pid"]
    assert Path(f"/proc/{init_pid}/root/etc/hostname").read_bytes() == HOSTNAME

    e = runc("exec", cid, "cat", "/etc/hostname")
    assert e.returncode == 0 and e.stdout == HOSTNAME.decode(), f"runc exec before the untag: {e.stderr}"
    e = subprocess.run(["nsenter", "-t", str(init_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                        "/bin/cat", "/etc/hostname"], capture_output=True, text=True, timeout=60)
    assert e.returncode == 0 and e.stdout == HOSTNAME.decode(), f"nsenter before the untag: {e.stderr}"

    # The kernel's way: the container's tree is an erofs superblock of the kernel's own, which
    # holds the image file; it must outlive the untag and go with the container.
    sbs = erofs_superblocks() - m.sbs_before if m.how == "kernel" else set()
    if m.how == "kernel":
        assert any(ln.split()[4] == str(Path(rootfs).resolve()) and " - erofs " in ln
                   for ln in open("/proc/self/mountinfo")), "the container's rootfs is no kernel erofs mount"

    # remove the image's last (only) tag through the mount
    os.unlink(m.mnt / "tags" / "docker.io" / "library" / "busybox" / "latest")
    assert not (root / "content" / hx).exists(), "the digest directory must leave STORE/content at once"
    assert hx not in os.listdir(m.mnt / "digests"), "the digest must leave MNT/digests at once"

    n0 = out.read_bytes().count(HOSTNAME)
    time.sleep(2)
    problems = []
    st = state()
    if st["status"] != "running":
        problems.append(f"container status after untag: {st['status']}; output tail {out.read_bytes()[-300:]!r}")
    n1 = out.read_bytes().count(HOSTNAME)
    if n1 < n0 + 5:
        problems.append(f"heartbeat stalled: {n0} -> {n1} hostname reads in 2 s; tail {out.read_bytes()[-300:]!r}")
    if b"exit" in out.read_bytes() or b"No such" in out.read_bytes() or b"error" in out.read_bytes().lower():
        problems.append(f"errors in the container's output: {out.read_bytes()[-500:]!r}")
    try:
        if Path(f"/proc/{init_pid}/root/data/sub/f05").read_bytes() != b"sub file 5\n" * 6:
            problems.append("/proc/<container init>/root/data/sub/f05 reads wrong")
    except OSError as e:
        problems.append(f"/proc/<container init>/root/data/sub/f05: {e!r}")
    # new processes in the container (nsenter into all its namespaces and its root): exec a binary from
    # the image and look up files never touched before. (`runc exec` is not used after the untag: runc
    # starts its setns process with cwd = root.path on the host, which is gone from digests/ by design.)
    for args, check in (
        (["cat", "/etc/hostname"], lambda o: o == HOSTNAME.decode()),
        (["sha256sum", "/data/text"], lambda o: o.split()[:1] == [want["text"]]),
        (["sha256sum", "/data/random-2M"], lambda o: o.split()[:1] == [want["random"]]),
        (["ls", "/data/sub"], lambda o: o.split() == [f"f{i:02d}" for i in range(30)]),
        (["cat", "/etc/passwd"], lambda o: o.startswith("root:x:0:0")),
    ):
        e = subprocess.run(["nsenter", "-t", str(init_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                            "/bin/" + args[0], *args[1:]], capture_output=True, text=True, timeout=60)
        if e.returncode != 0 or not check(e.stdout):
            problems.append(f"nsenter into the container, {' '.join(args)}: exit {e.returncode}, "
                            f"stdout {e.stdout[:200]!r}, stderr {e.stderr[:300]!r}")
    assert not problems, "the running container was yanked when its image's last tag went:\n" + "\n".join(problems)
    if m.how == "fuse":
        assert not release_lines(m, hx), "released while the container still runs"
    elif len(sbs) == 1:  # (another erofs file mount made meanwhile would make ours unknown)
        assert sbs <= erofs_superblocks(), "the kernel let go of the image while the container runs"

    # stop it: the image's space is released
    r = runc("kill", cid, "KILL")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: state()["status"] == "stopped", 10), state()
    r = runc("delete", "-f", cid)
    assert r.returncode == 0, r.stderr
    assert cid not in runc_ids()
    trash = bookkeeping(root) / "trash"
    assert wait_until(lambda: trash_released(root), 5, 0.2), \
        f"trash still holds {os.listdir(trash)} after the container went"
    assert release_lines(m, hx), f"the daemon log never says it released {hx}:\n{m.log_tail(20)}"
    if len(sbs) == 1:
        assert wait_until(lambda: not (sbs & erofs_superblocks()), 5), "the kernel kept the image after the container"
    assert pid_alive(m.daemon_pid)
