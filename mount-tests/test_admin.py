"""DESIGN.md section 5: `imagefs ls`, `imagefs fsck [--repair]`, `imagefs gc [--dry-run]` on the real
binary, on stores built here (`mkfs.erofs -zlz4` images), unmounted and while a mount serves the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

from helpers import bookkeeping, gc_intent
from helpers import content_target, imagefs_bin, sh


def run(*args, timeout=60):
    return sh(imagefs_bin(), *args, timeout=timeout)


def ls_json(root):
    r = run("ls", "--store", root, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def small_store(store):
    """a: tagged twice (content), l: legacy tagged, u: never tagged (ready), p: pending, untagged."""
    a = store.add_digest("admin-a")
    u = store.add_digest("admin-u")
    p = store.add_digest("admin-p", status="pending", with_image=False)
    lg = store.add_digest("admin-l", layout="legacy", repo="old/repo")
    store.tag("docker.io/library/alpine", "latest", a)
    store.tag("docker.io/library/alpine", "3", a)
    store.tag("old/repo", "stable", lg, layout="legacy")
    return a, u, p, lg


def test_ls_fsck_gc_unmounted(store):
    a, u, p, lg = small_store(store)
    root = store.root

    r = run("ls", "--store", root)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TAG", "DIGEST", "SIZE", "REFS", "STATUS"]
    rows = [ln.split() for ln in lines[1:]]
    assert [x[0] for x in rows[:3]] == ["docker.io/library/alpine:3", "docker.io/library/alpine:latest",
                                        "old/repo:stable"]
    assert rows[0][1] == a[:12] and rows[0][3] == "2" and rows[0][4] == "ready"
    assert rows[2][1] == lg[:12] and rows[2][3] == "1"
    assert sorted((x[0], x[1], x[3], x[4]) for x in rows[3:]) == sorted(
        [("<none>", u[:12], "0", "ready"), ("<none>", p[:12], "0", "pending")])
    assert all(x[2][-1] == "B" for x in rows), r.stdout  # human sizes: 123B, 4.5kB, ...

    j = ls_json(root)
    assert len(j) == 5
    assert j[0]["digest"] == f"sha256:{a}" and j[0]["refs"] == 2 and j[0]["layout"] == "content"
    img = root / "content" / a / "rootfs.erofs"
    md = root / "content" / a / "metadata.json"
    assert j[0]["size_bytes"] == img.stat().st_size + md.stat().st_size
    assert j[2]["layout"] == "legacy" and j[2]["dir"] == f"old/repo/{lg}"
    assert run("ls", "--store", root, "--json").stdout == run("ls", "--store", root, "--json").stdout

    r = run("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "problem:" not in r.stdout
    assert f"info: {root}/content/{u}: untagged ready digest" in r.stdout, r.stdout
    assert "3 images read in full" in r.stdout, r.stdout

    r = run("gc", "--store", root, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("would remove /") == 1 and f"content/{u}" in r.stdout, r.stdout
    assert (root / "content" / u).is_dir()

    r = run("gc", "--store", root)
    assert r.returncode == 0, r.stderr
    assert f"removed {root}/content/{u}" in r.stdout and "reclaimed" in r.stdout, r.stdout
    assert not (root / "content" / u).exists()
    for d in (root / "content" / a, root / "content" / p, root / "old/repo" / lg):
        assert d.is_dir(), d
    assert not os.listdir(bookkeeping(root) / "trash")
    assert not os.listdir(bookkeeping(root) / "intents")
    assert run("fsck", "--store", root).returncode == 0


def test_admin_while_mounted(store, mounter):
    a, u, p, lg = small_store(store)
    gone = store.add_digest("admin-gone")
    store.tag("r", "only", gone)
    root = store.root
    # FUSE image trees: an image in use waits in the daemon's trash (the kernel's erofs trees hold the
    # file in the kernel instead: test_kernel_erofs.py)
    m = mounter(store, extra_args=["--rootfs-mounts", "fuse"])
    mnt = m.mnt
    hello = mnt / "tags" / "docker.io/library/alpine" / "latest" / "rootfs" / "hello.txt"
    want = hello.read_bytes()

    # An image in use through the mount loses its last tag: it goes to the mount's trash.
    held = os.open(mnt / "tags" / "r" / "only" / "rootfs" / "hello.txt", os.O_RDONLY)
    try:
        held_bytes = os.pread(held, 1 << 16, 0)
        os.unlink(mnt / "tags" / "r" / "only")
        assert not (root / "content" / gone).exists()
        trash = os.listdir(bookkeeping(root) / "trash")
        assert trash, "an in-use image is kept in the trash"

        r = run("ls", "--store", root)
        assert r.returncode == 0, r.stderr
        assert "docker.io/library/alpine:latest" in r.stdout

        r = run("fsck", "--store", root)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "info: " in r.stdout and "live mount" in r.stdout, r.stdout

        r = run("fsck", "--store", root, "--repair")
        assert r.returncode == 0, r.stdout + r.stderr
        assert os.listdir(bookkeeping(root) / "trash") == trash, "fsck --repair emptied a live mount's trash"

        r = run("gc", "--store", root)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"content/{u}" in r.stdout
        assert not (root / "content" / u).exists()
        for d in (root / "content" / a, root / "content" / p, root / "old/repo" / lg):
            assert d.is_dir(), f"gc removed {d}"

        # The mount keeps working: reads, the in-use file, tag changes.
        assert hello.read_bytes() == want
        assert os.pread(held, 1 << 16, 0) == held_bytes
        # (a new tag goes under a name hypeman uses: see test_hypeman_names.py)
        alp = "docker.io/library/alpine"
        os.symlink(a, mnt / "tags" / alp / "new")
        assert (root / "repositories" / alp / "new").is_symlink()
        assert os.readlink(root / "repositories" / alp / "new") == content_target(alp, a)
        assert (mnt / "tags" / alp / "new" / "rootfs" / "hello.txt").read_bytes() == want
        os.unlink(mnt / "tags" / alp / "new")
        assert (root / "content" / a).is_dir(), "a is still tagged twice"
        assert (mnt / "tags" / "old/repo" / "stable" / "rootfs" / "hello.txt").exists()
    finally:
        os.close(held)
    r = run("fsck", "--store", root)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fsck_finds_a_corrupt_image(store, mounter):
    a = store.add_digest("admin-corrupt")
    b = store.add_digest("admin-oci", extra={"manifest.json": b"{}"})
    store.tag("r", "a", a)
    store.tag("r", "b", b)
    root = store.root
    assert run("fsck", "--store", root).returncode == 0
    for hx in (a, b):
        img = root / "content" / hx / "rootfs.erofs"
        size = img.stat().st_size
        os.truncate(img, size // 2)
    r = run("fsck", "--store", root)
    assert r.returncode == 1, r.stdout + r.stderr
    pa = f"problem: {root}/content/{a}/rootfs.erofs: "
    pb = f"problem: {root}/content/{b}/rootfs.erofs: "
    assert pa + "sha256 of the image is" in r.stdout, r.stdout
    assert pa + "corrupt image: " in r.stdout, r.stdout
    assert pb + "corrupt image: " in r.stdout, r.stdout
    assert pb + "sha256" not in r.stdout, "manifest.json: named by the manifest digest, no sha256 check"
    # --repair never touches images; the problem remains. Also with a mount live.
    m = mounter(store)
    r = run("fsck", "--store", root, "--repair")
    assert r.returncode == 1, r.stdout + r.stderr
    assert (root / "content" / a / "rootfs.erofs").stat().st_size > 0
    assert (m.mnt / "tags" / "r").is_dir()


def test_fsck_repair_unmounted(store, mounter):
    a = store.add_digest("admin-r1")
    u = store.add_digest("admin-r2")
    store.tag("r", "t", a)
    root = store.root
    (root / "repositories" / "r" / "dangling").symlink_to(content_target("r", "ab" * 32))
    (root / "repositories" / "r" / ".imagefs-tmp-leftover").symlink_to("x")
    (bookkeeping(root) / "intents").mkdir(parents=True)
    (bookkeeping(root) / "trash" / "junk").mkdir(parents=True)
    intent = gc_intent(root, f"content/{u}", "0001")
    (root / "stray").write_text("x")

    r = run("fsck", "--store", root)
    assert r.returncode == 1
    for what in ("repositories/r/dangling: dangling tag", "repositories/r/.imagefs-tmp-leftover: leftover",
                 "stray: stray file"):
        assert f"problem: {root}/{what}" in r.stdout, (what, r.stdout)
    for what in (f"{bookkeeping(root)}/trash/junk: leftover in the trash", f"{intent}: half-collected"):
        assert f"problem: {what}" in r.stdout, (what, r.stdout)

    r = run("fsck", "--store", root, "--repair")
    assert r.returncode == 1, "the stray file remains: " + r.stdout
    assert "repaired: removed dangling tag" in r.stdout
    assert not (root / "content" / u).exists()
    assert (root / "content" / a).is_dir()
    assert not (root / "repositories" / "r" / "dangling").is_symlink()
    assert not os.listdir(bookkeeping(root) / "trash")
    assert (root / "stray").exists()
    (root / "stray").unlink()
    r = run("fsck", "--store", root, "--repair")
    assert r.returncode == 0, r.stdout
    m = mounter(store)
    assert sorted(os.listdir(m.mnt / "tags" / "r")) == ["t"]


def test_exit_2_when_it_cannot_run(workdir):
    missing = Path(workdir) / "no-store"
    for cmd in (["ls"], ["fsck"], ["fsck", "--repair"], ["gc"], ["gc", "--dry-run"]):
        r = run(*cmd, "--store", missing)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert str(missing) in r.stderr
    assert not missing.exists()


def test_help_is_complete():
    for cmd, words in (("ls", ["--store", "--json"]), ("fsck", ["--store", "--repair", "Exit status"]),
                       ("gc", ["--store", "--dry-run"])):
        r = run(cmd, "--help")
        assert r.returncode == 0
        for w in words:
            assert w in r.stdout, (cmd, w, r.stdout)
