//! Turning scores into decisions: one global threshold, per-cluster thresholds, or
//! split-conformal p-values with a guaranteed in-distribution false-alarm bound.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Score;

/// How decisions are made from scores; the calibration target is part of it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ThresholdMode {
    /// OOD when the score exceeds the quantile that keeps `target_tpr` of ID calibration samples.
    Global { target_tpr: f64 },
    /// Each cluster's own quantile over the ID calibration samples nearest to it.
    PerCluster { target_tpr: f64 },
    /// OOD when the conformal p-value is at most `alpha`; P(false alarm | ID) <= alpha.
    Conformal { alpha: f64 },
}

impl ThresholdMode {
    /// The rule the command-line options select: conformal when `alpha` is given, else
    /// per-cluster or global at `target_tpr` (default 0.95).
    pub fn from_options(target_tpr: Option<f64>, alpha: Option<f64>, per_cluster: bool) -> Self {
        let target_tpr = target_tpr.unwrap_or(0.95);
        match (alpha, per_cluster) {
            (Some(alpha), _) => ThresholdMode::Conformal { alpha },
            (None, true) => ThresholdMode::PerCluster { target_tpr },
            (None, false) => ThresholdMode::Global { target_tpr },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ThresholdMode::Global { .. } => "global",
            ThresholdMode::PerCluster { .. } => "per-cluster",
            ThresholdMode::Conformal { .. } => "conformal",
        }
    }
}

/// Calibrated decision rule. Always carries the global threshold and the sorted
/// calibration scores, so p-values and any mode can be reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub mode: ThresholdMode,
    /// The global threshold at the target TPR (for conformal: the largest score still
    /// accepted at `alpha`).
    pub global: f64,
    /// Per-cluster thresholds (per-cluster mode only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_cluster: Vec<f64>,
    /// Clusters with too few calibration samples for their own quantile; they use `global`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_clusters: Vec<usize>,
    /// Calibration scores, ascending; the reference distribution of conformal p-values.
    pub calibration_scores: Vec<f64>,
}

/// The `ceil(q * n)`-th smallest value (1-based) of an ascending slice: the smallest `t`
/// with at least a fraction `q` of the values `<= t`.
fn upper_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64) - 1e-9).ceil().max(1.0) as usize;
    sorted[rank.min(n) - 1]
}

fn check_tpr(target_tpr: f64) -> Result<()> {
    if !(target_tpr > 0.0 && target_tpr <= 1.0) {
        return Err(Error::param(
            "target TPR",
            format!("{target_tpr} is not in (0, 1]"),
        ));
    }
    Ok(())
}

impl Thresholds {
    /// Calibrates from the scores of ID calibration samples (and their nearest clusters).
    pub fn fit(mode: ThresholdMode, calibration: &[Score], clusters: usize) -> Result<Self> {
        let n = calibration.len();
        if n == 0 {
            return Err(Error::Empty {
                what: "calibration set".into(),
            });
        }
        let mut sorted: Vec<f64> = calibration.iter().map(|s| s.score).collect();
        if sorted.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "calibration scores".into(),
                row: sorted.iter().position(|v| !v.is_finite()).unwrap_or(0),
            });
        }
        sorted.sort_unstable_by(f64::total_cmp);
        let mut out = Thresholds {
            mode,
            global: 0.0,
            per_cluster: Vec::new(),
            fallback_clusters: Vec::new(),
            calibration_scores: Vec::new(),
        };
        match mode {
            ThresholdMode::Global { target_tpr } => {
                check_tpr(target_tpr)?;
                out.global = upper_quantile(&sorted, target_tpr);
            }
            ThresholdMode::PerCluster { target_tpr } => {
                check_tpr(target_tpr)?;
                out.global = upper_quantile(&sorted, target_tpr);
                // A quantile at q needs about 1/(1-q) samples to be more than the maximum.
                let min_samples =
                    ((1.0 / (1.0 - target_tpr).max(1e-9)).ceil() as usize).clamp(1, 1000);
                let mut per: Vec<Vec<f64>> = vec![Vec::new(); clusters];
                for s in calibration {
                    if s.nearest < clusters {
                        per[s.nearest].push(s.score);
                    }
                }
                for (j, mut scores) in per.into_iter().enumerate() {
                    if scores.len() < min_samples {
                        out.fallback_clusters.push(j);
                        out.per_cluster.push(out.global);
                    } else {
                        scores.sort_unstable_by(f64::total_cmp);
                        out.per_cluster.push(upper_quantile(&scores, target_tpr));
                    }
                }
            }
            ThresholdMode::Conformal { alpha } => {
                let min = 1.0 / (n as f64 + 1.0);
                if !(alpha > 0.0 && alpha < 1.0) {
                    return Err(Error::param("alpha", format!("{alpha} is not in (0, 1)")));
                }
                if alpha < min {
                    return Err(Error::UnachievableAlpha { alpha, n, min });
                }
                // p(s) <= alpha  <=>  #{cal >= s} <= floor(alpha (n+1)) - 1 =: m.
                // Scores strictly above the (n - m)-th smallest are OOD.
                let m = ((alpha * (n as f64 + 1.0)) + 1e-9).floor() as usize - 1;
                out.global = sorted[n - 1 - m];
            }
        }
        out.calibration_scores = sorted;
        Ok(out)
    }

    /// Split-conformal p-value `(1 + #{calibration scores >= s}) / (n + 1)`.
    pub fn p_value(&self, score: f64) -> f64 {
        let n = self.calibration_scores.len();
        let below = self.calibration_scores.partition_point(|&c| c < score);
        (1.0 + (n - below) as f64) / (n as f64 + 1.0)
    }

    /// The threshold that applies to a score nearest to `cluster`.
    pub fn threshold_for(&self, cluster: usize) -> f64 {
        match self.mode {
            ThresholdMode::PerCluster { .. } => self
                .per_cluster
                .get(cluster)
                .copied()
                .unwrap_or(self.global),
            _ => self.global,
        }
    }

    /// True when the score is out-of-distribution under this rule. A NaN score is OOD.
    pub fn is_ood(&self, s: &Score) -> bool {
        if !s.score.is_finite() {
            return true;
        }
        match self.mode {
            ThresholdMode::Conformal { alpha } => self.p_value(s.score) <= alpha,
            _ => s.score > self.threshold_for(s.nearest),
        }
    }

    /// A score made comparable across clusters: the margin over the applicable threshold.
    pub fn margin(&self, s: &Score) -> f64 {
        s.score - self.threshold_for(s.nearest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(v: &[f64]) -> Vec<Score> {
        v.iter().map(|&score| Score { score, nearest: 0 }).collect()
    }

    #[test]
    fn global_threshold_keeps_the_target_fraction() {
        let cal = scores(&(1..=100).map(|v| v as f64).collect::<Vec<_>>());
        let t = Thresholds::fit(ThresholdMode::Global { target_tpr: 0.95 }, &cal, 1).unwrap();
        assert_eq!(t.global, 95.0);
        let kept = cal.iter().filter(|s| !t.is_ood(s)).count();
        assert_eq!(kept, 95);
    }

    #[test]
    fn conformal_p_values_and_refusal() {
        let cal = scores(&[1.0, 2.0, 3.0, 4.0]);
        let t = Thresholds::fit(ThresholdMode::Conformal { alpha: 0.4 }, &cal, 1).unwrap();
        assert_eq!(t.p_value(0.0), 1.0);
        assert_eq!(t.p_value(4.0), 2.0 / 5.0);
        assert_eq!(t.p_value(4.5), 1.0 / 5.0);
        // alpha 0.4 with n=4: p <= 0.4 iff score > 3
        assert_eq!(t.global, 3.0);
        assert!(t.is_ood(&Score {
            score: 3.5,
            nearest: 0
        }));
        assert!(!t.is_ood(&Score {
            score: 3.0,
            nearest: 0
        }));
        assert!(matches!(
            Thresholds::fit(ThresholdMode::Conformal { alpha: 0.1 }, &cal, 1),
            Err(Error::UnachievableAlpha { n: 4, .. })
        ));
        assert!(t.is_ood(&Score {
            score: f64::NAN,
            nearest: 0
        }));
    }

    #[test]
    fn per_cluster_falls_back_when_a_cluster_is_thin() {
        let mut cal = scores(&(0..40).map(|v| v as f64).collect::<Vec<_>>());
        cal.push(Score {
            score: 100.0,
            nearest: 1,
        });
        let t = Thresholds::fit(ThresholdMode::PerCluster { target_tpr: 0.95 }, &cal, 2).unwrap();
        assert_eq!(t.per_cluster[0], 37.0);
        assert_eq!(t.fallback_clusters, vec![1]);
        assert_eq!(t.per_cluster[1], t.global);
    }
}
