//! The paper's study in one call: every combination of clustering, metric, normalisation
//! and threshold rule, evaluated on held-out ID data and each OOD set.

use std::fmt::Write as _;
use std::time::Instant;

use oodmon_calibration::fit::{fit_clusters, fit_metric, ClusterSpec, FitConfig};
use oodmon_calibration::kmeans::KMeansConfig;
use oodmon_calibration::metrics::{ood_metrics, OodMetrics};
use oodmon_calibration::model::{Metric, Scorer};
use oodmon_calibration::threshold::{ThresholdMode, Thresholds};
use oodmon_calibration::{Embeddings, Error, Result};

/// The data of a study.
pub struct GridData<'a> {
    pub train: &'a Embeddings,
    pub labels: Option<&'a [i64]>,
    pub calib: &'a Embeddings,
    pub test: &'a Embeddings,
    pub ood: &'a [(String, Embeddings)],
}

/// Which combinations to run.
#[derive(Debug, Clone)]
pub struct GridConfig {
    pub clusters: Vec<ClusterSpec>,
    pub metrics: Vec<Metric>,
    pub normalize: Vec<bool>,
    pub thresholds: Vec<ThresholdMode>,
    pub kmeans: KMeansConfig,
    pub knn_bank: Option<usize>,
}

/// One line of the study's table.
#[derive(Debug, Clone)]
pub struct GridRow {
    pub clusters: String,
    pub metric: String,
    pub normalize: bool,
    pub threshold: String,
    pub ood_set: String,
    pub metrics: OodMetrics,
    /// Fraction of held-out ID test samples flagged at the calibrated rule.
    pub id_false_alarm: f64,
    /// Fraction of OOD samples flagged at the calibrated rule.
    pub ood_detection: f64,
}

/// Runs every combination; `progress` hears about each one as it starts.
pub fn run_grid(
    data: &GridData<'_>,
    cfg: &GridConfig,
    mut progress: impl FnMut(&str),
) -> Result<Vec<GridRow>> {
    for (name, e) in data
        .ood
        .iter()
        .map(|(n, e)| (n.as_str(), e))
        .chain([("calibration", data.calib), ("test", data.test)])
    {
        if e.dim() != data.train.dim() {
            return Err(Error::DimensionMismatch {
                what: format!("{name} embeddings"),
                expected: data.train.dim(),
                found: e.dim(),
            });
        }
    }
    let mut rows = Vec::new();
    for &clusters in &cfg.clusters {
        for &normalize in &cfg.normalize {
            let started = Instant::now();
            let mut fc = FitConfig::new(clusters, Metric::Euclidean);
            fc.normalize = normalize;
            fc.kmeans = cfg.kmeans;
            fc.knn_bank = cfg.knn_bank;
            progress(&format!(
                "clusters {} (normalize={normalize})",
                clusters.name()
            ));
            let fitted_clusters = fit_clusters(data.train, data.labels, &fc)?;
            log::info!(
                "fitted {} in {:.1}s",
                clusters.name(),
                started.elapsed().as_secs_f64()
            );
            let mut unit_clusters = None;
            for &metric in &cfg.metrics {
                // Mahalanobis++ is only defined on normalised clusters: it runs once, in the
                // normalised pass when the grid has one.
                let unit_only = metric.needs_unit_norm() && !normalize;
                if unit_only && cfg.normalize.contains(&true) {
                    continue;
                }
                // a low-rank metric needs fewer directions than the embedding has
                if let Some((_, rank)) = metric.subspace().filter(|&(_, r)| r >= data.train.dim()) {
                    if normalize || !cfg.normalize.contains(&true) {
                        progress(&format!(
                            "  metric {} skipped: rank {rank} of a {}-wide embedding",
                            metric.name(),
                            data.train.dim()
                        ));
                    }
                    continue;
                }
                progress(&format!(
                    "  metric {} on {} (normalize={})",
                    metric.name(),
                    clusters.name(),
                    normalize || unit_only
                ));
                fc.metric = metric;
                let source = if unit_only {
                    if unit_clusters.is_none() {
                        unit_clusters = Some(fit_clusters(data.train, data.labels, &fc)?);
                    }
                    unit_clusters.as_ref().unwrap_or(&fitted_clusters)
                } else {
                    &fitted_clusters
                };
                let model = fit_metric(source, &fc)?;
                let scorer = Scorer::new(&model)?;
                let cal = scorer.score_batch(data.calib)?;
                let test = scorer.score_batch(data.test)?;
                let oods = data
                    .ood
                    .iter()
                    .map(|(n, e)| Ok((n.clone(), scorer.score_batch(e)?)))
                    .collect::<Result<Vec<_>>>()?;
                for &mode in &cfg.thresholds {
                    let t = Thresholds::fit(mode, &cal, model.clusters())?;
                    // Per-cluster rules rank by the margin over the cluster's threshold.
                    let rank = |s: &oodmon_calibration::model::Score| match mode {
                        ThresholdMode::PerCluster { .. } => t.margin(s),
                        _ => s.score,
                    };
                    let id_scores: Vec<f64> = test.iter().map(rank).collect();
                    let id_false_alarm = test.iter().filter(|s| t.is_ood(s)).count() as f64
                        / test.len().max(1) as f64;
                    for (name, scores) in &oods {
                        let o: Vec<f64> = scores.iter().map(rank).collect();
                        rows.push(GridRow {
                            clusters: clusters.name(),
                            metric: metric.name(),
                            normalize: model.normalize,
                            threshold: mode.name().into(),
                            ood_set: name.clone(),
                            metrics: ood_metrics(&id_scores, &o),
                            id_false_alarm,
                            ood_detection: scores.iter().filter(|s| t.is_ood(s)).count() as f64
                                / scores.len().max(1) as f64,
                        });
                    }
                }
            }
        }
    }
    Ok(rows)
}

const COLUMNS: [&str; 12] = [
    "clusters",
    "metric",
    "normalize",
    "threshold",
    "ood_set",
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_95_tpr",
    "detection_error",
    "id_false_alarm",
    "ood_detection",
];

fn cells(r: &GridRow, pct: bool) -> Vec<String> {
    let f = |v: f64| {
        if pct {
            format!("{:.2}", 100.0 * v)
        } else {
            format!("{v:.6}")
        }
    };
    vec![
        r.clusters.clone(),
        r.metric.clone(),
        r.normalize.to_string(),
        r.threshold.clone(),
        r.ood_set.clone(),
        f(r.metrics.auroc),
        f(r.metrics.aupr_in),
        f(r.metrics.aupr_out),
        f(r.metrics.fpr_at_95_tpr),
        f(r.metrics.detection_error),
        f(r.id_false_alarm),
        f(r.ood_detection),
    ]
}

/// The table as CSV (fractions, 6 decimals).
pub fn to_csv(rows: &[GridRow]) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for r in rows {
        out.push_str(&cells(r, false).join(","));
        out.push('\n');
    }
    out
}

/// The table as Markdown (percentages), best AUROC per OOD set in bold.
pub fn to_markdown(rows: &[GridRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "All metrics in percent. AUROC, AUPR and FPR@95TPR are threshold-free (per-cluster rows rank by the margin over each cluster's threshold); `id_false_alarm` and `ood_detection` are measured at the calibrated rule.\n"
    );
    let _ = writeln!(out, "| {} |", COLUMNS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(COLUMNS.len()));
    for r in rows {
        let best = rows
            .iter()
            .filter(|o| o.ood_set == r.ood_set)
            .map(|o| o.metrics.auroc)
            .fold(f64::MIN, f64::max);
        let mut c = cells(r, true);
        if r.metrics.auroc == best {
            c[5] = format!("**{}**", c[5]);
        }
        let _ = writeln!(out, "| {} |", c.join(" | "));
    }
    out
}

/// The files of a grid run: ID training, calibration and test embeddings and the OOD
/// sets (`FILE` or `NAME=FILE`).
#[derive(Debug, Clone)]
pub struct GridFiles {
    pub train: std::path::PathBuf,
    pub labels: Option<std::path::PathBuf>,
    pub calib: std::path::PathBuf,
    pub test: std::path::PathBuf,
    pub ood: Vec<String>,
}

/// Loads and checks the files, runs the grid and writes `grid.md` and `grid.csv` into
/// `out` atomically; returns the rows.
pub fn run_files(
    files: &GridFiles,
    cfg: &GridConfig,
    out: &std::path::Path,
    progress: impl FnMut(&str),
) -> crate::error::Result<Vec<GridRow>> {
    use crate::error::Error;
    use crate::inputs::{load_embeddings, load_labels, named_sets, same_dim};
    use oodmon_calibration::io::write_atomic;
    let train = load_embeddings(&files.train)?;
    let of = files.train.display().to_string();
    let labels = match &files.labels {
        Some(p) => Some(load_labels(p, train.rows(), &files.train)?),
        None => None,
    };
    if labels.is_none() && cfg.clusters.iter().any(|c| c.needs_labels()) {
        return Err(Error::input(
            "--labels is needed for class and kmeans-per-class clusterings",
        ));
    }
    let calib = load_embeddings(&files.calib)?;
    same_dim(&files.calib, &calib, train.dim(), &of)?;
    let test = load_embeddings(&files.test)?;
    same_dim(&files.test, &test, train.dim(), &of)?;
    let ood = named_sets(&files.ood, train.dim(), &of)?;
    let data = GridData {
        train: &train,
        labels: labels.as_deref(),
        calib: &calib,
        test: &test,
        ood: &ood,
    };
    let rows = run_grid(&data, cfg, progress)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let md = format!("# OOD grid\n\n{}", to_markdown(&rows));
    write_atomic(&out.join("grid.md"), |w| w.write_all(md.as_bytes()))?;
    let csv = to_csv(&rows);
    write_atomic(&out.join("grid.csv"), |w| w.write_all(csv.as_bytes()))?;
    Ok(rows)
}
