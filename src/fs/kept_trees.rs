//! What the kernel keeps cached of an image tree out of every lookup's reach, and the sweep
//! that lets it go, so that an image kept for its users (collected and waiting in the
//! trash, or removed by another writer and kept open) is released once they left
//! ([`KeptTrees`], run by the store watcher's thread).
//!
//! How it happens: when a digest leaves the store while a process is inside its tree (its
//! cwd, an open directory), the tree's top entry (`rootfs` or `digests/<hex>` in the main
//! mount, `<hex>` in the image-tree connection) is invalidated in use, and the kernel
//! unhashes it.
//! What the process looks up afterwards hangs below an entry no lookup reaches any more.
//! Image entries never expire (an image does not change), so once the process exits the
//! kernel keeps them cached, holding the image's inodes, and the collected copy would wait
//! in the trash, or the removed image stay open, until a memory shortage
//! (`mount-tests/test_rootfs_mounts.py`: `test_a_collected_tree_in_use_is_released_once_its_user_left`,
//! `test_an_image_another_writer_removed_in_use_is_closed_once_its_user_left`).
//!
//! How it is reached: a directory's inode still has its entry as its alias, unhashed or
//! not, so an invalidation of a name under a held directory's number finds the entry. An
//! entry in use is unhashed by it in turn; the next sweep reaches what hangs below it
//! through that entry's own inode.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use imagefs_erofs::{FileKind, Nid};

use super::ImageFs;
use super::inodes::{ImageId, NodeKey};
use super::notify::Inval;
use super::rootfs::ROOTFS;

impl ImageFs {
    /// Asks the kernel to drop, in both connections, every cached entry of `image`'s tree
    /// below a directory the kernel holds, with whatever nobody uses below it. Only names
    /// whose inode the kernel holds are sent (the image's directories are listed for them).
    pub(super) fn drop_cached_below(&self, image: &ImageId) {
        let (held, digest_dir) = {
            let inodes = self.inodes.lock();
            let held = inodes.held_tree_nids(image);
            (held, inodes.ino_of(&NodeKey::Digest(*image)))
        };
        if held.is_empty() {
            return;
        }
        let Ok(img) = self.image(image) else {
            return;
        };
        let mut sent = Vec::new();
        for (&nid, &ino) in &held {
            if !img
                .inode(Nid(nid))
                .is_ok_and(|i| i.kind == FileKind::Directory)
            {
                continue;
            }
            let listed = img.readdir(Nid(nid), 0, |e| {
                if held.contains_key(&e.nid.0) && e.name != b"." && e.name != b".." {
                    sent.push((ino, OsStr::from_bytes(e.name).to_os_string()));
                }
                true
            });
            if let Err(e) = listed {
                log::debug!("sha256:{image}: listing nid {nid} to drop its cached tree: {e}");
            }
        }
        log::debug!(
            "sha256:{image}: invalidating {} cached tree entries ({} inodes held)",
            sent.len(),
            held.len()
        );
        // In the main mount the tree's top is `rootfs` under the digest's own directory.
        if let Some(ino) = digest_dir {
            sent.push((ino, ROOTFS.into()));
        }
        let trees = self.tree_conn_on.load(Ordering::Relaxed);
        for (ino, name) in sent {
            if trees {
                self.inval_tree_conn.send(Inval::Entry(ino, name.clone()));
            }
            self.inval.send(Inval::Entry(ino, name));
        }
    }
}

/// The rounds over images kept for their users (collected ones waiting in the trash, and
/// those whose directory another writer removed, kept open) whose tree the kernel still
/// holds: each round due drops what the kernel only caches of such a tree
/// ([`ImageFs::drop_cached_below`]). A tree still in use loses its cached entries too (its
/// process looks them up again), so the rounds back off: the first 2 s after the image was
/// found kept, then twice as long each time, at most a minute.
#[derive(Default)]
pub(crate) struct KeptTrees(HashMap<ImageId, (Instant, Duration)>);

impl KeptTrees {
    const FIRST: Duration = Duration::from_secs(2);
    const MOST: Duration = Duration::from_secs(60);

    pub(crate) fn round(&mut self, fs: &ImageFs) {
        let kept: Vec<ImageId> = {
            // Lock order: inodes, then the open images' own (as `image_left`).
            let inodes = fs.inodes.lock();
            let left = fs.open_images.left_images();
            if inodes.zombies.is_empty() && left.is_empty() && self.0.is_empty() {
                return;
            }
            let all: HashSet<ImageId> = inodes.zombies.keys().copied().chain(left).collect();
            all.into_iter()
                .filter(|i| inodes.holds_tree(&i.digest))
                .collect()
        };
        self.0.retain(|i, _| kept.contains(i));
        let now = Instant::now();
        for i in kept {
            let (due, every) = self.0.entry(i).or_insert((now + Self::FIRST, Self::FIRST));
            if now >= *due {
                fs.drop_cached_below(&i);
                *every = (*every * 2).min(Self::MOST);
                *due = now + *every;
            }
        }
    }
}
