//! `oodmon-calibrate`: fit, apply and evaluate clustering-based OOD calibration on
//! embeddings from any model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use oodmon_calibrate::grid::{GridConfig, GridFiles};
use oodmon_calibrate::guards::{self, GuardData};
use oodmon_calibrate::inputs::{parse_list, parse_split};
use oodmon_calibrate::models::{self, CalibSplit, FitModel};
use oodmon_calibrate::{corruption, demo, evaluate, fit};
use oodmon_calibration::{npy, ClusterSpec, FitConfig, KMeansConfig, Metric, ThresholdMode};
use oodmon_cli::say;

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
        /// | corrupt:KIND:SEVERITY:SOURCE (a camera degradation, see `oodmon_calibration::corrupt`)
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
    /// Calibrate the camera guards: image-quality bounds of in-distribution images, measured
    /// after the calibration's own preprocessing, added to a calibration file or bundle
    /// (written back atomically, in the current schema).
    Guards {
        /// A calibration file, or a bundle directory (its calib.json).
        #[arg(long)]
        calibration: PathBuf,
        /// In-distribution images: any data spec (as for fit-model), e.g. frames of your
        /// own camera in a folder.
        #[arg(long)]
        data: String,
        #[command(flatten)]
        guard: GuardArgs,
    },
    /// What a bundle does when its camera degrades: every image clean and through each
    /// corruption (CIFAR-10-C kinds, severities 1-5), judged by the semantic score alone and
    /// with the camera guards; writes corruption.md, .csv and .svg (heat maps) into --out.
    Corruption {
        #[arg(long)]
        bundle: PathBuf,
        /// In-distribution test data (its test split): the reference for AUROC.
        #[arg(long)]
        id: String,
        /// More sets to corrupt, `NAME=SPEC` (test split), e.g. camera frames.
        #[arg(long)]
        set: Vec<String>,
        /// At most this many images per set.
        #[arg(long)]
        limit: Option<usize>,
        /// Comma-separated corruption kinds (default: all).
        #[arg(long)]
        kinds: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rewrite a calibration file (or a bundle's) in the current schema.
    Migrate {
        #[arg(long)]
        calibration: PathBuf,
        /// Where to write it (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
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

/// How the camera guards are calibrated.
#[derive(Args)]
struct GuardArgs {
    /// Split of the guards' images: train | test.
    #[arg(long, default_value = "train")]
    guard_split: String,
    /// At most this many images.
    #[arg(long, default_value_t = oodmon_calibrate::guards::DEFAULT_GUARD_IMAGES)]
    guard_images: usize,
    /// Each bound is this quantile (low side) or 1 - this quantile (high side) of the
    /// images' measures.
    #[arg(long, default_value_t = oodmon_calibration::quality::DEFAULT_GUARD_QUANTILE)]
    guard_quantile: f64,
    /// Then moved outwards by this many interquartile ranges of the measure: for bounds
    /// fitted on a camera's own frames, which vary little (EVALUATION.md, camera health).
    #[arg(long, default_value_t = 0.0)]
    guard_margin: f64,
    /// Widen the bounds so that every corruption kind at this severity (1-5, as `corrupt:`),
    /// applied to the same images, passes as often as they do: what the robot must not stop
    /// for (EVALUATION.md, camera health). Measures the images 15 times.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=5))]
    guard_tolerate: Option<u8>,
}

impl GuardArgs {
    fn data(&self, data: String, required: bool) -> Result<GuardData> {
        Ok(GuardData {
            required,
            data,
            split: parse_split(&self.guard_split)?,
            limit: self.guard_images,
            quantile: self.guard_quantile,
            margin: self.guard_margin,
            tolerate: self.guard_tolerate,
        })
    }
}

/// Clustering, metric and decision rule, shared by `fit` and `fit-model`.
#[derive(Args)]
struct RuleArgs {
    /// class | kmeans:K | kmeans-per-class:K
    #[arg(long, default_value = "class")]
    clusters: String,
    /// euclidean | cosine | mahalanobis | mahalanobis-per-cluster | mahalanobis++ |
    /// mahalanobis++:R (R leading directions, the rest flattened) | relative-mahalanobis |
    /// knn:K
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
    /// In-distribution images to calibrate the camera guards on (a data spec); without it
    /// the calibration has no guards (add them later with `guards`).
    #[arg(long)]
    guard_data: Option<String>,
    #[command(flatten)]
    guard: GuardArgs,
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
    #[arg(
        long,
        default_value = "euclidean,cosine,mahalanobis,mahalanobis++,mahalanobis++:128,relative-mahalanobis,knn:50"
    )]
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
    /// Images for the camera guards (default: the training data).
    #[arg(long)]
    guard_data: Option<String>,
    #[command(flatten)]
    guard: GuardArgs,
    /// Calibrate no camera guards.
    #[arg(long, conflicts_with = "guard_data")]
    no_guards: bool,
    /// The runtime that embeds the images: tract (default), or the backend the edge will
    /// run (onnxruntime, tract-cuda: builds with those cargo features), whose int8 kernels
    /// may round differently; the bundle records it.
    #[arg(long, default_value = "tract")]
    backend: oodmon_runtime::Backend,
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
    /// The runtime that embeds the images (default: the one the bundle was calibrated on).
    #[arg(long)]
    backend: Option<oodmon_runtime::Backend>,
}

fn main() -> ExitCode {
    oodmon_cli::main("oodmon-calibrate", "warn", || run(Cli::parse()))
}

/// The command as a user would type it again: the program by its name, not its path.
fn command_line() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        if let Some(name) = std::path::Path::new(program.as_str()).file_name() {
            *program = name.to_string_lossy().into_owned();
        }
    }
    args
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fit(a) => {
            let files = fit::FitFiles {
                train: a.train,
                labels: a.labels,
                calib: a.calib,
                calib_labels: a.calib_labels,
                class_names: a.class_names,
                encoder: a.encoder,
                preprocessing: a.preprocessing,
                guards: a.guard_data.map(|d| a.guard.data(d, true)).transpose()?,
                out: a.out,
            };
            let summary = fit::fit(&files, a.rule.fit_config()?, a.rule.mode(), command_line())?;
            say!("{summary}");
        }
        Command::Score(a) => say!("{}", evaluate::score(&a.calib, &a.embeddings, &a.out)?),
        Command::Eval(a) => say!(
            "{}",
            evaluate::eval_files(&a.calib, &a.id, &a.ood, a.report.as_deref())?
        ),
        Command::Grid(a) => grid(a)?,
        Command::FitModel(a) => fit_model(a)?,
        Command::EvalModel(a) => say!(
            "{}",
            models::eval_model(
                &a.bundle,
                a.backend,
                &a.id,
                &a.ood,
                a.limit,
                a.report.as_deref(),
            )?
        ),
        Command::Guards {
            calibration,
            data,
            guard,
        } => {
            let g = guards::add_guards(&calibration, &guard.data(data, true)?)?;
            if let Some(v) = g.migrated_from {
                say!("migrated from schema {v}");
            }
            say!("{}", guards::describe(&g.bounds));
            say!("wrote {}", g.out.display());
        }
        Command::Corruption {
            bundle,
            id,
            set,
            limit,
            kinds,
            out,
        } => {
            use oodmon_calibration::corrupt::CorruptionKind;
            let kinds = match kinds {
                Some(list) => parse_list(&list, |k| k.parse::<CorruptionKind>())?,
                None => CorruptionKind::ALL.to_vec(),
            };
            let mut sets = vec![("id".to_string(), id)];
            for s in set {
                match s.split_once('=') {
                    Some((name, spec)) if !name.is_empty() && spec.contains(':') => {
                        sets.push((name.to_string(), spec.to_string()))
                    }
                    _ => anyhow::bail!("--set {s}: expected NAME=SPEC"),
                }
            }
            let job = corruption::CorruptionJob {
                bundle,
                sets,
                limit,
                kinds,
                out: out.clone(),
                command: command_line().join(" "),
            };
            let cells = corruption::corruption_report(&job, |m| eprintln!("{m}"))?;
            say!(
                "{} rows written to {} (and corruption.csv, corruption.svg)",
                cells.len(),
                out.join("corruption.md").display()
            );
        }
        Command::Migrate { calibration, out } => {
            let (out, from) = guards::migrate(&calibration, out.as_deref())?;
            match from {
                Some(v) => say!(
                    "migrated {} from schema {v} to {}",
                    out.display(),
                    oodmon_calibration::SCHEMA_VERSION
                ),
                None => say!(
                    "{} is already schema {}",
                    out.display(),
                    oodmon_calibration::SCHEMA_VERSION
                ),
            }
        }
        Command::TimeModel { model, runs } => {
            say!("| model | median (us) | p99 (us) | runs |");
            say!("|---|---|---|---|");
            for t in models::time_models(&model, runs)? {
                say!(
                    "| {} | {} | {} | {} |",
                    t.model.display(),
                    t.median_us,
                    t.p99_us,
                    t.runs
                );
            }
        }
        Command::EmbedModel {
            model,
            data,
            split,
            limit,
            out,
            labels,
        } => embed_model(&model, &data, &split, limit, &out, labels.as_deref())?,
        Command::Demo { out } => {
            say!("generated embeddings in {}", out.display());
            let (fitted, report) = demo::demo(&out, command_line())?;
            say!("{fitted}\n{report}");
        }
    }
    Ok(())
}

fn grid(a: GridArgs) -> Result<()> {
    let (target_tpr, alpha) = (a.target_tpr, a.alpha);
    let thresholds = parse_list(&a.thresholds, |s| match s {
        "global" => Ok(ThresholdMode::Global { target_tpr }),
        "per-cluster" => Ok(ThresholdMode::PerCluster { target_tpr }),
        "conformal" => Ok(ThresholdMode::Conformal { alpha }),
        other => Err(oodmon_calibration::Error::InvalidParameter {
            what: "threshold",
            reason: format!("{other:?} (expected global, per-cluster or conformal)"),
        }),
    })?;
    let normalize = match a.normalize.as_str() {
        "off" => vec![false],
        "on" => vec![true],
        "both" => vec![false, true],
        other => anyhow::bail!("--normalize {other:?}: expected off, on or both"),
    };
    let cfg = GridConfig {
        clusters: parse_list(&a.clusters, ClusterSpec::parse)?,
        metrics: parse_list(&a.metrics, Metric::parse)?,
        normalize,
        thresholds,
        kmeans: a.kmeans.config(),
        knn_bank: a.kmeans.knn_bank,
    };
    let files = GridFiles {
        train: a.train,
        labels: a.labels,
        calib: a.calib,
        test: a.test,
        ood: a.ood,
    };
    let rows =
        oodmon_calibrate::grid::run_files(&files, &cfg, &a.out, |msg| eprintln!("grid: {msg}"))?;
    say!(
        "{} rows written to {} and {}",
        rows.len(),
        a.out.join("grid.md").display(),
        a.out.join("grid.csv").display()
    );
    Ok(())
}

fn fit_model(a: FitModelArgs) -> Result<()> {
    let calib = match a.calib {
        Some(spec) => CalibSplit::Data {
            spec,
            split: parse_split(&a.calib_split)?,
        },
        None => CalibSplit::Holdout {
            fraction: a.holdout,
            seed: a.rule.kmeans.seed,
        },
    };
    let guards = if a.no_guards {
        None
    } else {
        let required = a.guard_data.is_some();
        Some(
            a.guard
                .data(a.guard_data.unwrap_or_else(|| a.train.clone()), required)?,
        )
    };
    let job = FitModel {
        model: a.model,
        train: a.train,
        calib,
        limit: a.limit,
        config: a.rule.fit_config()?,
        mode: a.rule.mode(),
        preprocessing: a.preprocessing,
        guards,
        backend: a.backend,
        out: a.out,
        command: command_line(),
    };
    say!("{}", models::fit_model(job, |m| eprintln!("{m}"))?);
    Ok(())
}

fn embed_model(
    model: &std::path::Path,
    data: &str,
    split: &str,
    limit: Option<usize>,
    out: &std::path::Path,
    labels: Option<&std::path::Path>,
) -> Result<()> {
    let e = models::embed_model(model, data, parse_split(split)?, limit)?;
    npy::write_embeddings(out, &e.embeddings)?;
    if let Some(l) = labels {
        npy::write_labels(l, &e.labels)?;
    }
    say!(
        "wrote {} embeddings of dimension {} to {}",
        e.embeddings.rows(),
        e.embeddings.dim(),
        out.display()
    );
    Ok(())
}
