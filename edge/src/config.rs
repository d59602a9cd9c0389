//! `edge.toml`: the run's settings, parsed strictly (`deny_unknown_fields`, so a typo is an
//! error and not a silently ignored setting) and validated before any device is opened.
//! Command-line values override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alarm::AlarmConfig;
use crate::error::{EdgeError, Result};
use crate::inference::{Backlog, LoopMode, OverlapSettings};
use crate::output::{GpioConfig, SerialConfig};
use crate::source::{SourceOptions, SourceSpec};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Bundle directory (encoder.onnx + calib.json).
    pub bundle: Option<PathBuf>,
    /// Frame source, as on the command line (`v4l:/dev/video0:640x480@30:yuyv`, ...).
    pub source: Option<String>,
    #[serde(default)]
    pub camera: CameraConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub faults: FaultConfig,
    #[serde(default)]
    pub output: OutputConfig,
    /// Debouncing and fault rules.
    #[serde(default)]
    pub alarm: AlarmConfig,
    /// Protocol frames to a controller over a serial line.
    #[serde(default)]
    pub serial: SerialConfig,
    /// A fail-safe alarm line.
    #[serde(default)]
    pub gpio: GpioConfig,
    /// The frames around each alarm, on disk next to the journal.
    #[serde(default)]
    pub evidence: crate::output::evidence::EvidenceConfig,
    /// Alarm events to a fleet's MQTT broker, from the journal.
    #[cfg(feature = "mqtt")]
    #[serde(default)]
    pub mqtt: crate::output::mqtt::MqttConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// Longest wait for one frame before it counts as missing.
    pub timeout_ms: u64,
    /// Longest wait between reconnection attempts to an unplugged camera.
    pub max_backoff_ms: u64,
    /// Play file sources again from the start when they end.
    pub looped: bool,
    /// Decode JPEG frames much larger than the encoder's input at 1/4 or 1/8 scale
    /// from the DCT coefficients (at least twice the input size is kept); off decodes every
    /// pixel.
    pub scaled_jpeg_decode: bool,
    /// Degrade every frame with a camera corruption, `KIND:SEVERITY` (tests and studies of
    /// a bad camera; never on a vehicle).
    pub corrupt: Option<String>,
    /// Check every frame against the calibration's image-quality bounds, raising a camera
    /// FAULT (`camera_dark`, ...) on k of n degraded frames. Off: frames are still
    /// measured and recorded, but never judged.
    pub guards: bool,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 2000,
            max_backoff_ms: 5000,
            looped: false,
            scaled_jpeg_decode: true,
            corrupt: None,
            guards: true,
        }
    }
}

/// Whether the frame side (read, decode, preprocess) and the model side (inference,
/// scoring) run on two threads, frame N+1 being prepared while frame N is judged.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OverlapMode {
    /// On when the machine has at least two cores.
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for OverlapMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("`{s}` is not one of auto, on, off")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    pub overlap: OverlapMode,
    /// The engine that runs the encoder: tract (default), tract-cuda, onnxruntime (the
    /// last two when built with their cargo features).
    pub backend: oodmon_runtime::Backend,
    /// Before a run on a backend other than tract, compare it with tract on the built-in
    /// frames and refuse to start when its embeddings drift from the calibration's.
    pub verify_backend: bool,
    /// With overlap and tract on the CPU: the encoder is cut in two at the tensor nearest
    /// to this share of its multiply-adds, and the frame thread runs the head (that share)
    /// on a frame it prepared while the model thread is busy, where the measured times say
    /// the frame thread is the less loaded one, so that both cores carry part of each
    /// inference (the same embeddings on x86-64). 0 keeps the encoder whole.
    pub model_head_share: f64,
}

/// `share` as a `model_head_share` (`what` names the setting): in [0, 1).
pub fn check_model_head_share(what: &'static str, share: f64) -> Result<()> {
    if (0.0..1.0).contains(&share) {
        return Ok(());
    }
    Err(EdgeError::invalid(
        what,
        format!(
            "{share} is not a share in [0, 1): the part of the encoder's work on the frame \
             thread (0: none)"
        ),
    ))
}

/// The default `[pipeline] model_head_share`: on the built-in EfficientNet-Lite0 about 40%
/// of the inference time with the int8 pointwise layers (its early layers run fewer
/// multiply-adds per microsecond). Since the frame thread runs the head only while the
/// model thread is busy and its own side is the lighter one, a heavy frame side (a large
/// JPEG) keeps the encoder whole (BENCHMARKS.md, "The encoder cut in two"). Off
/// (0) on other architectures than x86-64: there tract's own kernels (aarch64 NEON) are
/// not proven to give the whole encoder's values bit for bit on both halves, and bundles
/// are calibrated on the whole encoder; set it to cut there.
pub const DEFAULT_MODEL_HEAD_SHARE: f64 = if cfg!(target_arch = "x86_64") {
    0.2
} else {
    0.0
};

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            overlap: OverlapMode::default(),
            backend: oodmon_runtime::Backend::default(),
            verify_backend: true,
            model_head_share: DEFAULT_MODEL_HEAD_SHARE,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Bad frames in a row (undecodable, wrong size, missing) after which the run reports
    /// a fault and stops with an error.
    pub max_consecutive_bad_frames: u32,
    /// With overlap on a camera: more frames than this dropped unjudged (the model being
    /// busy) among the last `dropped_frames_window` is a FAULT (`frames_dropped`).
    pub max_dropped_frames: u32,
    pub dropped_frames_window: u32,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            max_consecutive_bad_frames: 30,
            max_dropped_frames: OverlapSettings::LIVE.max_dropped,
            dropped_frames_window: OverlapSettings::LIVE.window,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Per-frame records as JSON lines to this file (`-`: standard output).
    pub records: Option<PathBuf>,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Alarm event journal (JSON lines, fsync'd per event).
    pub journal: Option<PathBuf>,
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EdgeError::Config {
            path: path.into(),
            problem: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| EdgeError::Config {
            path: path.into(),
            // the line, since a wrong type's message does not name the key
            problem: match e.span() {
                Some(at) => format!(
                    "line {}: {}",
                    text[..at.start.min(text.len())].matches('\n').count() + 1,
                    e.message()
                ),
                None => e.message().to_string(),
            },
        })?;
        config.validate().map_err(|e| EdgeError::Config {
            path: path.into(),
            problem: e.to_string(),
        })?;
        Ok(config)
    }

    /// [`validate`](Self::validate), and what needs the file and the command line together:
    /// the outputs that follow the journal need one.
    pub fn validate_for_run(&self) -> Result<()> {
        self.validate()?;
        if self.evidence.dir.is_some() && self.output.journal.is_none() {
            return Err(EdgeError::invalid(
                "evidence.dir",
                "evidence follows the journal's events: set output.journal (--journal FILE) too",
            ));
        }
        #[cfg(feature = "mqtt")]
        if self.mqtt.url.is_some() && self.output.journal.is_none() {
            return Err(EdgeError::invalid(
                "mqtt.url",
                "MQTT publishes from the journal: set output.journal (--journal FILE) too",
            ));
        }
        Ok(())
    }

    /// Checks every value that can be checked without touching a device.
    pub fn validate(&self) -> Result<()> {
        check_model_head_share("pipeline.model_head_share", self.pipeline.model_head_share)?;
        if let Some(s) = &self.source {
            s.parse::<SourceSpec>()
                .map_err(|e| EdgeError::invalid("source", e))?;
        }
        if !(1..=600_000).contains(&self.camera.timeout_ms) {
            return Err(EdgeError::invalid(
                "camera.timeout_ms",
                format!("{} is not in 1..=600000", self.camera.timeout_ms),
            ));
        }
        if !(1..=600_000).contains(&self.camera.max_backoff_ms) {
            return Err(EdgeError::invalid(
                "camera.max_backoff_ms",
                format!("{} is not in 1..=600000", self.camera.max_backoff_ms),
            ));
        }
        if let Some(c) = &self.camera.corrupt {
            c.parse::<oodmon_calibration::corrupt::Corruption>()
                .map_err(|e| EdgeError::invalid("camera.corrupt", e))?;
        }
        self.alarm
            .validate()
            .map_err(|e| EdgeError::invalid("alarm", e))?;
        self.serial
            .validate()
            .map_err(|e| EdgeError::invalid("serial", e))?;
        if self.evidence.dir.is_some() {
            self.evidence.validate()?;
        }
        #[cfg(feature = "mqtt")]
        if self.mqtt.url.is_some() {
            self.mqtt.validate()?;
        }
        if self.faults.max_consecutive_bad_frames == 0 {
            return Err(EdgeError::invalid(
                "faults.max_consecutive_bad_frames",
                "must be at least 1",
            ));
        }
        if !(1..=100_000).contains(&self.faults.dropped_frames_window) {
            return Err(EdgeError::invalid(
                "faults.dropped_frames_window",
                format!("{} is not in 1..=100000", self.faults.dropped_frames_window),
            ));
        }
        if self.faults.max_dropped_frames >= self.faults.dropped_frames_window {
            return Err(EdgeError::invalid(
                "faults.max_dropped_frames",
                format!(
                    "{} must be below faults.dropped_frames_window ({}), or no drop rate \
                     would ever be a fault",
                    self.faults.max_dropped_frames, self.faults.dropped_frames_window
                ),
            ));
        }
        Ok(())
    }

    /// How the frame loop runs: overlapped per `[pipeline] overlap` (auto: with two cores
    /// or more); a camera (`live_camera`) drops the oldest frame when the model falls
    /// behind, files and pipes wait so that every frame is judged.
    pub fn loop_mode(&self, live_camera: bool) -> LoopMode {
        let overlap = match self.pipeline.overlap {
            OverlapMode::On => true,
            OverlapMode::Off => false,
            OverlapMode::Auto => std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        };
        if !overlap {
            return LoopMode::Sequential;
        }
        let backlog = if live_camera {
            Backlog::DropOldest
        } else {
            Backlog::Wait
        };
        LoopMode::Overlapped(OverlapSettings {
            backlog,
            window: self.faults.dropped_frames_window,
            max_dropped: self.faults.max_dropped_frames,
        })
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            looped: self.camera.looped,
            timeout: Duration::from_millis(self.camera.timeout_ms),
            max_backoff: Duration::from_millis(self.camera.max_backoff_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoders_head_share_is_a_share() {
        assert_eq!(
            EdgeConfig::default().pipeline.model_head_share,
            DEFAULT_MODEL_HEAD_SHARE
        );
        let off =
            EdgeConfig::parse("[pipeline]\nmodel_head_share = 0.0\n", Path::new("e.toml")).unwrap();
        assert_eq!(off.pipeline.model_head_share, 0.0);
        // a wrong type's message names no key: the line does
        let e = EdgeConfig::parse(
            "[pipeline]\noverlap = \"on\"\nmodel_head_share = \"half\"\n",
            Path::new("e.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3"), "{e}");
        for bad in ["1.0", "-0.1", "nan"] {
            let e = EdgeConfig::parse(
                &format!("[pipeline]\nmodel_head_share = {bad}\n"),
                Path::new("e.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("pipeline.model_head_share"), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap_settings_follow_the_source_and_the_fault_keys() {
        let cfg = EdgeConfig::parse(
            "[pipeline]\noverlap = \"on\"\n[faults]\nmax_dropped_frames = 4\ndropped_frames_window = 10\n",
            Path::new("edge.toml"),
        )
        .unwrap();
        let camera = OverlapSettings {
            backlog: Backlog::DropOldest,
            window: 10,
            max_dropped: 4,
        };
        assert_eq!(cfg.loop_mode(true), LoopMode::Overlapped(camera));
        let files = OverlapSettings {
            backlog: Backlog::Wait,
            ..camera
        };
        assert_eq!(cfg.loop_mode(false), LoopMode::Overlapped(files));
        let off =
            EdgeConfig::parse("[pipeline]\noverlap = \"off\"\n", Path::new("e.toml")).unwrap();
        assert_eq!(off.loop_mode(true), LoopMode::Sequential);
        let auto = EdgeConfig::default();
        assert_eq!(auto.pipeline.overlap, OverlapMode::Auto);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            matches!(auto.loop_mode(true), LoopMode::Overlapped(_)),
            cores >= 2
        );
        for bad in [
            "[pipeline]\noverlap = \"yes\"\n",
            "[faults]\ndropped_frames_window = 0\nmax_dropped_frames = 0\n",
            "[faults]\nmax_dropped_frames = 30\n",
        ] {
            assert!(
                EdgeConfig::parse(bad, Path::new("e.toml")).is_err(),
                "{bad}"
            );
        }
    }
}
