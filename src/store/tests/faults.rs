//! I/O fault injection at every filesystem call of the store (as SQLite's I/O-error tests).
//!
//! Every call the store makes passes [`crate::store::sys`]; its thread-local plan fails the
//! Nth call with an errno. Each operation below is run failing its call N, for every N
//! from 1 until the operation completes without reaching call N, with each errno of
//! [`ERRNOS`]. After each run:
//! - the error is reported (`Err`), or, where the failing call was best-effort, the
//!   operation succeeded and its result is exactly the fault-free one;
//! - the index of the live store agrees with the disk;
//! - the store is reopened as the next mount does (replaying the journal), which must run
//!   clean ([`check`]: index = disk, nothing left in the bookkeeping), and the store's
//!   tree is then exactly as before the operation or exactly as after it, as allowed for
//!   the operation ([`Leaves`]; README "What a failed operation leaves");
//! - nothing outside the store and its bookkeeping changed (a sentinel directory beside
//!   the store), and fsck finds what it finds in a store in that state, nothing more.
//!
//! [`seam_is_the_only_way_to_the_filesystem`] keeps the seam whole: it scans `src/store`
//! for filesystem calls made around it.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::fixture::*;
use crate::store::layout::CONTENT;
use crate::store::sys::fault;
use crate::store::{DirKey, RenameMode, Store, Target};

const ERRNOS: [(i32, &str); 7] = [
    (libc::ENOSPC, "ENOSPC"),
    (libc::EIO, "EIO"),
    (libc::EDQUOT, "EDQUOT"),
    (libc::EROFS, "EROFS"),
    (libc::EXDEV, "EXDEV"),
    (libc::EBUSY, "EBUSY"),
    (libc::EPERM, "EPERM"),
];

/// What a failed run of an operation may leave, once the next mount has replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaves {
    /// Exactly the store before the operation.
    Before,
    /// Exactly the store after the operation (the next mount finishes it).
    After,
    /// One or the other: the operation's commit is one rename, and a failure after it
    /// (say, while collecting what it dropped) is reported with the change made.
    Either,
    /// The store as before but for a change no user can tell from it, made by
    /// [`Op::kept`] (a promotion: the same tags naming the same images).
    Kept,
}

/// The whole tree under `dir`: path -> "d", "l <text>" or "f <contents>".
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            if m.file_type().is_symlink() {
                let t = fs::read_link(&p).map(|t| t.to_string_lossy().into_owned());
                out.insert(rel, format!("l {}", t.unwrap_or_default()));
            } else if m.is_dir() {
                out.insert(rel, "d".into());
                walk(base, &p, out);
            } else {
                let c = fs::read(&p).unwrap_or_default();
                out.insert(rel, format!("f {}", String::from_utf8_lossy(&c)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// fsck's findings on the store, as (kind, path) (the caller holds no lock; nothing else
/// runs).
fn findings(root: &Path) -> Vec<String> {
    let s = crate::admin::fsck::check_structure(root, false).expect("fsck");
    let mut v: Vec<String> = s
        .findings
        .iter()
        .map(|f| {
            let rel = f.path.strip_prefix(root).unwrap_or(&f.path);
            format!("{:?} {}", f.kind, rel.display())
        })
        .collect();
    v.sort();
    v
}

/// The sentinel beside the store: a directory with a file and a link to it.
fn sentinel(fx: &Fx) -> std::path::PathBuf {
    let s = fx.root().with_file_name("sentinel");
    fs::create_dir_all(s.join("sub")).expect("sentinel");
    fs::write(s.join("sub/precious"), b"keep me").expect("sentinel file");
    std::os::unix::fs::symlink("sub/precious", s.join("link")).expect("sentinel link");
    s
}

/// Does the live store's index agree with the disk (tags and digest directories)?
fn index_matches_disk(store: &Store, what: &str) {
    let s = snap(store);
    let mut disk = Disk::default();
    let repos = store.root().join(crate::store::layout::REPOSITORIES);
    if repos.is_dir() {
        walk_tree(store.root(), &repos, "", true, &mut disk);
    }
    walk_tree(store.root(), store.root(), "", false, &mut disk);
    if let Ok(rd) = fs::read_dir(store.root().join(CONTENT)) {
        // Digest directories only: a failed collection may leave the side trash
        // (`content/.imagefs-trash`), which the next mount empties.
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if crate::store::names::Digest::parse_hex(&name).is_some() {
                disk.dirs.insert(format!("{CONTENT}/{name}"));
            }
        }
    }
    assert_eq!(s.tags, disk.tags, "{what}: live index tags vs disk");
    let dirs: std::collections::BTreeSet<String> = s.dirs.keys().cloned().collect();
    assert_eq!(dirs, disk.dirs, "{what}: live index digest dirs vs disk");
    assert_eq!(
        s.repos, disk.repos,
        "{what}: live index repository dirs vs disk"
    );
}

/// One operation under test.
struct Op {
    name: &'static str,
    /// Makes the store (a fresh one for each run).
    setup: fn() -> Fx,
    /// Whether the operation runs on a store opened beforehand (else it opens none, or its
    /// own: `Store::open` is the operation).
    live: bool,
    run: fn(&Fx, Option<&Store>) -> Result<(), String>,
    leaves: Leaves,
    /// A step of the operation that is its own change, kept when a later step fails: applied
    /// alone to a fresh store, it makes the third state a failed run may leave
    /// ([`Leaves::Kept`]), besides those `leaves` allows.
    kept: Option<fn(&Store)>,
    /// Sweep again with each failure persisting ([`fault::arm_sticky`]): the undo of a
    /// failed step then fails too, and the next mount must finish or roll back; what
    /// a failed run may then leave.
    sticky: Option<Leaves>,
    /// With the failure persisting, the operation may be able neither to finish nor to
    /// undo: it reports the error and leaves its intent for the next mount, the live mount
    /// out of step with the disk until then (README, "Not yet"); the live check is then
    /// skipped (the next mount's is not).
    live_may_lag: bool,
    /// Run again, fault-free, after a failure (before the checks), as its user does: for
    /// `fsck --repair`, whose repairs are each their own change.
    rerun: bool,
}

/// The outcome of a whole sweep.
#[derive(Debug, Default)]
struct Sweep {
    /// Fault points of the operation (calls through the seam of a fault-free run).
    points: u64,
    runs: u64,
    /// Failed runs that ended as before / as after; runs that succeeded despite a fault.
    before: u64,
    after: u64,
    kept: u64,
    ok_despite_fault: u64,
    /// Runs (failure persisting) that left their intent for the next mount.
    pending: u64,
}

fn sweep(op: &Op) -> Sweep {
    // The fault-free run: the state after, and the number of fault points.
    let fx = (op.setup)();
    let sent = sentinel(&fx);
    let before = tree(fx.root());
    let before_findings = findings(fx.root());
    let store = op.live.then(|| fx.open());
    let sentinel_tree = tree(&sent);
    fault::arm(0, 0);
    let r = (op.run)(&fx, store.as_ref());
    let plan = fault::disarm();
    r.unwrap_or_else(|e| panic!("{}: fault-free run: {e}", op.name));
    if let Some(s) = store {
        check(&s);
    }
    let after = tree(fx.root());
    let after_findings = findings(fx.root());
    assert_ne!(before, after, "{}: changes nothing", op.name);
    assert!(plan.calls > 0, "{}: no call went through the seam", op.name);
    let mut sw = Sweep {
        points: plan.calls,
        ..Sweep::default()
    };
    drop(fx);
    // The kept state, and what fsck finds in it.
    let kept = op.kept.map(|step| {
        let fx = (op.setup)();
        let s = fx.open();
        step(&s);
        check(&s);
        drop(s);
        let t = tree(fx.root());
        assert!(t != before && t != after, "{}: the kept step", op.name);
        (t, findings(fx.root()))
    });

    let modes: &[bool] = if op.sticky.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    for (&sticky, (errno, ename)) in modes
        .iter()
        .flat_map(|m| ERRNOS.iter().map(move |e| (m, *e)))
    {
        for n in 1.. {
            let persisting = if sticky { " (persisting)" } else { "" };
            let what = format!("{} failing call {n} with {ename}{persisting}", op.name);
            let fx = (op.setup)();
            let sent = sentinel(&fx);
            let store = op.live.then(|| fx.open());
            if sticky {
                fault::arm_sticky(n, errno);
            } else {
                fault::arm(n, errno);
            }
            let r = (op.run)(&fx, store.as_ref());
            let plan = fault::disarm();
            let Some(call) = plan.hit else {
                // The operation ended before call n: every fault point was tried.
                r.unwrap_or_else(|e| panic!("{what}: no fault, yet: {e}"));
                break;
            };
            sw.runs += 1;
            let what = format!("{what} ({call}){}", fault::trace());
            // [`Op::live_may_lag`].
            let pending =
                op.live_may_lag && sticky && r.is_err() && !fx.entries("intents").is_empty();
            if pending {
                sw.pending += 1;
            } else if let Some(s) = &store {
                index_matches_disk(s, &what);
            }
            if r.is_ok() {
                sw.ok_despite_fault += 1;
            }
            drop(store);
            if op.rerun && r.is_err() {
                (op.run)(&fx, None).unwrap_or_else(|e| panic!("{what}: run again: {e}"));
            }
            if std::env::var_os("IMAGEFS_FAULT_TRACE").is_some() {
                let live = tree(fx.root());
                let d: Vec<_> = live
                    .iter()
                    .filter(|(k, v)| after.get(*k) != Some(v))
                    .collect();
                let d2: Vec<_> = after
                    .iter()
                    .filter(|(k, v)| live.get(*k) != Some(v))
                    .collect();
                eprintln!(
                    "{what}: {r:?}\n live not after: {d:?}\n after not live: {d2:?}\n intents {:?} trash {:?}",
                    fx.entries("intents"),
                    fx.entries("trash")
                );
            }
            // The next mount: replays, then must find the store clean.
            let reopened = fx.open();
            check(&reopened);
            drop(reopened);
            let now = tree(fx.root());
            let state = if now == before {
                sw.before += 1;
                Leaves::Before
            } else if now == after {
                sw.after += 1;
                Leaves::After
            } else if kept.as_ref().is_some_and(|(k, _)| *k == now) {
                sw.kept += 1;
                Leaves::Kept
            } else {
                let diff = |a: &BTreeMap<String, String>, b: &BTreeMap<String, String>| {
                    a.iter()
                        .filter(|(k, v)| b.get(*k) != Some(v))
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                };
                panic!(
                    "{what}: {r:?}; the store is neither as before nor as after.\n not before: {:?} / {:?}\n not after: {:?} / {:?}",
                    diff(&now, &before),
                    diff(&before, &now),
                    diff(&now, &after),
                    diff(&after, &now)
                );
            };
            // The failing call was best-effort (a step of a collection after the tag change,
            // which the next mount finishes; chown of a new directory): the result must be
            // the fault-free one.
            assert!(
                r.is_err() || state == Leaves::After,
                "{what}: succeeded, but as before"
            );
            if r.is_err() {
                let leaves = match (sticky, op.sticky) {
                    (true, Some(l)) => l,
                    _ => op.leaves,
                };
                let allowed = match state {
                    Leaves::Kept => true,
                    _ => leaves == Leaves::Either || leaves == state,
                };
                assert!(allowed, "{what}: {r:?}: left {state:?}, allowed {leaves:?}");
            }
            assert_eq!(tree(&sent), sentinel_tree, "{what}: the sentinel changed");
            let want = match (state, &kept) {
                (Leaves::Before, _) => &before_findings,
                (Leaves::Kept, Some((_, f))) => f,
                _ => &after_findings,
            };
            assert_eq!(&findings(fx.root()), want, "{what}: fsck");
        }
    }
    eprintln!(
        "faults: {:<28} {:>3} fault points, {:>4} failed runs: {} as before, {} as after, {} kept, {} succeeded despite the fault, {} left to the next mount",
        op.name, sw.points, sw.runs, sw.before, sw.after, sw.kept, sw.ok_despite_fault, sw.pending
    );
    assert!(
        op.kept.is_none() || sw.kept > 0,
        "{}: the kept state never came: drop `kept`",
        op.name
    );
    assert!(
        sw.runs >= sw.points,
        "{}: fault points not all tried",
        op.name
    );
    sw
}

fn e(r: crate::store::Result<impl Sized>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| e.to_string())
}

fn live(s: Option<&Store>) -> &Store {
    s.expect("a live store")
}

/// A legacy-only store (no `content/`): `l/<8>` tagged `old`, an empty repository `m`.
fn legacy_only() -> Fx {
    let fx = Fx::new();
    fx.legacy("l", 8, "ready")
        .legacy("l", 9, "ready")
        .ltag("l", "old", 8)
        .ltag("l", "nine", 9)
        .mkdirs("m");
    fx
}

/// `l` with tags in both layouts: legacy `l:old`, `l:old2` (8), content `l:c` (1) and
/// `l:d` (2) (two, so that a relink can fail halfway).
fn both_halves() -> Fx {
    let fx = base();
    fx.ctag("l", "c", 1).ctag("l", "d", 2);
    fx
}

/// A store with a collection and a promotion interrupted: `content/7` (untagged) with
/// its GC intent, and a dangling tag.
fn interrupted() -> Fx {
    let fx = base();
    fx.gc_intent("0001", &format!("{CONTENT}/{}", hex(7)));
    fx
}

fn run(op: Op) {
    // Thousands of stores are made: on tmpfs where there is one (several times faster:
    // each new bookkeeping fsyncs its spare GC records).
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
        tmp_in(shm);
    }
    let sw = sweep(&op);
    assert!(sw.points > 0 && sw.runs > 0, "{}: tested nothing", op.name);
}

#[test]
fn faults_tag() {
    run(Op {
        name: "tag",
        setup: base,
        live: true,
        run: |_, s| e(live(s).create_tag("a", b"new", &Target::Digest(dg(2)))),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_untag_without_collection() {
    run(Op {
        name: "untag",
        setup: base,
        live: true,
        run: |_, s| e(live(s).remove_tag("a", "one")),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_untag_with_collection() {
    run(Op {
        name: "untag+collect",
        setup: base,
        live: true,
        run: |_, s| e(live(s).remove_tag("a", "two")),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_retag_over_an_existing_tag() {
    run(Op {
        name: "retag (replace+collect)",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rename_tag(("a", "one"), "a", b"two", RenameMode::Replace)),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_rename_noreplace() {
    run(Op {
        name: "rename noreplace",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rename_tag(("a", "one"), "b/c", b"x", RenameMode::NoReplace)),
        leaves: Leaves::Before,
        kept: None,
        sticky: Some(Leaves::Either),
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_exchange() {
    run(Op {
        name: "exchange",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rename_tag(("a", "one"), "a", b"two", RenameMode::Exchange)),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_exchange_across_repos_with_promotion() {
    run(Op {
        name: "exchange+promote",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rename_tag(("l", "old"), "a", b"two", RenameMode::Exchange)),
        leaves: Leaves::Before,
        kept: Some(promote_l8),
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

/// The promotion the promoting operations below make first, alone: `l/<8>` into
/// `content/`, `l:old` and `l:old2` rewritten into the content layout naming it.
fn promote_l8(s: &Store) {
    let _g = s.lock().expect("lock");
    s.promote("l", dg(8)).expect("promote");
}

#[test]
fn faults_promotion() {
    run(Op {
        name: "promote (ln across repos)",
        setup: base,
        live: true,
        run: |_, s| {
            e(live(s).create_tag(
                "a",
                b"p",
                &Target::Tag {
                    repo: "l".into(),
                    tag: "old".into(),
                },
            ))
        },
        leaves: Leaves::Before,
        kept: Some(promote_l8),
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

/// `mv -f` over a tag at another depth: the new name is written (journaled), then the old
/// one removed; the replaced tag held the last reference to `content/7`, collected.
#[test]
fn faults_replace_at_another_depth() {
    run(Op {
        name: "replace at another depth",
        setup: || {
            let fx = base();
            fx.ctag("b/c", "t", 7);
            fx
        },
        live: true,
        run: |_, s| e(live(s).rename_tag(("a", "one"), "b/c", b"t", RenameMode::Replace)),
        leaves: Leaves::Before,
        kept: None,
        sticky: Some(Leaves::Either),
        live_may_lag: false,
        rerun: false,
    });
}

/// A repository with content tags only moved to another depth (a `relink` intent).
#[test]
fn faults_directory_move_content_only() {
    run(Op {
        name: "repo move (content, depth)",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rename_dir("a", "b/c", b"deep", RenameMode::NoReplace)),
        leaves: Leaves::Before,
        kept: None,
        sticky: Some(Leaves::Either),
        live_may_lag: true,
        rerun: false,
    });
}

#[test]
fn faults_legacy_copy() {
    run(Op {
        name: "legacy copy",
        setup: legacy_only,
        live: true,
        run: |_, s| {
            e(live(s).create_tag(
                "m",
                b"t",
                &Target::Tag {
                    repo: "l".into(),
                    tag: "old".into(),
                },
            ))
        },
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_directory_move() {
    run(Op {
        name: "repo move (both layouts)",
        setup: both_halves,
        live: true,
        run: |_, s| e(live(s).rename_dir("l", "b", b"z", RenameMode::NoReplace)),
        leaves: Leaves::Before,
        kept: None,
        sticky: Some(Leaves::Either),
        live_may_lag: true,
        rerun: false,
    });
}

#[test]
fn faults_mkdir_rmdir() {
    run(Op {
        name: "mkdir",
        setup: base,
        live: true,
        run: |_, s| {
            e(live(s).mkdir(
                "b",
                b"new",
                0o755,
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            ))
        },
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
    run(Op {
        name: "rmdir",
        setup: base,
        live: true,
        run: |_, s| e(live(s).rmdir("b/c")),
        leaves: Leaves::Before,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_mount_time_replay() {
    run(Op {
        name: "replay at open",
        setup: interrupted,
        live: false,
        run: |fx, _| e(Store::open(fx.root(), OPTS)),
        leaves: Leaves::After,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_import_install() {
    run(Op {
        name: "import install",
        setup: || {
            let fx = base();
            let built = fx.root().with_file_name("built");
            fs::create_dir(&built).expect("built");
            fs::write(built.join("rootfs.erofs"), b"built image").expect("image");
            fx.metadata(&built, &hex(0x42), "ready", 11);
            fx
        },
        live: false,
        run: |fx, _| {
            let built = fx.root().with_file_name("built");
            crate::store::install::install_image(fx.root(), &built, dg(0x42), "imp", "t")
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        leaves: Leaves::Either,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_gc() {
    run(Op {
        name: "gc (collect)",
        setup: base,
        live: false,
        run: |fx, _| {
            let _l =
                crate::store::lockfile::StoreLock::acquire(fx.root()).map_err(|e| e.to_string())?;
            let key = DirKey::Content(dg(7));
            crate::store::gc::collect(fx.root(), &key)
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        leaves: Leaves::Either,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: false,
    });
}

#[test]
fn faults_fsck_repair() {
    run(Op {
        name: "fsck --repair",
        setup: || {
            let fx = interrupted();
            fx.ctag_hex("a", "dangling", &hex(0x33));
            fx
        },
        live: false,
        run: |fx, _| {
            let _l =
                crate::store::lockfile::StoreLock::acquire(fx.root()).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            match crate::admin::fsck::repair(fx.root(), false, &mut out)? {
                (_, true) => Ok(()),
                (_, false) => Err(String::from_utf8_lossy(&out).into_owned()),
            }
        },
        leaves: Leaves::Either,
        kept: None,
        sticky: None,
        live_may_lag: false,
        rerun: true,
    });
}

/// No filesystem call in `src/store` goes around the seam ([`crate::store::sys`]): every
/// direct `std::fs`, `rustix`, `nix` or `libc` call, `File` open or I/O, and `Path` method
/// that reaches the disk, outside `sys.rs` and the test modules, fails this test (`watch.rs`,
/// the inotify watcher, reads for itself and is exempt; a line may be exempted with a
/// `seam: exempt (why)` comment).
#[test]
fn seam_is_the_only_way_to_the_filesystem() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut found = Vec::new();
    let mut files = 0;
    for entry in fs::read_dir(&dir).expect("src/store") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".rs") || ["sys.rs", "watch.rs"].contains(&name) {
            continue;
        }
        files += 1;
        let src = fs::read_to_string(&path).expect("source");
        let lines: Vec<&str> = src.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == "#[cfg(test)]"
                && lines.get(i + 1).is_some_and(|l| l.contains("mod tests"))
            {
                break;
            }
            if line.contains("seam: exempt") {
                continue;
            }
            let code = line.split("//").next().unwrap_or("");
            if around_the_seam(code) {
                found.push(format!("src/store/{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(files > 20, "scanned only {files} files");
    assert!(
        found.is_empty(),
        "filesystem calls around the seam (use store::sys):\n{}",
        found.join("\n")
    );
}

/// Does this line of code call the filesystem directly?
fn around_the_seam(code: &str) -> bool {
    // `prefix` + a lower-case identifier + `(`, the prefix not inside a longer name.
    let call = |prefix: &str, ident: &dyn Fn(&str) -> bool| {
        code.match_indices(prefix).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && prefix.starts_with(|c: char| c.is_alphabetic())
            {
                return false;
            }
            let rest = &code[i + prefix.len()..];
            let n = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            n > 0 && rest[n..].starts_with('(') && ident(&rest[..n])
        })
    };
    let any = |_: &str| true;
    const METHODS: [&str; 16] = [
        "sync_all",
        "sync_data",
        "write_all",
        "write_all_at",
        "read_at",
        "read_to_end",
        "read_to_string",
        "set_len",
        "try_lock",
        "try_lock_shared",
        "open",
        "exists",
        "try_exists",
        "symlink_metadata",
        "canonicalize",
        "read_link",
    ];
    let method = |m: &str| METHODS.contains(&m) || m == "read_dir" || m == "metadata";
    // `is_dir()` and the like on a path; on metadata or a file type (these receivers) it
    // is no call.
    let not_paths = ["m", "meta", "ft", "t", "kind", "f"];
    let path_test = ["is_dir()", "is_file()", "is_symlink()"].iter().any(|t| {
        code.match_indices(&format!(".{t}")).any(|(i, _)| {
            let recv: String = code[..i]
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            // An empty receiver is a call's result (`m.file_type().is_dir()`).
            !recv.is_empty() && !not_paths.contains(&recv.as_str())
        })
    });
    call("fs::", &any)
        || call("nix::fcntl::", &any)
        || call("nix::unistd::", &any)
        || call("libc::", &any)
        || ["File::open(", "File::create(", "Dir::read_from("]
            .iter()
            .any(|p| code.contains(p))
        || call(".", &method)
        || path_test
}

#[test]
fn the_seam_scan_sees_direct_calls() {
    for bad in [
        "std::fs::remove_file(&p)?;",
        "let f = File::open(p)?;",
        "f.sync_all()?;",
        "if path.exists() {",
        "if dir.is_dir() {",
        "rustix::fs::unlinkat(d, n, f)",
        "nix::fcntl::renameat2(a, b, c, d, e)",
        "std::os::unix::fs::symlink(a, b)",
    ] {
        assert!(around_the_seam(bad), "{bad}");
    }
    for good in [
        "sys::remove_file(&p)?;",
        "if m.is_dir() {",
        "fsutil::rename(a, b, m)",
        "let f = File::options();",
    ] {
        assert!(!around_the_seam(good), "{good}");
    }
}

/// A change whose directory fsync fails is made, in the index too, but recorded as not
/// durable (`durability`), so the mount answers EIO: before, the failure was only logged
/// and the change acknowledged, and a power cut took it back (mount-tests/test_powercut.py).
/// Swept over every call of `rm` and `mv` on a durable store: each run whose failed call
/// was an fsync and that returned Ok must have left the failure recorded; no other run may.
#[test]
fn a_failed_directory_fsync_is_recorded_not_acknowledged() {
    use crate::store::{Options, durability};
    let mut fsync_hits = 0;
    for op in ["rm", "mv"] {
        for at in 1.. {
            let fx = base();
            let s = Store::open(fx.root(), Options { durable: true }).expect("open");
            durability::take_unsynced();
            fault::arm(at, libc::EIO);
            let r = match op {
                "rm" => e(s.remove_tag("a", "one")),
                _ => e(s.rename_tag(("a", "one"), "b/c", b"moved", RenameMode::Replace)),
            };
            let plan = fault::disarm();
            let unsynced = durability::take_unsynced();
            match plan.hit {
                None => break,
                Some("fsync") if r.is_ok() => {
                    fsync_hits += 1;
                    assert!(
                        unsynced.is_some(),
                        "{op}: call {at}, an fsync, failed unrecorded"
                    );
                    assert!(
                        s.tag("a", "one").is_none(),
                        "{op}: the index lost the change"
                    );
                }
                // The directory's open, which the fsync needs, fails the same way.
                Some("open") if r.is_ok() && unsynced.is_some() => {}
                _ => assert!(
                    unsynced.is_none(),
                    "{op}: call {at} ({:?}): {unsynced:?}",
                    plan.hit
                ),
            }
        }
    }
    assert!(
        fsync_hits >= 2,
        "no run failed a directory fsync ({fsync_hits})"
    );
}
