//! # oodmon-trainer
//!
//! Learns the encoder whose embedding space oodmon clusters (arXiv 2203.08549 compares the
//! losses; the training loss decides how well clusters separate). Data, augmentation,
//! models, losses and the training loop live in separate modules; the binary is thin.

pub mod augment;
pub mod average;
pub mod calibrate;
pub mod data;
pub mod efficientnet;
pub mod embedding;
pub mod error;
pub mod export;
pub mod loss;
pub mod model;
pub mod optim;
pub mod pretrained;
pub mod train;
