//! imagefs-erofs: a read-only reader of erofs images, written for imagefs's
//! `rootfs/` trees (the FUSE layer serves an image's files straight from it).
//!
//! This is our own reader of the erofs on-disk format; the kernel's erofs
//! driver (`fs/erofs`) is the reference, and the tests compare this reader
//! with a kernel mount of the same image entry by entry.
//!
//! # Rules
//! * **pread only, never mmap**: the image is read with positional reads, so
//!   an image truncated or rewritten underneath a reader gives an error
//!   (`EIO`), never `SIGBUS`.
//! * **Bounded caches**: every cache entry of an image counts against a byte
//!   budget ([`CacheBudget`]) that images may share (below); no input makes
//!   memory grow without bound.
//! * **Every offset and length from the image is checked; errors, never
//!   panics**: bytes of a corrupt, truncated or hostile image give
//!   [`ImageError::Corrupt`], never a panic, an unbounded loop or an
//!   unbounded allocation. There is no `unsafe` code in this crate.
//!
//! # Supported format
//! Superblock (block sizes 512 B..64 KiB; crc32c verified when flagged, as
//! the kernel does at mount), compact and extended inodes, flat plain /
//! flat inline / chunk-based data (4- and 8-byte chunk indexes, holes),
//! directories, xattrs (inline, shared, short and long name prefixes), LZ4
//! compressed files with legacy and compact (4B/2B) indexes, big
//! pclusters, 0-padding, HEAD2, uncompressed (shifted and interlaced)
//! pclusters, and tail-packed inline pclusters (ztailpacking).
//!
//! # Refused
//! Rejected with [`ImageError::Unsupported`]: fragments/dedupe (feature
//! 0x20), 48-bit layout, metabox, extra devices, algorithms other than LZ4
//! (LZMA, DEFLATE, Zstandard).
//!
//! # API contract
//! * [`Image`] is `Send + Sync`; share it with `Arc`. All methods take `&self`.
//! * [`Image::inode`] returns attributes exactly as the kernel shows them;
//!   `ino` is the nid (the kernel's `st_ino`), so hard links share it. An
//!   inode is found only if its position in the image is below 2^56, so a
//!   nid whose inode loads is below 2^51; nids that [`Image::readdir`] and
//!   [`Image::lookup`] return are taken from directory entries and are
//!   checked only when their inode is loaded. A caller that puts its own
//!   bits above the nid (imagefs numbers several images' inodes in one
//!   mount) must check the nid fits.
//! * [`Image::lookup`] costs O(log n) block reads; names the FUSE layer
//!   must never serve (`.`, `..`, empty, containing `/` or NUL) are never
//!   found.
//! * [`Image::readdir`] never yields `.` or `..` (the FUSE layer makes its
//!   own, with its own inode numbers) and skips untrusted names with a
//!   warning. Offsets are opaque and resumable; every offset handed out
//!   is at least 12, so 0 means "start" and 1 and 2 are free for the FUSE
//!   layer's `.` and `..`.
//! * [`Image::read`] fills the whole buffer unless EOF comes first. Flat and
//!   chunked data is read straight into the buffer. Of compressed data, only
//!   pclusters overlapping the request are decoded: LZ4 extents the request
//!   covers whole are decoded straight into the buffer (adjacent pclusters
//!   read with one `pread`), and an extent only partly covered is decoded
//!   whole (bounded by mkfs to a few MiB) into the extent cache, so reads
//!   that split it decode it once.
//! * Every error caused by image bytes is [`ImageError::Corrupt`] (map with
//!   [`ImageError::errno`]); no input can make this crate panic, loop
//!   without bound, or allocate more than a bounded amount (records <= 32
//!   MiB, extents <= 16 MiB).
//!
//! # Caches (one byte budget, shared by images)
//! Raw 4 KiB windows of the image (metadata and pclusters), parsed inodes,
//! compression headers and decoded extents are entries of one [`CacheBudget`]:
//! [`Image::open_in`] puts an image in a budget shared with others (a daemon's
//! one budget for all its images), [`Image::open`] gives it one of its own of
//! [`CacheBudget::DEFAULT`] bytes. The budget is a sharded two-generation LRU
//! that never holds more than its size; an image's entries leave it when the
//! image is dropped, and [`CacheBudget::age`] drops what stayed idle. Besides,
//! each thread that reads compressed data keeps one buffer of at most 4 MiB for
//! the pclusters of a request.
//!
//! # Cold walks
//! Listing a directory block advises the kernel (`POSIX_FADV_WILLNEED`) of the
//! pages holding its entries' inodes, loading a directory's inode advises its first
//! blocks, and the subdirectories of a listed block are listed ahead by one
//! background thread per image (on an image of its own with a zero budget: it
//! fills the page cache only, and ends after a second without work). So the reads
//! of a cold walk are issued many at a time rather than one after another.
//!
//! # Feature `testing`
//! Module `testing`: the skip policy of tests that need root, the kernel's erofs or
//! `mkfs.erofs` (`IMAGEFS_TESTS_STRICT=1` makes them fail instead), and the
//! walk and mutation targets shared by the mutation test and the fuzz target.

#![forbid(unsafe_code)]

mod ahead;
mod bytes;
mod cache;
mod data;
mod dir;
mod error;
mod inode;
mod lz4;
mod sb;
mod source;
pub mod thread_buf;
mod xattr;
mod zindex;
mod zmap;

#[cfg(feature = "testing")]
pub mod testing;

use std::fs::File;
use std::sync::{Arc, OnceLock};

pub use cache::CacheBudget;
pub use dir::DirEntry;
pub use error::ImageError;
pub use inode::{FileKind, Inode, Nid};
pub use xattr::Xattrs;

use bytes::to_usize;
use cache::{ImageCache, Key};
use inode::InodeInfo;
use sb::{SB_OFFSET, SB_SIZE, SuperBlock};
use source::Source;

/// Longest symlink target the kernel returns (`PAGE_SIZE - 1`).
const SYMLINK_MAX: usize = 4095;

/// Long xattr prefix table: (base name index, infix) per entry.
type PrefixTable = Result<Vec<(u8, Vec<u8>)>, String>;

/// An open erofs image.
pub struct Image {
    src: Source,
    sb: SuperBlock,
    /// Long xattr name prefixes (base index, infix), loaded on first use.
    prefixes: OnceLock<PrefixTable>,
    /// Subdirectories to list ahead of a walk (`ahead`).
    ahead: ahead::Ahead,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("sb", &self.sb)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Open an image with a cache budget of its own ([`CacheBudget::DEFAULT`]); checks
    /// the superblock and the root inode.
    pub fn open(file: File) -> Result<Image, ImageError> {
        Image::open_in(file, &Arc::new(CacheBudget::new(CacheBudget::DEFAULT)))
    }

    /// Open an image whose caches count against `budget`, shared with other images;
    /// checks the superblock and the root inode. Its entries leave the budget when the
    /// image is dropped.
    pub fn open_in(file: File, budget: &Arc<CacheBudget>) -> Result<Image, ImageError> {
        let src = Source::new(file, ImageCache::new(Arc::clone(budget)));
        let mut raw = [0u8; SB_SIZE];
        src.read_exact_at(&mut raw, SB_OFFSET)?;
        let sb = SuperBlock::parse(&raw)?;
        if SuperBlock::wants_checksum(&raw)? {
            let mut data = vec![0u8; to_usize(sb.checksum_len(), "checksum length")?];
            src.read_exact_at(&mut data, SB_OFFSET)?;
            SuperBlock::verify_checksum(&data)?;
        }
        let img = Image {
            src,
            sb,
            prefixes: OnceLock::new(),
            ahead: ahead::Ahead::new(true),
        };
        let root = img.inode(img.root())?;
        if root.kind != FileKind::Directory {
            return Err(ImageError::Corrupt("root inode is not a directory".into()));
        }
        Ok(img)
    }

    /// The root directory's nid.
    pub fn root(&self) -> Nid {
        Nid(self.sb.root_nid)
    }

    /// Parsed inode, cached.
    fn info(&self, nid: Nid) -> Result<InodeInfo, ImageError> {
        if let Some(i) = self.src.cache.get::<InodeInfo>(Key::Inode(nid.0)) {
            return Ok((*i).clone());
        }
        let info = inode::load(&self.src, &self.sb, nid)?;
        if info.attr.kind == FileKind::Directory {
            self.prefetch_dir_blocks(&info);
        }
        self.src
            .cache
            .insert(Key::Inode(nid.0), Arc::new(info.clone()));
        Ok(info)
    }

    /// Attributes of inode `nid`.
    pub fn inode(&self, nid: Nid) -> Result<Inode, ImageError> {
        Ok(self.info(nid)?.attr)
    }

    /// The nid named `name` in directory `dir`, if any.
    pub fn lookup(&self, dir: Nid, name: &[u8]) -> Result<Option<Nid>, ImageError> {
        self.lookup_impl(dir, name)
    }

    /// Call `f` for each entry of `dir` from `offset` (0 = start) until it
    /// returns `false`; resume later with the last entry's `offset`.
    pub fn readdir(
        &self,
        dir: Nid,
        offset: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> Result<(), ImageError> {
        self.readdir_impl(dir, offset, &mut f)
    }

    /// Read file data at `offset`; the result is short only at EOF.
    pub fn read(&self, nid: Nid, offset: u64, buf: &mut [u8]) -> Result<usize, ImageError> {
        let info = self.info(nid)?;
        match info.attr.kind {
            FileKind::Regular | FileKind::Symlink => self.read_data(&info, offset, buf),
            FileKind::Directory => Err(ImageError::IsDir),
            _ => Err(ImageError::NoData),
        }
    }

    /// Target of symlink `nid` (as the kernel returns it: at most 4095 bytes, up to the first NUL).
    pub fn readlink(&self, nid: Nid) -> Result<Vec<u8>, ImageError> {
        let info = self.info(nid)?;
        if info.attr.kind != FileKind::Symlink {
            return Err(ImageError::NotSymlink);
        }
        let len = info.attr.size.min(SYMLINK_MAX as u64) as usize;
        let mut v = vec![0u8; len];
        let n = self.read_data(&info, 0, &mut v)?;
        v.truncate(n);
        if let Some(nul) = v.iter().position(|&b| b == 0) {
            v.truncate(nul);
        }
        Ok(v)
    }

    /// All extended attributes as (full name, value), in the kernel's order.
    pub fn xattrs(&self, nid: Nid) -> Result<Xattrs, ImageError> {
        self.xattrs_impl(nid)
    }
}

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn image_is_send_sync() {
        assert_send_sync::<super::Image>();
    }
}
