//! Mount-time repair: replays the journal, removes leftovers, builds the index.
//! Runs under the store lock, before the mount serves anything.

use std::path::Path;

use log::{info, warn};

use super::Store;
use super::error::{IoContext, Result};
use super::fsutil::{self, RenameMode};
use super::index::Index;
use super::journal::Intent;
use super::layout::{self, DirKey, Layout};
use super::names::Digest;
use super::ops::relink_tree;

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// The digest a tag link names: the last component of its text, in either layout.
fn link_hex(p: &Path) -> Option<std::ffi::OsString> {
    std::fs::read_link(p)
        .ok()?
        .file_name()
        .map(|n| n.to_owned())
}

/// The same tag's store-relative path in the other layout.
fn twin_of(rel: &str) -> String {
    match rel.strip_prefix(layout::REPOSITORIES) {
        Some(r) if r.starts_with('/') => r.trim_start_matches('/').to_string(),
        _ => format!("{}/{rel}", layout::REPOSITORIES),
    }
}

impl Store {
    /// Finishes or rolls back every interrupted change and returns the index of what is left.
    pub(super) fn recover(&self) -> Result<Index> {
        let root = self.root.clone();
        let pending = self
            .journal
            .pending()
            .ctx(|| self.journal.dir.display().to_string())?;
        let mut gc = Vec::new();
        for (record, intent) in pending {
            match intent {
                None => warn!("{}: unreadable intent record; dropped", record.display()),
                Some(Intent::Gc { dir }) => {
                    gc.push((record, dir));
                    continue;
                }
                Some(Intent::Promote { repo, hex }) => self.replay_promote(&repo, &hex)?,
                Some(Intent::Move { from, to }) => {
                    let twin = root.join(twin_of(&to));
                    let (from, to) = (root.join(from), root.join(to));
                    // `to` may be a tag the move was replacing: the move happened only if
                    // `to` names the moved tag's digest (or `from` is already gone).
                    let finished =
                        exists(&to) && (!exists(&from) || link_hex(&from) == link_hex(&to));
                    if finished {
                        for p in [&from, &twin] {
                            if is_symlink(p) {
                                std::fs::remove_file(p).ctx(|| p.display().to_string())?;
                            }
                        }
                        info!(
                            "finished interrupted move {} -> {}",
                            from.display(),
                            to.display()
                        );
                    } else if exists(&from) {
                        info!(
                            "rolled back interrupted move {} -> {}",
                            from.display(),
                            to.display()
                        );
                    }
                }
                Some(Intent::Exchange {
                    a,
                    a_target,
                    b,
                    b_target,
                }) => {
                    for (p, t) in [(a, a_target), (b, b_target)] {
                        let twin = root.join(twin_of(&p));
                        let p = root.join(p);
                        fsutil::install_symlink(&t, &p, RenameMode::Replace, true)
                            .ctx(|| p.display().to_string())?;
                        // The tag's old link in the other layout, if the exchange moved it.
                        if is_symlink(&twin) {
                            std::fs::remove_file(&twin).ctx(|| twin.display().to_string())?;
                        }
                    }
                    info!("finished interrupted exchange");
                }
                Some(Intent::Relink { dir }) => {
                    let repo = dir
                        .strip_prefix(layout::REPOSITORIES)
                        .map(|r| r.trim_start_matches('/'))
                        .unwrap_or("");
                    let p = root.join(&dir);
                    if !repo.is_empty() && p.is_dir() {
                        relink_tree(&p, repo)?;
                        info!("finished interrupted relink of {}", p.display());
                    }
                }
            }
            self.journal
                .done(&record)
                .ctx(|| record.display().to_string())?;
        }

        let scan = layout::scan(&root).ctx(|| root.display().to_string())?;
        let mut ix = Index::from_scan(&scan);
        for (record, dir) in gc {
            match DirKey::from_rel_path(&dir) {
                Some(key) if ix.has_dir(&key) && ix.refs(&key) == Some(0) => {
                    let trashed = self
                        .journal
                        .move_to_trash(&root, &key)
                        .ctx(|| format!("collect {dir}"))?;
                    ix.remove_dir(&key);
                    info!(
                        "finished interrupted collection of {dir} ({})",
                        trashed.display()
                    );
                }
                Some(key) if ix.has_dir(&key) => {
                    info!("rolled back interrupted collection of {dir}: a tag still names it");
                }
                _ => {}
            }
            self.journal
                .done(&record)
                .ctx(|| record.display().to_string())?;
        }
        for t in &scan.temp_files {
            match std::fs::remove_file(t) {
                Ok(()) => info!("removed leftover {}", t.display()),
                Err(e) => warn!("{}: {e}", t.display()),
            }
        }
        let n = self
            .journal
            .empty_trash()
            .ctx(|| self.journal.trash().display().to_string())?;
        if n > 0 {
            info!("emptied {n} entries from the trash");
        }
        Ok(ix)
    }

    fn replay_promote(&self, repo: &str, hex: &str) -> Result<()> {
        let Some(d) = Digest::parse_hex(hex) else {
            return Ok(());
        };
        let legacy = self.root.join(repo).join(hex);
        let content = self.root.join(layout::CONTENT).join(hex);
        if exists(&legacy) || !exists(&content) {
            // The move never happened: nothing to roll back.
            return Ok(());
        }
        let dir = self.root.join(repo);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let new_dir = self.root.join(layout::repo_rel_dir(Layout::Content, repo));
        std::fs::create_dir_all(&new_dir).ctx(|| new_dir.display().to_string())?;
        for entry in rd.flatten() {
            let path = entry.path();
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            if !is_link || std::fs::read_link(&path).ok().as_deref() != Some(Path::new(hex)) {
                continue;
            }
            let new = new_dir.join(entry.file_name());
            fsutil::install_symlink(
                &layout::tag_target(repo, &DirKey::Content(d)),
                &new,
                RenameMode::Replace,
                true,
            )
            .ctx(|| new.display().to_string())?;
            std::fs::remove_file(&path).ctx(|| path.display().to_string())?;
        }
        info!("finished interrupted promotion of {repo}/{hex}");
        Ok(())
    }
}
