//! Deferred collections (issue 9, finding 2): a directory another writer took a tag away
//! from moments ago is not collected at once; the retry collects it once the store is quiet,
//! or drops it if a tag came back, the directory changed or it is no longer collectable.

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::fixture::*;
use crate::store::watch::Change;
use crate::store::{DirKey, Store};

const REPO: &str = "docker.io/library/r";
/// The quiet window of these tests: long enough that a step right after another writer's
/// change is inside it, short enough not to slow the suite.
const QUIET: Duration = Duration::from_millis(400);

/// A legacy repository whose digest 10 has two tags, `a` and `b`, in a watched store.
fn two_tags() -> (Fx, Store) {
    let fx = Fx::new();
    fx.legacy(REPO, 10, "ready")
        .ltag(REPO, "a", 10)
        .ltag(REPO, "b", 10);
    let store = fx.open();
    store.watch().expect("watch");
    store.set_quiet(QUIET);
    (fx, store)
}

fn dir() -> String {
    format!("{REPO}/{}", hex(10))
}

/// Legacy hypeman's retag of `a`, first half: it removes the link (no lock).
fn hypeman_unlinks_a(fx: &Fx) {
    fs::remove_file(fx.p(&format!("{REPO}/a"))).expect("hypeman's unlink");
}

/// What the retries collected.
fn collected(changes: &[Change]) -> Vec<DirKey> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Collected(c) => Some(c.dir.clone()),
            _ => None,
        })
        .collect()
}

/// The retry, once the quiet window is over.
fn retry_after_quiet(store: &Store) -> Vec<Change> {
    std::thread::sleep(QUIET + Duration::from_millis(100));
    store.sync_external().expect("sync")
}

#[test]
fn an_rm_in_a_retag_gap_is_deferred_and_dropped_when_the_tag_comes_back() {
    let (fx, store) = two_tags();
    hypeman_unlinks_a(&fx);
    // Our rm of the sibling tag lands in the gap: it applies hypeman's unlink first and
    // finds its own tag the last one.
    assert_eq!(store.remove_tag(REPO, "b").expect("rm"), vec![]);
    assert!(
        fx.has(&dir()),
        "collected in the gap of another writer's retag"
    );
    assert_eq!(store.deferred_gc_count(), 1);
    assert!(store.needs_revisit(), "the watcher must wake for the retry");
    // hypeman's retag, second half.
    symlink(hex(10), fx.p(&format!("{REPO}/a"))).expect("hypeman's symlink");
    let changes = retry_after_quiet(&store);
    assert_eq!(collected(&changes), vec![]);
    assert!(fx.has(&format!("{}/rootfs.erofs", dir())));
    assert_eq!(store.deferred_gc_count(), 0);
    assert!(!store.needs_revisit());
    let s = &store.stats;
    let outcome = |c: &std::sync::atomic::AtomicU64| c.load(Relaxed);
    assert_eq!(
        (
            outcome(&s.gc_deferred),
            outcome(&s.gc_deferred_collected),
            outcome(&s.gc_deferred_dropped),
            outcome(&s.collections)
        ),
        (1, 0, 1, 0)
    );
    assert_eq!(
        store.tag(REPO, "a").map(|t| t.key),
        Some(DirKey::Legacy(REPO.into(), dg(10)))
    );
    check_reopen(&fx, store);
}

#[test]
fn a_deferred_collection_is_done_once_the_store_is_quiet_and_no_tag_came_back() {
    let (fx, store) = two_tags();
    hypeman_unlinks_a(&fx);
    assert_eq!(store.remove_tag(REPO, "b").expect("rm"), vec![]);
    // Within the window the retry waits.
    let changes = store.sync_external().expect("sync");
    assert_eq!(collected(&changes), vec![]);
    assert!(fx.has(&dir()) && store.deferred_gc_count() == 1);
    let changes = retry_after_quiet(&store);
    assert_eq!(
        collected(&changes),
        vec![DirKey::Legacy(REPO.into(), dg(10))],
        "{changes:?}"
    );
    assert!(!fx.has(&dir()), "the retry did not remove the directory");
    assert!(fx.entries("intents").is_empty() && fx.entries("trash").is_empty());
    let s = &store.stats;
    assert_eq!(
        (
            s.gc_deferred_collected.load(Relaxed),
            s.gc_deferred_dropped.load(Relaxed),
            s.collections.load(Relaxed)
        ),
        (1, 0, 1)
    );
    assert!(!store.needs_revisit());
    check_reopen(&fx, store);
}

#[test]
fn a_deferred_collection_keeps_a_directory_that_is_no_longer_collectable() {
    let (fx, store) = two_tags();
    hypeman_unlinks_a(&fx);
    assert_eq!(store.remove_tag(REPO, "b").expect("rm"), vec![]);
    // A new pull of the same digest sets it back to pending (hypeman rewrites metadata).
    fx.metadata(&fx.p(&dir()), &hex(10), "pending", 0);
    let changes = retry_after_quiet(&store);
    assert_eq!(collected(&changes), vec![]);
    assert!(fx.has(&dir()), "a pending directory was collected");
    assert_eq!(store.stats.gc_deferred_dropped.load(Relaxed), 1);
    assert_eq!(store.deferred_gc_count(), 0);
    check_reopen(&fx, store);
}

#[test]
fn a_deferred_collection_never_removes_another_directory_under_the_same_path() {
    let (fx, store) = two_tags();
    hypeman_unlinks_a(&fx);
    assert_eq!(store.remove_tag(REPO, "b").expect("rm"), vec![]);
    // hypeman removes the image and pulls it again, untagged (a digest-only pull, say).
    fs::remove_dir_all(fx.p(&dir())).expect("hypeman's RemoveAll");
    fx.legacy(REPO, 10, "ready");
    let changes = retry_after_quiet(&store);
    assert_eq!(collected(&changes), vec![]);
    assert!(
        fx.has(&dir()),
        "a directory made after the deferral was collected"
    );
    assert_eq!(store.stats.gc_deferred_dropped.load(Relaxed), 1);
    check_reopen(&fx, store);
}

#[test]
fn our_own_tag_changes_never_defer_a_collection() {
    let (fx, store) = two_tags();
    store.remove_tag(REPO, "a").expect("rm a");
    // The watcher reads the events of our own unlink: nothing another writer did.
    store.sync_external().expect("sync");
    let got = store.remove_tag(REPO, "b").expect("rm b");
    assert_eq!(collected_rels(&got), vec![dir()]);
    assert!(!fx.has(&dir()), "collected at once");
    assert_eq!(store.stats.gc_deferred.load(Relaxed), 0);
    check(&store);
}

#[test]
fn another_writers_change_long_ago_does_not_defer() {
    let (fx, store) = two_tags();
    hypeman_unlinks_a(&fx);
    store.sync_external().expect("sync");
    std::thread::sleep(QUIET + Duration::from_millis(100));
    let got = store.remove_tag(REPO, "b").expect("rm b");
    assert_eq!(collected_rels(&got), vec![dir()]);
    assert_eq!(store.stats.gc_deferred.load(Relaxed), 0);
    check(&store);
}

#[test]
fn a_retag_by_another_writer_defers_an_mv_over_the_last_tag() {
    // `ln -sfn`/`mv` over tag b (the replaced tag drops its reference as rm does).
    let fx = Fx::new();
    fx.legacy(REPO, 10, "ready")
        .legacy(REPO, 11, "ready")
        .ltag(REPO, "a", 10)
        .ltag(REPO, "b", 10)
        .ltag(REPO, "c", 11);
    let store = fx.open();
    store.watch().expect("watch");
    store.set_quiet(QUIET);
    hypeman_unlinks_a(&fx);
    let got = store
        .rename_tag((REPO, "c"), REPO, b"b", crate::store::RenameMode::Replace)
        .expect("mv c b");
    assert_eq!(got, vec![]);
    assert!(fx.has(&dir()) && store.deferred_gc_count() == 1);
    symlink(hex(10), fx.p(&format!("{REPO}/a"))).expect("hypeman's symlink");
    assert_eq!(collected(&retry_after_quiet(&store)), vec![]);
    assert!(fx.has(&dir()));
    check_reopen(&fx, store);
}
