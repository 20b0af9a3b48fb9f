//! Repository directories of `tags/`: mkdir, rmdir and mv in both layouts.

use std::fs;

use super::fixture::*;
use crate::store::layout::REPOSITORIES;
use crate::store::{RenameMode, Target};

#[test]
fn repository_directories() {
    let fx = base();
    let store = fx.open();
    let e = |r: crate::store::Result<()>| kinds(&r);
    assert_eq!(e(store.mkdir("", b"x", 0o755, uid(), gid())), Ok(()));
    assert!(fx.p(&format!("{REPOSITORIES}/x")).is_dir());
    assert_eq!(e(store.mkdir("", b"x", 0o755, uid(), gid())), Err("Exists"));
    assert_eq!(e(store.mkdir("x", b"y", 0o750, uid(), gid())), Ok(()));
    let mode = fs::metadata(fx.p(&format!("{REPOSITORIES}/x/y")))
        .expect("stat")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777,
        0o750
    );
    let deep = "a".repeat(240);
    let cases: [(&str, &[u8], Result<(), &str>); 6] = [
        ("", b"localhost:5000", Ok(())),
        ("x", b"a:1", Err("InvalidName")),
        ("x", b"Y", Err("InvalidName")),
        ("nope", b"y", Err("NotFound")),
        ("a", b"one", Err("Exists")),
        (
            "docker.io/library/alpine",
            deep.as_bytes(),
            Err("NameTooLong"),
        ),
    ];
    for (parent, name, want) in cases {
        let got = e(store.mkdir(parent, name, 0o755, uid(), gid()));
        assert_eq!(
            got,
            want,
            "mkdir {parent}/{}",
            String::from_utf8_lossy(name)
        );
    }
    check(&store);

    assert_eq!(e(store.rmdir("a")), Err("NotEmpty"));
    assert_eq!(e(store.rmdir("a/one")), Err("NotDir"));
    assert_eq!(e(store.rmdir("nope")), Err("NotFound"));
    assert_eq!(e(store.rmdir("")), Err("Invalid"));
    assert_eq!(e(store.rmdir("b")), Err("NotEmpty"));
    assert_eq!(e(store.rmdir("b/c")), Ok(()));
    assert_eq!(e(store.rmdir("b")), Ok(()));
    assert!(!fx.has(&format!("{REPOSITORIES}/b")));
    // A legacy repository whose directory still holds a digest directory.
    for t in ["old", "old2"] {
        store.remove_tag("l", t).expect("rm");
    }
    // The mount shows it empty, so rmdir succeeds; the never-tagged digest directory stays
    // in the store (only `imagefs gc` collects it), so a reopen shows the repository again.
    assert_eq!(e(store.rmdir("l")), Ok(()));
    assert!(store.index().node("l").is_none());
    assert!(fx.has(&format!("l/{}", dg(9))), "l/<hex of 9> must stay");
    drop(store);
    let store = fx.open();
    assert!(store.index().node("l").is_some());
    check(&store);

    // rename_dir: same depth, depth change (relink), legacy, errors.
    let rd = |from: &str, p: &str, n: &str, m: RenameMode| {
        kinds(&store.rename_dir(from, p, n.as_bytes(), m))
    };
    assert_eq!(rd("a", "", "q", RenameMode::Replace), Ok(()));
    check(&store);
    assert_eq!(rd("q", "x/y", "q", RenameMode::NoReplace), Ok(()));
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/x/y/q/one")),
        content_text("x/y/q", dg(1))
    );
    check(&store);
    assert_eq!(rd("x/y/q", "", "a", RenameMode::Replace), Ok(()));
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/a/one")),
        content_text("a", dg(1))
    );
    check(&store);
    assert_eq!(rd("a", "", "x", RenameMode::NoReplace), Err("Exists"));
    assert_eq!(rd("a", "x", "y", RenameMode::Exchange), Err("Invalid"));
    assert_eq!(rd("x", "a", "one", RenameMode::Replace), Err("NotDir"));
    assert_eq!(rd("x", "", "Bad", RenameMode::Replace), Err("InvalidName"));
    assert_eq!(rd("nope", "", "z", RenameMode::Replace), Err("NotFound"));
    assert_eq!(rd("l", "", "content", RenameMode::Replace), Err("Invalid"));
    // Replace onto an empty directory.
    assert_eq!(e(store.mkdir("", b"empty", 0o755, uid(), gid())), Ok(()));
    assert_eq!(rd("x", "", "empty", RenameMode::Replace), Ok(()));
    check(&store);
    // A legacy repository moves with its digest directories.
    store
        .create_tag("l", b"back", &Target::Digest(dg(9)))
        .expect("tag 9");
    assert_eq!(rd("l", "", "l2", RenameMode::Replace), Ok(()));
    assert!(fx.has(&format!("l2/{}", hex(9))) && fx.has("l2/back"));
    let s = check(&store);
    assert_eq!(s.tags[&("l2".into(), "back".into())], (false, dg(9)));
    let store = check_reopen(&fx, store);
    assert_eq!(
        collected_rels(&store.remove_tag("l2", "back").expect("rm")),
        vec![format!("l2/{}", hex(9))]
    );
    check_reopen(&fx, store);
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

fn gid() -> u32 {
    nix::unistd::getgid().as_raw()
}
