//! One error type for the whole crate: every fallible public function returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong in pdenet, each with a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config error: {0}")]
    Config(String),
    #[error("shape error: {0}")]
    Shape(String),
    #[error("weights error: {0}")]
    Weights(String),
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("bad input: {0}")]
    Input(String),
    #[error("data error: {0}")]
    Data(String),
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Returns `Err(Error::Shape)` with the formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::error::Error::Shape(format!($($arg)*)));
        }
    };
}
