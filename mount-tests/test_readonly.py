"""DESIGN.md sections 2-3: digests/ is read-only (EROFS), tags/ refuses non-tag changes (EPERM), the
digest files are the store's bytes, statfs is the store's, owners and modes follow the store."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from pathlib import Path

import pytest

from helpers import bookkeeping
from helpers import expect_errno, mounts_at, read_at, refusals, sh, snapshot, sha256_file, scan_store
from world import build_world

LAYOUTS = ["content", "legacy"]


@pytest.fixture(params=LAYOUTS)
def wm(request, store, mounter):
    w = build_world(store, request.param)
    return w, mounter(store).mnt


def T(mnt, repo, tag=None) -> Path:
    p = Path(mnt) / "tags" / repo
    return p / tag if tag else p


# ------------------------------------------------------------------ EROFS under digests/
def erofs_cases(w, mnt):
    D = mnt / "digests"
    hx = w.d["d1"]
    f = D / hx / "metadata.json"
    img = D / hx / "rootfs.erofs"
    return [
        ("create file in digests/", lambda: os.open(D / "newfile", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("create file in digests/<hex>", lambda: os.open(D / hx / "newfile", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("mkdir in digests/", lambda: os.mkdir(D / "newdir")),
        ("mkdir in digests/<hex>", lambda: os.mkdir(D / hx / "newdir")),
        ("symlink in digests/", lambda: os.symlink(hx, D / "link")),
        ("symlink in digests/<hex>", lambda: os.symlink("x", D / hx / "link")),
        ("mknod fifo in digests/<hex>", lambda: os.mkfifo(D / hx / "fifo")),
        ("unlink metadata.json", lambda: os.unlink(f)),
        ("unlink rootfs.erofs", lambda: os.unlink(img)),
        ("rmdir digests/<hex>", lambda: os.rmdir(D / hx)),
        ("rename digests/<hex>", lambda: os.rename(D / hx, D / ("f" * 64))),
        ("rename file inside digest", lambda: os.rename(f, D / hx / "meta2.json")),
        ("rename digest file into tags/", lambda: os.rename(f, T(mnt, w.r1, "stolen"))),
        ("rename tag into digests/", lambda: os.rename(T(mnt, w.r1, "t1"), D / "t1")),
        ("hard link of digest file", lambda: os.link(f, D / hx / "hl")),
        ("open metadata.json O_WRONLY", lambda: os.open(f, os.O_WRONLY)),
        ("open rootfs.erofs O_RDWR", lambda: os.open(img, os.O_RDWR)),
        ("open O_TRUNC", lambda: os.open(f, os.O_WRONLY | os.O_TRUNC)),
        ("truncate", lambda: os.truncate(f, 0)),
        ("chmod file", lambda: os.chmod(f, 0o600)),
        ("chmod digest dir", lambda: os.chmod(D / hx, 0o700)),
        ("chmod digests/", lambda: os.chmod(D, 0o700)),
        ("chown file", lambda: os.chown(f, 1, 1)),
        ("utimens file", lambda: os.utime(f, (1, 1))),
        ("utimens digest dir", lambda: os.utime(D / hx, (1, 1))),
        ("setxattr file", lambda: os.setxattr(f, "user.test", b"1")),
        ("setxattr digest dir", lambda: os.setxattr(D / hx, "user.test", b"1")),
        ("removexattr file", lambda: os.removexattr(f, "user.test")),
    ]


def test_erofs_under_digests(wm):
    w, mnt = wm
    failures = refusals(erofs_cases(w, mnt), errno.EROFS, unchanged=w.root)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("cmd", [
    ["touch", "{D}/new"], ["touch", "{D}/{hx}/metadata.json"], ["mkdir", "{D}/x"], ["rm", "{D}/{hx}/metadata.json"],
    ["rm", "-rf", "{D}/{hx}"], ["mv", "{D}/{hx}", "{D}/other"], ["ln", "-s", "{hx}", "{D}/x"],
    ["chmod", "600", "{D}/{hx}/metadata.json"], ["truncate", "-s0", "{D}/{hx}/rootfs.erofs"],
])
def test_erofs_coreutils(store, mounter, cmd):
    w = build_world(store, "content")
    mnt = mounter(store).mnt
    args = [a.format(D=mnt / "digests", hx=w.d["d1"]) for a in cmd]
    before = snapshot(store.root)
    r = sh(*args)
    assert r.returncode != 0, f"{args} succeeded"
    assert "Read-only file system" in r.stderr, f"{args}: {r.stderr!r}"
    assert snapshot(store.root) == before
    assert sha256_file(mnt / "digests" / w.d["d1"] / "rootfs.erofs") == w.d["d1"]


# ------------------------------------------------------------------ EPERM in tags/
def eperm_cases(w, mnt):
    R = T(mnt, w.r1)
    tag = T(mnt, w.r1, "t1")
    return [
        ("create (open O_CREAT) in repo dir", lambda: os.open(R / "file", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("create in tags/", lambda: os.open(mnt / "tags" / "file", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("mknod fifo", lambda: os.mkfifo(R / "fifo")),
        ("mknod regular", lambda: os.mknod(R / "node", 0o644 | stat.S_IFREG)),
        ("hard link of a tag", lambda: os.link(tag, R / "hardlink", follow_symlinks=False)),
        ("hard link of a tag into another repo", lambda: os.link(tag, T(mnt, w.r2, "hl"), follow_symlinks=False)),
        ("chmod repo dir", lambda: os.chmod(R, 0o700)),
        ("chmod tags/", lambda: os.chmod(mnt / "tags", 0o700)),
        ("chown repo dir", lambda: os.chown(R, 4242, 4242)),
        ("lchown tag", lambda: os.chown(tag, 4242, 4242, follow_symlinks=False)),
        ("utimens tag (touch -h)", lambda: os.utime(tag, (1, 1), follow_symlinks=False)),
        ("utimens repo dir", lambda: os.utime(R, (1, 1))),
        ("setxattr repo dir", lambda: os.setxattr(R, "user.test", b"1")),
        ("setxattr tag (trusted.)", lambda: os.setxattr(tag, "trusted.test", b"1", follow_symlinks=False)),
    ]


def test_eperm_in_tags(wm):
    w, mnt = wm
    failures = refusals(eperm_cases(w, mnt), errno.EPERM, unchanged=w.root)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("cmd,msg", [
    (["touch", "{R}/newfile"], "Operation not permitted"),
    (["mkfifo", "{R}/fifo"], "Operation not permitted"),
    (["ln", "{R}/t1", "{R}/hard"], "Operation not permitted"),
    (["touch", "-h", "{R}/t1"], "Operation not permitted"),
    (["chmod", "700", "{R}"], "Operation not permitted"),
    (["chown", "-h", "4242", "{R}/t1"], "Operation not permitted"),
])
def test_eperm_coreutils(store, mounter, cmd, msg):
    w = build_world(store, "content")
    mnt = mounter(store).mnt
    args = [a.format(R=T(mnt, w.r1)) for a in cmd]
    before = snapshot(store.root)
    r = sh(*args)
    assert r.returncode != 0, f"{args} succeeded"
    assert msg in r.stderr, f"{args}: {r.stderr!r}"
    assert snapshot(store.root) == before


# ------------------------------------------------------------------ reads
def test_digest_files_are_the_store_bytes(wm):
    w, mnt = wm
    st = scan_store(w.root)
    assert set(os.listdir(mnt / "digests")) == st.digests()
    for hx, locs in st.locations.items():
        src = w.root / "content" / hx if locs[0][0] == "content" else w.root / locs[0][1] / hx
        dst = mnt / "digests" / hx
        assert (dst / "metadata.json").read_bytes() == (src / "metadata.json").read_bytes()
        if w.store.status[hx] == "ready":
            assert sorted(os.listdir(dst)) == sorted(set(os.listdir(src)) | {"rootfs"}) or \
                sorted(os.listdir(dst)) == sorted(os.listdir(src)), (os.listdir(dst), os.listdir(src))
            data = (dst / "rootfs.erofs").read_bytes()
            assert hashlib.sha256(data).hexdigest() == hx
            assert data == (src / "rootfs.erofs").read_bytes()
            assert os.stat(dst / "rootfs.erofs").st_size == os.stat(src / "rootfs.erofs").st_size
            # pread at odd offsets
            fd = os.open(dst / "rootfs.erofs", os.O_RDONLY)
            try:
                for off, n in [(0, 1), (1023, 4097), (len(data) - 7, 100), (len(data), 10)]:
                    assert os.pread(fd, n, off) == data[off:off + n], (off, n)
            finally:
                os.close(fd)
            assert stat.S_ISREG(os.stat(dst / "rootfs.erofs").st_mode)
    # other files of the digest dir are served read-only, unknown metadata fields kept
    d1 = mnt / "digests" / w.d["d1"]
    assert (d1 / "manifest.json").read_bytes() == b'{"schemaVersion": 2, "role": "d1"}\n'
    assert b'"x_unknown_field"' in (d1 / "metadata.json").read_bytes()
    r = sh("cat", T(mnt, w.r1, "t1") / "metadata.json")
    assert r.returncode == 0 and r.stdout.encode() == (w.ddir("d1") / "metadata.json").read_bytes()
    r = sh("sha256sum", T(mnt, w.r1, "only") / "rootfs.erofs")
    assert r.stdout.split()[0] == w.d["d2"]


def test_statfs_is_the_stores(wm):
    w, mnt = wm
    a, b = os.statvfs(mnt), os.statvfs(w.root)
    assert (a.f_bsize, a.f_blocks, a.f_files) == (b.f_bsize, b.f_blocks, b.f_files), (a, b)
    assert a.f_frsize == b.f_frsize, (a, b)
    assert abs(a.f_bfree - b.f_bfree) <= max(1024, b.f_blocks // 100), (a, b)
    r = sh("df", "--output=size", mnt)
    r2 = sh("df", "--output=size", w.root)
    assert r.stdout == r2.stdout


# ------------------------------------------------------------------ owners and modes
def _ugm(p):
    s = os.lstat(p)
    return s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode), stat.S_IFMT(s.st_mode)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_owners_and_modes_follow_store(store, mounter, layout):
    w = build_world(store, layout)
    # give the store's dirs distinctive owners/modes before mounting
    os.chown(store.root, 4300, 4301)
    os.chmod(store.root, 0o751)
    rd = w.repo_dir(w.r1)
    os.chown(rd, 4242, 4343)
    os.chmod(rd, 0o775)
    parent = rd.parent
    os.chown(parent, 4244, 4245)
    os.chmod(parent, 0o750)
    mnt = mounter(store).mnt
    assert _ugm(mnt / "tags") == (4300, 4301, 0o751, stat.S_IFDIR)
    assert _ugm(T(mnt, w.r1)) == (4242, 4343, 0o775, stat.S_IFDIR)
    assert _ugm(T(mnt, w.r1).parent) == (4244, 4245, 0o750, stat.S_IFDIR)
    assert _ugm(mnt / "digests") == (0, 0, 0o755, stat.S_IFDIR)
    assert stat.S_ISLNK(os.lstat(T(mnt, w.r1, "t1")).st_mode)
    lines = [sh("ls", "-ld", "--numeric-uid-gid", p).stdout for p in (T(mnt, w.r1), mnt / "digests")]
    assert lines[0].split()[0] == "drwxrwxr-x" and lines[0].split()[2:4] == ["4242", "4343"], lines
    assert lines[1].split()[0] == "drwxr-xr-x" and lines[1].split()[2:4] == ["0", "0"], lines
    # digest files are read-only for everybody
    for f in ("metadata.json", "rootfs.erofs"):
        mode = stat.S_IMODE(os.stat(mnt / "digests" / w.d["d1"] / f).st_mode)
        assert mode & 0o222 == 0 or mode == 0o644, oct(mode)


# ------------------------------------------------------------------ in use is never yanked
@pytest.mark.parametrize("layout", LAYOUTS)
def test_open_image_survives_last_untag(store, mounter, layout):
    w = build_world(store, layout)
    m = mounter(store)
    mnt = m.mnt
    hx = w.d["d2"]
    fd = os.open(mnt / "digests" / hx / "rootfs.erofs", os.O_RDONLY)
    dfd = os.open(mnt / "digests" / hx, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = os.pread(fd, 100, 0)
        os.unlink(T(mnt, w.r1, "only"))
        assert not w.ddir("d2").exists(), "the directory must leave the store at once"
        assert hx not in os.listdir(mnt / "digests")
        # the open file still reads the whole image
        data = b""
        off = 0
        while True:
            chunk = os.pread(fd, 1 << 16, off)
            if not chunk:
                break
            data += chunk
            off += len(chunk)
        assert data[:100] == first
        assert hashlib.sha256(data).hexdigest() == hx
        # the open directory (and a cwd inside it) still lists, looks up and opens its files
        problems = []
        checks = [
            ("fstat of the open image fd", lambda: os.fstat(fd).st_size == len(data)),
            ("fstat of the open dir fd", lambda: stat.S_ISDIR(os.fstat(dfd).st_mode)),
            ("readdir of the open dir fd", lambda: {"metadata.json", "rootfs", "rootfs.erofs"} <= set(os.listdir(dfd))),
            ("openat(dirfd, metadata.json)", lambda: b'"status"' in read_at(dfd, "metadata.json", 1 << 16)),
            ("fchdir into the open dir", lambda: os.fchdir(dfd) or True),
            ("stat rootfs.erofs relative to cwd", lambda: os.stat("rootfs.erofs").st_size == len(data)),
            ("listdir of cwd", lambda: "metadata.json" in os.listdir(".")),
        ]
        old_cwd = os.getcwd()
        try:
            for desc, fn in checks:
                if "cwd" in desc and any(p.startswith("fchdir") for p in problems):
                    problems.append(f"{desc}: not tried (fchdir failed)")
                    continue
                try:
                    if not fn():
                        problems.append(f"{desc}: wrong result")
                except OSError as e:
                    problems.append(f"{desc}: {e}")
        finally:
            os.chdir(old_cwd)
        assert not problems, "in-use digest directory yanked after its last tag went:\n" + "\n".join(problems)
    finally:
        os.close(fd)
        os.close(dfd)
    # once the kernel forgets the inodes, the image is freed: nothing stays in trash
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    except OSError:
        pass
    trash = bookkeeping(store.root) / "trash"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and trash.exists() and os.listdir(trash):
        time.sleep(0.1)
    assert not trash.exists() or not os.listdir(trash), f"trash still holds {os.listdir(trash)}"


# ------------------------------------------------------------------ read-type operations everywhere
def test_read_ops_served_everywhere(wm):
    w, mnt = wm
    hx = w.d["d1"]
    paths = [mnt, mnt / "tags", T(mnt, w.r1).parent, T(mnt, w.r1), T(mnt, w.r1, "t1"), mnt / "digests",
             mnt / "digests" / hx, mnt / "digests" / hx / "metadata.json", mnt / "digests" / hx / "rootfs.erofs"]
    failures = []
    for p in paths:
        for desc, fn in [
            ("lstat", lambda: os.lstat(p)),
            ("stat", lambda: os.stat(p)),
            ("access R_OK", lambda: os.access(p, os.R_OK) or (_ for _ in ()).throw(OSError(13, "access false"))),
            ("listxattr", lambda: os.listxattr(p, follow_symlinks=False)),
            ("statvfs", lambda: os.statvfs(p)),
        ]:
            try:
                fn()
            except OSError as e:
                failures.append(f"{desc} {p}: {e}")
        try:
            os.getxattr(p, "user.imagefs-test-absent", follow_symlinks=False)
            failures.append(f"getxattr {p}: absent attribute returned a value")
        except OSError as e:
            if e.errno != errno.ENODATA:
                failures.append(f"getxattr {p}: {errno.errorcode.get(e.errno)}, expected ENODATA")
    for d in paths[:4] + [paths[5], paths[6]]:
        try:
            os.listdir(d)
        except OSError as e:
            failures.append(f"readdir {d}: {e}")
        if not os.access(d, os.X_OK):
            failures.append(f"access X_OK {d}: false")
    assert not failures, "\n".join(failures)
    # readdir reports the right types (ls -F)
    r = sh("ls", "-F", T(mnt, w.r1))
    assert "t1@" in r.stdout.split(), r.stdout
    r = sh("ls", "-F", mnt / "digests" / hx)
    assert "metadata.json" in r.stdout.split(), r.stdout


# ------------------------------------------------------------------ store entries that do not fit
def test_strays_ignored_not_served_not_deleted(store, mounter):
    hx = store.add_digest("stray-a")
    store.tag("docker.io/library/app", "v1", hx)
    root = store.root
    strays = {
        "repositories/docker.io/library/app/notes.txt": "file",
        "repositories/docker.io/library/app/outside": ("link", "/etc"),
        "repositories/docker.io/library/app/dangling": ("link", "../../../../content/" + "e" * 64),
        "repositories/docker.io/library/app/Bad:Tag": ("link", "../../../../content/" + hx),
        "repositories/UPPER/x": ("link", "../../content/" + hx),
        "content/not-a-digest": "dir",
        "content/README": "file",
        "legacyrepo/v1": ("link", "../etc"),
    }
    for rel, kind in strays.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "file":
            p.write_text("stray\n")
        elif kind == "dir":
            p.mkdir()
        else:
            os.symlink(kind[1], p)
    m = mounter(store)
    mnt = m.mnt
    assert os.listdir(T(mnt, "docker.io/library/app")) == ["v1"]
    assert "UPPER" not in os.listdir(mnt / "tags")
    assert os.listdir(mnt / "digests") == [hx]
    assert "legacyrepo" not in os.listdir(mnt / "tags") or os.listdir(T(mnt, "legacyrepo")) == []
    for name in ("notes.txt", "outside", "dangling", "Bad:Tag"):
        expect_errno(errno.ENOENT, os.lstat, T(mnt, "docker.io/library/app", name))
    # untagging the last tag of the repository deletes no stray
    os.unlink(T(mnt, "docker.io/library/app", "v1"))
    assert not store.content_dir(hx).exists()
    for rel in strays:
        assert os.path.lexists(root / rel), f"stray {rel} was deleted"
    # one warning per entry (also after the store was changed around them)
    log = [ln for ln in m.log_text().splitlines() if " WARN " in ln]
    bad = []
    # the warning names the entry: its store path, or for a dangling tag repo:tag; a malformed
    # repository directory is one entry (its contents are not looked at)
    names = {"repositories/UPPER/x": "repositories/UPPER"}
    for rel in strays:
        alt = re.escape("docker.io/library/app:" + rel.split("/")[-1]) + r"\b"
        pat = re.compile(re.escape(str(root / names.get(rel, rel))) + r"(:| ->)|" + alt)
        n = sum(1 for ln in log if pat.search(ln))
        if n != 1:
            bad.append(f"{rel}: {n} warnings")
    assert not bad, "expected exactly one warning per stray entry: " + ", ".join(bad) + "\n" + "\n".join(log)


@pytest.mark.parametrize("role", ["dp", "dconv", "df"])
def test_rootfs_erofs_served_only_for_ready(wm, role):
    """DESIGN.md 3: "rootfs/ and rootfs.erofs are served for ready digests". A pending/converting image
    may still be being written by the puller; serving it under long TTLs + keep_cache would pin a partial
    image in the kernel's cache. Interpretation: not served (ENOENT, not listed) unless ready."""
    w, mnt = wm
    hx = w.d[role]
    assert (w.ddir(role) / "rootfs.erofs").is_file()  # the store has one
    d = mnt / "digests" / hx
    assert "metadata.json" in os.listdir(d)
    assert "rootfs.erofs" not in os.listdir(d), f"{w.store.status[hx]} digest serves rootfs.erofs"
    expect_errno(errno.ENOENT, os.stat, d / "rootfs.erofs")


def test_mmap_rootfs_erofs_survives_gc(store, mounter):
    """A VMM maps rootfs.erofs: the mapping reads the store's bytes, also after the last tag went."""
    import mmap
    w = build_world(store, "content")
    mnt = mounter(store).mnt
    hx = w.d["d2"]
    want = (w.ddir("d2") / "rootfs.erofs").read_bytes()
    with open(mnt / "digests" / hx / "rootfs.erofs", "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            assert mm[:] == want
            os.unlink(T(mnt, w.r1, "only"))
            assert not w.ddir("d2").exists()
            assert hashlib.sha256(mm[:]).hexdigest() == hx
        finally:
            mm.close()


def test_listing_of_a_ready_digest_shows_rootfs_with_its_attributes(wm):
    """A listing (READDIRPLUS) must show rootfs/ with the same inode a lookup gives."""
    w, mnt = wm
    ready = [h for h in os.listdir(mnt / "digests")
             if b'"ready"' in (mnt / "digests" / h / "metadata.json").read_bytes()]
    assert ready
    for h in ready:
        d = mnt / "digests" / h
        entries = {e.name: e for e in os.scandir(d)}
        assert {"metadata.json", "rootfs", "rootfs.erofs"} <= set(entries), sorted(entries)
        assert entries["rootfs"].is_dir(follow_symlinks=False)
        if "erofs" not in mounts_at(d / "rootfs"):  # the kernel's erofs tree has its own root inode
            assert entries["rootfs"].inode() == os.lstat(d / "rootfs").st_ino
        assert os.listdir(d / "rootfs"), "rootfs/ lists the image's tree"
