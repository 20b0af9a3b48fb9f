//! Thin `*at(2)` wrappers: every operation is relative to an open directory and never
//! follows a symlink in the last component.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

pub fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Opens `path` (an ordinary path) as a directory, not following a final symlink.
pub fn open_dir_path(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = cstring(path.as_os_str().as_bytes())?;
    openat(AT_FDCWD, &c, dir_flags(), 0)
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    let mode = Mode::from_bits_retain(mode as libc::mode_t);
    retry(|| Ok(nix::fcntl::openat(dir, name, flags, mode)?))
}

/// Opens the directory `name` in `dir`; a symlink fails with ELOOP, a non-directory ENOTDIR.
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, dir_flags(), 0)
}

/// Creates the regular file `name` in `dir` (it must not exist; never through a symlink).
pub fn create_file(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<std::fs::File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        0o600,
    )?;
    Ok(std::fs::File::from(fd))
}

pub fn lstat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<FileStat> {
    Ok(nix::sys::stat::fstatat(
        dir,
        name,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// `lstat` that maps "not there" to `None`.
pub fn lstat_opt(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<FileStat>> {
    match lstat(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_symlink(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

pub fn mkdir(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    let mode = Mode::from_bits_retain(mode as libc::mode_t);
    Ok(nix::sys::stat::mkdirat(dir, name, mode)?)
}

pub fn symlink(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

/// The target of the symlink `name`, whole however long it is (nix grows its buffer until
/// the target fits, so a target as long as a fixed buffer is never cut).
pub fn readlink(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    Ok(nix::fcntl::readlinkat(dir, name)?.into_vec())
}

/// Hard link `from_dir/from` as `to_dir/to`; a symlink `from` is linked itself, not followed.
pub fn link(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // No AT_SYMLINK_FOLLOW: a final symlink is never followed.
    Ok(nix::unistd::linkat(
        from_dir,
        from,
        to_dir,
        to,
        AtFlags::empty(),
    )?)
}

/// Makes the special file `name`; `mode` holds both the file type (`S_IFCHR`, ...) and the
/// permission bits, as mknod(2) takes them.
pub fn mknod(dir: BorrowedFd<'_>, name: &CStr, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    let mode = mode as libc::mode_t;
    let kind = SFlag::from_bits_retain(mode & libc::S_IFMT);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    Ok(nix::sys::stat::mknodat(dir, name, kind, perm, dev)?)
}

pub fn unlink(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    Ok(nix::unistd::unlinkat(dir, name, flags)?)
}

pub fn lchown(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    Ok(nix::unistd::fchownat(
        dir,
        name,
        uid,
        gid,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// chmod of a non-symlink `name` (the caller knows it is not a symlink: it just made it in
/// a tree nobody else writes).
pub fn chmod(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    let mode = Mode::from_bits_retain(mode as libc::mode_t);
    Ok(nix::sys::stat::fchmodat(
        dir,
        name,
        mode,
        FchmodatFlags::FollowSymlink,
    )?)
}

/// Sets atime and mtime of `name` (seconds and nanoseconds), not following a symlink.
pub fn set_times(dir: BorrowedFd<'_>, name: &CStr, secs: i64, nsec: u32) -> io::Result<()> {
    let t = TimeSpec::new(secs as libc::time_t, i64::from(nsec) as libc::c_long);
    Ok(nix::sys::stat::utimensat(
        dir,
        name,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )?)
}

/// Sets atime and mtime of the open file or directory `fd`.
pub fn set_times_fd(fd: BorrowedFd<'_>, secs: i64, nsec: u32) -> io::Result<()> {
    let t = TimeSpec::new(secs as libc::time_t, i64::from(nsec) as libc::c_long);
    Ok(nix::sys::stat::futimens(fd, &t, &t)?)
}

/// Sets an xattr on `name` in `dir` without following a final symlink (through the
/// directory's `/proc/self/fd` link, which names the directory itself).
pub fn set_xattr(dir: BorrowedFd<'_>, name: &CStr, key: &CStr, value: &[u8]) -> io::Result<()> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.to_bytes());
    let path = cstring(&path)?;
    Ok(rustix::fs::lsetxattr(
        path.as_c_str(),
        key,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// The entries of an open directory (names only, without `.` and `..`).
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        out.push(e?.file_name().as_bytes().to_vec());
    }
    Ok(out)
}

/// Removes `name` from `dir` and, if it is a directory, everything under it; never follows
/// a symlink. A missing `name` is not an error.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let Some(st) = lstat_opt(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = open_dir(dir, name)?;
        for child in list(std::os::fd::AsFd::as_fd(&sub))? {
            remove_tree(std::os::fd::AsFd::as_fd(&sub), &cstring(&child)?)?;
        }
        unlink(dir, name, true)
    } else {
        unlink(dir, name, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A target as long as Linux allows (PATH_MAX - 1 bytes) is read whole, not cut at
    /// some buffer size; a short one too.
    #[test]
    fn readlink_reads_long_targets_whole() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = open_dir_path(d.path()).expect("open");
        let long: Vec<u8> = (0..libc::PATH_MAX as usize - 1)
            .map(|i| {
                if i % 64 == 63 {
                    b'/'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        assert_eq!(long.len(), 4095);
        for (name, target) in [(c"long", long.as_slice()), (c"short", b"x/y".as_slice())] {
            symlink(&cstring(target).expect("c"), dir.as_fd(), name).expect("symlink");
            assert_eq!(readlink(dir.as_fd(), name).expect("readlink"), target);
        }
    }
}
