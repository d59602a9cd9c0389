//! The frame loop: pull a frame, process it, hand the record on; count bad frames and turn
//! too many in a row into a fault; keep latency statistics in preallocated storage.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use super::engine::Engine;
use super::overlap::{run_overlapped, OverlapSettings};
use super::score::{FrameRecord, StageLatency};
use crate::error::{EdgeError, Result};
use crate::source::FrameSource;

/// How many recent frames the latency percentiles cover.
pub const LATENCY_WINDOW: usize = 4096;

/// Per-stage latencies of the last [`LATENCY_WINDOW`] frames, in a ring allocated once.
#[derive(Debug, Clone)]
pub struct LatencyStats {
    ring: Vec<StageLatency>,
    next: usize,
    filled: usize,
}

impl Default for LatencyStats {
    fn default() -> Self {
        Self {
            ring: vec![StageLatency::default(); LATENCY_WINDOW],
            next: 0,
            filled: 0,
        }
    }
}

/// p50 and p99 of one stage, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: u32,
    pub p99_us: u32,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct StagePercentiles {
    pub decode: Percentiles,
    pub preprocess: Percentiles,
    /// Image-quality measures and camera guards.
    pub quality: Percentiles,
    pub queue: Percentiles,
    pub inference: Percentiles,
    pub scoring: Percentiles,
    pub total: Percentiles,
}

impl LatencyStats {
    pub fn push(&mut self, l: StageLatency) {
        self.ring[self.next] = l;
        self.next = (self.next + 1) % self.ring.len();
        self.filled = (self.filled + 1).min(self.ring.len());
    }

    pub fn percentiles(&self) -> StagePercentiles {
        let window = &self.ring[..self.filled];
        let of = |f: fn(&StageLatency) -> u32| {
            let mut v: Vec<u32> = window.iter().map(f).collect();
            v.sort_unstable();
            let at = |q: f64| {
                if v.is_empty() {
                    0
                } else {
                    v[((v.len() - 1) as f64 * q).round() as usize]
                }
            };
            Percentiles {
                p50_us: at(0.5),
                p99_us: at(0.99),
            }
        };
        StagePercentiles {
            decode: of(|l| l.decode_us),
            preprocess: of(|l| l.preprocess_us),
            quality: of(|l| l.quality_us),
            queue: of(|l| l.queue_us),
            inference: of(|l| l.inference_us),
            scoring: of(|l| l.scoring_us),
            total: of(|l| l.total_us()),
        }
    }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The source had no more frames.
    #[default]
    SourceEnded,
    /// `max_frames` frames were processed.
    MaxFrames,
    /// Asked to stop (Ctrl-C, SIGTERM).
    Stopped,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub ending: Ending,
    pub frames: u64,
    pub ood_frames: u64,
    pub bad_frames: u64,
    /// Frames the overlapped loop dropped unjudged because the model was busy.
    pub dropped_frames: u64,
    /// Whether the model ran on its own thread (the overlapped loop).
    pub overlapped: bool,
    /// The engine that ran the encoder, where the caller records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<oodmon_runtime::Backend>,
    /// Which operators tract's plan runs (tract on the CPU), where the caller records it:
    /// the int8 layers and their loops change the speed severalfold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<oodmon_runtime::kernels::Swapped>,
    /// Where the encoder was cut in two, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_cut: Option<String>,
    /// Frames whose encoder head the overlapped loop's frame thread ran (the model thread
    /// being busy); the others went over whole.
    pub frames_cut: u64,
    pub elapsed_s: f64,
    pub frames_per_second: f64,
    pub latency: StagePercentiles,
    /// Peak resident memory of the process (Linux `VmHWM`), bytes.
    pub peak_memory_bytes: Option<u64>,
}

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct RunLimits {
    pub max_frames: Option<u64>,
    pub max_consecutive_bad_frames: u32,
}

/// What the loop tells its caller about each frame.
pub enum Event<'a> {
    Record(&'a FrameRecord),
    /// A frame that could not be used; the loop goes on until too many come in a row.
    BadFrame(&'a EdgeError),
}

/// One thread for everything, or the frame side and the model side overlapped on two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopMode {
    Sequential,
    Overlapped(OverlapSettings),
}

/// Runs frames from `source` through `engine` in the given mode ([`run`] or
/// [`run_overlapped`]): the same events in capture order, the same limits.
pub fn run_in(
    mode: LoopMode,
    engine: &mut Engine,
    source: &mut dyn FrameSource,
    limits: &RunLimits,
    stop: &AtomicBool,
    on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<RunSummary> {
    let mut summary = match mode {
        LoopMode::Sequential => run(engine, source, limits, stop, on_event),
        LoopMode::Overlapped(settings) => {
            let (frames, model) = engine.stages();
            run_overlapped(frames, model, source, limits, &settings, stop, on_event)
        }
    }?;
    summary.model_cut = engine.model_cut().map(describe_cut);
    Ok(summary)
}

/// A cut as the summary names it.
pub fn describe_cut(cut: &oodmon_runtime::split::Cut) -> String {
    format!(
        "at {} {:?}, {:.0}% of the multiply-adds before it",
        cut.name,
        cut.shape,
        100.0 * cut.head_share
    )
}

/// Runs frames from `source` through `engine` until the source ends, `max_frames` frames
/// were processed or `stop` is set. Too many bad frames in a row end it with
/// [`EdgeError::Fault`]; a source that cannot be opened again is returned as its error.
pub fn run(
    engine: &mut Engine,
    source: &mut dyn FrameSource,
    limits: &RunLimits,
    stop: &AtomicBool,
    mut on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<RunSummary> {
    let mut stats = LatencyStats::default();
    let mut summary = RunSummary::default();
    let mut bad_in_a_row = 0u32;
    let start = Instant::now();
    summary.ending = Ending::Stopped;
    while !stop.load(Ordering::Relaxed) {
        if limits.max_frames.is_some_and(|m| summary.frames >= m) {
            summary.ending = Ending::MaxFrames;
            break;
        }
        let outcome = match source.next_frame() {
            Ok(None) => {
                summary.ending = Ending::SourceEnded;
                break;
            }
            Ok(Some(frame)) => engine.process(&frame),
            Err(e) if e.is_transient() => Err(e.into()),
            Err(e) => return Err(e.into()),
        };
        match outcome {
            Ok(record) => {
                bad_in_a_row = 0;
                summary.frames += 1;
                summary.ood_frames += record.ood as u64;
                stats.push(record.latency);
                on_event(Event::Record(&record))?;
            }
            Err(e) => {
                bad_in_a_row += 1;
                summary.bad_frames += 1;
                log::warn!("frame skipped: {e}");
                on_event(Event::BadFrame(&e))?;
                if bad_in_a_row >= limits.max_consecutive_bad_frames {
                    return Err(EdgeError::Fault(
                        bad_in_a_row,
                        limits.max_consecutive_bad_frames,
                    ));
                }
            }
        }
    }
    summary.elapsed_s = start.elapsed().as_secs_f64();
    summary.frames_per_second = summary.frames as f64 / summary.elapsed_s.max(1e-9);
    summary.latency = stats.percentiles();
    summary.peak_memory_bytes = peak_memory_bytes();
    Ok(summary)
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`).
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
