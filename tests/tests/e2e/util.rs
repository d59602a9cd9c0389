//! Shared helpers: the reference Python environment and synthetic data.

use std::path::{Path, PathBuf};
use std::process::Command;

use oodmon_calibration::Embeddings;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// This crate's directory, read at run time: `cargo test` sets it for the test process, and
/// a binary reused from another checkout through a shared target directory would otherwise
/// point at that checkout's files.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Python interpreter with the reference packages: `OODMON_PYTHON`, else the
/// workspace's `.venv`. The README's test command sets it up; without it these tests fail
/// (a reference comparison that silently skips proves nothing).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OODMON_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = tests_dir().join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no reference Python: run `cargo xtask test` (it creates the environment) or set OODMON_PYTHON"
    );
    venv
}

/// Runs a script from `tests/py` with arguments and returns its stdout; panics with its stderr.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let path = tests_dir().join("py").join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .expect("start the reference Python");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gaussian classes with anisotropic, correlated noise (so Mahalanobis differs from Euclidean).
pub fn gaussian_classes(n: usize, dim: usize, classes: usize, seed: u64) -> (Embeddings, Vec<i64>) {
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let mut centres = ChaCha8Rng::seed_from_u64(77);
    let mu: Vec<f64> = (0..classes * dim)
        .map(|_| 3.0 * normal.sample(&mut centres))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        let z: Vec<f64> = (0..dim).map(|_| normal.sample(&mut rng)).collect();
        for j in 0..dim {
            let mixed = z[j] * (0.5 + j as f64 / dim as f64)
                + 0.6 * z[(j + 1) % dim] * (c as f64 + 1.0) / classes as f64;
            data.push((mu[c * dim + j] + mixed) as f32);
        }
        labels.push(c as i64);
    }
    (Embeddings::new(n, dim, data).unwrap(), labels)
}

/// Serialises tests that seed libtorch's global random generator, so that each sees the
/// weights its seed promises whatever runs beside it.
pub fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}
