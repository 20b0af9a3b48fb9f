//! The changes to repository directories of `tags/`: `mkdir` ([`Store::mkdir`]), `rmdir`
//! ([`Store::rmdir`]) and `mv` ([`Store::rename_dir`]), in both layouts, and the creation
//! of a repository's store directory for a new tag. Each public function takes the store
//! lock for its whole duration.

use std::os::unix::fs::PermissionsExt;

use log::{info, warn};

use super::Store;
use super::error::{IoContext, Result, StoreError, name_err};
use super::fsutil::{self, RenameMode};
use super::install;
use super::layout::{self, DirKey, Layout};
use super::names::{self, Digest};
use super::sys;
use super::tags::check_not_digest_shaped;

impl Store {
    /// Creates the store directory of `repo` in `layout` if it is missing. New content-layout
    /// directories take the owner and mode of the legacy one at the same path, if any.
    pub(super) fn ensure_store_dir(&self, layout: Layout, repo: &str) -> Result<()> {
        let dir = self.root.join(layout::repo_rel_dir(layout, repo));
        if sys::is_dir(&dir) {
            return Ok(());
        }
        if layout == Layout::Legacy {
            return Err(StoreError::NotFound(dir.display().to_string()));
        }
        install::ensure_repo_dir(&self.root, repo).map_err(|e| match e {
            install::InstallError::Refused { path, .. } => {
                StoreError::NotDir(path.display().to_string())
            }
            install::InstallError::Io { what, error } => StoreError::Io {
                context: what,
                source: error,
            },
        })?;
        self.index.write().ensure_node(repo, Layout::Content);
        Ok(())
    }

    /// `mkdir tags/PARENT/NAME`: a repository directory, made in the content layout.
    pub fn mkdir(&self, parent: &str, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        let shown = || format!("{parent}/{}", String::from_utf8_lossy(name));
        let c =
            names::check_repo_component(name, parent.is_empty()).map_err(|e| name_err(e, shown))?;
        let path = names::join(parent, c);
        if path.len() > names::MAX_REPO_LEN {
            return Err(StoreError::NameTooLong(path));
        }
        check_not_digest_shaped(&path)?;
        let _g = self.lock()?;
        self.sync_locked();
        {
            let ix = self.index();
            let node = ix
                .node(parent)
                .ok_or_else(|| StoreError::NotFound(parent.to_string()))?;
            if node.subdirs.contains(c) || node.tags.contains_key(c) {
                return Err(StoreError::Exists(path));
            }
        }
        self.ensure_store_dir(Layout::Content, parent)?;
        let dir = self.root.join(layout::repo_rel_dir(Layout::Content, &path));
        let made = match sys::create_dir(&dir) {
            Ok(()) => true,
            // A store directory without tags or digests: adopt it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e).ctx(|| dir.display().to_string()),
        };
        let owned = sys::chown(&dir, Some(uid), Some(gid)).and_then(|()| {
            sys::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o7777))
        });
        if let Err(e) = owned {
            // Found by the fault tests: the directory stayed, out of the index (the mount
            // did not show it) while the error was returned. Made here, it goes again.
            if made {
                let _ = sys::remove_dir(&dir);
            }
            return Err(e).ctx(|| dir.display().to_string());
        }
        if let Some(p) = dir.parent() {
            self.fsync_dir(p);
        }
        self.index.write().ensure_node(&path, Layout::Content);
        Ok(())
    }

    /// `rmdir tags/PATH`: removes an empty repository directory from both layouts.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        let _g = self.lock()?;
        self.sync_locked();
        self.rmdir_locked(path)
    }

    fn rmdir_locked(&self, path: &str) -> Result<()> {
        let (parent, last) = names::split_last(path);
        // Not `match self.index()...`: the guard would live through the arms, and a second
        // read lock taken while a writer waits deadlocks (parking_lot is writer-fair).
        let found = self.index().node(path).cloned();
        let node = match found {
            Some(n) => n,
            None => {
                let is_tag = self.index().tag(parent, last).is_some();
                return Err(if is_tag {
                    StoreError::NotDir(path.to_string())
                } else {
                    StoreError::NotFound(path.to_string())
                });
            }
        };
        if path.is_empty() {
            return Err(StoreError::Invalid("tags/ itself cannot be removed".into()));
        }
        if !node.is_empty() {
            return Err(StoreError::NotEmpty(path.to_string()));
        }
        for (has, lay) in [
            (node.content, Layout::Content),
            (node.legacy, Layout::Legacy),
        ] {
            if !has {
                continue;
            }
            let dir = self.root.join(layout::repo_rel_dir(lay, path));
            match sys::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    if lay == Layout::Legacy && self.only_untagged_digests(&dir, path) {
                        // The mount shows the repository empty: it goes from the mount, while
                        // the digest directories no tag names stay in the store for
                        // `imagefs gc` (unlink never collects them). A remount shows it again.
                        info!(
                            "rmdir tags/{path}: kept {} in the store, it holds digest directories that no tag names",
                            dir.display()
                        );
                    } else {
                        warn!(
                            "rmdir tags/{path}: {} holds entries that are not tags (stray files?)",
                            dir.display()
                        );
                        return Err(StoreError::NotEmpty(path.to_string()));
                    }
                }
                Err(e) => return Err(e).ctx(|| dir.display().to_string()),
            }
            self.index.write().remove_node(path, lay);
        }
        Ok(())
    }

    /// Does the legacy directory of repository `repo` hold nothing but digest directories
    /// without tags?
    fn only_untagged_digests(&self, dir: &std::path::Path, repo: &str) -> bool {
        let Ok(rd) = sys::read_dir(dir) else {
            return false;
        };
        let ix = self.index();
        rd.flatten().all(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name()
                    .to_str()
                    .and_then(Digest::parse_hex)
                    .is_some_and(|d| ix.refs(&DirKey::Legacy(repo.to_string(), d)) == Some(0))
        })
    }

    /// `mv tags/A tags/B` for a repository directory: moves its tags (and, in the legacy
    /// layout, its digest directories) with it.
    pub fn rename_dir(
        &self,
        from: &str,
        to_parent: &str,
        to_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let shown = || format!("{to_parent}/{}", String::from_utf8_lossy(to_name));
        let c = names::check_repo_component(to_name, to_parent.is_empty())
            .map_err(|e| name_err(e, shown))?;
        let to = names::join(to_parent, c);
        if to.len() > names::MAX_REPO_LEN {
            return Err(StoreError::NameTooLong(to));
        }
        if mode == RenameMode::Exchange {
            return Err(StoreError::Invalid(format!(
                "{from} <-> {to}: exchanging a repository directory (with a directory or a tag) is not supported"
            )));
        }
        let _g = self.lock()?;
        self.sync_locked();
        let node = self
            .index()
            .node(from)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(from.to_string()))?;
        if from == to {
            return Ok(());
        }
        let (existing_dir, existing_tag) = {
            let ix = self.index();
            let p = ix.node(to_parent);
            (
                p.is_some_and(|n| n.subdirs.contains(c)),
                p.is_some_and(|n| n.tags.contains_key(c)),
            )
        };
        if existing_tag {
            return Err(StoreError::NotDir(to));
        }
        // Check every legacy repository under `from` can live at its new path.
        let moved: Vec<String> = self
            .index()
            .nodes()
            .map(|(k, _)| k.clone())
            .filter(|k| *k == from || k.starts_with(&format!("{from}/")))
            .collect();
        for old in &moved {
            let new = format!("{to}{}", &old[from.len()..]);
            // Past 255 bytes: ENAMETOOLONG, as for any name too long.
            names::check_repo(&new).map_err(|e| name_err(e, || new.clone()))?;
            check_not_digest_shaped(&new)?;
            if node.legacy && layout::is_reserved_top(&new) {
                return Err(StoreError::Invalid(format!(
                    "{new}: a legacy repository cannot be named after the store's own directories"
                )));
            }
        }
        let halves: Vec<Layout> = [
            (node.content, Layout::Content),
            (node.legacy, Layout::Legacy),
        ]
        .into_iter()
        .filter_map(|(has, lay)| has.then_some(lay))
        .collect();
        let replaced: Vec<Layout> = match existing_dir.then(|| self.index().node(&to).cloned()) {
            Some(Some(n)) => [(n.content, Layout::Content), (n.legacy, Layout::Legacy)]
                .into_iter()
                .filter_map(|(has, lay)| has.then_some(lay))
                .collect(),
            _ => Vec::new(),
        };
        self.check_move_dest(from, &to, &halves, &replaced)?;
        if existing_dir {
            if mode == RenameMode::NoReplace {
                return Err(StoreError::Exists(to));
            }
            self.rmdir_locked(&to)?;
        }
        self.move_repo_halves(from, &to, &halves)?;
        self.index.write().move_subtree(from, &to);
        if let Some(w) = self.watcher.lock().as_mut() {
            for (has, lay) in [
                (node.content, Layout::Content),
                (node.legacy, Layout::Legacy),
            ] {
                if has {
                    w.renamed(lay, from, &to);
                }
            }
        }
        Ok(())
    }
}

/// Rewrites every content-layout tag under `dir` (the store directory of repository
/// `repo`) to its canonical target. Idempotent.
pub(super) fn relink_tree(dir: &std::path::Path, repo: &str) -> Result<()> {
    let rd = sys::read_dir(dir).ctx(|| dir.display().to_string())?;
    // Found by the fault tests: an entry that could not be read was skipped, and the move
    // was acknowledged with that tag's text at the old depth (a dangling tag, kept by the
    // next mount as it is). Every failure is the move's failure now: it is undone, or the
    // journal finishes it.
    for entry in rd {
        let entry = entry.ctx(|| dir.display().to_string())?;
        let ft = entry
            .file_type()
            .ctx(|| entry.path().display().to_string())?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if ft.is_dir() {
            relink_tree(&entry.path(), &names::join(repo, name))?;
        } else if ft.is_symlink() {
            let path = entry.path();
            let t = sys::read_link(&path).ctx(|| path.display().to_string())?;
            let t = t.to_string_lossy();
            let mut parts = t.rsplit('/');
            let (hex, content) = (parts.next(), parts.next());
            if content == Some(layout::CONTENT)
                && let Some(d) = hex.and_then(Digest::parse_hex)
            {
                let want = layout::tag_target(repo, &DirKey::Content(d));
                if t != want {
                    fsutil::install_symlink(&want, &path, RenameMode::Replace, false)
                        .ctx(|| path.display().to_string())?;
                }
            }
        }
    }
    Ok(())
}
