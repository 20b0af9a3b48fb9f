//! The inode table: which node of the mounted tree each inode number stands for, and how
//! many lookups the kernel holds on it. Fixed nodes have fixed numbers; the rest are
//! numbered on first lookup and forgotten when the kernel forgets them.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};
use std::path::PathBuf;

use hashbrown::HashTable;

use crate::store::{Digest, DirKey};

pub const ROOT: u64 = 1;
pub const TAGS: u64 = 2;
pub const DIGESTS: u64 = 3;
pub const PRIVATE: u64 = 4;
pub const METRICS: u64 = 5;
/// The root of the image-tree connection (see `fuse::Connection`), which the kernel calls
/// 1 there; its node is [`NodeKey::TreeConnectionRoot`].
pub const TREE_CONNECTION_ROOT: u64 = 6;
const FIRST_DYNAMIC: u64 = 16;
/// Image inodes get numbers that stay the same across forgets, so hard links keep sharing
/// one `st_ino` however long a walk takes: `(slot + 1) << NID_BITS | nid`, with one slot per
/// image for the life of the mount. Other nodes are numbered from 16 up, far below.
const NID_BITS: u32 = 44;

/// The fixed number of inode `nid` of the image in `slot`, if both fit (see [`NID_BITS`]).
pub fn image_ino(slot: u64, nid: u64) -> Option<u64> {
    if nid >= 1 << NID_BITS || slot + 1 >= 1 << (64 - NID_BITS) {
        return None;
    }
    Some(((slot + 1) << NID_BITS) | nid)
}

/// The other way: the (slot, nid) an image inode's fixed number stands for. Every number
/// at or above `1 << NID_BITS` is one (other nodes are numbered from 16 up), but a number
/// the kernel does not hold may name a slot no image was given, or no open image's.
pub fn split_image_ino(ino: u64) -> Option<(u64, u64)> {
    let slot = (ino >> NID_BITS).checked_sub(1)?;
    Some((slot, ino & ((1 << NID_BITS) - 1)))
}

/// One digest directory as the mount serves it: `digests/<hex>` or `digests/<hex>@<repo>`
/// (see `store::images`). Nodes under it, the kernel's holds on them and collected
/// directories kept for their users go by it, so a tag serves the bytes of the directory it
/// names, and collecting one legacy directory of a digest never yanks another's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageId {
    pub digest: Digest,
    /// Whose directory: 0 the content layout's, `n` the legacy one of the `n`-th repository
    /// the table met (stable for the mount's life; see [`Inodes::image_of`]).
    owner: u32,
}

impl std::fmt::Display for ImageId {
    /// The digest: enough for log lines, which name the directory where it matters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.digest.fmt(f)
    }
}

/// A node of the mounted tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    /// A directory of `tags/`; "" is `tags/` itself.
    TagsDir(String),
    Tag(String, String),
    Digests,
    Digest(ImageId),
    DigestFile(ImageId, OsString),
    /// An inode (by nid) of a digest's image, under `digests/<hex>/rootfs/`.
    Rootfs(ImageId, u64),
    Private,
    Metrics,
    /// The root of the image-tree connection: one entry per ready digest, its image's root.
    TreeConnectionRoot,
    /// A node that was replaced or removed while the kernel still held it.
    Gone(u64),
}

#[derive(Debug)]
struct Entry {
    key: NodeKey,
    lookups: u64,
}

impl NodeKey {
    /// The image a node belongs to, for nodes under `digests/<entry>/`.
    pub fn image(&self) -> Option<ImageId> {
        match self {
            NodeKey::Digest(d) | NodeKey::DigestFile(d, _) | NodeKey::Rootfs(d, _) => Some(*d),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Inodes {
    /// Inode numbers by their key's hash. Each key is stored once, in `by_ino`: a listing
    /// of a million tags through READDIRPLUS makes a million entries. Invariant: the
    /// entries of `by_ino` whose key is not `Gone` are here, under their key's hash.
    by_key: HashTable<u64>,
    hasher: RandomState,
    by_ino: HashMap<u64, Entry>,
    next: u64,
    /// image -> how many inodes under its `digests/` entry the kernel holds.
    held: HashMap<ImageId, u32>,
    /// image -> how many of those are in its image tree (`rootfs/` and below).
    held_tree: HashMap<ImageId, u32>,
    /// Collected directories still in use: where they wait in the trash.
    pub zombies: HashMap<ImageId, PathBuf>,
    /// Image slots for stable inode numbers (never reused within a mount).
    slots: HashMap<ImageId, u64>,
    /// The legacy repositories met, owner `n` at `n - 1` ([`ImageId`]).
    owners: Vec<String>,
    owner_of: HashMap<String, u32>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_key: HashTable::new(),
            hasher: RandomState::new(),
            by_ino: HashMap::new(),
            next: FIRST_DYNAMIC,
            held: HashMap::new(),
            held_tree: HashMap::new(),
            zombies: HashMap::new(),
            slots: HashMap::new(),
            owners: Vec::new(),
            owner_of: HashMap::new(),
        };
        for (ino, key) in [
            (ROOT, NodeKey::Root),
            (TAGS, NodeKey::TagsDir(String::new())),
            (DIGESTS, NodeKey::Digests),
            (PRIVATE, NodeKey::Private),
            (METRICS, NodeKey::Metrics),
            (TREE_CONNECTION_ROOT, NodeKey::TreeConnectionRoot),
        ] {
            t.by_ino.insert(ino, Entry { key, lookups: 0 });
            t.index(ino);
        }
        t
    }
}

/// One fewer held inode of `d`.
fn release(counts: &mut HashMap<ImageId, u32>, d: &ImageId) {
    if let Some(n) = counts.get_mut(d) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(d);
        }
    }
}

/// The hash `key` is filed under. A tag's is that of its two names, so that a listing
/// finds a tag's inode from borrowed names ([`Inodes::tag_readdir_ino`]).
fn key_hash(hasher: &RandomState, key: &NodeKey) -> u64 {
    match key {
        NodeKey::Tag(r, t) => tag_hash(hasher, r, t),
        k => hasher.hash_one(k),
    }
}

fn tag_hash(hasher: &RandomState, repo: &str, tag: &str) -> u64 {
    hasher.hash_one((TAG_HASH_MARK, repo, tag))
}

/// The hashing of the tags of one repository, its part done ([`Inodes::tag_hashes`]).
pub struct TagHashes {
    /// The hasher fed with what [`tag_hash`] hashes before the tag: a tuple hashes its
    /// fields one after another, so going on from a copy of it gives the same hash.
    prefix: DefaultHasher,
}

impl TagHashes {
    /// The hash of a tag named `tag` (UTF-8): hashed as `str` hashes itself, its bytes
    /// and 0xff (`Hasher::write_str`, which SipHash does not override).
    fn hash(&self, tag: &[u8]) -> u64 {
        let mut h = self.prefix.clone();
        h.write(tag);
        h.write_u8(0xff);
        h.finish()
    }
}

/// Sets tags' hashes apart from the other keys' (a collision would only cost a compare).
const TAG_HASH_MARK: u8 = 0x7a;

/// The number a READDIR entry shows for a node the kernel does not hold: never a lookup
/// result (those are far below), and the same for the same node for the mount's life.
fn stand_in(hash: u64) -> u64 {
    hash | (1 << 63)
}

impl Inodes {
    /// Files inode `ino` (in `by_ino`, not yet in `by_key`) under its key.
    fn index(&mut self, ino: u64) {
        let Some(e) = self.by_ino.get(&ino) else {
            return;
        };
        let (by_ino, hasher) = (&self.by_ino, &self.hasher);
        let rehash = |i: &u64| by_ino.get(i).map_or(0, |e| key_hash(hasher, &e.key));
        self.by_key
            .insert_unique(key_hash(hasher, &e.key), ino, rehash);
    }

    /// Takes inode `ino` out of `by_key` (its entry in `by_ino` still has the key it was
    /// filed under).
    fn unindex_ino(&mut self, ino: u64) {
        let Some(e) = self.by_ino.get(&ino) else {
            return;
        };
        if let Ok(found) = self
            .by_key
            .find_entry(key_hash(&self.hasher, &e.key), |&i| i == ino)
        {
            found.remove();
        }
    }

    /// Takes the inode of `key` out of `by_key`; returns it.
    fn unindex(&mut self, key: &NodeKey) -> Option<u64> {
        let by_ino = &self.by_ino;
        let found = self
            .by_key
            .find_entry(key_hash(&self.hasher, key), |i| {
                by_ino.get(i).is_some_and(|e| e.key == *key)
            })
            .ok()?;
        Some(found.remove().0)
    }

    /// The image of the digest directory `key`.
    pub fn image_of(&mut self, key: &DirKey) -> ImageId {
        let owner = match key {
            DirKey::Content(_) => 0,
            DirKey::Legacy(repo, _) => match self.owner_of.get(repo) {
                Some(&n) => n,
                None => {
                    self.owners.push(repo.clone());
                    let n = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
                    self.owner_of.insert(repo.clone(), n);
                    n
                }
            },
        };
        ImageId {
            digest: key.digest(),
            owner,
        }
    }

    /// The digest directory of `id`.
    pub fn dir_of(&self, id: &ImageId) -> Option<DirKey> {
        match id.owner {
            0 => Some(DirKey::Content(id.digest)),
            n => {
                let repo = self.owners.get(usize::try_from(n - 1).ok()?)?;
                Some(DirKey::Legacy(repo.clone(), id.digest))
            }
        }
    }

    /// The inodes of tags the kernel holds: (repository, tag, inode).
    pub fn held_tags(&self) -> Vec<(String, String, u64)> {
        self.by_ino
            .iter()
            .filter_map(|(&ino, e)| match &e.key {
                NodeKey::Tag(r, t) => Some((r.clone(), t.clone(), ino)),
                _ => None,
            })
            .collect()
    }

    pub fn key(&self, ino: u64) -> Option<&NodeKey> {
        self.by_ino.get(&ino).map(|e| &e.key)
    }

    pub fn ino_of(&self, key: &NodeKey) -> Option<u64> {
        self.ino_hashed(key, key_hash(&self.hasher, key))
    }

    /// [`ino_of`](Self::ino_of) with the key's hash given.
    fn ino_hashed(&self, key: &NodeKey, hash: u64) -> Option<u64> {
        let by_ino = &self.by_ino;
        self.by_key
            .find(hash, |i| by_ino.get(i).is_some_and(|e| e.key == *key))
            .copied()
    }

    /// The inode for `key`, counting one kernel lookup on it.
    pub fn lookup(&mut self, key: NodeKey) -> u64 {
        if let Some(ino) = self.ino_of(&key) {
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.lookups += 1;
            }
            return ino;
        }
        let ino = self.stable_ino(&key).unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        if let Some(d) = key.image() {
            *self.held.entry(d).or_default() += 1;
        }
        if let NodeKey::Rootfs(d, _) = key {
            *self.held_tree.entry(d).or_default() += 1;
        }
        self.by_ino.insert(ino, Entry { key, lookups: 1 });
        self.index(ino);
        ino
    }

    /// The number of entries: the inodes the kernel holds, and the fixed ones.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// The number a READDIR entry shows for `key`: its inode's if the kernel holds one,
    /// else an image inode's fixed number, else a [`stand_in`].
    pub fn readdir_ino(&mut self, key: &NodeKey) -> u64 {
        let hash = key_hash(&self.hasher, key);
        if let Some(ino) = self.ino_hashed(key, hash) {
            return ino;
        }
        self.stable_ino(key).unwrap_or(stand_in(hash))
    }

    /// [`readdir_ino`](Self::readdir_ino) of the tag `repo:tag`, from borrowed names (a
    /// listing of a million tags builds no key).
    #[cfg(test)]
    pub fn tag_readdir_ino(&self, repo: &str, tag: &str) -> u64 {
        self.tag_ino_hashed(&self.tag_hashes(repo), repo, tag.as_bytes())
    }

    /// For [`tag_ino_hashed`](Self::tag_ino_hashed): the hashing of `repo`'s tags, the
    /// repository's part done once for a whole listing.
    pub fn tag_hashes(&self, repo: &str) -> TagHashes {
        let mut prefix = self.hasher.build_hasher();
        (TAG_HASH_MARK, repo).hash(&mut prefix);
        TagHashes { prefix }
    }

    /// [`tag_readdir_ino`](Self::tag_readdir_ino) with `hashes` from
    /// [`tag_hashes`](Self::tag_hashes)`(repo)`.
    pub fn tag_ino_hashed(&self, hashes: &TagHashes, repo: &str, tag: &[u8]) -> u64 {
        let hash = hashes.hash(tag);
        let by_ino = &self.by_ino;
        self.by_key
            .find(hash, |i| {
                by_ino.get(i).is_some_and(
                    |e| matches!(&e.key, NodeKey::Tag(r, t) if r == repo && t.as_bytes() == tag),
                )
            })
            .map_or(stand_in(hash), |&i| i)
    }

    /// The fixed number of an image inode, if it has one.
    fn stable_ino(&mut self, key: &NodeKey) -> Option<u64> {
        let NodeKey::Rootfs(d, nid) = key else {
            return None;
        };
        if *nid >= 1 << NID_BITS {
            return None;
        }
        let n = self.slots.len() as u64;
        let slot = *self.slots.entry(*d).or_insert(n);
        image_ino(slot, *nid)
    }

    /// The slot of image `d`, if one of its inodes was numbered.
    pub fn slot_of(&self, d: &ImageId) -> Option<u64> {
        self.slots.get(d).copied()
    }

    /// The kernel dropped `n` lookups. Returns the key when the inode is gone for good.
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<NodeKey> {
        if ino < FIRST_DYNAMIC {
            return None;
        }
        let e = self.by_ino.get_mut(&ino)?;
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups > 0 {
            return None;
        }
        self.unindex_ino(ino);
        let e = self.by_ino.remove(&ino)?;
        // Maps keep their capacity: once the kernel let go of most of a big walk's
        // inodes, give the room back (amortized O(1)).
        if self.by_ino.capacity() > 4096 && self.by_ino.len() * 4 < self.by_ino.capacity() {
            self.by_ino.shrink_to(self.by_ino.len() * 2);
            let (by_ino, hasher) = (&self.by_ino, &self.hasher);
            let rehash = |i: &u64| by_ino.get(i).map_or(0, |e| key_hash(hasher, &e.key));
            let keep = self.by_key.len() * 2;
            self.by_key.shrink_to(keep, rehash);
        }
        if let Some(d) = e.key.image() {
            release(&mut self.held, &d);
        }
        if let NodeKey::Rootfs(d, _) = e.key {
            release(&mut self.held_tree, &d);
        }
        Some(e.key)
    }

    /// Does the kernel hold any inode of image `d` (under its `digests/` entry)?
    pub fn holds(&self, d: &ImageId) -> bool {
        self.held.contains_key(d)
    }

    /// Does the kernel hold any inode of an image tree of digest `d` (through either
    /// connection, of any of its directories)?
    pub fn holds_tree(&self, d: &Digest) -> bool {
        self.held_tree.keys().any(|i| i.digest == *d)
    }

    /// The image nids of `image` the kernel holds an inode of, with their numbers (a walk of
    /// the whole table: for the occasional sweeps of `kept_trees.rs`, not for requests).
    pub fn held_tree_nids(&self, image: &ImageId) -> HashMap<u64, u64> {
        if !self.held_tree.contains_key(image) {
            return HashMap::new();
        }
        self.by_ino
            .iter()
            .filter_map(|(ino, e)| match &e.key {
                NodeKey::Rootfs(i, nid) if i == image => Some((*nid, *ino)),
                _ => None,
            })
            .collect()
    }

    /// The node `key` no longer exists: its inode (if the kernel holds one) becomes `Gone`.
    pub fn detach(&mut self, key: &NodeKey) {
        if let Some(ino) = self.unindex(key)
            && let Some(e) = self.by_ino.get_mut(&ino)
        {
            e.key = NodeKey::Gone(ino);
        }
    }

    /// The node at `from` now lives at `to` (a rename): its inode follows it, and whatever
    /// was at `to` is detached.
    pub fn rename(&mut self, from: &NodeKey, to: NodeKey) {
        self.detach(&to);
        if let Some(ino) = self.unindex(from) {
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.key = to;
            }
            self.index(ino);
        }
    }

    /// Swaps the nodes at `a` and `b` (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a: &NodeKey, b: &NodeKey) {
        let ia = self.unindex(a);
        let ib = self.unindex(b);
        if let Some(ia) = ia {
            if let Some(e) = self.by_ino.get_mut(&ia) {
                e.key = b.clone();
            }
            self.index(ia);
        }
        if let Some(ib) = ib {
            if let Some(e) = self.by_ino.get_mut(&ib) {
                e.key = a.clone();
            }
            self.index(ib);
        }
    }

    /// A repository directory moved: every node under `from` follows it to `to`.
    pub fn rename_subtree(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved = |p: &str| -> Option<String> {
            if p == from {
                Some(to.to_string())
            } else {
                p.strip_prefix(&prefix).map(|rest| format!("{to}/{rest}"))
            }
        };
        let changes: Vec<(u64, NodeKey)> = self
            .by_ino
            .iter()
            .filter_map(|(&ino, e)| match &e.key {
                NodeKey::TagsDir(p) => moved(p).map(|n| (ino, NodeKey::TagsDir(n))),
                NodeKey::Tag(r, t) => moved(r).map(|n| (ino, NodeKey::Tag(n, t.clone()))),
                _ => None,
            })
            .collect();
        for (ino, _) in &changes {
            self.unindex_ino(*ino);
        }
        for (ino, new) in changes {
            self.detach(&new);
            if let Some(e) = self.by_ino.get_mut(&ino) {
                e.key = new;
            }
            self.index(ino);
        }
        // Legacy digest directories move with their repository: their images follow.
        for (n, repo) in self.owners.iter_mut().enumerate() {
            if let Some(new) = moved(repo) {
                self.owner_of.remove(repo.as_str());
                *repo = new;
                self.owner_of
                    .insert(repo.clone(), u32::try_from(n + 1).unwrap_or(u32::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(r: &str, t: &str) -> NodeKey {
        NodeKey::Tag(r.into(), t.into())
    }

    #[test]
    fn lookups_and_forgets_balance() {
        let mut t = Inodes::default();
        let a = t.lookup(tag("r", "a"));
        assert_eq!(t.lookup(tag("r", "a")), a);
        assert_eq!(t.forget(a, 1), None);
        assert_eq!(t.forget(a, 1), Some(tag("r", "a")));
        assert_eq!(t.key(a), None);
        assert_eq!(t.forget(ROOT, 5), None, "fixed inodes stay");
    }

    #[test]
    fn image_inodes_keep_their_number_across_forgets() {
        let mut t = Inodes::default();
        let d = t.image_of(&DirKey::Content(Digest::from_bytes([7; 32])));
        let e = t.image_of(&DirKey::Content(Digest::from_bytes([8; 32])));
        let a = t.lookup(NodeKey::Rootfs(d, 42));
        assert_eq!(t.forget(a, 1), Some(NodeKey::Rootfs(d, 42)));
        let other = t.lookup(NodeKey::Rootfs(e, 42));
        assert_ne!(other, a, "the same nid in another image is another inode");
        assert_eq!(t.lookup(NodeKey::Rootfs(d, 42)), a);
        assert_eq!(t.key(a), Some(&NodeKey::Rootfs(d, 42)));
    }

    #[test]
    fn an_image_inode_number_gives_back_its_slot_and_nid() {
        let mut t = Inodes::default();
        let _ = t.image_of(&DirKey::Content(Digest::from_bytes([6; 32])));
        let d = t.image_of(&DirKey::Content(Digest::from_bytes([7; 32])));
        let e = t.image_of(&DirKey::Content(Digest::from_bytes([8; 32])));
        let a = t.lookup(NodeKey::Rootfs(d, 42));
        let b = t.lookup(NodeKey::Rootfs(e, (1 << NID_BITS) - 1));
        assert_eq!(split_image_ino(a), Some((t.slot_of(&d).unwrap(), 42)));
        assert_eq!(
            split_image_ino(b),
            Some((t.slot_of(&e).unwrap(), (1 << NID_BITS) - 1))
        );
        assert_ne!(t.slot_of(&d), t.slot_of(&e));
        // Other nodes' numbers are no image inode's.
        let tag = t.lookup(tag("r", "a"));
        assert_eq!(split_image_ino(tag), None);
        assert_eq!(split_image_ino(ROOT), None);
        // A nid too big for the number gets a dynamic one, not a wrong slot.
        let big = t.lookup(NodeKey::Rootfs(d, 1 << NID_BITS));
        assert_eq!(split_image_ino(big), None);
        assert_eq!(image_ino(u64::MAX >> NID_BITS, 1), None);
    }

    #[test]
    fn each_directory_of_a_digest_is_an_image_that_follows_its_repository() {
        let mut t = Inodes::default();
        let d = Digest::from_bytes([7; 32]);
        let keys = [
            DirKey::Content(d),
            DirKey::Legacy("a/b".into(), d),
            DirKey::Legacy("c".into(), d),
        ];
        let ids: Vec<ImageId> = keys.iter().map(|k| t.image_of(k)).collect();
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
        assert_eq!(t.image_of(&keys[1]), ids[1], "stable");
        for (k, id) in keys.iter().zip(&ids) {
            assert_eq!(t.dir_of(id).as_ref(), Some(k));
        }
        let held = t.lookup(NodeKey::Rootfs(ids[1], 1));
        assert!(t.holds(&ids[1]) && !t.holds(&ids[2]) && t.holds_tree(&d));
        // A repository directory moved: its images' directories move with it.
        t.rename_subtree("a", "z");
        assert_eq!(t.dir_of(&ids[1]), Some(DirKey::Legacy("z/b".into(), d)));
        assert_eq!(t.image_of(&DirKey::Legacy("z/b".into(), d)), ids[1]);
        assert_eq!(t.key(held), Some(&NodeKey::Rootfs(ids[1], 1)));
    }

    #[test]
    fn rename_moves_the_inode_and_detaches_the_replaced_one() {
        let mut t = Inodes::default();
        let a = t.lookup(tag("r", "a"));
        let b = t.lookup(tag("r", "b"));
        t.rename(&tag("r", "a"), tag("r", "b"));
        assert_eq!(t.key(a), Some(&tag("r", "b")));
        assert_eq!(t.key(b), Some(&NodeKey::Gone(b)));
        t.exchange(&tag("r", "b"), &tag("r", "c"));
        assert_eq!(t.key(a), Some(&tag("r", "c")));
    }

    #[test]
    fn subtree_rename_moves_nested_nodes() {
        let mut t = Inodes::default();
        let d = t.lookup(NodeKey::TagsDir("a/b".into()));
        let x = t.lookup(tag("a/b/c", "x"));
        let other = t.lookup(tag("ab", "x"));
        t.rename_subtree("a", "z");
        assert_eq!(t.key(d), Some(&NodeKey::TagsDir("z/b".into())));
        assert_eq!(t.key(x), Some(&tag("z/b/c", "x")));
        assert_eq!(t.key(other), Some(&tag("ab", "x")));
    }

    /// A listing finds a tag's inode from borrowed names, before and after the table
    /// shrinks (its keys filed again), and shows a stand-in for the tags not held.
    #[test]
    fn a_listing_finds_held_tags_by_their_names() {
        let mut t = Inodes::default();
        let inos: Vec<u64> = (0..5000)
            .map(|i| t.lookup(tag("r", &format!("t{i}"))))
            .collect();
        let held = |t: &Inodes, i: usize| t.tag_readdir_ino("r", &format!("t{i}"));
        assert_eq!(held(&t, 7), inos[7]);
        assert_eq!(t.readdir_ino(&tag("r", "t7")), inos[7]);
        let stand_in = t.tag_readdir_ino("r", "none");
        assert!(stand_in >= 1 << 63);
        assert_eq!(
            t.readdir_ino(&tag("r", "none")),
            stand_in,
            "one stand-in per tag"
        );
        assert_eq!(
            t.tag_readdir_ino("r", "none"),
            stand_in,
            "the same at every listing"
        );
        assert_ne!(t.tag_readdir_ino("s", "none"), stand_in);
        // The repository's hash computed once gives every tag the number its whole key's
        // hash gives, held (t7) or not.
        let names = ["", "t7", "none", "a-much-longer-tag-name-than-inline-ones"];
        let whole: Vec<u64> = names.iter().map(|n| t.readdir_ino(&tag("r", n))).collect();
        let hashes = t.tag_hashes("r");
        let once: Vec<u64> = names
            .iter()
            .map(|n| t.tag_ino_hashed(&hashes, "r", n.as_bytes()))
            .collect();
        assert_eq!(once, whole);
        assert_eq!(once[1], inos[7]);
        // Forgetting most of them shrinks the table, which files the rest again.
        for &ino in &inos[..4900] {
            t.forget(ino, 1);
        }
        assert_eq!(held(&t, 4950), inos[4950]);
        assert_eq!(t.ino_of(&tag("r", "t4950")), Some(inos[4950]));
        assert!(held(&t, 7) >= 1 << 63, "forgotten: a stand-in");
    }
}
