//! The index snapshot (`snapshot.rs`): a mount that takes repository directories from it
//! builds exactly the index a full scan builds, whatever other writers changed behind its
//! back (hypeman's unlink + symlink retag in the same directory, new, removed, renamed and
//! nested repositories, both layouts), and a torn, damaged or foreign snapshot is ignored.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use super::fixture::{Fx, check, hex};
use crate::store::layout::{self, Cache, Layout, REPOSITORIES};
use crate::store::snapshot::{self, FILE, RACY_NS};

/// A small deterministic generator (xorshift64*), so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Seen = BTreeSet<(String, String, Layout, String)>;

/// What a scan found, comparable: tags, repository directories, digest directories.
fn found(s: &layout::Scan) -> (Seen, BTreeSet<(String, Layout)>, BTreeSet<String>) {
    let tags = s
        .tags
        .iter()
        .map(|t| {
            (
                t.repo.to_string(),
                t.tag.to_string(),
                t.layout,
                t.key.rel_path().display().to_string(),
            )
        })
        .collect();
    let dirs = s
        .repo_dirs
        .iter()
        .map(|d| (d.repo.clone(), d.layout))
        .collect();
    let digests = s
        .digest_dirs
        .iter()
        .map(|k| k.rel_path().display().to_string())
        .collect();
    (tags, dirs, digests)
}

/// Scans `root` with the snapshot in its bookkeeping and without; asserts both found the
/// same; returns how many directories came from the snapshot.
fn same_as_full_scan(fx: &Fx) -> u32 {
    let root = fs::canonicalize(fx.root()).expect("canonical");
    let full = layout::scan_with(&root, &Cache::default()).expect("full scan");
    let cache = Cache {
        from: snapshot::Loaded::read(&fx.bookkeeping(), &root),
        record: false,
    };
    let cached = layout::scan_with(&root, &cache).expect("cached scan");
    assert_eq!(
        found(&cached),
        found(&full),
        "scan from the snapshot vs full scan"
    );
    cached.taken
}

/// Opens the store (its scan uses and then rewrites the snapshot), checks its index
/// against an independent walk of the disk, waits for the snapshot, and closes it.
fn mount_cycle(fx: &Fx) {
    let store = fx.open();
    check(&store);
    store.wait_snapshot();
}

/// Lets every directory's times fall out of the racy window of the next scan.
fn age() {
    std::thread::sleep(std::time::Duration::from_nanos(RACY_NS as u64 + 30_000_000));
}

const REPOS: [&str; 5] = [
    "a",
    "reg.io/b",
    "reg.io/team/c",
    "reg.io/team/c/d",
    "x.io/e",
];
const LEGACY: [&str; 2] = ["old", "old/deep"];

fn tags_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One change another writer makes, chosen by `rng`; returns what it did.
fn change(fx: &Fx, rng: &mut Rng, round: usize, i: usize) -> String {
    let n = 1 + rng.below(12) as u8;
    match rng.below(8) {
        // hypeman's retag: unlink, then symlink the same name to another digest.
        0 | 1 => {
            let repo = REPOS[rng.below(REPOS.len())];
            let dir = fx.p(&format!("{REPOSITORIES}/{repo}"));
            let tags = tags_in(&dir);
            if tags.is_empty() {
                fx.ctag(repo, "t0", n);
                return format!("new {repo}:t0");
            }
            let t = &tags[rng.below(tags.len())];
            fs::remove_file(dir.join(t)).expect("unlink");
            fx.ctag(repo, t, n);
            format!("retag {repo}:{t} -> {n}")
        }
        2 => {
            let repo = REPOS[rng.below(REPOS.len())];
            let t = format!("n{round}x{i}");
            fx.ctag(repo, &t, n);
            format!("new {repo}:{t}")
        }
        3 => {
            let repo = REPOS[rng.below(REPOS.len())];
            let dir = fx.p(&format!("{REPOSITORIES}/{repo}"));
            let tags = tags_in(&dir);
            if let Some(t) = tags.get(rng.below(tags.len().max(1))) {
                fs::remove_file(dir.join(t)).expect("rm tag");
                return format!("rm {repo}:{t}");
            }
            String::new()
        }
        // A new repository, nested under an existing one or at the top.
        4 => {
            let repo = match rng.below(2) {
                0 => format!("reg.io/team/new{round}x{i}/deeper"),
                _ => format!("new{round}x{i}.io/r"),
            };
            fx.ctag(&repo, "v1", n).ctag(&repo, "v2", n);
            format!("new repository {repo}")
        }
        // A repository removed, or two swapped by renames (each path keeps its depth, so
        // the link texts stay right; each path now holds another directory).
        5 => {
            let base = fx.p(&format!("{REPOSITORIES}/x.io"));
            let subs: Vec<String> = fs::read_dir(&base)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            if subs.len() >= 2 && rng.below(2) == 0 {
                let (a, b) = (base.join(&subs[0]), base.join(&subs[1]));
                let tmp = base.join("swap");
                fs::rename(&a, &tmp).expect("mv a");
                fs::rename(&b, &a).expect("mv b");
                fs::rename(&tmp, &b).expect("mv tmp");
                return format!("swapped x.io/{} and x.io/{}", subs[0], subs[1]);
            }
            let to = format!("e{round}x{i}");
            if let Some(s) = subs.first() {
                fs::rename(base.join(s), base.join(&to)).expect("rename repo");
                return format!("renamed x.io/{s} -> x.io/{to}");
            }
            fx.ctag(&format!("x.io/{to}"), "v", n);
            format!("new repository x.io/{to}")
        }
        6 => {
            let gone = fx.p(&format!("{REPOSITORIES}/reg.io/team/c/d"));
            if gone.exists() {
                fs::remove_dir_all(&gone).expect("rm -r repo");
                return "removed repository reg.io/team/c/d".into();
            }
            fx.ctag("reg.io/team/c/d", "back", n);
            "re-created repository reg.io/team/c/d".into()
        }
        // The legacy layout: a retag within the repository's own digests.
        _ => {
            let repo = LEGACY[rng.below(LEGACY.len())];
            let t = format!("l{}", rng.below(6));
            let d = [7u8, 9][rng.below(2)];
            let link = fx.p(&format!("{repo}/{t}"));
            let _ = fs::remove_file(&link);
            symlink(hex(d), &link).expect("ltag");
            format!("legacy retag {repo}:{t} -> {d}")
        }
    }
}

fn store_with_tags() -> Fx {
    let fx = Fx::new();
    for n in 1..=12u8 {
        fx.content(n, "ready");
    }
    for repo in LEGACY {
        fx.legacy(repo, 7, "ready").legacy(repo, 9, "ready");
        for t in 0..6 {
            fx.ltag(repo, &format!("l{t}"), if t % 2 == 0 { 7 } else { 9 });
        }
    }
    for (i, repo) in REPOS.iter().enumerate() {
        for t in 0..20usize {
            fx.ctag(repo, &format!("t{t}"), 1 + ((t + i) % 12) as u8);
        }
    }
    fx.ctag("x.io/f", "only", 3);
    fx
}

/// Random changes behind the snapshot's back, mount after mount: the index built with the
/// snapshot is the disk's, and the snapshot was used.
#[test]
fn a_start_from_the_snapshot_indexes_what_a_full_scan_indexes_after_random_changes() {
    for seed in [1u64, 7, 42] {
        let fx = store_with_tags();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        age();
        mount_cycle(&fx);
        for round in 0..6 {
            // Changes right after the snapshot was written (well within a second of it),
            // then again once they are old enough to be trusted in their turn.
            let mut did = Vec::new();
            for i in 0..1 + rng.below(4) {
                did.push(change(&fx, &mut rng, round, i));
            }
            let taken = same_as_full_scan(&fx);
            assert!(
                taken > 0,
                "seed {seed} round {round}: nothing from the snapshot"
            );
            mount_cycle(&fx);
            age();
            eprintln!("seed {seed} round {round}: {taken} from the snapshot; {did:?}");
        }
    }
}

/// A torn or damaged snapshot, or one another store wrote, is ignored: a full scan.
#[test]
fn a_torn_damaged_or_foreign_snapshot_is_ignored() {
    let fx = store_with_tags();
    let other = store_with_tags();
    age();
    mount_cycle(&fx);
    mount_cycle(&other);
    age();
    mount_cycle(&fx);
    assert!(same_as_full_scan(&fx) > 0, "the snapshot is used");
    let path = fx.bookkeeping().join(FILE);
    let good = fs::read(&path).expect("snapshot");
    let torn = &good[..good.len() / 2];
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let foreign = fs::read(other.bookkeeping().join(FILE)).expect("other snapshot");
    for (what, bytes) in [
        ("torn", torn.to_vec()),
        ("damaged", flipped),
        ("another store's", foreign),
        ("empty", Vec::new()),
    ] {
        fs::write(&path, &bytes).expect("write snapshot");
        // A retag the bad snapshot would hide if it were believed.
        let dir = fx.p(&format!("{REPOSITORIES}/a"));
        fs::remove_file(dir.join("t0")).expect("unlink");
        fx.ctag("a", "t0", 12);
        assert_eq!(same_as_full_scan(&fx), 0, "{what} snapshot was used");
        fs::write(&path, &bytes).expect("write snapshot");
        mount_cycle(&fx);
        age();
    }
}
