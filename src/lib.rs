//! imagefs: a hypeman image store presented as a FUSE mount.
//!
//! - [`store`] knows the on-disk layout, names, the in-memory index, GC and its journal.
//!   It knows nothing of FUSE.
//! - `fs` maps kernel requests (inodes, handles, errno) onto the store.
//! - [`import`] builds images from directories, tars and OCI images into the store.
//! - [`admin`] is `imagefs ls`, `fsck` and `gc`: store administration, mounted or not.
//! - `daemon` is the mount's life: daemonizing, the FUSE sessions, signals, rootfs mounts.
//! - [`cli`] parses the command line and calls the command that runs.
//!
//! The erofs reader (the `rootfs/` trees, with pread, never mmap) is its own crate,
//! [`imagefs_erofs`] (`crates/erofs`).

#![deny(clippy::undocumented_unsafe_blocks)]

pub(crate) mod admin;
pub mod cli;
mod daemon;
mod fs;
pub(crate) mod import;
pub(crate) mod store;
