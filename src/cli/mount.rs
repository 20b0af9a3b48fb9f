//! `imagefs mount`'s arguments and `-o` options, made into the daemon's [`MountConfig`],
//! and `imagefs umount`. The daemon itself is `crate::daemon`.

use std::path::{Path, PathBuf};

use super::options;
use crate::daemon::{self, MountConfig, TreeMounts};

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// The hypeman image store (its `content/`, `repositories/` and legacy directories).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Where to mount it (an existing, empty directory).
    mountpoint: PathBuf,
    /// Stay in the foreground instead of daemonizing.
    #[arg(long, short = 'f')]
    foreground: bool,
    /// Let other users use the mount (permissions are still checked by the kernel).
    #[arg(long)]
    allow_other: bool,
    /// Let setuid and setgid binaries and file capabilities in images take effect (the
    /// mounts are nosuid without it; device nodes are never opened). Logs a warning. Needs
    /// root; with --allow-other, only under a directory only root can enter (owned by
    /// root, mode 0700 or 0710 with group root), else refused.
    #[arg(long)]
    allow_setuid: bool,
    /// Threads serving kernel requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Append the whole log here, from before the store is opened, daemonized or in the
    /// foreground (without it, a daemon's log is discarded once the mount is ready, and a
    /// foreground mount's goes to stderr).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Serve store files with pread instead of FUSE passthrough.
    #[arg(long)]
    no_passthrough: bool,
    /// How each ready image's `digests/<hex>/rootfs/` is mounted of its own (as root):
    /// `kernel` mounts its `rootfs.erofs` with the kernel's erofs driver (the fastest; an
    /// image the kernel refuses, or a kernel without erofs from files, gets `fuse`),
    /// `fuse` mounts the image's tree from a read-only FUSE connection of the daemon,
    /// `none` serves every `rootfs/` from the main mount (slower; `fusermount3 -u` then
    /// works without `-z`).
    #[arg(long, value_name = "HOW", default_value = "kernel",
          value_parser = ["kernel", "fuse", "none"])]
    rootfs_mounts: String,
    /// The same as `--rootfs-mounts=none`.
    #[arg(long)]
    no_rootfs_mounts: bool,
    /// At most this many image trees are mounted of their own; the other images'
    /// `rootfs/` is served by the main mount (each mounted tree is a mount-table line
    /// and an open image).
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    rootfs_mounts_max: u32,
    /// Bytes the image readers may keep cached, all images together (decoded data,
    /// metadata, parsed inodes): K, M or G suffixes (KiB, MiB, GiB); 0 caches nothing.
    /// What leaves the budget, and what an image leaving the store or staying idle frees,
    /// is given back to the system.
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    cache_size: String,
    /// Do not fsync after installing a tag (faster, an acknowledged tag may be lost on
    /// power failure; crashes of the daemon are still safe).
    #[arg(long)]
    no_sync: bool,
    /// Mount options, comma-separated, as mount(8) and fstab give them: allow_other,
    /// allow_setuid, threads=N, log_file=FILE, no_sync, no_passthrough, no_rootfs_mounts,
    /// rootfs_mounts=kernel|fuse|none, rootfs_mounts_max=N, cache_size=SIZE, foreground,
    /// and the generic nodev, nosuid, exec, noexec, atime, noatime; dev, suid (which
    /// mount.fuse3 adds to every mount: they are not allow_setuid), defaults,
    /// rw, auto, noauto, user, nofail, _netdev and x-* are accepted and ignored (ro is
    /// refused: tags/ takes changes).
    #[arg(short = 'o', value_name = "OPTIONS", value_delimiter = ',')]
    options: Vec<String>,
}

/// Runs `imagefs mount`.
pub fn run(args: MountArgs) -> Result<(), String> {
    daemon::mount(&config(args)?)
}

/// Runs `imagefs umount`.
pub fn umount(mountpoint: &Path) -> Result<(), String> {
    daemon::umount(mountpoint)
}

/// The daemon's configuration: the arguments, then `-o`'s options over them.
fn config(a: MountArgs) -> Result<MountConfig, String> {
    let mut o = MountConfig {
        store: a.store,
        mountpoint: a.mountpoint,
        flags: Vec::new(),
        foreground: a.foreground,
        allow_other: a.allow_other,
        allow_setuid: a.allow_setuid,
        threads: a.threads.into(),
        durable: !a.no_sync,
        passthrough: !a.no_passthrough,
        rootfs_mounts: match TreeMounts::parse(&a.rootfs_mounts) {
            _ if a.no_rootfs_mounts => TreeMounts::None,
            Some(how) => how,
            None => {
                return Err(format!(
                    "--rootfs-mounts={}: expected kernel, fuse or none",
                    a.rootfs_mounts
                ));
            }
        },
        rootfs_mounts_max: a.rootfs_mounts_max as usize,
        cache_size: options::parse_size(&a.cache_size).ok_or_else(|| {
            format!(
                "--cache-size={}: expected a size such as 64M, 1G or 65536",
                a.cache_size
            )
        })?,
        log_file: a.log_file,
    };
    for opt in a.options.iter().filter(|o| !o.is_empty()) {
        match options::parse(opt)? {
            options::Opt::AllowOther => o.allow_other = true,
            options::Opt::AllowSetuid => o.allow_setuid = true,
            options::Opt::Threads(n) => o.threads = n,
            options::Opt::LogFile(p) => o.log_file = Some(p),
            options::Opt::NoSync => o.durable = false,
            options::Opt::NoPassthrough => o.passthrough = false,
            options::Opt::NoRootfsMounts => o.rootfs_mounts = TreeMounts::None,
            options::Opt::RootfsMounts(how) => o.rootfs_mounts = how,
            options::Opt::RootfsMountsMax(n) => o.rootfs_mounts_max = n,
            options::Opt::CacheSize(n) => o.cache_size = n,
            options::Opt::Foreground => o.foreground = true,
            options::Opt::Flag(f) => o.flags.push(f),
            options::Opt::Ignored => {}
        }
    }
    Ok(o)
}
