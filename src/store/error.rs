//! The store's errors. Each names what it is about; the FUSE layer maps them to errno in
//! one place (`fs::errno`).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: no such tag, digest or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{what}: not ready ({reason})")]
    NotReady { what: String, reason: String },
    #[error("{0}: invalid name")]
    InvalidName(String),
    #[error("{0}: name too long")]
    NameTooLong(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}: is a directory")]
    IsDir(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Attaches a context (usually a path) to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            context: context(),
            source,
        })
    }
}

/// The error of a name the store refuses; `what` shows the name.
pub(super) fn name_err(e: super::names::NameError, what: impl FnOnce() -> String) -> StoreError {
    use super::names::NameError;
    match e {
        NameError::TooLong => StoreError::NameTooLong(what()),
        NameError::Invalid => StoreError::InvalidName(what()),
    }
}
