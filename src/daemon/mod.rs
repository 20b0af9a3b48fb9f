//! The mount daemon: `imagefs mount` from its checks to the daemon's exit, and
//! `imagefs umount`. The command line (`cli`) decides a [`MountConfig`] and calls here.
//!
//! - `config`: [`MountConfig`], what the command line asks for.
//! - `daemonize`: the fork, the ready pipe, detaching from the terminal.
//! - `session`: the main FUSE session, its options, signals.
//! - `rootfs_mounts`: the image-tree connection and the binder keeping rootfs mounts.
//! - `kernel_erofs`: rootfs mounts made with the kernel's erofs from the image files.
//! - `tree_check`: the names check of a kernel-mounted image before it is attached.
//! - `mountinfo`: the one reader of `/proc/self/mountinfo`.
//! - `busy`: who keeps a mount busy (checked before `imagefs umount` detaches anything).
//! - `nesting`: a mountpoint inside the store, or a store inside the mountpoint, is refused.
//! - `privileges`: every mount `nosuid,nodev`; where the `--allow-setuid` opt-in is refused.
//! - `mount_api`: the kernel's mount API (fsopen, fsmount, open_tree, move_mount).
//! - `tuning`: open files limit, readahead, malloc tuning and heap trimming.
//! - `memory`: the thread that ages the images' cache budget and trims the heap after releases.
//!
//! Invariants: the daemon forks before any thread exists (the store is opened after the
//! fork); every error before the mount is ready reaches the command that started it, which
//! prints it and exits 1. The daemon uses `fs` and `store`; neither uses the daemon.

mod busy;
mod config;
mod daemonize;
mod kernel_erofs;
mod lease_probe;
mod loop_device;
mod memory;
mod mount_api;
mod mountinfo;
mod nesting;
mod privileges;
mod rootfs_mounts;
mod session;
mod tree_check;
mod tuning;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{Options, Store};
pub(crate) use config::{MountConfig, TreeMounts};
use daemonize::{Forked, Ready};

/// Runs `imagefs mount`: returns once the mount answers (the daemon serves it), or, in the
/// foreground, once it is unmounted.
pub(crate) fn mount(opts: &MountConfig) -> Result<(), String> {
    tuning::tune_malloc();
    let mp = preflight(&opts.store, &opts.mountpoint)?;
    privileges::check(opts, &mp)?;
    let log = match &opts.log_file {
        Some(p) => Some(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    // Daemonize before any thread exists: the child serves, the parent waits for its word.
    let mut ready = if opts.foreground {
        Ready::foreground(log.as_ref())
    } else {
        match daemonize::fork(log.as_ref())? {
            Forked::Parent(word) => return word,
            Forked::Child(ready) => ready,
        }
    };
    let result =
        open_store(opts).and_then(|store| session::serve(store, &mp, opts, log, &mut ready));
    result.map_err(|msg| ready.failed(msg, opts.log_file.is_some()))
}

/// Opens the store (its scan and recovery run here, on threads of their own).
fn open_store(opts: &MountConfig) -> Result<Arc<Store>, String> {
    let store = Store::open_mounted(
        &opts.store,
        Options {
            durable: opts.durable,
        },
    )
    .map_err(|e| refused_because_mounted(&opts.store, e))?;
    // The scan's threads leave freed memory in their malloc arenas; give it back.
    tuning::trim_heap();
    log::info!(
        "store {}: {} tags, {} digests",
        store.root().display(),
        store.tag_count(),
        store.digest_count()
    );
    Ok(Arc::new(store))
}

/// The error of opening the store; "already mounted" also says where that mount is (a
/// lazily unmounted one is in no mount table, but its daemon still serves its users).
fn refused_because_mounted(store: &Path, e: crate::store::StoreError) -> String {
    let busy = matches!(&e, crate::store::StoreError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::ResourceBusy);
    if !busy {
        return e.to_string();
    }
    match mountinfo::mounts_of_store(store).as_slice() {
        [] => format!(
            "{e}; it is mounted nowhere any more (unmounted lazily, its daemon still serves processes that were using it, and exits once they are gone)"
        ),
        mps => format!("{e}; mounted on {}", mps.join(", ")),
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Checks everything that can be checked before mounting, with messages a user can act on.
fn preflight(store: &Path, mountpoint: &Path) -> Result<PathBuf, String> {
    match std::fs::metadata(store) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("store {}: not a directory", store.display())),
        Err(e) => return Err(format!("store {}: {e}", store.display())),
    }
    let mp = match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => mountpoint
            .canonicalize()
            .map_err(|e| format!("mountpoint {}: {e}", mountpoint.display()))?,
        Ok(_) => {
            return Err(format!(
                "mountpoint {}: not a directory",
                mountpoint.display()
            ));
        }
        Err(e) => return Err(format!("mountpoint {}: {e}", mountpoint.display())),
    };
    nesting::refuse(store, &mp)?;
    if mountinfo::is_mountpoint(&mp) {
        return Err(format!(
            "mountpoint {}: something is already mounted there (busy); unmount it first",
            mp.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or give the container the device".into());
    }
    if !nix::unistd::geteuid().is_root() && !which("fusermount3") {
        return Err("fusermount3 not found on PATH: install fuse3 (apt-get install fuse3)".into());
    }
    Ok(mp)
}

/// Runs `imagefs umount`.
pub(crate) fn umount(mountpoint: &Path) -> Result<(), String> {
    if !mountinfo::is_mountpoint(mountpoint) {
        return Err(format!("{}: not mounted", mountpoint.display()));
    }
    if nix::unistd::geteuid().is_root() {
        // The rootfs mounts on digests/<hex>/rootfs go first (lazily: a container inside
        // keeps its tree, and the daemon serves it until the container leaves). The
        // daemon may mount one again meanwhile: try a few times.
        let mp = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        // Refused before the trees are detached: a refused umount changes nothing.
        if let Some(who) = mountinfo::main_mount(&mp).and_then(|main| busy::holder(&mp, main)) {
            return Err(format!(
                "{}: busy ({who}); nothing was unmounted: stop it, or `umount -l` to detach lazily",
                mountpoint.display()
            ));
        }
        let mut tries = 0;
        let r = loop {
            rootfs_mounts::detach_below(&mp);
            match nix::mount::umount(&mp) {
                Err(nix::errno::Errno::EBUSY) if tries < 3 => tries += 1,
                r => break r,
            }
        };
        r.map_err(|e| match e {
            nix::errno::Errno::EBUSY => format!(
                "{}: busy (a process uses it); stop it, or `umount -l` to detach lazily",
                mountpoint.display()
            ),
            e => format!("{}: {e}", mountpoint.display()),
        })
    } else {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()
            .map_err(|e| format!("fusermount3: {e}"))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("fusermount3 -u {} failed", mountpoint.display()))
        }
    }
}
