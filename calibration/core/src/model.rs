//! The fitted clustering model and its scorer: the one implementation of "how far is this
//! embedding from the in-distribution clusters" that calibration and the edge both run.
//!
//! Score convention: higher means more out-of-distribution. Each score comes with the
//! nearest cluster. Definitions (x is the embedding, after optional L2 normalisation):
//! - Euclidean: `min_j ||x - c_j||`
//! - cosine: `min_j 1 - cos(x, c_j)` (a zero vector has cosine 0 to everything)
//! - Mahalanobis: `min_j sqrt((x - c_j)^T P (x - c_j))`, with `P` the tied or per-cluster precision
//! - Mahalanobis++ (Mueller & Hein 2025): tied Mahalanobis on L2-normalised embeddings, so
//!   that the feature norm, which varies wildly between inputs, cannot dominate the distance.
//!   `mahalanobis++:R` keeps the shrunk covariance's R leading eigenvectors and replaces the
//!   other eigenvalues by their mean (a probabilistic-PCA precision): a `d x R` basis
//!   instead of the `d x d` factor, so a smaller artifact and a cheaper score
//! - relative Mahalanobis (Ren et al. 2021): `min_j (x - c_j)^T P (x - c_j) - (x - m)^T P_0 (x - m)`,
//!   squared distances with a background Gaussian `(m, P_0)` fitted on all ID data taken
//!   away, so directions every ID class varies along do not count (aimed at near-OOD); it
//!   can be negative
//! - k-NN (Sun et al. 2022): the Euclidean distance from `x/||x||` to its k-th nearest
//!   neighbour among the L2-normalised training embeddings; the nearest cluster is the
//!   cluster of the first neighbour.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embeddings::{normalize_in_place, Embeddings};
use crate::error::{Error, Result};
use crate::linalg::{
    dist2, dot64, dot8_f32, dot_error_bound, dots, matmul, matmul_lower, norm2,
    to_distances_argmin, BLOCK_ROWS,
};
use crate::matrix::{LowerF32, MatrixF32, MatrixF64};

/// Which covariance Mahalanobis uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Covariance {
    /// One covariance shared by all clusters (Lee et al. 2018).
    Tied,
    /// Each cluster its own covariance.
    PerCluster,
}

/// How the covariance is shrunk toward a scaled identity before inversion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shrinkage {
    /// Ledoit-Wolf's estimate of the optimal shrinkage (as `sklearn.covariance.LedoitWolf`).
    LedoitWolf,
    /// A fixed shrinkage in `[0, 1]`.
    Fixed(f64),
}

/// The distance from an embedding to the in-distribution clusters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Metric {
    Euclidean,
    Cosine,
    Mahalanobis {
        covariance: Covariance,
        shrinkage: Shrinkage,
    },
    /// Tied Mahalanobis on L2-normalised embeddings; the model is always normalised.
    MahalanobisPlusPlus {
        shrinkage: Shrinkage,
        /// Leading eigenvectors kept (the rest of the spectrum flattened to its mean);
        /// `None`: the full precision.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rank: Option<usize>,
    },
    /// Squared tied Mahalanobis minus the squared distance to a background Gaussian.
    RelativeMahalanobis {
        shrinkage: Shrinkage,
    },
    Knn {
        k: usize,
    },
}

const METRIC_NAMES: &str = "euclidean, cosine, mahalanobis, mahalanobis-per-cluster, \
                            mahalanobis++, mahalanobis++:R, relative-mahalanobis or knn:K";

impl Metric {
    /// Parses one of the names in [`Metric::name`].
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::param("metric", format!("{text:?} (expected {METRIC_NAMES})"));
        Ok(match text {
            "euclidean" => Metric::Euclidean,
            "cosine" => Metric::Cosine,
            "mahalanobis" | "mahalanobis-tied" => Metric::Mahalanobis {
                covariance: Covariance::Tied,
                shrinkage: Shrinkage::LedoitWolf,
            },
            "mahalanobis-per-cluster" => Metric::Mahalanobis {
                covariance: Covariance::PerCluster,
                shrinkage: Shrinkage::LedoitWolf,
            },
            "mahalanobis++" => Metric::MahalanobisPlusPlus {
                shrinkage: Shrinkage::LedoitWolf,
                rank: None,
            },
            "relative-mahalanobis" => Metric::RelativeMahalanobis {
                shrinkage: Shrinkage::LedoitWolf,
            },
            _ if text.starts_with("mahalanobis++:") => {
                let rank = text["mahalanobis++:".len()..]
                    .parse::<usize>()
                    .ok()
                    .filter(|&r| r > 0)
                    .ok_or_else(bad)?;
                Metric::MahalanobisPlusPlus {
                    shrinkage: Shrinkage::LedoitWolf,
                    rank: Some(rank),
                }
            }
            _ => {
                let k = text
                    .strip_prefix("knn:")
                    .and_then(|k| k.parse::<usize>().ok())
                    .filter(|&k| k > 0)
                    .ok_or_else(bad)?;
                Metric::Knn { k }
            }
        })
    }

    /// The short name used in tables and file names.
    pub fn name(&self) -> String {
        match self {
            Metric::Euclidean => "euclidean".into(),
            Metric::Cosine => "cosine".into(),
            Metric::Mahalanobis {
                covariance: Covariance::Tied,
                ..
            } => "mahalanobis".into(),
            Metric::Mahalanobis {
                covariance: Covariance::PerCluster,
                ..
            } => "mahalanobis-per-cluster".into(),
            Metric::MahalanobisPlusPlus { rank: None, .. } => "mahalanobis++".into(),
            Metric::MahalanobisPlusPlus { rank: Some(r), .. } => format!("mahalanobis++:{r}"),
            Metric::RelativeMahalanobis { .. } => "relative-mahalanobis".into(),
            Metric::Knn { k } => format!("knn:{k}"),
        }
    }

    /// True when the metric is defined on L2-normalised embeddings whatever `normalize` says.
    pub fn needs_unit_norm(&self) -> bool {
        matches!(self, Metric::MahalanobisPlusPlus { .. })
    }

    /// The covariance and shrinkage of the metrics that need full precision matrices.
    pub fn precision(&self) -> Option<(Covariance, Shrinkage)> {
        match *self {
            Metric::Mahalanobis {
                covariance,
                shrinkage,
            } => Some((covariance, shrinkage)),
            Metric::MahalanobisPlusPlus {
                shrinkage,
                rank: None,
            }
            | Metric::RelativeMahalanobis { shrinkage } => Some((Covariance::Tied, shrinkage)),
            _ => None,
        }
    }

    /// The shrinkage and rank of the metrics scored through a low-rank precision.
    pub fn subspace(&self) -> Option<(Shrinkage, usize)> {
        match *self {
            Metric::MahalanobisPlusPlus {
                shrinkage,
                rank: Some(r),
            } => Some((shrinkage, r)),
            _ => None,
        }
    }
}

/// The Gaussian fitted on all in-distribution embeddings that relative Mahalanobis subtracts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Background {
    /// Mean of all training embeddings (after normalisation when the model normalises).
    pub mean: Vec<f32>,
    /// Lower Cholesky factor `L` of the shrunk precision `P = L L^T` around `mean`, in the
    /// `f32` the scorer multiplies by (since schema 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitening: Option<LowerF32>,
    /// The precision itself, as files before schema 6 stored it; read, turned into
    /// `whitening` by [`Model::upgrade`], never written.
    #[serde(default, skip_serializing)]
    pub precision: Option<MatrixF64>,
}

/// The stored neighbours of the k-NN score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnnBank {
    /// L2-normalised training embeddings.
    pub vectors: MatrixF32,
    /// The cluster each bank row belongs to.
    pub cluster: Vec<usize>,
}

/// The low-rank precision of `mahalanobis++:R` (schema 10): the shrunk covariance's `R`
/// leading eigenvectors `v_i` with their eigenvalues `l_i`, and one over the mean `s^2` of
/// the other eigenvalues, so `P = sum v_i v_i^T / l_i + (I - V V^T) / s^2`. The scorer
/// compares `[V^T x / sqrt(l), (x - V V^T x) / s]`, where the distance is Euclidean, with the
/// centres' images: `2 R d` multiplications a frame where the full factor takes `d^2 / 2`,
/// and `R d` numbers stored instead of `d^2 / 2` (for `d = 1280`, `R = 128`: 164 k, not 820 k).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subspace {
    /// `d x R`, row-major: column `i` is the unit eigenvector `v_i`.
    pub basis: MatrixF32,
    /// The `R` leading eigenvalues `l_i`, largest first.
    pub variances: Vec<f64>,
    /// `1 / s^2`, the precision along every direction outside the leading ones.
    pub residual_precision: f64,
}

/// A fitted model: clusters plus everything the metric needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub dim: usize,
    /// Inputs are L2-normalised before anything else.
    pub normalize: bool,
    pub metric: Metric,
    /// `k x d` centroids.
    pub centroids: MatrixF32,
    /// The class each cluster summarises, when labels were given.
    pub cluster_class: Vec<Option<usize>>,
    /// Mahalanobis precision matrices `P = L L^T` as their lower Cholesky factors `L`, in
    /// the `f32` the scorer multiplies by: one when tied, one per cluster otherwise. Stored
    /// since schema 6 (a quarter of the `f64` precision's bytes, and no factorisation at
    /// load); the scores are the same as from the precision they came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whitening: Vec<LowerF32>,
    /// The precision matrices themselves, as files before schema 6 stored them; read,
    /// turned into `whitening` by [`Model::upgrade`], never written.
    #[serde(default, skip_serializing)]
    pub precision: Vec<MatrixF64>,
    /// The low-rank precision of `mahalanobis++:R`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subspace: Option<Subspace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_bank: Option<KnnBank>,
    /// The background Gaussian of relative Mahalanobis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Background>,
}

impl Model {
    pub fn clusters(&self) -> usize {
        self.centroids.rows
    }

    /// Replaces precision matrices (fitted, or read from a file before schema 6) by their
    /// whitening factors, checking each (shape, finite, symmetric, positive definite).
    pub fn upgrade(&mut self) -> Result<()> {
        let d = self.dim;
        if !self.precision.is_empty() {
            self.whitening = self
                .precision
                .iter()
                .enumerate()
                .map(|(i, p)| whitening_of(p, d, &format!("precision matrix {i}")))
                .collect::<Result<_>>()?;
            self.precision.clear();
        }
        if let Some(bg) = &mut self.background {
            if let Some(p) = bg.precision.take() {
                bg.whitening = Some(whitening_of(&p, d, "background precision")?);
            }
        }
        Ok(())
    }
}

/// The `f32` lower Cholesky factor of a checked precision matrix.
fn whitening_of(p: &MatrixF64, d: usize, what: &str) -> Result<LowerF32> {
    let l = precision_factor(p, d, what)?;
    Ok(LowerF32 {
        n: d,
        data: l.iter().map(|&v| v as f32).collect(),
    })
}

/// Checks a stored whitening factor: its size, finite values, and a positive diagonal
/// (which makes `L L^T` positive definite).
fn checked_whitening<'a>(l: &'a LowerF32, d: usize, what: &str) -> Result<&'a [f32]> {
    if l.n != d || l.data.len() != d * d {
        return Err(Error::DimensionMismatch {
            what: what.into(),
            expected: d,
            found: l.n,
        });
    }
    if l.data.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidArtifact(format!(
            "{what} holds NaN or infinite values"
        )));
    }
    if (0..d).any(|i| l.data[i * d + i] <= 0.0) {
        return Err(Error::NotPositiveDefinite { what: what.into() });
    }
    // the per-frame product skips what is above the diagonal: it must be zero
    if (0..d).any(|i| l.data[i * d + i + 1..(i + 1) * d].iter().any(|&v| v != 0.0)) {
        return Err(Error::InvalidArtifact(format!(
            "{what} is not lower-triangular"
        )));
    }
    Ok(&l.data)
}

/// Checks a stored low-rank precision against the metric's rank and the dimension, and
/// returns `V`, `1 / sqrt(l_i)` and `1 / s`.
fn checked_subspace(sub: Option<&Subspace>, d: usize, r: usize) -> Result<(&[f32], Vec<f32>, f32)> {
    let sub = sub
        .ok_or_else(|| Error::InvalidArtifact(format!("mahalanobis++:{r} without its subspace")))?;
    let b = &sub.basis;
    if b.rows != d || b.cols != r || b.data.len() != d * r || sub.variances.len() != r {
        return Err(Error::DimensionMismatch {
            what: format!(
                "subspace of mahalanobis++:{r} ({} x {} basis, {} variances)",
                b.rows,
                b.cols,
                sub.variances.len()
            ),
            expected: d,
            found: if b.rows != d { b.rows } else { b.cols },
        });
    }
    if !b.all_finite() {
        return Err(Error::InvalidArtifact(
            "subspace basis holds NaN or infinite values".into(),
        ));
    }
    let a = sub.residual_precision;
    if let Some(v) = sub
        .variances
        .iter()
        .chain([&a])
        .find(|v| !(v.is_finite() && **v > 0.0))
    {
        return Err(Error::NotPositiveDefinite {
            what: format!("subspace of mahalanobis++:{r} (a variance or precision of {v})"),
        });
    }
    let inv_sd = sub
        .variances
        .iter()
        .map(|l| (1.0 / l.sqrt()) as f32)
        .collect();
    Ok((&b.data, inv_sd, a.sqrt() as f32))
}

/// `[V^T x / sqrt(l), (x - V V^T x) / s]`: the image of `x` in which the low-rank
/// Mahalanobis distance is Euclidean, into `out` (`R + d` long). The residual's `d` dot
/// products of length `R` run with eight accumulators, compiled for AVX2 too: they are
/// half the per-frame work of this metric.
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn project(x: &[f32], basis: &[f32], inv_sd: &[f32], scale: f32, out: &mut [f32]) {
    let (d, r) = (x.len(), inv_sd.len());
    let (p, rest) = out.split_at_mut(r);
    matmul(x, 1, basis, d, r, p);
    for ((o, &xv), v) in rest[..d].iter_mut().zip(x).zip(basis.chunks_exact(r)) {
        *o = scale * (xv - dot8_f32(v, p));
    }
    for (pv, &w) in p.iter_mut().zip(inv_sd) {
        *pv *= w;
    }
}

/// One embedding's score and the cluster it is nearest to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub score: f64,
    pub nearest: usize,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Nearest centre by squared Euclidean distance in a (possibly transformed) space.
    Nearest { cosine: bool },
    /// Tied Mahalanobis squared, minus the squared distance to the background Gaussian:
    /// `bg_transform` is its Cholesky factor and `bg_center` its mean, transformed.
    Relative {
        bg_transform: Vec<f32>,
        bg_center: Vec<f32>,
    },
    /// Per-cluster Mahalanobis: `transforms` holds `k` lower Cholesky factors.
    PerCluster,
    Knn {
        k: usize,
        bank: Vec<f32>,
        bank_norm2: Vec<f64>,
        bank_cluster: Vec<usize>,
    },
}

/// A model prepared for fast scoring (transformed centres, Cholesky factors).
#[derive(Debug, Clone)]
pub struct Scorer {
    dim: usize,
    /// Length `e` of a vector in the scoring space: `d`, or `R + d` with a subspace.
    space: usize,
    normalize: bool,
    kind: Kind,
    /// Centres in the scoring space, `k x e`.
    centers: Vec<f32>,
    center_norm2: Vec<f64>,
    center_norm2_f32: Vec<f32>,
    center_norm_max: f64,
    k: usize,
    /// Row-major `d x d` factors `L` with `P = L L^T`, so that `(x-c)^T P (x-c) = ||(x-c)^T L||^2`.
    transforms: Vec<f32>,
    /// `mahalanobis++:R`: `V` (`d x R`) of [`Subspace`], `1 / sqrt(l_i)` and `1 / s`.
    subspace: Option<(Vec<f32>, Vec<f32>, f32)>,
}

/// Preallocated buffers for scoring, so that the per-frame path never allocates.
#[derive(Debug, Clone)]
pub struct Scratch {
    rows: usize,
    x: Vec<f32>,
    z: Vec<f32>,
    w: Vec<f32>,
    dots: Vec<f32>,
    candidates: Vec<(usize, f64)>,
}

/// Lower Cholesky factor of a symmetric positive definite matrix, or `None`.
pub(crate) fn cholesky_lower(p: &MatrixF64) -> Option<Vec<f64>> {
    let n = p.rows;
    let m = nalgebra::DMatrix::from_row_slice(n, n, &p.data);
    let chol = nalgebra::linalg::Cholesky::new(m)?;
    let l = chol.l();
    let mut out = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            out[i * n + j] = l[(i, j)];
        }
    }
    out.iter().all(|v| v.is_finite()).then_some(out)
}

/// Checks a stored precision matrix (shape, finite, symmetric, positive definite) and
/// returns its lower Cholesky factor.
fn precision_factor(p: &MatrixF64, d: usize, what: &str) -> Result<Vec<f64>> {
    if p.rows != d || p.cols != d {
        return Err(Error::DimensionMismatch {
            what: what.into(),
            expected: d,
            found: if p.rows != d { p.rows } else { p.cols },
        });
    }
    if !p.all_finite() {
        return Err(Error::InvalidArtifact(format!(
            "{what} holds NaN or infinite values"
        )));
    }
    let sym = (0..d).all(|r| {
        (0..r).all(|c| {
            let (a, b) = (p.data[r * d + c], p.data[c * d + r]);
            (a - b).abs() <= 1e-9 * (a.abs() + b.abs()).max(1e-300)
        })
    });
    cholesky_lower(p)
        .filter(|_| sym)
        .ok_or_else(|| Error::NotPositiveDefinite { what: what.into() })
}

impl Scorer {
    /// Validates the model and precomputes what scoring needs.
    pub fn new(model: &Model) -> Result<Self> {
        // a model holding precision matrices (built in memory, not read) is factored first
        let upgraded;
        let model = if !model.precision.is_empty()
            || model
                .background
                .as_ref()
                .is_some_and(|b| b.precision.is_some())
        {
            let mut m = model.clone();
            m.upgrade()?;
            upgraded = m;
            &upgraded
        } else {
            model
        };
        let d = model.dim;
        let k = model.centroids.rows;
        if d == 0 {
            return Err(Error::InvalidArtifact("embedding dimension is 0".into()));
        }
        if k == 0 {
            return Err(Error::InvalidArtifact("no clusters".into()));
        }
        if model.centroids.cols != d {
            return Err(Error::DimensionMismatch {
                what: "centroids".into(),
                expected: d,
                found: model.centroids.cols,
            });
        }
        if !model.centroids.all_finite() {
            return Err(Error::InvalidArtifact(
                "centroids hold NaN or infinite values".into(),
            ));
        }
        if model.cluster_class.len() != k {
            return Err(Error::InvalidArtifact(format!(
                "{} cluster classes for {k} clusters",
                model.cluster_class.len()
            )));
        }
        let mut centers = model.centroids.data.clone();
        // Normalised models score against centres on the sphere; Mahalanobis++ keeps the
        // class means of the normalised embeddings, as its covariance was fitted around them.
        if model.normalize && !model.metric.needs_unit_norm() {
            centers.chunks_exact_mut(d).for_each(normalize_in_place);
        }
        let mut transforms = Vec::new();
        let mut subspace = None;
        let kind = match model.metric {
            Metric::MahalanobisPlusPlus { rank: Some(r), .. } => {
                if !model.normalize {
                    return Err(Error::InvalidArtifact(format!(
                        "{} needs a normalised model",
                        model.metric.name()
                    )));
                }
                let (basis, inv_sd, scale) = checked_subspace(model.subspace.as_ref(), d, r)?;
                let e = r + d;
                let mut images = vec![0f32; k * e];
                for (c, image) in centers.chunks_exact(d).zip(images.chunks_exact_mut(e)) {
                    project(c, basis, &inv_sd, scale, image);
                }
                centers = images;
                subspace = Some((basis.to_vec(), inv_sd, scale));
                Kind::Nearest { cosine: false }
            }
            Metric::Euclidean => Kind::Nearest { cosine: false },
            Metric::Cosine => {
                centers.chunks_exact_mut(d).for_each(normalize_in_place);
                Kind::Nearest { cosine: true }
            }
            Metric::Mahalanobis { .. }
            | Metric::MahalanobisPlusPlus { .. }
            | Metric::RelativeMahalanobis { .. } => {
                let covariance = model
                    .metric
                    .precision()
                    .map_or(Covariance::Tied, |(c, _)| c);
                let want = match covariance {
                    Covariance::Tied => 1,
                    Covariance::PerCluster => k,
                };
                if model.whitening.len() != want {
                    return Err(Error::InvalidArtifact(format!(
                        "{} precision (whitening) matrices, expected {want}",
                        model.whitening.len()
                    )));
                }
                if model.metric.needs_unit_norm() && !model.normalize {
                    return Err(Error::InvalidArtifact(format!(
                        "{} needs a normalised model",
                        model.metric.name()
                    )));
                }
                for (i, l) in model.whitening.iter().enumerate() {
                    transforms.extend_from_slice(checked_whitening(
                        l,
                        d,
                        &format!("whitening {i}"),
                    )?);
                }
                let mut transformed = vec![0f32; k * d];
                match (covariance, &model.metric) {
                    (Covariance::PerCluster, _) => Kind::PerCluster,
                    (Covariance::Tied, Metric::RelativeMahalanobis { .. }) => {
                        let bg = model.background.as_ref().ok_or_else(|| {
                            Error::InvalidArtifact(
                                "relative Mahalanobis without a background Gaussian".into(),
                            )
                        })?;
                        if bg.mean.len() != d {
                            return Err(Error::DimensionMismatch {
                                what: "background mean".into(),
                                expected: d,
                                found: bg.mean.len(),
                            });
                        }
                        if bg.mean.iter().any(|v| !v.is_finite()) {
                            return Err(Error::InvalidArtifact(
                                "background mean holds NaN or infinite values".into(),
                            ));
                        }
                        let l0 = bg.whitening.as_ref().ok_or_else(|| {
                            Error::InvalidArtifact(
                                "relative Mahalanobis without a background whitening".into(),
                            )
                        })?;
                        let l0 = checked_whitening(l0, d, "background whitening")?.to_vec();
                        // the mean as fitted (of normalised embeddings when the model
                        // normalises), since the precision was estimated around it
                        let mut bg_center = vec![0f32; d];
                        matmul(&bg.mean, 1, &l0, d, d, &mut bg_center);
                        matmul(&centers, k, &transforms, d, d, &mut transformed);
                        centers = transformed;
                        Kind::Relative {
                            bg_transform: l0,
                            bg_center,
                        }
                    }
                    (Covariance::Tied, _) => {
                        matmul(&centers, k, &transforms, d, d, &mut transformed);
                        centers = transformed;
                        Kind::Nearest { cosine: false }
                    }
                }
            }
            Metric::Knn { k: kk } => {
                let bank = model.knn_bank.as_ref().ok_or_else(|| {
                    Error::InvalidArtifact("k-NN metric without a neighbour bank".into())
                })?;
                if bank.vectors.cols != d {
                    return Err(Error::DimensionMismatch {
                        what: "k-NN bank".into(),
                        expected: d,
                        found: bank.vectors.cols,
                    });
                }
                if bank.vectors.rows < kk || kk == 0 {
                    return Err(Error::InvalidArtifact(format!(
                        "k-NN with k={kk} needs at least k bank rows, has {}",
                        bank.vectors.rows
                    )));
                }
                if bank.cluster.len() != bank.vectors.rows || bank.cluster.iter().any(|&c| c >= k) {
                    return Err(Error::InvalidArtifact(
                        "k-NN bank cluster ids do not match the bank or the clusters".into(),
                    ));
                }
                if !bank.vectors.all_finite() {
                    return Err(Error::InvalidArtifact(
                        "k-NN bank holds NaN or infinite values".into(),
                    ));
                }
                let mut vectors = bank.vectors.data.clone();
                vectors.chunks_exact_mut(d).for_each(normalize_in_place);
                Kind::Knn {
                    k: kk,
                    bank_norm2: vectors.chunks_exact(d).map(norm2).collect(),
                    bank: vectors,
                    bank_cluster: bank.cluster.clone(),
                }
            }
        };
        let space = subspace.as_ref().map_or(d, |(_, s, _)| s.len() + d);
        let center_norm2: Vec<f64> = centers.chunks_exact(space).map(norm2).collect();
        let center_norm_max = center_norm2.iter().cloned().fold(0.0, f64::max).sqrt();
        Ok(Self {
            dim: d,
            space,
            normalize: model.normalize,
            kind,
            centers,
            center_norm2_f32: center_norm2.iter().map(|&v| v as f32).collect(),
            center_norm2,
            center_norm_max,
            k,
            transforms,
            subspace,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn clusters(&self) -> usize {
        self.k
    }

    /// Buffers for scoring up to `rows` embeddings at once.
    pub fn scratch(&self, rows: usize) -> Scratch {
        let d = self.dim;
        let width = match &self.kind {
            Kind::Knn { bank_cluster, .. } => bank_cluster.len(),
            _ => self.k,
        };
        Scratch {
            rows,
            x: vec![0.0; rows * d],
            z: vec![0.0; rows * self.space],
            w: if matches!(self.kind, Kind::PerCluster | Kind::Relative { .. }) {
                vec![0.0; rows * d]
            } else {
                Vec::new()
            },
            dots: vec![0.0; rows * width],
            candidates: Vec::with_capacity(width),
        }
    }

    /// Scores one embedding without allocating (given a scratch from [`Scorer::scratch`]).
    pub fn score_one(&self, x: &[f32], scratch: &mut Scratch) -> Result<Score> {
        if x.len() != self.dim {
            return Err(Error::DimensionMismatch {
                what: "embedding".into(),
                expected: self.dim,
                found: x.len(),
            });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "embedding".into(),
                row: 0,
            });
        }
        let width = match &self.kind {
            Kind::Knn { bank_cluster, .. } => bank_cluster.len(),
            _ => self.k,
        };
        let per_cluster = matches!(self.kind, Kind::PerCluster | Kind::Relative { .. });
        if scratch.rows == 0
            || scratch.x.len() < self.dim
            || scratch.z.len() < self.space
            || scratch.dots.len() < width
            || (per_cluster && scratch.w.len() < self.dim)
        {
            return Err(Error::param(
                "scratch",
                "made for another scorer or for zero rows; use Scorer::scratch",
            ));
        }
        let mut out = [Score {
            score: 0.0,
            nearest: 0,
        }];
        self.score_block(x, 1, scratch, &mut out);
        Ok(out[0])
    }

    /// Scores many embeddings in parallel; identical to calling [`Scorer::score_one`] on each.
    pub fn score_batch(&self, data: &Embeddings) -> Result<Vec<Score>> {
        if data.dim() != self.dim {
            return Err(Error::DimensionMismatch {
                what: "embeddings".into(),
                expected: self.dim,
                found: data.dim(),
            });
        }
        let d = self.dim;
        let mut out = vec![
            Score {
                score: 0.0,
                nearest: 0
            };
            data.rows()
        ];
        out.par_chunks_mut(BLOCK_ROWS)
            .zip(data.as_slice().par_chunks(BLOCK_ROWS * d))
            .for_each_init(
                || self.scratch(BLOCK_ROWS),
                |scratch, (o, rows)| self.score_block(rows, o.len(), scratch, o),
            );
        Ok(out)
    }

    fn score_block(&self, rows: &[f32], m: usize, s: &mut Scratch, out: &mut [Score]) {
        let d = self.dim;
        let unit = match &self.kind {
            Kind::Nearest { cosine } => *cosine,
            Kind::Knn { .. } => true,
            Kind::PerCluster | Kind::Relative { .. } => false,
        };
        // Inputs are used in place unless they must be normalised first.
        let x: &[f32] = if self.normalize || unit {
            let x = &mut s.x[..m * d];
            x.copy_from_slice(&rows[..m * d]);
            x.chunks_exact_mut(d).for_each(normalize_in_place);
            &s.x[..m * d]
        } else {
            &rows[..m * d]
        };
        match &self.kind {
            Kind::Nearest { cosine } => {
                let target: &[f32] = if let Some((basis, inv_sd, scale)) = &self.subspace {
                    let e = self.space;
                    for (xi, zi) in x.chunks_exact(d).zip(s.z[..m * e].chunks_exact_mut(e)) {
                        project(xi, basis, inv_sd, *scale, zi);
                    }
                    &s.z[..m * e]
                } else if self.transforms.is_empty() {
                    x
                } else {
                    matmul_lower(x, m, &self.transforms, d, &mut s.z[..m * d]);
                    &s.z[..m * d]
                };
                self.nearest_centres(target, m, *cosine, &mut s.dots, &mut s.candidates, out);
            }
            Kind::Relative {
                bg_transform,
                bg_center,
            } => {
                matmul_lower(x, m, &self.transforms, d, &mut s.z[..m * d]);
                self.nearest_centres(&s.z[..m * d], m, false, &mut s.dots, &mut s.candidates, out);
                matmul_lower(x, m, bg_transform, d, &mut s.w[..m * d]);
                for (o, w) in out[..m].iter_mut().zip(s.w.chunks_exact(d)) {
                    o.score = o.score * o.score - dist2(w, bg_center);
                }
            }
            Kind::PerCluster => {
                for o in out[..m].iter_mut() {
                    *o = Score {
                        score: f64::INFINITY,
                        nearest: 0,
                    };
                }
                for j in 0..self.k {
                    let c = &self.centers[j * d..(j + 1) * d];
                    for (zi, xi) in s.z[..m * d].chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        for ((zv, &xv), &cv) in zi.iter_mut().zip(xi).zip(c) {
                            *zv = xv - cv;
                        }
                    }
                    let t = &self.transforms[j * d * d..(j + 1) * d * d];
                    matmul_lower(&s.z[..m * d], m, t, d, &mut s.w[..m * d]);
                    for (o, w) in out[..m].iter_mut().zip(s.w.chunks_exact(d)) {
                        let v = norm2(w);
                        if v < o.score {
                            o.score = v;
                            o.nearest = j;
                        }
                    }
                }
                for o in out[..m].iter_mut() {
                    o.score = o.score.max(0.0).sqrt();
                }
            }
            Kind::Knn {
                k,
                bank,
                bank_norm2,
                bank_cluster,
            } => {
                let b = bank_cluster.len();
                let sims = &mut s.dots[..m * b];
                dots(x, m, bank, b, d, sims);
                let bound = dot_error_bound(d);
                for i in 0..m {
                    let xi = &x[i * d..(i + 1) * d];
                    let qn = norm2(xi);
                    let row = &sims[i * b..(i + 1) * b];
                    // approximate squared distances; the k-th smallest, with a safety margin
                    s.candidates.clear();
                    s.candidates.extend(
                        row.iter()
                            .enumerate()
                            .map(|(j, &dot)| (j, qn + bank_norm2[j] - 2.0 * dot as f64)),
                    );
                    let kth = {
                        let (_, v, _) = s
                            .candidates
                            .select_nth_unstable_by(k - 1, |a, b| a.1.total_cmp(&b.1));
                        v.1
                    };
                    let margin = 4.0 * bound * qn.sqrt() + 1e-12;
                    s.candidates.clear();
                    for (j, &dot) in row.iter().enumerate() {
                        let approx = qn + bank_norm2[j] - 2.0 * dot as f64;
                        if approx <= kth + margin {
                            s.candidates.push((j, dist2(xi, &bank[j * d..(j + 1) * d])));
                        }
                    }
                    s.candidates
                        .sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                    out[i] = Score {
                        score: s.candidates[k - 1].1.max(0.0).sqrt(),
                        nearest: bank_cluster[s.candidates[0].0],
                    };
                }
            }
        }
    }

    /// Nearest centre by GEMM, then an exact f64 recomputation of every centre that could
    /// be the nearest within the GEMM's rounding, so results do not depend on batch size.
    fn nearest_centres(
        &self,
        target: &[f32],
        m: usize,
        cosine: bool,
        dots_buf: &mut [f32],
        candidates: &mut Vec<(usize, f64)>,
        out: &mut [Score],
    ) {
        let (d, k) = (self.space, self.k);
        let buf = &mut dots_buf[..m * k];
        dots(target, m, &self.centers, k, d, buf);
        let bound = dot_error_bound(d);
        for i in 0..m {
            let t = &target[i * d..(i + 1) * d];
            let qn = norm2(t);
            let row = &mut buf[i * k..(i + 1) * k];
            // approximate squared distances minus |t|^2, in f32
            let (_, best) = to_distances_argmin(row, &self.center_norm2_f32);
            let margin = 4.0 * bound * qn.sqrt() * self.center_norm_max
                + 8.0 * f32::EPSILON as f64 * (qn + self.center_norm_max * self.center_norm_max)
                + 1e-12;
            let limit = best as f64 + margin;
            candidates.clear();
            for (j, &approx) in row.iter().enumerate() {
                if approx as f64 <= limit {
                    let c = &self.centers[j * d..(j + 1) * d];
                    let exact = if cosine {
                        let denom = (qn * self.center_norm2[j]).sqrt();
                        let cos = if denom > 0.0 {
                            dot64(t, c) / denom
                        } else {
                            0.0
                        };
                        1.0 - cos
                    } else {
                        dist2(t, c)
                    };
                    candidates.push((j, exact));
                }
            }
            let (j, v) = candidates
                .iter()
                .copied()
                .fold((usize::MAX, f64::INFINITY), |acc, c| {
                    if c.1 < acc.1 {
                        c
                    } else {
                        acc
                    }
                });
            out[i] = Score {
                score: if cosine { v } else { v.max(0.0).sqrt() },
                nearest: j,
            };
        }
    }
}
