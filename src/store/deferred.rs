//! Deferred collections: GC that a racing writer cannot fool (issue 9, finding 2).
//!
//! Legacy hypeman retags by removing the old link and then creating the new one
//! (`createTagSymlink`), without a lock. An `rm` through the mount of a sibling tag in that
//! gap finds one reference left — its own — because the watcher has already applied
//! hypeman's removal, and would collect the image hypeman is re-tagging. So the watcher
//! remembers, for [`QUIET`], which directories another writer took a tag away from
//! ([`super::watch::Watcher::untagged_within_quiet`]), and eager GC does not collect such a
//! directory at once ([`super::gc::LastRef::Defer`]): the tag change goes through, and the
//! directory, with its identity, goes on the deferred list.
//!
//! The mount's watcher thread calls [`Store::sync_external`] at least every
//! [`super::watch::REVISIT`] while the list is not empty; under the store lock, after the
//! other writers' changes are applied, a directory no other writer has untagged for
//! [`QUIET`] is collected through the usual steps of [`super::gc`] (intent, trash, delete,
//! in-use retention) if [`super::gc::judge_key`] lets it go — no tag names it, it is the very
//! directory that was deferred, it is `ready` or `failed`, hypeman does not keep it as a
//! digest-only image — and is dropped from the list, kept, otherwise. The list lives in
//! memory only: a deferred collection lost at unmount or in a crash leaves an untagged,
//! ready directory, which `imagefs gc` collects.
//!
//! [`QUIET`]: super::watch::QUIET

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use log::{error, info};

use super::Store;
use super::gc::{self, Collected, LastRef, Stale};
use super::journal::DirId;
use super::layout::DirKey;

impl Store {
    /// How long ago another writer took a tag away from `key`, if within the quiet window
    /// (never, for a store that does not follow other writers).
    pub(super) fn untagged_by_other_writer(&self, key: &DirKey) -> Option<Duration> {
        self.watcher.lock().as_ref()?.untagged_within_quiet(key)
    }

    /// Puts the collection of `key` (identity `id`, unreferenced now) off until the store
    /// is quiet.
    pub(super) fn defer_gc(&self, key: &DirKey, id: DirId, ago: Duration) {
        let quiet = self.watcher.lock().as_ref().map(|w| w.quiet());
        info!(
            "{}: last tag removed; not collected now: another writer took a tag away from it \
             {} ms ago (a retag in progress, as legacy hypeman's remove-then-create); \
             retried once no other writer has untagged it for {} ms, and kept if a tag \
             names it again (should the mount end first, `imagefs gc` collects it)",
            key.rel_path().display(),
            ago.as_millis(),
            quiet.unwrap_or_default().as_millis()
        );
        self.deferred.lock().insert(key.clone(), id);
        self.stats.gc_deferred.fetch_add(1, Relaxed);
    }

    /// `key` was collected (or left the store) by other means.
    pub(super) fn forget_deferred(&self, key: &DirKey) {
        self.deferred.lock().remove(key);
    }

    /// How many collections wait for the store to be quiet.
    pub fn deferred_gc_count(&self) -> usize {
        self.deferred.lock().len()
    }

    /// With the lock held, after [`Store::sync_locked`]: retries every deferred collection
    /// whose directory no other writer untagged within the quiet window. Returns what it
    /// collected.
    pub(super) fn retry_deferred_locked(&self) -> Vec<Collected> {
        let waiting: Vec<(DirKey, DirId)> = self
            .deferred
            .lock()
            .iter()
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        let mut done = Vec::new();
        for (key, id) in waiting {
            if self.untagged_by_other_writer(&key).is_some() {
                continue;
            }
            self.forget_deferred(&key);
            let verdict = gc::judge_key(&self.root, &self.index(), &key, Some(&id));
            let dir = key.rel_path();
            match verdict {
                Ok(()) => {
                    info!(
                        "{}: deferred collection: no tag came back; collecting",
                        dir.display()
                    );
                    match gc::record_intent(&self.journal, &self.root, &key) {
                        Ok(rec) => {
                            if let Some(c) = self.finish_gc(Some(LastRef::Collect(rec)), &key) {
                                self.stats.gc_deferred_collected.fetch_add(1, Relaxed);
                                done.push(c);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            self.stats.gc_deferred_dropped.fetch_add(1, Relaxed);
                            info!(
                                "{}: deferred collection dropped: {}",
                                dir.display(),
                                Stale::Gone
                            );
                        }
                        Err(e) => error!(
                            "{}: deferred collection: cannot record the GC intent in {}: {e}; \
                             the directory is kept (`imagefs gc` collects it)",
                            dir.display(),
                            self.journal.dir.display()
                        ),
                    }
                }
                Err(stale) => {
                    self.stats.gc_deferred_dropped.fetch_add(1, Relaxed);
                    match stale {
                        Stale::Gone => {
                            info!("{}: deferred collection dropped: {stale}", dir.display())
                        }
                        Stale::Tagged => info!(
                            "{}: deferred collection dropped: a tag names it again (another \
                             writer's retag finished); the directory is kept",
                            dir.display()
                        ),
                        _ => info!(
                            "{}: deferred collection dropped: {stale}; the directory is kept",
                            dir.display()
                        ),
                    }
                }
            }
        }
        done
    }
}
