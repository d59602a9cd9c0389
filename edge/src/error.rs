//! Typed errors of the edge runtime: start-up errors stop the program with one clear line,
//! frame errors are counted and logged by the frame loop.

use std::path::PathBuf;

/// Why a frame source could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be opened at all (missing device, file or bad specification).
    #[error("cannot open {source_name}: {problem}")]
    Open {
        source_name: String,
        problem: String,
    },
    /// No frame arrived in time; the source may recover.
    #[error("{source_name}: no frame within {timeout_ms} ms")]
    Timeout {
        source_name: String,
        timeout_ms: u64,
    },
    /// The device went away; the source reconnects with back-off on later calls.
    #[error("{source_name} disconnected: {problem}")]
    Disconnected {
        source_name: String,
        problem: String,
    },
    /// One frame was unusable (truncated, wrong size); the next may be fine.
    #[error("{source_name}: bad frame: {problem}")]
    BadFrame {
        source_name: String,
        problem: String,
    },
}

impl SourceError {
    /// Errors after which the frame loop goes on to the next frame.
    pub fn is_transient(&self) -> bool {
        !matches!(self, SourceError::Open { .. })
    }
}

/// Text that does not parse (a source or format specification, a setting, a file
/// header); the message says what is wrong and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl From<String> for ParseError {
    fn from(s: String) -> Self {
        ParseError(s)
    }
}

impl From<&str> for ParseError {
    fn from(s: &str) -> Self {
        ParseError(s.to_string())
    }
}

/// Errors of the edge runtime.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Calibration(#[from] oodmon_calibration::Error),
    /// The encoder or the bundle could not be loaded.
    #[error(transparent)]
    Runtime(#[from] oodmon_runtime::Error),
    /// One run of the encoder failed (the frame loop counts it as a bad frame).
    #[error("inference failed: {0}")]
    Inference(#[from] oodmon_runtime::InferenceError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A frame that could not be decoded (e.g. a corrupt JPEG).
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A frame whose size or format does not match what it claims.
    #[error("malformed frame: {0}")]
    Frame(String),
    #[error("configuration {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error("invalid setting {what}: {problem}")]
    Invalid { what: String, problem: String },
    #[error(transparent)]
    Serial(#[from] oodmon_serial::SerialError),
    #[error("{line}: {problem}")]
    Gpio { line: String, problem: String },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Journal(#[from] crate::output::journal::JournalError),
    /// A live or looped source ran out of frames: a failure, so a supervisor restarts.
    #[error("the frame source ended after {frames} frames ({why}): a {kind} must not end; exiting with an error so that a supervisor restarts the pipeline")]
    SourceEnded {
        frames: u64,
        why: &'static str,
        kind: &'static str,
    },
    #[error("writing output: {0}")]
    Io(std::io::Error),
    #[error("{0} consecutive bad frames (limit {1}): the source is faulty")]
    Fault(u32, u32),
    /// The overlapped loop's inference thread ended (a panic in the model stage).
    #[error("the inference thread stopped unexpectedly")]
    InferenceThread,
    /// The chosen backend's embeddings of the built-in frames are too far from those of the
    /// backend the calibration was fitted on: its thresholds would not mean what they say.
    #[error("backend {backend} disagrees with {reference}, which the calibration was made with: {agreement}; use --backend {reference}, or recalibrate on {backend} (`oodmon-calibrate fit-model --backend {backend}`)")]
    BackendDisagrees {
        backend: oodmon_runtime::Backend,
        reference: oodmon_runtime::Backend,
        agreement: crate::app::check::Agreement,
    },
    /// The overlapped loop dropped more than the allowed share of recent frames.
    #[error("{dropped} of the last {window} frames were dropped unjudged (limit {limit}): inference is slower than the camera")]
    FramesDropped {
        dropped: u32,
        window: u32,
        limit: u32,
    },
}

// by hand, not `#[from]`: the message carries the cause, so it is not a `source` too
impl From<std::io::Error> for EdgeError {
    fn from(e: std::io::Error) -> Self {
        EdgeError::Io(e)
    }
}

impl EdgeError {
    pub fn invalid(what: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        EdgeError::Invalid {
            what: what.into(),
            problem: problem.to_string(),
        }
    }
}

pub type Result<T, E = EdgeError> = std::result::Result<T, E>;
