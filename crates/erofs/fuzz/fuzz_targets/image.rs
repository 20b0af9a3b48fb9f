//! Opens arbitrary bytes as an erofs image and walks it: the root, every
//! directory entry recursively (at most `BUDGET` inodes), each inode's
//! attributes and xattrs, lookups and resumed listings, symlink targets, and
//! reads of file data. Errors are fine; a panic, a hang or an unbounded
//! allocation is a finding.

#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use imagefs_erofs::Image;
use imagefs_erofs::testing::walk_all;
use libfuzzer_sys::fuzz_target;

/// Inodes visited per input.
const BUDGET: u64 = 512;

/// One scratch file, rewritten for every input: the reader reads a `File`
/// with `pread`, as it does in imagefs.
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| tempfile::tempfile().expect("scratch file"))
}

fuzz_target!(|data: &[u8]| {
    let f = scratch();
    f.set_len(0).expect("truncate scratch file");
    f.write_all_at(data, 0).expect("write scratch file");
    let Ok(img) = Image::open(f.try_clone().expect("dup scratch file")) else {
        return;
    };
    let mut budget = BUDGET;
    walk_all(&img, &mut budget);
});
