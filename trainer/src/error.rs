//! Errors of training, of loading a run, and of the pipelines that start from a run
//! (embedding, export, calibration).

use std::path::{Path, PathBuf};

/// What went wrong while training or loading a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    // messages carry their cause and name no `source`, so an error chain prints it once
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a run configuration: {cause}")]
    Config {
        path: PathBuf,
        cause: serde_json::Error,
    },
    #[error("invalid training setting: {0}")]
    Invalid(String),
    #[error(transparent)]
    Calibration(#[from] oodmon_calibration::Error),
    #[error(transparent)]
    Runtime(#[from] oodmon_runtime::Error),
    #[error(transparent)]
    Inference(#[from] oodmon_runtime::InferenceError),
    #[error(transparent)]
    Onnx(#[from] oodmon_onnx::Error),
    #[error(transparent)]
    Calibrate(#[from] oodmon_calibrate::Error),
    /// A run stopped before the end of its last epoch (its checkpoint resumes it).
    #[error(
        "{}: {done} of its {epochs} epochs trained (interrupted: the checkpoint is saved; \
         continue with --resume)",
        run.display()
    )]
    Unfinished {
        run: PathBuf,
        done: usize,
        epochs: usize,
    },
    /// A request that does not fit the run (a split it does not have, ...).
    #[error("{0}")]
    Request(String),
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        TrainError::Torch(e)
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |cause| TrainError::Io {
        path: path.to_path_buf(),
        cause,
    }
}
