//! End-to-end tests across oodmon's crates and against reference implementations
//! (NumPy, scikit-learn) in the Python environment the test command sets up.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod corrupt;
mod efficientnet;
mod onnx;
mod preprocess;
mod protocol;
mod reference;
mod trainer;
mod util;
