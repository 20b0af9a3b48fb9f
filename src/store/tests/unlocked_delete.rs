//! The deletion of a collected directory runs after the store lock is released
//! (`collection.rs`): other changes proceed meanwhile, a tag of the same digest made in
//! that window is refused (nothing is resurrected, nothing lost), and a deletion that fails
//! there leaves only a trash entry, which the next mount empties.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::fixture::*;
use crate::store::collection::BEFORE_DELETE;
use crate::store::layout::CONTENT;
use crate::store::sys::fault;
use crate::store::{Store, StoreError, Target};

/// Runs `f` in the window between the release of the lock and the deletion of the next
/// change that collects; returns where it writes what it saw.
fn in_the_window(
    store: &Arc<Store>,
    f: impl Fn(&Store) -> Vec<String> + 'static,
) -> Rc<RefCell<Vec<String>>> {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (s, out) = (store.clone(), seen.clone());
    BEFORE_DELETE.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || out.borrow_mut().extend(f(&s))));
    });
    seen
}

#[test]
fn other_changes_run_while_a_collection_deletes_and_the_digest_cannot_be_tagged_again() {
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .content(3, "ready")
        .ctag("a", "one", 1)
        .ctag("a", "two", 2)
        .ctag("b", "three", 3);
    let store = Arc::new(fx.open());
    let bk = fx.bookkeeping();
    let seen = in_the_window(&store, move |s| {
        if s.mutate.try_lock().is_none() {
            // Held through the deletion (as before `collection.rs`): what follows would
            // wait for it, here for ever.
            return vec!["lock free: false".into()];
        }
        let trash = std::fs::read_dir(bk.join("trash")).map_or(0, |rd| rd.count());
        let intents = std::fs::read_dir(bk.join("intents")).map_or(0, |rd| rd.count());
        vec![
            "lock free: true".into(),
            format!("trash entries: {trash}, intents: {intents}"),
            // The digest being deleted: gone from the index, so no tag can name it.
            match s.create_tag("a", b"again", &Target::Digest(dg(1))) {
                Err(StoreError::NotFound(_)) => "tag of the deleted digest: ENOENT".into(),
                r => format!("tag of the deleted digest: {r:?}"),
            },
            format!(
                "tag of another: {:?}",
                s.create_tag("b", b"two", &Target::Digest(dg(2)))
                    .map(|d| d == dg(2))
            ),
            // Another collection: its own deletion, not waiting for the first.
            format!(
                "rm of another last tag: {:?}",
                s.remove_tag("b", "three").map(|c| c.len())
            ),
        ]
    });
    let got = store.remove_tag("a", "one").expect("rm a:one");
    assert_eq!(
        *seen.borrow(),
        vec![
            "lock free: true".to_string(),
            "trash entries: 1, intents: 0".into(),
            "tag of the deleted digest: ENOENT".into(),
            "tag of another: Ok(true)".into(),
            "rm of another last tag: Ok(1)".into(),
        ]
    );
    assert_eq!(got.len(), 1);
    assert!(got[0].bytes > 0 && got[0].to_delete.is_none(), "{got:?}");
    for n in [1, 3] {
        assert!(
            !fx.has(&format!("{CONTENT}/{}", hex(n))),
            "content/{n} collected"
        );
    }
    assert!(fx.has(&format!("{CONTENT}/{}", hex(2))));
    assert!(!fx.has("repositories/a/again") && fx.has("repositories/b/two"));
    assert!(fx.entries("trash").is_empty() && fx.entries("intents").is_empty());
    check(&store);
    drop(store);
    check(&fx.open());
}

#[test]
fn a_deletion_that_fails_after_the_lock_leaves_only_a_trash_entry_for_the_next_mount() {
    let fx = Fx::new();
    fx.content(1, "ready").ctag("a", "one", 1);
    let store = Arc::new(fx.open());
    let _ = in_the_window(&store, |_| {
        // Every later call of the deletion fails (a persisting EIO).
        fault::arm_sticky(1, libc::EIO);
        Vec::new()
    });
    let got = store.remove_tag("a", "one");
    let plan = fault::disarm();
    assert!(plan.hit.is_some(), "the deletion met the fault");
    let got = got.expect("rm succeeds: the tag and the image left the store");
    assert_eq!((got.len(), got[0].bytes), (1, 0), "{got:?}");
    assert!(!fx.has(&format!("{CONTENT}/{}", hex(1))));
    assert!(!fx.has("repositories/a/one"));
    assert_eq!(fx.entries("trash").len(), 1, "left in the trash");
    assert!(
        fx.entries("intents").is_empty(),
        "its intent went with the rename"
    );
    drop(store);
    // The next mount empties the trash: the store as after the `rm`.
    let s = fx.open();
    check(&s);
    assert!(fx.entries("trash").is_empty());
}

/// The fsync after the lock goes through the directory as it was under the lock: a
/// repository renamed in the window (through the mount, or by hypeman) does not fail the
/// `rm` that is done (it made `rm` answer EIO, 5 of 8 runs of
/// `test_repository_renames_race_tag_ops`).
#[test]
fn a_repository_renamed_before_the_fsync_does_not_fail_the_change() {
    let fx = Fx::new();
    fx.content(1, "ready").ctag("h.io/a", "one", 1);
    let store = Store::open(fx.root(), crate::store::Options { durable: true }).expect("open");
    crate::store::durability::take_unsynced();
    let staged = store.remove_tag_staged("h.io/a", "one").expect("rm");
    std::fs::rename(fx.p("repositories/h.io/a"), fx.p("repositories/h.io/b")).expect("mv");
    staged.finish();
    assert_eq!(crate::store::durability::take_unsynced(), None);
    assert!(!fx.has(&format!("{CONTENT}/{}", hex(1))), "collected");
}
