//! Kernel cache invalidations, sent from a thread of their own: a notification sent from
//! inside a request handler could wait on a lock that the same request holds in the kernel.

use std::ffi::OsString;
use std::sync::mpsc::{Receiver, Sender, channel};

use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;

#[derive(Debug)]
pub enum Inval {
    /// Drop the dentry `name` under directory `parent`.
    Entry(u64, OsString),
    /// Drop the cached attributes and data of an inode.
    Inode(u64),
}

pub struct Invalidator {
    tx: Mutex<Sender<Inval>>,
    rx: Mutex<Option<Receiver<Inval>>>,
}

impl Default for Invalidator {
    fn default() -> Self {
        let (tx, rx) = channel();
        Invalidator {
            tx: Mutex::new(tx),
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Invalidator {
    pub fn send(&self, i: Inval) {
        // Before the session starts nothing is cached, so a closed channel loses nothing.
        let _ = self.tx.lock().send(i);
    }

    /// Starts delivering to the kernel through `notifier`.
    pub fn start(&self, notifier: Notifier) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("imagefs-inval".into())
            .spawn(move || {
                for i in rx {
                    let r = match &i {
                        Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                        Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    };
                    if let Err(e) = r {
                        log::debug!("invalidate {i:?}: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the invalidation thread: {e}");
        }
    }
}
