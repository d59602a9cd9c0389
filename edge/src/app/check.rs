//! `oodmon-edge check`: load a bundle with every cross-check and run one inference on it,
//! before it goes on a vehicle.

use std::path::Path;

use oodmon_runtime::Bundle;

use super::demo::probe;
use crate::error::Result;
use crate::inference::Engine;

/// What a checked bundle is, and what one inference on a mid-grey frame gave.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub encoder_sha256: String,
    pub input: (usize, usize),
    pub dim: usize,
    pub clusters: usize,
    pub metric: String,
    pub threshold_rule: String,
    pub score: f64,
    pub threshold: f64,
    pub total_us: u32,
}

pub fn check(dir: &Path) -> Result<CheckReport> {
    let b = Bundle::load(dir)?;
    let input = b.encoder.input_size();
    let dim = b.encoder.dim();
    let clusters = b.artifact.model.clusters();
    let metric = format!("{:?}", b.artifact.fit.metric);
    let threshold_rule = format!("{:?}", b.artifact.thresholds.mode);
    let encoder_sha256 = b.artifact.encoder_sha256.clone().unwrap_or_default();
    let mut engine = Engine::new(b)?;
    let record = probe(&mut engine)?;
    Ok(CheckReport {
        encoder_sha256,
        input,
        dim,
        clusters,
        metric,
        threshold_rule,
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
            "  {} clusters, {}, threshold rule {}",
            self.clusters, self.metric, self.threshold_rule
        )?;
        write!(
            f,
            "  one inference: score {:.4} (threshold {:.4}), {} us",
            self.score, self.threshold, self.total_us
        )
    }
}
