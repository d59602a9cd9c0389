//! Frames through a camera corruption (`--corrupt KIND:SEVERITY`): what the monitor does
//! when the camera is dark, blurred, dirty or noisy, measured on any source. A test and
//! study tool: each frame is decoded to RGB, degraded (seed = its sequence number) and
//! handed on as raw RGB, so decoding happens here and its cost moves out of the decode
//! stage; the corruption allocates per frame.

use oodmon_calibration::corrupt::Corruption;
use oodmon_calibration::preprocess::{to_rgb8, PixelFormat, PreprocessSpec};

use super::decode::FrameDecoder;
use super::frame::{Frame, FrameFormat};
use super::FrameSource;
use crate::error::SourceError;

pub struct CorruptedSource<S> {
    inner: S,
    corruption: Corruption,
    decoder: FrameDecoder,
    rgb: Vec<u8>,
    out: Vec<u8>,
}

impl<S: FrameSource> CorruptedSource<S> {
    pub fn new(inner: S, corruption: Corruption) -> Self {
        Self {
            inner,
            corruption,
            // full-resolution decoding: the corruption sees the frame the camera made
            decoder: FrameDecoder::new(&PreprocessSpec::cifar(32), false),
            rgb: Vec::new(),
            out: Vec::new(),
        }
    }
}

impl<S: FrameSource> FrameSource for CorruptedSource<S> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        let name = self.inner.describe();
        let bad = |problem: String| SourceError::BadFrame {
            source_name: name.clone(),
            problem,
        };
        let Some(frame) = self.inner.next_frame()? else {
            return Ok(None);
        };
        let (sequence, timestamp_us, media_us) =
            (frame.sequence, frame.timestamp_us, frame.media_us);
        let pixels = self
            .decoder
            .decode(&frame)
            .map_err(|e| bad(e.to_string()))?;
        let (w, h) = (pixels.width, pixels.height);
        to_rgb8(
            pixels.data,
            w,
            h,
            pixels.stride,
            pixels.format,
            &mut self.rgb,
        )
        .map_err(|e| bad(e.to_string()))?;
        self.out = self
            .corruption
            .apply(&self.rgb, w, h, sequence)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Some(Frame {
            data: &self.out,
            width: w,
            height: h,
            stride: None,
            format: FrameFormat::Raw(PixelFormat::Rgb8),
            timestamp_us,
            media_us,
            sequence,
        }))
    }

    fn describe(&self) -> String {
        format!("{} through {}", self.inner.describe(), self.corruption)
    }
}
