//! The same tag name in both layouts of a repository (`repositories/R/T` and legacy `R/T`).
//! The index keeps one of them (the content layout's, see `index.rs`); the other is
//! *shadowed*: not served, not counted. hypeman's `deleteTag` removes the name from both
//! layouts, so `rm` and `mv` of the name do too: a twin left behind would come back at the
//! next mount (or as soon as the watcher unshadows it), naming another image.
//!
//! The twin goes first, before the tag the mount shows: a crash in between leaves the name as
//! the mount and hypeman saw it (neither resolves the shadowed link). Its digest directory
//! loses that reference as for any tag: collected if nothing else names it and it is
//! collectable, through the usual GC steps.

use std::path::PathBuf;

use super::Store;
use super::error::{IoContext, Result};
use super::gc::LastRef;
use super::layout::{self, DirKey, Layout};
use super::sys;

/// A shadowed twin: its link, and the digest directory it names (if the store has it).
pub(super) struct Twin {
    path: PathBuf,
    key: Option<DirKey>,
}

/// A collection a twin's removal may have started: finished after the tag change.
pub(super) type TwinGc = Option<(Option<LastRef>, DirKey)>;

fn other(l: Layout) -> Layout {
    match l {
        Layout::Content => Layout::Legacy,
        Layout::Legacy => Layout::Content,
    }
}

impl Store {
    /// The shadowed twin of `repo:tag`, which the index has in layout `shown`.
    pub(super) fn shadowed_twin(&self, repo: &str, tag: &str, shown: Layout) -> Option<Twin> {
        let lay = other(shown);
        let path = self.tag_path(repo, tag, lay);
        let meta = sys::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return None;
        }
        let key = sys::read_link(&path)
            .ok()
            .and_then(|t| layout::parse_tag_target(lay, repo, &t))
            .filter(|k| self.index().has_dir(k));
        Some(Twin { path, key })
    }

    /// Removes a shadowed twin, after GC step 1 for its directory when the twin was its only
    /// reference (and the directory is not one of `handled`, which the caller collects).
    /// On error nothing is removed. The caller finishes the returned collection with
    /// [`Store::finish_twin_gc`] after its own change, or drops it on failure.
    pub(super) fn remove_twin(&self, twin: Option<Twin>, handled: &[&DirKey]) -> Result<TwinGc> {
        let Some(twin) = twin else {
            return Ok(None);
        };
        let gc = match twin.key {
            Some(k) if !handled.contains(&&k) && self.index().refs(&k) == Some(0) => {
                Some((self.gc_intent_if_last(&k)?, k))
            }
            _ => None,
        };
        match sys::remove_file(&twin.path) {
            Ok(()) => {
                log::info!(
                    "{}: removed with the tag of the same name in the other layout, which shadowed it",
                    twin.path.display()
                );
                if let Some(p) = twin.path.parent() {
                    self.fsync_dir(p);
                }
                Ok(gc)
            }
            // Gone meanwhile (another writer): nothing to remove.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(gc),
            Err(e) => {
                self.drop_twin_gc(gc);
                Err(e).ctx(|| format!("{} (the same tag in the other layout)", twin.path.display()))
            }
        }
    }

    pub(super) fn drop_twin_gc(&self, gc: TwinGc) {
        if let Some((i, _)) = gc {
            self.drop_intent(i);
        }
    }

    pub(super) fn finish_twin_gc(&self, gc: TwinGc) -> Option<super::gc::Collected> {
        let (i, k) = gc?;
        self.finish_gc(i, &k)
    }
}
