//! A stand-in for the kernel in front of [`ImageFs`]: the dentry cache (paths looked up,
//! and the lookups it owes forgets for), cached symlink texts (FUSE_CACHE_SYMLINKS) and
//! cached listings (no OPENDIR), processes pinning inodes (a cwd pins its whole path), the
//! checks the VFS makes before it asks the filesystem for a change, what it does to its
//! caches after one (`d_move`, `d_delete`), and the invalidations the filesystem sends.
//!
//! It trusts its caches for ever: whatever the filesystem does not invalidate stays, so a
//! missing invalidation shows as a stale answer (the model's checks), not as a TTL race.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::path::Path;

use fuser::FileType;

use super::super::ImageFs;
use super::super::errno::Error;
use super::super::notify::{Inval, Sent};

pub type Errno = i32;

/// Entries per READDIR reply: small, so that listings are resumed from offsets.
const CHUNK: usize = 3;

fn errno(e: Error) -> Errno {
    i32::from(e.errno)
}

/// The parent path and last component of a mount path ("" is the root).
pub fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

#[derive(Default)]
pub struct Kernel {
    /// Hashed dentries: a path in the mount ("" is the root) -> its inode.
    pub dentries: BTreeMap<String, u64>,
    /// Lookups answered per inode, forgotten at once when the kernel drops the inode.
    nlookup: HashMap<u64, u64>,
    kinds: HashMap<u64, FileType>,
    pub links: HashMap<u64, Vec<u8>>,
    pub listings: HashMap<u64, BTreeSet<String>>,
    /// Inodes pinned by processes, with counts.
    pins: HashMap<u64, usize>,
}

impl Kernel {
    pub fn new() -> Kernel {
        let mut k = Kernel::default();
        k.dentries.insert(String::new(), fuser::INodeNo::ROOT.0);
        k.kinds.insert(fuser::INodeNo::ROOT.0, FileType::Directory);
        k
    }

    pub fn kind(&self, ino: u64) -> Option<FileType> {
        self.kinds.get(&ino).copied()
    }

    /// Path walk from the root, looking up what the dentry cache misses.
    pub fn resolve(&mut self, fs: &ImageFs, path: &str) -> Result<u64, Errno> {
        let mut ino = fuser::INodeNo::ROOT.0;
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = if cur.is_empty() {
                c.to_string()
            } else {
                format!("{cur}/{c}")
            };
            if let Some(&i) = self.dentries.get(&cur) {
                ino = i;
                continue;
            }
            match self.kind(ino) {
                Some(FileType::Directory) => {}
                // A tag in the middle of a path: the kernel follows it into
                // `digests/<hex>/`, which holds none of the names the model uses (or it
                // dangles): ENOENT, not ENOTDIR.
                Some(FileType::Symlink) => return Err(libc::ENOENT),
                _ => return Err(libc::ENOTDIR),
            }
            let (a, _) = fs.lookup(ino, OsStr::new(c)).map_err(errno)?;
            // Entry 0: a negative entry (a name missing from an image).
            if a.ino.0 == 0 {
                return Err(libc::ENOENT);
            }
            ino = self.add_dentry(&cur, a.ino.0, a.kind);
        }
        Ok(ino)
    }

    fn add_dentry(&mut self, path: &str, ino: u64, kind: FileType) -> u64 {
        if let Some(old) = self.dentries.insert(path.to_string(), ino)
            && old != ino
        {
            self.maybe_forget(None, old);
        }
        *self.nlookup.entry(ino).or_default() += 1;
        self.kinds.insert(ino, kind);
        ino
    }

    /// Forgets `ino` if no dentry and no process holds it (with `fs`; `None` defers).
    fn maybe_forget(&mut self, fs: Option<&ImageFs>, ino: u64) -> bool {
        if self.dentries.values().any(|&i| i == ino) || self.pins.get(&ino).is_some_and(|&n| n > 0)
        {
            return false;
        }
        if let (Some(fs), Some(n)) = (fs, self.nlookup.remove(&ino)) {
            fs.forget(ino, n);
            self.links.remove(&ino);
            self.listings.remove(&ino);
            self.kinds.remove(&ino);
        }
        true
    }

    /// Drops the dentry at `path` and everything cached below it.
    fn drop_subtree(&mut self, fs: &ImageFs, path: &str) {
        let gone: Vec<(String, u64)> = self
            .dentries
            .iter()
            .filter(|(p, _)| under(p, path))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, _) in &gone {
            self.dentries.remove(p);
        }
        for (_, i) in gone {
            self.maybe_forget(Some(fs), i);
        }
    }

    /// Moves the cached subtree at `from` to `to` (`d_move`).
    fn move_subtree(&mut self, from: &str, to: &str) {
        let moved: Vec<(String, u64)> = self
            .dentries
            .iter()
            .filter(|(p, _)| under(p, from))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (p, _) in &moved {
            self.dentries.remove(p);
        }
        for (p, i) in moved {
            self.dentries.insert(format!("{to}{}", &p[from.len()..]), i);
        }
    }

    /// Memory pressure: drops the unused dentry at `path` (and below). False if a process
    /// uses it or anything below it.
    pub fn evict(&mut self, fs: &ImageFs, path: &str) -> bool {
        let pinned = self
            .dentries
            .iter()
            .any(|(p, i)| under(p, path) && self.pins.get(i).is_some_and(|&n| n > 0));
        if pinned || path.is_empty() {
            return false;
        }
        self.drop_subtree(fs, path);
        true
    }

    /// A process enters `path` (its cwd): every inode on the way is pinned.
    pub fn pin(&mut self, fs: &ImageFs, path: &str) -> Result<Vec<u64>, Errno> {
        self.resolve(fs, path)?;
        let mut chain = Vec::new();
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = if cur.is_empty() {
                c.to_string()
            } else {
                format!("{cur}/{c}")
            };
            let ino = self.dentries[&cur];
            *self.pins.entry(ino).or_default() += 1;
            chain.push(ino);
        }
        Ok(chain)
    }

    /// The process holding `chain` exits.
    pub fn unpin(&mut self, fs: &ImageFs, chain: &[u64]) {
        for ino in chain {
            if let Some(n) = self.pins.get_mut(ino) {
                *n -= 1;
            }
        }
        for &ino in chain {
            self.maybe_forget(Some(fs), ino);
        }
    }

    /// Applies the invalidations the filesystem sent.
    pub fn invalidate(&mut self, fs: &ImageFs, sent: Vec<Sent>) {
        for s in sent {
            match s.inval {
                // An expired entry asks the filesystem at its next lookup: as if dropped (the
                // model keeps no mounts below it).
                Inval::Entry(parent, name) | Inval::Expire(parent, name) => {
                    let hit: Vec<String> = self
                        .dentries
                        .keys()
                        .filter(|p| {
                            let (dir, last) = split(p);
                            !p.is_empty()
                                && OsStr::new(last) == name
                                && self.dentries.get(dir) == Some(&parent)
                        })
                        .cloned()
                        .collect();
                    for p in hit {
                        self.drop_subtree(fs, &p);
                    }
                }
                Inval::Inode(ino) => {
                    self.links.remove(&ino);
                    self.listings.remove(&ino);
                }
            }
        }
    }

    pub fn readlink(&mut self, fs: &ImageFs, path: &str) -> Result<Vec<u8>, Errno> {
        let ino = self.resolve(fs, path)?;
        if self.kind(ino) != Some(FileType::Symlink) {
            return Err(libc::EINVAL);
        }
        if let Some(t) = self.links.get(&ino) {
            return Ok(t.clone());
        }
        let t = fs.readlink(ino).map_err(errno)?;
        self.links.insert(ino, t.clone());
        Ok(t)
    }

    pub fn readdir(&mut self, fs: &ImageFs, path: &str) -> Result<BTreeSet<String>, Errno> {
        let ino = self.resolve(fs, path)?;
        if self.kind(ino) != Some(FileType::Directory) {
            return Err(libc::ENOTDIR);
        }
        if let Some(l) = self.listings.get(&ino) {
            return Ok(l.clone());
        }
        let mut names = BTreeSet::new();
        let mut offset = 0;
        loop {
            // Replies of CHUNK entries, each listing resumed from the last one's offset.
            let mut n = 0;
            fs.readdir(ino, offset, |_, next, _, name| {
                if n == CHUNK {
                    return true;
                }
                n += 1;
                offset = next;
                if name != "." && name != ".." {
                    names.insert(name.to_string_lossy().into_owned());
                }
                false
            })
            .map_err(errno)?;
            // As the kernel: only an empty reply ends the listing.
            if n == 0 {
                break;
            }
        }
        self.listings.insert(ino, names.clone());
        Ok(names)
    }

    /// READDIRPLUS: every entry but `.` and `..` comes with a lookup, which the kernel
    /// keeps as a dentry (replacing one of another inode) or counts on the one it has.
    pub fn readdirplus(&mut self, fs: &ImageFs, path: &str) -> Result<BTreeSet<String>, Errno> {
        let ino = self.resolve(fs, path)?;
        if self.kind(ino) != Some(FileType::Directory) {
            return Err(libc::ENOTDIR);
        }
        if let Some(l) = self.listings.get(&ino) {
            return Ok(l.clone());
        }
        let mut got = Vec::new();
        let mut offset = 0;
        loop {
            // As in `readdir`; an entry that does not fit is forgotten by the filesystem.
            let mut n = 0;
            fs.readdirplus(ino, offset, |next, name, a, _| {
                if n == CHUNK {
                    return true;
                }
                n += 1;
                offset = next;
                got.push((name.to_string_lossy().into_owned(), a.ino.0, a.kind));
                false
            })
            .map_err(errno)?;
            // A short reply is no end: the first one of `tags/` directories and of
            // `digests/` stops before their tags and digests (dirs.rs, `lists_plain`).
            if n == 0 {
                break;
            }
        }
        let mut names = BTreeSet::new();
        for (name, i, kind) in got {
            if name == "." || name == ".." {
                continue;
            }
            let child = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            match self.dentries.get(&child) {
                Some(&old) if old == i => *self.nlookup.entry(i).or_default() += 1,
                Some(_) => {
                    self.drop_subtree(fs, &child);
                    self.add_dentry(&child, i, kind);
                }
                None => {
                    self.add_dentry(&child, i, kind);
                }
            }
            names.insert(name);
        }
        self.listings.insert(ino, names.clone());
        Ok(names)
    }

    /// The parent directory of `path`, resolved, and the last component.
    fn parent<'a>(&mut self, fs: &ImageFs, path: &'a str) -> Result<(u64, &'a str), Errno> {
        let (dir, last) = split(path);
        let p = self.resolve(fs, dir)?;
        if self.kind(p) != Some(FileType::Directory) {
            return Err(libc::ENOTDIR);
        }
        Ok((p, last))
    }

    /// Looks `path` up for a change: `None` if it does not exist.
    fn victim(&mut self, fs: &ImageFs, path: &str) -> Result<Option<u64>, Errno> {
        match self.resolve(fs, path) {
            Ok(i) => Ok(Some(i)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn symlink(&mut self, fs: &ImageFs, path: &str, target: &str) -> Result<(), Errno> {
        let (p, name) = self.parent(fs, path)?;
        if self.victim(fs, path)?.is_some() {
            return Err(libc::EEXIST);
        }
        let (a, _) = fs
            .symlink(p, OsStr::new(name), Path::new(target))
            .map_err(errno)?;
        self.listings.remove(&p);
        self.add_dentry(path, a.ino.0, a.kind);
        Ok(())
    }

    pub fn mkdir(&mut self, fs: &ImageFs, path: &str) -> Result<(), Errno> {
        let (p, name) = self.parent(fs, path)?;
        if self.victim(fs, path)?.is_some() {
            return Err(libc::EEXIST);
        }
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let (a, _) = fs
            .mkdir(p, OsStr::new(name), 0o755, uid, gid)
            .map_err(errno)?;
        self.listings.remove(&p);
        self.add_dentry(path, a.ino.0, a.kind);
        Ok(())
    }

    pub fn unlink(&mut self, fs: &ImageFs, path: &str) -> Result<(), Errno> {
        let (p, name) = self.parent(fs, path)?;
        let ino = self.victim(fs, path)?.ok_or(libc::ENOENT)?;
        if self.kind(ino) == Some(FileType::Directory) {
            return Err(libc::EISDIR);
        }
        fs.unlink(p, OsStr::new(name)).map_err(errno)?;
        self.listings.remove(&p);
        self.drop_subtree(fs, path);
        Ok(())
    }

    pub fn rmdir(&mut self, fs: &ImageFs, path: &str) -> Result<(), Errno> {
        let (p, name) = self.parent(fs, path)?;
        let ino = self.victim(fs, path)?.ok_or(libc::ENOENT)?;
        if self.kind(ino) != Some(FileType::Directory) {
            return Err(libc::ENOTDIR);
        }
        fs.rmdir(p, OsStr::new(name)).map_err(errno)?;
        self.listings.remove(&p);
        self.drop_subtree(fs, path);
        Ok(())
    }

    /// renameat2 with `flags` (0, RENAME_NOREPLACE or RENAME_EXCHANGE).
    pub fn rename(&mut self, fs: &ImageFs, from: &str, to: &str, flags: u32) -> Result<(), Errno> {
        let (p, name) = self.parent(fs, from)?;
        let src = self.victim(fs, from)?.ok_or(libc::ENOENT)?;
        let (np, newname) = self.parent(fs, to)?;
        let dst = self.victim(fs, to)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        match dst {
            None if exchange => return Err(libc::ENOENT),
            Some(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(libc::EEXIST),
            Some(d) if d == src => return Ok(()),
            _ => {}
        }
        let src_dir = self.kind(src) == Some(FileType::Directory);
        // lock_rename's traps: the source may not be an ancestor of the target, nor (but
        // for an exchange, which says EINVAL) the target one of the source.
        if under(to, from) {
            return Err(libc::EINVAL);
        }
        if dst.is_some() && under(from, to) {
            return Err(if exchange {
                libc::EINVAL
            } else {
                libc::ENOTEMPTY
            });
        }
        if let Some(d) = dst
            && !exchange
        {
            let dst_dir = self.kind(d) == Some(FileType::Directory);
            if src_dir && !dst_dir {
                return Err(libc::ENOTDIR);
            }
            if !src_dir && dst_dir {
                return Err(libc::EISDIR);
            }
        }
        fs.rename(p, OsStr::new(name), np, OsStr::new(newname), flags)
            .map_err(errno)?;
        self.listings.remove(&p);
        self.listings.remove(&np);
        if exchange {
            let tmp = format!("{from}\u{0}swap");
            self.move_subtree(from, &tmp);
            self.move_subtree(to, from);
            self.move_subtree(&tmp, to);
        } else {
            if dst.is_some() {
                let gone: Vec<(String, u64)> = self
                    .dentries
                    .iter()
                    .filter(|(q, _)| under(q, to))
                    .map(|(q, &i)| (q.clone(), i))
                    .collect();
                for (q, _) in &gone {
                    self.dentries.remove(q);
                }
                self.move_subtree(from, to);
                for (_, i) in gone {
                    self.maybe_forget(Some(fs), i);
                }
            } else {
                self.move_subtree(from, to);
            }
        }
        Ok(())
    }

    /// A process with cwd `cwd` reads `name` there (lookup, open, read, close, forget).
    pub fn read_at(&mut self, fs: &ImageFs, cwd: u64, name: &str) -> Result<Vec<u8>, Errno> {
        let (a, _) = fs.lookup(cwd, OsStr::new(name)).map_err(errno)?;
        let ino = a.ino.0;
        if ino == 0 {
            return Err(libc::ENOENT);
        }
        let r = fs.open(ino, libc::O_RDONLY).and_then(|(fh, _)| {
            let r = fs.read(fh, 0, 4096).map(|b| b.to_vec());
            fs.release(fh);
            r
        });
        fs.forget(ino, 1);
        r.map_err(errno)
    }
}
