//! One error type whose `Display` is the whole message a notebook shows when it stops.

use std::fmt;
use std::path::Path;

/// What went wrong, as a sentence that says what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error from a message.
    pub fn msg(m: impl Into<String>) -> Self {
        Error(m.into())
    }

    /// A file that could not be read or parsed.
    pub fn file(path: &Path, e: impl fmt::Display) -> Self {
        Error(format!("{}: {e}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<ddm_schema::Error> for Error {
    fn from(e: ddm_schema::Error) -> Self {
        Error(e.to_string())
    }
}

impl<E: std::error::Error + Send + Sync> From<plotters::drawing::DrawingAreaErrorKind<E>> for Error {
    fn from(e: plotters::drawing::DrawingAreaErrorKind<E>) -> Self {
        Error(format!("plot: {e}"))
    }
}
