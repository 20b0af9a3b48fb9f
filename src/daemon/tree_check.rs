//! The names check of an image the kernel's erofs has mounted, before it is attached
//! anywhere: every directory of the detached mount is listed, and the image is refused if a
//! listing fails or shows a name no filesystem makes (empty, or a second `.` or `..`).
//!
//! Why: the kernel's erofs lists directory entries as the image has them. The kernel's VFS
//! fails a whole listing (EIO) that holds a name with a `/`, so such a directory would be
//! unlistable in the kernel's tree; the user-space reader skips just that entry (logged).
//! An image that fails here is served by the reader (a FUSE image tree) instead, so it
//! reads the same whichever way trees are mounted. A name with a NUL is cut there by the
//! kernel and never found by a lookup: not checked.
//!
//! Cost: one listing of each directory (no file data, no lookups), once per mount.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Dir, FileType, Mode, OFlags, openat};

/// Deeper than any real image: refused rather than walked on.
const MAX_DEPTH: usize = 512;

/// `Err` says why the tree under `root` (an erofs mount) is refused.
pub(super) fn check_names(root: impl AsFd) -> Result<(), String> {
    let top = open_dir(root.as_fd(), c".").map_err(|e| format!("listing /: {e}"))?;
    walk(top, 0)
}

fn open_dir(at: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    openat(at, name, flags, Mode::empty()).map_err(std::io::Error::from)
}

fn walk(dir: OwnedFd, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("directories nested deeper than {MAX_DEPTH}"));
    }
    let at = dir.try_clone().map_err(|e| format!("dup: {e}"))?;
    let mut list = Dir::new(dir).map_err(|e| format!("listing: {e}"))?;
    let (mut dots, mut dotdots) = (0, 0);
    while let Some(entry) = list.read() {
        let entry = entry.map_err(|e| format!("listing: {e}"))?;
        let name = entry.file_name();
        match name.to_bytes() {
            b"." => dots += 1,
            b".." => dotdots += 1,
            b"" => return Err("an empty entry name".into()),
            n if n.contains(&b'/') => {
                return Err(format!(
                    "entry name {:?} has a /",
                    String::from_utf8_lossy(n)
                ));
            }
            _ if entry.file_type() == FileType::Directory => {
                let child = open_dir(at.as_fd(), name).map_err(|e| {
                    format!(
                        "listing {:?}: {e}",
                        String::from_utf8_lossy(name.to_bytes())
                    )
                })?;
                walk(child, depth + 1)?;
            }
            // A type the image left unknown: a directory if it opens as one.
            _ if entry.file_type() == FileType::Unknown => {
                if let Ok(child) = open_dir(at.as_fd(), name) {
                    walk(child, depth + 1)?;
                }
            }
            _ => {}
        }
    }
    if dots > 1 || dotdots > 1 {
        return Err("a second . or .. entry".into());
    }
    Ok(())
}
