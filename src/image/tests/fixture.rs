//! Test fixtures: a varied source tree, mkfs.erofs, and kernel loop mounts.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this machine can run the kernel tests.
pub fn kernel_available() -> bool {
    // SAFETY: geteuid takes nothing and cannot fail.
    let ok = unsafe { libc::geteuid() } == 0
        && Command::new("mkfs.erofs").arg("--help").output().is_ok()
        && fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("erofs"));
    if !ok {
        assert!(
            std::env::var("IMAGEFS_REQUIRE_KERNEL").is_err(),
            "kernel erofs tests required but root/mkfs.erofs/erofs missing"
        );
        eprintln!("SKIP: needs root, mkfs.erofs and kernel erofs");
    }
    ok
}

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

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in test path")
}

fn chown(p: &Path, uid: u32, gid: u32) {
    let c = cpath(p);
    assert_eq!(
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::lchown(c.as_ptr(), uid, gid) },
        0,
        "chown {p:?}"
    );
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = cpath(p);
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    // SAFETY: a NUL-terminated path and an array of two timespecs, both outliving the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {p:?}");
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = cpath(p);
    let n = CString::new(name).expect("xattr name");
    // SAFETY: NUL-terminated path and name, and `value` with its length, outliving the call.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {p:?}: {}",
        std::io::Error::last_os_error()
    );
}

fn mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    let c = cpath(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {p:?}");
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

/// `mkfs.erofs ARGS IMG DIR`.
pub fn mkfs(img: &Path, dir: &Path, args: &[&str]) {
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .args(args)
        .arg(img)
        .arg(dir)
        .output()
        .expect("run mkfs.erofs");
    assert!(
        out.status.success(),
        "mkfs.erofs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kernel loop mount, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(img: &Path, dir: &Path) -> Mount {
        fs::create_dir_all(dir).expect("mountpoint");
        let out = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(img)
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

/// Build the tree at `$IMAGEFS_TREE` (manual debugging aid).
#[test]
#[ignore]
fn build_tree_at_env() {
    if let Ok(p) = std::env::var("IMAGEFS_TREE") {
        build_tree(Path::new(&p), std::env::var("IMAGEFS_BIG").is_ok(), true);
    }
}
