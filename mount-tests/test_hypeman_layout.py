"""hypeman writing the store while it is mounted, the way HYPEMAN.md says it does (plain file
operations, no lock): issue 9, findings 4 and 9.

- The watcher misses nothing: whatever the order of a batch's events (a repository made and
  filled at once with a tag sorting before its digest, a tag made before its digest
  directory, staging directories renamed into place, a digest pending then ready, a digest
  removed and pulled again), the mount shows the store within a second or two, no remount.
- Only digests are digests: `layers/<hex>/`, `.install-*`, `.tag-stage-*`, `.unpack-*`,
  `metadata.json.tmp` and `rootfs.erofs.tmp-<build>` are never shown as digests, tags or
  digest files, and `imagefs fsck` exits 0 on a healthy store of either hypeman version
  (legacy directories are named by the manifest digest and have no manifest.json).
"""
import errno
import hashlib
import json
import os
import shutil
import tempfile
import functools
import time
from pathlib import Path

import helpers
from helpers import imagefs_bin, sh

WITHIN = 1.5


# Not there yet, or read while being replaced.
eventually = functools.partial(helpers.eventually, timeout=WITHIN, ignore=(OSError, ValueError, KeyError))


def manifest_hex(key: str) -> str:
    """hypeman names a pull by its OCI manifest digest, not by the sha256 of its image."""
    return hashlib.sha256(f"manifest of {key}".encode()).hexdigest()


class Hypeman:
    """A writer that behaves as HYPEMAN.md describes (no lock, staging names), per version."""

    def __init__(self, root: Path, images):
        self.root = Path(root)
        self.images = images

    # -- pieces both versions share
    def write_metadata(self, d: Path, repo: str, hx: str, status: str, size: int = 0):
        """writeMetadataFile: metadata.json.tmp, then a rename."""
        meta = {"name": f"{repo}:latest", "digest": f"sha256:{hx}", "status": status,
                "size_bytes": size, "created_at": "2026-08-01T00:00:00Z"}
        tmp = d / "metadata.json.tmp"
        tmp.write_bytes(json.dumps(meta, indent=2).encode())
        os.rename(tmp, d / "metadata.json")

    # -- legacy (up to March 2026)
    def legacy_pull(self, repo: str, tags: list[str], key: str) -> str:
        """A whole legacy pull: <repo>/<hex>/, pending -> ready with mkfs straight onto the final
        path, then the tags (legacy tags after ready), each link removed then made."""
        img, _ = self.images.get(key)
        hx = manifest_hex(key)
        d = self.root / repo / hx
        os.makedirs(d, exist_ok=True)
        self.write_metadata(d, repo, hx, "pending")
        self.write_metadata(d, repo, hx, "pulling")
        self.write_metadata(d, repo, hx, "converting")
        shutil.copyfile(img, d / "rootfs.erofs")
        self.write_metadata(d, repo, hx, "ready", os.path.getsize(img))
        for t in tags:
            link = self.root / repo / t
            try:
                os.remove(link)
            except FileNotFoundError:
                pass
            os.symlink(hx, link)
        return hx

    # -- content-addressed (August 2026)
    def stage_tag(self, repo: str, tag: str, hx: str):
        """createTagSymlink: a .tag-stage-* directory beside the link, renamed into place."""
        parent = self.root / "repositories" / repo
        os.makedirs(parent, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".tag-stage-", dir=parent))
        target = os.path.relpath(self.root / "content" / hx, parent)
        os.symlink(target, stage / tag)
        os.rename(stage / tag, parent / tag)
        shutil.rmtree(stage)

    def content_begin(self, repo: str, tag: str, key: str) -> str:
        """A first pull: content/<hex> pending, tagged at once (tag before ready)."""
        hx = manifest_hex(key)
        d = self.root / "content" / hx
        os.makedirs(d, exist_ok=True)
        self.write_metadata(d, repo, hx, "pending")
        self.stage_tag(repo, tag, hx)
        return hx

    def content_layers(self, key: str) -> str:
        """The layer store: layers/<layerHex>/{layer.erofs, artifact.erofs.json}, unpacked in a
        .unpack-* directory renamed into place."""
        img, _ = self.images.get(key)
        lh = hashlib.sha256(f"layer of {key}".encode()).hexdigest()
        layers = self.root / "layers"
        os.makedirs(layers, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".unpack-", dir=layers))
        shutil.copyfile(img, stage / "layer.erofs")
        (stage / "artifact.erofs.json").write_text(json.dumps({"digest": f"sha256:{lh}"}))
        os.rename(stage, layers / lh)
        return lh

    def content_convert(self, repo: str, hx: str, key: str, build="b1") -> Path:
        """converting: the image is built beside its final name."""
        img, _ = self.images.get(key)
        d = self.root / "content" / hx
        self.write_metadata(d, repo, hx, "pulling")
        self.write_metadata(d, repo, hx, "converting")
        tmp = d / f"rootfs.erofs.tmp-{build}"
        shutil.copyfile(img, tmp)
        return tmp

    def content_finish(self, repo: str, hx: str, key: str, build="b1"):
        img, _ = self.images.get(key)
        d = self.root / "content" / hx
        os.rename(d / f"rootfs.erofs.tmp-{build}", d / "rootfs.erofs")
        (d / "manifest.json").write_text(json.dumps({"layers": [], "config": key}))
        self.write_metadata(d, repo, hx, "ready", os.path.getsize(img))

    def content_pull(self, repo: str, tag: str, key: str) -> str:
        self.content_layers(key)
        hx = self.content_begin(repo, tag, key)
        self.content_convert(repo, hx, key)
        self.content_finish(repo, hx, key)
        return hx


def shows(mnt: Path, repo: str, tag: str, hx: str) -> bool:
    link = mnt / "tags" / repo / tag
    return os.readlink(link).endswith(f"digests/{hx}") and (link / "metadata.json").is_file()


def digest_files(mnt: Path, hx: str) -> list[str]:
    return sorted(os.listdir(mnt / "digests" / hx))


def fsck(root: Path):
    return sh(imagefs_bin(), "fsck", "--store", root)


def test_first_legacy_pulls_into_new_repositories_show(store, mounter, images):
    """Finding 4: 8 first pulls into new legacy repositories, each made and filled at once
    with a tag that sorts before its digest directory, all show without a remount."""
    mnt = mounter(store).mnt
    hm = Hypeman(store.root, images)
    pulled = []
    for i in range(8):
        repo = f"registry{i}.example.com/team/app"
        hx = hm.legacy_pull(repo, ["0", "1.0", "latest"], f"legacy-first-{i}")
        pulled.append((repo, hx))
    for repo, hx in pulled:
        for tag in ("0", "1.0", "latest"):
            assert eventually(lambda: shows(mnt, repo, tag, hx)), \
                f"{repo}:{tag} never appeared; tags/{repo}: {os.listdir(mnt / 'tags' / repo)}"
    # And a second pull into a known repository, a retag (remove, then make) included.
    repo, old = pulled[0]
    hx = hm.legacy_pull(repo, ["0", "2.0"], "legacy-second")
    assert eventually(lambda: shows(mnt, repo, "0", hx) and shows(mnt, repo, "2.0", hx))
    assert shows(mnt, repo, "latest", old)
    assert (mnt / "tags" / repo / "latest" / "rootfs" / "etc" / "os-release").is_file()


def test_content_pull_tagged_before_ready_converges(store, mounter, images):
    """Finding 4 and 9 for the content version: the tag shows at once, naming the pending
    digest; the staged image and metadata are never digest files; once ready, rootfs/,
    rootfs.erofs and the new metadata.json show; layers/ and staging never show."""
    mnt = mounter(store).mnt
    hm = Hypeman(store.root, images)
    repo = "docker.io/library/nginx"
    hm.content_layers("content-1")
    hx = hm.content_begin(repo, "1.27", "content-1")
    assert eventually(lambda: shows(mnt, repo, "1.27", hx)), os.listdir(mnt / "tags")
    assert digest_files(mnt, hx) == ["metadata.json"]
    assert json.loads((mnt / "digests" / hx / "metadata.json").read_text())["status"] == "pending"
    tmp = hm.content_convert(repo, hx, "content-1")
    assert tmp.exists()
    # The half-built image is not the digest's: not listed, not served.
    time.sleep(0.2)
    assert digest_files(mnt, hx) == ["metadata.json"]
    for name in (tmp.name, "metadata.json.tmp", "rootfs.erofs", "rootfs"):
        try:
            os.lstat(mnt / "digests" / hx / name)
            raise AssertionError(f"digests/{hx}/{name} is served while converting")
        except FileNotFoundError:
            pass
    assert eventually(
        lambda: json.loads((mnt / "digests" / hx / "metadata.json").read_text())["status"]
        == "converting"), "metadata.json of a pull in progress is served stale"
    hm.content_finish(repo, hx, "content-1")
    assert eventually(lambda: digest_files(mnt, hx)
                      == ["manifest.json", "metadata.json", "rootfs", "rootfs.erofs"],
                      timeout=2.5), digest_files(mnt, hx)
    assert eventually(
        lambda: json.loads((mnt / "digests" / hx / "metadata.json").read_text())["status"]
        == "ready"), "metadata.json still shows the pull in progress"
    assert (mnt / "tags" / repo / "1.27" / "rootfs" / "etc" / "os-release").is_file()
    _, sha = images.get("content-1")
    assert hashlib.sha256((mnt / "digests" / hx / "rootfs.erofs").read_bytes()).hexdigest() == sha
    # Nothing of the layer store or the staging shows.
    assert os.listdir(mnt / "digests") == [hx]
    assert os.listdir(mnt / "tags" / repo) == ["1.27"]
    assert "layers" not in os.listdir(mnt / "tags")


def test_staging_directories_renamed_into_place(store, mounter, images):
    """A digest directory built under .install-* and renamed into content/, and a repository
    built elsewhere and renamed into the store at once, both show; the staging never does."""
    mnt = mounter(store).mnt
    hm = Hypeman(store.root, images)
    img, _ = images.get("staged")
    hx = manifest_hex("staged")
    os.makedirs(store.root / "content", exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".install-", dir=store.root / "content"))
    (stage / "d").mkdir()
    shutil.copyfile(img, stage / "d" / "rootfs.erofs")
    hm.write_metadata(stage / "d", "quay.io/a/b", hx, "ready", os.path.getsize(img))
    # The tag first, then the directory: one batch, in the "wrong" order.
    hm.stage_tag("quay.io/a/b", "0.9", hx)
    os.rename(stage / "d", store.root / "content" / hx)
    assert eventually(lambda: shows(mnt, "quay.io/a/b", "0.9", hx))
    assert not any(n.startswith(".") for n in os.listdir(mnt / "digests"))
    # A legacy repository tree made aside, then renamed into the store in one step.
    img2, _ = images.get("staged-legacy")
    hx2 = manifest_hex("staged-legacy")
    aside = Path(tempfile.mkdtemp(prefix=".install-", dir=store.root))
    repo_dir = aside / "app"
    (repo_dir / hx2).mkdir(parents=True)
    shutil.copyfile(img2, repo_dir / hx2 / "rootfs.erofs")
    hm.write_metadata(repo_dir / hx2, "ghcr.io/org/app", hx2, "ready", os.path.getsize(img2))
    os.symlink(hx2, repo_dir / "0.1")
    os.makedirs(store.root / "ghcr.io" / "org")
    os.rename(repo_dir, store.root / "ghcr.io" / "org" / "app")
    assert eventually(lambda: shows(mnt, "ghcr.io/org/app", "0.1", hx2))
    assert sorted(os.listdir(mnt / "tags")) == ["ghcr.io", "quay.io"]
    shutil.rmtree(aside)
    shutil.rmtree(stage)


def test_a_failed_pull_removed_and_pulled_again_shows_its_tag(store, mounter, images):
    """hypeman RemoveAll's a failed digest; its tag link stays; the next pull makes the
    directory again and the tag shows again; and a directory that comes back without its tag
    being rewritten brings the tag back too."""
    mnt = mounter(store).mnt
    hm = Hypeman(store.root, images)
    repo = "docker.io/library/redis"
    hx = hm.content_begin(repo, "7", "repull")
    assert eventually(lambda: shows(mnt, repo, "7", hx))
    d = store.root / "content" / hx
    hm.write_metadata(d, repo, hx, "failed")
    shutil.rmtree(d)
    assert eventually(lambda: not os.path.lexists(mnt / "tags" / repo / "7"))
    assert os.path.islink(store.root / "repositories" / repo / "7")
    hx2 = hm.content_begin(repo, "7", "repull")
    assert hx2 == hx
    hm.content_convert(repo, hx, "repull")
    hm.content_finish(repo, hx, "repull")
    assert eventually(lambda: shows(mnt, repo, "7", hx))
    assert eventually(lambda: "rootfs" in digest_files(mnt, hx), timeout=2.5)
    # The directory leaves and comes back (moved aside and back) while nobody rewrites the
    # tag: the tag follows it, out and in.
    aside = Path(tempfile.mkdtemp(prefix=".install-", dir=store.root / "content"))
    os.rename(d, aside / hx)
    assert eventually(lambda: not os.path.lexists(mnt / "tags" / repo / "7"))
    os.rename(aside / hx, d)
    assert eventually(lambda: shows(mnt, repo, "7", hx)), "the tag never came back"
    aside.rmdir()


def test_layers_and_staging_are_never_digests_and_fsck_is_clean(store, mounter, images):
    """Finding 9: a store written by both versions, with leftovers of an interrupted content
    hypeman, mounted: digests/ lists the digests only; `imagefs fsck` exits 0 on it, mounted
    and not (legacy directories are named by the manifest digest, without manifest.json)."""
    hm = Hypeman(store.root, images)
    legacy = hm.legacy_pull("docker.io/library/alpine", ["3.19", "latest"], "fsck-legacy")
    content = hm.content_pull("docker.io/library/nginx", "latest", "fsck-content")
    # A pull in progress, tagged, converting; leftovers of an interrupted hypeman.
    pending = hm.content_begin("docker.io/library/nginx", "next", "fsck-pending")
    hm.content_convert("docker.io/library/nginx", pending, "fsck-pending", build="b7")
    (store.root / "content" / pending / "metadata.json.tmp").write_text("{")
    os.makedirs(store.root / "content" / ".install-left" / "x")
    os.makedirs(store.root / "repositories" / "docker.io" / "library" / "nginx" / ".tag-stage-left")
    os.makedirs(store.root / "docker.io" / "library" / "alpine" / ".tag-stage-left")
    os.makedirs(store.root / "layers" / ".unpack-left")
    r = fsck(store.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "problem:" not in r.stdout, r.stdout
    m = mounter(store)
    mnt = m.mnt
    assert sorted(os.listdir(mnt / "digests")) == sorted([legacy, content, pending])
    assert digest_files(mnt, pending) == ["metadata.json"]
    assert shows(mnt, "docker.io/library/alpine", "3.19", legacy)
    assert shows(mnt, "docker.io/library/nginx", "next", pending)
    assert sorted(os.listdir(mnt / "tags" / "docker.io" / "library" / "nginx")) == ["latest", "next"]
    assert sorted(os.listdir(mnt / "tags" / "docker.io" / "library" / "alpine")) == ["3.19", "latest"]
    # More layers and staging while mounted: still nothing new in digests/ or tags/.
    hm.content_layers("fsck-more")
    os.makedirs(store.root / "content" / ".install-live")
    hm.stage_tag("docker.io/library/nginx", "staged", content)
    assert eventually(lambda: shows(mnt, "docker.io/library/nginx", "staged", content))
    time.sleep(0.3)
    assert sorted(os.listdir(mnt / "digests")) == sorted([legacy, content, pending])
    try:
        os.lstat(mnt / "digests" / hashlib.sha256(b"layer of fsck-more").hexdigest())
        raise AssertionError("a layer is served as a digest")
    except OSError as e:
        assert e.errno == errno.ENOENT
    metrics = (mnt / ".imagefs" / "metrics").read_text()
    assert "imagefs_digests 3" in metrics, metrics
    r = fsck(store.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "problem:" not in r.stdout, r.stdout
    assert "layers/" not in r.stdout, r.stdout
    assert "no metadata.json" not in r.stdout and "sha256 of the image" not in r.stdout, r.stdout
