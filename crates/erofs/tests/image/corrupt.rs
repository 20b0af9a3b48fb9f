//! Mutation test: corrupted and truncated images must give errors, never
//! panics, hangs or unbounded allocations. Bounded in time.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use imagefs_erofs::Image;
use imagefs_erofs::testing::{Need, mutation_targets, walk_all};

use super::fixture::Scratch;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// An anonymous in-memory file holding `bytes`.
fn memfile(bytes: &[u8]) -> File {
    let fd = rustix::fs::memfd_create("imagefs-fuzz", rustix::fs::MemfdFlags::CLOEXEC)
        .expect("memfd_create");
    let mut f = File::from(fd);
    f.write_all(bytes).expect("write memfd");
    f
}

fn fuzz_image(base: &[u8], seed: u64, deadline: Instant, min_iters: usize) -> usize {
    let clean = Image::open(memfile(base)).expect("clean image opens");
    let mut budget = u64::MAX;
    let w = walk_all(&clean, &mut budget);
    assert!(
        w.inodes > 10 && w.errors == 0,
        "clean image: {} inodes, {} errors",
        w.inodes,
        w.errors
    );
    let targets = mutation_targets(&clean, base.len());
    let mut rng = Rng(seed);
    let mut iters = 0;
    let mut opened = 0;
    let mut erred = 0;
    while iters < min_iters || Instant::now() < deadline {
        let mut img = base.to_vec();
        let muts = 1 + rng.below(6);
        for _ in 0..muts {
            let (start, span) = if rng.below(4) == 0 {
                (0, img.len() as u64)
            } else {
                targets[rng.below(targets.len() as u64) as usize]
            };
            let pos = (start + rng.below(span)) as usize;
            if pos >= img.len() {
                continue;
            }
            match rng.below(5) {
                0 => img[pos] ^= 1 << rng.below(8),
                1 => img[pos] = rng.next() as u8,
                2 => img[pos] = [0, 0xff, 0x7f, 0x80][rng.below(4) as usize],
                3 => {
                    for b in img.iter_mut().skip(pos).take(1 + rng.below(16) as usize) {
                        *b = rng.next() as u8;
                    }
                }
                _ => {
                    let cut = rng.below(img.len() as u64) as usize;
                    img.truncate(cut.max(pos));
                }
            }
        }
        let t = Instant::now();
        let result = std::panic::catch_unwind(|| {
            if let Ok(image) = Image::open(memfile(&img)) {
                let mut budget = 3000;
                Some(walk_all(&image, &mut budget).errors)
            } else {
                None
            }
        });
        match result {
            Ok(Some(e)) => {
                opened += 1;
                erred += usize::from(e > 0);
            }
            Ok(None) => {}
            Err(_) => {
                let path = std::env::temp_dir().join(format!("imagefs-crash-{seed}-{iters}.erofs"));
                let _ = std::fs::write(&path, &img);
                panic!(
                    "panic on mutated image (seed {seed}, iteration {iters}), saved to {path:?}"
                );
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "iteration {iters} too slow"
        );
        iters += 1;
    }
    eprintln!(
        "seed {seed}: {iters} mutated images, {opened} opened and walked, {erred} of those gave errors"
    );
    iters
}

#[test]
fn corrupted_images_never_panic() {
    let Some(t) = Scratch::small_tree("corrupted_images_never_panic") else {
        return;
    };
    let budget: u64 = std::env::var("IMAGEFS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let variants: &[&[&str]] = &[
        &[],
        &["-zlz4"],
        &["-zlz4hc", "-C16384", "-Eztailpacking"],
        &["-zlz4", "-Elegacy-compress"],
        &[
            "--chunksize=8192",
            "-Eforce-inode-compact",
            "--force-uid=1",
            "--force-gid=1",
        ],
    ];
    let per = Duration::from_secs(budget) / variants.len() as u32;
    let mut total = 0;
    for (i, args) in variants.iter().enumerate() {
        let p = t.mkfs(&format!("v{i}.erofs"), args);
        let base = std::fs::read(&p).expect("read image");
        total += fuzz_image(
            &base,
            0x9e37_79b9_7f4a_7c15 ^ i as u64,
            Instant::now() + per,
            400,
        );
    }
    assert!(total >= 2000, "only {total} mutations ran");
}

/// A cut LZ4 pcluster is an error when read, never other bytes passed off as the file's
/// (nor a panic): each data block of a one-file image in turn has its stream's last
/// bytes cut (the block shifted right behind more zero padding, as a truncated pcluster
/// looks with 0-padding), and every read of the file must give its bytes or an error.
#[test]
fn cut_lz4_pclusters_are_errors() {
    let Some(t) = Scratch::new(
        &[Need::Root, Need::MkfsErofs],
        "cut_lz4_pclusters_are_errors",
    ) else {
        return;
    };
    let src = t.path("src");
    std::fs::create_dir_all(&src).expect("mkdir src");
    // Compressible but unique per block (no two pclusters alike): numbered lines.
    let data: Vec<u8> = (0..6000)
        .flat_map(|i: u32| format!("line {i} of the lz4 pcluster test {}\n", i * 7919).into_bytes())
        .collect();
    std::fs::write(src.join("f"), &data).expect("write f");
    let base = std::fs::read(t.mkfs("lz4.erofs", &["-zlz4", "-T0"])).expect("read image");
    let clean = Image::open(memfile(&base)).expect("clean image opens");
    let nid = clean
        .lookup(clean.root(), b"f")
        .expect("lookup f")
        .expect("f exists");
    let read_all = |img: &Image| -> Result<Vec<u8>, imagefs_erofs::ImageError> {
        let mut out = vec![0u8; data.len() + 1];
        let n = img.read(nid, 0, &mut out)?;
        out.truncate(n);
        Ok(out)
    };
    assert_eq!(read_all(&clean).expect("clean read"), data);
    // Data blocks: those no metadata lies in.
    let meta = mutation_targets(&clean, base.len());
    let bs = 4096usize;
    let mut cut_errors = 0;
    for blk in 1..base.len() / bs {
        let (lo, hi) = ((blk * bs) as u64, ((blk + 1) * bs) as u64);
        if meta.iter().any(|&(s, l)| s < hi && s + l > lo) {
            continue;
        }
        // A block stored uncompressed (the file's tail here) cannot tell cut from whole.
        let head = &base[blk * bs..blk * bs + 64];
        if data.windows(64).any(|w| w == head) {
            continue;
        }
        for cut in [1usize, 7, 100] {
            let mut img = base.clone();
            let block = &mut img[blk * bs..(blk + 1) * bs];
            block.copy_within(..bs - cut, cut);
            block[..cut].fill(0);
            let image = Image::open(memfile(&img)).expect("mutated image opens");
            match read_all(&image) {
                Ok(got) => assert!(
                    got == data,
                    "block {blk} cut by {cut}: the read gave other bytes, not an error"
                ),
                Err(_) => cut_errors += 1,
            }
        }
    }
    assert!(
        cut_errors >= 30,
        "only {cut_errors} cut pclusters were detected"
    );
}
