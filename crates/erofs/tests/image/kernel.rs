//! Differential tests: our reader against the kernel's erofs mount.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use imagefs_erofs::testing::Need;
use imagefs_erofs::{FileKind, Image, Nid};

use super::fixture::{Scratch, open, random_bytes};

/// What a differential test needs: a tree with devices and owners, mkfs, a kernel mount.
const NEEDS: &[Need] = &[Need::Root, Need::MkfsErofs, Need::KernelErofs];

/// Kernel xattrs of `p` (no follow), sorted by name.
fn kernel_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    use rustix::fs::{lgetxattr, lgetxattr_query, llistxattr, llistxattr_query};
    let n = llistxattr_query(p).unwrap_or_else(|e| panic!("llistxattr {p:?}: {e}"));
    let mut names = vec![0u8; n];
    let n = llistxattr(p, &mut names[..]).expect("llistxattr");
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name).expect("name");
        let what = || format!("lgetxattr {p:?} {:?}", String::from_utf8_lossy(name));
        let vn = lgetxattr_query(p, cn.as_c_str()).unwrap_or_else(|e| panic!("{}: {e}", what()));
        let mut v = vec![0u8; vn];
        let vn =
            lgetxattr(p, cn.as_c_str(), &mut v[..]).unwrap_or_else(|e| panic!("{}: {e}", what()));
        v.truncate(vn);
        out.push((name.to_vec(), v));
    }
    out.sort();
    out
}

#[derive(Default, Debug)]
pub struct Stats {
    pub entries: usize,
    pub bytes: u64,
    pub xattrs: usize,
}

/// The kind the kernel shows, from std's file type (not the mode bits the reader decodes).
fn kind_of(md: &fs::Metadata) -> FileKind {
    let t = md.file_type();
    [
        (t.is_file(), FileKind::Regular),
        (t.is_dir(), FileKind::Directory),
        (t.is_symlink(), FileKind::Symlink),
        (t.is_char_device(), FileKind::CharDevice),
        (t.is_block_device(), FileKind::BlockDevice),
        (t.is_fifo(), FileKind::Fifo),
    ]
    .into_iter()
    .find_map(|(is, kind)| is.then_some(kind))
    .unwrap_or(FileKind::Socket)
}

fn compare_attrs(img: &Image, nid: Nid, p: &Path, st: &mut Stats) {
    let md = fs::symlink_metadata(p).expect("kernel stat");
    let ours = img
        .inode(nid)
        .unwrap_or_else(|e| panic!("inode {p:?}: {e}"));
    let ctx = format!("{p:?}");
    assert_eq!(ours.ino, md.ino(), "ino {ctx}");
    assert_eq!(ours.mode, md.mode(), "mode {ctx}");
    assert_eq!(ours.kind, kind_of(&md), "kind {ctx}");
    assert_eq!(ours.uid, md.uid(), "uid {ctx}");
    assert_eq!(ours.gid, md.gid(), "gid {ctx}");
    assert_eq!(ours.size, md.size(), "size {ctx}");
    assert_eq!(ours.mtime, md.mtime(), "mtime {ctx}");
    assert_eq!(
        i64::from(ours.mtime_nsec),
        md.mtime_nsec(),
        "mtime_nsec {ctx}"
    );
    assert_eq!(u64::from(ours.nlink), md.nlink(), "nlink {ctx}");
    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    let our_maj = (ours.rdev & 0xfff00) >> 8;
    let our_min = (ours.rdev & 0xff) | ((ours.rdev >> 12) & 0xfff00);
    assert_eq!((our_maj, our_min), (maj, min), "rdev {ctx}");
    assert_eq!(ours.blocks, md.blocks(), "blocks {ctx}");
    let mut x = img
        .xattrs(nid)
        .unwrap_or_else(|e| panic!("xattrs {ctx}: {e}"));
    x.sort();
    assert_eq!(x, kernel_xattrs(p), "xattrs {ctx}");
    st.xattrs += x.len();
    match ours.kind {
        FileKind::Regular => {
            let want = fs::read(p).expect("kernel read");
            let mut got = Vec::with_capacity(want.len());
            let mut buf = vec![0u8; 128 * 1024];
            loop {
                let n = img
                    .read(nid, got.len() as u64, &mut buf)
                    .unwrap_or_else(|e| panic!("read {ctx}: {e}"));
                if n == 0 {
                    break;
                }
                assert!(
                    n == buf.len() || got.len() + n == want.len(),
                    "short read {ctx}"
                );
                got.extend_from_slice(&buf[..n]);
            }
            if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
                panic!(
                    "content {ctx}: first difference at byte {i} of {}",
                    want.len()
                );
            }
            assert!(got == want, "content {ctx}");
            // Odd-sized reads at odd offsets across extent boundaries.
            let r = random_bytes(md.ino(), 64);
            for k in 0..4 {
                if want.is_empty() {
                    break;
                }
                let off = u64::from(r[k * 8]) * 997 * u64::from(r[k * 8 + 1]) % want.len() as u64;
                let len = 1 + (usize::from(r[k * 8 + 2]) * 1013) % 70_000;
                let mut b = vec![0u8; len];
                let n = img.read(nid, off, &mut b).expect("read at");
                let end = (off as usize + len).min(want.len());
                assert_eq!(n, end - off as usize, "read_at len {ctx}");
                assert!(
                    b[..n] == want[off as usize..end],
                    "read_at content {ctx} off {off} len {len}"
                );
            }
            st.bytes += want.len() as u64;
        }
        FileKind::Symlink => {
            let t = fs::read_link(p).expect("kernel readlink");
            assert_eq!(
                img.readlink(nid).expect("readlink"),
                t.as_os_str().as_bytes(),
                "target {ctx}"
            );
        }
        _ => {}
    }
}

fn walk(img: &Image, nid: Nid, p: &Path, st: &mut Stats) {
    let mut kernel: Vec<Vec<u8>> = fs::read_dir(p)
        .expect("kernel readdir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    kernel.sort();
    let mut ours = Vec::new();
    img.readdir(nid, 0, |e| {
        ours.push((e.name.to_vec(), e.nid, e.kind));
        true
    })
    .unwrap_or_else(|e| panic!("readdir {p:?}: {e}"));
    let names: Vec<Vec<u8>> = ours.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(names, kernel, "listing {p:?}");
    for (name, child, kind) in ours {
        st.entries += 1;
        assert_eq!(
            img.lookup(nid, &name).expect("lookup"),
            Some(child),
            "lookup {p:?}/{name:?}"
        );
        let mut miss = name.clone();
        miss.push(1);
        assert_eq!(img.lookup(nid, &miss).expect("lookup miss"), None);
        let cp = p.join(std::ffi::OsStr::from_bytes(&name));
        compare_attrs(img, child, &cp, st);
        let ik = img.inode(child).expect("inode").kind;
        assert_eq!(kind, Some(ik), "dirent type {cp:?}");
        if ik == FileKind::Directory {
            walk(img, child, &cp, st);
        }
    }
    for bad in [&b"."[..], b"..", b"", b"a/b"] {
        assert_eq!(img.lookup(nid, bad).expect("lookup bad"), None);
    }
}

/// Build, mkfs with `args`, mount, and compare everything.
fn differential(tag: &str, args: &[&str]) {
    let Some(t) = Scratch::new(NEEDS, &format!("kernel differential {tag}")) else {
        return;
    };
    t.tree(true, true);
    let img_path = t.mkfs("img.erofs", args);
    let mnt = t.mount(&img_path);
    let img = open(&img_path);
    let mut st = Stats::default();
    compare_attrs(&img, img.root(), &mnt.dir, &mut st);
    walk(&img, img.root(), &mnt.dir, &mut st);
    assert!(st.entries > 5000 && st.xattrs > 20, "{st:?}");
    readdir_resume(&img, &mnt.dir);
    eprintln!("{tag}: {st:?} identical to kernel");
}

/// Readdir resumed at every returned offset (and at arbitrary ones) in the big dir.
fn readdir_resume(img: &Image, mnt: &Path) {
    let many = img
        .lookup(img.root(), b"many")
        .expect("lookup")
        .expect("many");
    let mut full = Vec::new();
    img.readdir(many, 0, |e| {
        full.push((e.name.to_vec(), e.offset));
        true
    })
    .expect("readdir");
    assert_eq!(
        full.len(),
        fs::read_dir(mnt.join("many")).expect("rd").count()
    );
    assert!(full.iter().all(|(_, o)| *o >= 12));
    // Resume after every entry (stride 1..=3 stops).
    for k in (0..full.len()).step_by(97) {
        let mut rest = Vec::new();
        img.readdir(many, full[k].1, |e| {
            rest.push(e.name.to_vec());
            true
        })
        .expect("resume");
        let want: Vec<Vec<u8>> = full[k + 1..].iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(rest, want, "resume after {k}");
    }
    // Paged iteration, 7 at a time, reproduces the listing.
    let mut paged = Vec::new();
    let mut off = 0;
    loop {
        let mut got = 0;
        img.readdir(many, off, |e| {
            paged.push(e.name.to_vec());
            off = e.offset;
            got += 1;
            got < 7
        })
        .expect("page");
        if got == 0 {
            break;
        }
    }
    let names: Vec<Vec<u8>> = full.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(paged, names);
    // Arbitrary offsets never panic; entries returned are a suffix of the listing.
    let pos: BTreeMap<Vec<u8>, usize> = names
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect();
    for o in random_bytes(5, 800).chunks(8) {
        let off = u64::from_le_bytes(o.try_into().expect("8")) % (1 << 20);
        let mut first = None;
        let mut count = 0;
        let _ = img.readdir(many, off, |e| {
            first.get_or_insert(pos[e.name]);
            count += 1;
            true
        });
        if let Some(f) = first {
            assert_eq!(f + count, names.len(), "suffix from offset {off}");
        }
    }
}

#[test]
fn kernel_plain() {
    differential("plain", &[]);
}

#[test]
fn kernel_lz4() {
    differential("lz4", &["-zlz4"]);
}

#[test]
fn kernel_lz4hc() {
    differential("lz4hc", &["-zlz4hc"]);
}

#[test]
fn kernel_lz4_big_pcluster() {
    differential("lz4 -C65536", &["-zlz4hc", "-C65536"]);
}

#[test]
fn kernel_lz4_legacy_index() {
    differential("lz4 legacy", &["-zlz4", "-Elegacy-compress"]);
}

#[test]
fn kernel_lz4_ztailpacking() {
    differential("lz4 ztailpacking", &["-zlz4hc", "-Eztailpacking"]);
}

#[test]
fn kernel_lz4_big_legacy_ztail() {
    differential(
        "lz4 legacy big ztail",
        &["-zlz4", "-C16384", "-Elegacy-compress,ztailpacking"],
    );
}

#[test]
fn kernel_plain_compact_inodes() {
    differential(
        "compact inodes",
        &[
            "-Eforce-inode-compact",
            "-T1234567890",
            "--force-uid=1000",
            "--force-gid=1000",
        ],
    );
}

#[test]
fn kernel_plain_extended_noinline() {
    differential(
        "extended noinline",
        &["-Eforce-inode-extended,noinline_data"],
    );
}

#[test]
fn kernel_chunked() {
    differential("chunked", &["--chunksize=8192"]);
}

/// Multi-MB extents (lz4hc with 1 MiB pclusters on zeros and text).
#[test]
fn kernel_lz4_huge_extents() {
    let Some(t) = Scratch::new(NEEDS, "kernel_lz4_huge_extents") else {
        return;
    };
    let src = t.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("zeros"), vec![0u8; 40 << 20]).expect("write");
    let text: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| format!("{} ", i % 1000).into_bytes())
        .collect();
    fs::write(src.join("text"), &text).expect("write");
    let img_path = t.mkfs("img.erofs", &["-zlz4hc", "-C1048576"]);
    let mnt = t.mount(&img_path);
    let img = open(&img_path);
    let mut st = Stats::default();
    walk(&img, img.root(), &mnt.dir, &mut st);
    assert_eq!(st.entries, 2);
}
