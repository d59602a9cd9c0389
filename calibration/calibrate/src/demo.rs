//! `oodmon-calibrate demo`: a self-contained run on generated embeddings (ID classes and
//! two kinds of OOD), fitted, evaluated and reported into one directory.

use std::path::Path;

use oodmon_calibration::{
    npy, ClusterSpec, Embeddings, FitConfig, KMeansConfig, Metric, ThresholdMode,
};

use crate::error::{Error, Result};
use crate::evaluate::{eval_files, EvalReport};
use crate::fit::{fit, FitFiles, FitSummary};

/// Class-structured embeddings (ID) and three kinds of OOD: unseen classes near the ID
/// ones, broad noise, and ID embeddings with a shifted subspace.
pub fn demo_data(dir: &Path) -> Result<()> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2203_08549);
    let (d, classes) = (64usize, 10usize);
    let mut gauss = move || {
        // Box-Muller: a standard normal sample
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let mut centres: Vec<f64> = (0..(classes + 5) * d).map(|_| 2.5 * gauss()).collect();
    // unseen classes lie between known ones: 70% of the way to one, 30% to the next
    for u in 0..5 {
        for j in 0..d {
            centres[(classes + u) * d + j] =
                0.7 * centres[u * d + j] + 0.3 * centres[(u + 1) * d + j];
        }
    }
    let mut sample = |n: usize, class_of: &dyn Fn(usize) -> usize, spread: f64| {
        let mut data = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = class_of(i);
            for j in 0..d {
                data.push((centres[c * d + j] + spread * gauss()) as f32);
            }
            labels.push(c as i64);
        }
        #[allow(clippy::expect_used)] // finite Gaussian samples, n x d of them
        (Embeddings::new(n, d, data).expect("finite"), labels)
    };
    let id = |i: usize| i % classes;
    let (train, labels) = sample(5000, &id, 1.0);
    let (calib, calib_labels) = sample(1000, &id, 1.0);
    let (test, _) = sample(2000, &id, 1.0);
    let (near, _) = sample(1000, &|i| classes + i % 5, 1.0);
    let (wide, _) = sample(1000, &id, 1.3);
    let write = |name: &str, e: &Embeddings| npy::write_embeddings(dir.join(name), e);
    write("train.npy", &train)?;
    npy::write_labels(dir.join("train_labels.npy"), &labels)?;
    write("calib.npy", &calib)?;
    npy::write_labels(dir.join("calib_labels.npy"), &calib_labels)?;
    write("test.npy", &test)?;
    write("ood_unseen_classes.npy", &near)?;
    write("ood_wide.npy", &wide)?;
    Ok(())
}

/// Generates the embeddings in `out`, fits class centroids with cosine distance and a
/// global threshold at 95% TPR, and evaluates with a report in `out/report`.
pub fn demo(out: &Path, command: Vec<String>) -> Result<(FitSummary, EvalReport)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    demo_data(out)?;
    let p = |name: &str| out.join(name);
    let mut config = FitConfig::new(ClusterSpec::Class, Metric::Cosine);
    config.kmeans = KMeansConfig {
        k: 1,
        n_init: 3,
        max_iter: 300,
        tol: 1e-4,
        seed: 0,
    };
    let fitted = fit(
        &FitFiles {
            train: p("train.npy"),
            labels: Some(p("train_labels.npy")),
            calib: p("calib.npy"),
            calib_labels: Some(p("calib_labels.npy")),
            class_names: None,
            encoder: None,
            preprocessing: None,
            guards: None,
            out: p("calib.json"),
        },
        config,
        ThresholdMode::Global { target_tpr: 0.95 },
        command,
    )?;
    let report = eval_files(
        &p("calib.json"),
        &p("test.npy"),
        &[
            format!("unseen-classes={}", p("ood_unseen_classes.npy").display()),
            format!("wide={}", p("ood_wide.npy").display()),
        ],
        Some(&p("report")),
    )?;
    Ok((fitted, report))
}
