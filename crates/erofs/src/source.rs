//! Positional reads of the image file, with raw windows cached in the image's budget.
//!
//! Invariants: the file is only ever read with `pread` (never mapped), so an
//! image truncated or rewritten underneath us yields errors, not `SIGBUS`.
//! Reading past the end of the file is [`ImageError::Corrupt`]. Metadata and
//! compressed clusters are read through `WINDOW`-byte aligned windows kept
//! in the image's cache (whose budget is shared: `cache`), so walking indexes, dirents and consecutive pclusters
//! costs one syscall per window rather than one per record.
//!
//! Prefetch: an LZ4 image made by `mkfs.erofs` has its inodes and directory blocks
//! scattered among the file data, so a cold walk reads many windows far apart, and each
//! `pread` waited for its own disk request. [`Source::prefetch`] asks the kernel
//! (`POSIX_FADV_WILLNEED`) to start reading every window a directory block's entries will
//! need at once; the `pread`s that follow then wait for requests issued together. The
//! advice only fills the kernel's page cache (never this process's budget) and is
//! skipped for windows already cached here.

use std::fs::File;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::cache::{ImageCache, Key};
use super::error::{ImageError, corrupt};

/// Size of one cached raw window (power of two): one page. An LZ4 image made by
/// `mkfs.erofs` scatters its inodes among the data, so a larger window mostly brings
/// file data: a cold `find` of the benchmark's tree (29,100 inodes) read 81 MB of 32 KiB
/// windows, which overflowed the 64 MiB budget (so a second walk read them again),
/// against 24 MB of 4 KiB ones. Sequential metadata (compression indexes, large
/// directories) still comes in large requests: the kernel's readahead sees them.
const WINDOW: u64 = 4 * 1024;
/// Largest single record `read_vec` allocates for.
const MAX_VEC: usize = 32 << 20;
/// Most windows one [`Source::prefetch`] call asks for (a 64 KiB directory block names
/// at most 5,461 entries; 256 windows are 8 MiB of reads).
const MAX_PREFETCH: usize = 256;
/// Windows to prefetch at most this far apart are read as one range, the gap with them.
const PREFETCH_GAP: u64 = 32 * 1024;

/// The image file plus the image's cache (raw windows here; inodes, map headers and
/// extents for the rest of the reader).
pub(crate) struct Source {
    file: File,
    pub(crate) cache: ImageCache,
    /// Bytes asked of the file with `pread` (what a cold read costs, for tests).
    read_bytes: AtomicU64,
}

impl Source {
    pub(crate) fn new(file: File, cache: ImageCache) -> Self {
        Source {
            file,
            cache,
            read_bytes: AtomicU64::new(0),
        }
    }

    /// Another descriptor of the image file (the same open file: its page cache).
    pub(crate) fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// Bytes asked of the file with `pread` so far.
    #[cfg(test)]
    pub(crate) fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Fill `buf` from image offset `pos` directly (uncached).
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<(), ImageError> {
        if pos.checked_add(buf.len() as u64).is_none() {
            return corrupt("read range overflows");
        }
        self.read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
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
            self.read_bytes
                .fetch_add(rest.len() as u64, Ordering::Relaxed);
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

    /// Start reading, in the background, the windows holding the bytes `[pos, pos + len)`
    /// of each range that are not cached yet: one `posix_fadvise(WILLNEED)` per run of
    /// windows at most `PREFETCH_GAP` apart, at most `MAX_PREFETCH` windows in all. Advice only: errors (and
    /// positions past the end of the file) are ignored, the reads that follow check.
    pub(crate) fn prefetch(&self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        let mut starts: Vec<u64> = Vec::new();
        for (pos, len) in ranges {
            let Some(end) = pos.checked_add(len.max(1)) else {
                continue;
            };
            let mut w = pos & !(WINDOW - 1);
            while w < end && starts.len() < MAX_PREFETCH {
                starts.push(w);
                w = w.saturating_add(WINDOW);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        starts.retain(|&w| self.cache.get::<Vec<u8>>(Key::Window(w)).is_none());
        // Runs closer than `PREFETCH_GAP` are advised as one range, gap included: one
        // larger disk request costs less than several small ones.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for w in starts {
            match runs.last_mut() {
                Some((_, end)) if w <= end.saturating_add(PREFETCH_GAP) => {
                    *end = w.saturating_add(WINDOW)
                }
                _ => runs.push((w, w.saturating_add(WINDOW))),
            }
        }
        for (start, end) in runs {
            if let Some(len) = NonZeroU64::new(end - start) {
                let _ =
                    rustix::fs::fadvise(&self.file, start, Some(len), rustix::fs::Advice::WillNeed);
            }
        }
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::cache::CacheBudget;
    use super::*;

    /// A source over a file of `len` bytes, byte `i` being `i % 251`, with its own budget.
    fn source(len: usize) -> (Source, Arc<CacheBudget>, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(&bytes).expect("write");
        let budget = Arc::new(CacheBudget::new(16 << 20));
        let src = Source::new(f, ImageCache::new(Arc::clone(&budget)));
        (src, budget, bytes)
    }

    #[test]
    fn a_read_spanning_windows_matches_the_file() {
        let w = WINDOW as usize;
        let (src, _b, bytes) = source(3 * w + 100);
        for (pos, len) in [
            (w - 10, 20),
            (w - 1, 2 * w + 2),
            (0, 3 * w + 100),
            (3 * w, 100),
        ] {
            let got = src.read_vec(pos as u64, len).expect("read");
            assert_eq!(got, bytes[pos..pos + len], "{len} bytes at {pos}");
        }
        // Again, now from the cached windows.
        let got = src.read_vec(w as u64 - 1, w + 2).expect("cached read");
        assert_eq!(got, bytes[w - 1..2 * w + 1]);
    }

    #[test]
    fn reads_past_the_end_of_a_truncated_image_are_corrupt() {
        let w = WINDOW as usize;
        let (src, _b, _) = source(2 * w + 5);
        // The first window is whole, the second is short: the error names the position.
        match src.read_vec(w as u64 - 4, w + 20) {
            Err(ImageError::Corrupt(m)) => assert!(m.contains("past its end"), "{m}"),
            other => panic!("expected a corrupt-image error, got {other:?}"),
        }
        for (pos, len) in [(u64::MAX - 3, 10), (10 * WINDOW, 1)] {
            assert!(
                matches!(src.read_vec(pos, len), Err(ImageError::Corrupt(_))),
                "{len} bytes at {pos}"
            );
        }
        let mut buf = [0u8; 8];
        assert!(matches!(
            src.read_exact_at(&mut buf, 2 * WINDOW),
            Err(ImageError::Corrupt(_))
        ));
    }

    #[test]
    fn a_scattered_inode_costs_one_page_of_reads() {
        // Inodes of an LZ4 image lie among the data: reading one must not read
        // (and cache) the data around it.
        let (src, b, bytes) = source(8 << 20);
        for k in 0..8u64 {
            let pos = k * (1 << 20) + 4000;
            let got = src.read_vec(pos, 64).expect("read");
            assert_eq!(got, bytes[pos as usize..pos as usize + 64]);
        }
        // 4000 + 64 crosses into the next page: two pages per inode at most.
        assert!(
            src.read_bytes() <= 8 * 2 * 4096,
            "read {} bytes",
            src.read_bytes()
        );
        assert!(
            b.used() <= 8 * 2 * (4096 + 200),
            "cached {} bytes",
            b.used()
        );
    }

    #[test]
    fn prefetch_is_advice_only() {
        let w = WINDOW as usize;
        let (src, b, bytes) = source(4 * w);
        src.prefetch([
            (0, 100),
            (w as u64 - 1, 2),
            (40 * WINDOW, 5),
            (u64::MAX - 1, 10),
            (0, u64::MAX),
            (5, 0),
        ]);
        assert_eq!(b.used(), 0, "prefetch caches nothing in the budget");
        assert_eq!(src.read_bytes(), 0, "prefetch reads nothing itself");
        let got = src.read_vec(w as u64 - 3, 6).expect("read after prefetch");
        assert_eq!(got, bytes[w - 3..w + 3]);
        // Cached windows are not advised again; nothing breaks either way.
        src.prefetch([(0, 4 * WINDOW)]);
    }
}
