//! The schema crate's error: a result file that could not be read, parsed or written.

use std::path::PathBuf;

/// What went wrong with a result file; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file's content does not parse as the record it should hold (or could not be encoded).
    #[error("{path}: {msg}")]
    Parse {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong (with a line number where there is one).
        msg: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A parse (or encode) error in `path`.
    pub fn parse(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::Parse { path: path.into(), msg: msg.to_string() }
    }
}
