//! An interrupted import (Ctrl-C, `kill`, a closed terminal) removes its own work directory
//! before it exits, rather than leaving a half-extracted tree of hundreds of MB for the next
//! `fsck --repair`, `gc`, mount or import ([`crate::store::import_work`]) to find.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in the importing process and taken by one thread
//! with `sigwait` (no signal handler, no unsafe code): it removes the registered work
//! directory and exits with 128 + the signal's number, as a shell reports a death by signal.
//! Children start with an empty signal mask (the standard library resets it), and
//! `mkfs.erofs` dies with the import ([`super::build`]). `kill -9` cannot be caught: its
//! leftovers are still swept by the others.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use parking_lot::Mutex;

/// The work directory of the import running in this process, if any.
static WORK: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Set once a signal came: the extraction stops writing (at its next entry), so removing
/// the work directory is not a race against it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the import was interrupted (the extraction checks it before each entry).
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Registers (or, with `None`, forgets) the work directory to remove on interruption.
pub fn set_work_dir(path: Option<PathBuf>) {
    *WORK.lock() = path;
}

/// Takes SIGINT, SIGTERM and SIGHUP for the rest of the process's life (call it first,
/// before any other thread starts, so that every thread has them blocked).
pub fn install() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        log::debug!("cannot block signals ({e}): an interrupted import leaves its work directory");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            INTERRUPTED.store(true, Ordering::Relaxed);
            // Held while removing, so the import cannot register another one meanwhile.
            let work = WORK.lock();
            if let Some(dir) = work.as_deref() {
                // The extraction may be writing one last entry before it sees the flag
                // (mount-tests saw `rootfs/d6` made behind a removal): retry a moment later.
                let mut r = crate::store::fsutil::remove_tree(dir);
                for _ in 0..50 {
                    if r.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    r = crate::store::fsutil::remove_tree(dir);
                }
                match r {
                    Ok(()) => eprintln!(
                        "imagefs import: interrupted ({sig}); removed {}",
                        dir.display()
                    ),
                    Err(e) => eprintln!(
                        "imagefs import: interrupted ({sig}); cannot remove {}: {e} \
                         (fsck --repair or gc removes it)",
                        dir.display()
                    ),
                }
            } else {
                eprintln!("imagefs import: interrupted ({sig})");
            }
            std::process::exit(128 + sig as i32);
        });
    if let Err(e) = spawned {
        log::debug!("cannot start the interrupt thread ({e})");
        let _ = set.thread_unblock();
    }
}
