//! Tests of the store layer as a whole: operations with their exact errors, mount-time
//! repair of interrupted changes, a model-based property test and a concurrency test.
//!
//! Every test builds its store by hand in a temporary directory (see [`Fx`]) and checks the
//! result on disk with an independent walker ([`walk_disk`]): tag symlinks must carry their
//! canonical text and resolve, nothing may be left in `.imagefs/{intents,trash}`, and the
//! store's index must agree with the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tempfile::TempDir;

use super::layout::{CONTENT, PRIVATE, REPOSITORIES};
use super::names::{self, Digest};
use super::{Collected, DirKey, Layout, Options, RenameMode, Store, StoreError, Target};

const OPTS: Options = Options { durable: false };

/// A digest whose 32 bytes are all `n` (so its hex is `n` as two digits, 32 times).
fn dg(n: u8) -> Digest {
    Digest::from_bytes([n; 32])
}

fn hex(n: u8) -> String {
    dg(n).hex()
}

/// The canonical text of a content-layout tag of `repo`.
fn content_text(repo: &str, d: Digest) -> String {
    format!("{}content/{d}", "../".repeat(names::depth(repo) + 1))
}

/// The variant of an error, for tables.
fn kind(e: &StoreError) -> &'static str {
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

fn kinds<T>(r: &super::Result<T>) -> std::result::Result<(), &'static str> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(kind(e)),
    }
}

fn rel_of(k: &DirKey) -> String {
    k.rel_path().to_string_lossy().into_owned()
}

fn collected_rel(c: &Collected) -> String {
    rel_of(&c.dir)
}

fn collected_dirs(v: &[Collected]) -> Vec<DirKey> {
    v.iter().map(|c| c.dir.clone()).collect()
}

// ---------------------------------------------------------------------------------------
// The test-store builder.

struct Fx {
    dir: TempDir,
}

impl Fx {
    fn new() -> Fx {
        Fx {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn has(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }

    fn link(&self, rel: &str) -> String {
        fs::read_link(self.p(rel))
            .unwrap_or_else(|e| panic!("readlink {rel}: {e}"))
            .to_string_lossy()
            .into_owned()
    }

    fn digest_dir(&self, rel: &str, d: Digest, status: &str) -> &Fx {
        let p = self.p(rel);
        fs::create_dir_all(&p).expect("mkdir digest");
        fs::write(p.join("rootfs.erofs"), format!("not really erofs {d}")).expect("erofs");
        let md = serde_json::json!({
            "name": "test",
            "digest": format!("sha256:{d}"),
            "status": status,
            "size_bytes": 42,
            "x-unknown": {"kept": true},
        });
        fs::write(p.join("metadata.json"), md.to_string()).expect("metadata");
        self
    }

    /// `content/<hex>/` with the given status.
    fn content(&self, n: u8, status: &str) -> &Fx {
        self.digest_dir(&format!("{CONTENT}/{}", hex(n)), dg(n), status)
    }

    /// Legacy `<repo>/<hex>/` with the given status.
    fn legacy(&self, repo: &str, n: u8, status: &str) -> &Fx {
        self.digest_dir(&format!("{repo}/{}", hex(n)), dg(n), status)
    }

    /// `repositories/<repo>/<tag>` -> `../` x (depth+1) + `content/<hex>`.
    fn ctag(&self, repo: &str, tag: &str, n: u8) -> &Fx {
        let dir = self.p(&format!("{REPOSITORIES}/{repo}"));
        fs::create_dir_all(&dir).expect("mkdir repo");
        symlink(content_text(repo, dg(n)), dir.join(tag)).expect("ctag");
        self
    }

    /// Legacy `<repo>/<tag>` -> `<hex>`.
    fn ltag(&self, repo: &str, tag: &str, n: u8) -> &Fx {
        let dir = self.p(repo);
        fs::create_dir_all(&dir).expect("mkdir repo");
        symlink(hex(n), dir.join(tag)).expect("ltag");
        self
    }

    fn mkdirs(&self, rel: &str) -> &Fx {
        fs::create_dir_all(self.p(rel)).expect("mkdir");
        self
    }

    fn intents(&self) -> PathBuf {
        let p = self.p(&format!("{PRIVATE}/intents"));
        fs::create_dir_all(&p).expect("mkdir intents");
        p
    }

    /// A GC intent as `Journal::record` writes it: `intents/<id>.gc -> <dir>`.
    fn gc_intent(&self, id: &str, dir: &str) -> &Fx {
        symlink(dir, self.intents().join(format!("{id}.gc"))).expect("gc intent");
        self
    }

    /// A JSON intent record (`promote`, `move`, `exchange`, `relink`).
    fn json_intent(&self, id: &str, v: serde_json::Value) -> &Fx {
        fs::write(self.intents().join(format!("{id}.json")), v.to_string()).expect("intent");
        self
    }

    fn open(&self) -> Store {
        Store::open(self.root(), OPTS).expect("open")
    }
}

/// The store most table tests start from.
///
/// content: 1 ready, 2 ready, 3 pending, 4 pulling, 5 converting, 6 failed, 7 ready (never
/// tagged); legacy `l`: 8 ready, 9 ready (never tagged). Repository directory `b/c` is empty.
fn base() -> Fx {
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

type TagMap = BTreeMap<(String, String), (bool, Digest)>;

/// What the disk holds. `tags`: (repo, tag) -> (content layout?, digest).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Disk {
    tags: TagMap,
    dirs: BTreeSet<String>,
    repos: BTreeSet<(String, bool)>,
}

/// Walks a store that holds no junk, asserting that every tag's text is canonical and
/// resolves to a digest directory, and that no temporary file, intent or trash is left.
fn walk_disk(root: &Path) -> Disk {
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
        let p = root.join(PRIVATE).join(sub);
        if let Ok(rd) = fs::read_dir(&p) {
            let left: Vec<_> = rd.map(|e| e.expect("entry").file_name()).collect();
            assert!(left.is_empty(), ".imagefs/{sub} not empty: {left:?}");
        }
    }
    disk
}

fn walk_tree(root: &Path, dir: &Path, repo: &str, content: bool, disk: &mut Disk) {
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
struct Snap {
    tags: TagMap,
    dirs: BTreeMap<String, u32>,
    repos: BTreeSet<(String, bool)>,
}

fn snap(store: &Store) -> Snap {
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
            match &t.key {
                DirKey::Content(_) => assert!(content, "{path}:{tag} {t:?}"),
                DirKey::Legacy(r, _) => assert!(!content && r == path, "{path}:{tag} {t:?}"),
            }
            s.tags
                .insert((path.clone(), tag.clone()), (content, t.key.digest()));
        }
    }
    for (k, n) in ix.dir_keys() {
        s.dirs.insert(rel_of(k), n);
    }
    s
}

/// Asserts that the disk is clean and canonical and that the index agrees with it.
fn check(store: &Store) -> Snap {
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
fn check_reopen(fx: &Fx, store: Store) -> Store {
    let before = check(&store);
    drop(store);
    let store = fx.open();
    assert_eq!(check(&store), before, "state after reopening");
    store
}

// ---------------------------------------------------------------------------------------
// Operations, table-driven.

#[test]
fn create_tag_results_and_errors() {
    let long = |n: usize| "x".repeat(n).into_bytes();
    let tgt = |n: u8| Target::Digest(dg(n));
    let tag = |r: &str, t: &str| Target::Tag {
        repo: r.into(),
        tag: t.into(),
    };
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        Target,
        Result<u8, &'static str>,
    );
    let cases: Vec<Case> = vec![
        ("from_digest", "a", b"new".to_vec(), tgt(2), Ok(2)),
        ("from_tag", "b/c", b"x".to_vec(), tag("a", "two"), Ok(2)),
        (
            "from_deep_tag",
            "a",
            b"y".to_vec(),
            tag("docker.io/library/alpine", "latest"),
            Ok(1),
        ),
        ("never_tagged_digest", "a", b"n".to_vec(), tgt(7), Ok(7)),
        ("max_len_tag", "a", long(128), tgt(1), Ok(1)),
        (
            "content_digest_in_legacy_repo",
            "l",
            b"c".to_vec(),
            tgt(1),
            Ok(1),
        ),
        (
            "legacy_digest_in_own_repo",
            "l",
            b"n".to_vec(),
            tgt(8),
            Ok(8),
        ),
        (
            "never_tagged_legacy_in_own_repo",
            "l",
            b"n".to_vec(),
            tgt(9),
            Ok(9),
        ),
        (
            "unknown_digest",
            "a",
            b"n".to_vec(),
            tgt(0xee),
            Err("NotFound"),
        ),
        (
            "unknown_tag",
            "a",
            b"n".to_vec(),
            tag("a", "nope"),
            Err("NotFound"),
        ),
        (
            "unknown_repo_of_tag",
            "a",
            b"n".to_vec(),
            tag("zz", "one"),
            Err("NotFound"),
        ),
        (
            "missing_repo_dir",
            "zz",
            b"n".to_vec(),
            tgt(1),
            Err("NotFound"),
        ),
        ("pending", "a", b"n".to_vec(), tgt(3), Err("NotReady")),
        ("pulling", "a", b"n".to_vec(), tgt(4), Err("NotReady")),
        ("converting", "a", b"n".to_vec(), tgt(5), Err("NotReady")),
        ("failed", "a", b"n".to_vec(), tgt(6), Err("NotReady")),
        (
            "tag_of_pending",
            "b/c",
            b"n".to_vec(),
            tag("a", "pend"),
            Err("NotReady"),
        ),
        (
            "uppercase_repo",
            "A",
            b"n".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        (
            "empty_component",
            "a//b",
            b"n".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        ("dot_tag", "a", b".n".to_vec(), tgt(1), Err("InvalidName")),
        (
            "colon_tag",
            "a",
            b"a:b".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        ("empty_tag", "a", b"".to_vec(), tgt(1), Err("InvalidName")),
        (
            "non_utf8_tag",
            "a",
            vec![b'a', 0xff],
            tgt(1),
            Err("InvalidName"),
        ),
        ("tag_129_bytes", "a", long(129), tgt(1), Err("NameTooLong")),
        ("at_the_root", "", b"n".to_vec(), tgt(1), Err("Invalid")),
        ("existing_tag", "a", b"one".to_vec(), tgt(2), Err("Exists")),
        (
            "existing_same_digest",
            "a",
            b"one".to_vec(),
            tgt(1),
            Err("Exists"),
        ),
        (
            "existing_legacy_tag",
            "l",
            b"old".to_vec(),
            tgt(1),
            Err("Exists"),
        ),
        ("existing_dir", "b", b"c".to_vec(), tgt(1), Err("Exists")),
    ];
    for (name, repo, t, target, want) in cases {
        let fx = base();
        let store = fx.open();
        let before = check(&store);
        let got = store.create_tag(repo, &t, &target);
        match want {
            Ok(n) => {
                assert_eq!(got.expect(name), dg(n), "{name}");
                let t = String::from_utf8(t).expect("utf-8");
                let s = check(&store);
                let legacy = n >= 8 && repo == "l";
                assert_eq!(
                    s.tags.get(&(repo.to_string(), t.clone())),
                    Some(&(!legacy, dg(n))),
                    "{name}"
                );
                let text = if legacy {
                    fx.link(&format!("{repo}/{t}"))
                } else {
                    fx.link(&format!("{REPOSITORIES}/{repo}/{t}"))
                };
                let want_text = if legacy {
                    hex(n)
                } else {
                    content_text(repo, dg(n))
                };
                assert_eq!(text, want_text, "{name}");
            }
            Err(k) => {
                assert_eq!(kinds(&got), Err(k), "{name}: {got:?}");
                assert_eq!(check(&store), before, "{name}: a refusal changed the store");
            }
        }
        check_reopen(&fx, store);
    }
}

#[test]
fn create_tag_in_another_repo_promotes_a_legacy_digest() {
    for (name, target) in [
        ("by_digest", Target::Digest(dg(8))),
        (
            "by_tag",
            Target::Tag {
                repo: "l".into(),
                tag: "old".into(),
            },
        ),
    ] {
        let fx = base();
        let store = fx.open();
        assert_eq!(store.create_tag("a", b"p", &target).expect(name), dg(8));
        assert!(fx.has(&format!("{CONTENT}/{}", hex(8))), "{name}");
        assert!(!fx.has(&format!("l/{}", hex(8))), "{name}");
        assert!(
            fx.has(&format!("l/{}", hex(9))),
            "{name}: 9 is not promoted"
        );
        for t in ["old", "old2"] {
            assert!(!fx.has(&format!("l/{t}")), "{name}: legacy l/{t} rewritten");
            assert_eq!(
                fx.link(&format!("{REPOSITORIES}/l/{t}")),
                content_text("l", dg(8)),
                "{name}"
            );
        }
        let s = check(&store);
        assert_eq!(s.dirs.get(&format!("{CONTENT}/{}", hex(8))), Some(&3));
        check_reopen(&fx, store);
    }
}

#[test]
fn remove_tag_collects_exactly_the_last_reference_of_finished_digests() {
    // (tags removed in order, the collected dirs each removal returns)
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str)>,
        Vec<Vec<String>>,
    );
    let c = |n: u8| format!("{CONTENT}/{}", hex(n));
    let cases: Vec<Case> = vec![
        ("non_last_keeps_dir", vec![("a", "one")], vec![vec![]]),
        (
            "last_of_ready_collects",
            vec![("a", "two")],
            vec![vec![c(2)]],
        ),
        (
            "last_of_failed_collects",
            vec![("a", "fail")],
            vec![vec![c(6)]],
        ),
        ("last_of_pending_keeps", vec![("a", "pend")], vec![vec![]]),
        ("last_of_pulling_keeps", vec![("a", "pull")], vec![vec![]]),
        (
            "last_of_converting_keeps",
            vec![("a", "conv")],
            vec![vec![]],
        ),
        (
            "shared_across_repos",
            vec![("a", "one"), ("docker.io/library/alpine", "latest")],
            vec![vec![], vec![c(1)]],
        ),
        (
            "legacy_last_collects",
            vec![("l", "old"), ("l", "old2")],
            vec![vec![], vec![format!("l/{}", hex(8))]],
        ),
    ];
    for (name, removals, want) in cases {
        let fx = base();
        let store = fx.open();
        for ((repo, tag), want) in removals.iter().zip(want) {
            let got = store.remove_tag(repo, tag).expect(name);
            let got: Vec<String> = got.iter().map(collected_rel).collect();
            assert_eq!(got, want, "{name}: rm {repo}:{tag}");
            // Collected before returning.
            for dir in &got {
                assert!(!fx.has(dir), "{name}: {dir} still there");
            }
            check(&store);
        }
        // Never-tagged digests are never touched by unlink.
        assert!(fx.has(&c(7)) && fx.has(&format!("l/{}", hex(9))), "{name}");
        check_reopen(&fx, store);
    }
}

#[test]
fn remove_tag_of_a_missing_tag_is_not_found() {
    let fx = base();
    let store = fx.open();
    let before = check(&store);
    for (repo, tag) in [("a", "nope"), ("zz", "one"), ("", "a"), ("b", "c")] {
        let r = store.remove_tag(repo, tag);
        assert_eq!(kinds(&r), Err("NotFound"), "{repo}:{tag}");
    }
    assert_eq!(check(&store), before);
}

#[test]
fn remove_every_tag_leaves_only_unfinished_and_never_tagged_digests() {
    let fx = base();
    let store = fx.open();
    let all: Vec<(String, String)> = snap(&store).tags.keys().cloned().collect();
    for (repo, tag) in &all {
        store.remove_tag(repo, tag).expect("rm");
        check(&store);
    }
    let store = check_reopen(&fx, store);
    let s = snap(&store);
    let left: BTreeSet<String> = s.dirs.keys().cloned().collect();
    let want = BTreeSet::from([
        format!("{CONTENT}/{}", hex(3)),
        format!("{CONTENT}/{}", hex(4)),
        format!("{CONTENT}/{}", hex(5)),
        format!("{CONTENT}/{}", hex(7)),
        format!("l/{}", hex(9)),
    ]);
    assert_eq!(left, want);
}

#[test]
fn rename_tag_results_and_errors() {
    use RenameMode::{Exchange, NoReplace, Replace};
    let c = |n: u8| format!("{CONTENT}/{}", hex(n));
    // (name, from, to, mode, expected collected dirs or error, tags afterwards)
    type Case = (
        &'static str,
        (&'static str, &'static str),
        (&'static str, &'static str),
        RenameMode,
        Result<Vec<String>, &'static str>,
        Vec<(&'static str, &'static str, Option<u8>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "plain",
            ("a", "two"),
            ("a", "three"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "three", Some(2))],
        ),
        (
            "noreplace_to_free_name",
            ("a", "two"),
            ("a", "three"),
            NoReplace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "three", Some(2))],
        ),
        (
            "same_name_is_a_no_op",
            ("a", "two"),
            ("a", "two"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", Some(2))],
        ),
        (
            "over_existing_shared",
            ("a", "two"),
            ("a", "one"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "one", Some(2))],
        ),
        (
            "over_existing_last_collects_replaced",
            ("a", "one"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![("a", "one", None), ("a", "two", Some(1))],
        ),
        (
            "over_existing_same_digest",
            ("a", "one"),
            ("docker.io/library/alpine", "latest"),
            Replace,
            Ok(vec![]),
            vec![
                ("a", "one", None),
                ("docker.io/library/alpine", "latest", Some(1)),
            ],
        ),
        (
            "over_pending_last_keeps_it",
            ("a", "one"),
            ("a", "pend"),
            Replace,
            Ok(vec![]),
            vec![("a", "pend", Some(1))],
        ),
        (
            "noreplace_existing",
            ("a", "two"),
            ("a", "one"),
            NoReplace,
            Err("Exists"),
            vec![],
        ),
        (
            "exchange_swaps",
            ("a", "one"),
            ("a", "two"),
            Exchange,
            Ok(vec![]),
            vec![("a", "one", Some(2)), ("a", "two", Some(1))],
        ),
        (
            "exchange_across_depths",
            ("a", "two"),
            ("docker.io/library/alpine", "latest"),
            Exchange,
            Ok(vec![]),
            vec![
                ("a", "two", Some(1)),
                ("docker.io/library/alpine", "latest", Some(2)),
            ],
        ),
        (
            "exchange_with_missing",
            ("a", "two"),
            ("a", "nope"),
            Exchange,
            Err("NotFound"),
            vec![],
        ),
        (
            "across_repos_of_other_depth",
            ("a", "two"),
            ("b/c", "two"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("b/c", "two", Some(2))],
        ),
        (
            "deep_to_shallow_over_last",
            ("docker.io/library/alpine", "latest"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![
                ("docker.io/library/alpine", "latest", None),
                ("a", "two", Some(1)),
            ],
        ),
        (
            "legacy_within_its_repo",
            ("l", "old"),
            ("l", "new"),
            Replace,
            Ok(vec![]),
            vec![("l", "old", None), ("l", "new", Some(8))],
        ),
        (
            "content_over_legacy_not_last",
            ("a", "two"),
            ("l", "old2"),
            Replace,
            Ok(vec![]),
            vec![("l", "old2", Some(2)), ("l", "old", Some(8))],
        ),
        (
            "legacy_over_content_in_same_repo",
            ("l", "old"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![
                ("l", "old", None),
                ("l", "old2", Some(8)),
                ("a", "two", Some(8)),
            ],
        ),
        (
            "missing_source",
            ("a", "nope"),
            ("a", "x"),
            Replace,
            Err("NotFound"),
            vec![],
        ),
        (
            "missing_repo",
            ("a", "two"),
            ("zz", "x"),
            Replace,
            Err("NotFound"),
            vec![],
        ),
        (
            "onto_a_directory",
            ("a", "two"),
            ("b", "c"),
            Replace,
            Err("IsDir"),
            vec![],
        ),
        (
            "invalid_name",
            ("a", "two"),
            ("a", "-x"),
            Replace,
            Err("InvalidName"),
            vec![],
        ),
        (
            "invalid_repo",
            ("a", "two"),
            ("A", "x"),
            Replace,
            Err("InvalidName"),
            vec![],
        ),
        (
            "to_the_root",
            ("a", "two"),
            ("", "x"),
            Replace,
            Err("Invalid"),
            vec![],
        ),
    ];
    for (name, from, to, mode, want, after) in cases {
        let fx = base();
        let store = fx.open();
        let before = check(&store);
        let got = store.rename_tag(from, to.0, to.1.as_bytes(), mode);
        match want {
            Ok(dirs) => {
                let got: Vec<String> = got
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
                    .iter()
                    .map(collected_rel)
                    .collect();
                assert_eq!(got, dirs, "{name}");
                for d in &dirs {
                    assert!(!fx.has(d), "{name}: {d} left");
                }
                let s = check(&store);
                for (repo, tag, n) in after {
                    let got = s.tags.get(&(repo.into(), tag.into())).map(|t| t.1);
                    assert_eq!(got, n.map(dg), "{name}: {repo}:{tag}");
                }
            }
            Err(k) => {
                assert_eq!(kinds(&got), Err(k), "{name}: {got:?}");
                assert_eq!(check(&store), before, "{name}: a refusal changed the store");
            }
        }
        check_reopen(&fx, store);
    }
    // 129 bytes.
    let fx = base();
    let store = fx.open();
    let r = store.rename_tag(("a", "two"), "a", &[b'x'; 129], RenameMode::Replace);
    assert_eq!(kinds(&r), Err("NameTooLong"));
}

#[test]
fn rename_rewrites_symlink_text_for_the_new_depth() {
    let fx = base();
    let store = fx.open();
    store
        .rename_tag(("a", "two"), "b/c", b"two", RenameMode::Replace)
        .expect("mv");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/b/c/two")),
        format!("../../../content/{}", hex(2))
    );
    store
        .rename_tag(
            ("b/c", "two"),
            "docker.io/library/alpine",
            b"two",
            RenameMode::Replace,
        )
        .expect("mv");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/docker.io/library/alpine/two")),
        format!("../../../../content/{}", hex(2))
    );
    store
        .rename_tag(
            ("docker.io/library/alpine", "two"),
            "a",
            b"one",
            RenameMode::Exchange,
        )
        .expect("exchange");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/a/one")),
        format!("../../content/{}", hex(2))
    );
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/docker.io/library/alpine/two")),
        format!("../../../../content/{}", hex(1))
    );
    check_reopen(&fx, store);
}

#[test]
fn legacy_tag_moved_or_exchanged_into_another_repo_promotes_its_digest() {
    use RenameMode::{Exchange, Replace};
    for (name, to, mode) in [
        ("rename", ("a", "moved"), Replace),
        ("rename_over", ("a", "two"), Replace),
        ("exchange", ("a", "two"), Exchange),
        ("rename_deep", ("b/c", "x"), Replace),
    ] {
        let fx = base();
        let store = fx.open();
        store
            .rename_tag(("l", "old"), to.0, to.1.as_bytes(), mode)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(fx.has(&format!("{CONTENT}/{}", hex(8))), "{name}");
        assert!(!fx.has(&format!("l/{}", hex(8))), "{name}");
        assert!(!fx.has("l/old2"), "{name}");
        assert_eq!(
            fx.link(&format!("{REPOSITORIES}/l/old2")),
            content_text("l", dg(8)),
            "{name}"
        );
        let s = check(&store);
        assert_eq!(s.tags[&(to.0.into(), to.1.into())], (true, dg(8)), "{name}");
        if mode == Exchange {
            assert_eq!(s.tags[&("l".into(), "old".into())], (true, dg(2)), "{name}");
        }
        check_reopen(&fx, store);
    }
}

#[test]
fn moving_a_legacy_tag_away_drops_the_reference_to_its_legacy_dir() {
    // The digest lives both in content/ and in l/: a tag of l naming l/<hex> that moves to
    // another repository names content/<hex> afterwards, so l/<hex> loses a reference.
    for mode in [RenameMode::Replace, RenameMode::Exchange] {
        let fx = Fx::new();
        fx.content(1, "ready")
            .content(8, "ready")
            .legacy("l", 8, "ready")
            .ltag("l", "old", 8)
            .ctag("a", "one", 1);
        let store = fx.open();
        let to = if mode == RenameMode::Exchange {
            "one"
        } else {
            "new"
        };
        store
            .rename_tag(("l", "old"), "a", to.as_bytes(), mode)
            .expect("mv");
        let s = check(&store);
        assert_eq!(s.tags[&("a".into(), to.into())], (true, dg(8)));
        assert!(
            !fx.has(&format!("l/{}", hex(8))),
            "{mode:?}: l/<hex> lost its last tag but was left behind: {:?}",
            s.dirs
        );
        check_reopen(&fx, store);
    }
}

#[test]
fn repository_directories() {
    let fx = base();
    let store = fx.open();
    let e = |r: super::Result<()>| kinds(&r);
    assert_eq!(e(store.mkdir("", b"x", 0o755, uid(), gid())), Ok(()));
    assert!(fx.p(&format!("{REPOSITORIES}/x")).is_dir());
    assert_eq!(e(store.mkdir("", b"x", 0o755, uid(), gid())), Err("Exists"));
    assert_eq!(e(store.mkdir("x", b"y", 0o750, uid(), gid())), Ok(()));
    let mode = fs::metadata(fx.p(&format!("{REPOSITORIES}/x/y")))
        .expect("stat")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o750
    );
    assert_eq!(
        e(store.mkdir("", b"localhost:5000", 0o755, uid(), gid())),
        Ok(())
    );
    assert_eq!(
        e(store.mkdir("x", b"a:1", 0o755, uid(), gid())),
        Err("InvalidName")
    );
    assert_eq!(
        e(store.mkdir("x", b"Y", 0o755, uid(), gid())),
        Err("InvalidName")
    );
    assert_eq!(
        e(store.mkdir("nope", b"y", 0o755, uid(), gid())),
        Err("NotFound")
    );
    assert_eq!(
        e(store.mkdir("a", b"one", 0o755, uid(), gid())),
        Err("Exists")
    );
    let deep = "a".repeat(240);
    assert_eq!(
        e(store.mkdir(
            "docker.io/library/alpine",
            deep.as_bytes(),
            0o755,
            uid(),
            gid()
        )),
        Err("NameTooLong")
    );
    check(&store);

    assert_eq!(e(store.rmdir("a")), Err("NotEmpty"));
    assert_eq!(e(store.rmdir("a/one")), Err("NotDir"));
    assert_eq!(e(store.rmdir("nope")), Err("NotFound"));
    assert_eq!(e(store.rmdir("")), Err("Invalid"));
    assert_eq!(e(store.rmdir("b")), Err("NotEmpty"));
    assert_eq!(e(store.rmdir("b/c")), Ok(()));
    assert_eq!(e(store.rmdir("b")), Ok(()));
    assert!(!fx.has(&format!("{REPOSITORIES}/b")));
    // A legacy repository whose directory still holds a digest directory.
    for t in ["old", "old2"] {
        store.remove_tag("l", t).expect("rm");
    }
    // The mount shows it empty, so rmdir succeeds; the never-tagged digest directory stays
    // in the store (only `imagefs gc` collects it), so a reopen shows the repository again.
    assert_eq!(e(store.rmdir("l")), Ok(()));
    assert!(store.index().node("l").is_none());
    assert!(fx.has(&format!("l/{}", dg(9))), "l/<hex of 9> must stay");
    drop(store);
    let store = fx.open();
    assert!(store.index().node("l").is_some());
    check(&store);

    // rename_dir: same depth, depth change (relink), legacy, errors.
    let rd = |from: &str, p: &str, n: &str, m: RenameMode| {
        kinds(&store.rename_dir(from, p, n.as_bytes(), m))
    };
    assert_eq!(rd("a", "", "q", RenameMode::Replace), Ok(()));
    check(&store);
    assert_eq!(rd("q", "x/y", "q", RenameMode::NoReplace), Ok(()));
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/x/y/q/one")),
        content_text("x/y/q", dg(1))
    );
    check(&store);
    assert_eq!(rd("x/y/q", "", "a", RenameMode::Replace), Ok(()));
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/a/one")),
        content_text("a", dg(1))
    );
    check(&store);
    assert_eq!(rd("a", "", "x", RenameMode::NoReplace), Err("Exists"));
    assert_eq!(rd("a", "x", "y", RenameMode::Exchange), Err("Invalid"));
    assert_eq!(rd("x", "a", "one", RenameMode::Replace), Err("NotDir"));
    assert_eq!(rd("x", "", "Bad", RenameMode::Replace), Err("InvalidName"));
    assert_eq!(rd("nope", "", "z", RenameMode::Replace), Err("NotFound"));
    assert_eq!(rd("l", "", "content", RenameMode::Replace), Err("Invalid"));
    // Replace onto an empty directory.
    assert_eq!(e(store.mkdir("", b"empty", 0o755, uid(), gid())), Ok(()));
    assert_eq!(rd("x", "", "empty", RenameMode::Replace), Ok(()));
    check(&store);
    // A legacy repository moves with its digest directories.
    store
        .create_tag("l", b"back", &Target::Digest(dg(9)))
        .expect("tag 9");
    assert_eq!(rd("l", "", "l2", RenameMode::Replace), Ok(()));
    assert!(fx.has(&format!("l2/{}", hex(9))) && fx.has("l2/back"));
    let s = check(&store);
    assert_eq!(s.tags[&("l2".into(), "back".into())], (false, dg(9)));
    let store = check_reopen(&fx, store);
    assert_eq!(
        store
            .remove_tag("l2", "back")
            .expect("rm")
            .iter()
            .map(collected_rel)
            .collect::<Vec<_>>(),
        vec![format!("l2/{}", hex(9))]
    );
    check_reopen(&fx, store);
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

fn gid() -> u32 {
    nix::unistd::getgid().as_raw()
}

#[test]
fn open_ignores_junk_without_failing_or_touching_it() {
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .legacy("l", 8, "ready");
    fx.ctag("a", "good", 1).ltag("l", "lgood", 8);
    let missing = hex(0xee);
    let junk_links: Vec<(String, String)> = vec![
        // dangling, outside, escaping, malformed
        (
            format!("{REPOSITORIES}/a/dangling"),
            content_text("a", dg(0xee)),
        ),
        (format!("{REPOSITORIES}/a/abs"), "/etc".into()),
        (
            format!("{REPOSITORIES}/a/escape"),
            format!("../../../content/{}", hex(2)),
        ),
        (
            format!("{REPOSITORIES}/a/into"),
            format!("../../content/{}/rootfs.erofs", hex(2)),
        ),
        (
            format!("{REPOSITORIES}/a/.hidden"),
            content_text("a", dg(1)),
        ),
        (format!("{REPOSITORIES}/a/-dash"), content_text("a", dg(1))),
        (
            format!("{REPOSITORIES}/top"),
            format!("../content/{}", hex(1)),
        ),
        ("l/ldangling".into(), missing.clone()),
        ("l/lout".into(), "../../etc".into()),
        ("l/labs".into(), format!("/{}", hex(8))),
        ("evil".into(), "/".into()),
        (format!("{CONTENT}/{}", hex(3)), "/tmp".into()),
    ];
    fx.mkdirs(&format!("{REPOSITORIES}/a"));
    for (p, t) in &junk_links {
        symlink(t, fx.p(p)).expect("junk link");
    }
    let junk_files = [
        "README".to_string(),
        format!("{REPOSITORIES}/a/notes.txt"),
        "l/stray".to_string(),
        format!("{CONTENT}/{}", hex(4)),
        format!("{CONTENT}/NOTHEX"),
    ];
    for p in &junk_files {
        fs::write(fx.p(p), b"junk").expect("junk file");
    }
    let junk_dirs = [
        format!("{CONTENT}/not-a-digest"),
        format!("{REPOSITORIES}/A_B"),
        "Bad".to_string(),
        "lost+found".to_string(),
        ".git".to_string(),
    ];
    for p in &junk_dirs {
        fx.mkdirs(p);
    }
    let temps = [
        format!("{REPOSITORIES}/a/.imagefs-tmp-123-link"),
        "l/.imagefs-tmp-9-link".to_string(),
    ];
    for p in &temps {
        symlink("whatever", fx.p(p)).expect("temp");
    }

    let store = fx.open();
    let s = snap(&store);
    let tags: Vec<_> = s.tags.keys().cloned().collect();
    assert_eq!(
        tags,
        vec![("a".into(), "good".into()), ("l".into(), "lgood".into())]
    );
    let dirs: Vec<_> = s.dirs.keys().cloned().collect();
    assert_eq!(
        dirs,
        vec![
            format!("{CONTENT}/{}", hex(1)),
            format!("{CONTENT}/{}", hex(2)),
            format!("l/{}", hex(8)),
        ]
    );
    for p in &temps {
        assert!(!fx.has(p), "{p} left");
    }
    let untouched = || {
        for (p, t) in &junk_links {
            assert_eq!(fx.link(p), *t, "{p}");
        }
        for p in junk_files.iter().chain(junk_dirs.iter()) {
            assert!(fx.has(p), "{p} removed");
        }
    };
    untouched();
    // The junk does not count as references, and the store keeps working around it.
    assert_eq!(
        store
            .remove_tag("a", "good")
            .expect("rm")
            .iter()
            .map(collected_rel)
            .collect::<Vec<_>>(),
        vec![format!("{CONTENT}/{}", hex(1))]
    );
    assert_eq!(kinds(&store.rmdir("a")), Err("NotEmpty"));
    store
        .create_tag("a", b"again", &Target::Digest(dg(2)))
        .expect("tag");
    assert_eq!(
        kinds(&store.create_tag("a", b"dangling", &Target::Digest(dg(2)))),
        Err("Exists"),
        "an ignored entry occupies the name on disk"
    );
    drop(store);
    let store = fx.open();
    assert_eq!(snap(&store).tags.len(), 2);
    untouched();
}

// ---------------------------------------------------------------------------------------
// Crash recovery: hand-written intents and partial states.

/// Digests tagged before the crash must still exist, and nothing may be left over.
fn assert_recovered(fx: &Fx, store: &Store) -> Snap {
    let s = check(store);
    for (_, (_, d)) in s.tags.iter() {
        assert!(
            s.dirs.keys().any(|k| k.ends_with(&d.hex())),
            "tagged {d} lost"
        );
    }
    assert!(
        fs::read_dir(fx.p(&format!("{PRIVATE}/trash")))
            .expect("trash")
            .next()
            .is_none()
    );
    s
}

#[test]
fn recovery_collects_unreferenced_gc_dirs_and_keeps_referenced_ones() {
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .content(3, "ready")
        .legacy("l", 8, "ready")
        .legacy("l", 9, "ready")
        .ctag("a", "one", 1)
        .ltag("l", "nine", 9)
        // Crash after the intent, before the unlink: rolled back.
        .gc_intent("0001-a", &format!("{CONTENT}/{}", hex(1)))
        .gc_intent("0002-b", &format!("l/{}", hex(9)))
        // Crash after the unlink: collected.
        .gc_intent("0003-c", &format!("{CONTENT}/{}", hex(2)))
        .gc_intent("0004-d", &format!("l/{}", hex(8)))
        // Crash after the rename into the trash: the trash is emptied.
        .gc_intent("0005-e", &format!("{CONTENT}/{}", hex(0xdd)))
        // Garbage intents are dropped and nothing is followed.
        .gc_intent("0006-f", "../../etc")
        .gc_intent("0007-g", &format!("{CONTENT}/zz"))
        .gc_intent("0008-h", &format!("{CONTENT}/{}", hex(3)))
        .json_intent("0009-i", serde_json::json!({"op": "nonsense"}));
    fs::write(fx.intents().join("garbage.json"), b"{not json").expect("garbage");
    fs::write(fx.intents().join(".imagefs-tmp-1-file"), b"{}").expect("tmp");
    let trashed = fx.p(&format!("{PRIVATE}/trash/{}-x", &hex(0xdd)[..12]));
    fs::create_dir_all(trashed.join("sub")).expect("trash");
    fs::write(trashed.join("sub/rootfs.erofs"), b"x").expect("trash file");
    symlink("/etc", trashed.join("link")).expect("trash link");
    // content/3 has a gc intent but is it referenced? No: it was tagged and its tag went.
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    let dirs: Vec<_> = s.dirs.keys().cloned().collect();
    assert_eq!(
        dirs,
        vec![format!("{CONTENT}/{}", hex(1)), format!("l/{}", hex(9))]
    );
    assert!(fs::metadata("/etc/passwd").is_ok() || fs::metadata("/etc").is_ok());
}

#[test]
fn recovery_removes_leftover_temporary_links() {
    let fx = Fx::new();
    fx.content(1, "ready")
        .ctag("a/b", "one", 1)
        .ltag("l", "x", 9)
        .legacy("l", 9, "ready");
    for p in [
        format!("{REPOSITORIES}/a/b/.imagefs-tmp-1-2-3-link"),
        format!("{REPOSITORIES}/.imagefs-tmp-4-link"),
        "l/.imagefs-tmp-5-link".into(),
        ".imagefs-tmp-6-link".into(),
    ] {
        symlink(content_text("a/b", dg(1)), fx.p(&p)).expect("tmp");
    }
    let store = fx.open();
    assert_recovered(&fx, &store);
}

#[test]
fn recovery_finishes_an_interrupted_promotion() {
    // Moved into content/, one of two legacy tags rewritten.
    let fx = Fx::new();
    fx.content(8, "ready")
        .legacy("l", 9, "ready")
        .ltag("l", "old", 8)
        .ltag("l", "old2", 8)
        .ltag("l", "nine", 9)
        .ctag("l", "old", 8)
        .ctag("a", "new", 8)
        .json_intent(
            "0001",
            serde_json::json!({"op": "promote", "repo": "l", "hex": hex(8)}),
        );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags[&("l".into(), "old".into())], (true, dg(8)));
    assert_eq!(s.tags[&("l".into(), "old2".into())], (true, dg(8)));
    assert_eq!(s.tags[&("l".into(), "nine".into())], (false, dg(9)));
    assert_eq!(s.dirs[&format!("{CONTENT}/{}", hex(8))], 3);

    // Recorded, but the directory never moved: nothing to do.
    let fx = Fx::new();
    fx.legacy("l", 8, "ready").ltag("l", "old", 8).json_intent(
        "0001",
        serde_json::json!({"op": "promote", "repo": "l", "hex": hex(8)}),
    );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags[&("l".into(), "old".into())], (false, dg(8)));
}

#[test]
fn recovery_of_an_interrupted_move() {
    let from = format!("{REPOSITORIES}/a/two");
    let to = format!("{REPOSITORIES}/b/c/two");
    let mv = serde_json::json!({"op": "move", "from": from, "to": to});
    // The new link is in place, the old one not yet removed: finished.
    let fx = Fx::new();
    fx.content(2, "ready")
        .ctag("a", "two", 2)
        .ctag("b/c", "two", 2)
        .json_intent("0001", mv.clone());
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(
        s.tags.keys().cloned().collect::<Vec<_>>(),
        vec![("b/c".into(), "two".into())]
    );
    // The new link was never written: nothing happened.
    let fx = Fx::new();
    fx.content(2, "ready")
        .ctag("a", "two", 2)
        .mkdirs(&format!("{REPOSITORIES}/b/c"))
        .json_intent("0001", mv.clone());
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(
        s.tags.keys().cloned().collect::<Vec<_>>(),
        vec![("a".into(), "two".into())]
    );
}

#[test]
fn recovery_of_a_move_over_an_existing_tag_interrupted_before_the_install() {
    // `mv tags/a/two tags/b/c/x` where b/c:x held the last reference to 7: the GC intent
    // for 7 and the move intent are written, then the daemon dies before the new link is
    // installed. a:two must not be lost (rolled back), or the move must be complete.
    let fx = Fx::new();
    fx.content(2, "ready")
        .content(7, "ready")
        .ctag("a", "two", 2)
        .ctag("b/c", "x", 7)
        .gc_intent("0001", &format!("{CONTENT}/{}", hex(7)))
        .json_intent(
            "0002",
            serde_json::json!({"op": "move", "from": format!("{REPOSITORIES}/a/two"),
                               "to": format!("{REPOSITORIES}/b/c/x")}),
        );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    let rolled_back = s.tags.get(&("a".into(), "two".into())) == Some(&(true, dg(2)))
        && s.tags.get(&("b/c".into(), "x".into())) == Some(&(true, dg(7)));
    let finished = !s.tags.contains_key(&("a".into(), "two".into()))
        && s.tags.get(&("b/c".into(), "x".into())) == Some(&(true, dg(2)))
        && !s.dirs.contains_key(&format!("{CONTENT}/{}", hex(7)));
    assert!(
        rolled_back || finished,
        "neither rolled back nor finished: {s:?}"
    );
}

#[test]
fn recovery_of_a_move_over_a_tag_of_the_other_layout() {
    // `mv tags/l/old tags/l/x` (legacy 8) where l:x is a content-layout tag (1, its last
    // reference): the new legacy link is in place and the old one gone, but the replaced
    // content-layout twin repositories/l/x is still there. It must not shadow the move.
    let fx = Fx::new();
    fx.content(1, "ready")
        .legacy("l", 8, "ready")
        .ltag("l", "x", 8)
        .ctag("l", "x", 1)
        .gc_intent("0001", &format!("{CONTENT}/{}", hex(1)))
        .json_intent(
            "0002",
            serde_json::json!({"op": "move", "from": "l/old", "to": "l/x"}),
        );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags[&("l".into(), "x".into())], (false, dg(8)));
    assert!(
        !fx.has(&format!("{CONTENT}/{}", hex(1))),
        "replaced digest collected"
    );
    // And the live operation journals that step.
    let fx = Fx::new();
    fx.content(1, "ready")
        .legacy("l", 8, "ready")
        .ltag("l", "old", 8)
        .ctag("l", "x", 1);
    let store = fx.open();
    let got = store
        .rename_tag(("l", "old"), "l", b"x", RenameMode::Replace)
        .expect("mv");
    assert_eq!(collected_dirs(&got), vec![DirKey::Content(dg(1))]);
    let store = check_reopen(&fx, store);
    assert_eq!(snap(&store).tags[&("l".into(), "x".into())], (false, dg(8)));
}

#[test]
fn recovery_of_an_interrupted_exchange() {
    // a:two (2) <-> b/c:x (1) across depths: a's new link written, b's not yet.
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .ctag("a", "two", 1)
        .ctag("b/c", "x", 1)
        .json_intent(
            "0001",
            serde_json::json!({"op": "exchange",
                "a": format!("{REPOSITORIES}/a/two"), "a_target": content_text("a", dg(1)),
                "b": format!("{REPOSITORIES}/b/c/x"), "b_target": content_text("b/c", dg(2))}),
        );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags[&("a".into(), "two".into())], (true, dg(1)));
    assert_eq!(s.tags[&("b/c".into(), "x".into())], (true, dg(2)));
}

#[test]
fn recovery_of_an_exchange_between_layouts_interrupted_before_the_old_links_went() {
    // l:old (legacy 8) <-> l:b (content 1) in one repository: both new links are written
    // (l:old in the content layout, l:b in the legacy one), the old ones not yet removed.
    let fx = Fx::new();
    fx.content(1, "ready")
        .legacy("l", 8, "ready")
        .ltag("l", "old", 8)
        .ctag("l", "old", 1)
        .ctag("l", "b", 1)
        .ltag("l", "b", 8)
        .json_intent(
            "0001",
            serde_json::json!({"op": "exchange",
                "a": format!("{REPOSITORIES}/l/old"), "a_target": content_text("l", dg(1)),
                "b": "l/b", "b_target": hex(8)}),
        );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags[&("l".into(), "old".into())], (true, dg(1)));
    assert_eq!(s.tags[&("l".into(), "b".into())], (false, dg(8)));
}

#[test]
fn recovery_finishes_an_interrupted_relink() {
    // `mv tags/a tags/x/y/a` renamed the directory; no tag rewritten yet.
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .ctag("x/y/a", "one", 1)
        .ctag("x/y/a/sub", "two", 2);
    for (p, n) in [("x/y/a/one", 1), ("x/y/a/sub/two", 2)] {
        let p = fx.p(&format!("{REPOSITORIES}/{p}"));
        fs::remove_file(&p).expect("rm");
        symlink(content_text("a", dg(n)), &p).expect("old text");
    }
    fx.json_intent(
        "0001",
        serde_json::json!({"op": "relink", "dir": format!("{REPOSITORIES}/x/y/a")}),
    );
    let store = fx.open();
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags.len(), 2);
    // Recorded, but the directory never moved.
    let fx = Fx::new();
    fx.content(1, "ready").ctag("a", "one", 1).json_intent(
        "0001",
        serde_json::json!({"op": "relink", "dir": format!("{REPOSITORIES}/x/y/a")}),
    );
    let store = fx.open();
    assert_eq!(assert_recovered(&fx, &store).tags.len(), 1);
}

// ---------------------------------------------------------------------------------------
// The model and the property test.

const REPOS: [&str; 3] = ["a", "b/c", "l"];
const LEGACY_REPO: usize = 2;
const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Digests 0..6: where they start and their status. 4 is never tagged at the start.
const DIGESTS: [(bool, &str); 6] = [
    (true, "ready"),
    (true, "ready"),
    (false, "ready"),
    (true, "pending"),
    (true, "ready"),
    (false, "failed"),
];
const INITIAL: [(usize, usize, usize); 6] = [
    (0, 0, 0),
    (0, 1, 1),
    (1, 0, 1),
    (2, 0, 2),
    (2, 1, 5),
    (0, 2, 3),
];

#[derive(Debug, Clone)]
enum Tgt {
    Digest(usize),
    Tag(usize, usize),
}

#[derive(Debug, Clone)]
enum Op {
    Create((usize, usize), Tgt),
    Rename((usize, usize), (usize, usize), RenameMode),
    Remove((usize, usize)),
    Reopen,
}

#[derive(Debug, Clone)]
struct Model {
    tags: BTreeMap<(usize, usize), usize>,
    alive: [bool; 6],
    ever: [bool; 6],
    content: [bool; 6],
}

fn collectable(d: usize) -> bool {
    matches!(DIGESTS[d].1, "ready" | "failed")
}

impl Model {
    fn new() -> Model {
        let mut m = Model {
            tags: BTreeMap::new(),
            alive: [true; 6],
            ever: [false; 6],
            content: [false; 6],
        };
        for (i, (c, _)) in DIGESTS.iter().enumerate() {
            m.content[i] = *c;
        }
        for (r, t, d) in INITIAL {
            m.tags.insert((r, t), d);
            m.ever[d] = true;
        }
        m
    }

    fn fixture() -> Fx {
        let fx = Fx::new();
        for (i, (c, status)) in DIGESTS.iter().enumerate() {
            if *c {
                fx.content(i as u8, status);
            } else {
                fx.legacy(REPOS[LEGACY_REPO], i as u8, status);
            }
        }
        for r in REPOS {
            fx.mkdirs(&format!("{REPOSITORIES}/{r}"));
        }
        for (r, t, d) in INITIAL {
            if DIGESTS[d].0 {
                fx.ctag(REPOS[r], TAGS[t], d as u8);
            } else {
                fx.ltag(REPOS[r], TAGS[t], d as u8);
            }
        }
        fx
    }

    fn referenced(&self, d: usize) -> bool {
        self.tags.values().any(|&x| x == d)
    }

    fn enter(&mut self, d: usize, repo: usize) {
        if repo != LEGACY_REPO {
            self.content[d] = true;
        }
    }

    /// Drops `d` if nothing names it any more and it is collectable; returns its dir if so.
    fn maybe_gc(&mut self, d: usize) -> Vec<String> {
        if !self.referenced(d) && collectable(d) {
            let dir = self.dir(d);
            self.alive[d] = false;
            vec![dir]
        } else {
            vec![]
        }
    }

    fn dir(&self, d: usize) -> String {
        if self.content[d] {
            format!("{CONTENT}/{}", hex(d as u8))
        } else {
            format!("{}/{}", REPOS[LEGACY_REPO], hex(d as u8))
        }
    }

    /// Applies `op`; returns the expected result (collected dirs, or the error's kind).
    fn apply(&mut self, op: &Op) -> Result<Vec<String>, &'static str> {
        match op {
            Op::Reopen => Ok(vec![]),
            Op::Create(at, tgt) => {
                let d = match tgt {
                    Tgt::Digest(d) if self.alive[*d] => *d,
                    Tgt::Digest(_) => return Err("NotFound"),
                    Tgt::Tag(r, t) => *self.tags.get(&(*r, *t)).ok_or("NotFound")?,
                };
                if self.tags.contains_key(at) {
                    return Err("Exists");
                }
                if DIGESTS[d].1 != "ready" {
                    return Err("NotReady");
                }
                self.enter(d, at.0);
                self.tags.insert(*at, d);
                self.ever[d] = true;
                Ok(vec![])
            }
            Op::Remove(at) => {
                let d = self.tags.remove(at).ok_or("NotFound")?;
                Ok(self.maybe_gc(d))
            }
            Op::Rename(from, to, mode) => {
                let Some(&d) = self.tags.get(from) else {
                    return Err("NotFound");
                };
                if from == to {
                    return Ok(vec![]);
                }
                let dst = self.tags.get(to).copied();
                match (mode, dst) {
                    (RenameMode::NoReplace, Some(_)) => Err("Exists"),
                    (RenameMode::Exchange, None) => Err("NotFound"),
                    (RenameMode::Exchange, Some(o)) => {
                        self.enter(o, from.0);
                        self.enter(d, to.0);
                        self.tags.insert(*from, o);
                        self.tags.insert(*to, d);
                        Ok(vec![])
                    }
                    (_, dst) => {
                        self.tags.remove(from);
                        self.enter(d, to.0);
                        self.tags.insert(*to, d);
                        match dst {
                            Some(o) if o != d => Ok(self.maybe_gc(o)),
                            _ => Ok(vec![]),
                        }
                    }
                }
            }
        }
    }

    /// The model in the shape of a [`Snap`]'s tags and dirs.
    fn expected(&self) -> (TagMap, BTreeSet<String>) {
        let tags = self
            .tags
            .iter()
            .map(|(&(r, t), &d)| {
                (
                    (REPOS[r].to_string(), TAGS[t].to_string()),
                    (self.content[d], dg(d as u8)),
                )
            })
            .collect();
        let dirs = (0..6)
            .filter(|&d| self.alive[d])
            .map(|d| self.dir(d))
            .collect();
        (tags, dirs)
    }

    fn assert_matches(&self, store: &Store, ctx: &str) -> Snap {
        // The model's own invariant: a digest dir exists iff it is tagged, or was never
        // tagged, or is not collectable.
        for d in 0..6 {
            assert_eq!(
                self.alive[d],
                self.referenced(d) || !self.ever[d] || !collectable(d),
                "model invariant, digest {d}"
            );
        }
        let s = check(store);
        let (tags, dirs) = self.expected();
        assert_eq!(s.tags, tags, "{ctx}: tags vs model");
        let got: BTreeSet<String> = s.dirs.keys().cloned().collect();
        assert_eq!(got, dirs, "{ctx}: digest dirs vs model");
        s
    }
}

fn slot() -> impl Strategy<Value = (usize, usize)> {
    (0..REPOS.len(), 0..TAGS.len())
}

fn op_strategy(reopen: bool) -> impl Strategy<Value = Op> {
    let mode = prop_oneof![
        Just(RenameMode::Replace),
        Just(RenameMode::NoReplace),
        Just(RenameMode::Exchange),
    ];
    let tgt = prop_oneof![
        (0..DIGESTS.len()).prop_map(Tgt::Digest),
        slot().prop_map(|(r, t)| Tgt::Tag(r, t)),
    ];
    let reopen_weight = if reopen { 1 } else { 0 };
    prop_oneof![
        4 => (slot(), tgt).prop_map(|(a, t)| Op::Create(a, t)),
        4 => (slot(), slot(), mode).prop_map(|(a, b, m)| Op::Rename(a, b, m)),
        3 => slot().prop_map(Op::Remove),
        reopen_weight => Just(Op::Reopen),
    ]
}

fn run_ops(ops: &[Op]) {
    let fx = Model::fixture();
    let mut model = Model::new();
    let mut store = fx.open();
    model.assert_matches(&store, "start");
    for (i, op) in ops.iter().enumerate() {
        let want = model.apply(op);
        let got: Result<Vec<String>, &'static str> = match op {
            Op::Reopen => {
                drop(store);
                store = fx.open();
                Ok(vec![])
            }
            Op::Create((r, t), tgt) => {
                let target = match tgt {
                    Tgt::Digest(d) => Target::Digest(dg(*d as u8)),
                    Tgt::Tag(r, t) => Target::Tag {
                        repo: REPOS[*r].into(),
                        tag: TAGS[*t].into(),
                    },
                };
                store
                    .create_tag(REPOS[*r], TAGS[*t].as_bytes(), &target)
                    .map(|_| vec![])
                    .map_err(|e| kind(&e))
            }
            Op::Remove((r, t)) => store
                .remove_tag(REPOS[*r], TAGS[*t])
                .map(|v| v.iter().map(collected_rel).collect())
                .map_err(|e| kind(&e)),
            Op::Rename((fr, ft), (tr, tt), mode) => store
                .rename_tag(
                    (REPOS[*fr], TAGS[*ft]),
                    REPOS[*tr],
                    TAGS[*tt].as_bytes(),
                    *mode,
                )
                .map(|v| v.iter().map(collected_rel).collect())
                .map_err(|e| kind(&e)),
        };
        let ctx = format!("op {i} {op:?}");
        assert_eq!(got, want, "{ctx}: result");
        model.assert_matches(&store, &ctx);
    }
    let before = model.assert_matches(&store, "end");
    drop(store);
    let store = fx.open();
    let after = model.assert_matches(&store, "reopened");
    assert_eq!(after, before, "reopened index");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn random_tag_changes_match_the_model(ops in prop::collection::vec(op_strategy(false), 1..40)) {
        run_ops(&ops);
    }

    #[test]
    fn random_tag_changes_with_reopens_match_the_model(ops in prop::collection::vec(op_strategy(true), 1..40)) {
        run_ops(&ops);
    }
}

// ---------------------------------------------------------------------------------------
// Concurrency.

/// Rounds of ~250 ms; each round adds fresh digests (so GC keeps having work: collected
/// digests cannot be tagged again), opens the store, lets threads race on it, then checks.
#[test]
fn concurrent_changes_keep_the_invariants() {
    const PER_ROUND: u8 = 12;
    const THREADS: u64 = 6;
    let fx = Fx::new();
    let repos = ["a", "b/c", "l", "docker.io/library/x"];
    let tags = ["t0", "t1", "t2", "t3", "t4"];
    for r in repos {
        fx.mkdirs(&format!("{REPOSITORIES}/{r}"));
    }
    let free = |r: &str, t: &str| {
        !fx.has(&format!("{REPOSITORIES}/{r}/{t}")) && !fx.has(&format!("{r}/{t}"))
    };
    let ever: Arc<Vec<AtomicBool>> = Arc::new((0..256).map(|_| AtomicBool::new(false)).collect());
    // Of each round's digests: 0..6 content ready, 6 pending, 7 never tagged at the start,
    // 8 and 9 legacy in `l`, 10 and 11 do not exist.
    let exists = |i: u8| i % PER_ROUND < 10;
    let pending = |i: u8| i % PER_ROUND == 6;
    let start = Instant::now();
    let (mut total, mut ok, mut rounds) = (0u64, 0u64, 0u8);
    while rounds < 20 && (rounds < 2 || start.elapsed() < Duration::from_secs(2)) {
        let base = rounds * PER_ROUND;
        for i in 0..6 {
            fx.content(base + i, "ready");
        }
        fx.content(base + 6, "pending").content(base + 7, "ready");
        fx.legacy("l", base + 8, "ready")
            .legacy("l", base + 9, "ready");
        let seed = |r: &str, t: &str, d: u8, legacy: bool| {
            if free(r, t) {
                if legacy {
                    fx.ltag(r, t, d);
                } else {
                    fx.ctag(r, t, d);
                }
                ever[d as usize].store(true, Ordering::SeqCst);
            }
        };
        for k in 0..12u8 {
            seed(
                repos[(k % 4) as usize],
                tags[(k / 4) as usize],
                base + k % 6,
                false,
            );
        }
        seed("a", "t4", base + 6, false);
        seed("l", "t3", base + 8, true);
        seed("l", "t4", base + 9, true);
        let store = Arc::new(fx.open());
        check(&store);
        let deadline = Instant::now() + Duration::from_millis(250);
        let threads: Vec<_> = (0..THREADS)
            .map(|id| {
                let store = Arc::clone(&store);
                let ever = Arc::clone(&ever);
                std::thread::spawn(move || {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64
                        ^ (id + 1 + u64::from(base) * 64).wrapping_mul(0x2545_f491_4f6c_dd1d);
                    let mut rnd = move |n: usize| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % n as u64) as usize
                    };
                    let mut n = (0u64, 0u64);
                    while Instant::now() < deadline {
                        let r = repos[rnd(repos.len())];
                        let t = tags[rnd(tags.len())];
                        let res = match rnd(10) {
                            0..=3 => {
                                let target = if rnd(3) == 0 {
                                    Target::Digest(dg(base + rnd(11) as u8))
                                } else {
                                    Target::Tag {
                                        repo: repos[rnd(repos.len())].into(),
                                        tag: tags[rnd(tags.len())].into(),
                                    }
                                };
                                let res = store.create_tag(r, t.as_bytes(), &target);
                                if let Ok(d) = &res
                                    && let Some(i) = (0..=255u8).find(|&i| dg(i) == *d)
                                {
                                    ever[i as usize].store(true, Ordering::SeqCst);
                                }
                                kinds(&res)
                            }
                            4..=5 => kinds(&store.remove_tag(r, t)),
                            _ => {
                                let mode = [
                                    RenameMode::Replace,
                                    RenameMode::NoReplace,
                                    RenameMode::Exchange,
                                ][rnd(3)];
                                let to = (repos[rnd(repos.len())], tags[rnd(tags.len())]);
                                kinds(&store.rename_tag((r, t), to.0, to.1.as_bytes(), mode))
                            }
                        };
                        assert!(
                            matches!(res, Ok(()) | Err("NotFound" | "Exists" | "NotReady")),
                            "unexpected {res:?}"
                        );
                        n.0 += 1;
                        n.1 += u64::from(res.is_ok());
                    }
                    n
                })
            })
            .collect();
        for t in threads {
            let n = t.join().expect("thread");
            total += n.0;
            ok += n.1;
        }
        let store = Arc::try_unwrap(store).unwrap_or_else(|_| panic!("store still shared"));
        let s = check(&store);
        for i in (0..base + PER_ROUND).filter(|&i| exists(i)) {
            let d = dg(i);
            let referenced = s.tags.values().any(|(_, x)| *x == d);
            let present = s.dirs.keys().any(|k| k.ends_with(&d.hex()));
            let want = referenced || !ever[i as usize].load(Ordering::SeqCst) || pending(i);
            assert_eq!(present, want, "round {rounds}, digest {i}: {s:?}");
        }
        check_reopen(&fx, store);
        rounds += 1;
    }
    eprintln!("{rounds} rounds, {total} operations, {ok} succeeded");
    assert!(ok >= 50, "only {ok} of {total} operations succeeded");
}

// ---------------------------------------------------------------------------------------
// Other writers (inotify).

#[test]
fn other_writers_changes_reach_the_index_and_match_a_fresh_scan() {
    use super::watch::Change;
    let fx = base();
    let store = fx.open();
    store.watch().expect("watch");
    // Another writer, holding the store lock as the rule says.
    {
        let _l = super::lockfile::StoreLock::acquire(fx.root()).expect("lock");
        fx.content(20, "ready").ctag("ext/new", "v1", 20);
        fs::remove_file(fx.p(&format!("{REPOSITORIES}/a/two"))).expect("rm");
        fx.ltag("l", "third", 9);
        fx.mkdirs(&format!("{REPOSITORIES}/ext/empty"));
    }
    let changes = store.sync_external().expect("sync");
    let ix = store.index();
    assert_eq!(
        ix.tag("ext/new", "v1").map(|t| t.key.clone()),
        Some(DirKey::Content(dg(20)))
    );
    assert!(
        ix.tag("a", "two").is_none(),
        "a tag removed by another writer goes"
    );
    assert!(ix.tag("l", "third").is_some());
    assert!(ix.node("ext/empty").is_some());
    assert!(
        changes.contains(&Change::Tag {
            repo: "a".into(),
            tag: "two".into()
        }),
        "{changes:?}"
    );
    drop(ix);
    // imagefs does not collect on another writer's behalf.
    assert!(fx.has(&format!("{CONTENT}/{}", hex(2))));
    let now = check(&store);
    drop(store);
    assert_eq!(
        check(&fx.open()),
        now,
        "the watched index equals a fresh scan"
    );
}

#[test]
fn gc_counts_a_tag_another_writer_made_before_it_decides() {
    let fx = base();
    let store = fx.open();
    store.watch().expect("watch");
    // Digest 2 has one tag we know of; another writer names it too, and nobody synced yet.
    {
        let _l = super::lockfile::StoreLock::acquire(fx.root()).expect("lock");
        fx.ctag("elsewhere", "keep", 2);
    }
    let collected = store.remove_tag("a", "two").expect("rm");
    assert!(collected.is_empty(), "{collected:?}");
    assert!(
        fx.has(&format!("{CONTENT}/{}", hex(2))),
        "a tagged digest was collected"
    );
    assert_eq!(store.index().refs(&DirKey::Content(dg(2))), Some(1));
    check(&store);
}

#[test]
fn a_digest_directory_removed_by_another_writer_takes_its_tags_out_of_the_index() {
    let fx = base();
    let store = fx.open();
    store.watch().expect("watch");
    {
        let _l = super::lockfile::StoreLock::acquire(fx.root()).expect("lock");
        fs::remove_dir_all(fx.p(&format!("{CONTENT}/{}", hex(7)))).expect("rm digest");
        fs::remove_dir_all(fx.p(&format!("{REPOSITORIES}/b"))).expect("rm repo");
    }
    store.sync_external().expect("sync");
    assert!(!store.index().has_dir(&DirKey::Content(dg(7))));
    assert!(store.index().node("b").is_none() && store.index().node("b/c").is_none());
    check(&store);
}

#[test]
fn a_store_that_starts_empty_sees_its_first_pull() {
    let fx = Fx::new();
    let store = fx.open();
    store.watch().expect("watch");
    // content/ and repositories/ do not exist yet when the watch starts.
    {
        let _l = super::lockfile::StoreLock::acquire(fx.root()).expect("lock");
        fx.content(30, "ready").ctag("first/pull", "latest", 30);
    }
    store.sync_external().expect("sync");
    assert_eq!(
        store
            .index()
            .tag("first/pull", "latest")
            .map(|t| t.key.clone()),
        Some(DirKey::Content(dg(30)))
    );
    // Later writes into the new directories are seen too.
    {
        let _l = super::lockfile::StoreLock::acquire(fx.root()).expect("lock");
        fx.content(31, "ready").ctag("first/pull", "next", 31);
    }
    store.sync_external().expect("sync");
    assert!(store.index().tag("first/pull", "next").is_some());
    check(&store);
}
