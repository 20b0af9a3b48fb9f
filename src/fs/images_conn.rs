//! The second FUSE connection: the image trees alone, on a read-only superblock.
//!
//! Its root holds one (unlisted) entry per ready digest, named by its hex, which is that
//! image's root; the daemon bind-mounts `<hex>` onto `digests/<hex>/rootfs` of the main
//! mount (`cli/rootfs_mounts.rs`). It shares the main connection's [`ImageFs`]: the same
//! inode table and numbers (an image's root is the same inode through either), the same
//! open images, counters and in-use accounting.
//!
//! Why a second connection, measured in `scripts/bench_rootfs.py`: on a writable
//! superblock the kernel drops a FUSE inode's cached atime after every uncached read or
//! listing, so the next stat costs a GETATTR round trip; and the main connection answers
//! OPEN (for passthrough of `rootfs.erofs` and for `.imagefs/metrics`), which costs two
//! round trips per file. Here the superblock is read-only and OPEN, OPENDIR and FLUSH
//! answer ENOSYS, so a warm walk or `tar` of an image sends no request at all.

use std::ffi::OsStr;

use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::inodes::IMAGES_ROOT;
use super::metrics::Op;
use super::{Error, ImageFs, xattr_reply};

/// The read-only connection's [`Filesystem`]; the main one is [`super::Shared`].
pub struct ImagesConn(pub std::sync::Arc<ImageFs>);

/// This connection's inode 1 is the table's [`IMAGES_ROOT`]; every other number is shared.
fn node(ino: INodeNo) -> u64 {
    if ino == INodeNo::ROOT {
        IMAGES_ROOT
    } else {
        ino.0
    }
}

fn kernel_ino(ino: u64) -> u64 {
    if ino == IMAGES_ROOT {
        INodeNo::ROOT.0
    } else {
        ino
    }
}

impl Filesystem for ImagesConn {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if caps.contains(cap) {
                let _ = config.add_capabilities(cap);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = &self.0;
        fs.metrics.request(Op::Lookup);
        match fs.lookup(node(parent), name) {
            Ok((a, ttl)) => reply.entry(&ttl, &a, Generation(0)),
            Err(e) => fail!(fs, reply, "lookup", e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.forget(node(ino), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = &self.0;
        fs.metrics.request(Op::GetAttr);
        match fs.getattr(node(ino)) {
            Ok((mut a, ttl)) => {
                a.ino = INodeNo(kernel_ino(a.ino.0));
                reply.attr(&ttl, &a)
            }
            Err(e) => fail!(fs, reply, "getattr", e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = &self.0;
        fs.metrics.request(Op::ReadLink);
        match fs.readlink(node(ino)) {
            Ok(t) => reply.data(&t),
            Err(e) => fail!(fs, reply, "readlink", e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS: the kernel opens every file of this connection itself from now on,
        // keeping its page cache (images never change); reads name the inode.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = &self.0;
        fs.metrics.request(Op::Read);
        match fs.read_inode(node(ino), offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => fail!(fs, reply, "read", e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = &self.0;
        fs.metrics.request(Op::Readdir);
        let r = fs.readdir(node(ino), offset, |i, off, kind, name| {
            reply.add(INodeNo(kernel_ino(i)), off, kind, name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(fs, reply, "readdir", e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let fs = &self.0;
        fs.metrics.request(Op::ReaddirPlus);
        let r = fs.readdirplus(node(ino), offset, |off, name, attr, ttl| {
            let mut a = *attr;
            a.ino = INodeNo(kernel_ino(a.ino.0));
            reply.add(a.ino, off, name, &ttl, &a, Generation(0))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => fail!(fs, reply, "readdirplus", e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = &self.0;
        fs.metrics.request(Op::StatFs);
        match fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => fail!(fs, reply, "statfs", e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let fs = &self.0;
        fs.metrics.request(Op::GetXattr);
        match fs.xattr(node(ino), Some(name)) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(fs, reply, "getxattr", e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = &self.0;
        fs.metrics.request(Op::ListXattr);
        match fs.xattr(node(ino), None) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => fail!(fs, reply, "listxattr", e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
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
}
