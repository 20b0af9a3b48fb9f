"""How hypeman writes and lists the image store, re-implemented in Python for the mount tests.

Written by us from ../shared/HYPEMAN.md and checked against hypeman's own code
(github.com/kernel/hypeman, lib/images/{storage.go, storage_refs.go, manager.go, tag_manager.go},
lib/paths/paths.go); nothing is copied. Two versions are in the field:

- `Legacy`  — main up to March 2026 (e.g. 440005e; PR #111 as 416706e): one directory per repository,
  `<repo>/<hex>/{metadata.json, rootfs.erofs}`, tags `<repo>/<tag> -> <hex>`.
- `Content` — the content-addressed version (297c977e5d6b030aed02ffcd7a87965eac1ecfeb, August 2026):
  `content/<hex>/{metadata.json, rootfs.erofs, manifest.json}`, tags
  `repositories/<repo>/<tag> -> ../(per level)content/<hex>`, `layers/<layerHex>/`, staging through
  `.install-*`, `.tag-stage-*`, `rootfs.erofs.tmp-<buildID>` and `metadata.json.tmp`; legacy trees still read.

What matters for imagefs, kept exactly:
- no lock: only an in-process mutex (`createMu`, here a threading.Lock per instance); never the
  store's flock;
- legacy `createTagSymlink` removes the old link, then creates the new one (non-atomic retag);
- content creates the tag of a first pull at once, pointing at the still-`pending` digest;
- `DeleteImage` = resolve the tag, unlink it, count the remaining tags the way that version counts
  (legacy: the repository's own directory; content: the repository's tags in both layouts, then a walk
  of every tag under `repositories/`), and `RemoveAll` the digest directory when none is left (content:
  unless the pull is in progress or the image is digest-only). Errors are only logged;
- listings are faithful re-implementations of each version's walk (legacy `listAllTags`: every
  symlink under the store is a tag; content `listAllMetadata`: a walk descending every directory,
  every symlink a tag, every `metadata.json` outside `content/` an image).

What is not modelled: registries, the OCI cache, `system/builds/`, the build queue, credentials, tag
generations and claims (a pull is run to completion by the caller's thread, in order). Where a step
of hypeman can be preempted between two system calls, a named `gap` is taken (`self.gaps`: step name
-> max seconds, a random sleep up to it): the race tests use them to model a descheduled goroutine,
which is what made the races in HYPEMAN.md hit 11-42 times in 200.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HEX_RE = re.compile(r"^[0-9a-f]{64}$")
PENDING = ("pending", "pulling", "converting")


class NotFound(Exception):
    """hypeman's ErrNotFound ("image not found")."""


def normalize_repo(name: str) -> str:
    """The repository hypeman stores a reference under (distribution/reference's ParseNormalizedNamed):
    `alpine` -> `docker.io/library/alpine`, `team/app` -> `docker.io/team/app`; a first component with
    a dot or a colon, or `localhost`, is a registry host and is kept."""
    parts = name.split("/")
    if len(parts) == 1:
        return "docker.io/library/" + name
    first = parts[0]
    if "." in first or ":" in first or first == "localhost":
        return name
    return "docker.io/" + name


def go_time(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"


@dataclass
class Image:
    """One entry of a hypeman listing: the metadata it read, and from where."""
    name: str
    digest: str
    status: str
    source: str  # the metadata.json path the listing read

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")


@dataclass
class Deleted:
    """What one DeleteImage did, with monotonic timestamps of its steps (for the race classifier)."""
    hex: str | None = None
    unlinked_at: float = 0.0
    counted_at: float = 0.0
    count: int = -1
    removeall_start: float = 0.0
    removeall_end: float = 0.0
    removed: list = field(default_factory=list)  # directories RemoveAll'd
    error: str | None = None


class _Base:
    version = "?"
    disk_name = "rootfs.erofs"

    def __init__(self, root, images, *, gaps: dict | None = None, seed=None):
        self.root = Path(root)
        self.images = images            # helpers.ImageCache: real erofs bytes
        self.create_mu = threading.Lock()
        self.gaps = dict(gaps or {})
        self.rng = random.Random(seed)
        self.log: list[str] = []        # what hypeman would print as warnings
        self.hooks: dict = {}           # step name -> callable run at that point (deterministic tests)

    # -- the preemption model
    def gap(self, step: str):
        """A point between two system calls where hypeman's goroutine can be descheduled: sleeps up to
        gaps[step] seconds, and runs hooks[step] (once) if a test placed an event exactly there."""
        hook = self.hooks.pop(step, None)
        if hook is not None:
            hook()
        mx = self.gaps.get(step) or self.gaps.get("*")
        if mx:
            time.sleep(self.rng.uniform(0, mx))

    # -- helpers shared by both versions (Go's os package, as hypeman calls it)
    @staticmethod
    def _mkdir_all(p: Path):
        os.makedirs(p, mode=0o755, exist_ok=True)

    @staticmethod
    def _remove_all(p: Path):
        """Go's os.RemoveAll: nil if the path is already gone."""
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if not os.path.isdir(p) or os.path.islink(p):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
            return
        shutil.rmtree(p, ignore_errors=True)

    def _write_json_atomic(self, path: Path, obj: dict):
        """writeMetadata / writeJSONAtomic: MkdirAll, `<path>.tmp`, rename."""
        self._mkdir_all(path.parent)
        tmp = Path(str(path) + ".tmp")
        data = json.dumps(obj, indent=2).encode()
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        self.gap("metadata-tmp")
        try:
            os.rename(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _write_image(self, dest: Path, key: str, chunk=16384):
        """mkfs.erofs writing its output file: the bytes arrive in pieces (a half-written file is
        visible at `dest` until the last one). Returns the size."""
        img, _ = self.images.get(key)
        data = Path(img).read_bytes()
        with open(dest, "wb") as f:
            for i in range(0, len(data), chunk):
                f.write(data[i:i + chunk])
                f.flush()
                self.gap("mkfs")
        os.chmod(dest, 0o644)
        return len(data)

    @staticmethod
    def _read_json(p: Path):
        try:
            return json.loads(Path(p).read_bytes())
        except FileNotFoundError:
            raise NotFound(str(p))

    def _metadata(self, name: str, hx: str, status: str, key: str, **extra) -> dict:
        m = {
            "name": name,
            "digest": "sha256:" + hx,
            "status": status,
            "request": {"name": name},
            "size_bytes": 0,
            "entrypoint": ["/bin/sh"],
            "cmd": ["-c", "echo " + key],
            "env": {"PATH": "/usr/bin:/bin", "KEY": key},
            "working_dir": "/",
            "created_at": go_time(),
        }
        m.update(extra)
        return m

    def count_tags_for_digest(self, repo, hx) -> int:
        """countTagsForDigest (both versions): the tags of `repo` that resolve to `hx`."""
        n = 0
        for tag in self.list_tags(repo):
            try:
                if self.resolve_tag(repo, tag) == hx:
                    n += 1
            except (NotFound, ValueError):
                continue
        return n


# =====================================================================================================
class Legacy(_Base):
    """hypeman up to March 2026: everything under the repository's own directory."""
    version = "legacy"

    def digest_dir(self, repo, hx) -> Path:
        return self.root / repo / hx

    def tag_path(self, repo, tag) -> Path:
        return self.root / repo / tag

    # -- storage.go
    def read_metadata(self, repo, hx) -> dict:
        d = self.digest_dir(repo, hx)
        meta = self._read_json(d / "metadata.json")
        if meta.get("status") == "ready" and not (d / self.disk_name).exists():
            raise NotFound(f"disk image missing: {d / self.disk_name}")
        return meta

    def write_metadata(self, repo, hx, meta):
        self._write_json_atomic(self.digest_dir(repo, hx) / "metadata.json", meta)

    def resolve_tag(self, repo, tag) -> str:
        try:
            target = os.readlink(self.tag_path(repo, tag))
        except FileNotFoundError:
            raise NotFound(f"{repo}:{tag}")
        if target.startswith("/") or "/" in target:
            raise ValueError(f"invalid symlink target: {target}")
        return target

    def create_tag_symlink(self, repo, tag, hx):
        """Remove the old link, then create the new one: for a moment the digest has one tag fewer."""
        link = self.tag_path(repo, tag)
        self._mkdir_all(link.parent)
        try:
            os.unlink(link)
        except OSError:
            pass
        self.gap("retag")
        os.symlink(hx, link)

    def list_tags(self, repo) -> list[str]:
        d = self.root / repo
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                if os.path.islink(d / n):
                    out.append(n)
            except OSError:
                pass
        return out

    # -- manager.go
    def pull(self, repo, tag, hx, key, *, stop_after: str | None = None) -> str:
        """CreateImage + buildImage + finalizeImage for `repo:tag` resolved to manifest digest `hx`,
        with the image bytes of ImageCache key `key`. stop_after: 'pending', 'pulling', 'converting'
        leaves the pull there (as if hypeman stopped). Returns the final status."""
        name = f"{repo}:{tag}" if tag else f"{repo}@sha256:{hx}"
        with self.create_mu:
            try:
                meta = self.read_metadata(repo, hx)
            except NotFound:
                meta = None
            if meta is not None:
                if meta["status"] == "failed":
                    self._remove_all(self.digest_dir(repo, hx))
                else:
                    if meta["status"] == "ready" and tag:
                        self.create_tag_symlink(repo, tag, hx)   # last pull wins: re-create the tag
                    return meta["status"]
            build_id = str(uuid.uuid4())
            self.write_metadata(repo, hx, self._metadata(name, hx, "pending", key, build_id=build_id))
        if stop_after == "pending":
            return "pending"
        self._update_status(repo, hx, "pulling")
        self.gap("pull")
        if stop_after == "pulling":
            return "pulling"
        self._update_status(repo, hx, "converting")
        size = self._write_image(self.digest_dir(repo, hx) / self.disk_name, key)  # mkfs onto the final path
        if stop_after == "converting":
            return "converting"
        with self.create_mu:
            meta = self.read_metadata(repo, hx)
            meta.update(status="ready", size_bytes=size)
            self.write_metadata(repo, hx, meta)
            if tag:
                try:
                    self.create_tag_symlink(repo, tag, hx)
                except OSError as e:
                    self.log.append(f"Warning: failed to create tag symlink: {e}")
        return "ready"

    def _update_status(self, repo, hx, status):
        with self.create_mu:
            try:
                meta = self._read_json(self.digest_dir(repo, hx) / "metadata.json")
            except NotFound:
                return
            meta["status"] = status
            self.write_metadata(repo, hx, meta)

    def retag(self, repo, tag, hx):
        """A re-pull of a ready digest (or TagImage within the repository): createTagSymlink."""
        with self.create_mu:
            self.create_tag_symlink(repo, tag, hx)

    def get_image(self, repo, tag) -> dict:
        hx = self.resolve_tag(repo, tag)
        return self.read_metadata(repo, hx)

    def delete_image(self, repo, tag) -> Deleted:
        r = Deleted()
        with self.create_mu:
            hx = self.resolve_tag(repo, tag)          # NotFound propagates, as hypeman's does
            r.hex = hx
            link = self.tag_path(repo, tag)
            os.lstat(link)
            os.unlink(link)
            r.unlinked_at = time.monotonic()
            self.gap("unlink")
            r.count = self.count_tags_for_digest(repo, hx)
            r.counted_at = time.monotonic()
            if r.count == 0:
                self.gap("count")
                r.removeall_start = time.monotonic()
                d = self.digest_dir(repo, hx)
                self._remove_all(d)
                r.removeall_end = time.monotonic()
                r.removed.append(str(d))
        return r

    def list_images(self) -> list[Image]:
        """listAllTags: filepath.Walk over the store; every symlink is a tag; its target joined to the
        link's directory names the digest directory whose metadata is listed."""
        out = []
        for path, is_link, _is_dir in _go_walk(self.root):
            if not is_link:
                continue
            try:
                target = os.readlink(path)
            except OSError:
                continue
            rel_dir = os.path.relpath(os.path.dirname(path), self.root)
            d = os.path.normpath(os.path.join(self.root, rel_dir, target))
            try:
                meta = self._read_json(Path(d) / "metadata.json")
                if meta.get("status") == "ready" and not os.path.exists(os.path.join(d, self.disk_name)):
                    continue
            except (NotFound, OSError, ValueError):
                continue
            out.append(Image(meta.get("name", ""), meta.get("digest", ""), meta.get("status", ""),
                             os.path.join(d, "metadata.json")))
        return out


# =====================================================================================================
class Content(_Base):
    """hypeman of August 2026 (297c977): shared content/<hex>, tags under repositories/, layers/."""
    version = "content"

    # -- paths.go
    def content_dir(self, hx) -> Path:
        return self.root / "content" / hx

    def legacy_dir(self, repo, hx) -> Path:
        return self.root / repo / hx

    def repo_tag_path(self, repo, tag) -> Path:
        return self.root / "repositories" / repo / tag

    def legacy_tag_path(self, repo, tag) -> Path:
        return self.root / repo / tag

    # -- storage.go
    def _layout(self, repo, hx):
        """resolveImageLayout -> (dir, metadata, disk, is_content)."""
        leg = self.legacy_dir(repo, hx)
        con = self.content_dir(hx)
        legacy = (leg, leg / "metadata.json", leg / self.disk_name, False)
        content = (con, con / "metadata.json", con / self.disk_name, True)
        if (leg / "metadata.json").exists() and (leg / self.disk_name).exists():
            try:
                st = json.loads((con / "metadata.json").read_bytes()).get("status")
            except (OSError, ValueError):
                st = None
            if st != "ready":
                return legacy
        if (con / "metadata.json").exists() or (con / self.disk_name).exists():
            return content
        if (leg / "metadata.json").exists():
            return legacy
        return content

    def _read_at(self, layout) -> dict:
        _, md, disk, _ = layout
        try:
            meta = json.loads(Path(md).read_bytes())
        except FileNotFoundError:
            raise NotFound(str(md))
        if meta.get("status") == "ready" and not Path(disk).exists():
            raise NotFound(f"disk image missing: {disk}")
        return meta

    def read_metadata(self, repo, hx) -> dict:
        return self._read_at(self._layout(repo, hx))

    def write_metadata(self, repo, hx, meta):
        self._write_json_atomic(self._layout(repo, hx)[1], meta)

    def tag_symlink_path(self, repo, tag) -> Path:
        p = self.repo_tag_path(repo, tag)
        if os.path.lexists(p):
            return p
        return self.legacy_tag_path(repo, tag)

    def resolve_tag(self, repo, tag) -> str:
        link = self.tag_symlink_path(repo, tag)
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            raise NotFound(f"{repo}:{tag}")
        if target.startswith("/"):
            raise ValueError(f"invalid symlink target: {target}")
        hx = os.path.basename(target)
        if hx in (".", "/", ""):
            raise ValueError(f"invalid symlink target: {target}")
        if target != hx:
            resolved = os.path.normpath(os.path.join(os.path.dirname(link), target))
            if resolved != os.path.normpath(self.content_dir(hx)):
                raise ValueError(f"invalid symlink target: {target}")
        return hx

    def _install_atomically(self, path: Path, install):
        """installAtomically: a `.install-*` directory beside `path`, install into it, rename, RemoveAll."""
        self._mkdir_all(path.parent)
        tmpdir = Path(_mkdtemp(path.parent, ".install-"))
        try:
            tmp = tmpdir / path.name
            install(tmp)
            self.gap("install")
            os.rename(tmp, path)
        finally:
            self._remove_all(tmpdir)

    def create_tag_symlink(self, repo, tag, hx):
        """installTagSymlink: stage `<tag>` in a `.tag-stage-*` directory of the repository, rename it
        over the tag, remove the other layout's stale link, RemoveAll the stage."""
        con = self._layout(repo, hx)[3]
        if con:
            link = self.repo_tag_path(repo, tag)
            target = os.path.relpath(self.content_dir(hx), link.parent)
            stale = self.legacy_tag_path(repo, tag)
        else:
            link = self.legacy_tag_path(repo, tag)
            target = hx
            stale = self.repo_tag_path(repo, tag)
        self._mkdir_all(link.parent)
        stage = Path(_mkdtemp(link.parent, ".tag-stage-"))
        try:
            os.symlink(target, stage / link.name)
            self.gap("tag-stage")
            os.rename(stage / link.name, link)
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        finally:
            self._remove_all(stage)

    # -- storage_refs.go
    def list_tags(self, repo) -> list[str]:
        seen, out = set(), []
        for d in (self.root / "repositories" / repo, self.root / repo):
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            for n in names:
                if os.path.islink(d / n) and n not in seen:
                    seen.add(n)
                    out.append(n)
        return out

    def content_tag_count(self, hx) -> int:
        """Walk every tag under repositories/ (filepath.Walk: no symlink followed)."""
        root = self.root / "repositories"
        n = 0
        for path, is_link, _ in _go_walk(root):
            if not is_link:
                continue
            parts = os.path.relpath(path, root).split("/")
            if len(parts) < 2:
                continue
            try:
                if self.resolve_tag("/".join(parts[:-1]), parts[-1]) == hx:
                    n += 1
            except (NotFound, ValueError):
                pass
        return n

    def _pull_in_progress(self, hx) -> bool:
        try:
            return json.loads((self.content_dir(hx) / "metadata.json").read_bytes()).get("status") in PENDING
        except (OSError, ValueError):
            return False

    def _content_layout(self, hx):
        d = self.content_dir(hx)
        return (d, d / "metadata.json", d / self.disk_name, True)

    def _digest_only(self, hx) -> bool:
        """contentIsDigestOnly: the content metadata's name is a digest reference."""
        try:
            meta = self._read_at(self._content_layout(hx))
        except (NotFound, OSError, ValueError):
            return False
        return "@sha256:" in meta.get("name", "")

    def remove_digest_if_unreferenced(self, repo, hx, preserve_digest_only: bool, r: Deleted | None = None):
        r = r or Deleted(hex=hx)
        con = self.content_dir(hx)
        exists = con.exists()
        leg = self.legacy_dir(repo, hx)
        if leg.exists():
            self._remove_all(leg)
            r.removed.append(str(leg))
        if not exists:
            return r
        n = self.content_tag_count(hx)
        r.counted_at = time.monotonic()
        r.count = n
        self.gap("count")
        if n > 0 or self._pull_in_progress(hx) or (preserve_digest_only and self._digest_only(hx)):
            return r
        r.removeall_start = time.monotonic()
        self._remove_all(con)
        r.removeall_end = time.monotonic()
        r.removed.append(str(con))
        return r

    # -- manager.go
    def pull(self, repo, tag, hx, key, *, stop_after: str | None = None, layers: int = 2) -> str:
        """CreateImage (tag at once, pointing at the pending digest) + buildImage (layers/, the disk
        built as rootfs.erofs.tmp-<buildID>) + finalizeImage (.install-* rename, manifest.json, ready).
        tag None: a digest-only pull (name repo@sha256:hex, no tag). Returns the final status."""
        name = f"{repo}:{tag}" if tag else f"{repo}@sha256:{hx}"
        with self.create_mu:
            try:
                meta = self.read_metadata(repo, hx)
            except NotFound:
                meta = None
            if meta is not None and meta.get("status") == "failed":
                self.remove_digest_if_unreferenced(repo, hx, False)
                meta = None
            if meta is not None:
                if tag:
                    self.create_tag_symlink(repo, tag, hx)   # re-pull re-creates its tag
                return meta["status"]
            previous = None
            if tag:
                try:
                    previous = self.resolve_tag(repo, tag)
                except (NotFound, ValueError):
                    previous = None
            build_id = str(uuid.uuid4())
            self.write_metadata(repo, hx, self._metadata(
                name, hx, "pending", key, platform="linux/amd64", build_id=build_id,
                requested_tag=tag or "", previous_tag_digest=previous or ""))
            if tag and not previous:
                self.create_tag_symlink(repo, tag, hx)      # tag before ready
        if stop_after == "pending":
            return "pending"
        self._update_status(repo, hx, "pulling")
        for i in range(layers):                              # the layer store beside the images
            lhex = _hexof(f"layer-{key}-{i}")
            ld = self.root / "layers" / lhex
            self._mkdir_all(ld)
            (ld / "layer.tar").write_bytes(b"layer " + key.encode() * 32)
            (ld / "artifact.tar.json").write_text(json.dumps({"digest": "sha256:" + lhex}))
            self.gap("pull")
        if stop_after == "pulling":
            return "pulling"
        self._update_status(repo, hx, "converting")
        disk = self._layout(repo, hx)[2]
        tmp = Path(f"{disk}.tmp-{build_id}")
        size = self._write_image(tmp, key)
        if stop_after == "converting":
            return "converting"
        with self.create_mu:
            layout = self._layout(repo, hx)
            meta = self._read_at(layout)
            self._install_atomically(Path(layout[2]), lambda p: os.rename(tmp, p))
            man = Path(layout[0]) / "manifest.json"
            self._install_atomically(man, lambda p: Path(p).write_text(json.dumps(
                {"schemaVersion": 2, "digest": "sha256:" + hx, "platform": "linux/amd64"})))
            meta.update(status="ready", size_bytes=size)
            self._write_json_atomic(Path(layout[1]), meta)
            if tag:
                try:
                    if self.resolve_tag(repo, tag) != hx:
                        self.create_tag_symlink(repo, tag, hx)
                except (NotFound, ValueError):
                    self.create_tag_symlink(repo, tag, hx)
        return "ready"

    def _update_status(self, repo, hx, status):
        with self.create_mu:
            layout = self._layout(repo, hx)
            try:
                meta = json.loads(Path(layout[1]).read_bytes())
            except (OSError, ValueError):
                return
            meta["status"] = status
            self._write_json_atomic(Path(layout[1]), meta)

    def retag(self, repo, tag, hx):
        with self.create_mu:
            self.create_tag_symlink(repo, tag, hx)

    def get_image(self, repo, tag) -> dict:
        return self.read_metadata(repo, self.resolve_tag(repo, tag))

    def delete_image(self, repo, tag) -> Deleted:
        """deleteTaggedImage: resolve, deleteTag (both layouts), countTagsForDigest in the repository,
        then removeDigestIfUnreferenced (RemoveAll of the legacy dir; walk of repositories/; RemoveAll of
        content/<hex> unless pending or digest-only)."""
        r = Deleted()
        with self.create_mu:
            hx = self.resolve_tag(repo, tag)
            r.hex = hx
            found = False
            for link in (self.repo_tag_path(repo, tag), self.legacy_tag_path(repo, tag)):
                if os.path.lexists(link):
                    found = True
                    os.unlink(link)
            if not found:
                raise NotFound(f"{repo}:{tag}")
            r.unlinked_at = time.monotonic()
            self.gap("unlink")
            n = self.count_tags_for_digest(repo, hx)
            r.count = n
            r.counted_at = time.monotonic()
            if n > 0:
                return r
            try:
                self.remove_digest_if_unreferenced(repo, hx, True, r)
            except OSError as e:
                r.error = str(e)
                self.log.append(f"failed to delete orphaned digest {hx}: {e}")
        return r

    def list_images(self) -> list[Image]:
        """listAllMetadata (storage_refs.go): walk the whole store; under content/ only note which
        digests have metadata; every other symlink is a tag (digest = basename of its target); every
        other metadata.json is an image of the repository two levels up; then the untagged ones."""
        seen: set = set()
        content_digests: list = []
        tagged_digests: set = set()
        tagged_content: set = set()
        refs: list = []
        seen_refs: set = set()
        out: list[Image] = []
        for path, is_link, is_dir in _go_walk(self.root):
            rel = os.path.relpath(path, self.root)
            parts = rel.split("/")
            if parts[0] == "content":
                if not is_dir and not is_link and os.path.basename(path) == "metadata.json":
                    h = os.path.basename(os.path.dirname(path))
                    if h not in content_digests:
                        content_digests.append(h)
                continue
            if is_link:
                try:
                    hx = os.path.basename(os.readlink(path))
                except OSError:
                    continue
                if len(parts) > 1 and parts[0] == "repositories":
                    repo, tag = "/".join(parts[1:-1]), parts[-1]
                else:
                    repo, tag = os.path.dirname(rel), os.path.basename(path)
                key = f"{repo}:{tag}"
                if key in seen:
                    continue
                layout = self._layout(repo, hx)
                try:
                    meta = self._read_at(layout)
                except (NotFound, OSError, ValueError):
                    continue
                seen.add(key)
                tagged_digests.add(f"{repo}@{hx}")
                tagged_content.add(hx)
                out.append(Image(key, meta.get("digest", ""), meta.get("status", ""), str(layout[1])))
                continue
            if not is_dir and os.path.basename(path) == "metadata.json":
                h = os.path.basename(os.path.dirname(path))
                repo = os.path.relpath(os.path.dirname(os.path.dirname(path)), self.root)
                k = f"{repo}@{h}"
                if k not in seen_refs:
                    seen_refs.add(k)
                    refs.append((repo, h))
        seen_digests = set()
        for repo, h in refs:
            if f"{repo}@{h}" in tagged_digests:
                continue
            k = f"{repo}@{h}"
            if k not in seen:
                layout = self._layout(repo, h)
                try:
                    meta = self._read_at(layout)
                    seen.add(k)
                    out.append(Image(meta.get("name", ""), meta.get("digest", ""), meta.get("status", ""),
                                     str(layout[1])))
                except (NotFound, OSError, ValueError):
                    pass
            seen_digests.add(h)
        for h in content_digests:
            if h in tagged_content or h in seen_digests:
                continue
            k = "@" + h
            if k in seen:
                continue
            try:
                meta = self._read_at(self._content_layout(h))
            except (NotFound, OSError, ValueError):
                continue
            seen.add(k)
            out.append(Image(meta.get("name", ""), meta.get("digest", ""), meta.get("status", ""),
                             str(self.content_dir(h) / "metadata.json")))
        return out


# =====================================================================================================
def _go_walk(root):
    """filepath.Walk: lexical order, Lstat, descends into directories only (never a symlink); entries
    that vanish mid-walk are skipped. Yields (path, is_symlink, is_dir)."""
    root = str(root)
    try:
        st = os.lstat(root)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        return

    def rec(p):
        try:
            names = sorted(os.listdir(p))
        except OSError:
            return
        for n in names:
            q = os.path.join(p, n)
            try:
                s = os.lstat(q)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(s.st_mode)
            yield q, stat.S_ISLNK(s.st_mode), is_dir
            if is_dir:
                yield from rec(q)

    yield root, False, True
    yield from rec(root)


def _mkdtemp(parent: Path, prefix: str) -> str:
    """os.MkdirTemp(parent, prefix+"*")."""
    while True:
        p = os.path.join(parent, prefix + str(random.randrange(10**9, 10**10)))
        try:
            os.mkdir(p, 0o700)
            return p
        except FileExistsError:
            continue


def _hexof(s: str) -> str:
    import hashlib
    return hashlib.sha256(s.encode()).hexdigest()


def manifest_hex(seed: str) -> str:
    """A manifest digest for a test image: hypeman names digest directories by the OCI manifest's
    sha256, which is never the sha256 of rootfs.erofs."""
    return _hexof("manifest:" + seed)


def phantoms(images: list[Image], root) -> list[Image]:
    """Entries of a hypeman listing that are no image of the store: read from a path under a hidden
    directory (imagefs's bookkeeping: `.imagefs/`, trash, intents), or from a directory that is not a
    digest directory of either layout (content/<hex>/ or <repo>/<hex>/ with <repo> a visible path)."""
    root = os.path.realpath(str(root))
    bad = []
    for im in images:
        src = os.path.realpath(im.source) if os.path.exists(im.source) else os.path.normpath(im.source)
        rel = os.path.relpath(src, root)
        parts = rel.split("/")
        ok = (
            len(parts) >= 3 and parts[-1] == "metadata.json" and HEX_RE.match(parts[-2])
            and not any(p.startswith(".") for p in parts)
            and (parts[0] != "content" or len(parts) == 3)
            and parts[0] not in ("repositories", "layers")
            and parts[-2] == im.hex
        )
        # A tag the walk took from a symlink in a hidden directory (an intent, say) names itself so.
        repo = re.split(r"[:@]", im.name, maxsplit=1)[0] if im.name else ""
        if any(p.startswith(".") for p in repo.split("/")):
            ok = False
        if not ok:
            bad.append(im)
    return bad
