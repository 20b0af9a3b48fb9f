//! The store's queries: owned values that agree with the index.

use super::fixture::*;
use crate::store::layout::Layout;
use crate::store::layout::REPOSITORIES;
use crate::store::{DirKey, Entry, RepoDir, Store, Tag};

/// A window of a listing: (is a directory, name) per entry.
fn children(store: &Store, path: &str, skip: usize, max: usize) -> Option<Vec<(bool, String)>> {
    let w = store.children_window(path, skip, max)?;
    Some(
        w.iter()
            .map(|(dir, s)| (dir, String::from_utf8_lossy(s).into_owned()))
            .collect(),
    )
}

#[test]
fn queries_answer_from_the_index() {
    let fx = base();
    let store = fx.open();
    let content_tag = |n| {
        Some(Entry::Tag(Tag {
            key: DirKey::Content(dg(n)),
            layout: Layout::Content,
        }))
    };
    assert_eq!(store.entry("a", "one"), content_tag(1));
    assert_eq!(store.entry("", "b"), Some(Entry::Dir));
    assert_eq!(store.entry("a", "nope"), None);
    assert_eq!(store.entry("nope", "one"), None);
    assert_eq!(children(&store, "b", 0, 10), Some(vec![(true, "c".into())]));
    assert_eq!(
        children(&store, "l", 1, 10),
        Some(vec![(false, "old2".into())])
    );
    assert_eq!(children(&store, "nope", 0, 10), None);
    assert_eq!(children(&store, "l", 2, 10), Some(vec![]), "past the end");
    assert_eq!(
        store.repo_dir("b"),
        Some(RepoDir {
            path: fx.p(&format!("{REPOSITORIES}/b")),
            subdirs: 1
        })
    );
    assert_eq!(
        store.repo_dir("l").map(|d| d.path),
        Some(fx.p("l")),
        "a legacy-only repository is its legacy directory"
    );
    assert_eq!(store.repo_dir("").map(|d| d.path), Some(fx.p("")));
    let (tag, link) = store.tag_link("l", "old").expect("l:old");
    assert_eq!((tag.layout, link), (Layout::Legacy, fx.p("l/old")));
    assert!(store.has_digest(&dg(9)) && !store.has_digest(&dg(0xaa)));
    let all: Vec<_> = (1..=9).map(dg).collect();
    assert_eq!(store.digests(), all);
    assert_eq!(
        store.images_window(2, 2),
        vec![
            (hex(3), DirKey::Content(dg(3))),
            (hex(4), DirKey::Content(dg(4)))
        ]
    );
    assert_eq!(store.digest_count(), 9);
    assert_eq!(
        store.primary_dir(&dg(8)).and_then(|k| store.dir_path(&k)),
        Some(
            store
                .root()
                .join(DirKey::Legacy("l".into(), dg(8)).rel_path())
        )
    );
    let census = store.census();
    assert_eq!((census.tags, census.digests), (9, 9));
    assert_eq!(census.tags, store.tag_count());
    assert_eq!(census.dirs.len(), 9);
    assert_eq!(
        store.primary_dir(&dg(1)).and_then(|k| store.dir_path(&k)),
        Some(fx.p(&format!("content/{}", hex(1))))
    );
}
