//! The in-memory index: the `tags/` tree, and digest directory -> number of tags naming it.
//!
//! Built once from a [`Scan`] at mount and then kept up to date by the store's own changes,
//! so a reference count is a map lookup, never a directory scan.
//!
//! Invariants: every node's ancestors are nodes; `refs[key]` equals the number of tags
//! whose key is `key`; every tag's key is a digest directory in `refs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map};
use std::sync::Arc;

use log::warn;

use super::layout::{DirKey, Layout, Scan, ScannedTag};
use super::names::{self, Digest};
use super::tag_name::TagName;

/// A tag as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: DirKey,
    pub layout: Layout,
}

/// A tag as a [`Node`] holds it: its directory is shared with every other tag naming it
/// (one `Arc` per digest directory, the one [`Index`] counts references under), so a tag
/// costs its name and 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: Arc<DirKey>,
    pub layout: Layout,
}

impl Slot {
    pub fn tag(&self) -> Tag {
        Tag {
            key: DirKey::clone(&self.key),
            layout: self.layout,
        }
    }
}

/// A directory of `tags/`: a repository path, or a prefix of one.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub subdirs: BTreeSet<String>,
    pub tags: BTreeMap<TagName, Slot>,
    /// The store directories behind this node.
    pub content: bool,
    pub legacy: bool,
}

impl Node {
    pub fn is_empty(&self) -> bool {
        self.subdirs.is_empty() && self.tags.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Index {
    nodes: HashMap<String, Node>,
    /// Digest directory -> its number of tags. The key is the `Arc` the tags share.
    refs: HashMap<Arc<DirKey>, u32>,
    /// digest -> its directories (content and/or legacy ones), for `digests/`: sorted, and
    /// nearly always one (a `Vec` of one costs its 56 bytes; a `BTreeSet` of one, a whole
    /// node of 11).
    digests: BTreeMap<Digest, Vec<DirKey>>,
    /// Tags the scan found naming a directory the store did not have: the watcher keeps
    /// them pending and shows them once their directory comes (`watch`).
    unresolved: Vec<ScannedTag>,
}

impl Index {
    pub fn new() -> Index {
        let mut ix = Index::default();
        ix.nodes.insert(String::new(), Node::default());
        ix
    }

    pub fn from_scan(scan: &Scan) -> Index {
        let mut ix = Index::new();
        for key in &scan.digest_dirs {
            ix.add_dir(key.clone());
        }
        for dir in &scan.repo_dirs {
            ix.ensure_node(&dir.repo, dir.layout);
        }
        // The scan lists each directory's tags together, sharing one `Arc` of its
        // repository: a run is indexed with one lookup of its node, not one per tag of a
        // million (a run cut short only costs another lookup).
        let mut rest = &scan.tags[..];
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .position(|t| !Arc::ptr_eq(&t.repo, &first.repo) || t.layout != first.layout)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(n);
            ix.index_run(run);
            rest = tail;
        }
        ix
    }

    /// [`from_scan`](Self::from_scan) of tags of one repository and layout.
    fn index_run(&mut self, run: &[ScannedTag]) {
        let Some(first) = run.first() else {
            return;
        };
        let (repo, layout) = (&*first.repo, first.layout);
        // The scan found the tags' directory (`scan.repo_dirs`, made a node with its
        // ancestors): no walk up the path unless it did not.
        let has_dir = self.nodes.get(repo).is_some_and(|n| match layout {
            Layout::Content => n.content,
            Layout::Legacy => n.legacy,
        });
        if !has_dir {
            self.ensure_node(repo, layout);
        }
        let Index {
            nodes,
            refs,
            unresolved,
            ..
        } = self;
        let Some(node) = nodes.get_mut(repo) else {
            return;
        };
        for t in run {
            let Some((key, _)) = refs.get_key_value(&t.key) else {
                unresolved.push(t.clone());
                warn!(
                    "tag {}:{} names {}, which is not in the store; ignored",
                    t.repo,
                    t.tag,
                    t.key.rel_path().display()
                );
                continue;
            };
            let key = key.clone();
            if !node.subdirs.is_empty() && node.subdirs.contains(t.tag.as_str()) {
                warn!("tag {}:{} clashes with a directory; ignored", t.repo, t.tag);
                continue;
            }
            let slot = Slot {
                key: key.clone(),
                layout,
            };
            match node.tags.entry(t.tag.clone()) {
                btree_map::Entry::Vacant(v) => {
                    v.insert(slot);
                }
                // The same name in both layouts: the content layout wins.
                btree_map::Entry::Occupied(o)
                    if o.get().layout == Layout::Content || layout == Layout::Legacy =>
                {
                    warn!(
                        "tag {}:{} exists in both layouts; the legacy one is ignored",
                        t.repo, t.tag
                    );
                    continue;
                }
                btree_map::Entry::Occupied(mut o) => {
                    let old = o.insert(slot);
                    if let Some(n) = refs.get_mut(&*old.key) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            if let Some(n) = refs.get_mut(&*key) {
                *n += 1;
            }
        }
    }

    /// Tags of the scan this index was built from whose digest directory was missing.
    pub fn unresolved(&self) -> &[ScannedTag] {
        &self.unresolved
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<&Slot> {
        self.nodes.get(repo)?.tags.get(tag)
    }

    pub fn refs(&self, key: &DirKey) -> Option<u32> {
        self.refs.get(key).copied()
    }

    /// The `Arc` the tags of `key` share, and their number.
    #[cfg(test)]
    pub fn shared_key(&self, key: &DirKey) -> Option<(&Arc<DirKey>, &u32)> {
        self.refs.get_key_value(key)
    }

    pub fn has_dir(&self, key: &DirKey) -> bool {
        self.refs.contains_key(key)
    }

    /// The directories of a digest, content first.
    pub fn dirs_of(&self, digest: &Digest) -> impl Iterator<Item = &DirKey> {
        self.digests.get(digest).into_iter().flatten()
    }

    pub fn digest_count(&self) -> usize {
        self.digests.len()
    }

    pub fn digests(&self) -> impl Iterator<Item = &Digest> {
        self.digests.keys()
    }

    pub fn dir_keys(&self) -> impl Iterator<Item = (&DirKey, u32)> {
        self.refs.iter().map(|(k, v)| (&**k, *v))
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    pub fn tag_count(&self) -> usize {
        self.nodes.values().map(|n| n.tags.len()).sum()
    }

    /// Makes `path` and its ancestors nodes, recording that `layout` has a directory there.
    pub fn ensure_node(&mut self, path: &str, layout: Layout) {
        let mut cur = path.to_string();
        loop {
            let node = self.nodes.entry(cur.clone()).or_default();
            match layout {
                Layout::Content => node.content = true,
                Layout::Legacy => node.legacy = true,
            }
            if cur.is_empty() {
                return;
            }
            let (parent, last) = names::split_last(&cur);
            let (parent, last) = (parent.to_string(), last.to_string());
            self.nodes
                .entry(parent.clone())
                .or_default()
                .subdirs
                .insert(last);
            cur = parent;
        }
    }

    /// Forgets `layout`'s directory at `path`; drops the node when no layout has it.
    /// The node must be empty.
    pub fn remove_node(&mut self, path: &str, layout: Layout) {
        let Some(node) = self.nodes.get_mut(path) else {
            return;
        };
        match layout {
            Layout::Content => node.content = false,
            Layout::Legacy => node.legacy = false,
        }
        if !node.content && !node.legacy && !path.is_empty() {
            self.nodes.remove(path);
            let (parent, last) = names::split_last(path);
            if let Some(p) = self.nodes.get_mut(parent) {
                p.subdirs.remove(last);
            }
        }
    }

    /// Another writer removed `layout`'s directory at `path`: forgets the tags of that
    /// layout under it, its legacy digest directories (with the tags naming them), and the
    /// nodes no layout has any more. Returns the tags removed.
    pub fn remove_subtree(&mut self, path: &str, layout: Layout) -> Vec<(String, String)> {
        let prefix = format!("{path}/");
        let under = |p: &str| path.is_empty() || p == path || p.starts_with(&prefix);
        let mut nodes: Vec<String> = self.nodes.keys().filter(|k| under(k)).cloned().collect();
        let mut removed = Vec::new();
        for n in &nodes {
            let tags: Vec<String> = self.nodes[n]
                .tags
                .iter()
                .filter(|(_, t)| t.layout == layout)
                .map(|(k, _)| k.to_string())
                .collect();
            for t in tags {
                self.remove_tag(n, &t);
                removed.push((n.clone(), t));
            }
        }
        if layout == Layout::Legacy {
            let dirs: Vec<DirKey> = self
                .refs
                .keys()
                .filter(|k| matches!(&***k, DirKey::Legacy(r, _) if under(r)))
                .map(|k| DirKey::clone(k))
                .collect();
            for key in dirs {
                removed.extend(self.remove_dir_and_tags(&key));
            }
        }
        // Deepest first, so parents are empty when their turn comes.
        nodes.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for n in nodes {
            let empty_of_layout = self
                .nodes
                .get(&n)
                .is_some_and(|node| node.tags.values().all(|t| t.layout != layout));
            if empty_of_layout {
                self.remove_node(&n, layout);
            }
        }
        removed
    }

    /// Forgets a digest directory another writer removed, and the tags that named it.
    pub fn remove_dir_and_tags(&mut self, key: &DirKey) -> Vec<(String, String)> {
        let mut removed = Vec::new();
        if self.refs(key).unwrap_or(0) > 0 {
            let named: Vec<(String, String)> = self
                .nodes
                .iter()
                .flat_map(|(r, n)| {
                    n.tags
                        .iter()
                        .filter(|(_, t)| *t.key == *key)
                        .map(move |(t, _)| (r.clone(), t.to_string()))
                })
                .collect();
            for (r, t) in named {
                self.remove_tag(&r, &t);
                removed.push((r, t));
            }
        }
        self.remove_dir(key);
        removed
    }

    /// Moves the subtree at `from` to `to` (which must not exist), re-keying legacy
    /// digest directories that move with their repository.
    pub fn move_subtree(&mut self, from: &str, to: &str) {
        let moved: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| *k == from || k.starts_with(&format!("{from}/")))
            .cloned()
            .collect();
        let rename = |p: &str| format!("{to}{}", &p[from.len()..]);
        // Re-key legacy directories of moved repositories.
        let keys: Vec<DirKey> = self
            .refs
            .keys()
            .filter(|k| matches!(&***k, DirKey::Legacy(r, _) if moved.contains(r)))
            .map(|k| DirKey::clone(k))
            .collect();
        for key in keys {
            if let DirKey::Legacy(r, d) = &key {
                let new = DirKey::Legacy(rename(r), *d);
                let n = self.refs.remove(&key).unwrap_or(0);
                self.refs.insert(Arc::new(new.clone()), n);
                if let Some(set) = self.digests.get_mut(d) {
                    set_remove(set, &key);
                    set_insert(set, new);
                }
            }
        }
        let (fparent, flast) = names::split_last(from);
        if let Some(p) = self.nodes.get_mut(fparent) {
            p.subdirs.remove(flast);
        }
        let mut layouts = (false, false);
        for old in moved {
            if let Some(mut node) = self.nodes.remove(&old) {
                for tag in node.tags.values_mut() {
                    if let DirKey::Legacy(r, d) = &*tag.key {
                        tag.key = self.shared(DirKey::Legacy(rename(r), *d));
                    }
                }
                if old == from {
                    layouts = (node.content, node.legacy);
                }
                self.nodes.insert(rename(&old), node);
            }
        }
        // Link the new top into its parent chain.
        let (tparent, _) = names::split_last(to);
        if layouts.0 {
            self.ensure_node(tparent, Layout::Content);
            self.ensure_node(to, Layout::Content);
        }
        if layouts.1 {
            self.ensure_node(tparent, Layout::Legacy);
            self.ensure_node(to, Layout::Legacy);
        }
    }

    pub fn add_dir(&mut self, key: DirKey) {
        set_insert(self.digests.entry(key.digest()).or_default(), key.clone());
        if !self.refs.contains_key(&key) {
            self.refs.insert(Arc::new(key), 0);
        }
    }

    /// The `Arc` the index keeps `key` under (a new one if it has none).
    fn shared(&self, key: DirKey) -> Arc<DirKey> {
        match self.refs.get_key_value(&key) {
            Some((k, _)) => k.clone(),
            None => Arc::new(key),
        }
    }

    pub fn remove_dir(&mut self, key: &DirKey) {
        self.refs.remove(key);
        let d = key.digest();
        if let Some(set) = self.digests.get_mut(&d) {
            set_remove(set, key);
            if set.is_empty() {
                self.digests.remove(&d);
            }
        }
    }

    /// Adds a tag (its node is created as needed) and counts its reference.
    pub fn add_tag(&mut self, repo: &str, tag: &str, key: DirKey, layout: Layout) {
        self.ensure_node(repo, layout);
        self.insert_tag(repo, TagName::new(tag), key, layout);
    }

    /// [`add_tag`](Self::add_tag) into a node that has `layout`'s directory.
    fn insert_tag(&mut self, repo: &str, tag: TagName, key: DirKey, layout: Layout) {
        let key = self.shared(key);
        *self.refs.entry(key.clone()).or_insert(0) += 1;
        if let Some(node) = self.nodes.get_mut(repo) {
            node.tags.insert(tag, Slot { key, layout });
        }
    }

    /// Removes a tag and returns it with the number of references its directory has left.
    pub fn remove_tag(&mut self, repo: &str, tag: &str) -> Option<(Tag, u32)> {
        let t = self.nodes.get_mut(repo)?.tags.remove(tag)?;
        let n = self.refs.get_mut(&*t.key).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        Some((t.tag(), n.unwrap_or(0)))
    }
}

/// Adds `key` to the sorted set `set`.
fn set_insert(set: &mut Vec<DirKey>, key: DirKey) {
    if let Err(i) = set.binary_search(&key) {
        set.insert(i, key);
    }
}

/// Removes `key` from the sorted set `set`.
fn set_remove(set: &mut Vec<DirKey>, key: &DirKey) {
    if let Ok(i) = set.binary_search(key) {
        set.remove(i);
    }
}
