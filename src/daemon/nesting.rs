//! A mountpoint inside the store (or the store itself, or inside its bookkeeping) and a store
//! inside the mountpoint are refused before anything is changed.
//!
//! The daemon reads the store by path: once mounted, a path through the mountpoint is a
//! request to the daemon's own mount, which nobody serves while the daemon waits for it
//! (`imagefs mount --store S S/mnt` never returned). A store below the mountpoint would be
//! hidden by the mount. Paths are compared canonical, and each directory on the way is
//! compared by device and inode too, so a bind mount of the store is seen through.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::store::journal::Journal;

/// Refuses `mp` (canonical) as the mountpoint of the store `store`, with a message naming
/// both.
pub(super) fn refuse(store: &Path, mp: &Path) -> Result<(), String> {
    let store = store
        .canonicalize()
        .map_err(|e| format!("store {}: {e}", store.display()))?;
    if store == Path::new("/") {
        // Refused as a store at all, with its own reason, when the store is opened.
        return Ok(());
    }
    let bookkeeping = Journal::new(&store).dir;
    let why = if within(mp, &store) {
        format!(
            "mountpoint {} is inside the store {}: the daemon would wait on its own mount",
            mp.display(),
            store.display()
        )
    } else if within(mp, &bookkeeping) {
        format!(
            "mountpoint {} is inside {}, the bookkeeping of the store {}",
            mp.display(),
            bookkeeping.display(),
            store.display()
        )
    } else if within(&store, mp) {
        format!(
            "the store {} is inside the mountpoint {}: the mount would hide it",
            store.display(),
            mp.display()
        )
    } else {
        return Ok(());
    };
    Err(format!("{why}; choose a mountpoint outside the store"))
}

/// Is `inner` the directory `outer` or below it, by path or by what the directories are?
fn within(inner: &Path, outer: &Path) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if inner.starts_with(outer) {
        return true;
    }
    let Some(outer_id) = id(outer) else {
        return false;
    };
    inner.ancestors().any(|a| id(a) == Some(outer_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_are_refused_naming_both() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canonical");
        let store = root.join("store");
        std::fs::create_dir_all(store.join("mnt")).expect("mkdir");
        std::fs::create_dir(root.join("mnt")).expect("mkdir");
        for (mp, what) in [
            (store.join("mnt"), "inside the store"),
            (store.clone(), "inside the store"),
            (root.clone(), "inside the mountpoint"),
        ] {
            let e = refuse(&store, &mp).expect_err("refused");
            assert!(e.contains(what), "{e}");
            assert!(e.contains(&*store.to_string_lossy()) && e.contains(&*mp.to_string_lossy()));
        }
        assert_eq!(refuse(&store, &root.join("mnt")), Ok(()));
        // Through a symlink to the store: the same directory.
        std::os::unix::fs::symlink(&store, root.join("alias")).expect("symlink");
        assert!(refuse(&root.join("alias"), &store.join("mnt")).is_err());
    }
}
