//! Synthetic embedding sets with known structure: well-separated class blobs and broad
//! noise around them, for tests, benches and examples that need data with a right answer.
// the generators build finite, consistently sized data: the expects cannot fire
#![allow(clippy::expect_used)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::Embeddings;

/// Gaussian blobs: `classes` well-separated centres in `dim` dimensions with correlated noise.
pub fn blobs(n: usize, dim: usize, classes: usize, seed: u64) -> (Embeddings, Vec<i64>) {
    let mut centres = ChaCha8Rng::seed_from_u64(1000 + classes as u64 * 31 + dim as u64);
    let normal = Normal::new(0.0f64, 1.0).expect("a unit normal is valid");
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
    (
        Embeddings::new(n, dim, data).expect("finite by construction"),
        labels,
    )
}

/// Broad noise around the origin: clearly out of distribution for [`blobs`].
pub fn noise(n: usize, dim: usize, scale: f64, seed: u64) -> Embeddings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..n * dim)
        .map(|_| ((rng.random::<f64>() - 0.5) * 2.0 * scale) as f32)
        .collect();
    Embeddings::new(n, dim, data).expect("finite by construction")
}
