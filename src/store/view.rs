//! A read-only view of a store as it is on disk: one scan and the index built from it, with
//! no lock taken, no recovery and nothing written. For tools that read a store a mount may
//! be serving (`imagefs ls`, `fsck`, `gc`): [`Store::open`]'s recovery would empty the trash
//! that a live mount keeps images in use in. The caller takes the store lock when it needs
//! the view to be consistent with other writers.

use std::path::Path;

use super::Store;
use super::error::{IoContext, Result};
use super::index::Index;
use super::layout::{self, Cache, DirKey, Scan};

/// One scan of a store and its index.
#[derive(Debug, Default)]
pub struct View {
    pub scan: Scan,
    pub index: Index,
}

impl View {
    /// Scans the store at `root` and indexes what it found.
    pub(super) fn scan(root: &Path) -> std::io::Result<View> {
        View::scan_with(root, &Cache::default())
    }

    /// [`View::scan`] with the index snapshot `cache` ([`super::snapshot`]).
    pub(super) fn scan_with(root: &Path, cache: &Cache) -> std::io::Result<View> {
        let scan = layout::scan_with(root, cache)?;
        let index = Index::from_scan(&scan);
        Ok(View { scan, index })
    }

    /// Every digest directory, sorted.
    pub fn dirs(&self) -> Vec<DirKey> {
        let mut v: Vec<DirKey> = self.index.dir_keys().map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    }
}

impl Store {
    /// Opens the store at `root` read-only, as a [`View`]; see the module's documentation.
    pub fn open_view(root: &Path) -> Result<View> {
        View::scan(root).ctx(|| format!("scan {}", root.display()))
    }
}
