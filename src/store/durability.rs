//! Whether the change the current thread just made is on disk.
//!
//! A tag's directory is fsynced after each change (`ln -s`, `rm`, `mv`, `mkdir`, `rmdir`)
//! before the change is acknowledged. When that fsync fails (EIO: the filesystem was shut
//! down, a power cut under way) the change is made and visible, the index follows it, but it
//! may not survive: the caller must not be told it succeeded. Found by
//! mount-tests/test_powercut.py: an `rm` and a `mv` acknowledged with their fsync failed
//! came back after the cut.
//!
//! The store records the first failure of the operation in a thread-local (an operation runs
//! on its caller's thread, under the store lock); the FUSE layer clears it when an operation
//! starts and turns what is left when it ends into EIO, after it has updated the kernel's
//! caches for the change that was made.

use std::cell::RefCell;

thread_local! {
    static UNSYNCED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records that the fsync of `what` failed (the first failure of the operation is kept).
pub(super) fn failed(what: String) {
    UNSYNCED.with(|u| {
        let mut u = u.borrow_mut();
        if u.is_none() {
            *u = Some(what);
        }
    });
}

/// Takes what the current thread's last operation could not make durable, if anything;
/// also clears it before an operation starts.
pub fn take_unsynced() -> Option<String> {
    UNSYNCED.with(|u| u.borrow_mut().take())
}
