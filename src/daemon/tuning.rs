//! Best-effort tuning of the daemon's process and of its mounts: the open files limit, the
//! readahead of a mount's bdi, and the heap (malloc's arenas and mmap threshold, trimming). Each one only makes things faster or roomier;
//! a failure is logged (debug) and changes nothing else.

use std::path::Path;

/// Each image in use holds its `rootfs.erofs` open, and each FUSE thread a /dev/fuse clone:
/// a store of thousands of images would hit the usual soft limit of 1024 descriptors, so
/// take the hard limit.
pub(super) fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::debug!("open files limit stays {soft}: {e}");
            }
        }
        _ => {}
    }
}

/// The kernel offers FUSE at most 128 KiB of readahead at init; images are read
/// sequentially, and decoding costs per request, so ask the mount's bdi for 1 MiB (the
/// largest FUSE request). Best effort: without it reads are just smaller.
pub(super) fn raise_readahead(mp: &Path) {
    // The device number from mountinfo: a stat of the mountpoint would ask this very
    // daemon, which does not serve requests yet.
    if let Some(dev) = super::mountinfo::device_of(mp) {
        set_readahead(&dev);
    }
}

/// Sets the readahead of bdi `dev` ("major:minor") to 1 MiB.
pub(super) fn set_readahead(dev: &str) {
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, "1024") {
        Ok(()) => log::debug!("{path}: readahead 1 MiB"),
        Err(e) => log::debug!("{path}: {e}; keeping the kernel's readahead"),
    }
}

/// Tunes glibc's malloc for a daemon with a dozen threads. Two arenas instead of one per
/// thread: freed memory is not kept per thread, and RSS stays near what is live. A fixed
/// mmap threshold: each FUSE thread's 16 MiB request buffer stays an untouched mapping.
/// With glibc's sliding threshold, once one such buffer was freed (the handshake's), the
/// next ones came from the heap and calloc zeroed them: 33 MiB of RSS for the image-tree
/// connection's threads, measured. Call it before any thread exists.
pub(super) fn tune_malloc() {
    // SAFETY: mallopt takes no pointers and only tunes glibc's allocator; the caller runs
    // it before any thread exists that could be allocating.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Gives the heap's free memory back to the system (after the store's scan, whose threads
/// leave freed memory in their malloc arenas).
pub(super) fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only releases free heap memory; glibc
    // makes it safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) };
}
