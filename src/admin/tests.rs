//! Tests of `imagefs ls`, `fsck` and `gc` on stores built by hand in temporary directories
//! with the store's own fixture ([`Fx`]), with real erofs images made by `mkfs.erofs -zlz4`
//! (tests that need one follow the skip policy of `imagefs_erofs::testing`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest as _, Sha256};

use super::fsck::{self, FsckArgs, Kind, Severity};
use super::gc::{self, GcArgs};
use super::ls::{self, LsArgs};
use super::{EXIT_FAILED, EXIT_OK, EXIT_PROBLEMS, human};
use crate::store::layout::{CONTENT, REPOSITORIES};
use crate::store::lockfile;
use crate::store::tests::fixture::Fx;
use imagefs_erofs::testing::{Need, need};

/// A small LZ4 erofs image whose contents depend on `n` (built once per `n`).
fn image(n: u8) -> Vec<u8> {
    static CACHE: OnceLock<Mutex<HashMap<u8, Vec<u8>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(b) = cache.lock().expect("cache").get(&n) {
        return b.clone();
    }
    let d = tempfile::tempdir().expect("tempdir");
    let tree = d.path().join("tree");
    fs::create_dir_all(tree.join("etc/deep/er")).expect("mkdir");
    fs::write(tree.join("etc/os-release"), format!("ID=test{n}\n")).expect("write");
    fs::write(tree.join("etc/deep/er/file"), vec![n; 5000]).expect("write");
    let big: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ n)
        .collect();
    fs::write(tree.join("big"), big).expect("write");
    symlink("etc/os-release", tree.join("link")).expect("symlink");
    let img = d.path().join("img");
    let st = Command::new("mkfs.erofs")
        .args([
            "--quiet",
            "-zlz4",
            "-T0",
            "-U",
            "6f1d2d4e-0000-4000-8000-000000000000",
        ])
        .arg(&img)
        .arg(&tree)
        .status()
        .expect("mkfs.erofs");
    assert!(st.success(), "mkfs.erofs failed");
    let b = fs::read(&img).expect("read image");
    cache.lock().expect("cache").insert(n, b.clone());
    b
}

fn sha_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// What the admin tests add to the store's fixture: digest directories with real images,
/// and the three commands' output.
trait AdminFx {
    fn real(&self, parent: &str, n: u8, status: &str) -> String;
    fn real_content(&self, n: u8, status: &str) -> String;
    fn fake(&self, parent: &str, n: u8, status: &str) -> String;
    fn fsck(&self, repair: bool) -> (i32, String);
    fn gc(&self, dry_run: bool) -> (i32, String, String);
    fn ls(&self, json: bool) -> (i32, String);
    fn findings(&self) -> Vec<(Severity, Kind, String)>;
}

impl AdminFx for Fx {
    /// A digest directory at `parent/<sha256 of image n>` with a real image; returns the hex.
    fn real(&self, parent: &str, n: u8, status: &str) -> String {
        let bytes = image(n);
        let hex = sha_hex(&bytes);
        let dir = self.p(&format!("{parent}/{hex}"));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("rootfs.erofs"), &bytes).expect("image");
        self.metadata(&dir, &hex, status, 1);
        hex
    }

    /// `content/<sha256 of image n>`.
    fn real_content(&self, n: u8, status: &str) -> String {
        self.real(CONTENT, n, status)
    }

    /// A digest directory with a made-up digest and no image (for unfinished pulls).
    fn fake(&self, parent: &str, n: u8, status: &str) -> String {
        let hex = format!("{n:02x}").repeat(32);
        let dir = self.p(&format!("{parent}/{hex}"));
        fs::create_dir_all(&dir).expect("mkdir");
        self.metadata(&dir, &hex, status, 1);
        hex
    }

    fn fsck(&self, repair: bool) -> (i32, String) {
        let args = FsckArgs {
            store: self.root().to_path_buf(),
            repair,
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let code = fsck::run_to(&args, &mut o, &mut e);
        let text = String::from_utf8_lossy(&o).into_owned() + &String::from_utf8_lossy(&e);
        (code, text)
    }

    fn gc(&self, dry_run: bool) -> (i32, String, String) {
        let args = GcArgs {
            store: self.root().to_path_buf(),
            dry_run,
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let code = gc::run_to(&args, &mut o, &mut e);
        (
            code,
            String::from_utf8_lossy(&o).into_owned(),
            String::from_utf8_lossy(&e).into_owned(),
        )
    }

    fn ls(&self, json: bool) -> (i32, String) {
        let args = LsArgs {
            store: self.root().to_path_buf(),
            json,
        };
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let code = ls::run_to(&args, &mut o, &mut e);
        assert!(e.is_empty(), "{}", String::from_utf8_lossy(&e));
        (code, String::from_utf8_lossy(&o).into_owned())
    }

    /// The structural findings as (severity, kind, store-relative path).
    fn findings(&self) -> Vec<(Severity, Kind, String)> {
        let mounted = lockfile::is_mounted(self.root());
        let s = fsck::check_structure(self.root(), mounted).expect("check");
        let mut images = fsck::verify_images(self.root(), &s.images);
        let mut all = s.findings;
        all.append(&mut images);
        all.into_iter()
            .map(|f| {
                let bk = self.bookkeeping();
                let rel = match f.path.strip_prefix(&bk) {
                    Ok(r) => format!("BK/{}", r.display()),
                    Err(_) => f
                        .path
                        .strip_prefix(self.root())
                        .unwrap_or(&f.path)
                        .to_string_lossy()
                        .into_owned(),
                };
                (f.severity, f.kind, rel)
            })
            .collect()
    }
}

/// A clean store: content digests 1 (two tags, one in a deep repository), 2 (tagged, with
/// manifest.json), legacy digest 3 in `old/repo`, a pending pull with no image.
fn clean() -> (Fx, [String; 4]) {
    let fx = Fx::new();
    let a = fx.real_content(1, "ready");
    let b = fx.real_content(2, "ready");
    fs::write(fx.p(&format!("{CONTENT}/{b}/manifest.json")), "{}").expect("manifest");
    let c = fx.real("old/repo", 3, "ready");
    let p = fx.fake(CONTENT, 0xee, "pending");
    fx.ctag_hex("docker.io/library/alpine", "latest", &a)
        .ctag_hex("docker.io/library/alpine", "3", &a)
        .ctag_hex("b", "v1", &b)
        .ltag_hex("old/repo", "stable", &c)
        .ctag_hex("b", "next", &p);
    (fx, [a, b, c, p])
}

#[test]
fn human_sizes() {
    assert_eq!(human(0), "0B");
    assert_eq!(human(999), "999B");
    assert_eq!(human(1000), "1.0kB");
    assert_eq!(human(12_345_678), "12.3MB");
    assert_eq!(human(999_999), "1.0MB");
    assert_eq!(human(5_000_000_000), "5.0GB");
}

#[test]
fn missing_store_exits_2() {
    let fx = Fx::new();
    let gone = fx.p("nope");
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let args = FsckArgs {
        store: gone.clone(),
        repair: false,
    };
    assert_eq!(fsck::run_to(&args, &mut o, &mut e), EXIT_FAILED);
    let msg = String::from_utf8_lossy(&e).into_owned();
    assert!(msg.contains(&gone.display().to_string()), "{msg}");
    let args = GcArgs {
        store: gone.clone(),
        dry_run: false,
    };
    assert_eq!(gc::run_to(&args, &mut o, &mut e), EXIT_FAILED);
    let args = LsArgs {
        store: gone.clone(),
        json: false,
    };
    assert_eq!(ls::run_to(&args, &mut o, &mut e), EXIT_FAILED);
    assert!(!gone.exists(), "nothing may create a missing store");
    let file = fx.p("file");
    fs::write(&file, "x").expect("write");
    let args = GcArgs {
        store: file,
        dry_run: true,
    };
    assert_eq!(gc::run_to(&args, &mut o, &mut e), EXIT_FAILED);
}

#[test]
fn ls_table_and_json_in_a_stable_order() {
    if !need(&[Need::MkfsErofs], "ls_table_and_json_in_a_stable_order") {
        return;
    }
    let (fx, [a, b, c, p]) = clean();
    let u = fx.real_content(4, "ready"); // never tagged
    let lu = fx.real("old/repo", 5, "failed"); // legacy, never tagged
    let size = |hex: &str, parent: &str| super::dir_bytes(&fx.p(&format!("{parent}/{hex}")));
    let (code, table) = fx.ls(false);
    assert_eq!(code, EXIT_OK);
    let lines: Vec<&str> = table.lines().collect();
    let cols: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(cols[0], ["TAG", "DIGEST", "SIZE", "REFS", "STATUS"]);
    let sz = |h: &str, parent: &str| human(size(h, parent));
    let mut untagged = vec![
        ("<none>".to_string(), u.clone(), sz(&u, CONTENT), "ready"),
        (
            "old/repo:<none>".to_string(),
            lu.clone(),
            sz(&lu, "old/repo"),
            "failed",
        ),
    ];
    untagged.sort_by(|x, y| x.1.cmp(&y.1));
    let mut want = vec![
        ("b:next".to_string(), p.clone(), sz(&p, CONTENT), "pending"),
        ("b:v1".to_string(), b.clone(), sz(&b, CONTENT), "ready"),
        (
            "docker.io/library/alpine:3".to_string(),
            a.clone(),
            sz(&a, CONTENT),
            "ready",
        ),
        (
            "docker.io/library/alpine:latest".to_string(),
            a.clone(),
            sz(&a, CONTENT),
            "ready",
        ),
        (
            "old/repo:stable".to_string(),
            c.clone(),
            sz(&c, "old/repo"),
            "ready",
        ),
    ];
    want.extend(untagged);
    assert_eq!(cols.len(), want.len() + 1, "{table}");
    for (row, (name, hex, size, status)) in cols[1..].iter().zip(&want) {
        let refs = match name.as_str() {
            n if n.starts_with("docker.io") => "2",
            n if n.ends_with("<none>") => "0",
            _ => "1",
        };
        assert_eq!(
            row,
            &[name.as_str(), &hex[..12], size.as_str(), refs, status],
            "{table}"
        );
    }
    // Columns line up: every line has DIGEST at the same offset.
    let at = lines[0].find("DIGEST").expect("header");
    for l in &lines[1..] {
        assert_eq!(l.as_bytes().get(at - 2..at), Some(&b"  "[..]), "{l}");
    }
    // The same twice.
    assert_eq!(fx.ls(false).1, table);

    let (code, json) = fx.ls(true);
    assert_eq!(code, EXIT_OK);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let arr = v.as_array().expect("array");
    assert_eq!(arr.len(), want.len());
    let first = &arr[0];
    assert_eq!(first["repository"], "b");
    assert_eq!(first["tag"], "next");
    assert_eq!(first["digest"], format!("sha256:{p}"));
    assert_eq!(first["dir"], format!("{CONTENT}/{p}"));
    assert_eq!(first["layout"], "content");
    assert_eq!(first["refs"], 1);
    assert_eq!(first["status"], "pending");
    assert!(first["status_error"].is_null());
    let legacy = &arr[4];
    assert_eq!(legacy["layout"], "legacy");
    assert_eq!(legacy["dir"], format!("old/repo/{c}"));
    assert_eq!(legacy["size_bytes"], size(&c, "old/repo"));
    assert_eq!(
        size(&c, "old/repo"),
        fs::metadata(fx.p(&format!("old/repo/{c}/rootfs.erofs")))
            .expect("m")
            .len()
            + fs::metadata(fx.p(&format!("old/repo/{c}/metadata.json")))
                .expect("m")
                .len()
    );
    let nones: Vec<_> = arr[5..]
        .iter()
        .map(|r| {
            (
                r["repository"].clone(),
                r["tag"].is_null(),
                r["refs"].clone(),
            )
        })
        .collect();
    assert!(nones.iter().all(|n| n.1 && n.2 == 0), "{nones:?}");
    assert_eq!(fx.ls(true).1, json);
}

#[test]
fn ls_reports_an_unknown_status() {
    let fx = Fx::new();
    let h = fx.fake(CONTENT, 0x11, "ready");
    fs::write(fx.p(&format!("{CONTENT}/{h}/metadata.json")), "{oops").expect("write");
    let (_, json) = fx.ls(true);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(v[0]["status"].is_null());
    assert!(
        v[0]["status_error"]
            .as_str()
            .is_some_and(|s| s.contains("metadata.json")),
        "{v}"
    );
    assert!(
        fx.ls(false)
            .1
            .lines()
            .nth(1)
            .expect("row")
            .ends_with("unknown")
    );
}

#[test]
fn fsck_of_a_clean_store_exits_0() {
    if !need(&[Need::MkfsErofs], "fsck_of_a_clean_store_exits_0") {
        return;
    }
    let (fx, _) = clean();
    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(!text.contains("problem:"), "{text}");
    assert!(text.contains("3 images read in full"), "{text}");
    assert!(text.trim_end().ends_with("clean"), "{text}");
    // Untagged digests are information, not problems.
    fx.real_content(4, "ready");
    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("info: ") && text.contains("untagged ready digest"),
        "{text}"
    );
    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_OK, "{text}");
}

#[test]
fn fsck_finds_each_kind_of_problem() {
    if !need(&[Need::MkfsErofs], "fsck_finds_each_kind_of_problem") {
        return;
    }
    let (fx, [a, b, _, _]) = clean();
    let missing = "ab".repeat(32);
    // Dangling tag, tag outside the store, malformed tag name, stray file, tag at the top.
    fx.ctag_hex("x", "dangling", &missing);
    symlink(
        format!("/elsewhere/content/{a}"),
        fx.p(&format!("{REPOSITORIES}/x/abs")),
    )
    .expect("abs");
    symlink(
        format!("../../content/{a}"),
        fx.p(&format!("{REPOSITORIES}/x/.hidden")),
    )
    .expect("bad name");
    fs::write(fx.p("stray.txt"), "x").expect("stray");
    fs::write(fx.p(&format!("{CONTENT}/notes")), "x").expect("stray in content");
    // Leftover temp link, trash entry, half-collected digest, unreadable intent.
    symlink(
        "whatever",
        fx.p(&format!("{REPOSITORIES}/x/.imagefs-tmp-123-link")),
    )
    .expect("tmp");
    fs::create_dir_all(fx.private("trash").join("old-image")).expect("trash");
    let u = fx.real_content(4, "ready");
    fx.gc_intent("0001-gc", &format!("{CONTENT}/{u}"));
    fs::write(fx.private("intents").join("0002.json"), "{not json").expect("bad intent");
    // Stale GC intents, which the next mount drops without collecting anything: not
    // half-collected digests (an older imagefs's record without identity, a directory
    // another writer removed).
    fx.old_gc_intent("0003-old", &format!("{CONTENT}/{u}"));
    let gone = fx.fake(CONTENT, 0x26, "ready");
    fx.gc_intent("0004-gone", &format!("{CONTENT}/{gone}"));
    fs::remove_dir_all(fx.p(&format!("{CONTENT}/{gone}"))).expect("hypeman's RemoveAll");
    // Digest directories: no metadata, bad status, ready without image, sha mismatch,
    // corrupt image (manifest.json present: no sha check, the reader finds it).
    let nm = fx.fake(CONTENT, 0x21, "ready");
    fs::remove_file(fx.p(&format!("{CONTENT}/{nm}/metadata.json"))).expect("rm");
    let bs = fx.fake(CONTENT, 0x22, "weird");
    let ni = fx.fake(CONTENT, 0x23, "ready");
    let mm = fx.fake(CONTENT, 0x24, "ready");
    fs::write(fx.p(&format!("{CONTENT}/{mm}/rootfs.erofs")), image(5)).expect("image");
    let cdir = fx.p(&format!("{CONTENT}/{b}"));
    let bytes = image(2);
    fs::write(cdir.join("rootfs.erofs"), &bytes[..bytes.len() / 2]).expect("truncate");
    for (h, t) in [(&nm, "nm"), (&bs, "bs"), (&ni, "ni"), (&mm, "mm")] {
        fx.ctag_hex("y", t, h);
    }

    let got = fx.findings();
    let has = |sev: Severity, kind: Kind, rel: &str| {
        assert!(
            got.iter().any(|g| g.0 == sev && g.1 == kind && g.2 == rel),
            "missing {sev:?} {kind:?} {rel} in {got:#?}"
        );
    };
    use Kind::*;
    use Severity::*;
    has(Problem, DanglingTag, "repositories/x/dangling");
    has(Problem, Ignored, "repositories/x/abs");
    has(Problem, Ignored, "repositories/x/.hidden");
    has(Problem, Ignored, "stray.txt");
    has(Problem, Ignored, "content/notes");
    has(Problem, TempFile, "repositories/x/.imagefs-tmp-123-link");
    has(Problem, Trash, "BK/trash/old-image");
    let of_kind = |kind: Kind| -> Vec<&(Severity, Kind, String)> {
        got.iter().filter(|g| g.1 == kind).collect()
    };
    let half = of_kind(HalfCollected);
    assert!(
        half.len() == 1 && half[0].0 == Problem && half[0].2.ends_with(&format!(".{u}.gc")),
        "{got:#?}"
    );
    let stale = of_kind(StaleIntent);
    assert!(
        stale.len() == 2 && stale.iter().all(|g| g.0 == Info),
        "{got:#?}"
    );
    has(Problem, BadIntent, "BK/intents/0002.json");
    has(Info, Untagged, &format!("content/{u}"));
    has(Problem, NoMetadata, &format!("content/{nm}"));
    has(Problem, BadStatus, &format!("content/{bs}"));
    has(Problem, NoImage, &format!("content/{ni}/rootfs.erofs"));
    has(
        Problem,
        DigestMismatch,
        &format!("content/{mm}/rootfs.erofs"),
    );
    has(Problem, CorruptImage, &format!("content/{b}/rootfs.erofs"));
    // Nothing else: the good digests are not reported.
    assert!(
        !got.iter()
            .any(|g| g.2.contains(&a) || g.2.contains("old/repo")),
        "{got:#?}"
    );
    assert!(
        !got.iter()
            .any(|g| g.1 == DigestMismatch && g.2.contains(&b)),
        "manifest.json exempts the sha256 check: {got:#?}"
    );
    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_PROBLEMS, "{text}");
    for line in text.lines().filter(|l| l.starts_with("problem: ")) {
        assert!(
            line.contains(&fx.root().display().to_string())
                || line.contains(&fx.bookkeeping().display().to_string()),
            "{line}"
        );
    }
    assert!(text.contains("corrupt image: /big: "), "{text}");
    // Nothing changed without --repair.
    assert!(text.contains("stale GC intent"), "{text}");
    assert!(
        !text.contains(&format!("collection of {CONTENT}/{gone} was interrupted")),
        "{text}"
    );
    assert!(fx.has("repositories/x/dangling") && fx.private("trash").join("old-image").exists());
    assert_eq!(fx.entries("intents").len(), 4);
}

#[test]
fn fsck_repair_fixes_what_it_can_and_exits_0() {
    if !need(
        &[Need::MkfsErofs],
        "fsck_repair_fixes_what_it_can_and_exits_0",
    ) {
        return;
    }
    let (fx, [a, ..]) = clean();
    fx.ctag_hex("x", "dangling", &"ab".repeat(32));
    fx.ltag_hex("old/repo", "gone", &"cd".repeat(32));
    symlink(
        "whatever",
        fx.p(&format!("{REPOSITORIES}/x/.imagefs-tmp-1-link")),
    )
    .expect("tmp");
    fs::create_dir_all(fx.private("trash").join("old-image/sub")).expect("trash");
    // Half-collected: intent recorded, the tag already gone (collect it) ...
    let u = fx.real_content(4, "ready");
    fx.gc_intent("0001-a", &format!("{CONTENT}/{u}"));
    // ... and one whose tag is still there (roll back: keep it).
    fx.gc_intent("0002-b", &format!("{CONTENT}/{a}"));
    fs::write(fx.private("intents").join("0003.json"), "junk").expect("bad intent");

    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(
        text.contains("problem: "),
        "listed before repairing: {text}"
    );
    assert!(
        text.contains(&format!(
            "repaired: finished interrupted collection of content/{u}"
        )),
        "{text}"
    );
    assert!(text.contains("repaired: removed dangling tag"), "{text}");
    assert!(!fx.has(&format!("{CONTENT}/{u}")));
    assert!(fx.has(&format!("{CONTENT}/{a}")));
    assert!(!fx.has("repositories/x/dangling") && !fx.has("old/repo/gone"));
    assert!(!fx.has("repositories/x/.imagefs-tmp-1-link"));
    assert!(fx.entries("intents").is_empty() && fx.entries("trash").is_empty());
    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_OK, "{text}");

    // What --repair must not touch: exit 1, left in place.
    fs::write(fx.p("stray.txt"), "x").expect("stray");
    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_PROBLEMS, "{text}");
    assert!(fx.has("stray.txt"));
    assert!(text.contains("1 problems remain"), "{text}");
}

#[test]
fn fsck_leaves_the_trash_to_a_live_mount() {
    let fx = Fx::new();
    let trashed = fx.private("trash").join("in-use");
    fs::create_dir_all(&trashed).expect("trash");
    let held = lockfile::hold_mounted(fx.root()).expect("mounted marker");
    let got = fx.findings();
    assert_eq!(
        got,
        [(Severity::Info, Kind::Trash, "BK/trash/in-use".to_string())]
    );
    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(trashed.exists(), "a live mount's trash was emptied");
    drop(held);
    // Another test's fork may hold a copy of the descriptor (and so the flock) until its exec.
    let t0 = std::time::Instant::now();
    while lockfile::is_mounted(fx.root()) && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_PROBLEMS, "{text}");
    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(!trashed.exists());
}

#[test]
fn fsck_reports_tags_the_mount_ignores() {
    let fx = Fx::new();
    let h = fx.fake(CONTENT, 0x31, "pending");
    let l = fx.fake("r", 0x32, "pending");
    fx.ctag_hex("r", "t", &h).ltag_hex("r", "t", &l);
    let got = fx.findings();
    assert_eq!(
        got,
        [(Severity::Problem, Kind::ShadowedTag, "r/t".to_string())]
    );
}

#[test]
fn gc_removes_untagged_finished_digests_only() {
    let fx = Fx::new();
    let tagged = fx.fake(CONTENT, 0x01, "ready");
    let shared = fx.fake(CONTENT, 0x02, "ready");
    let untagged = fx.fake(CONTENT, 0x03, "ready");
    let failed = fx.fake(CONTENT, 0x04, "failed");
    let pending = fx.fake(CONTENT, 0x05, "pending");
    let pulling = fx.fake(CONTENT, 0x06, "pulling");
    let converting = fx.fake(CONTENT, 0x07, "converting");
    let unknown = fx.fake(CONTENT, 0x08, "ready");
    fs::write(fx.p(&format!("{CONTENT}/{unknown}/metadata.json")), "[]").expect("md");
    let legacy_tagged = fx.fake("l", 0x09, "ready");
    let legacy_untagged = fx.fake("l", 0x0a, "ready");
    // A legacy directory of the same digest as a tagged content one, not itself tagged.
    let legacy_dup = fx.fake("l", 0x01, "ready");
    // Named only by a malformed (absolute) link: kept, to be safe.
    let odd = fx.fake(CONTENT, 0x0b, "ready");
    fx.ctag_hex("a", "t", &tagged)
        .ctag_hex("a", "s1", &shared)
        .ctag_hex("b/c", "s2", &shared)
        .ltag_hex("l", "t", &legacy_tagged);
    symlink(
        format!("/somewhere/content/{odd}"),
        fx.p(&format!("{REPOSITORIES}/a/odd")),
    )
    .expect("odd");
    fs::write(
        fx.p(&format!("{CONTENT}/{untagged}/rootfs.erofs")),
        vec![0u8; 1500],
    )
    .expect("w");

    let gone = [
        format!("{CONTENT}/{untagged}"),
        format!("{CONTENT}/{failed}"),
        format!("l/{legacy_untagged}"),
        format!("l/{legacy_dup}"),
    ];
    let kept = [
        format!("{CONTENT}/{tagged}"),
        format!("{CONTENT}/{shared}"),
        format!("{CONTENT}/{pending}"),
        format!("{CONTENT}/{pulling}"),
        format!("{CONTENT}/{converting}"),
        format!("{CONTENT}/{unknown}"),
        format!("{CONTENT}/{odd}"),
        format!("l/{legacy_tagged}"),
    ];
    let bytes: u64 = gone.iter().map(|g| super::dir_bytes(&fx.p(g))).sum();

    let (code, out, err) = fx.gc(true);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    for g in &gone {
        assert!(fx.has(g), "dry run removed {g}");
        assert!(
            out.contains(&format!("would remove {}", fx.p(g).display())),
            "{out}"
        );
    }
    assert_eq!(
        out.matches("would remove ").count(),
        gone.len() + 1,
        "{out}"
    );
    assert!(
        out.contains(&format!("would reclaim {} ({bytes} bytes)", human(bytes))),
        "{out}"
    );
    assert!(
        err.contains(&format!("{CONTENT}/{unknown}: status unknown")),
        "{err}"
    );
    assert!(err.contains(&format!("kept {CONTENT}/{odd}")), "{err}");

    let (code, out, err) = fx.gc(false);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    for g in &gone {
        assert!(!fx.has(g), "gc left {g}");
        assert!(
            out.contains(&format!("removed {}", fx.p(g).display())),
            "{out}"
        );
    }
    for k in &kept {
        assert!(fx.has(k), "gc removed {k}");
    }
    assert!(
        out.contains(&format!(
            "removed 4 digest directories, reclaimed {} ({bytes} bytes)",
            human(bytes)
        )),
        "{out}"
    );
    assert!(fx.entries("intents").is_empty() && fx.entries("trash").is_empty());
    // Idempotent.
    let (code, out, _) = fx.gc(false);
    assert_eq!(code, EXIT_OK);
    assert!(out.contains("removed 0 digest directories"), "{out}");
}

#[test]
fn gc_steps_are_recoverable() {
    // The journal record gc writes is one the mount's recovery understands.
    let fx = Fx::new();
    let u = fx.fake(CONTENT, 0x03, "ready");
    let root = fx.root();
    let journal = crate::store::journal::Journal::new(root);
    journal.create_dirs().expect("dirs");
    let key = crate::store::layout::DirKey::from_rel_path(&format!("{CONTENT}/{u}")).expect("key");
    crate::store::gc::collect(root, &key).expect("collect");
    assert!(!fx.has(&format!("{CONTENT}/{u}")));
    assert!(fx.entries("intents").is_empty() && fx.entries("trash").is_empty());
}

/// A healthy store as both hypeman versions write it (HYPEMAN.md): legacy directories named
/// by the OCI manifest digest (not the sha256 of their image) without manifest.json, content
/// ones with it, a pull in progress tagged before it is ready with its temporaries beside,
/// hypeman's layer store and staging directories. Nothing of it is a problem (issue 9,
/// finding 9), and neither `ls` nor `gc` takes layers or staging for digests.
#[test]
fn fsck_is_clean_on_stores_written_by_either_hypeman_version() {
    if !need(
        &[Need::MkfsErofs],
        "fsck_is_clean_on_stores_written_by_either_hypeman_version",
    ) {
        return;
    }
    let fx = Fx::new();
    // Legacy hypeman: <repo>/<manifest hex>/{metadata.json, rootfs.erofs}, tag -> <hex>.
    let m1 = "a1".repeat(32);
    let legacy = fx.p(&format!("docker.io/library/alpine/{m1}"));
    fs::create_dir_all(&legacy).expect("mkdir");
    fs::write(legacy.join("rootfs.erofs"), image(7)).expect("image");
    fx.metadata(&legacy, &m1, "ready", 1);
    fx.ltag_hex("docker.io/library/alpine", "3.19", &m1);
    // Content hypeman: content/<manifest hex>/ with manifest.json, a relative tag.
    let m2 = "b2".repeat(32);
    let content = fx.p(&format!("{CONTENT}/{m2}"));
    fs::create_dir_all(&content).expect("mkdir");
    fs::write(content.join("rootfs.erofs"), image(8)).expect("image");
    fs::write(content.join("manifest.json"), "{\"layers\":[]}").expect("manifest");
    fx.metadata(&content, &m2, "ready", 1);
    fx.ctag_hex("docker.io/library/nginx", "latest", &m2);
    // A pull in progress, tagged before ready: its staged metadata and image beside.
    let m3 = "c3".repeat(32);
    let pull = fx.p(&format!("{CONTENT}/{m3}"));
    fs::create_dir_all(&pull).expect("mkdir");
    fx.metadata(&pull, &m3, "converting", 1);
    fs::write(pull.join("metadata.json.tmp"), "{\"status\":").expect("tmp");
    fs::write(pull.join("rootfs.erofs.tmp-build1"), "half an image").expect("tmp");
    fx.ctag_hex("docker.io/library/nginx", "next", &m3);
    // hypeman's layer store and staging directories (in progress or left over).
    let layer = fx.p(&format!("layers/{}", "d4".repeat(32)));
    fs::create_dir_all(&layer).expect("mkdir");
    fs::write(layer.join("layer.erofs"), image(9)).expect("layer");
    fs::write(layer.join("artifact.erofs.json"), "{}").expect("artifact");
    fs::create_dir_all(fx.p("layers/.unpack-1")).expect("unpack");
    fs::create_dir_all(fx.p(&format!("{CONTENT}/.install-2/x"))).expect("install");
    let stage = fx.p(&format!(
        "{REPOSITORIES}/docker.io/library/nginx/.tag-stage-3"
    ));
    fs::create_dir_all(&stage).expect("stage");
    symlink(format!("../../../../../content/{m2}"), stage.join("latest")).expect("staged");
    fs::create_dir_all(fx.p("docker.io/library/alpine/.tag-stage-4")).expect("stage");

    let (code, text) = fx.fsck(false);
    assert_eq!(code, EXIT_OK, "{text}");
    assert!(!text.contains("problem:"), "{text}");
    assert!(text.contains("2 images read in full"), "{text}");
    assert!(text.contains("3 digest directories"), "{text}");
    assert!(text.contains("hypeman's staging entry"), "{text}");
    assert!(
        !text.contains("layers/"),
        "the layer store is not looked at: {text}"
    );
    let got = fx.findings();
    assert!(
        got.iter()
            .all(|g| g.0 == Severity::Info && g.1 == Kind::Staging),
        "{got:#?}"
    );
    // But the legacy image is still read in full: a corrupt one is a problem.
    let bytes = image(7);
    fs::write(legacy.join("rootfs.erofs"), &bytes[..bytes.len() / 2]).expect("truncate");
    let got = fx.findings();
    assert!(
        got.iter()
            .any(|g| g.0 == Severity::Problem && g.1 == Kind::CorruptImage && g.2.contains(&m1)),
        "{got:#?}"
    );
    assert!(!got.iter().any(|g| g.1 == Kind::DigestMismatch), "{got:#?}");
    fs::write(legacy.join("rootfs.erofs"), image(7)).expect("restore");

    // ls lists the three digests only; gc finds nothing to collect.
    let (code, out) = fx.ls(false);
    assert_eq!(code, EXIT_OK);
    assert!(
        !out.contains("d4d4d4") && !out.contains(".install-"),
        "{out}"
    );
    let (code, out, err) = fx.gc(true);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    assert!(out.contains("would remove 0 digest directories"), "{out}");
    // --repair touches none of it.
    let (code, text) = fx.fsck(true);
    assert_eq!(code, EXIT_OK, "{text}");
    for p in [
        "layers/.unpack-1".to_string(),
        format!("{CONTENT}/.install-2/x"),
        format!("{REPOSITORIES}/docker.io/library/nginx/.tag-stage-3/latest"),
        format!("{CONTENT}/{m3}/rootfs.erofs.tmp-build1"),
        format!("{CONTENT}/{m3}/metadata.json.tmp"),
    ] {
        assert!(fx.has(&p), "{p} was touched");
    }
}
