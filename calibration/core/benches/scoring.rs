//! Scoring and k-means benchmarks. `cargo xtask bench` runs them together with the same
//! work in NumPy and scikit-learn (bench/calibration_reference.py) and prints the ratios.
//!
//! With `OODMON_BENCH_DATA=DIR` the inputs are also written to DIR as `.npy`, so the
//! Python peers run on exactly the same data; k-means inertias go to DIR/rust_kmeans.json.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use oodmon_calibration::{
    fit_model, kmeans, npy, ClusterSpec, Embeddings, FitConfig, KMeansConfig, Metric, Scorer,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const DIM: usize = 512;
const QUERIES: usize = 100_000;
/// k-NN and per-cluster Mahalanobis cost d or d^2 per bank row or cluster: smaller inputs.
const SMALL_QUERIES: usize = 10_000;
const KNN_BANK: usize = 10_000;
const KMEANS_N: usize = 50_000;
const KMEANS_DIM: usize = 64;

fn quick() -> bool {
    std::env::var_os("OODMON_BENCH_QUICK").is_some()
}

fn data_dir() -> Option<PathBuf> {
    std::env::var_os("OODMON_BENCH_DATA").map(PathBuf::from)
}

/// `n` embeddings around `clusters` centres, the shape real encoders produce.
fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> (Embeddings, Vec<i64>) {
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centre_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xc0ffee);
    let centres: Vec<f32> = (0..clusters * d)
        .map(|_| 2.0 * normal.sample(&mut centre_rng))
        .collect();
    let mut data = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % clusters;
        data.extend((0..d).map(|j| centres[c * d + j] + normal.sample(&mut rng)));
        labels.push(c as i64);
    }
    (Embeddings::new(n, d, data).unwrap(), labels)
}

fn save(name: &str, e: &Embeddings) {
    if let Some(dir) = data_dir() {
        std::fs::create_dir_all(&dir).unwrap();
        npy::write_embeddings(dir.join(name), e).unwrap();
    }
}

fn scoring(c: &mut Criterion) {
    let (queries, small) = if quick() {
        (10_000, 2_000)
    } else {
        (QUERIES, SMALL_QUERIES)
    };
    let (x, _) = clustered(queries, DIM, 10, 1);
    save("queries.npy", &x);
    let small_x = x.select(&(0..small).collect::<Vec<_>>());
    let mut group = c.benchmark_group("score");
    group.sample_size(10);
    for k in [10usize, 100] {
        // training data to fit the clusters and statistics from
        let (train, labels) = clustered(KNN_BANK, DIM, k, 2 + k as u64);
        save(&format!("train_k{k}.npy"), &train);
        if let Some(dir) = data_dir() {
            npy::write_labels(dir.join(format!("labels_k{k}.npy")), &labels).unwrap();
        }
        for metric in [
            "euclidean",
            "cosine",
            "mahalanobis",
            "mahalanobis-per-cluster",
            "knn:50",
        ] {
            if metric.starts_with("knn") && k != 10 {
                continue; // k-NN ignores the clusters: run it once
            }
            if metric == "mahalanobis-per-cluster" && k != 10 {
                continue;
            }
            let mut cfg = FitConfig::new(ClusterSpec::Class, Metric::parse(metric).unwrap());
            cfg.knn_bank = Some(KNN_BANK);
            let model = fit_model(&train, Some(&labels), &cfg).unwrap().model;
            let scorer = Scorer::new(&model).unwrap();
            let input = if metric.starts_with("knn") || metric.ends_with("per-cluster") {
                &small_x
            } else {
                &x
            };
            let id = if metric.starts_with("knn") {
                format!("{metric}/bank{KNN_BANK}")
            } else {
                format!("{metric}/k{k}")
            };
            group.bench_function(id, |b| {
                b.iter(|| black_box(scorer.score_batch(black_box(input)).unwrap()))
            });
        }
    }
    group.finish();
}

fn kmeans_fit(c: &mut Criterion) {
    let n = if quick() { 10_000 } else { KMEANS_N };
    let (x, _) = clustered(n, KMEANS_DIM, 20, 7);
    save("kmeans.npy", &x);
    let mut group = c.benchmark_group("kmeans");
    group.sample_size(10);
    let mut inertia = Vec::new();
    for k in [10usize, 100] {
        // one k-means++ run, like scikit-learn's default n_init for k-means++
        let cfg = KMeansConfig {
            n_init: 1,
            ..KMeansConfig::new(k)
        };
        let fit = kmeans(&x, &cfg).unwrap();
        inertia.push(format!(
            "\"k{k}\": {{\"inertia\": {}, \"iterations\": {}}}",
            fit.inertia, fit.iterations
        ));
        group.bench_function(format!("n{n}_d{KMEANS_DIM}/k{k}"), |b| {
            b.iter(|| black_box(kmeans(black_box(&x), &cfg).unwrap()))
        });
    }
    group.finish();
    if let Some(dir) = data_dir() {
        std::fs::write(
            dir.join("rust_kmeans.json"),
            format!("{{{}}}", inertia.join(", ")),
        )
        .unwrap();
    }
}

criterion_group!(benches, scoring, kmeans_fit);
criterion_main!(benches);
