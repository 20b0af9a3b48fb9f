//! The one place where errors become errno. Every error reply goes through [`Error`], which
//! carries the errno, the reason for the log, and how loudly to log it.

use fuser::Errno;
use log::Level;

use crate::store::StoreError;

#[derive(Debug)]
pub struct Error {
    pub errno: Errno,
    pub reason: String,
    pub level: Level,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(errno: Errno, level: Level, reason: impl Into<String>) -> Error {
        Error {
            errno,
            reason: reason.into(),
            level,
        }
    }

    /// A name that is not there: common and expected, so only logged at debug.
    pub fn not_found(what: impl Into<String>) -> Error {
        Error::new(Errno::ENOENT, Level::Debug, what)
    }

    /// A change refused because `digests/`, `rootfs/` and the top level are read-only.
    pub fn read_only(what: impl Into<String>) -> Error {
        Error::new(
            Errno::EROFS,
            Level::Info,
            format!("{}: read-only", what.into()),
        )
    }

    /// An operation `tags/` does not offer (files, hard links, attribute changes).
    pub fn not_permitted(what: impl Into<String>) -> Error {
        Error::new(
            Errno::EPERM,
            Level::Info,
            format!("{}: not permitted in tags/", what.into()),
        )
    }

    /// The errno's text, for log lines ("No such file or directory (os error 2)").
    pub fn errno_name(&self) -> String {
        std::io::Error::from_raw_os_error(i32::from(self.errno)).to_string()
    }

    /// Prefixes the reason with what was being done ("ln -s X tags/R/T").
    pub fn context(mut self, what: impl std::fmt::Display) -> Error {
        self.reason = format!("{what}: {}", self.reason);
        self
    }

    pub fn io(context: impl Into<String>, e: &std::io::Error) -> Error {
        let errno = e.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO);
        Error::new(errno, Level::Warn, format!("{}: {e}", context.into()))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        use StoreError as S;
        // Refusals of a user's request are logged at info with their reason (DESIGN.md:
        // "every refusal is also logged"); failures of the store itself at warn.
        let (errno, level) = match &e {
            S::NotFound(_) => (Errno::ENOENT, Level::Info),
            S::Exists(_) => (Errno::EEXIST, Level::Info),
            // A pull still in progress: try again later.
            S::NotReady { .. } => (Errno::EAGAIN, Level::Info),
            S::InvalidName(_) => (Errno::EINVAL, Level::Info),
            S::NameTooLong(_) => (Errno::ENAMETOOLONG, Level::Info),
            S::NotEmpty(_) => (Errno::ENOTEMPTY, Level::Info),
            S::IsDir(_) => (Errno::EISDIR, Level::Info),
            S::NotDir(_) => (Errno::ENOTDIR, Level::Info),
            // A tag directly in tags/, or an unsupported combination such as exchanging
            // directories: the arguments are not acceptable.
            S::Invalid(_) => (Errno::EINVAL, Level::Info),
            S::Io { source, .. } => (
                source
                    .raw_os_error()
                    .map(Errno::from_i32)
                    .unwrap_or(Errno::EIO),
                Level::Warn,
            ),
        };
        Error::new(errno, level, e.to_string())
    }
}
