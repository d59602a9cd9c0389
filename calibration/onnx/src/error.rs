//! Errors of the ONNX writer and quantizer.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid {what}: {problem}")]
    Invalid { what: &'static str, problem: String },
    /// A model the quantizer cannot rewrite (not one this writer made, or corrupt).
    #[error("{path}: not a usable ONNX encoder: {problem}")]
    Model { path: PathBuf, problem: String },
    /// Running the model for range calibration failed.
    #[error(transparent)]
    Runtime(#[from] oodmon_runtime::Error),
    #[error(transparent)]
    Inference(#[from] oodmon_runtime::InferenceError),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, problem: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            problem: problem.into(),
        }
    }

    pub(crate) fn model(path: &Path, problem: impl std::fmt::Display) -> Self {
        Error::Model {
            path: path.to_path_buf(),
            problem: format!("{problem:#}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
