//! The filesystem's logic, in terms of inodes, names and [`Result`]: what each kernel
//! request means for the store. The adapter in `fuse.rs` only replies.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use imagefs_erofs::Nid;
use log::{Level, info};

use super::ImageFs;
use super::attr::{self, IMMUTABLE_TTL, PENDING_TTL, TAGS_TTL};
use super::errno::{Error, Result};
use super::handles::{Handle, NO_HANDLE};
use super::inodes::{ImageId, NodeKey};
use super::readbuf::ReadBuf;
use super::rootfs::{self, ROOTFS, ROOTFS_IMAGE};
use crate::store::{self, DirKey, names};

/// Which part of the tree a node belongs to decides what a change to it gets.
enum Area {
    Tags(String),
    ReadOnly(String),
}

pub(super) fn name_str(name: &OsStr) -> Result<&str> {
    name.to_str()
        .ok_or_else(|| Error::not_found(format!("{}: not UTF-8", name.to_string_lossy())))
}

impl ImageFs {
    pub(super) fn key(&self, ino: u64) -> Result<NodeKey> {
        // An image inode's number says which it is: no need of the inode table.
        if let Some((d, nid, _)) = self.open_images.by_ino(ino) {
            return Ok(NodeKey::Rootfs(d, nid.0));
        }
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
            NodeKey::TreeConnectionRoot => Area::ReadOnly("rootfs/".into()),
            NodeKey::Gone(_) => return Err(Error::not_found("removed node")),
        })
    }

    /// For a change inside directory `parent`: the `tags/` path, or the errno refusing it.
    pub(super) fn tags_parent(&self, parent: u64, what: &str) -> Result<String> {
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

    pub(super) fn child_key(&self, parent: &NodeKey, name: &OsStr) -> Result<NodeKey> {
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
                match self.store.entry(p, name).ok_or_else(missing)? {
                    store::Entry::Dir => Ok(NodeKey::TagsDir(names::join(p, name))),
                    store::Entry::Tag(_) => Ok(NodeKey::Tag(p.clone(), name.to_string())),
                }
            }
            NodeKey::Digests => {
                let key = name_str(name)
                    .ok()
                    .and_then(|n| self.store.image_by_name(n))
                    .ok_or_else(missing)?;
                Ok(NodeKey::Digest(self.inodes.lock().image_of(&key)))
            }
            NodeKey::Digest(d) => {
                let dir = self.digest_dir(d).ok_or_else(missing)?;
                // What a writer is still working on is not the digest's content.
                if store::layout::is_staging_file(name.as_bytes()) {
                    return Err(missing());
                }
                if (name == ROOTFS_IMAGE || name == ROOTFS) && !self.digest_ready(d, &dir) {
                    return Err(missing());
                }
                if name == ROOTFS {
                    let img = self.open_images.get(d, &dir)?;
                    return Ok(NodeKey::Rootfs(*d, img.root().0));
                }
                let p = dir.join(name);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.is_file() => Ok(NodeKey::DigestFile(*d, name.to_os_string())),
                    // The image of a ready digest is there but is no file (a directory, a
                    // FIFO): a corrupt image, not a missing one.
                    Ok(m) if name == ROOTFS_IMAGE => Err(self.open_images.open_error(
                        d,
                        &p,
                        &store::safe_open::not_regular(&p, m.file_type()),
                    )),
                    _ => Err(missing()),
                }
            }
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(d)?;
                match img.lookup(Nid(*nid), name.as_bytes()) {
                    Ok(Some(child)) => Ok(NodeKey::Rootfs(*d, child.0)),
                    Ok(None) => Err(missing()),
                    Err(e) => Err(self.open_images.error(d, e)),
                }
            }
            // The read-only connection's root: `<hex>` is that digest's `rootfs/`.
            NodeKey::TreeConnectionRoot => {
                let d = name_str(name)
                    .ok()
                    .and_then(store::Digest::parse_hex)
                    .and_then(|d| self.primary_image(&d))
                    .ok_or_else(missing)?;
                self.child_key(&NodeKey::Digest(d), OsStr::new(ROOTFS))
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
    pub(super) fn attr_of(&self, key: &NodeKey) -> Result<(FileAttr, Duration)> {
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
            NodeKey::Digests => (dir(self.store.digest_count() as u64), TAGS_TTL),
            NodeKey::Private | NodeKey::TreeConnectionRoot => {
                let mut a = dir(0);
                a.perm = 0o555;
                (a, TAGS_TTL)
            }
            NodeKey::Metrics => (
                attr::synthetic(0, FileType::RegularFile, 0o444, 0, self.started),
                Duration::ZERO,
            ),
            NodeKey::TagsDir(p) => {
                let store::RepoDir { path, subdirs } = self
                    .store
                    .repo_dir(p)
                    .ok_or_else(|| Error::not_found(format!("tags/{p}")))?;
                let mut a = attr::from_metadata(0, FileType::Directory, &stat(&path)?, false);
                a.nlink = u32::try_from(2 + subdirs).unwrap_or(u32::MAX);
                a.size = 4096;
                (a, TAGS_TTL)
            }
            NodeKey::Tag(r, t) => {
                let (tag, link) = self
                    .store
                    .tag_link(r, t)
                    .ok_or_else(|| Error::not_found(format!("tags/{r}/{t}")))?;
                let m = stat(&link)?;
                let mut a = attr::from_metadata(0, FileType::Symlink, &m, false);
                a.perm = 0o777;
                a.size = self.link_text(r, &tag.key).len() as u64;
                (a, TAGS_TTL)
            }
            NodeKey::Digest(d) => {
                let p = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
                let mut a = attr::from_metadata(0, FileType::Directory, &stat(&p)?, true);
                a.size = 4096;
                if self.digest_ready(d, &p) {
                    a.nlink = 3;
                    (a, IMMUTABLE_TTL)
                } else {
                    // Its listing gains rootfs/ when the pull finishes: the mtime follows
                    // metadata.json so the kernel's cached listing is dropped then.
                    if let Ok(m) = std::fs::metadata(p.join("metadata.json"))
                        && let Ok(t) = m.modified()
                    {
                        a.mtime = a.mtime.max(t);
                    }
                    (a, PENDING_TTL)
                }
            }
            NodeKey::DigestFile(d, name) => {
                let dir = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
                let p = dir.join(name);
                let m = stat(&p)?;
                if !m.is_file() {
                    return Err(Error::not_found(p.display().to_string()));
                }
                // A pull in progress still rewrites its files (metadata.json's status):
                // they are immutable only once the digest is ready.
                let ttl = if self.digest_ready(d, &dir) {
                    IMMUTABLE_TTL
                } else {
                    PENDING_TTL
                };
                (attr::from_metadata(0, FileType::RegularFile, &m, true), ttl)
            }
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(d)?;
                let i = img
                    .inode(Nid(*nid))
                    .map_err(|e| self.open_images.error(d, e))?;
                (rootfs::attr_of(&i), IMMUTABLE_TTL)
            }
            NodeKey::Gone(ino) => return Err(Error::not_found(format!("inode {ino} was removed"))),
        })
    }

    pub(super) fn getattr(&self, ino: u64) -> Result<(FileAttr, Duration)> {
        if let Some((d, nid, img)) = self.open_images.by_ino(ino) {
            let i = img.inode(nid).map_err(|e| self.open_images.error(&d, e))?;
            let mut a = rootfs::attr_of(&i);
            a.ino = INodeNo(ino);
            return Ok((a, IMMUTABLE_TTL));
        }
        let key = self.key(ino)?;
        let (mut a, ttl) = self.attr_of(&key)?;
        a.ino = INodeNo(ino);
        Ok((a, ttl))
    }

    /// Looks `name` up in `parent` and counts the kernel's new reference.
    ///
    /// A name missing from an image directory is an entry numbered 0 (nothing counted),
    /// which the kernel keeps as a negative entry for its TTL instead of asking again at
    /// every probe of the name (a `PATH` search, an interpreter's imports, a symlink to
    /// nowhere). An image never changes, and leaves the kernel's view with its `rootfs`
    /// entry; elsewhere a name may appear (a tag, a pull): ENOENT, not cached.
    pub(super) fn lookup(&self, parent: u64, name: &OsStr) -> Result<(FileAttr, Duration)> {
        let key = match self.key(parent)? {
            NodeKey::Rootfs(d, nid) => {
                let found = self
                    .image(&d)?
                    .lookup(Nid(nid), name.as_bytes())
                    .map_err(|e| self.open_images.error(&d, e))?;
                let Some(child) = found else {
                    let absent = attr::synthetic(0, FileType::RegularFile, 0, 0, UNIX_EPOCH);
                    return Ok((absent, IMMUTABLE_TTL));
                };
                NodeKey::Rootfs(d, child.0)
            }
            key => self.child_key(&key, name)?,
        };
        self.entry(key)
    }

    pub(super) fn entry(&self, key: NodeKey) -> Result<(FileAttr, Duration)> {
        // An image inode is counted only with its image open (the invariant of rootfs.rs):
        // if its digest left the store since the image was read here, the image is kept.
        let image = match &key {
            NodeKey::Rootfs(d, _) => Some((*d, self.image(d)?)),
            _ => None,
        };
        let (mut a, ttl) = self.attr_of(&key)?;
        let mut inodes = self.inodes.lock();
        a.ino = INodeNo(inodes.lookup(key));
        if let Some((d, img)) = image {
            // Numbered first: the image is kept with its slot, so that requests naming
            // the inode find it by number.
            self.open_images.keep(&d, img, inodes.slot_of(&d));
        }
        Ok((a, ttl))
    }

    pub(super) fn forget(&self, ino: u64, n: u64) {
        let released = {
            let mut inodes = self.inodes.lock();
            match inodes.forget(ino, n).and_then(|k| k.image()) {
                Some(d) if !inodes.holds(&d) => {
                    if self.open_images.close(&d) {
                        info!(
                            "released the image of sha256:{d}, which another writer removed \
                             from the store: the kernel forgot the last of its inodes"
                        );
                    }
                    // A kernel tree's image waits for the tree too (image_trees).
                    inodes
                        .zombies
                        .remove(&d)
                        .filter(|p| !self.kernel_held.lock().is_waiting(p))
                        .map(|p| (d, p))
                }
                _ => None,
            }
        };
        if let Some((d, trashed)) = released {
            self.store.release_trashed(&d.digest, &trashed);
        }
    }

    /// The directory of `image` left the store (our GC collected it, or another writer
    /// removed it: hypeman's `RemoveAll`, `imagefs gc`). Its image is closed unless the
    /// kernel holds inodes of it: then it stays open and serves them (its open file keeps the
    /// removed image's bytes) until [`forget`](Self::forget) of the last one.
    pub(super) fn image_left(&self, image: &ImageId) {
        let inodes = self.inodes.lock();
        if !inodes.holds(image) {
            self.open_images.close(image);
        } else if !inodes.zombies.contains_key(image) && self.open_images.left_in_use(image) {
            // (A collection of ours keeps the directory in the trash and logs that itself.)
            info!(
                "sha256:{image} left the store (another writer removed it) while in use \
                 through the mount: its open image serves what the kernel holds until it lets go"
            );
        }
    }

    /// The open image of `d`.
    pub(super) fn image(&self, d: &ImageId) -> Result<Arc<imagefs_erofs::Image>> {
        // Every request inside an image asks: no path built once it is open.
        if let Some(img) = self.open_images.cached(d) {
            return Ok(img);
        }
        let dir = self
            .digest_dir(d)
            .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
        self.open_images.get(d, &dir)
    }

    /// An extended attribute's value (`Some(name)`) or the list of names (`None`).
    pub(super) fn xattr(&self, ino: u64, name: Option<&OsStr>) -> Result<Vec<u8>> {
        let no_data = || Error::new(fuser::Errno::ENODATA, Level::Debug, "no such attribute");
        match self.key(ino)? {
            NodeKey::Rootfs(d, nid) => {
                let img = self.image(&d)?;
                rootfs::xattr(&img, Nid(nid), name.map(OsStr::as_bytes))
                    .map_err(|e| self.open_images.error(&d, e))?
                    .ok_or_else(no_data)
            }
            _ if name.is_some() => Err(no_data()),
            _ => Ok(Vec::new()),
        }
    }

    /// The directory behind an entry of `digests/`: in the store, or, for a collected
    /// directory still in use, in the trash. A legacy directory that left the store while
    /// `content/<hex>` is there was promoted into it (by a cross-repository tag, or by
    /// content hypeman's clone): the same image, served from there.
    pub(super) fn digest_dir(&self, d: &ImageId) -> Option<std::path::PathBuf> {
        let (key, zombie) = {
            let inodes = self.inodes.lock();
            (inodes.dir_of(d), inodes.zombies.get(d).cloned())
        };
        let key = key?;
        self.store.dir_path(&key).or(zombie).or_else(|| match key {
            DirKey::Legacy(_, digest) => self.store.dir_path(&DirKey::Content(digest)),
            DirKey::Content(_) => None,
        })
    }

    /// The image that `digests/<hex>` shows: the digest's primary directory.
    pub(super) fn primary_image(&self, d: &store::Digest) -> Option<ImageId> {
        let key = self.store.primary_dir(d)?;
        Some(self.inodes.lock().image_of(&key))
    }

    /// The names of an inode's xattrs, as listxattr wants them (each NUL-terminated);
    /// `trusted.*` only for a privileged caller.
    pub(super) fn xattr_names(&self, ino: u64, privileged: bool) -> Result<Vec<u8>> {
        let all = self.xattr(ino, None)?;
        if privileged {
            return Ok(all);
        }
        let mut out = Vec::with_capacity(all.len());
        for name in all.split_inclusive(|b| *b == 0) {
            if !name.starts_with(b"trusted.") {
                out.extend_from_slice(name);
            }
        }
        Ok(out)
    }

    pub(super) fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.key(ino)? {
            NodeKey::Tag(r, t) => {
                let key = self
                    .store
                    .tag(&r, &t)
                    .map(|t| t.key)
                    .ok_or_else(|| Error::not_found(format!("tags/{r}/{t}")))?;
                Ok(self.link_text(&r, &key).into_bytes())
            }
            NodeKey::Rootfs(d, nid) => self
                .image(&d)?
                .readlink(Nid(nid))
                .map_err(|e| self.open_images.error(&d, e)),
            k => Err(Error::new(
                fuser::Errno::EINVAL,
                Level::Debug,
                format!("{k:?}: not a symlink"),
            )),
        }
    }

    pub(super) fn open(&self, ino: u64, flags: i32) -> Result<(u64, Arc<Handle>)> {
        let key = self.key(ino)?;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(self.refuse_change(ino, "open for writing"));
        }
        let h = match &key {
            NodeKey::DigestFile(d, name) => {
                let dir = self
                    .digest_dir(d)
                    .ok_or_else(|| Error::not_found(format!("digests/{d}")))?;
                let changing = !self.digest_ready(d, &dir);
                let p = dir.join(name);
                let file = store::safe_open::open_regular(&p).map_err(|e| {
                    if name == ROOTFS_IMAGE {
                        self.open_images.open_error(d, &p, &e)
                    } else {
                        Error::io(p.display().to_string(), &e)
                    }
                })?;
                Handle::File { file, changing }
            }
            NodeKey::Rootfs(d, nid) => {
                let image = self.image(d)?;
                let i = image
                    .inode(Nid(*nid))
                    .map_err(|e| self.open_images.error(d, e))?;
                if i.kind == imagefs_erofs::FileKind::Directory {
                    return Err(Error::new(
                        fuser::Errno::EISDIR,
                        Level::Debug,
                        "is a directory",
                    ));
                }
                Handle::ImageFile {
                    id: *d,
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
        let fh = self.handles.write().insert(h.clone());
        Ok((fh, h))
    }

    /// A read without a handle: the read-only connection never opens (its OPEN answers
    /// ENOSYS), so the kernel names only the inode, always an image's regular file.
    pub(super) fn read_inode(&self, ino: u64, offset: u64, size: u32) -> Result<ReadBuf> {
        // The image-tree connection's reads, every one: by number, no shared lock taken
        // but the open images' read lock.
        if let Some((d, nid, image)) = self.open_images.by_ino(ino) {
            return self.read_image(&d, &image, nid, offset, size);
        }
        match self.key(ino)? {
            NodeKey::Rootfs(d, nid) => {
                let image = self.image(&d)?;
                self.read_image(&d, &image, Nid(nid), offset, size)
            }
            k => Err(Error::new(
                fuser::Errno::EISDIR,
                Level::Debug,
                format!("{k:?}: not a file"),
            )),
        }
    }

    /// READ on the main mount: through handle `fh`, or by number for an open that keeps
    /// none ([`NO_HANDLE`]: an image's file).
    pub(super) fn read_opened(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<ReadBuf> {
        if fh == NO_HANDLE {
            self.read_inode(ino, offset, size)
        } else {
            self.read(fh, offset, size)
        }
    }

    /// A read through an open handle: the handle holds what it reads (an image's file
    /// holds its open image), so neither the inode table nor the open images are asked.
    pub(super) fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadBuf> {
        let h =
            self.handles.read().get(fh).ok_or_else(|| {
                Error::new(fuser::Errno::EBADF, Level::Warn, format!("handle {fh}"))
            })?;
        match &*h {
            Handle::File { file, .. } => ReadBuf::fill(size as usize, |buf| {
                let mut got = 0;
                while got < buf.len() {
                    match file.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io("read", &e)),
                    }
                }
                Ok(got)
            }),
            Handle::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(ReadBuf::copy(&b[start..end]))
            }
            Handle::ImageFile { id, image, nid } => self.read_image(id, image, *nid, offset, size),
            Handle::Backed { .. } => Err(Error::new(
                fuser::Errno::EISDIR,
                Level::Debug,
                "read of a directory",
            )),
        }
    }

    fn read_image(
        &self,
        d: &ImageId,
        image: &imagefs_erofs::Image,
        nid: Nid,
        offset: u64,
        size: u32,
    ) -> Result<ReadBuf> {
        ReadBuf::fill(size as usize, |buf| {
            image
                .read(nid, offset, buf)
                .map_err(|e| self.open_images.error(d, e))
        })
    }

    /// `rootfs.erofs` and `rootfs/` are served only for `ready` digests: a pull in progress
    /// may still be writing the image.
    pub(super) fn digest_ready(&self, d: &ImageId, dir: &Path) -> bool {
        if self.ready.lock().contains(d) {
            return true;
        }
        let ready = is_ready(dir);
        if ready {
            self.ready.lock().insert(*d);
        }
        ready
    }

    /// The metrics file's text, made at open.
    fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let store::Census {
            tags,
            digests,
            dirs,
        } = self.store.census();
        let bytes: u64 = dirs.iter().map(|p| store::fsutil::tree_bytes(p)).sum();
        // Ours wait in the trash; those another writer removed, only as open images.
        let (in_use_only, inode_count) = {
            let inodes = self.inodes.lock();
            let kernel = self.kernel_held.lock();
            let n = inodes.zombies.len()
                + kernel.waiting_except(|p| inodes.zombies.values().any(|z| z == p));
            (n + self.open_images.left_count(), inodes.len())
        };
        self.metrics.render(&super::metrics::Gauges {
            tags,
            digests,
            store_bytes: bytes,
            collections: self.store.stats.collections.load(Relaxed),
            bytes_reclaimed: self.store.stats.bytes_reclaimed.load(Relaxed),
            in_use_only,
            gc_deferred: self.store.stats.gc_deferred.load(Relaxed),
            gc_deferred_collected: self.store.stats.gc_deferred_collected.load(Relaxed),
            gc_deferred_dropped: self.store.stats.gc_deferred_dropped.load(Relaxed),
            gc_deferred_waiting: self.store.deferred_gc_count(),
            dangling: self.metrics.dangling_now(|repo, tag, dir| {
                store::still_dangling(self.store.root(), repo, tag, dir)
            }),
            inodes: inode_count,
        })
    }
}

/// Whether a digest directory's metadata.json says `ready`.
fn is_ready(dir: &Path) -> bool {
    matches!(
        store::metadata::read_status(dir),
        Ok(store::metadata::Status::Ready)
    )
}

impl ImageFs {
    /// The text of a tag's symlink: up to the mount's root, then the `digests/` entry that
    /// serves its directory (`<hex>`, or `<hex>@<repo>`: see `store::images`).
    pub(super) fn link_text(&self, repo: &str, key: &DirKey) -> String {
        link_text(repo, &self.store.image_name(key))
    }
}

/// A tag's symlink text in `repo` for the `digests/` entry `entry`.
pub(super) fn link_text(repo: &str, entry: &str) -> String {
    format!("{}digests/{entry}", "../".repeat(names::depth(repo) + 1))
}
