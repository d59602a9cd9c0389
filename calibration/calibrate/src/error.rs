//! Errors of workstation calibration: each says which input is wrong and how.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Calibration(#[from] oodmon_calibration::Error),
    #[error(transparent)]
    Runtime(#[from] oodmon_runtime::Error),
    #[error(transparent)]
    Inference(#[from] oodmon_runtime::InferenceError),
    #[error(transparent)]
    Data(#[from] oodmon_data::DataError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// An input that does not fit the others or the command (sizes, names, options).
    #[error("{0}")]
    Input(String),
    /// A step failed on a named input (`calibrating A on B: ...`).
    #[error("{context}: {cause}")]
    In { context: String, cause: Box<Error> },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    pub(crate) fn input(problem: impl Into<String>) -> Self {
        Error::Input(problem.into())
    }

    pub(crate) fn context(self, context: impl Into<String>) -> Self {
        Error::In {
            context: context.into(),
            cause: Box::new(self),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
