//! Measurements of the reader against the kernel's erofs mount, and a read loop
//! for profiling:
//!
//! ```text
//! cargo run --release -p imagefs-erofs --example bench            # against the kernel
//! cargo run --release -p imagefs-erofs --example bench -- read-loop IMG [PATH [KIB [N [MIB]]]]
//! cargo run --release -p imagefs-erofs --example bench -- walk-loop IMG [N]
//! ```
//!
//! The comparison needs root, `mkfs.erofs` and kernel erofs; it uses
//! `/usr/share` (or `$IMAGEFS_BENCH_TREE`) as the tree and `$IMAGEFS_BENCH_MB`
//! (default 256) MiB of /usr/bin + /usr/lib bytes for the large file.
//! `read-loop` reads file PATH (default `/big`) of image IMG N times (default 5) in reads
//! of KIB KiB (default 128), its first MIB MiB only if given, and prints each pass's wall and CPU time (profiling aid; run
//! it on an image in the page cache to time decoding alone).
//! `walk-loop` lists every directory of image IMG and loads every entry's inode, as the
//! daemon answers a `find` with READDIRPLUS, N times (default 5) through one image (so
//! from its cache after the first pass), and prints each pass's entries, wall and CPU time.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use imagefs_erofs::testing::{Need, need};
use imagefs_erofs::{FileKind, Image, Nid};

#[path = "../tests/image/fixture.rs"]
mod fixture;

use fixture::{Mount, mkfs, open};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => bench_against_kernel(),
        [cmd, img, rest @ ..] if cmd == "read-loop" && rest.len() <= 4 => {
            let path = rest.first().map_or("/big", String::as_str);
            let kib = rest.get(1).map_or(128, |k| k.parse().expect("KIB"));
            let n = rest.get(2).map_or(5, |k| k.parse().expect("N"));
            let limit = rest
                .get(3)
                .map_or(u64::MAX, |m| m.parse::<u64>().expect("MIB") << 20);
            read_loop_for_profiling(Path::new(img), path, kib, n, limit)
        }
        [cmd, img, rest @ ..] if cmd == "walk-loop" && rest.len() <= 1 => {
            let n = rest.first().map_or(5, |k| k.parse().expect("N"));
            walk_loop_for_profiling(Path::new(img), n)
        }
        _ => {
            eprintln!("usage: bench [read-loop IMG [PATH [KIB [N [MIB]]]] | walk-loop IMG [N]]");
            std::process::exit(2);
        }
    }
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Concatenate regular files under `dirs` into `out` until `limit` bytes.
fn make_big(out: &Path, dirs: &[&str], limit: u64) {
    let mut f = fs::File::create(out).expect("create big");
    let mut written = 0u64;
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(Into::into).collect();
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file()
                && let Ok(data) = fs::read(&p)
            {
                {
                    let n = data.len().min((limit - written) as usize);
                    f.write_all(&data[..n]).expect("write");
                    written += n as u64;
                    if written >= limit {
                        return;
                    }
                }
            }
        }
    }
}

fn ours_read_all(img: &Image, nid: Nid, check: bool) -> (u64, u64) {
    ours_read_all_by(img, nid, check, 128 * 1024, u64::MAX)
}

fn ours_read_all_by(img: &Image, nid: Nid, check: bool, chunk: usize, limit: u64) -> (u64, u64) {
    let mut buf = vec![0u8; chunk];
    let (mut off, mut sum) = (0u64, 0u64);
    while off < limit {
        let n = img.read(nid, off, &mut buf).expect("read");
        if n == 0 {
            return (off, sum);
        }
        if check {
            sum = checksum(sum, &buf[..n]);
        }
        off += n as u64;
    }
    (off, sum)
}

/// Cheap order-sensitive checksum (only used in an untimed verification pass).
fn checksum(sum: u64, b: &[u8]) -> u64 {
    b.iter()
        .fold(sum, |s, &x| s.wrapping_mul(31).wrapping_add(u64::from(x)))
}

fn kernel_read_all(p: &Path, check: bool) -> (u64, u64) {
    let mut f = fs::File::open(p).expect("open");
    let mut buf = vec![0u8; 128 * 1024];
    let (mut off, mut sum) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return (off, sum);
        }
        if check {
            sum = checksum(sum, &buf[..n]);
        }
        off += n as u64;
    }
}

/// Lists every directory and loads every entry's inode; with `lookup`, also looks each
/// name up again (a path walk's work; without, a READDIRPLUS walk's).
fn ours_walk(img: &Image, lookup: bool) -> usize {
    let mut stack = vec![img.root()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        let mut kids = Vec::new();
        img.readdir(d, 0, |e| {
            kids.push((e.name.to_vec(), e.nid));
            true
        })
        .expect("readdir");
        for (name, nid) in kids {
            if lookup {
                let found = img.lookup(d, &name).expect("lookup");
                assert_eq!(found, Some(nid));
            }
            let ino = img.inode(nid).expect("inode");
            n += 1;
            if ino.kind == FileKind::Directory {
                stack.push(nid);
            }
        }
    }
    n
}

fn kernel_walk(root: &Path) -> usize {
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("stat");
            n += 1;
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    n
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn bench_against_kernel() {
    if !need(
        &[Need::Root, Need::MkfsErofs, Need::KernelErofs],
        "bench against the kernel",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let bigdir = tmp.path().join("bigsrc");
    fs::create_dir_all(&bigdir).expect("mkdir");
    let mb: u64 = std::env::var("IMAGEFS_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    make_big(&bigdir.join("big"), &["/usr/bin", "/usr/lib"], mb << 20);
    let big_img = tmp.path().join("big.erofs");
    let tree_img = tmp.path().join("tree.erofs");
    let tree_src = std::env::var("IMAGEFS_BENCH_TREE").unwrap_or_else(|_| "/usr/share".into());
    let (_, t) = time(|| mkfs(&big_img, &bigdir, &["-zlz4"]));
    eprintln!(
        "mkfs -zlz4 big file ({mb} MiB): {t:.2}s, image {} MiB",
        fs::metadata(&big_img).expect("md").len() >> 20
    );
    let (_, t) = time(|| mkfs(&tree_img, Path::new(&tree_src), &["-zlz4"]));
    eprintln!("mkfs -zlz4 {tree_src}: {t:.2}s");
    let bm = Mount::new(&big_img, &tmp.path().join("bm"));
    let tm = Mount::new(&tree_img, &tmp.path().join("tm"));
    let kfile = bm.dir.join("big");

    for round in ["cold", "warm"] {
        if round == "cold" {
            drop_caches();
        }
        let (k, tk) = time(|| kernel_read_all(&kfile, false));
        if round == "cold" {
            drop_caches();
        }
        let img = open(&big_img);
        let nid = img
            .lookup(img.root(), b"big")
            .expect("lookup")
            .expect("big");
        let (o, to) = time(|| ours_read_all(&img, nid, false));
        assert_eq!(k.0, o.0, "same length");
        let mbs = |s: f64| k.0 as f64 / s / 1048576.0;
        eprintln!(
            "{round} sequential 128KiB reads of {} MiB lz4 file: kernel {tk:.3}s ({:.0} MiB/s), ours {to:.3}s ({:.0} MiB/s), ratio {:.2}",
            k.0 >> 20,
            mbs(tk),
            mbs(to),
            to / tk
        );
        // Second pass on the same Image (decoded cache warm only for the tail).
        if round == "warm" {
            let (_, to2) = time(|| ours_read_all(&img, nid, false));
            eprintln!("warm, same Image again: ours {to2:.3}s");
        }
    }
    round_trip_cat(&kfile);
    {
        let img = open(&big_img);
        let nid = img
            .lookup(img.root(), b"big")
            .expect("lookup")
            .expect("big");
        assert_eq!(
            ours_read_all(&img, nid, true),
            kernel_read_all(&kfile, true),
            "same content"
        );
    }
    for round in ["cold", "warm"] {
        if round == "cold" {
            drop_caches();
        }
        let (nk, tk) = time(|| kernel_walk(&tm.dir));
        if round == "cold" {
            drop_caches();
        }
        let img = open(&tree_img);
        let (no, to) = time(|| ours_walk(&img, true));
        assert_eq!(nk, no);
        eprintln!(
            "{round} tree walk of {nk} entries: kernel (readdir+lstat) {tk:.3}s, ours (readdir+lookup+inode) {to:.3}s, ratio {:.2}",
            to / tk
        );
    }
}

/// Time `cat FILE > /dev/null` cold, for the record.
fn round_trip_cat(p: &Path) {
    drop_caches();
    let t = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > /dev/null", p.display()))
        .status();
    eprintln!(
        "cold `cat` of the kernel-mounted file: {:.3}s ({st:?})",
        t.elapsed().as_secs_f64()
    );
}

/// Read `/big` of image `p` five times (profiling aid).
fn read_loop_for_profiling(p: &Path, path: &str, kib: usize, passes: usize, limit: u64) {
    let img = open(p);
    let mut nid = img.root();
    for name in path.split('/').filter(|c| !c.is_empty()) {
        nid = img
            .lookup(nid, name.as_bytes())
            .expect("lookup")
            .unwrap_or_else(|| panic!("{path}: no {name}"));
    }
    for _ in 0..passes {
        let c0 = cpu_seconds();
        let ((bytes, _), t) = time(|| ours_read_all_by(&img, nid, false, kib << 10, limit));
        let c = cpu_seconds() - c0;
        eprintln!("{bytes} bytes: {t:.3} s wall, {c:.3} s CPU");
    }
}

fn walk_loop_for_profiling(p: &Path, passes: usize) {
    let img = open(p);
    for _ in 0..passes {
        let c0 = cpu_seconds();
        let (entries, t) = time(|| ours_walk(&img, false));
        let c = cpu_seconds() - c0;
        eprintln!("{entries} entries: {t:.3} s wall, {c:.3} s CPU");
    }
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}
