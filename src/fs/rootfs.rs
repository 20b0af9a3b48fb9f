//! `digests/<hex>/rootfs/`: the image's own tree, read from `rootfs.erofs` in user space.
//!
//! Images (one per digest directory the mount shows: `inodes::ImageId`) are opened on first
//! use and kept while the kernel holds any inode of them. Their readers' caches share one
//! byte budget (`--cache-size`); an image's entries leave it when the image closes.
//!
//! Invariant (in use is never yanked, whoever removes the directory): while the inode table
//! holds an inode of an image, that image is open here. Both halves are kept under
//! the inode table's lock: an image inode is counted only with its image put back here if it
//! was closed meanwhile ([`OpenImages::keep`], by `ImageFs::entry`), and an image is closed
//! only when the kernel holds no inode of it (`ImageFs::forget`,
//! `ImageFs::image_left`). So an image whose directory left the store, by our GC or by
//! another writer (hypeman's `RemoveAll`, `imagefs gc`), goes on serving from its open file,
//! which keeps the removed `rootfs.erofs`'s bytes, until the kernel forgets the last inode.
//! A corrupt image answers `EIO`, logged once per digest; other images are unaffected. So does
//! a `rootfs.erofs` that is not a regular file (never opened if a device, never waited on if
//! a FIFO).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use fuser::{FileAttr, FileType, INodeNo};
use imagefs_erofs::{CacheBudget, FileKind, Image, ImageError, Inode, Nid};
use log::Level;
use parking_lot::{Mutex, RwLock};

use super::attr;
use super::errno::Error;
use super::inodes::{self, ImageId};
use crate::store::safe_open;

/// The name of the image tree inside a digest directory.
pub const ROOTFS: &str = "rootfs";
/// The image file, served only for `ready` digests.
pub const ROOTFS_IMAGE: &str = "rootfs.erofs";

pub struct OpenImages {
    /// Read by every request inside an image, changed only when an image opens or closes
    /// or the kernel is first given an inode of it: a read-write lock, so requests share it.
    open: RwLock<Open>,
    /// The one cache budget of every image opened here.
    budget: Arc<CacheBudget>,
    /// Images that failed already: logged once, then quietly.
    bad: Mutex<HashSet<ImageId>>,
    /// Images whose directory another writer removed from the store while the kernel held
    /// inodes of them:
    /// their image stays open for those, and its release is logged.
    left: Mutex<HashSet<ImageId>>,
}

impl Default for OpenImages {
    fn default() -> Self {
        OpenImages::new(Arc::new(CacheBudget::new(CacheBudget::DEFAULT)))
    }
}

/// The open images, by image and by slot (the high bits of their inodes' numbers: see
/// `inodes::image_ino`).
///
/// Invariant: `by_slot[s]` is `(d, by_id[d])` for every open image `d` whose slot `s` is
/// known, and `None` for a slot whose image is closed. So a request that names an image
/// inode by number finds its image without the inode table, and (the module doc's
/// invariant) finds it for every inode the kernel holds.
#[derive(Default)]
struct Open {
    by_id: HashMap<ImageId, Arc<Image>>,
    /// The slot of each image the kernel was given an inode of (fixed for the mount).
    slot_of: HashMap<ImageId, usize>,
    by_slot: Vec<Option<(ImageId, Arc<Image>)>>,
}

impl Open {
    /// Re-establishes the invariant for `d` after `by_id` changed.
    fn sync_slot(&mut self, d: &ImageId) {
        if let Some(&s) = self.slot_of.get(d)
            && let Some(e) = self.by_slot.get_mut(s)
        {
            *e = self.by_id.get(d).map(|img| (*d, img.clone()));
        }
    }
}

impl OpenImages {
    /// No image open yet; those opened will cache within `budget`.
    pub fn new(budget: Arc<CacheBudget>) -> Self {
        OpenImages {
            open: RwLock::default(),
            budget,
            bad: Mutex::default(),
            left: Mutex::default(),
        }
    }

    /// The open image of digest `d`, whose directory is `dir`.
    pub fn get(&self, d: &ImageId, dir: &Path) -> Result<Arc<Image>, Error> {
        if let Some(img) = self.cached(d) {
            return Ok(img);
        }
        let path = dir.join(ROOTFS_IMAGE);
        let file = safe_open::open_regular(&path).map_err(|e| self.open_error(d, &path, &e))?;
        let img = Arc::new(Image::open_in(file, &self.budget).map_err(|e| self.error(d, e))?);
        let mut open = self.open.write();
        let img = open.by_id.entry(*d).or_insert(img).clone();
        open.sync_slot(d);
        Ok(img)
    }

    /// The image of digest `d`, if it is open.
    pub fn cached(&self, d: &ImageId) -> Option<Arc<Image>> {
        self.open.read().by_id.get(d).cloned()
    }

    /// The image inode numbered `ino` (see `inodes::image_ino`) with its open image, if
    /// its image is open: how requests that name an image inode find it without the inode
    /// table. Every image inode the kernel holds is found (see [`Open`]).
    pub fn by_ino(&self, ino: u64) -> Option<(ImageId, Nid, Arc<Image>)> {
        let (slot, nid) = inodes::split_image_ino(ino)?;
        let open = self.open.read();
        let (d, img) = open.by_slot.get(usize::try_from(slot).ok()?)?.as_ref()?;
        Some((*d, Nid(nid), img.clone()))
    }

    /// Puts `img` back as `d`'s open image unless one is open: for an inode of it the
    /// kernel is about to hold, read from an image closed since (its digest left the store).
    /// `slot`: the image's slot, if its inodes have fixed numbers. Called under the inode
    /// table's lock (see the module doc).
    pub fn keep(&self, d: &ImageId, img: Arc<Image>, slot: Option<u64>) {
        let slot = slot.and_then(|s| usize::try_from(s).ok());
        {
            // The common case, every LOOKUP inside an image: nothing to change.
            let open = self.open.read();
            if open.by_id.contains_key(d) && slot.is_none_or(|s| open.slot_of.get(d) == Some(&s)) {
                return;
            }
        }
        let mut open = self.open.write();
        open.by_id.entry(*d).or_insert(img);
        if let Some(s) = slot {
            open.slot_of.insert(*d, s);
            if open.by_slot.len() <= s {
                open.by_slot.resize(s + 1, None);
            }
        }
        open.sync_slot(d);
    }

    /// Closes the image of a digest the kernel holds nothing of (under the inode table's
    /// lock). Returns whether it was kept open for the kernel after another writer removed
    /// its digest ([`OpenImages::left_in_use`]).
    pub fn close(&self, d: &ImageId) -> bool {
        {
            let mut open = self.open.write();
            open.by_id.remove(d);
            open.sync_slot(d);
        }
        self.left.lock().remove(d)
    }

    /// The images open only for the kernel, their digest removed by another writer.
    pub fn left_images(&self) -> Vec<ImageId> {
        self.left.lock().iter().copied().collect()
    }

    /// How many images are open only for the kernel, their digest removed by another writer.
    pub fn left_count(&self) -> usize {
        self.left.lock().len()
    }

    /// `d`'s directory left the store by another writer's hand while the kernel holds inodes of
    /// it: its image (if open) stays open for them. Returns whether that is news.
    pub fn left_in_use(&self, d: &ImageId) -> bool {
        self.open.read().by_id.contains_key(d) && self.left.lock().insert(*d)
    }

    /// Why `rootfs.erofs` of `d` (at `path`) did not open, as an errno reply. One that is not
    /// a regular file (a directory, a FIFO, a device: see `store::safe_open`) is a corrupt
    /// image, `EIO`, logged loudly once per digest.
    pub fn open_error(&self, d: &ImageId, path: &Path, e: &std::io::Error) -> Error {
        if e.kind() != std::io::ErrorKind::InvalidData {
            return Error::io(path.display().to_string(), e);
        }
        let level = if self.bad.lock().insert(*d) {
            Level::Error
        } else {
            Level::Debug
        };
        Error::new(
            fuser::Errno::EIO,
            level,
            format!("image of digest sha256:{d}: {e}"),
        )
    }

    /// An image error as an errno reply; corruption is logged loudly once per digest.
    pub fn error(&self, d: &ImageId, e: ImageError) -> Error {
        let errno = fuser::Errno::from_i32(e.errno());
        let loud = matches!(
            e,
            ImageError::Corrupt(_) | ImageError::Unsupported(_) | ImageError::Io(_)
        );
        let first = loud && self.bad.lock().insert(*d);
        let level = if first { Level::Error } else { Level::Debug };
        Error::new(errno, level, format!("image of digest sha256:{d}: {e}"))
    }
}

pub fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kernel's erofs shows one time for atime, mtime and ctime.
pub fn attr_of(i: &Inode) -> FileAttr {
    let t = attr::time(i.mtime, i64::from(i.mtime_nsec));
    FileAttr {
        ino: INodeNo(0),
        size: i.size,
        blocks: i.blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(i.kind),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// The value of xattr `name`, or the NUL-separated list of names (`name` = None).
pub fn xattr(img: &Image, nid: Nid, name: Option<&[u8]>) -> Result<Option<Vec<u8>>, ImageError> {
    let all = img.xattrs(nid)?;
    Ok(match name {
        Some(n) => all.into_iter().find(|(k, _)| k == n).map(|(_, v)| v),
        None => {
            let mut list = Vec::new();
            for (k, _) in all {
                list.extend_from_slice(&k);
                list.push(0);
            }
            Some(list)
        }
    })
}
