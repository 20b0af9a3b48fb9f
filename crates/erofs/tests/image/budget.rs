//! One cache budget shared by several images: reads stay correct while entries are
//! evicted, the budget is never exceeded, and closed images leave it.

use std::fs::File;
use std::sync::Arc;

use imagefs_erofs::{CacheBudget, Image};

use super::fixture::{Scratch, open};
use super::threads::all_files;

#[test]
fn a_small_shared_budget_evicts_and_reads_stay_correct() {
    let Some(t) = Scratch::small_tree("a_small_shared_budget_evicts_and_reads_stay_correct") else {
        return;
    };
    // Big pclusters (extents split by reads, so cached), plain lz4, tail-packing.
    let variants: [&[&str]; 3] = [
        &["-zlz4hc", "-C16384"],
        &["-zlz4"],
        &["-zlz4hc", "-Eztailpacking"],
    ];
    let paths: Vec<_> = variants
        .iter()
        .enumerate()
        .map(|(i, args)| t.mkfs(&format!("img{i}.erofs"), args))
        .collect();
    let want: Vec<_> = paths
        .iter()
        .map(|p| all_files(&open(p), 128 << 10))
        .collect();

    let budget = Arc::new(CacheBudget::new(256 << 10));
    let images: Vec<Image> = paths
        .iter()
        .map(|p| Image::open_in(File::open(p).expect("open"), &budget).expect("Image::open_in"))
        .collect();
    for chunk in [10_007usize, 4096, 128 << 10] {
        for (img, want) in images.iter().zip(&want) {
            assert!(
                all_files(img, chunk) == *want,
                "reads differ with chunk {chunk}"
            );
            assert!(
                budget.used() <= budget.bytes(),
                "{} bytes cached, budget {}",
                budget.used(),
                budget.bytes()
            );
        }
    }
    assert!(budget.used() > 0, "the images cache something");
    // An image closed leaves the budget; the others still read right.
    let mut images = images;
    let first = images.remove(0);
    drop(first);
    for (img, want) in images.iter().zip(&want[1..]) {
        assert!(
            all_files(img, 10_007) == *want,
            "reads differ after a close"
        );
    }
    drop(images);
    assert_eq!(budget.used(), 0, "every image closed: nothing cached");
}
