//! Typed errors of the calibration core. Every variant says what went wrong in words a
//! user can act on; callers that know the file add it as context.

use std::path::PathBuf;

/// Everything that can go wrong while reading inputs, fitting, scoring or loading an artifact.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // Messages carry their cause and name no `source`, so an error chain prints it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid .npy file: {problem}")]
    Npy { path: PathBuf, problem: String },
    #[error("{what}: expected {expected}, found {found}")]
    WrongDtype {
        what: String,
        expected: &'static str,
        found: String,
    },
    #[error("{what}: row {row} holds a NaN or infinite value")]
    NonFinite { what: String, row: usize },
    #[error("{what}: dimension mismatch: expected {expected}, found {found}")]
    DimensionMismatch {
        what: String,
        expected: usize,
        found: usize,
    },
    #[error("{rows} embeddings but {labels} labels")]
    LengthMismatch { rows: usize, labels: usize },
    #[error("{what} is empty")]
    Empty { what: String },
    #[error("class {class} has no training samples (labels must be 0..{classes} without gaps)")]
    EmptyClass { class: usize, classes: usize },
    #[error("label {label} at row {row} is negative or too large")]
    BadLabel { label: i64, row: usize },
    #[error("{what}: needs at least {need} samples, has {have}")]
    TooFewSamples {
        what: String,
        need: usize,
        have: usize,
    },
    #[error(
        "alpha {alpha} cannot be guaranteed with {n} calibration samples: the smallest p-value is 1/(n+1) = {min:.3e}; use alpha >= {min:.3e} or more calibration samples"
    )]
    UnachievableAlpha { alpha: f64, n: usize, min: f64 },
    #[error("invalid {what}: {reason}")]
    InvalidParameter { what: &'static str, reason: String },
    #[error("unknown calibration schema version {found} (this build reads version {supported})")]
    UnknownSchemaVersion { found: u32, supported: u32 },
    #[error("calibration artifact is not valid JSON for this schema: {0}")]
    ArtifactParse(serde_json::Error),
    #[error("calibration artifact is inconsistent: {0}")]
    InvalidArtifact(String),
    #[error("{what} is not positive definite")]
    NotPositiveDefinite { what: String },
    #[error("encoder hash mismatch: the calibration belongs to encoder sha256 {expected}, this encoder is {found} (a damaged, truncated or replaced encoder file, or a calibration for another encoder)")]
    EncoderHashMismatch { expected: String, found: String },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    /// An invalid parameter `what`, with the reason.
    pub fn param(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            what,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
