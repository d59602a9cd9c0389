//! k-means (Lloyd) with greedy k-means++ seeding, several seeded restarts, and the
//! assignment step done as blocked GEMM in parallel, as scikit-learn does it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::linalg::{dist2, dots, norm2, to_distances_argmin, BLOCK_ROWS};

/// k-means settings; the defaults follow scikit-learn except for several restarts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KMeansConfig {
    pub k: usize,
    /// Independent k-means++ restarts; the lowest inertia wins.
    pub n_init: usize,
    pub max_iter: usize,
    /// Convergence when the squared centre shift falls below `tol` times the mean feature variance.
    pub tol: f64,
    pub seed: u64,
}

impl KMeansConfig {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            n_init: 3,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }
}

/// A fitted k-means model.
#[derive(Debug, Clone)]
pub struct KMeansFit {
    /// `k x d`, row-major.
    pub centroids: Vec<f32>,
    pub assignment: Vec<usize>,
    /// Sum of squared distances of the samples to their centroid (exact, f64).
    pub inertia: f64,
    pub iterations: usize,
}

/// Fits k-means; `n_init` restarts with seeds derived from `seed`.
pub fn kmeans(data: &Embeddings, cfg: &KMeansConfig) -> Result<KMeansFit> {
    let n = data.rows();
    if cfg.k == 0 {
        return Err(Error::param("k-means", "k must be at least 1"));
    }
    if n < cfg.k {
        return Err(Error::TooFewSamples {
            what: format!("k-means with k={}", cfg.k),
            need: cfg.k,
            have: n,
        });
    }
    if cfg.n_init == 0 || cfg.max_iter == 0 || cfg.tol.is_nan() || cfg.tol < 0.0 {
        return Err(Error::param(
            "k-means",
            "n_init and max_iter must be positive and tol non-negative",
        ));
    }
    let d = data.dim();
    let norms: Vec<f64> = data.iter_rows().map(norm2).collect();
    let tol = cfg.tol * mean_variance(data);
    let mut best: Option<KMeansFit> = None;
    for run in 0..cfg.n_init {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(run as u64 * 0x9E37_79B9));
        let init = kmeans_plus_plus(data, &norms, cfg.k, &mut rng);
        let fit = lloyd(data, &norms, init, cfg.max_iter, tol, d);
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best = Some(fit);
        }
    }
    best.ok_or_else(|| Error::param("n_init", "must be at least 1"))
}

fn mean_variance(data: &Embeddings) -> f64 {
    let (n, d) = (data.rows() as f64, data.dim());
    if d == 0 {
        return 0.0;
    }
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in data.iter_rows() {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += v as f64;
            sq[j] += v as f64 * v as f64;
        }
    }
    (0..d)
        .map(|j| sq[j] / n - (sum[j] / n).powi(2))
        .sum::<f64>()
        / d as f64
}

/// Squared distances (approximate, via GEMM, clamped at zero) from every sample to each of
/// `centers` (`c x d`), written to `out` (`n x c`).
fn all_dist2(data: &Embeddings, norms: &[f64], centers: &[f32], c: usize, out: &mut [f32]) {
    let d = data.dim();
    let cn: Vec<f64> = centers.chunks_exact(d.max(1)).take(c).map(norm2).collect();
    out.par_chunks_mut(BLOCK_ROWS * c)
        .enumerate()
        .for_each(|(b, chunk)| {
            let start = b * BLOCK_ROWS;
            let m = chunk.len() / c;
            dots(
                &data.as_slice()[start * d..(start + m) * d],
                m,
                centers,
                c,
                d,
                chunk,
            );
            for i in 0..m {
                for j in 0..c {
                    let v = norms[start + i] - 2.0 * chunk[i * c + j] as f64 + cn[j];
                    chunk[i * c + j] = v.max(0.0) as f32;
                }
            }
        });
}

/// Greedy k-means++ (Arthur & Vassilvitskii 2007, with 2 + ln k local trials as in scikit-learn).
fn kmeans_plus_plus(data: &Embeddings, norms: &[f64], k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (n, d) = (data.rows(), data.dim());
    let trials = 2 + (k as f64).ln() as usize;
    let mut centers = Vec::with_capacity(k * d);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(data.row(first));
    let mut closest = vec![0f32; n];
    all_dist2(data, norms, data.row(first), 1, &mut closest);
    let mut cand_d = vec![0f32; n * trials];
    let mut cand = vec![0f32; trials * d];
    let mut cumulative = vec![0f64; n];
    for _ in 1..k {
        let mut acc = 0.0;
        for (c, &v) in cumulative.iter_mut().zip(&closest) {
            acc += v as f64;
            *c = acc;
        }
        let mut picks = Vec::with_capacity(trials);
        for _ in 0..trials {
            let idx = if acc > 0.0 {
                let r = rng.random::<f64>() * acc;
                cumulative.partition_point(|&c| c <= r).min(n - 1)
            } else {
                rng.random_range(0..n)
            };
            picks.push(idx);
        }
        for (t, &idx) in picks.iter().enumerate() {
            cand[t * d..(t + 1) * d].copy_from_slice(data.row(idx));
        }
        all_dist2(data, norms, &cand, trials, &mut cand_d);
        let potentials: Vec<f64> = (0..trials)
            .into_par_iter()
            .map(|t| {
                (0..n)
                    .map(|i| closest[i].min(cand_d[i * trials + t]) as f64)
                    .sum()
            })
            .collect();
        let best = (0..trials)
            .min_by(|&a, &b| potentials[a].total_cmp(&potentials[b]))
            .unwrap_or(0);
        for i in 0..n {
            closest[i] = closest[i].min(cand_d[i * trials + best]);
        }
        centers.extend_from_slice(data.row(picks[best]));
    }
    centers
}

/// Nearest centre of every sample (via GEMM) and its approximate squared distance.
fn assign(
    data: &Embeddings,
    norms: &[f64],
    centers: &[f32],
    k: usize,
    labels: &mut [usize],
    dist: &mut [f64],
) {
    let d = data.dim();
    let cn: Vec<f32> = centers
        .chunks_exact(d.max(1))
        .take(k)
        .map(|c| norm2(c) as f32)
        .collect();
    labels
        .par_chunks_mut(BLOCK_ROWS)
        .zip(dist.par_chunks_mut(BLOCK_ROWS))
        .enumerate()
        .for_each_init(
            || vec![0f32; BLOCK_ROWS * k],
            |buf, (b, (lab, dst))| {
                let start = b * BLOCK_ROWS;
                let m = lab.len();
                dots(
                    &data.as_slice()[start * d..(start + m) * d],
                    m,
                    centers,
                    k,
                    d,
                    buf,
                );
                for i in 0..m {
                    let (bj, bv) = to_distances_argmin(&mut buf[i * k..(i + 1) * k], &cn);
                    lab[i] = bj;
                    dst[i] = (bv as f64 + norms[start + i]).max(0.0);
                }
            },
        );
}

fn lloyd(
    data: &Embeddings,
    norms: &[f64],
    mut centers: Vec<f32>,
    max_iter: usize,
    tol: f64,
    d: usize,
) -> KMeansFit {
    let n = data.rows();
    let k = centers.len() / d.max(1);
    let mut labels = vec![0usize; n];
    let mut dist = vec![0f64; n];
    let mut iterations = 0;
    let mut previous: Option<Vec<usize>> = None;
    for _ in 0..max_iter {
        iterations += 1;
        assign(data, norms, &centers, k, &mut labels, &mut dist);
        if previous.as_deref() == Some(&labels[..]) {
            break; // strict convergence: the assignment no longer changes
        }
        let (sums, counts) = cluster_sums(data, &labels, k);
        let mut new_centers = vec![0f32; k * d];
        let mut empty = Vec::new();
        for j in 0..k {
            if counts[j] == 0 {
                empty.push(j);
                new_centers[j * d..(j + 1) * d].copy_from_slice(&centers[j * d..(j + 1) * d]);
                continue;
            }
            for p in 0..d {
                new_centers[j * d + p] = (sums[j * d + p] / counts[j] as f64) as f32;
            }
        }
        if !empty.is_empty() {
            // Move each empty cluster onto one of the samples farthest from its centre.
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_unstable_by(|&a, &b| dist[b].total_cmp(&dist[a]));
            for (j, &i) in empty.iter().zip(&order) {
                new_centers[j * d..(j + 1) * d].copy_from_slice(data.row(i));
            }
        }
        let shift: f64 = centers
            .chunks_exact(d.max(1))
            .zip(new_centers.chunks_exact(d.max(1)))
            .map(|(a, b)| dist2(a, b))
            .sum();
        centers = new_centers;
        if shift <= tol && empty.is_empty() {
            assign(data, norms, &centers, k, &mut labels, &mut dist);
            break;
        }
        previous = Some(labels.clone());
    }
    // Exact inertia against the final centres.
    assign(data, norms, &centers, k, &mut labels, &mut dist);
    let inertia = labels
        .par_iter()
        .enumerate()
        .map(|(i, &j)| dist2(data.row(i), &centers[j * d..(j + 1) * d]))
        .sum();
    KMeansFit {
        centroids: centers,
        assignment: labels,
        inertia,
        iterations,
    }
}

/// Per-cluster sums (f64) and counts, reduced over parallel chunks.
pub(crate) fn cluster_sums(
    data: &Embeddings,
    labels: &[usize],
    k: usize,
) -> (Vec<f64>, Vec<usize>) {
    let d = data.dim();
    let chunk = (data.rows() / (4 * rayon::current_num_threads()).max(1)).max(1024);
    labels
        .par_chunks(chunk)
        .enumerate()
        .map(|(c, lab)| {
            let mut sums = vec![0f64; k * d];
            let mut counts = vec![0usize; k];
            for (o, &j) in lab.iter().enumerate() {
                counts[j] += 1;
                let row = data.row(c * chunk + o);
                for (s, &v) in sums[j * d..(j + 1) * d].iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
            (sums, counts)
        })
        .reduce(
            || (vec![0f64; k * d], vec![0usize; k]),
            |(mut s1, mut c1), (s2, c2)| {
                s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                c1.iter_mut().zip(&c2).for_each(|(a, b)| *a += b);
                (s1, c1)
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(seed: u64) -> (Embeddings, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centers = [[0.0f32, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]];
        let mut data = Vec::new();
        let mut truth = Vec::new();
        for i in 0..300 {
            let c = &centers[i % 3];
            for &v in c {
                data.push(v + rng.random::<f32>() - 0.5);
            }
            truth.push(i % 3);
        }
        (Embeddings::new(300, 3, data).unwrap(), truth)
    }

    #[test]
    fn recovers_separated_blobs_and_is_seeded() {
        let (data, truth) = blobs(1);
        let fit = kmeans(&data, &KMeansConfig::new(3)).unwrap();
        // every true blob maps to exactly one cluster
        for b in 0..3 {
            let ids: std::collections::BTreeSet<_> = truth
                .iter()
                .zip(&fit.assignment)
                .filter(|(t, _)| **t == b)
                .map(|(_, a)| *a)
                .collect();
            assert_eq!(ids.len(), 1);
        }
        assert!(fit.inertia < 300.0 * 3.0 * 0.1);
        let again = kmeans(&data, &KMeansConfig::new(3)).unwrap();
        assert_eq!(fit.centroids, again.centroids);
    }

    #[test]
    fn refuses_more_clusters_than_samples() {
        let (data, _) = blobs(2);
        let few = data.select(&[0, 1]);
        assert!(matches!(
            kmeans(&few, &KMeansConfig::new(3)),
            Err(Error::TooFewSamples { .. })
        ));
    }

    #[test]
    fn duplicate_points_do_not_break_it() {
        let data = Embeddings::new(10, 2, vec![1.0; 20]).unwrap();
        let fit = kmeans(&data, &KMeansConfig::new(3)).unwrap();
        assert_eq!(fit.inertia, 0.0);
    }
}
