//! `edge.toml`: the run's settings, parsed strictly (`deny_unknown_fields`, so a typo is an
//! error and not a silently ignored setting) and validated before any device is opened.
//! Command-line values override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alarm::AlarmConfig;
use crate::error::{EdgeError, Result};
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
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 2000,
            max_backoff_ms: 5000,
            looped: false,
            scaled_jpeg_decode: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Bad frames in a row (undecodable, wrong size, missing) after which the run reports
    /// a fault and stops with an error.
    pub max_consecutive_bad_frames: u32,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            max_consecutive_bad_frames: 30,
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
            problem: e.message().to_string(),
        })?;
        config.validate().map_err(|e| EdgeError::Config {
            path: path.into(),
            problem: e.to_string(),
        })?;
        Ok(config)
    }

    /// Checks every value that can be checked without touching a device.
    pub fn validate(&self) -> Result<()> {
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
        self.alarm
            .validate()
            .map_err(|e| EdgeError::invalid("alarm", e))?;
        self.serial
            .validate()
            .map_err(|e| EdgeError::invalid("serial", e))?;
        if self.faults.max_consecutive_bad_frames == 0 {
            return Err(EdgeError::invalid(
                "faults.max_consecutive_bad_frames",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn source_options(&self) -> SourceOptions {
        SourceOptions {
            looped: self.camera.looped,
            timeout: Duration::from_millis(self.camera.timeout_ms),
            max_backoff: Duration::from_millis(self.camera.max_backoff_ms),
        }
    }
}
