//! Promotion of a legacy digest directory into the content layout when another
//! repository's tag names it.

use super::fixture::*;
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::{RenameMode, Target};

#[test]
fn create_tag_in_another_repo_promotes_a_legacy_digest() {
    for (name, target) in [
        ("by_digest", Target::Digest(dg(8))),
        (
            "by_tag",
            Target::Tag {
                repo: "l".into(),
                tag: "old".into(),
            },
        ),
    ] {
        let fx = base();
        let store = fx.open();
        assert_eq!(store.create_tag("a", b"p", &target).expect(name), dg(8));
        assert!(fx.has(&format!("{CONTENT}/{}", hex(8))), "{name}");
        assert!(!fx.has(&format!("l/{}", hex(8))), "{name}");
        assert!(
            fx.has(&format!("l/{}", hex(9))),
            "{name}: 9 is not promoted"
        );
        for t in ["old", "old2"] {
            assert!(!fx.has(&format!("l/{t}")), "{name}: legacy l/{t} rewritten");
            assert_eq!(
                fx.link(&format!("{REPOSITORIES}/l/{t}")),
                content_text("l", dg(8)),
                "{name}"
            );
        }
        let s = check(&store);
        assert_eq!(s.dirs.get(&format!("{CONTENT}/{}", hex(8))), Some(&3));
        check_reopen(&fx, store);
    }
}

#[test]
fn legacy_tag_moved_or_exchanged_into_another_repo_promotes_its_digest() {
    use RenameMode::{Exchange, Replace};
    for (name, to, mode) in [
        ("rename", ("a", "moved"), Replace),
        ("rename_over", ("a", "two"), Replace),
        ("exchange", ("a", "two"), Exchange),
        ("rename_deep", ("b/c", "x"), Replace),
    ] {
        let fx = base();
        let store = fx.open();
        store
            .rename_tag(("l", "old"), to.0, to.1.as_bytes(), mode)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(fx.has(&format!("{CONTENT}/{}", hex(8))), "{name}");
        assert!(!fx.has(&format!("l/{}", hex(8))), "{name}");
        assert!(!fx.has("l/old2"), "{name}");
        assert_eq!(
            fx.link(&format!("{REPOSITORIES}/l/old2")),
            content_text("l", dg(8)),
            "{name}"
        );
        let s = check(&store);
        assert_eq!(s.tags[&(to.0.into(), to.1.into())], (true, dg(8)), "{name}");
        if mode == Exchange {
            assert_eq!(s.tags[&("l".into(), "old".into())], (true, dg(2)), "{name}");
        }
        check_reopen(&fx, store);
    }
}
