//! Listings of `tags/` directories and `digests/`: the first READDIRPLUS reply leaves the
//! tags and digests to READDIR, so that a listing makes no inode per entry (issue 13).

use std::ffi::OsStr;

use fuser::FileType;

use super::{Fx, Mount};
use crate::fs::ImageFs;
use crate::fs::inodes::{DIGESTS, TAGS};
use crate::store::tests::fixture::hex;

/// One READDIRPLUS reply from `offset`: (name, next offset).
fn plus(fs: &ImageFs, dir: u64, offset: u64) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    fs.readdirplus(dir, offset, |next, name, _, _| {
        v.push((name.to_string_lossy().into_owned(), next));
        false
    })
    .expect("readdirplus");
    v
}

/// One READDIR reply from `offset`: (name, kind, number).
fn plain(fs: &ImageFs, dir: u64, offset: u64) -> Vec<(String, FileType, u64)> {
    let mut v = Vec::new();
    fs.readdir(dir, offset, |ino, _, kind, name| {
        v.push((name.to_string_lossy().into_owned(), kind, ino));
        false
    })
    .expect("readdir");
    v
}

fn names<T>(v: &[(String, T)]) -> Vec<&str> {
    v.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn the_first_readdirplus_of_tags_and_digests_hands_out_no_tag_and_no_digest() {
    let fx = Fx::new();
    fx.content(1, "ready").content(2, "ready");
    for t in ["a", "b", "c"] {
        fx.ctag("h.io/r", t, 1);
    }
    fx.ctag("h.io/r/sub", "v", 2);
    let m = Mount::new(&fx);
    let fs = &m.fs;
    let lookup = |parent, name: &str| {
        fs.lookup(parent, OsStr::new(name))
            .map(|(a, _)| a.ino.0)
            .unwrap_or_else(|e| panic!("lookup {name}: {}", e.reason))
    };
    let repo = lookup(lookup(TAGS, "h.io"), "r");
    let held = || fs.inodes.lock().len();
    let before = held();

    // `.`, `..` and the subdirectory: one inode, the subdirectory's.
    let first = plus(fs, repo, 0);
    assert_eq!(names(&first), [".", "..", "sub"]);
    assert_eq!(held(), before + 1);
    // The rest by READDIR, from where it stopped: names, kinds and numbers, nothing held.
    let rest = plain(fs, repo, first[2].1);
    let got: Vec<_> = rest.iter().map(|(n, k, _)| (n.as_str(), *k)).collect();
    let link = FileType::Symlink;
    assert_eq!(got, [("a", link), ("b", link), ("c", link)]);
    assert!(rest.iter().all(|(_, _, ino)| *ino != 0));
    assert_eq!(held(), before + 1);
    // A READDIRPLUS mid-listing (the kernel sends one after a LOOKUP in the directory)
    // still answers the tags, with their inodes.
    assert_eq!(names(&plus(fs, repo, first[2].1)), ["a", "b", "c"]);
    assert_eq!(held(), before + 4);
    // A reply from offset 1 (only `..` read so far) is never empty.
    assert_eq!(names(&plus(fs, repo, 1)), ["..", "sub"]);

    // digests/: `.` and `..` only, then its entries by READDIR; none held (an inode of
    // digests/<hex> holds the digest's image).
    let before = held();
    let first = plus(fs, DIGESTS, 0);
    assert_eq!(names(&first), [".", ".."]);
    let rest: Vec<String> = plain(fs, DIGESTS, first[1].1)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(rest, [hex(1), hex(2)]);
    assert_eq!(held(), before);
}
