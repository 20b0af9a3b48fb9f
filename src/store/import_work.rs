//! `imagefs import`'s work directories: `import/<unique>/` in the store's bookkeeping
//! ([`Journal::import_dir`](super::journal::Journal::import_dir): beside the store, on its
//! filesystem, so installing a built image is one rename).
//!
//! A live import holds an exclusive `flock` on its directory for its whole life; a directory
//! nobody holds a lock on was left by an import that died (`kill -9`): a half-extracted
//! tree and a half-built image, often hundreds of MB. `fsck` reports such leftovers; the
//! mount's recovery, `fsck --repair`, `gc` and the next import remove them.
//!
//! Creating a directory and looking for dead ones both happen under an exclusive `flock` on
//! `import/` itself, so nobody ever sees a directory created but not yet locked.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::fsutil;
use super::lockfile::flock;
use super::sys;

/// `import/` locked, or `None` when there is no `import/` (no import ever ran).
fn lock_base(base: &Path) -> io::Result<Option<File>> {
    let f = match sys::open(base, File::options().read(true)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    flock(&f, File::lock)?;
    Ok(Some(f))
}

/// Is the work directory `p` abandoned (nobody holds its lock)? Briefly takes the lock.
fn is_dead(p: &Path) -> bool {
    sys::symlink_metadata(p).is_ok_and(|m| m.is_dir())
        && sys::open(p, File::options().read(true))
            .is_ok_and(|f| sys::flock(&f, sys::try_lock).is_ok())
}

/// The work directories of dead imports under `base` (`import/`), sorted. The caller holds
/// the lock on `base`.
fn dead_locked(base: &Path) -> io::Result<Vec<PathBuf>> {
    let mut dead: Vec<PathBuf> = sys::read_dir(base)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_dead(p))
        .collect();
    dead.sort();
    Ok(dead)
}

/// The work directories that dead imports left under `base` (`import/`).
pub fn dead(base: &Path) -> io::Result<Vec<PathBuf>> {
    match lock_base(base)? {
        Some(_lock) => dead_locked(base),
        None => Ok(Vec::new()),
    }
}

/// Removes the work directories that dead imports left under `base` (`import/`); returns
/// each with the outcome of its removal (also logged).
pub fn remove_dead(base: &Path) -> io::Result<Vec<(PathBuf, io::Result<()>)>> {
    let Some(_lock) = lock_base(base)? else {
        return Ok(Vec::new());
    };
    remove_dead_locked(base)
}

fn remove_dead_locked(base: &Path) -> io::Result<Vec<(PathBuf, io::Result<()>)>> {
    let mut done = Vec::new();
    for p in dead_locked(base)? {
        let r = fsutil::remove_tree(&p);
        match &r {
            Ok(()) => log::info!("{}: removed what a killed import left", p.display()),
            Err(e) => log::warn!(
                "{}: cannot remove what a killed import left: {e}",
                p.display()
            ),
        }
        done.push((p, r));
    }
    Ok(done)
}

/// A new work directory under `base` (`import/`, created if missing), locked for as long as
/// the returned file stays open; dead imports' directories are removed first.
pub fn create(base: &Path) -> io::Result<(PathBuf, File)> {
    sys::create_dir_all(base)?;
    let Some(_lock) = lock_base(base)? else {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    };
    // A leftover that cannot be removed is logged; it does not stop this import.
    let _ = remove_dead_locked(base);
    let path = base.join(fsutil::unique_name("import"));
    // Only its maker may enter: the tree extracted here keeps the image's setuid binaries
    // and device nodes, on a filesystem that is neither nosuid nor nodev.
    sys::create_dir_mode(&path, 0o700)?;
    let lock = sys::open(&path, File::options().read(true))
        .and_then(|f| sys::flock(&f, sys::try_lock).map(|()| f));
    match lock {
        Ok(f) => Ok((path, f)),
        Err(e) => {
            let _ = sys::remove_dir(&path);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_nobody_holds_are_dead_and_removed() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = d.path().join("import");
        assert!(dead(&base).expect("no import/ yet").is_empty());
        let (live, held) = create(&base).expect("create");
        let gone = base.join("killed");
        std::fs::create_dir_all(gone.join("digest")).expect("leftover");
        std::fs::write(gone.join("digest/rootfs.erofs"), b"half").expect("leftover file");
        assert_eq!(dead(&base).expect("dead"), vec![gone.clone()]);
        let removed = remove_dead(&base).expect("remove");
        assert_eq!(removed.len(), 1);
        assert!(removed[0].1.is_ok() && !gone.exists() && live.is_dir());
        drop(held);
        assert_eq!(dead(&base).expect("dead"), vec![live]);
    }
}
