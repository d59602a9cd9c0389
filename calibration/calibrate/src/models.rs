//! Commands that go through an ONNX encoder in tract with the shared preprocessing, exactly
//! as the edge runs it: image data to embeddings (`embed-model`), to a bundle
//! (`fit-model`), a bundle's evaluation on image data (`eval-model`) and the encoder's
//! latency (`time-model`).

use std::path::{Path, PathBuf};

use oodmon_calibration::{FitConfig, PreprocessSpec, Provenance, ThresholdMode};
use oodmon_data::{embed_dataset, DataSpec, Embedded, Split};
use oodmon_runtime::{Backend, Bundle, Encoder};

use crate::bundle::{build, stratified_holdout, CalibrationInputs};
use crate::error::{Error, Result};
use crate::evaluate::{evaluate, EvalReport};
use crate::guards::{guard_bounds, GuardData};
use crate::inputs::{checksum, preprocessing_spec};

/// The encoder's own preprocessing spec (from its metadata), or an error saying how to
/// give one.
fn spec_of(encoder: &Encoder, file: Option<&Path>) -> Result<PreprocessSpec> {
    preprocessing_spec(file, Some(encoder))?.ok_or_else(|| {
        Error::input(format!(
            "{}: no preprocessing spec in its metadata; pass --preprocessing",
            encoder.path().display()
        ))
    })
}

/// Up to `limit` images of a split of `data`, embedded through the encoder in `model`.
pub fn embed_model(
    model: &Path,
    data: &str,
    split: Split,
    limit: Option<usize>,
) -> Result<Embedded> {
    let encoder = Encoder::load(model)?;
    let spec = spec_of(&encoder, None)?;
    Ok(embed_dataset(
        &encoder,
        &spec,
        &data.parse::<DataSpec>()?,
        split,
        limit,
    )?)
}

/// Where `fit-model` takes its calibration split from.
#[derive(Debug, Clone)]
pub enum CalibSplit {
    /// A split of another data set.
    Data { spec: String, split: Split },
    /// This fraction of each training class, held out (seeded).
    Holdout { fraction: f64, seed: u64 },
}

/// `fit-model`'s inputs.
#[derive(Debug, Clone)]
pub struct FitModel {
    pub model: PathBuf,
    pub train: String,
    pub calib: CalibSplit,
    pub limit: Option<usize>,
    pub config: FitConfig,
    pub mode: ThresholdMode,
    pub preprocessing: Option<PathBuf>,
    /// The camera guards' calibration images (`None`: no guards).
    pub guards: Option<GuardData>,
    /// The runtime that embeds the images, recorded in the bundle: the edge runs the
    /// bundle on it as calibrated, and checks any other backend against it.
    pub backend: Backend,
    pub out: PathBuf,
    pub command: Vec<String>,
}

/// What `fit-model` wrote.
#[derive(Debug, Clone)]
pub struct BundleSummary {
    pub out: PathBuf,
    pub train_rows: usize,
    pub calib_rows: usize,
    pub description: String,
}

impl std::fmt::Display for BundleSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote bundle {}: {} training and {} calibration embeddings, {}",
            self.out.display(),
            self.train_rows,
            self.calib_rows,
            self.description
        )
    }
}

/// Embeds the training (and calibration) images through the encoder and builds a bundle.
pub fn fit_model(a: FitModel, progress: impl Fn(&str)) -> Result<BundleSummary> {
    let bytes = std::fs::read(&a.model).map_err(|e| Error::io(&a.model, e))?;
    let encoder = Encoder::from_bytes_on(&bytes, &a.model, a.backend)?;
    let spec = spec_of(&encoder, a.preprocessing.as_deref())?;
    progress(&format!("embedding {} through {}", a.train, a.backend));
    let train_spec: DataSpec = a.train.parse()?;
    let train = embed_dataset(&encoder, &spec, &train_spec, Split::Train, a.limit)?;
    let (train_e, train_labels, calib_e) = match &a.calib {
        CalibSplit::Data { spec: data, split } => {
            let calib = embed_dataset(&encoder, &spec, &data.parse()?, *split, None)?;
            (train.embeddings, train.labels, calib.embeddings)
        }
        CalibSplit::Holdout { fraction, seed } => {
            let (keep, hold) = stratified_holdout(&train.labels, *fraction, *seed)?;
            (
                train.embeddings.select(&keep),
                keep.iter().map(|&i| train.labels[i]).collect(),
                train.embeddings.select(&hold),
            )
        }
    };
    let image_quality = match &a.guards {
        Some(g) => {
            progress(&format!("measuring image quality of {}", g.data));
            guard_bounds(&spec, g)?
        }
        None => None,
    };
    let artifact = build(
        &bytes,
        CalibrationInputs {
            train: &train_e,
            labels: Some(&train_labels),
            calib: &calib_e,
            config: a.config,
            mode: a.mode,
            class_names: train.class_names,
            preprocessing: Some(spec),
            image_quality,
            embedded_on: a.backend,
            provenance: Provenance::now(
                "oodmon-calibrate fit-model",
                vec![checksum("encoder", &a.model)?],
                a.command,
            ),
        },
        &a.out,
    )?;
    Ok(BundleSummary {
        out: a.out,
        train_rows: train_e.rows(),
        calib_rows: calib_e.rows(),
        description: crate::bundle::describe(&artifact),
    })
}

/// Evaluates a bundle on the test split of ID data and of `SPEC` or `NAME=SPEC` OOD sets.
pub fn eval_model(
    bundle_dir: &Path,
    backend: Option<Backend>,
    id: &str,
    ood: &[String],
    limit: Option<usize>,
    report: Option<&Path>,
) -> Result<EvalReport> {
    let in_bundle = |e| Error::from(e).context(format!("bundle {}", bundle_dir.display()));
    let bundle = Bundle::load(bundle_dir).map_err(in_bundle)?;
    let bundle = match backend.unwrap_or(bundle.calibrated_on()) {
        Backend::Tract => bundle,
        other => Bundle::load_on(bundle_dir, other).map_err(in_bundle)?,
    };
    let spec = bundle.preprocessing().clone();
    let id_e = embed_dataset(&bundle.encoder, &spec, &id.parse()?, Split::Test, limit)?;
    let mut sets = Vec::new();
    for s in ood {
        let (name, data) = match s.split_once('=') {
            Some((n, d)) if !n.is_empty() && d.contains(':') => (n.to_string(), d.to_string()),
            _ => (s.clone(), s.clone()),
        };
        let e = embed_dataset(&bundle.encoder, &spec, &data.parse()?, Split::Test, limit)?;
        sets.push((name, e.embeddings));
    }
    evaluate(
        &bundle.artifact,
        &bundle.detector,
        &id_e.embeddings,
        &sets,
        report,
        &bundle_dir.display().to_string(),
    )
}

/// One encoder's latency on this machine: median and p99 per image, microseconds.
#[derive(Debug, Clone)]
pub struct ModelTiming {
    pub model: PathBuf,
    pub median_us: u32,
    pub p99_us: u32,
    pub runs: usize,
}

/// Times `runs` inferences of each model in one session (after 5 untimed ones).
pub fn time_models(models: &[PathBuf], runs: usize) -> Result<Vec<ModelTiming>> {
    models
        .iter()
        .map(|path| {
            let mut times = Encoder::load(path)?.session()?.time(5, runs.max(1))?;
            times.sort_unstable();
            Ok(ModelTiming {
                model: path.clone(),
                median_us: times[times.len() / 2],
                p99_us: times[(times.len() * 99 / 100).min(times.len() - 1)],
                runs: times.len(),
            })
        })
        .collect()
}
