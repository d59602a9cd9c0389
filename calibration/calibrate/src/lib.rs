//! # oodmon-calibrate
//!
//! Workstation calibration as library functions; the `oodmon-calibrate` binary only parses
//! arguments and prints what these return, and the trainer builds its bundles through the
//! same [`bundle`] path.
//!
//! - [`bundle`]: embeddings to a calibration artifact, and an encoder with its calibration
//!   to a deployable bundle (`fit`, `fit-model` and the trainer's `fit` share it).
//! - [`fit`]: a calibration from `.npy` embeddings.
//! - [`evaluate`]: scores, and AUROC/AUPR/FPR@95TPR per OOD set with a report.
//! - [`models`]: the same through an ONNX encoder in tract (`embed-model`, `fit-model`,
//!   `eval-model`, `time-model`).
//! - [`grid`]: every combination of clustering, metric and threshold rule (the paper's study).
//! - [`report`]: metrics tables, ROC and histogram SVGs.
//! - [`demo`]: a self-contained run on generated embeddings.
//! - [`inputs`]: reading and cross-checking the inputs.

pub mod bundle;
pub mod corruption;
pub mod demo;
pub mod error;
pub mod evaluate;
pub mod fit;
pub mod grid;
pub mod guards;
pub mod inputs;
pub mod models;
pub mod report;

pub use error::{Error, Result};
