//! Counters behind `MNT/.imagefs/metrics` (Prometheus text format).
//! Request counting is on every request's path, so it is lock-free.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The FUSE operations counted; the discriminant indexes the counters.
#[derive(Clone, Copy)]
pub enum Op {
    ReaddirPlus,
    Create,
    RemoveXattr,
    Lookup,
    GetAttr,
    SetAttr,
    ReadLink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Symlink,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Readdir,
    StatFs,
    SetXattr,
    GetXattr,
    ListXattr,
}

/// Each [`Op`]'s name in the metrics, in discriminant order.
const OPS: [&str; 22] = [
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
    "readdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
];

/// errno values are small; anything larger lands in the last slot.
const ERRNOS: usize = 134;

/// Values taken from the store and the inode table when the file is opened.
pub struct Gauges {
    pub tags: usize,
    pub digests: usize,
    pub store_bytes: u64,
    pub collections: u64,
    pub bytes_reclaimed: u64,
    /// Collected images still served because the kernel holds their inodes.
    pub in_use_only: usize,
}

pub struct Metrics {
    requests: [AtomicU64; OPS.len()],
    errors: [AtomicU64; ERRNOS],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    pub fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, errno: i32) {
        let i = usize::try_from(errno).unwrap_or(0).min(ERRNOS - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric("imagefs_tags", "gauge", "Tags in the store.", g.tags as u64);
        metric(
            "imagefs_digests",
            "gauge",
            "Digests in the store.",
            g.digests as u64,
        );
        metric(
            "imagefs_store_bytes",
            "gauge",
            "Disk space used by the store's digest directories.",
            g.store_bytes,
        );
        metric(
            "imagefs_collections_total",
            "counter",
            "Digest directories removed by eager GC since mount.",
            g.collections,
        );
        metric(
            "imagefs_reclaimed_bytes_total",
            "counter",
            "Disk space freed by eager GC since mount.",
            g.bytes_reclaimed,
        );
        metric(
            "imagefs_in_use_only_images",
            "gauge",
            "Collected images still served because a process uses them.",
            g.in_use_only as u64,
        );
        let _ = writeln!(
            s,
            "# HELP imagefs_requests_total FUSE requests by operation."
        );
        let _ = writeln!(s, "# TYPE imagefs_requests_total counter");
        for (op, n) in OPS.iter().zip(&self.requests) {
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
