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

/// A loaded bundle, ready to process frames of any geometry (one preprocessing plan is
/// kept and replanned only when the frame size or format changes).
pub struct Engine {
    session: Session,
    spec: PreprocessSpec,
    preprocessor: Option<Preprocessor>,
    decoder: FrameDecoder,
    scorer: FrameScorer,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({:?})", self.session)
    }
}

impl Engine {
    pub fn new(bundle: Bundle) -> Result<Self> {
        let spec = bundle.preprocessing().clone();
        let session = bundle.encoder.session()?;
        let scorer = FrameScorer::new(bundle.detector, &bundle.artifact);
        Ok(Self {
            session,
            spec: spec.clone(),
            preprocessor: None,
            decoder: FrameDecoder::new(&spec, true),
            scorer,
        })
    }

    /// Whether large JPEG frames are decoded at a reduced scale (on by default; off decodes
    /// every pixel, for comparing against full-resolution references).
    pub fn set_scaled_jpeg(&mut self, on: bool) {
        self.decoder = FrameDecoder::new(&self.spec, on);
    }

    /// The class a cluster belongs to, through the calibration's cluster-to-class map
    /// (`None` for clusters without a class, e.g. global k-means).
    pub fn cluster_class(&self, cluster: usize) -> Option<usize> {
        self.scorer.cluster_class(cluster)
    }

    /// The name of a class, when the calibration has names.
    pub fn class_name(&self, class: usize) -> Option<&str> {
        self.scorer.class_name(class)
    }

    pub fn preprocessing(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// Decodes, preprocesses, embeds and scores one frame.
    pub fn process(&mut self, frame: &Frame<'_>) -> Result<FrameRecord> {
        let mut latency = StageLatency::default();
        (latency.decode_us, latency.preprocess_us) = self.prepare(frame)?;
        let t = Instant::now();
        self.infer()?;
        latency.inference_us = micros(t);
        let t = Instant::now();
        let mut record = self.score()?;
        latency.scoring_us = micros(t);
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
        let t = Instant::now();
        let pixels = self.decoder.decode(frame)?;
        let decode_us = micros(t);
        let t = Instant::now();
        preprocess_into(
            &mut self.preprocessor,
            &self.spec,
            &pixels,
            &mut self.session,
        )?;
        Ok((decode_us, micros(t)))
    }

    /// Scores the last embedding (allocation-free); sequence, timestamp and latency are
    /// left for the caller.
    pub fn score(&mut self) -> Result<FrameRecord> {
        self.scorer.score(self.session.embedding())
    }

    /// The encoder's input tensor as the preprocessing last wrote it (`3 x H x W`).
    pub fn input_tensor(&self) -> &[f32] {
        self.session.input()
    }

    /// The last embedding.
    pub fn embedding(&self) -> &[f32] {
        self.session.embedding()
    }

    /// Runs the encoder on the input tensor into the embedding.
    pub fn infer(&mut self) -> Result<()> {
        self.session.run()?;
        Ok(())
    }
}

/// Writes the preprocessed frame into the input tensor, replanning the preprocessing only
/// when the geometry or pixel format changes.
fn preprocess_into(
    slot: &mut Option<Preprocessor>,
    spec: &PreprocessSpec,
    pixels: &Pixels<'_>,
    session: &mut Session,
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
    session.with_input(|out| pre.run(pixels.data, pixels.stride, out))??;
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
