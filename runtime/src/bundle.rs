//! The deployable bundle: a directory with `encoder.onnx` and `calib.json`, the calibration
//! naming the encoder's SHA-256 and the preprocessing spec. Loading checks that the two
//! belong together before anything runs.

use std::path::{Path, PathBuf};

use oodmon_calibration::io::{sha256_bytes, write_atomic};
use oodmon_calibration::{
    CalibrationArtifact, Detector, Error as CalibrationError, PreprocessSpec,
};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::session::Encoder;

pub const ENCODER_FILE: &str = "encoder.onnx";
pub const CALIBRATION_FILE: &str = "calib.json";

/// An encoder and its calibration, checked against each other.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub encoder: Encoder,
    pub artifact: CalibrationArtifact,
    pub detector: Detector,
    preprocessing: PreprocessSpec,
    calibrated_on: Backend,
}

impl Bundle {
    /// Loads and cross-checks a bundle: the encoder's hash, input size and embedding size
    /// must be the ones the calibration was made for.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(dir, Backend::Tract)
    }

    /// [`Bundle::load`], the encoder prepared for `backend`.
    pub fn load_on(dir: impl AsRef<Path>, backend: Backend) -> Result<Self> {
        let dir = dir.as_ref();
        let calib = dir.join(CALIBRATION_FILE);
        let artifact = CalibrationArtifact::load(&calib)?;
        let encoder_path = dir.join(ENCODER_FILE);
        let bytes = std::fs::read(&encoder_path).map_err(|cause| Error::Io {
            path: encoder_path.clone(),
            cause,
        })?;
        Self::from_parts_on(dir, &bytes, artifact, backend)
    }

    /// A bundle from an encoder's bytes and its calibration (e.g. compiled into a binary);
    /// `dir` names it in errors. The same checks as [`Bundle::load`].
    pub fn from_parts(dir: &Path, bytes: &[u8], artifact: CalibrationArtifact) -> Result<Self> {
        Self::from_parts_on(dir, bytes, artifact, Backend::Tract)
    }

    /// [`Bundle::from_parts`], the encoder prepared for `backend`.
    pub fn from_parts_on(
        dir: &Path,
        bytes: &[u8],
        artifact: CalibrationArtifact,
        backend: Backend,
    ) -> Result<Self> {
        let calib = dir.join(CALIBRATION_FILE);
        let encoder_path = dir.join(ENCODER_FILE);
        artifact.check_encoder_hash(&sha256_bytes(bytes))?;
        let calibrated_on: Backend = artifact.embedded_on.parse().map_err(|e| {
            in_file(
                &calib,
                CalibrationError::InvalidArtifact(format!("embedded_on: {e}")),
            )
        })?;
        let encoder = Encoder::from_bytes_on(bytes, &encoder_path, backend)?;
        let spec = artifact
            .preprocessing
            .as_ref()
            .ok_or_else(|| {
                in_file(
                    &calib,
                    CalibrationError::InvalidArtifact(
                        "no preprocessing spec: not a bundle calibration".into(),
                    ),
                )
            })?
            .clone();
        let (w, h) = encoder.input_size();
        if (w, h) != (spec.width as usize, spec.height as usize) {
            return Err(in_file(
                &encoder_path,
                CalibrationError::InvalidArtifact(format!(
                    "the encoder takes {w}x{h} input, the calibration's preprocessing makes {}x{}",
                    spec.width, spec.height
                )),
            ));
        }
        if encoder.dim() != artifact.embedding_dim {
            return Err(in_file(
                &encoder_path,
                CalibrationError::DimensionMismatch {
                    what: "encoder output versus calibration".into(),
                    expected: artifact.embedding_dim,
                    found: encoder.dim(),
                },
            ));
        }
        let detector = artifact.detector()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            encoder,
            artifact,
            detector,
            preprocessing: spec,
            calibrated_on,
        })
    }

    /// The backend whose embeddings the calibration was fitted on (`embedded_on`): the one
    /// it runs on as calibrated; any other backend must agree with it first.
    pub fn calibrated_on(&self) -> Backend {
        self.calibrated_on
    }

    /// The preprocessing the calibration was made with (present: checked when loading).
    pub fn preprocessing(&self) -> &PreprocessSpec {
        &self.preprocessing
    }

    /// Writes a bundle: the encoder bytes and their calibration (which must name their hash).
    pub fn write(
        dir: impl AsRef<Path>,
        encoder: &[u8],
        artifact: &CalibrationArtifact,
    ) -> Result<()> {
        let dir = dir.as_ref();
        artifact.check_encoder_hash(&sha256_bytes(encoder))?;
        std::fs::create_dir_all(dir).map_err(|cause| Error::Io {
            path: dir.to_path_buf(),
            cause,
        })?;
        write_atomic(&dir.join(ENCODER_FILE), |w| w.write_all(encoder))?;
        Ok(artifact.save(dir.join(CALIBRATION_FILE))?)
    }
}

/// Prefixes an error with the file it concerns (for errors that do not name one).
fn in_file(path: &Path, e: CalibrationError) -> Error {
    let what = match e {
        // its own prefix once, not twice
        CalibrationError::InvalidArtifact(what) => what,
        e => e.to_string(),
    };
    Error::Calibration(CalibrationError::InvalidArtifact(format!(
        "{}: {what}",
        path.display()
    )))
}
