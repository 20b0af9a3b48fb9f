//! The one seam every filesystem call of the store passes through: thin wrappers over
//! `std::fs`, `rustix` and `nix`, each of which first asks [`fault`] whether to fail.
//!
//! In the binary the hook is compiled out (`#[cfg(test)]`): every wrapper is the bare call,
//! at no cost. In unit tests a thread-local plan fails the Nth call with a chosen errno, so
//! that each store operation can be run failing at every call it makes (`tests/faults.rs`).
//! A test in `tests/faults.rs` scans `src/store` and fails on any direct filesystem call
//! outside this file (the inotify watcher, `watch.rs`, is exempt: it reads on its own
//! behalf, changes nothing).
//!
//! One call of a wrapper is one fault point, even where std makes several syscalls
//! (`create_dir_all`, `write`, `copy`); iterating a [`read_dir`] is not one.

use std::fs::{self, File, Metadata, OpenOptions, Permissions, ReadDir};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How `rename` treats an existing destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// Asks the fault plan about one call (nothing outside unit tests).
#[inline(always)]
fn hook(op: &'static str) -> io::Result<()> {
    #[cfg(test)]
    return fault::check(op);
    #[cfg(not(test))]
    {
        let _ = op;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Paths.

pub fn symlink_metadata(p: impl AsRef<Path>) -> io::Result<Metadata> {
    hook("lstat")?;
    fs::symlink_metadata(p)
}

/// Whether anything (a dangling symlink too) stands at `p`.
pub fn exists(p: impl AsRef<Path>) -> bool {
    symlink_metadata(p).is_ok()
}

pub fn metadata(p: impl AsRef<Path>) -> io::Result<Metadata> {
    hook("stat")?;
    fs::metadata(p)
}

/// Whether `p` is a directory (following symlinks, as `Path::is_dir`).
pub fn is_dir(p: impl AsRef<Path>) -> bool {
    metadata(p).is_ok_and(|m| m.is_dir())
}

pub fn canonicalize(p: impl AsRef<Path>) -> io::Result<PathBuf> {
    hook("realpath")?;
    fs::canonicalize(p)
}

pub fn read_link(p: impl AsRef<Path>) -> io::Result<PathBuf> {
    hook("readlink")?;
    fs::read_link(p)
}

pub fn read_dir(p: impl AsRef<Path>) -> io::Result<ReadDir> {
    hook("opendir")?;
    fs::read_dir(p)
}

pub fn create_dir(p: impl AsRef<Path>) -> io::Result<()> {
    hook("mkdir")?;
    fs::create_dir(p)
}

/// `mkdir` with `mode` (before the umask).
pub fn create_dir_mode(p: impl AsRef<Path>, mode: u32) -> io::Result<()> {
    hook("mkdir")?;
    std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), mode).create(p)
}

pub fn create_dir_all(p: impl AsRef<Path>) -> io::Result<()> {
    hook("mkdir -p")?;
    fs::create_dir_all(p)
}

pub fn remove_dir(p: impl AsRef<Path>) -> io::Result<()> {
    hook("rmdir")?;
    fs::remove_dir(p)
}

pub fn remove_file(p: impl AsRef<Path>) -> io::Result<()> {
    hook("unlink")?;
    fs::remove_file(p)
}

pub fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    hook("symlink")?;
    std::os::unix::fs::symlink(target, link)
}

pub fn hard_link(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    hook("link")?;
    fs::hard_link(from, to)
}

pub fn copy(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<u64> {
    hook("copy")?;
    fs::copy(from, to)
}

/// `rename(2)`: replaces what stands at `to`.
pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    hook("rename")?;
    fs::rename(from, to)
}

/// `renameat2(2)` with the given mode.
pub fn renameat2(from: impl AsRef<Path>, to: impl AsRef<Path>, mode: RenameMode) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags};
    hook("renameat2")?;
    let flags = match mode {
        RenameMode::Replace => RenameFlags::empty(),
        RenameMode::NoReplace => RenameFlags::RENAME_NOREPLACE,
        RenameMode::Exchange => RenameFlags::RENAME_EXCHANGE,
    };
    nix::fcntl::renameat2(AT_FDCWD, from.as_ref(), AT_FDCWD, to.as_ref(), flags)
        .map_err(io::Error::from)
}

pub fn set_permissions(p: impl AsRef<Path>, perm: Permissions) -> io::Result<()> {
    hook("chmod")?;
    fs::set_permissions(p, perm)
}

pub fn chown(p: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    hook("chown")?;
    std::os::unix::fs::chown(p, uid, gid)
}

/// Creates (or truncates) `p` and writes `bytes` to it.
pub fn write(p: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    hook("write file")?;
    fs::write(p, bytes)
}

/// `statx(2)` of a path, not following a final symlink.
pub fn statx(p: impl AsRef<Path>, mask: rustix::fs::StatxFlags) -> io::Result<rustix::fs::Statx> {
    use rustix::fs::{AtFlags, CWD};
    hook("statx")?;
    Ok(rustix::fs::statx(
        CWD,
        p.as_ref(),
        AtFlags::SYMLINK_NOFOLLOW,
        mask,
    )?)
}

/// `statx(2)` of a path, following symlinks.
pub fn statx_follow(
    p: impl AsRef<Path>,
    mask: rustix::fs::StatxFlags,
) -> io::Result<rustix::fs::Statx> {
    use rustix::fs::{AtFlags, CWD};
    hook("statx")?;
    Ok(rustix::fs::statx(CWD, p.as_ref(), AtFlags::empty(), mask)?)
}

// ---------------------------------------------------------------------------------------
// Descriptors.

pub fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    hook("pread")?;
    f.read_at(buf, offset)
}

/// `flock(LOCK_EX | LOCK_NB)` as a `fn` for [`flock`]: `WouldBlock` as `EWOULDBLOCK`.
pub fn try_lock(f: &File) -> io::Result<()> {
    f.try_lock().map_err(|e| match e {
        fs::TryLockError::WouldBlock => io::Error::from_raw_os_error(libc::EWOULDBLOCK),
        fs::TryLockError::Error(e) => e,
    })
}

pub fn open(p: impl AsRef<Path>, opts: &OpenOptions) -> io::Result<File> {
    hook("open")?;
    opts.open(p)
}

pub fn sync_all(f: &File) -> io::Result<()> {
    hook("fsync")?;
    f.sync_all()
}

pub fn fstat(f: &File) -> io::Result<Metadata> {
    hook("fstat")?;
    f.metadata()
}

pub fn write_all(mut f: &File, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    hook("write")?;
    f.write_all(bytes)
}

pub fn write_all_at(f: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    hook("pwrite")?;
    f.write_all_at(bytes, offset)
}

/// Reads at most `limit` bytes of `f` from where it stands.
pub fn read_to_end(f: &File, limit: u64, buf: &mut Vec<u8>) -> io::Result<usize> {
    use std::io::Read;
    hook("read")?;
    f.take(limit).read_to_end(buf)
}

/// Clears a descriptor's status flags (`O_NONBLOCK`, after an open that must not block).
pub fn clear_status_flags(f: &File) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    hook("fcntl")?;
    fcntl(f, FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(())
}

/// `flock(2)` through `lock` (`File::lock`, `File::lock_shared`).
pub fn flock(f: &File, lock: fn(&File) -> io::Result<()>) -> io::Result<()> {
    hook("flock")?;
    lock(f)
}

/// `flock(LOCK_SH | LOCK_NB)`, as [`try_lock`].
pub fn try_lock_shared(f: &File) -> io::Result<()> {
    f.try_lock_shared().map_err(|e| match e {
        fs::TryLockError::WouldBlock => io::Error::from_raw_os_error(libc::EWOULDBLOCK),
        fs::TryLockError::Error(e) => e,
    })
}

/// Opens a directory, for the `*at` calls below.
pub fn open_dir(p: impl AsRef<Path>) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    hook("open dir")?;
    Ok(rustix::fs::open(
        p.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `openat(2)` of a directory, never following a symlink: a non-directory gives `NOTDIR`
/// (or `LOOP`, for a symlink) before anything is opened.
pub fn openat_dir(dir: impl AsFd, name: &std::ffi::OsStr) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    hook("openat").map_err(errno_of)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty())
}

pub fn unlinkat(dir: impl AsFd, name: &std::ffi::OsStr, rmdir: bool) -> rustix::io::Result<()> {
    use rustix::fs::AtFlags;
    hook(if rmdir { "unlinkat dir" } else { "unlinkat" }).map_err(errno_of)?;
    let flags = match rmdir {
        true => AtFlags::REMOVEDIR,
        false => AtFlags::empty(),
    };
    rustix::fs::unlinkat(dir, name, flags)
}

/// `statx(2)` of a descriptor.
pub fn fstatx(fd: impl AsFd, mask: rustix::fs::StatxFlags) -> io::Result<rustix::fs::Statx> {
    use rustix::fs::AtFlags;
    hook("fstatx")?;
    Ok(rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, mask)?)
}

/// `readlinkat(2)`: the target of the symlink `name` of the open directory `dir`, read
/// into `buf` (reused: a scan reads a million of them).
pub fn read_link_at(
    dir: impl AsFd,
    name: &std::ffi::CStr,
    buf: Vec<u8>,
) -> io::Result<std::ffi::CString> {
    hook("readlink")?;
    Ok(rustix::fs::readlinkat(dir, name, buf)?)
}

/// The type of the entry `name` of the open directory `dir`, not following a symlink (for
/// filesystems whose directory entries do not carry it).
pub fn file_type_at(dir: impl AsFd, name: &std::ffi::CStr) -> io::Result<rustix::fs::FileType> {
    hook("lstat")?;
    let st = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(rustix::fs::FileType::from_raw_mode(st.st_mode))
}

/// Disk space (allocated blocks, in bytes) of the entry `name` of the open directory `dir`,
/// not following a symlink.
pub fn bytes_at(dir: impl AsFd, name: &std::ffi::OsStr) -> rustix::io::Result<u64> {
    hook("lstat").map_err(errno_of)?;
    let st = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(u64::try_from(st.st_blocks).unwrap_or(0) * 512)
}

/// The entries of an open directory (its descriptor duplicated).
pub fn read_dir_fd(fd: impl AsFd) -> rustix::io::Result<rustix::fs::Dir> {
    hook("getdents").map_err(errno_of)?;
    rustix::fs::Dir::read_from(fd)
}

fn errno_of(e: io::Error) -> rustix::io::Errno {
    rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO)
}

#[cfg(test)]
pub(crate) mod fault {
    //! The fault plan of the calling thread: fail the `at`-th call (1-based) of the seam
    //! with `errno`; every call is counted while a plan is armed.
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct Plan {
        pub(crate) at: u64,
        pub(crate) errno: i32,
        pub(crate) calls: u64,
        /// The operation name of the call that failed, once it did.
        pub(crate) hit: Option<&'static str>,
        /// Once call `at` failed, every later call of the same operation fails too (a
        /// failure that persists: a bad block, a filesystem remounted read-only), so that
        /// the undo of a failed step fails as well.
        pub(crate) sticky: bool,
    }

    thread_local! {
        static PLAN: Cell<Option<Plan>> = const { Cell::new(None) };
        /// Where the failed call was made (with `IMAGEFS_FAULT_TRACE` set: for debugging).
        static TRACE: std::cell::RefCell<Option<std::backtrace::Backtrace>> =
            const { std::cell::RefCell::new(None) };
    }

    /// The stack of the last failed call, when `IMAGEFS_FAULT_TRACE` is set.
    pub(crate) fn trace() -> String {
        TRACE.with(|t| {
            t.borrow()
                .as_ref()
                .map(|b| b.to_string())
                .unwrap_or_default()
        })
    }

    /// Fails the `at`-th call from now with `errno` (`at == 0`: only counts).
    pub(crate) fn arm(at: u64, errno: i32) {
        PLAN.with(|p| {
            p.set(Some(Plan {
                at,
                errno,
                ..Plan::default()
            }))
        });
    }

    /// As [`arm`], the failure persisting for its operation ([`Plan::sticky`]).
    pub(crate) fn arm_sticky(at: u64, errno: i32) {
        PLAN.with(|p| {
            p.set(Some(Plan {
                at,
                errno,
                sticky: true,
                ..Plan::default()
            }))
        });
    }

    /// Stops counting; returns the plan as it ended.
    pub(crate) fn disarm() -> Plan {
        PLAN.with(|p| p.take()).unwrap_or_default()
    }

    pub(super) fn check(op: &'static str) -> std::io::Result<()> {
        PLAN.with(|p| {
            let Some(mut plan) = p.get() else {
                return Ok(());
            };
            plan.calls += 1;
            let again = plan.sticky && plan.hit == Some(op);
            let fail = plan.calls == plan.at || again;
            if fail && !again {
                plan.hit = Some(op);
                if std::env::var_os("IMAGEFS_FAULT_TRACE").is_some() {
                    TRACE.with(|t| {
                        *t.borrow_mut() = Some(std::backtrace::Backtrace::force_capture())
                    });
                }
            }
            p.set(Some(plan));
            match fail {
                true => Err(std::io::Error::from_raw_os_error(plan.errno)),
                false => Ok(()),
            }
        })
    }
}
