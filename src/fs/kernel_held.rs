//! Collected images that a kernel erofs image tree still holds (`--rootfs-mounts=kernel`).
//!
//! A tree mounted with the kernel's erofs reads its `rootfs.erofs` without the daemon, so
//! the main mount's inode table cannot tell whether anyone still uses it. When our GC
//! collects such an image, its directory waits in the trash, as a FUSE tree's would, until
//! the kernel has let go of the file: the invalidation of `digests/<hex>` detaches the
//! tree lazily, and the kernel closes the file when the last process inside leaves it
//! (at once if nobody was): the superblock lets go of its loop device, whose autoclear
//! drops the device's reference on the file (or, mounted from the file itself, the
//! superblock drops it). Until then the trash, the in-use metric and the log say what
//! is really on disk; then the directory is deleted and "released" is logged, as for FUSE
//! trees.
//!
//! Whether anyone else has the file open is asked by the daemon (`daemon::lease_probe`:
//! the kernel grants a write lease only to a file's sole opener).
//!
//! Invariant: an entry is in [`KernelHeld::mounted`] only for a file a kernel tree was
//! mounted from, keyed by its (device, inode), so a directory of the same digest that the
//! tree never read is not kept.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::Digest;

/// The image file a kernel tree reads, and the collected images waiting for it to let go.
#[derive(Default)]
pub(crate) struct KernelHeld {
    /// (device, inode) of each image file a kernel tree was mounted from, to its digest.
    mounted: HashMap<(u64, u64), Digest>,
    /// Trashed directories whose `rootfs.erofs` a kernel tree may still hold, with when
    /// they were collected.
    waiting: Vec<(Digest, PathBuf, Instant)>,
}

impl KernelHeld {
    /// A kernel tree was mounted from the file with metadata `file` for digest `d`.
    pub(crate) fn mounted(&mut self, d: Digest, file: &std::fs::Metadata) {
        self.mounted.insert((file.dev(), file.ino()), d);
    }

    /// Forgets the mounted files of digests `keep` does not hold (gone from the store).
    pub(crate) fn forget_gone(&mut self, keep: impl Fn(&Digest) -> bool) {
        self.mounted.retain(|_, d| keep(d));
    }

    /// Our GC took `trashed` out of the store: keeps it if a kernel tree was mounted from
    /// its `rootfs.erofs`. True: the caller hands it back through [`take_free`].
    pub(crate) fn retain(&mut self, d: &Digest, trashed: &Path) -> bool {
        if self.mounted.is_empty() {
            // No kernel tree (FUSE trees, no trees): no stat under the store lock.
            return false;
        }
        let Ok(m) = std::fs::symlink_metadata(trashed.join("rootfs.erofs")) else {
            return false;
        };
        if self.mounted.remove(&(m.dev(), m.ino())).is_none() {
            return false;
        }
        self.waiting
            .push((*d, trashed.to_path_buf(), Instant::now()));
        true
    }

    /// How many collected directories wait for a kernel tree to let go, of those `also`
    /// does not count already.
    pub(crate) fn waiting_except(&self, also: impl Fn(&Path) -> bool) -> usize {
        self.waiting.iter().filter(|(_, p, _)| !also(p)).count()
    }

    /// Does trashed directory `p` wait for a kernel tree? Then it is deleted when the tree
    /// lets go ([`take_free`](Self::take_free)), not when the main mount's last inode of
    /// it is forgotten.
    pub(crate) fn is_waiting(&self, p: &Path) -> bool {
        self.waiting.iter().any(|(_, w, _)| w == p)
    }

    /// Was a directory collected less than `within` ago still waiting? Most are let go
    /// within milliseconds (an unused tree); one still in use after that (a running
    /// container) may wait for days, and is looked at at the binder's usual pace.
    pub(crate) fn fresh(&self, within: Duration) -> bool {
        self.waiting.iter().any(|(_, _, t)| t.elapsed() < within)
    }

    /// Takes out the waiting directories that `busy` (given the trashed directory) no
    /// longer says are in use; a directory already gone is dropped without a word (the
    /// digest came back and its trashed copy was deleted).
    pub(crate) fn take_free(&mut self, busy: impl Fn(&Path) -> bool) -> Vec<(Digest, PathBuf)> {
        let mut free = Vec::new();
        self.waiting.retain(|(d, trashed, _)| {
            if std::fs::symlink_metadata(trashed).is_err() {
                false
            } else if busy(trashed) {
                true
            } else {
                free.push((*d, trashed.clone()));
                false
            }
        });
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_file_a_tree_was_mounted_from_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::parse_hex(&"ab".repeat(32)).unwrap();
        let (mounted, other) = (dir.path().join("a"), dir.path().join("b"));
        for t in [&mounted, &other] {
            std::fs::create_dir(t).unwrap();
            std::fs::write(t.join("rootfs.erofs"), b"x").unwrap();
        }
        let mut k = KernelHeld::default();
        k.mounted(d, &std::fs::metadata(mounted.join("rootfs.erofs")).unwrap());
        assert!(
            !k.retain(&d, &other),
            "a directory the tree never read was kept"
        );
        assert!(k.retain(&d, &mounted));
        assert_eq!(k.waiting_except(|_| false), 1);
        assert_eq!(k.waiting_except(|p| p == mounted), 0);
        assert!(k.is_waiting(&mounted) && !k.is_waiting(&other));
        assert!(k.fresh(Duration::from_secs(60)) && !k.fresh(Duration::ZERO));
        assert!(k.take_free(|_| true).is_empty(), "released while in use");
        assert_eq!(k.take_free(|_| false), vec![(d, mounted.clone())]);
        assert!(!k.is_waiting(&mounted));
        assert!(!k.retain(&d, &mounted), "kept twice");
        // A trashed directory deleted meanwhile (its digest came back) is dropped, unreleased.
        k.mounted(d, &std::fs::metadata(other.join("rootfs.erofs")).unwrap());
        assert!(k.retain(&d, &other));
        std::fs::remove_dir_all(&other).unwrap();
        assert!(k.take_free(|_| false).is_empty());
        assert!(!k.is_waiting(&other));
    }
}
