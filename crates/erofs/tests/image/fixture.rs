//! Test fixtures: a varied source tree, mkfs.erofs, and kernel loop mounts.
//! Also included by the examples, which use only part of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use imagefs_erofs::Image;
use imagefs_erofs::testing::{Need, need};

/// Deterministic xorshift bytes.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn text_bytes(n: usize) -> Vec<u8> {
    let words = [
        "erofs ", "image ", "mount ", "lz4 ", "cluster ", "the ", "of ", "and ",
    ];
    let mut v = Vec::with_capacity(n + 32);
    let mut i = 0usize;
    while v.len() < n {
        v.extend_from_slice(words[(i * 7 + i / 13) % words.len()].as_bytes());
        if i.is_multiple_of(11) {
            v.extend_from_slice(format!("{i}\n").as_bytes());
        }
        i += 1;
    }
    v.truncate(n);
    v
}

fn chown(p: &Path, uid: u32, gid: u32) {
    use rustix::fs::{AtFlags, CWD, Gid, Uid, chownat};
    chownat(
        CWD,
        p,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("chown {p:?}: {e}"));
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, utimensat};
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {p:?}: {e}"));
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {p:?}: {e}"));
}

fn mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};
    mknodat(
        CWD,
        p,
        FileType::from_raw_mode(mode),
        Mode::from_raw_mode(mode),
        makedev(major, minor),
    )
    .unwrap_or_else(|e| panic!("mknod {p:?}: {e}"));
}

/// Build the varied tree under `root`. `big` controls the multi-MB files.
pub fn build_tree(root: &Path, big: bool, many: bool) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
        path
    };
    fs::create_dir_all(root).expect("root");
    w("empty", b"");
    for (i, n) in [
        1usize, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12293, 65536, 65537,
    ]
    .into_iter()
    .enumerate()
    {
        w(&format!("sizes/rand_{n}"), &random_bytes(i as u64 + 7, n));
        w(&format!("sizes/text_{n}"), &text_bytes(n));
    }
    if big {
        w("big/random_3m", &random_bytes(99, 3 * 1024 * 1024 + 123));
        w("big/text_6m", &text_bytes(6 * 1024 * 1024 + 77));
        w("big/zeros_2m", &vec![0u8; 2 * 1024 * 1024]);
        let mut mixed = Vec::new();
        for i in 0..40u64 {
            if i % 2 == 0 {
                mixed.extend_from_slice(&random_bytes(i + 1000, 65536 + i as usize * 3));
            } else {
                mixed.extend_from_slice(&text_bytes(50000 + i as usize));
            }
        }
        w("big/mixed", &mixed);
    } else {
        w("big/random_300k", &random_bytes(99, 300 * 1024 + 5));
        w("big/text_600k", &text_bytes(600 * 1024 + 3));
    }
    // Hard links.
    let h = w("links/original", &text_bytes(5000));
    fs::create_dir_all(root.join("links/sub")).expect("mkdir");
    fs::hard_link(&h, root.join("links/sub/second")).expect("link");
    fs::hard_link(&h, root.join("links/third")).expect("link");
    // Symlinks.
    fs::create_dir_all(root.join("sym")).expect("mkdir");
    symlink("../links/original", root.join("sym/rel")).expect("symlink");
    symlink("/etc/passwd", root.join("sym/abs")).expect("symlink");
    symlink("nowhere/at/all", root.join("sym/dangling")).expect("symlink");
    let long: String = (0..500).map(|i| format!("d{i:07}/")).collect::<String>() + "end";
    symlink(&long[..3000], root.join("sym/long3000")).expect("symlink");
    symlink(&long[..4090], root.join("sym/long4090")).expect("symlink");
    symlink(&long[..200], root.join("sym/long200")).expect("symlink");
    // Special files.
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    mknod(&root.join("dev/fifo"), libc::S_IFIFO | 0o644, 0, 0);
    mknod(&root.join("dev/null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&root.join("dev/bigchr"), libc::S_IFCHR | 0o600, 300, 70000);
    mknod(&root.join("dev/sda1"), libc::S_IFBLK | 0o660, 8, 1);
    // Modes and owners.
    fs::create_dir_all(root.join("perm")).expect("mkdir");
    for (name, mode, uid, gid) in [
        ("setuid", 0o4755, 0, 0),
        ("setgid", 0o2711, 1000, 1000),
        ("sticky_none", 0o1000, 65534, 65534),
        ("zero", 0o000, 123, 456),
        ("bigids", 0o644, 100_000, 200_000),
        ("all", 0o7777, 1, 2),
    ] {
        let p = w(&format!("perm/{name}"), name.as_bytes());
        chown(&p, uid, gid);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    fs::create_dir_all(root.join("perm/stickydir")).expect("mkdir");
    fs::set_permissions(
        root.join("perm/stickydir"),
        fs::Permissions::from_mode(0o1777),
    )
    .expect("chmod");
    chown(&root.join("dev/fifo"), 42, 43);
    // A 5000-entry directory (200 if not `many`) with varied name lengths.
    let many_dir = root.join("many");
    fs::create_dir_all(&many_dir).expect("mkdir");
    for i in 0..if many { 5000 } else { 200 } {
        let name = format!("f{i:05}_{}", "x".repeat(i % 37));
        let p = many_dir.join(name);
        if i % 10 == 0 {
            fs::create_dir(&p).expect("mkdir");
        } else {
            fs::write(&p, format!("{i}")).expect("write");
        }
    }
    // Deep path.
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).expect("mkdir");
    fs::write(deep.join("bottom"), b"deep").expect("write");
    // Odd names.
    let odd = root.join("odd");
    fs::create_dir_all(&odd).expect("mkdir");
    for name in [
        &b"\xff\xfe non-utf8"[..],
        b"with space",
        b"new\nline",
        b"-dash",
        b"!bang",
        b"...",
        b".hidden",
        "unicod\u{e9}".as_bytes(),
        &[b'n'; 254], // mkfs.erofs 1.5 fails on 255-byte names
    ] {
        fs::write(odd.join(OsStr::from_bytes(name)), name).expect("write");
    }
    // Xattrs: user, trusted, security, long values, shared ones.
    let x = w("xattr/file", b"x");
    setxattr(&x, "user.foo", b"bar");
    setxattr(&x, "user.long", &text_bytes(3000));
    setxattr(&x, "user.empty", b"");
    setxattr(&x, "trusted.x", b"trusted value");
    setxattr(&x, "security.test", b"sec\0bin");
    setxattr(&x, "security.selinux", b"system_u:object_r:etc_t:s0\0");
    for i in 0..8 {
        let p = w(&format!("xattr/shared{i}"), b"s");
        setxattr(&p, "user.shared", b"same value everywhere");
        setxattr(&p, "security.selinux", b"system_u:object_r:usr_t:s0\0");
        setxattr(&p, &format!("user.own{i}"), format!("v{i}").as_bytes());
    }
    setxattr(&root.join("xattr"), "user.dir", b"on a dir");
    setxattr(&root.join("sym"), "trusted.overlay.opaque", b"y");
    // Mtimes with nanoseconds (last, since writes above change them).
    set_mtime(&root.join("sizes/rand_1"), 1_000_000_000, 123_456_789);
    set_mtime(&root.join("perm/all"), 0, 0);
    set_mtime(&root.join("perm/zero"), 2_000_000_000, 999_999_999);
    set_mtime(&root.join("sym/rel"), 1_500_000_000, 1);
}

/// Run `cmd`; panics with its stderr, prefixed by `what`, unless it succeeds.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mkfs.erofs ARGS IMG DIR`.
pub fn mkfs(img: &Path, dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--quiet").args(args).arg(img).arg(dir);
    run(&mut cmd, &format!("mkfs.erofs {args:?}"));
}

/// A kernel loop mount, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(img: &Path, dir: &Path) -> Mount {
        fs::create_dir_all(dir).expect("mountpoint");
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "erofs", "-o", "loop,ro"]).arg(img).arg(dir);
        run(&mut cmd, "mount");
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A test's temporary directory: the source tree in `src`, images and the
/// mountpoint beside it. Made only when the test can run here.
pub struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    /// `None` (after the skip policy's `SKIP` line) when `test` cannot run here.
    pub fn new(needs: &[Need], test: &str) -> Option<Scratch> {
        need(needs, test).then(|| Scratch {
            tmp: tempfile::tempdir().expect("tempdir"),
        })
    }

    /// For tests that make images of the small varied tree but mount none: a
    /// scratch directory with that tree in `src` (owners and device nodes need
    /// root), or `None` when `test` cannot run here.
    pub fn small_tree(test: &str) -> Option<Scratch> {
        let t = Scratch::new(&[Need::Root, Need::MkfsErofs], test)?;
        t.tree(false, false);
        Some(t)
    }

    /// `name` in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The varied tree (see [`build_tree`]) in `src`; returns its path.
    pub fn tree(&self, big: bool, many: bool) -> PathBuf {
        let src = self.path("src");
        build_tree(&src, big, many);
        src
    }

    /// `mkfs.erofs ARGS NAME src`; returns the image's path.
    pub fn mkfs(&self, name: &str, args: &[&str]) -> PathBuf {
        let img = self.path(name);
        mkfs(&img, &self.path("src"), args);
        img
    }

    /// A kernel mount of `img` at `mnt`.
    pub fn mount(&self, img: &Path) -> Mount {
        Mount::new(img, &self.path("mnt"))
    }
}

/// Our reader on the image at `p`.
pub fn open(p: &Path) -> Image {
    Image::open(fs::File::open(p).expect("open image")).expect("Image::open")
}
