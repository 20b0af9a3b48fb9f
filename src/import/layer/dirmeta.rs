//! Directories' xattrs and times, held back until every layer is written, then set on the
//! whole tree in one walk ([`DirMeta::finish`]).
//!
//! - xattrs: a default ACL (`system.posix_acl_default`) set on a directory at once would be
//!   inherited by every file created below it afterwards, which the image does not hold.
//! - times: a directory's mtime changes with every child written or removed after its own
//!   entry (later in the layer, by a later layer, by a whiteout). The image has what its
//!   last entry says, as `umoci unpack` leaves it (umoci puts a parent's time back after
//!   each entry it writes into it); a directory no entry describes has
//!   [`mtime::IMPLICIT_DIR_SECS`].
//!
//! Keyed by the directory's path in the tree (`""` is the root); what is removed or
//! replaced is forgotten, so a directory made again later starts afresh.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use super::{LayerError, entry_err};
use crate::import::{at, mtime};

/// What the last entry for a directory said of it.
#[derive(Debug, Clone)]
struct Held {
    xattrs: Vec<(CString, Vec<u8>)>,
    mtime: (i64, u32),
}

#[derive(Default)]
pub struct DirMeta(BTreeMap<Vec<u8>, Held>);

impl DirMeta {
    /// The directory at `path` has the xattrs `xattrs` and the mtime `mtime` (a later entry
    /// for it replaces what an earlier one set).
    pub(super) fn set(&mut self, path: Vec<u8>, xattrs: &[(CString, Vec<u8>)], mtime: (i64, u32)) {
        let xattrs = xattrs.to_vec();
        self.0.insert(path, Held { xattrs, mtime });
    }

    /// `path` and everything under it were removed.
    pub(super) fn forget(&mut self, path: &[u8]) {
        if path.is_empty() {
            self.0.clear();
            return;
        }
        self.0.remove(path);
        // "path/..." sorts between "path/" and "path0" ('0' follows '/').
        let mut lo = path.to_vec();
        lo.push(b'/');
        let mut hi = path.to_vec();
        hi.push(b'/' + 1);
        let below: Vec<Vec<u8>> = self.0.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in below {
            self.0.remove(&k);
        }
    }

    /// Sets the held-back xattrs and every directory's mtime, once the tree is complete:
    /// one walk of the tree's directories, never through a symlink.
    pub fn finish(self, tree: &Path) -> Result<(), LayerError> {
        let root = at::open_dir_path(tree).map_err(LayerError::Tree)?;
        // Depth first, one open directory per level (the extraction held as many).
        let mut stack: Vec<(OwnedFd, Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        let subdirs = self.visit(root.as_fd(), b"")?;
        stack.push((root, Vec::new(), subdirs));
        while let Some((fd, path, subdirs)) = stack.last_mut() {
            let Some(name) = subdirs.pop() else {
                stack.pop();
                continue;
            };
            let mut child = path.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(&name);
            let cname = at::cstring(&name).map_err(|e| entry_err(&child, e))?;
            let sub = at::open_dir(fd.as_fd(), &cname).map_err(|e| entry_err(&child, e))?;
            let subdirs = self.visit(sub.as_fd(), &child)?;
            stack.push((sub, child, subdirs));
        }
        Ok(())
    }

    /// Sets the directory `fd`'s (at `path`) xattrs and mtime; returns its subdirectories.
    fn visit(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        path: &[u8],
    ) -> Result<Vec<Vec<u8>>, LayerError> {
        let fail = |e: io::Error| entry_err(if path.is_empty() { b"." } else { path }, e);
        let held = self.0.get(path);
        for (k, v) in held.map_or(&[][..], |h| &h.xattrs[..]) {
            at::set_xattr(fd, c".", k, v).map_err(fail)?;
        }
        let (secs, nsec) = held.map_or((mtime::IMPLICIT_DIR_SECS, 0), |h| h.mtime);
        at::set_times_fd(fd, secs, nsec).map_err(fail)?;
        let mut subdirs = Vec::new();
        for e in std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(fail)? {
            let e = e.map_err(fail)?;
            // DirEntry::file_type does not follow a symlink.
            if e.file_type().map_err(fail)?.is_dir() {
                use std::os::unix::ffi::OsStringExt;
                subdirs.push(e.file_name().into_vec());
            }
        }
        Ok(subdirs)
    }
}
