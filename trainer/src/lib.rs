//! # oodmon-trainer
//!
//! Learns the encoder whose embedding space oodmon clusters: data readers and augmentation
//! here, models, losses and the training loop on tch (libtorch).

pub mod augment;
pub mod data;
