//! `oodmon-calibrate fit`: a calibration from embeddings in `.npy` files, with the
//! checksums of its inputs and, when given, the encoder they came from.

use std::path::PathBuf;

use oodmon_calibration::io::sha256_file;
use oodmon_calibration::{
    CalibrationArtifact, Embeddings, FitConfig, Provenance, Score, Scorer, ThresholdMode,
};
use oodmon_runtime::Encoder;

use crate::bundle::{fit_artifact, CalibrationInputs};
use crate::error::{Error, Result};
use crate::guards::{guard_bounds, GuardData};
use crate::inputs::{
    checksum, class_names, load_embeddings, load_labels, preprocessing_spec, same_dim,
};

/// The files a calibration is fitted from.
#[derive(Debug, Clone)]
pub struct FitFiles {
    pub train: PathBuf,
    pub labels: Option<PathBuf>,
    pub calib: PathBuf,
    /// Labels of the calibration split, to report nearest-cluster accuracy.
    pub calib_labels: Option<PathBuf>,
    /// One class name per line, in label order.
    pub class_names: Option<PathBuf>,
    /// The encoder the embeddings came from: its SHA-256 is recorded, and its
    /// preprocessing spec unless `preprocessing` is given.
    pub encoder: Option<PathBuf>,
    pub preprocessing: Option<PathBuf>,
    /// Images to calibrate the camera guards on (needs the preprocessing spec).
    pub guards: Option<GuardData>,
    pub out: PathBuf,
}

/// What `fit` wrote and measured.
#[derive(Debug, Clone)]
pub struct FitSummary {
    pub out: PathBuf,
    pub artifact: CalibrationArtifact,
    /// Nearest-cluster class accuracy on the labelled calibration split.
    pub calib_accuracy: Option<f64>,
    /// Share of calibration samples the (global) rule flags.
    pub flagged: Option<f64>,
}

/// Fits on `files.train`, calibrates on `files.calib`, writes `files.out` atomically.
pub fn fit(
    files: &FitFiles,
    config: FitConfig,
    mode: ThresholdMode,
    command: Vec<String>,
) -> Result<FitSummary> {
    let train = load_embeddings(&files.train)?;
    let labels = match &files.labels {
        Some(p) => Some(load_labels(p, train.rows(), &files.train)?),
        None if config.clusters.needs_labels() => {
            return Err(Error::input(format!(
                "--clusters {} needs --labels",
                config.clusters.name()
            )))
        }
        None => None,
    };
    let calib = load_embeddings(&files.calib)?;
    same_dim(
        &files.calib,
        &calib,
        train.dim(),
        &files.train.display().to_string(),
    )?;
    let calib_labels = match &files.calib_labels {
        Some(p) => Some(load_labels(p, calib.rows(), &files.calib)?),
        None => None,
    };
    let names = match &files.class_names {
        Some(p) => class_names(p)?,
        None => Vec::new(),
    };
    let encoder = files.encoder.as_deref().map(Encoder::load).transpose()?;
    let preprocessing = preprocessing_spec(files.preprocessing.as_deref(), encoder.as_ref())?;
    let encoder_sha256 = files.encoder.as_deref().map(sha256_file).transpose()?;
    let image_quality =
        match (&files.guards, &preprocessing) {
            (Some(g), Some(spec)) => guard_bounds(spec, g)?,
            (Some(_), None) => return Err(Error::input(
                "--guard-data needs the preprocessing spec (--encoder with one in its metadata, \
                 or --preprocessing)",
            )),
            (None, _) => None,
        };
    let mut inputs = vec![
        checksum("train", &files.train)?,
        checksum("calib", &files.calib)?,
    ];
    for (role, p) in [
        ("labels", &files.labels),
        ("calib_labels", &files.calib_labels),
    ] {
        if let Some(p) = p {
            inputs.push(checksum(role, p)?);
        }
    }
    let artifact = fit_artifact(
        CalibrationInputs {
            train: &train,
            labels: labels.as_deref(),
            calib: &calib,
            config,
            mode,
            class_names: names,
            preprocessing,
            image_quality,
            // embeddings from files: taken to be tract's, the edge's default runtime
            embedded_on: oodmon_runtime::Backend::Tract,
            provenance: Provenance::now("oodmon-calibrate", inputs, command),
        },
        encoder_sha256,
    )
    .map_err(|e| {
        e.context(format!(
            "calibrating {} on {}",
            files.train.display(),
            files.calib.display()
        ))
    })?;
    let calib_accuracy = match &calib_labels {
        Some(cl) => class_accuracy(&artifact, &calib, cl)?,
        None => None,
    };
    artifact.save(&files.out)?;
    let t = &artifact.thresholds;
    let flagged = (!matches!(t.mode, ThresholdMode::PerCluster { .. })).then(|| {
        let n = t
            .calibration_scores
            .iter()
            .filter(|&&score| {
                t.is_ood(&Score {
                    score,
                    nearest: usize::MAX,
                })
            })
            .count();
        n as f64 / t.calibration_scores.len().max(1) as f64
    });
    Ok(FitSummary {
        out: files.out.clone(),
        artifact,
        calib_accuracy,
        flagged,
    })
}

/// Nearest-cluster class accuracy over the samples whose nearest cluster has a class.
fn class_accuracy(
    artifact: &CalibrationArtifact,
    calib: &Embeddings,
    labels: &[i64],
) -> Result<Option<f64>> {
    let model = &artifact.model;
    let scores = Scorer::new(model)?.score_batch(calib)?;
    let known = scores
        .iter()
        .filter(|s| model.cluster_class[s.nearest].is_some())
        .count();
    let correct = scores
        .iter()
        .zip(labels)
        .filter(|(s, &l)| model.cluster_class[s.nearest] == Some(l as usize))
        .count();
    Ok((known > 0).then(|| correct as f64 / known as f64))
}

impl std::fmt::Display for FitSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(a) = self.calib_accuracy {
            writeln!(
                f,
                "nearest-cluster class accuracy on the calibration split: {:.2}%",
                100.0 * a
            )?;
        }
        let t = &self.artifact.thresholds;
        write!(
            f,
            "wrote {}: {} clusters, metric {}, {} rule, global threshold {:.6}",
            self.out.display(),
            self.artifact.model.clusters(),
            self.artifact.model.metric.name(),
            t.mode.name(),
            t.global
        )?;
        if let Some(flagged) = self.flagged {
            write!(
                f,
                "\ncalibration samples flagged at this rule: {:.2}% of {}",
                100.0 * flagged,
                t.calibration_scores.len()
            )?;
        }
        if !t.fallback_clusters.is_empty() {
            write!(
                f,
                "\nclusters with too few calibration samples, using the global threshold: {:?}",
                t.fallback_clusters
            )?;
        }
        Ok(())
    }
}
