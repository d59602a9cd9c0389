//! Fitting a [`Model`] from labelled (or unlabelled) in-distribution training embeddings.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::embeddings::Embeddings;
use crate::error::{Error, Result};
use crate::kmeans::{cluster_sums, kmeans, KMeansConfig};
use crate::matrix::{MatrixF32, MatrixF64};
use crate::model::{
    cholesky_lower, Background, Covariance, KnnBank, Metric, Model, Shrinkage, Subspace,
};

/// How the in-distribution data is summarised as clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterSpec {
    /// One centroid per class, from the labels.
    Class,
    /// k-means over all training embeddings, labels ignored.
    Kmeans { k: usize },
    /// k-means with `k` clusters inside each class.
    KmeansPerClass { k: usize },
}

impl ClusterSpec {
    /// Parses `class`, `kmeans:K` or `kmeans-per-class:K`.
    pub fn parse(text: &str) -> Result<Self> {
        let k = |rest: &str| {
            rest.parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .ok_or_else(|| {
                    Error::param(
                        "clusters",
                        format!("{text:?}: K must be a positive integer"),
                    )
                })
        };
        if text == "class" {
            Ok(ClusterSpec::Class)
        } else if let Some(rest) = text.strip_prefix("kmeans-per-class:") {
            Ok(ClusterSpec::KmeansPerClass { k: k(rest)? })
        } else if let Some(rest) = text.strip_prefix("kmeans:") {
            Ok(ClusterSpec::Kmeans { k: k(rest)? })
        } else {
            Err(Error::param(
                "clusters",
                format!("{text:?} (expected class, kmeans:K or kmeans-per-class:K)"),
            ))
        }
    }

    pub fn name(&self) -> String {
        match self {
            ClusterSpec::Class => "class".into(),
            ClusterSpec::Kmeans { k } => format!("kmeans:{k}"),
            ClusterSpec::KmeansPerClass { k } => format!("kmeans-per-class:{k}"),
        }
    }

    pub fn needs_labels(&self) -> bool {
        !matches!(self, ClusterSpec::Kmeans { .. })
    }
}

/// Everything that decides how a model is fitted; saved in the artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub clusters: ClusterSpec,
    pub metric: Metric,
    pub normalize: bool,
    /// Restarts, iterations, tolerance and seed of k-means (its `k` comes from `clusters`).
    pub kmeans: KMeansConfig,
    /// Largest k-NN bank; a larger training set is subsampled (seeded). `None` keeps all.
    pub knn_bank: Option<usize>,
}

impl FitConfig {
    /// Whether the embeddings are L2-normalised: asked for, or required by the metric
    /// (Mahalanobis++).
    pub fn normalizes(&self) -> bool {
        self.normalize || self.metric.needs_unit_norm()
    }

    pub fn new(clusters: ClusterSpec, metric: Metric) -> Self {
        Self {
            clusters,
            metric,
            normalize: false,
            kmeans: KMeansConfig::new(1),
            knn_bank: None,
        }
    }
}

/// Checks labels against embeddings and returns the number of classes. Classes must be
/// `0..C` with every class present.
pub fn validate_labels(rows: usize, labels: &[i64]) -> Result<usize> {
    if labels.len() != rows {
        return Err(Error::LengthMismatch {
            rows,
            labels: labels.len(),
        });
    }
    let mut classes = 0usize;
    for (row, &l) in labels.iter().enumerate() {
        if !(0..=1_000_000).contains(&l) {
            return Err(Error::BadLabel { label: l, row });
        }
        classes = classes.max(l as usize + 1);
    }
    let mut counts = vec![0usize; classes];
    for &l in labels {
        counts[l as usize] += 1;
    }
    if let Some(class) = counts.iter().position(|&c| c == 0) {
        return Err(Error::EmptyClass { class, classes });
    }
    Ok(classes)
}

/// A fitted model and the cluster of every training row.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub model: Model,
    pub assignment: Vec<usize>,
}

/// Fitted clusters of (possibly normalised) training data, before any metric.
#[derive(Debug, Clone)]
pub struct Clusters {
    /// The training data as clustered (L2-normalised when the config says so).
    pub data: Embeddings,
    pub normalize: bool,
    /// `k x d`, row-major.
    pub centroids: Vec<f32>,
    pub assignment: Vec<usize>,
    pub cluster_class: Vec<Option<usize>>,
}

/// Fits clusters and the metric's statistics on training embeddings.
pub fn fit_model(train: &Embeddings, labels: Option<&[i64]>, cfg: &FitConfig) -> Result<Fitted> {
    let clusters = fit_clusters(train, labels, cfg)?;
    let model = fit_metric(&clusters, cfg)?;
    Ok(Fitted {
        model,
        assignment: clusters.assignment,
    })
}

/// The clustering step of [`fit_model`]; `cfg.metric` only counts through
/// [`FitConfig::normalizes`].
pub fn fit_clusters(
    train: &Embeddings,
    labels: Option<&[i64]>,
    cfg: &FitConfig,
) -> Result<Clusters> {
    if train.is_empty() {
        return Err(Error::Empty {
            what: "training embeddings".into(),
        });
    }
    let classes = match labels {
        Some(l) => Some(validate_labels(train.rows(), l)?),
        None if cfg.clusters.needs_labels() => {
            return Err(Error::param(
                "clusters",
                format!("{} needs labels", cfg.clusters.name()),
            ))
        }
        None => None,
    };
    let data = if cfg.normalizes() {
        train.l2_normalized()
    } else {
        train.clone()
    };
    let d = data.dim();
    let (centroids, assignment, cluster_class) = match cfg.clusters {
        ClusterSpec::Class => {
            let (Some(classes), Some(labels)) = (classes, labels) else {
                return Err(Error::param("clusters", "class centroids need labels"));
            };
            let assignment: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
            let (sums, counts) = cluster_sums(&data, &assignment, classes);
            let centroids: Vec<f32> = (0..classes * d)
                .map(|i| (sums[i] / counts[i / d] as f64) as f32)
                .collect();
            (centroids, assignment, (0..classes).map(Some).collect())
        }
        ClusterSpec::Kmeans { k } => {
            let fit = kmeans(&data, &KMeansConfig { k, ..cfg.kmeans })?;
            let cluster_class = match labels {
                Some(l) => majority_class(&fit.assignment, l, k),
                None => vec![None; k],
            };
            (fit.centroids, fit.assignment, cluster_class)
        }
        ClusterSpec::KmeansPerClass { k } => {
            let (Some(classes), Some(labels)) = (classes, labels) else {
                return Err(Error::param("clusters", "per-class k-means needs labels"));
            };
            let mut centroids = Vec::with_capacity(classes * k * d);
            let mut assignment = vec![0usize; data.rows()];
            let mut cluster_class = Vec::with_capacity(classes * k);
            for class in 0..classes {
                let rows: Vec<usize> = (0..data.rows())
                    .filter(|&i| labels[i] as usize == class)
                    .collect();
                let subset = data.select(&rows);
                let fit = kmeans(
                    &subset,
                    &KMeansConfig {
                        k,
                        seed: cfg.kmeans.seed.wrapping_add(class as u64),
                        ..cfg.kmeans
                    },
                )
                .map_err(|e| match e {
                    Error::TooFewSamples { need, have, .. } => Error::TooFewSamples {
                        what: format!("class {class} for kmeans-per-class:{k}"),
                        need,
                        have,
                    },
                    other => other,
                })?;
                for (&row, &a) in rows.iter().zip(&fit.assignment) {
                    assignment[row] = class * k + a;
                }
                centroids.extend_from_slice(&fit.centroids);
                cluster_class.extend(std::iter::repeat_n(Some(class), k));
            }
            (centroids, assignment, cluster_class)
        }
    };
    Ok(Clusters {
        data,
        normalize: cfg.normalizes(),
        centroids,
        assignment,
        cluster_class,
    })
}

/// The metric step of [`fit_model`]: covariance or k-NN bank on fitted clusters.
pub fn fit_metric(clusters: &Clusters, cfg: &FitConfig) -> Result<Model> {
    let Clusters {
        data,
        centroids,
        assignment,
        cluster_class,
        ..
    } = clusters;
    let d = data.dim();
    let k = centroids.len() / d.max(1);
    if cfg.metric.needs_unit_norm() && !clusters.normalize {
        return Err(Error::param(
            "normalize",
            format!(
                "{} is defined on L2-normalised clusters; these were fitted without",
                cfg.metric.name()
            ),
        ));
    }
    let precision = match cfg.metric.precision() {
        Some((covariance, shrinkage)) => {
            fit_precision(data, centroids, assignment, k, covariance, shrinkage)?
        }
        None => Vec::new(),
    };
    let subspace = match cfg.metric.subspace() {
        Some((shrinkage, rank)) => {
            Some(fit_subspace(data, centroids, assignment, shrinkage, rank)?)
        }
        None => None,
    };
    let background = match cfg.metric {
        Metric::RelativeMahalanobis { shrinkage } => Some(fit_background(data, shrinkage)?),
        _ => None,
    };
    let knn_bank = match cfg.metric {
        Metric::Knn { k: kk } => {
            let n = data.rows();
            let keep: Vec<usize> = match cfg.knn_bank {
                Some(max) if max < n => {
                    let mut rng = ChaCha8Rng::seed_from_u64(cfg.kmeans.seed ^ 0x6b6e6e);
                    let mut idx = sample(&mut rng, n, max).into_vec();
                    idx.sort_unstable();
                    idx
                }
                _ => (0..n).collect(),
            };
            if keep.len() < kk {
                return Err(Error::TooFewSamples {
                    what: format!("k-NN bank for knn:{kk}"),
                    need: kk,
                    have: keep.len(),
                });
            }
            Some(KnnBank {
                vectors: MatrixF32::new(
                    keep.len(),
                    d,
                    data.select(&keep).l2_normalized().as_slice().to_vec(),
                ),
                cluster: keep.iter().map(|&i| assignment[i]).collect(),
            })
        }
        _ => None,
    };
    let mut model = Model {
        dim: d,
        normalize: clusters.normalize,
        metric: cfg.metric,
        centroids: MatrixF32::new(k, d, centroids.clone()),
        cluster_class: cluster_class.clone(),
        whitening: Vec::new(),
        precision,
        subspace,
        knn_bank,
        background,
    };
    // stored and scored as whitening factors
    model.upgrade()?;
    Ok(model)
}

/// One Gaussian over all training embeddings (the mean and shrunk precision), the
/// background of relative Mahalanobis.
fn fit_background(data: &Embeddings, shrinkage: Shrinkage) -> Result<Background> {
    let d = data.dim();
    let n = data.rows();
    let mut sum = vec![0f64; d];
    for i in 0..n {
        for (s, &x) in sum.iter_mut().zip(data.row(i)) {
            *s += x as f64;
        }
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / n as f64) as f32).collect();
    let all: Vec<usize> = (0..n).collect();
    let (cov, fourth, nf) = scatter(data, &all, &mean, &vec![0; n]);
    Ok(Background {
        precision: Some(shrunk_precision(
            &cov,
            fourth,
            nf,
            d,
            shrinkage,
            "the background covariance",
        )?),
        whitening: None,
        mean,
    })
}

fn majority_class(assignment: &[usize], labels: &[i64], k: usize) -> Vec<Option<usize>> {
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut counts = vec![0usize; k * classes];
    for (&a, &l) in assignment.iter().zip(labels) {
        counts[a * classes + l as usize] += 1;
    }
    (0..k)
        .map(|j| {
            let row = &counts[j * classes..(j + 1) * classes];
            let (best, &n) = row.iter().enumerate().max_by_key(|(_, &c)| c)?;
            (n > 0).then_some(best)
        })
        .collect()
}

/// Scatter `sum (x - mu)(x - mu)^T / n` of the given rows around their centroids, in f64.
fn scatter(
    data: &Embeddings,
    rows: &[usize],
    centroids: &[f32],
    assignment: &[usize],
) -> (Vec<f64>, f64, f64) {
    let d = data.dim();
    let n = rows.len();
    let mut cov = vec![0f64; d * d];
    let mut fourth = 0f64; // sum_i ||x_i||^4 for Ledoit-Wolf
    let block = 2048;
    let mut centred = vec![0f64; block * d];
    for chunk in rows.chunks(block) {
        for (r, &i) in chunk.iter().enumerate() {
            let c = &centroids[assignment[i] * d..(assignment[i] + 1) * d];
            let mut sq = 0f64;
            for (p, (&x, &m)) in data.row(i).iter().zip(c).enumerate() {
                let v = x as f64 - m as f64;
                centred[r * d + p] = v;
                sq += v * v;
            }
            fourth += sq * sq;
        }
        let m = chunk.len();
        crate::linalg::add_gram(&centred[..m * d], m, d, &mut cov);
    }
    let nf = n as f64;
    cov.iter_mut().for_each(|v| *v /= nf);
    (cov, fourth, nf)
}

/// The low-rank precision of `mahalanobis++:R` (see [`Subspace`]): the tied covariance
/// shrunk as for the full metric, its `rank` leading eigenvectors kept, the rest of its
/// spectrum flattened to the mean.
fn fit_subspace(
    data: &Embeddings,
    centroids: &[f32],
    assignment: &[usize],
    shrinkage: Shrinkage,
    rank: usize,
) -> Result<Subspace> {
    let d = data.dim();
    if rank >= d {
        return Err(Error::param(
            "metric",
            format!("mahalanobis++:{rank} keeps {rank} directions of {d}: use mahalanobis++ (full rank) or a rank below {d}"),
        ));
    }
    let all: Vec<usize> = (0..data.rows()).collect();
    let (cov, fourth, n) = scatter(data, &all, centroids, assignment);
    let shrunk = shrunk_covariance(&cov, fourth, n, d, shrinkage)?;
    let m = nalgebra::DMatrix::from_row_slice(d, d, &shrunk);
    let eig = nalgebra::linalg::SymmetricEigen::new(m);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let tail = order[rank..]
        .iter()
        .map(|&i| eig.eigenvalues[i])
        .sum::<f64>()
        / (d - rank) as f64;
    if !(tail.is_finite() && tail > 0.0) || order.iter().any(|&i| !eig.eigenvalues[i].is_finite()) {
        return Err(Error::NotPositiveDefinite {
            what: "shrunk covariance of mahalanobis++ (its spectrum)".into(),
        });
    }
    let mut basis = vec![0f32; d * rank];
    for (col, &i) in order[..rank].iter().enumerate() {
        for row in 0..d {
            basis[row * rank + col] = eig.eigenvectors[(row, i)] as f32;
        }
    }
    Ok(Subspace {
        basis: MatrixF32::new(d, rank, basis),
        variances: order[..rank].iter().map(|&i| eig.eigenvalues[i]).collect(),
        residual_precision: 1.0 / tail,
    })
}

/// Shrinks `cov` toward `mu I` (Ledoit-Wolf or fixed), with a tiny ridge.
fn shrunk_covariance(
    cov: &[f64],
    fourth: f64,
    n: f64,
    d: usize,
    shrinkage: Shrinkage,
) -> Result<Vec<f64>> {
    let trace: f64 = (0..d).map(|i| cov[i * d + i]).sum();
    let mu = trace / d as f64;
    let s = match shrinkage {
        Shrinkage::Fixed(s) if (0.0..=1.0).contains(&s) => s,
        Shrinkage::Fixed(s) => {
            return Err(Error::param("shrinkage", format!("{s} is outside [0, 1]")))
        }
        Shrinkage::LedoitWolf => {
            // as sklearn.covariance.ledoit_wolf_shrinkage with assume_centered=True
            let frob: f64 = cov.iter().map(|v| v * v).sum();
            let beta = (fourth / n - frob) / (d as f64 * n);
            let delta = (frob - 2.0 * mu * trace + d as f64 * mu * mu) / d as f64;
            let beta = beta.min(delta);
            if delta > 0.0 {
                (beta / delta).clamp(0.0, 1.0)
            } else {
                1.0
            }
        }
    };
    // A tiny ridge keeps a degenerate (e.g. constant) cluster invertible.
    let ridge = 1e-6 * if mu > 0.0 { mu } else { 1.0 };
    let mut shrunk: Vec<f64> = cov.iter().map(|v| v * (1.0 - s)).collect();
    for i in 0..d {
        shrunk[i * d + i] += s * mu + ridge;
    }
    Ok(shrunk)
}

/// Shrinks `cov` toward `mu I` (Ledoit-Wolf or fixed) and inverts it into a precision matrix.
fn shrunk_precision(
    cov: &[f64],
    fourth: f64,
    n: f64,
    d: usize,
    shrinkage: Shrinkage,
    what: &str,
) -> Result<MatrixF64> {
    let shrunk = shrunk_covariance(cov, fourth, n, d, shrinkage)?;
    let m = nalgebra::DMatrix::from_row_slice(d, d, &shrunk);
    let chol = nalgebra::linalg::Cholesky::new(m).ok_or_else(|| Error::NotPositiveDefinite {
        what: format!("shrunk covariance of {what}"),
    })?;
    let inv = chol.inverse();
    let mut data = vec![0f64; d * d];
    for r in 0..d {
        for c in 0..d {
            // symmetrise exactly
            data[r * d + c] = 0.5 * (inv[(r, c)] + inv[(c, r)]);
        }
    }
    let p = MatrixF64::new(d, d, data);
    cholesky_lower(&p).ok_or_else(|| Error::NotPositiveDefinite {
        what: format!("precision of {what}"),
    })?;
    Ok(p)
}

fn fit_precision(
    data: &Embeddings,
    centroids: &[f32],
    assignment: &[usize],
    k: usize,
    covariance: Covariance,
    shrinkage: Shrinkage,
) -> Result<Vec<MatrixF64>> {
    let d = data.dim();
    let all: Vec<usize> = (0..data.rows()).collect();
    let (cov, fourth, n) = scatter(data, &all, centroids, assignment);
    match covariance {
        Covariance::Tied => Ok(vec![shrunk_precision(
            &cov,
            fourth,
            n,
            d,
            shrinkage,
            "the tied covariance",
        )?]),
        Covariance::PerCluster => {
            let mut members = vec![Vec::new(); k];
            for (i, &a) in assignment.iter().enumerate() {
                members[a].push(i);
            }
            members
                .iter()
                .enumerate()
                .map(|(j, rows)| {
                    if rows.len() < 2 {
                        // too few samples for a covariance of its own: use the tied one
                        shrunk_precision(&cov, fourth, n, d, shrinkage, "the tied covariance")
                    } else {
                        let (c, f, nn) = scatter(data, rows, centroids, assignment);
                        shrunk_precision(&c, f, nn, d, shrinkage, &format!("cluster {j}"))
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(ClusterSpec::parse("class").unwrap(), ClusterSpec::Class);
        assert_eq!(
            ClusterSpec::parse("kmeans:4").unwrap(),
            ClusterSpec::Kmeans { k: 4 }
        );
        assert_eq!(
            ClusterSpec::parse("kmeans-per-class:2").unwrap(),
            ClusterSpec::KmeansPerClass { k: 2 }
        );
        assert!(ClusterSpec::parse("kmeans:0").is_err());
        assert!(ClusterSpec::parse("dbscan").is_err());
        assert_eq!(Metric::parse("knn:5").unwrap(), Metric::Knn { k: 5 });
        assert!(Metric::parse("knn:x").is_err());
        for name in [
            "euclidean",
            "cosine",
            "mahalanobis",
            "mahalanobis-per-cluster",
            "mahalanobis++",
            "mahalanobis++:8",
            "relative-mahalanobis",
            "knn:3",
        ] {
            assert_eq!(Metric::parse(name).unwrap().name(), name);
        }
    }

    #[test]
    fn label_problems_are_typed() {
        assert!(matches!(
            validate_labels(3, &[0, 1]),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate_labels(2, &[0, -1]),
            Err(Error::BadLabel { row: 1, .. })
        ));
        assert!(matches!(
            validate_labels(3, &[0, 2, 2]),
            Err(Error::EmptyClass {
                class: 1,
                classes: 3
            })
        ));
        assert_eq!(validate_labels(3, &[1, 0, 1]).unwrap(), 2);
    }

    #[test]
    fn singular_covariance_still_gives_a_precision() {
        // 3 samples in 5 dimensions: the empirical covariance is singular
        let e = Embeddings::new(3, 5, (0..15).map(|v| (v * v % 7) as f32).collect()).unwrap();
        let cfg = FitConfig::new(ClusterSpec::Class, Metric::parse("mahalanobis").unwrap());
        let fitted = fit_model(&e, Some(&[0, 0, 0]), &cfg).unwrap();
        assert_eq!(fitted.model.whitening.len(), 1);
        let per = FitConfig::new(
            ClusterSpec::Class,
            Metric::parse("mahalanobis-per-cluster").unwrap(),
        );
        let fitted = fit_model(&e, Some(&[0, 1, 1]), &per).unwrap();
        assert_eq!(fitted.model.whitening.len(), 2);
    }
}
