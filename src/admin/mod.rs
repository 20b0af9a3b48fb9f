//! Store administration: `imagefs ls`, `imagefs fsck`, `imagefs gc`.
//!
//! Each command works on a store that may be mounted at the same time: it takes the store's
//! writer lock ([`StoreLock`], the `flock` the mount holds during each of its changes) while
//! it reads or changes the store's structure, and reads the store with [`Store::open_view`]
//! (one scan, no recovery) — never [`Store::open_mounted`], whose recovery empties the trash that a
//! live mount may be using for images still in use.
//! Long reads (image verification, sizes) happen after the lock is released.
//!
//! Exit status: 0 success, 1 problems found or remaining (or some removal failed), 2 the
//! command could not run (missing store, permission, ...).
//!
//! [`Store::open_view`]: crate::store::Store::open_view
//! [`Store::open_mounted`]: crate::store::Store::open_mounted

#![forbid(unsafe_code)]

pub mod fsck;
pub mod gc;
pub mod ls;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::journal::Journal;
use crate::store::layout::DirKey;
use crate::store::lockfile::StoreLock;
use crate::store::metadata::{self, Status};

pub use fsck::FsckArgs;
pub use gc::GcArgs;
pub use ls::LsArgs;

/// Exit status: success.
pub const EXIT_OK: i32 = 0;
/// Exit status: problems found or left (fsck), or a removal failed (gc).
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit status: the command could not run.
pub const EXIT_FAILED: i32 = 2;

/// Checks that `store` is an existing directory (before anything creates its bookkeeping).
pub(crate) fn check_store(store: &Path) -> Result<PathBuf, String> {
    match std::fs::metadata(store) {
        Ok(m) if m.is_dir() => Ok(store.to_path_buf()),
        Ok(_) => Err(format!("store {}: not a directory", store.display())),
        Err(e) => Err(format!("store {}: {e}", store.display())),
    }
}

/// Takes the store's writer lock.
pub(crate) fn lock(root: &Path) -> Result<StoreLock, String> {
    StoreLock::acquire(root).map_err(|e| {
        format!(
            "{}: cannot take the store lock: {e}",
            Journal::new(root).lock_path().display()
        )
    })
}

/// Takes the store's writer lock for a command that only reads: without write access to the
/// store (EACCES, EPERM, EROFS) it goes on without the lock, with a warning.
pub(crate) fn lock_for_reading(root: &Path) -> Result<Option<StoreLock>, String> {
    match StoreLock::acquire(root) {
        Ok(l) => Ok(Some(l)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
            ) =>
        {
            log::warn!(
                "{}: cannot take the store lock ({e}); reading without it",
                root.display()
            );
            Ok(None)
        }
        Err(e) => Err(format!(
            "{}: cannot take the store lock: {e}",
            Journal::new(root).lock_path().display()
        )),
    }
}

/// One consistent view of the store (taken under the lock): [`Store::open_view`].
///
/// [`Store::open_view`]: crate::store::Store::open_view
pub use crate::store::View;

/// The status of a digest directory, or why it is unknown.
pub(crate) fn status_of(root: &Path, key: &DirKey) -> Result<Status, String> {
    metadata::read_status(&root.join(key.rel_path()))
}

/// Bytes of the regular files under `dir` (apparent sizes, like `du -sb` without the
/// directories themselves; hard links counted once; symlinks not followed). Entries that
/// vanish meanwhile count as 0.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for entry in rd.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() {
                walk(&entry.path(), seen, total);
            } else if m.is_file() && (m.nlink() <= 1 || seen.insert((m.dev(), m.ino()))) {
                *total += m.len();
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut HashSet::new(), &mut total);
    total
}

/// A size for people: `512B`, `12.3kB`, `4.0MB`, `1.2GB` (powers of 1000, as docker shows).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 999.95 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1}{}", UNITS[u])
}

/// Writes a line; a closed stdout (`imagefs ls | head`) is not an error worth reporting.
pub(crate) fn out(w: &mut dyn Write, line: impl AsRef<str>) {
    let _ = writeln!(w, "{}", line.as_ref());
}

/// Runs `f` with stdout and stderr.
/// Not locked for the whole run: worker threads may log to stderr meanwhile.
pub(crate) fn with_stdio(f: impl FnOnce(&mut dyn Write, &mut dyn Write) -> i32) -> i32 {
    let mut o = io::stdout();
    let mut e = io::stderr();
    let code = f(&mut o, &mut e);
    let _ = o.flush();
    code
}
