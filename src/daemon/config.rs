//! [`MountConfig`]: what `imagefs mount` was asked for, with `-o` resolved by the command
//! line. Plain data: the daemon's modules read it, nothing changes it.

use std::path::PathBuf;

use fuser::MountOption;

/// What `imagefs mount` was asked for, options and `-o` resolved.
pub(crate) struct MountConfig {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    /// Kernel mount flags from `-o` (nosuid, nodev, exec, atime and their negations); never
    /// `suid` or `dev`: see `privileges`.
    pub flags: Vec<MountOption>,
    pub foreground: bool,
    pub allow_other: bool,
    /// `--allow-setuid`: the mounts are `suid` (checked by `privileges::check`).
    pub allow_setuid: bool,
    pub threads: usize,
    pub durable: bool,
    pub passthrough: bool,
    pub rootfs_mounts: bool,
    pub rootfs_mounts_max: usize,
    pub log_file: Option<PathBuf>,
}
