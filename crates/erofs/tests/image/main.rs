//! Tests against the kernel's erofs driver (the oracle) and corruption tests.
//!
//! They need root, `mkfs.erofs` and loop mounts; without them they print
//! `SKIP <test>: needs <reason>` and pass, unless `IMAGEFS_TESTS_STRICT=1` is set
//! (see `imagefs_erofs::testing`).

mod ahead;
mod budget;
mod corrupt;
mod fixture;
mod kernel;
mod threads;
