//! The images of a digest, as `digests/` shows them. A digest may have several directories:
//! `content/<hex>` and legacy `<repo>/<hex>` of any number of repositories. Legacy hypeman
//! pulling one image into two repositories makes two directories whose `rootfs.erofs` bytes
//! may differ (another `mkfs.erofs` run), so each directory is an image of its own, and a tag
//! always serves the bytes of the directory it names:
//!
//! - `digests/<hex>` shows the digest's primary directory: the content one, else the first
//!   legacy one in repository order;
//! - every other legacy directory whose `rootfs.erofs` is another file (device and inode)
//!   than those of the directories shown before it is shown as `digests/<hex>@<repo>`, with
//!   each `/` of the repository written `+`; hard-linked copies ([`super::legacy_copy`]) are
//!   one image, shown once, and their tags read the name of the first directory shown. No
//!   digest or repository name contains `@` or `+` (the reference grammar has neither), so
//!   the names cannot clash.
//!
//! The answers are read from the index and, for digests with several directories only, one
//! `stat` of each `rootfs.erofs`: nothing is cached, so they follow the store as it is.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Store;
use super::index::Index;
use super::layout::DirKey;
use super::names::{self, Digest};
use super::sys;

/// The name `digests/` gives the directory `key`: `<hex>` for the primary, else
/// `<hex>@<repo with '+' for '/'>`.
pub fn entry_name(key: &DirKey, primary: bool) -> String {
    match key {
        DirKey::Legacy(repo, d) if !primary => format!("{d}@{}", repo.replace('/', "+")),
        k => k.digest().hex(),
    }
}

/// Parses an entry name of `digests/`: the digest, and the repository of a `<hex>@<repo>`.
pub fn parse_entry_name(name: &str) -> Option<(Digest, Option<String>)> {
    match name.split_once('@') {
        None => Some((Digest::parse_hex(name)?, None)),
        Some((_, repo)) if repo.contains('/') => None,
        Some((hex, repo)) => {
            let repo = repo.replace('+', "/");
            names::check_repo(&repo).ok()?;
            Some((Digest::parse_hex(hex)?, Some(repo)))
        }
    }
}

/// Identifies `rootfs.erofs` of a directory: device and inode.
fn image_file(dir: &Path) -> Option<(u64, u64)> {
    let m = sys::metadata(dir.join("rootfs.erofs")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The directories of `d` that `digests/` shows, the primary first.
fn shown(root: &Path, ix: &Index, d: &Digest) -> Vec<DirKey> {
    shown_with_files(root, ix, d, None).0
}

/// [`shown`], and the shown directory whose image is `of`'s file, if `of` is given.
fn shown_with_files(
    root: &Path,
    ix: &Index,
    d: &Digest,
    of: Option<&DirKey>,
) -> (Vec<DirKey>, Option<DirKey>) {
    let mut dirs = ix.dirs_of(d);
    let Some(primary) = dirs.next() else {
        return (Vec::new(), None);
    };
    let mut out = vec![primary.clone()];
    let others: Vec<&DirKey> = dirs.collect();
    if others.is_empty() {
        return (out, of.filter(|k| *k == primary).cloned());
    }
    let file = |k: &DirKey| image_file(&root.join(k.rel_path()));
    let mut seen = vec![(file(primary), primary.clone())];
    for k in others {
        let f = file(k);
        if f.is_none() || seen.iter().all(|(s, _)| *s != f) {
            out.push(k.clone());
            seen.push((f, k.clone()));
        }
    }
    let serving = of.and_then(|key| {
        let f = file(key);
        seen.into_iter()
            .find(|(s, k)| k == key || (f.is_some() && *s == f))
            .map(|(_, k)| k)
    });
    (out, serving)
}

impl Store {
    /// The entries `skip..skip + max` of `digests/`, by digest, each digest's primary first:
    /// (name, directory shown).
    pub fn images_window(&self, skip: usize, max: usize) -> Vec<(String, DirKey)> {
        let ix = self.index();
        let mut out = Vec::new();
        let mut n = 0;
        for d in ix.digests() {
            if out.len() >= max {
                break;
            }
            // A digest with one directory is one entry: counted without a stat.
            if ix.dirs_of(d).nth(1).is_none() && n < skip {
                n += 1;
                continue;
            }
            for (i, k) in shown(&self.root, &ix, d).into_iter().enumerate() {
                if n >= skip && out.len() < max {
                    out.push((entry_name(&k, i == 0), k));
                }
                n += 1;
            }
        }
        out
    }

    /// The directory that the entry `name` of `digests/` shows, if any.
    pub fn image_by_name(&self, name: &str) -> Option<DirKey> {
        let (d, repo) = parse_entry_name(name)?;
        let ix = self.index();
        match repo {
            None => ix.dirs_of(&d).next().cloned(),
            Some(repo) => {
                let key = DirKey::Legacy(repo, d);
                shown(&self.root, &ix, &d)
                    .into_iter()
                    .skip(1)
                    .find(|k| *k == key)
            }
        }
    }

    /// The name of the `digests/` entry that serves `key`'s image: its own, or that of the
    /// directory shown with the same image file (`<hex>` when none is, or the store lost it).
    pub fn image_name(&self, key: &DirKey) -> String {
        let ix = self.index();
        let (shown, serving) = shown_with_files(&self.root, &ix, &key.digest(), Some(key));
        match serving {
            Some(k) => entry_name(&k, shown.first() == Some(&k)),
            None => key.digest().hex(),
        }
    }

    /// The primary directory of digest `d` (what `digests/<hex>` shows).
    pub fn primary_dir(&self, d: &Digest) -> Option<DirKey> {
        self.index().dirs_of(d).next().cloned()
    }

    /// The store path of the digest directory `key`, if the store has it.
    pub fn dir_path(&self, key: &DirKey) -> Option<PathBuf> {
        self.index()
            .has_dir(key)
            .then(|| self.root.join(key.rel_path()))
    }

    /// The directories of digest `d` (every one, shown or not).
    pub fn dirs_of(&self, d: &Digest) -> Vec<DirKey> {
        self.index().dirs_of(d).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_round_trip_and_never_clash() {
        let d = Digest::from_bytes([0xab; 32]);
        let key = DirKey::Legacy("localhost:5000/a/b-c".into(), d);
        let name = entry_name(&key, false);
        assert_eq!(name, format!("{d}@localhost:5000+a+b-c"));
        assert_eq!(
            parse_entry_name(&name),
            Some((d, Some("localhost:5000/a/b-c".into())))
        );
        assert_eq!(entry_name(&key, true), d.hex());
        assert_eq!(entry_name(&DirKey::Content(d), false), d.hex());
        assert_eq!(parse_entry_name(&d.hex()), Some((d, None)));
        for bad in [
            format!("{d}@"),
            format!("{d}@a++b"),
            format!("{d}@A"),
            format!("{d}@a/b"),
            "zz@a".to_string(),
        ] {
            assert_eq!(parse_entry_name(&bad), None, "{bad}");
        }
    }
}
