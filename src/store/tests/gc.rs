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
            let got = collected_rels(&got);
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

/// Keeps every collected directory, as the mount does for an image still in use.
struct KeepAll(std::sync::Mutex<Vec<std::path::PathBuf>>);

impl crate::store::InUse for KeepAll {
    fn retain(&self, _: &crate::store::DirKey, trashed: &std::path::Path) -> Option<&'static str> {
        self.0.lock().expect("kept").push(trashed.to_path_buf());
        Some("kept by the test")
    }
}

#[test]
fn a_collection_reports_what_it_did() {
    use crate::store::{Collected, DirKey};
    use std::sync::atomic::Ordering::Relaxed;
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(8, "ready")
        .legacy("l", 8, "ready")
        .ctag("a", "one", 1)
        .ctag("a", "eight", 8)
        .ltag("l", "old", 8);
    let store = fx.open();
    // Another directory of the digest stays: the digest is not gone.
    let got = store.remove_tag("l", "old").expect("rm l:old");
    let legacy = fx.p(&format!("l/{}", hex(8)));
    assert!(!legacy.exists());
    assert_eq!(got.len(), 1, "{got:?}");
    let c = &got[0];
    assert_eq!(
        (c.digest, &c.dir, &c.kept_in_use, c.digest_gone),
        (dg(8), &DirKey::Legacy("l".into(), dg(8)), &None, false)
    );
    assert!(c.bytes > 0, "{c:?}");
    // The last directory of a digest, still in use: kept in the trash, nothing freed yet.
    let keep = std::sync::Arc::new(KeepAll(Default::default()));
    store.set_in_use(keep.clone());
    let got = store.remove_tag("a", "one").expect("rm a:one");
    let kept = keep.0.lock().expect("kept").clone();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        got,
        vec![Collected {
            digest: dg(1),
            dir: DirKey::Content(dg(1)),
            kept_in_use: Some(kept[0].clone()),
            bytes: 0,
            to_delete: None,
            digest_gone: true,
        }]
    );
    assert!(kept[0].starts_with(fx.bookkeeping().join("trash")));
    assert!(kept[0].is_dir() && fx.entries("intents").is_empty());
    let before = store.stats.bytes_reclaimed.load(Relaxed);
    store.release_trashed(&dg(1), &kept[0]);
    assert!(!kept[0].exists() && fx.entries("trash").is_empty());
    assert!(store.stats.bytes_reclaimed.load(Relaxed) > before);
    assert_eq!(store.stats.collections.load(Relaxed), 2);
    check_reopen(&fx, store);
}

#[test]
fn a_directory_another_writer_removes_during_its_collection_leaves_no_intent() {
    // Issue 9, finding 1: hypeman's own GC removed the directory between imagefs's intent
    // and its rename into the trash. The collection is done: no intent is left for the next
    // mount to "finish" on a directory hypeman makes again under the same path.
    use crate::store::DirKey;
    let fx = Fx::new();
    fx.content(7, "ready");
    let store = fx.open();
    let key = DirKey::Content(dg(7));
    let intent = store.gc_intent_if_last(&key).expect("intent");
    assert!(intent.is_some() && fx.entries("intents").len() == 1);
    std::fs::remove_dir_all(fx.p(&rel_of(&key))).expect("hypeman's RemoveAll");
    assert_eq!(store.finish_gc(intent, &key), None);
    assert!(
        fx.entries("intents").is_empty(),
        "an intent was left for the next mount"
    );
    assert!(fx.entries("trash").is_empty());
    // hypeman pulls the digest again (digest-only: no tag); the next mount keeps it.
    drop(store);
    fx.content(7, "ready");
    let store = fx.open();
    assert!(fx.has(&rel_of(&key)));
    assert_eq!(snap(&store).dirs.get(&rel_of(&key)), Some(&0));
}

#[test]
fn collected_directories_wait_outside_the_store() {
    // Issue 9, finding 6: hypeman's listings walk the whole store; the trash (an image kept
    // for its users keeps its metadata.json and rootfs.erofs there) and the intents must not
    // be in it.
    let fx = Fx::new();
    fx.content(1, "ready").ctag("a", "one", 1);
    let store = fx.open();
    let keep = std::sync::Arc::new(KeepAll(Default::default()));
    store.set_in_use(keep.clone());
    store.remove_tag("a", "one").expect("rm");
    let kept = keep.0.lock().expect("kept").clone();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].join("metadata.json").is_file());
    assert!(
        !kept[0].starts_with(fx.root()),
        "{} is inside the store",
        kept[0].display()
    );
    assert_eq!(
        kept[0].parent(),
        Some(fx.bookkeeping().join("trash").as_path())
    );
    let mut seen = Vec::new();
    for e in walkdir(fx.root()) {
        seen.push(e);
    }
    assert!(
        seen.iter()
            .all(|p| !p.ends_with("metadata.json") || p.starts_with(fx.p(CONTENT))),
        "{seen:?}"
    );
    store.release_trashed(&dg(1), &kept[0]);
}

/// Every path under `dir` (not following symlinks), as hypeman's `filepath.Walk` visits them.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("readdir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().expect("type").is_dir() {
            out.extend(walkdir(&p));
        }
    }
    out
}
