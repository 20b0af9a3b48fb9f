//! imagefs's bookkeeping: the lock file, the mount marker, intent records, the trash and
//! `import`'s work directories, kept **beside** the store where hypeman never looks:
//!
//! ```text
//! <parent>/<name>/                  the store (hypeman's `images/`)
//! <parent>/.imagefs-<name>/         imagefs's bookkeeping (this module's `dir`)
//!   lock  mounted  intents/  spare/  trash/  import/
//! ```
//!
//! Both versions of hypeman list images by walking the whole store: the legacy version takes
//! every symlink under it for a tag, the content version also every `metadata.json` outside
//! `content/` for an image. A collected directory in a trash inside the store (its
//! `metadata.json` and `rootfs.erofs` intact while an image stays in use) was listed as an
//! image, and a GC intent symlink as a tag. Neither walks the store's parent (hypeman's data
//! directory, whose other children are `system/`, `guests/`, `volumes/`). The sibling is on
//! the same filesystem as the store, so the rename of a digest directory into the trash stays
//! one atomic step.
//!
//! Where the store's root is a mount point of its own (another filesystem, or a bind mount:
//! a rename across it fails with EXDEV), the bookkeeping stays inside the store, in
//! `STORE/.imagefs/` as before, and every open warns that hypeman may list what the trash
//! holds. The choice depends only on the mount table, so every process (mount, import, gc,
//! fsck) finds the same lock. Bookkeeping an older imagefs kept in `STORE/.imagefs/` is
//! moved beside the store by the first process that takes the lock ([`Journal::adopt_old`]),
//! entry by entry (each a rename, re-run after a crash), under both locks, and refused while
//! an older mount still holds it.
//!
//! An intent is written before the first step of a change that spans several filesystem
//! operations and removed after the last, so that the next mount can finish or roll back
//! whatever a crash interrupted:
//!
//! - `gc`: a symlink `intents/<id>.<hex>.gc -> <ino>.<b|c><nanos>[:<repo>]`, written before
//!   the tag that holds the last reference goes. It names the exact directory it was written
//!   for: its digest (in the link's name), its layout and legacy repository, and its identity
//!   ([`DirId`]: inode number and birth time, or change time where the filesystem keeps no
//!   birth time). A directory removed by another writer and re-created under the same path
//!   is another directory, and a replay leaves it alone. One `symlink(2)`, no fsync: after
//!   `kill -9` the page cache keeps every step in order. The target stays short on purpose: up
//!   to 60 bytes ext4 keeps it in the inode ("fast symlink"), so recording an intent needs no
//!   data block — which matters for collecting on a full disk. A content-layout target is
//!   at most 34 bytes; a legacy one adds `:<repo>` (fast up to a 25-byte repository name).
//!   Records of older imagefs versions (`<id>.gc -> <store-relative dir>`) carry no
//!   identity: they are read, never replayed.
//! - `promote`, `move`, `exchange`, `relink`: small JSON records (see [`Intent`]), written
//!   atomically, for the rarer multi-step changes.
//!
//! A GC record that cannot be written for lack of space (ENOSPC, EDQUOT: a legacy target too
//! long for the inode, a directory that needs a new block) goes to a spare slot instead:
//! `spare/<n>.slot`, files of one written block made at open, overwritten in place (needs no
//! new block), freed by zeroing their first byte.
//!
//! Everything under `trash/` is garbage by definition and is deleted at mount. So is every
//! side trash ([`SIDE_TRASH`], `content/.imagefs-trash/`, `<repo>/.imagefs-trash/`): where a
//! digest directory is on another filesystem than `trash/` (a rename would fail with EXDEV),
//! it goes there, on its own filesystem; the scan finds them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::{self, TMP_PREFIX};
use super::layout::{CONTENT, DirKey, PRIVATE, SIDE_TRASH};
use super::names::Digest;
use super::sys;

/// The identity of one directory: a directory removed and re-created under the same path
/// (by hypeman's `RemoveAll` and a new pull) is another one, whatever its inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirId {
    pub ino: u64,
    /// `true`: `nanos` is the birth time (statx `btime`); `false`: the change time, where
    /// the filesystem keeps no birth time.
    pub birth: bool,
    /// Nanoseconds since the epoch.
    pub nanos: u64,
}

impl DirId {
    /// The identity of the directory at `path` (not following a symlink).
    pub fn of(path: &Path) -> io::Result<DirId> {
        use rustix::fs::StatxFlags;
        let st = sys::statx(
            path,
            StatxFlags::INO | StatxFlags::BTIME | StatxFlags::CTIME | StatxFlags::TYPE,
        )?;
        let birth = st.stx_mask & StatxFlags::BTIME.bits() != 0;
        let t = if birth { st.stx_btime } else { st.stx_ctime };
        Ok(DirId {
            ino: st.stx_ino,
            birth,
            nanos: nanos(&t),
        })
    }

    /// Is the directory at `path` the one this identity names? Compared with the time it
    /// was recorded with (a record naming the change time is compared with the change time,
    /// wherever it came from).
    pub fn matches(&self, path: &Path) -> io::Result<bool> {
        use rustix::fs::StatxFlags;
        let st = sys::statx(
            path,
            StatxFlags::INO | StatxFlags::BTIME | StatxFlags::CTIME,
        )?;
        let t = if self.birth {
            if st.stx_mask & StatxFlags::BTIME.bits() == 0 {
                return Ok(false);
            }
            st.stx_btime
        } else {
            st.stx_ctime
        };
        Ok(st.stx_ino == self.ino && nanos(&t) == self.nanos)
    }

    fn encode(&self) -> String {
        format!(
            "{:x}.{}{:x}",
            self.ino,
            if self.birth { 'b' } else { 'c' },
            self.nanos
        )
    }

    fn decode(s: &str) -> Option<DirId> {
        let (ino, t) = s.split_once('.')?;
        let birth = match t.as_bytes().first()? {
            b'b' => true,
            b'c' => false,
            _ => return None,
        };
        Some(DirId {
            ino: u64::from_str_radix(ino, 16).ok()?,
            birth,
            nanos: u64::from_str_radix(&t[1..], 16).ok()?,
        })
    }
}

fn nanos(t: &rustix::fs::StatxTimestamp) -> u64 {
    (t.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(t.tv_nsec))
}

/// A multi-step change in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Intent {
    /// Collect this digest directory (store-relative) if it is still the directory `id`
    /// names, no tag names it, and it is ready and not kept by hypeman as digest-only.
    /// `id` is `None` in records of older imagefs versions, which are never replayed.
    Gc { dir: String, id: Option<DirId> },
    /// Move legacy `<repo>/<hex>` into `content/<hex>` and rewrite the repository's
    /// legacy tags naming it into `repositories/<repo>/`.
    Promote { repo: String, hex: String },
    /// A tag moved from `from` to `to` (store-relative symlink paths): once `to` exists,
    /// `from` must go.
    Move { from: String, to: String },
    /// Final targets of two exchanged tags (store-relative symlink paths).
    Exchange {
        a: String,
        a_target: String,
        b: String,
        b_target: String,
    },
    /// Rewrite every content-layout tag under this store-relative repository directory
    /// to its canonical target (after a repository moved to another depth). `from`: the
    /// directory before the move, relinked instead where the move was undone (records of
    /// older versions have none).
    Relink {
        dir: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// Move the store directories of repository `from` (both layouts) to repository `to`, all
    /// or nothing (`repo_move.rs` replays it).
    #[serde(rename = "move-repo")]
    MoveRepo { from: String, to: String },
}

/// Where a store's bookkeeping lives.
#[derive(Debug, Clone)]
pub struct Journal {
    pub dir: PathBuf,
    /// The store's root is a mount point: the bookkeeping stays in `STORE/.imagefs/`.
    pub in_store: bool,
    /// `STORE/.imagefs/`, where older versions kept it (moved over by [`Journal::adopt_old`]).
    old: PathBuf,
}

/// Are `a` and `b` on the same mount (a rename between them cannot fail with EXDEV)?
fn same_mount(a: &Path, b: &Path) -> io::Result<bool> {
    use rustix::fs::StatxFlags;
    // Following symlinks: where the paths lead is what a rename between them meets.
    let st = |p: &Path| sys::statx_follow(p, StatxFlags::MNT_ID | StatxFlags::INO);
    let (x, y) = (st(a)?, st(b)?);
    let mnt = StatxFlags::MNT_ID.bits();
    if x.stx_mask & mnt != 0 && y.stx_mask & mnt != 0 {
        return Ok(x.stx_mnt_id == y.stx_mnt_id);
    }
    Ok((x.stx_dev_major, x.stx_dev_minor) == (y.stx_dev_major, y.stx_dev_minor))
}

/// The name of the bookkeeping directory beside the store `name`.
pub fn sibling_name(store_name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut n = std::ffi::OsString::from(".imagefs-");
    n.push(store_name);
    n
}

impl Journal {
    /// Where the bookkeeping of the store at `store` lives (nothing is created): beside the
    /// store, or inside it when the store's root is a mount point.
    pub fn new(store: &Path) -> Journal {
        let root = sys::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
        let old = root.join(PRIVATE);
        let sibling = match (root.parent(), root.file_name()) {
            // Found by the fault tests: a failed statx (EIO, say) used to put the
            // bookkeeping inside the store, where hypeman sees it, for a store whose root is
            // no mount point. When it cannot be told, beside the store: were the root a mount
            // point after all, a rename into the trash gets EXDEV, which
            // [`Journal::trash_dir`] handles.
            (Some(parent), Some(name)) if same_mount(&root, parent).unwrap_or(true) => {
                Some(parent.join(sibling_name(name)))
            }
            _ => None,
        };
        match sibling {
            Some(dir) => Journal {
                dir,
                in_store: false,
                old,
            },
            None => Journal {
                dir: old.clone(),
                in_store: true,
                old,
            },
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    pub fn mounted_path(&self) -> PathBuf {
        self.dir.join("mounted")
    }

    fn intents(&self) -> PathBuf {
        self.dir.join("intents")
    }

    /// Spare GC records for a full disk (see [`SLOTS`]); one in use is an intent.
    fn spare(&self) -> PathBuf {
        self.dir.join("spare")
    }

    pub fn trash(&self) -> PathBuf {
        self.dir.join("trash")
    }

    /// `import`'s work directories (on the store's filesystem, out of hypeman's sight).
    pub fn import_dir(&self) -> PathBuf {
        self.dir.join("import")
    }

    /// Creates the bookkeeping directories. A new directory beside the store gets the
    /// store's owner and mode bits when root creates it, so that whoever may change the
    /// store may keep its bookkeeping.
    pub fn create_dirs(&self) -> io::Result<()> {
        if !self.in_store && !sys::exists(&self.dir) {
            match sys::create_dir(&self.dir) {
                Ok(()) => {
                    if let Some(store) = self.old.parent()
                        && let Ok(m) = sys::metadata(store)
                    {
                        use std::os::unix::fs::{MetadataExt, PermissionsExt};
                        let _ = sys::chown(&self.dir, Some(m.uid()), Some(m.gid()));
                        let _ = sys::set_permissions(
                            &self.dir,
                            std::fs::Permissions::from_mode(m.mode() & 0o7777),
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "cannot create imagefs's bookkeeping directory {} beside the store (where hypeman never looks): {e}",
                            self.dir.display()
                        ),
                    ));
                }
            }
        }
        sys::create_dir_all(self.intents())?;
        sys::create_dir_all(self.trash())?;
        self.make_slots();
        Ok(())
    }

    /// Makes sure [`SLOTS`] spare GC records exist (best effort: on a full disk there is no room
    /// to make one, and the ones made before serve). Each is a file of one written block, so
    /// that recording an intent in it later overwrites allocated bytes and needs no new block.
    fn make_slots(&self) {
        if let Err(e) = sys::create_dir_all(self.spare()) {
            log::debug!("{}: {e}", self.spare().display());
            return;
        }
        for i in 0..SLOTS {
            let path = self.spare().join(format!("{i}{SLOT_SUFFIX}"));
            if sys::exists(&path) {
                continue;
            }
            if let Err(e) = fsutil::write_atomic(&path, &[0u8; SLOT_BYTES]) {
                log::debug!("{}: no spare GC record made: {e}", path.display());
                return;
            }
        }
    }

    /// Records a GC record in a free spare slot (see [`SLOTS`]): for when the disk is full.
    fn record_in_slot(&self, stem: &str, target: &str) -> io::Result<PathBuf> {
        let text = format!("{SLOT_MAGIC}{stem}\n{target}\n");
        if text.len() > SLOT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "GC record too long for a spare slot",
            ));
        }
        for i in 0..SLOTS {
            let path = self.spare().join(format!("{i}{SLOT_SUFFIX}"));
            let Ok(f) = sys::open(&path, File::options().read(true).write(true)) else {
                continue;
            };
            let mut first = [0u8; 1];
            if sys::fstat(&f).map(|m| m.len()).unwrap_or(0) < SLOT_BYTES as u64
                || sys::read_at(&f, &mut first, 0).ok() != Some(1)
                || first[0] != 0
            {
                continue;
            }
            // The first byte last: a record is never seen half-written (after kill -9 the page
            // cache holds both writes in order).
            let bytes = text.as_bytes();
            sys::write_all_at(&f, bytes.get(1..).unwrap_or_default(), 1)?;
            sys::write_all_at(&f, bytes.get(..1).unwrap_or_default(), 0)?;
            return Ok(path);
        }
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no space for a GC intent, and no free spare slot",
        ))
    }

    /// Once per process, where the bookkeeping has to stay inside the store: says so.
    pub fn warn_if_in_store(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        if self.in_store {
            ONCE.call_once(|| {
                log::warn!(
                    "{}: the store's root is a mount point, so imagefs keeps its bookkeeping inside the store ({}) for renames into its trash to stay atomic; hypeman's listing may show collected images that are still in use, or an interrupted collection, until they are gone",
                    self.old.parent().unwrap_or(&self.old).display(),
                    self.dir.display()
                );
            });
        }
    }

    /// Moves the bookkeeping an older imagefs kept in `STORE/.imagefs/` beside the store.
    /// The caller holds this journal's lock. Takes the old lock as well (an older writer
    /// finishes its change first) and refuses while an older mount holds the old marker.
    /// Each entry moves with one rename; after a crash the next call moves the rest.
    /// Returns how many entries moved.
    pub fn adopt_old(&self) -> io::Result<usize> {
        if self.in_store {
            return Ok(0);
        }
        match sys::symlink_metadata(&self.old) {
            Ok(m) if m.is_dir() => {}
            _ => return Ok(0),
        }
        if let Ok(f) = super::safe_open::open_regular(&self.old.join("mounted"))
            && sys::flock(&f, sys::try_lock).is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{}: the store is mounted by an older imagefs; unmount it first",
                    self.old.display()
                ),
            ));
        }
        let old_lock = sys::open(
            self.old.join("lock"),
            File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
        )?;
        loop {
            match sys::flock(&old_lock, File::lock) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        }
        let mut moved = 0;
        for sub in ["intents", "trash", "import"] {
            let from = self.old.join(sub);
            let Ok(rd) = sys::read_dir(&from) else {
                continue;
            };
            let to = self.dir.join(sub);
            sys::create_dir_all(&to)?;
            for e in rd.flatten() {
                fsutil::rename(
                    &e.path(),
                    &to.join(e.file_name()),
                    fsutil::RenameMode::NoReplace,
                )?;
                moved += 1;
            }
            sys::remove_dir(&from)?;
        }
        let _ = sys::remove_file(self.old.join("mounted"));
        let _ = sys::remove_file(self.old.join("lock"));
        drop(old_lock);
        if let Err(e) = sys::remove_dir(&self.old) {
            log::warn!(
                "{}: left in place ({e}): it holds something imagefs did not put there",
                self.old.display()
            );
        } else {
            log::info!(
                "moved imagefs's bookkeeping from {} to {} ({moved} entries), out of hypeman's sight",
                self.old.display(),
                self.dir.display()
            );
        }
        Ok(moved)
    }

    /// Records a GC intent for `key`, the directory whose identity is `id` (one symlink);
    /// returns its path, to pass to [`Journal::done`].
    pub fn record_gc(&self, key: &DirKey, id: &DirId) -> io::Result<PathBuf> {
        let name = format!("{}.{}.gc", fsutil::unique_name("gc"), key.digest().hex());
        let target = match key {
            DirKey::Content(_) => id.encode(),
            DirKey::Legacy(repo, _) => format!("{}:{repo}", id.encode()),
        };
        let path = self.intents().join(&name);
        match sys::symlink(&target, &path) {
            Ok(()) => Ok(path),
            // A full disk (or quota): a symlink whose target does not fit in the inode, or a
            // directory that needs a new block. Freeing space must still work: a spare slot.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                let stem = name.strip_suffix(".gc").unwrap_or(&name);
                self.record_in_slot(stem, &target).map_err(|slot| {
                    io::Error::new(e.kind(), format!("{e}; and no spare slot: {slot}"))
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Records an intent; returns its path, to pass to [`Journal::done`].
    pub fn record(&self, intent: &Intent) -> io::Result<PathBuf> {
        match intent {
            Intent::Gc { dir, id } => {
                let key = DirKey::from_rel_path(dir).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("not a digest directory: {dir}"),
                    )
                })?;
                let id = id.as_ref().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a GC intent needs the directory's identity",
                    )
                })?;
                self.record_gc(&key, id)
            }
            other => {
                let id = fsutil::unique_name("intent");
                let path = self.intents().join(format!("{id}.json"));
                let bytes = serde_json::to_vec(other).map_err(io::Error::other)?;
                fsutil::write_atomic(&path, &bytes)?;
                Ok(path)
            }
        }
    }

    pub fn done(&self, record: &Path) -> io::Result<()> {
        if record
            .as_os_str()
            .as_encoded_bytes()
            .ends_with(SLOT_SUFFIX.as_bytes())
        {
            // A spare slot is freed (its first byte zeroed), never removed: it stays allocated.
            return match sys::open(record, File::options().write(true)) {
                Ok(f) => sys::write_all_at(&f, &[0], 0),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        match sys::remove_file(record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable intent, oldest first, with its record's path. Unreadable records
    /// are returned as `None` so the caller can log and drop them. A record that cannot be
    /// read now (an I/O error, not a bad record) fails the whole call: dropped, it would
    /// leave its change half done for good (found by the fault tests: an EIO of one
    /// `readlink` dropped a GC intent, and its directory was never collected).
    pub fn pending(&self) -> io::Result<Vec<(PathBuf, Option<Intent>)>> {
        let mut out = Vec::new();
        let mut entries = Vec::new();
        for dir in [self.intents(), self.spare()] {
            match sys::read_dir(dir) {
                Ok(rd) => entries.extend(rd.flatten()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let intent = if name.starts_with(TMP_PREFIX) {
                None
            } else if name.ends_with(SLOT_SUFFIX) {
                match read_slot(&path) {
                    Slot::Free => continue,
                    Slot::Record(stem, target) => parse_gc(&stem, &target),
                    Slot::Unreadable(e) => bad_record(e)?,
                }
            } else if let Some(stem) = name.strip_suffix(".gc") {
                match sys::read_link(&path) {
                    Ok(t) => t.to_str().and_then(|t| parse_gc(stem, t)),
                    Err(e) => bad_record(e)?,
                }
            } else {
                // Intents are a few hundred bytes; anything else is not one (never blocks).
                match super::safe_open::read_regular(&path, 1 << 16) {
                    Ok(b) => serde_json::from_slice(&b).ok(),
                    Err(e) => bad_record(e)?,
                }
            };
            out.push((path, intent));
        }
        // Names start with a hex timestamp of fixed width in practice; sort for a stable order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Moves a digest directory into the trash (one atomic rename) and returns where it went:
    /// the bookkeeping's `trash/`; or, where the directory is on another filesystem than that
    /// (`content/` or a legacy repository a mount of its own: `EXDEV`), the side trash
    /// ([`SIDE_TRASH`]) of the directory that holds it, on its own filesystem. A rename never
    /// crosses filesystems, so it stays atomic; the next mount's scan finds either trash.
    pub fn move_to_trash(&self, store: &Path, key: &DirKey) -> io::Result<PathBuf> {
        let from = store.join(key.rel_path());
        let name = fsutil::unique_name(&key.digest().hex()[..12]);
        let dest = self.trash().join(&name);
        match sys::rename(&from, &dest) {
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            r => return r.map(|()| dest),
        }
        let side = from.parent().unwrap_or(store).join(SIDE_TRASH);
        match sys::create_dir(&side) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let dest = side.join(name);
        sys::rename(&from, &dest)?;
        Ok(dest)
    }

    /// Where to build a directory that is then renamed into `dir` (a legacy copy): the
    /// bookkeeping's `trash/`, or the side trash of `dir` where `dir` is on another filesystem
    /// (the rename would fail with EXDEV). Either is emptied at mount, so a crash leaves nothing.
    pub fn staging_for(&self, dir: &Path) -> io::Result<PathBuf> {
        if same_mount(&self.trash(), dir)? {
            return Ok(self.trash());
        }
        let side = dir.join(SIDE_TRASH);
        match sys::create_dir(&side) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(side),
        }
    }

    /// Deletes everything in the bookkeeping's trash and in the side trashes `side` (found by
    /// the scan; each goes too once empty). An entry that cannot be deleted (a mount point
    /// inside it, an immutable file) is left for the next try and reported, never an error:
    /// it must never stop a mount.
    pub fn empty_trash(&self, side: &[PathBuf]) -> Emptied {
        let mut out = Emptied::default();
        let empty = |dir: &Path, out: &mut Emptied| match sys::read_dir(dir) {
            Ok(rd) => {
                for entry in rd {
                    match entry {
                        Ok(e) => match fsutil::remove_tree(&e.path()) {
                            Ok(()) => out.removed += 1,
                            Err(err) => out.left.push(format!("{}: {err}", e.path().display())),
                        },
                        Err(err) => out.left.push(format!("{}: {err}", dir.display())),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => out.left.push(format!("{}: {e}", dir.display())),
        };
        empty(&self.trash(), &mut out);
        for dir in side {
            empty(dir, &mut out);
            let _ = sys::remove_dir(dir);
        }
        out
    }
}

/// What [`Journal::empty_trash`] did: how many entries went, and each left ("path: reason").
#[derive(Debug, Default)]
pub struct Emptied {
    pub removed: usize,
    pub left: Vec<String>,
}

/// How many spare GC records the bookkeeping keeps for a full disk, their size (one block of
/// any filesystem's, bigger than any record), their names' suffix, and the first bytes of a
/// slot in use (a free one starts with a zero byte).
const SLOTS: usize = 8;
const SLOT_BYTES: usize = 4096;
const SLOT_SUFFIX: &str = ".slot";
const SLOT_MAGIC: &str = "gc ";

enum Slot {
    Free,
    /// The stem and target of the GC record it holds, as a symlink record would have them.
    Record(String, String),
    Unreadable(io::Error),
}

/// A record that could not be read: `None` (a bad record, dropped by the caller) when it
/// is not what it should be (gone, not a symlink, not a regular file, too large); the error
/// when reading failed.
fn bad_record<T>(e: io::Error) -> io::Result<Option<T>> {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            Ok(None)
        }
        _ => Err(e),
    }
}

fn read_slot(path: &Path) -> Slot {
    let mut buf = Vec::with_capacity(SLOT_BYTES);
    let read = sys::open(path, File::options().read(true))
        .and_then(|f| sys::read_to_end(&f, SLOT_BYTES as u64, &mut buf));
    if let Err(e) = read {
        return Slot::Unreadable(e);
    }
    if buf.first().is_none_or(|b| *b == 0) {
        return Slot::Free;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text
        .strip_prefix(SLOT_MAGIC)
        .unwrap_or_default()
        .split('\n');
    match (lines.next(), lines.next()) {
        (Some(stem), Some(target)) if !stem.is_empty() && !target.is_empty() => {
            Slot::Record(stem.to_string(), target.to_string())
        }
        _ => Slot::Unreadable(io::ErrorKind::InvalidData.into()),
    }
}

/// A GC record `<stem>.gc -> <target>`: this version's `<id>.<hex>` -> `<DirId>[:<repo>]`, or an
/// older version's `<id>` -> `<store-relative dir>` (no identity).
fn parse_gc(stem: &str, target: &str) -> Option<Intent> {
    if let Some((_, hex)) = stem.rsplit_once('.')
        && let Some(d) = Digest::parse_hex(hex)
    {
        let (id, repo) = match target.split_once(':') {
            Some((id, repo)) => (id, Some(repo)),
            None => (target, None),
        };
        let id = DirId::decode(id)?;
        let dir = match repo {
            Some(repo) => format!("{repo}/{}", d.hex()),
            None => format!("{CONTENT}/{}", d.hex()),
        };
        DirKey::from_rel_path(&dir)?;
        return Some(Intent::Gc { dir, id: Some(id) });
    }
    DirKey::from_rel_path(target)?;
    Some(Intent::Gc {
        dir: target.to_string(),
        id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = d.path().join("store");
        std::fs::create_dir(&store).expect("store");
        let j = Journal::new(&store);
        assert!(
            !j.in_store && j.dir == d.path().join(".imagefs-store"),
            "{j:?}"
        );
        j.create_dirs().expect("dirs");
        let hex = "ab".repeat(32);
        let key = DirKey::Content(Digest::parse_hex(&hex).expect("hex"));
        let legacy = DirKey::Legacy(
            "localhost:5000/a/b".into(),
            Digest::parse_hex(&hex).expect("hex"),
        );
        let id = DirId {
            ino: u64::MAX,
            birth: true,
            nanos: u64::MAX,
        };
        let gc = Intent::Gc {
            dir: key.rel_path().to_string_lossy().into_owned(),
            id: Some(id),
        };
        let lgc = Intent::Gc {
            dir: legacy.rel_path().to_string_lossy().into_owned(),
            id: Some(DirId {
                ino: 7,
                birth: false,
                nanos: 1,
            }),
        };
        let mv = Intent::Move {
            from: "repositories/a/x".into(),
            to: "repositories/b/y".into(),
        };
        let p1 = j.record(&gc).expect("gc");
        let p2 = j.record(&mv).expect("mv");
        let p3 = j.record(&lgc).expect("legacy gc");
        // The longest content-layout record still fits in an ext4 inode (fast symlink).
        let t = std::fs::read_link(&p1).expect("readlink");
        assert!(t.as_os_str().len() <= 60, "{t:?}");
        let pending = || -> Vec<_> {
            j.pending()
                .expect("pending")
                .into_iter()
                .map(|x| x.1)
                .collect()
        };
        let got = pending();
        assert!(
            got.contains(&Some(gc)) && got.contains(&Some(mv)) && got.contains(&Some(lgc)),
            "{got:?}"
        );
        // An older version's record is read without an identity.
        let old = format!("{CONTENT}/{hex}");
        std::os::unix::fs::symlink(&old, j.intents().join("0001-old.gc")).expect("old");
        let got = pending();
        assert!(
            got.contains(&Some(Intent::Gc { dir: old, id: None })),
            "{got:?}"
        );
        std::fs::remove_file(j.intents().join("0001-old.gc")).expect("rm");
        j.done(&p1).expect("done");
        j.done(&p2).expect("done");
        j.done(&p3).expect("done");
        j.done(&p2).expect("done twice is fine");
        assert!(j.pending().expect("pending").is_empty());
    }

    #[test]
    fn a_full_disk_records_gc_intents_in_spare_slots() {
        // Issue 10, bug 3: recording in a slot overwrites a block allocated at open.
        let d = tempfile::tempdir().expect("tempdir");
        let store = d.path().join("store");
        std::fs::create_dir(&store).expect("store");
        let j = Journal::new(&store);
        j.create_dirs().expect("dirs");
        let slot = j.spare().join(format!("0{SLOT_SUFFIX}"));
        let len = |p: &Path| std::fs::metadata(p).expect("slot").len();
        assert_eq!(len(&slot), SLOT_BYTES as u64);
        assert!(
            j.pending().expect("pending").is_empty(),
            "a free slot is no intent"
        );
        let hex = "cd".repeat(32);
        let repo = "registry.example.com/a-team/with-a-long-repository-name";
        let id = DirId {
            ino: 77,
            birth: true,
            nanos: 12345,
        };
        let key = DirKey::Legacy(repo.into(), Digest::parse_hex(&hex).expect("hex"));
        let target = format!("{}:{repo}", id.encode());
        let rec = j
            .record_in_slot(&format!("0001.{hex}"), &target)
            .expect("slot");
        assert_eq!(rec, slot);
        let want = Intent::Gc {
            dir: key.rel_path().to_string_lossy().into_owned(),
            id: Some(id),
        };
        let got: Vec<_> = j.pending().expect("pending").into_iter().collect();
        assert_eq!(got, vec![(slot.clone(), Some(want))]);
        // The next record goes to the next free slot; done frees a slot and keeps its block.
        let rec2 = j
            .record_in_slot(&format!("0002.{hex}"), &target)
            .expect("slot 2");
        assert_ne!(rec2, rec);
        j.done(&rec).expect("done");
        j.done(&rec2).expect("done");
        assert_eq!(len(&slot), SLOT_BYTES as u64);
        assert!(j.pending().expect("pending").is_empty());
        // A torn record (no target line) is unreadable: dropped by the replay, never parsed.
        std::fs::write(&slot, b"gc 0003.zz").expect("torn");
        assert_eq!(j.pending().expect("pending"), vec![(slot, None)]);
    }

    #[test]
    fn a_directory_re_created_under_its_path_has_another_identity() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("x");
        std::fs::create_dir(&p).expect("mkdir");
        let a = DirId::of(&p).expect("id");
        assert_eq!(DirId::of(&p).expect("id"), a);
        std::fs::remove_dir(&p).expect("rmdir");
        std::fs::create_dir(&p).expect("mkdir again");
        assert_ne!(DirId::of(&p).expect("id"), a);
    }

    #[test]
    fn old_bookkeeping_inside_the_store_is_moved_beside_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let store = d.path().join("store");
        let old = store.join(PRIVATE);
        std::fs::create_dir_all(old.join("intents")).expect("old intents");
        std::fs::create_dir_all(old.join("trash/x-1/sub")).expect("old trash");
        std::fs::write(old.join("lock"), b"").expect("old lock");
        std::os::unix::fs::symlink("content/zz", old.join("intents/0001.gc")).expect("intent");
        let j = Journal::new(&store);
        j.create_dirs().expect("dirs");
        assert_eq!(j.adopt_old().expect("adopt"), 2);
        assert!(!old.exists(), "STORE/.imagefs left behind");
        assert!(j.trash().join("x-1/sub").is_dir());
        assert!(j.intents().join("0001.gc").symlink_metadata().is_ok());
        assert_eq!(j.adopt_old().expect("again"), 0);
        // An older mount that still holds the old marker: refused, nothing moved.
        std::fs::create_dir_all(old.join("trash/y")).expect("old trash");
        let marker = File::create(old.join("mounted")).expect("marker");
        marker.lock_shared().expect("shared");
        assert!(j.adopt_old().is_err());
        assert!(old.join("trash/y").is_dir());
    }
}
