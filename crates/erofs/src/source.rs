//! Positional reads of the image file, with raw windows cached in the image's budget.
//!
//! Invariants: the file is only ever read with `pread` (never mapped), so an
//! image truncated or rewritten underneath us yields errors, not `SIGBUS`.
//! Reading past the end of the file is [`ImageError::Corrupt`]. Metadata and
//! compressed clusters are read through `WINDOW`-byte aligned windows kept
//! in the image's cache (whose budget is shared: `cache`), so walking indexes, dirents and consecutive pclusters
//! costs one syscall per window rather than one per record.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::cache::{ImageCache, Key};
use super::error::{ImageError, corrupt};

/// Size of one cached raw window (power of two).
const WINDOW: u64 = 32 * 1024;
/// Largest single record `read_vec` allocates for.
const MAX_VEC: usize = 32 << 20;

/// The image file plus the image's cache (raw windows here; inodes, map headers and
/// extents for the rest of the reader).
pub(crate) struct Source {
    file: File,
    pub(crate) cache: ImageCache,
}

impl Source {
    pub(crate) fn new(file: File, cache: ImageCache) -> Self {
        Source { file, cache }
    }

    /// Fill `buf` from image offset `pos` directly (uncached).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<(), ImageError> {
        if pos.checked_add(buf.len() as u64).is_none() {
            return corrupt("read range overflows");
        }
        match self.file.read_exact_at(buf, pos) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => corrupt(format!(
                "image truncated: {} bytes at {pos} past its end",
                buf.len()
            )),
            Err(e) => Err(ImageError::Io(e)),
        }
    }

    /// One cached window starting at `start` (a multiple of `WINDOW`); may be
    /// shorter than `WINDOW` at the end of the file.
    fn window(&self, start: u64) -> Result<Arc<Vec<u8>>, ImageError> {
        if let Some(w) = self.cache.get(Key::Window(start)) {
            return Ok(w);
        }
        let mut buf = vec![0u8; WINDOW as usize];
        let mut got = 0usize;
        while let Some(rest) = buf.get_mut(got..) {
            if rest.is_empty() {
                break;
            }
            let pos = start.saturating_add(got as u64);
            match self.file.read_at(rest, pos) {
                Ok(0) => break,
                Ok(n) => got = got.saturating_add(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::Io(e)),
            }
        }
        buf.truncate(got);
        let w = Arc::new(buf);
        self.cache.insert(Key::Window(start), Arc::clone(&w));
        Ok(w)
    }

    /// Fill `out` from image offset `pos` through the window cache.
    pub(crate) fn read_cached(&self, out: &mut [u8], pos: u64) -> Result<(), ImageError> {
        let end = match pos.checked_add(out.len() as u64) {
            Some(e) => e,
            None => return corrupt("metadata range overflows"),
        };
        let mut cur = pos;
        let mut done = 0usize;
        while cur < end {
            let start = cur & !(WINDOW - 1);
            let w = self.window(start)?;
            let off = (cur - start) as usize;
            let avail = w.len().saturating_sub(off);
            let want = (end - cur).min(WINDOW) as usize;
            let n = want.min(avail);
            if n == 0 {
                return corrupt(format!("image truncated: metadata at {cur} past its end"));
            }
            let (Some(dst), Some(src)) = (out.get_mut(done..done + n), w.get(off..off + n)) else {
                return corrupt("window copy out of range");
            };
            dst.copy_from_slice(src);
            done += n;
            cur += n as u64;
        }
        Ok(())
    }

    /// Read `len` bytes at `pos` through the window cache into a new vector.
    pub(crate) fn read_vec(&self, pos: u64, len: usize) -> Result<Vec<u8>, ImageError> {
        if len > MAX_VEC {
            return corrupt(format!("metadata record of {len} bytes is too large"));
        }
        let mut v = vec![0u8; len];
        self.read_cached(&mut v, pos)?;
        Ok(v)
    }
}
