//! # oodmon-onnx
//!
//! Translate-time model work the edge never builds: writing encoders as ONNX from plain
//! weight arrays (libtorch has no ONNX export) and post-training quantization (int8 in QDQ
//! or operator form, float16). Range calibration runs through `oodmon-runtime`, the runtime
//! that will run the quantized model.
//!
//! - [`writer`]: [`OnnxBuilder`], batch-norm folding, the graph's names and metadata key.
//! - [`quantize`]: [`quantize`], [`quantize_qdq`], [`to_f16`].

pub mod error;
pub mod quantize;
pub mod writer;

pub use error::{Error, Result};
pub use quantize::{quantize, quantize_qdq, to_f16, QuantForm, RangeMethod};
pub use writer::{
    fold_batch_norm, ConvShape, OnnxBuilder, INPUT, IR_VERSION, META_PREPROCESSING, OPSET, OUTPUT,
};
