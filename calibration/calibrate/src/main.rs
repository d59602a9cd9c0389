//! `oodmon-calibrate`: fit, apply and evaluate clustering-based OOD calibration on
//! embeddings from any model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use oodmon_calibrate::grid::{run_grid, to_csv, to_markdown, GridConfig, GridData};
use oodmon_calibrate::report::{write_report, ReportSet};
use oodmon_calibration::artifact::InputChecksum;
use oodmon_calibration::io::{sha256_file, write_atomic};
use oodmon_calibration::{
    calibrate, npy, ood_metrics, CalibrationArtifact, ClusterSpec, Embeddings, FitConfig,
    KMeansConfig, Metric, PreprocessSpec, Provenance, ThresholdMode,
};
use oodmon_cli::say;
use oodmon_data::{embed_dataset, DataSpec, Split};
use oodmon_runtime::{Bundle, Encoder};

#[derive(Parser)]
#[command(
    name = "oodmon-calibrate",
    version,
    about = "Clustering-based OOD calibration on embeddings (.npy)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fit clusters on ID training embeddings and calibrate thresholds on an ID calibration split.
    Fit(FitArgs),
    /// Score embeddings with a calibration: one score per row.
    Score(ScoreArgs),
    /// Evaluate a calibration on ID test and OOD embeddings.
    Eval(EvalArgs),
    /// Run every combination of clustering, metric and threshold (the paper's study).
    Grid(GridArgs),
    /// Embed image data through an ONNX encoder (tract, shared preprocessing) and write a
    /// bundle: the encoder and its calibration.
    FitModel(FitModelArgs),
    /// Evaluate a bundle on ID and OOD image data through its encoder.
    EvalModel(EvalModelArgs),
    /// Embeddings of image data through an ONNX encoder in tract (the edge's runtime and
    /// preprocessing), as .npy for `fit`, `eval` and `grid`.
    EmbedModel {
        #[arg(long)]
        model: PathBuf,
        /// cifar10:DIR | cifar100:DIR | idx:DIR | folder:DIR | noise:uniform|gaussian:N[:SEED]
        #[arg(long)]
        data: String,
        /// train | test
        #[arg(long, default_value = "test")]
        split: String,
        /// At most this many images.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        out: PathBuf,
        /// Also write the labels (.npy, int64).
        #[arg(long)]
        labels: Option<PathBuf>,
    },
    /// Latency of an ONNX encoder in tract on this machine (median and p99 per image).
    TimeModel {
        #[arg(long, required = true)]
        model: Vec<PathBuf>,
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// Self-contained demonstration on generated embeddings: writes the inputs, fits,
    /// evaluates and writes a report into DIR.
    Demo {
        #[arg(long, default_value = "oodmon-demo")]
        out: PathBuf,
    },
}

#[derive(Args)]
struct KmeansArgs {
    /// k-means restarts (k-means++ each); the lowest inertia wins.
    #[arg(long, default_value_t = 3)]
    kmeans_restarts: usize,
    #[arg(long, default_value_t = 300)]
    kmeans_max_iter: usize,
    #[arg(long, default_value_t = 1e-4)]
    kmeans_tol: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest k-NN bank; larger training sets are subsampled (seeded).
    #[arg(long)]
    knn_bank: Option<usize>,
}

impl KmeansArgs {
    fn config(&self) -> KMeansConfig {
        KMeansConfig {
            k: 1,
            n_init: self.kmeans_restarts,
            max_iter: self.kmeans_max_iter,
            tol: self.kmeans_tol,
            seed: self.seed,
        }
    }
}

/// Clustering, metric and decision rule, shared by `fit` and `fit-model`.
#[derive(Args)]
struct RuleArgs {
    /// class | kmeans:K | kmeans-per-class:K
    #[arg(long, default_value = "class")]
    clusters: String,
    /// euclidean | cosine | mahalanobis | mahalanobis-per-cluster | knn:K
    #[arg(long, default_value = "cosine")]
    metric: String,
    /// L2-normalise embeddings before fitting and scoring.
    #[arg(long)]
    normalize: bool,
    /// Fraction of ID calibration samples to accept (global or per-cluster thresholds).
    #[arg(long, conflicts_with = "alpha")]
    target_tpr: Option<f64>,
    /// Conformal mode: bound the ID false-alarm rate by alpha.
    #[arg(long)]
    alpha: Option<f64>,
    /// One threshold per cluster instead of one global threshold.
    #[arg(long, conflicts_with = "alpha")]
    per_cluster: bool,
    #[command(flatten)]
    kmeans: KmeansArgs,
}

impl RuleArgs {
    fn fit_config(&self) -> Result<FitConfig> {
        let mut config = FitConfig::new(
            ClusterSpec::parse(&self.clusters)?,
            Metric::parse(&self.metric)?,
        );
        config.normalize = self.normalize;
        config.kmeans = self.kmeans.config();
        config.knn_bank = self.kmeans.knn_bank;
        Ok(config)
    }

    fn mode(&self) -> ThresholdMode {
        ThresholdMode::from_options(self.target_tpr, self.alpha, self.per_cluster)
    }
}

#[derive(Args)]
struct FitArgs {
    /// ID training embeddings, float [n, d].
    #[arg(long)]
    train: PathBuf,
    /// Integer class labels of the training embeddings [n].
    #[arg(long)]
    labels: Option<PathBuf>,
    /// ID calibration embeddings (a split not used for training).
    #[arg(long)]
    calib: PathBuf,
    /// Labels of the calibration split, to report nearest-cluster accuracy.
    #[arg(long)]
    calib_labels: Option<PathBuf>,
    #[command(flatten)]
    rule: RuleArgs,
    /// Text file with one class name per line, in label order.
    #[arg(long)]
    class_names: Option<PathBuf>,
    /// The encoder (ONNX) file these embeddings came from; its SHA-256 is recorded, and
    /// its preprocessing spec too unless --preprocessing is given.
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// JSON preprocessing spec of that encoder, recorded in the artifact.
    #[arg(long)]
    preprocessing: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ScoreArgs {
    #[arg(long)]
    calib: PathBuf,
    #[arg(long)]
    embeddings: PathBuf,
    /// `.npy` (scores, float64) or `.csv` (score, nearest cluster, p-value, decision).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    calib: PathBuf,
    /// Held-out ID test embeddings.
    #[arg(long)]
    id: PathBuf,
    /// OOD embeddings, `FILE` or `NAME=FILE`; repeat for several sets.
    #[arg(long, required = true)]
    ood: Vec<String>,
    /// Write a Markdown report with ROC curves and score histograms here.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct GridArgs {
    #[arg(long)]
    train: PathBuf,
    #[arg(long)]
    labels: Option<PathBuf>,
    #[arg(long)]
    calib: PathBuf,
    /// Held-out ID test embeddings.
    #[arg(long)]
    test: PathBuf,
    /// OOD embeddings, `FILE` or `NAME=FILE`; repeat for several sets.
    #[arg(long, required = true)]
    ood: Vec<String>,
    /// Comma-separated clusterings.
    #[arg(long, default_value = "class,kmeans:10,kmeans-per-class:3")]
    clusters: String,
    /// Comma-separated metrics.
    #[arg(long, default_value = "euclidean,cosine,mahalanobis,knn:50")]
    metrics: String,
    /// Comma-separated threshold rules: global, per-cluster, conformal.
    #[arg(long, default_value = "global,per-cluster,conformal")]
    thresholds: String,
    /// Normalisation settings to try: off, on or both.
    #[arg(long, default_value = "both")]
    normalize: String,
    #[arg(long, default_value_t = 0.95)]
    target_tpr: f64,
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    #[command(flatten)]
    kmeans: KmeansArgs,
    /// Output directory for grid.md and grid.csv.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    oodmon_cli::main("oodmon-calibrate", "warn", || run(Cli::parse()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fit(a) => fit(a),
        Command::Score(a) => score(a),
        Command::Eval(a) => eval(a),
        Command::Grid(a) => grid(a),
        Command::FitModel(a) => fit_model_cmd(a),
        Command::EvalModel(a) => eval_model_cmd(a),
        Command::TimeModel { model, runs } => time_model(&model, runs),
        Command::EmbedModel {
            model,
            data,
            split,
            limit,
            out,
            labels,
        } => {
            let encoder = Encoder::load(&model)?;
            let spec = encoder.preprocessing().cloned().with_context(|| {
                format!("{}: no preprocessing spec in its metadata", model.display())
            })?;
            let data_spec: DataSpec = data.parse()?;
            let e = embed_dataset(&encoder, &spec, &data_spec, parse_split(&split)?, limit)?;
            npy::write_embeddings(&out, &e.embeddings)?;
            if let Some(l) = labels {
                npy::write_labels(&l, &e.labels)?;
            }
            say!(
                "wrote {} embeddings of dimension {} to {}",
                e.embeddings.rows(),
                e.embeddings.dim(),
                out.display()
            );
            Ok(())
        }
        Command::Demo { out } => demo(out),
    }
}

fn load_embeddings(path: &Path) -> Result<Embeddings> {
    Ok(npy::read_embeddings(path)?)
}

fn load_labels(path: &Path, rows: usize, of: &Path) -> Result<Vec<i64>> {
    let labels = npy::read_labels(path)?;
    if labels.len() != rows {
        bail!(
            "{}: {} labels but {} has {rows} embeddings",
            path.display(),
            labels.len(),
            of.display()
        );
    }
    Ok(labels)
}

fn same_dim(path: &Path, e: &Embeddings, dim: usize, of: &str) -> Result<()> {
    if e.dim() != dim {
        bail!(
            "{}: embeddings have dimension {}, but {of} has {dim}",
            path.display(),
            e.dim()
        );
    }
    Ok(())
}

fn named_sets(
    specs: &[String],
    dim: usize,
    of: &str,
) -> Result<Vec<(String, PathBuf, Embeddings)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, path) = match spec.split_once('=') {
                Some((n, p)) if !n.is_empty() => (n.to_string(), PathBuf::from(p)),
                _ => {
                    let p = PathBuf::from(spec);
                    let stem = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| spec.clone());
                    (stem, p)
                }
            };
            let e = load_embeddings(&path)?;
            same_dim(&path, &e, dim, of)?;
            if e.is_empty() {
                bail!("{}: no embeddings", path.display());
            }
            Ok((name, path, e))
        })
        .collect()
}

fn fit(a: FitArgs) -> Result<()> {
    let config = a.rule.fit_config()?;
    let clusters = config.clusters;
    let mode = a.rule.mode();
    let train = load_embeddings(&a.train)?;
    let labels = match &a.labels {
        Some(p) => Some(load_labels(p, train.rows(), &a.train)?),
        None if clusters.needs_labels() => {
            bail!("--clusters {} needs --labels", clusters.name())
        }
        None => None,
    };
    let calib = load_embeddings(&a.calib)?;
    same_dim(
        &a.calib,
        &calib,
        train.dim(),
        &a.train.display().to_string(),
    )?;
    let calib_labels = match &a.calib_labels {
        Some(p) => Some(load_labels(p, calib.rows(), &a.calib)?),
        None => None,
    };
    let class_names = match &a.class_names {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| p.display().to_string())?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    let preprocessing: Option<PreprocessSpec> = match &a.preprocessing {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            let spec: PreprocessSpec = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a preprocessing spec", p.display()))?;
            spec.validate().with_context(|| p.display().to_string())?;
            Some(spec)
        }
        None => match &a.encoder {
            Some(e) => Encoder::load(e)?.preprocessing().cloned(),
            None => None,
        },
    };
    let encoder_sha256 = a.encoder.as_deref().map(sha256_file).transpose()?;

    let (model, thresholds) = calibrate(&train, labels.as_deref(), &calib, &config, mode)
        .with_context(|| format!("calibrating {} on {}", a.train.display(), a.calib.display()))?;

    if let Some(cl) = &calib_labels {
        let detector_model = oodmon_calibration::Scorer::new(&model)?;
        let scores = detector_model.score_batch(&calib)?;
        let known = scores
            .iter()
            .zip(cl)
            .filter(|(s, _)| model.cluster_class[s.nearest].is_some())
            .count();
        let correct = scores
            .iter()
            .zip(cl)
            .filter(|(s, &l)| model.cluster_class[s.nearest] == Some(l as usize))
            .count();
        if known > 0 {
            say!(
                "nearest-cluster class accuracy on the calibration split: {:.2}%",
                100.0 * correct as f64 / known as f64
            );
        }
    }

    let mut inputs = vec![checksum("train", &a.train)?, checksum("calib", &a.calib)?];
    if let Some(p) = &a.labels {
        inputs.push(checksum("labels", p)?);
    }
    if let Some(p) = &a.calib_labels {
        inputs.push(checksum("calib_labels", p)?);
    }
    let provenance = Provenance::now("oodmon-calibrate", inputs, std::env::args().collect());
    let flagged = thresholds
        .calibration_scores
        .iter()
        .filter(|&&s| {
            thresholds.is_ood(&oodmon_calibration::Score {
                score: s,
                nearest: usize::MAX,
            })
        })
        .count();
    let artifact = CalibrationArtifact::new(
        config,
        model,
        thresholds,
        class_names,
        encoder_sha256,
        preprocessing,
        provenance,
    )?;
    artifact.save(&a.out)?;
    let t = &artifact.thresholds;
    say!(
        "wrote {}: {} clusters, metric {}, {} rule, global threshold {:.6}",
        a.out.display(),
        artifact.model.clusters(),
        artifact.model.metric.name(),
        t.mode.name(),
        t.global
    );
    if !matches!(t.mode, ThresholdMode::PerCluster { .. }) {
        say!(
            "calibration samples flagged at this rule: {:.2}% of {}",
            100.0 * flagged as f64 / t.calibration_scores.len() as f64,
            t.calibration_scores.len()
        );
    }
    if !t.fallback_clusters.is_empty() {
        say!(
            "clusters with too few calibration samples, using the global threshold: {:?}",
            t.fallback_clusters
        );
    }
    Ok(())
}

fn checksum(role: &str, path: &Path) -> Result<InputChecksum> {
    Ok(InputChecksum {
        role: role.into(),
        path: path.display().to_string(),
        sha256: sha256_file(path)?,
    })
}

fn load_artifact(path: &Path) -> Result<CalibrationArtifact> {
    CalibrationArtifact::load(path).with_context(|| path.display().to_string())
}

fn score(a: ScoreArgs) -> Result<()> {
    let artifact = load_artifact(&a.calib)?;
    let x = load_embeddings(&a.embeddings)?;
    same_dim(
        &a.embeddings,
        &x,
        artifact.embedding_dim,
        &a.calib.display().to_string(),
    )?;
    let detector = artifact.detector()?;
    let scores = detector.scorer.score_batch(&x)?;
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "npy" => {
            let v: Vec<f64> = scores.iter().map(|s| s.score).collect();
            npy::write_f64_vector(&a.out, &v)?;
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
            write_atomic(&a.out, |w| w.write_all(text.as_bytes()))?;
        }
        _ => bail!("{}: output must end in .npy or .csv", a.out.display()),
    }
    let flagged = scores
        .iter()
        .filter(|s| detector.thresholds.is_ood(s))
        .count();
    say!(
        "scored {} embeddings into {} ({} flagged OOD)",
        scores.len(),
        a.out.display(),
        flagged
    );
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let artifact = load_artifact(&a.calib)?;
    let detector = artifact.detector()?;
    let id = load_embeddings(&a.id)?;
    same_dim(
        &a.id,
        &id,
        artifact.embedding_dim,
        &a.calib.display().to_string(),
    )?;
    if id.is_empty() {
        bail!("{}: no embeddings", a.id.display());
    }
    let sets = named_sets(
        &a.ood,
        artifact.embedding_dim,
        &a.calib.display().to_string(),
    )?;
    let ood: Vec<(String, Embeddings)> = sets.into_iter().map(|(n, _, e)| (n, e)).collect();
    report_metrics(
        &artifact,
        &detector,
        &id,
        &ood,
        a.report.as_deref(),
        &a.calib.display().to_string(),
    )
}

/// Scores ID test and OOD embeddings, prints the metrics table and optionally writes the
/// Markdown report.
fn report_metrics(
    artifact: &CalibrationArtifact,
    detector: &oodmon_calibration::Detector,
    id: &Embeddings,
    sets: &[(String, Embeddings)],
    report: Option<&Path>,
    title: &str,
) -> Result<()> {
    let per_cluster = matches!(artifact.thresholds.mode, ThresholdMode::PerCluster { .. });
    let t = &detector.thresholds;
    let rank = |s: &oodmon_calibration::Score| if per_cluster { t.margin(s) } else { s.score };
    let id_scores = detector.scorer.score_batch(id)?;
    let id_rank: Vec<f64> = id_scores.iter().map(rank).collect();
    let id_false_alarm =
        id_scores.iter().filter(|s| t.is_ood(s)).count() as f64 / id_scores.len() as f64;
    let mut results = Vec::new();
    for (name, e) in sets {
        let scores = detector.scorer.score_batch(e)?;
        let ranked: Vec<f64> = scores.iter().map(rank).collect();
        let detected = scores.iter().filter(|s| t.is_ood(s)).count() as f64 / scores.len() as f64;
        results.push((name.clone(), ranked, detected));
    }
    say!(
        "ID false-alarm rate at the calibrated {} rule: {:.2}% ({} samples)",
        t.mode.name(),
        100.0 * id_false_alarm,
        id_scores.len()
    );
    say!(
        "{:<16} {:>8} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "ood set",
        "AUROC",
        "AUPR-In",
        "AUPR-Out",
        "FPR@95TPR",
        "det.err",
        "detected"
    );
    let mut report_sets = Vec::new();
    for (name, ranked, detected) in &results {
        let m = ood_metrics(&id_rank, ranked);
        say!(
            "{:<16} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>9.2} {:>9.2}",
            name,
            100.0 * m.auroc,
            100.0 * m.aupr_in,
            100.0 * m.aupr_out,
            100.0 * m.fpr_at_95_tpr,
            100.0 * m.detection_error,
            100.0 * detected
        );
        report_sets.push((name, ranked, m, *detected));
    }
    if let Some(dir) = report {
        let sets: Vec<ReportSet<'_>> = report_sets
            .iter()
            .map(|(n, r, m, d)| ReportSet {
                name: n,
                scores: r,
                metrics: *m,
                detection_rate: *d,
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
        say!("report written to {}", dir.join("report.md").display());
    }
    Ok(())
}

fn parse_list<T>(
    text: &str,
    parse: impl Fn(&str) -> oodmon_calibration::Result<T>,
) -> Result<Vec<T>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(parse(s)?))
        .collect()
}

fn grid(a: GridArgs) -> Result<()> {
    let clusters = parse_list(&a.clusters, ClusterSpec::parse)?;
    let metrics = parse_list(&a.metrics, Metric::parse)?;
    let thresholds = parse_list(&a.thresholds, |s| match s {
        "global" => Ok(ThresholdMode::Global {
            target_tpr: a.target_tpr,
        }),
        "per-cluster" => Ok(ThresholdMode::PerCluster {
            target_tpr: a.target_tpr,
        }),
        "conformal" => Ok(ThresholdMode::Conformal { alpha: a.alpha }),
        other => Err(oodmon_calibration::Error::InvalidParameter {
            what: "threshold",
            reason: format!("{other:?} (expected global, per-cluster or conformal)"),
        }),
    })?;
    let normalize = match a.normalize.as_str() {
        "off" => vec![false],
        "on" => vec![true],
        "both" => vec![false, true],
        other => bail!("--normalize {other:?}: expected off, on or both"),
    };
    let train = load_embeddings(&a.train)?;
    let of = a.train.display().to_string();
    let labels = match &a.labels {
        Some(p) => Some(load_labels(p, train.rows(), &a.train)?),
        None => None,
    };
    if labels.is_none() && clusters.iter().any(|c| c.needs_labels()) {
        bail!("--labels is needed for class and kmeans-per-class clusterings");
    }
    let calib = load_embeddings(&a.calib)?;
    same_dim(&a.calib, &calib, train.dim(), &of)?;
    let test = load_embeddings(&a.test)?;
    same_dim(&a.test, &test, train.dim(), &of)?;
    let sets = named_sets(&a.ood, train.dim(), &of)?;
    let ood: Vec<(String, Embeddings)> = sets.into_iter().map(|(n, _, e)| (n, e)).collect();
    let cfg = GridConfig {
        clusters,
        metrics,
        normalize,
        thresholds,
        kmeans: a.kmeans.config(),
        knn_bank: a.kmeans.knn_bank,
    };
    let data = GridData {
        train: &train,
        labels: labels.as_deref(),
        calib: &calib,
        test: &test,
        ood: &ood,
    };
    let rows = run_grid(&data, &cfg, |msg| eprintln!("grid: {msg}"))?;
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let md = format!("# OOD grid\n\n{}", to_markdown(&rows));
    write_atomic(&a.out.join("grid.md"), |w| w.write_all(md.as_bytes()))?;
    let csv = to_csv(&rows);
    write_atomic(&a.out.join("grid.csv"), |w| w.write_all(csv.as_bytes()))?;
    say!(
        "{} rows written to {} and {}",
        rows.len(),
        a.out.join("grid.md").display(),
        a.out.join("grid.csv").display()
    );
    Ok(())
}

/// Class-structured embeddings (ID) and three kinds of OOD: unseen classes near the ID
/// ones, broad noise, and ID embeddings with a shifted subspace.
fn demo_data(dir: &Path) -> Result<()> {
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

fn demo(out: PathBuf) -> Result<()> {
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    demo_data(&out)?;
    let p = |name: &str| out.join(name);
    say!("generated embeddings in {}", out.display());
    fit(FitArgs {
        train: p("train.npy"),
        labels: Some(p("train_labels.npy")),
        calib: p("calib.npy"),
        calib_labels: Some(p("calib_labels.npy")),
        rule: RuleArgs {
            clusters: "class".into(),
            metric: "cosine".into(),
            normalize: false,
            target_tpr: Some(0.95),
            alpha: None,
            per_cluster: false,
            kmeans: KmeansArgs {
                kmeans_restarts: 3,
                kmeans_max_iter: 300,
                kmeans_tol: 1e-4,
                seed: 0,
                knn_bank: None,
            },
        },
        class_names: None,
        encoder: None,
        preprocessing: None,
        out: p("calib.json"),
    })?;
    eval(EvalArgs {
        calib: p("calib.json"),
        id: p("test.npy"),
        ood: vec![
            format!("unseen-classes={}", p("ood_unseen_classes.npy").display()),
            format!("wide={}", p("ood_wide.npy").display()),
        ],
        report: Some(p("report")),
    })
}

#[derive(Args)]
struct FitModelArgs {
    /// The encoder (ONNX) to calibrate; its preprocessing spec comes from its metadata
    /// unless --preprocessing is given.
    #[arg(long)]
    model: PathBuf,
    /// ID training data: cifar10:DIR | cifar100:DIR | idx:DIR | folder:DIR (its train split).
    #[arg(long)]
    train: String,
    /// ID calibration data (its --calib-split); when omitted, --holdout of the training
    /// split is held out (seeded, stratified).
    #[arg(long)]
    calib: Option<String>,
    #[arg(long, default_value = "test")]
    calib_split: String,
    #[arg(long, default_value_t = 0.1)]
    holdout: f64,
    /// Use at most this many training images.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    rule: RuleArgs,
    #[arg(long)]
    preprocessing: Option<PathBuf>,
    /// Bundle directory to write (encoder.onnx and calib.json).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalModelArgs {
    #[arg(long)]
    bundle: PathBuf,
    /// ID test data (its test split).
    #[arg(long)]
    id: String,
    /// OOD data, `SPEC` or `NAME=SPEC` (test split); repeat for several sets.
    #[arg(long, required = true)]
    ood: Vec<String>,
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    report: Option<PathBuf>,
}

fn parse_split(s: &str) -> Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => bail!("split {other:?}: expected train or test"),
    }
}

fn fit_model_cmd(a: FitModelArgs) -> Result<()> {
    let bytes = std::fs::read(&a.model).with_context(|| a.model.display().to_string())?;
    let encoder = Encoder::from_bytes(&bytes, &a.model)?;
    let spec = match &a.preprocessing {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
            serde_json::from_str::<PreprocessSpec>(&text)
                .with_context(|| format!("{}: not a preprocessing spec", p.display()))?
        }
        None => encoder.preprocessing().cloned().with_context(|| {
            format!(
                "{}: no preprocessing spec in its metadata; pass --preprocessing",
                a.model.display()
            )
        })?,
    };
    let train_spec: DataSpec = a.train.parse()?;
    eprintln!("embedding {} through tract", a.train);
    let train = embed_dataset(&encoder, &spec, &train_spec, Split::Train, a.limit)?;
    let (train_e, train_labels, calib_e) = match &a.calib {
        Some(c) => {
            let calib = embed_dataset(
                &encoder,
                &spec,
                &c.parse()?,
                parse_split(&a.calib_split)?,
                None,
            )?;
            (train.embeddings, train.labels, calib.embeddings)
        }
        None => {
            let (keep, hold) = stratified_holdout(&train.labels, a.holdout, a.rule.kmeans.seed)?;
            (
                train.embeddings.select(&keep),
                keep.iter().map(|&i| train.labels[i]).collect(),
                train.embeddings.select(&hold),
            )
        }
    };
    let mode = a.rule.mode();
    let config = a.rule.fit_config()?;
    let (model, thresholds) = calibrate(&train_e, Some(&train_labels), &calib_e, &config, mode)?;
    let provenance = Provenance::now(
        "oodmon-calibrate fit-model",
        vec![checksum("encoder", &a.model)?],
        std::env::args().collect(),
    );
    let artifact = CalibrationArtifact::new(
        config,
        model,
        thresholds,
        train.class_names,
        Some(oodmon_calibration::io::sha256_bytes(&bytes)),
        Some(spec),
        provenance,
    )?;
    Bundle::write(&a.out, &bytes, &artifact)?;
    say!(
        "wrote bundle {}: {} training and {} calibration embeddings, {} clusters, {} threshold {:.6}",
        a.out.display(),
        train_e.rows(),
        calib_e.rows(),
        artifact.model.clusters(),
        artifact.thresholds.mode.name(),
        artifact.thresholds.global
    );
    Ok(())
}

/// Indices kept and held out: `fraction` of each class, seeded.
fn stratified_holdout(
    labels: &[i64],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if !(fraction > 0.0 && fraction < 1.0) {
        bail!("--holdout {fraction}: must be in (0, 1)");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let classes = labels
        .iter()
        .map(|&l| l.max(0) as usize + 1)
        .max()
        .unwrap_or(0);
    let (mut keep, mut hold) = (Vec::new(), Vec::new());
    for c in 0..classes as i64 {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        rows.shuffle(&mut rng);
        let n = (rows.len() as f64 * fraction).round() as usize;
        hold.extend_from_slice(&rows[..n]);
        keep.extend_from_slice(&rows[n..]);
    }
    keep.sort_unstable();
    hold.sort_unstable();
    Ok((keep, hold))
}

fn eval_model_cmd(a: EvalModelArgs) -> Result<()> {
    let bundle =
        Bundle::load(&a.bundle).with_context(|| format!("bundle {}", a.bundle.display()))?;
    let spec = bundle.preprocessing().clone();
    let id = embed_dataset(&bundle.encoder, &spec, &a.id.parse()?, Split::Test, a.limit)?;
    let mut sets = Vec::new();
    for s in &a.ood {
        let (name, data) = match s.split_once('=') {
            Some((n, d)) if !n.is_empty() && d.contains(':') => (n.to_string(), d.to_string()),
            _ => (s.clone(), s.clone()),
        };
        let e = embed_dataset(&bundle.encoder, &spec, &data.parse()?, Split::Test, a.limit)?;
        sets.push((name, e.embeddings));
    }
    report_metrics(
        &bundle.artifact,
        &bundle.detector,
        &id.embeddings,
        &sets,
        a.report.as_deref(),
        &a.bundle.display().to_string(),
    )
}

fn time_model(models: &[PathBuf], runs: usize) -> Result<()> {
    say!("| model | median (us) | p99 (us) | runs |");
    say!("|---|---|---|---|");
    for path in models {
        let mut times = Encoder::load(path)?.session()?.time(5, runs.max(1))?;
        times.sort_unstable();
        say!(
            "| {} | {} | {} | {} |",
            path.display(),
            times[times.len() / 2],
            times[(times.len() * 99 / 100).min(times.len() - 1)],
            times.len()
        );
    }
    Ok(())
}
