//! A legacy store stays legacy (issue 9, finding 7): in a store without `content/`, a tag
//! in another repository gets a legacy directory of its own, hard-linked from the source.
//! And each directory of a digest is an image of its own (finding 8): `digests/` shows the
//! primary as `<hex>` and every other directory with another `rootfs.erofs` as
//! `<hex>@<repo>`.

use std::os::unix::fs::MetadataExt;

use super::fixture::*;
use crate::store::layout::CONTENT;
use crate::store::metadata::Metadata;
use crate::store::{DirKey, RenameMode, Target};

/// A legacy-only store: `l/<8>` ready with tags `old`, `old2`; `l/<9>` ready, tag `nine`;
/// an empty legacy repository `m`.
fn legacy_store() -> Fx {
    let fx = Fx::new();
    fx.legacy("l", 8, "ready")
        .legacy("l", 9, "ready")
        .ltag("l", "old", 8)
        .ltag("l", "old2", 8)
        .ltag("l", "nine", 9)
        .mkdirs("m");
    fx
}

fn inode(fx: &Fx, rel: &str) -> (u64, u64) {
    let m = std::fs::metadata(fx.p(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (m.dev(), m.ino())
}

/// `m/<hex>` is a legacy copy of `l/<hex>` for the tag `m:tag`: the image hard-linked,
/// metadata of its own naming the tag, everything else as the source's.
fn assert_copy(fx: &Fx, n: u8, tag: &str) {
    let (src, dst) = (format!("l/{}", hex(n)), format!("m/{}", hex(n)));
    assert_eq!(
        inode(fx, &format!("{dst}/rootfs.erofs")),
        inode(fx, &format!("{src}/rootfs.erofs")),
        "the image is hard-linked, not copied"
    );
    assert_ne!(
        inode(fx, &format!("{dst}/metadata.json")),
        inode(fx, &format!("{src}/metadata.json")),
        "metadata.json is a file of its own"
    );
    let (mut a, b) = (
        Metadata::read(&fx.p(&src)).expect("source metadata"),
        Metadata::read(&fx.p(&dst)).expect("copy metadata"),
    );
    assert_eq!(
        b.fields["name"],
        format!("m:{tag}"),
        "named as hypeman names a clone"
    );
    a.fields.insert("name".into(), format!("m:{tag}").into());
    assert_eq!(a, b, "every other field is the source's");
}

#[test]
fn a_tag_in_another_repository_of_a_legacy_store_gets_a_legacy_copy() {
    for (name, target) in [
        ("by_digest", Target::Digest(dg(8))),
        (
            "by_tag",
            Target::Tag {
                repo: "l".into(),
                tag: "old".into(),
            },
        ),
        ("by_dir", Target::Dir(DirKey::Legacy("l".into(), dg(8)))),
    ] {
        let fx = legacy_store();
        let store = fx.open();
        assert_eq!(store.create_tag("m", b"t", &target).expect(name), dg(8));
        assert!(
            !fx.has(CONTENT),
            "{name}: the store got a content/ directory"
        );
        assert_eq!(fx.link("m/t"), hex(8), "{name}");
        assert_copy(&fx, 8, "t");
        let s = check(&store);
        assert_eq!(s.dirs[&format!("l/{}", hex(8))], 2, "{name}");
        assert_eq!(s.dirs[&format!("m/{}", hex(8))], 1, "{name}");
        // One image: `digests/` shows it once, and both repositories' tags read `<hex>`.
        assert_eq!(
            store.images_window(0, 10),
            vec![
                (hex(8), DirKey::Legacy("l".into(), dg(8))),
                (hex(9), DirKey::Legacy("l".into(), dg(9)))
            ],
            "{name}"
        );
        assert_eq!(store.image_name(&DirKey::Legacy("m".into(), dg(8))), hex(8));
        // A second tag in `m` uses `m`'s own directory.
        store.create_tag("m", b"u", &target).expect("m:u");
        assert_eq!(check(&store).dirs[&format!("m/{}", hex(8))], 2, "{name}");
        check_reopen(&fx, store);
    }
}

#[test]
fn a_copy_outlives_its_source_and_each_directory_keeps_its_own_count() {
    let fx = legacy_store();
    let store = fx.open();
    let image = std::fs::read(fx.p(&format!("l/{}/rootfs.erofs", hex(8)))).expect("image");
    store
        .create_tag("m", b"t", &Target::Digest(dg(8)))
        .expect("ln -s");
    // The source loses its tags: only its directory goes.
    for t in ["old", "old2"] {
        store.remove_tag("l", t).expect("rm");
    }
    assert!(!fx.has(&format!("l/{}", hex(8))));
    assert_eq!(
        std::fs::read(fx.p(&format!("m/{}/rootfs.erofs", hex(8)))).expect("copy's image"),
        image
    );
    let s = check(&store);
    assert_eq!(s.dirs[&format!("m/{}", hex(8))], 1);
    // And the copy's last tag takes only the copy.
    let got = store.remove_tag("m", "t").expect("rm m:t");
    assert_eq!(collected_rels(&got), vec![format!("m/{}", hex(8))]);
    assert!(got[0].digest_gone);
    check_reopen(&fx, store);
}

#[test]
fn a_legacy_tag_moved_or_exchanged_into_another_repository_stays_legacy() {
    use RenameMode::{Exchange, Replace};
    for (name, from, to, mode) in [
        ("rename", ("l", "nine"), ("m", "moved"), Replace),
        ("rename_keeps_source", ("l", "old"), ("m", "moved"), Replace),
        ("exchange", ("l", "nine"), ("m", "x"), Exchange),
    ] {
        let fx = legacy_store();
        if mode == Exchange {
            fx.legacy("m", 7, "ready").ltag("m", "x", 7);
        }
        let store = fx.open();
        store
            .rename_tag(from, to.0, to.1.as_bytes(), mode)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!fx.has(CONTENT), "{name}");
        let n = if from.1 == "nine" { 9 } else { 8 };
        assert_eq!(fx.link(&format!("m/{}", to.1)), hex(n), "{name}");
        let s = check(&store);
        assert_eq!(s.dirs.get(&format!("m/{}", hex(n))), Some(&1), "{name}");
        // `l/<9>` had one tag, which moved: it is collected; `l/<8>` keeps `old2`.
        assert_eq!(
            fx.has(&format!("l/{}", hex(n))),
            n == 8,
            "{name}: {:?}",
            s.dirs
        );
        if mode == Exchange {
            assert_eq!(fx.link("l/nine"), hex(7), "{name}");
            assert!(
                fx.has(&format!("l/{}", hex(7))),
                "{name}: l got a copy of 7"
            );
            assert!(
                !fx.has(&format!("m/{}", hex(7))),
                "{name}: m's 7 lost its tag"
            );
        }
        check_reopen(&fx, store);
    }
}

#[test]
fn a_copy_whose_tag_never_came_is_collected_now_or_at_the_next_mount() {
    let from = DirKey::Legacy("l".into(), dg(8));
    let copy = format!("m/{}", hex(8));
    // The change failed after the copy: it is collected before the change returns.
    let fx = legacy_store();
    let store = fx.open();
    store.legacy_dir_in(&from, "m", "t").expect("copy");
    assert!(fx.has(&copy) && fx.entries("intents").len() == 1);
    store.settle_copies();
    assert!(!fx.has(&copy));
    check_reopen(&fx, store);
    // A crash between the copy and its tag: the next open finishes the collection.
    let fx = legacy_store();
    let store = fx.open();
    store.legacy_dir_in(&from, "m", "t").expect("copy");
    drop(store);
    let store = fx.open();
    assert!(!fx.has(&copy), "the untagged copy was left");
    assert!(fx.has(&format!("l/{}/rootfs.erofs", hex(8))));
    check_reopen(&fx, store);
}

#[test]
fn a_store_with_content_still_promotes() {
    let fx = legacy_store();
    fx.mkdirs(CONTENT);
    let store = fx.open();
    store
        .create_tag("m", b"t", &Target::Digest(dg(8)))
        .expect("ln -s");
    assert!(fx.has(&format!("{CONTENT}/{}", hex(8))));
    assert!(!fx.has(&format!("m/{}", hex(8))));
    check_reopen(&fx, store);
}

#[test]
fn a_copy_is_refused_while_the_source_is_not_ready() {
    let fx = Fx::new();
    fx.legacy("l", 8, "ready")
        .ltag("l", "old", 8)
        .legacy("m", 8, "pulling")
        .mkdirs("n");
    let store = fx.open();
    // `m`'s own directory is a pull in progress: not tagged.
    let e = store
        .create_tag("m", b"t", &Target::Digest(dg(8)))
        .expect_err("m is pulling");
    assert_eq!(kind(&e), "NotReady");
    // The digest's primary is `l`'s (ready): `n` gets a copy of it.
    store
        .create_tag("n", b"t", &Target::Digest(dg(8)))
        .expect("n:t");
    assert_eq!(fx.link("n/t"), hex(8));
    check_reopen(&fx, store);
}

#[test]
fn each_directory_of_a_digest_with_its_own_image_is_shown_of_its_own() {
    let fx = Fx::new();
    fx.legacy("a", 8, "ready")
        .legacy("b/c", 8, "ready")
        .legacy("d", 8, "ready")
        .ltag("a", "t", 8)
        .ltag("b/c", "t", 8)
        .ltag("d", "t", 8)
        .legacy("a", 9, "ready");
    // `d`'s image is `a`'s file (a hard link, as a copy makes it).
    let a_img = fx.p(&format!("a/{}/rootfs.erofs", hex(8)));
    let d_img = fx.p(&format!("d/{}/rootfs.erofs", hex(8)));
    std::fs::remove_file(&d_img).expect("rm");
    std::fs::hard_link(&a_img, &d_img).expect("ln");
    let store = fx.open();
    let (a, bc, d) = (
        DirKey::Legacy("a".into(), dg(8)),
        DirKey::Legacy("b/c".into(), dg(8)),
        DirKey::Legacy("d".into(), dg(8)),
    );
    let extra = format!("{}@b+c", hex(8));
    assert_eq!(
        store.images_window(0, 10),
        vec![
            (hex(8), a.clone()),
            (extra.clone(), bc.clone()),
            (hex(9), DirKey::Legacy("a".into(), dg(9)))
        ]
    );
    assert_eq!(store.images_window(1, 1), vec![(extra.clone(), bc.clone())]);
    assert_eq!(
        store.images_window(2, 5),
        vec![(hex(9), DirKey::Legacy("a".into(), dg(9)))]
    );
    let names: Vec<String> = [&a, &bc, &d].iter().map(|k| store.image_name(k)).collect();
    assert_eq!(names, vec![hex(8), extra.clone(), hex(8)]);
    assert_eq!(store.image_by_name(&hex(8)), Some(a.clone()));
    assert_eq!(store.image_by_name(&extra), Some(bc.clone()));
    assert_eq!(
        store.image_by_name(&format!("{}@d", hex(8))),
        None,
        "one image with a's"
    );
    assert_eq!(store.image_by_name(&format!("{}@zz", hex(8))), None);
    // `a`'s directory goes: `b/c`'s becomes the primary, `d`'s is shown of its own.
    store.remove_tag("a", "t").expect("rm a:t");
    assert_eq!(store.image_name(&bc), hex(8));
    assert_eq!(store.image_name(&d), format!("{}@d", hex(8)));
    // A copy of `b/c`'s image is shown with it, and its tags read `b/c`'s name.
    let e = DirKey::Legacy("e".into(), dg(8));
    fx.mkdirs("e");
    drop(store);
    let store = fx.open();
    store
        .create_tag("e", b"t", &Target::Dir(d.clone()))
        .expect("copy of d");
    assert_eq!(store.image_name(&e), format!("{}@d", hex(8)));
    assert_eq!(
        store.images_window(0, 10).len(),
        3,
        "{:?}",
        store.images_window(0, 10)
    );
    // A content directory comes first.
    drop(store);
    fx.content(8, "ready").ctag("f", "t", 8);
    let store = fx.open();
    assert_eq!(store.image_by_name(&hex(8)), Some(DirKey::Content(dg(8))));
    assert_eq!(store.image_name(&bc), extra);
    check(&store);
}
