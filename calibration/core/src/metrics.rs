//! Threshold-free OOD metrics, with the field's conventions written down.
//!
//! Inputs are scores where higher means more out-of-distribution.
//! - AUROC: probability that an OOD sample scores above an ID sample, ties counting one
//!   half. It is the same whichever class is called positive.
//! - AUPR-In: average precision with **ID as the positive class**, ranked by `-score`.
//! - AUPR-Out: average precision with **OOD as the positive class**, ranked by `score`.
//!   Average precision is `sum_n (R_n - R_{n-1}) P_n` over distinct thresholds, exactly as
//!   `sklearn.metrics.average_precision_score` (no interpolation).
//! - FPR@95TPR: **ID is positive** (the TPR is the fraction of ID samples accepted); the
//!   fraction of OOD samples accepted at the first threshold, sweeping from low to high
//!   score, where at least 95% of ID samples are accepted.
//! - Detection error: `min_t 0.5 (1 - TPR(t)) + 0.5 FPR(t)`, same convention.
//! - ROC points: `(false-alarm rate on ID, detection rate on OOD)`, i.e. OOD positive.

use serde::{Deserialize, Serialize};

/// The summary metrics of one ID-versus-OOD comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    pub auroc: f64,
    pub aupr_in: f64,
    pub aupr_out: f64,
    pub fpr_at_95_tpr: f64,
    pub detection_error: f64,
}

/// Distinct-threshold sweep from the most-OOD score down, with cumulative counts.
/// Each step: (threshold, OOD samples with score >= t, ID samples with score >= t).
fn sweep_desc(id: &[f64], ood: &[f64]) -> Vec<(f64, usize, usize)> {
    let mut all: Vec<(f64, bool)> = id
        .iter()
        .map(|&s| (s, false))
        .chain(ood.iter().map(|&s| (s, true)))
        .collect();
    all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut out = Vec::new();
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        let t = all[i].0;
        while i < all.len() && all[i].0 == t {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((t, tp, fp));
    }
    out
}

/// AUROC with ties counted one half (Mann-Whitney U / (n_id n_ood)).
pub fn auroc(id: &[f64], ood: &[f64]) -> f64 {
    let (n_id, n_ood) = (id.len() as f64, ood.len() as f64);
    if id.is_empty() || ood.is_empty() {
        return f64::NAN;
    }
    let mut area = 0.0;
    let (mut prev_tp, mut prev_fp) = (0usize, 0usize);
    for (_, tp, fp) in sweep_desc(id, ood) {
        // trapezoid over the step: (fp - prev_fp) ID samples tied with the new OOD samples
        area += (fp - prev_fp) as f64 * (prev_tp + tp) as f64 / 2.0;
        prev_tp = tp;
        prev_fp = fp;
    }
    area / (n_id * n_ood)
}

/// Average precision of `positives` against `negatives`, higher score = predicted positive.
pub fn average_precision(positives: &[f64], negatives: &[f64]) -> f64 {
    if positives.is_empty() {
        return f64::NAN;
    }
    let n_pos = positives.len() as f64;
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for (_, tp, fp) in sweep_desc(negatives, positives) {
        let recall = tp as f64 / n_pos;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    ap
}

/// `(id_accepted_fraction, ood_accepted_fraction)` at each distinct threshold, sweeping
/// from the lowest score up (ID positive: accepted means score <= t).
fn acceptance_curve(id: &[f64], ood: &[f64]) -> Vec<(f64, f64)> {
    let neg_id: Vec<f64> = id.iter().map(|v| -v).collect();
    let neg_ood: Vec<f64> = ood.iter().map(|v| -v).collect();
    let (n_id, n_ood) = (id.len() as f64, ood.len() as f64);
    // with negated scores, "score >= t" in the sweep is "original score <= -t"
    sweep_desc(&neg_ood, &neg_id)
        .into_iter()
        .map(|(_, id_acc, ood_acc)| (id_acc as f64 / n_id, ood_acc as f64 / n_ood))
        .collect()
}

/// FPR at the first threshold where at least `tpr` of ID samples are accepted.
pub fn fpr_at_tpr(id: &[f64], ood: &[f64], tpr: f64) -> f64 {
    if id.is_empty() || ood.is_empty() {
        return f64::NAN;
    }
    acceptance_curve(id, ood)
        .into_iter()
        .find(|&(t, _)| t >= tpr - 1e-12)
        .map(|(_, f)| f)
        .unwrap_or(1.0)
}

/// Minimum over thresholds of `0.5 (1 - TPR) + 0.5 FPR` (ID positive), including "accept nothing".
pub fn detection_error(id: &[f64], ood: &[f64]) -> f64 {
    if id.is_empty() || ood.is_empty() {
        return f64::NAN;
    }
    acceptance_curve(id, ood)
        .into_iter()
        .map(|(t, f)| 0.5 * (1.0 - t) + 0.5 * f)
        .fold(0.5, f64::min)
}

/// ROC points `(ID false-alarm rate, OOD detection rate)` from (0,0) to (1,1).
pub fn roc_points(id: &[f64], ood: &[f64]) -> Vec<(f64, f64)> {
    let (n_id, n_ood) = (id.len().max(1) as f64, ood.len().max(1) as f64);
    std::iter::once((0.0, 0.0))
        .chain(
            sweep_desc(id, ood)
                .into_iter()
                .map(|(_, tp, fp)| (fp as f64 / n_id, tp as f64 / n_ood)),
        )
        .collect()
}

/// All summary metrics at once.
pub fn ood_metrics(id: &[f64], ood: &[f64]) -> OodMetrics {
    let neg = |v: &[f64]| v.iter().map(|x| -x).collect::<Vec<_>>();
    OodMetrics {
        auroc: auroc(id, ood),
        aupr_in: average_precision(&neg(id), &neg(ood)),
        aupr_out: average_precision(ood, id),
        fpr_at_95_tpr: fpr_at_tpr(id, ood, 0.95),
        detection_error: detection_error(id, ood),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_cases() {
        assert_eq!(auroc(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        // ID {0.1, 0.4, 0.35, 0.8} vs OOD: the sklearn docs' example shape
        let a = auroc(&[0.1, 0.4], &[0.35, 0.8]);
        assert!((a - 0.75).abs() < 1e-12);
        // sklearn average_precision_score([0,0,1,1], [0.1,0.4,0.35,0.8]) = 0.8333...
        let ap = average_precision(&[0.35, 0.8], &[0.1, 0.4]);
        assert!((ap - 0.833_333_333_333_333_4).abs() < 1e-12);
        // perfect separation: FPR@95 = 0, detection error 0
        assert_eq!(fpr_at_tpr(&[0.0, 1.0], &[2.0, 3.0], 0.95), 0.0);
        assert_eq!(detection_error(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
        // identical distributions: all OOD accepted once all ID are
        assert_eq!(fpr_at_tpr(&[1.0, 2.0], &[1.0, 2.0], 0.95), 1.0);
        let roc = roc_points(&[0.0], &[1.0]);
        assert_eq!(roc, vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]);
    }
}
