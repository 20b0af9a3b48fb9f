"""A standard mixed store ("world") used by most operation tests, built in one of the two layouts.

The layout under test ("content" or "legacy") holds repositories r1 and r2; the other layout holds one
more repository so every store is mixed.

roles (all in the layout under test, in r1 unless said):
  d1     ready,      tags r1:t1, r1:t2
  d2     ready,      tag  r1:only
  d3     ready,      never tagged
  dp     pending,    tag  r1:pend
  dpull  pulling,    tag  r1:pull   (no rootfs.erofs yet, as during a pull)
  dconv  converting, tag  r1:conv
  df     failed,     tag  r1:broken
  dx     ready,      tag  r2:v1     (r2's own digest)
  dother ready,      in the OTHER layout, repo `orepo`, tag orepo:v1
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from helpers import Store, mount_target, scan_store


@dataclass
class World:
    store: Store
    layout: str
    r1: str
    r2: str
    orepo: str
    d: dict = field(default_factory=dict)
    never_tagged: set = field(default_factory=set)

    @property
    def root(self) -> Path:
        return self.store.root

    def ddir(self, role_or_hex, repo=None) -> Path:
        hx = self.d.get(role_or_hex, role_or_hex)
        if self.layout == "content":
            return self.root / "content" / hx
        return self.root / (repo or self.r1) / hx

    def stag(self, repo, tag) -> Path:
        """Where a pre-existing tag of the layout under test lives in the store."""
        if self.layout == "content":
            return self.root / "repositories" / repo / tag
        return self.root / repo / tag

    def repo_dir(self, repo) -> Path:
        if self.layout == "content":
            return self.root / "repositories" / repo
        return self.root / repo


def build_world(store: Store, layout: str, tag: str = "") -> World:
    other = "legacy" if layout == "content" else "content"
    if layout == "content":
        w = World(store, layout, "docker.io/library/alpine", "ghcr.io/acme/tools", "old.example.com/legacyapp")
    else:
        w = World(store, layout, "legacy.example.com/acme/app", "legacy.example.com/acme/other",
                  "docker.io/library/busybox")
    k = f"{layout}{tag}-"

    def add(role, status="ready", repo=None, lay=layout, **kw):
        hx = store.add_digest(k + role, layout=lay, repo=repo or w.r1, status=status, **kw)
        w.d[role] = hx
        return hx

    add("d1", extra={"manifest.json": b'{"schemaVersion": 2, "role": "d1"}\n'})
    add("d2")
    add("d3")
    add("dp", "pending")
    add("dpull", "pulling", with_image=False)
    add("dconv", "converting")
    add("df", "failed")
    add("dx", repo=w.r2)
    add("dother", repo=w.orepo, lay=other)
    w.never_tagged.add(w.d["d3"])
    store.tag(w.r1, "t1", w.d["d1"], layout)
    store.tag(w.r1, "t2", w.d["d1"], layout)
    store.tag(w.r1, "only", w.d["d2"], layout)
    store.tag(w.r1, "pend", w.d["dp"], layout)
    store.tag(w.r1, "pull", w.d["dpull"], layout)
    store.tag(w.r1, "conv", w.d["dconv"], layout)
    store.tag(w.r1, "broken", w.d["df"], layout)
    store.tag(w.r2, "v1", w.d["dx"], layout)
    store.tag(w.orepo, "v1", w.d["dother"], other)
    return w


def assert_tag(mnt: Path, w_or_root, repo: str, tag: str, hx: str):
    """A tag exists in the mount with the canonical target, resolves through the mount, and is in the store."""
    root = getattr(w_or_root, "root", w_or_root)
    p = Path(mnt) / "tags" / repo / tag
    got = os.readlink(p)
    assert got == mount_target(repo, hx), f"readlink {p}: {got!r} != canonical {mount_target(repo, hx)!r}"
    real = os.path.realpath(p)
    assert real == str(Path(mnt).resolve() / "digests" / hx), f"{p} resolves to {real}"
    assert os.path.isdir(p), f"{p} does not resolve to a directory"
    st = scan_store(root)
    assert st.tags.get((repo, tag)) == hx, (
        f"store: tag {repo}:{tag} is {st.tags.get((repo, tag))!r} "
        f"(target {st.tag_target.get((repo, tag))!r}), expected {hx}")
    return st
