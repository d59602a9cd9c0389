//! End-to-end tests across oodmon's crates and against reference implementations
//! (NumPy, scikit-learn) in the Python environment the test command sets up.

mod onnx;
mod preprocess;
mod protocol;
mod reference;
mod trainer;
mod util;
