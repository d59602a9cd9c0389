//! The per-frame work: decode, preprocess straight into the encoder's preallocated input
//! tensor, run tract, and score against the clusters. Everything but tract's own run is
//! allocation-free once the first frame of a given geometry has been seen.

use std::sync::Arc;
use std::time::Instant;

use oodmon_calibration::bundle::Bundle;
use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
use oodmon_calibration::{Detector, PreprocessSpec, Scratch};
use serde::Serialize;
use tract_onnx::prelude::*;

use crate::decode::{FrameDecoder, Pixels};
use crate::error::{EdgeError, Result};
use crate::frame::Frame;

/// Time spent in each stage of one frame, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageLatency {
    pub decode_us: u32,
    pub preprocess_us: u32,
    pub inference_us: u32,
    pub scoring_us: u32,
}

impl StageLatency {
    pub fn total_us(&self) -> u32 {
        self.decode_us + self.preprocess_us + self.inference_us + self.scoring_us
    }
}

/// What the monitor concluded about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FrameRecord {
    pub sequence: u64,
    /// Capture time, microseconds since the Unix epoch (a label).
    pub timestamp_us: u64,
    /// Media time for frames from files (see [`Frame::media_us`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_us: Option<u64>,
    /// Distance to the nearest cluster (higher = more out-of-distribution).
    pub score: f64,
    /// Nearest cluster.
    pub nearest: usize,
    /// The class of the nearest cluster (the calibration's cluster-to-class map), when the
    /// clusters have classes.
    pub nearest_class: Option<usize>,
    /// Split-conformal p-value, when the calibration kept its scores.
    pub p_value: Option<f64>,
    pub threshold: f64,
    pub ood: bool,
    pub latency: StageLatency,
    /// Fingerprint of the preprocessed frame: identical frames share it (frozen camera).
    #[serde(skip)]
    pub fingerprint: u64,
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// A loaded bundle, ready to process frames of any geometry (one preprocessing plan is
/// kept and replanned only when the frame size or format changes).
pub struct Engine {
    state: TypedSimpleState,
    input: Arc<Tensor>,
    embedding: Vec<f32>,
    spec: PreprocessSpec,
    preprocessor: Option<Preprocessor>,
    decoder: FrameDecoder,
    detector: Detector,
    scratch: Scratch,
    has_p_values: bool,
    class_names: Vec<String>,
    cluster_class: Vec<Option<usize>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({:?})", self.input.shape())
    }
}

impl Engine {
    pub fn new(bundle: Bundle) -> Result<Self> {
        let spec = bundle.preprocessing().clone();
        let (w, h) = bundle.encoder.input_size();
        let state = bundle
            .encoder
            .plan()
            .spawn()
            .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
        let input = Tensor::zero::<f32>(&[1, 3, h, w])
            .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
        let scratch = bundle.detector.scorer.scratch(1);
        Ok(Self {
            state,
            input: Arc::new(input),
            embedding: vec![0.0; bundle.encoder.dim()],
            spec: spec.clone(),
            preprocessor: None,
            decoder: FrameDecoder::new(&spec, true),
            has_p_values: !bundle.detector.thresholds.calibration_scores.is_empty(),
            detector: bundle.detector,
            scratch,
            class_names: bundle.artifact.class_names.clone(),
            cluster_class: bundle.artifact.model.cluster_class.clone(),
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
        self.cluster_class.get(cluster).copied().flatten()
    }

    /// The name of a class, when the calibration has names.
    pub fn class_name(&self, class: usize) -> Option<&str> {
        self.class_names.get(class).map(String::as_str)
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
        record.fingerprint = crate::alarm::fingerprint(self.input_tensor());
        Ok(record)
    }

    /// Decodes the frame and writes the encoder's input tensor; returns the decode and
    /// preprocessing times (us). Allocation-free for raw frames once the geometry is known.
    pub fn prepare(&mut self, frame: &Frame<'_>) -> Result<(u32, u32)> {
        let t = Instant::now();
        let pixels = self.decoder.decode(frame)?;
        let decode_us = micros(t);
        let t = Instant::now();
        preprocess_into(&mut self.preprocessor, &self.spec, &pixels, &mut self.input)?;
        Ok((decode_us, micros(t)))
    }

    /// Scores the last embedding (allocation-free); sequence, timestamp and latency are
    /// left for the caller.
    pub fn score(&mut self) -> Result<FrameRecord> {
        let d = self.detector.decide(&self.embedding, &mut self.scratch)?;
        Ok(FrameRecord {
            sequence: 0,
            timestamp_us: 0,
            media_us: None,
            score: d.score,
            nearest: d.nearest,
            nearest_class: self.cluster_class.get(d.nearest).copied().flatten(),
            p_value: self.has_p_values.then_some(d.p_value),
            threshold: d.threshold,
            ood: d.ood,
            latency: StageLatency::default(),
            fingerprint: 0,
        })
    }

    /// The encoder's input tensor as the preprocessing last wrote it (`3 x H x W`).
    pub fn input_tensor(&self) -> &[f32] {
        self.input
            .as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().ok())
            .unwrap_or(&[])
    }

    /// The last embedding.
    pub fn embedding(&self) -> &[f32] {
        &self.embedding
    }

    /// Runs the encoder on the input tensor into the embedding.
    pub fn infer(&mut self) -> Result<()> {
        let out = self
            .state
            .run(tvec!(TValue::from_const(self.input.clone())))
            .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
        let view = out[0]
            .try_as_plain_ram()
            .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
        let values = view
            .as_slice::<f32>()
            .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
        if values.len() != self.embedding.len() {
            return Err(EdgeError::Inference(format!(
                "{} outputs, expected {}",
                values.len(),
                self.embedding.len()
            )));
        }
        self.embedding.copy_from_slice(values);
        if self.embedding.iter().any(|v| !v.is_finite()) {
            return Err(EdgeError::NonFinite("embedding".into()));
        }
        Ok(())
    }
}

/// Times `runs` inferences of an encoder alone, the way the engine runs it (one session,
/// one preallocated input), after `warmup` untimed runs; microseconds per run.
pub fn time_inference(
    encoder: &oodmon_calibration::onnx::TractEncoder,
    warmup: usize,
    runs: usize,
) -> Result<Vec<u32>> {
    let (w, h) = encoder.input_size();
    let err = |e: TractError| EdgeError::Inference(format!("{e:#}"));
    let mut state = encoder.plan().spawn().map_err(err)?;
    let mut input = Tensor::zero::<f32>(&[1, 3, h, w]).map_err(err)?;
    // a fixed non-trivial input (zeros can take shortcuts in some kernels)
    if let Ok(mut view) = input.try_as_plain_ram_mut() {
        if let Ok(values) = view.as_slice_mut::<f32>() {
            for (i, v) in values.iter_mut().enumerate() {
                *v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            }
        }
    }
    let input = Arc::new(input);
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t = Instant::now();
        state
            .run(tvec!(TValue::from_const(input.clone())))
            .map_err(err)?;
        if i >= warmup {
            times.push(micros(t));
        }
    }
    Ok(times)
}

/// Writes the preprocessed frame into the input tensor, replanning the preprocessing only
/// when the geometry or pixel format changes.
fn preprocess_into(
    slot: &mut Option<Preprocessor>,
    spec: &PreprocessSpec,
    pixels: &Pixels<'_>,
    input: &mut Arc<Tensor>,
) -> Result<()> {
    let fits = slot
        .as_ref()
        .is_some_and(|p| p.source() == (pixels.width, pixels.height, pixels.format));
    if !fits {
        *slot = Some(Preprocessor::new(
            spec,
            pixels.width,
            pixels.height,
            pixels.format,
        )?);
    }
    let pre = slot.as_mut().expect("planned above");
    // tract has released the previous input after its run; if anything still holds it,
    // a fresh tensor is made rather than writing under a reader
    if Arc::get_mut(input).is_none() {
        *input = Arc::new((**input).clone());
    }
    let tensor = Arc::get_mut(input).expect("unique after the check above");
    let mut view = tensor
        .try_as_plain_ram_mut()
        .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
    let out = view
        .as_slice_mut::<f32>()
        .map_err(|e| EdgeError::Inference(format!("{e:#}")))?;
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
