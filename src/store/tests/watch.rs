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
        ix.tag("ext/new", "v1").map(|t| DirKey::clone(&t.key)),
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

// ---------------------------------------------------------------------------------------
// The order of events inside a batch does not matter (issue 9, finding 4), and only digests
// are digests (finding 9).

/// The index's tag `repo:tag`, as the digest it names.
fn shown(store: &Store, repo: &str, tag: &str) -> Option<crate::store::Digest> {
    store.tag(repo, tag).map(|t| t.key.digest())
}

#[test]
fn a_new_legacy_repository_whose_tag_sorts_before_its_digest_is_shown() {
    // Legacy hypeman's first pull into a new repository: the repository, its digest
    // directory and the tag, all in one batch; "3.19" sorts before "ffff...".
    let fx = Fx::new();
    let store = watched(&fx);
    fx.legacy("docker.io/library/alpine", 0xff, "ready")
        .ltag("docker.io/library/alpine", "3.19", 0xff)
        .ltag("docker.io/library/alpine", "latest", 0xff);
    store.sync_external().expect("sync");
    assert_eq!(
        shown(&store, "docker.io/library/alpine", "3.19"),
        Some(dg(0xff))
    );
    assert_eq!(
        shown(&store, "docker.io/library/alpine", "latest"),
        Some(dg(0xff))
    );
    assert!(
        store.pending_tags().is_empty(),
        "{:?}",
        store.pending_tags()
    );
    check(&store);
}

#[test]
fn a_second_legacy_pull_into_a_known_repository_is_shown_whatever_the_tag_name() {
    let fx = Fx::new();
    fx.legacy("docker.io/library/alpine", 0x11, "ready").ltag(
        "docker.io/library/alpine",
        "old",
        0x11,
    );
    let store = watched(&fx);
    fx.legacy("docker.io/library/alpine", 0xee, "ready")
        .ltag("docker.io/library/alpine", "1", 0xee)
        .ltag("docker.io/library/alpine", "zz", 0xee);
    store.sync_external().expect("sync");
    assert_eq!(
        shown(&store, "docker.io/library/alpine", "1"),
        Some(dg(0xee))
    );
    assert_eq!(
        shown(&store, "docker.io/library/alpine", "zz"),
        Some(dg(0xee))
    );
    check(&store);
}

#[test]
fn a_tag_made_before_its_digest_directory_is_shown_when_the_directory_comes() {
    // Content hypeman tags a first pull at once; here the tag even lands before the
    // directory, in the same batch, in a repository made in that batch too.
    let fx = base();
    let store = watched(&fx);
    fx.ctag("ghcr.io/new/app", "v1", 40).content(40, "pending");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "ghcr.io/new/app", "v1"), Some(dg(40)));
    // And in two batches: the tag first, its directory in the next one.
    fx.ctag("ghcr.io/new/app", "v2", 41);
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "ghcr.io/new/app", "v2"), None);
    assert_eq!(
        store.pending_tags(),
        vec![("ghcr.io/new/app".to_string(), "v2".to_string())]
    );
    fx.content(41, "pending");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "ghcr.io/new/app", "v2"), Some(dg(41)));
    assert!(store.pending_tags().is_empty());
    // A pending digest becomes ready: nothing for the index to do, the tag stays.
    fx.metadata(
        &fx.p(&format!("{CONTENT}/{}", hex(41))),
        &hex(41),
        "ready",
        1,
    );
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "ghcr.io/new/app", "v2"), Some(dg(41)));
    check(&store);
}

#[test]
fn a_tag_dangling_at_mount_is_shown_once_its_directory_comes() {
    let fx = base();
    fx.ctag("late", "t", 50).ltag("l", "later", 51);
    let store = watched(&fx);
    assert_eq!(shown(&store, "late", "t"), None);
    fx.content(50, "pending").legacy("l", 51, "pending");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "late", "t"), Some(dg(50)));
    assert_eq!(shown(&store, "l", "later"), Some(dg(51)));
    check(&store);
}

#[test]
fn a_digest_directory_removed_and_made_again_gets_its_tags_back() {
    // hypeman RemoveAll's a failed pull and pulls it again; its tag link stayed.
    let fx = base();
    let store = watched(&fx);
    let dir = fx.p(&format!("{CONTENT}/{}", hex(2)));
    fs::remove_dir_all(&dir).expect("rm");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "a", "two"), None);
    assert!(!store.has_digest(&dg(2)));
    fx.content(2, "pending");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "a", "two"), Some(dg(2)));
    // The same for a legacy directory.
    fs::remove_dir_all(fx.p(&format!("l/{}", hex(8)))).expect("rm");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "l", "old"), None);
    fx.legacy("l", 8, "ready");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "l", "old"), Some(dg(8)));
    assert_eq!(shown(&store, "l", "old2"), Some(dg(8)));
    check(&store);
}

#[test]
fn every_order_of_a_pull_converges_to_a_fresh_scan() {
    // The steps of a pull and a tag, applied in every order, synced after each step or
    // only at the end: the index always ends equal to a fresh scan's.
    type Step = fn(&Fx);
    let steps: [(&str, Step); 4] = [
        ("content dir", |fx| {
            fx.content(60, "ready");
        }),
        ("content tag", |fx| {
            fx.ctag("quay.io/o/p", "1.0", 60);
        }),
        ("legacy dir", |fx| {
            fx.legacy("quay.io/o/q", 0xf1, "ready");
        }),
        ("legacy tag", |fx| {
            fx.ltag("quay.io/o/q", "0.1", 0xf1);
        }),
    ];
    let orders: Vec<[usize; 4]> = {
        let mut v = Vec::new();
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let o = [a, b, c, d];
                        let mut s = o;
                        s.sort_unstable();
                        if s == [0, 1, 2, 3] {
                            v.push(o);
                        }
                    }
                }
            }
        }
        v
    };
    for order in orders {
        for sync_each in [false, true] {
            let fx = Fx::new();
            let store = watched(&fx);
            for &i in &order {
                steps[i].1(&fx);
                if sync_each {
                    store.sync_external().expect("sync");
                }
            }
            store.sync_external().expect("sync");
            let names: Vec<&str> = order.iter().map(|&i| steps[i].0).collect();
            assert_eq!(
                shown(&store, "quay.io/o/p", "1.0"),
                Some(dg(60)),
                "{names:?} sync_each={sync_each}"
            );
            assert_eq!(
                shown(&store, "quay.io/o/q", "0.1"),
                Some(dg(0xf1)),
                "{names:?} sync_each={sync_each}"
            );
            let now = check(&store);
            drop(store);
            assert_eq!(check(&fx.open()), now, "{names:?} sync_each={sync_each}");
        }
    }
}

#[test]
fn hypemans_staging_and_layers_are_never_digests_or_tags() {
    let fx = base();
    let store = watched(&fx);
    let before = store.census().digests;
    // Content hypeman: a layer artifact, an install staged and renamed into place, a tag
    // staged in `.tag-stage-*` and renamed into place, leftovers of both.
    let layer = fx.p(&format!("layers/{}", hex(70)));
    fs::create_dir_all(&layer).expect("mkdir layer");
    fs::write(layer.join("layer.erofs"), "layer").expect("layer");
    fs::write(layer.join("artifact.erofs.json"), "{}").expect("artifact");
    let install = fx.p(&format!("{CONTENT}/.install-123"));
    fx.digest_dir(&format!("{CONTENT}/.install-123/d"), dg(71), "ready");
    fs::rename(install.join("d"), fx.p(&format!("{CONTENT}/{}", hex(71)))).expect("install");
    let stage = fx.p(&format!("{REPOSITORIES}/a/.tag-stage-456"));
    fs::create_dir_all(&stage).expect("mkdir stage");
    std::os::unix::fs::symlink(content_text("a", dg(71)), stage.join("seventy-one"))
        .expect("staged tag");
    fs::rename(
        stage.join("seventy-one"),
        fx.p(&format!("{REPOSITORIES}/a/seventy-one")),
    )
    .expect("tag");
    fs::create_dir_all(fx.p(&format!("{REPOSITORIES}/a/.tag-stage-789"))).expect("leftover");
    fs::create_dir_all(fx.p("l/.tag-stage-000")).expect("legacy leftover");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "a", "seventy-one"), Some(dg(71)));
    assert!(store.has_digest(&dg(71)));
    assert!(!store.has_digest(&dg(70)), "layers/<hex> shown as a digest");
    assert_eq!(store.census().digests, before + 1);
    assert!(store.repo_dir("layers").is_none());
    assert!(store.entry("a", ".tag-stage-789").is_none());
    assert!(store.entry("l", ".tag-stage-000").is_none());
    // A fresh scan agrees, and reports none of it as a problem.
    drop(store);
    let view = Store::open_view(fx.root()).expect("view");
    assert!(view.scan.problems.is_empty(), "{:?}", view.scan.problems);
    assert!(!view.dirs().iter().any(|k| k.digest() == dg(70)));
    assert_eq!(view.scan.staging.len(), 4, "{:?}", view.scan.staging);
}

#[test]
fn a_legacy_tag_hidden_by_a_content_tag_shows_when_that_one_goes() {
    let fx = base();
    fx.ltag("l", "both", 9).ctag("l", "both", 1);
    let store = watched(&fx);
    assert_eq!(shown(&store, "l", "both"), Some(dg(1)));
    fs::remove_file(fx.p(&format!("{REPOSITORIES}/l/both"))).expect("rm");
    store.sync_external().expect("sync");
    assert_eq!(shown(&store, "l", "both"), Some(dg(9)));
    check(&store);
}
