//! `.npy` embeddings and labels from any bytes: a typed error or a valid array.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.npy");
    if let Ok(e) = oodmon_calibration::npy::parse_embeddings(name, data.to_vec()) {
        assert_eq!(e.as_slice().len(), e.rows() * e.dim());
        assert!(e.as_slice().iter().all(|v| v.is_finite()));
    }
    let _ = oodmon_calibration::npy::parse_labels(name, data.to_vec());
});
