//! Counters behind `MNT/.imagefs/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub collections: AtomicU64,
    requests: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<i32, u64>>,
}

impl Metrics {
    pub fn request(&self, op: &'static str) {
        *self.requests.lock().entry(op).or_default() += 1;
    }

    pub fn error(&self, errno: i32) {
        *self.errors.lock().entry(errno).or_default() += 1;
    }

    pub fn render(&self, tags: usize, digests: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# TYPE imagefs_tags gauge\nimagefs_tags {tags}");
        let _ = writeln!(s, "# TYPE imagefs_digests gauge\nimagefs_digests {digests}");
        let _ = writeln!(
            s,
            "# TYPE imagefs_collections_total counter\nimagefs_collections_total {}",
            self.collections.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "# TYPE imagefs_requests_total counter");
        for (op, n) in self.requests.lock().iter() {
            let _ = writeln!(s, "imagefs_requests_total{{op=\"{op}\"}} {n}");
        }
        let _ = writeln!(s, "# TYPE imagefs_errors_total counter");
        for (errno, n) in self.errors.lock().iter() {
            let _ = writeln!(s, "imagefs_errors_total{{errno=\"{errno}\"}} {n}");
        }
        s
    }
}
