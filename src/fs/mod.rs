//! The filesystem: [`ImageFs`]'s state and its startup.
//!
//! - `fuse` is the adapter: kernel requests in, replies out. It decides nothing; every
//!   error reply goes through `Connection::fail`, which logs the reason at the error's
//!   level, counts it, and replies with its errno.
//! - `core`, `dirs`, `changes`, `passthrough` and `statfs` are what each request means for
//!   the store, in terms of inodes, names and `errno::Error`. No `fuser::Reply*` type is used
//!   below the adapter.
//! - `inodes` (the inode table), `handles` (open files), `rootfs` (the open images),
//!   `notify` (kernel cache invalidations) and `metrics` keep the state.
//! - `image_trees` is all that the daemon's rootfs-mount binder may ask of the filesystem.
//! - `tests` runs the core without a kernel: a recording [`notify::Invalidator`], the
//!   watcher's work done by [`ImageFs::poll_store`], a stand-in for the kernel's caches,
//!   and a reference model of the mount.
//!
//! The mounted tree (DESIGN.md section 2): `tags/` mirrors the store's tags as symlinks
//! into `digests/`, `digests/<hex>/` serves a digest directory's files read-only, and
//! `.imagefs/metrics` the counters.
//!
//! Invariant: every change through `tags/` applies, before its request is answered, the
//! other writers' changes that the store found under its lock (see [`Mutation`]).

#![forbid(unsafe_code)]

mod attr;
mod changes;
mod core;
mod dirs;
mod errno;
mod fuse;
mod handles;
mod image_trees;
mod inodes;
mod kept_trees;
mod kernel_held;
mod metrics;
mod notify;
mod passthrough;
mod readbuf;
mod rootfs;
mod statfs;
mod target;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use fuser::Notifier;
use parking_lot::{Mutex, RwLock};

pub(crate) use fuse::Connection;
use handles::Handles;
pub(crate) use image_trees::ImageTrees;
use inodes::Inodes;
use metrics::Metrics;
use notify::{Invalidator, Signal};
use passthrough::Passthrough;

use crate::store::Store;

pub(crate) struct ImageFs {
    store: Arc<Store>,
    mountpoint: PathBuf,
    inodes: Arc<Mutex<Inodes>>,
    /// Read by every READ through a handle: shared.
    handles: RwLock<Handles>,
    /// The open images (erofs readers), by digest.
    open_images: rootfs::OpenImages,
    /// Digests seen `ready`: a finished pull does not go back, so metadata.json is read
    /// once per digest, not on every lookup and getattr under `digests/<hex>/`.
    ready: Mutex<std::collections::HashSet<inodes::ImageId>>,
    inval: Invalidator,
    /// Invalidations for the image-tree connection.
    inval_tree_conn: Invalidator,
    /// Raised when digests come or go, for the rootfs-mount binder.
    digests_changed: Signal,
    /// Whether rootfs mounts are on (the image-tree connection runs).
    tree_conn_on: AtomicBool,
    /// Kernel erofs trees' image files, and collected images they may still hold.
    kernel_held: Arc<Mutex<kernel_held::KernelHeld>>,
    metrics: Metrics,
    passthrough: Passthrough,
    started: SystemTime,
}

impl ImageFs {
    /// The filesystem of `store` mounted on `mountpoint`; `passthrough`: use FUSE
    /// passthrough for store files when the kernel offers it; the images' readers cache
    /// within `cache`.
    pub(crate) fn new(
        store: Arc<Store>,
        mountpoint: &Path,
        passthrough: bool,
        cache: Arc<imagefs_erofs::CacheBudget>,
    ) -> ImageFs {
        let mut fs =
            ImageFs::with_invalidator(store, mountpoint, passthrough, Invalidator::default());
        fs.open_images = rootfs::OpenImages::new(cache);
        fs
    }

    /// [`ImageFs::new`] with the main connection's invalidations going to `inval` (a
    /// recording one, in tests that run the core without a kernel).
    fn with_invalidator(
        store: Arc<Store>,
        mountpoint: &Path,
        passthrough: bool,
        inval: Invalidator,
    ) -> ImageFs {
        let inodes = Arc::new(Mutex::new(Inodes::default()));
        let kernel_held = Arc::new(Mutex::new(kernel_held::KernelHeld::default()));
        store.set_in_use(Arc::new(Usage(inodes.clone(), kernel_held.clone())));
        ImageFs {
            store,
            mountpoint: mountpoint.to_path_buf(),
            inodes,
            handles: RwLock::new(Handles::default()),
            open_images: rootfs::OpenImages::default(),
            ready: Mutex::default(),
            inval,
            inval_tree_conn: Invalidator::default(),
            digests_changed: Signal::default(),
            tree_conn_on: AtomicBool::new(false),
            kernel_held,
            metrics: Metrics::default(),
            passthrough: Passthrough::new(passthrough),
            started: SystemTime::now(),
        }
    }

    /// Follows other writers of the store: a thread waits for store events and applies
    /// them (index, then kernel caches) within a fraction of a second.
    pub(crate) fn start_watcher(self: &Arc<Self>) -> Result<(), String> {
        let events = self.store.watch().map_err(|e| e.to_string())?;
        let fs = Arc::clone(self);
        std::thread::Builder::new()
            .name("imagefs-watch".into())
            .spawn(move || {
                let mut kept = kept_trees::KeptTrees::default();
                loop {
                    // Every wake-up (at least every REVISIT): the trees of images kept for
                    // their users (collected, or removed by another writer), looked at on
                    // their own schedule (`kept_trees.rs`).
                    kept.round(&fs);
                    let mut pfd = [nix::poll::PollFd::new(
                        std::os::fd::AsFd::as_fd(&events),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    // Woken by events, or every REVISIT while tags wait for their digest
                    // directory (they are re-read then: see store::watch) or collections
                    // wait for the store to be quiet (retried then: see store::deferred).
                    let timeout = nix::poll::PollTimeout::try_from(crate::store::watch::REVISIT)
                        .unwrap_or(nix::poll::PollTimeout::MAX);
                    match nix::poll::poll(&mut pfd, timeout) {
                        Ok(0) if !fs.store.needs_revisit() => continue,
                        Ok(0) => {}
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {
                            // Let a burst of changes settle, then apply it in one go.
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                        Err(e) => {
                            log::error!(
                                "watching the store: {e}; other writers' changes will not show"
                            );
                            return;
                        }
                    }
                    fs.poll_store();
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(())
    }

    /// Applies other writers' changes the store has seen (events read, index updated,
    /// deferred collections retried), then drops them from the kernel's caches: the
    /// watcher's work each time it wakes up, and a test's stand-in for the watcher.
    pub(super) fn poll_store(&self) {
        match self.store.sync_external() {
            Ok(changes) => self.apply_changes(changes),
            Err(e) => log::warn!("applying other writers' changes: {e}"),
        }
    }

    /// Starts sending cache invalidations through the main connection's notifier and `dev`,
    /// a descriptor of the connection (`notify::Inval::Expire`); the connection is served
    /// by `threads` threads.
    pub(crate) fn start_notifier(
        &self,
        notifier: Notifier,
        dev: Option<std::os::fd::OwnedFd>,
        threads: usize,
    ) {
        self.inval.start(notifier, dev, threads);
    }

    /// Holds a change through `tags/` open: see [`Mutation`].
    pub(super) fn mutation(&self) -> Mutation<'_> {
        // What an earlier operation of this thread left unsynced is not this one's.
        crate::store::durability::take_unsynced();
        Mutation(self)
    }
}

/// A change through `tags/` in progress. Each mutating operation holds one for its whole
/// run; when it ends, by any path, the other writers' changes that the store found while
/// it held its lock are applied to the kernel's caches, before the request is answered.
pub(super) struct Mutation<'a>(&'a ImageFs);

impl Drop for Mutation<'_> {
    fn drop(&mut self) {
        self.0.apply_changes(self.0.store.take_changes());
    }
}

/// GC asks the inode table whether the kernel still holds a collected directory's nodes; if
/// so the directory is served from the trash until the last of them is forgotten. Else it
/// asks whether a kernel erofs tree was mounted from its image file: then the directory
/// waits in the trash until the kernel lets go of the file ([`kernel_held`]).
struct Usage(Arc<Mutex<Inodes>>, Arc<Mutex<kernel_held::KernelHeld>>);

impl crate::store::InUse for Usage {
    fn retain(&self, dir: &crate::store::DirKey, trashed: &Path) -> Option<&'static str> {
        // Lock order: inodes, then kernel_held (as everywhere).
        let mut inodes = self.0.lock();
        let image = inodes.image_of(dir);
        let kernel = self.1.lock().retain(&dir.digest(), trashed);
        if inodes.holds(&image) {
            // Served from the trash by the main mount until forgotten; deleted only once
            // the kernel tree lets go too.
            inodes.zombies.insert(image, trashed.to_path_buf());
            Some("still in use through the mount")
        } else if kernel {
            Some("its kernel image tree may still be in use")
        } else {
            None
        }
    }
}
