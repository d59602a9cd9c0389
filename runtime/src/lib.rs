//! # oodmon-runtime
//!
//! The one place oodmon runs a model: an ONNX encoder is loaded and optimised once by tract
//! ([`Encoder`]), then run frame after frame in a [`Session`] that owns its preallocated
//! input tensor. The edge's frame loop, workstation calibration and the trainer's tract
//! embedding all go through it, so calibration embeds exactly what is deployed.
//!
//! - [`session`]: [`Encoder`] and [`Session`].
//! - [`backend`]: the engines a session can run on (tract on the CPU, tract's CUDA runtime,
//!   ONNX Runtime), chosen when the encoder is loaded.
//! - [`bundle`]: the deployable bundle (`encoder.onnx` + `calib.json`), cross-checked on load.
//! - [`kernels`]: oodmon's own depthwise and quantize-dequantize operators in tract's CPU
//!   plan, bit-identical to tract's and faster on small planes.
//! - [`probe`]: intermediate activations, for int8 calibration of the quantizer.
//! - [`error`]: load errors and the typed [`InferenceError`].

pub mod backend;
pub mod bundle;
pub mod error;
pub mod kernels;
pub mod pointwise;
pub mod probe;
pub mod session;
pub mod split;

pub use backend::Backend;
pub use bundle::Bundle;
pub use error::{Error, InferenceError, Result};
pub use kernels::Kernels;
pub use session::{Encoder, Session, SplitEncoder};

/// Metadata key under which an encoder carries its preprocessing spec as JSON.
pub use oodmon_calibration::preprocess::ONNX_METADATA_KEY as META_PREPROCESSING;
