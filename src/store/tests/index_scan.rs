//! `Index::from_scan`, which takes a directory's run of tags at once, against the rules
//! applied one tag at a time through the index's own API (the reference): random scans
//! with tags naming missing directories, tags named like a subdirectory, the same name in
//! both layouts in either order, and runs cut short (a repository's tags without a shared
//! `Arc`).

use std::sync::Arc;

use proptest::prelude::*;

use super::fixture::dg;
use crate::store::index::Index;
use crate::store::layout::{DirKey, Layout, Scan, ScannedDir, ScannedTag};
use crate::store::tag_name::TagName;

const REPOS: [&str; 3] = ["a", "a/b", "l"];
/// "b" clashes with the subdirectory `a/b` in repository `a`.
const TAGS: [&str; 4] = ["t0", "t1", "b", "x"];

/// The index the rules give, a tag at a time; and the number of unresolved tags.
fn reference(scan: &Scan) -> (Index, usize) {
    let mut ix = Index::new();
    for k in &scan.digest_dirs {
        ix.add_dir(k.clone());
    }
    for d in &scan.repo_dirs {
        ix.ensure_node(&d.repo, d.layout);
    }
    let mut unresolved = 0;
    for t in &scan.tags {
        if !ix.has_dir(&t.key) {
            unresolved += 1;
            continue;
        }
        if ix
            .node(&t.repo)
            .is_some_and(|n| n.subdirs.contains(t.tag.as_str()))
        {
            continue;
        }
        if let Some(old) = ix.tag(&t.repo, &t.tag) {
            // The same name in both layouts: the content layout wins.
            if old.layout == Layout::Content || t.layout == Layout::Legacy {
                continue;
            }
            ix.remove_tag(&t.repo, &t.tag);
        }
        ix.add_tag(&t.repo, &t.tag, t.key.clone(), t.layout);
    }
    (ix, unresolved)
}

/// One run of the scan: a repository, a layout, its tags (name, digest, whether the key
/// names a directory the scan found), and whether its tags share one `Arc` of the name.
type Run = (usize, bool, Vec<(usize, u8)>, bool);

fn scan_of(dirs: &[(bool, u8)], runs: &[Run]) -> Scan {
    let mut scan = Scan::default();
    let key = |legacy: bool, repo: &str, d: u8| match legacy {
        false => DirKey::Content(dg(d)),
        true => DirKey::Legacy(repo.to_string(), dg(d)),
    };
    for &(legacy, d) in dirs {
        // Legacy digest directories live in repository `l`.
        scan.digest_dirs.push(key(legacy, "l", d));
    }
    for repo in REPOS {
        for layout in [Layout::Content, Layout::Legacy] {
            scan.repo_dirs.push(ScannedDir {
                repo: repo.to_string(),
                layout,
            });
        }
    }
    for (repo, legacy, tags, shared) in runs {
        let repo = REPOS[*repo];
        let layout = if *legacy {
            Layout::Legacy
        } else {
            Layout::Content
        };
        let arc: Arc<str> = Arc::from(repo);
        for &(tag, d) in tags {
            scan.tags.push(ScannedTag {
                repo: if *shared {
                    arc.clone()
                } else {
                    Arc::from(repo)
                },
                tag: TagName::new(TAGS[tag]),
                layout,
                key: key(*legacy, repo, d),
            });
        }
    }
    scan
}

fn same(scan: &Scan) {
    let got = Index::from_scan(scan);
    let (want, unresolved) = reference(scan);
    assert_eq!(got.unresolved().len(), unresolved, "unresolved tags");
    for repo in REPOS {
        for tag in TAGS {
            assert_eq!(
                got.tag(repo, tag).map(|s| s.tag()),
                want.tag(repo, tag).map(|s| s.tag()),
                "{repo}:{tag}"
            );
        }
    }
    let mut keys: Vec<DirKey> = want.dir_keys().map(|(k, _)| k.clone()).collect();
    keys.sort();
    let mut got_keys: Vec<DirKey> = got.dir_keys().map(|(k, _)| k.clone()).collect();
    got_keys.sort();
    assert_eq!(got_keys, keys, "digest directories");
    for k in &keys {
        assert_eq!(got.refs(k), want.refs(k), "references of {k:?}");
    }
    assert_eq!(got.tag_count(), want.tag_count());
}

fn run_strategy() -> impl Strategy<Value = Run> {
    (
        0..REPOS.len(),
        any::<bool>(),
        prop::collection::vec((0..TAGS.len(), 1u8..5), 0..6),
        prop::bool::weighted(0.8),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    #[test]
    fn from_scan_matches_the_rules_a_tag_at_a_time(
        dirs in prop::collection::vec((any::<bool>(), 1u8..5), 0..6),
        runs in prop::collection::vec(run_strategy(), 0..8),
    ) {
        same(&scan_of(&dirs, &runs));
    }
}

/// The cases by name: a twin in each order, a clash, a tag naming nothing.
#[test]
fn twins_in_either_order_clashes_and_missing_directories() {
    let dirs = [(false, 1), (false, 2), (true, 3)];
    // `l`: the legacy run first, then the content one (the content twin replaces it and
    // its directory loses the reference), then legacy again (ignored).
    let runs: Vec<Run> = vec![
        (2, true, vec![(0, 3), (1, 3)], true),
        (2, false, vec![(1, 2), (3, 1)], true),
        (2, true, vec![(3, 3)], true),
        // `a`: "b" is its subdirectory's name; digest 4 has no directory.
        (0, false, vec![(0, 1), (2, 1), (3, 4)], false),
    ];
    let scan = scan_of(&dirs, &runs);
    same(&scan);
    let ix = Index::from_scan(&scan);
    assert_eq!(ix.refs(&DirKey::Content(dg(1))), Some(2));
    assert_eq!(ix.refs(&DirKey::Content(dg(2))), Some(1));
    assert_eq!(ix.refs(&DirKey::Legacy("l".into(), dg(3))), Some(1));
    assert_eq!(ix.unresolved().len(), 1);
    assert!(ix.tag("a", "b").is_none());
}
