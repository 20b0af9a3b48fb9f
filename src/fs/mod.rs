//! The FUSE adapter: kernel requests in, replies out. Each handler calls the logic in
//! [`core`](self) and replies; every error reply goes through [`fail!`], which logs the
//! reason at the error's level, counts it, and replies with its errno.
//!
//! The mounted tree (DESIGN.md section 2): `tags/` mirrors the store's tags as symlinks
//! into `digests/`, `digests/<hex>/` serves a digest directory's files read-only, and
//! `.imagefs/metrics` the counters.

mod attr;
mod changes;
mod core;
mod dirs;
mod errno;
mod handles;
pub mod inodes;
mod metrics;
mod notify;
mod rootfs;
pub mod target;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use parking_lot::Mutex;

pub use errno::Error;
use handles::{Handle, Handles};
use inodes::Inodes;
use metrics::{Metrics, Op};
use notify::Invalidator;
pub use notify::Signal;

use crate::store::Store;

pub struct ImageFs {
    store: Arc<Store>,
    mountpoint: PathBuf,
    inodes: Arc<Mutex<Inodes>>,
    handles: Mutex<Handles>,
    images: rootfs::Images,
    /// Digests seen `ready`: a finished pull does not go back, so metadata.json is read
    /// once per digest, not on every lookup and getattr under `digests/<hex>/`.
    ready: Mutex<std::collections::HashSet<crate::store::Digest>>,
    inval: Invalidator,
    /// Invalidations for the read-only connection that serves the image trees.
    inval_images: Invalidator,
    /// Raised when digests come or go, for the thread that keeps image trees mounted.
    pub digests_changed: Signal,
    /// Whether image trees are mounted of their own (the read-only connection runs).
    trees: AtomicBool,
    metrics: Metrics,
    /// Use FUSE passthrough for store files when the kernel offers it.
    want_passthrough: bool,
    passthrough: AtomicBool,
    started: SystemTime,
}

/// Logs and counts an error, then replies with its errno.
macro_rules! fail {
    ($self:ident, $reply:expr, $op:expr, $err:expr) => {{
        let e: Error = $err;
        log::log!(e.level, "{}: {} ({})", $op, e.reason, e.errno_name());
        $self.metrics.error(i32::from(e.errno));
        $reply.error(e.errno)
    }};
}

impl ImageFs {
    pub fn new(store: Arc<Store>, mountpoint: &Path, passthrough: bool) -> ImageFs {
        let inodes = Arc::new(Mutex::new(Inodes::default()));
        store.set_in_use(Arc::new(Usage(inodes.clone())));
        ImageFs {
            store,
            mountpoint: mountpoint.to_path_buf(),
            inodes,
            handles: Mutex::new(Handles::default()),
            images: rootfs::Images::default(),
            ready: Mutex::default(),
            inval: Invalidator::default(),
            inval_images: Invalidator::default(),
            digests_changed: Signal::default(),
            trees: AtomicBool::new(false),
            metrics: Metrics::default(),
            want_passthrough: passthrough,
            passthrough: AtomicBool::new(false),
            started: SystemTime::now(),
        }
    }

    /// Follows other writers of the store: a thread waits for store events and applies
    /// them (index, then kernel caches) within a fraction of a second.
    pub fn start_watcher(self: &Arc<Self>) -> Result<(), String> {
        let fd = self.store.watch().map_err(|e| e.to_string())?;
        let fs = Arc::clone(self);
        std::thread::Builder::new()
            .name("imagefs-watch".into())
            .spawn(move || {
                // SAFETY: the store keeps the inotify descriptor open for its lifetime,
                // which this thread's Arc outlives.
                let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                loop {
                    let mut pfd = [nix::poll::PollFd::new(bfd, nix::poll::PollFlags::POLLIN)];
                    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE) {
                        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            log::error!(
                                "watching the store: {e}; other writers' changes will not show"
                            );
                            return;
                        }
                    }
                    // Let a burst of changes settle, then apply it in one go.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    match fs.store.sync_external() {
                        Ok(changes) => fs.apply_changes(changes),
                        Err(e) => log::warn!("applying other writers' changes: {e}"),
                    }
                }
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(())
    }

    /// Starts sending cache invalidations through the session's notifier.
    pub fn start_notifier(&self, notifier: Notifier) {
        self.inval.start(notifier);
    }

    /// The same for the read-only connection's session.
    pub fn start_images_notifier(&self, notifier: Notifier) {
        self.inval_images.start(notifier);
        self.trees.store(true, Ordering::Relaxed);
    }

    /// Every digest of the store.
    pub fn digests(&self) -> Vec<crate::store::Digest> {
        self.store.digests()
    }

    /// Can digest `d`'s `rootfs/` be served now (present in the store and ready)?
    pub fn serves_tree(&self, d: &crate::store::Digest) -> bool {
        self.digest_dir(d)
            .is_some_and(|dir| self.digest_ready(d, &dir))
    }

    /// Does the kernel hold an inode of digest `d`'s image tree? Before its tree is
    /// mounted of its own, that means the main mount's copy is (or was just) in use.
    pub fn tree_in_use(&self, d: &crate::store::Digest) -> bool {
        self.inodes.lock().holds_tree(d)
    }

    /// Asks the kernel to drop its cached `digests/<hex>/rootfs` dentry (and whatever it
    /// caches below it that nobody uses), in both connections, so that a tree held only by
    /// the cache is let go.
    pub fn drop_cached_tree(&self, d: &crate::store::Digest) {
        let limit = std::time::Duration::from_secs(1);
        let ino = self.inodes.lock().ino_of(&inodes::NodeKey::Digest(*d));
        if let Some(ino) = ino {
            self.inval
                .send_and_wait(notify::Inval::Entry(ino, rootfs::ROOTFS.into()), limit);
        }
        // And the read-only connection's entry, left cached by a mount of it that someone
        // detached (root there is inode 1).
        self.inval_images.send_and_wait(
            notify::Inval::Entry(fuser::INodeNo::ROOT.0, d.hex().into()),
            limit,
        );
    }

    /// Is digest `d` still in the store?
    pub fn has_digest(&self, d: &crate::store::Digest) -> bool {
        self.store.digest_path(d).is_some()
    }
}

/// Open flags for files whose bytes never change while open: the kernel keeps their pages,
/// and, since nothing is ever written through the mount, does not send FLUSH on close.
const IMMUTABLE_FILE: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// getxattr/listxattr: the size when asked for it, the bytes when they fit, else ERANGE.
fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX));
    } else if v.len() <= size as usize {
        reply.data(v);
    } else {
        reply.error(Errno::ERANGE);
    }
}

/// What STATFS reports: the store's filesystem.
struct StatFs {
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    bsize: u32,
    namelen: u32,
    frsize: u32,
}

impl ImageFs {
    fn statfs(&self) -> Result<StatFs, Error> {
        let s = nix::sys::statvfs::statvfs(self.store.root())
            .map_err(|e| Error::io("statfs", &std::io::Error::from(e)))?;
        Ok(StatFs {
            blocks: s.blocks(),
            bfree: s.blocks_free(),
            bavail: s.blocks_available(),
            files: s.files(),
            ffree: s.files_free(),
            bsize: u32::try_from(s.block_size()).unwrap_or(4096),
            namelen: u32::try_from(s.name_max()).unwrap_or(255),
            frsize: u32::try_from(s.fragment_size()).unwrap_or(4096),
        })
    }
}

/// GC asks the inode table whether the kernel still holds a collected digest's nodes; if
/// so the directory is served from the trash until the last of them is forgotten.
struct Usage(Arc<Mutex<Inodes>>);

impl crate::store::InUse for Usage {
    fn retain(&self, digest: &crate::store::Digest, trashed: &Path) -> bool {
        let mut inodes = self.0.lock();
        if inodes.holds(digest) {
            inodes.zombies.insert(*digest, trashed.to_path_buf());
            true
        } else {
            false
        }
    }
}

/// Shared so that the session owns one reference and the daemon another (for the notifier).
/// One FUSE connection onto the filesystem; the session owns it, the daemon keeps the
/// [`ImageFs`] (for notifiers).
///
/// Two kinds. The main mount. And, with `images`, a second connection that serves the
/// image trees alone, on a read-only superblock: its root holds one (unlisted) entry per
/// ready digest, named by its hex, which is that image's root, and the daemon mounts
/// `<hex>` of it on `digests/<hex>/rootfs` of the main mount (`cli/rootfs_mounts.rs`).
/// Both share the inode table and numbers (an image's root is the same inode through
/// either), the open images, counters and in-use accounting.
///
/// Why a second connection, measured in `scripts/bench_rootfs.py`: on a writable
/// superblock the kernel drops a FUSE inode's cached atime after every uncached read or
/// listing, so the next stat costs a GETATTR round trip; and the main connection answers
/// OPEN (for passthrough of `rootfs.erofs` and for `.imagefs/metrics`), which costs two
/// round trips per file. On the second one the superblock is read-only and OPEN, OPENDIR
/// and FLUSH answer ENOSYS, so a warm walk or `tar` of an image sends no request at all.
pub struct Shared {
    fs: Arc<ImageFs>,
    images: bool,
}

impl Shared {
    /// The main mount.
    pub fn main(fs: Arc<ImageFs>) -> Shared {
        Shared { fs, images: false }
    }

    /// The read-only connection of image trees.
    pub fn images(fs: Arc<ImageFs>) -> Shared {
        Shared { fs, images: true }
    }

    /// The inode table's number for this connection's `ino`: the image-trees connection's
    /// root (1 to the kernel) is [`inodes::IMAGES_ROOT`]; every other number is shared.
    fn node(&self, ino: INodeNo) -> u64 {
        if self.images && ino == INodeNo::ROOT {
            inodes::IMAGES_ROOT
        } else {
            ino.0
        }
    }

    /// The other way: the number the kernel knows for table inode `ino`.
    fn kernel_ino(&self, ino: u64) -> INodeNo {
        if self.images && ino == inodes::IMAGES_ROOT {
            INodeNo::ROOT
        } else {
            INodeNo(ino)
        }
    }

    fn kernel_attr(&self, mut a: FileAttr) -> FileAttr {
        a.ino = self.kernel_ino(a.ino.0);
        a
    }
}

impl Filesystem for Shared {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        if !self.images
            && self.fs.want_passthrough
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            // Depth 1: backing files are on a plain filesystem, and an overlayfs may still
            // stack on top of this mount.
            && config.set_max_stack_depth(1).is_ok()
        {
            self.fs.passthrough.store(true, Ordering::Relaxed);
            log::info!("FUSE passthrough enabled for store files");
        }
        // Parallel lookups and readdirs in one directory; attributes with directory
        // listings (READDIRPLUS, used by the kernel when a listing is followed by stats).
        let mut wanted = vec![
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ];
        if !self.images {
            // Listings are cached (no OPENDIR): at the start of a listing the kernel checks
            // the directory's mtime, so a repository changed by another writer is re-read.
            // Image trees never change.
            wanted.push(InitFlags::FUSE_AUTO_INVAL_DATA);
        }
        for cap in wanted {
            if caps.contains(cap) {
                let _ = config.add_capabilities(cap);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = &self.fs;
        fs.metrics.request(Op::Lookup);
        match fs.lookup(self.node(parent), name) {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => fail!(fs, reply, "lookup", e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(self.node(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = &self.fs;
        fs.metrics.request(Op::GetAttr);
        match fs.getattr(self.node(ino)) {
            Ok((a, ttl)) => reply.attr(&ttl, &self.kernel_attr(a)),
            Err(e) => fail!(fs, reply, "getattr", e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::SetAttr);
        fail!(
            fs,
            reply,
            "setattr",
            fs.refuse_change(self.node(ino), "setattr")
        )
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = &self.fs;
        fs.metrics.request(Op::ReadLink);
        match fs.readlink(self.node(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => fail!(fs, reply, "readlink", e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Mknod);
        fail!(
            fs,
            reply,
            "mknod",
            fs.refuse_create(self.node(parent), name, "mknod")
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Mkdir);
        let r = fs.mkdir(self.node(parent), name, mode & !umask, req.uid(), req.gid());
        fs.apply_changes(fs.store.take_changes());
        match r {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => fail!(
                fs,
                reply,
                "mkdir",
                e.context(fs.describe(self.node(parent), name))
            ),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.fs;
        fs.metrics.request(Op::Unlink);
        let r = fs.unlink(self.node(parent), name);
        fs.apply_changes(fs.store.take_changes());
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(
                fs,
                reply,
                "unlink",
                e.context(fs.describe(self.node(parent), name))
            ),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.fs;
        fs.metrics.request(Op::Rmdir);
        let r = fs.rmdir(self.node(parent), name);
        fs.apply_changes(fs.store.take_changes());
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(
                fs,
                reply,
                "rmdir",
                e.context(fs.describe(self.node(parent), name))
            ),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Symlink);
        let r = fs.symlink(self.node(parent), link_name, target);
        fs.apply_changes(fs.store.take_changes());
        match r {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => {
                let what = format!(
                    "{} -> {}",
                    fs.describe(self.node(parent), link_name),
                    target.display()
                );
                fail!(fs, reply, "symlink", e.context(what))
            }
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Rename);
        let r = fs.rename(
            self.node(parent),
            name,
            self.node(newparent),
            newname,
            flags.bits(),
        );
        fs.apply_changes(fs.store.take_changes());
        match r {
            Ok(()) => reply.ok(),
            Err(e) => {
                let what = format!(
                    "{} -> {}",
                    fs.describe(self.node(parent), name),
                    fs.describe(self.node(newparent), newname)
                );
                fail!(fs, reply, "rename", e.context(what))
            }
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Link);
        fail!(
            fs,
            reply,
            "link",
            fs.refuse_create(self.node(newparent), newname, "link")
        )
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = &self.fs;
        fs.metrics.request(Op::Open);
        if self.images {
            // ENOSYS: the kernel opens every file of this connection itself from now on,
            // keeping its page cache (images never change); reads name the inode.
            return reply.error(Errno::ENOSYS);
        }
        let (fh, h) = match fs.open(self.node(ino), flags.0) {
            Ok(x) => x,
            Err(e) => return fail!(fs, reply, "open", e),
        };
        match &*h {
            Handle::File { file, .. } if fs.passthrough.load(Ordering::Relaxed) => {
                // One backing id per inode, reused by every open of it.
                let existing = fs.handles.lock().backing(self.node(ino));
                let id = match existing {
                    Some(id) => Some(id),
                    None => match reply.open_backing(file) {
                        Ok(id) => {
                            let id = Arc::new(id);
                            fs.handles.lock().set_backing(self.node(ino), &id);
                            Some(id)
                        }
                        Err(e) => {
                            log::debug!("passthrough unavailable for inode {ino}: {e}");
                            None
                        }
                    },
                };
                match id {
                    Some(id) => {
                        fs.handles.lock().attach_backing(fh, id.clone());
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id)
                    }
                    None => reply.opened(FileHandle(fh), IMMUTABLE_FILE),
                }
            }
            Handle::File { .. } | Handle::ImageFile { .. } => {
                reply.opened(FileHandle(fh), IMMUTABLE_FILE)
            }
            _ => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            ),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Read);
        let r = if self.images {
            fs.read_inode(self.node(ino), offset, size)
        } else {
            fs.read(fh.0, offset, size)
        };
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => fail!(fs, reply, "read", e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Write);
        fail!(
            fs,
            reply,
            "write",
            fs.refuse_change(self.node(ino), "write")
        )
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written through the mount. ENOSYS: the kernel stops sending
        // FLUSH on close (for files opened without FOPEN_NOFLUSH, e.g. with no OPEN).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.handles.lock().remove(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS: the kernel stops asking, opens directories itself and caches listings
        // (see dirs.rs for how changed listings are invalidated).
        reply.error(Errno::ENOSYS);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::ReaddirPlus);
        let r = fs.readdirplus(self.node(ino), offset, |off, name, attr, ttl| {
            let a = self.kernel_attr(*attr);
            reply.add(a.ino, off, name, &ttl, &a, Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(fs, reply, "readdirplus", e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Readdir);
        let r = fs.readdir(self.node(ino), offset, |ino, off, kind, name| {
            reply.add(self.kernel_ino(ino), off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(fs, reply, "readdir", e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = &self.fs;
        fs.metrics.request(Op::StatFs);
        match fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => fail!(fs, reply, "statfs", e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::SetXattr);
        fail!(
            fs,
            reply,
            "setxattr",
            fs.refuse_change(self.node(ino), "setxattr")
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let fs = &self.fs;
        fs.metrics.request(Op::GetXattr);
        match fs.xattr(self.node(ino), Some(name)) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(fs, reply, "getxattr", e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = &self.fs;
        fs.metrics.request(Op::ListXattr);
        match fs.xattr(self.node(ino), None) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(fs, reply, "listxattr", e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        let fs = &self.fs;
        fs.metrics.request(Op::RemoveXattr);
        fail!(
            fs,
            reply,
            "removexattr",
            fs.refuse_change(self.node(ino), "removexattr")
        )
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Terminal probes (TCGETS from isatty) and the like: not a terminal, quietly.
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // default_permissions: the kernel checks modes itself.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let fs = &self.fs;
        fs.metrics.request(Op::Create);
        fail!(
            fs,
            reply,
            "create",
            fs.refuse_create(self.node(parent), name, "create")
        )
    }
}
