//! # oodmon-calibrate
//!
//! Workstation calibration as library functions the `oodmon-calibrate` binary (and the
//! trainer) call: the grid of detector choices the paper compares, reports with ROC curves
//! and score histograms, and building a deployable bundle through the runtime the edge uses.
//!
//! - [`grid`]: every combination of clustering, metric and threshold rule, scored.
//! - [`report`]: metrics tables, ROC and histogram SVGs.

pub mod grid;
pub mod report;
