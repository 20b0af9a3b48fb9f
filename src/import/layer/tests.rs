use super::*;

use std::os::unix::fs::MetadataExt;

/// A layer built in memory; entries are (name, kind, data-or-target).
struct L(tar::Builder<Vec<u8>>);

impl L {
    fn new() -> L {
        L(tar::Builder::new(Vec::new()))
    }

    fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                old.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).expect("append");
    }

    /// Appends an entry of `kind` with a link target or data; returns the builder.
    fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &str,
    ) -> L {
        self.raw(
            name.as_bytes(),
            kind,
            mode,
            link.map(str::as_bytes),
            data.as_bytes(),
        );
        self
    }

    fn dir(self, name: &str) -> L {
        self.entry(name, tar::EntryType::Directory, 0o755, None, "")
    }

    fn file(self, name: &str, data: &str) -> L {
        self.entry(name, tar::EntryType::Regular, 0o644, None, data)
    }

    fn symlink(self, name: &str, target: &str) -> L {
        self.entry(name, tar::EntryType::Symlink, 0o777, Some(target), "")
    }

    fn hardlink(self, name: &str, target: &str) -> L {
        self.entry(name, tar::EntryType::Link, 0o644, Some(target), "")
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().expect("finish")
    }
}

fn layer_opts() -> Options {
    Options { whiteouts: true }
}

fn new_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().expect("tempdir");
    let t = d.path().join("rootfs");
    create_root(&t).expect("root");
    (d, t)
}

fn apply_l(tree: &Path, l: L) -> std::result::Result<(), LayerError> {
    apply(tree, &l.bytes()[..], layer_opts())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn files_dirs_links_and_metadata() {
    let (_d, t) = new_tree();
    apply_l(
        &t,
        L::new()
            .dir("etc/")
            .file("etc/passwd", "root")
            .file("./bin/sh", "#!")
            .symlink("bin/ash", "sh")
            .hardlink("bin/sh2", "bin/sh"),
    )
    .expect("apply");
    assert_eq!(
        std::fs::read_to_string(t.join("etc/passwd")).expect("read"),
        "root"
    );
    let m = std::fs::symlink_metadata(t.join("etc/passwd")).expect("stat");
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o644));
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(
        std::fs::read_link(t.join("bin/ash"))
            .expect("link")
            .to_str(),
        Some("sh")
    );
    let a = std::fs::metadata(t.join("bin/sh")).expect("sh");
    let b = std::fs::metadata(t.join("bin/sh2")).expect("sh2");
    assert_eq!(a.ino(), b.ino());
    // bin/ had no entry: created 0755 root.
    let bin = std::fs::metadata(t.join("bin")).expect("bin");
    assert_eq!((bin.uid(), bin.mode() & 0o7777), (0, 0o755));
    assert_eq!(std::fs::metadata(t.join("etc")).expect("etc").uid(), 1000);
}

#[test]
fn whiteouts_remove_lower_entries() {
    let (_d, t) = new_tree();
    apply_l(
        &t,
        L::new()
            .dir("a/")
            .file("a/x", "1")
            .dir("a/sub/")
            .file("a/sub/y", "2")
            .file("b", "3")
            .file("c", "4"),
    )
    .expect("lower");
    apply_l(
        &t,
        L::new()
            .file("a/.wh.sub", "")
            .file(".wh.b", "")
            .file(".wh.missing", "")
            .file("nodir/.wh.x", "")
            .file("c", "changed"),
    )
    .expect("upper");
    assert_eq!(names(&t), ["a", "c"]);
    assert_eq!(names(&t.join("a")), ["x"]);
    assert_eq!(std::fs::read_to_string(t.join("c")).expect("c"), "changed");
}

#[test]
fn opaque_dirs_hide_lower_contents_but_keep_this_layers() {
    let (_d, t) = new_tree();
    apply_l(
        &t,
        L::new()
            .dir("o/")
            .file("o/old", "1")
            .dir("o/d/")
            .file("o/d/deep", "2")
            .file("keep", "3"),
    )
    .expect("lower");
    // Entries of this layer before and after the marker survive; lower ones go.
    apply_l(
        &t,
        L::new()
            .dir("o/")
            .file("o/new1", "a")
            .dir("o/d/")
            .file("o/.wh..wh..opq", "")
            .file("o/new2", "b"),
    )
    .expect("upper");
    assert_eq!(names(&t), ["keep", "o"]);
    assert_eq!(names(&t.join("o")), ["d", "new1", "new2"]);
    assert!(names(&t.join("o/d")).is_empty());
    // No whiteout markers are left in the tree.
    assert!(!t.join("o/.wh..wh..opq").exists());
}

#[test]
fn a_plain_tar_keeps_whiteout_names_as_files() {
    let (_d, t) = new_tree();
    let l = L::new().file(".wh.x", "");
    apply(&t, &l.bytes()[..], Options { whiteouts: false }).expect("apply");
    assert_eq!(names(&t), [".wh.x"]);
}

#[test]
fn a_type_change_replaces_the_lower_entry() {
    let (_d, t) = new_tree();
    apply_l(&t, L::new().dir("x/").file("x/f", "1").file("y", "2")).expect("lower");
    apply_l(&t, L::new().file("x", "now a file").dir("y/")).expect("upper");
    assert!(std::fs::symlink_metadata(t.join("x")).expect("x").is_file());
    assert!(std::fs::symlink_metadata(t.join("y")).expect("y").is_dir());
}

#[test]
fn dotdot_escapes_are_refused() {
    let outer = tempfile::tempdir().expect("tempdir");
    let t = outer.path().join("rootfs");
    create_root(&t).expect("root");
    for name in ["../evil", "a/../../evil", "/../evil"] {
        let mut l = L::new();
        l.raw(name.as_bytes(), tar::EntryType::Regular, 0o644, None, b"x");
        match apply(&t, &l.bytes()[..], layer_opts()) {
            Err(LayerError::Entry { reason, .. }) => assert!(reason.contains("leaves"), "{reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut l = L::new();
    l.raw(
        b"link",
        tar::EntryType::Link,
        0o644,
        Some(b"../../etc/passwd"),
        b"",
    );
    assert!(matches!(
        apply(&t, &l.bytes()[..], layer_opts()),
        Err(LayerError::Entry { .. })
    ));
    assert_eq!(names(outer.path()), ["rootfs"]);
    // Inner ".." and absolute names stay inside.
    apply_l(&t, L::new().file("a/../inside", "1").file("/abs", "2")).expect("inside");
    assert_eq!(names(&t), ["abs", "inside"]);
}

#[test]
fn writes_through_symlinks_stay_inside_the_tree() {
    let outer = tempfile::tempdir().expect("tempdir");
    let victim = outer.path().join("victim");
    std::fs::create_dir(&victim).expect("victim");
    let t = outer.path().join("rootfs");
    create_root(&t).expect("root");
    let abs = victim.to_str().expect("utf8").to_string();
    apply_l(
        &t,
        L::new()
            .symlink("up", "../../../../..")
            .symlink("abs", &abs)
            .symlink("loop", "loop")
            .dir("real/")
            .symlink("rel", "real"),
    )
    .expect("links");
    // Through each link: the write lands inside the tree.
    apply_l(
        &t,
        L::new()
            .file("up/escaped1", "x")
            .file("abs/escaped2", "x")
            .file("rel/f", "x")
            .hardlink("hl", "rel/f"),
    )
    .expect("writes");
    assert!(names(&victim).is_empty(), "{:?}", names(&victim));
    assert_eq!(names(outer.path()), ["rootfs", "victim"]);
    assert!(t.join("escaped1").is_file());
    assert!(
        t.join(abs.trim_start_matches('/'))
            .join("escaped2")
            .is_file()
    );
    assert!(t.join("real/f").is_file());
    // The link itself is never replaced by following it: a file over a symlink replaces the link.
    apply_l(&t, L::new().file("abs", "plain")).expect("replace link");
    assert!(
        std::fs::symlink_metadata(t.join("abs"))
            .expect("abs")
            .is_file()
    );
    // A symlink loop as a parent is an error, not a hang.
    assert!(apply_l(&t, L::new().file("loop/x", "x")).is_err());
    // Whiteouts through a symlink to outside stay inside too.
    std::fs::write(victim.join("keep"), "k").expect("keep");
    apply_l(&t, L::new().symlink("abs2", &abs)).expect("abs2");
    apply_l(
        &t,
        L::new()
            .file("abs2/.wh.keep", "")
            .file("abs2/.wh..wh..opq", ""),
    )
    .expect("wh");
    assert_eq!(names(&victim), ["keep"]);
}

#[test]
fn truncated_and_garbage_archives_are_errors() {
    let (_d, t) = new_tree();
    let full = L::new().file("big", &"z".repeat(10_000)).bytes();
    let cut = &full[..512 + 3000];
    assert!(matches!(
        apply(&t, cut, layer_opts()),
        Err(LayerError::Read(_))
    ));
    let (_d2, t2) = new_tree();
    let header_cut = &full[..300];
    assert!(apply(&t2, header_cut, layer_opts()).is_err());
}

#[test]
fn pax_xattrs_and_ids() {
    let (_d, t) = new_tree();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.test", b"hello".as_slice()),
        ("uid", b"70000".as_slice()),
    ])
    .expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path("f").expect("path");
    h.set_size(1);
    h.set_mode(0o4755);
    h.set_gid(5);
    h.set_cksum();
    b.append(&h, &b"x"[..]).expect("append");
    apply(&t, &b.into_inner().expect("tar")[..], layer_opts()).expect("apply");
    let m = std::fs::metadata(t.join("f")).expect("f");
    assert_eq!((m.uid(), m.mode() & 0o7777), (70000, 0o4755));
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(t.join("f"), "user.test", &mut buf[..]).expect("lgetxattr");
    assert_eq!(&buf[..n], b"hello");
}

#[test]
fn clean_paths() {
    let c = |s: &str| clean_path(s.as_bytes()).map(|v| join(&v));
    assert_eq!(c("./a//b/./c/"), Ok(b"a/b/c".to_vec()));
    assert_eq!(c("/a/b/../c"), Ok(b"a/c".to_vec()));
    assert_eq!(c("./"), Ok(Vec::new()));
    assert!(c("..").is_err());
    assert!(c("a/../..").is_err());
}

/// Issue 12 bug 1: a PAX value holding a newline (a file capability is `01 00 00 02 0a ...`)
/// is one record (records are length-prefixed), and records after it still apply.
#[test]
fn pax_binary_xattr_values_with_newlines() {
    let (_d, t) = new_tree();
    let cap: &[u8] = b"\x01\x00\x00\x02\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
    let long = format!("{}f", "dir/".repeat(30));
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.user.cap", cap),
        ("SCHILY.xattr.user.lines", b"x\n9 uid=1\n".as_slice()),
        ("path", long.as_bytes()),
        ("uid", b"4242".as_slice()),
    ])
    .expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path("short").expect("path");
    h.set_size(2);
    h.set_mode(0o640);
    h.set_cksum();
    b.append(&h, &b"hi"[..]).expect("append");
    apply(&t, &b.into_inner().expect("tar")[..], layer_opts()).expect("apply");
    let f = t.join(&long);
    assert_eq!(std::fs::read(&f).expect("read"), b"hi");
    assert_eq!(std::fs::metadata(&f).expect("stat").uid(), 4242);
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(&f, "user.cap", &mut buf[..]).expect("user.cap");
    assert_eq!(&buf[..n], cap);
    let n = rustix::fs::lgetxattr(&f, "user.lines", &mut buf[..]).expect("user.lines");
    assert_eq!(&buf[..n], b"x\n9 uid=1\n");
}

fn dir_with_xattr(name: &str, key: &str, value: &str) -> L {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([(key, value.as_bytes())])
        .expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("path");
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_cksum();
    b.append(&h, io::empty()).expect("append");
    L(b)
}

/// Directory xattrs are set once all layers are written (issue 12 bug 5), as the last entry
/// for the directory had them; a removed or replaced directory's are dropped.
#[test]
fn directory_xattrs_wait_for_the_last_layer() {
    let (_d, t) = new_tree();
    let mut dirs = DirMeta::default();
    let layers = [
        dir_with_xattr("kept/", "SCHILY.xattr.user.k", "1")
            .dir("kept/sub/")
            .file("kept/f", "x"),
        dir_with_xattr("gone/", "SCHILY.xattr.user.g", "1"),
        dir_with_xattr("retyped/", "SCHILY.xattr.user.r", "1"),
        dir_with_xattr("kept/", "SCHILY.xattr.user.k", "2")
            .file(".wh.gone", "")
            .file("retyped", "now a file")
            .dir("gone/"),
    ];
    for (i, l) in layers.into_iter().enumerate() {
        apply_layer(&t, &l.bytes()[..], layer_opts(), &mut dirs).expect("layer");
        if i == 0 {
            let mut buf = [0u8; 8];
            assert!(rustix::fs::lgetxattr(t.join("kept"), "user.k", &mut buf[..]).is_err());
        }
    }
    dirs.finish(&t).expect("finish");
    let get = |p: &str, k: &str| {
        let mut buf = [0u8; 8];
        rustix::fs::lgetxattr(t.join(p), k, &mut buf[..])
            .ok()
            .map(|n| buf[..n].to_vec())
    };
    assert_eq!(get("kept", "user.k"), Some(b"2".to_vec()));
    assert_eq!(get("gone", "user.g"), None);
    assert_eq!(get("retyped", "user.r"), None);
    assert_eq!(get("kept/sub", "user.k"), None);
}

/// A whiteout hides the lower layers' entry, never one added earlier in its own layer
/// (issue 12 bug 8); of a directory the layer wrote into, the lower contents go.
#[test]
fn whiteouts_spare_what_their_own_layer_wrote() {
    let (_d, t) = new_tree();
    apply_l(&t, L::new().file("a", "lower").dir("d/").file("d/old", "1")).expect("lower");
    apply_l(
        &t,
        L::new()
            .file("new", "mine")
            .file(".wh.new", "")
            .file("d/mine", "2")
            .file(".wh.d", "")
            .file(".wh.a", ""),
    )
    .expect("upper");
    assert_eq!(names(&t), ["d", "new"]);
    assert_eq!(names(&t.join("d")), ["mine"]);
}

/// Appends an entry whose mtime is the PAX record `mtime` (seconds with a fraction).
fn timed(mut l: L, name: &str, kind: tar::EntryType, link: Option<&str>, mtime: &str) -> L {
    l.0.append_pax_extensions([("mtime", mtime.as_bytes())])
        .expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("path");
    if let Some(t) = link {
        h.set_link_name(t).expect("link");
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_mtime(1);
    h.set_size(0);
    h.set_cksum();
    l.0.append(&h, io::empty()).expect("append");
    l
}

fn mtime_of(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).expect("lstat");
    (m.mtime(), m.mtime_nsec())
}

/// Issue 12, real mtimes: every kind of entry keeps the mtime its tar header gives, PAX
/// nanoseconds included; a symlink's own time is set, not its target's.
#[test]
fn entries_keep_their_tar_mtimes_with_nanoseconds() {
    use tar::EntryType as T;
    let (_d, t) = new_tree();
    let mut l = L::new();
    for (name, kind, link, mtime) in [
        ("./", T::Directory, None, "1000000000.5"),
        ("d/", T::Directory, None, "1100000000.25"),
        ("d/f", T::Regular, None, "1200000000.123456789"),
        ("d/l", T::Symlink, Some("f"), "1300000000.000000001"),
        ("fifo", T::Fifo, None, "1400000000.9"),
        ("chr", T::Char, None, "1450000000.1"),
        ("old", T::Regular, None, "-5.5"),
        ("future", T::Regular, None, "99999999999.5"),
    ] {
        l = timed(l, name, kind, link, mtime);
    }
    apply_l(&t, l.hardlink("d/hl", "d/f")).expect("apply");
    assert_eq!(mtime_of(&t), (1_000_000_000, 500_000_000));
    assert_eq!(mtime_of(&t.join("d")), (1_100_000_000, 250_000_000));
    assert_eq!(mtime_of(&t.join("d/f")), (1_200_000_000, 123_456_789));
    assert_eq!(mtime_of(&t.join("d/hl")), (1_200_000_000, 123_456_789));
    assert_eq!(mtime_of(&t.join("d/l")), (1_300_000_000, 1));
    assert_eq!(mtime_of(&t.join("fifo")), (1_400_000_000, 900_000_000));
    assert_eq!(mtime_of(&t.join("chr")), (1_450_000_000, 100_000_000));
    // Bounded: before 1970 is the epoch, after 2446-05-10 is that day (ext4's last).
    assert_eq!(mtime_of(&t.join("old")), (0, 0));
    assert_eq!(mtime_of(&t.join("future")), (mtime::MAX_SECS, 0));
}

/// A directory keeps its entry's mtime though children are written after it, later layers
/// add to it and whiteouts (plain and opaque) remove from it, as `umoci unpack` leaves it;
/// a directory no entry describes (and a root without `./`) has the epoch.
#[test]
fn directory_mtimes_survive_later_children_layers_and_whiteouts() {
    use tar::EntryType as T;
    let (_d, t) = new_tree();
    let mut dirs = DirMeta::default();
    let lower = timed(L::new(), "a/", T::Directory, None, "1500000000.5")
        .file("a/x", "1")
        .file("a/y", "2")
        .file("implicit/deep/f", "3");
    let lower = timed(lower, "o/", T::Directory, None, "1510000000.75").file("o/old", "4");
    let lower = timed(lower, "keep/", T::Directory, None, "1520000000")
        .file("keep/k", "5")
        .file("gone/z", "6");
    // The upper layer changes a/ and o/ without entries of their own; keep/ is re-described.
    let upper = L::new()
        .file("a/.wh.x", "")
        .file("a/new", "7")
        .file("o/.wh..wh..opq", "")
        .file("o/fresh", "8")
        .file(".wh.gone", "");
    let upper = timed(upper, "keep/", T::Directory, None, "1530000000.125").file("keep/more", "9");
    for l in [lower, upper] {
        apply_layer(&t, &l.bytes()[..], layer_opts(), &mut dirs).expect("layer");
    }
    dirs.finish(&t).expect("finish");
    assert_eq!(names(&t.join("a")), ["new", "y"]);
    assert_eq!(mtime_of(&t.join("a")), (1_500_000_000, 500_000_000));
    assert_eq!(mtime_of(&t.join("o")), (1_510_000_000, 750_000_000));
    assert_eq!(mtime_of(&t.join("keep")), (1_530_000_000, 125_000_000));
    assert_eq!(mtime_of(&t.join("implicit")), (mtime::IMPLICIT_DIR_SECS, 0));
    assert_eq!(
        mtime_of(&t.join("implicit/deep")),
        (mtime::IMPLICIT_DIR_SECS, 0)
    );
    assert_eq!(mtime_of(&t), (mtime::IMPLICIT_DIR_SECS, 0));
    // Files keep theirs (L's entries are 1_600_000_000).
    assert_eq!(mtime_of(&t.join("a/new")), (1_600_000_000, 0));
}

/// A directory removed and made again (implicitly) by a later layer does not keep the
/// removed one's time.
#[test]
fn a_directory_made_again_starts_afresh() {
    use tar::EntryType as T;
    let (_d, t) = new_tree();
    let mut dirs = DirMeta::default();
    let lower = timed(L::new(), "r/", T::Directory, None, "1500000000").file("r/f", "1");
    let upper = L::new().file(".wh.r", "");
    let top = L::new().file("r/g", "2");
    for l in [lower, upper, top] {
        apply_layer(&t, &l.bytes()[..], layer_opts(), &mut dirs).expect("layer");
    }
    dirs.finish(&t).expect("finish");
    assert_eq!(names(&t.join("r")), ["g"]);
    assert_eq!(mtime_of(&t.join("r")), (mtime::IMPLICIT_DIR_SECS, 0));
}
