//! The main FUSE session: the mount with its options, the threads serving it, the
//! signals that unmount it, and the rootfs mounts beside it.
//!
//! Invariants: SIGINT, SIGTERM and SIGHUP are blocked in every thread and taken by one,
//! which stops the rootfs mounts, detaches them, then unmounts the main mount; the mount
//! is declared ready only once the kernel answers it; the daemon returns only after the
//! image-tree connection is gone too.

use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use super::config::{MountConfig, TreeMounts};
use super::daemonize::Ready;
use super::mount_api::SuperblockFlags;
use super::rootfs_mounts::{self, RootfsMounts};
use super::tuning;
use crate::fs::{Connection, ImageFs};
use crate::store::Store;

/// Mounts `store` on `mp` and serves it until it is unmounted; says so through `ready`
/// once the mount answers.
pub(super) fn serve(
    store: Arc<Store>,
    mp: &Path,
    opts: &MountConfig,
    log: Option<std::fs::File>,
    ready: &mut Ready,
) -> Result<(), String> {
    // SIGINT, SIGTERM and SIGHUP are taken by one thread, which unmounts: they are blocked
    // here, before the threads serving the mount start, which inherit the blocked mask.
    let mut sigs = nix::sys::signal::SigSet::empty();
    sigs.add(nix::sys::signal::Signal::SIGINT);
    sigs.add(nix::sys::signal::Signal::SIGTERM);
    sigs.add(nix::sys::signal::Signal::SIGHUP);
    sigs.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;
    // A lease probe (`fs::kernel_held`) whose file another process opens in that very
    // moment makes the kernel send SIGIO, whose default action kills: blocked in every
    // thread too, and never taken.
    let mut sigio = nix::sys::signal::SigSet::empty();
    sigio.add(nix::sys::signal::Signal::SIGIO);
    sigio
        .thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;

    tuning::raise_open_files_limit();
    // The store holds the mount marker (`Store::open_mounted`) that tells `imagefs fsck`
    // and `gc` a mount serves it, and refuses a second mount.
    let cache = Arc::new(imagefs_erofs::CacheBudget::new(opts.cache_size));
    let fs = Arc::new(ImageFs::new(
        store.clone(),
        mp,
        opts.passthrough,
        cache.clone(),
    ));
    super::memory::start(cache)?;
    let config = fuse_config(store.root(), opts);
    let mut session = Session::new(Connection::main(fs.clone()), mp, &config)
        .map_err(|e| format!("mount {}: {e}", mp.display()))?;
    // A descriptor of the connection too, for the notification fuser cannot send (an
    // entry expired without being dropped); the daemon only writes on it.
    let dev = std::os::fd::AsFd::as_fd(&session).try_clone_to_owned().ok();
    fs.start_notifier(session.notifier(), dev, opts.threads);
    tuning::raise_readahead(mp);
    fs.start_watcher()?;
    let rootfs_mounts = if opts.rootfs_mounts != TreeMounts::None {
        // As the main mount: image trees (FUSE or the kernel's erofs) never open devices
        // nor, unless opted in, elevate.
        let flags = SuperblockFlags {
            nosuid: !opts.allow_setuid,
            nodev: true,
            noexec: opts.flags.contains(&MountOption::NoExec),
            allow_other: opts.allow_other,
        };
        RootfsMounts::start(
            fs.image_trees(),
            store.root(),
            mp,
            flags,
            opts.rootfs_mounts_max,
            opts.rootfs_mounts == TreeMounts::Kernel,
            &config,
        )
    } else {
        None
    };
    let mut unmounter = session.unmount_callable();
    let mp_owned = mp.to_path_buf();
    let stop_binding = rootfs_mounts.as_ref().map(RootfsMounts::stopper);
    std::thread::Builder::new()
        .name("imagefs-signals".into())
        .spawn(move || {
            if let Ok(sig) = sigs.wait() {
                log::info!("{sig:?}: unmounting {}", mp_owned.display());
                if let Some(stop) = &stop_binding {
                    stop.stop();
                    rootfs_mounts::detach_below(&mp_owned);
                }
                if let Err(e) = unmounter.unmount() {
                    log::warn!("unmount {}: {e}; detaching it lazily", mp_owned.display());
                    let _ = nix::mount::umount2(&mp_owned, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        })
        .map_err(|e| format!("thread: {e}"))?;
    log::info!("mounted {} on {}", store.root().display(), mp.display());
    super::privileges::warn_if_opted_in(opts, mp);
    ready.ok(log);
    let r = session.run().map_err(|e| format!("session: {e}"));
    log::info!("unmounted {}", mp.display());
    // The index snapshot of the start-up scan, if a quick unmount came before it was written.
    store.wait_snapshot();
    if let Some(m) = rootfs_mounts {
        m.finish();
    }
    r
}

/// The main mount's options and session settings.
fn fuse_config(store: &Path, opts: &MountConfig) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(store.display().to_string()),
        // A kernel option (fuser's Subtype is only passed to fusermount): the mount's type
        // reads fuse.imagefs, as `mount -t fuse.imagefs` and fstab expect.
        MountOption::CUSTOM("subtype=imagefs".into()),
        MountOption::DefaultPermissions,
    ];
    // Image content is untrusted (see `privileges`): device nodes in images are shown, never
    // opened, and setuid, setgid and file capabilities take effect only when opted in.
    config.mount_options.push(MountOption::NoDev);
    config.mount_options.push(if opts.allow_setuid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    let decided = [MountOption::NoDev, MountOption::NoSuid];
    config
        .mount_options
        .extend(opts.flags.iter().filter(|f| !decided.contains(f)).cloned());
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads);
    config.clone_fd = true;
    config
}
