//! Eager GC: which changes collect which digest directories, and what a collection reports.

use std::collections::BTreeSet;

use super::fixture::*;
use crate::store::RenameMode;
use crate::store::layout::CONTENT;

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
