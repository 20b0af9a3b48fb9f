//! Directories: opening, listing with READDIR and READDIRPLUS, resuming by offset.
//! Listings of `tags/` and `digests/` are snapshots taken at opendir (stable offsets); an
//! image's directories are read straight from the image by its own offsets.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{FileAttr, FileType};
use log::Level;

use super::ImageFs;
use super::core::is_ready;
use super::errno::{Error, Result};
use super::handles::{DirEntry, Handle};
use super::inodes::NodeKey;
use super::rootfs::{self, ROOTFS, ROOTFS_IMAGE};
use crate::image::Nid;
use crate::store::{self, names};

/// One directory entry on its way to a READDIR or READDIRPLUS reply.
struct Item {
    key: Option<NodeKey>,
    kind: FileType,
    name: OsString,
    /// The offset that resumes after this entry.
    next: u64,
}

impl ImageFs {
    /// Up to a reply's worth of entries of an open directory, from `offset`.
    fn dir_items(&self, fh: u64, offset: u64) -> Result<Vec<Item>> {
        /// More than a 4 KiB reply can hold; the rest is fetched again from its offset.
        const BATCH: usize = 256;
        let h =
            self.handles.lock().get(fh).ok_or_else(|| {
                Error::new(fuser::Errno::EBADF, Level::Warn, format!("handle {fh}"))
            })?;
        let mut items = Vec::new();
        match &*h {
            Handle::Dir(entries) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (i, e) in entries.iter().enumerate().skip(start).take(BATCH) {
                    items.push(Item {
                        key: e.key.clone(),
                        kind: e.kind,
                        name: e.name.clone(),
                        next: (i + 1) as u64,
                    });
                }
                Ok(items)
            }
            Handle::ImageDir {
                digest, image, nid, ..
            } => {
                // Offsets 1 and 2 are `.` and `..`; the image's own offsets are >= 12.
                for (off, name) in [(1, "."), (2, "..")] {
                    if offset < off {
                        items.push(Item {
                            key: None,
                            kind: FileType::Directory,
                            name: name.into(),
                            next: off,
                        });
                    }
                }
                let from = if offset <= 2 { 0 } else { offset };
                let mut failed = None;
                image
                    .readdir(*nid, from, |e| {
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
                        items.push(Item {
                            key: Some(NodeKey::Rootfs(*digest, e.nid.0)),
                            kind,
                            name: OsStr::from_bytes(e.name).to_os_string(),
                            next: e.offset,
                        });
                        items.len() < BATCH
                    })
                    .map_err(|e| self.images.error(digest, e))?;
                match failed {
                    Some(e) => Err(self.images.error(digest, e)),
                    None => Ok(items),
                }
            }
            _ => Err(Error::new(
                fuser::Errno::ENOTDIR,
                Level::Debug,
                "not a directory handle",
            )),
        }
    }

    /// READDIR: calls `add(ino, next_offset, kind, name)` until it returns true (full).
    pub(super) fn readdir(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<()> {
        let items = self.dir_items(fh, offset)?;
        let mut inodes = self.inodes.lock();
        for it in items {
            let ino = match &it.key {
                Some(k) => inodes.readdir_ino(k),
                None => dir,
            };
            if add(ino, it.next, it.kind, &it.name) {
                break;
            }
        }
        Ok(())
    }

    /// READDIRPLUS: like [`readdir`](Self::readdir) with attributes; every entry handed
    /// to the kernel (but `.` and `..`) counts a lookup, as LOOKUP would.
    pub(super) fn readdirplus(
        &self,
        dir: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &OsStr, &FileAttr, Duration) -> bool,
    ) -> Result<()> {
        let items = self.dir_items(fh, offset)?;
        for it in items {
            let Some(key) = it.key else {
                let (a, ttl) = self.getattr(dir)?;
                if add(it.next, &it.name, &a, ttl) {
                    break;
                }
                continue;
            };
            // An entry that went away since opendir (a tag removed) is skipped.
            let Ok((a, ttl)) = self.entry(key) else {
                continue;
            };
            if add(it.next, &it.name, &a, ttl) {
                self.forget(a.ino.0, 1);
                break;
            }
        }
        Ok(())
    }

    /// Opens a directory; the flag says whether its listing is immutable (an image's).
    pub(super) fn opendir(&self, ino: u64) -> Result<(u64, bool)> {
        let key = self.key(ino)?;
        if let NodeKey::Rootfs(d, nid) = key {
            let image = self.image(&d)?;
            let i = image
                .inode(Nid(nid))
                .map_err(|e| self.images.error(&d, e))?;
            if i.kind != crate::image::FileKind::Directory {
                return Err(Error::new(
                    fuser::Errno::ENOTDIR,
                    Level::Debug,
                    "not a directory",
                ));
            }
            let fh = self.handles.lock().insert(Handle::ImageDir {
                digest: d,
                image,
                nid: Nid(nid),
            });
            return Ok((fh, true));
        }
        let mut entries = vec![
            DirEntry {
                key: None,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                key: None,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        let mut children: Vec<(NodeKey, FileType, OsString)> = Vec::new();
        match &key {
            NodeKey::Root => {
                for (n, k) in [
                    ("tags", NodeKey::TagsDir(String::new())),
                    ("digests", NodeKey::Digests),
                    (".imagefs", NodeKey::Private),
                ] {
                    children.push((k, FileType::Directory, n.into()));
                }
            }
            NodeKey::TagsDir(p) => {
                let ix = self.store.index();
                let node = ix
                    .node(p)
                    .ok_or_else(|| Error::not_found(format!("tags/{p}")))?;
                for s in &node.subdirs {
                    children.push((
                        NodeKey::TagsDir(names::join(p, s)),
                        FileType::Directory,
                        s.into(),
                    ));
                }
                for t in node.tags.keys() {
                    children.push((
                        NodeKey::Tag(p.clone(), t.clone()),
                        FileType::Symlink,
                        t.into(),
                    ));
                }
            }
            NodeKey::Digests => {
                for d in self.store.index().digests() {
                    children.push((NodeKey::Digest(*d), FileType::Directory, d.hex().into()));
                }
            }
            NodeKey::Digest(d) => {
                let dir = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
                let rd = std::fs::read_dir(&dir)
                    .map_err(|e| Error::io(dir.display().to_string(), &e))?;
                let mut names: Vec<OsString> = rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name())
                    .filter(|n| {
                        !n.as_bytes()
                            .starts_with(store::fsutil::TMP_PREFIX.as_bytes())
                    })
                    .collect();
                names.sort();
                if is_ready(&dir) {
                    children.push((NodeKey::Rootfs(*d, 0), FileType::Directory, ROOTFS.into()));
                } else {
                    names.retain(|n| n != ROOTFS_IMAGE);
                }
                for n in names {
                    children.push((NodeKey::DigestFile(*d, n.clone()), FileType::RegularFile, n));
                }
            }
            NodeKey::Private => {
                children.push((NodeKey::Metrics, FileType::RegularFile, "metrics".into()));
            }
            k => {
                return Err(Error::new(
                    fuser::Errno::ENOTDIR,
                    Level::Debug,
                    format!("{k:?}: not a directory"),
                ));
            }
        }
        for (k, kind, name) in children {
            entries.push(DirEntry {
                key: Some(k),
                kind,
                name,
            });
        }
        Ok((self.handles.lock().insert(Handle::Dir(entries)), false))
    }
}
