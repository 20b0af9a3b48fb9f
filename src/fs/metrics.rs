//! Counters behind `MNT/.imagefs/metrics` (Prometheus text format).
//! Request counting is on every request's path, so it is lock-free.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The operations counted, in the order of their counters.
const OPS: [&str; 23] = [
    "readdirplus",
    "create",
    "removexattr",
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "opendir",
    "readdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
];

/// errno values are small; anything larger lands in the last slot.
const ERRNOS: usize = 134;

pub struct Metrics {
    pub collections: AtomicU64,
    requests: [AtomicU64; OPS.len() + 1],
    errors: [AtomicU64; ERRNOS],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            collections: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    pub fn request(&self, op: &'static str) {
        let i = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len());
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, errno: i32) {
        let i = usize::try_from(errno).unwrap_or(0).min(ERRNOS - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, tags: usize, digests: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP imagefs_tags Tags in the store.");
        let _ = writeln!(s, "# TYPE imagefs_tags gauge\nimagefs_tags {tags}");
        let _ = writeln!(s, "# HELP imagefs_digests Digests in the store.");
        let _ = writeln!(s, "# TYPE imagefs_digests gauge\nimagefs_digests {digests}");
        let _ = writeln!(
            s,
            "# HELP imagefs_collections_total Digest directories removed by eager GC.\n\
             # TYPE imagefs_collections_total counter\nimagefs_collections_total {}",
            self.collections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP imagefs_requests_total FUSE requests by operation."
        );
        let _ = writeln!(s, "# TYPE imagefs_requests_total counter");
        for (i, n) in self.requests.iter().enumerate() {
            let op = OPS.get(i).copied().unwrap_or("other");
            let _ = writeln!(
                s,
                "imagefs_requests_total{{op=\"{op}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(s, "# HELP imagefs_errors_total Error replies by errno.");
        let _ = writeln!(s, "# TYPE imagefs_errors_total counter");
        for (errno, n) in self.errors.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(s, "imagefs_errors_total{{errno=\"{errno}\"}} {n}");
            }
        }
        s
    }
}
