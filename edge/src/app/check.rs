//! `oodmon-edge check`: load a bundle with every cross-check and run one inference on it,
//! before it goes on a vehicle.

use std::path::Path;

use oodmon_runtime::kernels::Swapped;
use oodmon_runtime::{Backend, Bundle};

use super::demo::{self, probe};
use crate::error::{EdgeError, Result};
use crate::inference::Engine;
use crate::source::FrameSource;

/// What a checked bundle is, and what one inference on a mid-grey frame gave.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub backend: Backend,
    /// Which operators tract's CPU plan runs (oodmon's own kernels or tract's).
    pub own_kernels: Swapped,
    /// The backend the calibration was fitted on.
    pub calibrated_on: Backend,
    /// Against `calibrated_on`, when another backend runs.
    pub agreement: Option<Agreement>,
    pub encoder_sha256: String,
    pub input: (usize, usize),
    pub dim: usize,
    pub clusters: usize,
    pub metric: String,
    pub threshold_rule: String,
    /// The calibration's camera guards.
    pub guards: Option<oodmon_calibration::QualityBounds>,
    pub score: f64,
    pub threshold: f64,
    pub total_us: u32,
}

/// Loads the bundle on `backend` with every cross-check, runs one inference and, on a
/// backend other than the one the calibration was fitted on, compares the two on the
/// built-in frames ([`agreement`]): a backend whose embeddings drift from the
/// calibration's is an error.
pub fn check(dir: &Path, backend: Backend) -> Result<CheckReport> {
    let b = Bundle::load_on(dir, backend)?;
    let calibrated_on = b.calibrated_on();
    let agreement = if backend == calibrated_on {
        None
    } else {
        Some(agreement(Some(dir), calibrated_on, backend)?)
    };
    let input = b.encoder.input_size();
    let dim = b.encoder.dim();
    let own_kernels = b.encoder.own_kernels();
    let clusters = b.artifact.model.clusters();
    let metric = format!("{:?}", b.artifact.fit.metric);
    let threshold_rule = format!("{:?}", b.artifact.thresholds.mode);
    let encoder_sha256 = b.artifact.encoder_sha256.clone().unwrap_or_default();
    let guards = b.artifact.image_quality.clone();
    let mut engine = Engine::new(b)?;
    let record = probe(&mut engine)?;
    if let Some(a) = agreement.clone().filter(|a| !a.acceptable()) {
        return Err(EdgeError::BackendDisagrees {
            backend,
            reference: calibrated_on,
            agreement: a,
        });
    }
    Ok(CheckReport {
        backend,
        own_kernels,
        calibrated_on,
        agreement,
        encoder_sha256,
        input,
        dim,
        clusters,
        metric,
        threshold_rule,
        guards,
        score: record.score,
        threshold: record.threshold,
        total_us: record.latency.total_us(),
    })
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (w, h) = self.input;
        writeln!(
            f,
            "  encoder sha256 {}, input 1x3x{h}x{w}, embedding {}",
            self.encoder_sha256, self.dim
        )?;
        writeln!(
            f,
            "  backend {} (this build has {}), calibration embedded on {}",
            self.backend,
            Backend::available()
                .iter()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", "),
            self.calibrated_on
        )?;
        writeln!(
            f,
            "  {} clusters, {}, threshold rule {}",
            self.clusters, self.metric, self.threshold_rule
        )?;
        if self.backend == Backend::Tract {
            writeln!(f, "  tract runs {}", self.own_kernels)?;
        }
        if let Some(a) = &self.agreement {
            writeln!(f, "  against {}: {a}", self.calibrated_on)?;
        }
        match &self.guards {
            Some(g) => writeln!(f, "  camera guards: {g}")?,
            None => writeln!(
                f,
                "  camera guards: none (add them with `oodmon-calibrate guards`)"
            )?,
        }
        write!(
            f,
            "  one inference: score {:.4} (threshold {:.4}), {} us",
            self.score, self.threshold, self.total_us
        )
    }
}

/// How far a backend's results are from the calibration's backend's on the same frames.
/// The thresholds were fitted on that backend's embeddings (tract's unless calibrated on
/// another), so another may only replace it where its embeddings are the same up to float
/// rounding; int8 kernels that round or saturate differently (onnxruntime's u8s8
/// convolutions on x86 without VNNI, tract-cuda's QDQ graphs) are not.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub frames: usize,
    /// |a - b| / |a| of the embeddings, median and worst over the frames.
    pub median_relative_difference: f64,
    pub max_relative_difference: f64,
    /// Frames whose OOD decision, or nearest cluster, differs.
    pub decisions_differ: usize,
    pub nearest_differ: usize,
}

impl Agreement {
    /// The most a backend's median embedding may differ from tract's (relative).
    pub const TOLERANCE: f64 = 0.01;

    pub fn acceptable(&self) -> bool {
        self.median_relative_difference <= Self::TOLERANCE
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "embeddings differ by {:.3}% (median) / {:.3}% (worst) over {} built-in frames \
             (tolerance {}%), decisions differ on {}, nearest cluster on {}",
            100.0 * self.median_relative_difference,
            100.0 * self.max_relative_difference,
            self.frames,
            100.0 * Self::TOLERANCE,
            self.decisions_differ,
            self.nearest_differ
        )
    }
}

/// Runs the built-in scenario's frames through the bundle (the built-in one when `None`)
/// on `reference` (the backend it was calibrated on) and on `backend`, and compares
/// embeddings and decisions frame by frame.
pub fn agreement(dir: Option<&Path>, reference: Backend, backend: Backend) -> Result<Agreement> {
    let load = |b: Backend| match dir {
        Some(d) => Ok::<_, EdgeError>(Bundle::load_on(d, b)?),
        None => demo::bundle_on(b),
    };
    if !reference.compiled_in() {
        return Err(EdgeError::invalid(
            "pipeline.backend",
            format!(
                "the bundle was calibrated on {reference}, which this build lacks, so {backend} \
                 cannot be compared with it: build with the `{}` feature, or set \
                 `[pipeline] verify_backend = false` to run unchecked",
                reference.feature().unwrap_or_default()
            ),
        ));
    }
    let mut reference = Engine::new(load(reference)?)?;
    let mut other = Engine::new(load(backend)?)?;
    let mut source = demo::scenario(false)?;
    let mut relative = Vec::new();
    let (mut decisions_differ, mut nearest_differ) = (0, 0);
    while let Some(frame) = source.next_frame()? {
        let a = reference.process(&frame)?;
        let b = other.process(&frame)?;
        let (ea, eb) = (reference.embedding(), other.embedding());
        let diff: f64 = ea
            .iter()
            .zip(eb)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = ea.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        relative.push(diff / norm.max(1e-12));
        decisions_differ += (a.ood != b.ood) as usize;
        nearest_differ += (a.nearest != b.nearest) as usize;
    }
    relative.sort_by(f64::total_cmp);
    Ok(Agreement {
        frames: relative.len(),
        median_relative_difference: relative.get(relative.len() / 2).copied().unwrap_or(0.0),
        max_relative_difference: relative.last().copied().unwrap_or(0.0),
        decisions_differ,
        nearest_differ,
    })
}
