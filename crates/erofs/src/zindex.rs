//! Lcluster index records: legacy (8 bytes each) and compact (4-byte and
//! 2-byte packs), decoded as the kernel's `z_erofs_load_*_lcluster` do.
//!
//! Invariants: records are read by position with checked arithmetic;
//! compact lookups reject `lcn >= totalidx`; decoding never indexes
//! outside the pack buffer (all bit reads are bounds-checked).

use super::bytes::{le16, le32};
use super::error::{ImageError, corrupt};
use super::sb::SuperBlock;
use super::source::Source;
use super::zmap::{
    ADVISE_BIG_PCLUSTER_1, ADVISE_BIG_PCLUSTER_2, ADVISE_COMPACTED_2B, D0_CBLKCNT, Lcluster,
    TYPE_NONHEAD, TYPE_PLAIN, ZInfo,
};

impl ZInfo {
    pub(super) fn load_lcluster(
        &self,
        src: &Source,
        sb: &SuperBlock,
        lcn: u64,
        lookahead: bool,
    ) -> Result<Lcluster, ImageError> {
        if self.compact {
            self.load_compact(src, lcn, lookahead)
        } else {
            self.load_full(src, sb, lcn)
        }
    }

    fn load_full(&self, src: &Source, _sb: &SuperBlock, lcn: u64) -> Result<Lcluster, ImageError> {
        // Legacy indexes follow the map header and 8 bytes of padding.
        let pos = lcn
            .checked_mul(8)
            .and_then(|o| o.checked_add(self.ebase + 8))
            .ok_or_else(|| ImageError::Corrupt("lcluster index position overflows".into()))?;
        let mut d = [0u8; 8];
        src.read_cached(&mut d, pos)?;
        let advise = le16(&d, 0, "di_advise")?;
        let mut m = Lcluster {
            ty: (advise & 3) as u8,
            nextpackoff: pos + 8,
            ..Lcluster::default()
        };
        if m.ty == TYPE_NONHEAD {
            m.clusterofs = 1u64 << self.lcbits;
            let d0 = u32::from(le16(&d, 4, "delta0")?);
            if d0 & D0_CBLKCNT != 0 {
                if self.advise & (ADVISE_BIG_PCLUSTER_1 | ADVISE_BIG_PCLUSTER_2) == 0 {
                    return corrupt("CBLKCNT without big pclusters");
                }
                m.cblkcnt = Some(u64::from(d0 & !D0_CBLKCNT));
                m.delta0 = 1;
            } else {
                m.delta0 = u64::from(d0);
            }
            m.delta1 = u64::from(le16(&d, 6, "delta1")?);
        } else {
            m.clusterofs = u64::from(le16(&d, 2, "di_clusterofs")?);
            if m.clusterofs >= 1u64 << self.lcbits {
                return corrupt("clusterofs beyond lcluster");
            }
            m.pblk = u64::from(le32(&d, 4, "di_blkaddr")?);
        }
        Ok(m)
    }

    fn load_compact(
        &self,
        src: &Source,
        lcn: u64,
        lookahead: bool,
    ) -> Result<Lcluster, ImageError> {
        let lcbits = self.lcbits;
        if lcn >= self.totalidx || lcbits > 14 {
            return corrupt(format!("compact lcluster {lcn} out of range"));
        }
        let initial_4b = ((32 - self.ebase % 32) / 4) & 7;
        let compacted_2b = if self.advise & ADVISE_COMPACTED_2B != 0 && initial_4b < self.totalidx {
            (self.totalidx - initial_4b) / 16 * 16
        } else {
            0
        };
        let mut pos = self.ebase;
        let mut rel = lcn;
        let mut shift = 2u32;
        if rel >= initial_4b {
            pos += initial_4b * 4;
            rel -= initial_4b;
            if rel < compacted_2b {
                shift = 1;
            } else {
                pos += compacted_2b * 2;
                rel -= compacted_2b;
            }
        }
        pos = pos
            .checked_add(rel << shift)
            .ok_or_else(|| ImageError::Corrupt("compact index position overflows".into()))?;
        let vcnt: u64 = match shift {
            2 => 2,
            _ if lcbits <= 12 => 16,
            _ => {
                return Err(ImageError::Unsupported(
                    "2B compact index with lcluster > 4K".into(),
                ));
            }
        };
        let packsize = vcnt << shift;
        let pack_start = pos / packsize * packsize;
        let mut pack = [0u8; 32];
        let Some(pack) = pack.get_mut(..packsize as usize) else {
            return corrupt("compact pack size");
        };
        src.read_cached(pack, pack_start)?;
        let pack: &[u8] = pack;
        let i = ((pos - pack_start) >> shift) as i64;
        let encodebits = ((packsize - 4) * 8 / vcnt) as u32;
        let lomask = (1u32 << lcbits) - 1;
        let decode = |idx: i64| -> Result<(u32, u8), ImageError> {
            let bitpos = (idx as u64).saturating_mul(u64::from(encodebits));
            let v = le32(pack, (bitpos / 8) as usize, "compact index bits")? >> (bitpos % 8);
            Ok((v & lomask, ((v >> lcbits) & 3) as u8))
        };
        let mut m = Lcluster {
            nextpackoff: pack_start + packsize,
            ..Lcluster::default()
        };
        let (lo, ty) = decode(i)?;
        m.ty = ty;
        if ty == TYPE_NONHEAD {
            m.clusterofs = 1u64 << lcbits;
            if lookahead {
                m.delta1 = la_distance(&decode, vcnt as i64, i)?;
            }
            if lo & D0_CBLKCNT != 0 {
                if self.advise & ADVISE_BIG_PCLUSTER_1 == 0 {
                    return corrupt("CBLKCNT without big pclusters");
                }
                m.cblkcnt = Some(u64::from(lo & !D0_CBLKCNT));
                m.delta0 = 1;
                return Ok(m);
            } else if i + 1 != vcnt as i64 {
                m.delta0 = u64::from(lo);
                return Ok(m);
            }
            // The last record of a pack stores delta1; derive delta0 from the previous one.
            let (plo, pty) = if i >= 1 {
                decode(i - 1)?
            } else {
                (0, TYPE_PLAIN)
            };
            let plo = if pty != TYPE_NONHEAD {
                0
            } else if plo & D0_CBLKCNT != 0 {
                1
            } else {
                plo
            };
            m.delta0 = u64::from(plo) + 1;
            return Ok(m);
        }
        m.clusterofs = u64::from(lo);
        // Count the blocks of the heads before us in this pack.
        let mut nblk: u64;
        let mut j = i;
        if self.advise & ADVISE_BIG_PCLUSTER_1 == 0 {
            nblk = 1;
            while j > 0 {
                j -= 1;
                let (lo, ty) = decode(j)?;
                if ty == TYPE_NONHEAD {
                    j -= i64::from(lo);
                }
                if j >= 0 {
                    nblk += 1;
                }
            }
        } else {
            nblk = 0;
            while j > 0 {
                j -= 1;
                let (lo, ty) = decode(j)?;
                if ty == TYPE_NONHEAD {
                    if lo & D0_CBLKCNT != 0 {
                        j -= 1;
                        nblk += u64::from(lo & !D0_CBLKCNT);
                        continue;
                    }
                    if lo <= 1 {
                        return corrupt("big pcluster with plain delta0 <= 1");
                    }
                    j -= i64::from(lo) - 2;
                    continue;
                }
                nblk += 1;
            }
        }
        let base = le32(pack, (packsize - 4) as usize, "compact pack blkaddr")?;
        m.pblk = u64::from(base) + nblk;
        Ok(m)
    }
}

/// Kernel `get_compacted_la_distance`: lcluster distance to the next head.
fn la_distance(
    decode: &impl Fn(i64) -> Result<(u32, u8), ImageError>,
    vcnt: i64,
    mut i: i64,
) -> Result<u64, ImageError> {
    let mut d1 = 0u64;
    let mut lo;
    loop {
        let (l, ty) = decode(i)?;
        lo = l;
        if ty != TYPE_NONHEAD {
            return Ok(d1);
        }
        d1 += 1;
        i += 1;
        if i >= vcnt {
            break;
        }
    }
    if lo & D0_CBLKCNT == 0 {
        d1 = d1.saturating_add(u64::from(lo)).saturating_sub(1);
    }
    Ok(d1)
}
