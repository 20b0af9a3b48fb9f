//! `digests/<hex>/rootfs/`: the image's own tree, read from `rootfs.erofs` in user space.
//!
//! Images are opened on first use and kept while the kernel holds any inode of their digest;
//! a collected digest's image stays open for those holders (see `inodes::Inodes::zombies`).
//! A corrupt image answers `EIO`, logged once per digest; other images are unaffected.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use fuser::{FileAttr, FileType, INodeNo};
use imagefs_erofs::{FileKind, Image, ImageError, Inode};
use log::Level;
use parking_lot::Mutex;

use super::attr;
use super::errno::Error;
use super::inodes::ImageId;

/// The name of the image tree inside a digest directory.
pub const ROOTFS: &str = "rootfs";
/// The image file, served only for `ready` digests.
pub const ROOTFS_IMAGE: &str = "rootfs.erofs";

#[derive(Default)]
pub struct OpenImages {
    open: Mutex<HashMap<ImageId, Arc<Image>>>,
    /// Images that failed already: logged once, then quietly.
    bad: Mutex<HashSet<ImageId>>,
}

impl OpenImages {
    /// The open image of digest `d`, whose directory is `dir`.
    pub fn get(&self, d: &ImageId, dir: &Path) -> Result<Arc<Image>, Error> {
        if let Some(img) = self.cached(d) {
            return Ok(img);
        }
        let path = dir.join(ROOTFS_IMAGE);
        let file =
            std::fs::File::open(&path).map_err(|e| Error::io(path.display().to_string(), &e))?;
        let img = Arc::new(Image::open(file).map_err(|e| self.error(d, e))?);
        Ok(self.open.lock().entry(*d).or_insert(img).clone())
    }

    /// The image of digest `d`, if it is open.
    pub fn cached(&self, d: &ImageId) -> Option<Arc<Image>> {
        self.open.lock().get(d).cloned()
    }

    /// Closes the image of a digest the kernel no longer holds anything of, or that left
    /// the store (a digest still in use reopens it from the trash).
    pub fn close(&self, d: &ImageId) {
        self.open.lock().remove(d);
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
pub fn xattr(
    img: &Image,
    nid: imagefs_erofs::Nid,
    name: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, ImageError> {
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
