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
    /// How `digests/<hex>/rootfs` is served: see [`TreeMounts`].
    pub rootfs_mounts: TreeMounts,
    pub rootfs_mounts_max: usize,
    /// Bytes of the one cache budget of every image's reader (`--cache-size`).
    pub cache_size: usize,
    pub log_file: Option<PathBuf>,
}

/// How each ready image's `digests/<hex>/rootfs` is served (`--rootfs-mounts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TreeMounts {
    /// The image file mounted with the kernel's erofs driver; an image tree of the FUSE
    /// image-tree connection where the kernel refuses (the default).
    Kernel,
    /// An image tree of the FUSE image-tree connection.
    Fuse,
    /// No mount of its own: the main mount serves `rootfs/` (`--no-rootfs-mounts`).
    None,
}

impl TreeMounts {
    /// The option's value, as `--rootfs-mounts` and `-o rootfs_mounts=` take it.
    pub(crate) fn parse(v: &str) -> Option<TreeMounts> {
        match v {
            "kernel" => Some(TreeMounts::Kernel),
            "fuse" => Some(TreeMounts::Fuse),
            "none" => Some(TreeMounts::None),
            _ => None,
        }
    }
}
