//! `oodmon-edge bench`: per-stage latency (p50/p99), frames per second and peak memory of
//! the pipeline on a frame source, or the inference latency of one encoder alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use oodmon_runtime::{Backend, Bundle, Encoder};
use serde::Serialize;

use super::demo;
use crate::error::Result;
use crate::inference::{
    self, peak_memory_bytes, Engine, LoopMode, OverlapSettings, RunLimits, RunSummary,
};
use crate::source::{self, CorruptedSource, FrameSource, SourceOptions, SourceSpec};
use oodmon_calibration::corrupt::Corruption;

/// Where the benchmark's frames come from.
#[derive(Debug, Clone)]
pub enum BenchFrames {
    /// The built-in MJPEG scenario (320x240 camera frames).
    Scenario,
    /// Synthetic YUYV camera frames of this size (`WxH`).
    SyntheticYuyv(String),
    /// Any source specification, looped.
    Source(String),
}

/// How the pipeline benchmark runs.
#[derive(Debug, Clone, Default)]
pub struct PipelineOptions {
    /// Frames timed (after 20 warm-up frames).
    pub frames: u64,
    /// Decode JPEG frames at full resolution.
    pub full_jpeg_decode: bool,
    /// The model on a second thread (every frame judged, as for files).
    pub overlap: bool,
    /// With `overlap`: the encoder cut in two, this share of its multiply-adds on the
    /// frame thread (`[pipeline] model_head_share`; 0: not cut).
    pub model_head_share: f64,
    pub backend: Backend,
    /// Degrade every frame first (`KIND:SEVERITY`; the decode then happens in the source).
    pub corrupt: Option<Corruption>,
}

/// Runs `options.frames` frames (after 20 warm-up frames that plan the preprocessing and
/// fault in the backend's buffers) of `source` through a bundle (the built-in one when
/// `None`).
pub fn pipeline(
    bundle: Option<&Path>,
    source: &BenchFrames,
    options: &PipelineOptions,
) -> Result<RunSummary> {
    let PipelineOptions {
        frames,
        full_jpeg_decode,
        overlap,
        model_head_share,
        backend,
        corrupt,
    } = options.clone();
    let b = match bundle {
        Some(dir) => Bundle::load_on(dir, backend)?,
        None => demo::bundle_on(backend)?,
    };
    let kernels = (backend == Backend::Tract).then(|| b.encoder.own_kernels());
    let mut engine = Engine::new(b)?;
    engine.set_scaled_jpeg(!full_jpeg_decode);
    let mut src: Box<dyn FrameSource> = match source {
        BenchFrames::Source(s) => {
            let spec: SourceSpec = s.parse()?;
            let opts = SourceOptions {
                looped: true,
                ..Default::default()
            };
            source::open(&spec, &opts)?
        }
        BenchFrames::SyntheticYuyv(size) => Box::new(demo::synthetic_yuyv(size)?),
        BenchFrames::Scenario => Box::new(demo::scenario(true)?),
    };
    if let Some(c) = corrupt {
        src = Box::new(CorruptedSource::new(src, c));
    }
    let stop = AtomicBool::new(false);
    let limits = |n| RunLimits {
        max_frames: Some(n),
        max_consecutive_bad_frames: 1,
    };
    crate::config::check_model_head_share("--model-head-share", model_head_share)?;
    if overlap && model_head_share > 0.0 && engine.split_model(model_head_share)?.is_none() {
        log::info!("encoder not cut in two (tract on the CPU only)");
    }
    let mode = if overlap {
        LoopMode::Overlapped(OverlapSettings::FILES)
    } else {
        LoopMode::Sequential
    };
    inference::run_in(mode, &mut engine, &mut src, &limits(20), &stop, |_| Ok(()))?;
    let mut summary =
        inference::run_in(mode, &mut engine, &mut src, &limits(frames), &stop, |_| {
            Ok(())
        })?;
    summary.backend = Some(backend);
    summary.kernels = kernels;
    Ok(summary)
}

/// Inference latency of one encoder alone (no frames, no scoring).
#[derive(Debug, Clone, Serialize)]
pub struct InferenceTiming {
    pub model: PathBuf,
    pub backend: Backend,
    /// Which operators tract's CPU plan runs.
    pub own_kernels: oodmon_runtime::kernels::Swapped,
    pub runs: usize,
    pub p50_us: u32,
    pub p99_us: u32,
    pub peak_memory_bytes: Option<u64>,
}

/// Times `runs` inferences of the encoder in one session, after 50 untimed ones.
pub fn inference(model: &Path, runs: usize, backend: Backend) -> Result<InferenceTiming> {
    let encoder = Encoder::load_on(model, backend)?;
    let own_kernels = encoder.own_kernels();
    let mut times = encoder.session()?.time(50, runs.max(1))?;
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(InferenceTiming {
        model: model.to_path_buf(),
        backend,
        own_kernels,
        runs: times.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        peak_memory_bytes: peak_memory_bytes(),
    })
}
