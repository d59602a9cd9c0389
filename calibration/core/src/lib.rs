//! # oodmon-calibration
//!
//! The shared core of oodmon: out-of-distribution detection by clustering in an encoder's
//! embedding space ("Is it all a cluster game?", arXiv 2203.08549). The trainer fits it,
//! workstation calibration tunes it, and the edge runs it, all through this one crate.
//! It holds no model runtime (`oodmon-runtime`), no ONNX writer (`oodmon-onnx`) and no
//! data-set readers (`oodmon-data`).
//!
//! - [`npy`]: embeddings and labels in NumPy `.npy`.
//! - [`fit`]: clusters (class centroids, k-means global or per class) and metric statistics.
//! - [`model`]: Euclidean, cosine, Mahalanobis (tied, per cluster, ++ and relative) and k-NN
//!   scores (higher = more OOD).
//! - [`threshold`]: global, per-cluster and split-conformal decisions.
//! - [`metrics`]: AUROC, AUPR-In/Out, FPR@95TPR, detection error, ROC points.
//! - [`artifact`]: the versioned calibration file, written atomically and validated on load.
//! - [`preprocess`]: the preprocessing spec and the one resampler shared by training,
//!   calibration and the edge (camera frame or stored image to the encoder's input).

pub mod artifact;
pub mod corrupt;
pub mod embeddings;
pub mod error;
pub mod fit;
pub mod io;
pub mod kmeans;
mod linalg;
pub mod matrix;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod preprocess;
pub mod quality;
pub mod synthetic;
pub mod threshold;

pub use artifact::{
    CalibrationArtifact, Decision, Detector, Provenance, DEFAULT_EMBEDDED_ON,
    OLDEST_SCHEMA_VERSION, SCHEMA_VERSION,
};
pub use embeddings::Embeddings;
pub use error::{Error, Result};
pub use fit::{fit_model, ClusterSpec, FitConfig, Fitted};
pub use kmeans::{kmeans, KMeansConfig, KMeansFit};
pub use metrics::{ood_metrics, OodMetrics};
pub use model::{
    Background, Covariance, Metric, Model, Score, Scorer, Scratch, Shrinkage, Subspace,
};
pub use preprocess::PreprocessSpec;
pub use quality::{CameraFault, ImageQuality, QualityBounds};
pub use threshold::{ThresholdMode, Thresholds};

/// Fits clusters on `train`, scores `calib` and calibrates thresholds: the whole
/// calibration in one call, returning the model and thresholds.
pub fn calibrate(
    train: &Embeddings,
    labels: Option<&[i64]>,
    calib: &Embeddings,
    config: &FitConfig,
    mode: ThresholdMode,
) -> Result<(Model, Thresholds)> {
    if calib.is_empty() {
        return Err(Error::Empty {
            what: "calibration embeddings".into(),
        });
    }
    if calib.dim() != train.dim() {
        return Err(Error::DimensionMismatch {
            what: "calibration embeddings".into(),
            expected: train.dim(),
            found: calib.dim(),
        });
    }
    let fitted = fit_model(train, labels, config)?;
    let scorer = Scorer::new(&fitted.model)?;
    let scores = scorer.score_batch(calib)?;
    let thresholds = Thresholds::fit(mode, &scores, fitted.model.clusters())?;
    Ok((fitted.model, thresholds))
}
