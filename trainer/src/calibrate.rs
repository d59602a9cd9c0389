//! A run's calibration in one step: its ID training split makes the clusters and its
//! held-out split the thresholds, embedded by libtorch (a `calib.json`) or, for a bundle,
//! by the exported (optionally int8) encoder in tract, exactly as the edge will run it.
//! The artifact and the bundle come from `oodmon_calibrate::bundle`, the same path as
//! `oodmon-calibrate fit-model`.

use std::path::PathBuf;

use oodmon_calibrate::bundle::{build, fit_artifact, CalibrationInputs};
use oodmon_calibration::artifact::InputChecksum;
use oodmon_calibration::io::sha256_file;
use oodmon_calibration::quality::{
    ImageQuality, QualityBounds, DEFAULT_GUARD_QUANTILE, MIN_QUALITY_IMAGES,
};
use oodmon_calibration::{CalibrationArtifact, Embeddings, FitConfig, Provenance, ThresholdMode};
use oodmon_data::embed::{dataset_inputs, embed_loaded, image_quality_loaded};
use oodmon_runtime::Encoder;

use crate::data::Dataset;
use crate::embedding::load_net;
use crate::error::{Result, TrainError};
use crate::export::{export_onnx, provenance, Int8};
use crate::train::{self, RunDir};

/// A run's calibration request.
#[derive(Debug, Clone)]
pub struct FitRequest {
    pub run: PathBuf,
    pub config: FitConfig,
    pub mode: ThresholdMode,
    /// libtorch device when no bundle is made.
    pub device: String,
    /// Write a bundle directory (encoder + calibration through tract) instead of a
    /// `calib.json`; with `Some(int8)` the encoder is quantized first.
    pub bundle: Option<Option<Int8>>,
    pub out: PathBuf,
    pub command: Vec<String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct FitOutcome {
    pub out: PathBuf,
    pub artifact: CalibrationArtifact,
    pub train_rows: usize,
    pub calib_rows: usize,
}

impl std::fmt::Display for FitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {}: {} clusters, {} on {} training and {} calibration embeddings, threshold {:.6}",
            self.out.display(),
            self.artifact.model.clusters(),
            self.artifact.model.metric.name(),
            self.train_rows,
            self.calib_rows,
            self.artifact.thresholds.global
        )
    }
}

pub fn fit_run(r: FitRequest) -> Result<FitOutcome> {
    let rd = RunDir(r.run.clone());
    let cfg = rd.load_config()?;
    let device = match r.bundle {
        Some(_) => tch::Device::Cpu,
        None => train::parse_device(&r.device)?,
    };
    let net = load_net(&rd, &cfg.model, device)?;
    let (train_ds, val_ds) = train::splits(&cfg)?;
    if val_ds.is_empty() {
        return Err(TrainError::Request(format!(
            "{}: the run holds out no calibration split (val_fraction 0)",
            rd.config().display()
        )));
    }
    let spec = &cfg.preprocessing;
    // with a bundle, the embeddings come from the exported encoder in tract
    let encoder = match &r.bundle {
        Some(int8) => {
            let mut bytes = export_onnx(&net, spec, &provenance(&rd, &cfg)?, false)?;
            if let Some(q) = int8 {
                let rows: Vec<usize> = (0..train_ds.len().min(q.samples)).collect();
                let images = dataset_inputs(&train_ds, &rows, spec)?;
                bytes = oodmon_onnx::quantize(&bytes, &images, q.range, q.form)?;
            }
            let enc = Encoder::from_bytes(&bytes, &r.out.join("encoder.onnx"))?;
            Some((bytes, enc))
        }
        None => None,
    };
    let embed = |ds: &Dataset| -> Result<Embeddings> {
        Ok(match &encoder {
            Some((_, enc)) => embed_loaded(enc, spec, ds)?,
            None => Embeddings::new(
                ds.len(),
                net.encoder.dim(),
                train::embed_dataset(&net, ds, spec, device, 256)?,
            )?,
        })
    };
    let (train_e, calib_e) = (embed(&train_ds)?, embed(&val_ds)?);
    let mut config = r.config;
    config.kmeans.seed = cfg.seed;
    let checksums = [("weights", rd.weights()), ("run_config", rd.config())]
        .into_iter()
        .map(|(role, p)| {
            Ok(InputChecksum {
                role: role.into(),
                sha256: sha256_file(&p)?,
                path: p.display().to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let inputs = CalibrationInputs {
        train: &train_e,
        labels: Some(&train_ds.labels),
        calib: &calib_e,
        config,
        mode: r.mode,
        class_names: train_ds.class_names.clone(),
        preprocessing: Some(spec.clone()),
        // the camera guards, on the calibration images as the edge measures frames
        image_quality: guard_bounds(&image_quality_loaded(&val_ds, spec)?)?,
        // float embeddings from libtorch equal tract's; int8 ones are tract's
        embedded_on: oodmon_runtime::Backend::Tract,
        provenance: Provenance::now("oodmon-trainer", checksums, r.command),
    };
    let artifact = match &encoder {
        Some((bytes, _)) => build(bytes, inputs, &r.out)?,
        None => {
            let artifact = fit_artifact(inputs, None)?;
            artifact.save(&r.out)?;
            artifact
        }
    };
    Ok(FitOutcome {
        out: r.out,
        artifact,
        train_rows: train_e.rows(),
        calib_rows: calib_e.rows(),
    })
}

/// The camera guards' bounds from the calibration images, when there are enough of them.
fn guard_bounds(measures: &[ImageQuality]) -> Result<Option<QualityBounds>> {
    if measures.len() < MIN_QUALITY_IMAGES {
        log::warn!(
            "{} calibration images are too few for the camera guards (at least \
             {MIN_QUALITY_IMAGES}); the calibration has none",
            measures.len()
        );
        return Ok(None);
    }
    Ok(Some(QualityBounds {
        source: "the run's held-out calibration split".into(),
        ..QualityBounds::fit(measures, DEFAULT_GUARD_QUANTILE)?
    }))
}
