//! The library's error type. Every failure a user can cause names the file, line or key at fault.
//!
//! Every variant's `Display` is the whole message: it already includes the text of its source
//! (an I/O error's OS message, a tensor error's message), so a caller prints an [`Error`] with `{}`
//! and never walks its `source()` chain as well, which would print the OS message twice.
//! Backtraces that candle attaches to its errors are left out of `Display` (they stay in `Debug`).

use std::path::PathBuf;

/// Errors raised by the harness library. Binaries wrap them in `anyhow` at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, device error, ...).
    #[error("tensor error: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration value is missing, of the wrong type or out of range.
    #[error("config: `{key}`: {msg}")]
    Config {
        /// Dotted key, e.g. `train.lr`.
        key: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A data file has malformed rows.
    #[error("{path}: {msg}")]
    Data {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong, with line numbers.
        msg: String,
    },
    /// A model file (GGUF, safetensors, config.json) could not be used.
    #[error("model {path}: {msg}")]
    Model {
        /// The model file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Training diverged or died: the loss or gradient norm became NaN or infinite, or the
    /// model stopped learning (gradient norm 0, or CE at the uniform value ln V, for
    /// `train.dead_steps` consecutive steps). The run is FAILED.
    #[error("training stopped at step {step}: {reason}")]
    Diverged {
        /// Optimizer step (1-based) at which training stopped.
        step: u64,
        /// What happened, e.g. "loss became NaN" or "gradient norm 0 for 20 consecutive steps".
        reason: String,
    },
    /// The user interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// A result file (run or study folder) could not be read, parsed or written.
    #[error(transparent)]
    Schema(#[from] ddm_schema::Error),
    /// Anything else, with a message.
    #[error("{0}")]
    Msg(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A config error on `key`.
    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { key: key.into(), msg: msg.into() }
    }
    /// A data error in `path`.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    /// A model-file error.
    pub fn model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Model { path: path.into(), msg: msg.into() }
    }
    /// A free-form error.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// A candle error's message without the backtraces candle attaches when `RUST_BACKTRACE` is set
/// (its `Display` appends them; its `Debug` keeps them).
fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as C;
    match e {
        C::WithBacktrace { inner, .. } => candle_message(inner),
        C::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        C::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other.to_string(),
    }
}
