//! The shared fixture of the store's tests, and of the tests of other modules that build
//! stores by hand (`admin`): [`Fx`] makes a store in a temporary directory (digest
//! directories, tags of both layouts, intents), and [`check`] verifies one with an
//! independent walker ([`walk_disk`]): tag symlinks must carry their canonical text and
//! resolve, nothing may be left in the bookkeeping's `intents/` and `trash/`, and nothing
//! made inside the store (`STORE/.imagefs/`), and the store's index must
//! agree with the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::store::journal::{DirId, Journal};
use crate::store::layout::Layout;
use crate::store::layout::{CONTENT, PRIVATE, REPOSITORIES};
use crate::store::names::{self, Digest};
use crate::store::{Collected, DirKey, Options, Store, StoreError};

pub(crate) const OPTS: Options = Options { durable: false };

/// A digest whose 32 bytes are all `n` (so its hex is `n` as two digits, 32 times).
pub(crate) fn dg(n: u8) -> Digest {
    Digest::from_bytes([n; 32])
}

pub(crate) fn hex(n: u8) -> String {
    dg(n).hex()
}

/// The canonical text of a content-layout tag of `repo`.
pub(crate) fn content_text(repo: &str, d: Digest) -> String {
    format!("{}content/{d}", "../".repeat(names::depth(repo) + 1))
}

/// The variant of an error, for tables.
pub(crate) fn kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound(_) => "NotFound",
        StoreError::Exists(_) => "Exists",
        StoreError::NotReady { .. } => "NotReady",
        StoreError::InvalidName(_) => "InvalidName",
        StoreError::NameTooLong(_) => "NameTooLong",
        StoreError::NotEmpty(_) => "NotEmpty",
        StoreError::IsDir(_) => "IsDir",
        StoreError::NotDir(_) => "NotDir",
        StoreError::Invalid(_) => "Invalid",
        StoreError::Io { .. } => "Io",
    }
}

pub(crate) fn kinds<T>(r: &crate::store::Result<T>) -> std::result::Result<(), &'static str> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(kind(e)),
    }
}

pub(crate) fn rel_of(k: &DirKey) -> String {
    k.rel_path().to_string_lossy().into_owned()
}

/// The store-relative directories a change collected.
pub(crate) fn collected_rels(v: &[Collected]) -> Vec<String> {
    v.iter().map(|c| rel_of(&c.dir)).collect()
}

pub(crate) fn collected_dirs(v: &[Collected]) -> Vec<DirKey> {
    v.iter().map(|c| c.dir.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// The test-store builder.

/// The store is `<tempdir>/store`, so that its bookkeeping (`<tempdir>/.imagefs-store`)
/// goes with the temporary directory.
pub(crate) struct Fx {
    /// Removed, with the store and its bookkeeping, when the fixture goes.
    _dir: TempDir,
    root: PathBuf,
}

thread_local! {
    /// Where this thread's fixtures go, if not in the default temporary directory
    /// ([`tmp_in`]).
    static TMP_IN: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

/// Makes this thread's fixtures in `dir` (the fault tests: thousands of stores, on tmpfs,
/// where the bookkeeping's fsyncs cost nothing).
pub(crate) fn tmp_in(dir: &Path) {
    TMP_IN.with(|t| *t.borrow_mut() = Some(dir.to_path_buf()));
}

impl Fx {
    pub(crate) fn new() -> Fx {
        let dir = match TMP_IN.with(|t| t.borrow().clone()) {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let root = dir.path().join("store");
        fs::create_dir(&root).expect("mkdir store");
        Fx { _dir: dir, root }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The store's bookkeeping directory (beside the store).
    pub(crate) fn bookkeeping(&self) -> PathBuf {
        Journal::new(self.root()).dir
    }

    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub(crate) fn has(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }

    pub(crate) fn link(&self, rel: &str) -> String {
        fs::read_link(self.p(rel))
            .unwrap_or_else(|e| panic!("readlink {rel}: {e}"))
            .to_string_lossy()
            .into_owned()
    }

    /// Writes `dir/metadata.json` as hypeman does, with a field it does not know.
    pub(crate) fn metadata(&self, dir: &Path, hex: &str, status: &str, size: u64) -> &Fx {
        let md = serde_json::json!({
            "name": "test",
            "digest": format!("sha256:{hex}"),
            "status": status,
            "size_bytes": size,
            "x-unknown": {"kept": true},
        });
        fs::write(dir.join("metadata.json"), md.to_string()).expect("metadata");
        self
    }

    pub(crate) fn digest_dir(&self, rel: &str, d: Digest, status: &str) -> &Fx {
        let p = self.p(rel);
        fs::create_dir_all(&p).expect("mkdir digest");
        fs::write(p.join("rootfs.erofs"), format!("not really erofs {d}")).expect("erofs");
        self.metadata(&p, &d.hex(), status, 42)
    }

    /// `content/<hex>/` with the given status.
    pub(crate) fn content(&self, n: u8, status: &str) -> &Fx {
        self.digest_dir(&format!("{CONTENT}/{}", hex(n)), dg(n), status)
    }

    /// Legacy `<repo>/<hex>/` with the given status.
    pub(crate) fn legacy(&self, repo: &str, n: u8, status: &str) -> &Fx {
        self.digest_dir(&format!("{repo}/{}", hex(n)), dg(n), status)
    }

    /// `repositories/<repo>/<tag>` -> `../` x (depth+1) + `content/<hex>`.
    pub(crate) fn ctag(&self, repo: &str, tag: &str, n: u8) -> &Fx {
        self.ctag_hex(repo, tag, &hex(n))
    }

    /// Legacy `<repo>/<tag>` -> `<hex>`.
    pub(crate) fn ltag(&self, repo: &str, tag: &str, n: u8) -> &Fx {
        self.ltag_hex(repo, tag, &hex(n))
    }

    /// [`Fx::ctag`] of any digest, given as hex (it need not be in the store).
    pub(crate) fn ctag_hex(&self, repo: &str, tag: &str, hex: &str) -> &Fx {
        let dir = self.p(&format!("{REPOSITORIES}/{repo}"));
        fs::create_dir_all(&dir).expect("mkdir repo");
        let text = format!("{}{CONTENT}/{hex}", "../".repeat(names::depth(repo) + 1));
        symlink(text, dir.join(tag)).expect("ctag");
        self
    }

    /// [`Fx::ltag`] of any digest, given as hex.
    pub(crate) fn ltag_hex(&self, repo: &str, tag: &str, hex: &str) -> &Fx {
        let dir = self.p(repo);
        fs::create_dir_all(&dir).expect("mkdir repo");
        symlink(hex, dir.join(tag)).expect("ltag");
        self
    }

    /// `<sub>/` of the bookkeeping directory, created if missing.
    pub(crate) fn private(&self, sub: &str) -> PathBuf {
        let p = self.bookkeeping().join(sub);
        fs::create_dir_all(&p).expect("mkdir private");
        p
    }

    /// The names in `<sub>/` of the bookkeeping directory, sorted (none if it is missing).
    pub(crate) fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.bookkeeping().join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub(crate) fn mkdirs(&self, rel: &str) -> &Fx {
        fs::create_dir_all(self.p(rel)).expect("mkdir");
        self
    }

    /// Runs `f` as another writer of the store does: under the store's writer lock.
    pub(crate) fn other_writer(&self, f: impl FnOnce(&Fx)) -> &Fx {
        let _l = crate::store::lockfile::StoreLock::acquire(self.root()).expect("lock");
        f(self);
        self
    }

    pub(crate) fn intents(&self) -> PathBuf {
        self.private("intents")
    }

    /// A GC intent as this version writes it for the directory `dir` as it is now (its
    /// identity); for a directory that does not exist, or a path that names none, a record
    /// of the older form (which names no identity).
    pub(crate) fn gc_intent(&self, id: &str, dir: &str) -> &Fx {
        let path = self.p(dir);
        match DirKey::from_rel_path(dir) {
            Some(key) if path.is_dir() => {
                let id = DirId::of(&path).expect("identity");
                self.intents();
                Journal::new(self.root())
                    .record_gc(&key, &id)
                    .expect("gc intent");
                self
            }
            _ => self.old_gc_intent(id, dir),
        }
    }

    /// A GC intent of an older imagefs: `intents/<id>.gc -> <dir>`, no identity.
    pub(crate) fn old_gc_intent(&self, id: &str, dir: &str) -> &Fx {
        symlink(dir, self.intents().join(format!("{id}.gc"))).expect("gc intent");
        self
    }

    /// A JSON intent record (`promote`, `move`, `exchange`, `relink`).
    pub(crate) fn json_intent(&self, id: &str, v: serde_json::Value) -> &Fx {
        fs::write(self.intents().join(format!("{id}.json")), v.to_string()).expect("intent");
        self
    }

    pub(crate) fn open(&self) -> Store {
        Store::open(self.root(), OPTS).expect("open")
    }
}

/// The store most table tests start from.
///
/// content: 1 ready, 2 ready, 3 pending, 4 pulling, 5 converting, 6 failed, 7 ready (never
/// tagged); legacy `l`: 8 ready, 9 ready (never tagged). Repository directory `b/c` is empty.
pub(crate) fn base() -> Fx {
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .content(3, "pending")
        .content(4, "pulling")
        .content(5, "converting")
        .content(6, "failed")
        .content(7, "ready")
        .legacy("l", 8, "ready")
        .legacy("l", 9, "ready")
        .ctag("docker.io/library/alpine", "latest", 1)
        .ctag("a", "one", 1)
        .ctag("a", "two", 2)
        .ctag("a", "pend", 3)
        .ctag("a", "pull", 4)
        .ctag("a", "conv", 5)
        .ctag("a", "fail", 6)
        .ltag("l", "old", 8)
        .ltag("l", "old2", 8)
        .mkdirs(&format!("{REPOSITORIES}/b/c"));
    fx
}

// ---------------------------------------------------------------------------------------
// The independent on-disk checker.

pub(crate) type TagMap = BTreeMap<(String, String), (bool, Digest)>;

/// What the disk holds. `tags`: (repo, tag) -> (content layout?, digest).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Disk {
    pub(crate) tags: TagMap,
    pub(crate) dirs: BTreeSet<String>,
    pub(crate) repos: BTreeSet<(String, bool)>,
}

/// Walks a store that holds no junk, asserting that every tag's text is canonical and
/// resolves to a digest directory, and that no temporary file, intent or trash is left.
pub(crate) fn walk_disk(root: &Path) -> Disk {
    let mut disk = Disk::default();
    if let Ok(rd) = fs::read_dir(root.join(CONTENT)) {
        for e in rd {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            assert!(
                e.file_type().expect("type").is_dir() && Digest::parse_hex(&name).is_some(),
                "stray entry content/{name}"
            );
            disk.dirs.insert(format!("{CONTENT}/{name}"));
        }
    }
    let repos = root.join(REPOSITORIES);
    if repos.is_dir() {
        walk_tree(root, &repos, "", true, &mut disk);
    }
    walk_tree(root, root, "", false, &mut disk);
    for sub in ["intents", "trash"] {
        let p = Journal::new(root).dir.join(sub);
        if let Ok(rd) = fs::read_dir(&p) {
            let left: Vec<_> = rd.map(|e| e.expect("entry").file_name()).collect();
            assert!(left.is_empty(), "{} not empty: {left:?}", p.display());
        }
    }
    assert!(
        !root.join(PRIVATE).exists(),
        "bookkeeping inside the store, where hypeman's listings see it"
    );
    disk
}

pub(crate) fn walk_tree(root: &Path, dir: &Path, repo: &str, content: bool, disk: &mut Disk) {
    for e in fs::read_dir(dir).expect("readdir") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf-8 name");
        let ft = e.file_type().expect("type");
        let path = e.path();
        if !content && repo.is_empty() && [CONTENT, REPOSITORIES, PRIVATE].contains(&&*name) {
            continue;
        }
        if ft.is_dir() {
            if !content && !repo.is_empty() && Digest::parse_hex(&name).is_some() {
                disk.dirs.insert(format!("{repo}/{name}"));
                continue;
            }
            let sub = names::join(repo, &name);
            assert!(names::check_repo(&sub).is_ok(), "bad repo dir {path:?}");
            disk.repos.insert((sub.clone(), content));
            walk_tree(root, &path, &sub, content, disk);
        } else if ft.is_symlink() {
            assert!(!repo.is_empty(), "tag at the root: {path:?}");
            assert!(
                names::check_tag(name.as_bytes()).is_ok(),
                "not a tag name (leftover temporary?): {path:?}"
            );
            let text = fs::read_link(&path).expect("readlink");
            let text = text.to_str().expect("utf-8 target");
            let hex = text.rsplit('/').next().unwrap_or("");
            let d = Digest::parse_hex(hex).unwrap_or_else(|| panic!("{path:?} -> {text}"));
            let (want, dir) = if content {
                (content_text(repo, d), root.join(CONTENT).join(hex))
            } else {
                (d.hex(), root.join(repo).join(hex))
            };
            assert_eq!(text, want, "non-canonical symlink text of {path:?}");
            let resolved = fs::canonicalize(&path)
                .unwrap_or_else(|e| panic!("{path:?} -> {text} does not resolve: {e}"));
            assert_eq!(
                resolved,
                dir.canonicalize().expect("digest dir"),
                "{path:?}"
            );
            assert!(path.join("metadata.json").is_file(), "{path:?}");
            let prev = disk
                .tags
                .insert((repo.to_string(), name.clone()), (content, d));
            assert!(prev.is_none(), "tag {repo}:{name} in both layouts");
        } else {
            panic!("stray file {path:?}");
        }
    }
}

/// The index, in the same shape as [`Disk`], plus reference counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snap {
    pub(crate) tags: TagMap,
    pub(crate) dirs: BTreeMap<String, u32>,
    pub(crate) repos: BTreeSet<(String, bool)>,
}

pub(crate) fn snap(store: &Store) -> Snap {
    let ix = store.index();
    let mut s = Snap {
        tags: BTreeMap::new(),
        dirs: BTreeMap::new(),
        repos: BTreeSet::new(),
    };
    for (path, node) in ix.nodes() {
        if !path.is_empty() {
            if node.content {
                s.repos.insert((path.clone(), true));
            }
            if node.legacy {
                s.repos.insert((path.clone(), false));
            }
        }
        for (tag, t) in &node.tags {
            let content = t.layout == Layout::Content;
            match &*t.key {
                DirKey::Content(_) => assert!(content, "{path}:{tag} {t:?}"),
                DirKey::Legacy(r, _) => assert!(!content && r == path, "{path}:{tag} {t:?}"),
            }
            s.tags
                .insert((path.clone(), tag.to_string()), (content, t.key.digest()));
        }
    }
    for (k, n) in ix.dir_keys() {
        s.dirs.insert(rel_of(k), n);
    }
    s
}

/// Asserts that the disk is clean and canonical and that the index agrees with it.
pub(crate) fn check(store: &Store) -> Snap {
    let disk = walk_disk(store.root());
    let s = snap(store);
    assert_eq!(s.tags, disk.tags, "index tags vs disk");
    let dirs: BTreeSet<String> = s.dirs.keys().cloned().collect();
    assert_eq!(dirs, disk.dirs, "index digest dirs vs disk");
    for (dir, n) in &s.dirs {
        let count = disk
            .tags
            .iter()
            .filter(|((repo, _), (c, d))| {
                *dir == if *c {
                    format!("{CONTENT}/{d}")
                } else {
                    format!("{repo}/{d}")
                }
            })
            .count();
        assert_eq!(*n as usize, count, "reference count of {dir}");
    }
    assert_eq!(s.repos, disk.repos, "index repository dirs vs disk");
    s
}

/// Checks, then reopens the store and checks that it comes back the same.
pub(crate) fn check_reopen(fx: &Fx, store: Store) -> Store {
    let before = check(&store);
    drop(store);
    let store = fx.open();
    assert_eq!(check(&store), before, "state after reopening");
    store
}
