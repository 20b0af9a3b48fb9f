//! Where things live in a hypeman store, and the one scan that reads it at mount time.
//!
//! ```text
//! STORE/content/<hex>/...                 content-addressed digest directory
//! STORE/repositories/<repo>/<tag>         -> ../(x depth(repo)+1)content/<hex>
//! STORE/<repo>/<hex>/...                  legacy digest directory, owned by <repo>
//! STORE/<repo>/<tag>                      -> <hex>
//! STORE/.imagefs/                         imagefs's own: lock, intents/, trash/
//! STORE/layers/<hex>/...                  hypeman's layer store: not digests, never read
//! ```
//!
//! The scan never follows a symlink and never trusts a name: anything that does not fit is
//! reported once as a warning and left alone. What hypeman is still writing (its staging
//! names, [`is_staging_entry`]) is neither a digest nor a tag nor a problem: it is skipped
//! quietly (and listed in [`Scan::staging`] for fsck's information).

use std::ffi::{CStr, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::FileType;

use log::{debug, warn};

use super::fsutil::TMP_PREFIX;
use super::names::{self, Digest};
use super::snapshot::{self, Stamp};
use super::sys;
use super::tag_name::TagName;

pub const CONTENT: &str = "content";
pub const REPOSITORIES: &str = "repositories";
pub const PRIVATE: &str = ".imagefs";
/// A trash of imagefs's own inside a directory holding digest directories (`content/` or a
/// legacy repository), used only where that directory is on another filesystem than the
/// bookkeeping's `trash/` (see `journal.rs`). Never a digest, tag or repository name (those
/// never start with a dot); emptied at mount like the bookkeeping's trash.
pub const SIDE_TRASH: &str = ".imagefs-trash";
/// hypeman's per-layer artifact store (`layers/<layerHex>/`), content hypeman only.
pub const LAYERS: &str = "layers";

/// Is `name`, an entry of `content/`, of a repository directory or of the store root, one of
/// hypeman's staging directories (HYPEMAN.md): `.install-*` (atomic installs), `.tag-stage-*`
/// (a tag being staged), `.unpack-*` (layer unpacking)? None of them can be a digest, a tag
/// or a repository name (those never start with a dot).
pub fn is_staging_entry(name: &[u8]) -> bool {
    const PREFIXES: [&[u8]; 3] = [b".install-", b".tag-stage-", b".unpack-"];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Is `name`, a file of a digest directory, a temporary that a writer is still working on
/// rather than the directory's content? Hidden names (hypeman's `.rootfs-*`, `.metadata-*`,
/// `.install-*`, imagefs's own `.imagefs-tmp-*`), `metadata.json.tmp` (`*.tmp`) and
/// `rootfs.erofs.tmp-<buildID>` (`*.tmp-*`). Such files are never served in `digests/<hex>/`.
pub fn is_staging_file(name: &[u8]) -> bool {
    name.starts_with(b".") || name.ends_with(b".tmp") || name.windows(5).any(|w| w == b".tmp-")
}

/// The store root's own entries, which are not legacy repositories: the content layout's two
/// directories, hypeman's layer store and imagefs's bookkeeping.
pub fn is_store_own(name: &OsStr) -> bool {
    [CONTENT, REPOSITORIES, LAYERS, PRIVATE]
        .iter()
        .any(|n| name == OsStr::new(n))
}

/// Which layout a tag or digest directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    Content,
    Legacy,
}

/// A digest directory of the store: the unit that reference counting and GC work on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DirKey {
    Content(Digest),
    Legacy(String, Digest),
}

impl DirKey {
    pub fn digest(&self) -> Digest {
        match self {
            DirKey::Content(d) | DirKey::Legacy(_, d) => *d,
        }
    }

    /// The path relative to the store root.
    pub fn rel_path(&self) -> PathBuf {
        match self {
            DirKey::Content(d) => Path::new(CONTENT).join(d.hex()),
            DirKey::Legacy(repo, d) => Path::new(repo).join(d.hex()),
        }
    }

    /// Parses a store-relative path back into a key (used for journal records).
    pub fn from_rel_path(p: &str) -> Option<DirKey> {
        let (parent, last) = names::split_last(p);
        let digest = Digest::parse_hex(last)?;
        if parent == CONTENT {
            Some(DirKey::Content(digest))
        } else if names::check_repo(parent).is_ok() && !is_reserved_top(parent) {
            Some(DirKey::Legacy(parent.to_string(), digest))
        } else {
            None
        }
    }
}

/// Is the first component of a legacy repository path one of the store's own directories
/// (`content`, `repositories`, hypeman's `layers`)? hypeman's names always start with a
/// registry host, so no repository of its own is refused here.
pub fn is_reserved_top(repo: &str) -> bool {
    let first = repo.split('/').next().unwrap_or("");
    first == CONTENT || first == REPOSITORIES || first == LAYERS
}

/// Store-relative directory of repository `repo` in `layout` ("" is the layout's root).
pub fn repo_rel_dir(layout: Layout, repo: &str) -> PathBuf {
    match layout {
        Layout::Content => Path::new(REPOSITORIES).join(repo),
        Layout::Legacy => PathBuf::from(repo),
    }
}

/// The symlink target hypeman writes for a tag of `repo` naming `key`.
pub fn tag_target(repo: &str, key: &DirKey) -> String {
    match key {
        DirKey::Content(d) => format!("{}{CONTENT}/{d}", "../".repeat(names::depth(repo) + 1)),
        DirKey::Legacy(_, d) => d.hex(),
    }
}

/// Interprets a tag symlink's target, found in `repo` of `layout`, as a digest directory.
/// Only targets that stay inside the store and name a digest directory the way hypeman
/// writes them are accepted.
pub fn parse_tag_target(layout: Layout, repo: &str, target: &Path) -> Option<DirKey> {
    let t = target.to_str()?;
    match layout {
        Layout::Legacy => Digest::parse_hex(t).map(|d| DirKey::Legacy(repo.to_string(), d)),
        Layout::Content => {
            // What hypeman writes (`tag_target`), read without building a path: a store
            // scan reads a million of these.
            let up = 3 * (names::depth(repo) + 1);
            if let Some(hex) = t
                .get(up..)
                .and_then(|rest| rest.strip_prefix(CONTENT))
                .and_then(|rest| rest.strip_prefix('/'))
                && t.as_bytes()[..up].chunks(3).all(|c| c == b"../")
                && let Some(d) = Digest::parse_hex(hex)
            {
                return Some(DirKey::Content(d));
            }
            // Anything else: resolved lexically from STORE/repositories/<repo>.
            if t.starts_with('/') {
                return None;
            }
            let start = std::iter::once(REPOSITORIES)
                .chain(repo.split('/').filter(|c| !c.is_empty()))
                .collect();
            match names::resolve_lexically(start, t)?.as_slice() {
                [CONTENT, hex] => Digest::parse_hex(hex).map(DirKey::Content),
                _ => None,
            }
        }
    }
}

/// One tag found by the scan. The tags of one repository directory share its name.
#[derive(Debug, Clone)]
pub struct ScannedTag {
    pub repo: Arc<str>,
    pub tag: TagName,
    pub layout: Layout,
    pub key: DirKey,
}

/// A repository directory found by the scan (every level of the path).
#[derive(Debug, Clone)]
pub struct ScannedDir {
    pub repo: String,
    pub layout: Layout,
}

/// An entry of the store the scan ignored, and why (each is also logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

/// What one scan of the store found.
#[derive(Debug, Default)]
pub struct Scan {
    pub digest_dirs: Vec<DirKey>,
    pub tags: Vec<ScannedTag>,
    pub repo_dirs: Vec<ScannedDir>,
    /// Leftover temporary files of interrupted tag installs (safe to delete under the lock).
    pub temp_files: Vec<PathBuf>,
    /// imagefs's trash directories inside the store ([`SIDE_TRASH`]).
    pub side_trash: Vec<PathBuf>,
    /// hypeman's staging entries ([`is_staging_entry`]): in progress, or left by an
    /// interrupted hypeman (which sweeps them at its next start). Never imagefs's to touch.
    pub staging: Vec<PathBuf>,
    /// Entries that do not fit (stray files, malformed names, tags naming nothing the
    /// store could hold), in the order found; `imagefs fsck` reports them.
    pub problems: Vec<Problem>,
    /// The repository directories' records for the next index snapshot ([`snapshot`]),
    /// when the scan was asked to keep them.
    pub records: Vec<u8>,
    pub record_count: u32,
    /// Repository directories taken from the snapshot, not read.
    pub taken: u32,
}

/// Logs `PATH: REASON; ignored` and records it.
fn ignore(scan: &mut Scan, path: &Path, reason: impl Into<String>) {
    let reason = reason.into();
    warn!("{}: {reason}; ignored", path.display());
    scan.problems.push(Problem {
        path: path.to_path_buf(),
        reason,
    });
}

/// How a scan uses the index snapshot ([`snapshot`]).
#[derive(Default)]
pub struct Cache {
    /// Directories provably unchanged since it are taken from it.
    pub from: Option<snapshot::Loaded>,
    /// Keep every repository directory's record for the next snapshot ([`Scan::records`]).
    pub record: bool,
}

/// Reads the whole store, taking what `cache` holds unchanged from it. Symlinks are read,
/// never followed.
pub fn scan_with(root: &Path, cache: &Cache) -> std::io::Result<Scan> {
    let mut scan = Scan::default();
    match sys::read_dir(root.join(CONTENT)) {
        Ok(rd) => {
            for entry in rd.flatten() {
                let name = entry.file_name();
                if name == SIDE_TRASH {
                    scan.side_trash.push(entry.path());
                    continue;
                }
                if is_staging_entry(name.as_bytes()) {
                    debug!(
                        "{}: hypeman's staging entry; skipped",
                        entry.path().display()
                    );
                    scan.staging.push(entry.path());
                    continue;
                }
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                match name.to_str().and_then(Digest::parse_hex) {
                    Some(d) if is_dir => scan.digest_dirs.push(DirKey::Content(d)),
                    _ => ignore(&mut scan, &entry.path(), "not a digest directory"),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parts = walk_parallel(
        root,
        cache,
        vec![
            (Layout::Content, String::new()),
            (Layout::Legacy, String::new()),
        ],
    );
    for p in parts {
        scan.digest_dirs.extend(p.digest_dirs);
        scan.tags.extend(p.tags);
        scan.repo_dirs.extend(p.repo_dirs);
        scan.temp_files.extend(p.temp_files);
        scan.side_trash.extend(p.side_trash);
        scan.staging.extend(p.staging);
        scan.problems.extend(p.problems);
        scan.records.extend_from_slice(&p.records);
        scan.record_count += p.record_count;
        scan.taken += p.taken;
    }
    Ok(scan)
}

/// Walks repository directories with a few threads: the scan is a long run of small
/// syscalls (getdents, readlink) that wait on the disk when the cache is cold.
fn walk_parallel(root: &Path, cache: &Cache, start: Vec<(Layout, String)>) -> Vec<Scan> {
    use std::sync::{Condvar, Mutex};
    const THREADS: usize = 8;
    // (directories to visit, workers busy)
    let queue = Mutex::new((start, 0usize));
    let ready = Condvar::new();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let mut part = Scan::default();
                    loop {
                        let job = {
                            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                            loop {
                                if let Some(job) = q.0.pop() {
                                    q.1 += 1;
                                    break Some(job);
                                }
                                if q.1 == 0 {
                                    break None;
                                }
                                q = ready.wait(q).unwrap_or_else(|e| e.into_inner());
                            }
                        };
                        let Some((layout, repo)) = job else {
                            ready.notify_all();
                            return part;
                        };
                        let subs = scan_dir(root, (layout, &repo), cache, &mut part);
                        let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                        q.0.extend(subs.into_iter().map(|r| (layout, r)));
                        q.1 -= 1;
                        ready.notify_all();
                    }
                })
            })
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    })
}

/// Reads one repository directory; returns its sub-repositories to visit. The directory is
/// opened once and its links are read relative to it (`readlinkat`): no path is built per
/// entry, but for what is reported. A directory the index snapshot holds unchanged is
/// taken from it instead ([`snapshot::Loaded::take`]).
fn scan_dir(root: &Path, at: (Layout, &str), cache: &Cache, scan: &mut Scan) -> Vec<String> {
    let (layout, repo) = at;
    let dir = root.join(repo_rel_dir(layout, repo));
    let shared: Arc<str> = Arc::from(repo);
    let tree: snapshot::Tree = match layout {
        Layout::Content => 0,
        Layout::Legacy => 1,
    };
    if let Some(snap) = &cache.from {
        let out = cache.record.then_some(&mut scan.records);
        if let Some(t) = snap.take((tree, repo), &dir, out) {
            scan.taken += 1;
            if cache.record {
                scan.record_count += 1;
            }
            scan.repo_dirs.push(ScannedDir {
                repo: repo.to_string(),
                layout,
            });
            scan.tags
                .extend(t.tags.into_iter().map(|(tag, d)| ScannedTag {
                    repo: shared.clone(),
                    tag,
                    layout,
                    key: match layout {
                        Layout::Content => DirKey::Content(d),
                        Layout::Legacy => DirKey::Legacy(repo.to_string(), d),
                    },
                }));
            scan.digest_dirs.extend(
                t.digests
                    .into_iter()
                    .map(|d| DirKey::Legacy(repo.to_string(), d)),
            );
            return t.subs;
        }
    }
    let before = (
        scan.tags.len(),
        scan.digest_dirs.len(),
        scan.problems.len() + scan.temp_files.len() + scan.staging.len() + scan.side_trash.len(),
    );
    let mut stamp = None;
    let mut clean = true;
    let subs = read_dir(
        root,
        at,
        &shared,
        scan,
        &mut |fd| {
            if cache.record {
                stamp = Stamp::of_fd(fd);
            }
        },
        &mut clean,
    );
    let others =
        scan.problems.len() + scan.temp_files.len() + scan.staging.len() + scan.side_trash.len();
    if let (Some(stamp), true, true) = (stamp, clean, others == before.2) {
        let tags: Vec<(&str, Digest)> = scan.tags[before.0..]
            .iter()
            .map(|t| (t.tag.as_str(), t.key.digest()))
            .collect();
        let digests: Vec<Digest> = scan.digest_dirs[before.1..]
            .iter()
            .map(DirKey::digest)
            .collect();
        if snapshot::record(
            &mut scan.records,
            (tree, repo),
            &stamp,
            &tags,
            &digests,
            &subs,
        ) {
            scan.record_count += 1;
        }
    }
    subs
}

/// Reads one repository directory (see [`scan_dir`]); `opened` sees its descriptor before
/// its entries are read; `clean` is cleared when an entry was skipped unread.
fn read_dir(
    root: &Path,
    at: (Layout, &str),
    shared: &Arc<str>,
    scan: &mut Scan,
    opened: &mut dyn FnMut(&OwnedFd),
    clean: &mut bool,
) -> Vec<String> {
    let (layout, repo) = at;
    let mut subs = Vec::new();
    let dir = root.join(repo_rel_dir(layout, repo));
    let opened = sys::open_dir(&dir).and_then(|fd| {
        opened(&fd);
        let entries = sys::read_dir_fd(&fd)?;
        Ok((fd, entries))
    });
    let (fd, entries) = match opened {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && repo.is_empty() => return subs,
        Err(e) => {
            ignore(scan, &dir, format!("cannot read: {e}"));
            return subs;
        }
    };
    scan.repo_dirs.push(ScannedDir {
        repo: repo.to_string(),
        layout,
    });
    let mut buf = Vec::new();
    for entry in entries {
        // As `std::fs::read_dir(..).flatten()` did: an unreadable entry ends nothing.
        let Ok(entry) = entry else {
            *clean = false;
            continue;
        };
        let cname = entry.file_name();
        let name = OsStr::from_bytes(cname.to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let path = || dir.join(name);
        let ft = match entry.file_type() {
            FileType::Unknown => match sys::file_type_at(&fd, cname) {
                Ok(t) => t,
                Err(_) => {
                    *clean = false;
                    continue;
                }
            },
            t => t,
        };
        if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
            scan.temp_files.push(path());
            continue;
        }
        if is_staging_entry(name.as_bytes()) {
            debug!("{}: hypeman's staging entry; skipped", path().display());
            scan.staging.push(path());
            continue;
        }
        if layout == Layout::Legacy && !repo.is_empty() && name == SIDE_TRASH {
            scan.side_trash.push(path());
            continue;
        }
        if layout == Layout::Legacy && repo.is_empty() && is_store_own(name) {
            // The legacy layout's root is the store root: skip the store's own directories.
            continue;
        }
        if ft == FileType::Symlink {
            buf = scan_tag(layout, shared, (&fd, cname), &path, scan, buf);
        } else if ft == FileType::Directory {
            if layout == Layout::Legacy
                && !repo.is_empty()
                && let Some(d) = name.to_str().and_then(Digest::parse_hex)
            {
                scan.digest_dirs.push(DirKey::Legacy(repo.to_string(), d));
                continue;
            }
            match names::check_repo_component(name.as_bytes(), repo.is_empty()) {
                Ok(c) => {
                    let sub = names::join(repo, c);
                    if sub.len() <= names::MAX_REPO_LEN {
                        subs.push(sub);
                    } else {
                        ignore(scan, &path(), "repository name too long");
                    }
                }
                Err(_) => ignore(scan, &path(), "not a valid repository name"),
            }
        } else {
            ignore(scan, &path(), "stray file");
        }
    }
    subs
}

/// Reads the tag `name` of the open directory `at` (`path` names it in reports); returns
/// the buffer for the next one.
fn scan_tag(
    layout: Layout,
    repo: &Arc<str>,
    at: (&OwnedFd, &CStr),
    path: &dyn Fn() -> PathBuf,
    scan: &mut Scan,
    buf: Vec<u8>,
) -> Vec<u8> {
    let (fd, name) = at;
    if repo.is_empty() {
        ignore(scan, &path(), "a tag needs a repository");
        return buf;
    }
    let Ok(tag) = names::check_tag(name.to_bytes()) else {
        ignore(scan, &path(), "not a valid tag name");
        return buf;
    };
    let target = match sys::read_link_at(fd, name, buf) {
        Ok(t) => t,
        Err(e) => {
            ignore(scan, &path(), format!("cannot read link: {e}"));
            return Vec::new();
        }
    };
    let target_path = Path::new(OsStr::from_bytes(target.as_bytes()));
    match parse_tag_target(layout, repo, target_path) {
        Some(key) => scan.tags.push(ScannedTag {
            repo: repo.clone(),
            tag: TagName::new(tag),
            layout,
            key,
        }),
        None => {
            let path = path();
            warn!(
                "{} -> {}: does not name a digest directory of the store; ignored",
                path.display(),
                target_path.display()
            );
            scan.problems.push(Problem {
                path,
                reason: format!(
                    "tag -> {}: does not name a digest directory of the store (outside it, or malformed)",
                    target_path.display()
                ),
            });
        }
    }
    target.into_bytes_with_nul()
}

/// The layout a digest directory belongs to.
pub fn layout_of(key: &DirKey) -> Layout {
    match key {
        DirKey::Content(_) => Layout::Content,
        DirKey::Legacy(..) => Layout::Legacy,
    }
}

/// `p` relative to the store root `root`, as an intent records it.
pub(super) fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse_hex(&c.to_string().repeat(64)).expect("hex")
    }

    #[test]
    fn tag_targets_round_trip() {
        let key = DirKey::Content(d('a'));
        let t = tag_target("docker.io/library/alpine", &key);
        assert_eq!(t, format!("../../../../content/{}", d('a')));
        assert_eq!(
            parse_tag_target(Layout::Content, "docker.io/library/alpine", Path::new(&t)),
            Some(key)
        );
        let legacy = DirKey::Legacy("x/y".into(), d('b'));
        assert_eq!(tag_target("x/y", &legacy), d('b').hex());
        assert_eq!(
            parse_tag_target(Layout::Legacy, "x/y", Path::new(&d('b').hex())),
            Some(legacy)
        );
    }

    #[test]
    fn tag_targets_outside_the_store_are_refused() {
        let hex = d('a').hex();
        for bad in [
            format!("/abs/content/{hex}"),
            format!("../../../../content/{hex}"),
            format!("../content/{hex}"),
            format!("../../content/{hex}/x"),
            "../../content/zz".to_string(),
        ] {
            assert_eq!(
                parse_tag_target(Layout::Content, "a/b", Path::new(&bad)),
                None,
                "{bad}"
            );
        }
        assert_eq!(
            parse_tag_target(Layout::Legacy, "a", Path::new("../x")),
            None
        );
    }

    #[test]
    fn hypemans_staging_names() {
        for n in [".install-123", ".tag-stage-abc", ".unpack-9"] {
            assert!(is_staging_entry(n.as_bytes()), "{n}");
        }
        for n in ["latest", "v1.tmp", "docker.io", ".hidden", "install-1"] {
            assert!(!is_staging_entry(n.as_bytes()), "{n}");
        }
        for n in [
            "metadata.json.tmp",
            "rootfs.erofs.tmp-build42",
            ".rootfs-123",
            ".metadata-9",
            ".imagefs-tmp-1-file",
        ] {
            assert!(is_staging_file(n.as_bytes()), "{n}");
        }
        for n in [
            "metadata.json",
            "rootfs.erofs",
            "manifest.json",
            "config.tmpl",
        ] {
            assert!(!is_staging_file(n.as_bytes()), "{n}");
        }
        assert!(is_reserved_top("layers") && is_reserved_top("layers/x"));
        assert!(!is_reserved_top("docker.io/layers"));
        assert_eq!(
            DirKey::from_rel_path(&format!("{LAYERS}/{}", d('a'))),
            None,
            "a layer is not a digest directory"
        );
    }

    #[test]
    fn rel_paths_parse_back() {
        for key in [
            DirKey::Content(d('c')),
            DirKey::Legacy("a/b".into(), d('c')),
        ] {
            let p = key.rel_path();
            assert_eq!(DirKey::from_rel_path(p.to_str().expect("utf8")), Some(key));
        }
        assert_eq!(DirKey::from_rel_path("repositories/x"), None);
    }
}
