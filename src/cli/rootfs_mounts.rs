//! Image trees on their own read-only FUSE superblock, bind-mounted on every
//! `digests/<hex>/rootfs` of the main mount (why: `fs::Shared`).
//!
//! The superblock is made with the kernel's mount API (fsopen, fsconfig, fsmount) and never
//! attached anywhere itself: the daemon holds it as a detached mount, and clones one
//! directory of it (`<hex>`, the image root) per ready digest with `open_tree` onto the
//! main mount with `move_mount`. A thread keeps that true as digests come and go.
//!
//! Removal needs nothing from here: when a digest leaves the store, the daemon invalidates
//! the kernel's `rootfs` dentry of it, and the kernel detaches the mounts on an invalidated
//! dentry lazily, so a process inside (a container) keeps its tree until it leaves.
//! Without the mount API or privileges (not root) the main mount serves `rootfs/` itself.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fuser::{Config, Session};

use crate::fs::{ImageFs, Shared};
use crate::store::Digest;

// From linux/mount.h (the libc crate has the syscall numbers, not these).
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// How the image trees are mounted: like the main mount, but read-only.
pub struct Flags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub allow_other: bool,
    /// At most this many trees mounted at once.
    pub max_trees: usize,
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// The syscall's result, or its errno (kept, so that callers can tell EIO) named `what`.
fn check(r: libc::c_long, what: &str) -> std::io::Result<libc::c_long> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        log::debug!("{what}: {e}");
        Err(e)
    } else {
        Ok(r)
    }
}

/// `e` with the step that failed, for messages.
fn during(what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: `r` is a descriptor a syscall just returned to us and nobody else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

fn fsconfig(
    fs: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&str>,
    value: Option<&str>,
) -> std::io::Result<()> {
    let key = key.map(cstr).transpose()?;
    let value = value.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: fsconfig reads the NUL-terminated strings (or NULL) for the call's duration.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            cmd,
            ptr(&key),
            ptr(&value),
            0 as libc::c_int,
        )
    };
    let what = format!(
        "fsconfig {}",
        key.as_ref()
            .map_or("create".into(), |k| k.to_string_lossy())
    );
    check(r, &what).map_err(|e| during(&what, e))?;
    Ok(())
}

/// Makes the read-only superblock for connection `dev` (an open /dev/fuse) and returns it
/// as a detached mount. The kernel queues FUSE_INIT on `dev` before this returns.
fn create(dev: &OwnedFd, source: &Path, f: &Flags) -> std::io::Result<OwnedFd> {
    let fuse = cstr("fuse")?;
    // SAFETY: a NUL-terminated name; the result is checked.
    let fs = fd_from(
        check(
            unsafe { libc::syscall(libc::SYS_fsopen, fuse.as_ptr(), FSOPEN_CLOEXEC) },
            "fsopen fuse",
        )
        .map_err(|e| during("fsopen fuse", e))?,
    );
    let s = |k: &str, v: &str| fsconfig(&fs, FSCONFIG_SET_STRING, Some(k), Some(v));
    s("source", &source.to_string_lossy())?;
    s("subtype", "imagefs")?;
    s("fd", &dev.as_raw_fd().to_string())?;
    s("rootmode", "40555")?;
    s("user_id", &nix::unistd::geteuid().to_string())?;
    s("group_id", &nix::unistd::getegid().to_string())?;
    let mut flags = vec!["ro", "default_permissions"];
    if f.allow_other {
        flags.push("allow_other");
    }
    for flag in flags {
        fsconfig(&fs, FSCONFIG_SET_FLAG, Some(flag), None)?;
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    let mut attrs = MOUNT_ATTR_RDONLY;
    for (on, a) in [
        (f.nosuid, MOUNT_ATTR_NOSUID),
        (f.nodev, MOUNT_ATTR_NODEV),
        (f.noexec, MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            attrs |= a;
        }
    }
    // SAFETY: plain integer arguments; the result is checked.
    let mnt = check(
        unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) },
        "fsmount",
    )
    .map_err(|e| during("fsmount", e))?;
    Ok(fd_from(mnt))
}

/// The read-only connection serving image trees, and the thread keeping them mounted.
pub struct ImageTrees {
    pub stop: Arc<AtomicBool>,
    binder: std::thread::JoinHandle<()>,
    /// Ends when the kernel drops the superblock: after the detached mount (held by the
    /// binder) and every bind of it are gone, including lazily detached ones still in use.
    session: std::sync::mpsc::Receiver<()>,
}

impl ImageTrees {
    /// Best effort: without the mount API (or privileges) the main mount serves `rootfs/`.
    pub fn start(
        fs: &Arc<ImageFs>,
        source: &Path,
        mp: &Path,
        flags: &Flags,
        config: &Config,
    ) -> Option<ImageTrees> {
        let made = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map(OwnedFd::from)
            .and_then(|dev| {
                let mnt = create(&dev, source, flags)?;
                let session =
                    Session::from_fd(Shared::images(fs.clone()), dev, config.acl, config.clone())?;
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
        fs.start_images_notifier(session.notifier());
        let (done_tx, done) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("imagefs-images".into())
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
        if let Ok(dev) = device(&mnt) {
            super::mount::set_readahead(&format!(
                "{}:{}",
                nix::sys::stat::major(dev),
                nix::sys::stat::minor(dev)
            ));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (fs2, stop2, mp2) = (fs.clone(), stop.clone(), mp.to_path_buf());
        let max_trees = flags.max_trees;
        let binder = std::thread::Builder::new()
            .name("imagefs-binds".into())
            .spawn(move || keep_bound(fs2, mnt, mp2, max_trees, stop2))
            .ok()?;
        Some(ImageTrees {
            stop,
            binder,
            session: done,
        })
    }

    /// After the main mount is gone: stops binding, lets the superblock go, and waits for
    /// processes still inside an image tree (a container) to leave it.
    pub fn finish(self, fs: &ImageFs) {
        self.stop.store(true, Ordering::Relaxed);
        fs.digests_changed.raise();
        let _ = self.binder.join();
        if self.session.recv_timeout(Duration::from_secs(1)).is_err() {
            log::info!("waiting for processes still using an image tree to leave it");
            let _ = self.session.recv();
        }
    }
}

/// Mounts image `d` of the detached mount `images` on `target`.
fn bind(images: &OwnedFd, d: &Digest, target: &Path) -> std::io::Result<OwnedFd> {
    let hex = cstr(&d.hex())?;
    // SAFETY: a NUL-terminated relative path under a descriptor we own; checked.
    let tree = fd_from(check(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                images.as_raw_fd(),
                hex.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        },
        "open_tree",
    )?);
    let empty = cstr("")?;
    let to = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: NUL-terminated paths, descriptors we own; checked.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        },
        "move_mount",
    )?;
    Ok(tree)
}

/// The device number of the image trees' superblock.
fn device(images: &OwnedFd) -> std::io::Result<u64> {
    let st = nix::sys::stat::fstat(images).map_err(std::io::Error::from)?;
    Ok(st.st_dev)
}

/// Keeps ready digests' `rootfs` of mountpoint `mp` bound to their image trees (at most
/// `max_trees` of them) until `stop` is set: at start, whenever digests change, and every
/// two seconds (a pull that finished, a tree someone detached, a tree that was in use).
///
/// A tree is never mounted over while the kernel holds inodes of the main mount's copy of
/// it: a process inside that copy (a walk started before the mount) would find `..` of
/// its directories leading into the mount, another device, and `find` or `tar` would
/// stop short (seen in a mount test). Such a digest stays served by the main mount until
/// the kernel lets go; what it only caches it is asked to drop.
fn keep_bound(
    fs: Arc<ImageFs>,
    images: OwnedFd,
    mp: PathBuf,
    max_trees: usize,
    stop: Arc<AtomicBool>,
) {
    /// A tree that did not mount (a bad image) is not tried again sooner.
    const RETRY: Duration = Duration::from_secs(30);
    let mut failed: HashMap<Digest, Instant> = HashMap::new();
    let mut said_full = false;
    let mut first = true;
    loop {
        if !first {
            fs.digests_changed.wait(Duration::from_secs(2));
        }
        first = false;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        failed.retain(|_, t| t.elapsed() < RETRY);
        let mounted = match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(info) => trees_mounted(&info, &mp),
            Err(e) => {
                log::warn!("image trees: /proc/self/mountinfo: {e}");
                continue;
            }
        };
        let mut count = mounted.len();
        for d in fs.digests() {
            if stop.load(Ordering::Relaxed) {
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
            if !fs.serves_tree(&d) {
                continue;
            }
            let target = mp.join("digests").join(d.hex()).join("rootfs");
            if fs.tree_in_use(&d) {
                // Perhaps only cached (a listing of digests/<hex>/, a walk that ended):
                // the kernel drops it unless in use, and forgets its inodes at once. The
                // stat first brings back the `rootfs` dentry if an earlier round dropped
                // it while a process was below it: what that process left cached hangs
                // under it, out of reach of the kernel's lookups until then.
                let _ = std::fs::symlink_metadata(&target);
                fs.drop_cached_tree(&d);
                std::thread::sleep(Duration::from_millis(20));
                if fs.tree_in_use(&d) {
                    log::debug!(
                        "sha256:{d}: its tree is in use through the main mount; not mounted yet"
                    );
                    continue;
                }
            }
            match bind(&images, &d, &target) {
                Ok(tree) => {
                    count += 1;
                    log::debug!("{}: image tree mounted", target.display());
                    // Collected between the listing and the mount: the kernel may have
                    // dropped the dentry before the mount landed on it, so undo it here.
                    if !fs.has_digest(&d) {
                        detach(Path::new(&format!("/proc/self/fd/{}", tree.as_raw_fd())));
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

/// The digests whose `rootfs` below `mp` has a mount on it.
fn trees_mounted(mountinfo: &str, mp: &Path) -> std::collections::HashSet<Digest> {
    let digests = format!("{}/digests/", mp.display());
    mounts_below(mountinfo, mp)
        .into_iter()
        .filter_map(|m| {
            let hex = m.strip_prefix(&digests)?.strip_suffix("/rootfs")?;
            Digest::parse_hex(hex)
        })
        .collect()
}

fn detach(p: &Path) {
    if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
        log::debug!("detach {}: {e}", p.display());
    }
}

/// Detaches (lazily) every mount below `mp`, deepest first: the image trees, before the
/// main mount is unmounted.
pub fn detach_below(mp: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for m in mounts_below(&info, mp) {
        detach(Path::new(&m));
    }
}

/// The mount points strictly below `mp` in a mountinfo text, deepest first.
fn mounts_below(mountinfo: &str, mp: &Path) -> Vec<String> {
    let prefix = format!("{}/", mp.display());
    let mut below: Vec<String> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(super::mount::unescape_mountinfo))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    below
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_below_takes_only_deeper_mounts_deepest_first() {
        let (a, c) = ("ab".repeat(32), "cd".repeat(32));
        let info = format!(
            "22 1 0:21 / /mnt/images rw - fuse.imagefs /store rw
23 22 0:22 /{a} /mnt/images/digests/{a}/rootfs ro - fuse.imagefs /store ro
24 1 0:23 / /mnt/images2 rw - tmpfs none rw
25 22 0:22 /{c} /mnt/images/digests/{c}/rootfs ro - fuse.imagefs /store ro
26 23 0:24 / /mnt/images/digests/{a}/rootfs/proc rw - proc proc rw
27 22 0:25 / /mnt/images/with\\040space rw - tmpfs none rw
28 22 0:26 / /mnt/images/digests/nothex/rootfs rw - tmpfs none rw
"
        );
        assert_eq!(
            mounts_below(&info, Path::new("/mnt/images")),
            vec![
                format!("/mnt/images/digests/{a}/rootfs/proc"),
                format!("/mnt/images/digests/{a}/rootfs"),
                format!("/mnt/images/digests/{c}/rootfs"),
                "/mnt/images/digests/nothex/rootfs".to_string(),
                "/mnt/images/with space".to_string(),
            ]
        );
        assert!(mounts_below(&info, Path::new("/mnt/other")).is_empty());
        let trees = trees_mounted(&info, Path::new("/mnt/images"));
        let want: std::collections::HashSet<Digest> = [&a, &c]
            .iter()
            .filter_map(|h| Digest::parse_hex(h))
            .collect();
        assert_eq!((trees.len(), trees), (2, want));
    }
}
