"""The store used by the stress test and the crash loop: 20 tags over 3 repositories (two in the content
layout, one legacy), 5 digests (3 ready content, 1 ready legacy, 1 pending content), plus one
never-tagged ready digest nobody touches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import Store, check_invariants, mount_target, mount_view, scan_store

REPOS = ["docker.io/library/stress", "ghcr.io/acme/stress", "legacy.example.com/stress"]
LEGACY_REPO = REPOS[2]
TAGS = [(REPOS[i % 3], f"t{i}") for i in range(20)]
WORKLOAD = Path(__file__).resolve().parent / "workload.py"


class StressWorld:
    def __init__(self, store: Store, key="stress"):
        self.store = store
        s = store
        self.a = s.add_digest(key + "-a")
        self.b = s.add_digest(key + "-b")
        self.c = s.add_digest(key + "-c")
        self.p = s.add_digest(key + "-p", status="pending")
        self.d = s.add_digest(key + "-d", layout="legacy", repo=LEGACY_REPO)
        self.n = s.add_digest(key + "-never")
        self.keys = {self.a: key + "-a", self.b: key + "-b", self.c: key + "-c", self.d: key + "-d"}
        for (repo, tag), hx in zip(TAGS, [self.a, self.b, self.d, self.c, self.p, self.d, self.a]):
            s.tag(repo, tag, hx)
        self.pool = [self.a, self.b, self.c, self.d]
        self.never_tagged = {self.n}

    def spec(self) -> str:
        return json.dumps({"tags": TAGS, "digests": self.pool, "not_ready": [self.p]})

    def violations(self) -> list[str]:
        return check_invariants(self.store.root, ever_tagged=self.store.ever_tagged | set(self.pool) | {self.p},
                                never_tagged=self.never_tagged)

    def replenish(self):
        """Store not mounted: re-add collected pool digests, each with a free tag (content layout)."""
        st = scan_store(self.store.root)
        used = set(st.tags)
        free = [t for t in TAGS if t not in used]
        for hx in self.pool:
            if hx not in st.locations and free:
                self.store.add_digest(self.keys[hx])
                repo, tag = free.pop(0)
                self.store.tag(repo, tag, hx, layout="content")


def mount_consistency(mnt: Path, root: Path) -> list[str]:
    """The mount's view of tags/ and digests/ equals the store on disk, with canonical targets."""
    v = []
    st = scan_store(root)
    view = mount_view(mnt)
    disk = {k: hx for k, hx in st.tags.items()}
    if set(view) != set(disk):
        v.append(f"mount tags {sorted(set(view) ^ set(disk))} differ from store")
    for k, tgt in view.items():
        hx = disk.get(k)
        if hx and tgt != mount_target(k[0], hx):
            v.append(f"mount readlink {k} = {tgt!r}, store says {hx}")
        p = Path(mnt) / "tags" / k[0] / k[1]
        if not os.path.isdir(p):
            v.append(f"mount tag {k} does not resolve")
    dl = set(os.listdir(Path(mnt) / "digests"))
    if dl != st.digests():
        v.append(f"digests/ lists {sorted(dl ^ st.digests())} differently from the store")
    return v


def start_workers(mnt, spec, n, seconds, seed, outdir: Path, crash=False):
    procs = []
    for i in range(n):
        out = outdir / f"worker-{seed}-{i}.json"
        args = [sys.executable, str(WORKLOAD), str(mnt), spec, str(seconds), str(seed * 100 + i), str(out)]
        if crash:
            args.append("--crash")
        procs.append((subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
    return procs
