//! A legacy store stays legacy. In a store without `content/` (written by legacy hypeman,
//! which knows no other layout), a tag in repository `B` naming a digest that only other
//! repositories hold (`A/<hex>`) gets a legacy digest directory of its own, `B/<hex>`, which
//! legacy hypeman gets, lists and deletes like any it pulled itself. Promotion into
//! `content/` ([`super::promote`]) is kept for stores that have `content/` already.
//!
//! The copy is made as hypeman's own cross-repository clone of that era makes it
//! (`cloneReadyImageLegacy`, kernel/hypeman `lib/images/storage.go`): `rootfs.erofs` (and
//! every other regular file) hard-linked from the source, so the image is on disk once;
//! `metadata.json` a file of its own, the source's fields with `name` set to the new tag's
//! reference. Sharing the image's inode is safe beside hypeman: it writes `metadata.json` by
//! rename, and runs `mkfs.erofs` onto `rootfs.erofs` only in a directory that is not ready
//! (a `failed` one it first removes), never into a ready one. Where a hard link is refused
//! (`EXDEV`, `EMLINK`, `EPERM`) the bytes are copied, and the log says so.
//!
//! Steps, all under the store lock:
//! 1. the directory is built in the bookkeeping's `trash/` (same filesystem, out of
//!    hypeman's sight, a name no one takes for a digest; whatever a crash leaves there is
//!    garbage by definition and the next mount deletes it), or in `B/.imagefs-trash/` where
//!    `B` is a filesystem of its own ([`super::journal::Journal::staging_for`]);
//! 2. a GC intent is recorded for `B/<hex>` with the built directory's identity ([`DirId`]:
//!    inode and birth time, which a rename keeps);
//! 3. it is renamed into place (`RENAME_NOREPLACE`) and enters the index;
//! 4. the caller installs the tag;
//! 5. [`Store::settle_copies`] drops the intent, or, if no tag names the copy (the tag's
//!    install failed), collects it at once.
//!
//! A crash before 3 leaves an intent whose directory does not exist (dropped at the next
//! mount) and the staged directory in the trash (deleted). A crash between 3 and 5 leaves
//! the directory and its intent: the next mount (or `imagefs fsck --repair`) collects it if
//! no tag names it (the tag never arrived), and keeps it, dropping the intent, if the tag
//! did (see [`super::gc`]). Where the filesystem keeps no birth time the identity is the
//! change time, which the rename changes: the intent is then written again after the
//! rename, and a crash in that one system call leaves a ready legacy directory no tag
//! names, which `imagefs gc` collects.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use log::{info, warn};

use super::Store;
use super::error::{IoContext, Result, StoreError};
use super::fsutil::{self, RenameMode};
use super::journal::DirId;
use super::layout::{self, DirKey, Layout};
use super::metadata::{Metadata, Status};
use super::sys;

impl Store {
    /// Does a tag in `repo` naming another repository's legacy directory get a legacy copy
    /// (instead of a promotion)? In a store without `content/`, unless `repo` cannot be a
    /// legacy repository (its first component is one of the store's own directories).
    pub(super) fn stays_legacy(&self, repo: &str) -> Result<bool> {
        let content = self.root.join(layout::CONTENT);
        // Only a missing `content/` makes a legacy copy. Found by the fault tests: any
        // error of the lstat used to count as missing, so an EIO made a copy (and a
        // directory) the fault-free run does not make; it is now reported.
        match sys::symlink_metadata(&content) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(!layout::is_reserved_top(repo))
            }
            Err(e) => Err(e).ctx(|| content.display().to_string()),
        }
    }

    /// The legacy directory of `repo` that a tag `repo:tag` uses for the digest of `from`,
    /// another repository's legacy directory: `repo`'s own if it has one (checked ready),
    /// else a new copy of `from` ([`Store::copy_legacy`]).
    pub(super) fn legacy_dir_in(&self, from: &DirKey, repo: &str, tag: &str) -> Result<DirKey> {
        let local = DirKey::Legacy(repo.to_string(), from.digest());
        if self.index().has_dir(&local) {
            self.check_ready(&local)?;
            return Ok(local);
        }
        self.copy_legacy(from, repo, tag)?;
        Ok(local)
    }

    /// Steps 1-3 of the module doc: makes `repo/<hex>` a copy of `from` for the tag
    /// `repo:tag`. Its GC intent waits in `fresh_copies` for [`Store::settle_copies`].
    fn copy_legacy(&self, from: &DirKey, repo: &str, tag: &str) -> Result<()> {
        self.check_ready(from)?;
        let d = from.digest();
        let to = DirKey::Legacy(repo.to_string(), d);
        let src = self.root.join(from.rel_path());
        let dest = self.root.join(to.rel_path());
        self.ensure_legacy_repo_dir(repo)?;
        let repo_dir = self.root.join(repo);
        let staged = self
            .journal
            .staging_for(&repo_dir)
            .ctx(|| repo_dir.display().to_string())?
            .join(fsutil::unique_name(&format!("copy-{}", &d.hex()[..12])));
        if let Err(e) = build_copy(&src, &staged, &format!("{repo}:{tag}")) {
            let _ = fsutil::remove_tree(&staged);
            return Err(e).ctx(|| format!("copy {} -> {}", src.display(), staged.display()));
        }
        let id = DirId::of(&staged).ctx(|| staged.display().to_string())?;
        let mut rec = match self.journal.record_gc(&to, &id) {
            Ok(r) => r,
            Err(e) => {
                let _ = fsutil::remove_tree(&staged);
                return Err(e).ctx(|| format!("journal {}", self.journal.dir.display()));
            }
        };
        if let Err(e) = fsutil::rename(&staged, &dest, RenameMode::NoReplace) {
            let _ = self.journal.done(&rec);
            let _ = fsutil::remove_tree(&staged);
            return Err(e).ctx(|| format!("rename {} -> {}", staged.display(), dest.display()));
        }
        // Without a birth time the identity is the change time, which the rename changed:
        // the intent is written again for the directory in place.
        if !id.matches(&dest).unwrap_or(false) {
            match super::gc::record_intent(&self.journal, &self.root, &to) {
                Ok(again) => {
                    let _ = self.journal.done(&rec);
                    rec = again;
                }
                Err(e) => warn!(
                    "{}: cannot record its GC intent again: {e}; if the tag is not made, \
                     `imagefs gc` collects it",
                    dest.display()
                ),
            }
        }
        self.fsync_dir(&self.root.join(repo));
        info!(
            "{repo}:{tag}: {} made as a copy of {} (the store has no content/: it stays legacy)",
            dest.display(),
            src.display()
        );
        {
            let mut ix = self.index.write();
            ix.add_dir(to.clone());
            ix.ensure_node(repo, Layout::Legacy);
        }
        self.fresh_copies.lock().push((rec, to));
        Ok(())
    }

    /// Step 5 of the module doc, at the end of every change that may have made a copy.
    pub(super) fn settle_copies(&self) {
        let fresh = std::mem::take(&mut *self.fresh_copies.lock());
        for (rec, key) in fresh {
            if self.index().refs(&key).unwrap_or(0) > 0 {
                self.drop_intent(Some(super::gc::LastRef::Collect(rec)));
            } else {
                info!(
                    "{}: no tag names the new copy (its tag was not made); collecting it",
                    key.rel_path().display()
                );
                // Rare (a tag refused after its copy was made): deleted at once, under
                // the lock, rather than handed to every caller's `Collection`.
                let done = self.finish_gc(Some(super::gc::LastRef::Collect(rec)), &key);
                self.delete_collected(&mut done.into_iter().collect::<Vec<_>>());
            }
        }
    }

    /// `NotReady` unless `key`'s status is `ready`.
    fn check_ready(&self, key: &DirKey) -> Result<()> {
        let reason = match self.status(key) {
            Ok(Status::Ready) => return Ok(()),
            Ok(s) => format!("status is {}", s.as_str()),
            Err(reason) => reason,
        };
        Err(StoreError::NotReady {
            what: key.rel_path().display().to_string(),
            reason,
        })
    }

    /// Creates the legacy store directory of `repo` and its missing parents, each like the
    /// content layout's directory of the same path if there is one (`mkdir` in the mount
    /// made it with its caller's owner and mode), else like the directory above it; and
    /// records it in the index.
    fn ensure_legacy_repo_dir(&self, repo: &str) -> Result<()> {
        let mut dir = self.root.clone();
        let mut like = self.root.join(layout::REPOSITORIES);
        for c in repo.split('/').filter(|c| !c.is_empty()) {
            let parent = dir.clone();
            dir.push(c);
            like.push(c);
            match sys::create_dir(&dir) {
                Ok(()) if sys::is_dir(&like) => copy_owner_and_mode(&like, &dir),
                Ok(()) => copy_owner_and_mode(&parent, &dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !sys::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                        return Err(StoreError::NotDir(dir.display().to_string()));
                    }
                }
                Err(e) => return Err(e).ctx(|| dir.display().to_string()),
            }
        }
        self.index.write().ensure_node(repo, Layout::Legacy);
        Ok(())
    }
}

/// A new directory takes the owner and mode of `like` (best effort: an unprivileged mount
/// keeps its own).
fn copy_owner_and_mode(like: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = sys::metadata(like) {
        let _ = sys::chown(dir, Some(m.uid()), Some(m.gid()));
        let _ = sys::set_permissions(dir, std::fs::Permissions::from_mode(m.mode() & 0o7777));
    }
}

/// Builds `staged` from the digest directory `src`: regular files hard-linked (copied where
/// that is refused), `metadata.json` written anew with `name` set to `reference`. Writers'
/// temporaries and anything that is not a regular file are left out.
fn build_copy(src: &Path, staged: &Path, reference: &str) -> io::Result<()> {
    sys::create_dir(staged)?;
    copy_owner_and_mode(src, staged);
    for entry in sys::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file()
            || layout::is_staging_file(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()))
            || name == "metadata.json"
        {
            continue;
        }
        link_or_copy(&entry.path(), &staged.join(&name))?;
    }
    let mut md = Metadata::read(src).map_err(io::Error::other)?;
    md.fields
        .insert("name".into(), serde_json::Value::String(reference.into()));
    let path = staged.join("metadata.json");
    sys::write(&path, md.to_bytes())?;
    if let Ok(m) = sys::metadata(src.join("metadata.json")) {
        let _ = sys::set_permissions(&path, m.permissions());
    }
    sys::sync_all(&sys::open(&path, std::fs::File::options().read(true))?)?;
    fsutil::fsync_dir(staged)?;
    Ok(())
}

/// Hard-links `from` to `to`; where the filesystem refuses (`EXDEV`, `EMLINK`, `EPERM`),
/// copies the bytes instead and logs it.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    match sys::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV | libc::EMLINK | libc::EPERM)
            ) =>
        {
            warn!(
                "hard link {} -> {}: {e}; copying the bytes instead (the image takes its space twice)",
                from.display(),
                to.display()
            );
            sys::copy(from, to)?;
            sys::sync_all(&sys::open(to, std::fs::File::options().read(true))?)
        }
        Err(e) => Err(e),
    }
}
