//! FUSE passthrough of store files, and how every open file is served: whether the kernel
//! reads a store file itself (passthrough), or asks with READ, and what it may cache.
//!
//! Invariants: passthrough is used only when asked for (`--no-passthrough` not given) and
//! agreed by the kernel at INIT; an inode has at most one backing id, shared by every open
//! of it (see `handles`); a file whose bytes never change while open keeps its page cache.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{BackingId, FopenFlags};

use super::ImageFs;
use super::errno::Result;
use super::handles::{Handle, NO_HANDLE};

/// Open flags for files whose bytes never change while open: the kernel keeps their pages,
/// and, since nothing is ever written through the mount, does not send FLUSH on close.
const IMMUTABLE_FILE: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Whether store files are served by passthrough.
pub(super) struct Passthrough {
    wanted: bool,
    on: AtomicBool,
}

impl Passthrough {
    pub(super) fn new(wanted: bool) -> Passthrough {
        Passthrough {
            wanted,
            on: AtomicBool::new(false),
        }
    }
}

/// How an open file is served: what the adapter replies to OPEN.
pub(super) enum Opened {
    /// The kernel reads the store file itself, through `id`.
    Passthrough {
        fh: u64,
        flags: FopenFlags,
        id: Arc<BackingId>,
    },
    /// The kernel reads with READ on handle `fh`.
    Read { fh: u64, flags: FopenFlags },
}

impl ImageFs {
    /// INIT: should the main connection ask the kernel for passthrough?
    pub(super) fn wants_passthrough(&self) -> bool {
        self.passthrough.wanted
    }

    /// INIT: the kernel agreed to passthrough.
    pub(super) fn passthrough_agreed(&self) {
        self.passthrough.on.store(true, Ordering::Relaxed);
        log::info!("FUSE passthrough enabled for store files");
    }

    /// OPEN on the main connection: opens `ino` and decides how it is served.
    /// `open_backing` hands a store file to the kernel for passthrough (the reply's).
    pub(super) fn open_file(
        &self,
        ino: u64,
        flags: i32,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Result<Opened> {
        // An image's file, the common case of a walk that reads (`tar`): no handle, no
        // lock but the open images' read lock, nothing decoded (the kernel opens only
        // what its attributes call a regular file). See `NO_HANDLE`.
        if self.open_images.by_ino(ino).is_some() {
            if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
                return Err(self.refuse_change(ino, "open for writing"));
            }
            return Ok(Opened::Read {
                fh: NO_HANDLE,
                flags: IMMUTABLE_FILE,
            });
        }
        let (fh, h) = self.open(ino, flags)?;
        Ok(match &*h {
            // A file that may still be rewritten is read afresh at every open: no cache kept,
            // no passthrough (whose backing file is shared by every open of the inode).
            Handle::File { changing: true, .. } => Opened::Read {
                fh,
                flags: FopenFlags::FOPEN_NOFLUSH,
            },
            Handle::File { file, .. } if self.passthrough.on.load(Ordering::Relaxed) => {
                match self.backing_id(ino, file, open_backing) {
                    Some(id) => {
                        self.handles.write().attach_backing(fh, id.clone());
                        Opened::Passthrough {
                            fh,
                            flags: FopenFlags::FOPEN_NOFLUSH,
                            id,
                        }
                    }
                    None => Opened::Read {
                        fh,
                        flags: IMMUTABLE_FILE,
                    },
                }
            }
            Handle::File { .. } | Handle::ImageFile { .. } => Opened::Read {
                fh,
                flags: IMMUTABLE_FILE,
            },
            _ => Opened::Read {
                fh,
                flags: FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
            },
        })
    }

    /// One backing id per inode, reused by every open of it.
    fn backing_id(
        &self,
        ino: u64,
        file: &File,
        open_backing: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let existing = self.handles.read().backing(ino);
        if existing.is_some() {
            return existing;
        }
        match open_backing(file) {
            Ok(id) => {
                let id = Arc::new(id);
                self.handles.write().set_backing(ino, &id);
                Some(id)
            }
            Err(e) => {
                log::debug!("passthrough unavailable for inode {ino}: {e}");
                None
            }
        }
    }

    /// RELEASE: the handle goes (and with the last open of an inode, its backing id).
    pub(super) fn release(&self, fh: u64) {
        if fh == NO_HANDLE {
            return;
        }
        self.handles.write().remove(fh);
    }
}
