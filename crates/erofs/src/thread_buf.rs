//! Buffers a request thread keeps between its requests, which another thread can take
//! back once they are not in use.
//!
//! A request thread keeps its buffers (the compressed bytes of a read, the bytes of a
//! reply) so that a read neither allocates nor zero-fills. Kept forever, they were what
//! was left of the daemon's memory after every image had left the store: about 2 MiB per
//! request thread, 13 MiB of the 25 MiB left after `scripts/bench_memory.py` read 64
//! images through FUSE trees. So each buffer is registered here, behind a mutex of its
//! own that only its thread locks while it reads (never contended but by
//! [`release_all`]), and [`release_all`] frees those not in use. The next read of that
//! thread grows its buffer again.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// One thread's buffer; the thread holds the only strong reference.
pub type ThreadBuf = Arc<Mutex<Vec<u8>>>;

static REGISTRY: Mutex<Vec<Weak<Mutex<Vec<u8>>>>> = Mutex::new(Vec::new());

/// A new buffer for the calling thread, registered for [`release_all`] (for a
/// `thread_local!` initialiser).
pub fn register() -> ThreadBuf {
    let buf = ThreadBuf::default();
    lock(&REGISTRY).push(Arc::downgrade(&buf));
    buf
}

/// The buffer, for the duration of one use. A poisoned lock (a panic mid-read) still
/// gives the buffer: its bytes are overwritten before any is used.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees every registered buffer not in use at this moment and forgets those of threads
/// that ended; returns the bytes freed (capacity).
pub fn release_all() -> usize {
    let mut reg = lock(&REGISTRY);
    reg.retain(|w| w.strong_count() > 0);
    let mut freed = 0;
    for buf in reg.iter().filter_map(Weak::upgrade) {
        if let Ok(mut b) = buf.try_lock() {
            freed += b.capacity();
            *b = Vec::new();
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn an_idle_threads_buffer_is_freed_and_an_ended_threads_forgotten() {
        thread_local! {
            static MINE: ThreadBuf = register();
        }
        let (grown, go) = (mpsc::channel(), mpsc::channel::<()>());
        let t = std::thread::spawn(move || {
            MINE.with(|m| lock(m).resize(1 << 20, 7));
            grown.0.send(()).unwrap();
            go.1.recv().unwrap();
            MINE.with(|m| lock(m).capacity())
        });
        grown.1.recv().unwrap();
        // Other tests' threads may have registered buffers too: at least this one's.
        assert!(release_all() >= 1 << 20);
        go.0.send(()).unwrap();
        assert_eq!(t.join().unwrap(), 0, "the thread finds its buffer empty");
        release_all();
        assert!(lock(&REGISTRY).iter().all(|w| w.strong_count() > 0));
    }

    #[test]
    fn a_buffer_in_use_is_left_alone() {
        let buf = register();
        let mut held = lock(&buf);
        held.resize(4096, 1);
        release_all();
        assert_eq!(held.len(), 4096);
    }
}
