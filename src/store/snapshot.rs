//! The index snapshot: a cache of the mount's scan of the repository directories, kept in
//! the bookkeeping as `index-snapshot` ([`FILE`]), so that a mount does not read a million
//! tag links again when their directories have not changed. Never an authority: a missing,
//! torn, foreign or unreadable file is ignored (a log line, then the full scan), and each
//! directory is taken from it only when the disk proves it unchanged.
//!
//! For each repository directory the scan read completely and found nothing but tags,
//! sub-repositories and legacy digest directories (anything else — temporary files,
//! staging entries, stray files, problems — is read again every time, so its warnings and
//! clean-ups happen as before), the file keeps the directory's identity (device, inode),
//! its modification and change times in nanoseconds, taken *before* its entries were read,
//! and those entries (tag -> digest, sub-directory names, legacy digest directories).
//!
//! At the next mount a directory whose identity and both times are the same is taken from
//! the snapshot without `getdents`/`readlinkat`. This is sound because every change to the
//! entries of a directory changes its mtime and ctime: a symlink cannot be rewritten in
//! place, so a retag (hypeman's non-atomic unlink + symlink, or a rename over the tag), a
//! new tag, a removed one, a sub-directory made, removed or renamed in or out all go
//! through the directory's entries. A directory renamed or replaced has another path or
//! another inode (and a new ctime). The link texts are interpreted again from the
//! directory's path, which is the snapshot's key.
//!
//! The racy-timestamp rule (as git's racy index): a change made right after the scan's
//! `statx` can get the same timestamp as the one recorded (the kernel's clock is coarse;
//! some filesystems keep seconds). So a directory is trusted only when both its times are
//! more than [`RACY_NS`] older than the start of the scan that wrote the snapshot; one
//! changed since is rescanned, and the next snapshot records it.
//!
//! Only what the scan of repository directories does is skipped: `content/` is read at
//! every mount (a digest directory's presence is checked as before), and so are every
//! index check and the recovery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use log::{debug, info};
use rustix::fs::StatxFlags;

use super::names::{self, Digest};
use super::sys;
use super::tag_name::TagName;

/// The snapshot's name in the bookkeeping directory.
pub const FILE: &str = "index-snapshot";
/// Its temporary name while it is written.
pub const TMP: &str = "index-snapshot.tmp";
const MAGIC: &[u8; 8] = b"IMGFSNAP";
const VERSION: u32 = 1;
/// A snapshot larger than this is neither written nor read (about 25 million tags).
pub const MAX_BYTES: usize = 256 << 20;
/// How much older than the scan a directory's times must be for it to be trusted.
pub const RACY_NS: i64 = if cfg!(test) {
    50_000_000
} else {
    2_000_000_000
};
const HEADER: usize = 8 + 4 + 8 + 8 + 8 + 4;

/// What identifies a directory's state: its identity and its times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

const STAMP_MASK: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::INO)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::CTIME);

impl Stamp {
    fn of(st: &rustix::fs::Statx) -> Option<Stamp> {
        let need = STAMP_MASK.bits();
        if st.stx_mask & need != need || u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
            return None;
        }
        let ns = |t: &rustix::fs::StatxTimestamp| t.tv_sec * 1_000_000_000 + i64::from(t.tv_nsec);
        Some(Stamp {
            dev: (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor),
            ino: st.stx_ino,
            mtime_ns: ns(&st.stx_mtime),
            ctime_ns: ns(&st.stx_ctime),
        })
    }

    /// The stamp of an open directory (taken before its entries are read).
    pub fn of_fd(fd: impl std::os::fd::AsFd) -> Option<Stamp> {
        Stamp::of(&sys::fstatx(fd, STAMP_MASK).ok()?)
    }

    /// The stamp of the directory at `path` (a symlink is no directory).
    pub fn of_path(path: &Path) -> Option<Stamp> {
        Stamp::of(&sys::statx(path, STAMP_MASK).ok()?)
    }
}

/// May a directory recorded as `recorded`, found as `now`, be taken from a snapshot whose
/// scan started at `scan_start_ns`? The same identity and times, both clearly older than
/// the scan (the racy-timestamp rule, see the module's documentation).
pub fn trusted(recorded: &Stamp, now: &Stamp, scan_start_ns: i64) -> bool {
    let limit = scan_start_ns.saturating_sub(RACY_NS);
    recorded == now && recorded.ctime_ns < limit && recorded.mtime_ns < limit
}

/// Nanoseconds since the epoch, on the clock the kernel stamps files with.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Which of the store's two trees of repository directories a record is of (the scan's
/// layout: 0 content, 1 legacy; this module does not depend on the scan's types).
pub type Tree = u8;

/// Appends one directory's record to `out`: its entries as the scan found them (`tags`
/// name -> digest, `digests` the legacy digest directories, `subs` the sub-repositories'
/// full paths). Returns whether it was recorded.
pub fn record(
    out: &mut Vec<u8>,
    at: (Tree, &str),
    stamp: &Stamp,
    tags: &[(&str, Digest)],
    digests: &[Digest],
    subs: &[String],
) -> bool {
    let (tree, repo) = at;
    // Names are at most 255 bytes (a path component) and a repository path fits u16: a
    // record that does not fit is not written, and the directory is read next time.
    if repo.len() > usize::from(u16::MAX)
        || tags.iter().any(|t| t.0.len() > 255)
        || subs.iter().any(|s| names::split_last(s).1.len() > 255)
    {
        return false;
    }
    out.push(tree);
    out.extend_from_slice(&(repo.len() as u16).to_le_bytes());
    out.extend_from_slice(repo.as_bytes());
    for v in [stamp.dev, stamp.ino] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [stamp.mtime_ns, stamp.ctime_ns] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let len_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let body = out.len();
    out.extend_from_slice(&(subs.len() as u32).to_le_bytes());
    for s in subs {
        let last = names::split_last(s).1;
        out.push(last.len() as u8);
        out.extend_from_slice(last.as_bytes());
    }
    out.extend_from_slice(&(digests.len() as u32).to_le_bytes());
    for d in digests {
        out.extend_from_slice(d.as_bytes());
    }
    // The tags' digests, each once (a digest has several tags in a repository).
    let mut table: HashMap<Digest, u32> = HashMap::new();
    let mut order: Vec<Digest> = Vec::new();
    let idx: Vec<u32> = tags
        .iter()
        .map(|&(_, d)| {
            *table.entry(d).or_insert_with(|| {
                order.push(d);
                (order.len() - 1) as u32
            })
        })
        .collect();
    out.extend_from_slice(&(order.len() as u32).to_le_bytes());
    for d in &order {
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for (&(n, _), i) in tags.iter().zip(idx) {
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&i.to_le_bytes());
    }
    let body_len = (out.len() - body) as u32;
    out[len_at..len_at + 4].copy_from_slice(&body_len.to_le_bytes());
    true
}

/// A bounds-checked little-endian reader: a malformed record is `None`, never a panic.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn digest(&mut self) -> Option<Digest> {
        Some(Digest::from_bytes(self.take(32)?.try_into().ok()?))
    }
    fn name(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// A checksum of the file's bytes (FNV-style over 8-byte words): enough to tell a torn or
/// damaged file, not a defence against a forged one (the bookkeeping is imagefs's own).
fn checksum(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &x in chunks.remainder() {
        h = (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The identity of the store root, which a snapshot must have been written for.
fn root_id(root: &Path) -> Option<(u64, u64)> {
    let st = sys::statx(root, STAMP_MASK).ok()?;
    Some((
        (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor),
        st.stx_ino,
    ))
}

/// A snapshot read from disk, its records found but not decoded (each is decoded when the
/// scan takes its directory from it).
#[derive(Debug, Default)]
pub struct Loaded {
    bytes: Vec<u8>,
    scan_start_ns: i64,
    /// repository path -> (stamp, the record's byte range), per layout.
    content: HashMap<String, (Stamp, std::ops::Range<usize>)>,
    legacy: HashMap<String, (Stamp, std::ops::Range<usize>)>,
}

/// The entries of a directory taken from the snapshot.
pub struct Taken {
    pub tags: Vec<(TagName, Digest)>,
    /// Legacy digest directories.
    pub digests: Vec<Digest>,
    /// Sub-repositories, full paths.
    pub subs: Vec<String>,
}

impl Loaded {
    /// Reads the snapshot of the store at `root` from the bookkeeping directory `dir`; `None`
    /// (logged) when there is none or it cannot be used.
    pub fn read(dir: &Path, root: &Path) -> Option<Loaded> {
        let path = dir.join(FILE);
        let file = match sys::open(&path, std::fs::File::options().read(true)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!("{}: none; full scan", path.display());
                return None;
            }
            Err(e) => {
                info!("{}: {e}; ignored, full scan", path.display());
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(e) = sys::read_to_end(&file, MAX_BYTES as u64 + 1, &mut bytes) {
            info!("{}: {e}; ignored, full scan", path.display());
            return None;
        }
        match Loaded::parse(bytes, root_id(root)) {
            Ok(l) => Some(l),
            Err(why) => {
                info!("{}: {why}; ignored, full scan", path.display());
                None
            }
        }
    }

    fn parse(bytes: Vec<u8>, root: Option<(u64, u64)>) -> Result<Loaded, &'static str> {
        if bytes.len() > MAX_BYTES {
            return Err("larger than the limit");
        }
        if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
            return Err("not an index snapshot");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if checksum(body).to_le_bytes() != sum {
            return Err("checksum mismatch (torn or damaged)");
        }
        let mut r = Reader { b: body, at: 8 };
        if r.u32() != Some(VERSION) {
            return Err("another version");
        }
        let id = (r.u64().ok_or("short")?, r.u64().ok_or("short")?);
        if root != Some(id) {
            return Err("written for another store");
        }
        let scan_start_ns = r.i64().ok_or("short")?;
        let n = r.u32().ok_or("short")?;
        let mut l = Loaded {
            scan_start_ns,
            ..Loaded::default()
        };
        for _ in 0..n {
            let start = r.at;
            let tree = r.u8().ok_or("short")?;
            let len = usize::from(r.u16().ok_or("short")?);
            let repo = std::str::from_utf8(r.take(len).ok_or("short")?)
                .map_err(|_| "malformed record")?
                .to_string();
            let stamp = Stamp {
                dev: r.u64().ok_or("short")?,
                ino: r.u64().ok_or("short")?,
                mtime_ns: r.i64().ok_or("short")?,
                ctime_ns: r.i64().ok_or("short")?,
            };
            let blen = r.u32().ok_or("short")? as usize;
            r.take(blen).ok_or("short")?;
            let map = match tree {
                0 => &mut l.content,
                1 => &mut l.legacy,
                _ => return Err("malformed record"),
            };
            map.insert(repo, (stamp, start..r.at));
        }
        if r.at != body.len() {
            return Err("trailing bytes");
        }
        l.bytes = bytes;
        Ok(l)
    }

    /// The entries of `layout`'s directory `repo` (at `dir`) if the snapshot holds them and
    /// the directory is provably unchanged since; its record is appended to `out` for the
    /// next snapshot. `None`: the caller reads the directory.
    pub fn take(&self, at: (Tree, &str), dir: &Path, out: Option<&mut Vec<u8>>) -> Option<Taken> {
        let (tree, repo) = at;
        let (stamp, range) = match tree {
            0 => self.content.get(repo)?,
            _ => self.legacy.get(repo)?,
        };
        let now = Stamp::of_path(dir)?;
        if !trusted(stamp, &now, self.scan_start_ns) {
            return None;
        }
        let rec = &self.bytes[range.clone()];
        let taken = decode(rec, repo)?;
        if let Some(out) = out {
            out.extend_from_slice(rec);
        }
        Some(taken)
    }
}

/// Decodes one record's entries (its header already read by [`Loaded::parse`]).
fn decode(rec: &[u8], repo: &str) -> Option<Taken> {
    let mut r = Reader { b: rec, at: 0 };
    r.u8()?;
    let len = usize::from(r.u16()?);
    r.take(len + 32 + 4)?;
    let mut t = Taken {
        tags: Vec::new(),
        digests: Vec::new(),
        subs: Vec::new(),
    };
    for _ in 0..r.u32()? {
        let c = names::check_repo_component(r.name()?.as_bytes(), repo.is_empty()).ok()?;
        t.subs.push(names::join(repo, c));
    }
    let nd = r.u32()? as usize;
    t.digests.reserve(nd.min(rec.len() / 32));
    for _ in 0..nd {
        t.digests.push(r.digest()?);
    }
    let nt = r.u32()? as usize;
    let mut table = Vec::with_capacity(nt.min(rec.len() / 32));
    for _ in 0..nt {
        table.push(r.digest()?);
    }
    let n = r.u32()? as usize;
    t.tags.reserve(n.min(rec.len()));
    for _ in 0..n {
        let name = r.name()?;
        let d = *table.get(r.u32()? as usize)?;
        t.tags.push((TagName::new(name), d));
    }
    (r.at == rec.len()).then_some(t)
}

/// A snapshot to write: the records of one scan and when that scan started.
#[derive(Debug, Default)]
pub struct Fresh {
    pub scan_start_ns: i64,
    pub records: Vec<u8>,
    pub count: u32,
}

/// Process-wide: one writer of the temporary file at a time.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `fresh` as the snapshot of the store at `root` into the bookkeeping directory
/// `dir`: a temporary file renamed over the old one (a reader sees the old or the new whole
/// file; a torn one fails its checksum). No fsync: a file lost to a crash is only a full
/// scan. Returns the path written, or why not.
pub fn write(dir: &Path, root: &Path, fresh: Fresh) -> Result<PathBuf, String> {
    let path = dir.join(FILE);
    let tmp = dir.join(TMP);
    let total = HEADER + fresh.records.len() + 8;
    if total > MAX_BYTES {
        // Too large: the old one goes too (its directories would be read anyway).
        let _ = sys::remove_file(&path);
        return Err(format!(
            "{}: {total} bytes, over the limit of {MAX_BYTES}; not written",
            path.display()
        ));
    }
    let Some((dev, ino)) = root_id(root) else {
        return Err(format!("{}: cannot stat the store root", root.display()));
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&dev.to_le_bytes());
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&fresh.scan_start_ns.to_le_bytes());
    out.extend_from_slice(&fresh.count.to_le_bytes());
    out.extend_from_slice(&fresh.records);
    drop(fresh);
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    let _g = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let f = sys::open(
        &tmp,
        std::fs::File::options()
            .create(true)
            .truncate(true)
            .write(true),
    )
    .map_err(|e| format!("{}: {e}", tmp.display()))?;
    sys::write_all(&f, &out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(f);
    sys::rename(&tmp, &path)
        .map_err(|e| format!("{} -> {}: {e}", tmp.display(), path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_racy_rule_trusts_only_clearly_older_unchanged_directories() {
        let s = Stamp {
            dev: 1,
            ino: 2,
            mtime_ns: 10_000_000_000,
            ctime_ns: 10_000_000_000,
        };
        let start = s.ctime_ns + RACY_NS + 1;
        assert!(trusted(&s, &s, start));
        // Within the racy window, or newer than the scan: not trusted.
        assert!(!trusted(&s, &s, s.ctime_ns + RACY_NS));
        assert!(!trusted(&s, &s, s.ctime_ns));
        for other in [
            Stamp { ino: 3, ..s },
            Stamp { dev: 9, ..s },
            Stamp {
                mtime_ns: s.mtime_ns + 1,
                ..s
            },
            Stamp {
                ctime_ns: s.ctime_ns + 1,
                ..s
            },
        ] {
            assert!(!trusted(&s, &other, start), "{other:?}");
        }
    }

    #[test]
    fn a_torn_or_foreign_snapshot_is_refused() {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&0i64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let sum = checksum(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        assert!(Loaded::parse(out.clone(), Some((1, 2))).is_ok());
        assert_eq!(
            Loaded::parse(out.clone(), Some((1, 3))).err(),
            Some("written for another store")
        );
        let mut torn = out.clone();
        torn.truncate(out.len() - 3);
        assert!(Loaded::parse(torn, Some((1, 2))).is_err());
        let mut flipped = out.clone();
        flipped[20] ^= 1;
        assert!(Loaded::parse(flipped, Some((1, 2))).is_err());
    }
}
