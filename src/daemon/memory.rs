//! The daemon's memory after its images are done with: a thread that ages the image
//! readers' cache budget and gives freed heap back to the system.
//!
//! Every `IDLE / 2` the budget drops the entries nobody used since the previous time, so
//! what an idle image cached is gone after `IDLE` at most (its image stays open for the
//! kernel: in use is never yanked, a read just fills the cache again). glibc keeps freed
//! memory in its arenas, where a daemon that read 64 images kept 290 MiB of RSS after they
//! had all left the store (`scripts/bench_memory.py`); so once the budget let go of at
//! least `TRIM_AFTER` (an image closed, or aging), the request threads' kept buffers are
//! freed too ([`thread_buf`]: about 2 MiB per thread) and the heap is trimmed, within a
//! second.

use std::sync::Arc;
use std::time::Duration;

use imagefs_erofs::{CacheBudget, thread_buf};

use super::tuning;

/// What an image cached is dropped once unused this long.
pub(super) const IDLE: Duration = Duration::from_secs(30);
/// Freed bytes worth a `malloc_trim` (which walks the heap).
const TRIM_AFTER: usize = 1 << 20;
const TICK: Duration = Duration::from_secs(1);

/// Starts the thread that ages `budget` and trims the heap after releases.
pub(super) fn start(budget: Arc<CacheBudget>) -> Result<(), String> {
    let age_every = (IDLE.as_secs() / 2 / TICK.as_secs()).max(1);
    std::thread::Builder::new()
        .name("imagefs-memory".into())
        .spawn(move || {
            for tick in 1u64.. {
                std::thread::sleep(TICK);
                if tick % age_every == 0 {
                    budget.age();
                }
                let mut freed = budget.take_released();
                // An image closed frees its reader too, even when aging already dropped
                // its cache (then the budget counts nothing): a daemon idle for `IDLE`
                // before 64 images left kept 21 MiB of freed heap against 14 MiB without
                // the wait (`bench_memory.py --idle 35`).
                let closed = budget.take_closed() > 0;
                // The request threads' buffers too, when an image closed or at each
                // aging: a busy thread grows its own again at its next read.
                if closed || freed >= TRIM_AFTER || tick % age_every == 0 {
                    freed += thread_buf::release_all();
                }
                if closed || freed >= TRIM_AFTER {
                    tuning::trim_heap();
                    log::debug!("{freed} bytes of cache released; heap trimmed");
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("thread: {e}"))
}
