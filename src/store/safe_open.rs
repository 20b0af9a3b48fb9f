//! Opening files of the store, which anyone may have put there: only regular files, never
//! blocking, and reads of whole files bounded.
//!
//! A FIFO where `metadata.json` or `rootfs.erofs` should be would block `open(2)` until some
//! writer comes (with the store lock held, or a FUSE request waiting in D state); a socket
//! or device node is no better, and a huge file read whole takes the daemon's memory. So
//! every open of a store file goes through [`open_regular`]: `lstat` first (a device node is
//! never opened), then `O_NONBLOCK` (an open of a
//! FIFO returns at once), `O_NOFOLLOW` (a symlink is refused, not followed out of the
//! store), then `fstat` of what was opened, refused unless it is a regular file. Files
//! read whole go through [`read_regular`], which refuses those larger than its limit before
//! reading a byte. Refusals are `InvalidData` errors naming the path and the reason.

use super::sys;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading if it is a regular file (not through a symlink), without ever
/// blocking on what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    // Opening a device node may itself do something (a tape rewinds): look first. What was
    // opened is checked again below, in case the name was swapped meanwhile.
    let kind = sys::symlink_metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(not_regular(path, kind));
    }
    let file = sys::open(
        path,
        File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC),
    )
    .map_err(|e| match e.raw_os_error() {
        // O_NOFOLLOW's answer for a symlink (swapped in since the lstat).
        Some(libc::ELOOP) => refused(path, "a symlink"),
        _ => e,
    })?;
    let kind = sys::fstat(&file)?.file_type();
    if !kind.is_file() {
        return Err(not_regular(path, kind));
    }
    // Regular files ignore O_NONBLOCK, but reads of it are better without surprises.
    sys::clear_status_flags(&file)?;
    Ok(file)
}

/// The whole of the regular file `path`, refused (nothing read) if it is larger than `limit`
/// bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let size = sys::fstat(&file)?.len();
    if size > limit {
        return Err(too_large(path, size, limit));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // The file may grow meanwhile: read one byte past the limit to see it.
    sys::read_to_end(&file, limit + 1, &mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// The refusal of `path`, which is a `kind` and not a regular file.
pub fn not_regular(path: &Path, kind: std::fs::FileType) -> io::Error {
    refused(path, kind_name(kind))
}

fn refused(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: not a regular file ({what}); not opened",
            path.display()
        ),
    )
}

fn too_large(path: &Path, size: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {size} bytes or more, larger than the {limit} bytes imagefs reads of it; not read",
            path.display()
        ),
    )
}

fn kind_name(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_symlink() {
        "a symlink"
    } else {
        "not a file"
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens the FIFO at `path` for writing after `secs` seconds, if a reader waits on it
    /// (without one, the non-blocking open fails and nothing happens): a reader that blocks
    /// (the bug) then sees EOF, so a test of it fails instead of hanging.
    pub(crate) fn unblock_fifo_after(path: &Path, secs: u64) {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(secs));
            let _ = File::options()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
        });
    }

    fn refusal(r: io::Result<impl Sized>) -> String {
        match r {
            Ok(_) => panic!("opened"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn fifo_socket_dir_and_symlink_are_refused_without_blocking() {
        let d = tempfile::tempdir().expect("tempdir");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        unblock_fifo_after(&fifo, 3);
        let t0 = std::time::Instant::now();
        assert!(refusal(open_regular(&fifo)).contains("a FIFO"));
        assert!(t0.elapsed().as_secs() < 2, "waited on the FIFO");
        assert!(refusal(read_regular(&fifo, 10)).contains("a FIFO"));
        let sock = d.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        assert!(refusal(open_regular(&sock)).contains("a socket"));
        assert!(refusal(open_regular(d.path())).contains("a directory"));
        let file = d.path().join("file");
        sys::write(&file, b"abc").expect("write");
        let link = d.path().join("link");
        sys::symlink(&file, &link).expect("symlink");
        assert!(refusal(open_regular(&link)).contains("a symlink"));
        assert_eq!(read_regular(&file, 3).expect("read"), b"abc");
    }

    #[test]
    fn files_over_the_limit_are_not_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let file = d.path().join("big");
        let f = File::create(&file).expect("create");
        // Sparse: its size, not its blocks, is what is refused.
        f.set_len(1 << 30).expect("set_len");
        assert!(refusal(read_regular(&file, 1 << 20)).contains("larger than"));
        f.set_len(4).expect("set_len");
        assert_eq!(read_regular(&file, 4).expect("read").len(), 4);
    }
}
