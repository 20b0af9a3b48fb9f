//! The changes: tag, untag, retag, and the repository directories of `tags/`.
//! Every public function here takes the store lock for its whole duration.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use log::{info, warn};

use super::error::{IoContext, Result, StoreError};
use super::fsutil::{self, RenameMode};
use super::gc::Collected;
use super::journal::Intent;
use super::layout::{self, DirKey, Layout};
use super::metadata::Status;
use super::names::{self, Digest, NameError};
use super::{Store, Target};

fn name_err(e: NameError, what: impl FnOnce() -> String) -> StoreError {
    match e {
        NameError::TooLong => StoreError::NameTooLong(what()),
        NameError::Invalid => StoreError::InvalidName(what()),
    }
}

/// Validates the place of a new tag: a repository path (not the root of `tags/`) and a tag.
pub fn check_new_tag<'a>(repo: &str, tag: &'a [u8]) -> Result<&'a str> {
    let shown = || format!("{repo}:{}", String::from_utf8_lossy(tag));
    let tag = names::check_tag(tag).map_err(|e| name_err(e, shown))?;
    if repo.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{tag}: a tag needs a repository (tags/REPO/TAG)"
        )));
    }
    names::check_repo(repo).map_err(|e| name_err(e, || repo.to_string()))?;
    Ok(tag)
}

fn rel(p: &std::path::Path, root: &std::path::Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

impl Store {
    /// `ln -s TARGET tags/REPO/TAG`: creates a tag. Returns the digest it names.
    pub fn create_tag(&self, repo: &str, tag: &[u8], target: &Target) -> Result<Digest> {
        let tag = check_new_tag(repo, tag)?;
        let _g = self.lock()?;
        self.sync_locked();
        let digest = self.resolve(target)?;
        {
            let ix = self.index();
            let node = ix
                .node(repo)
                .ok_or_else(|| StoreError::NotFound(repo.to_string()))?;
            if node.tags.contains_key(tag) || node.subdirs.contains(tag) {
                return Err(StoreError::Exists(format!("{repo}:{tag}")));
            }
        }
        let key = self.choose_dir(repo, digest)?;
        let lay = layout_of(&key);
        self.ensure_store_dir(lay, repo)?;
        let link = self.tag_path(repo, tag, lay);
        match fsutil::install_symlink(
            &layout::tag_target(repo, &key),
            &link,
            RenameMode::NoReplace,
            self.opts.durable,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(StoreError::Exists(link.display().to_string()));
            }
            Err(e) => return Err(e).ctx(|| link.display().to_string()),
        }
        self.index.write().add_tag(repo, tag, key, lay);
        Ok(digest)
    }

    /// `rm tags/REPO/TAG`: removes a tag; if it held the last reference to a collectable
    /// digest directory, that directory is gone from the store when this returns.
    /// Returns the directories collected.
    pub fn remove_tag(&self, repo: &str, tag: &str) -> Result<Vec<Collected>> {
        let _g = self.lock()?;
        self.sync_locked();
        let t = self
            .index()
            .tag(repo, tag)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("{repo}:{tag}")))?;
        let link = self.tag_path(repo, tag, t.layout);
        let intent = self.gc_intent_if_last(&t.key)?;
        if let Err(e) = std::fs::remove_file(&link)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.drop_intent(intent);
            return Err(e).ctx(|| link.display().to_string());
        }
        self.index.write().remove_tag(repo, tag);
        Ok(self.finish_gc(intent, &t.key).into_iter().collect())
    }

    /// `mv`, `ln -sf`, `renameat2`: moves or retags atomically. A replaced tag drops its
    /// reference as unlink does. Returns the directories collected.
    pub fn rename_tag(
        &self,
        from: (&str, &str),
        to_repo: &str,
        to_tag: &[u8],
        mode: RenameMode,
    ) -> Result<Vec<Collected>> {
        let to_tag = check_new_tag(to_repo, to_tag)?;
        let to = (to_repo, to_tag);
        let _g = self.lock()?;
        self.sync_locked();
        let src = self
            .index()
            .tag(from.0, from.1)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("{}:{}", from.0, from.1)))?;
        if from == to {
            return Ok(Vec::new());
        }
        let dst = {
            let ix = self.index();
            let node = ix
                .node(to.0)
                .ok_or_else(|| StoreError::NotFound(to.0.to_string()))?;
            if node.subdirs.contains(to.1) {
                return Err(StoreError::IsDir(format!("{}/{}", to.0, to.1)));
            }
            node.tags.get(to.1).cloned()
        };
        match (mode, &dst) {
            (RenameMode::NoReplace, Some(_)) => {
                return Err(StoreError::Exists(format!("{}:{}", to.0, to.1)));
            }
            (RenameMode::Exchange, None) => {
                return Err(StoreError::NotFound(format!("{}:{}", to.0, to.1)));
            }
            (RenameMode::Exchange, Some(_)) => return self.exchange_tags(from, to),
            _ => {}
        }
        // The moved tag keeps its directory; a legacy one entering another repository
        // needs the content layout.
        let new_key = self.key_for_repo(&src.key, to.0)?;
        let src = self.index().tag(from.0, from.1).cloned().unwrap_or(src);
        let new_layout = layout_of(&new_key);
        let intent = match &dst {
            Some(d) if d.key != new_key => self.gc_intent_if_last(&d.key)?,
            _ => None,
        };
        // A legacy tag entering another repository names `content/<hex>` afterwards: its
        // own legacy directory loses a reference (it was not promoted when the content
        // directory already existed).
        let src_intent = if src.key != new_key {
            match self.gc_intent_if_last(&src.key) {
                Ok(i) => i,
                Err(e) => {
                    self.drop_intent(intent);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let result = self.move_link(from, &src, to, &new_key, dst.as_ref().map(|d| d.layout));
        if let Err(e) = result {
            self.drop_intent(intent);
            self.drop_intent(src_intent);
            return Err(e);
        }
        {
            let mut ix = self.index.write();
            ix.remove_tag(from.0, from.1);
            ix.remove_tag(to.0, to.1);
            ix.add_tag(to.0, to.1, new_key, new_layout);
        }
        let mut collected: Vec<Collected> = match dst {
            Some(d) => self.finish_gc(intent, &d.key).into_iter().collect(),
            None => Vec::new(),
        };
        collected.extend(self.finish_gc(src_intent, &src.key));
        Ok(collected)
    }

    /// The on-disk half of a tag move: one rename when the symlink's text stays right,
    /// else a journaled write-then-unlink.
    fn move_link(
        &self,
        from: (&str, &str),
        src: &super::Tag,
        to: (&str, &str),
        key: &DirKey,
        old_dst_layout: Option<Layout>,
    ) -> Result<()> {
        let new_layout = layout_of(key);
        self.ensure_store_dir(new_layout, to.0)?;
        let src_path = self.tag_path(from.0, from.1, src.layout);
        let dst_path = self.tag_path(to.0, to.1, new_layout);
        let target = layout::tag_target(to.0, key);
        // A replaced tag in the other layout lives at another path, and must go in the same
        // journaled step: after a crash, a leftover twin would shadow the moved tag.
        let twin = old_dst_layout
            .filter(|l| *l != new_layout)
            .map(|l| self.tag_path(to.0, to.1, l));
        if twin.is_none() && src.layout == new_layout && layout::tag_target(from.0, key) == target {
            fsutil::rename(&src_path, &dst_path, RenameMode::Replace)
                .ctx(|| format!("rename {} -> {}", src_path.display(), dst_path.display()))?;
        } else {
            let rec = self
                .journal
                .record(&Intent::Move {
                    from: rel(&src_path, &self.root),
                    to: rel(&dst_path, &self.root),
                })
                .ctx(|| "journal".to_string())?;
            fsutil::install_symlink(&target, &dst_path, RenameMode::Replace, false)
                .ctx(|| dst_path.display().to_string())?;
            std::fs::remove_file(&src_path).ctx(|| src_path.display().to_string())?;
            if let Some(old) = &twin {
                std::fs::remove_file(old).ctx(|| old.display().to_string())?;
            }
            let _ = self.journal.done(&rec);
        }
        if let Some(p) = dst_path.parent() {
            self.fsync_dir(p);
        }
        if let Some(p) = src_path.parent() {
            self.fsync_dir(p);
        }
        Ok(())
    }

    /// RENAME_EXCHANGE of two tags. Returns the directories collected: a legacy directory
    /// whose tag now names `content/<hex>` instead may have lost its last reference.
    fn exchange_tags(&self, a: (&str, &str), b: (&str, &str)) -> Result<Vec<Collected>> {
        let get = |t: (&str, &str)| {
            self.index()
                .tag(t.0, t.1)
                .cloned()
                .ok_or_else(|| StoreError::NotFound(format!("{}:{}", t.0, t.1)))
        };
        let (ta, tb) = (get(a)?, get(b)?);
        // What each position will name after the swap.
        let for_a = self.key_for_repo(&tb.key, a.0)?;
        let for_b = self.key_for_repo(&ta.key, b.0)?;
        let (ta, tb) = (get(a)?, get(b)?);
        let mut intents: Vec<(Option<PathBuf>, DirKey)> = Vec::new();
        for old in [&ta.key, &tb.key] {
            if *old != for_a && *old != for_b && intents.iter().all(|(_, k)| k != old) {
                match self.gc_intent_if_last(old) {
                    Ok(i) => intents.push((i, old.clone())),
                    Err(e) => {
                        intents.into_iter().for_each(|(i, _)| self.drop_intent(i));
                        return Err(e);
                    }
                }
            }
        }
        let result = self.exchange_links(a, b, (&ta, &tb), (&for_a, &for_b));
        if let Err(e) = result {
            intents.into_iter().for_each(|(i, _)| self.drop_intent(i));
            return Err(e);
        }
        {
            let mut ix = self.index.write();
            ix.remove_tag(a.0, a.1);
            ix.remove_tag(b.0, b.1);
            ix.add_tag(a.0, a.1, for_a.clone(), layout_of(&for_a));
            ix.add_tag(b.0, b.1, for_b.clone(), layout_of(&for_b));
        }
        Ok(intents
            .into_iter()
            .flat_map(|(i, k)| self.finish_gc(i, &k))
            .collect())
    }

    /// The on-disk half of an exchange.
    fn exchange_links(
        &self,
        a: (&str, &str),
        b: (&str, &str),
        (ta, tb): (&super::Tag, &super::Tag),
        (for_a, for_b): (&DirKey, &DirKey),
    ) -> Result<()> {
        let (pa, pb) = (
            self.tag_path(a.0, a.1, ta.layout),
            self.tag_path(b.0, b.1, tb.layout),
        );
        let simple = ta.layout == tb.layout
            && layout_of(for_a) == ta.layout
            && layout_of(for_b) == tb.layout
            && layout::tag_target(a.0, for_a) == layout::tag_target(b.0, for_a)
            && layout::tag_target(a.0, for_b) == layout::tag_target(b.0, for_b);
        if simple {
            fsutil::rename(&pa, &pb, RenameMode::Exchange)
                .ctx(|| format!("exchange {} <-> {}", pa.display(), pb.display()))?;
        } else {
            let na = self.tag_path(a.0, a.1, layout_of(for_a));
            let nb = self.tag_path(b.0, b.1, layout_of(for_b));
            let (ta_s, tb_s) = (
                layout::tag_target(a.0, for_a),
                layout::tag_target(b.0, for_b),
            );
            let rec = self
                .journal
                .record(&Intent::Exchange {
                    a: rel(&na, &self.root),
                    a_target: ta_s.clone(),
                    b: rel(&nb, &self.root),
                    b_target: tb_s.clone(),
                })
                .ctx(|| "journal".to_string())?;
            self.ensure_store_dir(layout_of(for_a), a.0)?;
            self.ensure_store_dir(layout_of(for_b), b.0)?;
            fsutil::install_symlink(&ta_s, &na, RenameMode::Replace, false)
                .ctx(|| na.display().to_string())?;
            fsutil::install_symlink(&tb_s, &nb, RenameMode::Replace, false)
                .ctx(|| nb.display().to_string())?;
            if na != pa {
                std::fs::remove_file(&pa).ctx(|| pa.display().to_string())?;
            }
            if nb != pb {
                std::fs::remove_file(&pb).ctx(|| pb.display().to_string())?;
            }
            let _ = self.journal.done(&rec);
        }
        for p in [&pa, &pb] {
            if let Some(d) = p.parent() {
                self.fsync_dir(d);
            }
        }
        Ok(())
    }

    /// `mkdir tags/PARENT/NAME`: a repository directory, made in the content layout.
    pub fn mkdir(&self, parent: &str, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<()> {
        let shown = || format!("{parent}/{}", String::from_utf8_lossy(name));
        let c =
            names::check_repo_component(name, parent.is_empty()).map_err(|e| name_err(e, shown))?;
        let path = names::join(parent, c);
        if path.len() > names::MAX_REPO_LEN {
            return Err(StoreError::NameTooLong(path));
        }
        let _g = self.lock()?;
        self.sync_locked();
        {
            let ix = self.index();
            let node = ix
                .node(parent)
                .ok_or_else(|| StoreError::NotFound(parent.to_string()))?;
            if node.subdirs.contains(c) || node.tags.contains_key(c) {
                return Err(StoreError::Exists(path));
            }
        }
        self.ensure_store_dir(Layout::Content, parent)?;
        let dir = self.root.join(layout::repo_rel_dir(Layout::Content, &path));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            // A store directory without tags or digests: adopt it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).ctx(|| dir.display().to_string()),
        }
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).ctx(|| dir.display().to_string())?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode & 0o7777))
            .ctx(|| dir.display().to_string())?;
        if let Some(p) = dir.parent() {
            self.fsync_dir(p);
        }
        self.index.write().ensure_node(&path, Layout::Content);
        Ok(())
    }

    /// `rmdir tags/PATH`: removes an empty repository directory from both layouts.
    pub fn rmdir(&self, path: &str) -> Result<()> {
        let _g = self.lock()?;
        self.sync_locked();
        self.rmdir_locked(path)
    }

    fn rmdir_locked(&self, path: &str) -> Result<()> {
        let (parent, last) = names::split_last(path);
        // Not `match self.index()...`: the guard would live through the arms, and a second
        // read lock taken while a writer waits deadlocks (parking_lot is writer-fair).
        let found = self.index().node(path).cloned();
        let node = match found {
            Some(n) => n,
            None => {
                let is_tag = self.index().tag(parent, last).is_some();
                return Err(if is_tag {
                    StoreError::NotDir(path.to_string())
                } else {
                    StoreError::NotFound(path.to_string())
                });
            }
        };
        if path.is_empty() {
            return Err(StoreError::Invalid("tags/ itself cannot be removed".into()));
        }
        if !node.is_empty() {
            return Err(StoreError::NotEmpty(path.to_string()));
        }
        for (has, lay) in [
            (node.content, Layout::Content),
            (node.legacy, Layout::Legacy),
        ] {
            if !has {
                continue;
            }
            let dir = self.root.join(layout::repo_rel_dir(lay, path));
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                    if lay == Layout::Legacy && self.only_untagged_digests(&dir, path) {
                        // The mount shows the repository empty: it goes from the mount, while
                        // the digest directories no tag names stay in the store for
                        // `imagefs gc` (unlink never collects them). A remount shows it again.
                        info!(
                            "rmdir tags/{path}: kept {} in the store, it holds digest directories that no tag names",
                            dir.display()
                        );
                    } else {
                        warn!(
                            "rmdir tags/{path}: {} holds entries that are not tags (stray files?)",
                            dir.display()
                        );
                        return Err(StoreError::NotEmpty(path.to_string()));
                    }
                }
                Err(e) => return Err(e).ctx(|| dir.display().to_string()),
            }
            self.index.write().remove_node(path, lay);
        }
        Ok(())
    }

    /// Does the legacy directory of repository `repo` hold nothing but digest directories
    /// without tags?
    fn only_untagged_digests(&self, dir: &std::path::Path, repo: &str) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return false;
        };
        let ix = self.index();
        rd.flatten().all(|e| {
            e.file_type().is_ok_and(|t| t.is_dir())
                && e.file_name()
                    .to_str()
                    .and_then(Digest::parse_hex)
                    .is_some_and(|d| ix.refs(&DirKey::Legacy(repo.to_string(), d)) == Some(0))
        })
    }

    /// `mv tags/A tags/B` for a repository directory: moves its tags (and, in the legacy
    /// layout, its digest directories) with it.
    pub fn rename_dir(
        &self,
        from: &str,
        to_parent: &str,
        to_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        let shown = || format!("{to_parent}/{}", String::from_utf8_lossy(to_name));
        let c = names::check_repo_component(to_name, to_parent.is_empty())
            .map_err(|e| name_err(e, shown))?;
        let to = names::join(to_parent, c);
        if to.len() > names::MAX_REPO_LEN {
            return Err(StoreError::NameTooLong(to));
        }
        if mode == RenameMode::Exchange {
            return Err(StoreError::Invalid(format!(
                "{from} <-> {to}: exchanging repository directories is not supported"
            )));
        }
        let _g = self.lock()?;
        self.sync_locked();
        let node = self
            .index()
            .node(from)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(from.to_string()))?;
        if from == to {
            return Ok(());
        }
        let (existing_dir, existing_tag) = {
            let ix = self.index();
            let p = ix.node(to_parent);
            (
                p.is_some_and(|n| n.subdirs.contains(c)),
                p.is_some_and(|n| n.tags.contains_key(c)),
            )
        };
        if existing_tag {
            return Err(StoreError::NotDir(to));
        }
        if existing_dir {
            if mode == RenameMode::NoReplace {
                return Err(StoreError::Exists(to));
            }
            self.rmdir_locked(&to)?;
        }
        // Check every legacy repository under `from` can live at its new path.
        let moved: Vec<String> = self
            .index()
            .nodes()
            .map(|(k, _)| k.clone())
            .filter(|k| *k == from || k.starts_with(&format!("{from}/")))
            .collect();
        for old in &moved {
            let new = format!("{to}{}", &old[from.len()..]);
            if names::check_repo(&new).is_err() {
                return Err(StoreError::InvalidName(new));
            }
            if node.legacy && layout::is_reserved_top(&new) {
                return Err(StoreError::Invalid(format!(
                    "{new}: a legacy repository cannot be named after the store's own directories"
                )));
            }
        }
        for (has, lay) in [
            (node.content, Layout::Content),
            (node.legacy, Layout::Legacy),
        ] {
            if !has {
                continue;
            }
            if lay == Layout::Content {
                self.ensure_store_dir(lay, to_parent)?;
            } else if !to_parent.is_empty() {
                let p = self.root.join(to_parent);
                std::fs::create_dir_all(&p).ctx(|| p.display().to_string())?;
            }
            let (a, b) = (
                self.root.join(layout::repo_rel_dir(lay, from)),
                self.root.join(layout::repo_rel_dir(lay, &to)),
            );
            let relink = lay == Layout::Content && names::depth(from) != names::depth(&to);
            let rec = if relink {
                Some(
                    self.journal
                        .record(&Intent::Relink {
                            dir: rel(&b, &self.root),
                        })
                        .ctx(|| "journal".to_string())?,
                )
            } else {
                None
            };
            fsutil::rename(&a, &b, RenameMode::NoReplace)
                .ctx(|| format!("rename {} -> {}", a.display(), b.display()))?;
            if let Some(rec) = rec {
                relink_tree(&b, &to)?;
                let _ = self.journal.done(&rec);
            }
            for d in [a.parent(), b.parent()].into_iter().flatten() {
                self.fsync_dir(d);
            }
        }
        self.index.write().move_subtree(from, &to);
        if let Some(w) = self.watcher.lock().as_mut() {
            for (has, lay) in [
                (node.content, Layout::Content),
                (node.legacy, Layout::Legacy),
            ] {
                if has {
                    w.renamed(lay, from, &to);
                }
            }
        }
        Ok(())
    }

    /// Resolves a tag target to a digest.
    fn resolve(&self, target: &Target) -> Result<Digest> {
        match target {
            Target::Digest(d) => {
                if self.index().dirs_of(d).next().is_some() {
                    Ok(*d)
                } else {
                    Err(StoreError::NotFound(format!("digest {d}")))
                }
            }
            Target::Tag { repo, tag } => self
                .index()
                .tag(repo, tag)
                .map(|t| t.key.digest())
                .ok_or_else(|| StoreError::NotFound(format!("tag {repo}:{tag}"))),
        }
    }

    /// The directory a new tag in `repo` should name for `digest`, checked `ready`.
    /// A digest only in another repository's legacy layout is promoted first.
    fn choose_dir(&self, repo: &str, digest: Digest) -> Result<DirKey> {
        let candidates: Vec<DirKey> = self.index().dirs_of(&digest).cloned().collect();
        let local = DirKey::Legacy(repo.to_string(), digest);
        let key = if candidates.contains(&DirKey::Content(digest)) {
            DirKey::Content(digest)
        } else if candidates.contains(&local) {
            local
        } else {
            candidates
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::NotFound(format!("digest {digest}")))?
        };
        match self.status(&key) {
            Ok(Status::Ready) => {}
            Ok(s) => {
                return Err(StoreError::NotReady {
                    what: format!("digest {digest}"),
                    reason: format!("status is {}", s.as_str()),
                });
            }
            Err(reason) => {
                return Err(StoreError::NotReady {
                    what: format!("digest {digest}"),
                    reason,
                });
            }
        }
        self.key_for_repo(&key, repo)
    }

    /// The key a tag in `repo` uses for the directory `key`: itself, unless `key` is another
    /// repository's legacy directory, which is then promoted into the content layout.
    fn key_for_repo(&self, key: &DirKey, repo: &str) -> Result<DirKey> {
        match key {
            DirKey::Legacy(owner, d) if owner != repo => {
                if !self.index().has_dir(&DirKey::Content(*d)) {
                    self.promote(owner, *d)?;
                }
                Ok(DirKey::Content(*d))
            }
            k => Ok(k.clone()),
        }
    }

    /// Moves `<repo>/<hex>` to `content/<hex>` and rewrites that repository's tags naming it.
    fn promote(&self, repo: &str, d: Digest) -> Result<()> {
        let from = DirKey::Legacy(repo.to_string(), d);
        let to = DirKey::Content(d);
        let rec = self
            .journal
            .record(&Intent::Promote {
                repo: repo.to_string(),
                hex: d.hex(),
            })
            .ctx(|| "journal".to_string())?;
        let content = self.root.join(layout::CONTENT);
        std::fs::create_dir_all(&content).ctx(|| content.display().to_string())?;
        let (a, b) = (
            self.root.join(from.rel_path()),
            self.root.join(to.rel_path()),
        );
        if let Err(e) = fsutil::rename(&a, &b, RenameMode::NoReplace) {
            let _ = self.journal.done(&rec);
            return Err(e).ctx(|| format!("promote {} -> {}", a.display(), b.display()));
        }
        info!("promoted {} into {}", a.display(), b.display());
        self.index.write().add_dir(to.clone());
        let tags: Vec<String> = self
            .index()
            .node(repo)
            .map(|n| {
                n.tags
                    .iter()
                    .filter(|(_, t)| t.key == from)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        self.ensure_store_dir(Layout::Content, repo)?;
        for tag in tags {
            let new = self.tag_path(repo, &tag, Layout::Content);
            fsutil::install_symlink(
                &layout::tag_target(repo, &to),
                &new,
                RenameMode::Replace,
                false,
            )
            .ctx(|| new.display().to_string())?;
            let old = self.tag_path(repo, &tag, Layout::Legacy);
            std::fs::remove_file(&old).ctx(|| old.display().to_string())?;
            let mut ix = self.index.write();
            ix.remove_tag(repo, &tag);
            ix.add_tag(repo, &tag, to.clone(), Layout::Content);
        }
        self.index.write().remove_dir(&from);
        self.fsync_dir(&self.root.join(layout::repo_rel_dir(Layout::Content, repo)));
        self.fsync_dir(&self.root.join(repo));
        let _ = self.journal.done(&rec);
        Ok(())
    }
}

pub(super) fn layout_of(key: &DirKey) -> Layout {
    match key {
        DirKey::Content(_) => Layout::Content,
        DirKey::Legacy(..) => Layout::Legacy,
    }
}

/// Rewrites every content-layout tag under `dir` (the store directory of repository
/// `repo`) to its canonical target. Idempotent.
pub(super) fn relink_tree(dir: &std::path::Path, repo: &str) -> Result<()> {
    let rd = std::fs::read_dir(dir).ctx(|| dir.display().to_string())?;
    for entry in rd.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if ft.is_dir() {
            relink_tree(&entry.path(), &names::join(repo, name))?;
        } else if ft.is_symlink() {
            let path = entry.path();
            let Ok(t) = std::fs::read_link(&path) else {
                continue;
            };
            let t = t.to_string_lossy();
            let mut parts = t.rsplit('/');
            let (hex, content) = (parts.next(), parts.next());
            if content == Some(layout::CONTENT)
                && let Some(d) = hex.and_then(Digest::parse_hex)
            {
                let want = layout::tag_target(repo, &DirKey::Content(d));
                if t != want {
                    fsutil::install_symlink(&want, &path, RenameMode::Replace, false)
                        .ctx(|| path.display().to_string())?;
                }
            }
        }
    }
    Ok(())
}
