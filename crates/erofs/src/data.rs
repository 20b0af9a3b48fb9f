//! File data: flat (plain/inline), chunk-based and compressed layouts.
//!
//! `read` fills the caller's buffer completely unless EOF comes first.
//! Flat and chunked data is `pread` straight into the buffer (no copy, no
//! cache: the kernel page cache holds file data). Compressed data is decoded
//! one pcluster (extent) at a time; only extents overlapping the request are
//! decoded. Extents the request covers whole are decoded straight into it, their
//! pclusters read together when adjacent; an extent only partly covered is decoded
//! into the image's cache (its budget shared with every image: `cache`), so reads that
//! split it decode it once while it stays there.

use std::sync::Arc;

use super::Image;
use super::bytes::{add, le32, to_usize};
use super::cache::Key;
use super::error::{ImageError, corrupt};
use super::inode::{InodeInfo, Layout};
use super::lz4;
use super::sb::FEAT_ZERO_PADDING;
use super::thread_buf;
use super::zmap::{Decode, Extent, ZInfo};

const NULL_ADDR: u32 = u32::MAX;

thread_local! {
    /// Compressed bytes of a run of pclusters, reused by each request thread (no
    /// allocation and no zeroing per request once it has grown; freed by
    /// [`thread_buf::release_all`] while not in use).
    static SCRATCH: thread_buf::ThreadBuf = thread_buf::register();
}

impl Image {
    /// Read up to `buf.len()` bytes of `info`'s data at `offset`; short only at EOF.
    pub(crate) fn read_data(
        &self,
        info: &InodeInfo,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, ImageError> {
        let size = info.attr.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = to_usize((size - offset).min(buf.len() as u64), "read length")?;
        let Some(out) = buf.get_mut(..want) else {
            return corrupt("read buffer");
        };
        match info.layout {
            Layout::Plain { start: None } => out.fill(0),
            Layout::Plain { start: Some(start) } => {
                self.src
                    .read_exact_at(out, add(start, offset, "plain data")?)?;
            }
            Layout::Inline { start } => self.read_inline(info, start, offset, out)?,
            Layout::Chunked { format, chunkbits } => {
                self.read_chunked(info, format, chunkbits, offset, out)?
            }
            Layout::Compressed { compact } => self.read_compressed(info, compact, offset, out)?,
            Layout::None => return Err(ImageError::NoData),
        }
        Ok(want)
    }

    fn read_inline(
        &self,
        info: &InodeInfo,
        start: u64,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let bs = self.sb.block_size();
        let size = info.attr.size;
        let tail_start = size.saturating_sub(1) / bs * bs;
        let mut done = 0usize;
        let mut cur = offset;
        while let Some(rest) = out.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let n;
            if cur < tail_start {
                n = to_usize((tail_start - cur).min(rest.len() as u64), "inline read")?;
                let dst = rest
                    .get_mut(..n)
                    .ok_or_else(|| ImageError::Corrupt("inline split".into()))?;
                self.src
                    .read_exact_at(dst, add(start, cur, "inline data")?)?;
            } else {
                n = rest.len();
                let pos = add(info.tail_pos()?, cur - tail_start, "inline tail")?;
                self.src.read_cached(rest, pos)?;
            }
            done += n;
            cur += n as u64;
        }
        Ok(())
    }

    fn read_chunked(
        &self,
        info: &InodeInfo,
        format: u16,
        chunkbits: u32,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let unit: u64 = if format & 0x20 != 0 { 8 } else { 4 };
        let base = info
            .tail_pos()?
            .checked_add(unit - 1)
            .map(|p| p & !(unit - 1))
            .ok_or_else(|| ImageError::Corrupt("chunk index position overflows".into()))?;
        let chunk = 1u64 << chunkbits;
        let mut done = 0usize;
        let mut cur = offset;
        while let Some(rest) = out.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let idx = cur >> chunkbits;
            let within = cur & (chunk - 1);
            let n = to_usize((chunk - within).min(rest.len() as u64), "chunk read")?;
            let dst = rest
                .get_mut(..n)
                .ok_or_else(|| ImageError::Corrupt("chunk split".into()))?;
            let mut rec = [0u8; 8];
            let rec = rec
                .get_mut(..unit as usize)
                .ok_or_else(|| ImageError::Corrupt("chunk record".into()))?;
            let pos = idx
                .checked_mul(unit)
                .and_then(|o| o.checked_add(base))
                .ok_or_else(|| ImageError::Corrupt("chunk index overflows".into()))?;
            self.src.read_cached(rec, pos)?;
            let blkaddr = le32(rec, if unit == 8 { 4 } else { 0 }, "chunk blkaddr")?;
            if blkaddr == NULL_ADDR {
                dst.fill(0);
            } else {
                let p = add(u64::from(blkaddr) << self.sb.blkbits, within, "chunk data")?;
                self.src.read_exact_at(dst, p)?;
            }
            done += n;
            cur += n as u64;
        }
        Ok(())
    }

    fn zinfo(&self, info: &InodeInfo, compact: bool) -> Result<Arc<ZInfo>, ImageError> {
        let key = Key::ZInfo(info.attr.nid.0);
        if let Some(z) = self.src.cache.get(key) {
            return Ok(z);
        }
        let z = Arc::new(ZInfo::load(&self.src, &self.sb, info, compact)?);
        self.src.cache.insert(key, Arc::clone(&z));
        Ok(z)
    }

    fn read_compressed(
        &self,
        info: &InodeInfo,
        compact: bool,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let z = self.zinfo(info, compact)?;
        let mut done = 0usize;
        let mut cur = offset;
        while let Some(rest) = out.get_mut(done..) {
            if rest.is_empty() {
                break;
            }
            let ext = z.map(&self.src, &self.sb, cur)?;
            // Whole LZ4 extents inside the request (sequential reads of small pclusters):
            // decoded straight into the caller's buffer, no cache entry, no extra copy.
            if cur == ext.la && ext.decode == Decode::Lz4 && ext.llen <= rest.len() as u64 {
                let n = self.decode_lz4_run(&z, ext, rest)?;
                done += n;
                cur += n as u64;
                continue;
            }
            let data = self.extent_data(info, &ext)?;
            let within = to_usize(cur - ext.la, "extent offset")?;
            let src = data
                .get(within..)
                .ok_or_else(|| ImageError::Corrupt("extent shorter than mapped".into()))?;
            let n = src.len().min(rest.len());
            let (Some(d), Some(s)) = (rest.get_mut(..n), src.get(..n)) else {
                return corrupt("extent copy");
            };
            d.copy_from_slice(s);
            if n == 0 {
                return corrupt("compressed read made no progress");
            }
            done += n;
            cur += n as u64;
        }
        Ok(())
    }

    /// Decodes LZ4 extent `first` and the ones after it that also fit whole in `out` and
    /// lie right after it in the image, reading their pclusters with one `pread`. Returns
    /// the bytes written to the start of `out`.
    fn decode_lz4_run(
        &self,
        z: &ZInfo,
        first: Extent,
        out: &mut [u8],
    ) -> Result<usize, ImageError> {
        /// Bounds one read: a 1 MiB request of 4 KiB pclusters takes about 1 MiB.
        const MAX_RUN: u64 = 4 << 20;
        if first.plen > MAX_RUN {
            return corrupt(format!("pcluster of {} bytes", first.plen));
        }
        let room = out.len() as u64;
        let base = first.pa;
        let mut pend = add(first.pa, first.plen, "pcluster end")?;
        let mut lend = add(first.la, first.llen, "extent end")?;
        let start = first.la;
        let mut run = vec![first];
        while lend - start < room {
            let next = z.map(&self.src, &self.sb, lend)?;
            let (Some(p), Some(l)) = (pend.checked_add(next.plen), lend.checked_add(next.llen))
            else {
                break;
            };
            if next.la != lend
                || next.decode != Decode::Lz4
                || next.pa != pend
                || l - start > room
                || p - base > MAX_RUN
            {
                break;
            }
            (pend, lend) = (p, l);
            run.push(next);
        }
        SCRATCH.with(|scratch| {
            let mut raw = thread_buf::lock(scratch);
            let plen = to_usize(pend - base, "pcluster run length")?;
            raw.resize(plen, 0);
            let Some(raw) = raw.get_mut(..plen) else {
                return corrupt("pcluster run buffer");
            };
            self.src.read_exact_at(raw, base)?;
            let mut done = 0usize;
            for e in &run {
                let at = to_usize(e.pa - base, "pcluster offset")?;
                let plen = to_usize(e.plen, "pcluster length")?;
                let llen = to_usize(e.llen, "extent length")?;
                let (Some(src), Some(dst)) =
                    (raw.get(at..at + plen), out.get_mut(done..done + llen))
                else {
                    return corrupt("pcluster run out of range");
                };
                self.lz4_into(src, dst)?;
                done += llen;
            }
            Ok(done)
        })
    }

    /// Decodes one LZ4 pcluster (with its 0-padding, if the image uses it) into `out`,
    /// which it must fill exactly.
    fn lz4_into(&self, raw: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
        let mut input: &[u8] = raw;
        if self.sb.has(FEAT_ZERO_PADDING) {
            let scan = raw.len().min(to_usize(self.sb.block_size(), "block size")?);
            let lead = raw.iter().take(scan).take_while(|&&b| b == 0).count();
            if lead == scan {
                return corrupt("lz4 pcluster is all padding");
            }
            input = raw.get(lead..).unwrap_or_default();
        }
        let n = lz4::decompress(input, out)?;
        if n != out.len() {
            return corrupt(format!(
                "lz4 pcluster decoded to {n} bytes, expected {}",
                out.len()
            ));
        }
        Ok(())
    }

    /// The decoded bytes of `ext` (exactly `ext.llen` long), cached.
    fn extent_data(&self, info: &InodeInfo, ext: &Extent) -> Result<Arc<Vec<u8>>, ImageError> {
        let key = Key::Extent(info.attr.nid.0, ext.la);
        if let Some(d) = self.src.cache.get::<Vec<u8>>(key)
            && d.len() as u64 == ext.llen
        {
            return Ok(d);
        }
        let llen = to_usize(ext.llen, "extent length")?;
        let raw = self
            .src
            .read_vec(ext.pa, to_usize(ext.plen, "pcluster length")?)?;
        let data = match ext.decode {
            Decode::Shifted => raw.get(..llen).map(<[u8]>::to_vec),
            Decode::Interlaced => {
                let bs = self.sb.block_size();
                let cur = to_usize((bs - ext.la % bs).min(ext.llen), "interlaced head")?;
                let head = raw.len().checked_sub(cur).and_then(|s| raw.get(s..));
                match (head, raw.get(..llen - cur)) {
                    (Some(h), Some(t)) => Some([h, t].concat()),
                    _ => None,
                }
            }
            Decode::Lz4 => {
                let mut out = vec![0u8; llen];
                self.lz4_into(&raw, &mut out)?;
                Some(out)
            }
        };
        let Some(data) = data else {
            return corrupt("uncompressed pcluster shorter than its extent");
        };
        let data = Arc::new(data);
        self.src.cache.insert(key, Arc::clone(&data));
        Ok(data)
    }
}
