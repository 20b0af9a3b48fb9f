//! Installing into the store: repository directories of the content layout, digest
//! directories and tags, for the mount's own changes ([`Store::create_tag`] and the other
//! changes create their repository directories here) and for writers that do not mount the
//! store (`imagefs import`, through [`install_image`]).
//!
//! Every step is one atomic rename, or a `mkdir` of a directory that may already be there:
//! a crash leaves either the old or the new state, and re-running the install finishes it.
//!
//! [`Store::create_tag`]: super::Store::create_tag

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::fsutil::{self, RenameMode};
use super::layout::{self, DirKey};
use super::lockfile::StoreLock;
use super::metadata::{self, Status};
use super::names::{self, Digest};
use super::sys;

/// Why an install stopped.
#[derive(Debug)]
pub enum InstallError {
    /// Something in the store is in the way: `path`, and why.
    Refused { path: PathBuf, reason: String },
    /// An I/O error on `what` (a path, or `rename A -> B`).
    Io { what: String, error: io::Error },
}

impl InstallError {
    fn refused(path: &Path, reason: impl Into<String>) -> InstallError {
        InstallError::Refused {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(what: impl std::fmt::Display, error: io::Error) -> InstallError {
        InstallError::Io {
            what: what.to_string(),
            error,
        }
    }
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::Refused { path, reason } => write!(f, "{}: {reason}", path.display()),
            InstallError::Io { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

type Result<T> = std::result::Result<T, InstallError>;

/// Creates `dir` if missing, like `like` (owner and mode) when that exists, else 0755.
/// Refuses a symlink or a non-directory in the way. Returns whether it created `dir`.
fn ensure_dir_like(dir: &Path, like: &Path) -> Result<bool> {
    match sys::create_dir(dir) {
        Ok(()) => {
            let (uid, gid, mode) = match sys::metadata(like) {
                Ok(m) => (Some(m.uid()), Some(m.gid()), m.mode() & 0o7777),
                Err(_) => (None, None, 0o755),
            };
            let _ = sys::chown(dir, uid, gid);
            if let Err(e) = sys::set_permissions(dir, std::fs::Permissions::from_mode(mode)) {
                // Not left behind half made (found by the fault tests).
                let _ = sys::remove_dir(dir);
                return Err(InstallError::io(dir.display(), e));
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match sys::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(false),
            Ok(_) => Err(InstallError::refused(dir, "exists and is not a directory")),
            Err(e) => Err(InstallError::io(dir.display(), e)),
        },
        Err(e) => Err(InstallError::io(dir.display(), e)),
    }
}

/// Creates `repositories/<repo>/` and each level above it that is missing. Each new level
/// takes the owner and mode of the legacy repository directory of the same path, if any
/// (`repositories/` itself those of the store). Returns the directory.
pub fn ensure_repo_dir(root: &Path, repo: &str) -> Result<PathBuf> {
    ensure_repo_dir_made(root, repo).map(|(dir, _)| dir)
}

/// [`ensure_repo_dir`], returning also the levels it made, deepest last. On a failure the
/// levels made are removed again (found by the fault tests: a failed `mkdir -p` or import
/// left empty repository directories).
fn ensure_repo_dir_made(root: &Path, repo: &str) -> Result<(PathBuf, Vec<PathBuf>)> {
    let mut dir = root.join(layout::REPOSITORIES);
    let mut made = Vec::new();
    let mut rel = String::new();
    let mut levels = vec![(dir.clone(), root.to_path_buf())];
    for c in repo.split('/').filter(|c| !c.is_empty()) {
        dir.push(c);
        rel = names::join(&rel, c);
        levels.push((dir.clone(), root.join(&rel)));
    }
    for (level, like) in levels {
        match ensure_dir_like(&level, &like) {
            Ok(true) => made.push(level),
            Ok(false) => {}
            Err(e) => {
                remove_made(&made);
                return Err(e);
            }
        }
    }
    Ok((dir, made))
}

/// Removes the directories [`ensure_repo_dir_made`] made, deepest first (best effort: an
/// empty repository directory left is harmless).
fn remove_made(made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = sys::remove_dir(d);
    }
}

/// Installs the finished digest directory `built` as `content/<digest>`, by one rename,
/// unless that exists already and is `ready` (then `built` is left alone). Returns whether
/// the digest was already in the store. The caller holds the store lock.
pub fn install_digest_dir(root: &Path, built: &Path, digest: Digest) -> Result<bool> {
    let content = root.join(layout::CONTENT);
    ensure_dir_like(&content, root)?;
    let dest = root.join(DirKey::Content(digest).rel_path());
    match sys::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => match metadata::read_status(&dest) {
            Ok(Status::Ready) => Ok(true),
            Ok(s) => Err(InstallError::refused(
                &dest,
                format!(
                    "already exists with status {:?} (a pull in progress?); not tagged",
                    s.as_str()
                ),
            )),
            Err(e) => Err(InstallError::refused(
                &dest,
                format!("already exists but {e}; not tagged"),
            )),
        },
        Ok(_) => Err(InstallError::refused(
            &dest,
            "exists and is not a directory",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fsutil::rename(built, &dest, RenameMode::NoReplace).map_err(|e| {
                InstallError::io(
                    format!("rename {} -> {}", built.display(), dest.display()),
                    e,
                )
            })?;
            if let Err(e) = fsutil::fsync_dir(&content) {
                take_back(root, built, digest);
                return Err(InstallError::io(content.display(), e));
            }
            Ok(false)
        }
        Err(e) => Err(InstallError::io(dest.display(), e)),
    }
}

/// Installs the tag `repo:tag` naming `content/<digest>` with an atomic rename, durably.
/// An existing tag of that name moves (as `docker tag` does), and a legacy-layout tag of
/// the same name (`<repo>/<tag>`) is removed, as hypeman does when it retags. The image a
/// moved tag named is not collected here: `imagefs gc` does that (DESIGN.md 4, other
/// writers). The caller holds the store lock.
///
/// `repo` is taken literally; when hypeman names that repository otherwise (`alpine` for
/// `docker.io/library/alpine`), a warning says that hypeman will not see the tag.
pub fn install_tag(root: &Path, repo: &str, tag: &str, digest: Digest) -> Result<()> {
    if let Some(normal) = names::not_normalized(repo) {
        log::warn!(
            "tag {repo}:{tag}: hypeman names this repository {normal:?} and will not see the \
             tag; give {normal}:{tag} for a tag hypeman sees"
        );
    }
    let (dir, made) = ensure_repo_dir_made(root, repo)?;
    let link = dir.join(tag);
    if sys::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
        return Err(InstallError::refused(
            &link,
            "exists and is not a tag (a directory or file is in the way)",
        ));
    }
    let text = layout::tag_target(repo, &DirKey::Content(digest));
    if let Err(e) = fsutil::install_symlink(&text, &link, RenameMode::Replace, true) {
        // Unless the tag was installed (the fsync after it failed), the directories made
        // for it go again.
        if !sys::read_link(&link).is_ok_and(|t| t.as_os_str() == text.as_str()) {
            remove_made(&made);
        }
        return Err(InstallError::io(link.display(), e));
    }
    // The same tag in the legacy layout moves too.
    if !layout::is_reserved_top(repo) {
        let twin = root.join(repo).join(tag);
        if sys::symlink_metadata(&twin).is_ok_and(|m| m.file_type().is_symlink()) {
            sys::remove_file(&twin).map_err(|e| InstallError::io(twin.display(), e))?;
            if let Some(p) = twin.parent() {
                let _ = fsutil::fsync_dir(p);
            }
        }
    }
    Ok(())
}

/// An import's install, under the store's writer lock: [`install_digest_dir`] then
/// [`install_tag`]. Returns whether the digest was already in the store.
pub fn install_image(
    root: &Path,
    built: &Path,
    digest: Digest,
    repo: &str,
    tag: &str,
) -> Result<bool> {
    let _lock = StoreLock::acquire(root).map_err(|e| {
        InstallError::refused(
            &super::journal::Journal::new(root).lock_path(),
            format!("cannot take the store lock: {e}"),
        )
    })?;
    let reused = install_digest_dir(root, built, digest)?;
    if let Err(e) = install_tag(root, repo, tag, digest) {
        // The tag is not there: the directory just installed goes back, so that a failed
        // import leaves the store as it was (found by the fault tests: it stayed, untagged,
        // and nothing ever collected it). A tag installed before the failure keeps it.
        let link = root.join(layout::REPOSITORIES).join(repo).join(tag);
        let text = layout::tag_target(repo, &DirKey::Content(digest));
        let tagged = sys::read_link(&link).is_ok_and(|t| t.as_os_str() == text.as_str());
        if !reused && !tagged {
            take_back(root, built, digest);
        }
        return Err(e);
    }
    Ok(reused)
}

/// Moves `content/<digest>`, installed by this import, back to `built` (best effort: left
/// in place, it is an untagged image that `imagefs gc` removes).
fn take_back(root: &Path, built: &Path, digest: Digest) {
    let dest = root.join(DirKey::Content(digest).rel_path());
    if let Err(e) = fsutil::rename(&dest, built, RenameMode::NoReplace) {
        log::warn!(
            "{}: installed, but its tag could not be; left untagged ({e})",
            dest.display()
        );
    }
}
