//! `imagefs gc`: removes finished digest directories that no tag names.
//!
//! Under the store lock, with the mount's crash-safe steps ([`store::gc::collect`]): a GC
//! intent record, an atomic rename into the bookkeeping's `trash/`, the deletion, then the record
//! goes. A crash at any point is finished by the next mount or `imagefs fsck --repair`.
//! Also removes the work directories killed imports left ([`store::import_work`]).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    EXIT_FAILED, EXIT_OK, EXIT_PROBLEMS, View, check_store, dir_bytes, human, lock, out, status_of,
};
use crate::store;
use crate::store::layout::DirKey;
use crate::store::names::Digest;

/// Arguments of `imagefs gc`.
#[derive(clap::Args, Debug, Clone)]
pub struct GcArgs {
    /// The hypeman image store (the directory holding `content/`, `repositories/` and legacy
    /// repository directories).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// List what would be removed, and the bytes it would free, without removing anything.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

/// A digest directory `gc` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: DirKey,
    pub status: &'static str,
}

/// Digests that some symlink of the store may name although the scan could not read it as
/// a tag (malformed targets, dangling tags): their directories are never collected.
fn protected_digests(view: &View) -> HashSet<Digest> {
    let mut set: HashSet<Digest> = view
        .scan
        .tags
        .iter()
        .filter(|t| !view.index.has_dir(&t.key))
        .map(|t| t.key.digest())
        .collect();
    for p in &view.scan.problems {
        if let Ok(t) = std::fs::read_link(&p.path)
            && let Some(d) = t
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Digest::parse_hex)
        {
            set.insert(d);
        }
    }
    set
}

/// What `gc` would remove from the store, in order; `kept` gets a line for each directory
/// kept for a reason worth telling (unknown status, possibly named by a malformed link).
/// The caller holds the store lock.
pub fn candidates(root: &Path, view: &View, kept: &mut Vec<String>) -> Vec<Candidate> {
    // Every tag the scan read counts, also those the index ignores (a name clash).
    let named: HashSet<&DirKey> = view.scan.tags.iter().map(|t| &t.key).collect();
    let protected = protected_digests(view);
    let mut out = Vec::new();
    for key in view.dirs() {
        if view.index.refs(&key).unwrap_or(0) > 0 || named.contains(&key) {
            continue;
        }
        let rel = key.rel_path();
        if protected.contains(&key.digest()) {
            kept.push(format!(
                "kept {}: a malformed or dangling tag names sha256:{}",
                rel.display(),
                key.digest()
            ));
            continue;
        }
        match status_of(root, &key) {
            Ok(s) if s.collectable() => out.push(Candidate {
                key,
                status: s.as_str(),
            }),
            Ok(_) => {} // a pull in progress: never collected
            Err(reason) => kept.push(format!("kept {}: status unknown: {reason}", rel.display())),
        }
    }
    out
}

pub(crate) fn run_to(args: &GcArgs, o: &mut dyn Write, e: &mut dyn Write) -> i32 {
    let root = match check_store(&args.store) {
        Ok(r) => r,
        Err(msg) => {
            out(e, format!("imagefs gc: {msg}"));
            return EXIT_FAILED;
        }
    };
    let _lock = match lock(&root) {
        Ok(l) => l,
        Err(msg) => {
            out(e, format!("imagefs gc: {msg}"));
            return EXIT_FAILED;
        }
    };
    let view = match store::Store::open_view(&root).map_err(|e| e.to_string()) {
        Ok(v) => v,
        Err(msg) => {
            out(e, format!("imagefs gc: {msg}"));
            return EXIT_FAILED;
        }
    };
    let mut kept = Vec::new();
    let cands = candidates(&root, &view, &mut kept);
    for k in &kept {
        out(e, format!("imagefs gc: {k}"));
    }
    let (mut n, mut bytes, mut failed) = (0usize, 0u64, 0usize);
    for c in &cands {
        let path = root.join(c.key.rel_path());
        let size = dir_bytes(&path);
        let what = format!(
            "{} (sha256:{}, {}, {})",
            path.display(),
            c.key.digest(),
            c.status,
            human(size)
        );
        if args.dry_run {
            out(o, format!("would remove {what}"));
        } else if let Err(msg) = store::gc::collect(&root, &c.key) {
            out(e, format!("imagefs gc: {msg}"));
            failed += 1;
            continue;
        } else {
            out(o, format!("removed {what}"));
        }
        n += 1;
        bytes += size;
    }
    failed += remove_import_leftovers(&root, args.dry_run, o, e);
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let freed = if args.dry_run {
        "would reclaim"
    } else {
        "reclaimed"
    };
    out(
        o,
        format!(
            "{verb} {n} digest director{}, {freed} {} ({bytes} bytes)",
            if n == 1 { "y" } else { "ies" },
            human(bytes)
        ),
    );
    if failed > 0 { EXIT_PROBLEMS } else { EXIT_OK }
}

/// Removes (or with `dry_run` lists) the work directories killed imports left; returns the
/// number of removals that failed.
fn remove_import_leftovers(
    root: &Path,
    dry_run: bool,
    o: &mut dyn Write,
    e: &mut dyn Write,
) -> usize {
    let base = store::journal::Journal::new(root).import_dir();
    let listed = match store::import_work::dead(&base) {
        Ok(d) => d,
        Err(err) => {
            out(e, format!("imagefs gc: {}: {err}", base.display()));
            return 1;
        }
    };
    let sizes: Vec<(PathBuf, u64)> = listed
        .into_iter()
        .map(|p| {
            let n = dir_bytes(&p);
            (p, n)
        })
        .collect();
    let size_of = |p: &Path| sizes.iter().find(|(q, _)| q == p).map_or(0, |(_, n)| *n);
    if dry_run {
        for (p, n) in &sizes {
            out(
                o,
                format!(
                    "would remove {} (left by a killed import, {})",
                    p.display(),
                    human(*n)
                ),
            );
        }
        return 0;
    }
    let done = match store::import_work::remove_dead(&base) {
        Ok(d) => d,
        Err(err) => {
            out(e, format!("imagefs gc: {}: {err}", base.display()));
            return 1;
        }
    };
    let mut failed = 0;
    for (p, r) in done {
        match r {
            Ok(()) => out(
                o,
                format!(
                    "removed {} (left by a killed import, {})",
                    p.display(),
                    human(size_of(&p))
                ),
            ),
            Err(err) => {
                out(e, format!("imagefs gc: {}: {err}", p.display()));
                failed += 1;
            }
        }
    }
    failed
}

/// `imagefs gc`; returns the exit status.
pub fn run(args: GcArgs) -> i32 {
    super::with_stdio(|o, e| run_to(&args, o, e))
}
