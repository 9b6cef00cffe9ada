//! What the imaging functions can fail with; every variant names the file when there is one.

use std::path::PathBuf;

use crate::volume::VolumeError;

/// An imaging error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a NIfTI volume failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A file other than a volume could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON side file (`ct.json`, …) is malformed.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said.
        message: String,
    },
    /// Input that cannot be processed, explained (with a `help:` line where there is a fix).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// The imaging crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
