//! Imported files keep their real mtimes, and the image still depends only on the tree.
//!
//! `mkfs.erofs` 1.5 with `SOURCE_DATE_EPOCH=E` (and no `-T`) stores E as the image's build
//! time and every inode's own mtime, seconds and nanoseconds, when its seconds are below E;
//! an mtime at or after E is clamped to E (nanoseconds 0). So E is one second past the
//! latest mtime in the tree ([`source_date_epoch`]): nothing is clamped, and nothing of the
//! wall clock gets in.
//!
//! What a tar says is bounded first ([`clamp`]), so that every filesystem the work tree may
//! be on holds it as it is (a filesystem stores out-of-range times clamped to its own range,
//! which would make the digest depend on where the store lives):
//! - before 1970 is the epoch: mkfs.erofs 1.5 reads a negative mtime as a huge unsigned
//!   one, which it would clamp to E;
//! - after [`MAX_SECS`] (2446-05-10 22:38:55 UTC, the latest ext4 with 256-byte inodes
//!   holds) is [`MAX_SECS`].
//!
//! A directory that no tar entry describes (a parent a layer writes into without an entry
//! of its own, or the root of a tar without `./`) gets [`IMPLICIT_DIR_SECS`], the epoch:
//! umoci leaves the time it made it (the wall clock), which no two imports would share.

/// Latest mtime a tar entry keeps: ext4's largest (2^31 - 1 + 3 * 2^32 s, its 32 bits of
/// signed seconds and 2 epoch bits: 2446-05-10 22:38:55 UTC). XFS with bigtime, btrfs and
/// tmpfs hold more; ext4 with 128-byte inodes and XFS without bigtime stop at 2038 (there
/// the filesystem clamps further, and such an image's digest differs).
pub const MAX_SECS: i64 = 0x3_7fff_ffff;

/// The mtime of a directory no entry describes: the epoch.
pub const IMPLICIT_DIR_SECS: i64 = 0;

/// An mtime from a tar, bounded to what every work-tree filesystem stores unchanged:
/// `[0, MAX_SECS]`, nanoseconds kept inside the range and dropped at its ends.
pub fn clamp(secs: i64, nsec: u32) -> (i64, u32) {
    if secs < 0 {
        (0, 0)
    } else if secs > MAX_SECS {
        (MAX_SECS, 0)
    } else {
        (secs, nsec.min(999_999_999))
    }
}

/// `SOURCE_DATE_EPOCH` for a tree whose latest mtime is `latest_secs` seconds (whatever its
/// nanoseconds): one second later, and at least 1. Every mtime of the tree is below it, so
/// mkfs.erofs keeps each as it is.
pub fn source_date_epoch(latest_secs: i64) -> i64 {
    latest_secs.saturating_add(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamp_keeps_the_range_and_bounds_the_rest() {
        assert_eq!(
            clamp(1_700_000_000, 123_456_789),
            (1_700_000_000, 123_456_789)
        );
        assert_eq!(clamp(0, 5), (0, 5));
        assert_eq!(clamp(-1, 500_000_000), (0, 0));
        assert_eq!(clamp(i64::MIN, 0), (0, 0));
        assert_eq!(clamp(MAX_SECS, 7), (MAX_SECS, 7));
        assert_eq!(clamp(MAX_SECS + 1, 7), (MAX_SECS, 0));
        assert_eq!(clamp(i64::MAX, 999_999_999), (MAX_SECS, 0));
        assert_eq!(clamp(1, 2_000_000_000), (1, 999_999_999));
        // 2446-05-10 22:38:55 UTC.
        assert_eq!(MAX_SECS, 15_032_385_535);
    }

    #[test]
    fn the_epoch_is_one_second_past_the_latest_mtime() {
        assert_eq!(source_date_epoch(1_700_000_000), 1_700_000_001);
        // A tree of mtime 0 (a reproducible build's) still gets a positive epoch.
        assert_eq!(source_date_epoch(0), 1);
        // A directory source may hold times before 1970 or past any range.
        assert_eq!(source_date_epoch(-100), 1);
        assert_eq!(source_date_epoch(i64::MAX), i64::MAX);
        assert_eq!(source_date_epoch(MAX_SECS), MAX_SECS + 1);
    }
}
