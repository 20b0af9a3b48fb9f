//! Open file handles (directories have none: OPENDIR is not used; nor has an image's file
//! opened on the main mount: [`NO_HANDLE`]), and the passthrough backing ids behind them.
//!
//! Invariants: a handle number is never reused within a mount; an inode has at most one
//! live backing id, shared by every passthrough open of it and released with the last.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Weak};

use fuser::BackingId;
use imagefs_erofs::{Image, Nid};

use super::inodes::ImageId;

/// The handle of an open that keeps none: an image's regular file opened on the main mount.
/// Its reads name the inode, found by number like the image-tree connection's (the kernel
/// holds an open file's inode, so its image stays open: `rootfs.rs`), and its RELEASE has
/// nothing to drop. [`Handles::insert`] never gives it out (numbers start at 1).
pub const NO_HANDLE: u64 = 0;

pub enum Handle {
    /// A store file opened for passthrough: the kernel reads it; we keep the backing id.
    Backed { _id: Arc<BackingId> },
    /// A store file, read with pread. With passthrough, [`Handles::attach_backing`]
    /// replaces it by [`Handle::Backed`] once the kernel has the file. `changing`: its
    /// digest is not ready, so the file may still be rewritten (a pull's metadata.json).
    File { file: File, changing: bool },
    /// A regular file of an image.
    ImageFile {
        id: ImageId,
        image: Arc<Image>,
        nid: Nid,
    },
    /// Generated content (metrics).
    Bytes(Vec<u8>),
}

#[derive(Default)]
pub struct Handles {
    open: HashMap<u64, Arc<Handle>>,
    next: u64,
    /// One backing id per inode, shared by all its passthrough opens.
    backing: HashMap<u64, Weak<BackingId>>,
}

impl Handles {
    pub fn insert(&mut self, h: Arc<Handle>) -> u64 {
        self.next += 1;
        self.open.insert(self.next, h);
        self.next
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.open.get(&fh).cloned()
    }

    pub fn remove(&mut self, fh: u64) {
        self.open.remove(&fh);
    }

    /// Keeps the backing id of a passthrough open alive until its release.
    pub fn attach_backing(&mut self, fh: u64, id: Arc<BackingId>) {
        self.open.insert(fh, Arc::new(Handle::Backed { _id: id }));
    }

    pub fn backing(&self, ino: u64) -> Option<Arc<BackingId>> {
        self.backing.get(&ino).and_then(Weak::upgrade)
    }

    pub fn set_backing(&mut self, ino: u64, id: &Arc<BackingId>) {
        self.backing.retain(|_, w| w.strong_count() > 0);
        self.backing.insert(ino, Arc::downgrade(id));
    }
}
