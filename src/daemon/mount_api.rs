//! The kernel's mount API (fsopen, fsconfig, fsmount, open_tree, move_mount), through
//! rustix's safe wrappers: descriptors come back owned, paths go in as C strings.
//!
//! Failures are logged (debug) with the step that failed; the errno is kept, so that a
//! caller can tell EIO (a bad image) from the rest.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

/// How a superblock the daemon makes is mounted (its mount attributes and, for FUSE, its
/// options).
pub(super) struct SuperblockFlags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub allow_other: bool,
}

/// A step's result as an io::Error (its errno kept), the failure logged.
fn logged<T>(what: &str, r: rustix::io::Result<T>) -> std::io::Result<T> {
    r.map_err(|e| {
        let e = std::io::Error::from(e);
        log::debug!("{what}: {e}");
        e
    })
}

/// The same, the error naming the step.
fn named<T>(what: &str, r: rustix::io::Result<T>) -> std::io::Result<T> {
    logged(what, r).map_err(|e| std::io::Error::other(format!("{what}: {e}")))
}

/// Makes a read-only FUSE superblock for connection `dev` (an open /dev/fuse) and returns
/// it as a detached mount. The kernel queues FUSE_INIT on `dev` before this returns.
pub(super) fn fuse_superblock(
    dev: &OwnedFd,
    source: &Path,
    f: &SuperblockFlags,
) -> std::io::Result<OwnedFd> {
    let fs = named("fsopen fuse", fsopen("fuse", FsOpenFlags::FSOPEN_CLOEXEC))?;
    let set = |k: &str, v: &str| named(&format!("fsconfig {k}"), fsconfig_set_string(&fs, k, v));
    set("source", &source.to_string_lossy())?;
    set("subtype", "imagefs")?;
    set("fd", &dev.as_raw_fd().to_string())?;
    set("rootmode", "40555")?;
    set("user_id", &nix::unistd::geteuid().to_string())?;
    set("group_id", &nix::unistd::getegid().to_string())?;
    let mut flags = vec!["ro", "default_permissions"];
    if f.allow_other {
        flags.push("allow_other");
    }
    for flag in flags {
        named(&format!("fsconfig {flag}"), fsconfig_set_flag(&fs, flag))?;
    }
    named("fsconfig create", fsconfig_create(&fs))?;
    named(
        "fsmount",
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs(f)),
    )
}

/// The mount attributes of every read-only mount the daemon makes: `f`'s flags, read-only.
fn attrs(f: &SuperblockFlags) -> MountAttrFlags {
    let mut attrs = MountAttrFlags::MOUNT_ATTR_RDONLY;
    for (on, a) in [
        (f.nosuid, MountAttrFlags::MOUNT_ATTR_NOSUID),
        (f.nodev, MountAttrFlags::MOUNT_ATTR_NODEV),
        (f.noexec, MountAttrFlags::MOUNT_ATTR_NOEXEC),
    ] {
        if on {
            attrs |= a;
        }
    }
    attrs
}

/// Why the kernel's erofs did not mount an image file.
pub(super) enum ErofsRefusal {
    /// The kernel cannot mount erofs images from files at all (no erofs, or a kernel
    /// older than 6.12 that mounts them only from block devices): ENODEV, ENOTBLK.
    Kernel(std::io::Error),
    /// This image (corrupt, or a feature this kernel lacks), or any other failure.
    Image(std::io::Error),
}

/// Makes a read-only mount of the erofs image in `file` (an open regular file) with the
/// kernel's own driver, detached, with `f`'s attributes. The kernel opens the file anew
/// through `/proc/self/fd/N` (the source option is a path): the very file that was opened
/// and checked, whatever its name points to now, and holds it for the superblock's life.
pub(super) fn erofs_file(file: &File, f: &SuperblockFlags) -> Result<OwnedFd, ErofsRefusal> {
    erofs(format!("/proc/self/fd/{}", file.as_raw_fd()), f)
}

/// As [`erofs_file`], from the block device `dev` (a loop device bound to the image file;
/// named by its `/dev` path, which mountinfo then shows).
pub(super) fn erofs_device(dev: &str, f: &SuperblockFlags) -> Result<OwnedFd, ErofsRefusal> {
    erofs(dev.to_string(), f)
}

fn erofs(source: String, f: &SuperblockFlags) -> Result<OwnedFd, ErofsRefusal> {
    let kernel = |e: std::io::Error| match e.raw_os_error() {
        Some(libc::ENODEV | libc::ENOTBLK) => ErofsRefusal::Kernel(e),
        _ => ErofsRefusal::Image(e),
    };
    let fs =
        logged("fsopen erofs", fsopen("erofs", FsOpenFlags::FSOPEN_CLOEXEC)).map_err(kernel)?;
    logged(
        "fsconfig source",
        fsconfig_set_string(&fs, "source", source),
    )
    .map_err(kernel)?;
    // As in the FUSE trees, an image's POSIX ACLs grant nothing: mode bits alone decide.
    for flag in ["ro", "noacl"] {
        logged(&format!("fsconfig {flag}"), fsconfig_set_flag(&fs, flag)).map_err(kernel)?;
    }
    logged("fsconfig create", fsconfig_create(&fs)).map_err(kernel)?;
    logged(
        "fsmount",
        fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs(f)),
    )
    .map_err(ErofsRefusal::Image)
}

/// Attaches the detached mount `tree` on `target`.
pub(super) fn attach(tree: &OwnedFd, target: &Path) -> std::io::Result<()> {
    let empty = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
    logged(
        "move_mount",
        move_mount(tree, "", rustix::fs::CWD, target, empty),
    )
}

/// Mounts directory `name` of the detached mount `detached` on `target`; returns the new
/// mount (which the kernel keeps attached after the descriptor is closed).
pub(super) fn mount_subtree(
    detached: &OwnedFd,
    name: &str,
    target: &Path,
) -> std::io::Result<OwnedFd> {
    let clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    let tree = logged("open_tree", open_tree(detached, name, clone))?;
    attach(&tree, target)?;
    Ok(tree)
}

/// The device number of the mount `m` (a stat of it: a request if it is FUSE).
pub(super) fn device(m: impl AsFd) -> std::io::Result<u64> {
    let st = nix::sys::stat::fstat(m).map_err(std::io::Error::from)?;
    Ok(st.st_dev)
}

/// Detaches the mount on `p` lazily (processes inside keep it); logged if it fails.
pub(super) fn detach(p: &Path) {
    if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
        log::debug!("detach {}: {e}", p.display());
    }
}
