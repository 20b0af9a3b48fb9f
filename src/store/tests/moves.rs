//! Issue 10's bugs about names and moves: a shadowed twin removed with its name (bug 11),
//! digest-shaped repository names refused (bug 10), repository moves all-or-nothing (bug 9),
//! and the errnos of the smaller ones (ENAMETOOLONG, exchanges of a tag and a directory).

use std::fs;

use super::fixture::*;
use crate::store::layout::REPOSITORIES;
use crate::store::{RenameMode, Target};

/// `l:old` in both layouts (the content one, naming 1, shown); `l:t9` in both layouts, the
/// shadowed legacy one the only reference to `l/<9>`.
fn twins() -> Fx {
    let fx = base();
    fx.ctag("l", "old", 1).ltag("l", "t9", 9).ctag("l", "t9", 2);
    fx
}

#[test]
fn rm_removes_the_shadowed_twin_and_collects_its_directory() {
    let fx = twins();
    let store = fx.open();
    assert_eq!(
        store.index().tag("l", "old").map(|t| t.key.digest()),
        Some(dg(1))
    );
    assert_eq!(
        collected_rels(&store.remove_tag("l", "old").expect("rm")),
        Vec::<String>::new()
    );
    assert!(!fx.has("l/old"), "the legacy twin must go with the name");
    assert!(fx.has("l/old2"));
    // The twin was the only reference to l/<9>: it is collected.
    assert_eq!(
        collected_rels(&store.remove_tag("l", "t9").expect("rm")),
        vec![format!("l/{}", hex(9))]
    );
    assert!(!fx.has("l/t9") && !fx.has(&format!("l/{}", hex(9))));
    let store = check_reopen(&fx, store);
    assert!(
        store.index().tag("l", "old").is_none(),
        "a removed tag came back"
    );
    assert!(
        store.index().tag("l", "t9").is_none(),
        "a removed tag came back"
    );
}

#[test]
fn mv_takes_the_shadowed_twin_of_the_moved_name_away() {
    let fx = base();
    fx.ltag("l", "t9", 9).ctag("l", "t9", 2);
    let store = fx.open();
    let got = store
        .rename_tag(("l", "t9"), "a", b"moved", RenameMode::NoReplace)
        .expect("mv");
    assert_eq!(collected_rels(&got), vec![format!("l/{}", hex(9))]);
    assert!(
        !fx.has("l/t9"),
        "the legacy twin must go with the moved name"
    );
    let store = check_reopen(&fx, store);
    assert!(
        store.index().tag("l", "t9").is_none(),
        "the moved name came back"
    );
    assert_eq!(
        store.index().tag("a", "moved").map(|t| t.key.digest()),
        Some(dg(2))
    );
}

#[test]
fn digest_shaped_repository_names_are_refused() {
    let fx = base();
    let store = fx.open();
    let h = hex(0xab);
    assert_eq!(
        kinds(&store.mkdir("l", h.as_bytes(), 0o755, 0, 0)),
        Err("Invalid")
    );
    assert_eq!(
        kinds(&store.mkdir("", h.as_bytes(), 0o755, 0, 0)),
        Err("Invalid")
    );
    // The legacy repository `l` (tags and digest directories) moved under a name whose last
    // component is digest-shaped: after a remount `foo/<hex>` would be a digest of `foo`.
    store.mkdir("", b"foo", 0o755, 0, 0).expect("mkdir");
    for (p, n) in [("foo", h.as_str()), ("", h.as_str())] {
        assert_eq!(
            kinds(&store.rename_dir("l", p, n.as_bytes(), RenameMode::Replace)),
            Err("Invalid"),
            "mv l {p}/{n}"
        );
    }
    // A repository holding a directory that would get a digest-shaped path below it.
    assert_eq!(
        kinds(&store.create_tag(&format!("foo/{h}"), b"t", &Target::Digest(dg(1)))),
        Err("Invalid")
    );
    assert_eq!(
        kinds(&store.rename_tag(("a", "one"), &format!("l/{h}"), b"t", RenameMode::Replace)),
        Err("Invalid")
    );
    assert!(fx.has("l/old") && fx.has(&format!("l/{}", hex(8))));
    check_reopen(&fx, store);
}

#[test]
fn a_repository_path_past_255_bytes_is_too_long_not_invalid() {
    let fx = base();
    let store = fx.open();
    store.mkdir("a", b"sub", 0o755, 0, 0).expect("mkdir");
    // `a` holds `sub`: the new name itself fits, `<new>/sub` does not.
    let long = "x".repeat(253);
    assert_eq!(
        kinds(&store.rename_dir("a", "", long.as_bytes(), RenameMode::Replace)),
        Err("NameTooLong")
    );
    check(&store);
}

#[test]
fn exchanging_a_tag_and_a_directory_is_einval_both_ways() {
    let fx = base();
    let store = fx.open();
    assert_eq!(
        kinds(&store.rename_tag(("a", "one"), "b", b"c", RenameMode::Exchange)),
        Err("Invalid")
    );
    assert_eq!(
        kinds(&store.rename_dir("b/c", "a", b"one", RenameMode::Exchange)),
        Err("Invalid")
    );
    // Without EXCHANGE, a tag onto a directory stays EISDIR.
    assert_eq!(
        kinds(&store.rename_tag(("a", "one"), "b", b"c", RenameMode::Replace)),
        Err("IsDir")
    );
    check(&store);
}

/// `l` with tags in both layouts: legacy `l:old`, `l:old2` (8), content `l:c` (1).
fn both_halves() -> Fx {
    let fx = base();
    fx.ctag("l", "c", 1);
    fx
}

#[test]
fn a_repository_move_blocked_by_a_stray_file_changes_nothing() {
    let fx = both_halves();
    let store = fx.open();
    fs::write(fx.p("z"), "stray").expect("stray file");
    assert_eq!(
        kinds(&store.rename_dir("l", "", b"z", RenameMode::Replace)),
        Err("Exists")
    );
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/l/c")),
        content_text("l", dg(1))
    );
    assert!(
        !fx.has(&format!("{REPOSITORIES}/z")),
        "the content half moved"
    );
    fs::remove_file(fx.p("z")).expect("rm stray");
    let store = check_reopen(&fx, store);
    assert!(store.index().tag("l", "c").is_some() && store.index().tag("l", "old").is_some());
}

/// `chattr +i` on a directory, if the filesystem and the caller allow it.
fn immutable(p: &std::path::Path, on: bool) -> bool {
    std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(p)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_repository_move_whose_second_half_fails_is_rolled_back() {
    let fx = both_halves();
    let store = fx.open();
    // The legacy half cannot move (EPERM), after the content half has.
    if !immutable(&fx.p("l"), true) {
        eprintln!("SKIP: chattr +i not possible here (needs root on ext4, xfs, tmpfs)");
        return;
    }
    let r = store.rename_dir("l", "q/z", b"deep", RenameMode::Replace);
    assert!(immutable(&fx.p("l"), false));
    assert_eq!(kinds(&r), Err("Io"));
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/l/c")),
        content_text("l", dg(1)),
        "the content half must be back, with its tags' text"
    );
    assert!(
        !fx.has(&format!("{REPOSITORIES}/q")),
        "a parent made for the move stayed"
    );
    assert!(!fx.has("q"), "a parent made for the move stayed");
    assert!(fx.entries("intents").is_empty());
    check_reopen(&fx, store);
}

#[test]
fn an_interrupted_repository_move_is_finished_or_rolled_back_at_the_next_mount() {
    // The content half had moved (and been relinked) when the daemon died.
    let finish = base();
    finish.ctag("q/z", "c", 1).json_intent(
        "0001",
        serde_json::json!({"op": "move-repo", "from": "l", "to": "q/z"}),
    );
    let store = finish.open();
    assert!(finish.has("q/z/old") && finish.has(&format!("q/z/{}", hex(8))));
    assert!(!finish.has("l"));
    assert!(store.index().tag("q/z", "c").is_some());
    check_reopen(&finish, store);

    // The same, but the legacy half cannot follow (a stray file took its place): back.
    let back = base();
    back.ctag("q/z", "c", 1).json_intent(
        "0001",
        serde_json::json!({"op": "move-repo", "from": "l", "to": "q/z"}),
    );
    fs::create_dir_all(back.p("q")).expect("mkdir");
    fs::write(back.p("q/z"), "stray").expect("stray file");
    let store = back.open();
    assert_eq!(
        back.link(&format!("{REPOSITORIES}/l/c")),
        content_text("l", dg(1))
    );
    assert!(back.has("l/old") && !back.has(&format!("{REPOSITORIES}/q/z")));
    drop(store);
    fs::remove_file(back.p("q/z")).expect("rm stray");
    fs::remove_dir(back.p("q")).expect("rmdir");
    let store = back.open();
    assert!(store.index().tag("l", "c").is_some() && store.index().tag("l", "old").is_some());
    check(&store);
    drop(store);

    // Everything had gone back, but a content tag kept the text of the other depth (the
    // relink back failed): the next mount rewrites it.
    let undone = base();
    undone.ctag("l", "c", 1).json_intent(
        "0001",
        serde_json::json!({"op": "move-repo", "from": "l", "to": "q/z"}),
    );
    let c = undone.p(&format!("{REPOSITORIES}/l/c"));
    fs::remove_file(&c).expect("rm");
    std::os::unix::fs::symlink(content_text("q/z", dg(1)), &c).expect("other depth's text");
    let store = undone.open();
    assert_eq!(
        undone.link(&format!("{REPOSITORIES}/l/c")),
        content_text("l", dg(1))
    );
    check_reopen(&undone, store);
}
