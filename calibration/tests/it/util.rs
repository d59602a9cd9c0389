//! Shared helpers: synthetic embeddings and running the CLI binary.

use std::path::Path;
use std::process::{Command, Output};

use oodmon_calibration::{npy, Embeddings};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Gaussian blobs: `classes` well-separated centres in `dim` dimensions with correlated noise.
pub fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Embeddings, Vec<i64>) {
    let mut centres = ChaCha8Rng::seed_from_u64(1000 + classes as u64 * 31 + dim as u64);
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let mu: Vec<f64> = (0..classes * dim)
        .map(|_| 4.0 * normal.sample(&mut centres))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let shared: f64 = normal.sample(&mut rng);
        for j in 0..dim {
            let e = normal.sample(&mut rng) + if j % 2 == 0 { 0.8 * shared } else { 0.0 };
            data.push((mu[c * dim + j] + e * (1.0 + j as f64 / dim as f64)) as f32);
        }
        labels.push(c as i64);
    }
    (Embeddings::new(n, dim, data).unwrap(), labels)
}

/// Broad noise around the origin: clearly out of distribution for [`blobs`].
pub fn noise(n: usize, dim: usize, scale: f64, seed: u64) -> Embeddings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * dim)
        .map(|_| ((rng.random::<f64>() - 0.5) * 2.0 * scale) as f32)
        .collect();
    Embeddings::new(n, dim, data).unwrap()
}

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
    let bin = env!("CARGO_BIN_EXE_oodmon-calibrate");
    let runner = std::env::var("OODMON_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    let mut cmd = match parts.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(parts).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.current_dir(dir).args(args);
    cmd
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
