//! Directories: dirent blocks, O(log n) lookup and resumable readdir.
//!
//! A directory's data is a sequence of blocks; each block starts with an
//! array of 12-byte dirents (`nid: u64, nameoff: u16, file_type: u8, _`)
//! followed by the names, unterminated except the last one in a block,
//! which ends at a NUL or the block end. Names are sorted (bytewise) within
//! and across blocks, so lookup binary-searches the blocks by their first
//! name and then the entries of one block.
//!
//! Readdir offsets are `block * block_size + index * 12` of the next entry
//! to return; 0 is the start. Every offset handed out is >= 12, so the
//! FUSE layer may use 1 and 2 for the `.` and `..` it synthesizes.
//! The on-disk `.` and `..` entries are never returned (the FUSE layer
//! knows the real parent); other untrusted names (empty, or containing `/`
//! or NUL) are skipped with a warning.

use super::Image;
use super::bytes::{byte, le16, le64, to_usize};
use super::error::{ImageError, corrupt};
use super::inode::{FileKind, InodeInfo, Layout, Nid, inode_pos};

const DIRENT: usize = 12;
const NAME_MAX: usize = 255;
/// Bytes of a directory's blocks prefetched when its inode is loaded.
const DIR_PREFETCH: u64 = 128 << 10;

/// One directory entry handed to the `readdir` callback.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    pub name: &'a [u8],
    pub nid: Nid,
    /// Type from the dirent (`None` if the image says "unknown").
    pub kind: Option<FileKind>,
    /// Offset to pass to `readdir` to continue after this entry.
    pub offset: u64,
}

/// A parsed view of one dirent block (`d` is the valid part of the block).
struct Block<'a> {
    d: &'a [u8],
    count: usize,
}

impl<'a> Block<'a> {
    fn parse(d: &'a [u8]) -> Result<Block<'a>, ImageError> {
        let nameoff0 = usize::from(le16(d, 8, "dirent nameoff")?);
        if nameoff0 < DIRENT || nameoff0 >= d.len() || nameoff0 % DIRENT != 0 {
            return corrupt(format!("invalid first dirent nameoff {nameoff0}"));
        }
        Ok(Block {
            d,
            count: nameoff0 / DIRENT,
        })
    }

    /// Entry `i`: (name, nid, file_type byte).
    fn entry(&self, i: usize) -> Result<(&'a [u8], u64, u8), ImageError> {
        let off = i * DIRENT;
        let nid = le64(self.d, off, "dirent nid")?;
        let start = usize::from(le16(self.d, off + 8, "dirent nameoff")?);
        let ft = byte(self.d, off + 10, "dirent type")?;
        let end = if i + 1 < self.count {
            usize::from(le16(self.d, off + DIRENT + 8, "dirent nameoff")?)
        } else {
            let tail = self.d.get(start..).unwrap_or_default();
            start + tail.iter().position(|&b| b == 0).unwrap_or(tail.len())
        };
        match self.d.get(start..end) {
            Some(name) if name.len() <= NAME_MAX => Ok((name, nid, ft)),
            _ => corrupt(format!("bogus dirent name range {start}..{end}")),
        }
    }
}

/// Is `name` acceptable to serve (not `.`/`..`/empty, no `/` or NUL)?
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

impl Image {
    /// The valid bytes of directory block `b` of `info`.
    fn dir_block(&self, info: &InodeInfo, b: u64) -> Result<Vec<u8>, ImageError> {
        let bs = self.sb.block_size();
        let size = info.attr.size;
        let off = b
            .checked_mul(bs)
            .filter(|&o| o < size)
            .ok_or_else(|| ImageError::Corrupt("dir block out of range".into()))?;
        let len = to_usize((size - off).min(bs), "dir block")?;
        let tail_start = size.saturating_sub(1) / bs * bs;
        match info.layout {
            Layout::Plain { start: Some(s) } => self.src.read_vec(s.saturating_add(off), len),
            Layout::Inline { start } if off < tail_start => {
                self.src.read_vec(start.saturating_add(off), len)
            }
            Layout::Inline { .. } => self.src.read_vec(info.tail_pos()?, len),
            _ => {
                let mut v = vec![0u8; len];
                let n = self.read_data(info, off, &mut v)?;
                v.truncate(n);
                Ok(v)
            }
        }
    }

    /// Starts reading the first blocks of directory `info` (its inode was just loaded:
    /// a walk lists it next). Inline-only directories are already in the inode's window.
    pub(crate) fn prefetch_dir_blocks(&self, info: &InodeInfo) {
        let size = info.attr.size;
        let blocks_len = match info.layout {
            Layout::Plain { start: Some(s) } => Some((s, size)),
            Layout::Inline { start } => {
                let tail_start =
                    size.saturating_sub(1) / self.sb.block_size() * self.sb.block_size();
                Some((start, tail_start))
            }
            _ => None,
        };
        if let Some((start, len)) = blocks_len.filter(|&(_, len)| len > 0) {
            self.src.prefetch([(start, len.min(DIR_PREFETCH))]);
        }
    }

    fn dir_info(&self, dir: Nid) -> Result<InodeInfo, ImageError> {
        let info = self.info(dir)?;
        if info.attr.kind != FileKind::Directory {
            return Err(ImageError::NotDir);
        }
        Ok(info)
    }

    pub(crate) fn lookup_impl(&self, dir: Nid, name: &[u8]) -> Result<Option<Nid>, ImageError> {
        let info = self.dir_info(dir)?;
        if !valid_name(name) || name.len() > NAME_MAX {
            return Ok(None);
        }
        let nblocks = info.attr.size.div_ceil(self.sb.block_size());
        // Find the last block whose first name is <= name.
        let (mut lo, mut hi) = (0u64, nblocks);
        let mut candidate = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let data = self.dir_block(&info, mid)?;
            let blk = Block::parse(&data)?;
            let (first, nid, _) = blk.entry(0)?;
            match name.cmp(first) {
                std::cmp::Ordering::Less => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(Nid(nid))),
                std::cmp::Ordering::Greater => {
                    candidate = Some(data);
                    lo = mid + 1;
                }
            }
        }
        let Some(data) = candidate else {
            return Ok(None);
        };
        let blk = Block::parse(&data)?;
        let (mut lo, mut hi) = (1usize, blk.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (n, nid, _) = blk.entry(mid)?;
            match name.cmp(n) {
                std::cmp::Ordering::Less => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(Nid(nid))),
                std::cmp::Ordering::Greater => lo = mid + 1,
            }
        }
        Ok(None)
    }

    pub(crate) fn readdir_impl(
        &self,
        dir: Nid,
        offset: u64,
        f: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), ImageError> {
        let info = self.dir_info(dir)?;
        let bs = self.sb.block_size();
        let nblocks = info.attr.size.div_ceil(bs);
        let mut b = offset / bs;
        let mut first = to_usize((offset % bs).div_ceil(DIRENT as u64), "readdir offset")?;
        while b < nblocks {
            let data = self.dir_block(&info, b)?;
            let blk = Block::parse(&data)?;
            // The caller (READDIRPLUS, `find`) loads these entries' inodes next: start
            // reading all their windows now rather than one at a time.
            // Its subdirectories are listed ahead, a level before the walk gets there.
            let entries: Vec<_> = (first..blk.count)
                .filter_map(|i| blk.entry(i).ok())
                .collect();
            self.src.prefetch(
                entries
                    .iter()
                    .filter_map(|e| inode_pos(&self.sb, Nid(e.1)).ok())
                    .map(|pos| (pos, 64)),
            );
            let dirs: Vec<Nid> = entries
                .iter()
                .filter(|e| {
                    FileKind::from_dirent(e.2) == Some(FileKind::Directory) && valid_name(e.0)
                })
                .map(|e| Nid(e.1))
                .collect();
            self.list_ahead(&dirs);
            for i in first..blk.count {
                let (name, nid, ft) = blk.entry(i)?;
                let next = if i + 1 < blk.count {
                    b * bs + ((i + 1) * DIRENT) as u64
                } else {
                    (b + 1) * bs
                };
                if !valid_name(name) {
                    let expected = (name == b"." && nid == dir.0) || name == b"..";
                    if !expected {
                        log::warn!(
                            "erofs dir nid {}: skipping untrusted entry name {:?}",
                            dir.0,
                            String::from_utf8_lossy(name)
                        );
                    }
                    continue;
                }
                let e = DirEntry {
                    name,
                    nid: Nid(nid),
                    kind: FileKind::from_dirent(ft),
                    offset: next,
                };
                if !f(e) {
                    return Ok(());
                }
            }
            first = 0;
            b += 1;
        }
        Ok(())
    }
}
