//! Crash recovery: hand-written intents and partial states, replayed at open.

use std::fs;
use std::os::unix::fs::symlink;

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{DirKey, RenameMode, Store};

/// Digests tagged before the crash must still exist, and nothing may be left over.
fn assert_recovered(fx: &Fx, store: &Store) -> Snap {
    let s = check(store);
    for (_, (_, d)) in s.tags.iter() {
        assert!(
            s.dirs.keys().any(|k| k.ends_with(&d.hex())),
            "tagged {d} lost"
        );
    }
    assert!(fx.entries("trash").is_empty());
    s
}

#[test]
fn recovery_collects_unreferenced_gc_dirs_and_keeps_referenced_ones() {
    let fx = Fx::new();
    for n in 1..=3 {
        fx.content(n, "ready");
    }
    fx.legacy("l", 8, "ready")
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
    let trashed = fx.private("trash").join(format!("{}-x", &hex(0xdd)[..12]));
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

/// Coarse file timestamps: a directory made again within a few milliseconds may get the
/// same birth time; hypeman's re-pull takes far longer.
fn later() {
    std::thread::sleep(std::time::Duration::from_millis(20));
}

#[test]
fn an_intent_never_collects_a_directory_re_created_under_its_path() {
    // Issue 9, finding 1: imagefs recorded the collection of content/7; hypeman's own GC
    // removed the directory first, then pulled the digest again as a digest-only image
    // (no tag, which hypeman keeps) — and again as an image pulled under a tag whose tag
    // went. Neither is the directory the intent was written for.
    for name in [
        "docker.io/library/alpine@sha256:77",
        "docker.io/library/alpine:latest",
    ] {
        let fx = Fx::new();
        fx.content(7, "ready")
            .gc_intent("0001", &format!("{CONTENT}/{}", hex(7)));
        let dir = fx.p(&format!("{CONTENT}/{}", hex(7)));
        fs::remove_dir_all(&dir).expect("hypeman's RemoveAll");
        later();
        fx.content(7, "ready");
        let md = fs::read_to_string(dir.join("metadata.json")).expect("md");
        let md = md.replace("\"test\"", &format!("\"{name}\""));
        fs::write(dir.join("metadata.json"), md).expect("md");
        let store = fx.open();
        assert!(
            dir.is_dir(),
            "{name}: a re-created directory was collected at replay"
        );
        assert!(fx.entries("intents").is_empty(), "{name}");
        assert_eq!(
            snap(&store).dirs.get(&format!("{CONTENT}/{}", hex(7))),
            Some(&0),
            "{name}"
        );
    }
}

#[test]
fn replay_keeps_what_hypeman_keeps_and_what_is_not_finished() {
    // The very directory, untagged, but (a) hypeman keeps it as digest-only, (b) its status
    // went back to a pull in progress: kept, the intent dropped.
    let fx = Fx::new();
    fx.content(1, "ready").content(2, "ready");
    let d1 = fx.p(&format!("{CONTENT}/{}", hex(1)));
    let md = fs::read_to_string(d1.join("metadata.json")).expect("md");
    fs::write(
        d1.join("metadata.json"),
        md.replace("\"test\"", "\"docker.io/library/x@sha256:11\""),
    )
    .expect("md");
    fx.gc_intent("0001", &format!("{CONTENT}/{}", hex(1)))
        .gc_intent("0002", &format!("{CONTENT}/{}", hex(2)));
    let d2 = fx.p(&format!("{CONTENT}/{}", hex(2)));
    let md = fs::read_to_string(d2.join("metadata.json")).expect("md");
    fs::write(
        d2.join("metadata.json"),
        md.replace("\"ready\"", "\"pulling\""),
    )
    .expect("md");
    let store = fx.open();
    assert!(d1.is_dir() && d2.is_dir());
    assert!(fx.entries("intents").is_empty());
    drop(store);
    // An older imagefs's record names no identity: never replayed.
    let fx = Fx::new();
    fx.content(3, "ready")
        .old_gc_intent("0001", &format!("{CONTENT}/{}", hex(3)));
    let _store = fx.open();
    assert!(fx.has(&format!("{CONTENT}/{}", hex(3))));
    assert!(fx.entries("intents").is_empty());
}

#[test]
fn an_intent_whose_directory_another_writer_removed_is_simply_done() {
    let fx = Fx::new();
    fx.content(7, "ready")
        .content(1, "ready")
        .ctag("a", "one", 1)
        .gc_intent("0001", &format!("{CONTENT}/{}", hex(7)));
    fs::remove_dir_all(fx.p(&format!("{CONTENT}/{}", hex(7)))).expect("hypeman's RemoveAll");
    let rec = crate::store::recover::replay(fx.root(), true).expect("replay");
    assert!(rec.failures.is_empty(), "{:?}", rec.failures);
    assert!(
        rec.actions.iter().any(|a| a.contains("already gone")),
        "{:?}",
        rec.actions
    );
    assert!(fx.entries("intents").is_empty());
    let store = fx.open();
    assert_recovered(&fx, &store);
}

#[test]
fn bookkeeping_inside_the_store_from_an_older_imagefs_is_moved_beside_it_at_open() {
    // An older imagefs kept it in STORE/.imagefs/, where hypeman's listings see it.
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .ctag("a", "one", 1);
    let old = fx.p(crate::store::layout::PRIVATE);
    fs::create_dir_all(old.join("intents")).expect("old intents");
    fs::create_dir_all(old.join("trash/x-1/sub")).expect("old trash");
    fs::write(old.join("trash/x-1/sub/metadata.json"), "{}").expect("trash file");
    fs::write(old.join("lock"), "").expect("old lock");
    symlink(format!("{CONTENT}/{}", hex(2)), old.join("intents/0001.gc")).expect("old intent");
    let store = fx.open();
    assert!(!old.exists(), "STORE/.imagefs left in the store");
    // The old record was moved and dropped (no identity): content/2 kept; the trash emptied.
    assert!(fx.has(&format!("{CONTENT}/{}", hex(2))));
    let s = assert_recovered(&fx, &store);
    assert_eq!(s.tags.len(), 1);
    assert!(fx.bookkeeping().join("lock").is_file());
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

#[test]
fn recovery_relinks_a_repository_moved_back_midway() {
    // `mv tags/a tags/x/y/a` moved the directory, rewrote one tag, failed, moved it back and
    // could not rewrite the tag back: `a/one` has the text of `x/y/a`.
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .ctag("a", "one", 1)
        .ctag("a", "two", 2);
    let p = fx.p(&format!("{REPOSITORIES}/a/one"));
    fs::remove_file(&p).expect("rm");
    symlink(content_text("x/y/a", dg(1)), &p).expect("new depth's text");
    fx.json_intent(
        "0001",
        serde_json::json!({"op": "relink", "dir": format!("{REPOSITORIES}/x/y/a"),
                           "from": format!("{REPOSITORIES}/a")}),
    );
    let store = fx.open();
    assert_eq!(assert_recovered(&fx, &store).tags.len(), 2);
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/a/one")),
        content_text("a", dg(1))
    );
}

#[test]
fn side_trashes_inside_the_store_are_emptied_at_open_and_never_problems() {
    // Issue 10, bug 2: where content/ or a legacy repository is a filesystem of its own, a
    // collection renames the directory into `.imagefs-trash/` beside it; a crash leaves it there.
    let fx = Fx::new();
    fx.content(1, "ready")
        .legacy("l", 2, "ready")
        .ltag("l", "two", 2);
    let side = [
        fx.root().join(CONTENT).join(".imagefs-trash"),
        fx.root().join("l").join(".imagefs-trash"),
    ];
    for s in &side {
        let d = s.join(format!("x-{}", &hex(9)[..12]));
        fs::create_dir_all(d.join("sub")).expect("side trash");
        fs::write(d.join("metadata.json"), b"{}").expect("metadata");
        symlink("/etc", d.join("sub/link")).expect("link");
    }
    let view = crate::store::layout::scan_with(fx.root(), &Default::default()).expect("scan");
    assert!(view.problems.is_empty(), "{:?}", view.problems);
    let mut found = view.side_trash.clone();
    found.sort();
    assert_eq!(found, side.to_vec());
    let store = fx.open();
    for s in &side {
        assert!(!s.exists(), "{} left", s.display());
    }
    let s = check(&store);
    assert_eq!(s.dirs.len(), 2, "{:?}", s.dirs.keys());
    assert!(fs::metadata("/etc").is_ok());
}
