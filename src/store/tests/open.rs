//! Opening a store: what the scan ignores, and that it touches none of it.

use std::fs;
use std::os::unix::fs::symlink;

use super::fixture::*;
use crate::store::Target;
use crate::store::layout::{CONTENT, REPOSITORIES};

#[test]
fn open_ignores_junk_without_failing_or_touching_it() {
    let fx = Fx::new();
    fx.content(1, "ready")
        .content(2, "ready")
        .legacy("l", 8, "ready");
    fx.ctag("a", "good", 1).ltag("l", "lgood", 8);
    let missing = hex(0xee);
    let junk_links: Vec<(String, String)> = vec![
        // dangling, outside, escaping, malformed
        (
            format!("{REPOSITORIES}/a/dangling"),
            content_text("a", dg(0xee)),
        ),
        (format!("{REPOSITORIES}/a/abs"), "/etc".into()),
        (
            format!("{REPOSITORIES}/a/escape"),
            format!("../../../content/{}", hex(2)),
        ),
        (
            format!("{REPOSITORIES}/a/into"),
            format!("../../content/{}/rootfs.erofs", hex(2)),
        ),
        (
            format!("{REPOSITORIES}/a/.hidden"),
            content_text("a", dg(1)),
        ),
        (format!("{REPOSITORIES}/a/-dash"), content_text("a", dg(1))),
        (
            format!("{REPOSITORIES}/top"),
            format!("../content/{}", hex(1)),
        ),
        ("l/ldangling".into(), missing.clone()),
        ("l/lout".into(), "../../etc".into()),
        ("l/labs".into(), format!("/{}", hex(8))),
        ("evil".into(), "/".into()),
        (format!("{CONTENT}/{}", hex(3)), "/tmp".into()),
    ];
    fx.mkdirs(&format!("{REPOSITORIES}/a"));
    for (p, t) in &junk_links {
        symlink(t, fx.p(p)).expect("junk link");
    }
    let junk_files = [
        "README".to_string(),
        format!("{REPOSITORIES}/a/notes.txt"),
        "l/stray".to_string(),
        format!("{CONTENT}/{}", hex(4)),
        format!("{CONTENT}/NOTHEX"),
    ];
    for p in &junk_files {
        fs::write(fx.p(p), b"junk").expect("junk file");
    }
    let junk_dirs = [
        format!("{CONTENT}/not-a-digest"),
        format!("{REPOSITORIES}/A_B"),
        "Bad".to_string(),
        "lost+found".to_string(),
        ".git".to_string(),
    ];
    for p in &junk_dirs {
        fx.mkdirs(p);
    }
    let temps = [
        format!("{REPOSITORIES}/a/.imagefs-tmp-123-link"),
        "l/.imagefs-tmp-9-link".to_string(),
    ];
    for p in &temps {
        symlink("whatever", fx.p(p)).expect("temp");
    }

    let store = fx.open();
    let s = snap(&store);
    let tags: Vec<_> = s.tags.keys().cloned().collect();
    assert_eq!(
        tags,
        vec![("a".into(), "good".into()), ("l".into(), "lgood".into())]
    );
    let dirs: Vec<_> = s.dirs.keys().cloned().collect();
    assert_eq!(
        dirs,
        vec![
            format!("{CONTENT}/{}", hex(1)),
            format!("{CONTENT}/{}", hex(2)),
            format!("l/{}", hex(8)),
        ]
    );
    for p in &temps {
        assert!(!fx.has(p), "{p} left");
    }
    let untouched = || {
        for (p, t) in &junk_links {
            assert_eq!(fx.link(p), *t, "{p}");
        }
        for p in junk_files.iter().chain(junk_dirs.iter()) {
            assert!(fx.has(p), "{p} removed");
        }
    };
    untouched();
    // The junk does not count as references, and the store keeps working around it.
    assert_eq!(
        collected_rels(&store.remove_tag("a", "good").expect("rm")),
        vec![format!("{CONTENT}/{}", hex(1))]
    );
    assert_eq!(kinds(&store.rmdir("a")), Err("NotEmpty"));
    store
        .create_tag("a", b"again", &Target::Digest(dg(2)))
        .expect("tag");
    assert_eq!(
        kinds(&store.create_tag("a", b"dangling", &Target::Digest(dg(2)))),
        Err("Exists"),
        "an ignored entry occupies the name on disk"
    );
    drop(store);
    let store = fx.open();
    assert_eq!(snap(&store).tags.len(), 2);
    untouched();
}

/// The mount's scan (a descriptor per directory, `readlinkat`, hypeman's link text read
/// without building a path, tags sharing their directory and repository name) builds the
/// same index as an independent walk of the disk (`fixture::check`: `std::fs` paths,
/// `canonicalize`): tags of both layouts at several depths, names on both sides of the
/// inline length of `TagName`, many tags per digest, a digest with directories in both
/// layouts; and a reopened store comes back the same.
#[test]
fn a_store_of_many_tags_indexes_as_an_independent_walk_reads_it() {
    let fx = Fx::new();
    let repos = ["a", "reg.io/b", "reg.io/team/c", "reg.io/team/c/d"];
    for n in 1..=40u8 {
        fx.content(n, "ready");
    }
    fx.legacy("old", 7, "ready").legacy("old/deep", 9, "ready");
    let mut count = 0;
    for (i, repo) in repos.iter().enumerate() {
        for t in 0..300usize {
            // 3 to 40 bytes: the inline limit (22) and both sides of it.
            let name = format!("{t:03}{}", "x".repeat((t + i) % 38));
            fx.ctag(repo, &name, 1 + ((t * 7 + i) % 40) as u8);
            count += 1;
        }
    }
    for t in 0..50 {
        fx.ltag("old", &format!("l{t}"), 7)
            .ltag("old/deep", &format!("l{t}"), 9);
        count += 2;
    }
    // A digest with directories in both layouts.
    fx.legacy("old", 1, "ready").ltag("old", "also", 1);
    count += 1;
    let store = fx.open();
    let s = check(&store);
    assert_eq!(s.tags.len(), count);
    let store = check_reopen(&fx, store);
    // A digest's directories, content first (`dirs_of`).

    let ix = store.index();
    let dirs: Vec<String> = ix.dirs_of(&dg(1)).map(rel_of).collect();
    assert_eq!(
        dirs,
        [format!("{CONTENT}/{}", hex(1)), format!("old/{}", hex(1))]
    );
    for (key, n) in ix.dir_keys() {
        let named = ix
            .nodes()
            .flat_map(|(_, node)| node.tags.values())
            .filter(|t| *t.key == *key)
            .count();
        assert_eq!(n as usize, named, "{}", rel_of(key));
        // Every tag shares the one `Arc` the index counts its directory under.
        for (_, node) in ix.nodes() {
            for t in node.tags.values().filter(|t| *t.key == *key) {
                let (shared, _) = ix.shared_key(key).expect("counted");
                assert!(std::sync::Arc::ptr_eq(&t.key, shared));
            }
        }
    }
}
