//! Directories: listing with READDIR and READDIRPLUS, resumed by offset, without OPENDIR.
//!
//! OPENDIR is answered ENOSYS: the kernel then stops sending OPENDIR/RELEASEDIR (two round
//! trips per directory a walk enters) and caches every listing in its page cache. Image
//! directories never change. The listings of `tags/` and `digests/` do: the kernel drops
//! its cache itself after a change made through the mount in that directory, and imagefs
//! invalidates the rest (GC emptying `digests/`, other writers) through the notifier.
//! Offsets: 1 and 2 are `.` and `..`; in an image directory the image's own offsets
//! (>= 12) follow; elsewhere the offset counts entries of the sorted listing.

use std::ffi::{OsStr, OsString};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{FileAttr, FileType};
use imagefs_erofs::Nid;
use log::Level;

use super::ImageFs;
use super::attr;
use super::errno::{Error, Result};
use super::inodes::{self, ImageId, NodeKey};
use super::rootfs::{self, ROOTFS, ROOTFS_IMAGE};
use crate::store::{self, names};

/// Entries read for one reply: more than a 4 KiB reply can hold (the kernel asks for up
/// to 32 KiB, the size of glibc's buffer); the rest is read again from its offset.
const BATCH: usize = 256;

/// What a directory entry stands for.
enum Node {
    /// `.` or `..`: both get the directory's own number; in a READDIRPLUS reply, made-up
    /// attributes (see [`dot_attr`]).
    Dot,
    /// A tag of the `tags/` directory listed, named by the entry: its key is built only
    /// for READDIRPLUS (a READDIR of a million tags builds none).
    Tag,
    Key(NodeKey),
}

/// One directory entry on its way to a READDIR or READDIRPLUS reply.
struct Item {
    node: Node,
    kind: FileType,
    /// Its name in [`Items::names`].
    name: Range<usize>,
    /// The offset that resumes after this entry.
    next: u64,
}

/// The entries of one reply, their names one after another in one buffer: a reply of 100
/// tags makes a few allocations, not one per name.
#[derive(Default)]
struct Items {
    items: Vec<Item>,
    names: Vec<u8>,
}

impl Items {
    fn push(&mut self, node: Node, kind: FileType, name: &[u8], next: u64) {
        let start = self.names.len();
        self.names.extend_from_slice(name);
        self.items.push(Item {
            node,
            kind,
            name: start..self.names.len(),
            next,
        });
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds the entries of a `tags/` directory's `window`, the first resuming at `next`.
    fn push_window(&mut self, dir: &str, window: store::Window, mut next: u64) {
        // A READDIR after the first reply has no `.` and `..`: the window's buffer is taken
        // as it is.
        let base = if self.names.is_empty() {
            self.names = window.names;
            0
        } else {
            let base = self.names.len();
            self.names.extend_from_slice(&window.names);
            base
        };
        self.items.reserve(window.ends.len());
        let mut start = base;
        for (end, is_dir) in window.ends {
            let name = start..base + end;
            start = name.end;
            let (node, kind) = match is_dir {
                // Subdirectory names are `String`s in the index: whole UTF-8.
                true => {
                    let sub = String::from_utf8_lossy(&self.names[name.clone()]);
                    let key = NodeKey::TagsDir(names::join(dir, &sub));
                    (Node::Key(key), FileType::Directory)
                }
                false => (Node::Tag, FileType::Symlink),
            };
            self.items.push(Item {
                node,
                kind,
                name,
                next,
            });
            next += 1;
        }
    }
}

impl ImageFs {
    /// Up to `batch` entries of directory `key`, from `offset`.
    fn dir_items(&self, key: &NodeKey, offset: u64, batch: usize) -> Result<Items> {
        let mut items = Items::default();
        for (off, name) in [(1, "."), (2, "..")] {
            if offset < off {
                items.push(Node::Dot, FileType::Directory, name.as_bytes(), off);
            }
        }
        if let &NodeKey::Rootfs(d, nid) = key {
            let image = self.image(&d)?;
            let from = if offset <= 2 { 0 } else { offset };
            let mut failed = None;
            image
                .readdir(Nid(nid), from, |e| {
                    let kind = match e.kind {
                        Some(k) => rootfs::file_type(k),
                        None => match image.inode(e.nid) {
                            Ok(i) => rootfs::file_type(i.kind),
                            Err(err) => {
                                failed = Some(err);
                                return false;
                            }
                        },
                    };
                    items.push(
                        Node::Key(NodeKey::Rootfs(d, e.nid.0)),
                        kind,
                        e.name,
                        e.offset,
                    );
                    items.len() < batch
                })
                .map_err(|e| self.open_images.error(&d, e))?;
            return match failed {
                Some(e) => Err(self.open_images.error(&d, e)),
                None => Ok(items),
            };
        }
        let skip = usize::try_from(offset.saturating_sub(2)).unwrap_or(usize::MAX);
        let want = batch.saturating_sub(items.len());
        self.children(key, skip, want, &mut items)?;
        Ok(items)
    }

    /// Entries `skip..skip + max` of a directory outside the images, in listing order,
    /// added to `items`.
    fn children(&self, key: &NodeKey, skip: usize, max: usize, items: &mut Items) -> Result<()> {
        let mut next = (skip + 3) as u64;
        let mut add = |node: Node, kind: FileType, name: &[u8]| {
            items.push(node, kind, name, next);
            next += 1;
        };
        let mut window = |it: &mut dyn Iterator<Item = (NodeKey, FileType, OsString)>| {
            for (k, kind, name) in it.skip(skip).take(max) {
                add(Node::Key(k), kind, name.as_bytes());
            }
        };
        match key {
            NodeKey::Root => window(
                &mut [
                    ("tags", NodeKey::TagsDir(String::new())),
                    ("digests", NodeKey::Digests),
                    (".imagefs", NodeKey::Private),
                ]
                .into_iter()
                .map(|(n, k)| (k, FileType::Directory, n.into())),
            ),
            NodeKey::TagsDir(p) => {
                let w = self
                    .store
                    .children_window(p, skip, max)
                    .ok_or_else(|| Error::not_found(format!("tags/{p}")))?;
                items.push_window(p, w, next);
            }
            NodeKey::Digests => {
                // Skipping over the keys is cheap; only the window is formatted.
                let v = self.store.images_window(skip, max);
                let mut inodes = self.inodes.lock();
                for (name, dir) in v {
                    let id = inodes.image_of(&dir);
                    add(
                        Node::Key(NodeKey::Digest(id)),
                        FileType::Directory,
                        name.as_bytes(),
                    );
                }
            }
            NodeKey::Digest(d) => window(&mut self.digest_listing(d)?.into_iter()),
            // Not listed: it is reached only by the bind mounts, each through its own name.
            NodeKey::TreeConnectionRoot => {}
            NodeKey::Private => window(&mut std::iter::once((
                NodeKey::Metrics,
                FileType::RegularFile,
                "metrics".into(),
            ))),
            k => {
                return Err(Error::new(
                    fuser::Errno::ENOTDIR,
                    Level::Debug,
                    format!("{k:?}: not a directory"),
                ));
            }
        }
        Ok(())
    }

    /// `digests/<entry>/`: `rootfs/` (when ready) and the digest directory's regular files,
    /// but writers' temporaries ([`store::layout::is_staging_file`]).
    fn digest_listing(&self, d: &ImageId) -> Result<Vec<(NodeKey, FileType, OsString)>> {
        let dir = self
            .digest_dir(d)
            .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display().to_string(), &e))?;
        let mut names: Vec<OsString> = rd
            .flatten()
            // rootfs.erofs is listed whatever it is: if it is no file, its lookup says EIO.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) || e.file_name() == ROOTFS_IMAGE)
            .map(|e| e.file_name())
            // Writers' temporaries (metadata.json.tmp, rootfs.erofs.tmp-<build>, hidden
            // names) are not the digest's files.
            .filter(|n| !store::layout::is_staging_file(n.as_bytes()))
            .collect();
        names.sort();
        let mut out = Vec::new();
        if self.digest_ready(d, &dir) {
            // An image that does not open is still listed: its lookup answers EIO. Its
            // error is logged here, where it is first met (then once per digest).
            let root = match self.open_images.get(d, &dir) {
                Ok(i) => i.root().0,
                Err(e) => {
                    log::log!(
                        e.level,
                        "readdir digests/{d}: {} ({})",
                        e.reason,
                        e.errno_name()
                    );
                    0
                }
            };
            out.push((
                NodeKey::Rootfs(*d, root),
                FileType::Directory,
                ROOTFS.into(),
            ));
        } else {
            names.retain(|n| n != ROOTFS_IMAGE);
        }
        for n in names {
            out.push((NodeKey::DigestFile(*d, n.clone()), FileType::RegularFile, n));
        }
        Ok(out)
    }

    /// READDIR: calls `add(ino, next_offset, kind, name)` until it returns true (full).
    pub(super) fn readdir(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<()> {
        let key = self.key(dir)?;
        let items = self.dir_items(&key, offset, BATCH)?;
        // Inside an image, an entry's number follows from its directory's slot: the inode
        // table is not needed (see `inodes::image_ino`).
        let slot = inodes::split_image_ino(dir)
            .filter(|_| self.open_images.by_ino(dir).is_some())
            .map(|(slot, _)| slot);
        let Items { items, names } = items;
        let mut table = None;
        let mut hashes = None;
        for it in items {
            let name = &names[it.name];
            let ino = match &it.node {
                Node::Dot => dir,
                Node::Tag => {
                    let NodeKey::TagsDir(repo) = &key else {
                        continue;
                    };
                    let t = table.get_or_insert_with(|| self.inodes.lock());
                    let h = hashes.get_or_insert_with(|| t.tag_hashes(repo));
                    t.tag_ino_hashed(h, repo, name)
                }
                Node::Key(k) => {
                    let fixed = match k {
                        NodeKey::Rootfs(_, nid) => slot.and_then(|s| inodes::image_ino(s, *nid)),
                        _ => None,
                    };
                    match fixed {
                        Some(ino) => ino,
                        None => table
                            .get_or_insert_with(|| self.inodes.lock())
                            .readdir_ino(k),
                    }
                }
            };
            if add(ino, it.next, it.kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS: like [`readdir`](Self::readdir) with attributes; every entry handed
    /// to the kernel (but `.` and `..`) counts a lookup, as LOOKUP would.
    ///
    /// The first reply of a listing (offset 0 or 1) of a `tags/` directory stops before
    /// its first tag, and that of `digests/` after `..`: see [`lists_plain`].
    pub(super) fn readdirplus(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(u64, &OsStr, &FileAttr, Duration) -> bool,
    ) -> Result<()> {
        let key = self.key(dir)?;
        let plain = offset < 2 && lists_plain(&key);
        // Only `.`, `..` and the subdirectories are wanted then.
        let batch = match &key {
            NodeKey::TagsDir(p) if plain => self
                .store
                .subdir_count(p)
                .map_or(BATCH, |n| (n + 2).min(BATCH)),
            NodeKey::Digests if plain => 2,
            _ => BATCH,
        };
        let Items { items, names } = self.dir_items(&key, offset, batch)?;
        for it in items {
            if plain && matches!(it.node, Node::Tag | Node::Key(NodeKey::Digest(_))) {
                break;
            }
            let name = OsStr::from_bytes(&names[it.name]);
            let child = match it.node {
                Node::Dot => {
                    if add(it.next, name, &dot_attr(dir), Duration::ZERO) {
                        break;
                    }
                    continue;
                }
                Node::Tag => match (&key, name.to_str()) {
                    (NodeKey::TagsDir(repo), Some(tag)) => NodeKey::Tag(repo.clone(), tag.into()),
                    _ => continue,
                },
                Node::Key(k) => k,
            };
            // An entry that went away meanwhile (a tag removed) is skipped.
            let Ok((a, ttl)) = self.entry(child) else {
                continue;
            };
            if add(it.next, name, &a, ttl) {
                self.forget(a.ino.0, 1);
                break;
            }
        }
        Ok(())
    }
}

/// The attributes of `.` and `..` in a READDIRPLUS reply of directory `dir`: the kernel
/// reads an entry's attributes only to link its inode, which it never does for these two
/// names (fs/fuse/readdir.c `fuse_direntplus_link` returns first), so they are not worth
/// the directory's `statx` (a `tags/` directory's mtime comes with LOOKUP and GETATTR).
/// What the lister sees of them, number and type, is the directory's own.
fn dot_attr(dir: u64) -> FileAttr {
    attr::synthetic(dir, FileType::Directory, 0o755, 0, std::time::UNIX_EPOCH)
}

/// Whether the first READDIRPLUS reply of a listing of `dir` leaves its tags (in `tags/`
/// directories) or digests (in `digests/`) to plain READDIR.
///
/// The kernel (READDIRPLUS_AUTO, fs/fuse/readdir.c `fuse_use_readdirplus`) asks with
/// READDIRPLUS at offset 0 and after a LOOKUP in the directory, else with READDIR. Each
/// entry of a READDIRPLUS reply but `.` and `..` makes a kernel inode and an inode-table
/// entry (a `digests/` one also holds its image): a listing of every tag made one per tag
/// (issue 13). So the first reply of these directories carries `.`, `..` and, in `tags/`,
/// the subdirectories (listed first; the ones a walk enters); never nothing, which would
/// end the listing. The kernel reads the rest with READDIR: names, types and numbers,
/// nothing held. Only a READDIRPLUS after a LOOKUP in the directory, mid-listing, still
/// answers tags with inodes. `ls -l` pays a LOOKUP per tag.
fn lists_plain(dir: &NodeKey) -> bool {
    matches!(dir, NodeKey::TagsDir(_) | NodeKey::Digests)
}
