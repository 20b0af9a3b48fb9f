//! The FUSE adapter: kernel requests in, replies out. Each handler translates the
//! connection's inode numbers, calls the filesystem's logic, and replies; every error reply
//! goes through [`Connection::fail`], which logs the reason at the error's level, counts
//! it, and replies with its errno. Nothing is decided here but which connection answers
//! what. Every counted request is counted before it runs (an open of the metrics file
//! sees itself).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};

use super::ImageFs;
use super::errno::{Error, Result};
use super::inodes;
use super::metrics::Op;
use super::passthrough::Opened;

/// A reply that can carry an errno: every fuser reply type this adapter uses.
trait ErrorReply {
    fn errno(self, e: Errno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn errno(self, e: Errno) {
                self.error(e)
            }
        }
    )*};
}

error_reply!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

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

/// One FUSE connection onto the filesystem; its session owns it, the daemon keeps the
/// [`ImageFs`] (for notifiers).
///
/// Two kinds. The main mount. And the image-tree connection, which serves the image trees
/// alone, on a read-only superblock: its root holds one (unlisted) entry per ready digest,
/// named by its hex, which is that image's root, and the daemon's rootfs mounts put `<hex>`
/// of it on `digests/<hex>/rootfs` of the main mount (`daemon/rootfs_mounts.rs`). Both
/// share the inode table and numbers (an image's root is the same inode through either),
/// the open images, counters and in-use accounting.
///
/// Why a second connection, measured in `scripts/bench_rootfs.py`: on a writable
/// superblock the kernel drops a FUSE inode's cached atime after every uncached read or
/// listing, so the next stat costs a GETATTR round trip; and the main connection answers
/// OPEN (for passthrough of `rootfs.erofs` and for `.imagefs/metrics`), which costs two
/// round trips per file. On the image-tree connection the superblock is read-only and OPEN,
/// OPENDIR and FLUSH answer ENOSYS, so a warm walk or `tar` of an image sends no request.
pub(crate) struct Connection {
    fs: Arc<ImageFs>,
    /// This is the image-tree connection.
    image_trees: bool,
}

impl Connection {
    /// The main mount.
    pub(crate) fn main(fs: Arc<ImageFs>) -> Connection {
        Connection {
            fs,
            image_trees: false,
        }
    }

    /// The image-tree connection.
    pub(super) fn image_trees(fs: Arc<ImageFs>) -> Connection {
        Connection {
            fs,
            image_trees: true,
        }
    }

    /// The inode table's number for this connection's `ino`: the image-tree connection's
    /// root (1 to the kernel) is [`inodes::TREE_CONNECTION_ROOT`]; every other number is
    /// shared.
    fn node(&self, ino: INodeNo) -> u64 {
        if self.image_trees && ino == INodeNo::ROOT {
            inodes::TREE_CONNECTION_ROOT
        } else {
            ino.0
        }
    }

    /// The other way: the number the kernel knows for table inode `ino`.
    fn kernel_ino(&self, ino: u64) -> INodeNo {
        if self.image_trees && ino == inodes::TREE_CONNECTION_ROOT {
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

impl Connection {
    /// Counts a request of kind `op`, before it runs (an open of the metrics file counts
    /// itself).
    fn count(&self, op: Op) -> &ImageFs {
        self.fs.metrics.request(op);
        &self.fs
    }

    /// Replies with `r`'s value through `ok`, or fails with its error.
    fn reply<R: ErrorReply, T>(&self, op: Op, reply: R, r: Result<T>, ok: impl FnOnce(R, T)) {
        match r {
            Ok(v) => ok(reply, v),
            Err(e) => self.fail(op, reply, e),
        }
    }

    /// Counts a request, runs it, and replies: the shape of every counted handler.
    fn serve<R: ErrorReply, T>(
        &self,
        op: Op,
        reply: R,
        run: impl FnOnce(&ImageFs) -> Result<T>,
        ok: impl FnOnce(R, T),
    ) {
        let r = run(self.count(op));
        self.reply(op, reply, r, ok);
    }

    /// Every error reply: logs the reason at the error's level, counts the errno, and
    /// replies with it.
    fn fail<R: ErrorReply>(&self, op: Op, reply: R, e: Error) {
        log::log!(e.level, "{}: {} ({})", op.name(), e.reason, e.errno_name());
        self.fs.metrics.error(i32::from(e.errno));
        reply.errno(e.errno);
    }

    /// Counts a request that is always refused, and fails with the refusal.
    fn refuse<R: ErrorReply>(&self, op: Op, reply: R, refusal: impl FnOnce(&ImageFs) -> Error) {
        let e = refusal(self.count(op));
        self.fail(op, reply, e);
    }

    /// `name` in directory `parent`, for an error's context.
    fn about(&self, parent: INodeNo, name: &OsStr) -> String {
        self.fs.describe(self.node(parent), name)
    }
}

impl Filesystem for Connection {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        if !self.image_trees
            && self.fs.wants_passthrough()
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            // Depth 1: backing files are on a plain filesystem, and an overlayfs may still
            // stack on top of this mount.
            && config.set_max_stack_depth(1).is_ok()
        {
            self.fs.passthrough_agreed();
        }
        // Parallel lookups and readdirs in one directory; attributes with directory
        // listings (READDIRPLUS, used by the kernel when a listing is followed by stats).
        let mut wanted = vec![
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ];
        if !self.image_trees {
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
        self.serve(
            Op::Lookup,
            reply,
            |fs| fs.lookup(self.node(parent), name),
            entry,
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(self.node(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(
            Op::GetAttr,
            reply,
            |fs| fs.getattr(self.node(ino)),
            |reply, (a, ttl)| reply.attr(&ttl, &self.kernel_attr(a)),
        );
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
        self.refuse(Op::SetAttr, reply, |fs| {
            fs.refuse_change(self.node(ino), "setattr")
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(
            Op::ReadLink,
            reply,
            |fs| fs.readlink(self.node(ino)),
            |reply, t| reply.data(&t),
        );
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
        self.refuse(Op::Mknod, reply, |fs| {
            fs.refuse_create(self.node(parent), name, "mknod")
        });
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
        let mode = mode & !umask;
        self.serve(
            Op::Mkdir,
            reply,
            |fs| {
                fs.mkdir(self.node(parent), name, mode, req.uid(), req.gid())
                    .map_err(|e| e.context(self.about(parent, name)))
            },
            entry,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(
            Op::Unlink,
            reply,
            |fs| {
                fs.unlink(self.node(parent), name)
                    .map_err(|e| e.context(self.about(parent, name)))
            },
            |reply, ()| reply.ok(),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(
            Op::Rmdir,
            reply,
            |fs| {
                fs.rmdir(self.node(parent), name)
                    .map_err(|e| e.context(self.about(parent, name)))
            },
            |reply, ()| reply.ok(),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.serve(
            Op::Symlink,
            reply,
            |fs| {
                fs.symlink(self.node(parent), link_name, target)
                    .map_err(|e| {
                        let what =
                            format!("{} -> {}", self.about(parent, link_name), target.display());
                        e.context(what)
                    })
            },
            entry,
        );
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
        self.serve(
            Op::Rename,
            reply,
            |fs| {
                let (from, to) = (self.node(parent), self.node(newparent));
                fs.rename(from, name, to, newname, flags.bits())
                    .map_err(|e| {
                        let what = format!(
                            "{} -> {}",
                            self.about(parent, name),
                            self.about(newparent, newname)
                        );
                        e.context(what)
                    })
            },
            |reply, ()| reply.ok(),
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.refuse(Op::Link, reply, |fs| {
            fs.refuse_create(self.node(newparent), newname, "link")
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.count(Op::Open);
        if self.image_trees {
            // ENOSYS: the kernel opens every file of this connection itself from now on,
            // keeping its page cache (images never change); reads name the inode.
            return reply.error(Errno::ENOSYS);
        }
        let r = fs.open_file(self.node(ino), flags.0, |f| reply.open_backing(f));
        self.reply(Op::Open, reply, r, |reply, opened| match opened {
            Opened::Passthrough { fh, flags, id } => {
                reply.opened_passthrough(FileHandle(fh), flags, &id)
            }
            Opened::Read { fh, flags } => reply.opened(FileHandle(fh), flags),
        });
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
        self.serve(
            Op::Read,
            reply,
            |fs| {
                if self.image_trees {
                    fs.read_inode(self.node(ino), offset, size)
                } else {
                    fs.read_opened(self.node(ino), fh.0, offset, size)
                }
            },
            |reply, b| reply.data(&b),
        );
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
        self.refuse(Op::Write, reply, |fs| {
            fs.refuse_change(self.node(ino), "write")
        });
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
        self.fs.release(fh.0);
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
        let fs = self.count(Op::ReaddirPlus);
        let r = fs.readdirplus(self.node(ino), offset, |off, name, attr, ttl| {
            let a = self.kernel_attr(*attr);
            reply.add(a.ino, off, name, &ttl, &a, Generation(0))
        });
        self.reply(Op::ReaddirPlus, reply, r, |reply, ()| reply.ok());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.count(Op::Readdir);
        let r = fs.readdir(self.node(ino), offset, |ino, off, kind, name| {
            reply.add(self.kernel_ino(ino), off, kind, name)
        });
        self.reply(Op::Readdir, reply, r, |reply, ()| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.serve(
            Op::StatFs,
            reply,
            |fs| fs.statfs(),
            |reply, s| {
                reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                )
            },
        );
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
        self.refuse(Op::SetXattr, reply, |fs| {
            fs.refuse_change(self.node(ino), "setxattr")
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(
            Op::GetXattr,
            reply,
            |fs| fs.xattr(self.node(ino), Some(name)),
            |reply, v| xattr_reply(reply, &v, size),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        // As the kernel's erofs: `trusted.*` names are listed to root only (the kernel
        // already refuses to read their values to anyone else).
        let privileged = req.uid() == 0;
        self.serve(
            Op::ListXattr,
            reply,
            |fs| fs.xattr_names(self.node(ino), privileged),
            |reply, v| xattr_reply(reply, &v, size),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refuse(Op::RemoveXattr, reply, |fs| {
            fs.refuse_change(self.node(ino), "removexattr")
        });
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
        self.refuse(Op::Create, reply, |fs| {
            fs.refuse_create(self.node(parent), name, "create")
        });
    }
}

/// A LOOKUP-like reply: the entry's attributes and their TTL.
fn entry(reply: ReplyEntry, (a, ttl): (FileAttr, std::time::Duration)) {
    reply.entry(&ttl, &a, Generation(0));
}
