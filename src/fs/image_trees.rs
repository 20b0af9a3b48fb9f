//! [`ImageTrees`]: the filesystem as the daemon's rootfs-mount binder sees it, and nothing
//! more. The binder serves the image-tree connection ([`ImageTrees::connection`]) and
//! mounts its `<hex>` entries on the main mount's `digests/<hex>/rootfs`; it asks here
//! which digests there are, which can be mounted now, and waits here for digests to change.
//!
//! Invariant: a digest's tree is reported in use ([`ImageTrees::tree_in_use`]) while the
//! kernel holds any inode of it through the main mount, so a tree is never mounted over a
//! copy a process is inside.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuser::Notifier;

use super::inodes::NodeKey;
use super::notify::{Inval, Signal};
use super::rootfs::ROOTFS;
use super::{Connection, ImageFs};
use crate::store::Digest;

/// The binder's handle on the filesystem. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ImageTrees(Arc<ImageFs>);

impl ImageFs {
    /// What the rootfs-mount binder needs of this filesystem.
    pub(crate) fn image_trees(self: &Arc<Self>) -> ImageTrees {
        ImageTrees(Arc::clone(self))
    }
}

impl ImageTrees {
    /// A new image-tree connection onto the filesystem, for its session.
    pub(crate) fn connection(&self) -> Connection {
        Connection::image_trees(self.0.clone())
    }

    /// Starts sending the image-tree connection's invalidations through its session's
    /// notifier: from now on rootfs mounts are on, and a digest that goes drops its tree's
    /// entries in both connections. The connection is served by `threads` threads.
    pub(crate) fn start_notifier(&self, notifier: Notifier, threads: usize) {
        self.0.inval_tree_conn.start(notifier, None, threads);
        self.0.tree_conn_on.store(true, Ordering::Relaxed);
    }

    /// Waits until digests may have come or gone, or `limit` passed; true if trees are to
    /// be mounted now ([`Signal::MOUNT`]; a collection only wakes the wait, [`Signal::RELEASE`]).
    pub(crate) fn wait_for_digests(&self, limit: Duration) -> bool {
        self.0.digests_changed.wait(limit) & Signal::MOUNT != 0
    }

    /// Ends a [`wait_for_digests`](Self::wait_for_digests) at once (to stop the binder).
    pub(crate) fn wake(&self) {
        self.0.digests_changed.raise(Signal::MOUNT);
    }

    /// Every digest of the store.
    pub(crate) fn digests(&self) -> Vec<Digest> {
        self.0.store.digests()
    }

    /// Can digest `d`'s `rootfs/` be served now (present in the store and ready)? The tree
    /// mounted on `digests/<hex>/rootfs` is that of the digest's primary directory; other
    /// directories of the digest (`digests/<hex>@<repo>`) are served by the main mount.
    pub(crate) fn serves_tree(&self, d: &Digest) -> bool {
        let fs = &self.0;
        fs.primary_image(d).is_some_and(|i| {
            fs.digest_dir(&i)
                .is_some_and(|dir| fs.digest_ready(&i, &dir))
        })
    }

    /// The image file of digest `d`'s tree (its primary directory's `rootfs.erofs`) if
    /// its `rootfs/` can be served now: what the daemon mounts with the kernel's erofs.
    pub(crate) fn tree_image(&self, d: &Digest) -> Option<PathBuf> {
        let fs = &self.0;
        let i = fs.primary_image(d)?;
        let dir = fs.digest_dir(&i)?;
        fs.digest_ready(&i, &dir).then(|| dir.join("rootfs.erofs"))
    }

    /// Does the kernel hold an inode of digest `d`'s image tree? Before its tree is
    /// mounted of its own, that means the main mount's copy is (or was just) in use.
    pub(crate) fn tree_in_use(&self, d: &Digest) -> bool {
        self.0.inodes.lock().holds_tree(d)
    }

    /// Asks the kernel to drop its cached `digests/<hex>/rootfs` dentry (and whatever it
    /// caches below it that nobody uses), in both connections, so that a tree held only by
    /// the cache is let go.
    pub(crate) fn drop_cached_tree(&self, d: &Digest) {
        let fs = &self.0;
        let limit = Duration::from_secs(1);
        let ino = fs
            .primary_image(d)
            .and_then(|i| fs.inodes.lock().ino_of(&NodeKey::Digest(i)));
        if let Some(ino) = ino {
            fs.inval
                .send_and_wait(Inval::Entry(ino, ROOTFS.into()), limit);
        }
        // And the image-tree connection's entry, left cached by a rootfs mount that
        // someone detached (its root is inode 1 there).
        fs.inval_tree_conn
            .send_and_wait(Inval::Entry(fuser::INodeNo::ROOT.0, d.hex().into()), limit);
        // And what hangs below an entry a collection unhashed while the tree was in use
        // (`kept_trees.rs`).
        if let Some(i) = fs.primary_image(d) {
            fs.drop_cached_below(&i);
        }
    }

    /// A kernel erofs tree of digest `d` was mounted from the image file with metadata
    /// `file`: if our GC collects its directory, the directory waits in the trash until
    /// the kernel lets go of the file.
    pub(crate) fn kernel_tree_mounted(&self, d: Digest, file: &std::fs::Metadata) {
        self.0.kernel_held.lock().mounted(d, file);
    }

    /// Forgets the image files of kernel trees of digests not in `present` (the store's
    /// digests).
    pub(crate) fn forget_gone_kernel_trees(&self, present: &HashSet<Digest>) {
        self.0
            .kernel_held
            .lock()
            .forget_gone(|d| present.contains(d));
    }

    /// Deletes the collected directories whose kernel tree has let go of their image file,
    /// as `open_elsewhere` says of the file: only those waiting are looked at. True while
    /// one collected in the last two seconds still waits (the binder then looks again soon).
    pub(crate) fn release_kernel_held(&self, open_elsewhere: impl Fn(&Path) -> bool) -> bool {
        let fs = &self.0;
        let free = {
            // Lock order: inodes, then kernel_held. A directory the main mount still
            // serves from the trash waits for that too.
            let inodes = fs.inodes.lock();
            let mut k = fs.kernel_held.lock();
            if k.waiting_except(|_| false) == 0 {
                return false;
            }
            k.take_free(|dir| {
                inodes.zombies.values().any(|z| z == dir)
                    || open_elsewhere(&dir.join("rootfs.erofs"))
            })
        };
        for (d, trashed) in free {
            fs.store.release_trashed(&d, &trashed);
        }
        fs.kernel_held.lock().fresh(Duration::from_secs(2))
    }

    /// Is digest `d` still in the store?
    pub(crate) fn has_digest(&self, d: &Digest) -> bool {
        self.0.store.has_digest(d)
    }
}
