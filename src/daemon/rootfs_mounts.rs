//! Rootfs mounts: the image trees on their own read-only FUSE superblock (the image-tree
//! connection), mounted on every `digests/<hex>/rootfs` of the main mount (why:
//! `fs::Connection`).
//!
//! The superblock is made with the kernel's mount API (`mount_api`) and never attached
//! anywhere itself: the daemon holds it as a detached mount, and clones one directory of it
//! (`<hex>`, the image root) per ready digest onto the main mount. A thread, the binder,
//! keeps that true as digests come and go; it sees the filesystem through
//! [`fs::ImageTrees`](crate::fs::ImageTrees) alone.
//!
//! Invariants: at most `max_trees` rootfs mounts at once; a tree is never mounted over the
//! main mount's copy while the kernel holds any of it (see [`keep_mounted`]). Removal needs
//! nothing from here: when a digest leaves the store, the filesystem invalidates the
//! kernel's `rootfs` dentry of it, and the kernel detaches the mounts on an invalidated
//! dentry lazily, so a process inside (a container) keeps its tree until it leaves.
//! Without the mount API or privileges (not root) the main mount serves `rootfs/` itself.
//!
//! With `--rootfs-mounts=kernel` (the default) a ready image's tree is its `rootfs.erofs`
//! mounted with the kernel's erofs driver instead (`kernel_erofs`), in the same place and
//! under the same rules; the FUSE image tree serves what the kernel refuses.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fuser::{Config, Session};

use super::kernel_erofs::KernelErofs;
use super::lease_probe;
use super::mount_api::{self, SuperblockFlags};
use super::{mountinfo, tuning};
use crate::fs::ImageTrees;
use crate::store::Digest;

/// The image-tree connection's session, and the binder keeping rootfs mounts.
pub(super) struct RootfsMounts {
    stop: Stop,
    binder: std::thread::JoinHandle<()>,
    /// Ends when the kernel drops the superblock: after the detached mount (held by the
    /// binder) and every rootfs mount of it are gone, including lazily detached ones
    /// still in use.
    session: std::sync::mpsc::Receiver<()>,
}

/// Stops the binder (from the signal thread, before the main mount is unmounted).
#[derive(Clone)]
pub(super) struct Stop {
    stop: Arc<AtomicBool>,
    trees: ImageTrees,
}

impl Stop {
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.trees.wake();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl RootfsMounts {
    /// Best effort: without the mount API (or privileges) the main mount serves `rootfs/`.
    /// The superblock is mounted like the main mount (`flags`), but read-only; at most
    /// `max_trees` rootfs mounts at once; with `kernel`, images are mounted with the
    /// kernel's erofs (with the same `flags`) where it takes them.
    pub(super) fn start(
        trees: ImageTrees,
        source: &Path,
        mp: &Path,
        flags: SuperblockFlags,
        max_trees: usize,
        kernel: bool,
        config: &Config,
    ) -> Option<RootfsMounts> {
        let made = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map(OwnedFd::from)
            .and_then(|dev| {
                let mnt = mount_api::fuse_superblock(&dev, source, &flags)?;
                let session =
                    Session::from_fd(trees.connection(), dev, config.acl, config.clone())?;
                Ok((mnt, session))
            });
        let (mnt, session) = match made {
            Ok(x) => x,
            Err(e) => {
                log::info!(
                    "rootfs/ is served by the main mount: no read-only mount of its own ({e})"
                );
                return None;
            }
        };
        trees.start_notifier(session.notifier(), config.n_threads.unwrap_or(1));
        let (done_tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("imagefs-trees".into())
            .spawn(move || {
                if let Err(e) = session.run() {
                    log::warn!("image trees session: {e}");
                }
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            log::error!("thread: {e}");
            return None;
        }
        // A stat of the superblock is a request: only now that its session runs.
        if let Ok(dev) = mount_api::device(&mnt) {
            tuning::set_readahead(&format!(
                "{}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ));
        }
        let stop = Stop {
            stop: Arc::new(AtomicBool::new(false)),
            trees,
        };
        let (stop2, mp2) = (stop.clone(), mp.to_path_buf());
        let kernel = kernel.then(|| KernelErofs::new(flags));
        let binder = std::thread::Builder::new()
            .name("imagefs-binds".into())
            .spawn(move || keep_mounted(mnt, kernel, mp2, max_trees, stop2))
            .ok()?;
        Some(RootfsMounts {
            stop,
            binder,
            session: done,
        })
    }

    /// What stops the binder.
    pub(super) fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// After the main mount is gone: stops binding, lets the superblock go, and waits for
    /// processes still inside an image tree (a container) to leave it.
    pub(super) fn finish(self) {
        self.stop.stop();
        let _ = self.binder.join();
        if self.session.recv_timeout(Duration::from_secs(1)).is_err() {
            log::info!("waiting for processes still using an image tree to leave it");
            let _ = self.session.recv();
        }
    }
}

/// The main mount is gone, and with it every tree mounted below it: what was collected
/// while its tree was mounted is let go by the kernel within moments (the detach a
/// collection queued may not even have run yet), so it is deleted now rather than left in
/// the trash for the next mount. One still in use after a second (a process inside its
/// tree) is left to the next mount's trash sweep.
fn release_at_unmount(trees: &ImageTrees) {
    let until = Instant::now() + Duration::from_secs(1);
    while trees.release_kernel_held(lease_probe::open_elsewhere) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Keeps ready digests' `rootfs` of mountpoint `mp` mounted from the detached superblock
/// `superblock`, or with the kernel's erofs (`kernel`) where it takes the image (at most
/// `max_trees` of them) until stopped: at start, when a digest comes, and every two
/// seconds (the slots collections freed, a pull that finished, a tree someone detached, a
/// tree that was in use). A collection only has the collected images a kernel tree may
/// still hold looked at, every 50 ms for a while: not the store's digests, which would be
/// copied under the index's read lock each time.
///
/// A tree is never mounted over while the kernel holds inodes of the main mount's copy of
/// it: a process inside that copy (a walk started before the mount) would find `..` of
/// its directories leading into the mount, another device, and `find` or `tar` would
/// stop short (seen in a mount test). Such a digest stays served by the main mount until
/// the kernel lets go; what it only caches it is asked to drop.
fn keep_mounted(
    superblock: OwnedFd,
    mut kernel: Option<KernelErofs>,
    mp: PathBuf,
    max_trees: usize,
    stop: Stop,
) {
    /// A tree that did not mount (a bad image) is not tried again sooner.
    const RETRY: Duration = Duration::from_secs(30);
    let trees = &stop.trees;
    let mut failed: HashMap<Digest, Instant> = HashMap::new();
    /// The round that mounts trees in the slots collections freed, and looks again at
    /// what the kernel may have let go of or a pull finished.
    const ROUND: Duration = Duration::from_secs(2);
    let mut said_full = false;
    let mut last_round: Option<Instant> = None;
    // Collected images a kernel tree may still hold are looked at often for a while: most
    // are let go as soon as the collection's invalidation detaches their tree. Only those
    // are looked at then; the store's digests and the mount table wait for the round.
    let mut kernel_waiting = false;
    loop {
        let mut mount_now = last_round.is_none();
        if let Some(t) = last_round {
            let left = ROUND.saturating_sub(t.elapsed());
            let limit = if kernel_waiting {
                left.min(Duration::from_millis(50))
            } else {
                left
            };
            mount_now = trees.wait_for_digests(limit) || t.elapsed() >= ROUND;
        }
        if stop.stopped() {
            if kernel.is_some() {
                release_at_unmount(trees);
            }
            return;
        }
        if kernel.is_some() {
            kernel_waiting = trees.release_kernel_held(lease_probe::open_elsewhere);
        }
        if !mount_now {
            continue;
        }
        last_round = Some(Instant::now());
        failed.retain(|_, t| t.elapsed() < RETRY);
        let mounted = match mountinfo::read() {
            Ok(mounts) => mountinfo::rootfs_mounted(&mounts, &mp),
            Err(e) => {
                log::warn!("image trees: /proc/self/mountinfo: {e}");
                continue;
            }
        };
        let mut count = mounted.len();
        let digests = trees.digests();
        if let Some(k) = kernel.as_mut() {
            let present = digests.iter().copied().collect();
            k.forget_gone(&present);
            trees.forget_gone_kernel_trees(&present);
        }
        for d in digests {
            if stop.stopped() {
                return;
            }
            if mounted.contains(&d) || failed.contains_key(&d) {
                continue;
            }
            if count >= max_trees {
                if !said_full {
                    log::info!(
                        "{count} image trees mounted, the most allowed (--rootfs-mounts-max); \
                         the other images' rootfs/ is served by the main mount"
                    );
                    said_full = true;
                }
                break;
            }
            if !trees.serves_tree(&d) {
                continue;
            }
            let target = mp.join("digests").join(d.hex()).join("rootfs");
            if trees.tree_in_use(&d) {
                // Perhaps only cached (a listing of digests/<hex>/, a walk that ended):
                // the kernel drops it unless in use, and forgets its inodes at once. The
                // stat first brings back the `rootfs` dentry if an earlier round dropped
                // it while a process was below it: what that process left cached hangs
                // under it, out of reach of the kernel's lookups until then.
                let _ = std::fs::symlink_metadata(&target);
                trees.drop_cached_tree(&d);
                std::thread::sleep(Duration::from_millis(20));
                if trees.tree_in_use(&d) {
                    log::debug!(
                        "sha256:{d}: its tree is in use through the main mount; not mounted yet"
                    );
                    continue;
                }
            }
            let by_kernel = kernel.as_mut().and_then(|k| k.mount(trees, &d, &target));
            let made = by_kernel
                .unwrap_or_else(|| mount_api::mount_subtree(&superblock, &d.hex(), &target));
            match made {
                Ok(tree) => {
                    count += 1;
                    log::debug!("{}: image tree mounted", target.display());
                    // Collected between the listing and the mount: the kernel may have
                    // dropped the dentry before the mount landed on it, so undo it here.
                    if !trees.has_digest(&d) {
                        mount_api::detach(Path::new(&format!(
                            "/proc/self/fd/{}",
                            tree.as_raw_fd()
                        )));
                    }
                }
                Err(e) => {
                    // A bad image's lookup has logged the reason (naming the digest) once.
                    if e.raw_os_error() != Some(libc::EIO) {
                        log::warn!(
                            "{}: mounting the image tree: {e}; served by the main mount",
                            target.display()
                        );
                    }
                    failed.insert(d, Instant::now());
                }
            }
        }
    }
}

/// Detaches (lazily) every mount below `mp`, deepest first: the rootfs mounts, before the
/// main mount is unmounted.
pub(super) fn detach_below(mp: &Path) {
    let Ok(mounts) = mountinfo::read() else {
        return;
    };
    for m in mountinfo::mounts_below(&mounts, mp) {
        mount_api::detach(Path::new(&m));
    }
}
