//! imagefs's bookkeeping under `STORE/.imagefs/`: the lock file, intent records and trash.
//!
//! An intent is written before the first step of a change that spans several filesystem
//! operations and removed after the last, so that the next mount can finish or roll back
//! whatever a crash interrupted:
//!
//! - `gc`: a symlink `intents/<id>.gc -> <store-relative digest dir>`, written before the
//!   tag that holds the last reference goes. Replayed: if no tag names the directory it
//!   is collected, else the intent is dropped. A symlink is one atomic metadata operation,
//!   so recording it costs no fsync on the hot path: after `kill -9` the page cache keeps
//!   every step in order.
//! - `promote`, `move`, `exchange`, `relink`: small JSON records (see [`Intent`]), written
//!   atomically, for the rarer multi-step changes.
//!
//! Everything under `trash/` is garbage by definition and is deleted at mount.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::{self, TMP_PREFIX};
use super::layout::{DirKey, PRIVATE};

/// A multi-step change in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Intent {
    /// Collect this digest directory (store-relative) if no tag names it.
    Gc { dir: String },
    /// Move legacy `<repo>/<hex>` into `content/<hex>` and rewrite the repository's
    /// legacy tags naming it into `repositories/<repo>/`.
    Promote { repo: String, hex: String },
    /// A tag moved from `from` to `to` (store-relative symlink paths): once `to` exists,
    /// `from` must go.
    Move { from: String, to: String },
    /// Final targets of two exchanged tags (store-relative symlink paths).
    Exchange {
        a: String,
        a_target: String,
        b: String,
        b_target: String,
    },
    /// Rewrite every content-layout tag under this store-relative repository directory
    /// to its canonical target (after a repository moved to another depth).
    Relink { dir: String },
}

/// The paths of `STORE/.imagefs/`.
#[derive(Debug, Clone)]
pub struct Journal {
    pub dir: PathBuf,
}

impl Journal {
    pub fn new(store: &Path) -> Journal {
        Journal {
            dir: store.join(PRIVATE),
        }
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn intents(&self) -> PathBuf {
        self.dir.join("intents")
    }

    pub fn trash(&self) -> PathBuf {
        self.dir.join("trash")
    }

    pub fn create_dirs(&self) -> io::Result<()> {
        std::fs::create_dir_all(self.intents())?;
        std::fs::create_dir_all(self.trash())
    }

    /// Records an intent; returns its path, to pass to [`Journal::done`].
    pub fn record(&self, intent: &Intent) -> io::Result<PathBuf> {
        let id = fsutil::unique_name("intent");
        match intent {
            Intent::Gc { dir } => {
                let path = self.intents().join(format!("{id}.gc"));
                std::os::unix::fs::symlink(dir, &path)?;
                Ok(path)
            }
            other => {
                let path = self.intents().join(format!("{id}.json"));
                let bytes = serde_json::to_vec(other).map_err(io::Error::other)?;
                fsutil::write_atomic(&path, &bytes)?;
                Ok(path)
            }
        }
    }

    pub fn done(&self, record: &Path) -> io::Result<()> {
        match std::fs::remove_file(record) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable intent, oldest first, with its record's path. Unreadable records
    /// are returned as `None` so the caller can log and drop them.
    pub fn pending(&self) -> io::Result<Vec<(PathBuf, Option<Intent>)>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(self.intents()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let intent = if name.starts_with(TMP_PREFIX) {
                None
            } else if name.ends_with(".gc") {
                std::fs::read_link(&path).ok().and_then(|t| {
                    let dir = t.to_str()?.to_string();
                    DirKey::from_rel_path(&dir)?;
                    Some(Intent::Gc { dir })
                })
            } else {
                std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
            };
            out.push((path, intent));
        }
        // Names start with a hex timestamp of fixed width in practice; sort for a stable order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Moves a digest directory into the trash (one atomic rename) and returns where it went.
    pub fn move_to_trash(&self, store: &Path, key: &DirKey) -> io::Result<PathBuf> {
        let dest = self
            .trash()
            .join(fsutil::unique_name(&key.digest().hex()[..12]));
        std::fs::rename(store.join(key.rel_path()), &dest)?;
        Ok(dest)
    }

    /// Deletes everything in the trash; returns how many entries went.
    pub fn empty_trash(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(self.trash())?.flatten() {
            fsutil::remove_tree(&entry.path())?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::names::Digest;

    #[test]
    fn intents_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(d.path());
        j.create_dirs().expect("dirs");
        let hex = "ab".repeat(32);
        let key = DirKey::Content(Digest::parse_hex(&hex).expect("hex"));
        let gc = Intent::Gc {
            dir: key.rel_path().to_string_lossy().into_owned(),
        };
        let mv = Intent::Move {
            from: "repositories/a/x".into(),
            to: "repositories/b/y".into(),
        };
        let p1 = j.record(&gc).expect("gc");
        let p2 = j.record(&mv).expect("mv");
        let got: Vec<_> = j
            .pending()
            .expect("pending")
            .into_iter()
            .map(|x| x.1)
            .collect();
        assert!(
            got.contains(&Some(gc)) && got.contains(&Some(mv)),
            "{got:?}"
        );
        j.done(&p1).expect("done");
        j.done(&p2).expect("done");
        j.done(&p2).expect("done twice is fine");
        assert!(j.pending().expect("pending").is_empty());
    }
}
