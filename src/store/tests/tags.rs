//! Creating, removing and moving tags: every result and error, table-driven.

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{RenameMode, Target};

#[test]
fn create_tag_results_and_errors() {
    let long = |n: usize| "x".repeat(n).into_bytes();
    let tgt = |n: u8| Target::Digest(dg(n));
    let tag = |r: &str, t: &str| Target::Tag {
        repo: r.into(),
        tag: t.into(),
    };
    type Case = (
        &'static str,
        &'static str,
        Vec<u8>,
        Target,
        Result<u8, &'static str>,
    );
    let cases: Vec<Case> = vec![
        ("from_digest", "a", b"new".to_vec(), tgt(2), Ok(2)),
        ("from_tag", "b/c", b"x".to_vec(), tag("a", "two"), Ok(2)),
        (
            "from_deep_tag",
            "a",
            b"y".to_vec(),
            tag("docker.io/library/alpine", "latest"),
            Ok(1),
        ),
        ("never_tagged_digest", "a", b"n".to_vec(), tgt(7), Ok(7)),
        ("max_len_tag", "a", long(128), tgt(1), Ok(1)),
        (
            "content_digest_in_legacy_repo",
            "l",
            b"c".to_vec(),
            tgt(1),
            Ok(1),
        ),
        (
            "legacy_digest_in_own_repo",
            "l",
            b"n".to_vec(),
            tgt(8),
            Ok(8),
        ),
        (
            "never_tagged_legacy_in_own_repo",
            "l",
            b"n".to_vec(),
            tgt(9),
            Ok(9),
        ),
        (
            "unknown_digest",
            "a",
            b"n".to_vec(),
            tgt(0xee),
            Err("NotFound"),
        ),
        (
            "unknown_tag",
            "a",
            b"n".to_vec(),
            tag("a", "nope"),
            Err("NotFound"),
        ),
        (
            "unknown_repo_of_tag",
            "a",
            b"n".to_vec(),
            tag("zz", "one"),
            Err("NotFound"),
        ),
        (
            "missing_repo_dir",
            "zz",
            b"n".to_vec(),
            tgt(1),
            Err("NotFound"),
        ),
        ("pending", "a", b"n".to_vec(), tgt(3), Err("NotReady")),
        ("pulling", "a", b"n".to_vec(), tgt(4), Err("NotReady")),
        ("converting", "a", b"n".to_vec(), tgt(5), Err("NotReady")),
        ("failed", "a", b"n".to_vec(), tgt(6), Err("NotReady")),
        (
            "tag_of_pending",
            "b/c",
            b"n".to_vec(),
            tag("a", "pend"),
            Err("NotReady"),
        ),
        (
            "uppercase_repo",
            "A",
            b"n".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        (
            "empty_component",
            "a//b",
            b"n".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        ("dot_tag", "a", b".n".to_vec(), tgt(1), Err("InvalidName")),
        (
            "colon_tag",
            "a",
            b"a:b".to_vec(),
            tgt(1),
            Err("InvalidName"),
        ),
        ("empty_tag", "a", b"".to_vec(), tgt(1), Err("InvalidName")),
        (
            "non_utf8_tag",
            "a",
            vec![b'a', 0xff],
            tgt(1),
            Err("InvalidName"),
        ),
        ("tag_129_bytes", "a", long(129), tgt(1), Err("NameTooLong")),
        ("at_the_root", "", b"n".to_vec(), tgt(1), Err("Invalid")),
        ("existing_tag", "a", b"one".to_vec(), tgt(2), Err("Exists")),
        (
            "existing_same_digest",
            "a",
            b"one".to_vec(),
            tgt(1),
            Err("Exists"),
        ),
        (
            "existing_legacy_tag",
            "l",
            b"old".to_vec(),
            tgt(1),
            Err("Exists"),
        ),
        ("existing_dir", "b", b"c".to_vec(), tgt(1), Err("Exists")),
    ];
    for (name, repo, t, target, want) in cases {
        let fx = base();
        let store = fx.open();
        let before = check(&store);
        let got = store.create_tag(repo, &t, &target);
        match want {
            Ok(n) => {
                assert_eq!(got.expect(name), dg(n), "{name}");
                let t = String::from_utf8(t).expect("utf-8");
                let s = check(&store);
                let legacy = n >= 8 && repo == "l";
                assert_eq!(
                    s.tags.get(&(repo.to_string(), t.clone())),
                    Some(&(!legacy, dg(n))),
                    "{name}"
                );
                let text = if legacy {
                    fx.link(&format!("{repo}/{t}"))
                } else {
                    fx.link(&format!("{REPOSITORIES}/{repo}/{t}"))
                };
                let want_text = if legacy {
                    hex(n)
                } else {
                    content_text(repo, dg(n))
                };
                assert_eq!(text, want_text, "{name}");
            }
            Err(k) => {
                assert_eq!(kinds(&got), Err(k), "{name}: {got:?}");
                assert_eq!(check(&store), before, "{name}: a refusal changed the store");
            }
        }
        check_reopen(&fx, store);
    }
}

#[test]
fn remove_tag_of_a_missing_tag_is_not_found() {
    let fx = base();
    let store = fx.open();
    let before = check(&store);
    for (repo, tag) in [("a", "nope"), ("zz", "one"), ("", "a"), ("b", "c")] {
        let r = store.remove_tag(repo, tag);
        assert_eq!(kinds(&r), Err("NotFound"), "{repo}:{tag}");
    }
    assert_eq!(check(&store), before);
}

#[test]
fn rename_tag_results_and_errors() {
    use RenameMode::{Exchange, NoReplace, Replace};
    let c = |n: u8| format!("{CONTENT}/{}", hex(n));
    // (name, from, to, mode, expected collected dirs or error, tags afterwards)
    type Case = (
        &'static str,
        (&'static str, &'static str),
        (&'static str, &'static str),
        RenameMode,
        Result<Vec<String>, &'static str>,
        Vec<(&'static str, &'static str, Option<u8>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "plain",
            ("a", "two"),
            ("a", "three"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "three", Some(2))],
        ),
        (
            "noreplace_to_free_name",
            ("a", "two"),
            ("a", "three"),
            NoReplace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "three", Some(2))],
        ),
        (
            "same_name_is_a_no_op",
            ("a", "two"),
            ("a", "two"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", Some(2))],
        ),
        (
            "over_existing_shared",
            ("a", "two"),
            ("a", "one"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("a", "one", Some(2))],
        ),
        (
            "over_existing_last_collects_replaced",
            ("a", "one"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![("a", "one", None), ("a", "two", Some(1))],
        ),
        (
            "over_existing_same_digest",
            ("a", "one"),
            ("docker.io/library/alpine", "latest"),
            Replace,
            Ok(vec![]),
            vec![
                ("a", "one", None),
                ("docker.io/library/alpine", "latest", Some(1)),
            ],
        ),
        (
            "over_pending_last_keeps_it",
            ("a", "one"),
            ("a", "pend"),
            Replace,
            Ok(vec![]),
            vec![("a", "pend", Some(1))],
        ),
        (
            "noreplace_existing",
            ("a", "two"),
            ("a", "one"),
            NoReplace,
            Err("Exists"),
            vec![],
        ),
        (
            "exchange_swaps",
            ("a", "one"),
            ("a", "two"),
            Exchange,
            Ok(vec![]),
            vec![("a", "one", Some(2)), ("a", "two", Some(1))],
        ),
        (
            "exchange_across_depths",
            ("a", "two"),
            ("docker.io/library/alpine", "latest"),
            Exchange,
            Ok(vec![]),
            vec![
                ("a", "two", Some(1)),
                ("docker.io/library/alpine", "latest", Some(2)),
            ],
        ),
        (
            "exchange_with_missing",
            ("a", "two"),
            ("a", "nope"),
            Exchange,
            Err("NotFound"),
            vec![],
        ),
        (
            "across_repos_of_other_depth",
            ("a", "two"),
            ("b/c", "two"),
            Replace,
            Ok(vec![]),
            vec![("a", "two", None), ("b/c", "two", Some(2))],
        ),
        (
            "deep_to_shallow_over_last",
            ("docker.io/library/alpine", "latest"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![
                ("docker.io/library/alpine", "latest", None),
                ("a", "two", Some(1)),
            ],
        ),
        (
            "legacy_within_its_repo",
            ("l", "old"),
            ("l", "new"),
            Replace,
            Ok(vec![]),
            vec![("l", "old", None), ("l", "new", Some(8))],
        ),
        (
            "content_over_legacy_not_last",
            ("a", "two"),
            ("l", "old2"),
            Replace,
            Ok(vec![]),
            vec![("l", "old2", Some(2)), ("l", "old", Some(8))],
        ),
        (
            "legacy_over_content_in_same_repo",
            ("l", "old"),
            ("a", "two"),
            Replace,
            Ok(vec![c(2)]),
            vec![
                ("l", "old", None),
                ("l", "old2", Some(8)),
                ("a", "two", Some(8)),
            ],
        ),
        (
            "missing_source",
            ("a", "nope"),
            ("a", "x"),
            Replace,
            Err("NotFound"),
            vec![],
        ),
        (
            "missing_repo",
            ("a", "two"),
            ("zz", "x"),
            Replace,
            Err("NotFound"),
            vec![],
        ),
        (
            "onto_a_directory",
            ("a", "two"),
            ("b", "c"),
            Replace,
            Err("IsDir"),
            vec![],
        ),
        (
            "invalid_name",
            ("a", "two"),
            ("a", "-x"),
            Replace,
            Err("InvalidName"),
            vec![],
        ),
        (
            "invalid_repo",
            ("a", "two"),
            ("A", "x"),
            Replace,
            Err("InvalidName"),
            vec![],
        ),
        (
            "to_the_root",
            ("a", "two"),
            ("", "x"),
            Replace,
            Err("Invalid"),
            vec![],
        ),
    ];
    for (name, from, to, mode, want, after) in cases {
        let fx = base();
        let store = fx.open();
        let before = check(&store);
        let got = store.rename_tag(from, to.0, to.1.as_bytes(), mode);
        match want {
            Ok(dirs) => {
                let got = collected_rels(&got.unwrap_or_else(|e| panic!("{name}: {e}")));
                assert_eq!(got, dirs, "{name}");
                for d in &dirs {
                    assert!(!fx.has(d), "{name}: {d} left");
                }
                let s = check(&store);
                for (repo, tag, n) in after {
                    let got = s.tags.get(&(repo.into(), tag.into())).map(|t| t.1);
                    assert_eq!(got, n.map(dg), "{name}: {repo}:{tag}");
                }
            }
            Err(k) => {
                assert_eq!(kinds(&got), Err(k), "{name}: {got:?}");
                assert_eq!(check(&store), before, "{name}: a refusal changed the store");
            }
        }
        check_reopen(&fx, store);
    }
    // 129 bytes.
    let fx = base();
    let store = fx.open();
    let r = store.rename_tag(("a", "two"), "a", &[b'x'; 129], RenameMode::Replace);
    assert_eq!(kinds(&r), Err("NameTooLong"));
}

#[test]
fn rename_rewrites_symlink_text_for_the_new_depth() {
    let fx = base();
    let store = fx.open();
    store
        .rename_tag(("a", "two"), "b/c", b"two", RenameMode::Replace)
        .expect("mv");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/b/c/two")),
        format!("../../../content/{}", hex(2))
    );
    store
        .rename_tag(
            ("b/c", "two"),
            "docker.io/library/alpine",
            b"two",
            RenameMode::Replace,
        )
        .expect("mv");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/docker.io/library/alpine/two")),
        format!("../../../../content/{}", hex(2))
    );
    store
        .rename_tag(
            ("docker.io/library/alpine", "two"),
            "a",
            b"one",
            RenameMode::Exchange,
        )
        .expect("exchange");
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/a/one")),
        format!("../../content/{}", hex(2))
    );
    assert_eq!(
        fx.link(&format!("{REPOSITORIES}/docker.io/library/alpine/two")),
        format!("../../../../content/{}", hex(1))
    );
    check_reopen(&fx, store);
}
