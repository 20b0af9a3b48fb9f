//! Other writers (inotify): their changes reach the index.

use std::fs;

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{DirKey, Store};

/// The store of `fx`, opened and following other writers.
fn watched(fx: &Fx) -> Store {
    let store = fx.open();
    store.watch().expect("watch");
    store
}

#[test]
fn other_writers_changes_reach_the_index_and_match_a_fresh_scan() {
    use crate::store::watch::Change;
    let fx = base();
    let store = watched(&fx);
    // Another writer, holding the store lock as the rule says.
    fx.other_writer(|fx| {
        fx.content(20, "ready").ctag("ext/new", "v1", 20);
        fs::remove_file(fx.p(&format!("{REPOSITORIES}/a/two"))).expect("rm");
        fx.ltag("l", "third", 9);
        fx.mkdirs(&format!("{REPOSITORIES}/ext/empty"));
    });
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
    let store = watched(&fx);
    // Digest 2 has one tag we know of; another writer names it too, and nobody synced yet.
    fx.other_writer(|fx| {
        fx.ctag("elsewhere", "keep", 2);
    });
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
    let store = watched(&fx);
    fx.other_writer(|fx| {
        fs::remove_dir_all(fx.p(&format!("{CONTENT}/{}", hex(7)))).expect("rm digest");
        fs::remove_dir_all(fx.p(&format!("{REPOSITORIES}/b"))).expect("rm repo");
    });
    store.sync_external().expect("sync");
    assert!(!store.has_digest(&dg(7)));
    assert!(store.repo_dir("b").is_none() && store.repo_dir("b/c").is_none());
    check(&store);
}

#[test]
fn a_store_that_starts_empty_sees_its_first_pull() {
    let fx = Fx::new();
    let store = watched(&fx);
    // content/ and repositories/ do not exist yet when the watch starts.
    fx.other_writer(|fx| {
        fx.content(30, "ready").ctag("first/pull", "latest", 30);
    });
    store.sync_external().expect("sync");
    assert_eq!(
        store.tag("first/pull", "latest").map(|t| t.key),
        Some(DirKey::Content(dg(30)))
    );
    // Later writes into the new directories are seen too.
    fx.other_writer(|fx| {
        fx.content(31, "ready").ctag("first/pull", "next", 31);
    });
    store.sync_external().expect("sync");
    assert!(store.tag("first/pull", "next").is_some());
    check(&store);
}
