//! Error type of the reader.
//!
//! Every failure caused by the image's bytes is [`ImageError::Corrupt`] (the
//! FUSE layer answers `EIO`); [`ImageError::Unsupported`] is a valid image
//! using a feature this reader does not implement (also `EIO`).

/// Errors returned by [`crate::Image`].
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the backing file failed.
    #[error("i/o error reading image: {0}")]
    Io(#[from] std::io::Error),
    /// The image is truncated or inconsistent.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The image uses an on-disk feature this reader does not implement.
    #[error("unsupported image feature: {0}")]
    Unsupported(String),
    /// A directory operation on a non-directory.
    #[error("not a directory")]
    NotDir,
    /// `readlink` on a non-symlink.
    #[error("not a symlink")]
    NotSymlink,
    /// `read` on a directory.
    #[error("is a directory")]
    IsDir,
    /// `read` on an inode without data (device, fifo, socket).
    #[error("inode has no readable data")]
    NoData,
}

impl ImageError {
    /// The errno the FUSE layer should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ImageError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            ImageError::Corrupt(_) | ImageError::Unsupported(_) => libc::EIO,
            ImageError::NotDir => libc::ENOTDIR,
            ImageError::NotSymlink | ImageError::NoData => libc::EINVAL,
            ImageError::IsDir => libc::EISDIR,
        }
    }
}

/// Shorthand for `Err(ImageError::Corrupt(..))`.
pub(crate) fn corrupt<T>(msg: impl Into<String>) -> Result<T, ImageError> {
    Err(ImageError::Corrupt(msg.into()))
}
