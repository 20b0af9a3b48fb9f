//! The image store: hypeman's directory, its names, the in-memory index, eager GC and the
//! journal that makes every change crash-safe. Nothing here knows about FUSE.
//!
//! Layout: see [`layout`]. Invariants this module keeps, under one lock shared by every
//! change (an in-process mutex plus `flock` on `STORE/.imagefs/lock` for other writers):
//!
//! - A digest directory exists iff a tag names it, or it was never tagged, or it is not
//!   collectable (its status is `pending`, `pulling` or `converting`, or unreadable).
//! - A tag is installed by an atomic rename and only ever names an existing, `ready`
//!   digest directory; the readiness check and the install happen under the lock, so a tag
//!   can never be created for a directory that GC is removing.
//! - When a change drops the last reference to a collectable directory, it is removed
//!   before the change returns: GC intent, tag change, rename into the trash, delete.
//!   [`Store::open`] replays whatever a crash interrupted (see [`journal`]).

pub mod error;
pub mod fsutil;
pub mod index;
pub mod journal;
pub mod layout;
pub mod lockfile;
pub mod metadata;
pub mod names;
mod ops;
pub mod recover;
#[cfg(test)]
mod tests;
pub mod watch;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

pub use error::{Result, StoreError};
pub use fsutil::RenameMode;
pub use index::{Index, Node, Tag};
pub use layout::{DirKey, Layout};
pub use names::Digest;
pub use ops::check_new_tag;

use error::IoContext;
use journal::Journal;

/// What a new tag points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Digest(Digest),
    Tag { repo: String, tag: String },
}

/// Asked by GC, for a directory it just took out of the store, whether the mount still
/// serves it to someone (an open file, a cwd). Called under the store lock, once the
/// directory has left the store and the index. Returning `true` takes ownership of the
/// trashed directory: the caller must hand it back with [`Store::release_trashed`] when the
/// last user goes; until then it stays in `STORE/.imagefs/trash/`.
pub trait InUse: Send + Sync {
    fn retain(&self, digest: &Digest, trashed: &Path) -> bool;
}

/// What eager GC has done since the store was opened.
#[derive(Debug, Default)]
pub struct GcStats {
    /// Digest directories collected.
    pub collections: std::sync::atomic::AtomicU64,
    /// Bytes of disk space freed (an in-use image counts when its last user goes).
    pub bytes_reclaimed: std::sync::atomic::AtomicU64,
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
    mutate: Mutex<()>,
    index: RwLock<Index>,
    opts: Options,
    in_use: std::sync::OnceLock<std::sync::Arc<dyn InUse>>,
    /// Other writers' changes, once [`Store::watch`] started watching.
    watcher: Mutex<Option<watch::Watcher>>,
    changes: Mutex<Vec<watch::Change>>,
    pub stats: GcStats,
}

/// Held for the whole of a change: the in-process mutex and the store's `flock`.
pub struct LockGuard<'a> {
    _mutex: MutexGuard<'a, ()>,
    fd: i32,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: fd is the store's lock file, open for the store's lifetime.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

impl Store {
    /// Opens a store: takes the lock, repairs what a crash left, scans, builds the index.
    pub fn open(root: &Path, opts: Options) -> Result<Store> {
        let meta = std::fs::metadata(root).ctx(|| format!("store {}", root.display()))?;
        if !meta.is_dir() {
            return Err(StoreError::NotDir(format!("store {}", root.display())));
        }
        let root = root
            .canonicalize()
            .ctx(|| format!("store {}", root.display()))?;
        if root == Path::new("/") {
            // Its legacy layout would be the whole filesystem.
            return Err(StoreError::Invalid(
                "store /: refusing to use the filesystem root as an image store".into(),
            ));
        }
        let journal = Journal::new(&root);
        journal
            .create_dirs()
            .ctx(|| format!("{}", journal.dir.display()))?;
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(journal.lock_path())
            .ctx(|| format!("{}", journal.lock_path().display()))?;
        let store = Store {
            root,
            journal,
            lock_file,
            mutate: Mutex::new(()),
            index: RwLock::new(Index::new()),
            opts,
            in_use: std::sync::OnceLock::new(),
            watcher: Mutex::new(None),
            changes: Mutex::new(Vec::new()),
            stats: GcStats::default(),
        };
        {
            let _g = store.lock()?;
            let ix = store.recover()?;
            *store.index.write() = ix;
        }
        Ok(store)
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

    /// Applies other writers' pending changes (taking the lock) and returns every change
    /// not yet handed out.
    pub fn sync_external(&self) -> Result<Vec<watch::Change>> {
        {
            let _g = self.lock()?;
            self.sync_locked();
        }
        Ok(self.take_changes())
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

    /// Deletes a collected directory that was kept for its users (see [`InUse`]).
    pub fn release_trashed(&self, digest: &Digest, trashed: &Path) {
        let bytes = fsutil::tree_bytes(trashed);
        match fsutil::remove_tree(trashed) {
            Ok(()) => {
                self.stats
                    .bytes_reclaimed
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                log::info!(
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

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A read-only view of the index. Hold it briefly.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    /// Takes the store lock (blocking).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        let m = self.mutate.lock();
        let fd = self.lock_file.as_raw_fd();
        loop {
            // SAFETY: fd is open for the store's lifetime.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                return Ok(LockGuard { _mutex: m, fd });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).ctx(|| format!("flock {}", self.journal.lock_path().display()));
            }
        }
    }

    /// The store directory of a `tags/` directory: the content layout's when it has one.
    pub fn node_path(&self, path: &str, node: &Node) -> PathBuf {
        let layout = if node.content || !node.legacy {
            Layout::Content
        } else {
            Layout::Legacy
        };
        if path.is_empty() && layout == Layout::Legacy {
            return self.root.clone();
        }
        self.root.join(layout::repo_rel_dir(layout, path))
    }

    /// The store path of a tag's symlink.
    pub fn tag_path(&self, repo: &str, tag: &str, layout: Layout) -> PathBuf {
        self.root.join(layout::repo_rel_dir(layout, repo)).join(tag)
    }

    /// The directory that `digests/<hex>` shows: the content one, else a legacy one.
    pub fn digest_path(&self, d: &Digest) -> Option<PathBuf> {
        let ix = self.index.read();
        let key = ix.dirs_of(d).next()?;
        Some(self.root.join(key.rel_path()))
    }

    /// The status of a digest directory; `Err` says why it is unknown.
    pub fn status(&self, key: &DirKey) -> std::result::Result<metadata::Status, String> {
        metadata::read_status(&self.root.join(key.rel_path()))
    }

    /// Creates the store directory of `repo` in `layout` if it is missing. New content-layout
    /// directories take the owner and mode of the legacy one at the same path, if any.
    fn ensure_store_dir(&self, layout: Layout, repo: &str) -> Result<()> {
        let dir = self.root.join(layout::repo_rel_dir(layout, repo));
        if dir.is_dir() {
            return Ok(());
        }
        if layout == Layout::Legacy {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        let mut cur = self.root.join(layout::REPOSITORIES);
        let mut rel = String::new();
        for c in std::iter::once("").chain(repo.split('/').filter(|c| !c.is_empty())) {
            if !c.is_empty() {
                cur.push(c);
                rel = names::join(&rel, c);
            }
            match std::fs::create_dir(&cur) {
                Ok(()) => {
                    let like = if rel.is_empty() {
                        self.root.clone()
                    } else {
                        self.root.join(&rel)
                    };
                    if let Ok(m) = std::fs::metadata(&like) {
                        let _ = std::os::unix::fs::chown(&cur, Some(m.uid()), Some(m.gid()));
                        let _ = std::fs::set_permissions(
                            &cur,
                            std::fs::Permissions::from_mode(m.mode() & 0o7777),
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).ctx(|| cur.display().to_string()),
            }
        }
        self.index.write().ensure_node(repo, Layout::Content);
        Ok(())
    }

    fn fsync_dir(&self, dir: &Path) {
        if self.opts.durable
            && let Err(e) = fsutil::fsync_dir(dir)
        {
            log::warn!("fsync {}: {e}", dir.display());
        }
    }
}
