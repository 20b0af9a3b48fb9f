//! Locks that coordinate the writers of one store across processes. Both files live in the
//! store's bookkeeping directory ([`Journal`]: beside the store, out of hypeman's sight).
//!
//! - `lock`: exclusive `flock` for every change to the store, by the mount and by every
//!   other writer (import, gc, fsck --repair, a puller that follows the rule).
//! - `mounted`: an exclusive `flock` held by a mount for its whole life, taken before its
//!   recovery runs: a second mount of the store is refused (its recovery would empty the
//!   trash the first one keeps images in use in), and tools can tell a live mount serves the
//!   store (and leave its trash alone).

use std::fs::File;
use std::io;
use std::path::Path;

use super::journal::Journal;

/// `flock(2)` through `lock` (`File::lock` or `File::lock_shared`), retried when a signal
/// interrupts the wait.
pub(super) fn flock(f: &File, lock: fn(&File) -> io::Result<()>) -> io::Result<()> {
    loop {
        match lock(f) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// The store's writer lock, held until dropped.
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Waits for and takes the exclusive writer lock of the store at `root`; moves the
    /// bookkeeping of an older imagefs out of the store first ([`Journal::adopt_old`]).
    pub fn acquire(root: &Path) -> io::Result<StoreLock> {
        let j = Journal::new(root);
        j.warn_if_in_store();
        j.create_dirs()?;
        let file = open(&j.lock_path())?;
        flock(&file, File::lock)?;
        j.adopt_old()?;
        Ok(StoreLock { _file: file })
    }
}

/// How long a new mount waits for the marker: a mount just unmounted may still be exiting.
const MOUNTED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Marks the store as mounted for as long as the returned file stays open; fails with
/// `ResourceBusy` when another mount still serves it after [`MOUNTED_GRACE`].
pub fn hold_mounted(root: &Path) -> io::Result<File> {
    let j = Journal::new(root);
    j.create_dirs()?;
    let file = open(&j.mounted_path())?;
    let t0 = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if t0.elapsed() < MOUNTED_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break mounted_result(root, &j, file, r),
        }
    }
}

fn mounted_result(
    root: &Path,
    j: &Journal,
    file: File,
    r: Result<(), std::fs::TryLockError>,
) -> io::Result<File> {
    match r {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "the store {} is already mounted (another imagefs holds {}); one mount per store",
                root.display(),
                j.mounted_path().display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Is a mount serving the store at `root` right now? (Also one of an older imagefs, whose
/// marker is inside the store.)
pub fn is_mounted(root: &Path) -> bool {
    let j = Journal::new(root);
    let held = |p: &Path| super::safe_open::open_regular(p).is_ok_and(|f| f.try_lock().is_err());
    held(&j.mounted_path()) || held(&root.join(super::layout::PRIVATE).join("mounted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_marker_is_seen_while_held_and_refuses_a_second_mount() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("store");
        std::fs::create_dir(&root).expect("store");
        assert!(!is_mounted(&root));
        let held = hold_mounted(&root).expect("hold");
        assert!(is_mounted(&root));
        let again = hold_mounted(&root).expect_err("a second mount");
        assert_eq!(again.kind(), io::ErrorKind::ResourceBusy, "{again}");
        drop(held);
        assert!(!is_mounted(&root));
        let l = StoreLock::acquire(&root).expect("lock");
        drop(l);
        assert!(
            !root.join(super::super::layout::PRIVATE).exists(),
            "bookkeeping made inside the store"
        );
    }
}
