//! Living beside hypeman (issue 9): the names it uses (finding 10), and the race of a new
//! tag with its `DeleteImage`, which counts tags and then removes the directory without a
//! lock (finding 3).

use std::fs;

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{DirKey, StoreError, Target, check_hypeman_repo, still_dangling, tags};

#[test]
fn new_tags_go_only_under_the_names_hypeman_uses() {
    for (repo, normal) in [
        ("alpine", "docker.io/library/alpine"),
        ("library/alpine", "docker.io/library/alpine"),
        ("docker.io/alpine", "docker.io/library/alpine"),
        ("index.docker.io/library/alpine", "docker.io/library/alpine"),
        ("myuser/app", "docker.io/myuser/app"),
    ] {
        match check_hypeman_repo(repo, "latest") {
            Err(StoreError::Invalid(why)) => {
                assert!(
                    why.contains(&format!("use tags/{normal}/latest")),
                    "{repo}: the refusal names the normalized form: {why}"
                );
            }
            other => panic!("{repo}: {other:?}"),
        }
    }
    for repo in [
        "docker.io/library/alpine",
        "docker.io/myuser/app",
        "ghcr.io/acme/tools",
        "localhost:5000/x/y",
        "localhost/x",
    ] {
        assert!(check_hypeman_repo(repo, "latest").is_ok(), "{repo}");
    }
}

#[test]
fn a_repository_move_may_not_leave_tags_under_a_name_hypeman_does_not_use() {
    let fx = base();
    let store = fx.open();
    // docker.io/library/alpine holds a tag: moving it to `alpine` would hide it from hypeman.
    assert!(matches!(
        store.check_hypeman_move("docker.io/library/alpine", "alpine"),
        Err(StoreError::Invalid(_))
    ));
    // Moving `docker.io` to `quay.io` keeps every tagged repository normalized
    // (quay.io/library/alpine), though `quay.io` alone is not a repository name.
    assert!(store.check_hypeman_move("docker.io", "quay.io").is_ok());
    // An empty repository directory goes anywhere (mkdir is free; tags are checked).
    assert!(store.check_hypeman_move("b/c", "z").is_ok());
}

/// A digest directory another writer removes while our `ln -s` installs its tag: the tag
/// is taken back and the answer is ENOENT, as if the directory had gone a moment earlier.
#[test]
fn a_tag_whose_directory_goes_while_it_is_installed_is_taken_back() {
    for (repo, n, dir) in [
        ("a", 2u8, format!("{CONTENT}/{}", hex(2))),
        // A legacy directory in its own repository.
        ("l", 8, format!("l/{}", hex(8))),
    ] {
        let fx = base();
        let store = fx.open();
        let path = fx.p(&dir);
        // hypeman's RemoveAll, between our install and our check.
        tags::AFTER_INSTALL.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                fs::remove_dir_all(&path).expect("hypeman's RemoveAll");
            }))
        });
        let got = store.create_tag(repo, b"racing", &Target::Digest(dg(n)));
        tags::AFTER_INSTALL.with(|h| *h.borrow_mut() = None);
        assert_eq!(kinds(&got), Err("NotFound"), "{dir}: {got:?}");
        let link = if repo == "l" {
            "l/racing".to_string()
        } else {
            format!("{REPOSITORIES}/{repo}/racing")
        };
        assert!(!fx.has(&link), "{dir}: the tag was left dangling");
        assert!(store.tag(repo, "racing").is_none());
    }
}

/// Only the identity counts: a directory removed and made again at the same path (another
/// pull of the same digest) while the tag was installed is not the one that was checked.
#[test]
fn a_directory_replaced_while_the_tag_is_installed_is_not_the_one_checked() {
    let fx = base();
    let store = fx.open();
    let path = fx.p(&format!("{CONTENT}/{}", hex(2)));
    tags::AFTER_INSTALL.with(|h| {
        *h.borrow_mut() = Some(Box::new(move || {
            let tmp = path.with_extension("old");
            fs::rename(&path, &tmp).expect("move away");
            fs::create_dir(&path).expect("again");
            for f in ["metadata.json", "rootfs.erofs"] {
                fs::copy(tmp.join(f), path.join(f)).expect("copy");
            }
            fs::remove_dir_all(&tmp).expect("rm");
        }))
    });
    let got = store.create_tag("a", b"racing", &Target::Digest(dg(2)));
    tags::AFTER_INSTALL.with(|h| *h.borrow_mut() = None);
    assert_eq!(kinds(&got), Err("NotFound"), "{got:?}");
    assert!(!fx.has(&format!("{REPOSITORIES}/a/racing")));
}

/// The window that remains (hypeman counted before our install and removes after our
/// check) is found by the watcher: a dangling-tag change naming the tag, which the mount
/// counts and hides; `still_dangling` follows it until the tag leaves the store.
#[test]
fn a_directory_removed_under_its_tags_reports_them_dangling() {
    use crate::store::watch::Change;
    let fx = base();
    let store = fx.open();
    store.watch().expect("watch");
    // hypeman takes no lock. Digest 1 has two tags, the legacy digest 8 two more. A tag
    // that hypeman removes itself before the directory (DeleteImage's own) is not dangling.
    fs::remove_file(fx.p(&format!("{REPOSITORIES}/a/one"))).expect("rm");
    fs::remove_dir_all(fx.p(&format!("{CONTENT}/{}", hex(1)))).expect("RemoveAll");
    fs::remove_dir_all(fx.p(&format!("l/{}", hex(8)))).expect("RemoveAll");
    let changes = store.sync_external().expect("sync");
    let mut dangling: Vec<(String, String, DirKey)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Dangling { repo, tag, dir } => Some((repo.clone(), tag.clone(), dir.clone())),
            _ => None,
        })
        .collect();
    dangling.sort();
    let alpine = ("docker.io/library/alpine".to_string(), "latest".to_string());
    let c1 = DirKey::Content(dg(1));
    let l8 = DirKey::Legacy("l".into(), dg(8));
    assert_eq!(
        dangling,
        vec![
            (alpine.0.clone(), alpine.1.clone(), c1.clone()),
            ("l".into(), "old".into(), l8.clone()),
            ("l".into(), "old2".into(), l8.clone()),
        ],
        "{changes:?}"
    );
    // The mount hides them.
    assert!(store.tag(&alpine.0, &alpine.1).is_none() && store.tag("l", "old").is_none());
    assert!(still_dangling(fx.root(), &alpine.0, &alpine.1, &c1));
    // Once removed from the store (fsck --repair, an operator), it is no longer dangling.
    fs::remove_file(fx.p(&format!("{REPOSITORIES}/{}/{}", alpine.0, alpine.1))).expect("rm");
    assert!(!still_dangling(fx.root(), &alpine.0, &alpine.1, &c1));
    assert!(still_dangling(fx.root(), "l", "old", &l8));
}
