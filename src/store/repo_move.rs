//! The on-disk half of `mv tags/A tags/B` for a repository directory ([`Store::rename_dir`]):
//! each layout's store directory (`repositories/A`, legacy `A`) moves by one rename, all or
//! nothing.
//!
//! - Everything that can be checked is checked before anything moves: each destination is
//!   free (a stray file `STORE/B` answers `EEXIST` at once), each parent is made.
//! - If a later step fails (`ENOSPC`, `EPERM`, ...), the halves already moved are moved back
//!   and the parent directories made for the move are removed: the store is as before.
//! - A repository with both halves writes a `move-repo` intent first. A crash between the
//!   two halves is finished by the next mount (or `imagefs fsck --repair`, [`replay`]); if
//!   finishing is not possible there (the destination taken meanwhile), it is rolled back.
//!   A one-half move that changes depth writes a `relink` intent (the tags' text).

use std::path::{Path, PathBuf};

use log::{error, warn};

use super::Store;
use super::error::{IoContext, Result, StoreError};
use super::fsutil::{self, RenameMode};
use super::journal::Intent;
use super::layout::{self, Layout, rel};
use super::names;
use super::repo_dirs::relink_tree;
use super::sys;

fn exists(p: &Path) -> bool {
    sys::symlink_metadata(p).is_ok()
}

/// The directories `mkdir -p dir` would make, deepest first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if exists(d) {
            break;
        }
        out.push(d.to_path_buf());
        cur = d.parent();
    }
    out
}

/// Moves one half (`lay`) of repository `from` to `to` and, in the content layout, rewrites
/// its tags' text for the new depth (idempotent).
fn move_half(root: &Path, lay: Layout, from: &str, to: &str) -> Result<()> {
    let a = root.join(layout::repo_rel_dir(lay, from));
    let b = root.join(layout::repo_rel_dir(lay, to));
    fsutil::rename(&a, &b, RenameMode::NoReplace)
        .ctx(|| format!("rename {} -> {}", a.display(), b.display()))?;
    if lay == Layout::Content && names::depth(from) != names::depth(to) {
        relink_tree(&b, to)?;
    }
    Ok(())
}

impl Store {
    /// The first check of a move of repository `from` (store directories `halves`) to `to`:
    /// nothing is in the way. `replaced`: the layouts in which `to` is an empty repository
    /// directory that the move replaces (the caller removes it once every check passed).
    pub(super) fn check_move_dest(
        &self,
        from: &str,
        to: &str,
        halves: &[Layout],
        replaced: &[Layout],
    ) -> Result<()> {
        for &lay in halves {
            let b = self.root.join(layout::repo_rel_dir(lay, to));
            if exists(&b) && !replaced.contains(&lay) {
                warn!(
                    "mv tags/{from} tags/{to}: {} is in the way (not a repository directory of the mount)",
                    b.display()
                );
                return Err(StoreError::Exists(to.to_string()));
            }
        }
        Ok(())
    }

    /// Once every check passed and `to` is free: makes the parents, records the intent, moves
    /// each half; undoes it all if a step fails (the module doc).
    pub(super) fn move_repo_halves(&self, from: &str, to: &str, halves: &[Layout]) -> Result<()> {
        let (to_parent, _) = names::split_last(to);
        let mut made: Vec<(Layout, PathBuf)> = Vec::new();
        for &lay in halves {
            let parent = self.root.join(layout::repo_rel_dir(lay, to_parent));
            made.extend(missing_dirs(&parent).into_iter().map(|p| (lay, p)));
            let r = match lay {
                Layout::Content => self.ensure_store_dir(lay, to_parent),
                Layout::Legacy => sys::create_dir_all(&parent).ctx(|| parent.display().to_string()),
            };
            if let Err(e) = r {
                self.remove_made(&made);
                return Err(e);
            }
        }
        let depth_changes = names::depth(from) != names::depth(to);
        let intent = if halves.len() > 1 {
            Some(Intent::MoveRepo {
                from: from.to_string(),
                to: to.to_string(),
            })
        } else if halves.contains(&Layout::Content) && depth_changes {
            Some(Intent::Relink {
                dir: rel(
                    &self.root.join(layout::repo_rel_dir(Layout::Content, to)),
                    &self.root,
                ),
                from: Some(rel(
                    &self.root.join(layout::repo_rel_dir(Layout::Content, from)),
                    &self.root,
                )),
            })
        } else {
            None
        };
        let rec = match intent.map(|i| self.journal.record(&i)) {
            None => None,
            Some(Ok(rec)) => Some(rec),
            Some(Err(e)) => {
                self.remove_made(&made);
                return Err(e).ctx(|| "journal".to_string());
            }
        };
        let mut moved: Vec<Layout> = Vec::new();
        for &lay in halves {
            if let Err(e) = move_half(&self.root, lay, from, to) {
                // A content half may have moved and failed in its relink: back it goes too.
                let b = self.root.join(layout::repo_rel_dir(lay, to));
                if exists(&b) {
                    moved.push(lay);
                }
                // The parents made for the move go in any case (each only if empty): found
                // by the fault tests (failures persisting), an empty legacy parent stayed,
                // unknown to the index, when the undo failed.
                let undone = self.move_back(from, to, &moved);
                self.remove_made(&made);
                if undone {
                    if let Some(rec) = &rec {
                        let _ = self.journal.done(rec);
                    }
                } else {
                    error!(
                        "mv tags/{from} tags/{to}: could not undo the part already moved; the next \
                         mount (or `imagefs fsck --repair`) finishes or rolls back the move"
                    );
                }
                return Err(e);
            }
            moved.push(lay);
        }
        for lay in halves {
            for r in [from, to] {
                if let Some(p) = self.root.join(layout::repo_rel_dir(*lay, r)).parent() {
                    self.fsync_dir(p);
                }
            }
        }
        if let Some(rec) = rec {
            let _ = self.journal.done(&rec);
        }
        Ok(())
    }

    /// Moves the `moved` halves back from `to` to `from`. Returns whether all went back.
    fn move_back(&self, from: &str, to: &str, moved: &[Layout]) -> bool {
        let mut ok = true;
        for &lay in moved.iter().rev() {
            match move_half(&self.root, lay, to, from) {
                Ok(()) => {}
                Err(e) => {
                    error!("mv tags/{from} tags/{to}: undo: {e}");
                    ok = false;
                }
            }
            // The text of the tags of a content half, whichever depth they were left at.
            if lay == Layout::Content {
                let a = self.root.join(layout::repo_rel_dir(lay, from));
                if sys::is_dir(&a)
                    && let Err(e) = relink_tree(&a, from)
                {
                    error!("mv tags/{from} tags/{to}: undo: {e}");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Removes the parent directories a failed move made (deepest first; each only if empty),
    /// and forgets those of the content layout in the index.
    fn remove_made(&self, made: &[(Layout, PathBuf)]) {
        let content_root = self.root.join(layout::REPOSITORIES);
        for (lay, dir) in made {
            if sys::remove_dir(dir).is_err() {
                continue;
            }
            if *lay == Layout::Content
                && let Ok(repo) = dir.strip_prefix(&content_root)
                && let Some(repo) = repo.to_str()
            {
                self.index.write().remove_node(repo, Layout::Content);
            }
        }
    }
}

/// Replays a `move-repo` intent: a crash left the halves of repository `from` (both layouts)
/// moved to `to`, or some of them. Finishes the move if every half can get there, else moves
/// back what had moved. Returns what it did.
pub(super) fn replay(root: &Path, from: &str, to: &str) -> Result<String> {
    let at = |lay, repo: &str| root.join(layout::repo_rel_dir(lay, repo));
    let halves = [Layout::Content, Layout::Legacy];
    // Halves still to move (their destination may be taken: then the move goes back).
    let left: Vec<Layout> = halves
        .into_iter()
        .filter(|&l| exists(&at(l, from)))
        .collect();
    let gone: Vec<Layout> = halves
        .into_iter()
        .filter(|&l| !exists(&at(l, from)) && exists(&at(l, to)))
        .collect();
    if gone.is_empty() {
        // Found by the fault tests (failures persisting): a content half moved back after
        // its relink had begun, its relink back failing too, kept the other depth's text.
        let dir = at(Layout::Content, from);
        if sys::is_dir(&dir) {
            relink_tree(&dir, from)?;
        }
        return Ok(format!(
            "interrupted move of repository {from} to {to}: nothing had moved"
        ));
    }
    let mut finished = true;
    for &lay in &left {
        let parent = at(lay, names::split_last(to).0);
        let r = sys::create_dir_all(&parent)
            .ctx(|| parent.display().to_string())
            .and_then(|()| move_half(root, lay, from, to));
        if let Err(e) = r {
            warn!(
                "finishing the interrupted move of repository {from} to {to}: {e}; rolling it back"
            );
            finished = false;
            break;
        }
    }
    // The tags' text of the content half, where it ended (idempotent).
    let (dir, repo) = if finished {
        (at(Layout::Content, to), to)
    } else {
        (at(Layout::Content, from), from)
    };
    if !finished {
        for &lay in &halves {
            if !exists(&at(lay, from)) && exists(&at(lay, to)) {
                move_half(root, lay, to, from)?;
            }
        }
    }
    if sys::is_dir(&dir) {
        relink_tree(&dir, repo)?;
    }
    Ok(if finished {
        format!("finished interrupted move of repository {from} to {to}")
    } else {
        format!("rolled back interrupted move of repository {from} to {to}")
    })
}
