//! The camera guards' calibration: image-quality bounds of in-distribution images, taken
//! on the encoder's input tensor as the edge takes them on every frame, stored in the
//! calibration artifact (`fit-model` does it on its own; `guards` adds or refits them on a
//! calibration or bundle made without images, and `migrate` upgrades an old artifact).

use std::path::{Path, PathBuf};

use oodmon_calibration::corrupt::{Corruption, CorruptionKind};
use oodmon_calibration::quality::{ImageQuality, QualityBounds, MIN_QUALITY_IMAGES};
use oodmon_calibration::{CalibrationArtifact, PreprocessSpec};
use oodmon_data::{image_quality, DataSpec, Split};

use crate::error::{Error, Result};

/// Images the guards are calibrated on unless told otherwise.
pub const DEFAULT_GUARD_IMAGES: usize = 10_000;

/// Where the guards' calibration images come from, and how tight the bounds are.
#[derive(Debug, Clone)]
pub struct GuardData {
    pub data: String,
    pub split: Split,
    pub limit: usize,
    pub quantile: f64,
    /// Each bound moved outwards by this many interquartile ranges of its measure.
    pub margin: f64,
    /// Bounds widened so that every corruption kind at this severity, applied to the
    /// same images, passes as often as they do (`None`: clean images only).
    pub tolerate: Option<u8>,
    /// Whether too few images is an error (asked for) or means no guards (by default).
    pub required: bool,
}

/// Measures the images and fits the bounds; `None` when too few images were found and the
/// guards were not asked for.
pub fn guard_bounds(spec: &PreprocessSpec, g: &GuardData) -> Result<Option<QualityBounds>> {
    let data: DataSpec = g.data.parse()?;
    let measures: Vec<ImageQuality> = image_quality(spec, &data, g.split, Some(g.limit))?;
    if measures.len() < MIN_QUALITY_IMAGES && !g.required {
        log::warn!(
            "{}: {} images are too few to calibrate the camera guards (at least \
             {MIN_QUALITY_IMAGES}); the calibration has none",
            g.data,
            measures.len()
        );
        return Ok(None);
    }
    // the same images through every corruption at the tolerated severity
    let mut tolerated = Vec::new();
    if let Some(severity) = g.tolerate {
        for kind in CorruptionKind::ALL {
            let corrupted = DataSpec::Corrupt {
                corruption: Corruption::new(kind, severity)?,
                inner: Box::new(data.clone()),
            };
            log::info!("measuring {} at severity {severity}", kind.name());
            tolerated.push(image_quality(spec, &corrupted, g.split, Some(g.limit))?);
        }
    }
    let tolerated: Vec<&[ImageQuality]> = tolerated.iter().map(Vec::as_slice).collect();
    QualityBounds::fit_tolerating(&measures, &tolerated, g.quantile, g.margin)
        .map(|b| {
            Some(QualityBounds {
                tolerated_severity: g.tolerate,
                source: format!(
                    "{} ({} split)",
                    g.data,
                    match g.split {
                        Split::Train => "train",
                        Split::Test => "test",
                    }
                ),
                ..b
            })
        })
        .map_err(|e| Error::from(e).context(format!("image-quality bounds from {}", g.data)))
}

/// The artifact file of a bundle directory or the file itself.
pub fn artifact_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("calib.json")
    } else {
        path.to_path_buf()
    }
}

/// What `guards` did.
#[derive(Debug, Clone)]
pub struct GuardsSummary {
    pub out: PathBuf,
    pub bounds: QualityBounds,
    pub migrated_from: Option<u32>,
}

/// Adds (or replaces) the image-quality bounds of a calibration, measured after its own
/// preprocessing, and writes it back atomically (migrated to the current schema).
pub fn add_guards(calibration: &Path, g: &GuardData) -> Result<GuardsSummary> {
    let file = artifact_path(calibration);
    let (artifact, migrated_from) = load_with_version(&file)?;
    let spec = artifact.preprocessing.clone().ok_or_else(|| {
        Error::input(format!(
            "{}: no preprocessing spec, so frames cannot be measured as the edge sees them; \
             refit it with --encoder or --preprocessing",
            file.display()
        ))
    })?;
    let bounds = guard_bounds(
        &spec,
        &GuardData {
            required: true,
            ..g.clone()
        },
    )?
    .ok_or_else(|| Error::input("no images to calibrate the guards on"))?;
    let artifact = artifact.with_image_quality(bounds.clone())?;
    artifact.save(&file)?;
    Ok(GuardsSummary {
        out: file,
        bounds,
        migrated_from,
    })
}

/// Loads an artifact of any readable schema; the version it was written in is returned
/// when it was older than this build's.
pub fn load_with_version(file: &Path) -> Result<(CalibrationArtifact, Option<u32>)> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    let version = CalibrationArtifact::schema_version_of(&text);
    let artifact = CalibrationArtifact::from_json(&text)
        .map_err(|e| Error::from(e).context(file.display().to_string()))?;
    Ok((
        artifact,
        version.filter(|&v| v < oodmon_calibration::SCHEMA_VERSION),
    ))
}

/// Rewrites an artifact in the current schema (atomically; `out` defaults to the same
/// file). Returns the version it was written in.
pub fn migrate(calibration: &Path, out: Option<&Path>) -> Result<(PathBuf, Option<u32>)> {
    let file = artifact_path(calibration);
    let (artifact, from) = load_with_version(&file)?;
    let out = out.map_or(file, Path::to_path_buf);
    artifact.save(&out)?;
    Ok((out, from))
}

/// The bounds as a line for people.
pub fn describe(b: &QualityBounds) -> String {
    format!("image-quality bounds: {b}")
}
