//! Garbage collection of digest directories: the one implementation of trash-then-delete,
//! used by the mount's eager GC ([`Store::remove_tag`], [`Store::rename_tag`]), by the
//! release of a collected image kept for its users ([`Store::release_trashed`]), by the
//! replay of an interrupted collection ([`super::recover::replay`]) and by other writers
//! that collect unreferenced directories (`imagefs gc`, through [`collect`]).
//!
//! A collection takes five steps, each re-runnable after a crash:
//!
//! 1. the GC intent is recorded ([`record_intent`]): it names the directory by digest,
//!    layout and identity ([`DirId`]), not only by path;
//! 2. the tag holding the last reference changes (the mount only; `imagefs gc` collects
//!    directories that no tag names);
//! 3. the directory is renamed into the bookkeeping's `trash/` (one atomic rename,
//!    [`trash`]); if it is already gone (hypeman's own GC removed it meanwhile), the
//!    collection is done: the intent goes, nothing else happens;
//! 4. it is deleted ([`delete`]) — unless the mount still serves it, when it stays in the
//!    trash until its last user goes ([`super::InUse`]);
//! 5. the intent is removed.
//!
//! The mount takes steps 1 to 3 and removes the intent under the store lock, and deletes
//! (step 4) after releasing it ([`super::collection`]), still before the change returns:
//! once the directory is in the trash the intent has no work left (the trash is garbage by
//! definition, emptied at mount), and no other change, lookup or tag of the same digest
//! needs the deletion (the index no longer has the directory, and the trash entry's name is
//! this collection's alone). So no change waits for another image's deletion, however big.
//! `imagefs gc` ([`collect`]) keeps the order above, under its lock.
//!
//! A directory another writer took a tag away from moments ago is not collected at once
//! ([`LastRef::Defer`]): legacy hypeman retags by removing the old link and then creating
//! the new one, and a last reference seen in that gap is not the last. The tag change goes
//! through; the collection is retried once the store is quiet, through the same steps, and
//! dropped if a tag came back (`deferred.rs`).
//!
//! A crash before 3 leaves the directory in the store and the intent: the next mount (or
//! `imagefs fsck --repair`) collects it only if it is still the very directory the intent
//! was written for (same identity: a directory hypeman removed and pulled again under the
//! same path is another one), no tag names it, its status is `ready` or `failed`, and
//! hypeman does not keep it as a digest-only image ([`judge`]); otherwise the intent is
//! dropped and the directory kept. A leftover intent never removes anything else. After 3,
//! the trash is garbage by definition and is emptied at mount. (A live collection renames
//! microseconds after recording the intent and does not compare identities; a replay, any
//! time later, does. Between the replay's comparison and its rename another writer could
//! still swap the directory: a window of one syscall, against hypeman's `RemoveAll` and a
//! whole new pull.)

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use log::{info, warn};

use super::Store;
use super::error::{IoContext, Result};
use super::fsutil;
use super::index::Index;
use super::journal::{DirId, Journal};
use super::layout::DirKey;
use super::metadata;
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
    /// Disk space freed now: 0 while kept, until deleted, or when the deletion failed (the
    /// next mount empties the trash).
    pub bytes: u64,
    /// Where it waits in the trash for its deletion (step 4), which runs after the store
    /// lock is released ([`super::collection::Collection`]); `None` once deleted (or kept).
    pub to_delete: Option<PathBuf>,
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

/// Step 1: records the intent to collect `key`, naming the directory's identity; returns
/// the record, to remove in step 5. Two syscalls: one `statx`, one `symlink`.
pub fn record_intent(journal: &Journal, root: &Path, key: &DirKey) -> io::Result<PathBuf> {
    let id = DirId::of(&root.join(key.rel_path()))?;
    journal.record_gc(key, &id)
}

/// Why a GC intent is not replayed: its directory is kept, the intent dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The record does not name a digest directory.
    Malformed,
    /// No such directory: collected before a crash, or removed by another writer.
    Gone,
    /// A tag names it (a crash before the tag change): the collection is rolled back.
    Tagged,
    /// A record of an older imagefs, which does not name the directory's identity.
    NoIdentity,
    /// Another directory now has the path (removed and re-created by another writer).
    Replaced,
    /// Its status is not `ready` or `failed` (or unknown: the reason).
    NotFinished(String),
    /// hypeman keeps it as a digest-only image (its metadata names a digest reference).
    DigestOnly,
    /// It could not be examined now (an I/O error): the intent stays, for the next try.
    /// (Found by the fault tests: an EIO used to drop the intent, leaving the directory
    /// untagged and never collected.)
    Unreadable(String),
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::Malformed => write!(f, "the record names no digest directory"),
            Stale::Gone => write!(
                f,
                "the directory is already gone (collected before a crash, or removed by another writer)"
            ),
            Stale::Tagged => write!(f, "a tag still names it"),
            Stale::NoIdentity => write!(
                f,
                "the record (of an older imagefs) does not name the directory's identity, so it is not replayed; `imagefs gc` removes the directory if no tag names it"
            ),
            Stale::Replaced => write!(
                f,
                "it is not the directory the intent was written for (another writer removed it and made a new one under the same path)"
            ),
            Stale::NotFinished(why) => write!(f, "it is not finished ({why})"),
            Stale::DigestOnly => write!(f, "hypeman keeps it as a digest-only image"),
            Stale::Unreadable(why) => write!(f, "it cannot be examined now ({why})"),
        }
    }
}

/// Whether the GC intent for `dir` (identity `id`) may still collect it, given the index
/// `ix` of the store as it is now: the directory it names, if so.
pub fn judge(
    root: &Path,
    ix: &Index,
    dir: &str,
    id: Option<&DirId>,
) -> std::result::Result<DirKey, Stale> {
    let key = DirKey::from_rel_path(dir).ok_or(Stale::Malformed)?;
    judge_key(root, ix, &key, id)?;
    Ok(key)
}

/// [`judge`] for a directory already named by its key (a deferred collection's).
pub(super) fn judge_key(
    root: &Path,
    ix: &Index,
    key: &DirKey,
    id: Option<&DirId>,
) -> std::result::Result<(), Stale> {
    if !ix.has_dir(key) {
        return Err(Stale::Gone);
    }
    if ix.refs(key).unwrap_or(0) > 0 {
        return Err(Stale::Tagged);
    }
    let id = id.ok_or(Stale::NoIdentity)?;
    let path = root.join(key.rel_path());
    match id.matches(&path) {
        Ok(true) => {}
        Ok(false) => return Err(Stale::Replaced),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Stale::Gone),
        Err(e) => return Err(Stale::Unreadable(format!("cannot stat it: {e}"))),
    }
    let md = metadata::Metadata::read_io(&path)
        .map_err(|e| Stale::Unreadable(format!("metadata.json: {e}")))?
        .map_err(Stale::NotFinished)?;
    match md.status() {
        Some(s) if s.collectable() => {}
        Some(s) => return Err(Stale::NotFinished(format!("status {}", s.as_str()))),
        None => return Err(Stale::NotFinished("missing or unknown status".into())),
    }
    if digest_only(&md) {
        return Err(Stale::DigestOnly);
    }
    Ok(())
}

/// Does hypeman keep this image without a tag? Its `name` is a digest reference
/// (`repo@sha256:...`), as for a pull by digest.
fn digest_only(md: &metadata::Metadata) -> bool {
    md.fields
        .get("name")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|n| n.contains('@'))
}

/// Step 3: moves `key`'s directory into the trash; returns where it went.
pub fn trash(journal: &Journal, root: &Path, key: &DirKey) -> io::Result<PathBuf> {
    journal.move_to_trash(root, key)
}

/// Step 4: deletes a trashed directory; returns the disk space it used, counted as it goes.
pub fn delete(trashed: &Path) -> io::Result<u64> {
    fsutil::remove_tree_freed(trashed)
}

/// Collects `key`, a directory no tag names, for a writer other than the mount
/// (`imagefs gc`): every step but the tag change. The caller holds the store lock and has
/// checked the directory is collectable. Returns the bytes freed.
pub fn collect(root: &Path, key: &DirKey) -> std::result::Result<u64, GcError> {
    let journal = Journal::new(root);
    let rec = record_intent(&journal, root, key).map_err(|error| GcError::Intent {
        journal: journal.dir.clone(),
        error,
    })?;
    let trashed = match trash(&journal, root, key) {
        Ok(p) => p,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let _ = journal.done(&rec);
            info!(
                "collect {}: already removed by another writer; nothing left to do",
                key.rel_path().display()
            );
            return Ok(0);
        }
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
/// store scanned into `ix`: step 3 for each directory [`judge`] lets go (its intent dropped
/// otherwise). Each step taken is told to `report` (`Ok`), and each that failed (`Err`: the
/// directory stays, its intent too, for the next mount to try again; never a reason not to
/// mount). Returns what went into the trash, for the caller to delete.
pub(super) fn replay(
    root: &Path,
    journal: &Journal,
    ix: &mut Index,
    intents: Vec<(PathBuf, String, Option<DirId>)>,
    report: &mut impl FnMut(std::result::Result<String, String>),
) -> Result<Vec<PathBuf>> {
    let mut trashed_now = Vec::new();
    for (record, dir, id) in intents {
        match judge(root, ix, &dir, id.as_ref()) {
            Ok(key) => match trash(journal, root, &key) {
                Ok(trashed) => {
                    ix.remove_dir(&key);
                    report(Ok(format!(
                        "finished interrupted collection of {dir} ({})",
                        trashed.display()
                    )));
                    trashed_now.push(trashed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => report(Ok(format!(
                    "dropped the GC intent of {dir}: {}",
                    Stale::Gone
                ))),
                Err(e) => {
                    report(Err(format!(
                        "collect {}: cannot move it into the trash: {e}; kept, with its intent, for the next mount to try again",
                        root.join(&dir).display()
                    )));
                    continue;
                }
            },
            Err(Stale::Tagged) => report(Ok(format!(
                "rolled back interrupted collection of {dir}: a tag still names it"
            ))),
            Err(Stale::Malformed) => {}
            Err(s @ Stale::Unreadable(_)) => {
                report(Err(format!(
                    "collect {}: {s}; kept, with its intent, for the next mount to try again",
                    root.join(&dir).display()
                )));
                continue;
            }
            Err(s) => report(Ok(format!(
                "dropped the GC intent of {dir}: {s}; the directory is kept"
            ))),
        }
        journal.done(&record).ctx(|| record.display().to_string())?;
    }
    Ok(trashed_now)
}

/// What becomes of a collectable directory whose last reference a change is about to drop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LastRef {
    /// Collected after the tag change: the GC intent is recorded (step 1).
    Collect(PathBuf),
    /// Not now: another writer took a tag away from it this long ago (within
    /// [`super::watch::QUIET`]): put on the deferred list after the tag change, with its
    /// identity, and retried once the store is quiet (`deferred.rs`).
    Defer(DirId, std::time::Duration),
}

impl Store {
    /// Step 1, before a change that may drop the last reference to `key`: if it is the last
    /// one and the directory is collectable, records the GC intent (or, if another writer
    /// changed its tags moments ago, decides to defer the collection).
    pub(super) fn gc_intent_if_last(&self, key: &DirKey) -> Result<Option<LastRef>> {
        if self.index().refs(key).unwrap_or(0) > 1 {
            return Ok(None);
        }
        let dir = self.root.join(key.rel_path());
        // A failed read is reported (nothing changed), not taken for an unknown status,
        // which would keep the directory untagged for good (found by the fault tests).
        let status = metadata::read_status_io(&dir).ctx(|| dir.display().to_string())?;
        match status {
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
        if let Some(ago) = self.untagged_by_other_writer(key) {
            let path = self.root.join(key.rel_path());
            return match DirId::of(&path) {
                Ok(id) => Ok(Some(LastRef::Defer(id, ago))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).ctx(|| path.display().to_string()),
            };
        }
        match record_intent(&self.journal, &self.root, key) {
            Ok(rec) => Ok(Some(LastRef::Collect(rec))),
            // Removed by another writer since its status was read: nothing to collect.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx(|| format!("journal {}", self.journal.dir.display())),
        }
    }

    /// When the change failed: the intent's removal (a deferral is simply forgotten).
    pub(super) fn drop_intent(&self, intent: Option<LastRef>) {
        if let Some(LastRef::Collect(rec)) = intent {
            self.intent_done(&rec);
        }
    }

    /// Step 5.
    fn intent_done(&self, rec: &Path) {
        if let Err(e) = self.journal.done(rec) {
            warn!("{}: {e}", rec.display());
        }
    }

    /// Steps 3 and 5, after the tag change, with the lock held: moves the unreferenced
    /// directory into the trash and removes the intent; or puts a deferred collection on the
    /// list. The deletion (step 4) is the caller's, once the lock is released
    /// ([`Store::delete_collected`], [`super::collection::Collection`]): the returned
    /// collection names it in `to_delete`. A failure here is logged, not returned: the tag
    /// change already happened, and the intent stays for the next mount to finish.
    pub(super) fn finish_gc(&self, intent: Option<LastRef>, key: &DirKey) -> Option<Collected> {
        let rec = match intent? {
            LastRef::Collect(rec) => rec,
            LastRef::Defer(id, ago) => {
                if self.index().refs(key).unwrap_or(0) == 0 {
                    self.defer_gc(key, id, ago);
                }
                return None;
            }
        };
        if self.index().refs(key).unwrap_or(0) > 0 {
            self.intent_done(&rec);
            return None;
        }
        let trashed = match trash(&self.journal, &self.root, key) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // hypeman's own GC (or another writer) removed it meanwhile: the collection
                // is done. The watcher brings the index up to date, as for any change of
                // another writer.
                self.intent_done(&rec);
                info!(
                    "collect {}: already removed by another writer; nothing left to do",
                    key.rel_path().display()
                );
                return None;
            }
            Err(e) => {
                log::error!(
                    "collect {}: {e}; will retry at next mount",
                    key.rel_path().display()
                );
                return None;
            }
        };
        self.index.write().remove_dir(key);
        self.forget_deferred(key);
        self.stats.collections.fetch_add(1, Relaxed);
        let digest = key.digest();
        let digest_gone = self.index().dirs_of(&digest).next().is_none();
        let mut done = Collected {
            digest,
            dir: key.clone(),
            kept_in_use: None,
            bytes: 0,
            to_delete: None,
            digest_gone,
        };
        // From here the trash entry is garbage by definition (emptied at mount): the intent
        // has done its work, and goes while the lock is held (see the module doc).
        self.intent_done(&rec);
        if let Some(why) = self.in_use.get().and_then(|u| u.retain(key, &trashed)) {
            info!(
                "collected {} from the store; {why}, kept in {} until its last user goes",
                key.rel_path().display(),
                trashed.display()
            );
            done.kept_in_use = Some(trashed);
            return Some(done);
        }
        done.to_delete = Some(trashed);
        Some(done)
    }

    /// Step 4 for the collections of a change, after the store lock was released: deletes
    /// each trashed directory still to delete. A failure is logged: the change is made, the
    /// directory has left the store, and the next mount empties the trash.
    pub(super) fn delete_collected(&self, collected: &mut [Collected]) {
        for c in collected {
            let Some(trashed) = c.to_delete.take() else {
                continue;
            };
            match delete(&trashed) {
                Ok(bytes) => {
                    c.bytes = bytes;
                    self.stats.bytes_reclaimed.fetch_add(bytes, Relaxed);
                    info!(
                        "collected {} (last tag removed, {bytes} bytes freed)",
                        c.dir.rel_path().display()
                    );
                }
                Err(e) => log::error!(
                    "delete {}: {e}; will retry at next mount",
                    trashed.display()
                ),
            }
        }
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
