//! The preprocessing spec: how a camera frame or image becomes the encoder's input tensor.
//! It is stored in the calibration artifact so that the edge reproduces exactly what the
//! trainer and the calibration saw.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizePolicy {
    /// Scale so the shorter side matches, then crop the centre (keeps aspect ratio).
    ShorterSideCenterCrop,
    /// Scale both sides independently to the input size.
    Stretch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    Nearest,
    Bilinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Input size, resizing, channel order, normalisation and tensor layout of an encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub resize: ResizePolicy,
    pub filter: ResizeFilter,
    pub channel_order: ChannelOrder,
    /// Per-channel mean and std applied to values scaled to [0, 1]: `(v / 255 - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub layout: Layout,
}

impl PreprocessSpec {
    /// The CIFAR convention: 32x32 RGB, NCHW, CIFAR-10 channel statistics.
    pub fn cifar(size: u32) -> Self {
        Self {
            width: size,
            height: size,
            resize: ResizePolicy::ShorterSideCenterCrop,
            filter: ResizeFilter::Bilinear,
            channel_order: ChannelOrder::Rgb,
            mean: [0.4914, 0.4822, 0.4465],
            std: [0.2470, 0.2435, 0.2616],
            layout: Layout::Nchw,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(Error::InvalidArtifact(format!(
                "preprocessing input size {}x{} is out of range",
                self.width, self.height
            )));
        }
        if self.mean.iter().any(|v| !v.is_finite())
            || self.std.iter().any(|v| !v.is_finite() || *v <= 0.0)
        {
            return Err(Error::InvalidArtifact(
                "preprocessing mean/std must be finite with std > 0".into(),
            ));
        }
        Ok(())
    }
}
