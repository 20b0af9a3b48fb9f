//! Listing one directory level ahead of a walk.
//!
//! When a directory block is listed, its entries' inodes are advised to the kernel
//! (`Source::prefetch`), but a walk (`find`, READDIRPLUS) then still waits, directory after
//! directory, for each subdirectory's own block and its entries' inodes. So the
//! subdirectories named in a listed block are queued to a background thread that lists
//! their first entries on an image of its own: that reads their blocks and advises their
//! entries' inodes, so the walk finds them in the page cache or on their way.
//!
//! The thread's image is over the same file with a zero budget: it fills only the
//! kernel's page cache, never the budget the images share, and has no thread of its own.
//! Subdirectories whose inodes the image has cached are not queued (a walk again soon
//! after: the budget holds their metadata). One thread per image, started by the first
//! subdirectory queued, ending after a second without work or as soon as the image is
//! dropped (what is still queued is left); a full queue drops work (advice only; every
//! error of the thread's reads is ignored: the walk's own reads check).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use parking_lot::Mutex;

use super::cache::{CacheBudget, ImageCache, Key};
use super::inode::InodeInfo;
use super::source::Source;
use super::{Image, Nid};

/// Subdirectories waiting at most.
const QUEUE: usize = 4096;
/// The thread ends after this long without work.
const IDLE: Duration = Duration::from_secs(1);
/// Entries of one subdirectory listed ahead (a 4 KiB block holds about 100).
const ENTRIES: usize = 512;

/// An image's queue of subdirectories to list ahead (disabled on the thread's own image).
pub(crate) struct Ahead {
    enabled: bool,
    tx: Mutex<Option<SyncSender<Nid>>>,
    /// Set when the image is dropped: the thread leaves what is still queued and ends,
    /// closing its descriptor of the file at once.
    closed: Arc<AtomicBool>,
}

impl Ahead {
    pub(crate) fn new(enabled: bool) -> Ahead {
        Ahead {
            enabled,
            tx: Mutex::new(None),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

impl Image {
    /// Queues subdirectories `dirs` of a block just listed to be listed ahead.
    pub(crate) fn list_ahead(&self, dirs: &[Nid]) {
        if !self.ahead.enabled || dirs.is_empty() {
            return;
        }
        let mut tx = self.ahead.tx.lock();
        // A subdirectory whose inode this image holds was walked a moment ago: its metadata
        // is in the budget (the thread, with none, would read it all again).
        let fresh = dirs
            .iter()
            .filter(|nid| self.src.cache.get::<InodeInfo>(Key::Inode(nid.0)).is_none());
        for &nid in fresh {
            let sent = match tx.as_ref().map(|t| t.try_send(nid)) {
                Some(Ok(())) | Some(Err(TrySendError::Full(_))) => true,
                Some(Err(TrySendError::Disconnected(_))) | None => false,
            };
            if !sent {
                // The thread ended (idle) or never ran: start one, with this nid first.
                *tx = self.start_ahead();
                if let Some(t) = tx.as_ref() {
                    let _ = t.try_send(nid);
                }
            }
        }
    }

    /// Starts the thread listing ahead; `None` if the file cannot be shared or no thread
    /// can be made (the walk just goes without).
    fn start_ahead(&self) -> Option<SyncSender<Nid>> {
        let file = match self.src.try_clone_file() {
            Ok(f) => f,
            Err(e) => {
                log::debug!("erofs: no listing ahead: {e}");
                return None;
            }
        };
        let walker = Image {
            src: Source::new(file, ImageCache::new(Arc::new(CacheBudget::new(0)))),
            sb: self.sb.clone(),
            prefixes: Default::default(),
            ahead: Ahead::new(false),
        };
        let (tx, rx) = sync_channel::<Nid>(QUEUE);
        let closed = Arc::clone(&self.ahead.closed);
        let spawned = std::thread::Builder::new()
            .name("erofs-ahead".into())
            .spawn(move || {
                // Ends after IDLE without work, or when the image (the sender) is gone.
                while let Ok(nid) = rx.recv_timeout(IDLE) {
                    if closed.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut n = 0usize;
                    let _ = walker.readdir(nid, 0, |_| {
                        n += 1;
                        n < ENTRIES
                    });
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::debug!("erofs: no listing ahead: {e}");
                None
            }
        }
    }
}
