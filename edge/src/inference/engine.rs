//! The per-frame work: decode, preprocess straight into the session's preallocated input
//! tensor, run the encoder (`oodmon-runtime`), and score against the clusters ([`super::score`]). Everything but tract's own run is
//! allocation-free once the first frame of a given geometry has been seen.

use std::time::Instant;

use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
use oodmon_calibration::PreprocessSpec;
use oodmon_runtime::{Bundle, Session};

use super::score::{fingerprint, FrameRecord, FrameScorer, StageLatency};
use crate::error::Result;
use crate::source::decode::{FrameDecoder, Pixels};
use crate::source::frame::Frame;

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// The frame side of an engine: decoding and preprocessing into an input tensor. The
/// overlapped loop runs it on the thread that reads the camera.
pub struct FramePreparer {
    spec: PreprocessSpec,
    preprocessor: Option<Preprocessor>,
    decoder: FrameDecoder,
}

impl FramePreparer {
    pub fn new(spec: &PreprocessSpec) -> Self {
        Self {
            spec: spec.clone(),
            preprocessor: None,
            decoder: FrameDecoder::new(spec, true),
        }
    }

    /// Whether large JPEG frames are decoded at a reduced scale.
    pub fn set_scaled_jpeg(&mut self, on: bool) {
        self.decoder = FrameDecoder::new(&self.spec, on);
    }

    /// The input tensor's length (`3 x H x W`).
    pub fn tensor_len(&self) -> usize {
        3 * self.spec.width as usize * self.spec.height as usize
    }

    /// Decodes the frame and writes the encoder's input into `out`; returns the decode and
    /// preprocessing times (us). Allocation-free for raw frames once the geometry is known.
    pub fn prepare(&mut self, frame: &Frame<'_>, out: &mut [f32]) -> Result<(u32, u32)> {
        let t = Instant::now();
        let pixels = self.decoder.decode(frame)?;
        let decode_us = micros(t);
        let t = Instant::now();
        preprocess_into(&mut self.preprocessor, &self.spec, &pixels, out)?;
        Ok((decode_us, micros(t)))
    }
}

/// The model side of an engine: the encoder session and the scorer. The overlapped loop
/// runs it on its own thread.
pub struct ModelStage {
    session: Session,
    scorer: FrameScorer,
}

/// Embeds and scores one preprocessed input: the stage the overlapped loop runs beside
/// the frame side (a trait, so tests can put a slow fake in its place).
pub trait InferStage: Send {
    /// The record of one input (`3 x H x W`); sequence, times and the decode and
    /// preprocessing latencies are left for the caller.
    fn infer(&mut self, input: &[f32]) -> Result<FrameRecord>;
}

impl ModelStage {
    /// Runs the encoder on the session's input and scores the embedding.
    fn run_and_score(&mut self, latency: &mut StageLatency) -> Result<FrameRecord> {
        let t = Instant::now();
        self.session.run()?;
        latency.inference_us = micros(t);
        let t = Instant::now();
        let record = self.scorer.score(self.session.embedding())?;
        latency.scoring_us = micros(t);
        Ok(record)
    }
}

impl InferStage for ModelStage {
    fn infer(&mut self, input: &[f32]) -> Result<FrameRecord> {
        self.session.with_input(|dst| dst.copy_from_slice(input))?;
        let mut latency = StageLatency::default();
        let mut record = self.run_and_score(&mut latency)?;
        record.latency = latency;
        Ok(record)
    }
}

/// A loaded bundle, ready to process frames of any geometry (one preprocessing plan is
/// kept and replanned only when the frame size or format changes).
pub struct Engine {
    frames: FramePreparer,
    model: ModelStage,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({:?})", self.model.session)
    }
}

impl Engine {
    pub fn new(bundle: Bundle) -> Result<Self> {
        let spec = bundle.preprocessing().clone();
        let session = bundle.encoder.session()?;
        let scorer = FrameScorer::new(bundle.detector, &bundle.artifact);
        Ok(Self {
            frames: FramePreparer::new(&spec),
            model: ModelStage { session, scorer },
        })
    }

    /// The frame side and the model side, borrowed apart for the overlapped loop.
    pub fn stages(&mut self) -> (&mut FramePreparer, &mut ModelStage) {
        (&mut self.frames, &mut self.model)
    }

    /// Whether large JPEG frames are decoded at a reduced scale (on by default; off decodes
    /// every pixel, for comparing against full-resolution references).
    pub fn set_scaled_jpeg(&mut self, on: bool) {
        self.frames.set_scaled_jpeg(on);
    }

    /// The class a cluster belongs to, through the calibration's cluster-to-class map
    /// (`None` for clusters without a class, e.g. global k-means).
    pub fn cluster_class(&self, cluster: usize) -> Option<usize> {
        self.model.scorer.cluster_class(cluster)
    }

    /// The name of a class, when the calibration has names.
    pub fn class_name(&self, class: usize) -> Option<&str> {
        self.model.scorer.class_name(class)
    }

    pub fn preprocessing(&self) -> &PreprocessSpec {
        &self.frames.spec
    }

    /// Decodes, preprocesses, embeds and scores one frame.
    pub fn process(&mut self, frame: &Frame<'_>) -> Result<FrameRecord> {
        let mut latency = StageLatency::default();
        (latency.decode_us, latency.preprocess_us) = self.prepare(frame)?;
        let mut record = self.model.run_and_score(&mut latency)?;
        record.sequence = frame.sequence;
        record.timestamp_us = frame.timestamp_us;
        record.media_us = frame.media_us;
        record.latency = latency;
        record.fingerprint = fingerprint(self.input_tensor());
        Ok(record)
    }

    /// Decodes the frame and writes the encoder's input tensor; returns the decode and
    /// preprocessing times (us). Allocation-free for raw frames once the geometry is known.
    pub fn prepare(&mut self, frame: &Frame<'_>) -> Result<(u32, u32)> {
        let frames = &mut self.frames;
        self.model
            .session
            .with_input(|out| frames.prepare(frame, out))?
    }

    /// Scores the last embedding (allocation-free); sequence, timestamp and latency are
    /// left for the caller.
    pub fn score(&mut self) -> Result<FrameRecord> {
        self.model.scorer.score(self.model.session.embedding())
    }

    /// The encoder's input tensor as the preprocessing last wrote it (`3 x H x W`).
    pub fn input_tensor(&self) -> &[f32] {
        self.model.session.input()
    }

    /// The last embedding.
    pub fn embedding(&self) -> &[f32] {
        self.model.session.embedding()
    }

    /// Runs the encoder on the input tensor into the embedding.
    pub fn infer(&mut self) -> Result<()> {
        self.model.session.run()?;
        Ok(())
    }
}

/// Writes the preprocessed frame into `out`, replanning the preprocessing only when the
/// geometry or pixel format changes.
fn preprocess_into(
    slot: &mut Option<Preprocessor>,
    spec: &PreprocessSpec,
    pixels: &Pixels<'_>,
    out: &mut [f32],
) -> Result<()> {
    let pre = match slot {
        Some(p) if p.source() == (pixels.width, pixels.height, pixels.format) => p,
        _ => slot.insert(Preprocessor::new(
            spec,
            pixels.width,
            pixels.height,
            pixels.format,
        )?),
    };
    pre.run(pixels.data, pixels.stride, out)?;
    Ok(())
}

/// Preprocesses raw pixels the way the engine does (for tests and tools that compare
/// entry points).
pub fn preprocess_pixels(
    spec: &PreprocessSpec,
    data: &[u8],
    width: usize,
    height: usize,
    format: PixelFormat,
) -> Result<Vec<f32>> {
    let mut pre = Preprocessor::new(spec, width, height, format)?;
    let mut out = vec![0f32; pre.tensor_len()];
    pre.run(data, None, &mut out)?;
    Ok(out)
}
