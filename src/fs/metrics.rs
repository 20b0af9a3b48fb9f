//! Counters behind `MNT/.imagefs/metrics` (Prometheus text format).
//! Request counting is on every request's path, so it is lock-free.
//!
//! Invariant: [`Op::ALL`] lists every operation at its discriminant, which indexes the
//! counters; [`Op::name`] names each (one exhaustive match).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::store::DirKey;

/// The FUSE operations counted; the discriminant indexes the counters.
#[derive(Clone, Copy)]
pub(super) enum Op {
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

impl Op {
    /// Every operation, in discriminant order (the order of the metrics file).
    const ALL: [Op; 22] = [
        Op::ReaddirPlus,
        Op::Create,
        Op::RemoveXattr,
        Op::Lookup,
        Op::GetAttr,
        Op::SetAttr,
        Op::ReadLink,
        Op::Mknod,
        Op::Mkdir,
        Op::Unlink,
        Op::Rmdir,
        Op::Symlink,
        Op::Rename,
        Op::Link,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Readdir,
        Op::StatFs,
        Op::SetXattr,
        Op::GetXattr,
        Op::ListXattr,
    ];

    /// The operation's name in the metrics.
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::ReaddirPlus => "readdirplus",
            Op::Create => "create",
            Op::RemoveXattr => "removexattr",
            Op::Lookup => "lookup",
            Op::GetAttr => "getattr",
            Op::SetAttr => "setattr",
            Op::ReadLink => "readlink",
            Op::Mknod => "mknod",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rmdir => "rmdir",
            Op::Symlink => "symlink",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Readdir => "readdir",
            Op::StatFs => "statfs",
            Op::SetXattr => "setxattr",
            Op::GetXattr => "getxattr",
            Op::ListXattr => "listxattr",
        }
    }
}

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
    /// Collections put off because another writer had just changed the image's tags, and
    /// their outcomes so far; those still waiting.
    pub gc_deferred: u64,
    pub gc_deferred_collected: u64,
    pub gc_deferred_dropped: u64,
    pub gc_deferred_waiting: usize,
    /// Dangling tags found by the watcher that the store still holds
    /// ([`Metrics::dangling_now`]).
    pub dangling: usize,
    /// Entries of the inode table: the inodes the kernel holds, and the fixed ones.
    pub inodes: usize,
}

pub struct Metrics {
    requests: [AtomicU64; Op::ALL.len()],
    errors: [AtomicU64; ERRNOS],
    /// Tags found dangling (another writer removed the directory they name), by (repo,
    /// tag), until they leave the store.
    dangling: Mutex<BTreeMap<(String, String), DirKey>>,
    dangling_total: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            dangling: Mutex::default(),
            dangling_total: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The watcher found the tag `repo:tag` dangling: it names `dir`, which another writer
    /// removed.
    pub fn dangling_found(&self, repo: String, tag: String, dir: DirKey) {
        self.dangling_total.fetch_add(1, Ordering::Relaxed);
        self.dangling.lock().insert((repo, tag), dir);
    }

    /// How many of the dangling tags found are still in the store: `still(repo, tag, dir)`
    /// says whether one is (those removed or re-pointed since are forgotten).
    pub fn dangling_now(&self, still: impl Fn(&str, &str, &DirKey) -> bool) -> usize {
        let mut d = self.dangling.lock();
        d.retain(|(repo, tag), dir| still(repo, tag, dir));
        d.len()
    }

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
            "imagefs_inodes",
            "gauge",
            "Inodes the kernel holds (entries of the inode table, the fixed ones included).",
            g.inodes as u64,
        );
        metric(
            "imagefs_in_use_only_images",
            "gauge",
            "Collected images still served because a process uses them.",
            g.in_use_only as u64,
        );
        metric(
            "imagefs_gc_deferred_total",
            "counter",
            "Collections put off because another writer had changed the image's tags within the last second (a retag in progress).",
            g.gc_deferred,
        );
        metric(
            "imagefs_gc_deferred_collected_total",
            "counter",
            "Deferred collections done by a retry once no tag had come back.",
            g.gc_deferred_collected,
        );
        metric(
            "imagefs_gc_deferred_dropped_total",
            "counter",
            "Deferred collections dropped, the directory kept: a tag named it again, it went, or it was no longer collectable.",
            g.gc_deferred_dropped,
        );
        metric(
            "imagefs_gc_deferred",
            "gauge",
            "Deferred collections waiting for the store to be quiet.",
            g.gc_deferred_waiting as u64,
        );
        metric(
            "imagefs_dangling_tags",
            "gauge",
            "Tags in the store naming a digest directory another writer removed (hidden from the mount; imagefs fsck --repair removes them).",
            g.dangling as u64,
        );
        metric(
            "imagefs_dangling_tags_found_total",
            "counter",
            "Dangling tags found since mount: another writer removed the digest directory a tag named.",
            self.dangling_total.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP imagefs_requests_total FUSE requests by operation."
        );
        let _ = writeln!(s, "# TYPE imagefs_requests_total counter");
        for (op, n) in Op::ALL.iter().zip(&self.requests) {
            let _ = writeln!(
                s,
                "imagefs_requests_total{{op=\"{}\"}} {}",
                op.name(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_tags_are_counted_until_they_leave_the_store() {
        let m = Metrics::default();
        let dir = DirKey::Content(crate::store::Digest::from_bytes([7; 32]));
        m.dangling_found("docker.io/library/a".into(), "x".into(), dir.clone());
        m.dangling_found("docker.io/library/a".into(), "y".into(), dir);
        let g = |dangling| Gauges {
            tags: 0,
            digests: 0,
            store_bytes: 0,
            collections: 0,
            bytes_reclaimed: 0,
            in_use_only: 0,
            gc_deferred: 0,
            gc_deferred_collected: 0,
            gc_deferred_dropped: 0,
            gc_deferred_waiting: 0,
            dangling,
            inodes: 0,
        };
        let text = m.render(&g(m.dangling_now(|_, _, _| true)));
        assert!(text.contains("\nimagefs_dangling_tags 2\n"), "{text}");
        assert!(
            text.contains("\nimagefs_dangling_tags_found_total 2\n"),
            "{text}"
        );
        // One was removed from the store: the gauge drops, the counter stays.
        let text = m.render(&g(m.dangling_now(|_, t, _| t == "x")));
        assert!(text.contains("\nimagefs_dangling_tags 1\n"), "{text}");
        assert!(
            text.contains("\nimagefs_dangling_tags_found_total 2\n"),
            "{text}"
        );
    }

    #[test]
    fn every_op_is_listed_once_at_its_discriminant() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{}", op.name());
        }
    }
}
