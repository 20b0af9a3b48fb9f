//! A reference model of the mount, as mountpoint-s3's reftests: random sequences of what
//! processes and other writers do (lookups and forgets, `ln -s`/`rm`/`mv` of tags and of
//! repository directories at every depth, RENAME_NOREPLACE and RENAME_EXCHANGE,
//! `mkdir`/`rmdir`, processes holding inodes of an image's `rootfs/` while it loses its
//! last tag, hypeman-style tag changes and `RemoveAll` of a digest directory straight in the
//! store, `imagefs gc`), run through the simulated kernel (`kernel.rs`) against the
//! filesystem's core, and after every step compared with a small model:
//!
//! - each operation's result (errno included);
//! - the store on disk and its index: tags with their exact text, repository directories,
//!   digest directories, reference counts, nothing left in the bookkeeping but the trash of
//!   images in use;
//! - what the kernel caches: every dentry names what the model has at its path (a removed
//!   or moved entry was invalidated), every cached symlink text is the tag's text now
//!   (`../` once per level, then `digests/<hex>`), every cached listing is the listing now;
//!   entries of `tags/` are never invalidated on the awaited lane;
//! - the in-use rule: a process inside an image's `rootfs/` reads it whatever happens to
//!   its digest, and once nobody holds it the image is closed and its trash entry gone.
//!
//! `IMAGEFS_MODEL_CASES` (default 256) sets the number of cases, `IMAGEFS_MODEL_STEPS`
//! (default 40) the longest sequence.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::kernel::{Errno, Kernel, split};
use super::{Mount, image, os_release, real_digest_dir};
use crate::fs::inodes::NodeKey;
use crate::fs::notify::{Inval, Sent};
use crate::store::layout::{CONTENT, DirKey, REPOSITORIES};
use crate::store::names;
use crate::store::tests::fixture::{Disk, Fx, dg, hex, walk_tree};

/// Digests 0..N; all but the last start in the store, the last only comes with a pull.
const N: usize = 5;
/// (repository, tag, digest) at the start. Digest 3 is in the store but never tagged.
const INITIAL: [(&str, &str, usize); 5] = [
    ("h.io/a", "t0", 0),
    ("h.io/a/b/c", "t1", 1),
    ("h.io/a/b", "t0", 0),
    ("h.io/d", "t2", 2),
    ("g.io/a", "t0", 1),
];
/// Repository paths the operations may name besides those that exist (some never will).
const EXTRA_DIRS: [&str; 4] = ["h.io/z", "q.io", "q.io/a", "h.io/a/b/c/d"];
/// Names of new tags and directories.
const NAMES: [&str; 6] = ["t0", "t1", "t2", "a", "b", "x"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replace,
    NoReplace,
    Exchange,
}

impl Mode {
    fn flags(self) -> u32 {
        match self {
            Mode::Replace => 0,
            Mode::NoReplace => libc::RENAME_NOREPLACE,
            Mode::Exchange => libc::RENAME_EXCHANGE,
        }
    }
}

/// What `ln -s` names.
#[derive(Debug, Clone)]
enum Tgt {
    /// `../`.. `digests/<hex>`, relative as `readlink` shows it.
    Digest(usize),
    /// `<mountpoint>/digests/<hex>`.
    Absolute(usize),
    /// `sha256:<hex>`.
    Ref(usize),
    /// Another tag, by a path relative to the new link (an index into the tags).
    Tag(u8),
    /// Another tag, by its absolute path through the mountpoint.
    TagAbsolute(u8),
}

/// One step. `u8` fields pick from what exists then (modulo the length of the list), so a
/// shrunk sequence stays meaningful.
#[derive(Debug, Clone)]
enum Op {
    Lookup(u8),
    Readlink(u8),
    Readdir(u8),
    /// A listing with attributes (each entry a lookup).
    ReaddirPlus(u8),
    /// The kernel drops an unused dentry (and what is below it).
    Evict(u8),
    /// A process enters `digests/<hex>/rootfs/etc` of digest `d`.
    Enter(usize),
    /// A process exits.
    Exit(u8),
    /// A process reads `os-release` in its cwd.
    Read(u8),
    Symlink(u8, u8, Tgt),
    Unlink(u8),
    Rename(u8, u8, u8, Mode),
    Mkdir(u8, u8),
    Rmdir(u8),
    /// hypeman pulls digest `d` if it is missing and tags it (in an existing directory).
    OtherTag(u8, u8, usize, Order),
    OtherUntag(u8),
    /// Another writer removes an empty repository directory.
    OtherRmdir(u8),
    /// The mount is unmounted (its processes gone) and mounted again.
    Remount,
    /// hypeman deletes digest `d`: its tags, then `RemoveAll` of its directory.
    OtherRemove(usize),
    Gc,
}

/// In which order hypeman's pull makes a tag and its digest directory (HYPEMAN.md: a tag
/// may come before its directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    DirThenLink,
    /// The link, then the directory, seen by the watcher in one go.
    LinkThenDir,
    /// The link, seen by the watcher (a tag waiting for its directory: not shown, also
    /// in the listing the kernel caches then), then the directory.
    LinkSeenThenDir,
}

/// What a path of the mount is, in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Root,
    Dir(String),
    Tag(String, String, usize),
    Digests,
    Digest(usize),
    /// Under `digests/<hex>/`: `rootfs`, `rootfs/etc`, `rootfs/etc/os-release`, or a file.
    InDigest(usize, String),
}

#[derive(Debug, Clone)]
struct Model {
    dirs: BTreeSet<String>,
    tags: BTreeMap<(String, String), usize>,
    on_disk: [bool; N],
    /// Collected by the mount while a process held it: in the trash until it exits.
    zombie: [bool; N],
}

fn depth(repo: &str) -> usize {
    if repo.is_empty() {
        0
    } else {
        repo.split('/').count()
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

fn pick<T: Clone>(v: &[T], i: u8) -> T {
    v[usize::from(i) % v.len()].clone()
}

fn ancestors(repo: &str) -> impl Iterator<Item = String> + '_ {
    let parts: Vec<&str> = repo.split('/').collect();
    (1..=parts.len()).map(move |n| parts[..n].join("/"))
}

/// The text of a tag of `repo` naming digest `d`.
fn link_text(repo: &str, d: usize) -> String {
    format!("{}digests/{}", "../".repeat(depth(repo) + 1), hex(d as u8))
}

impl Model {
    fn new() -> Model {
        let mut m = Model {
            dirs: BTreeSet::new(),
            tags: BTreeMap::new(),
            on_disk: [true; N],
            zombie: [false; N],
        };
        m.on_disk[N - 1] = false;
        for (r, t, d) in INITIAL {
            m.dirs.extend(ancestors(r));
            m.tags.insert((r.into(), t.into()), d);
        }
        m
    }

    fn node(&self, path: &str) -> Option<Node> {
        if path.is_empty() {
            return Some(Node::Root);
        }
        if path == "tags" {
            return Some(Node::Dir(String::new()));
        }
        if let Some(p) = path.strip_prefix("tags/") {
            if self.dirs.contains(p) {
                return Some(Node::Dir(p.into()));
            }
            let (r, t) = split(p);
            return self
                .tags
                .get(&(r.to_string(), t.to_string()))
                .map(|&d| Node::Tag(r.into(), t.into(), d));
        }
        if path == "digests" {
            return Some(Node::Digests);
        }
        let rest = path.strip_prefix("digests/")?;
        let (h, inner) = rest.split_once('/').unwrap_or((rest, ""));
        let d = (0..N).find(|&d| hex(d as u8) == h && self.on_disk[d])?;
        if inner.is_empty() {
            return Some(Node::Digest(d));
        }
        let known = [
            "rootfs",
            "rootfs/etc",
            "rootfs/etc/os-release",
            "metadata.json",
            "rootfs.erofs",
        ];
        known
            .contains(&inner)
            .then(|| Node::InDigest(d, inner.into()))
    }

    fn listing(&self, path: &str) -> Option<BTreeSet<String>> {
        Some(match self.node(path)? {
            Node::Root => ["tags", "digests", ".imagefs"].map(String::from).into(),
            Node::Dir(p) => {
                let mut s: BTreeSet<String> = self
                    .dirs
                    .iter()
                    .filter(|d| split(d).0 == p)
                    .map(|d| split(d).1.to_string())
                    .collect();
                s.extend(
                    self.tags
                        .keys()
                        .filter(|(r, _)| *r == p)
                        .map(|(_, t)| t.clone()),
                );
                s
            }
            Node::Digests => (0..N)
                .filter(|&d| self.on_disk[d])
                .map(|d| hex(d as u8))
                .collect(),
            Node::Digest(_) => ["rootfs", "metadata.json", "rootfs.erofs"]
                .map(String::from)
                .into(),
            Node::InDigest(_, inner) if inner == "rootfs/etc" => ["os-release".to_string()].into(),
            Node::InDigest(_, inner) if inner == "rootfs" => ["etc".to_string()].into(),
            _ => return None,
        })
    }

    fn is_tag(&self, path: &str) -> bool {
        let (r, t) = split(path);
        self.tags.contains_key(&(r.to_string(), t.to_string()))
    }

    fn tagged(&self, d: usize) -> bool {
        self.tags.values().any(|&x| x == d)
    }

    /// The mount dropped a reference to `d`: collected if it was the last one.
    fn unref(&mut self, d: usize, held: &[usize]) {
        if !self.tagged(d) && self.on_disk[d] {
            self.on_disk[d] = false;
            if held.contains(&d) {
                self.zombie[d] = true;
            }
        }
    }

    // -- lists the operations pick from --------------------------------------------------

    fn dir_list(&self) -> Vec<String> {
        let mut v: BTreeSet<String> = self.dirs.clone();
        v.extend(EXTRA_DIRS.map(String::from));
        v.insert(String::new());
        v.into_iter().collect()
    }

    fn tag_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tags.keys().map(|(r, t)| join(r, t)).collect();
        v.push("h.io/a/none".into());
        v
    }

    /// Tags and directories, for `mv`.
    fn any_list(&self) -> Vec<String> {
        let mut v = self.tag_list();
        v.extend(self.dirs.iter().cloned());
        v
    }

    fn lookup_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.any_list().iter().map(|p| join("tags", p)).collect();
        v.push("digests".into());
        for d in 0..N {
            v.push(format!("digests/{}", hex(d as u8)));
            v.push(format!("digests/{}/rootfs/etc/os-release", hex(d as u8)));
        }
        v
    }

    fn readdir_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.dirs.iter().map(|p| join("tags", p)).collect();
        v.push("tags".into());
        v.push("digests".into());
        for d in 0..N {
            v.push(format!("digests/{}/rootfs/etc", hex(d as u8)));
        }
        v
    }

    // -- the changes through the mount, as the model says they end ----------------------

    fn symlink(&mut self, repo: &str, name: &str, tgt: Option<usize>) -> Result<(), Errno> {
        if !repo.is_empty() && !self.dirs.contains(repo) {
            return Err(libc::ENOENT);
        }
        if self.node(&join("tags", &join(repo, name))).is_some() {
            return Err(libc::EEXIST);
        }
        if repo.is_empty() || names::not_normalized(repo).is_some() {
            return Err(libc::EINVAL);
        }
        let d = tgt.filter(|&d| self.on_disk[d]).ok_or(libc::ENOENT)?;
        self.tags.insert((repo.into(), name.into()), d);
        Ok(())
    }

    fn unlink(&mut self, path: &str, held: &[usize]) -> Result<(), Errno> {
        match self.node(&join("tags", path)) {
            None => Err(libc::ENOENT),
            Some(Node::Tag(r, t, d)) => {
                self.tags.remove(&(r, t));
                self.unref(d, held);
                Ok(())
            }
            Some(_) => Err(libc::EISDIR),
        }
    }

    fn mkdir(&mut self, parent: &str, name: &str) -> Result<(), Errno> {
        if !parent.is_empty() && !self.dirs.contains(parent) {
            return Err(libc::ENOENT);
        }
        let path = join(parent, name);
        if self.node(&join("tags", &path)).is_some() {
            return Err(libc::EEXIST);
        }
        self.dirs.insert(path);
        Ok(())
    }

    fn rmdir(&mut self, path: &str) -> Result<(), Errno> {
        match self.node(&join("tags", path)) {
            None => Err(libc::ENOENT),
            Some(Node::Dir(p)) => {
                if self
                    .listing(&join("tags", &p))
                    .is_some_and(|l| !l.is_empty())
                {
                    return Err(libc::ENOTEMPTY);
                }
                self.dirs.remove(&p);
                Ok(())
            }
            Some(_) => Err(libc::ENOTDIR),
        }
    }

    fn rename(&mut self, from: &str, to: &str, mode: Mode, held: &[usize]) -> Result<(), Errno> {
        let (to_dir, _) = split(to);
        let src = self.node(&join("tags", from)).ok_or(libc::ENOENT)?;
        if !to_dir.is_empty() && !self.dirs.contains(to_dir) {
            return Err(libc::ENOENT);
        }
        let dst = self.node(&join("tags", to));
        match (&dst, mode) {
            (None, Mode::Exchange) => return Err(libc::ENOENT),
            (Some(_), Mode::NoReplace) => return Err(libc::EEXIST),
            _ => {}
        }
        if from == to {
            return Ok(());
        }
        if under(to, from) {
            return Err(libc::EINVAL);
        }
        if dst.is_some() && under(from, to) {
            return Err(if mode == Mode::Exchange {
                libc::EINVAL
            } else {
                libc::ENOTEMPTY
            });
        }
        if let Some(dst) = &dst
            && mode != Mode::Exchange
        {
            match (&src, dst) {
                (Node::Dir(_), Node::Tag(..)) => return Err(libc::ENOTDIR),
                (Node::Tag(..), Node::Dir(_)) => return Err(libc::EISDIR),
                _ => {}
            }
        }
        match src {
            Node::Dir(_) => {
                if mode == Mode::Exchange {
                    return Err(libc::EINVAL);
                }
                for (r, _) in self.tags.keys() {
                    if under(r, from) {
                        let new = format!("{to}{}", &r[from.len()..]);
                        if names::not_normalized(&new).is_some() {
                            return Err(libc::EINVAL);
                        }
                    }
                }
                if dst.is_some() {
                    if self
                        .listing(&join("tags", to))
                        .is_some_and(|l| !l.is_empty())
                    {
                        return Err(libc::ENOTEMPTY);
                    }
                    self.dirs.remove(to);
                }
                let moved = |p: &str| format!("{to}{}", &p[from.len()..]);
                self.dirs = std::mem::take(&mut self.dirs)
                    .into_iter()
                    .map(|p| if under(&p, from) { moved(&p) } else { p })
                    .collect();
                self.tags = std::mem::take(&mut self.tags)
                    .into_iter()
                    .map(|((r, t), d)| {
                        if under(&r, from) {
                            ((moved(&r), t), d)
                        } else {
                            ((r, t), d)
                        }
                    })
                    .collect();
                Ok(())
            }
            Node::Tag(r, t, d) => {
                let (to_r, to_t) = split(to);
                let to_key = (to_r.to_string(), to_t.to_string());
                if mode == Mode::Exchange {
                    let Some(Node::Tag(_, _, e)) = dst else {
                        return Err(libc::EINVAL);
                    };
                    self.tags.insert((r, t), e);
                    self.tags.insert(to_key, d);
                    return Ok(());
                }
                if to_r.is_empty() || names::not_normalized(to_r).is_some() {
                    return Err(libc::EINVAL);
                }
                self.tags.remove(&(r, t));
                let replaced = self.tags.insert(to_key, d);
                if let Some(e) = replaced {
                    self.unref(e, held);
                }
                Ok(())
            }
            _ => Err(libc::ENOENT),
        }
    }
}

/// A process with its cwd in an image.
struct Proc {
    digest: usize,
    chain: Vec<u64>,
}

fn mounted(m: &Option<Mount>) -> &Mount {
    m.as_ref().expect("mounted")
}

struct Run {
    fx: Fx,
    images: Vec<Vec<u8>>,
    /// The mount (`None` only while it is remounted).
    m: Option<Mount>,
    k: Kernel,
    model: Model,
    procs: Vec<Proc>,
    /// Ops that did something (not refused by the model as impossible to stage).
    steps: usize,
}

impl Run {
    fn new(images: Vec<Vec<u8>>) -> Run {
        let fx = Fx::new();
        for (d, img) in images.iter().enumerate().take(N - 1) {
            real_digest_dir(
                &fx,
                &fx.p(&format!("{CONTENT}/{}", hex(d as u8))),
                d as u8,
                img,
            );
        }
        for (r, t, d) in INITIAL {
            fx.ctag(r, t, d as u8);
        }
        let m = Some(Mount::new(&fx));
        Run {
            fx,
            images,
            m,
            k: Kernel::new(),
            model: Model::new(),
            procs: Vec::new(),
            steps: 0,
        }
    }

    /// Every process exits, the mount goes (the kernel's caches with it), and the store
    /// is mounted again: what it finds must be what the mount left.
    fn remount(&mut self) {
        for p in std::mem::take(&mut self.procs) {
            self.k.unpin(&mounted(&self.m).fs, &p.chain);
        }
        self.deliver();
        self.m = None;
        self.m = Some(Mount::new(&self.fx));
        self.k = Kernel::new();
        self.model.zombie = [false; N];
        self.steps += 1;
    }

    fn held(&self) -> Vec<usize> {
        self.procs.iter().map(|p| p.digest).collect()
    }

    /// Hands what the filesystem sent to the kernel, checking the lanes.
    fn deliver(&mut self) {
        let sent: Vec<Sent> = mounted(&self.m).sent.take();
        for s in &sent {
            if let (Inval::Entry(p, name), true) = (&s.inval, s.waited) {
                let key = mounted(&self.m).fs.inodes.lock().key(*p).cloned();
                assert!(
                    !matches!(key, Some(NodeKey::TagsDir(_))),
                    "entry {name:?} of tags/ ({key:?}) invalidated on the awaited lane"
                );
            }
        }
        self.k.invalidate(&mounted(&self.m).fs, sent);
    }

    /// Another writer's change is done: the watcher's poll, then the kernel.
    fn poll(&mut self) {
        mounted(&self.m).fs.poll_store();
        self.deliver();
    }

    fn step(&mut self, op: &Op) {
        let fs = &mounted(&self.m).fs;
        let held = self.held();
        match op {
            Op::Lookup(i) => {
                let path = pick(&self.model.lookup_list(), *i);
                let got = self.k.resolve(fs, &path).map(|_| ());
                let want = self.model.node(&path).map(|_| ()).ok_or(libc::ENOENT);
                assert_eq!(got, want, "lookup {path}");
            }
            Op::Readlink(i) => {
                let path = pick(&self.model.tag_list(), *i);
                let got = self.k.readlink(fs, &join("tags", &path));
                let want = match self.model.node(&join("tags", &path)) {
                    Some(Node::Tag(r, _, d)) => Ok(link_text(&r, d).into_bytes()),
                    _ => Err(libc::ENOENT),
                };
                assert_eq!(
                    got.as_ref()
                        .map(|t| String::from_utf8_lossy(t).into_owned()),
                    want.as_ref()
                        .map(|t| String::from_utf8_lossy(t).into_owned()),
                    "readlink tags/{path}"
                );
            }
            Op::Readdir(i) => {
                let path = pick(&self.model.readdir_list(), *i);
                let got = self.k.readdir(fs, &path);
                let want = self.model.listing(&path).ok_or(libc::ENOENT);
                assert_eq!(got, want, "ls {path}");
            }
            Op::ReaddirPlus(i) => {
                let path = pick(&self.model.readdir_list(), *i);
                let got = self.k.readdirplus(fs, &path);
                let want = self.model.listing(&path).ok_or(libc::ENOENT);
                assert_eq!(got, want, "ls -l {path}");
            }
            Op::Evict(i) => {
                let cached: Vec<String> = self.k.dentries.keys().cloned().collect();
                let path = pick(&cached, *i);
                self.k.evict(fs, &path);
            }
            Op::Enter(d) => {
                let path = format!("digests/{}/rootfs/etc", hex(*d as u8));
                let got = self.k.pin(fs, &path);
                let want = self.model.node(&path).map(|_| ()).ok_or(libc::ENOENT);
                assert_eq!(got.as_ref().map(|_| ()).map_err(|e| *e), want, "cd {path}");
                if let Ok(chain) = got {
                    self.procs.push(Proc { digest: *d, chain });
                }
            }
            Op::Exit(i) => {
                if self.procs.is_empty() {
                    return;
                }
                let p = self.procs.remove(usize::from(*i) % self.procs.len());
                self.k.unpin(fs, &p.chain);
                if !self.procs.iter().any(|q| q.digest == p.digest) {
                    self.model.zombie[p.digest] = false;
                }
            }
            Op::Read(i) => {
                if self.procs.is_empty() {
                    return;
                }
                let p = &self.procs[usize::from(*i) % self.procs.len()];
                let cwd = *p.chain.last().expect("chain");
                let got = self.k.read_at(fs, cwd, "os-release");
                assert_eq!(
                    got.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    Ok(os_release(p.digest as u8)),
                    "a process in digests/{}/rootfs/etc reads os-release",
                    hex(p.digest as u8)
                );
            }
            Op::Symlink(dir, name, tgt) => {
                let repo = pick(&self.model.dir_list(), *dir);
                let name = pick(&NAMES, *name);
                let tags = self.model.tag_list();
                let (text, d) = match tgt {
                    Tgt::Digest(d) => (link_text(&repo, *d), Some(*d)),
                    Tgt::Absolute(d) => (
                        format!("{}/digests/{}", super::MOUNTPOINT, hex(*d as u8)),
                        Some(*d),
                    ),
                    Tgt::Ref(d) => (format!("sha256:{}", hex(*d as u8)), Some(*d)),
                    Tgt::Tag(i) => {
                        let t = pick(&tags, *i);
                        let (r, n) = split(&t);
                        let d = self.model.tags.get(&(r.into(), n.into())).copied();
                        (format!("{}{t}", "../".repeat(depth(&repo))), d)
                    }
                    Tgt::TagAbsolute(i) => {
                        let t = pick(&tags, *i);
                        let (r, n) = split(&t);
                        let d = self.model.tags.get(&(r.into(), n.into())).copied();
                        (format!("{}/tags/{t}", super::MOUNTPOINT), d)
                    }
                };
                let path = join(&repo, name);
                let got = self.k.symlink(fs, &join("tags", &path), &text);
                let want = self.model.symlink(&repo, name, d);
                assert_eq!(got, want, "ln -s {text} tags/{path}");
            }
            Op::Unlink(i) => {
                let path = pick(&self.model.tag_list(), *i);
                let got = self.k.unlink(fs, &join("tags", &path));
                let want = self.model.unlink(&path, &held);
                assert_eq!(got, want, "rm tags/{path}");
            }
            Op::Rename(from, dir, name, mode) => {
                let from = pick(&self.model.any_list(), *from);
                let to = join(&pick(&self.model.dir_list(), *dir), pick(&NAMES, *name));
                let got = self
                    .k
                    .rename(fs, &join("tags", &from), &join("tags", &to), mode.flags());
                let want = self.model.rename(&from, &to, *mode, &held);
                assert_eq!(got, want, "mv ({mode:?}) tags/{from} tags/{to}");
            }
            Op::Mkdir(dir, name) => {
                let parent = pick(&self.model.dir_list(), *dir);
                let name = pick(&NAMES, *name);
                let path = join(&parent, name);
                let got = self.k.mkdir(fs, &join("tags", &path));
                let want = self.model.mkdir(&parent, name);
                assert_eq!(got, want, "mkdir tags/{path}");
            }
            Op::Rmdir(i) => {
                let dirs: Vec<String> = self.model.dir_list().into_iter().skip(1).collect();
                let path = pick(&dirs, *i);
                let got = self.k.rmdir(fs, &join("tags", &path));
                let want = self.model.rmdir(&path);
                assert_eq!(got, want, "rmdir tags/{path}");
            }
            Op::OtherTag(dir, name, d, order) => {
                let dirs: Vec<String> = self
                    .model
                    .dir_list()
                    .into_iter()
                    .filter(|p| !p.is_empty() && names::not_normalized(p).is_none())
                    .filter(|p| ancestors(p).all(|a| !self.model.is_tag(&a)))
                    .collect();
                if dirs.is_empty() {
                    return;
                }
                let repo = pick(&dirs, *dir);
                let name = pick(&NAMES, *name);
                if self.model.dirs.contains(&join(&repo, name)) {
                    return;
                }
                let pulled = !self.model.on_disk[*d];
                if *order == Order::DirThenLink || !pulled {
                    self.pull(*d);
                    self.link(&repo, name, *d);
                } else {
                    self.link(&repo, name, *d);
                    if *order == Order::LinkSeenThenDir {
                        self.poll();
                        let mut waiting = self.model.clone();
                        // (A tag it replaced is gone, and collects nothing: another
                        // writer's change.)
                        waiting.tags.remove(&(repo.clone(), name.to_string()));
                        waiting.dirs.extend(ancestors(&repo));
                        let fs = &mounted(&self.m).fs;
                        let path = join("tags", &join(&repo, name));
                        assert_eq!(
                            self.k.resolve(fs, &path).map(|_| ()),
                            Err(libc::ENOENT),
                            "{path}, waiting for its digest directory"
                        );
                        let dir = join("tags", &repo);
                        assert_eq!(
                            self.k.readdir(fs, &dir),
                            waiting.listing(&dir).ok_or(libc::ENOENT),
                            "ls {dir}, a tag waiting for its digest directory"
                        );
                    }
                    self.pull(*d);
                }
                if !self.model.on_disk[*d] {
                    // The same bytes are back in the store: the trashed copy goes.
                    self.model.zombie[*d] = false;
                }
                self.model.on_disk[*d] = true;
                self.model.dirs.extend(ancestors(&repo));
                self.model.tags.insert((repo, name.into()), *d);
                self.poll();
            }
            Op::OtherUntag(i) => {
                let tags: Vec<(String, String)> = self.model.tags.keys().cloned().collect();
                if tags.is_empty() {
                    return;
                }
                let (r, t) = pick(&tags, *i);
                fs::remove_file(self.fx.p(&format!("{REPOSITORIES}/{r}/{t}"))).expect("rm");
                self.model.tags.remove(&(r, t));
                self.poll();
            }
            Op::OtherRmdir(i) => {
                let dirs: Vec<String> = self.model.dirs.iter().cloned().collect();
                if dirs.is_empty() {
                    return;
                }
                let path = pick(&dirs, *i);
                if self
                    .model
                    .listing(&join("tags", &path))
                    .is_some_and(|l| !l.is_empty())
                {
                    return;
                }
                fs::remove_dir(self.fx.p(&format!("{REPOSITORIES}/{path}"))).expect("rmdir");
                self.model.dirs.remove(&path);
                self.poll();
            }
            Op::Remount => {
                self.remount();
                return;
            }
            Op::OtherRemove(d) => {
                if !self.model.on_disk[*d] {
                    return;
                }
                let of: Vec<(String, String)> = self
                    .model
                    .tags
                    .iter()
                    .filter(|(_, x)| **x == *d)
                    .map(|(k, _)| k.clone())
                    .collect();
                for (r, t) in &of {
                    fs::remove_file(self.fx.p(&format!("{REPOSITORIES}/{r}/{t}"))).expect("rm");
                    self.model.tags.remove(&(r.clone(), t.clone()));
                }
                fs::remove_dir_all(self.fx.p(&format!("{CONTENT}/{}", hex(*d as u8))))
                    .expect("RemoveAll");
                self.model.on_disk[*d] = false;
                self.poll();
            }
            Op::Gc => {
                let args = crate::admin::gc::GcArgs {
                    store: self.fx.root().to_path_buf(),
                    dry_run: false,
                };
                let (mut o, mut e) = (Vec::new(), Vec::new());
                let rc = crate::admin::gc::run_to(&args, &mut o, &mut e);
                assert_eq!(rc, 0, "imagefs gc: {}", String::from_utf8_lossy(&e));
                for d in 0..N {
                    if self.model.on_disk[d] && !self.model.tagged(d) {
                        self.model.on_disk[d] = false;
                    }
                }
                self.poll();
            }
        }
        self.deliver();
        self.steps += 1;
    }

    /// hypeman's pull and tag: the digest directory made aside and renamed into place if
    /// missing, the repository directories made, the link made aside and renamed over.
    fn pull(&self, d: usize) {
        let dir = self.fx.p(&format!("{CONTENT}/{}", hex(d as u8)));
        let aside = self.fx.root().with_file_name("aside");
        if !dir.exists() {
            let _ = fs::remove_dir_all(&aside);
            real_digest_dir(&self.fx, &aside, d as u8, &self.images[d]);
            fs::rename(&aside, &dir).expect("pull");
        }
    }

    fn link(&self, repo: &str, tag: &str, d: usize) {
        let aside = self.fx.root().with_file_name("aside");
        let rdir = self.fx.p(&format!("{REPOSITORIES}/{repo}"));
        fs::create_dir_all(&rdir).expect("mkdir -p");
        let text = format!(
            "{}{CONTENT}/{}",
            "../".repeat(depth(repo) + 1),
            hex(d as u8)
        );
        let _ = fs::remove_file(&aside);
        symlink(text, &aside).expect("symlink");
        fs::rename(&aside, rdir.join(tag)).expect("retag");
    }

    /// Everything the model says, checked.
    fn check(&self, ctx: &str) {
        let model = &self.model;
        // The store on disk and its index.
        let root = self.fx.root();
        let mut disk = Disk::default();
        let repos = root.join(REPOSITORIES);
        if repos.is_dir() {
            walk_tree(root, &repos, "", true, &mut disk);
        }
        let want_tags: BTreeMap<(String, String), (bool, names::Digest)> = model
            .tags
            .iter()
            .map(|(k, &d)| (k.clone(), (true, dg(d as u8))))
            .collect();
        assert_eq!(disk.tags, want_tags, "{ctx}: tags on disk");
        let want_repos: BTreeSet<(String, bool)> =
            model.dirs.iter().map(|p| (p.clone(), true)).collect();
        assert_eq!(
            disk.repos, want_repos,
            "{ctx}: repository directories on disk"
        );
        let content: BTreeSet<String> = fs::read_dir(root.join(CONTENT))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let want_content: BTreeSet<String> = (0..N)
            .filter(|&d| model.on_disk[d])
            .map(|d| hex(d as u8))
            .collect();
        assert_eq!(content, want_content, "{ctx}: digest directories on disk");
        let snap = crate::store::tests::fixture::snap(&mounted(&self.m).store);
        assert_eq!(snap.tags, want_tags, "{ctx}: index tags");
        assert_eq!(snap.repos, want_repos, "{ctx}: index repositories");
        let want_refs: BTreeMap<String, u32> = (0..N)
            .filter(|&d| model.on_disk[d])
            .map(|d| {
                let n = model.tags.values().filter(|&&x| x == d).count() as u32;
                (format!("{CONTENT}/{}", hex(d as u8)), n)
            })
            .collect();
        assert_eq!(snap.dirs, want_refs, "{ctx}: index reference counts");
        let bk = crate::store::journal::Journal::new(root).dir;
        let count = |sub: &str| fs::read_dir(bk.join(sub)).map_or(0, |rd| rd.count());
        assert_eq!(count("intents"), 0, "{ctx}: intents left");
        let zombies = model.zombie.iter().filter(|&&z| z).count();
        assert_eq!(count("trash"), zombies, "{ctx}: trash (images in use only)");

        // What the kernel caches.
        let fs = &mounted(&self.m).fs;
        for (path, &ino) in &self.k.dentries {
            let node = model.node(path);
            let key = fs.inodes.lock().key(ino).cloned();
            let matches = match (&node, &key) {
                (Some(Node::Root), _) => true,
                (Some(Node::Dir(p)), Some(NodeKey::TagsDir(q))) => p == q,
                (Some(Node::Tag(r, t, _)), Some(NodeKey::Tag(r2, t2))) => r == r2 && t == t2,
                (Some(Node::Digests), Some(NodeKey::Digests)) => true,
                (Some(Node::Digest(d)), Some(NodeKey::Digest(i))) => i.digest == dg(*d as u8),
                (Some(Node::InDigest(d, _)), Some(k)) => {
                    k.image().is_some_and(|i| i.digest == dg(*d as u8))
                }
                _ => false,
            };
            assert!(
                matches,
                "{ctx}: the kernel caches {path} as inode {ino} ({key:?}); the mount has {node:?} there"
            );
            if let Some(text) = self.k.links.get(&ino)
                && let Some(Node::Tag(r, _, d)) = &node
            {
                assert_eq!(
                    String::from_utf8_lossy(text),
                    link_text(r, *d),
                    "{ctx}: the kernel's cached text of {path}"
                );
            }
            if let Some(l) = self.k.listings.get(&ino) {
                assert_eq!(
                    Some(l),
                    model.listing(path).as_ref(),
                    "{ctx}: the kernel's cached listing of {path}"
                );
            }
        }

        // The in-use rule.
        for p in &self.procs {
            let cwd = *p.chain.last().expect("chain");
            assert!(
                fs.getattr(cwd).is_ok(),
                "{ctx}: stat of a process's cwd in digests/{}/rootfs/etc",
                hex(p.digest as u8)
            );
        }
        for d in 0..N {
            if model.on_disk[d] || self.procs.iter().any(|p| p.digest == d) {
                continue;
            }
            let cached_under = self
                .k
                .dentries
                .keys()
                .any(|p| under(p, &format!("digests/{}", hex(d as u8))));
            if cached_under {
                continue; // reported above as stale
            }
            let id = fs.inodes.lock().image_of(&DirKey::Content(dg(d as u8)));
            assert!(
                fs.open_images.cached(&id).is_none(),
                "{ctx}: the image of removed digest {d}, which nobody holds, is still open"
            );
            assert!(
                !fs.inodes.lock().zombies.contains_key(&id),
                "{ctx}: removed digest {d}, which nobody holds, still waits in the trash"
            );
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let d = 0..N;
    let mode = prop_oneof![
        Just(Mode::Replace),
        Just(Mode::NoReplace),
        Just(Mode::Exchange)
    ];
    let order = prop_oneof![
        Just(Order::DirThenLink),
        Just(Order::LinkThenDir),
        Just(Order::LinkSeenThenDir)
    ];
    let tgt = prop_oneof![
        3 => (0..N).prop_map(Tgt::Digest),
        1 => (0..N).prop_map(Tgt::Absolute),
        1 => (0..N).prop_map(Tgt::Ref),
        3 => any::<u8>().prop_map(Tgt::Tag),
        1 => any::<u8>().prop_map(Tgt::TagAbsolute),
    ];
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Lookup),
        4 => any::<u8>().prop_map(Op::Readlink),
        2 => any::<u8>().prop_map(Op::Readdir),
        2 => any::<u8>().prop_map(Op::ReaddirPlus),
        2 => any::<u8>().prop_map(Op::Evict),
        2 => d.clone().prop_map(Op::Enter),
        2 => any::<u8>().prop_map(Op::Exit),
        2 => any::<u8>().prop_map(Op::Read),
        4 => (any::<u8>(), any::<u8>(), tgt).prop_map(|(a, b, t)| Op::Symlink(a, b, t)),
        3 => any::<u8>().prop_map(Op::Unlink),
        6 => (any::<u8>(), any::<u8>(), any::<u8>(), mode)
            .prop_map(|(a, b, c, m)| Op::Rename(a, b, c, m)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Mkdir(a, b)),
        2 => any::<u8>().prop_map(Op::Rmdir),
        3 => (any::<u8>(), any::<u8>(), d.clone(), order)
            .prop_map(|(a, b, d, o)| Op::OtherTag(a, b, d, o)),
        1 => any::<u8>().prop_map(Op::OtherUntag),
        1 => any::<u8>().prop_map(Op::OtherRmdir),
        1 => Just(Op::Remount),
        1 => d.prop_map(Op::OtherRemove),
        1 => Just(Op::Gc),
    ]
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

static CASES: AtomicUsize = AtomicUsize::new(0);
static STEPS: AtomicUsize = AtomicUsize::new(0);

/// Runs `ops` from the start, checking after each; returns the steps run.
fn run(images: &[Vec<u8>], ops: &[Op]) -> usize {
    let mut r = Run::new(images.to_vec());
    r.check("start");
    let trace = std::env::var_os("IMAGEFS_MODEL_TRACE").is_some();
    for (i, op) in ops.iter().enumerate() {
        if trace {
            eprintln!("step {i} {op:?}; tags {:?}", r.model.tags);
        }
        r.step(op);
        r.check(&format!("after step {i} {op:?}"));
    }
    // Every process exits: every image is released.
    while !r.procs.is_empty() {
        r.step(&Op::Exit(0));
    }
    r.check("all processes gone");
    r.steps
}

#[test]
fn random_operations_through_the_mount_match_the_model() {
    let Some(images) = (0..N as u8).map(image).collect::<Option<Vec<_>>>() else {
        imagefs_erofs::testing::need(
            &[imagefs_erofs::testing::Need::MkfsErofs],
            "random_operations_through_the_mount_match_the_model",
        );
        return;
    };
    let cases = env_usize("IMAGEFS_MODEL_CASES", 256);
    let steps = env_usize("IMAGEFS_MODEL_STEPS", 40);
    let config = ProptestConfig {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let started = std::time::Instant::now();
    proptest!(config, |(ops in prop::collection::vec(op_strategy(), 1..=steps))| {
        let steps = run(&images, &ops);
        CASES.fetch_add(1, Ordering::Relaxed);
        STEPS.fetch_add(steps, Ordering::Relaxed);
    });
    eprintln!(
        "mount model: {} cases, {} steps, {:.1} s (IMAGEFS_MODEL_CASES, IMAGEFS_MODEL_STEPS)",
        CASES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// Sequences the model found, shrunk, each the failure of a bug fixed since.
#[test]
fn found_sequences_match_the_model() {
    let Some(images) = (0..N as u8).map(image).collect::<Option<Vec<_>>>() else {
        return;
    };
    let found: Vec<Vec<Op>> = vec![
        vec![
            Op::Unlink(43),
            Op::OtherTag(96, 41, 0, Order::DirThenLink),
            Op::OtherTag(77, 79, 1, Order::DirThenLink),
            Op::Unlink(36),
            Op::Enter(0),
            Op::Unlink(97),
            Op::OtherTag(12, 0, 0, Order::DirThenLink),
            Op::Enter(0),
        ],
        vec![
            // `mv tags/g.io tags/h.io/a/b/c/d/t0` with `c` a tag: the kernel follows the tag
            // into `digests/<hex>/`, so ENOENT (the simulated kernel said ENOTDIR).
            Op::Unlink(18),
            Op::Rename(165, 3, 0, Mode::Replace),
            Op::Symlink(148, 40, Tgt::Digest(0)),
            Op::Rename(32, 65, 0, Mode::Replace),
        ],
    ];
    for ops in found {
        run(&images, &ops);
    }
}
