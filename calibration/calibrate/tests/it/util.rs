//! Shared helpers: standard inputs and running the CLI binary.

use std::path::Path;
use std::process::{Command, Output};

use oodmon_calibration::npy;
use oodmon_calibration::synthetic::{blobs, noise};

/// Writes a standard set of inputs into `dir`.
pub fn write_inputs(dir: &Path) {
    let (train, labels) = blobs(600, 12, 3, 1);
    let (calib, calib_labels) = blobs(300, 12, 3, 2);
    let (test, _) = blobs(300, 12, 3, 3);
    npy::write_embeddings(dir.join("train.npy"), &train).unwrap();
    npy::write_labels(dir.join("labels.npy"), &labels).unwrap();
    npy::write_embeddings(dir.join("calib.npy"), &calib).unwrap();
    npy::write_labels(dir.join("calib_labels.npy"), &calib_labels).unwrap();
    npy::write_embeddings(dir.join("test.npy"), &test).unwrap();
    npy::write_embeddings(dir.join("ood.npy"), &noise(200, 12, 15.0, 4)).unwrap();
}

/// Runs `oodmon-calibrate` in `dir`. Under cross-testing, `OODMON_TEST_RUNNER` holds the
/// emulator command line (e.g. `qemu-aarch64-static -L /usr/aarch64-linux-gnu`).
pub fn calibrate(dir: &Path, args: &[&str]) -> Output {
    calibrate_command(dir, args)
        .output()
        .expect("run oodmon-calibrate")
}

/// The `oodmon-calibrate` command line, through the cross-test runner when there is one.
pub fn calibrate_command(dir: &Path, args: &[&str]) -> Command {
    oodmon_testkit::command(env!("CARGO_BIN_EXE_oodmon-calibrate"), dir, args)
}

/// Asserts a clean failure: exit code 1 (not a panic), one line naming `file` and `problem`.
pub fn assert_fails_cleanly(out: &Output, file: &str, problem: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].contains(file), "{file:?} not named in: {stderr}");
    assert!(
        lines[0].to_lowercase().contains(&problem.to_lowercase()),
        "{problem:?} not in: {stderr}"
    );
}
