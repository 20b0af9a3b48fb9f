//! imagefs: a hypeman image store presented as a FUSE mount.
//!
//! - [`store`] knows the on-disk layout, names, the in-memory index, GC and its journal.
//!   It knows nothing of FUSE.
//! - [`image`] reads erofs images (the `rootfs/` trees), with pread, never mmap.
//! - [`fs`] maps kernel requests (inodes, handles, errno) onto the store.
//! - [`import`] builds images from directories, tars and OCI images into the store.
//! - [`admin`] is `imagefs ls`, `fsck` and `gc`: store administration, mounted or not.
//! - [`cli`] parses the command line and runs the daemon.

pub mod admin;
pub mod cli;
pub mod fs;
pub mod image;
pub mod import;
pub mod store;
#[cfg(test)]
mod test_skip;
