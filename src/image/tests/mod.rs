//! Tests against the kernel's erofs driver (the oracle) and corruption tests.
//!
//! They need root, `mkfs.erofs` and loop mounts; without them they print a
//! note and pass, unless `IMAGEFS_REQUIRE_KERNEL=1` is set.

mod bench;
mod corrupt;
mod fixture;
mod kernel;
mod threads;
