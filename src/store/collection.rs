//! The end of a change that collected digest directories, after the store lock: the fsync
//! that makes the change durable and the deletion of what went into the trash (GC step 4,
//! `gc.rs`). Both run in the changing thread before the change returns (`rm` frees space
//! now), but without the lock, so that no other change waits for them: a big image's
//! deletion, which takes seconds, used to hold every `ln -s`, `rm` and `mv` of the mount.
//!
//! The mount sends its kernel invalidations between [`Collection::collected`] and
//! [`Collection::finish`], so that the kernel forgets the image while its files go.

use std::fs::File;
use std::path::PathBuf;

use super::Store;
use super::gc::Collected;

#[cfg(test)]
thread_local! {
    /// Runs (once: taken when run) after the store lock is released and before the
    /// deletion: where tests make other changes (a tag of the same digest, the collection
    /// of another) in the window.
    pub(crate) static BEFORE_DELETE: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        std::cell::RefCell::new(None);
}

/// What a change collected, its lock released, its directory fsync and deletions still to
/// do: by [`Collection::finish`], or when dropped.
#[must_use = "finish() makes the change durable and deletes what it collected"]
pub struct Collection<'a> {
    store: &'a Store,
    collected: Vec<Collected>,
    /// Directories to fsync (the change's own, `Options::durable`), opened under the lock.
    sync: Vec<(PathBuf, std::io::Result<File>)>,
}

impl<'a> Collection<'a> {
    pub(super) fn new(
        store: &'a Store,
        collected: Vec<Collected>,
        sync: Vec<(PathBuf, std::io::Result<File>)>,
    ) -> Self {
        Collection {
            store,
            collected,
            sync,
        }
    }

    /// What left the store (the deletions may still be pending: `to_delete`).
    pub fn collected(&self) -> &[Collected] {
        &self.collected
    }

    /// Makes the change durable (a failed fsync is recorded for the caller, `durability`),
    /// then deletes the trashed directories; returns what was collected.
    pub fn finish(mut self) -> Vec<Collected> {
        self.run();
        std::mem::take(&mut self.collected)
    }

    fn run(&mut self) {
        // The fsync first: its journal commit then carries the change, not the deletion.
        for (dir, f) in std::mem::take(&mut self.sync) {
            self.store.fsync_opened(&dir, &f);
        }
        if self.collected.iter().all(|c| c.to_delete.is_none()) {
            return;
        }
        #[cfg(test)]
        if let Some(mut f) = BEFORE_DELETE.with(|h| h.borrow_mut().take()) {
            f()
        }
        self.store.delete_collected(&mut self.collected);
    }
}

impl Drop for Collection<'_> {
    fn drop(&mut self) {
        self.run();
    }
}
