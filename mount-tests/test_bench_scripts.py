"""The benchmarks' own fairness rules (scripts/bench_rootfs.py, scripts/bench_tags.py): the order
of the filesystems balances every place and every neighbour, two mounts of one superblock are
refused, and the start-up floor reads every link of any number of repositories. A benchmark that
broke these would still print ratios, only wrong ones (the fourth session of issue 13 found a
rotation that always put imagefs after squashfuse_ll's restart, and a kernel mount that was
imagefs's own tree)."""

import collections
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import bench_rootfs  # noqa: E402
import bench_tags  # noqa: E402


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_the_order_balances_places_and_neighbours(n):
    period = n if n % 2 == 0 else 2 * n
    rows = [bench_rootfs.balanced_order(n, r) for r in range(period)]
    assert all(sorted(r) == list(range(n)) for r in rows), rows
    places = collections.Counter((x, i) for r in rows for i, x in enumerate(r))
    neighbours = collections.Counter((r[i], r[i + 1]) for r in rows for i in range(n - 1))
    assert len(places) == n * n and len(set(places.values())) == 1, places
    assert len(neighbours) == n * (n - 1) and len(set(neighbours.values())) == 1, neighbours
    # and it repeats with its period
    assert bench_rootfs.balanced_order(n, period + 1) == rows[1]


class _Root:
    def __init__(self, root):
        self.root = Path(root)


def test_two_mounts_of_one_superblock_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    bench_rootfs.check_distinct({"x": _Root("/proc"), "y": _Root(tmp_path / "a")})
    with pytest.raises(RuntimeError, match="share a superblock"):
        bench_rootfs.check_distinct({"x": _Root(tmp_path / "a"), "y": _Root(tmp_path / "b")})


def test_the_start_up_floor_reads_every_link_of_150000_repositories(tmp_path):
    # Two real repositories among 150,000 names (3.4 MB): on a command line, E2BIG.
    for r in ("r0", "r1"):
        (tmp_path / r).mkdir()
        for t in range(3):
            os.symlink(f"../content/{r}{t}", tmp_path / r / f"t{t}")
    names = ["r0", "r1"] + [f"bench.local/repo{i:06d}" for i in range(150_000)]
    got = bench_tags.readlink_floor(tmp_path, names)
    assert got["links"] == 6, got
