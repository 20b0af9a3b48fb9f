//! Garbage collection of digest directories: the one implementation of trash-then-delete,
//! used by the mount's eager GC ([`Store::remove_tag`], [`Store::rename_tag`]), by the
//! release of a collected image kept for its users ([`Store::release_trashed`]), by the
//! replay of an interrupted collection ([`super::recover::replay`]) and by other writers
//! that collect unreferenced directories (`imagefs gc`, through [`collect`]).
//!
//! A collection takes five steps, each re-runnable after a crash:
//!
//! 1. the GC intent `intents/<id>.gc -> <dir>` is recorded ([`record_intent`]);
//! 2. the tag holding the last reference changes (the mount only; `imagefs gc` collects
//!    directories that no tag names);
//! 3. the directory is renamed into `.imagefs/trash/` (one atomic rename, [`trash`]);
//! 4. it is deleted ([`delete`]) — unless the mount still serves it, when it stays in the
//!    trash until its last user goes ([`super::InUse`]);
//! 5. the intent is removed.
//!
//! A crash before 3 leaves the directory in the store and the intent: the next mount (or
//! `imagefs fsck --repair`) collects it if no tag names it, else drops the intent. After 3,
//! the trash is garbage by definition and is emptied at mount.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use log::{info, warn};

use super::Store;
use super::error::{IoContext, Result};
use super::fsutil;
use super::index::Index;
use super::journal::{Intent, Journal};
use super::layout::DirKey;
use super::names::Digest;

/// What one collection by the mount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub digest: Digest,
    /// The directory that left the store.
    pub dir: DirKey,
    /// Where it waits in the trash while the mount still serves it (see [`super::InUse`]),
    /// until [`Store::release_trashed`].
    pub kept_in_use: Option<PathBuf>,
    /// Disk space freed now: 0 while kept, or when the deletion failed (the next mount
    /// empties the trash).
    pub bytes: u64,
    /// No other directory of the digest is left in the store.
    pub digest_gone: bool,
}

/// Why [`collect`] stopped.
#[derive(Debug)]
pub enum GcError {
    /// Step 1 failed: nothing changed.
    Intent { journal: PathBuf, error: io::Error },
    /// Step 3 failed: the directory stays, the intent was dropped.
    Trash {
        dir: PathBuf,
        trash: PathBuf,
        error: io::Error,
    },
    /// Step 4 failed: the intent stays, the next mount empties the trash.
    Delete { trashed: PathBuf, error: io::Error },
    /// Step 5 failed: the directory is gone, its intent record is left.
    Done { record: PathBuf, error: io::Error },
}

impl std::fmt::Display for GcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcError::Intent { journal, error } => write!(
                f,
                "{}: cannot record the GC intent: {error}",
                journal.display()
            ),
            GcError::Trash { dir, trash, error } => write!(
                f,
                "{}: cannot move into {}: {error}",
                dir.display(),
                trash.display()
            ),
            GcError::Delete { trashed, error } => {
                write!(f, "delete {}: {error}", trashed.display())
            }
            GcError::Done { record, error } => write!(f, "{}: {error}", record.display()),
        }
    }
}

/// Step 1: records the intent to collect `key`; returns the record, to remove in step 5.
pub fn record_intent(journal: &Journal, key: &DirKey) -> io::Result<PathBuf> {
    let dir = key.rel_path().to_string_lossy().into_owned();
    journal.record(&Intent::Gc { dir })
}

/// Step 3: moves `key`'s directory into the trash; returns where it went.
pub fn trash(journal: &Journal, root: &Path, key: &DirKey) -> io::Result<PathBuf> {
    journal.move_to_trash(root, key)
}

/// Step 4: deletes a trashed directory; returns the disk space it used.
pub fn delete(trashed: &Path) -> io::Result<u64> {
    let bytes = fsutil::tree_bytes(trashed);
    fsutil::remove_tree(trashed)?;
    Ok(bytes)
}

/// Collects `key`, a directory no tag names, for a writer other than the mount
/// (`imagefs gc`): every step but the tag change. The caller holds the store lock and has
/// checked the directory is collectable. Returns the bytes freed.
pub fn collect(root: &Path, key: &DirKey) -> std::result::Result<u64, GcError> {
    let journal = Journal::new(root);
    let rec = record_intent(&journal, key).map_err(|error| GcError::Intent {
        journal: journal.dir.clone(),
        error,
    })?;
    let trashed = match trash(&journal, root, key) {
        Ok(p) => p,
        Err(error) => {
            let _ = journal.done(&rec);
            return Err(GcError::Trash {
                dir: root.join(key.rel_path()),
                trash: journal.trash(),
                error,
            });
        }
    };
    // As the mount does: if the deletion fails, the intent stays and the trash entry is
    // deleted by the next mount (or `imagefs fsck --repair` when no mount is live).
    let bytes = delete(&trashed).map_err(|error| GcError::Delete {
        trashed: trashed.clone(),
        error,
    })?;
    journal.done(&rec).map_err(|error| GcError::Done {
        record: rec.clone(),
        error,
    })?;
    Ok(bytes)
}

/// The replay of interrupted collections, after every other intent was replayed and the
/// store scanned into `ix`: step 3 for each directory no tag names (its intent dropped
/// otherwise). Each step taken is told to `did`. Returns what went into the trash, for the
/// caller to delete.
pub(super) fn replay(
    root: &Path,
    journal: &Journal,
    ix: &mut Index,
    intents: Vec<(PathBuf, String)>,
    did: &mut impl FnMut(String),
) -> Result<Vec<PathBuf>> {
    let mut trashed_now = Vec::new();
    for (record, dir) in intents {
        match DirKey::from_rel_path(&dir) {
            Some(key) if ix.has_dir(&key) && ix.refs(&key) == Some(0) => {
                let trashed = trash(journal, root, &key).ctx(|| format!("collect {dir}"))?;
                ix.remove_dir(&key);
                did(format!(
                    "finished interrupted collection of {dir} ({})",
                    trashed.display()
                ));
                trashed_now.push(trashed);
            }
            Some(key) if ix.has_dir(&key) => {
                did(format!(
                    "rolled back interrupted collection of {dir}: a tag still names it"
                ));
            }
            _ => {}
        }
        journal.done(&record).ctx(|| record.display().to_string())?;
    }
    Ok(trashed_now)
}

impl Store {
    /// Step 1, before a change that may drop the last reference to `key`: if it is the last
    /// one and the directory is collectable, records the GC intent and returns it.
    pub(super) fn gc_intent_if_last(&self, key: &DirKey) -> Result<Option<PathBuf>> {
        if self.index().refs(key).unwrap_or(0) > 1 {
            return Ok(None);
        }
        match self.status(key) {
            Ok(s) if s.collectable() => {}
            Ok(s) => {
                info!(
                    "{}: last tag removed; kept because its status is {}",
                    key.rel_path().display(),
                    s.as_str()
                );
                return Ok(None);
            }
            Err(reason) => {
                warn!(
                    "{}: last tag removed; kept because its status is unknown: {reason}",
                    key.rel_path().display()
                );
                return Ok(None);
            }
        }
        record_intent(&self.journal, key)
            .map(Some)
            .ctx(|| "journal".to_string())
    }

    /// Step 5, or the intent's removal when the change failed.
    pub(super) fn drop_intent(&self, intent: Option<PathBuf>) {
        if let Some(rec) = intent
            && let Err(e) = self.journal.done(&rec)
        {
            warn!("{}: {e}", rec.display());
        }
    }

    /// Steps 3 to 5, after the tag change: moves the unreferenced directory into the trash
    /// and deletes it. A failure here is logged, not returned: the tag change already
    /// happened, and the intent stays for the next mount to finish.
    pub(super) fn finish_gc(&self, intent: Option<PathBuf>, key: &DirKey) -> Option<Collected> {
        let rec = intent?;
        if self.index().refs(key).unwrap_or(0) > 0 {
            self.drop_intent(Some(rec));
            return None;
        }
        let trashed = match trash(&self.journal, &self.root, key) {
            Ok(p) => p,
            Err(e) => {
                log::error!(
                    "collect {}: {e}; will retry at next mount",
                    key.rel_path().display()
                );
                return None;
            }
        };
        self.index.write().remove_dir(key);
        self.stats.collections.fetch_add(1, Relaxed);
        let digest = key.digest();
        let digest_gone = self.index().dirs_of(&digest).next().is_none();
        let mut done = Collected {
            digest,
            dir: key.clone(),
            kept_in_use: None,
            bytes: 0,
            digest_gone,
        };
        if digest_gone
            && self
                .in_use
                .get()
                .is_some_and(|u| u.retain(&digest, &trashed))
        {
            self.drop_intent(Some(rec));
            info!(
                "collected {} from the store; still in use through the mount, kept in {} until its last user goes",
                key.rel_path().display(),
                trashed.display()
            );
            done.kept_in_use = Some(trashed);
            return Some(done);
        }
        match delete(&trashed) {
            Ok(bytes) => done.bytes = bytes,
            Err(e) => {
                log::error!(
                    "delete {}: {e}; will retry at next mount",
                    trashed.display()
                );
                return Some(done);
            }
        }
        self.stats.bytes_reclaimed.fetch_add(done.bytes, Relaxed);
        self.drop_intent(Some(rec));
        info!(
            "collected {} (last tag removed, {} bytes freed)",
            key.rel_path().display(),
            done.bytes
        );
        Some(done)
    }

    /// Step 4 for a collected directory that was kept for its users (see
    /// [`super::InUse`]), once the last one went.
    pub fn release_trashed(&self, digest: &Digest, trashed: &Path) {
        match delete(trashed) {
            Ok(bytes) => {
                self.stats.bytes_reclaimed.fetch_add(bytes, Relaxed);
                info!(
                    "released sha256:{digest} ({}): its last user is gone, {bytes} bytes freed",
                    trashed.display()
                )
            }
            Err(e) => log::error!(
                "delete {}: {e}; the next mount will empty the trash",
                trashed.display()
            ),
        }
    }
}
