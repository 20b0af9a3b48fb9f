//! [`ReadBuf`]: the buffer a READ is answered from, one per thread and reused.
//!
//! A READ used to allocate and zero-fill a buffer of the request's size (up to the
//! kernel's largest read) every time. A thread now keeps one buffer between its reads,
//! grown (and zero-filled) only when a larger request comes; each read overwrites the part
//! it answers with and only that part is sent, so nothing of an earlier read goes out.

use imagefs_erofs::thread_buf::{self, ThreadBuf};
use std::ops::Deref;

/// A thread keeps a buffer up to this size between reads (the kernel's reads are at most
/// `max_pages` pages, 1 MiB by default); a larger one is freed after its read.
const KEEP: usize = 4 << 20;

thread_local! {
    /// Freed by [`thread_buf::release_all`] while not in use (the daemon's memory thread).
    static SPARE: ThreadBuf = thread_buf::register();
}

fn take_spare() -> Vec<u8> {
    SPARE.with(|s| std::mem::take(&mut *thread_buf::lock(s)))
}

/// The bytes of one read: this thread's buffer, handed back to it when dropped.
pub(super) struct ReadBuf {
    buf: Vec<u8>,
    len: usize,
}

impl ReadBuf {
    /// Fills up to `size` bytes with `fill`, which writes the start of the slice it is given
    /// and returns how much it wrote (less than `size` only at the end of the file).
    pub(super) fn fill<E>(
        size: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<ReadBuf, E> {
        // Made first, so that a failed read hands the buffer back too.
        let mut r = ReadBuf {
            buf: take_spare(),
            len: 0,
        };
        if r.buf.len() < size {
            r.buf.resize(size, 0);
        }
        let n = fill(&mut r.buf[..size])?;
        r.len = n.min(size);
        Ok(r)
    }

    /// A copy of `bytes` (generated content, small).
    pub(super) fn copy(bytes: &[u8]) -> ReadBuf {
        let r: Result<ReadBuf, std::convert::Infallible> = ReadBuf::fill(bytes.len(), |b| {
            b.copy_from_slice(bytes);
            Ok(bytes.len())
        });
        match r {
            Ok(b) => b,
            Err(never) => match never {},
        }
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        // With two reads in flight on one thread (not the adapter's way), the larger
        // buffer is kept.
        SPARE.with(|s| {
            let mut spare = thread_buf::lock(s);
            if self.buf.len() <= KEEP && self.buf.len() >= spare.len() {
                *spare = std::mem::take(&mut self.buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reuses_its_buffer_and_sends_only_what_was_read() {
        let a = ReadBuf::fill(8, |b| {
            b.copy_from_slice(b"abcdefgh");
            Ok::<_, ()>(8)
        })
        .unwrap();
        assert_eq!(&*a, b"abcdefgh");
        let first = a.buf.as_ptr();
        drop(a);
        // A shorter read (EOF) shows only what it wrote, not the earlier read's tail.
        let b = ReadBuf::fill(8, |b| {
            b[..3].copy_from_slice(b"xyz");
            Ok::<_, ()>(3)
        })
        .unwrap();
        assert_eq!(&*b, b"xyz");
        assert_eq!(b.buf.as_ptr(), first, "the same memory, not a new buffer");
        // Two reads in flight on one thread each have their own bytes.
        let c = ReadBuf::copy(b"12");
        assert_eq!((&*b, &*c), (&b"xyz"[..], &b"12"[..]));
        drop((b, c));
        // A failed read sends nothing and the buffer stays with the thread.
        assert!(ReadBuf::fill(4, |_| Err::<usize, _>("eio")).is_err());
        let d = ReadBuf::copy(b"");
        assert_eq!((&*d, d.buf.as_ptr()), (&b""[..], first));
    }

    #[test]
    fn a_fill_claiming_more_than_asked_is_cut_to_the_request() {
        let b = ReadBuf::fill(2, |_| Ok::<_, ()>(100)).unwrap();
        assert_eq!(b.len(), 2);
    }
}
