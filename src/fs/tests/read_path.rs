//! The read path inside images: requests that name an image inode resolve it by number,
//! without the inode table, and a handle reads through the image it holds.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use super::{Fx, os_release, tagged_image_mount};
use fuser::FopenFlags;

use crate::fs::ImageFs;
use crate::fs::handles::NO_HANDLE;
use crate::fs::inodes::{DIGESTS, TAGS};
use crate::fs::passthrough::Opened;
use crate::store::tests::fixture::hex;

/// A mount of a store holding image 1 under the tag `h.io/a:t`; `None` where no image can
/// be built (see `image`). The fixture keeps the store's directory alive.
fn one_tagged_image() -> Option<(Fx, Arc<ImageFs>)> {
    let (fx, m) = tagged_image_mount()?;
    Some((fx, Arc::new(m.fs)))
}

fn lookup(fs: &ImageFs, parent: u64, name: &str) -> u64 {
    fs.lookup(parent, OsStr::new(name))
        .map(|(a, _)| a.ino.0)
        .unwrap_or_else(|e| panic!("lookup {name}: {}", e.reason))
}

/// Runs `f` on another thread while this one holds the inode table's lock, and returns its
/// result; `None` if it did not finish within a few seconds (it waited for the lock).
fn with_inode_table_locked<T: Send + 'static>(
    fs: &Arc<ImageFs>,
    f: impl FnOnce(&ImageFs) -> T + Send + 'static,
) -> Option<T> {
    let held = fs.inodes.lock();
    while_held(held, fs, f)
}

/// Runs `f` on another thread while `_held` (a lock's guard) is held, and returns its
/// result; `None` if it did not finish within a few seconds (it waited for the lock).
fn while_held<G, T: Send + 'static>(
    _held: G,
    fs: &Arc<ImageFs>,
    f: impl FnOnce(&ImageFs) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    let other = fs.clone();
    std::thread::spawn(move || {
        let _ = tx.send(f(&other));
    });
    // On a timeout the thread is left blocked until this guard drops; it then finishes.
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

#[test]
fn image_reads_resolve_by_number_and_handle_without_the_inode_table() {
    let Some((fx, fs)) = one_tagged_image() else {
        return;
    };
    let lookup = |parent, name: &str| lookup(&fs, parent, name);
    let digest = lookup(DIGESTS, &hex(1));
    let rootfs = lookup(digest, "rootfs");
    let etc = lookup(rootfs, "etc");
    let file = lookup(etc, "os-release");
    let want = os_release(1).into_bytes();
    let (fh, _) = fs.open(file, libc::O_RDONLY).expect("open");

    // READ (by handle and by number), GETATTR and READDIR inside the image, with the
    // inode table locked by someone else: none of them waits for it.
    let got = with_inode_table_locked(&fs, move |fs| {
        let by_fh = fs.read(fh, 0, 4096).map(|b| b.to_vec());
        let by_ino = fs.read_inode(file, 3, 4096).map(|b| b.to_vec());
        let attr = fs.getattr(file).map(|(a, _)| (a.ino.0, a.size));
        let mut names = Vec::new();
        let listed = fs.readdir(etc, 0, |ino, _, _, name| {
            names.push((ino, name.to_os_string()));
            false
        });
        (by_fh, by_ino, attr, listed.is_ok(), names)
    })
    .expect("an image request waited for the inode table's lock");
    let (by_fh, by_ino, attr, listed, names) = got;
    assert_eq!(by_fh.expect("read by handle"), want);
    assert_eq!(by_ino.expect("read by number"), want[3..]);
    assert_eq!(attr.expect("getattr"), (file, want.len() as u64));
    assert!(listed);
    assert!(
        names.contains(&(file, "os-release".into())),
        "the entry shows the inode's own number: {names:?}"
    );

    // The image's last tag goes: the digest is collected but in use, so both ways of
    // reading still serve the image.
    fs.unlink(lookup(lookup(TAGS, "h.io"), "a"), OsStr::new("t"))
        .expect("rm");
    assert!(!fx.has(&format!("content/{}", hex(1))), "collected");
    assert_eq!(fs.read_inode(file, 0, 4096).expect("read").to_vec(), want);
    assert_eq!(fs.read(fh, 0, 4096).expect("read").to_vec(), want);

    // The kernel forgets every inode of the image: it is closed, and a number of it no
    // longer resolves; an open handle still reads through the image it holds.
    for ino in [file, etc, rootfs, digest] {
        fs.forget(ino, 1);
    }
    assert!(fs.open_images.by_ino(file).is_none(), "closed");
    let stale = fs
        .read_inode(file, 0, 4096)
        .err()
        .expect("a forgotten inode");
    assert_eq!(stale.errno, fuser::Errno::ESTALE);
    assert_eq!(fs.read(fh, 0, 4096).expect("read").to_vec(), want);
    fs.release(fh);
}

#[test]
fn an_image_file_on_the_main_mount_opens_reads_and_releases_without_the_handle_table() {
    let Some((_fx, fs)) = one_tagged_image() else {
        return;
    };
    let lookup = |parent, name: &str| lookup(&fs, parent, name);
    let digest = lookup(DIGESTS, &hex(1));
    let file = lookup(lookup(lookup(digest, "rootfs"), "etc"), "os-release");
    let want = os_release(1).into_bytes();
    let no_backing = |_: &std::fs::File| Err(std::io::Error::other("no passthrough here"));

    // Every OPEN of a `tar` on the main mount, with the handle table locked by someone
    // else: the open keeps no handle, its READ goes by number, its RELEASE drops nothing.
    let held = fs.handles.write();
    let got = while_held(held, &fs, move |fs| {
        let (fh, flags) = match fs.open_file(file, libc::O_RDONLY, no_backing) {
            Ok(Opened::Read { fh, flags }) => (fh, flags),
            Ok(Opened::Passthrough { .. }) => panic!("an image file passed through"),
            Err(e) => panic!("open: {}", e.reason),
        };
        let data = fs.read_opened(file, fh, 0, 4096).map(|b| b.to_vec());
        fs.release(fh);
        (fh, flags, data)
    })
    .expect("an image file's OPEN, READ or RELEASE waited for the handle table's lock");
    let (fh, flags, data) = got;
    assert_eq!(fh, NO_HANDLE);
    assert!(flags.contains(FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH));
    assert_eq!(data.expect("read"), want);

    // Still refused for writing, whatever the caller's rights.
    for how in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let e = fs
            .open_file(file, how, no_backing)
            .err()
            .expect("an image file opened for writing");
        assert_eq!(e.errno, fuser::Errno::EROFS);
    }
}
