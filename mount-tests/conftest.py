"""Fixtures for the imagefs mount tests.

- `images`  (session): reproducible LZ4 erofs images, one per content key, cached.
- `workdir`: a fresh 0755 tmp dir per test (world-traversable, for the setpriv tests).
- `store`:   a Store builder rooted at workdir/store.
- `mnt`:     workdir/mnt, an empty mountpoint.
- `mounter`: factory mounter(store_root, mnt=None, **opts) -> Mount; every mount is unmounted in
             teardown (fusermount3 -u, umount -l, then kill), even when the test fails, and the
             daemon's log tail is attached to the report of a failing test.
- prerequisites (root, /dev/fuse, mkfs.erofs, fusermount3, setpriv): without them every test fails
  under IMAGEFS_TESTS_STRICT=1 (CI) and is skipped with the reason otherwise.
- a watchdog per test: if a test runs longer than IMAGEFS_TEST_TIMEOUT (default 120 s; slow tests get
  more) the daemons are killed with SIGKILL, which aborts the FUSE connection so a hung syscall returns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import (  # noqa: E402
    ImageCache, Mount, Store, force_unmount, fuse_mounts_under, imagefs_bin, make_workdir, require,
)

# One directory per test session, so that concurrent runs (another engineer's, CI's) never see, nor
# clean up, each other's mounts.
if os.environ.get("IMAGEFS_TEST_TMP"):
    BASE = Path(os.environ["IMAGEFS_TEST_TMP"])
else:
    BASE = Path(tempfile.mkdtemp(prefix="imagefs-mount-tests.", dir="/tmp"))
BASE.mkdir(parents=True, exist_ok=True)
os.chmod(BASE, 0o755)


# Why the mount tests cannot run here ("" when they can): each test then fails under
# IMAGEFS_TESTS_STRICT=1 and is skipped with this reason otherwise (helpers.require).
MISSING = ""


def pytest_configure(config):
    global MISSING
    tools = ("mkfs.erofs", "fusermount3", "setpriv")
    missing = [t for t in tools if shutil.which(t) is None]
    problems = []
    if missing:
        r = subprocess.run(["apt-get", "install", "-y", "erofs-utils", "fuse3", "util-linux"],
                           capture_output=True, text=True)
        missing = [t for t in tools if shutil.which(t) is None]
        if missing:
            problems.append(f"missing tools {missing}; apt-get said: {r.stderr[-500:]}")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if os.geteuid() != 0:
        problems.append("not root: the mount tests need root (they mount, chown store dirs and use setpriv)")
    MISSING = "; ".join(problems)


@pytest.fixture(scope="session", autouse=True)
def _prerequisites():
    require(not MISSING, MISSING)


def pytest_report_header(config):
    b = imagefs_bin()
    return f"imagefs binary: {b} ({'present' if b.exists() else 'MISSING'})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for m in getattr(item, "_imagefs_mounts", []):
            rep.sections.append((f"imagefs daemon log tail ({m.mnt})", m.log_tail(60)))
        if getattr(item, "_imagefs_watchdog_fired", False):
            rep.sections.append(("watchdog", "the test hit its timeout; daemons were killed with SIGKILL"))


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    return ImageCache(tmp_path_factory.mktemp("erofs-images"))


@pytest.fixture
def workdir(request):
    d = make_workdir(BASE)
    yield d
    left = fuse_mounts_under(d)
    for mp in left:
        force_unmount(mp)
    if not fuse_mounts_under(d):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store(workdir, images):
    return Store(workdir / "store", images)


@pytest.fixture
def mnt(workdir):
    p = workdir / "mnt"
    p.mkdir(mode=0o755)
    os.chmod(p, 0o755)
    return p


@pytest.fixture
def mounter(request, workdir):
    mounts: list[Mount] = []
    request.node._imagefs_mounts = mounts
    counter = [0]

    def factory(store_root, mnt=None, *, start=True, **opts) -> Mount:
        counter[0] += 1
        if mnt is None:
            mnt = workdir / f"mnt{counter[0]}"
            mnt.mkdir(mode=0o755, exist_ok=True)
            os.chmod(mnt, 0o755)
        # A store object has .root; a path is the root itself (a Path's own .root is "/").
        root = store_root if isinstance(store_root, (str, os.PathLike)) else store_root.root
        m = Mount(Path(root), Path(mnt),
                  workdir / f"imagefs-{counter[0]}.log", **opts)
        mounts.append(m)
        if start:
            m.start()
        return m

    timeout = float(os.environ.get("IMAGEFS_TEST_TIMEOUT", "120"))
    if request.node.get_closest_marker("slow"):
        timeout += float(os.environ.get("IMAGEFS_STRESS_SECONDS", "20")) * 3 + \
            float(os.environ.get("IMAGEFS_CRASH_ITERATIONS", "20")) * 10
    if request.node.get_closest_marker("races"):
        # Up to half a second per race (hypeman's DeleteImage walks every tag): 1,000 races
        # must not run into the watchdog, whose SIGKILL would end the mount mid-run.
        timeout += float(os.environ.get("IMAGEFS_RACES", "200")) * 0.5

    def fire():
        request.node._imagefs_watchdog_fired = True
        for m in mounts:
            try:
                m.kill9()
            except Exception:  # noqa: BLE001
                pass

    wd = threading.Timer(timeout, fire)
    wd.daemon = True
    wd.start()
    try:
        yield factory
    finally:
        wd.cancel()
        errors = []
        for m in reversed(mounts):
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{m.mnt}: {e}")
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for m in mounts:
                print(f"\n--- imagefs log tail {m.mnt} ---\n{m.log_tail(40)}")
        left = fuse_mounts_under(workdir)
        assert not left and not errors, f"mounts left behind after teardown: {left} {errors}"


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left_behind():
    yield
    left = fuse_mounts_under(BASE)
    for mp in left:
        force_unmount(mp)
    time.sleep(0.1)
    assert not fuse_mounts_under(BASE), "fuse mounts left behind"
    if not os.environ.get("IMAGEFS_TEST_TMP"):
        shutil.rmtree(BASE, ignore_errors=True)
