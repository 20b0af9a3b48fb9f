//! Attributes of the mounted tree's nodes, and how long the kernel may cache them.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

/// `tags/` changes under the kernel's feet only through other writers of the store; our own
/// changes invalidate what they touch, so a short TTL bounds how stale another writer's
/// change can look.
pub const TAGS_TTL: Duration = Duration::from_secs(1);
/// Digest directories are immutable while they exist; GC invalidates them when they go.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// A digest directory whose pull is still in progress, and its files. Nothing watches inside
/// digest directories (one watch per directory would not scale to a store's thousands), so
/// the turn to `ready` (its listing gains `rootfs`, `rootfs.erofs`) reaches the kernel when
/// these expire: a quarter of a second, well inside the second in which the mount promises
/// to show another writer's change. Only pulls in progress are asked for this often.
pub const PENDING_TTL: Duration = Duration::from_millis(250);

pub fn time(secs: i64, nsecs: i64) -> SystemTime {
    let ns = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), ns)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, ns)
    }
}

/// A synthetic directory or file owned by root.
pub fn synthetic(ino: u64, kind: FileType, perm: u16, size: u64, at: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: at,
        mtime: at,
        ctime: at,
        crtime: at,
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes taken from a store entry's metadata. `strip_write` makes them read-only.
pub fn from_metadata(
    ino: u64,
    kind: FileType,
    m: &std::fs::Metadata,
    strip_write: bool,
) -> FileAttr {
    let mut perm = (m.mode() & 0o7777) as u16;
    if strip_write {
        perm &= !0o222;
    }
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.mtime(), m.mtime_nsec()),
        kind,
        perm,
        nlink: if kind == FileType::Directory { 2 } else { 1 },
        uid: m.uid(),
        gid: m.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}
