//! Locks that coordinate the writers of one store across processes. The files live in the
//! store's bookkeeping directory ([`Journal`]: beside the store, out of hypeman's sight).
//!
//! - `lock`: exclusive `flock` for every change to the store, by the mount and by every
//!   other writer (import, gc, fsck --repair, a puller that follows the rule).
//! - one live mount ([`MountedLock`]): an exclusive `flock` on the store's root directory
//!   (its identity, whatever the path), then on `mounted`, held by a mount for its whole
//!   life and taken before its recovery runs: a second mount of the store is refused (its
//!   recovery would empty the trash the first one keeps images in use in), and tools can
//!   tell a live mount serves the store (and leave its trash alone).

use std::fs::File;
use std::io;
use std::path::Path;

use super::journal::Journal;
use super::sys;

/// `flock(2)` through `lock` (`File::lock` or `File::lock_shared`), retried when a signal
/// interrupts the wait.
pub(super) fn flock(f: &File, lock: fn(&File) -> io::Result<()>) -> io::Result<()> {
    loop {
        match sys::flock(f, lock) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    sys::open(
        path,
        File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true),
    )
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

/// How long a new mount waits for the store: a mount just unmounted may still be exiting.
const MOUNTED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The one live mount of a store, held for as long as this value lives (a mount keeps it in
/// its `Store` until the daemon exits: also after a lazy unmount, while the daemon still
/// serves processes inside the detached mount).
///
/// Two locks, taken in this order:
/// - an exclusive `flock` on the store's root directory itself, which names the store by its
///   identity (device and inode), not by the path it was given: a symlink, a `..` path or a
///   bind mount of the store reaches the same lock. (The bookkeeping directory is found by
///   path: a bind mount of the store's root is a mount point, so its bookkeeping would be
///   another directory, with another `mounted` marker.) Taken before anything is written, so
///   a refused mount changes nothing.
/// - the `mounted` marker in the bookkeeping, which tools check ([`is_mounted`]) and which an
///   older imagefs holds (it takes no lock on the root).
#[derive(Debug)]
pub struct MountedLock {
    _root: Option<File>,
    _marker: File,
}

impl MountedLock {
    /// Takes the store's identity lock; fails with `ResourceBusy`, naming the live mount's
    /// pid where `/proc/locks` tells it, when another mount still holds it after
    /// [`MOUNTED_GRACE`]. Writes nothing.
    pub fn take(root: &Path) -> io::Result<RootLock> {
        let dir = sys::open(root, File::options().read(true))?;
        match lock_within_grace(&dir) {
            Ok(()) => Ok(RootLock(Some(dir))),
            Err(None) => Err(busy(&dir, None)),
            // NFS emulates flock with byte-range locks, which a directory (open read-only)
            // cannot take: one mount per store then rests on the marker alone (by path).
            Err(Some(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBADF | libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL)
                ) =>
            {
                log::warn!(
                    "{}: cannot lock the store's directory ({e}); a second mount of it by another path would not be refused",
                    root.display()
                );
                Ok(RootLock(None))
            }
            Err(Some(e)) => Err(e),
        }
    }
}

/// An exclusive `flock` on `f`, waiting up to [`MOUNTED_GRACE`] for its holder to let go;
/// `Err(None)`: still held.
fn lock_within_grace(f: &File) -> Result<(), Option<io::Error>> {
    let t0 = std::time::Instant::now();
    loop {
        match sys::flock(f, sys::try_lock) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                if t0.elapsed() >= MOUNTED_GRACE {
                    return Err(None);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(Some(e)),
        }
    }
}

/// The identity lock alone ([`MountedLock::take`]), until the marker is added
/// ([`RootLock::mark`]) once the bookkeeping exists.
#[derive(Debug)]
pub struct RootLock(Option<File>);

impl RootLock {
    /// Takes the `mounted` marker of the bookkeeping too; fails with `ResourceBusy` when
    /// another imagefs (an older one, which takes no identity lock) holds it.
    pub fn mark(self, root: &Path) -> io::Result<MountedLock> {
        let j = Journal::new(root);
        let marker = open(&j.mounted_path())?;
        lock_within_grace(&marker)
            .map_err(|e| e.unwrap_or_else(|| busy(&marker, Some(&j.mounted_path()))))?;
        Ok(MountedLock {
            _root: self.0,
            _marker: marker,
        })
    }
}

/// Marks the store as mounted ([`MountedLock`]), for tests: both locks at once.
#[cfg(test)]
pub fn hold_mounted(root: &Path) -> io::Result<MountedLock> {
    let l = MountedLock::take(root)?;
    Journal::new(root).create_dirs()?;
    l.mark(root)
}

/// "Already mounted" (the caller names the store), naming the pid holding `locked`'s lock if `/proc/locks`
/// tells it, and the marker (`Some`) when that is what is held.
fn busy(locked: &File, marker: Option<&Path>) -> io::Error {
    let by = match sys::fstat(locked).ok().and_then(|m| flock_holder(&m)) {
        Some(pid) => format!("by imagefs pid {pid}"),
        None => "by another imagefs".into(),
    };
    let held = marker
        .map(|p| format!(", which holds {}", p.display()))
        .unwrap_or_default();
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("already mounted {by}{held} (one mount per store)"),
    )
}

/// The pid holding an exclusive `flock` on the file `m` describes, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF`, device numbers in hex).
fn flock_holder(m: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let locks = std::fs::read_to_string("/proc/locks").ok()?; // seam: exempt (not the store)
    let (major, minor) = (
        nix::sys::stat::major(m.dev()),
        nix::sys::stat::minor(m.dev()),
    );
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Waiters are listed with "->" after the number: never the holder.
        if f.len() < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
            return None;
        }
        let mut id = f[5].split(':');
        let maj = u64::from_str_radix(id.next()?, 16).ok()?;
        let min = u64::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && ino == m.ino())
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

/// Is a mount serving the store at `root` right now? (Also one of an older imagefs, whose
/// marker is inside the store.)
pub fn is_mounted(root: &Path) -> bool {
    let j = Journal::new(root);
    let held = |p: &Path| {
        super::safe_open::open_regular(p).is_ok_and(|f| sys::flock(&f, sys::try_lock).is_err())
    };
    // The identity lock is tried shared: a mount taking it meanwhile retries (its grace).
    let root_held = sys::open(root, File::options().read(true)).is_ok_and(|f| {
        sys::flock(&f, sys::try_lock_shared)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EWOULDBLOCK))
    });
    root_held || held(&j.mounted_path()) || held(&root.join(super::layout::PRIVATE).join("mounted"))
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

    #[test]
    fn the_holder_of_a_flock_is_found_in_proc_locks() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = File::open(d.path()).expect("open dir");
        let m = f.metadata().expect("stat");
        assert_eq!(flock_holder(&m), None);
        f.lock().expect("flock");
        assert_eq!(flock_holder(&m), Some(std::process::id()));
    }
}
