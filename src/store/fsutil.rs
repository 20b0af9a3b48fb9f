//! Small filesystem primitives with the durability and atomicity the store relies on.

use super::sys;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of temporary names; never a valid tag (tags start with `[A-Za-z0-9_]`).
pub const TMP_PREFIX: &str = ".imagefs-tmp-";

pub use super::sys::RenameMode;

/// `renameat2(2)` with the given mode.
pub fn rename(from: &Path, to: &Path, mode: RenameMode) -> io::Result<()> {
    sys::renameat2(from, to, mode)
}

/// Flushes a directory's entries to disk. `O_DIRECTORY`: whatever else stands at `dir` is
/// refused, never opened (a FIFO would block).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    sys::sync_all(&open_dir(dir)?)
}

/// Opens directory `dir` for an fsync.
pub fn open_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    sys::open(
        dir,
        std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC),
    )
}

/// A name unique in this process and, through the pid and clock, across processes.
pub fn unique_name(tag: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}-{}-{n}-{tag}", std::process::id())
}

/// Installs a symlink `link -> target` atomically: written under a temporary name in the same
/// directory, then renamed into place. With `NoReplace` an existing `link` fails with EEXIST
/// and nothing changes. With `durable` the directory is fsynced before returning.
pub fn install_symlink(
    target: &str,
    link: &Path,
    mode: RenameMode,
    durable: bool,
) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_name("link")));
    sys::symlink(target, &tmp)?;
    if let Err(e) = rename(&tmp, link, mode) {
        let _ = sys::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// Writes a file atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!("{TMP_PREFIX}{}", unique_name("file")));
    let result = (|| {
        let f = sys::open(
            &tmp,
            std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(true),
        )?;
        sys::write_all(&f, bytes)?;
        sys::sync_all(&f)?;
        sys::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = sys::remove_file(&tmp);
    }
    result
}

/// The sha256 and length of everything `r` yields (an image file, say).
pub fn sha256_of(mut r: impl std::io::Read) -> io::Result<(super::names::Digest, u64)> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(buf.get(..n).unwrap_or_default());
        size += n as u64;
    }
    Ok((super::names::Digest::from_bytes(h.finalize().into()), size))
}

/// Disk space used by a tree, in bytes (allocated blocks; symlinks not followed, and nothing
/// past the tree's own filesystem: a mount inside it is not counted).
pub fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &Path, dev: Option<u64>) -> u64 {
        let Ok(m) = sys::symlink_metadata(path) else {
            return 0;
        };
        if dev.is_some_and(|d| d != m.dev()) {
            return 0;
        }
        let own = m.blocks() * 512;
        if !m.is_dir() {
            return own;
        }
        let children: u64 = sys::read_dir(path)
            .map(|rd| rd.flatten().map(|e| walk(&e.path(), Some(m.dev()))).sum())
            .unwrap_or(0);
        own + children
    }
    walk(path, None)
}

/// Removes a directory tree; a missing tree is not an error.
///
/// Never leaves the tree's own filesystem: every directory is opened with `O_NOFOLLOW` from its
/// parent's descriptor and entered only if it is on the parent's mount (mount id and device),
/// so a mount inside the tree (a bind mount, a read-only mount, another filesystem) is never
/// descended into nor unmounted, and every deletion is an `unlinkat` relative to a descriptor
/// (a symlink is removed, never followed). What cannot be removed (such a mount point, an
/// immutable file: `EPERM`, a read-only filesystem: `EROFS`) is left where it is and the rest is
/// removed anyway; the error then names every entry left and why, and has the kind of the first.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    remove_tree_freed(path).map(|_| ())
}

/// [`remove_tree`], counting the disk space (allocated blocks, in bytes) of what it removed
/// as it goes: one walk, where [`tree_bytes`] then `remove_tree` made two.
pub fn remove_tree_freed(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = match sys::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !m.is_dir() {
        return sys::remove_file(path).map(|()| m.blocks() * 512);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a removable directory", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let pfd = sys::open_dir(parent)?;
    let mut left = Vec::new();
    let mut freed = 0;
    remove_at(&pfd, name, path, place_of(&pfd)?.0, &mut left, &mut freed);
    left_behind(left).map(|()| freed)
}

/// The mount a descriptor is on: mount id (where the kernel says it) and device; with the
/// disk space of what it names, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    mnt_id: Option<u64>,
    dev: (u32, u32),
}

fn place_of(fd: impl rustix::fd::AsFd) -> io::Result<(Place, u64)> {
    use rustix::fs::StatxFlags;
    let st = sys::fstatx(fd, StatxFlags::MNT_ID | StatxFlags::BLOCKS)?;
    let place = Place {
        mnt_id: (st.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id),
        dev: (st.stx_dev_major, st.stx_dev_minor),
    };
    Ok((place, st.stx_blocks * 512))
}

/// Removes `name` (shown as `path`) from the directory `parent`, which is on `place`; what is
/// left behind goes to `left`, the disk space of what is removed is added to `freed`.
/// Returns whether `name` is gone.
fn remove_at(
    parent: &rustix::fd::OwnedFd,
    name: &std::ffi::OsStr,
    path: &Path,
    place: Place,
    left: &mut Vec<(std::path::PathBuf, io::Error)>,
    freed: &mut u64,
) -> bool {
    use rustix::fs::FileType;
    use rustix::io::Errno;
    let gone = |r: rustix::io::Result<()>, left: &mut Vec<_>| match r {
        Ok(()) | Err(Errno::NOENT) => true,
        Err(e) => {
            left.push((path.to_path_buf(), io::Error::from(e)));
            false
        }
    };
    // O_DIRECTORY fails before anything is opened on a file, a FIFO or a device.
    let fd = match sys::openat_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
            return gone(unlink_counted(parent, name, freed), left);
        }
        Err(e) => return gone(Err(e), left),
    };
    let own = match place_of(&fd) {
        Ok((p, own)) if p == place => own,
        Ok(_) => {
            left.push((
                path.to_path_buf(),
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "a mount point (another filesystem or a bind mount): never entered, left in place; unmount it and the next mount (or fsck --repair) deletes the rest",
                ),
            ));
            return false;
        }
        Err(e) => {
            left.push((path.to_path_buf(), e));
            return false;
        }
    };
    let mut all_gone = true;
    match sys::read_dir_fd(&fd) {
        Ok(dir) => {
            for entry in dir {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        left.push((path.to_path_buf(), io::Error::from(e)));
                        all_gone = false;
                        break;
                    }
                };
                let n = std::ffi::OsStr::from_bytes(entry.file_name().to_bytes());
                if n == "." || n == ".." {
                    continue;
                }
                let child = path.join(n);
                all_gone &= match entry.file_type() {
                    FileType::Directory | FileType::Unknown => {
                        remove_at(&fd, n, &child, place, left, freed)
                    }
                    _ => match unlink_counted(&fd, n, freed) {
                        Ok(()) | Err(Errno::NOENT) => true,
                        Err(e) => {
                            left.push((child, io::Error::from(e)));
                            false
                        }
                    },
                };
            }
        }
        Err(e) => {
            left.push((path.to_path_buf(), io::Error::from(e)));
            return false;
        }
    }
    drop(fd);
    if !all_gone {
        // What is left was reported; the directory holding it stays too.
        return false;
    }
    let r = sys::unlinkat(parent, name, true);
    if r.is_ok() {
        *freed += own;
    }
    gone(r, left)
}

/// Unlinks the non-directory `name` of `dir`, adding its disk space to `freed` once gone
/// (what its size cannot be read of is unlinked all the same, uncounted).
fn unlink_counted(
    dir: &rustix::fd::OwnedFd,
    name: &std::ffi::OsStr,
    freed: &mut u64,
) -> rustix::io::Result<()> {
    let bytes = sys::bytes_at(dir, name).unwrap_or(0);
    sys::unlinkat(dir, name, false)?;
    *freed += bytes;
    Ok(())
}

/// `Ok` when nothing was left, else one error naming every entry left (the first few) and why.
fn left_behind(left: Vec<(std::path::PathBuf, io::Error)>) -> io::Result<()> {
    let Some((_, first)) = left.first() else {
        return Ok(());
    };
    let kind = first.kind();
    let mut msg = format!(
        "{} entr{} left behind: ",
        left.len(),
        if left.len() == 1 { "y" } else { "ies" }
    );
    for (i, (p, e)) in left.iter().take(5).enumerate() {
        if i > 0 {
            msg.push_str("; ");
        }
        msg.push_str(&format!("{}: {e}", p.display()));
    }
    if left.len() > 5 {
        msg.push_str("; ...");
    }
    Err(io::Error::new(kind, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_symlink_noreplace_refuses_existing_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tempdir");
        let link = d.path().join("t");
        install_symlink("a", &link, RenameMode::NoReplace, true).expect("first");
        let e = install_symlink("b", &link, RenameMode::NoReplace, true).expect_err("second");
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("a"));
        install_symlink("c", &link, RenameMode::Replace, false).expect("replace");
        assert_eq!(std::fs::read_link(&link).expect("readlink"), Path::new("c"));
        let names: Vec<_> = std::fs::read_dir(d.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["t"]);
    }

    /// The space counted while deleting is what a walk before the deletion counted.
    #[test]
    fn remove_tree_freed_counts_what_tree_bytes_counts() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).expect("mkdir");
        std::fs::write(t.join("rootfs.erofs"), vec![7u8; 100_000]).expect("write");
        std::fs::write(t.join("a/b/f"), b"x").expect("write");
        std::os::unix::fs::symlink("/nonexistent", t.join("a/l")).expect("symlink");
        let before = tree_bytes(&t);
        assert!(before >= 100_000, "{before}");
        assert_eq!(remove_tree_freed(&t).expect("remove"), before);
        assert!(!t.exists());
        assert_eq!(remove_tree_freed(&t).expect("a missing tree is fine"), 0);
        let f = d.path().join("f");
        std::fs::write(&f, vec![1u8; 10_000]).expect("write");
        let one = tree_bytes(&f);
        assert_eq!(remove_tree_freed(&f).expect("remove a file"), one);
    }

    #[test]
    fn remove_tree_removes_links_never_what_they_name() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("precious"), b"x").expect("precious");
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).expect("tree");
        std::fs::write(tree.join("a/b/c/f"), b"y").expect("file");
        std::os::unix::fs::symlink(&outside, tree.join("a/to-dir")).expect("link");
        std::os::unix::fs::symlink(outside.join("precious"), tree.join("a/b/to-file"))
            .expect("link");
        remove_tree(&tree).expect("remove");
        assert!(!tree.exists());
        assert_eq!(std::fs::read(outside.join("precious")).expect("kept"), b"x");
        remove_tree(&tree).expect("a missing tree is fine");
    }

    #[test]
    fn exchange_swaps_two_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::os::unix::fs::symlink("x", &a).expect("a");
        std::os::unix::fs::symlink("y", &b).expect("b");
        rename(&a, &b, RenameMode::Exchange).expect("exchange");
        assert_eq!(std::fs::read_link(&a).expect("a"), Path::new("y"));
        assert_eq!(std::fs::read_link(&b).expect("b"), Path::new("x"));
    }
}
