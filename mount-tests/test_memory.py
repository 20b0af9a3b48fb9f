"""The daemon's memory is bounded by its cache budget, and given back when images leave the store
(README, Performance, "Memory").

Reads many images in full through the daemon (`tar` of each image tree, page cache dropped so
every byte is served by the daemon) with a small `--cache-size`, and checks the daemon's RSS
(VmRSS of /proc/<pid>/status) stays within the budget plus a fixed allowance; then removes every
image's only tag (the images are collected) and checks the RSS comes back near what it was at
start-up. Run for both ways the daemon serves image trees: `--rootfs-mounts fuse` (a FUSE
connection of its own) and `none` (the main mount).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from rootfs_tree import StoreRoot, add_image, mkfs, wait_until

IMAGES = 16
CACHE_MIB = 8
# What the daemon holds besides the cache: its inode table for the inodes the kernel keeps,
# each request thread's buffers, the heap's slack.
ALLOWANCE_MIB = 24
# After the images left the store: this close to the RSS at start-up (reading took it
# about 10 MiB above).
BACK_MIB = 3


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """IMAGES erofs images of about 6 MB of text each (64 KiB pclusters: reads that end inside one
    leave it decoded in the cache), all different."""
    d = tmp_path_factory.mktemp("memory-images")
    rnd = random.Random(13)
    words = [bytes(rnd.randbytes(rnd.randint(2, 9)).hex(), "ascii") for _ in range(4000)]
    base = b" ".join(rnd.choice(words) for _ in range(700_000))
    out = []
    for i in range(IMAGES):
        tree = d / f"tree{i}"
        (tree / "data").mkdir(parents=True)
        (tree / "id").write_text(f"image {i}\n")
        for f in range(40):
            off = (i * 7919 + f * 104_729) % (len(base) - 200_000)
            (tree / "data" / f"f{f}").write_bytes(base[off:off + 150_000 + f * 7])
        out.append(mkfs(d / f"img{i}.erofs", tree, "lz4-pcluster64k"))
    return out


@pytest.mark.parametrize("how", ["fuse", "none"])
def test_rss_stays_within_the_cache_budget_and_comes_back(workdir, mounter, image_files, how):
    root = workdir / "store"
    root.mkdir()
    hexes = [add_image(root, img, repo="mem", tag=f"t{i}", copy=False) for i, img in enumerate(image_files)]
    m = mounter(StoreRoot(root), extra_args=["--rootfs-mounts", how, "--cache-size", f"{CACHE_MIB}M"])
    trees = [m.mnt / "digests" / hx / "rootfs" for hx in hexes]
    if how == "fuse":
        assert wait_until(lambda: all(os.stat(t).st_dev != os.stat(m.mnt).st_dev for t in trees), 10), \
            f"image trees not mounted\n{m.log_tail()}"
    time.sleep(0.3)
    start = rss_mib(m.daemon_pid)

    for rep in range(2):
        # Page cache only: the kernel keeps its inodes, the daemon serves every byte again.
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        for t in trees:
            r = subprocess.run(["bash", "-o", "pipefail", "-c", f"tar -cf - -C {t} . | cat > /dev/null"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"tar of {t}: {r.stderr}"
    read = rss_mib(m.daemon_pid)
    assert read <= start + CACHE_MIB + ALLOWANCE_MIB, (
        f"RSS {read:.1f} MiB after reading {IMAGES} images (start-up {start:.1f} MiB, "
        f"cache budget {CACHE_MIB} MiB)")
    # Still right after all that eviction.
    assert (trees[3] / "id").read_text() == "image 3\n"

    for i in range(IMAGES):
        os.unlink(m.mnt / "tags" / "mem" / f"t{i}")
    assert wait_until(lambda: not os.listdir(m.mnt / "digests"), 10), "images not collected"
    # Released within a second or two (the heap is trimmed after releases).
    ok = wait_until(lambda: rss_mib(m.daemon_pid) <= start + BACK_MIB, 5)
    print(f"{how}: RSS start-up {start:.1f} MiB, after reading {read:.1f} MiB, "
          f"after the images left {rss_mib(m.daemon_pid):.1f} MiB")
    assert ok, (f"RSS {rss_mib(m.daemon_pid):.1f} MiB once the images left the store "
                f"(start-up {start:.1f} MiB, {read:.1f} MiB after reading)")
