//! Kernel cache invalidations, sent from threads of their own: a notification sent from
//! inside a request handler could wait on a lock that the same request holds in the kernel.
//!
//! Invalidating an entry takes its directory's inode lock in the kernel, and a request in
//! flight in that directory holds that lock until it is answered (an `rm` in `tags/REPO`
//! holds `tags/REPO`'s). A request that waits for an invalidation (so that its change is
//! visible when it returns) must therefore never wait, directly or through a queue, for one
//! that needs a lock held by a request that is waiting, nor occupy the last thread that
//! could answer the requests holding such locks. By construction:
//!
//! - Two lanes, each with its own thread. [`Invalidator::send`]: nobody waits for it; entries
//!   of `tags/` go here (another writer's change in a repository an `rm` is working in).
//!   [`Invalidator::send_and_wait`]: only invalidations that no waiting request holds a lock
//!   for: entries of `digests/` (only changes through `tags/` wait, and those hold no lock
//!   in `digests/`) and inodes (which take no directory lock). Before the lanes, an `rm`
//!   waited for its `digests/<hex>/rootfs` invalidation queued behind another writer's tag
//!   change in the `rm`'s own directory: every such wait ran out its bound, the watchdog of
//!   a race test fired, and its `kill -9` left the daemon stuck in the kernel for good.
//! - At most `threads - 1` threads wait at once (the rest send without waiting), so one
//!   thread serving the connection is always free for the lookups and listings in
//!   `digests/` whose locks the waited lane may need.
//!
//! The bound on a wait stays as a last resort (a lock held by something outside imagefs).
//!
//! Where image trees are mounts of their own, dropping a `digests/<hex>` dentry detaches the
//! tree mounted below it, and the kernel waits for an RCU grace period (1 to 3 ms) inside
//! the notification. A change that collected an image therefore waits only for the entry
//! to expire ([`Inval::Expire`], `FUSE_EXPIRE_ONLY`: the next lookup asks the daemon, which
//! answers ENOENT, and nothing is detached), and the entries whose invalidation detaches
//! (`digests/<hex>/rootfs`, then `digests/<hex>` itself, which the kernel must let go of
//! so that the image is released) go on the lane nobody waits for.
//!
//! A change's awaited invalidations go together ([`Invalidator::send_awaited`]): sent in
//! one go, waited for once (the lane delivers in order), and the change does its remaining
//! work, such as deleting the image it collected, while the kernel drops them. Only the wait
//! takes a place among the waiting threads.
//!
//! [`Invalidator`] is the one seam between the filesystem's core and the kernel's caches:
//! every invalidation goes through [`Invalidator::send`], [`Invalidator::send_and_wait`] or
//! [`Invalidator::send_awaited`].
//! Tests build the core over a recording one ([`Invalidator::recording`]), which keeps what
//! was sent, and on which lane, instead of talking to a kernel.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use parking_lot::{Condvar, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    /// Drop the dentry `name` under directory `parent`.
    Entry(u64, OsString),
    /// Drop the cached attributes and data of an inode.
    Inode(u64),
    /// Mark the dentry `name` under directory `parent` stale without dropping it
    /// (`FUSE_EXPIRE_ONLY`, Linux 6.2): the next lookup of it asks the daemon; mounts below
    /// it stay until it is dropped. A kernel without the flag ignores it and drops the
    /// dentry, as [`Inval::Entry`] does.
    Expire(u64, OsString),
}

type Msg = (Inval, Option<SyncSender<()>>);

/// One queue of invalidations and (once started) the thread delivering it, in order.
struct Lane {
    tx: Mutex<Sender<Msg>>,
    rx: Mutex<Option<Receiver<Msg>>>,
}

impl Default for Lane {
    fn default() -> Self {
        let (tx, rx) = channel();
        Lane {
            tx: Mutex::new(tx),
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Lane {
    fn push(&self, i: Inval, ack: Option<SyncSender<()>>) -> bool {
        self.tx.lock().send((i, ack)).is_ok()
    }

    fn start(&self, name: &str, notifier: Notifier, dev: Option<Arc<OwnedFd>>) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for (i, ack) in rx {
                    let r = match &i {
                        Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(*parent), name),
                        Inval::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                        // Without a descriptor to write it on, or refused: dropped instead.
                        Inval::Expire(parent, name) => dev
                            .as_deref()
                            .ok_or(std::io::ErrorKind::Unsupported.into())
                            .and_then(|dev| expire_entry(dev, *parent, name))
                            .or_else(|e| {
                                log::debug!("expire {i:?}: {e}; dropping it instead");
                                notifier.inval_entry(INodeNo(*parent), name)
                            }),
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

/// `FUSE_NOTIFY_INVAL_ENTRY` with `FUSE_EXPIRE_ONLY`, written on `dev`, a descriptor of the
/// connection (fuser 0.18 sends the notification without flags only). Its layout:
/// `fuse_out_header` (len, the notify code as error, unique 0), `fuse_notify_inval_entry_out`
/// (parent, namelen, flags), the name and a NUL.
fn expire_entry(dev: &OwnedFd, parent: u64, name: &std::ffi::OsStr) -> std::io::Result<()> {
    const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
    const FUSE_EXPIRE_ONLY: u32 = 1;
    let name = name.as_bytes();
    let namelen = u32::try_from(name.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let len = 16 + 16 + name.len() + 1;
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(
        &u32::try_from(len)
            .map_err(|_| std::io::ErrorKind::InvalidInput)?
            .to_ne_bytes(),
    );
    msg.extend_from_slice(&FUSE_NOTIFY_INVAL_ENTRY.to_ne_bytes());
    msg.extend_from_slice(&0u64.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&namelen.to_ne_bytes());
    msg.extend_from_slice(&FUSE_EXPIRE_ONLY.to_ne_bytes());
    msg.extend_from_slice(name);
    msg.push(0);
    match nix::unistd::write(dev, &msg) {
        Ok(_) => Ok(()),
        // Not cached: nothing to expire.
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The invalidations of one connection: to the kernel (see the module doc for the two
/// lanes), or, in tests, to a record.
pub enum Invalidator {
    Kernel(Lanes),
    #[cfg(test)]
    Recording(Recorder),
}

impl Default for Invalidator {
    fn default() -> Self {
        Invalidator::Kernel(Lanes::default())
    }
}

/// An invalidation as a recording [`Invalidator`] saw it.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub inval: Inval,
    /// Sent with [`Invalidator::send_and_wait`] (the awaited lane).
    pub waited: bool,
}

/// What a recording [`Invalidator`] was sent, in order; shared with the test that reads it.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Recorder(std::sync::Arc<Mutex<Vec<Sent>>>);

#[cfg(test)]
impl Recorder {
    /// Everything sent since the last call.
    pub fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl Invalidator {
    /// An invalidator that records instead of sending, and its record.
    #[cfg(test)]
    pub fn recording() -> (Invalidator, Recorder) {
        let r = Recorder::default();
        (Invalidator::Recording(r.clone()), r)
    }

    /// Sends without waiting. Anything may go here; entries of `tags/` must.
    pub fn send(&self, i: Inval) {
        match self {
            Invalidator::Kernel(l) => l.send(i),
            #[cfg(test)]
            Invalidator::Recording(r) => r.0.lock().push(Sent {
                inval: i,
                waited: false,
            }),
        }
    }

    /// Sends and waits (bounded) until the kernel has dropped the entry, so that a change
    /// is visible when the request that made it returns. Only for invalidations that no
    /// waiting request can hold a lock for (the module doc): entries of `digests/` and of
    /// the image-tree connection's root, and inodes; never an entry of `tags/`. When
    /// `threads - 1` threads wait already, it only sends.
    pub fn send_and_wait(&self, i: Inval, limit: Duration) {
        match self {
            Invalidator::Kernel(l) => l.send_and_wait(i, limit),
            #[cfg(test)]
            Invalidator::Recording(r) => r.0.lock().push(Sent {
                inval: i,
                waited: true,
            }),
        }
    }

    /// Sends `all` in order on the awaited lane (the same rule as [`Self::send_and_wait`]:
    /// never an entry of `tags/`) without waiting; [`Awaiting::wait`] then waits once, for
    /// the last of them: the lane delivers in order, so all are done then. A change sends
    /// its invalidations together this way, and does its remaining work (the deletion of
    /// what it collected) while the kernel drops them, instead of a round trip each.
    pub fn send_awaited(&self, all: Vec<Inval>) -> Awaiting<'_> {
        match self {
            Invalidator::Kernel(l) => l.send_awaited(all),
            #[cfg(test)]
            Invalidator::Recording(r) => {
                r.0.lock().extend(all.into_iter().map(|inval| Sent {
                    inval,
                    waited: true,
                }));
                Awaiting::default()
            }
        }
    }

    /// Starts delivering to the kernel through `notifier` (and `dev`, a descriptor of the
    /// connection, for what fuser cannot send: [`Inval::Expire`]), for a connection served
    /// by `threads` threads. (A recording invalidator has nothing to start.)
    pub fn start(&self, notifier: Notifier, dev: Option<OwnedFd>, threads: usize) {
        match self {
            Invalidator::Kernel(l) => l.start(notifier, dev, threads),
            #[cfg(test)]
            Invalidator::Recording(_) => {}
        }
    }
}

/// The kernel's two lanes of one connection (see the module doc).
#[derive(Default)]
pub struct Lanes {
    queued: Lane,
    awaited: Lane,
    /// Threads waiting now, and how many may (0 until started: nothing is cached yet).
    waiting: AtomicUsize,
    max_waiting: AtomicUsize,
}

/// A place among the threads that may wait; given back on drop.
struct WaitPermit<'a>(&'a AtomicUsize);

impl Drop for WaitPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lanes {
    fn send(&self, i: Inval) {
        // Before the session starts nothing is cached, so a closed channel loses nothing.
        let _ = self.queued.push(i, None);
    }

    fn send_and_wait(&self, i: Inval, limit: Duration) {
        let Some(_permit) = self.permit() else {
            log::debug!("invalidate {i:?}: sent without waiting (enough threads wait)");
            let _ = self.awaited.push(i, None);
            return;
        };
        let what = format!("{i:?}");
        let (ack, done) = sync_channel(1);
        if self.awaited.push(i, Some(ack)) && done.recv_timeout(limit).is_err() {
            log::warn!("invalidate {what}: still pending after {limit:?}; not waiting longer");
        }
    }

    fn send_awaited(&self, all: Vec<Inval>) -> Awaiting<'_> {
        let n = all.len();
        let Some(last) = all.last().map(|i| format!("{i:?}")) else {
            return Awaiting::default();
        };
        let (ack, done) = sync_channel(1);
        let mut ack = Some(ack);
        for (k, i) in all.into_iter().enumerate() {
            let a = if k + 1 == n { ack.take() } else { None };
            if !self.awaited.push(i, a) {
                // Not started: nothing is cached yet, nothing to wait for.
                return Awaiting::default();
            }
        }
        Awaiting {
            lanes: Some(self),
            done: Some(done),
            what: format!("{n} invalidations, the last {last}"),
        }
    }

    fn permit(&self) -> Option<WaitPermit<'_>> {
        let max = self.max_waiting.load(Ordering::Acquire);
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitPermit(&self.waiting))
    }

    fn start(&self, notifier: Notifier, dev: Option<OwnedFd>, threads: usize) {
        let dev = dev.map(Arc::new);
        self.queued
            .start("imagefs-inval", notifier.clone(), dev.clone());
        self.awaited.start("imagefs-inval-w", notifier, dev);
        self.max_waiting
            .store(threads.saturating_sub(1), Ordering::Release);
    }
}

/// Invalidations sent by [`Invalidator::send_awaited`], not yet waited for.
#[derive(Default)]
#[must_use = "wait() makes the change visible when the request returns"]
pub struct Awaiting<'a> {
    lanes: Option<&'a Lanes>,
    done: Option<Receiver<()>>,
    what: String,
}

impl Awaiting<'_> {
    /// Waits (bounded) until the kernel has dropped every one of them. The permit to wait
    /// (at most `threads - 1` threads wait at once) is taken now, not when they were sent:
    /// what the caller did meanwhile (a deletion) took no thread from the kernel's requests.
    pub fn wait(self, limit: Duration) {
        let (Some(lanes), Some(done)) = (self.lanes, self.done) else {
            return;
        };
        let Some(_permit) = lanes.permit() else {
            log::debug!("{}: not waited for (enough threads wait)", self.what);
            return;
        };
        if done.recv_timeout(limit).is_err() {
            log::warn!(
                "invalidate {}: still pending after {limit:?}; not waiting longer",
                self.what
            );
        }
    }
}

/// Raised when digests may have appeared or gone; waited on by whoever mounts image trees,
/// told what to look at: [`Signal::MOUNT`] or [`Signal::RELEASE`], or both.
#[derive(Default)]
pub struct Signal {
    raised: Mutex<u8>,
    cv: Condvar,
}

impl Signal {
    /// Trees to mount now: a digest came, another directory became a digest's primary (or
    /// the binder is to stop).
    pub const MOUNT: u8 = 1;
    /// A collected image's tree may be let go of soon: only the images waiting for that
    /// are to be looked at.
    pub const RELEASE: u8 = 2;

    pub fn raise(&self, what: u8) {
        *self.raised.lock() |= what;
        self.cv.notify_all();
    }

    /// Waits until raised or `limit` passed; returns what was raised (and lowers it).
    pub fn wait(&self, limit: Duration) -> u8 {
        let mut r = self.raised.lock();
        if *r == 0 {
            let _ = self.cv.wait_for(&mut r, limit);
        }
        std::mem::take(&mut *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_threads_minus_one_wait_and_none_before_start() {
        let inval = Lanes::default();
        assert!(
            inval.permit().is_none(),
            "nothing waits before the lanes start"
        );
        inval.max_waiting.store(2, Ordering::Release);
        let a = inval.permit();
        let b = inval.permit();
        assert!(a.is_some() && b.is_some());
        assert!(
            inval.permit().is_none(),
            "a third waiter would leave no thread free"
        );
        drop(a);
        assert!(
            inval.permit().is_some(),
            "a permit is given back when its wait ends"
        );
    }
}
