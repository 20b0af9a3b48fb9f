//! Applies tar layers to a tree: regular files, directories, symlinks, hard links, devices
//! and fifos with their modes, owners, mtimes and xattrs (PAX `SCHILY.xattr.*`, binary values
//! included: [`tarstream`]), plus OCI
//! whiteouts (`.wh.<name>`) and opaque directories (`.wh..wh..opq`).
//!
//! Nothing is ever written outside the tree:
//! - entry names are cleaned lexically (a leading `/` is dropped, `.` ignored, `..` pops);
//!   a name that climbs above the root is refused, as is a hard link whose target does;
//! - every parent directory is opened component by component with `O_NOFOLLOW`; a symlink
//!   met on the way is resolved *inside* the tree (an absolute target restarts at the tree's
//!   root, `..` stops at it), as docker does (`FollowSymlinkInScope`);
//! - the last component is created with `O_EXCL`/`mknodat`/`symlinkat` and changed only with
//!   calls that do not follow it.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::tarstream::{self, Kind};
use super::{ImportError, Result};
use super::{at, mtime};

mod dirmeta;
pub use dirmeta::DirMeta;

/// Longest chain of symlinks followed while resolving one parent path.
const MAX_LINKS: usize = 40;

/// A directory a layer writes into without an entry of its own: root's, 0755, as docker
/// and umoci create it.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// How a tar stream is applied.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Interpret `.wh.` entries as OCI whiteouts (layers); a plain rootfs tar keeps them as files.
    pub whiteouts: bool,
}

/// Creates the (empty) root of a tree: root-owned, 0755.
pub fn create_root(tree: &Path) -> Result<()> {
    std::fs::create_dir(tree).map_err(|e| ImportError::io(tree.display(), e))?;
    std::fs::set_permissions(tree, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| ImportError::io(tree.display(), e))
}

/// Extracts a plain (uncompressed) tar file into a new tree at `tree`.
pub fn extract_tar_file(tar: &Path, shown: &Path, tree: &Path) -> Result<()> {
    create_root(tree)?;
    let f = std::fs::File::open(tar).map_err(|e| ImportError::io(shown.display(), e))?;
    apply(
        tree,
        io::BufReader::with_capacity(1 << 20, f),
        Options { whiteouts: false },
    )
    .map_err(|e| e.into_import(&shown.display().to_string()))
}

/// Why a layer could not be applied.
#[derive(Debug)]
pub enum LayerError {
    /// Reading the archive failed (truncated, corrupt, bad gzip...).
    Read(io::Error),
    /// One entry was refused or could not be written.
    Entry { entry: String, reason: String },
    /// The tree itself could not be opened.
    Tree(io::Error),
}

impl LayerError {
    pub fn into_import(self, what: &str) -> ImportError {
        match self {
            LayerError::Read(e) => ImportError::source(what, format!("reading the archive: {e}")),
            LayerError::Entry { entry, reason } => {
                ImportError::source(what, format!("entry {entry:?}: {reason}"))
            }
            LayerError::Tree(e) => ImportError::source(what, format!("the extraction tree: {e}")),
        }
    }
}

fn entry_err(entry: &[u8], reason: impl std::fmt::Display) -> LayerError {
    LayerError::Entry {
        entry: String::from_utf8_lossy(entry).into_owned(),
        reason: reason.to_string(),
    }
}

/// Cleans a tar entry name into components. `Err` if it climbs above the root.
pub fn clean_path(name: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("the path leaves the image root (\"..\")".into());
                }
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The tree being written, and what this layer has written so far (for opaque dirs).
struct Tree {
    root: OwnedFd,
    whiteouts: bool,
    unpacked: HashSet<Vec<u8>>,
    dirs: DirMeta,
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

impl Tree {
    /// Opens the directory `comps` (resolving symlinks inside the tree). Missing directories
    /// are created ([`IMPLICIT_DIR_MODE`], root) when `create`.
    fn open_dir(&self, comps: &[Vec<u8>], create: bool) -> io::Result<OwnedFd> {
        let mut stack: Vec<OwnedFd> = vec![self.root.try_clone()?];
        let mut todo: std::collections::VecDeque<Vec<u8>> = comps.iter().cloned().collect();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.len() > 1 {
                        stack.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let name = at::cstring(&c)?;
            let cur = stack
                .last()
                .ok_or_else(|| io::Error::other("empty stack"))?;
            match at::open_dir(cur.as_fd(), &name) {
                Ok(fd) => stack.push(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                    match at::mkdir(cur.as_fd(), &name, IMPLICIT_DIR_MODE) {
                        // Set, not left to mkdir: the umask would clear bits (another
                        // digest for another user), a set-gid parent would add its group.
                        Ok(()) => {
                            at::lchown(cur.as_fd(), &name, 0, 0)?;
                            at::chmod(cur.as_fd(), &name, IMPLICIT_DIR_MODE)?;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    todo.push_front(c);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                    let st = at::lstat(cur.as_fd(), &name)?;
                    if !at::is_symlink(&st) {
                        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    let target = at::readlink(cur.as_fd(), &name)?;
                    if target.first() == Some(&b'/') {
                        stack.truncate(1);
                    }
                    for t in target.split(|&b| b == b'/').rev() {
                        todo.push_front(t.to_vec());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        stack.pop().ok_or_else(|| io::Error::other("empty stack"))
    }

    fn apply_entry<R: Read>(
        &mut self,
        tar: &mut tarstream::Reader<R>,
        entry: &tarstream::Entry,
    ) -> std::result::Result<(), LayerError> {
        let raw_name = &entry.name;
        let kind = entry.kind;
        let comps = clean_path(raw_name).map_err(|r| entry_err(raw_name, r))?;
        let meta = EntryMeta::read(entry).map_err(|r| entry_err(raw_name, r))?;
        let Some((name, parent)) = comps.split_last() else {
            // The root itself ("./"): only its metadata.
            if kind == Kind::Dir {
                let root = self.root.try_clone().map_err(LayerError::Tree)?;
                meta.apply_dir(root.as_fd())
                    .map_err(|e| entry_err(raw_name, e))?;
                self.dirs.set(Vec::new(), &meta.xattrs, meta.mtime);
            }
            return Ok(());
        };
        if self.whiteouts && name.starts_with(b".wh.") {
            return self
                .whiteout(parent, name)
                .map_err(|e| entry_err(raw_name, e));
        }
        if let Kind::Other(flag) = kind {
            log::warn!(
                "{}: unsupported tar entry type {:?}; skipped",
                String::from_utf8_lossy(raw_name),
                char::from(flag)
            );
            return Ok(());
        }
        let cname = at::cstring(name).map_err(|e| entry_err(raw_name, e))?;
        let dir = self
            .open_dir(parent, true)
            .map_err(|e| entry_err(raw_name, format!("parent directory: {e}")))?;
        let dir = dir.as_fd();
        let existing = at::lstat_opt(dir, &cname).map_err(|e| entry_err(raw_name, e))?;
        let keep_dir = kind == Kind::Dir && existing.as_ref().is_some_and(at::is_dir);
        // A hard link to the very path it replaces keeps what is there.
        let link_target = match kind {
            Kind::Link => Some(
                clean_path(&entry.link)
                    .map_err(|r| entry_err(raw_name, format!("hard link target: {r}")))?,
            ),
            _ => None,
        };
        if link_target.as_deref() == Some(comps.as_slice()) {
            return Ok(());
        }
        if existing.is_some() && !keep_dir {
            at::remove_tree(dir, &cname)
                .map_err(|e| entry_err(raw_name, format!("replacing: {e}")))?;
            self.dirs.forget(&join(&comps));
        }
        // The entry and its ancestors were written by this layer (an opaque marker later in
        // the layer must keep them).
        for n in 1..=comps.len() {
            self.unpacked.insert(join(&comps[..n]));
        }
        let fail = |e: io::Error| entry_err(raw_name, e);
        match kind {
            Kind::Dir => {
                if !keep_dir {
                    at::mkdir(dir, &cname, 0o700).map_err(fail)?;
                }
                let fd = at::open_dir(dir, &cname).map_err(fail)?;
                meta.apply_dir(fd.as_fd()).map_err(fail)?;
                self.dirs.set(join(&comps), &meta.xattrs, meta.mtime);
            }
            Kind::Regular => {
                let mut f = at::create_file(dir, &cname).map_err(fail)?;
                write_data(&mut f, tar, entry.sparse.as_ref())?;
                drop(f);
                meta.apply_at(dir, &cname, false).map_err(fail)?;
            }
            Kind::Symlink => {
                if entry.link.is_empty() {
                    return Err(entry_err(raw_name, "symlink without a target"));
                }
                let target = at::cstring(&entry.link).map_err(fail)?;
                at::symlink(&target, dir, &cname).map_err(fail)?;
                meta.apply_at(dir, &cname, true).map_err(fail)?;
            }
            Kind::Link => {
                let target = link_target.unwrap_or_default();
                let Some((tname, tparent)) = target.split_last() else {
                    return Err(entry_err(raw_name, "hard link to the root directory"));
                };
                let tdir = self.open_dir(tparent, false).map_err(|e| {
                    entry_err(
                        raw_name,
                        format!(
                            "hard link target {:?}: {e}",
                            String::from_utf8_lossy(&join(&target))
                        ),
                    )
                })?;
                let tname = at::cstring(tname).map_err(fail)?;
                at::link(tdir.as_fd(), &tname, dir, &cname).map_err(|e| {
                    entry_err(
                        raw_name,
                        format!(
                            "hard link to {:?}: {e}",
                            String::from_utf8_lossy(&join(&target))
                        ),
                    )
                })?;
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let fmt = match kind {
                    Kind::Char => libc::S_IFCHR,
                    Kind::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let dev = libc::makedev(entry.dev_major, entry.dev_minor);
                at::mknod(dir, &cname, fmt | 0o600, dev).map_err(fail)?;
                meta.apply_at(dir, &cname, false).map_err(fail)?;
            }
            Kind::Other(_) => {}
        }
        Ok(())
    }

    /// `.wh.<name>` removes `<name>` from the lower layers (not what this layer wrote);
    /// `.wh..wh..opq` empties the directory of what lower layers put there.
    fn whiteout(&mut self, parent: &[Vec<u8>], name: &[u8]) -> io::Result<()> {
        let dir = match self.open_dir(parent, false) {
            Ok(d) => d,
            // Nothing below to hide.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if name == b".wh..wh..opq" {
            return self.opaque(dir.as_fd(), &join(parent));
        }
        if name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, ...): not part of the image.
            return Ok(());
        }
        let victim = &name[4..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "whiteout of nothing",
            ));
        }
        let mut path = join(parent);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(victim);
        let cvictim = at::cstring(victim)?;
        if self.unpacked.contains(&path) {
            // A whiteout hides the lower layers' entry only, never what this layer wrote
            // (OCI image spec, as umoci applies it): of a directory this layer wrote into,
            // only what the lower layers put there goes.
            if at::lstat_opt(dir.as_fd(), &cvictim)?.is_some_and(|st| at::is_dir(&st)) {
                let sub = at::open_dir(dir.as_fd(), &cvictim)?;
                self.opaque(sub.as_fd(), &path)?;
            }
            return Ok(());
        }
        self.dirs.forget(&path);
        at::remove_tree(dir.as_fd(), &cvictim)
    }

    /// Removes every entry under `dir` (path `rel`) that this layer did not write.
    fn opaque(&mut self, dir: BorrowedFd<'_>, rel: &[u8]) -> io::Result<()> {
        for child in at::list(dir)? {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&child);
            let c = at::cstring(&child)?;
            if !self.unpacked.contains(&path) {
                at::remove_tree(dir, &c)?;
                self.dirs.forget(&path);
            } else if at::lstat(dir, &c).is_ok_and(|st| at::is_dir(&st)) {
                let sub = at::open_dir(dir, &c)?;
                self.opaque(sub.as_fd(), &path)?;
            }
        }
        Ok(())
    }
}

/// An entry's owner, mode, mtime and xattrs.
struct EntryMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    /// Seconds and nanoseconds, bounded ([`mtime::clamp`]).
    mtime: (i64, u32),
    xattrs: Vec<(std::ffi::CString, Vec<u8>)>,
}

impl EntryMeta {
    fn read(e: &tarstream::Entry) -> std::result::Result<EntryMeta, String> {
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
        };
        let mut xattrs = Vec::with_capacity(e.xattrs.len());
        for (k, v) in &e.xattrs {
            let k = std::ffi::CString::new(k.as_slice())
                .map_err(|_| "xattr name contains NUL".to_string())?;
            xattrs.push((k, v.clone()));
        }
        Ok(EntryMeta {
            uid: id(e.uid, "uid")?,
            gid: id(e.gid, "gid")?,
            mode: e.mode,
            mtime: mtime::clamp(e.mtime, e.mtime_nsec),
            xattrs,
        })
    }

    /// Owner and mode of an open directory (its xattrs and mtime wait in [`DirMeta`]: its
    /// mtime would change as entries are added or removed).
    fn apply_dir(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let dot = c".";
        at::lchown(fd, dot, self.uid, self.gid)?;
        at::chmod(fd, dot, self.mode)
    }

    /// Owner, mode (not for symlinks), xattrs and mtime of `name` in `dir`.
    fn apply_at(&self, dir: BorrowedFd<'_>, name: &CStr, symlink: bool) -> io::Result<()> {
        at::lchown(dir, name, self.uid, self.gid)?;
        if !symlink {
            // After chown, which clears set-id bits.
            at::chmod(dir, name, self.mode)?;
        }
        for (k, v) in &self.xattrs {
            at::set_xattr(dir, name, k, v)?;
        }
        at::set_times(dir, name, self.mtime.0, self.mtime.1)
    }
}

/// Writes the current entry's data into `f`: a sparse file's chunks at their offsets (the
/// holes stay holes), then its full size.
fn write_data<R: Read>(
    f: &mut std::fs::File,
    tar: &mut tarstream::Reader<R>,
    sparse: Option<&tarstream::Sparse>,
) -> std::result::Result<(), LayerError> {
    use std::io::{Seek, SeekFrom};
    let Some(s) = sparse else {
        io::copy(&mut tar.data(), f).map_err(LayerError::Read)?;
        return Ok(());
    };
    for &(off, len) in &s.chunks {
        f.seek(SeekFrom::Start(off)).map_err(LayerError::Read)?;
        let n = io::copy(&mut tar.data().take(len), f).map_err(LayerError::Read)?;
        if n != len {
            return Err(LayerError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated archive: it ends inside a sparse file's data",
            )));
        }
    }
    f.set_len(s.size).map_err(LayerError::Read)
}

/// Applies one tar stream to the tree at `tree`, the whole image: its directories' xattrs
/// and mtimes are set at the end.
pub fn apply<R: Read>(
    tree: &Path,
    reader: R,
    opts: Options,
) -> std::result::Result<(), LayerError> {
    let mut dirs = DirMeta::default();
    apply_layer(tree, reader, opts, &mut dirs)?;
    dirs.finish(tree)
}

/// Applies one tar stream (one layer of several) to the tree at `tree`; its directories'
/// xattrs and mtimes go into `dirs`, to be set once every layer is written
/// ([`DirMeta::finish`]).
pub fn apply_layer<R: Read>(
    tree: &Path,
    reader: R,
    opts: Options,
    dirs: &mut DirMeta,
) -> std::result::Result<(), LayerError> {
    let root = at::open_dir_path(tree).map_err(LayerError::Tree)?;
    let mut t = Tree {
        root,
        whiteouts: opts.whiteouts,
        unpacked: HashSet::new(),
        dirs: std::mem::take(dirs),
    };
    let mut tar = tarstream::Reader::new(reader);
    let r = (|| {
        while let Some(entry) = tar.next().map_err(LayerError::Read)? {
            if super::interrupt::interrupted() {
                return Err(LayerError::Read(io::ErrorKind::Interrupted.into()));
            }
            t.apply_entry(&mut tar, &entry)?;
        }
        Ok(())
    })();
    *dirs = std::mem::take(&mut t.dirs);
    r?;
    // Read to the end: a layer's digest covers its trailing blocks too.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(LayerError::Read)?;
    Ok(())
}

#[cfg(test)]
mod tests;
