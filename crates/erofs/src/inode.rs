//! On-disk inodes (compact 32-byte and extended 64-byte) and their attributes.
//!
//! Invariants: a parsed [`InodeInfo`] has a known file type, a known data
//! layout, and an inode position computed with checked arithmetic. Sizes,
//! block addresses and xattr counts are still untrusted and are checked
//! again by the code that follows them.

use super::bytes::{le16, le32, le64};
use super::error::{ImageError, corrupt};
use super::sb::SuperBlock;
use super::source::Source;

/// An erofs node id (position of the inode in 32-byte slots).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nid(pub u64);

/// File type of an inode or directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    fn from_mode(mode: u16) -> Option<FileKind> {
        Some(match u32::from(mode) & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// From an erofs dirent `file_type` byte (`None` for unknown).
    pub(crate) fn from_dirent(t: u8) -> Option<FileKind> {
        Some(match t {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::CharDevice,
            4 => FileKind::BlockDevice,
            5 => FileKind::Fifo,
            6 => FileKind::Socket,
            7 => FileKind::Symlink,
            _ => return None,
        })
    }
}

/// Attributes of one inode, as the kernel's erofs driver reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub nid: Nid,
    /// Inode number the kernel shows (`st_ino`): the nid itself, so hard
    /// links (several dirents naming one nid) share it.
    pub ino: u64,
    pub kind: FileKind,
    /// Full `st_mode`: type bits and permission bits (incl. setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    /// Nanoseconds as stored (not validated to be < 1e9).
    pub mtime_nsec: u32,
    pub nlink: u32,
    /// Device number in Linux "new" encoding (as FUSE `rdev` expects);
    /// 0 unless a character or block device.
    pub rdev: u32,
    /// `st_blocks` in 512-byte units, as the kernel computes it.
    pub blocks: u64,
}

/// How an inode's data is laid out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Layout {
    /// Contiguous blocks from byte `start` (`None`: a hole, all zeros).
    Plain { start: Option<u64> },
    /// Contiguous blocks from byte `start`; the last partial block inline.
    Inline { start: u64 },
    /// Chunk-indexed; `format` is the raw chunk format, `chunkbits` log2 size.
    Chunked { format: u16, chunkbits: u32 },
    /// Compressed; `compact` selects the compact index format.
    Compressed { compact: bool },
    /// Device, fifo, socket: no data.
    None,
}

/// A parsed inode plus what the data, dir and xattr code need.
#[derive(Clone, Debug)]
pub(crate) struct InodeInfo {
    pub attr: Inode,
    /// Byte position of the inode in the image.
    pub pos: u64,
    /// 32 or 64.
    pub isize: u64,
    pub xattr_icount: u16,
    pub layout: Layout,
}

impl InodeInfo {
    /// Bytes of the inline xattr area after the inode.
    pub(crate) fn xattr_isize(&self) -> u64 {
        if self.xattr_icount == 0 {
            0
        } else {
            12 + 4 * (u64::from(self.xattr_icount) - 1)
        }
    }

    /// Byte position just past the inode and its inline xattrs.
    pub(crate) fn tail_pos(&self) -> Result<u64, ImageError> {
        self.pos
            .checked_add(self.isize + self.xattr_isize())
            .ok_or_else(|| ImageError::Corrupt("inode tail position overflows".into()))
    }
}

const EROFS_NULL_ADDR: u32 = u32::MAX;

/// Byte position of inode `nid`. Capped at 2^56 so that everything derived
/// from it (xattr, index and tail offsets) is computed without overflow.
pub(crate) fn inode_pos(sb: &SuperBlock, nid: Nid) -> Result<u64, ImageError> {
    let base = u64::from(sb.meta_blkaddr) << sb.blkbits;
    nid.0
        .checked_mul(32)
        .and_then(|o| o.checked_add(base))
        .filter(|&p| p < 1 << 56)
        .ok_or_else(|| ImageError::Corrupt(format!("nid {} out of range", nid.0)))
}

/// Read and parse inode `nid`.
pub(crate) fn load(src: &Source, sb: &SuperBlock, nid: Nid) -> Result<InodeInfo, ImageError> {
    let pos = inode_pos(sb, nid)?;
    let mut raw = [0u8; 64];
    let (head, _) = raw.split_at_mut(32);
    src.read_cached(head, pos)?;
    let format = le16(&raw, 0, "i_format")?;
    if format & !0x1f != 0 {
        return Err(ImageError::Unsupported(format!(
            "inode {} format bits {format:#x}",
            nid.0
        )));
    }
    let extended = format & 1 != 0;
    let datalayout = (format >> 1) & 7;
    let nlink_one = format & 0x10 != 0;
    if extended && let Some(tail) = raw.get_mut(32..64) {
        src.read_cached(tail, pos.saturating_add(32))?;
    }
    let xattr_icount = le16(&raw, 2, "i_xattr_icount")?;
    let mode = le16(&raw, 4, "i_mode")?;
    let Some(kind) = FileKind::from_mode(mode) else {
        return corrupt(format!("inode {} has bogus mode {mode:o}", nid.0));
    };
    let i_u = le32(&raw, 16, "i_u")?;
    let (isize, size, uid, gid, mtime, mtime_nsec, nlink) = if extended {
        (
            64u64,
            le64(&raw, 8, "i_size")?,
            le32(&raw, 24, "i_uid")?,
            le32(&raw, 28, "i_gid")?,
            le64(&raw, 32, "i_mtime")? as i64,
            le32(&raw, 40, "i_mtime_nsec")?,
            le32(&raw, 44, "i_nlink")?,
        )
    } else {
        let nlink = if nlink_one && kind != FileKind::Directory {
            1
        } else {
            u32::from(le16(&raw, 6, "i_nlink")?)
        };
        (
            32u64,
            u64::from(le32(&raw, 8, "i_size")?),
            u32::from(le16(&raw, 24, "i_uid")?),
            u32::from(le16(&raw, 26, "i_gid")?),
            sb.epoch.wrapping_add(i64::from(le32(&raw, 12, "i_mtime")?)),
            sb.fixed_nsec,
            nlink,
        )
    };
    let bs = sb.block_size();
    let has_data = matches!(
        kind,
        FileKind::Regular | FileKind::Directory | FileKind::Symlink
    );
    let layout = if !has_data {
        Layout::None
    } else {
        match datalayout {
            0 if i_u == EROFS_NULL_ADDR => Layout::Plain { start: None },
            0 => Layout::Plain {
                start: Some(u64::from(i_u) << sb.blkbits),
            },
            2 => Layout::Inline {
                start: u64::from(i_u) << sb.blkbits,
            },
            1 | 3 => Layout::Compressed {
                compact: datalayout == 3,
            },
            4 => {
                let format = (i_u & 0xffff) as u16;
                if format & !0x3f != 0 {
                    return Err(ImageError::Unsupported(format!(
                        "inode {} chunk format {format:#x}",
                        nid.0
                    )));
                }
                let chunkbits = sb.blkbits + u32::from(format & 0x1f);
                if chunkbits > 40 {
                    return corrupt(format!("inode {} chunk size too large", nid.0));
                }
                Layout::Chunked { format, chunkbits }
            }
            other => {
                return Err(ImageError::Unsupported(format!(
                    "inode {} data layout {other}",
                    nid.0
                )));
            }
        }
    };
    let rdev = match kind {
        FileKind::CharDevice | FileKind::BlockDevice => i_u,
        _ => 0,
    };
    let blocks = match layout {
        Layout::Compressed { .. } => u64::from(i_u) << (sb.blkbits - 9),
        _ => size.div_ceil(bs).saturating_mul(bs) >> 9,
    };
    let info = InodeInfo {
        attr: Inode {
            nid,
            ino: nid.0,
            kind,
            mode: u32::from(mode),
            uid,
            gid,
            size,
            mtime,
            mtime_nsec,
            nlink,
            rdev,
            blocks,
        },
        pos,
        isize,
        xattr_icount,
        layout,
    };
    if let Layout::Inline { .. } = info.layout {
        // The inline tail must sit inside one metadata block (as the kernel checks).
        let tail_len = size - size.saturating_sub(1) / bs * bs;
        if size != 0 {
            let off = info.tail_pos()? % bs;
            if off + tail_len > bs {
                return corrupt(format!("inode {} inline data crosses a block", nid.0));
            }
        }
    }
    Ok(info)
}
