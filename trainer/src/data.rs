//! The dataset readers live in the calibration core (so that calibration can read image data
//! without libtorch); the trainer uses them from here.

pub use oodmon_data::datasets::*;
