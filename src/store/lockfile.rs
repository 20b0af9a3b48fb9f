//! Locks that coordinate the writers of one store across processes.
//!
//! - `STORE/.imagefs/lock`: exclusive `flock` for every change to the store, by the mount
//!   and by every other writer (import, gc, fsck --repair, a puller that follows the rule).
//! - `STORE/.imagefs/mounted`: a shared `flock` held by a mount for its whole life, so that
//!   tools can tell a live mount is serving the store (and leave its trash alone).

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
    /// Waits for and takes the exclusive writer lock of the store at `root`.
    pub fn acquire(root: &Path) -> io::Result<StoreLock> {
        let j = Journal::new(root);
        j.create_dirs()?;
        let file = open(&j.lock_path())?;
        flock(&file, File::lock)?;
        Ok(StoreLock { _file: file })
    }
}

/// Marks the store as mounted for as long as the returned file stays open.
pub fn hold_mounted(root: &Path) -> io::Result<File> {
    let file = open(&Journal::new(root).dir.join("mounted"))?;
    flock(&file, File::lock_shared)?;
    Ok(file)
}

/// Is a mount serving the store at `root` right now?
pub fn is_mounted(root: &Path) -> bool {
    let Ok(file) = File::open(Journal::new(root).dir.join("mounted")) else {
        return false;
    };
    file.try_lock().is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_marker_is_seen_while_held() {
        let d = tempfile::tempdir().expect("tempdir");
        Journal::new(d.path()).create_dirs().expect("dirs");
        assert!(!is_mounted(d.path()));
        let held = hold_mounted(d.path()).expect("hold");
        assert!(is_mounted(d.path()));
        drop(held);
        assert!(!is_mounted(d.path()));
        let l = StoreLock::acquire(d.path()).expect("lock");
        drop(l);
    }
}
