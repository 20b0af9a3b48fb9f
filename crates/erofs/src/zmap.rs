//! Compressed-file block mapping: the z_erofs map header, and offsets to
//! extents over the lcluster records that `zindex` decodes.
//!
//! This follows the kernel's `fs/erofs/zmap.c`: an offset maps to an
//! [`Extent`] — the logical range of one pcluster's decoded output, its
//! physical location, and how to decode it. Invariants: every walk over
//! lclusters moves strictly in one direction (lookback by delta0 >= 1,
//! lookahead by delta1 >= 1) so it terminates on any input; every
//! position is computed with checked arithmetic; extents are bounded by
//! `MAX_EXTENT` decoded bytes and `MAX_PCLUSTER` physical bytes.

use super::bytes::{byte, le16};
use super::error::{ImageError, corrupt};
use super::inode::InodeInfo;
use super::sb::SuperBlock;
use super::source::Source;

pub(super) const ADVISE_COMPACTED_2B: u16 = 0x0001;
pub(super) const ADVISE_BIG_PCLUSTER_1: u16 = 0x0002;
pub(super) const ADVISE_BIG_PCLUSTER_2: u16 = 0x0004;
const ADVISE_INLINE_PCLUSTER: u16 = 0x0008;
const ADVISE_INTERLACED_PCLUSTER: u16 = 0x0010;
const ADVISE_FRAGMENT_PCLUSTER: u16 = 0x0020;

pub(super) const TYPE_PLAIN: u8 = 0;
const TYPE_HEAD1: u8 = 1;
pub(super) const TYPE_NONHEAD: u8 = 2;
const TYPE_HEAD2: u8 = 3;

pub(super) const D0_CBLKCNT: u32 = 1 << 11;

/// Largest decoded extent we accept (the kernel caps pclusters similarly).
pub(crate) const MAX_EXTENT: u64 = 16 << 20;
/// Largest physical cluster we accept.
const MAX_PCLUSTER: u64 = 4 << 20;

/// How an extent's physical bytes become its logical bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decode {
    /// Stored uncompressed, logical start at physical start.
    Shifted,
    /// Stored uncompressed, rotated by the in-block offset of the start.
    Interlaced,
    /// LZ4 block.
    Lz4,
}

/// One decoded extent of a compressed file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    /// Logical start and length (length > 0).
    pub la: u64,
    pub llen: u64,
    /// Physical position and length of the pcluster.
    pub pa: u64,
    pub plen: u64,
    pub decode: Decode,
}

/// Per-inode compression parameters from the map header.
#[derive(Clone, Debug)]
pub(crate) struct ZInfo {
    pub(super) compact: bool,
    pub(super) advise: u16,
    pub(super) algs: [u8; 2],
    pub(super) lcbits: u32,
    /// Position of the first lcluster index record.
    pub(super) ebase: u64,
    /// Number of compact index records (kernel: blocks of `i_size`).
    pub(super) totalidx: u64,
    pub(super) size: u64,
    /// ztailpacking: (inline data position, size, head lcn of the tail extent).
    pub(super) tail: Option<(u64, u64, u64)>,
}

/// One decoded lcluster index record.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Lcluster {
    pub(super) ty: u8,
    pub(super) clusterofs: u64,
    pub(super) pblk: u64,
    pub(super) delta0: u64,
    pub(super) delta1: u64,
    pub(super) cblkcnt: Option<u64>,
    /// Position just past this record's pack (ztailpacking data follows).
    pub(super) nextpackoff: u64,
}

impl ZInfo {
    /// Parse the map header of compressed inode `info`.
    pub(crate) fn load(
        src: &Source,
        sb: &SuperBlock,
        info: &InodeInfo,
        compact: bool,
    ) -> Result<ZInfo, ImageError> {
        let hpos = info
            .tail_pos()?
            .checked_add(7)
            .map(|p| p & !7)
            .ok_or_else(|| ImageError::Corrupt("map header position overflows".into()))?;
        let mut h = [0u8; 8];
        src.read_cached(&mut h, hpos)?;
        let clusterbits = byte(&h, 7, "h_clusterbits")?;
        if clusterbits & 0x80 != 0 {
            return Err(ImageError::Unsupported("fragment-packed file".into()));
        }
        let advise = le16(&h, 4, "h_advise")?;
        if advise & ADVISE_FRAGMENT_PCLUSTER != 0 {
            return Err(ImageError::Unsupported("fragment pcluster".into()));
        }
        let at = byte(&h, 6, "h_algorithmtype")?;
        let lcbits = sb.blkbits + u32::from(clusterbits & 15);
        if lcbits > 30 {
            return corrupt("lcluster size too large");
        }
        if compact
            && ((advise & ADVISE_BIG_PCLUSTER_1 == 0) != (advise & ADVISE_BIG_PCLUSTER_2 == 0))
        {
            return corrupt("big pcluster head1/2 of compact indexes inconsistent");
        }
        let size = info.attr.size;
        let mut z = ZInfo {
            compact,
            advise,
            algs: [at & 15, at >> 4],
            lcbits,
            ebase: hpos + 8,
            totalidx: size.div_ceil(sb.block_size()),
            size,
            tail: None,
        };
        if advise & ADVISE_INLINE_PCLUSTER != 0 && size > 0 {
            let idata_size = u64::from(le16(&h, 2, "h_idata_size")?);
            let last = (size - 1) >> lcbits;
            let m = z.load_lcluster(src, sb, last, false)?;
            let idataoff = m.nextpackoff;
            let (head_lcn, _) = z.find_head(src, sb, last, (size - 1) & z.lcmask(), m)?;
            let bs = sb.block_size();
            if idata_size == 0 || (idataoff % bs) + idata_size > bs {
                return corrupt("invalid tail-packing pcluster size");
            }
            z.tail = Some((idataoff, idata_size, head_lcn));
        }
        Ok(z)
    }

    pub(super) fn lcmask(&self) -> u64 {
        (1u64 << self.lcbits) - 1
    }

    fn big(&self, ty: u8) -> bool {
        match ty {
            TYPE_HEAD1 => self.advise & ADVISE_BIG_PCLUSTER_1 != 0,
            TYPE_HEAD2 => self.advise & ADVISE_BIG_PCLUSTER_2 != 0,
            _ => false,
        }
    }

    /// From the record `m` at `lcn` (for in-lcluster offset `endoff`), find the head.
    fn find_head(
        &self,
        src: &Source,
        sb: &SuperBlock,
        lcn: u64,
        endoff: u64,
        m: Lcluster,
    ) -> Result<(u64, Lcluster), ImageError> {
        match m.ty {
            TYPE_PLAIN | TYPE_HEAD1 | TYPE_HEAD2 if endoff >= m.clusterofs => Ok((lcn, m)),
            TYPE_PLAIN | TYPE_HEAD1 | TYPE_HEAD2 => {
                if lcn == 0 {
                    return corrupt("invalid logical cluster 0");
                }
                self.lookback(src, sb, lcn, 1)
            }
            _ => self.lookback(src, sb, lcn, m.delta0),
        }
    }

    fn lookback(
        &self,
        src: &Source,
        sb: &SuperBlock,
        mut lcn: u64,
        mut dist: u64,
    ) -> Result<(u64, Lcluster), ImageError> {
        let origin = lcn;
        loop {
            if dist == 0 || lcn < dist {
                return corrupt(format!("bogus lookback distance {dist} at lcn {lcn}"));
            }
            if (origin - lcn + dist) << self.lcbits > MAX_EXTENT {
                return corrupt(format!(
                    "lookback from lcn {origin} exceeds the extent limit"
                ));
            }
            lcn -= dist;
            let m = self.load_lcluster(src, sb, lcn, false)?;
            if m.ty == TYPE_NONHEAD {
                dist = m.delta0;
            } else {
                return Ok((lcn, m));
            }
        }
    }

    /// Logical end of the extent whose head is `head_lcn`: the next head.
    fn extent_end(&self, src: &Source, sb: &SuperBlock, head_lcn: u64) -> Result<u64, ImageError> {
        let mut lcn = head_lcn + 1;
        loop {
            let start = lcn
                .checked_shl(self.lcbits)
                .filter(|s| s >> self.lcbits == lcn);
            match start {
                Some(s) if s < self.size => {}
                _ => return Ok(self.size),
            }
            if (lcn - head_lcn) << self.lcbits > MAX_EXTENT + (1u64 << self.lcbits) {
                return corrupt(format!("extent at lcn {head_lcn} exceeds the extent limit"));
            }
            let m = self.load_lcluster(src, sb, lcn, true)?;
            if m.ty == TYPE_NONHEAD {
                lcn = lcn.saturating_add(m.delta1.max(1));
            } else {
                return Ok((lcn << self.lcbits) + m.clusterofs);
            }
        }
    }

    /// Physical length of the pcluster whose head record is `head` at `head_lcn`.
    fn pcluster_len(
        &self,
        src: &Source,
        sb: &SuperBlock,
        head_lcn: u64,
        head: &Lcluster,
    ) -> Result<u64, ImageError> {
        if head.ty == TYPE_PLAIN || !self.big(head.ty) {
            return Ok(1u64 << self.lcbits);
        }
        let next = head_lcn + 1;
        if self.compact && next >= self.totalidx {
            return Ok(sb.block_size());
        }
        let m = self.load_lcluster(src, sb, next, false)?;
        let blocks = match (m.ty, m.cblkcnt) {
            (TYPE_NONHEAD, Some(n)) if m.delta0 == 1 => n,
            (TYPE_NONHEAD, _) => return corrupt(format!("cannot find CBLKCNT at lcn {next}")),
            _ => 1,
        };
        Ok(blocks << sb.blkbits)
    }

    /// Map logical offset `ofs` (< size) to its extent.
    pub(crate) fn map(
        &self,
        src: &Source,
        sb: &SuperBlock,
        ofs: u64,
    ) -> Result<Extent, ImageError> {
        if ofs >= self.size {
            return corrupt("map past end of file");
        }
        let lcn = ofs >> self.lcbits;
        let m = self.load_lcluster(src, sb, lcn, false)?;
        let (head_lcn, head) = self.find_head(src, sb, lcn, ofs & self.lcmask(), m)?;
        let la = (head_lcn << self.lcbits) + head.clusterofs;
        let end = self.extent_end(src, sb, head_lcn)?.min(self.size);
        if end <= la || ofs < la || ofs >= end {
            return corrupt(format!("inconsistent extent {la}..{end} for offset {ofs}"));
        }
        let llen = end - la;
        if llen > MAX_EXTENT {
            return corrupt(format!("extent of {llen} bytes too large"));
        }
        let (pa, plen) = match self.tail {
            Some((off, size, tail_head)) if tail_head == head_lcn => (off, size),
            _ => (
                head.pblk
                    .checked_shl(sb.blkbits)
                    .filter(|p| p >> sb.blkbits == head.pblk)
                    .ok_or_else(|| ImageError::Corrupt("pcluster address overflows".into()))?,
                self.pcluster_len(src, sb, head_lcn, &head)?,
            ),
        };
        if plen == 0 || plen > MAX_PCLUSTER {
            return corrupt(format!("pcluster of {plen} bytes"));
        }
        let decode = if head.ty == TYPE_PLAIN {
            if llen > plen {
                return corrupt("uncompressed extent longer than its pcluster");
            }
            if self.advise & ADVISE_INTERLACED_PCLUSTER != 0 {
                Decode::Interlaced
            } else {
                Decode::Shifted
            }
        } else {
            let alg = if head.ty == TYPE_HEAD2 {
                self.algs[1]
            } else {
                self.algs[0]
            };
            if sb.compr_algs & (1u16 << alg.min(15)) == 0 {
                return corrupt(format!("inconsistent algorithm type {alg}"));
            }
            if alg != 0 {
                return Err(ImageError::Unsupported(format!(
                    "compression algorithm {alg}"
                )));
            }
            Decode::Lz4
        };
        Ok(Extent {
            la,
            llen,
            pa,
            plen,
            decode,
        })
    }
}
