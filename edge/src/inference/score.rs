//! The scoring stage: one embedding against the calibration's clusters and thresholds,
//! into the frame's record (score, nearest cluster and its class, p-value, decision), with
//! no allocation per frame.

use oodmon_calibration::quality::{CameraFault, ImageQuality};
use oodmon_calibration::{CalibrationArtifact, Detector, Scratch};
use serde::Serialize;

use crate::error::Result;

/// Time spent in each stage of one frame, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageLatency {
    pub decode_us: u32,
    pub preprocess_us: u32,
    /// Image-quality measures and the camera guards.
    pub quality_us: u32,
    /// Waiting for the model (the overlapped loop; 0 in the sequential one).
    pub queue_us: u32,
    pub inference_us: u32,
    pub scoring_us: u32,
}

impl StageLatency {
    /// From the start of decoding to the frame's record.
    pub fn total_us(&self) -> u32 {
        self.decode_us
            + self.preprocess_us
            + self.quality_us
            + self.queue_us
            + self.inference_us
            + self.scoring_us
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
    /// What the picture looks like (on the encoder's input).
    pub quality: ImageQuality,
    /// The camera guard the frame fails: the model's verdict on it is not trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<CameraFault>,
    /// Fingerprint of the preprocessed frame: identical frames share it (frozen camera).
    #[serde(skip)]
    pub fingerprint: u64,
}

/// A cheap fingerprint of a frame's preprocessed pixels (FNV-1a over the f32 bits), for
/// frozen-camera detection.
pub fn fingerprint(values: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        h ^= v.to_bits() as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The detector with its scratch space and the calibration's cluster-to-class map.
pub struct FrameScorer {
    detector: Detector,
    scratch: Scratch,
    has_p_values: bool,
    class_names: Vec<String>,
    cluster_class: Vec<Option<usize>>,
}

impl std::fmt::Debug for FrameScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameScorer({} clusters)", self.cluster_class.len())
    }
}

impl FrameScorer {
    pub fn new(detector: Detector, artifact: &CalibrationArtifact) -> Self {
        Self {
            scratch: detector.scorer.scratch(1),
            has_p_values: !detector.thresholds.calibration_scores.is_empty(),
            detector,
            class_names: artifact.class_names.clone(),
            cluster_class: artifact.model.cluster_class.clone(),
        }
    }

    /// Scores one embedding (allocation-free); sequence, timestamps, latency and
    /// fingerprint are left for the caller.
    pub fn score(&mut self, embedding: &[f32]) -> Result<FrameRecord> {
        let d = self.detector.decide(embedding, &mut self.scratch)?;
        Ok(FrameRecord {
            sequence: 0,
            timestamp_us: 0,
            media_us: None,
            score: d.score,
            nearest: d.nearest,
            nearest_class: self.cluster_class(d.nearest),
            p_value: self.has_p_values.then_some(d.p_value),
            threshold: d.threshold,
            ood: d.ood,
            latency: StageLatency::default(),
            quality: ImageQuality::default(),
            camera: None,
            fingerprint: 0,
        })
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
}
