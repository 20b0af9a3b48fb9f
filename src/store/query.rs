//! What the store answers about itself: owned values, never its lock.
//!
//! Each query takes the index's read lock for its own duration only and returns a copy
//! (a [`Tag`], a count, a window of names, a path of the store), so no caller outside
//! `store` can hold the lock across another call: a second read lock taken while a writer
//! waits would deadlock (parking_lot's `RwLock` is writer-fair).

use std::path::PathBuf;

use super::Store;
use super::index::{Node, Tag};
use super::layout::{self, Layout};
use super::names::Digest;

/// A name in a directory of `tags/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A repository directory (or a prefix of one).
    Dir,
    /// A tag.
    Tag(Tag),
}

/// A window of a `tags/` directory's listing: its names one after another in one buffer.
/// The shared buffer is what makes it cheap: one `String` per name was most of the daemon's
/// allocations in a listing of every tag.
#[derive(Debug, Default)]
pub struct Window {
    /// The names one after another (whole UTF-8 names).
    pub names: Vec<u8>,
    /// Per entry: where its name ends in `names`, and whether it is a directory.
    pub ends: Vec<(usize, bool)>,
}

impl Window {
    /// The entries in listing order: (is a directory, name).
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (bool, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&(end, _)| end));
        starts
            .zip(&self.ends)
            .map(|(start, &(end, dir))| (dir, &self.names[start..end]))
    }
}

/// A directory of `tags/` as the mount shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoDir {
    /// The store directory behind it (the content layout's when it has one; the store
    /// root for `tags/` itself).
    pub path: PathBuf,
    /// Its number of subdirectories.
    pub subdirs: usize,
}

/// Counts and directories of the store at one instant.
#[derive(Debug, Clone, Default)]
pub struct Census {
    pub tags: usize,
    pub digests: usize,
    /// Every digest directory's path.
    pub dirs: Vec<PathBuf>,
}

impl Store {
    /// The tag `repo:tag`.
    pub fn tag(&self, repo: &str, tag: &str) -> Option<Tag> {
        self.index().tag(repo, tag).map(|s| s.tag())
    }

    /// What `name` is in the directory `tags/<path>`; `None` when either is missing.
    pub fn entry(&self, path: &str, name: &str) -> Option<Entry> {
        let ix = self.index();
        let node = ix.node(path)?;
        if node.subdirs.contains(name) {
            Some(Entry::Dir)
        } else {
            node.tags.get(name).map(|s| Entry::Tag(s.tag()))
        }
    }

    /// The entries `skip..skip + max` of the directory `tags/<path>`, subdirectories first,
    /// then tags, each sorted; `None` if it is missing. One [`Window`]: a listing's reply
    /// copies its names with two allocations, whatever their number.
    pub fn children_window(&self, path: &str, skip: usize, max: usize) -> Option<Window> {
        let ix = self.index();
        let node = ix.node(path)?;
        let mut w = Window::default();
        // A listing's last, empty reply starts past the end: nothing to walk.
        let n = (node.subdirs.len() + node.tags.len())
            .saturating_sub(skip)
            .min(max);
        if n == 0 {
            return Some(w);
        }
        w.ends.reserve_exact(n);
        w.names.reserve(n * 16);
        let dirs = node.subdirs.iter().map(|s| (true, s.as_bytes()));
        let tags = node.tags.keys().map(|t| (false, t.as_bytes()));
        for (dir, s) in dirs.chain(tags).skip(skip).take(n) {
            w.names.extend_from_slice(s);
            w.ends.push((w.names.len(), dir));
        }
        Some(w)
    }

    /// The number of subdirectories of `tags/<path>`; `None` if it is missing.
    pub fn subdir_count(&self, path: &str) -> Option<usize> {
        self.index().node(path).map(|n| n.subdirs.len())
    }

    /// The directory `tags/<path>`; `None` if it is missing.
    pub fn repo_dir(&self, path: &str) -> Option<RepoDir> {
        let ix = self.index();
        let node = ix.node(path)?;
        Some(RepoDir {
            path: self.node_path(path, node),
            subdirs: node.subdirs.len(),
        })
    }

    /// Does digest `d` have a directory in the store?
    pub fn has_digest(&self, d: &Digest) -> bool {
        self.index().dirs_of(d).next().is_some()
    }

    /// Every digest of the store, sorted.
    pub fn digests(&self) -> Vec<Digest> {
        self.index().digests().copied().collect()
    }

    /// The number of digests with a directory in the store.
    pub fn digest_count(&self) -> usize {
        self.index().digest_count()
    }

    /// The number of tags.
    pub fn tag_count(&self) -> usize {
        self.index().tag_count()
    }

    /// Tags, digests and digest directories, read at once.
    pub fn census(&self) -> Census {
        let ix = self.index();
        Census {
            tags: ix.tag_count(),
            digests: ix.digest_count(),
            dirs: ix
                .dir_keys()
                .map(|(k, _)| self.root.join(k.rel_path()))
                .collect(),
        }
    }

    /// The tag `repo:tag` and the store path of its symlink.
    pub fn tag_link(&self, repo: &str, tag: &str) -> Option<(Tag, PathBuf)> {
        let t = self.tag(repo, tag)?;
        let path = self.tag_path(repo, tag, t.layout);
        Some((t, path))
    }

    /// The store path of a tag's symlink.
    pub(super) fn tag_path(&self, repo: &str, tag: &str, layout: Layout) -> PathBuf {
        self.root.join(layout::repo_rel_dir(layout, repo)).join(tag)
    }

    /// The store directory of a `tags/` directory: the content layout's when it has one.
    fn node_path(&self, path: &str, node: &Node) -> PathBuf {
        if path.is_empty() {
            return self.root.clone();
        }
        let layout = if node.content || !node.legacy {
            Layout::Content
        } else {
            Layout::Legacy
        };
        self.root.join(layout::repo_rel_dir(layout, path))
    }
}
