//! The filesystem's logic, in terms of inodes, names and [`Result`]: what each kernel
//! request means for the store. The adapter in `mod.rs` only replies.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};
use log::{Level, info};

use super::attr::{self, IMMUTABLE_TTL, TAGS_TTL};
use super::errno::{Error, Result};
use super::handles::{DirEntry, Handle};
use super::inodes::{self, NodeKey};
use super::notify::Inval;
use super::rootfs::{self, ROOTFS, ROOTFS_IMAGE};
use super::{ImageFs, target};
use crate::image::Nid;
use crate::store::{self, DirKey, RenameMode, names};

/// One directory entry on its way to a READDIR or READDIRPLUS reply.
struct Item {
    key: Option<NodeKey>,
    kind: FileType,
    name: OsString,
    /// The offset that resumes after this entry.
    next: u64,
}

/// Which part of the tree a node belongs to decides what a change to it gets.
enum Area {
    Tags(String),
    ReadOnly(String),
}

fn name_str(name: &OsStr) -> Result<&str> {
    name.to_str()
        .ok_or_else(|| Error::not_found(format!("{}: not UTF-8", name.to_string_lossy())))
}

impl ImageFs {
    pub(super) fn key(&self, ino: u64) -> Result<NodeKey> {
        self.inodes
            .lock()
            .key(ino)
            .cloned()
            .ok_or_else(|| Error::new(fuser::Errno::ESTALE, Level::Debug, format!("inode {ino}")))
    }

    fn area(&self, ino: u64) -> Result<Area> {
        Ok(match self.key(ino)? {
            NodeKey::TagsDir(p) => Area::Tags(p),
            NodeKey::Tag(r, t) => Area::Tags(names::join(&r, &t)),
            NodeKey::Root => Area::ReadOnly("/".into()),
            NodeKey::Digests | NodeKey::Digest(_) | NodeKey::DigestFile(..) => {
                Area::ReadOnly("digests/".into())
            }
            NodeKey::Rootfs(..) => Area::ReadOnly("rootfs/".into()),
            NodeKey::Private | NodeKey::Metrics => Area::ReadOnly(".imagefs/".into()),
            NodeKey::Gone(_) => return Err(Error::not_found("removed node")),
        })
    }

    /// For a change inside directory `parent`: the `tags/` path, or the errno refusing it.
    fn tags_parent(&self, parent: u64, what: &str) -> Result<String> {
        match self.area(parent)? {
            Area::Tags(p) => Ok(p),
            Area::ReadOnly(a) => Err(Error::read_only(format!("{what} in {a}"))),
        }
    }

    /// For a change of node `ino` itself: `tags/` refuses with EPERM, the rest with EROFS.
    pub(super) fn refuse_change(&self, ino: u64, what: &str) -> Error {
        match self.area(ino) {
            Ok(Area::Tags(p)) => Error::not_permitted(format!("{what} tags/{p}")),
            Ok(Area::ReadOnly(a)) => Error::read_only(format!("{what} {a}")),
            Err(e) => e,
        }
    }

    /// Refuses creating a file-like node (create, mknod, link) in `parent`.
    pub(super) fn refuse_create(&self, parent: u64, name: &OsStr, what: &str) -> Error {
        match self.area(parent) {
            Ok(Area::Tags(p)) => {
                Error::not_permitted(format!("{what} tags/{p}/{}", name.to_string_lossy()))
            }
            Ok(Area::ReadOnly(a)) => Error::read_only(format!("{what} in {a}")),
            Err(e) => e,
        }
    }

    /// A readable path for `name` in directory `parent`, for log lines.
    pub(super) fn describe(&self, parent: u64, name: &OsStr) -> String {
        let name = name.to_string_lossy();
        match self.key(parent) {
            Ok(NodeKey::Root) => name.into_owned(),
            Ok(NodeKey::TagsDir(p)) if p.is_empty() => format!("tags/{name}"),
            Ok(NodeKey::TagsDir(p)) => format!("tags/{p}/{name}"),
            Ok(NodeKey::Digests) => format!("digests/{name}"),
            Ok(NodeKey::Digest(d)) => format!("digests/{d}/{name}"),
            Ok(NodeKey::Private) => format!(".imagefs/{name}"),
            Ok(k) => format!("{k:?}/{name}"),
            Err(_) => format!("inode {parent}/{name}"),
        }
    }

    fn child_key(&self, parent: &NodeKey, name: &OsStr) -> Result<NodeKey> {
        let missing = || Error::not_found(format!("{parent:?}/{}", name.to_string_lossy()));
        match parent {
            NodeKey::Root => match name.as_bytes() {
                b"tags" => Ok(NodeKey::TagsDir(String::new())),
                b"digests" => Ok(NodeKey::Digests),
                b".imagefs" => Ok(NodeKey::Private),
                _ => Err(missing()),
            },
            NodeKey::TagsDir(p) => {
                let name = name_str(name)?;
                let ix = self.store.index();
                let node = ix.node(p).ok_or_else(missing)?;
                if node.subdirs.contains(name) {
                    Ok(NodeKey::TagsDir(names::join(p, name)))
                } else if node.tags.contains_key(name) {
                    Ok(NodeKey::Tag(p.clone(), name.to_string()))
                } else {
                    Err(missing())
                }
            }
            NodeKey::Digests => {
                let d = name_str(name)
                    .ok()
                    .and_then(store::Digest::parse_hex)
                    .ok_or_else(missing)?;
                if self.store.index().dirs_of(&d).next().is_some() {
                    Ok(NodeKey::Digest(d))
                } else {
                    Err(missing())
                }
            }
            NodeKey::Digest(d) => {
                let dir = self.digest_dir(d).ok_or_else(missing)?;
                if (name == ROOTFS_IMAGE || name == ROOTFS) && !is_ready(&dir) {
                    return Err(missing());
                }
                if name == ROOTFS {
                    let img = self.images.get(d, &dir)?;
                    return Ok(NodeKey::Rootfs(*d, img.root().0));
                }
                match std::fs::symlink_metadata(dir.join(name)) {
                    Ok(m) if m.is_file() => Ok(NodeKey::DigestFile(*d, name.to_os_string())),
                    _ => Err(missing()),
                }
            }
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(d)?;
                match img.lookup(Nid(*nid), name.as_bytes()) {
                    Ok(Some(child)) => Ok(NodeKey::Rootfs(*d, child.0)),
                    Ok(None) => Err(missing()),
                    Err(e) => Err(self.images.error(d, e)),
                }
            }
            NodeKey::Private if name == "metrics" => Ok(NodeKey::Metrics),
            NodeKey::Private | NodeKey::Gone(_) => Err(missing()),
            NodeKey::Tag(..) | NodeKey::DigestFile(..) | NodeKey::Metrics => Err(Error::new(
                fuser::Errno::ENOTDIR,
                Level::Debug,
                format!("{parent:?}: not a directory"),
            )),
        }
    }

    /// Attributes of a node (its `ino` field filled by the caller) and their TTL.
    fn attr_of(&self, key: &NodeKey) -> Result<(FileAttr, Duration)> {
        let dir = |n: u64| {
            let mut a = attr::synthetic(0, FileType::Directory, 0o755, 0, self.started);
            a.nlink = u32::try_from(2 + n).unwrap_or(u32::MAX);
            a
        };
        let stat = |p: &Path| {
            std::fs::symlink_metadata(p).map_err(|e| Error::io(p.display().to_string(), &e))
        };
        Ok(match key {
            NodeKey::Root => (dir(3), TAGS_TTL),
            NodeKey::Digests => (dir(self.store.index().digests().count() as u64), TAGS_TTL),
            NodeKey::Private => {
                let mut a = dir(0);
                a.perm = 0o555;
                (a, TAGS_TTL)
            }
            NodeKey::Metrics => (
                attr::synthetic(0, FileType::RegularFile, 0o444, 0, self.started),
                Duration::ZERO,
            ),
            NodeKey::TagsDir(p) => {
                let (path, subdirs) = {
                    let ix = self.store.index();
                    let node = ix
                        .node(p)
                        .ok_or_else(|| Error::not_found(format!("tags/{p}")))?;
                    let path = if p.is_empty() {
                        self.store.root().to_path_buf()
                    } else {
                        self.store.node_path(p, node)
                    };
                    (path, node.subdirs.len())
                };
                let mut a = attr::from_metadata(0, FileType::Directory, &stat(&path)?, false);
                a.nlink = u32::try_from(2 + subdirs).unwrap_or(u32::MAX);
                a.size = 4096;
                (a, TAGS_TTL)
            }
            NodeKey::Tag(r, t) => {
                let tag = self
                    .store
                    .index()
                    .tag(r, t)
                    .cloned()
                    .ok_or_else(|| Error::not_found(format!("tags/{r}/{t}")))?;
                let m = stat(&self.store.tag_path(r, t, tag.layout))?;
                let mut a = attr::from_metadata(0, FileType::Symlink, &m, false);
                a.perm = 0o777;
                a.size = link_text(r, &tag.key).len() as u64;
                (a, TAGS_TTL)
            }
            NodeKey::Digest(d) => {
                let p = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
                let mut a = attr::from_metadata(0, FileType::Directory, &stat(&p)?, true);
                a.size = 4096;
                (a, IMMUTABLE_TTL)
            }
            NodeKey::DigestFile(d, name) => {
                let p = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?
                    .join(name);
                let m = stat(&p)?;
                if !m.is_file() {
                    return Err(Error::not_found(p.display().to_string()));
                }
                (
                    attr::from_metadata(0, FileType::RegularFile, &m, true),
                    IMMUTABLE_TTL,
                )
            }
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(d)?;
                let i = img.inode(Nid(*nid)).map_err(|e| self.images.error(d, e))?;
                (rootfs::attr_of(&i), IMMUTABLE_TTL)
            }
            NodeKey::Gone(ino) => return Err(Error::not_found(format!("inode {ino} was removed"))),
        })
    }

    pub(super) fn getattr(&self, ino: u64) -> Result<(FileAttr, Duration)> {
        let key = self.key(ino)?;
        let (mut a, ttl) = self.attr_of(&key)?;
        a.ino = INodeNo(ino);
        Ok((a, ttl))
    }

    /// Looks `name` up in `parent` and counts the kernel's new reference.
    pub(super) fn lookup(&self, parent: u64, name: &OsStr) -> Result<(FileAttr, Duration)> {
        let key = self.child_key(&self.key(parent)?, name)?;
        self.entry(key)
    }

    fn entry(&self, key: NodeKey) -> Result<(FileAttr, Duration)> {
        let (mut a, ttl) = self.attr_of(&key)?;
        a.ino = INodeNo(self.inodes.lock().lookup(key));
        Ok((a, ttl))
    }

    pub(super) fn forget(&self, ino: u64, n: u64) {
        let released = {
            let mut inodes = self.inodes.lock();
            match inodes.forget(ino, n).and_then(|k| k.digest()) {
                Some(d) if !inodes.holds(&d) => {
                    self.images.close(&d);
                    inodes.zombies.remove(&d).map(|p| (d, p))
                }
                _ => None,
            }
        };
        if let Some((d, trashed)) = released {
            self.store.release_trashed(&d, &trashed);
        }
    }

    /// The open image of digest `d`.
    fn image(&self, d: &store::Digest) -> Result<Arc<crate::image::Image>> {
        let dir = self
            .digest_dir(d)
            .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
        self.images.get(d, &dir)
    }

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

    /// An extended attribute's value (`Some(name)`) or the list of names (`None`).
    pub(super) fn xattr(&self, ino: u64, name: Option<&OsStr>) -> Result<Vec<u8>> {
        let no_data = || Error::new(fuser::Errno::ENODATA, Level::Debug, "no such attribute");
        match self.key(ino)? {
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(&d)?;
                rootfs::xattr(&img, Nid(nid), name.map(OsStr::as_bytes))
                    .map_err(|e| self.images.error(&d, e))?
                    .ok_or_else(no_data)
            }
            _ if name.is_some() => Err(no_data()),
            _ => Ok(Vec::new()),
        }
    }

    /// The directory behind `digests/<hex>/`: in the store, or, for a collected digest
    /// still in use, in the trash.
    fn digest_dir(&self, d: &store::Digest) -> Option<std::path::PathBuf> {
        self.store
            .digest_path(d)
            .or_else(|| self.inodes.lock().zombies.get(d).cloned())
    }

    pub(super) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.key(ino)? {
            NodeKey::Tag(r, t) => {
                let key = self
                    .store
                    .index()
                    .tag(&r, &t)
                    .map(|t| t.key.clone())
                    .ok_or_else(|| Error::not_found(format!("tags/{r}/{t}")))?;
                Ok(link_text(&r, &key).into_bytes())
            }
            NodeKey::Rootfs(d, nid) => self
                .image(&d)?
                .readlink(Nid(nid))
                .map_err(|e| self.images.error(&d, e)),
            k => Err(Error::new(
                fuser::Errno::EINVAL,
                Level::Debug,
                format!("{k:?}: not a symlink"),
            )),
        }
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

    pub(super) fn open(&self, ino: u64, flags: i32) -> Result<(u64, Arc<Handle>)> {
        let key = self.key(ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(self.refuse_change(ino, "open for writing"));
        }
        let h = match &key {
            NodeKey::DigestFile(d, name) => {
                let p = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?
                    .join(name);
                let file =
                    std::fs::File::open(&p).map_err(|e| Error::io(p.display().to_string(), &e))?;
                Handle::File { file }
            }
            NodeKey::Rootfs(d, nid) => {
                let image = self.image(d)?;
                let i = image
                    .inode(Nid(*nid))
                    .map_err(|e| self.images.error(d, e))?;
                if i.kind == crate::image::FileKind::Directory {
                    return Err(Error::new(
                        fuser::Errno::EISDIR,
                        Level::Debug,
                        "is a directory",
                    ));
                }
                Handle::ImageFile {
                    digest: *d,
                    image,
                    nid: Nid(*nid),
                }
            }
            NodeKey::Metrics => Handle::Bytes(self.render_metrics().into_bytes()),
            k => {
                return Err(Error::new(
                    fuser::Errno::EISDIR,
                    Level::Debug,
                    format!("{k:?}: cannot open"),
                ));
            }
        };
        let h = Arc::new(h);
        let fh = self.handles.lock().insert_arc(h.clone());
        Ok((fh, h))
    }

    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h =
            self.handles.lock().get(fh).ok_or_else(|| {
                Error::new(fuser::Errno::EBADF, Level::Warn, format!("handle {fh}"))
            })?;
        match &*h {
            Handle::File { file, .. } => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io("read", &e)),
                    }
                }
                buf.truncate(got);
                Ok(buf)
            }
            Handle::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Handle::ImageFile { digest, image, nid } => {
                let mut buf = vec![0u8; size as usize];
                let n = image
                    .read(*nid, offset, &mut buf)
                    .map_err(|e| self.images.error(digest, e))?;
                buf.truncate(n);
                Ok(buf)
            }
            Handle::Dir(_) | Handle::Backed { .. } | Handle::ImageDir { .. } => Err(Error::new(
                fuser::Errno::EISDIR,
                Level::Debug,
                "read of a directory",
            )),
        }
    }

    pub(super) fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, Duration)> {
        let p = self.tags_parent(parent, "mkdir")?;
        self.store.mkdir(&p, name.as_bytes(), mode, uid, gid)?;
        let name = name_str(name)?;
        self.entry(NodeKey::TagsDir(names::join(&p, name)))
    }

    pub(super) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<(FileAttr, Duration)> {
        let p = self.tags_parent(parent, "symlink")?;
        let tag = store::check_new_tag(&p, name.as_bytes())?.to_string();
        let t = target::parse(target, &p, &self.mountpoint).ok_or_else(|| {
            Error::new(
                fuser::Errno::ENOENT,
                Level::Info,
                format!(
                    "ln -s {} tags/{p}/{tag}: the target names no digest and no tag of this mount",
                    target.display()
                ),
            )
        })?;
        let d = self.store.create_tag(&p, tag.as_bytes(), &t)?;
        info!("tagged {p}:{tag} -> sha256:{d}");
        self.entry(NodeKey::Tag(p, tag))
    }

    pub(super) fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.tags_parent(parent, "unlink")?;
        let name = name_str(name)?;
        let is_dir = self
            .store
            .index()
            .node(&p)
            .is_some_and(|n| n.subdirs.contains(name));
        if is_dir {
            return Err(Error::new(
                fuser::Errno::EISDIR,
                Level::Info,
                format!("unlink tags/{p}/{name}: is a directory"),
            ));
        }
        let collected = self.store.remove_tag(&p, name)?;
        info!("untagged {p}:{name}");
        self.inodes
            .lock()
            .detach(&NodeKey::Tag(p, name.to_string()));
        self.collected(&collected);
        Ok(())
    }

    pub(super) fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let p = self.tags_parent(parent, "rmdir")?;
        let name = name_str(name)?;
        let path = names::join(&p, name);
        self.store.rmdir(&path)?;
        self.inodes.lock().detach(&NodeKey::TagsDir(path));
        Ok(())
    }

    pub(super) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let p = self.tags_parent(parent, "rename")?;
        let np = self.tags_parent(newparent, "rename")?;
        let mode = if flags & libc::RENAME_EXCHANGE != 0 {
            RenameMode::Exchange
        } else if flags & libc::RENAME_NOREPLACE != 0 {
            RenameMode::NoReplace
        } else if flags == 0 {
            RenameMode::Replace
        } else {
            return Err(Error::new(
                fuser::Errno::EINVAL,
                Level::Info,
                format!("rename flags {flags:#x} not supported"),
            ));
        };
        let name = name_str(name)?;
        let (is_dir, is_tag) = {
            let ix = self.store.index();
            let node = ix.node(&p);
            (
                node.is_some_and(|n| n.subdirs.contains(name)),
                node.is_some_and(|n| n.tags.contains_key(name)),
            )
        };
        if is_dir {
            let from = names::join(&p, name);
            self.store
                .rename_dir(&from, &np, newname.as_bytes(), mode)?;
            let to = names::join(&np, name_str(newname)?);
            self.inodes.lock().rename_subtree(&from, &to);
            info!("moved tags/{from} to tags/{to}");
            return Ok(());
        }
        if !is_tag {
            return Err(Error::not_found(format!("tags/{p}/{name}")));
        }
        let collected = self
            .store
            .rename_tag((&p, name), &np, newname.as_bytes(), mode)?;
        let newname = name_str(newname)?;
        let (a, b) = (
            NodeKey::Tag(p.clone(), name.into()),
            NodeKey::Tag(np.clone(), newname.into()),
        );
        let moved = {
            let mut inodes = self.inodes.lock();
            if mode == RenameMode::Exchange {
                inodes.exchange(&a, &b);
            } else {
                inodes.rename(&a, b.clone());
            }
            [inodes.ino_of(&a), inodes.ino_of(&b)]
        };
        // The kernel caches symlink text (FUSE_CACHE_SYMLINKS); a tag that moved to another
        // depth, or swapped targets, now reads differently.
        for ino in moved.into_iter().flatten() {
            self.inval
                .send_and_wait(Inval::Inode(ino), Duration::from_secs(1));
        }
        info!("renamed {p}:{name} to {np}:{newname}");
        self.collected(&collected);
        Ok(())
    }

    /// The metrics file's text, made at open.
    fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (tags, digests, dirs) = {
            let ix = self.store.index();
            let dirs: Vec<std::path::PathBuf> = ix
                .dir_keys()
                .map(|(k, _)| self.store.root().join(k.rel_path()))
                .collect();
            (ix.tag_count(), ix.digests().count(), dirs)
        };
        let bytes: u64 = dirs.iter().map(|p| store::fsutil::tree_bytes(p)).sum();
        let in_use_only = self.inodes.lock().zombies.len();
        self.metrics.render(&super::metrics::Gauges {
            tags,
            digests,
            store_bytes: bytes,
            collections: self.store.stats.collections.load(Relaxed),
            bytes_reclaimed: self.store.stats.bytes_reclaimed.load(Relaxed),
            in_use_only,
        })
    }

    /// Drops from the kernel's caches what other writers changed in the store.
    pub(super) fn apply_changes(&self, changes: Vec<store::watch::Change>) {
        use store::watch::Change;
        for c in changes {
            match c {
                Change::Tag { repo, tag } => {
                    let (parent, ino) = {
                        let mut inodes = self.inodes.lock();
                        let key = NodeKey::Tag(repo.clone(), tag.clone());
                        let ino = inodes.ino_of(&key);
                        inodes.detach(&key);
                        (inodes.ino_of(&NodeKey::TagsDir(repo)), ino)
                    };
                    if let Some(p) = parent {
                        self.inval.send(Inval::Entry(p, tag.into()));
                    }
                    if let Some(i) = ino {
                        self.inval.send(Inval::Inode(i));
                    }
                }
                Change::Dir(path) => {
                    let (parent, last) = names::split_last(&path);
                    if let Some(p) = self.inodes.lock().ino_of(&NodeKey::TagsDir(parent.into())) {
                        self.inval.send(Inval::Entry(p, last.into()));
                    }
                }
                Change::DigestGone(d) => {
                    self.inval
                        .send(Inval::Entry(inodes::DIGESTS, d.hex().into()));
                }
            }
        }
    }

    /// After GC removed digest directories: drop what the kernel caches of digests that
    /// no longer have any directory.
    fn collected(&self, keys: &[DirKey]) {
        for key in keys {
            let d = key.digest();
            if self.store.digest_path(&d).is_none() {
                self.inval.send_and_wait(
                    Inval::Entry(inodes::DIGESTS, d.hex().into()),
                    Duration::from_secs(1),
                );
                if let Some(ino) = self.inodes.lock().ino_of(&NodeKey::Digest(d)) {
                    self.inval.send(Inval::Inode(ino));
                }
            }
        }
    }
}

/// `rootfs.erofs` and `rootfs/` are served only for `ready` digests: a pull in progress
/// may still be writing the image.
fn is_ready(dir: &Path) -> bool {
    matches!(
        store::metadata::read_status(dir),
        Ok(store::metadata::Status::Ready)
    )
}

/// The text of a tag's symlink: up to the mount's root, then `digests/<hex>`.
fn link_text(repo: &str, key: &DirKey) -> String {
    format!(
        "{}digests/{}",
        "../".repeat(names::depth(repo) + 1),
        key.digest()
    )
}
