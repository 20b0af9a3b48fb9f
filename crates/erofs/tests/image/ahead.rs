//! Listing ahead: the subdirectories of a listed directory are listed by a thread of the
//! image's (`erofs-ahead`), so a cold walk finds their metadata read or on its way.

use std::time::{Duration, Instant};

use imagefs_erofs::FileKind;

use super::fixture::{Scratch, open};

/// Threads of this process named `erofs-ahead`.
fn ahead_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "erofs-ahead")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn listing_a_directory_lists_its_subdirectories_ahead() {
    let Some(t) = Scratch::small_tree("listing_a_directory_lists_its_subdirectories_ahead") else {
        return;
    };
    let img = open(&t.mkfs("ahead.erofs", &["-zlz4"]));
    let mut dirs = 0;
    img.readdir(img.root(), 0, |e| {
        dirs += usize::from(e.kind == Some(FileKind::Directory));
        true
    })
    .expect("readdir /");
    assert!(dirs > 0, "the tree has subdirectories");
    // The thread stays a second after its last work: it is seen well before that.
    let deadline = Instant::now() + Duration::from_secs(1);
    while ahead_threads() == 0 {
        assert!(
            Instant::now() < deadline,
            "no erofs-ahead thread listed the subdirectories"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The walk itself is unchanged: every subdirectory still lists.
    let mut listed = 0;
    img.readdir(img.root(), 0, |e| {
        if e.kind == Some(FileKind::Directory) {
            img.readdir(e.nid, 0, |_| true)
                .expect("readdir of a subdirectory");
            listed += 1;
        }
        true
    })
    .expect("readdir /");
    assert_eq!(listed, dirs);
}
