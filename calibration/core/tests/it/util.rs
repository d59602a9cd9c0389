//! Shared helpers.

pub use oodmon_calibration::synthetic::{blobs, noise};
