//! `imagefs fsck`: checks a store, and with `--repair` fixes what can be fixed safely.
//!
//! Under the store lock: interrupted changes (journal intents), leftover temporary files,
//! the trash, what killed imports left, entries the scan ignores (stray files, malformed names, tags naming nothing the
//! store could hold), dangling tags, tags the mount ignores, digest directories without a
//! readable status, untagged digests (information only: digest-only pulls are legitimate),
//! hypeman's staging entries (information only: a pull in progress, or hypeman's to sweep).
//! hypeman's layer store (`layers/`) is not looked at. After the lock is released (so a live
//! mount is not held up): the sha256 of each ready image named by it ([`named_by_image`]),
//! and a full read of every ready image through our erofs reader.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use imagefs_erofs::{FileKind, Image, Nid};

use super::{
    EXIT_FAILED, EXIT_OK, EXIT_PROBLEMS, View, check_store, lock, lock_for_reading, out, status_of,
};
use crate::store::gc;
use crate::store::import_work;
use crate::store::index::Tag;
use crate::store::journal::{Intent, Journal};
use crate::store::layout::{self, DirKey};
use crate::store::lockfile;
use crate::store::metadata::Status;
use crate::store::recover;

/// Arguments of `imagefs fsck`.
#[derive(clap::Args, Debug, Clone)]
pub struct FsckArgs {
    /// The hypeman image store (the directory holding `content/`, `repositories/` and legacy
    /// repository directories).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Repair what can be repaired: finish or roll back interrupted changes as a mount does,
    /// remove leftover temporary files, empty the trash (only when no mount serves the
    /// store), remove dangling tags (after listing them). Stray files, malformed entries,
    /// bad metadata and corrupt images are reported, never touched.
    #[arg(long)]
    pub repair: bool,
}

/// How bad a finding is: only problems make the exit status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Problem,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An interrupted collection (a GC intent record) that the next mount will finish.
    HalfCollected,
    /// A GC intent the next mount drops without collecting (its directory is gone, was
    /// replaced, is tagged, not finished or digest-only): information only.
    StaleIntent,
    /// Another interrupted change (promote, move, exchange, relink).
    Interrupted,
    /// An intent record that cannot be read.
    BadIntent,
    /// A leftover temporary file of an interrupted tag install.
    TempFile,
    /// An entry of the bookkeeping's `trash/`.
    Trash,
    /// A work directory a killed `imagefs import` left in the bookkeeping's `import/`.
    ImportLeftover,
    /// An entry the scan ignores: stray file, malformed name, tag outside the store.
    Ignored,
    /// A tag naming a digest directory that does not exist.
    DanglingTag,
    /// A well-formed tag the mount ignores (a clash).
    ShadowedTag,
    /// A digest directory without metadata.json.
    NoMetadata,
    /// metadata.json unreadable, or its status missing or unknown.
    BadStatus,
    /// A ready digest directory without a rootfs.erofs file.
    NoImage,
    /// sha256(rootfs.erofs) is not the directory's name.
    DigestMismatch,
    /// The image cannot be read in full.
    CorruptImage,
    /// A finished digest directory no tag names.
    Untagged,
    /// A directory that went away while fsck ran (collected meanwhile).
    Vanished,
    /// hypeman's staging entry (`.install-*`, `.tag-stage-*`, `.unpack-*`): information only.
    Staging,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Info => "info",
            Severity::Problem => "problem",
        };
        write!(f, "{sev}: {}: {}", self.path.display(), self.reason)
    }
}

fn problem(kind: Kind, path: impl Into<PathBuf>, reason: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Problem,
        kind,
        path: path.into(),
        reason: reason.into(),
    }
}

fn info(kind: Kind, path: impl Into<PathBuf>, reason: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Info,
        kind,
        path: path.into(),
        reason: reason.into(),
    }
}

/// The result of the structural check (under the lock).
pub struct Structure {
    pub findings: Vec<Finding>,
    pub view: View,
    /// Ready digest directories whose image is to be read in full.
    pub images: Vec<DirKey>,
}

/// Checks everything but the images' contents. The caller holds the store lock.
/// `mounted`: a live mount serves the store (its trash is then not a problem).
pub fn check_structure(root: &Path, mounted: bool) -> Result<Structure, String> {
    let mut f = Vec::new();
    let journal = Journal::new(root);
    let pending = journal
        .pending()
        .map_err(|e| format!("{}: {e}", journal.dir.display()))?;
    let view = crate::store::Store::open_view(root).map_err(|e| e.to_string())?;
    for (path, intent) in pending {
        f.push(match intent {
            None => problem(Kind::BadIntent, path, "unreadable intent record"),
            // Judged as the next mount's replay will: only an intent that would still
            // collect its directory is a half-collected digest.
            Some(Intent::Gc { dir, id }) => match gc::judge(root, &view.index, &dir, id.as_ref()) {
                Ok(_) => problem(
                    Kind::HalfCollected,
                    path,
                    format!("half-collected digest: the collection of {dir} was interrupted"),
                ),
                Err(stale) => info(
                    Kind::StaleIntent,
                    path,
                    format!(
                        "stale GC intent for {dir}: {stale}; the next mount (or --repair) drops it and keeps the directory"
                    ),
                ),
            },
            Some(other) => problem(
                Kind::Interrupted,
                path,
                format!(
                    "interrupted change: {}",
                    serde_json::to_string(&other).unwrap_or_default()
                ),
            ),
        });
    }
    for t in &view.scan.temp_files {
        f.push(problem(
            Kind::TempFile,
            t,
            "leftover temporary file of an interrupted change",
        ));
    }
    // The bookkeeping's trash, and the side trashes inside the store (journal.rs).
    for trash in std::iter::once(journal.trash()).chain(view.scan.side_trash.iter().cloned()) {
        trash_findings(&trash, mounted, &mut f);
    }
    match import_work::dead(&journal.import_dir()) {
        Ok(dead) => f.extend(dead.into_iter().map(|p| {
            let size = super::human(super::dir_bytes(&p));
            problem(
                Kind::ImportLeftover,
                p,
                format!(
                    "left by a killed import ({size}); --repair, gc or the next mount removes it"
                ),
            )
        })),
        Err(e) => f.push(problem(
            Kind::ImportLeftover,
            journal.import_dir(),
            e.to_string(),
        )),
    }
    for p in &view.scan.problems {
        f.push(problem(Kind::Ignored, &p.path, p.reason.clone()));
    }
    let mut staging = view.scan.staging.clone();
    staging.sort();
    for p in staging {
        f.push(info(
            Kind::Staging,
            p,
            "hypeman's staging entry (an install or tag in progress, or left by an interrupted \
             hypeman, which removes it at its next start); not a digest, not a tag, left alone",
        ));
    }
    let mut tags = view.scan.tags.clone();
    tags.sort_by(|a, b| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)));
    for t in &tags {
        let path = root
            .join(layout::repo_rel_dir(t.layout, &t.repo))
            .join(t.tag.as_str());
        if !view.index.has_dir(&t.key) {
            f.push(problem(
                Kind::DanglingTag,
                path,
                format!(
                    "dangling tag: names {}, which is not in the store (another writer \
                     removed it: hypeman deleting the image while the tag was made?); the \
                     mount hides it, `imagefs fsck --repair` removes it",
                    t.key.rel_path().display()
                ),
            ));
            continue;
        }
        let want = Tag {
            key: t.key.clone(),
            layout: t.layout,
        };
        if view.index.tag(&t.repo, &t.tag).map(|s| s.tag()) != Some(want) {
            let why = if view
                .index
                .node(&t.repo)
                .is_some_and(|n| n.subdirs.contains(t.tag.as_str()))
            {
                "its name clashes with a repository directory"
            } else {
                "the content layout has a tag of the same name"
            };
            f.push(problem(
                Kind::ShadowedTag,
                path,
                format!("tag ignored by the mount: {why}"),
            ));
        }
    }
    let mut images = Vec::new();
    for key in view.dirs() {
        let dir = root.join(key.rel_path());
        let md = dir.join("metadata.json");
        if std::fs::symlink_metadata(&md).is_err() {
            f.push(problem(Kind::NoMetadata, &dir, "no metadata.json"));
            continue;
        }
        let status = match status_of(root, &key) {
            Ok(s) => s,
            Err(reason) => {
                f.push(problem(Kind::BadStatus, &dir, reason));
                continue;
            }
        };
        if status.collectable() && view.index.refs(&key) == Some(0) {
            f.push(info(
                Kind::Untagged,
                &dir,
                format!(
                    "untagged {} digest (a digest-only pull, or its tags were removed by another program); `imagefs gc` removes it",
                    status.as_str()
                ),
            ));
        }
        if status != Status::Ready {
            continue;
        }
        let img = dir.join("rootfs.erofs");
        match std::fs::symlink_metadata(&img) {
            Ok(m) if m.is_file() => images.push(key),
            Ok(_) => f.push(problem(
                Kind::NoImage,
                img,
                "status is ready, but rootfs.erofs is not a regular file",
            )),
            Err(e) => f.push(problem(
                Kind::NoImage,
                img,
                format!("status is ready, but rootfs.erofs cannot be read: {e}"),
            )),
        }
    }
    Ok(Structure {
        findings: f,
        view,
        images,
    })
}

/// What a full read of one image went through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Reads a whole image through our reader: every directory, regular file, symlink and the
/// xattrs of every inode. The error names the path inside the image.
pub fn read_image(file: File) -> Result<ReadStats, String> {
    let img = Image::open(file).map_err(|e| format!("cannot open: {e}"))?;
    let mut stats = ReadStats::default();
    let mut seen: HashSet<Nid> = HashSet::new();
    let mut stack: Vec<(Nid, Vec<u8>)> = vec![(img.root(), b"/".to_vec())];
    let mut buf = vec![0u8; 1 << 20];
    while let Some((nid, path)) = stack.pop() {
        let shown = || String::from_utf8_lossy(&path).into_owned();
        if !seen.insert(nid) {
            // A hard link to a file already read; a directory seen twice is a loop.
            let kind = img.inode(nid).map(|i| i.kind);
            if matches!(kind, Ok(FileKind::Directory)) {
                return Err(format!("{}: directory loop (nid {})", shown(), nid.0));
            }
            continue;
        }
        let ino = img.inode(nid).map_err(|e| format!("{}: {e}", shown()))?;
        img.xattrs(nid)
            .map_err(|e| format!("{}: xattrs: {e}", shown()))?;
        match ino.kind {
            FileKind::Directory => {
                stats.dirs += 1;
                let mut entries = Vec::new();
                img.readdir(nid, 0, |e| {
                    entries.push((e.name.to_vec(), e.nid));
                    true
                })
                .map_err(|e| format!("{}: readdir: {e}", shown()))?;
                for (name, child) in entries.into_iter().rev() {
                    let mut p = path.clone();
                    if p.last() != Some(&b'/') {
                        p.push(b'/');
                    }
                    p.extend_from_slice(&name);
                    stack.push((child, p));
                }
            }
            FileKind::Regular => {
                stats.files += 1;
                let mut off = 0u64;
                while off < ino.size {
                    let n = img
                        .read(nid, off, &mut buf)
                        .map_err(|e| format!("{}: read at {off}: {e}", shown()))?;
                    if n == 0 {
                        return Err(format!(
                            "{}: data ends at {off}, its size is {}",
                            shown(),
                            ino.size
                        ));
                    }
                    off += n as u64;
                }
                stats.bytes += off;
            }
            FileKind::Symlink => {
                stats.symlinks += 1;
                img.readlink(nid)
                    .map_err(|e| format!("{}: readlink: {e}", shown()))?;
            }
            _ => {}
        }
    }
    Ok(stats)
}

/// Verifies one ready digest directory: sha256 (only where the directory is named by the
/// sha256 of its image, see [`named_by_image`]) and a full read through the reader.
pub fn verify_image(root: &Path, key: &DirKey) -> Vec<Finding> {
    let dir = root.join(key.rel_path());
    let path = dir.join("rootfs.erofs");
    let file = match crate::store::safe_open::open_regular(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return vec![info(
                Kind::Vanished,
                path,
                "went away while fsck ran (collected meanwhile?); not checked",
            )];
        }
        Err(e) => {
            return vec![problem(
                Kind::CorruptImage,
                path,
                format!("cannot open: {e}"),
            )];
        }
    };
    let mut f = Vec::new();
    if named_by_image(&dir, key) {
        match crate::store::fsutil::sha256_of(&file).map(|(d, _)| d.hex()) {
            Ok(h) if h == key.digest().hex() => {}
            Ok(h) => f.push(problem(
                Kind::DigestMismatch,
                &path,
                format!(
                    "sha256 of the image is {h}, but its directory is named {} (and it has no manifest.json)",
                    key.digest().hex()
                ),
            )),
            Err(e) => f.push(problem(
                Kind::CorruptImage,
                &path,
                format!("cannot read: {e}"),
            )),
        }
    }
    if let Err(e) = read_image(file) {
        f.push(problem(
            Kind::CorruptImage,
            &path,
            format!("corrupt image: {e}"),
        ));
    }
    f
}

/// Is the digest directory `dir` (of `key`) named by the sha256 of its `rootfs.erofs`, so
/// that its name can be checked against its bytes? hypeman names every pull by its OCI
/// manifest digest: its content layout keeps the manifest (`manifest.json`), as imagefs's
/// OCI imports do, and its legacy layout keeps none, so a legacy directory's name cannot be
/// recomputed from what it holds. Only content directories without `manifest.json` (imagefs
/// import of a directory, tar or erofs image) are named by their image.
pub fn named_by_image(dir: &Path, key: &DirKey) -> bool {
    matches!(key, DirKey::Content(_))
        && std::fs::symlink_metadata(dir.join("manifest.json")).is_err()
}

/// Verifies images with a few threads; results in the order of `keys`.
pub fn verify_images(root: &Path, keys: &[DirKey]) -> Vec<Finding> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
        .min(keys.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Vec<Finding>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(i) else { return };
                    let r = verify_image(root, key);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((i, r));
                }
            });
        }
    });
    let mut r = results.into_inner().unwrap_or_else(|e| e.into_inner());
    r.sort_by_key(|x| x.0);
    r.into_iter().flat_map(|x| x.1).collect()
}

fn count(f: &[Finding], sev: Severity) -> usize {
    f.iter().filter(|x| x.severity == sev).count()
}

pub(crate) fn run_to(args: &FsckArgs, o: &mut dyn Write, e: &mut dyn Write) -> i32 {
    let root = match check_store(&args.store) {
        Ok(r) => r,
        Err(msg) => {
            out(e, format!("imagefs fsck: {msg}"));
            return EXIT_FAILED;
        }
    };
    let mounted = lockfile::is_mounted(&root);
    let guard = if args.repair {
        lock(&root).map(Some)
    } else {
        lock_for_reading(&root)
    };
    let guard = match guard {
        Ok(g) => g,
        Err(msg) => {
            out(e, format!("imagefs fsck: {msg}"));
            return EXIT_FAILED;
        }
    };
    let first = match check_structure(&root, mounted) {
        Ok(s) => s,
        Err(msg) => {
            out(e, format!("imagefs fsck: {msg}"));
            return EXIT_FAILED;
        }
    };
    for f in &first.findings {
        out(o, f.to_string());
    }
    let mut repaired = 0usize;
    let mut repair_failed = false;
    let end = if args.repair {
        match repair(&root, mounted, o) {
            Ok((n, ok)) => {
                repaired = n;
                repair_failed = !ok;
            }
            Err(msg) => {
                out(e, format!("imagefs fsck: repair: {msg}"));
                repair_failed = true;
            }
        }
        match check_structure(&root, mounted) {
            Ok(s) => s,
            Err(msg) => {
                out(e, format!("imagefs fsck: {msg}"));
                return EXIT_FAILED;
            }
        }
    } else {
        first
    };
    drop(guard);

    let image_findings = verify_images(&root, &end.images);
    for f in &image_findings {
        out(o, f.to_string());
    }
    let problems =
        count(&end.findings, Severity::Problem) + count(&image_findings, Severity::Problem);
    let untagged = end
        .findings
        .iter()
        .filter(|f| f.kind == Kind::Untagged)
        .count();
    let mut summary = format!(
        "{}: {} tags, {} digest directories ({untagged} untagged), {} images read in full; ",
        root.display(),
        end.view.index.tag_count(),
        end.view.dirs().len(),
        end.images.len(),
    );
    if args.repair {
        summary.push_str(&format!("{repaired} repairs; "));
    }
    if problems == 0 {
        summary.push_str("clean");
    } else if args.repair {
        summary.push_str(&format!("{problems} problems remain"));
    } else {
        summary.push_str(&format!("{problems} problems"));
    }
    out(o, summary);
    if problems > 0 || repair_failed {
        EXIT_PROBLEMS
    } else {
        EXIT_OK
    }
}

/// Each entry of the trash directory `trash`: a problem when no mount is live (it should have
/// been deleted: a mount point or an immutable file inside keeps it there), else information.
fn trash_findings(trash: &Path, mounted: bool, f: &mut Vec<Finding>) {
    match std::fs::read_dir(trash) {
        Ok(rd) => {
            let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for p in entries {
                f.push(if mounted {
                    info(
                        Kind::Trash,
                        p,
                        "in the trash; kept, a live mount may still serve it to its users",
                    )
                } else {
                    problem(Kind::Trash, p, "leftover in the trash")
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => f.push(problem(Kind::Trash, trash, e.to_string())),
    }
}

/// Repairs under the lock (held by the caller): replays the journal as a mount does (the
/// trash is emptied only when no mount is live), then removes dangling tags. Returns the
/// number of repairs and whether every attempted repair succeeded.
pub fn repair(root: &Path, mounted: bool, o: &mut dyn Write) -> Result<(usize, bool), String> {
    let rec = recover::replay(root, !mounted).map_err(|e| e.to_string())?;
    let mut n = rec.actions.len();
    for a in &rec.actions {
        out(o, format!("repaired: {a}"));
    }
    for f in &rec.failures {
        out(o, format!("repair failed: {f}"));
    }
    let mut ok = rec.failures.is_empty();
    let now = check_structure(root, mounted)?;
    for f in now.findings.iter().filter(|f| f.kind == Kind::DanglingTag) {
        match crate::store::sys::remove_file(&f.path) {
            Ok(()) => {
                n += 1;
                out(
                    o,
                    format!("repaired: removed dangling tag {}", f.path.display()),
                );
            }
            Err(err) => {
                ok = false;
                out(
                    o,
                    format!(
                        "repair failed: remove dangling tag {}: {err}",
                        f.path.display()
                    ),
                );
            }
        }
    }
    Ok((n, ok))
}

/// `imagefs fsck`; returns the exit status.
pub fn run(args: FsckArgs) -> i32 {
    // Every finding is reported on stdout; the scan's own warnings would repeat them.
    if std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Error);
    }
    super::with_stdio(|o, e| run_to(&args, o, e))
}
