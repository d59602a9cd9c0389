//! Errors of the model runtime: an encoder that cannot be loaded names its file; a run that
//! fails is an [`InferenceError`] the frame loop counts as a bad frame.

use std::path::PathBuf;

/// Why an encoder or a bundle could not be loaded, or a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Not an encoder tract can run with a `[1, 3, H, W]` input and a `[1, D]` output.
    #[error("{path}: not a usable ONNX encoder: {problem}")]
    Model { path: PathBuf, problem: String },
    /// The calibration side of a bundle (schema, hashes, shapes against the encoder).
    #[error(transparent)]
    Calibration(#[from] oodmon_calibration::Error),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    /// The backend is not in this build, or its library or device is not usable here.
    #[error("backend {backend}: {problem}")]
    Backend {
        backend: crate::backend::Backend,
        problem: String,
    },
}

/// Why one run of the encoder failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InferenceError {
    #[error("the input holds {found} values, the encoder takes {expected}")]
    InputSize { expected: usize, found: usize },
    #[error("the encoder produced {found} values, expected {expected}")]
    OutputSize { expected: usize, found: usize },
    /// tract itself failed (its message, with its causes).
    #[error("tract: {0}")]
    Tract(String),
    /// ONNX Runtime failed (its message).
    #[error("onnxruntime: {0}")]
    Onnxruntime(String),
    /// NaN or infinity in the embedding: the encoder or its input is broken.
    #[error("non-finite embedding (value {index} is {value})")]
    NonFinite { index: usize, value: f32 },
}

impl InferenceError {
    pub(crate) fn tract(e: impl std::fmt::Display) -> Self {
        InferenceError::Tract(format!("{e:#}"))
    }
}

impl Error {
    pub(crate) fn model(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> Self {
        Error::Model {
            path: path.into(),
            problem: format!("{problem:#}"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
