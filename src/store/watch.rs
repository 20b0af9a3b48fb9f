//! Other writers: an image puller (hypeman), `imagefs import` or `imagefs gc` may change the
//! store while it is mounted. inotify watches `content/`, the store root and every repository
//! directory of both layouts; each event names one entry, which is re-read and reconciled
//! with the index, so an event costs one `lstat`/`readlink` whoever caused it. Our own
//! changes produce events too; they find the index already right and change nothing.
//!
//! Events are applied under the store lock: by the mount's watcher thread within a fraction
//! of a second, and by every change of our own before it decides anything (so a tag another
//! writer just created is counted before GC looks at a reference count). imagefs never
//! collects on another writer's behalf: a tag removed by someone else just goes.
//!
//! The order of events inside a batch does not matter (HYPEMAN.md: a repository made and
//! filled at once, a tag made before its digest directory, staging directories renamed into
//! place): every entry is re-read as it is now, directories and removals before tags, and a
//! tag whose digest directory the index does not have (yet) is kept *pending* — revisited
//! the moment that directory arrives, and every [`REVISIT`] while any is left (the mount's
//! watcher thread wakes up for it). A tag whose directory another writer removes goes back
//! to pending, so a re-created directory brings its tags back. hypeman's staging entries
//! ([`layout::is_staging_entry`]) and its layer store (`layers/`) are never looked at.
//!
//! The watcher also remembers, for [`QUIET`], which digest directories another writer took
//! a tag away from (removed or re-pointed): legacy hypeman retags by removing the old link
//! and then creating the new one, and a directory that seems to have lost a reference in
//! that gap must not be collected at once (see `deferred.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::fsutil::TMP_PREFIX;
use super::gc::Collected;
use super::index::Index;
use super::layout::{self, CONTENT, DirKey, LAYERS, Layout, PRIVATE, REPOSITORIES};
use super::names::{self, Digest};

/// What another writer changed, for the mount to drop from the kernel's caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A tag appeared, vanished or now names another digest.
    Tag { repo: String, tag: String },
    /// A repository directory appeared or vanished.
    Dir(String),
    /// A digest directory vanished (other directories of its digest may remain).
    DirGone(DirKey),
    /// A digest directory appeared.
    DirAdded(DirKey),
    /// A collection the mount had put off (another writer had just changed the
    /// directory's tags) was done by a later retry: see `deferred.rs`.
    Collected(Collected),
    /// A tag that still names, in the store, the digest directory `dir` another writer
    /// removed (logged as a warning; see `tags::dangling_tags`).
    Dangling {
        repo: String,
        tag: String,
        dir: DirKey,
    },
}

/// Reports the tags of a removed directory that still name it in the store (dangling).
fn dangling(root: &Path, key: &DirKey, tags: &[(String, String)], out: &mut Vec<Change>) {
    for (repo, tag) in super::tags::dangling_tags(root, key, tags) {
        out.push(Change::Dangling {
            repo,
            tag,
            dir: key.clone(),
        });
    }
}

/// A watched directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Content,
    /// A repository directory of a layout; ("", Legacy) is the store root and
    /// ("", Content) is `repositories/`.
    Repo(Layout, String),
}

/// How often pending tags are re-read while any is left.
pub const REVISIT: Duration = Duration::from_secs(1);

/// How long a directory another writer took a tag away from counts as touched: eager GC
/// does not collect it within this window, and retries once it is over (`deferred.rs`).
/// Legacy hypeman's retag is two syscalls in a row (remove, then symlink): microseconds,
/// milliseconds on a loaded machine; one second is far above that, and is the watcher's
/// own pace (REVISIT) and the contract's "within one second" for other writers' changes.
pub const QUIET: Duration = Duration::from_secs(1);

/// A tag entry of the store: (layout, repository, tag).
type TagEntry = (Layout, String, String);

/// Tags on disk whose digest directory the index does not have (yet), by that directory.
#[derive(Debug, Default)]
struct Pending {
    by_dir: HashMap<DirKey, BTreeSet<TagEntry>>,
    by_tag: HashMap<TagEntry, DirKey>,
}

impl Pending {
    fn add(&mut self, key: DirKey, e: TagEntry) {
        self.forget(&e);
        self.by_dir
            .entry(key.clone())
            .or_default()
            .insert(e.clone());
        self.by_tag.insert(e, key);
    }

    fn forget(&mut self, e: &TagEntry) {
        if let Some(k) = self.by_tag.remove(e)
            && let Some(set) = self.by_dir.get_mut(&k)
        {
            set.remove(e);
            if set.is_empty() {
                self.by_dir.remove(&k);
            }
        }
    }

    /// The entries waiting for `key`, forgotten.
    fn take(&mut self, key: &DirKey) -> Vec<TagEntry> {
        let v: Vec<TagEntry> = self
            .by_dir
            .remove(key)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        for e in &v {
            self.by_tag.remove(e);
        }
        v
    }

    /// Every entry, sorted.
    fn all(&self) -> Vec<TagEntry> {
        let mut v: Vec<TagEntry> = self.by_tag.keys().cloned().collect();
        v.sort_by(|a, b| (&a.1, &a.2, a.0).cmp(&(&b.1, &b.2, b.0)));
        v
    }

    fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }

    /// Entries of `layout` in repository `path` or below it.
    fn under(&self, layout: Layout, path: &str) -> Vec<(TagEntry, DirKey)> {
        let prefix = format!("{path}/");
        self.by_tag
            .iter()
            .filter(|((l, r, _), _)| *l == layout && (r == path || r.starts_with(&prefix)))
            .map(|(e, k)| (e.clone(), k.clone()))
            .collect()
    }
}

pub struct Watcher {
    inotify: Inotify,
    targets: HashMap<WatchDescriptor, Target>,
    wds: HashMap<Target, WatchDescriptor>,
    pending: Pending,
    /// When the pending tags were last re-read (`None`: due now).
    revisited: Option<Instant>,
    /// Digest directories another writer took a tag away from, and when the watcher saw
    /// it; entries older than `quiet` are forgotten at each [`Watcher::apply`].
    untagged: HashMap<DirKey, Instant>,
    /// [`QUIET`] (shorter in tests).
    quiet: Duration,
}

const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ONLYDIR)
    .union(AddWatchFlags::IN_DONT_FOLLOW);

impl Watcher {
    /// Watches the store's directories that the index knows.
    pub fn new(root: &Path, ix: &Index) -> nix::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut w = Watcher {
            inotify,
            targets: HashMap::new(),
            wds: HashMap::new(),
            pending: Pending::default(),
            revisited: None,
            untagged: HashMap::new(),
            quiet: QUIET,
        };
        // Tags the mount's scan found naming nothing yet (a pull hypeman tagged before its
        // directory was there, say): shown once their directory comes.
        for t in ix.unresolved() {
            w.pending.add(
                t.key.clone(),
                (t.layout, t.repo.to_string(), t.tag.to_string()),
            );
        }
        w.watch(root, Target::Content);
        w.watch(root, Target::Repo(Layout::Content, String::new()));
        w.watch(root, Target::Repo(Layout::Legacy, String::new()));
        let nodes: Vec<(String, bool, bool)> = ix
            .nodes()
            .map(|(p, n)| (p.clone(), n.content, n.legacy))
            .collect();
        for (p, content, legacy) in nodes {
            if content {
                w.watch(root, Target::Repo(Layout::Content, p.clone()));
            }
            if legacy {
                w.watch(root, Target::Repo(Layout::Legacy, p));
            }
        }
        Ok(w)
    }

    /// The descriptor to poll for pending events.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    fn dir(root: &Path, t: &Target) -> std::path::PathBuf {
        match t {
            Target::Content => root.join(CONTENT),
            Target::Repo(Layout::Legacy, r) if r.is_empty() => root.to_path_buf(),
            Target::Repo(l, r) => root.join(layout::repo_rel_dir(*l, r)),
        }
    }

    /// Adds a watch; returns false if the directory could not be watched.
    fn watch(&mut self, root: &Path, t: Target) -> bool {
        if self.wds.contains_key(&t) {
            return true;
        }
        let dir = Self::dir(root, &t);
        match self.inotify.add_watch(&dir, MASK) {
            Ok(wd) => {
                // A directory moved by another writer keeps its descriptor: re-point it.
                if let Some(old) = self.targets.insert(wd, t.clone()) {
                    self.wds.remove(&old);
                }
                self.wds.insert(t, wd);
                true
            }
            Err(nix::errno::Errno::ENOENT) => false,
            Err(e) => {
                warn!("cannot watch {} for other writers: {e}", dir.display());
                false
            }
        }
    }

    fn unwatch_subtree(&mut self, layout: Layout, path: &str) {
        for (e, _) in self.pending.under(layout, path) {
            self.pending.forget(&e);
        }
        let prefix = format!("{path}/");
        let gone: Vec<Target> = self
            .wds
            .keys()
            .filter(|t| matches!(t, Target::Repo(l, p) if *l == layout && (p == path || p.starts_with(&prefix))))
            .cloned()
            .collect();
        for t in gone {
            if let Some(wd) = self.wds.remove(&t) {
                self.targets.remove(&wd);
                let _ = self.inotify.rm_watch(wd);
            }
        }
    }

    /// Our own repository move: the watches (and pending tags) moved with the directories.
    pub fn renamed(&mut self, layout: Layout, from: &str, to: &str) {
        let rename = |p: &str| format!("{to}{}", &p[from.len()..]);
        for ((l, r, t), key) in self.pending.under(layout, from) {
            self.pending.forget(&(l, r.clone(), t.clone()));
            let key = match key {
                DirKey::Legacy(kr, d) if kr == r => DirKey::Legacy(rename(&kr), d),
                k => k,
            };
            self.pending.add(key, (l, rename(&r), t));
        }
        let prefix = format!("{from}/");
        let moved: Vec<(Target, WatchDescriptor)> = self
            .wds
            .iter()
            .filter(|(t, _)| matches!(t, Target::Repo(l, p) if *l == layout && (p == from || p.starts_with(&prefix))))
            .map(|(t, wd)| (t.clone(), *wd))
            .collect();
        for (t, wd) in moved {
            if let Target::Repo(l, p) = t {
                let new = Target::Repo(l, format!("{to}{}", &p[from.len()..]));
                self.wds.remove(&Target::Repo(l, p));
                self.targets.insert(wd, new.clone());
                self.wds.insert(new, wd);
            }
        }
    }

    /// How long ago another writer took a tag away from `key`, if less than the quiet
    /// window ago.
    pub fn untagged_within_quiet(&self, key: &DirKey) -> Option<Duration> {
        self.untagged
            .get(key)
            .map(Instant::elapsed)
            .filter(|ago| *ago < self.quiet)
    }

    /// The quiet window (see [`QUIET`]).
    pub fn quiet(&self) -> Duration {
        self.quiet
    }

    /// Sets the quiet window (tests use a short one).
    #[cfg(test)]
    pub fn set_quiet(&mut self, quiet: Duration) {
        self.quiet = quiet;
    }

    /// Another writer took a tag away from `key`: see [`Watcher::untagged_within_quiet`].
    fn untagged_by_other(&mut self, key: DirKey) {
        self.untagged.insert(key, Instant::now());
    }

    /// Whether tags are waiting for their digest directory: the caller should then call
    /// [`Watcher::apply`] at least every [`REVISIT`], events or not.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The tags on disk whose digest directory is missing, as (repository, tag), sorted: a
    /// tag made before its pull's directory, or a dangling tag left by another writer.
    #[cfg(test)]
    pub fn pending_tags(&self) -> Vec<(String, String)> {
        self.pending
            .all()
            .into_iter()
            .map(|(_, r, t)| (r, t))
            .collect()
    }

    /// Reads every pending event and reconciles the entries they name with `ix`; re-reads the
    /// pending tags when they are due.
    pub fn apply(&mut self, root: &Path, ix: &mut Index) -> Vec<Change> {
        let mut changes = Vec::new();
        loop {
            // One batch: every event queued now, reconciled together (see the module's doc).
            let mut batch: Vec<(Target, OsString)> = Vec::new();
            let mut overflow = false;
            loop {
                let events = match self.inotify.read_events() {
                    Ok(ev) if !ev.is_empty() => ev,
                    Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => {
                        warn!("reading store events: {e}");
                        break;
                    }
                };
                for ev in events {
                    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        overflow = true;
                        continue;
                    }
                    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        if let Some(t) = self.targets.remove(&ev.wd) {
                            self.wds.remove(&t);
                        }
                        continue;
                    }
                    let (Some(t), Some(name)) = (self.targets.get(&ev.wd).cloned(), ev.name) else {
                        continue;
                    };
                    if !skipped(&name) {
                        batch.push((t, name));
                    }
                }
            }
            if overflow {
                warn!("store event queue overflowed; re-reading every watched directory");
                let all: Vec<Target> = self.wds.keys().cloned().collect();
                for t in all {
                    self.reconcile_dir(root, &t, ix, &mut changes);
                }
            } else if batch.is_empty() {
                break;
            } else {
                self.reconcile_batch(root, batch, ix, &mut changes);
            }
        }
        if !self.pending.is_empty() && self.revisited.is_none_or(|t| t.elapsed() >= REVISIT) {
            self.revisit_pending(root, ix, &mut changes);
        }
        let quiet = self.quiet;
        self.untagged.retain(|_, seen| seen.elapsed() < quiet);
        changes
    }

    /// Re-reads every pending tag.
    fn revisit_pending(&mut self, root: &Path, ix: &mut Index, out: &mut Vec<Change>) {
        self.revisited = Some(Instant::now());
        for (lay, repo, tag) in self.pending.all() {
            self.reconcile(root, &Target::Repo(lay, repo), OsStr::new(&tag), ix, out);
        }
    }

    /// Digest directory `key` joined the index: the tags waiting for it are read again.
    fn arrived(&mut self, root: &Path, key: &DirKey, ix: &mut Index, out: &mut Vec<Change>) {
        for (lay, repo, tag) in self.pending.take(key) {
            self.reconcile(root, &Target::Repo(lay, repo), OsStr::new(&tag), ix, out);
        }
    }

    /// Reconciles entries, each once, whatever their order: directories, digest directories
    /// and removals first, then tags, so that a tag's directory is known when it is read.
    fn reconcile_batch(
        &mut self,
        root: &Path,
        batch: Vec<(Target, OsString)>,
        ix: &mut Index,
        out: &mut Vec<Change>,
    ) {
        let mut seen = HashSet::new();
        let mut tags = Vec::new();
        for (t, name) in batch {
            if !seen.insert((t.clone(), name.clone())) {
                continue;
            }
            let is_link = std::fs::symlink_metadata(Self::dir(root, &t).join(&name))
                .is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                tags.push((t, name));
            } else {
                self.reconcile(root, &t, &name, ix, out);
            }
        }
        for (t, name) in tags {
            self.reconcile(root, &t, &name, ix, out);
        }
    }

    /// Re-reads every entry of a watched directory (a new watch may have missed some).
    fn reconcile_dir(&mut self, root: &Path, t: &Target, ix: &mut Index, out: &mut Vec<Change>) {
        let mut names: Vec<OsString> = std::fs::read_dir(Self::dir(root, t))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        // Entries the index has that may have gone.
        match t {
            Target::Content => names.extend(
                ix.dir_keys()
                    .filter(|(k, _)| matches!(k, DirKey::Content(_)))
                    .map(|(k, _)| k.digest().hex().into())
                    .collect::<Vec<OsString>>(),
            ),
            Target::Repo(l, r) => {
                if let Some(n) = ix.node(r) {
                    names.extend(n.subdirs.iter().map(OsString::from));
                    names.extend(
                        n.tags
                            .iter()
                            .filter(|(_, tag)| tag.layout == *l)
                            .map(|(k, _)| OsString::from(k.as_str())),
                    );
                }
            }
        }
        names.sort();
        names.dedup();
        let batch = names
            .into_iter()
            .filter(|n| !skipped(n))
            .map(|n| (t.clone(), n))
            .collect();
        self.reconcile_batch(root, batch, ix, out);
    }

    /// Makes the index agree with the disk about entry `name` of watched directory `t`.
    fn reconcile(
        &mut self,
        root: &Path,
        t: &Target,
        name: &OsStr,
        ix: &mut Index,
        out: &mut Vec<Change>,
    ) {
        let path = Self::dir(root, t).join(name);
        let meta = std::fs::symlink_metadata(&path).ok();
        match t {
            Target::Content => {
                let Some(d) = name.to_str().and_then(Digest::parse_hex) else {
                    return;
                };
                let key = DirKey::Content(d);
                match meta {
                    Some(m) if m.is_dir() => {
                        if !ix.has_dir(&key) {
                            info!("another writer added {}", path.display());
                            ix.add_dir(key.clone());
                            out.push(Change::DirAdded(key.clone()));
                            self.arrived(root, &key, ix, out);
                        }
                    }
                    _ => {
                        if ix.has_dir(&key) {
                            info!("another writer removed {}", path.display());
                            self.dir_gone(root, &key, ix, out);
                            out.push(Change::DirGone(key));
                        }
                    }
                }
            }
            Target::Repo(lay, repo) => {
                self.reconcile_repo_entry(root, *lay, repo, name, meta, ix, out)
            }
        }
    }

    /// Digest directory `key` left the store: its tags leave the index, and wait (pending)
    /// in case the directory comes back (a re-pull) while their links are still there.
    fn dir_gone(&mut self, root: &Path, key: &DirKey, ix: &mut Index, out: &mut Vec<Change>) {
        let lay = layout::layout_of(key);
        let tags = ix.remove_dir_and_tags(key);
        // Tags whose links still name the directory: another writer removed it under them.
        dangling(root, key, &tags, out);
        for (repo, tag) in tags {
            self.pending
                .add(key.clone(), (lay, repo.clone(), tag.clone()));
            out.push(Change::Tag { repo, tag });
        }
    }

    /// The tag `repo:tag` of `lay` left the index: the same name in the other layout, which
    /// it hid, is read again.
    fn unshadow(
        &mut self,
        root: &Path,
        lay: Layout,
        repo: &str,
        tag: &str,
        ix: &mut Index,
        out: &mut Vec<Change>,
    ) {
        let other = match lay {
            Layout::Content => Layout::Legacy,
            Layout::Legacy => Layout::Content,
        };
        let t = Target::Repo(other, repo.to_string());
        let is_link = std::fs::symlink_metadata(Self::dir(root, &t).join(tag))
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link && ix.tag(repo, tag).is_none() {
            self.reconcile(root, &t, OsStr::new(tag), ix, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reconcile_repo_entry(
        &mut self,
        root: &Path,
        lay: Layout,
        repo: &str,
        name: &OsStr,
        meta: Option<std::fs::Metadata>,
        ix: &mut Index,
        out: &mut Vec<Change>,
    ) {
        if lay == Layout::Legacy && repo.is_empty() {
            // The store's own directories: a `content/` or `repositories/` made after the
            // mount (by the first pull, say) gets watched now.
            let own = if name == OsStr::new(CONTENT) {
                Some(Target::Content)
            } else if name == OsStr::new(REPOSITORIES) {
                Some(Target::Repo(Layout::Content, String::new()))
            } else if name == OsStr::new(PRIVATE) || name == OsStr::new(LAYERS) {
                // imagefs's bookkeeping; hypeman's layer store (never digests).
                return;
            } else {
                None
            };
            if let Some(t) = own {
                if meta.as_ref().is_some_and(|m| m.is_dir())
                    && !self.wds.contains_key(&t)
                    && self.watch(root, t.clone())
                {
                    self.reconcile_dir(root, &t, ix, out);
                }
                return;
            }
        }
        let Some(n) = name.to_str() else { return };
        let ft = meta.as_ref().map(|m| m.file_type());
        // A legacy digest directory.
        if lay == Layout::Legacy
            && !repo.is_empty()
            && let Some(d) = Digest::parse_hex(n)
        {
            let key = DirKey::Legacy(repo.to_string(), d);
            let is_dir = ft.is_some_and(|f| f.is_dir());
            match (is_dir, ix.has_dir(&key)) {
                (true, false) => {
                    ix.add_dir(key.clone());
                    out.push(Change::DirAdded(key.clone()));
                    self.arrived(root, &key, ix, out);
                }
                (false, true) => {
                    self.dir_gone(root, &key, ix, out);
                    out.push(Change::DirGone(key));
                }
                _ => {}
            }
            return;
        }
        let sub = names::join(repo, n);
        match ft {
            Some(f) if f.is_symlink() => {
                if repo.is_empty() || names::check_tag(n.as_bytes()).is_err() {
                    return;
                }
                let entry = (lay, repo.to_string(), n.to_string());
                self.pending.forget(&entry);
                let named = std::fs::read_link(
                    Self::dir(root, &Target::Repo(lay, repo.to_string())).join(n),
                )
                .ok()
                .and_then(|t| layout::parse_tag_target(lay, repo, &t));
                let want = match named {
                    Some(k) if ix.has_dir(&k) => Some(k),
                    Some(k) => {
                        // Its directory may come later (a batch in another order, a pull
                        // tagged before its directory is there): shown when it does.
                        debug!(
                            "tag {repo}:{n} names {}, not in the store (yet); pending",
                            k.rel_path().display()
                        );
                        self.pending.add(k, entry);
                        None
                    }
                    None => None,
                };
                let have = ix
                    .tag(repo, n)
                    .filter(|t| t.layout == lay)
                    .map(|t| DirKey::clone(&t.key));
                if want == have {
                    return;
                }
                if let Some(old) = &have {
                    ix.remove_tag(repo, n);
                    self.untagged_by_other(old.clone());
                }
                if let Some(key) = want {
                    if ix.tag(repo, n).is_some() {
                        // The same name in the other layout: the content layout's wins.
                        if lay == Layout::Legacy {
                            return;
                        }
                        if let Some((old, _)) = ix.remove_tag(repo, n) {
                            self.untagged_by_other(old.key);
                        }
                    }
                    ix.add_tag(repo, n, key, lay);
                }
                debug!("another writer changed tag {repo}:{n}");
                out.push(Change::Tag {
                    repo: repo.to_string(),
                    tag: n.to_string(),
                });
                if have.is_some() && ix.tag(repo, n).is_none() {
                    self.unshadow(root, lay, repo, n, ix, out);
                }
            }
            Some(f) if f.is_dir() => {
                if names::check_repo(&sub).is_err() {
                    return;
                }
                let has = ix.node(&sub).is_some_and(|node| match lay {
                    Layout::Content => node.content,
                    Layout::Legacy => node.legacy,
                });
                if !has {
                    ix.ensure_node(&sub, lay);
                    out.push(Change::Dir(sub.clone()));
                }
                let t = Target::Repo(lay, sub);
                if !self.wds.contains_key(&t) && self.watch(root, t.clone()) {
                    // Entries made before the watch existed.
                    self.reconcile_dir(root, &t, ix, out);
                }
            }
            _ => {
                // Gone (or not something we serve): forget what the index had there.
                self.pending.forget(&(lay, repo.to_string(), n.to_string()));
                let had_tag = ix.tag(repo, n).is_some_and(|t| t.layout == lay);
                if had_tag {
                    if let Some((old, _)) = ix.remove_tag(repo, n) {
                        self.untagged_by_other(old.key);
                    }
                    out.push(Change::Tag {
                        repo: repo.to_string(),
                        tag: n.to_string(),
                    });
                    self.unshadow(root, lay, repo, n, ix, out);
                }
                let had_dir = ix.node(&sub).is_some_and(|node| match lay {
                    Layout::Content => node.content,
                    Layout::Legacy => node.legacy,
                });
                if had_dir && meta.is_none() {
                    let prefix = format!("{sub}/");
                    let dirs: Vec<DirKey> = ix
                        .dir_keys()
                        .filter(|(k, _)| match k {
                            DirKey::Legacy(r, _) => {
                                lay == Layout::Legacy && (*r == sub || r.starts_with(&prefix))
                            }
                            DirKey::Content(_) => false,
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    let untagged: Vec<DirKey> = ix
                        .nodes()
                        .filter(|(p, _)| **p == sub || p.starts_with(&prefix))
                        .flat_map(|(_, node)| node.tags.values())
                        .filter(|t| t.layout == lay)
                        .map(|t| DirKey::clone(&t.key))
                        .collect();
                    for key in untagged {
                        self.untagged_by_other(key);
                    }
                    for (repo, tag) in ix.remove_subtree(&sub, lay) {
                        out.push(Change::Tag { repo, tag });
                    }
                    out.extend(dirs.into_iter().map(Change::DirGone));
                    self.unwatch_subtree(lay, &sub);
                    out.push(Change::Dir(sub));
                }
            }
        }
    }
}

/// Entries the watcher never reads: imagefs's own temporaries and trash, and hypeman's staging
/// entries.
fn skipped(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(TMP_PREFIX.as_bytes())
        || layout::is_staging_entry(b)
        || name == layout::SIDE_TRASH
}
