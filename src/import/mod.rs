//! `imagefs import`: turns a directory, a tar archive, an erofs image or an OCI image (an
//! OCI image layout directory or a `docker save` tarball) into a digest directory of the
//! store, and tags it.
//!
//! Steps, each in its own module:
//!
//! 1. [`source`] finds out what SOURCE is, by its contents (magic bytes), never its name.
//! 2. [`oci`] reads an OCI layout or `docker save` archive (index -> manifest -> config,
//!    layers; [`platform`] chooses among an index's images by `--platform`); [`layer`]
//!    applies tar layers into a fresh tree with whiteouts and opaque directories, never
//!    writing outside the tree (every path is resolved component by component with
//!    `O_NOFOLLOW`, symlinks are resolved inside the tree).
//! 3. [`build`] runs `mkfs.erofs -zlz4` reproducibly and hashes the image.
//! 4. [`install`] moves the digest directory into `content/<hex>` and installs the tag,
//!    under the store's writer lock ([`crate::store::lockfile::StoreLock`]).
//!
//! All the work happens in `import/<unique>/` of the store's bookkeeping directory (beside
//! the store, out of hypeman's listings; same filesystem as the store, so the install is one
//! rename). That directory is removed on every error path; one left by a killed import
//! (a live import holds an `flock` on its directory, a dead one does not) is reported by
//! `fsck` and removed by the next import, mount, `fsck --repair` or `gc`
//! ([`crate::store::import_work`]); an import interrupted by SIGINT, SIGTERM or SIGHUP
//! removes its own ([`interrupt`]). `mkfs.erofs` dies with the import ([`build::mkfs`]).
//!
//! Digest naming: OCI images are named by the sha256 of their manifest blob, as hypeman
//! names pulled images; everything else (directories, tars, erofs images, and legacy
//! `docker save` archives, which carry no manifest blob) by the sha256 of `rootfs.erofs`.
//!
//! References: `--tag REPO:TAG` is normalized as docker and hypeman normalize it (`alpine`
//! is `docker.io/library/alpine`, [`names::normalize_repo`]), so hypeman finds the tag where it
//! looks; `:TAG` defaults to `latest`. The output names the reference as stored.
//!
//! No unsafe code: every syscall goes through nix's or rustix's safe wrappers.

#![forbid(unsafe_code)]

mod at;
pub mod build;
pub mod install;
mod interrupt;
pub mod layer;
mod mtime;
pub mod oci;
pub mod platform;
pub mod source;
pub mod tarstream;
mod zstd;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::store::Digest;
use crate::store::names::{self, NameError};

/// `imagefs import`'s command line.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// The hypeman image store (an existing directory).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// The tag to give the image: REPO:TAG, e.g. docker.io/library/alpine:3.20. The
    /// repository is taken as written (no docker.io/library/ is added); ":TAG" defaults to
    /// "latest". An existing tag of that name is moved to the imported image.
    #[arg(long = "tag", value_name = "REPO:TAG")]
    pub reference: String,
    /// What to import: a directory (the root file tree), a tar archive of one (plain or
    /// gzip), an erofs image (used as is), an OCI image layout directory (as `skopeo copy
    /// ... oci:DIR` writes it) or a `docker save` tarball (plain or gzip). The kind is
    /// found from the contents, not the file name.
    #[arg(value_name = "SOURCE")]
    pub source: PathBuf,
    /// The platform to import from a multi-platform image (an index listing several):
    /// os/arch[/variant], e.g. linux/arm64 or linux/amd64/v3. Default: this machine's
    /// (linux/amd64 on x86_64), the image without a variant, else the best variant its CPU
    /// runs. An image whose config names another os/arch is refused. No effect on a
    /// directory, tar or erofs image.
    #[arg(long, value_name = "OS/ARCH[/VARIANT]", value_parser = platform::Platform::parse)]
    pub platform: Option<platform::Platform>,
    /// No progress lines, even on a terminal (they go to stderr, only when it is one).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    pub digest: Digest,
    pub repo: String,
    pub tag: String,
    /// The digest directory was already in the store: only the tag was (re)installed.
    pub reused: bool,
}

/// Why an import failed. Every variant names the path (or name) it is about and why.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    /// The source is unusable: unknown kind, malformed manifest, missing blob, a layer
    /// that tries to escape, a truncated archive...
    #[error("{path}: {reason}")]
    Source { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.erofs: {0}")]
    Build(String),
    #[error("store {path}: {reason}")]
    Store { path: String, reason: String },
}

impl ImportError {
    pub(crate) fn source(path: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        ImportError::Source {
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        ImportError::Io {
            path: path.to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, ImportError>;

/// Progress lines on stderr, only when enabled (stderr is a terminal and not --quiet).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        Progress { enabled }
    }

    pub fn say(&self, msg: impl std::fmt::Display) {
        if self.enabled {
            eprintln!("imagefs import: {msg}");
        }
    }
}

/// Splits `REPO[:TAG]`, checks both against the store's grammar and returns the repository
/// in the form hypeman stores it ([`names::normalize_repo`]: `alpine` is
/// `docker.io/library/alpine`). The tag separator is the last `:` after the last `/` (a
/// registry host may carry a `:port`).
pub fn parse_reference(reference: &str) -> std::result::Result<(String, String), String> {
    if reference.contains('@') {
        return Err("a digest reference (REPO@sha256:...) cannot be a tag; give REPO:TAG".into());
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match reference[slash..].rfind(':') {
        Some(i) => (&reference[..slash + i], &reference[slash + i + 1..]),
        None => (reference, "latest"),
    };
    match names::check_repo(repo) {
        Ok(()) => {}
        Err(NameError::TooLong) => {
            return Err(format!(
                "repository {repo:?} is longer than {} bytes",
                names::MAX_REPO_LEN
            ));
        }
        Err(NameError::Invalid) => {
            return Err(format!(
                "repository {repo:?} is not a valid name: lowercase components \
                 [a-z0-9]+ joined by '.', '_', '__' or '-', separated by '/'; the first \
                 may be a registry host such as registry.example.com:5000"
            ));
        }
    }
    let repo = names::normalize_repo(repo);
    // The normalized name is checked too: `docker.io/library/` adds 18 bytes.
    if repo.len() > names::MAX_REPO_LEN {
        return Err(format!(
            "repository {repo:?} is longer than {} bytes",
            names::MAX_REPO_LEN
        ));
    }
    match names::check_tag(tag.as_bytes()) {
        Ok(_) => Ok((repo, tag.to_string())),
        Err(NameError::TooLong) => Err(format!(
            "tag {tag:?} is longer than {} bytes",
            names::MAX_TAG_LEN
        )),
        Err(NameError::Invalid) => Err(format!(
            "tag {tag:?} is not a valid tag: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        )),
    }
}

/// Imports `source` into the store at `store` and tags it `reference` (REPO:TAG).
pub fn import(
    store: &Path,
    reference: &str,
    source: &Path,
    want: &platform::Platform,
    progress: bool,
) -> Result<ImportOutcome> {
    let progress = Progress::new(progress);
    let (repo, tag) = parse_reference(reference).map_err(|reason| ImportError::Reference {
        reference: reference.to_string(),
        reason,
    })?;
    let store = match std::fs::metadata(store) {
        Ok(m) if m.is_dir() => store
            .canonicalize()
            .map_err(|e| ImportError::io(store.display(), e))?,
        Ok(_) => {
            return Err(ImportError::Store {
                path: store.display().to_string(),
                reason: "not a directory".into(),
            });
        }
        Err(e) => {
            return Err(ImportError::Store {
                path: store.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    let kind = source::detect(source)?;
    progress.say(format_args!("{}: {}", source.display(), kind.describe()));
    let work = WorkDir::create(&store)?;
    let out = work.path().join("digest");
    std::fs::create_dir(&out).map_err(|e| ImportError::io(out.display(), e))?;
    let image = out.join("rootfs.erofs");
    let name = format!("{repo}:{tag}");

    let (digest, meta) = match kind {
        source::Kind::Erofs => {
            progress.say("copying the erofs image");
            build::copy_image(source, &image)?;
            let (digest, size) = build::hash_file(&image)?;
            (digest, install::MetaInput::plain(&name, digest, size))
        }
        source::Kind::Dir => {
            progress.say("building the erofs image");
            build::mkfs(source, &image)?;
            let (digest, size) = build::hash_file(&image)?;
            (digest, install::MetaInput::plain(&name, digest, size))
        }
        source::Kind::Tar { gzip } => {
            let tar = if gzip {
                progress.say("decompressing");
                let plain = work.path().join("source.tar");
                source::gunzip_to(source, &plain)?;
                plain
            } else {
                source.to_path_buf()
            };
            let tree = work.path().join("rootfs");
            match oci::TarBlobs::index(&tar, source)? {
                Some(blobs) => from_image(&blobs, &name, want, &tree, &out, progress)?,
                None => {
                    progress.say("extracting");
                    layer::extract_tar_file(&tar, source, &tree)?;
                    progress.say("building the erofs image");
                    build::mkfs(&tree, &image)?;
                    let (digest, size) = build::hash_file(&image)?;
                    (digest, install::MetaInput::plain(&name, digest, size))
                }
            }
        }
        source::Kind::OciDir => {
            let blobs = oci::DirBlobs::new(source);
            let tree = work.path().join("rootfs");
            from_image(&blobs, &name, want, &tree, &out, progress)?
        }
    };
    install::write_metadata(&out, &meta)?;
    progress.say(format_args!("installing sha256:{digest}"));
    let reused = install::install(&store, &out, digest, &repo, &tag)?;
    drop(work);
    Ok(ImportOutcome {
        digest,
        repo,
        tag,
        reused,
    })
}

/// Applies an OCI / docker-save image's layers into `tree` and builds `out/rootfs.erofs`
/// from it (and `out/manifest.json` for an OCI image).
fn from_image(
    blobs: &dyn oci::Blobs,
    name: &str,
    want: &platform::Platform,
    tree: &Path,
    out: &Path,
    progress: Progress,
) -> Result<(Digest, install::MetaInput)> {
    let image = &out.join("rootfs.erofs");
    let plan = oci::plan(blobs, name, want)?;
    layer::create_root(tree)?;
    let mut dirs = layer::DirMeta::default();
    let n = plan.layers.len();
    for (i, l) in plan.layers.iter().enumerate() {
        progress.say(format_args!(
            "layer {}/{n} {}{}",
            i + 1,
            l.path,
            l.size
                .map(|s| format!(" ({})", human_size(s)))
                .unwrap_or_default()
        ));
        oci::apply_layer(blobs, l, tree, &mut dirs)?;
    }
    dirs.finish(tree)
        .map_err(|e| e.into_import(&tree.display().to_string()))?;
    progress.say("building the erofs image");
    build::mkfs(tree, image)?;
    let (erofs_digest, size) = build::hash_file(image)?;
    let digest = plan.manifest_digest.unwrap_or(erofs_digest);
    if let Some(manifest) = &plan.manifest {
        // hypeman's content layout keeps the manifest the directory is named by; fsck checks
        // the name of a directory without one against the sha256 of its image.
        install::write_manifest(out, manifest)?;
    }
    let meta = install::MetaInput::from_config(name, digest, size, &plan.config);
    Ok((digest, meta))
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// `import/<unique>/` in the store's bookkeeping directory (beside the store, same
/// filesystem): removed when dropped. Holds an `flock` on itself so a
/// later import can tell a dead import's leftovers from a live one's.
struct WorkDir {
    path: PathBuf,
    _lock: std::fs::File,
}

impl WorkDir {
    fn create(store: &Path) -> Result<WorkDir> {
        let base = crate::store::journal::Journal::new(store).import_dir();
        let (path, lock) = crate::store::import_work::create(&base)
            .map_err(|e| ImportError::io(base.display(), e))?;
        // mkfs.erofs inherits the lock, so the directory is not swept while a build that
        // outlived a killed import (where it cannot be made to die with it: `build`) still
        // writes into it.
        let _ = nix::fcntl::fcntl(&lock, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty()));
        interrupt::set_work_dir(Some(path.clone()));
        Ok(WorkDir { path, _lock: lock })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        interrupt::set_work_dir(None);
        if let Err(e) = crate::store::fsutil::remove_tree(&self.path) {
            log::warn!("{}: cannot remove: {e}", self.path.display());
        }
    }
}

/// `imagefs import`: runs [`import`], prints the outcome, returns the exit status.
pub fn run(args: ImportArgs) -> i32 {
    interrupt::install();
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let want = args.platform.unwrap_or_else(platform::Platform::host);
    match import(&args.store, &args.reference, &args.source, &want, progress) {
        Ok(o) => {
            let what = if o.reused {
                "already in the store; tag installed"
            } else {
                "stored"
            };
            println!("{}:{} sha256:{} ({what})", o.repo, o.tag, o.digest);
            0
        }
        Err(e) => {
            eprintln!("imagefs import: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for (r, repo, tag) in [
            ("alpine", "docker.io/library/alpine", "latest"),
            ("alpine:3.20", "docker.io/library/alpine", "3.20"),
            ("myuser/app:1", "docker.io/myuser/app", "1"),
            ("docker.io/alpine:1", "docker.io/library/alpine", "1"),
            (
                "index.docker.io/library/alpine:1",
                "docker.io/library/alpine",
                "1",
            ),
            (
                "docker.io/library/alpine:latest",
                "docker.io/library/alpine",
                "latest",
            ),
            ("localhost:5000/a/b", "localhost:5000/a/b", "latest"),
            ("localhost:5000/a/b:v1", "localhost:5000/a/b", "v1"),
            (
                "reg.example.com/x_y/z:_T-1.",
                "reg.example.com/x_y/z",
                "_T-1.",
            ),
        ] {
            assert_eq!(
                parse_reference(r),
                Ok((repo.to_string(), tag.to_string())),
                "{r}"
            );
        }
        for bad in [
            "",
            ":x",
            "Alpine:1",
            "alpine:",
            "alpine:.x",
            "a//b:1",
            "/a:1",
            "a/:1",
            "alpine@sha256:0000",
            "a/b:c/d",
            "a:b:c",
            "x/.y:1",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(parse_reference(&long_tag).unwrap_err().contains("longer"));
    }
}
