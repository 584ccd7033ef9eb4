//! The engine's error type. Every fallible public function returns [`Result`]; the Python layer
//! maps each variant to an `infire` exception class, so no panic ever crosses into Python.

use std::path::PathBuf;

/// Errors raised by Infire. Each message names what was wrong and, where it helps, the limit hit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model path that does not exist or cannot be read.
    #[error("model not found: {path}: {reason}")]
    ModelNotFound { path: PathBuf, reason: String },

    /// A model file or directory that exists but is malformed (truncated, corrupted, inconsistent).
    #[error("invalid model file {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },

    /// A well-formed model that this engine does not implement (architecture, tensor type, ...).
    #[error("unsupported model: {0}")]
    Unsupported(String),

    /// Tokenizer construction, encoding, decoding or chat-template failures.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    /// A request that cannot be served as asked (over-long prompt, bad sampling parameter, ...).
    #[error("{0}")]
    InvalidRequest(String),

    /// Engine configuration that cannot work (e.g. a KV cache too small for one sequence).
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),

    /// The engine has shut down or its loop died; the request could not be completed.
    #[error("engine error: {0}")]
    Engine(String),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::InvalidModel`] for `path`.
    pub fn invalid_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
