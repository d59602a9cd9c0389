//! The calibration artifact: a versioned, self-describing JSON file that holds everything
//! needed to score and decide, tied to the encoder it was computed with.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fit::FitConfig;
use crate::io::{sha256_file, write_atomic};
use crate::model::{Model, Score, Scorer, Scratch};
use crate::preprocess::PreprocessSpec;
use crate::quality::QualityBounds;
use crate::threshold::Thresholds;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 11;
/// The oldest schema version this build reads, migrating it on load: version 1 had no
/// image-quality bounds (its frames are not guarded until `oodmon-calibrate guards` adds
/// them); version 2 had no noise and detail bounds (its other bounds are kept, and
/// `guards` refits all of them); version 3 did not name the runtime that computed its
/// embeddings (it was always tract); version 4 had no saturation and black-level bounds
/// (its other bounds are kept, and `guards` refits all of them); version 5 stored the
/// Mahalanobis precision matrices in `f64` (they are factored into the `f32` whitening
/// matrices version 6 stores, the same values the scorer used); version 6 had no dark
/// flat, darkest-value and saturated-share bounds (its other bounds are kept, and `guards`
/// refits all of them); version 7 could not record a tolerated corruption severity (its
/// bounds tolerate none, which is what they were fitted for) and had no bounds on the
/// frame's own blocks and duplicates (its frame-noise bounds are kept without them until
/// `guards` refits them); version 8 had no radial-detail bound (zoom blur; its other bounds
/// are kept, and `guards` refits all of them); version 9 could not store the low-rank
/// precision of `mahalanobis++:R` (it never holds one); versions 6 to 10 stored the
/// whitening factors uncompressed (`f32-lower`, read as they are; this build writes them byte-shuffled
/// and zlib-compressed, the same values).
pub const OLDEST_SCHEMA_VERSION: u32 = 1;
const FORMAT: &str = "oodmon-calibration";

/// Summary statistics of the ID calibration scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub count: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl ScoreSummary {
    pub fn of(sorted: &[f64]) -> Self {
        let n = sorted.len().max(1) as f64;
        let mean = sorted.iter().sum::<f64>() / n;
        let var = sorted.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let q = |p: f64| {
            if sorted.is_empty() {
                f64::NAN
            } else {
                sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
            }
        };
        Self {
            count: sorted.len(),
            min: q(0.0),
            max: q(1.0),
            mean,
            std: var.sqrt(),
            p50: q(0.5),
            p90: q(0.9),
            p95: q(0.95),
            p99: q(0.99),
        }
    }
}

/// A checksum of an input the calibration was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputChecksum {
    pub role: String,
    pub path: String,
    pub sha256: String,
}

/// Where and how the artifact was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub tool: String,
    pub version: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub inputs: Vec<InputChecksum>,
    #[serde(default)]
    pub command: Vec<String>,
}

impl Provenance {
    /// Provenance stamped now by this crate's version.
    pub fn now(tool: &str, inputs: Vec<InputChecksum>, command: Vec<String>) -> Self {
        Self {
            tool: tool.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            inputs,
            command,
        }
    }
}

/// Everything the runtime needs to turn an embedding into a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationArtifact {
    pub format: String,
    pub schema_version: u32,
    pub embedding_dim: usize,
    /// How the model was fitted (clusters, metric, normalisation, k-means settings).
    pub fit: FitConfig,
    pub model: Model,
    pub thresholds: Thresholds,
    /// Class names by label; may be empty when the data had no names.
    pub class_names: Vec<String>,
    pub calibration_summary: ScoreSummary,
    /// SHA-256 of the encoder (ONNX) file whose embeddings this calibrates, if known.
    pub encoder_sha256: Option<String>,
    pub preprocessing: Option<PreprocessSpec>,
    /// Image-quality bounds of in-distribution frames (schema 2): frames outside them raise
    /// a camera FAULT on the edge. `None` when the calibration saw no images (fitted from
    /// embeddings alone, or migrated from schema 1).
    #[serde(default)]
    pub image_quality: Option<QualityBounds>,
    /// The runtime backend whose embeddings the thresholds were fitted on (schema 4):
    /// `tract`, or another backend's name when calibrated on it, since int8 kernels differ
    /// between runtimes. The edge runs it without a cross-check on that backend, and
    /// compares any other backend against it.
    pub embedded_on: String,
    pub provenance: Provenance,
}

/// The backend a calibration's embeddings come from when nothing else is said: the edge's
/// default runtime.
pub const DEFAULT_EMBEDDED_ON: &str = "tract";

/// A decision about one embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub score: f64,
    pub nearest: usize,
    pub p_value: f64,
    pub threshold: f64,
    pub ood: bool,
}

impl CalibrationArtifact {
    /// Assembles an artifact; `validate` is run so that nothing inconsistent is ever written.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fit: FitConfig,
        model: Model,
        thresholds: Thresholds,
        class_names: Vec<String>,
        encoder_sha256: Option<String>,
        preprocessing: Option<PreprocessSpec>,
        provenance: Provenance,
    ) -> Result<Self> {
        let a = Self {
            format: FORMAT.into(),
            schema_version: SCHEMA_VERSION,
            embedding_dim: model.dim,
            calibration_summary: ScoreSummary::of(&thresholds.calibration_scores),
            fit,
            model,
            thresholds,
            class_names,
            encoder_sha256,
            preprocessing,
            image_quality: None,
            embedded_on: DEFAULT_EMBEDDED_ON.into(),
            provenance,
        };
        a.validate()?;
        Ok(a)
    }

    /// Names the backend whose embeddings this calibration was fitted on.
    pub fn with_embedded_on(mut self, backend: &str) -> Result<Self> {
        self.embedded_on = backend.into();
        self.validate()?;
        Ok(self)
    }

    /// Checks every invariant the runtime relies on.
    pub fn validate(&self) -> Result<()> {
        if self.format != FORMAT {
            return Err(Error::InvalidArtifact(format!(
                "format is {:?}, not {FORMAT:?}",
                self.format
            )));
        }
        if self.schema_version != SCHEMA_VERSION {
            return Err(Error::UnknownSchemaVersion {
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.model.dim != self.embedding_dim {
            return Err(Error::DimensionMismatch {
                what: "model".into(),
                expected: self.embedding_dim,
                found: self.model.dim,
            });
        }
        if self.fit.metric != self.model.metric || self.fit.normalizes() != self.model.normalize {
            return Err(Error::InvalidArtifact(
                "fit configuration and model disagree on metric or normalisation".into(),
            ));
        }
        Scorer::new(&self.model)?;
        let t = &self.thresholds;
        let k = self.model.clusters();
        if !t.global.is_finite() || t.per_cluster.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidArtifact(
                "thresholds hold NaN or infinite values".into(),
            ));
        }
        if !t.per_cluster.is_empty() && t.per_cluster.len() != k {
            return Err(Error::InvalidArtifact(format!(
                "{} per-cluster thresholds for {k} clusters",
                t.per_cluster.len()
            )));
        }
        if matches!(t.mode, crate::ThresholdMode::PerCluster { .. }) && t.per_cluster.len() != k {
            return Err(Error::InvalidArtifact(
                "per-cluster mode without per-cluster thresholds".into(),
            ));
        }
        if t.calibration_scores.is_empty()
            || t.calibration_scores.iter().any(|v| !v.is_finite())
            || t.calibration_scores.windows(2).any(|w| w[0] > w[1])
        {
            return Err(Error::InvalidArtifact(
                "calibration scores must be finite, sorted and non-empty".into(),
            ));
        }
        if let Some(max) = self.model.cluster_class.iter().flatten().max() {
            if !self.class_names.is_empty() && *max >= self.class_names.len() {
                return Err(Error::InvalidArtifact(format!(
                    "cluster class {max} has no name ({} class names)",
                    self.class_names.len()
                )));
            }
        }
        if let Some(h) = &self.encoder_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::InvalidArtifact(format!(
                    "encoder hash {h:?} is not a SHA-256"
                )));
            }
        }
        if let Some(p) = &self.preprocessing {
            p.validate()?;
        }
        if self.embedded_on.is_empty()
            || !self
                .embedded_on
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(Error::InvalidArtifact(format!(
                "embedded_on {:?} is not a backend name",
                self.embedded_on
            )));
        }
        if let Some(q) = &self.image_quality {
            if self.preprocessing.is_none() {
                return Err(Error::InvalidArtifact(
                    "image-quality bounds without the preprocessing they were measured after"
                        .into(),
                ));
            }
            q.validate()?;
        }
        Ok(())
    }

    /// Sets the image-quality bounds (validated).
    pub fn with_image_quality(mut self, bounds: QualityBounds) -> Result<Self> {
        self.image_quality = Some(bounds);
        self.validate()?;
        Ok(self)
    }

    /// Parses and validates an artifact from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        // Read the version first, so a newer file says so instead of failing to parse.
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(Error::ArtifactParse)?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) if (OLDEST_SCHEMA_VERSION as u64..SCHEMA_VERSION as u64).contains(&v) => {
                migrate(&mut value, v);
            }
            Some(v) => {
                return Err(Error::UnknownSchemaVersion {
                    found: v.min(u32::MAX as u64) as u32,
                    supported: SCHEMA_VERSION,
                })
            }
            None => {
                return Err(Error::InvalidArtifact(match value.get("schema_version") {
                    None => "no schema_version (is this an oodmon calibration file?)".into(),
                    Some(v) => format!(
                        "schema_version {v} is not a whole number (write it without quotes, e.g. \"schema_version\": {SCHEMA_VERSION})"
                    ),
                }))
            }
        }
        let mut a: Self = serde_json::from_value(value).map_err(Error::ArtifactParse)?;
        // precision matrices (schema 5 and older) become whitening factors
        a.model.upgrade()?;
        a.validate()?;
        Ok(a)
    }

    /// The schema version of an artifact file's text, before any migration.
    pub fn schema_version_of(text: &str) -> Option<u32> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        value
            .get("schema_version")?
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
    }

    #[allow(clippy::expect_used)] // plain structs, string-keyed maps: serde_json cannot fail
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("artifact serialises")
    }

    /// Loads and validates an artifact file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text)
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.validate()?;
        let json = self.to_json();
        write_atomic(path.as_ref(), |w| w.write_all(json.as_bytes()))
    }

    /// Fails unless this calibration belongs to the encoder with the given SHA-256.
    pub fn check_encoder_hash(&self, sha256: &str) -> Result<()> {
        match &self.encoder_sha256 {
            Some(h) if h.eq_ignore_ascii_case(sha256) => Ok(()),
            Some(h) => Err(Error::EncoderHashMismatch {
                expected: h.clone(),
                found: sha256.to_string(),
            }),
            None => Err(Error::InvalidArtifact(
                "the calibration names no encoder hash; refit it against the encoder".into(),
            )),
        }
    }

    /// Hashes the encoder file and checks it against the artifact.
    pub fn check_encoder_file(&self, encoder: impl AsRef<Path>) -> Result<()> {
        self.check_encoder_hash(&sha256_file(encoder.as_ref())?)
    }

    /// A ready-to-run detector.
    pub fn detector(&self) -> Result<Detector> {
        Ok(Detector {
            scorer: Scorer::new(&self.model)?,
            thresholds: self.thresholds.clone(),
        })
    }
}

/// Upgrades an older artifact's JSON to the current schema, in place.
fn migrate(value: &mut serde_json::Value, from: u64) {
    if from < 2 {
        // schema 2 added the optional image-quality bounds; a schema 1 file has none
        if let Some(o) = value.as_object_mut() {
            o.insert("image_quality".into(), serde_json::Value::Null);
        }
    }
    // schema 3 added the optional noise and detail bounds: a schema 2 file reads as it is,
    // without them
    // schema 5 added the optional saturation and black-level bounds: likewise
    // schema 6 stores whitening factors instead of precision matrices: `Model::upgrade`
    // factors those of an older file after parsing
    // schema 7 added the optional dark flat, darkest-value and saturated-share bounds: a
    // schema 6 file reads as it is, without them
    // schema 8 added the optional tolerated corruption severity of the bounds (a schema 7
    // file's bounds tolerate none) and the optional frame blocks and duplicates bounds: a
    // schema 7 file reads as it is, without them
    // schema 9 added the optional radial-detail bound: a schema 8 file reads as it is,
    // without it
    // schema 10 added the optional low-rank precision (`model.subspace`) of
    // `mahalanobis++:R`: a schema 9 file reads as it is, without it
    // schema 11 writes the whitening factors compressed (`f32-lower-shuffle-zlib`): the
    // uncompressed `f32-lower` ones of schemas 6 to 10 read as they are
    if let Some(o) = value.as_object_mut() {
        if from < 4 {
            // schema 4 names the backend the embeddings came from; before, always tract
            o.insert("embedded_on".into(), DEFAULT_EMBEDDED_ON.into());
        }
        o.insert("schema_version".into(), SCHEMA_VERSION.into());
    }
}

/// Scorer plus thresholds: embedding in, decision out.
#[derive(Debug, Clone)]
pub struct Detector {
    pub scorer: Scorer,
    pub thresholds: Thresholds,
}

impl Detector {
    pub fn decide_score(&self, s: Score) -> Decision {
        Decision {
            score: s.score,
            nearest: s.nearest,
            p_value: self.thresholds.p_value(s.score),
            threshold: self.thresholds.threshold_for(s.nearest),
            ood: self.thresholds.is_ood(&s),
        }
    }

    /// Scores and decides one embedding without allocating.
    pub fn decide(&self, x: &[f32], scratch: &mut Scratch) -> Result<Decision> {
        Ok(self.decide_score(self.scorer.score_one(x, scratch)?))
    }
}
