//! The per-frame work: decode, preprocess straight into the session's preallocated input
//! tensor, run the encoder (`oodmon-runtime`), and score against the clusters ([`super::score`]). Everything but tract's own run is
//! allocation-free once the first frame of a given geometry has been seen.

use std::time::Instant;

use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
use oodmon_calibration::quality::{CameraFault, ImageQuality, QualityBounds, QualityMeter};
use oodmon_calibration::PreprocessSpec;
use oodmon_runtime::split::Cut;
use oodmon_runtime::{Bundle, Encoder, InferenceError, Session};

use super::score::{fingerprint, FrameRecord, FrameScorer, StageLatency};
use crate::error::{EdgeError, Result};
use crate::source::decode::{FrameDecoder, Pixels};
use crate::source::frame::Frame;

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// A frame made ready for the model: the stage times and what its picture looks like.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prepared {
    pub decode_us: u32,
    pub preprocess_us: u32,
    /// Measuring image quality and checking the guards.
    pub quality_us: u32,
    pub quality: ImageQuality,
    /// The guard the frame fails, when the calibration has guards and they are on.
    pub camera: Option<CameraFault>,
    /// Of the encoder's input tensor (the preprocessed frame).
    pub fingerprint: u64,
}

/// The frame side of an engine: decoding, preprocessing into an input tensor, and the
/// camera guards (image quality measured on that tensor). The overlapped loop runs it on
/// the thread that reads the camera.
pub struct FramePreparer {
    spec: PreprocessSpec,
    preprocessor: Option<Preprocessor>,
    decoder: FrameDecoder,
    meter: QualityMeter,
    guards: Option<QualityBounds>,
    /// The calibration bounds the frame's own noise: measure it (kept when the guards are
    /// turned off, so that records still carry it).
    frame_noise: bool,
    /// Said once that DCT-scaled JPEG frames carry no frame noise.
    warned_scaled: bool,
    /// Said once that the frames' size is not the one the frame-noise bounds were fitted on.
    warned_size: bool,
    /// The encoder's head, where the model is cut in two: the overlapped loop's frame
    /// thread runs it on frames it prepares while the model thread is busy.
    head: Option<Session>,
}

impl FramePreparer {
    /// A preparer whose frames are checked against `guards` (none: measured only).
    pub fn new(spec: &PreprocessSpec, guards: Option<QualityBounds>) -> Self {
        Self {
            spec: spec.clone(),
            preprocessor: None,
            decoder: FrameDecoder::new(spec, true),
            meter: QualityMeter::new(spec),
            frame_noise: guards.as_ref().is_some_and(|g| g.frame_noise_max.is_some()),
            warned_scaled: false,
            warned_size: false,
            guards,
            head: None,
        }
    }

    /// The camera guards in force.
    pub fn guards(&self) -> Option<&QualityBounds> {
        self.guards.as_ref()
    }

    /// Turns the camera guards off (frames are still measured).
    pub fn disable_guards(&mut self) {
        self.guards = None;
    }

    /// Whether large JPEG frames are decoded at a reduced scale.
    pub fn set_scaled_jpeg(&mut self, on: bool) {
        self.decoder = FrameDecoder::new(&self.spec, on);
    }

    /// The input tensor's length (`3 x H x W`).
    pub fn tensor_len(&self) -> usize {
        3 * self.spec.width as usize * self.spec.height as usize
    }

    /// The length of the cut's values, where the encoder is cut in two.
    pub fn cut_len(&self) -> Option<usize> {
        self.head.as_ref().map(|h| h.embedding().len())
    }

    /// Runs the encoder's head (where it is cut in two) on a prepared input tensor into
    /// `out` (the cut's values), and returns its time in microseconds: the overlapped
    /// loop's frame thread does this while the model thread is busy.
    pub fn run_head(&mut self, input: &[f32], out: &mut [f32]) -> Result<u32> {
        let head = self.head.as_mut().ok_or_else(|| {
            EdgeError::Inference(InferenceError::Tract(
                "the encoder is not cut in two".into(),
            ))
        })?;
        let t = Instant::now();
        let middle = head.embed(input)?;
        if middle.len() != out.len() {
            return Err(EdgeError::Inference(InferenceError::OutputSize {
                expected: out.len(),
                found: middle.len(),
            }));
        }
        out.copy_from_slice(middle);
        Ok(micros(t))
    }

    /// Decodes the frame, writes the encoder's input into `out` and measures it against
    /// the guards. Allocation-free for raw frames once the geometry is known.
    pub fn prepare(&mut self, frame: &Frame<'_>, out: &mut [f32]) -> Result<Prepared> {
        let t = Instant::now();
        let pixels = self.decoder.decode(frame)?;
        let decode_us = micros(t);
        let t = Instant::now();
        preprocess_into(&mut self.preprocessor, &self.spec, &pixels, out)?;
        let preprocess_us = micros(t);
        let t = Instant::now();
        let mut quality = self.meter.measure(out, &self.spec)?;
        if self.frame_noise && pixels.reduced && !self.warned_scaled {
            self.warned_scaled = true;
            log::warn!(
                "the camera guards bound measures of the frame as it arrived ({}), but this \
                 source's JPEG frames are decoded at a reduced scale, which averages them \
                 away: they are not checked (set `scaled_jpeg_decode = false` in [camera] \
                 to check them)",
                frame_bounds_named(self.guards.as_ref())
            );
        }
        let size = [pixels.width as u32, pixels.height as u32];
        let fitted = self.guards.as_ref().and_then(|g| g.frame_noise_size);
        let other_size = fitted.is_some_and(|f| f != size);
        if self.frame_noise && !pixels.reduced && other_size && !self.warned_size {
            self.warned_size = true;
            let [w, h] = fitted.unwrap_or_default();
            log::warn!(
                "the camera guards' frame-noise bounds were fitted on {w}x{h} frames and \
                 this source delivers {}x{}: the frame's measures ({}) depend on its size, \
                 so they are not checked (fit the guards on this camera's own frames)",
                size[0],
                size[1],
                frame_bounds_named(self.guards.as_ref())
            );
        }
        // measured only where it is checked: not on scaled decodes, nor on frames of
        // another size than the bounds'
        if self.frame_noise && !pixels.reduced && !other_size {
            self.meter.add_frame_noise(
                &mut quality,
                &self.spec,
                pixels.data,
                pixels.width,
                pixels.height,
                pixels.stride,
                pixels.format,
            )?;
        }
        let camera = self.guards.as_ref().and_then(|g| g.check(&quality));
        Ok(Prepared {
            decode_us,
            preprocess_us,
            quality_us: micros(t),
            quality,
            camera,
            fingerprint: fingerprint(out),
        })
    }
}

/// The model side of an engine: the encoder session and the scorer. The overlapped loop
/// runs it on its own thread.
pub struct ModelStage {
    /// The encoder's head, where it is cut in two (`session` is then the tail): this
    /// thread's own state of the same plan the frame side runs.
    head: Option<Session>,
    session: Session,
    scorer: FrameScorer,
}

/// Embeds and scores one preprocessed input: the stage the overlapped loop runs beside
/// the frame side (a trait, so tests can put a slow fake in its place).
pub trait InferStage: Send {
    /// The record of one input (`3 x H x W`); sequence, times and the decode and
    /// preprocessing latencies are left for the caller.
    fn infer(&mut self, input: &[f32]) -> Result<FrameRecord>;

    /// Whether [`Self::infer_cut`] takes the cut's values (the encoder is cut in two).
    fn takes_cut(&self) -> bool {
        false
    }

    /// The record from the cut's values, where the encoder is cut in two and the frame
    /// side ran its head (only called when [`Self::takes_cut`]).
    fn infer_cut(&mut self, cut: &[f32]) -> Result<FrameRecord> {
        let _ = cut;
        Err(no_cut())
    }
}

/// What [`InferStage::infer_cut`] answers on a stage whose encoder is whole.
fn no_cut() -> EdgeError {
    EdgeError::Inference(InferenceError::Tract(
        "this model stage has no cut encoder".into(),
    ))
}

impl ModelStage {
    /// The encoder on the input tensor, into the embedding.
    fn run_encoder(&mut self) -> Result<()> {
        match &mut self.head {
            Some(head) => self.session.embed(head.run()?)?,
            None => self.session.run()?,
        };
        Ok(())
    }

    /// Where the input tensor goes: the head's input where the encoder is cut, else the
    /// whole encoder's.
    fn input_session(&mut self) -> &mut Session {
        self.head.as_mut().unwrap_or(&mut self.session)
    }

    /// Runs the encoder on the input tensor (the head, then the tail, where it is cut) and
    /// scores the embedding.
    fn run_and_score(&mut self, latency: &mut StageLatency) -> Result<FrameRecord> {
        let t = Instant::now();
        self.run_encoder()?;
        latency.inference_us = micros(t);
        let t = Instant::now();
        let record = self.scorer.score(self.session.embedding())?;
        latency.scoring_us = micros(t);
        Ok(record)
    }
}

impl InferStage for ModelStage {
    fn infer(&mut self, input: &[f32]) -> Result<FrameRecord> {
        self.input_session().set_input(input)?;
        let mut latency = StageLatency::default();
        let mut record = self.run_and_score(&mut latency)?;
        record.latency = latency;
        Ok(record)
    }

    fn takes_cut(&self) -> bool {
        self.head.is_some()
    }

    fn infer_cut(&mut self, cut: &[f32]) -> Result<FrameRecord> {
        if self.head.is_none() {
            return Err(no_cut());
        }
        let mut latency = StageLatency::default();
        let t = Instant::now();
        self.session.embed(cut)?;
        latency.inference_us = micros(t);
        let t = Instant::now();
        let mut record = self.scorer.score(self.session.embedding())?;
        latency.scoring_us = micros(t);
        record.latency = latency;
        Ok(record)
    }
}

/// A loaded bundle, ready to process frames of any geometry (one preprocessing plan is
/// kept and replanned only when the frame size or format changes).
pub struct Engine {
    frames: FramePreparer,
    model: ModelStage,
    /// The whole encoder, kept to cut it in two (and let go once cut).
    encoder: Option<Encoder>,
    /// Where the encoder is cut, once it is.
    cut: Option<Cut>,
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
            frames: FramePreparer::new(&spec, bundle.artifact.image_quality.clone()),
            model: ModelStage {
                head: None,
                session,
                scorer,
            },
            encoder: Some(bundle.encoder),
            cut: None,
        })
    }

    /// Cuts the encoder in two at the tensor nearest to `head_share` of its multiply-adds
    /// (`oodmon_runtime::split`), so that the overlapped loop can share an inference
    /// between its two threads: its frame thread runs the head on a frame it has prepared
    /// while the model thread is still busy, and hands over the cut's values; a frame
    /// prepared while the model thread waits goes over whole. The same embeddings either
    /// way. `None` (and nothing changes) where the encoder cannot be cut: a backend other
    /// than tract on the CPU, or already cut.
    pub fn split_model(&mut self, head_share: f64) -> Result<Option<&Cut>> {
        if self.cut.is_some() {
            return Ok(None);
        }
        let Some(split) = self
            .encoder
            .as_ref()
            .map(|e| e.split(head_share))
            .transpose()?
            .flatten()
        else {
            return Ok(None);
        };
        // its plan no longer runs
        self.encoder = None;
        self.frames.head = Some(split.head.session()?);
        self.model.head = Some(split.head.session()?);
        self.model.session = split.tail.session()?;
        Ok(Some(&*self.cut.insert(split.cut)))
    }

    /// Where the encoder is cut in two, when it is.
    pub fn model_cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
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

    /// The camera guards in force (from the calibration, unless turned off).
    pub fn guards(&self) -> Option<&QualityBounds> {
        self.frames.guards()
    }

    /// Turns the camera guards off: frames are measured but never raise a camera FAULT.
    pub fn disable_guards(&mut self) {
        self.frames.disable_guards();
    }

    /// Decodes, preprocesses, embeds and scores one frame.
    pub fn process(&mut self, frame: &Frame<'_>) -> Result<FrameRecord> {
        let prepared = self.prepare(frame)?;
        let mut latency = StageLatency {
            decode_us: prepared.decode_us,
            preprocess_us: prepared.preprocess_us,
            quality_us: prepared.quality_us,
            ..StageLatency::default()
        };
        let mut record = self.model.run_and_score(&mut latency)?;
        record.sequence = frame.sequence;
        record.timestamp_us = frame.timestamp_us;
        record.media_us = frame.media_us;
        record.latency = latency;
        record.quality = prepared.quality;
        record.camera = prepared.camera;
        record.fingerprint = prepared.fingerprint;
        Ok(record)
    }

    /// Decodes the frame, writes the encoder's input tensor and measures its quality.
    /// Allocation-free for raw frames once the geometry is known.
    pub fn prepare(&mut self, frame: &Frame<'_>) -> Result<Prepared> {
        let frames = &mut self.frames;
        self.model
            .input_session()
            .with_input(|out| frames.prepare(frame, out))?
    }

    /// Scores the last embedding (allocation-free); sequence, timestamp and latency are
    /// left for the caller.
    pub fn score(&mut self) -> Result<FrameRecord> {
        self.model.scorer.score(self.model.session.embedding())
    }

    /// The encoder's input tensor as the preprocessing last wrote it (`3 x H x W`).
    pub fn input_tensor(&self) -> &[f32] {
        match &self.model.head {
            Some(head) => head.input(),
            None => self.model.session.input(),
        }
    }

    /// The last embedding.
    pub fn embedding(&self) -> &[f32] {
        self.model.session.embedding()
    }

    /// Runs the encoder on the input tensor into the embedding.
    pub fn infer(&mut self) -> Result<()> {
        self.model.run_encoder()
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

/// The frame measures `guards` bound, for a warning: a schema 7 calibration bounds the
/// frame's noise alone, a later one its blocks and duplicates too.
fn frame_bounds_named(guards: Option<&QualityBounds>) -> &'static str {
    let bounded = guards.map_or((false, false), |g| {
        (
            g.frame_blockiness_max.is_some(),
            g.frame_duplicates_max.is_some(),
        )
    });
    match bounded {
        (true, true) => "noise, blocks and duplicates",
        (true, false) => "noise and blocks",
        (false, true) => "noise and duplicates",
        (false, false) => "noise",
    }
}
