//! Is a file open by anyone but the daemon? Asked of the kernel with a write lease
//! (`F_SETLEASE`, `F_WRLCK`), which it grants only to a file's sole opener (counting every
//! open file description, the kernel's own included: the image file of a kernel erofs
//! mount, held by its loop device or by the superblock itself), and which is given back
//! at once.
//!
//! While the lease is held, another process's open of the file waits for it to be given
//! back, and the kernel signals the daemon (SIGIO, blocked in every daemon thread: see
//! `session`). A filesystem without leases (`EINVAL`), or any other failure, answers "not
//! open elsewhere": the caller then does what it did before it could ask.

use std::os::fd::AsRawFd;
use std::path::Path;

/// True if another open file description of `file` exists (a process's, the kernel's).
pub(super) fn open_elsewhere(file: &Path) -> bool {
    let f = match crate::store::safe_open::open_regular(file) {
        Ok(f) => f,
        Err(e) => {
            log::debug!("{}: {e}: not open elsewhere", file.display());
            return false;
        }
    };
    let fd = f.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor this function owns, with integer arguments.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) };
    if r == 0 {
        // SAFETY: as above; gives the lease back before anyone waits on it long.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return false;
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EAGAIN) {
        return true;
    }
    log::debug!(
        "{}: F_SETLEASE: {e}; taken as not open elsewhere",
        file.display()
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_open_elsewhere_is_seen_until_it_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rootfs.erofs");
        std::fs::write(&p, b"x").unwrap();
        assert!(!open_elsewhere(&p));
        let other = std::fs::File::open(&p).unwrap();
        assert!(open_elsewhere(&p), "an open file description was not seen");
        drop(other);
        assert!(!open_elsewhere(&p));
        assert!(!open_elsewhere(&dir.path().join("gone")));
    }
}
