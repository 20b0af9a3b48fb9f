//! The image store: hypeman's directory, its names, the in-memory index, eager GC and the
//! journal that makes every change crash-safe. Nothing here knows about FUSE.
//!
//! # On disk
//!
//! ```text
//! STORE/
//!   content/<hex>/rootfs.erofs          content-addressed digest directory (metadata.json,
//!   content/<hex>/metadata.json         status and all; other files kept as they are)
//!   repositories/<repo>/<tag>           tag -> ../(x depth(repo)+1)content/<hex>
//!   <repo>/<hex>/...                    legacy digest directory, owned by <repo>
//!   <repo>/<tag>                        legacy tag -> <hex>
//! STORE/../.imagefs-<name of STORE>/    imagefs's bookkeeping, out of hypeman's sight:
//!   lock                                exclusive flock of every writer, for each change
//!   mounted                             exclusive flock held by the one live mount, as is one
//!                                       on STORE/ itself (lockfile::MountedLock)
//!   intents/<id>.<hex>.gc               GC intent -> identity of the digest directory
//!   intents/<id>.json                   promote / move / exchange / relink intent
//!   trash/<id>-<hex12>/                 collected directories; emptied at mount
//!   import/<id>/                        `imagefs import`'s work directories (flock held
//!                                       while the import lives; [`import_work`])
//! ```
//!
//! ([`layout`] reads the store, [`journal`] owns the bookkeeping: beside the store, where
//! neither version of hypeman's listing walks, on the same filesystem; inside the store, in
//! `STORE/.imagefs/`, only when the store's root is a mount point of its own.)
//!
//! # Invariants
//!
//! - A digest directory exists iff a tag names it, or it was never tagged, or it is not
//!   collectable (its status is `pending`, `pulling` or `converting`, or unreadable), or its
//!   collection is deferred because another writer untagged it moments ago ([`deferred`]:
//!   for one to two seconds, while the mount runs).
//! - A tag is installed by an atomic rename and only ever names an existing, `ready`
//!   digest directory; the readiness check and the install happen under the lock, so a tag
//!   can never be created for a directory that GC is removing.
//! - The index ([`index`]) agrees with the disk: every change updates it under the lock
//!   right after its on-disk step, and other writers' changes reach it through [`watch`].
//!
//! # Locking
//!
//! Every change holds one lock from its checks to its last step in the store ([`Store::lock`]):
//! an in-process mutex plus an exclusive `flock` on the bookkeeping's `lock`, which imagefs's
//! other writers (`import`, `gc`, `fsck --repair`) take too ([`lockfile::StoreLock`]). What
//! touches only the change's own files comes after it, before the change returns: the
//! fsync of an `rm` and the deletion of what it collected ([`collection`]). The
//! index sits behind its own read-write lock, which never leaves this module: callers get
//! owned values (`query.rs`: [`Store::tag`], [`Store::entry`], ...), so nobody outside can
//! hold it across a second read while a writer waits (parking_lot's lock is writer-fair:
//! that would deadlock).
//!
//! # GC
//!
//! When a change drops the last reference to a collectable directory, it is removed before
//! the change returns, in the steps of [`gc`]: GC intent, tag change, rename into the trash
//! and intent removal under the lock, then the deletion after it ([`collection`]). A directory the mount still serves stays in the trash until its
//! last user goes ([`InUse`], [`Store::release_trashed`]). A directory another writer took a
//! tag away from moments ago is not collected at once but retried once the store is quiet
//! ([`deferred`]: legacy hypeman's retag removes a link before it makes the new one).
//! [`Store::open_mounted`] replays whatever a
//! crash interrupted ([`recover`]); tools that must not (a mount may be live) read the
//! store with [`Store::open_view`].
//!
//! # Modules
//!
//! The changes by subject: [`tags`](Store::create_tag) (`tags.rs`), repository directories
//! (`repo_dirs.rs`), promotion of legacy directories (`promote.rs`) and, in a store without
//! `content/`, legacy copies instead ([`legacy_copy`]), [`gc`], and [`install`] for writers
//! that do not mount the store. [`images`] says which directories of a digest `digests/`
//! shows, under which names.

#![forbid(unsafe_code)]

pub mod collection;
mod deferred;
pub mod durability;
pub mod error;
pub mod fsutil;
pub mod gc;
pub mod images;
pub mod import_work;
pub mod index;
pub mod install;
pub mod journal;
pub mod layout;
mod legacy_copy;
pub mod lockfile;
pub mod metadata;
pub mod names;
mod promote;
mod query;
pub mod recover;
mod repo_dirs;
mod repo_move;
pub mod safe_open;
pub mod snapshot;
pub mod sys;
pub mod tag_name;
mod tags;
#[cfg(test)]
pub(crate) mod tests;
mod twins;
mod view;
pub mod watch;

use std::fs::File;
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

pub use collection::Collection;
pub use error::{Result, StoreError};
pub use fsutil::RenameMode;
pub use gc::Collected;
pub use index::{Index, Tag};
pub use layout::DirKey;
pub use names::Digest;
pub use query::{Census, Entry, RepoDir, Window};
pub use tags::{check_hypeman_repo, check_new_tag, still_dangling};
pub use view::View;

use error::IoContext;
use journal::Journal;

/// What a new tag points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The digest: its primary directory (`digests/<hex>`).
    Digest(Digest),
    /// One directory of a digest (`digests/<hex>@<repo>`: see [`images`]).
    Dir(DirKey),
    Tag {
        repo: String,
        tag: String,
    },
}

/// Asked by GC, for a directory it just took out of the store, whether the mount still
/// serves it to someone (an open file, a cwd). Called under the store lock, once the
/// directory has left the store and the index, for every collected directory (another
/// directory of the same digest may stay: the mount serves each directory's own bytes).
/// Returning `Some(why)` takes ownership of the trashed directory: the caller must hand it
/// back with [`Store::release_trashed`] when the last user goes; until then it stays in the
/// bookkeeping's `trash/`. `why` says who keeps it, for the log ("still in use through the
/// mount").
pub trait InUse: Send + Sync {
    fn retain(&self, dir: &DirKey, trashed: &Path) -> Option<&'static str>;
}

/// What eager GC has done since the store was opened.
#[derive(Debug, Default)]
pub struct GcStats {
    /// Digest directories collected.
    pub collections: std::sync::atomic::AtomicU64,
    /// Bytes of disk space freed (an in-use image counts when its last user goes).
    pub bytes_reclaimed: std::sync::atomic::AtomicU64,
    /// Collections put off because another writer had just changed the directory's tags
    /// (see [`deferred`]), and how those ended: collected by a retry, or dropped (a tag came
    /// back, the directory went or changed, or it is no longer collectable).
    pub gc_deferred: std::sync::atomic::AtomicU64,
    pub gc_deferred_collected: std::sync::atomic::AtomicU64,
    pub gc_deferred_dropped: std::sync::atomic::AtomicU64,
}

/// Options for opening a store.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// fsync the directory after installing a tag, so an acknowledged tag survives power loss.
    pub durable: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { durable: true }
    }
}

pub struct Store {
    root: PathBuf,
    journal: Journal,
    lock_file: File,
    /// One mount per store ([`lockfile::MountedLock`]), for a store opened by a mount.
    _mounted: Option<lockfile::MountedLock>,
    mutate: Mutex<()>,
    index: RwLock<Index>,
    opts: Options,
    in_use: std::sync::OnceLock<std::sync::Arc<dyn InUse>>,
    /// Other writers' changes, once [`Store::watch`] started watching.
    watcher: Mutex<Option<watch::Watcher>>,
    changes: Mutex<Vec<watch::Change>>,
    /// Collections put off until the store is quiet, with the directory's identity then
    /// ([`deferred`]).
    deferred: Mutex<std::collections::HashMap<DirKey, journal::DirId>>,
    /// Legacy copies made by the change in progress, with their GC intents, until the tag
    /// that needed each is installed ([`legacy_copy`]).
    fresh_copies: Mutex<Vec<(PathBuf, DirKey)>>,
    /// The thread writing the index snapshot of the open's scan ([`snapshot`]).
    snapshot_writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: GcStats,
}

/// Held for the whole of a change: the in-process mutex and the store's `flock`.
pub struct LockGuard<'a> {
    _mutex: MutexGuard<'a, ()>,
    file: &'a File,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl Store {
    /// Opens a store as [`Store::open_mounted`] does, without the mount marker (for tests,
    /// which open a store several times).
    #[cfg(test)]
    pub fn open(root: &Path, opts: Options) -> Result<Store> {
        Store::open_inner(root, opts, false)
    }

    /// Opens a store for a mount: marks the store as mounted for the store's life (refused,
    /// nothing changed and no recovery run, when another mount serves it), takes the lock,
    /// repairs what a crash left, scans, builds the index.
    pub fn open_mounted(root: &Path, opts: Options) -> Result<Store> {
        Store::open_inner(root, opts, true)
    }

    fn open_inner(root: &Path, opts: Options, mount: bool) -> Result<Store> {
        let meta = sys::metadata(root).ctx(|| format!("store {}", root.display()))?;
        if !meta.is_dir() {
            return Err(StoreError::NotDir(format!("store {}", root.display())));
        }
        let root = sys::canonicalize(root).ctx(|| format!("store {}", root.display()))?;
        if root == Path::new("/") {
            // Its legacy layout would be the whole filesystem.
            return Err(StoreError::Invalid(
                "store /: refusing to use the filesystem root as an image store".into(),
            ));
        }
        // A second mount is refused before anything is written (bookkeeping made, moved or
        // replayed, trash emptied): the identity lock first, the marker once it can exist.
        let root_lock = match mount {
            true => Some(
                lockfile::MountedLock::take(&root).ctx(|| format!("store {}", root.display()))?,
            ),
            false => None,
        };
        let journal = Journal::new(&root);
        journal.warn_if_in_store();
        journal
            .create_dirs()
            .ctx(|| format!("{}", journal.dir.display()))?;
        let mounted = match root_lock {
            Some(l) => Some(l.mark(&root).ctx(|| format!("store {}", root.display()))?),
            None => None,
        };
        let lock_file = sys::open(
            journal.lock_path(),
            File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
        )
        .ctx(|| format!("{}", journal.lock_path().display()))?;
        let store = Store {
            root,
            journal,
            lock_file,
            _mounted: mounted,
            mutate: Mutex::new(()),
            index: RwLock::new(Index::new()),
            opts,
            in_use: std::sync::OnceLock::new(),
            watcher: Mutex::new(None),
            changes: Mutex::new(Vec::new()),
            deferred: Mutex::default(),
            fresh_copies: Mutex::new(Vec::new()),
            snapshot_writer: Mutex::new(None),
            stats: GcStats::default(),
        };
        let fresh = {
            let _g = store.lock()?;
            store
                .journal
                .adopt_old()
                .ctx(|| format!("{}", store.journal.dir.display()))?;
            let (ix, fresh) = store.recover()?;
            *store.index.write() = ix;
            fresh
        };
        // Off the critical path: the mount answers while the snapshot is written, without
        // the store lock (it is the scan's own bytes, nothing the index holds).
        if let Some(fresh) = fresh {
            let (dir, root) = (store.journal.dir.clone(), store.root.clone());
            let spawned = std::thread::Builder::new()
                .name("index-snapshot".into())
                .spawn(move || {
                    let n = fresh.count;
                    match snapshot::write(&dir, &root, fresh) {
                        Ok(p) => log::info!("{}: {n} directories", p.display()),
                        Err(e) => log::warn!("index snapshot: {e}"),
                    }
                });
            match spawned {
                Ok(h) => *store.snapshot_writer.lock() = Some(h),
                Err(e) => log::warn!("index snapshot: no thread to write it: {e}"),
            }
        }
        Ok(store)
    }

    /// Waits until the index snapshot of the open's scan is written (or failed).
    pub fn wait_snapshot(&self) {
        let h = self.snapshot_writer.lock().take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Starts following other writers' changes (inotify); returns a descriptor to poll, a
    /// duplicate of the watcher's own, so that it stays valid whatever becomes of the watcher.
    pub fn watch(&self) -> Result<std::os::fd::OwnedFd> {
        let _g = self.lock()?;
        let inotify = |e: std::io::Error| StoreError::Io {
            context: format!("inotify on {}", self.root.display()),
            source: e,
        };
        let w =
            watch::Watcher::new(&self.root, &self.index.read()).map_err(|e| inotify(e.into()))?;
        let fd = w.fd().try_clone_to_owned().map_err(inotify)?;
        *self.watcher.lock() = Some(w);
        Ok(fd)
    }

    /// Applies other writers' pending changes (taking the lock), retries the deferred
    /// collections that are due ([`deferred`]), and returns every change not yet handed
    /// out (the retries' collections as [`watch::Change::Collected`]).
    pub fn sync_external(&self) -> Result<Vec<watch::Change>> {
        let collected = {
            let _g = self.lock()?;
            self.sync_locked();
            self.retry_deferred_locked()
        };
        if !collected.is_empty() {
            // Deleted without the lock, as a change's own collections (`collection.rs`).
            let collected = Collection::new(self, collected, Vec::new()).finish();
            self.changes
                .lock()
                .extend(collected.into_iter().map(watch::Change::Collected));
        }
        Ok(self.take_changes())
    }

    /// Whether tags in the store wait for their digest directory (see [`watch`]), or
    /// collections wait for the store to be quiet ([`deferred`]): the caller of
    /// [`Store::sync_external`] should then call it every [`watch::REVISIT`].
    pub fn needs_revisit(&self) -> bool {
        self.deferred_gc_count() > 0
            || self
                .watcher
                .lock()
                .as_ref()
                .is_some_and(|w| w.has_pending())
    }

    /// Sets the watcher's quiet window ([`watch::QUIET`]), for tests that do not wait a
    /// second.
    #[cfg(test)]
    pub fn set_quiet(&self, quiet: std::time::Duration) {
        if let Some(w) = self.watcher.lock().as_mut() {
            w.set_quiet(quiet);
        }
    }

    /// The tags on disk whose digest directory is missing (not shown in the mount), as
    /// (repository, tag), as the watcher last saw them.
    #[cfg(test)]
    pub fn pending_tags(&self) -> Vec<(String, String)> {
        self.watcher
            .lock()
            .as_ref()
            .map(|w| w.pending_tags())
            .unwrap_or_default()
    }

    /// Changes by other writers found since the last call.
    pub fn take_changes(&self) -> Vec<watch::Change> {
        std::mem::take(&mut *self.changes.lock())
    }

    /// With the lock held: brings the index up to date with other writers' changes.
    fn sync_locked(&self) {
        let mut w = self.watcher.lock();
        if let Some(w) = w.as_mut() {
            let found = w.apply(&self.root, &mut self.index.write());
            if !found.is_empty() {
                self.changes.lock().extend(found);
            }
        }
    }

    /// Installs the mount's in-use check (once).
    pub fn set_in_use(&self, check: std::sync::Arc<dyn InUse>) {
        let _ = self.in_use.set(check);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A read-only view of the index, for the store's own code: hold it briefly, and never
    /// across another call that reads the index (see [`query`]).
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// Takes the store lock (blocking).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        let m = self.mutate.lock();
        lockfile::flock(&self.lock_file, File::lock)
            .ctx(|| format!("flock {}", self.journal.lock_path().display()))?;
        Ok(LockGuard {
            _mutex: m,
            file: &self.lock_file,
        })
    }

    /// The status of a digest directory; `Err` says why it is unknown.
    pub fn status(&self, key: &DirKey) -> std::result::Result<metadata::Status, String> {
        metadata::read_status(&self.root.join(key.rel_path()))
    }

    /// Makes a change in `dir` durable; a failure is logged and left for the caller to
    /// report (`durability`): the change is made, but may not survive a power cut.
    fn fsync_dir(&self, dir: &Path) {
        if self.opts.durable
            && let Err(e) = fsutil::fsync_dir(dir)
        {
            log::warn!("fsync {}: {e}", dir.display());
            durability::failed(format!("fsync {}: {e}", dir.display()));
        }
    }

    /// Opens `dirs` for an fsync after the lock ([`collection`]), while the lock still
    /// holds them in place: by then another change may have moved one (a repository
    /// renamed), and its old path would fail the fsync of a change that is done. A failed
    /// open is the fsync's failure.
    fn open_for_fsync(&self, dirs: Vec<PathBuf>) -> Vec<(PathBuf, std::io::Result<File>)> {
        if !self.opts.durable {
            return Vec::new();
        }
        dirs.into_iter()
            .map(|d| {
                let f = fsutil::open_dir(&d);
                (d, f)
            })
            .collect()
    }

    /// The fsync of a directory [`Store::open_for_fsync`] opened.
    fn fsync_opened(&self, dir: &Path, f: &std::io::Result<File>) {
        let r = match f {
            Ok(f) => sys::sync_all(f),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        if let Err(e) = r {
            log::warn!("fsync {}: {e}", dir.display());
            durability::failed(format!("fsync {}: {e}", dir.display()));
        }
    }
}
