//! Concurrency, "file changed underneath" and superblock checksum behaviour.

use std::fs;
use std::sync::Arc;

use imagefs_erofs::testing::Need;
use imagefs_erofs::{FileKind, Image, ImageError, Nid};

use super::fixture::{Scratch, open};

/// (nid, content) of every regular file, read with 128 KiB reads.
pub fn all_files(img: &Image, chunk: usize) -> Vec<(Nid, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![img.root()];
    while let Some(d) = stack.pop() {
        let mut kids = Vec::new();
        img.readdir(d, 0, |e| {
            kids.push(e.nid);
            true
        })
        .expect("readdir");
        for nid in kids {
            match img.inode(nid).expect("inode").kind {
                FileKind::Directory => stack.push(nid),
                FileKind::Regular => {
                    let mut data = Vec::new();
                    let mut buf = vec![0u8; chunk];
                    loop {
                        let n = img.read(nid, data.len() as u64, &mut buf).expect("read");
                        if n == 0 {
                            break;
                        }
                        data.extend_from_slice(&buf[..n]);
                    }
                    out.push((nid, data));
                }
                _ => {}
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    out
}

#[test]
fn shared_image_concurrent_reads_agree() {
    let Some(t) = Scratch::small_tree("shared_image_concurrent_reads_agree") else {
        return;
    };
    let p = t.mkfs("img.erofs", &["-zlz4hc", "-C16384"]);
    let img = Arc::new(open(&p));
    let want = all_files(&open(&p), 128 << 10);
    let threads: Vec<_> = [4096usize, 128 << 10, 10_007, 1 << 20]
        .into_iter()
        .map(|chunk| {
            let img = Arc::clone(&img);
            std::thread::spawn(move || all_files(&img, chunk))
        })
        .collect();
    for t in threads {
        assert!(t.join().expect("thread") == want, "concurrent reads differ");
    }
}

#[test]
fn truncated_underneath_gives_errors() {
    let Some(t) = Scratch::small_tree("truncated_underneath_gives_errors") else {
        return;
    };
    let p = t.mkfs("img.erofs", &["-zlz4"]);
    let img = open(&p);
    let big = img
        .lookup(img.root(), b"big")
        .expect("lookup")
        .expect("big dir");
    let file = img
        .lookup(big, b"text_600k")
        .expect("lookup")
        .expect("file");
    // Truncate the image file in place after opening it (as a rewrite would).
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open rw")
        .set_len(4096)
        .expect("truncate");
    let mut buf = vec![0u8; 128 << 10];
    let mut saw_error = false;
    let mut off = 0;
    while off < 600 << 10 {
        match img.read(file, off, &mut buf) {
            Err(ImageError::Corrupt(_)) => {
                saw_error = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(n) => off += n as u64,
        }
    }
    assert!(saw_error, "reads past the truncated end must fail");
}

#[test]
fn superblock_checksum_is_verified_like_the_kernel() {
    let needs = [Need::Root, Need::MkfsErofs, Need::KernelErofs];
    let Some(t) = Scratch::new(&needs, "superblock_checksum_is_verified_like_the_kernel") else {
        return;
    };
    let src = t.path("src");
    fs::create_dir_all(&src).expect("mkdir");
    fs::write(src.join("f"), b"hello").expect("write");
    let p = t.mkfs("img.erofs", &[]);
    open(&p);
    let mut bytes = fs::read(&p).expect("read");
    bytes[1024 + 300] ^= 0x40; // unused superblock space, covered by the crc
    fs::write(&p, &bytes).expect("write");
    let r = Image::open(fs::File::open(&p).expect("open"));
    assert!(matches!(r, Err(ImageError::Corrupt(_))), "{r:?}");
    let mnt = t.path("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let st = std::process::Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(&p)
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("mount");
    if st.success() {
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        panic!("kernel mounted an image with a bad checksum");
    }
}
