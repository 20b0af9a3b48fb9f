//! Kernel cache invalidations, sent from a thread of their own: a notification sent from
//! inside a request handler could wait on a lock that the same request holds in the kernel.

use std::ffi::OsString;
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use parking_lot::{Condvar, Mutex};

#[derive(Debug)]
pub enum Inval {
    /// Drop the dentry `name` under directory `parent`.
    Entry(u64, OsString),
    /// Drop the cached attributes and data of an inode.
    Inode(u64),
}

type Msg = (Inval, Option<SyncSender<()>>);

pub struct Invalidator {
    tx: Mutex<Sender<Msg>>,
    rx: Mutex<Option<Receiver<Msg>>>,
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
        let _ = self.tx.lock().send((i, None));
    }

    /// Sends and waits (bounded) until the kernel has dropped the entry, so that a change
    /// is visible when the request that made it returns. The bound keeps a request from
    /// waiting forever on a kernel lock that another request, queued behind it, holds.
    pub fn send_and_wait(&self, i: Inval, limit: Duration) {
        let (ack, done) = sync_channel(1);
        if self.tx.lock().send((i, Some(ack))).is_ok() && done.recv_timeout(limit).is_err() {
            log::debug!("invalidation still pending after {limit:?}");
        }
    }

    /// Starts delivering to the kernel through `notifier`.
    pub fn start(&self, notifier: Notifier) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("imagefs-inval".into())
            .spawn(move || {
                for (i, ack) in rx {
                    let r = match &i {
                        Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                        Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    };
                    if let Err(e) = r {
                        log::debug!("invalidate {i:?}: {e}");
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the invalidation thread: {e}");
        }
    }
}

/// Raised when digests may have appeared or gone; waited on by whoever mounts image trees.
#[derive(Default)]
pub struct Signal {
    raised: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    pub fn raise(&self) {
        *self.raised.lock() = true;
        self.cv.notify_all();
    }

    /// Waits until raised or `limit` passed; returns whether it was raised (and lowers it).
    pub fn wait(&self, limit: Duration) -> bool {
        let mut r = self.raised.lock();
        if !*r {
            let _ = self.cv.wait_for(&mut r, limit);
        }
        std::mem::take(&mut *r)
    }
}
