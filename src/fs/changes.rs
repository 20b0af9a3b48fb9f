//! Changes through `tags/`: ln -s, rm, mv, mkdir, rmdir; and what the kernel must forget
//! after our GC or another writer's change.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fuser::FileAttr;
use log::{Level, info};

use super::core::name_str;
use super::errno::{Error, Result};
use super::inodes::{self, ImageId, NodeKey};
use super::notify::{Inval, Signal};
use super::{ImageFs, target};
use crate::store::{self, DirKey, RenameMode, names};

impl ImageFs {
    pub(super) fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<(FileAttr, Duration)> {
        let _applies = self.mutation();
        let p = self.tags_parent(parent, "mkdir")?;
        self.store.mkdir(&p, name.as_bytes(), mode, uid, gid)?;
        self.durable(&[(parent, name)])?;
        let name = name_str(name)?;
        self.entry(NodeKey::TagsDir(names::join(&p, name)))
    }

    pub(super) fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<(FileAttr, Duration)> {
        let _applies = self.mutation();
        let p = self.tags_parent(parent, "symlink")?;
        let tag = store::check_new_tag(&p, name.as_bytes())?.to_string();
        store::check_hypeman_repo(&p, &tag)?;
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
        self.durable(&[(parent, name)])?;
        self.entry(NodeKey::Tag(p, tag))
    }

    pub(super) fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        let _applies = self.mutation();
        let p = self.tags_parent(parent, "unlink")?;
        let name = name_str(name)?;
        let is_dir = self.store.entry(&p, name) == Some(store::Entry::Dir);
        if is_dir {
            return Err(Error::new(
                fuser::Errno::EISDIR,
                Level::Info,
                format!("unlink tags/{p}/{name}: is a directory"),
            ));
        }
        // The store lock is released when this returns; the fsync and the deletion of what
        // the tag's removal collected are left, and run while the kernel drops the image.
        let staged = self.store.remove_tag_staged(&p, name)?;
        info!("untagged {p}:{name}");
        self.inodes
            .lock()
            .detach(&NodeKey::Tag(p, name.to_string()));
        let mut forget = Forget::default();
        self.collected(staged.collected(), &mut forget);
        let awaiting = self.send_forget(&mut forget);
        staged.finish();
        self.forgotten(awaiting, forget);
        self.durable(&[(parent, OsStr::new(name))])
    }

    pub(super) fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        let _applies = self.mutation();
        let p = self.tags_parent(parent, "rmdir")?;
        let name = name_str(name)?;
        let path = names::join(&p, name);
        self.store.rmdir(&path)?;
        self.inodes.lock().detach(&NodeKey::TagsDir(path));
        self.durable(&[(parent, OsStr::new(name))])
    }

    pub(super) fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let _applies = self.mutation();
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
        let (is_dir, is_tag) = match self.store.entry(&p, name) {
            Some(store::Entry::Dir) => (true, false),
            Some(store::Entry::Tag(_)) => (false, true),
            None => (false, false),
        };
        if is_dir {
            let from = names::join(&p, name);
            // (A name outside the grammar is refused by the store, with that reason.)
            if mode != RenameMode::Exchange
                && let Some(to) = newname.to_str().map(|n| names::join(&np, n))
                && names::check_repo(&to).is_ok()
            {
                self.store.check_hypeman_move(&from, &to)?;
            }
            self.store
                .rename_dir(&from, &np, newname.as_bytes(), mode)?;
            let to = names::join(&np, name_str(newname)?);
            self.inodes.lock().rename_subtree(&from, &to);
            self.forget_tag_texts_under(&to);
            info!("moved tags/{from} to tags/{to}");
            return self.durable(&[(parent, OsStr::new(name)), (newparent, newname)]);
        }
        if !is_tag {
            return Err(Error::not_found(format!("tags/{p}/{name}")));
        }
        // An exchange makes no new name; anything else may.
        if mode != RenameMode::Exchange {
            let to = store::check_new_tag(&np, newname.as_bytes())?;
            store::check_hypeman_repo(&np, to)?;
        }
        let staged = self
            .store
            .rename_tag_staged((&p, name), &np, newname.as_bytes(), mode)?;
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
        let mut forget = Forget::default();
        forget
            .awaited
            .extend(moved.into_iter().flatten().map(Inval::Inode));
        info!("renamed {p}:{name} to {np}:{newname}");
        self.collected(staged.collected(), &mut forget);
        let awaiting = self.send_forget(&mut forget);
        staged.finish();
        self.forgotten(awaiting, forget);
        self.durable(&[(parent, OsStr::new(name)), (newparent, OsStr::new(newname))])
    }

    /// EIO if the change this request made is not on disk (`store::durability`: its
    /// directory's fsync failed): made and visible, it may not survive a power cut, so it is
    /// not acknowledged. The kernel, told the request failed, would keep its dentries of
    /// the names as they were: they are dropped (on the lane nobody waits for: the
    /// directory's lock is held by this request).
    fn durable(&self, names: &[(u64, &OsStr)]) -> Result<()> {
        let Some(what) = store::durability::take_unsynced() else {
            return Ok(());
        };
        for (parent, name) in names {
            self.inval.send(Inval::Entry(*parent, name.to_os_string()));
            self.inval.send(Inval::Inode(*parent));
        }
        Err(Error::new(
            fuser::Errno::EIO,
            Level::Warn,
            format!(
                "{what}: the change is made but may not survive a power cut; reported as failed"
            ),
        ))
    }

    /// A repository directory moved to `dir`: every tag under it, at any depth, keeps its
    /// inode (the kernel moved its dentries), but may read differently now (another depth:
    /// `../` once per level). The kernel caches symlink text per inode (FUSE_CACHE_SYMLINKS),
    /// so each held tag's inode is invalidated, and waited for (an inode takes no directory
    /// lock: the awaited lane) so that a `readlink` after `mv` returns sees the new text.
    fn forget_tag_texts_under(&self, dir: &str) {
        let prefix = format!("{dir}/");
        let held = self.inodes.lock().held_tags();
        let moved = held
            .into_iter()
            .filter(|(repo, _, _)| repo == dir || repo.starts_with(&prefix))
            .map(|(_, _, ino)| Inval::Inode(ino))
            .collect();
        self.inval.send_awaited(moved).wait(Duration::from_secs(1));
    }

    /// Drops from the kernel's caches what other writers changed in the store.
    pub(super) fn apply_changes(&self, changes: Vec<store::watch::Change>) {
        use store::watch::Change;
        let mut forget = Forget::default();
        for c in changes {
            match c {
                Change::Tag { repo, tag } => {
                    // A tag another writer made hints that its digest changed state (legacy
                    // hypeman tags a pull once it is ready): the kernel drops the digest
                    // directory's cached attributes and listing, which may still show a pull in
                    // progress (no `rootfs`), instead of keeping them for their TTL. (Nothing
                    // watches inside digest directories.)
                    let named = self.store.tag(&repo, &tag).map(|t| t.key);
                    let (parent, ino, digest) = {
                        let mut inodes = self.inodes.lock();
                        let still_tagged = named.is_some();
                        let digest = named.map(|k| {
                            let image = inodes.image_of(&k);
                            inodes.ino_of(&NodeKey::Digest(image))
                        });
                        let key = NodeKey::Tag(repo.clone(), tag.clone());
                        let ino = inodes.ino_of(&key);
                        // A tag still there (made, or retargeted) keeps its inode: the kernel
                        // may have looked the name up already (a listing that came first), and
                        // a detached inode would answer its readlink EINVAL until the
                        // invalidation below lands. Its cached text goes with Inval::Inode.
                        if !still_tagged {
                            inodes.detach(&key);
                        }
                        (
                            inodes.ino_of(&NodeKey::TagsDir(repo)),
                            ino,
                            digest.flatten(),
                        )
                    };
                    if let Some(p) = parent {
                        self.inval.send(Inval::Entry(p, tag.into()));
                        self.inval.send(Inval::Inode(p));
                    }
                    for i in [ino, digest].into_iter().flatten() {
                        self.inval.send(Inval::Inode(i));
                    }
                }
                Change::Dir(path) => {
                    let (parent, last) = names::split_last(&path);
                    if let Some(p) = self.inodes.lock().ino_of(&NodeKey::TagsDir(parent.into())) {
                        self.inval.send(Inval::Entry(p, last.into()));
                        self.inval.send(Inval::Inode(p));
                    }
                }
                Change::DirGone(dir) => {
                    let d = dir.digest();
                    let image = self.inodes.lock().image_of(&dir);
                    self.ready.lock().remove(&image);
                    self.image_left(&image);
                    if self.store.has_digest(&d) {
                        self.digest_dirs_changed(&dir, &mut forget);
                    } else {
                        // Nobody waits for another writer's change: on the lane for it.
                        let mut gone = Forget::default();
                        self.forget_digest(&image, &mut gone);
                        for i in gone.awaited.into_iter().chain(gone.queued) {
                            self.inval.send(i);
                        }
                        self.inval.send(Inval::Inode(inodes::DIGESTS));
                        forget.release |= gone.release;
                    }
                }
                Change::DirAdded(dir) => {
                    // A collected directory kept in the trash for its users, back in the
                    // store (hypeman pulled the digest again): the same bytes, served from
                    // there now, so the trashed copy goes at once, not when the kernel
                    // forgets the last inode of the digest (which it may never do while the
                    // directory that came back is in use).
                    let back = {
                        let mut inodes = self.inodes.lock();
                        let image = inodes.image_of(&dir);
                        inodes
                            .zombies
                            .remove(&image)
                            .filter(|p| !self.kernel_held.lock().is_waiting(p))
                    };
                    if let Some(trashed) = back {
                        self.store.release_trashed(&dir.digest(), &trashed);
                    }
                    if self.store.dirs_of(&dir.digest()).len() > 1 {
                        self.digest_dirs_changed(&dir, &mut forget);
                    }
                    self.inval.send(Inval::Inode(inodes::DIGESTS));
                    self.digests_changed.raise(Signal::MOUNT);
                }
                // A deferred collection done by the store's retry: as our own.
                Change::Collected(c) => self.collected(std::slice::from_ref(&c), &mut forget),
                // The store logged it and took the tag out of the index (its Tag change
                // follows); the metrics count it until the tag leaves the store.
                Change::Dangling { repo, tag, dir } => {
                    self.metrics.dangling_found(repo, tag, dir);
                }
            }
        }
        let awaiting = self.send_forget(&mut forget);
        self.forgotten(awaiting, forget);
    }

    /// Sends what a change makes the kernel forget ([`Forget`]): the awaited invalidations
    /// together, then the ones nobody waits for.
    fn send_forget(&self, forget: &mut Forget) -> super::notify::Awaiting<'_> {
        if !forget.awaited.is_empty() || !forget.queued.is_empty() {
            log::debug!(
                "invalidations: awaited {:?}; unawaited {:?}",
                forget.awaited,
                forget.queued
            );
        }
        let awaiting = self.inval.send_awaited(std::mem::take(&mut forget.awaited));
        for i in std::mem::take(&mut forget.queued) {
            self.inval.send(i);
        }
        awaiting
    }

    /// Waits until the kernel dropped what a change sent together ([`Forget`]), then tells
    /// the binder what the change asked for.
    fn forgotten(&self, awaiting: super::notify::Awaiting<'_>, forget: Forget) {
        awaiting.wait(Duration::from_secs(1));
        let what = if forget.remount { Signal::MOUNT } else { 0 }
            | if forget.release { Signal::RELEASE } else { 0 };
        if what != 0 {
            self.digests_changed.raise(what);
        }
    }

    /// A digest left the store: the kernel forgets its `digests/<hex>` entry. Without image
    /// trees of their own, the change waits for the entry to be dropped. With them, the
    /// entry's `rootfs` has a tree mounted, and dropping either detaches it, which takes
    /// the kernel an RCU grace period: the change waits only for the entry to expire (a
    /// lookup of it asks the daemon then, which answers ENOENT; `notify.rs`), and the
    /// `rootfs` dentry, then the entry, are dropped on the lane nobody waits for: the tree
    /// is detached (lazily: processes inside keep it), the kernel lets go of the digest's
    /// inodes, and the image is released once nobody uses it. The read-only connection
    /// drops its entry too.
    fn forget_digest(&self, image: &ImageId, forget: &mut Forget) {
        let d = image.digest;
        let entry = Inval::Entry(inodes::DIGESTS, d.hex().into());
        if !self.tree_conn_on.load(std::sync::atomic::Ordering::Relaxed) {
            forget.awaited.push(entry);
            return;
        }
        forget
            .awaited
            .push(Inval::Expire(inodes::DIGESTS, d.hex().into()));
        if let Some(ino) = self.inodes.lock().ino_of(&NodeKey::Digest(*image)) {
            forget
                .queued
                .push(Inval::Entry(ino, super::rootfs::ROOTFS.into()));
        }
        forget.queued.push(entry);
        // The read-only connection's root is inode 1 on that connection.
        self.inval_tree_conn
            .send(Inval::Entry(fuser::INodeNo::ROOT.0, d.hex().into()));
        // The binder looks at once whether the kernel let go of the image's file
        // (`kernel_held`); the tree slot this frees is filled on its next round.
        forget.release = true;
    }

    /// A directory of digest `dir`'s, which keeps others, came or went. What `digests/` shows of
    /// the digest may have changed (`store::images`): another primary behind `<hex>`, a
    /// `<hex>@<repo>` entry more or less, and so the text of the digest's tags, which the
    /// kernel caches (FUSE_CACHE_SYMLINKS). Drops all of that from the kernel's caches; a
    /// tree mounted on `digests/<hex>/rootfs` of another primary is detached (lazily: its
    /// users keep it) and mounted again for the new one.
    fn digest_dirs_changed(&self, dir: &DirKey, forget: &mut Forget) {
        let d = dir.digest();
        let dirs = self.store.dirs_of(&d);
        // The primary is the first directory: it changed if `dir` came first or went
        // from before the first that is left.
        let primary_changed = dirs.first().is_none_or(|p| p == dir || dir < p);
        if primary_changed {
            forget
                .awaited
                .push(Inval::Entry(inodes::DIGESTS, d.hex().into()));
            if self.tree_conn_on.load(std::sync::atomic::Ordering::Relaxed) {
                self.inval_tree_conn
                    .send(Inval::Entry(fuser::INodeNo::ROOT.0, d.hex().into()));
            }
            forget.remount = true;
        }
        for k in dirs.iter().chain(std::iter::once(dir)) {
            if let DirKey::Legacy(..) = k {
                let name = store::images::entry_name(k, false);
                forget
                    .awaited
                    .push(Inval::Entry(inodes::DIGESTS, name.into()));
            }
        }
        // The kernel caches the listing of digests/ (no OPENDIR).
        forget.awaited.push(Inval::Inode(inodes::DIGESTS));
        let held = self.inodes.lock().held_tags();
        for (repo, tag, ino) in held {
            if self
                .store
                .tag(&repo, &tag)
                .is_some_and(|t| t.key.digest() == d)
            {
                self.inval.send(Inval::Inode(ino));
            }
        }
    }

    /// After GC took digest directories out of the store (their deletion may still be
    /// running): what the kernel caches of each, and of digests that no longer have any
    /// directory, goes into `forget` (the caller sends it together).
    fn collected(&self, done: &[store::Collected], forget: &mut Forget) {
        for c in done {
            let image = self.inodes.lock().image_of(&c.dir);
            self.ready.lock().remove(&image);
            // An open image would keep its deleted file's space (a listing opens it
            // without the kernel holding an inode); one in use stays open for its users.
            self.image_left(&image);
            if !c.digest_gone {
                self.digest_dirs_changed(&c.dir, forget);
            } else {
                self.forget_digest(&image, forget);
                // The kernel caches the listing of digests/ (no OPENDIR).
                forget.awaited.push(Inval::Inode(inodes::DIGESTS));
                if let Some(ino) = self.inodes.lock().ino_of(&NodeKey::Digest(image)) {
                    self.inval.send(Inval::Inode(ino));
                }
            }
        }
    }
}

/// What a change makes the kernel forget: the invalidations its request waits for, sent
/// together on the awaited lane (one wait, not a round trip each; `notify.rs`), those it
/// does not wait for (sent after them, on the other lane), and whether image trees are to
/// be mounted again once they are done (another directory of a digest became its primary:
/// its tree is mounted after the old one's entry is gone), or a collected image's tree may
/// be let go of soon.
#[derive(Default)]
struct Forget {
    awaited: Vec<Inval>,
    queued: Vec<Inval>,
    remount: bool,
    release: bool,
}
