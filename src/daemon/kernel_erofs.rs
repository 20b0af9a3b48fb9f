//! Image trees mounted with the kernel's own erofs driver (`--rootfs-mounts=kernel`, the
//! default): a ready image's `rootfs.erofs` mounted, read-only, on its
//! `digests/<hex>/rootfs`, for the binder in `rootfs_mounts`: from a read-only, autoclearing
//! loop device bound to the file (`loop_device`, which says why), or straight from the file
//! (kernel 6.12 and later) where no loop device can be had. The kernel reads the image at
//! its own speed (large folios, no round trips to the daemon) and holds its own reference
//! on the file, so a tree in use outlives the image's collection, as FUSE trees do.
//!
//! The image is opened without following a symlink or blocking on a FIFO
//! (`store::safe_open`), and the user-space reader checks its superblock (and checksum, if
//! the image has one) and root inode before the kernel sees it; the kernel's mount is
//! attached only once every directory name in it passed `tree_check`. An image refused by that
//! check or by the kernel is served by a FUSE image tree instead (said once per digest);
//! a kernel that cannot mount erofs files at all turns this off for the mount's life.
//!
//! Invariant: every mount made here has the attributes of the FUSE trees (`nodev`, and
//! `nosuid` unless `--allow-setuid`), read-only.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::mount_api::{self, ErofsRefusal, SuperblockFlags};
use super::{loop_device, tree_check};
use crate::fs::ImageTrees;
use crate::store::{Digest, safe_open};

/// Mounts image files with the kernel's erofs, and remembers the images it refused.
pub(super) struct KernelErofs {
    flags: SuperblockFlags,
    /// False once the kernel has shown it cannot mount erofs files.
    on: bool,
    /// False once loop devices proved unavailable (no driver, no `/dev/loop-control`):
    /// images are then mounted from their files.
    loops: bool,
    /// Whether a failure to get a loop device was logged (once for the mount's life).
    said_no_loop: bool,
    /// Digests whose image was refused: served by FUSE trees while they stay in the store.
    refused: HashSet<Digest>,
}

impl KernelErofs {
    pub(super) fn new(flags: SuperblockFlags) -> KernelErofs {
        KernelErofs {
            flags,
            on: true,
            loops: true,
            said_no_loop: false,
            refused: HashSet::new(),
        }
    }

    /// Mounts digest `d`'s image on `target`; returns the mount, or the error attaching it
    /// there. `None`: the image is to be served by a FUSE image tree (the kernel's erofs is
    /// off, or refused this image, or its file could not be opened this time).
    pub(super) fn mount(
        &mut self,
        trees: &ImageTrees,
        d: &Digest,
        target: &Path,
    ) -> Option<std::io::Result<OwnedFd>> {
        if !self.on || self.refused.contains(d) {
            return None;
        }
        let path = trees.tree_image(d)?;
        let file = match safe_open::open_regular(&path) {
            Ok(f) => f,
            Err(e) => {
                // Collected meanwhile, most likely; the FUSE tree's lookup says what it is.
                log::debug!("sha256:{d}: {}: {e}", path.display());
                return None;
            }
        };
        let checked = file
            .try_clone()
            .map_err(imagefs_erofs::ImageError::from)
            .and_then(imagefs_erofs::Image::open);
        if let Err(e) = checked {
            self.refuse(d, &format!("the image reader refused it ({e})"));
            return None;
        }
        match self.mount_image(&file, d) {
            Ok(tree) => match tree_check::check_names(&tree) {
                Ok(()) => {
                    let attached = mount_api::attach(&tree, target);
                    if attached.is_ok() {
                        match file.metadata() {
                            Ok(m) => trees.kernel_tree_mounted(*d, &m),
                            Err(e) => log::debug!("{}: {e}", path.display()),
                        }
                    }
                    Some(attached.map(|()| tree))
                }
                Err(why) => {
                    self.refuse(d, &format!("its tree failed the names check ({why})"));
                    None
                }
            },
            Err(ErofsRefusal::Kernel(e)) => {
                log::info!(
                    "the kernel cannot mount erofs image files ({e}; erofs from files needs \
                     Linux 6.12 or later): image trees are FUSE mounts"
                );
                self.on = false;
                None
            }
            Err(ErofsRefusal::Image(e)) => {
                self.refuse(d, &format!("the kernel's erofs refused it ({e})"));
                None
            }
        }
    }

    /// A detached erofs mount of the image in `file`: from a loop device bound to it, or
    /// from the file itself if no loop device can be had or the mount from one failed.
    fn mount_image(&mut self, file: &File, d: &Digest) -> Result<OwnedFd, ErofsRefusal> {
        if self.loops {
            match loop_device::attach(file) {
                // The device is closed on return: the superblock holds it from now on,
                // and autoclear unbinds it when the superblock lets go.
                Ok(dev) => match mount_api::erofs_device(&dev.path, &self.flags) {
                    Ok(tree) => return Ok(tree),
                    Err(ErofsRefusal::Kernel(e) | ErofsRefusal::Image(e)) => log::debug!(
                        "sha256:{d}: erofs on {}: {e}; mounting the image file itself",
                        dev.path
                    ),
                },
                Err(e) => {
                    // No loop driver or device nodes (a container): not asked again.
                    if e.kind() == std::io::ErrorKind::NotFound {
                        self.loops = false;
                    }
                    if !self.said_no_loop {
                        log::info!(
                            "no loop device for image trees ({e}): the kernel's erofs mounts \
                             image files themselves, slower on cold reads"
                        );
                        self.said_no_loop = true;
                    }
                }
            }
        }
        mount_api::erofs_file(file, &self.flags)
    }

    fn refuse(&mut self, d: &Digest, why: &str) {
        log::warn!("sha256:{d}: {why}; its rootfs/ is served by a FUSE image tree");
        self.refused.insert(*d);
    }

    /// Forgets refusals of digests no longer in `present` (a digest pulled again is tried
    /// anew).
    pub(super) fn forget_gone(&mut self, present: &HashSet<Digest>) {
        self.refused.retain(|d| present.contains(d));
    }
}
