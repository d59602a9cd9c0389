//! Calibration artifacts from any text: a typed error or an artifact that validates.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(artifact) = oodmon_calibration::CalibrationArtifact::from_json(text) {
        // what loads must write and load again
        let again = oodmon_calibration::CalibrationArtifact::from_json(&artifact.to_json());
        assert!(again.is_ok(), "{again:?}");
    }
});
