//! From embeddings to a calibration artifact, and from an encoder and its calibration to
//! a deployable bundle: the one path that `oodmon-calibrate fit`, `fit-model` and the
//! trainer's `fit` all take.

use std::path::Path;

use oodmon_calibration::io::sha256_bytes;
use oodmon_calibration::{
    calibrate, CalibrationArtifact, Embeddings, FitConfig, PreprocessSpec, Provenance,
    QualityBounds, ThresholdMode,
};
use oodmon_runtime::{Backend, Bundle};

use crate::error::{Error, Result};

/// What a calibration is fitted from, wherever the embeddings came from (`.npy` files,
/// image data through tract, or libtorch).
#[derive(Debug, Clone)]
pub struct CalibrationInputs<'a> {
    /// ID training embeddings: the clusters.
    pub train: &'a Embeddings,
    /// Their class labels (needed by class and per-class clusterings).
    pub labels: Option<&'a [i64]>,
    /// ID calibration embeddings (not used for training): the thresholds.
    pub calib: &'a Embeddings,
    pub config: FitConfig,
    pub mode: ThresholdMode,
    pub class_names: Vec<String>,
    pub preprocessing: Option<PreprocessSpec>,
    /// Image-quality bounds of ID images (the edge's camera guards), when images were seen.
    pub image_quality: Option<QualityBounds>,
    /// The backend whose embeddings these are (tract unless calibrated on another).
    pub embedded_on: Backend,
    pub provenance: Provenance,
}

/// Fits clusters and thresholds and makes the versioned artifact (nothing is written).
pub fn fit_artifact(
    inputs: CalibrationInputs<'_>,
    encoder_sha256: Option<String>,
) -> Result<CalibrationArtifact> {
    let (model, thresholds) = calibrate(
        inputs.train,
        inputs.labels,
        inputs.calib,
        &inputs.config,
        inputs.mode,
    )?;
    let artifact = CalibrationArtifact::new(
        inputs.config,
        model,
        thresholds,
        inputs.class_names,
        encoder_sha256,
        inputs.preprocessing,
        inputs.provenance,
    )?
    .with_embedded_on(inputs.embedded_on.name())?;
    Ok(match inputs.image_quality {
        Some(bounds) => artifact.with_image_quality(bounds)?,
        None => artifact,
    })
}

/// Builds a deployable bundle in `out`: the calibration fitted for `encoder` (its SHA-256
/// recorded; a preprocessing spec is required, as the edge needs it), then the encoder and
/// `calib.json` written atomically.
pub fn build(
    encoder: &[u8],
    inputs: CalibrationInputs<'_>,
    out: &Path,
) -> Result<CalibrationArtifact> {
    if inputs.preprocessing.is_none() {
        return Err(Error::input(
            "a bundle needs the encoder's preprocessing spec (in its metadata or given)",
        ));
    }
    let artifact = fit_artifact(inputs, Some(sha256_bytes(encoder)))?;
    Bundle::write(out, encoder, &artifact)?;
    Ok(artifact)
}

/// Indices kept and held out: `fraction` of each class, seeded and stratified.
pub fn stratified_holdout(
    labels: &[i64],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::input(format!(
            "--holdout {fraction}: must be in (0, 1)"
        )));
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

/// One line about a written bundle or artifact, as the commands print it.
pub fn describe(artifact: &CalibrationArtifact) -> String {
    format!(
        "{} clusters, {} threshold {:.6}",
        artifact.model.clusters(),
        artifact.thresholds.mode.name(),
        artifact.thresholds.global
    )
}
