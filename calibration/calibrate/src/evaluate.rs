//! Applying and judging a calibration: scores per embedding (`score`), and AUROC, AUPR,
//! FPR@95TPR, detection error and detection rate per OOD set with the ID false-alarm rate
//! (`eval`, `eval-model`), optionally as a report with ROC curves and histograms.

use std::path::{Path, PathBuf};

use oodmon_calibration::io::write_atomic;
use oodmon_calibration::{
    npy, ood_metrics, CalibrationArtifact, Detector, Embeddings, OodMetrics, Score, ThresholdMode,
};

use crate::error::{Error, Result};
use crate::inputs::{load_artifact, load_embeddings, named_sets, same_dim};
use crate::report::{write_report, ReportSet};

/// What `score` wrote.
#[derive(Debug, Clone)]
pub struct ScoreSummary {
    pub out: PathBuf,
    pub scored: usize,
    pub flagged: usize,
}

impl std::fmt::Display for ScoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "scored {} embeddings into {} ({} flagged OOD)",
            self.scored,
            self.out.display(),
            self.flagged
        )
    }
}

/// Scores `embeddings` with the calibration in `calib` into `out`: `.npy` (scores,
/// float64) or `.csv` (score, nearest cluster, p-value, decision).
pub fn score(calib: &Path, embeddings: &Path, out: &Path) -> Result<ScoreSummary> {
    let artifact = load_artifact(calib)?;
    let x = load_embeddings(embeddings)?;
    same_dim(
        embeddings,
        &x,
        artifact.embedding_dim,
        &calib.display().to_string(),
    )?;
    let detector = artifact.detector()?;
    let scores = detector.scorer.score_batch(&x)?;
    match out.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "npy" => {
            let v: Vec<f64> = scores.iter().map(|s| s.score).collect();
            npy::write_f64_vector(out, &v)?;
        }
        "csv" => {
            let mut text = String::from("score,nearest_cluster,p_value,ood\n");
            for s in &scores {
                let d = detector.decide_score(*s);
                text.push_str(&format!(
                    "{},{},{},{}\n",
                    d.score, d.nearest, d.p_value, d.ood as u8
                ));
            }
            write_atomic(out, |w| w.write_all(text.as_bytes()))?;
        }
        _ => {
            return Err(Error::input(format!(
                "{}: output must end in .npy or .csv",
                out.display()
            )))
        }
    }
    Ok(ScoreSummary {
        out: out.to_path_buf(),
        scored: scores.len(),
        flagged: scores
            .iter()
            .filter(|s| detector.thresholds.is_ood(s))
            .count(),
    })
}

/// One OOD set's metrics and the share of it the calibrated rule flags.
#[derive(Debug, Clone)]
pub struct SetResult {
    pub name: String,
    pub metrics: OodMetrics,
    pub detected: f64,
}

/// The ID false-alarm rate and each OOD set's metrics.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub rule: String,
    pub id_samples: usize,
    pub id_false_alarm: f64,
    pub sets: Vec<SetResult>,
    /// The Markdown report, when one was written.
    pub report: Option<PathBuf>,
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ID false-alarm rate at the calibrated {} rule: {:.2}% ({} samples)",
            self.rule,
            100.0 * self.id_false_alarm,
            self.id_samples
        )?;
        write!(
            f,
            "{:<16} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
            "ood set", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95TPR", "det.err", "detected"
        )?;
        for s in &self.sets {
            let m = &s.metrics;
            write!(
                f,
                "\n{:<16} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>9.2} {:>9.2}",
                s.name,
                100.0 * m.auroc,
                100.0 * m.aupr_in,
                100.0 * m.aupr_out,
                100.0 * m.fpr_at_95_tpr,
                100.0 * m.detection_error,
                100.0 * s.detected
            )?;
        }
        if let Some(r) = &self.report {
            write!(f, "\nreport written to {}", r.display())?;
        }
        Ok(())
    }
}

/// Evaluates the calibration in `calib` on ID test embeddings and `FILE` or `NAME=FILE`
/// OOD sets; writes the report into `report` when given.
pub fn eval_files(
    calib: &Path,
    id: &Path,
    ood: &[String],
    report: Option<&Path>,
) -> Result<EvalReport> {
    let artifact = load_artifact(calib)?;
    let detector = artifact.detector()?;
    let of = calib.display().to_string();
    let id_e = load_embeddings(id)?;
    same_dim(id, &id_e, artifact.embedding_dim, &of)?;
    if id_e.is_empty() {
        return Err(Error::input(format!("{}: no embeddings", id.display())));
    }
    let sets = named_sets(ood, artifact.embedding_dim, &of)?;
    evaluate(&artifact, &detector, &id_e, &sets, report, &of)
}

/// Scores ID test and OOD embeddings and measures each OOD set against the ID ones
/// (per-cluster rules rank by margin to the cluster's threshold).
pub fn evaluate(
    artifact: &CalibrationArtifact,
    detector: &Detector,
    id: &Embeddings,
    sets: &[(String, Embeddings)],
    report: Option<&Path>,
    title: &str,
) -> Result<EvalReport> {
    let per_cluster = matches!(artifact.thresholds.mode, ThresholdMode::PerCluster { .. });
    let t = &detector.thresholds;
    let rank = |s: &Score| if per_cluster { t.margin(s) } else { s.score };
    let id_scores = detector.scorer.score_batch(id)?;
    let id_rank: Vec<f64> = id_scores.iter().map(rank).collect();
    let id_false_alarm =
        id_scores.iter().filter(|s| t.is_ood(s)).count() as f64 / id_scores.len().max(1) as f64;
    let mut results = Vec::new();
    let mut ranked_sets = Vec::new();
    for (name, e) in sets {
        let scores = detector.scorer.score_batch(e)?;
        let ranked: Vec<f64> = scores.iter().map(rank).collect();
        let detected =
            scores.iter().filter(|s| t.is_ood(s)).count() as f64 / scores.len().max(1) as f64;
        results.push(SetResult {
            name: name.clone(),
            metrics: ood_metrics(&id_rank, &ranked),
            detected,
        });
        ranked_sets.push(ranked);
    }
    let written = match report {
        Some(dir) => {
            let sets: Vec<ReportSet<'_>> = results
                .iter()
                .zip(&ranked_sets)
                .map(|(r, ranked)| ReportSet {
                    name: &r.name,
                    scores: ranked,
                    metrics: r.metrics,
                    detection_rate: r.detected,
                })
                .collect();
            let (rule, line) = if per_cluster {
                (
                    "per-cluster thresholds (scores shown as margins)".to_string(),
                    0.0,
                )
            } else {
                (
                    format!("{} threshold {:.6}", t.mode.name(), t.global),
                    t.global,
                )
            };
            write_report(
                dir,
                &format!("OOD evaluation of {title}"),
                &id_rank,
                id_false_alarm,
                &rule,
                line,
                &sets,
            )?;
            Some(dir.join("report.md"))
        }
        None => None,
    };
    Ok(EvalReport {
        rule: t.mode.name().to_string(),
        id_samples: id_scores.len(),
        id_false_alarm,
        sets: results,
        report: written,
    })
}
