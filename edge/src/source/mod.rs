//! Where frames come from: one trait, with V4L2 cameras, image files, MJPEG AVI files and
//! raw frames on standard input behind it, so the frame loop and its tests do not care.

mod avi;
mod corrupted;
pub mod decode;
pub mod frame;
mod images;
mod raw;
#[cfg(all(feature = "v4l2", target_os = "linux"))]
mod v4l2;

use std::time::Duration;

pub use avi::{AviSource, ReadSeek};
pub use corrupted::CorruptedSource;
pub use images::ImageFiles;
pub use raw::RawStream;
#[cfg(all(feature = "v4l2", target_os = "linux"))]
pub use v4l2::V4l2Camera;

use crate::error::SourceError;
use crate::source::frame::{Frame, FrameFormat};

/// A stream of frames. `Ok(None)` ends the stream; transient errors (timeout, a bad frame,
/// a disconnected camera that is being reopened) let the caller try again.
pub trait FrameSource {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError>;
    /// What this source reads, for logs.
    fn describe(&self) -> String;
}

impl<S: FrameSource + ?Sized> FrameSource for Box<S> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        (**self).next_frame()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// A parsed `--source` value.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// `v4l:/dev/video0[:WxH@FPS[:yuyv|mjpeg]]`
    V4l {
        device: String,
        size: Option<(u32, u32)>,
        fps: Option<u32>,
        format: Option<FrameFormat>,
    },
    /// `images:GLOB` or `images:DIR`
    Images { pattern: String },
    /// `avi:FILE`
    Avi { path: String },
    /// `stdin:WxH:FORMAT`
    Stdin {
        width: usize,
        height: usize,
        format: FrameFormat,
    },
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    (w > 0 && h > 0).then_some((w, h))
}

impl std::str::FromStr for SourceSpec {
    type Err = crate::error::ParseError;
    fn from_str(s: &str) -> Result<Self, crate::error::ParseError> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("source {s:?}: expected KIND:..., e.g. v4l:/dev/video0, images:DIR/*.png, avi:FILE or stdin:640x480:yuyv"))?;
        match kind {
            "v4l" => {
                let mut parts = rest.split(':');
                let device = parts.next().unwrap_or_default().to_string();
                if device.is_empty() {
                    return Err("v4l: no device (e.g. v4l:/dev/video0)".into());
                }
                let (mut size, mut fps, mut format) = (None, None, None);
                if let Some(mode) = parts.next() {
                    let (sz, rate) = match mode.split_once('@') {
                        Some((sz, rate)) => (sz, Some(rate)),
                        None => (mode, None),
                    };
                    size =
                        Some(parse_size(sz).ok_or_else(|| format!("v4l: bad size {sz:?} (WxH)"))?);
                    if let Some(rate) = rate {
                        fps = Some(
                            rate.parse::<u32>()
                                .ok()
                                .filter(|r| *r > 0)
                                .ok_or_else(|| format!("v4l: bad frame rate {rate:?}"))?,
                        );
                    }
                }
                if let Some(f) = parts.next() {
                    let f: FrameFormat = f.parse()?;
                    if !matches!(
                        f,
                        FrameFormat::Jpeg
                            | FrameFormat::Raw(oodmon_calibration::preprocess::PixelFormat::Yuyv)
                    ) {
                        return Err("v4l: format must be yuyv or mjpeg".into());
                    }
                    format = Some(f);
                }
                if parts.next().is_some() {
                    return Err(format!("v4l: too many fields in {s:?}").into());
                }
                Ok(SourceSpec::V4l {
                    device,
                    size,
                    fps,
                    format,
                })
            }
            "images" if !rest.is_empty() => Ok(SourceSpec::Images {
                pattern: rest.into(),
            }),
            "avi" if !rest.is_empty() => Ok(SourceSpec::Avi { path: rest.into() }),
            "stdin" => {
                let (size, format) = rest
                    .split_once(':')
                    .ok_or_else(|| "stdin: expected stdin:WxH:FORMAT".to_string())?;
                let (w, h) = parse_size(size).ok_or_else(|| format!("stdin: bad size {size:?}"))?;
                let format: FrameFormat = format.parse()?;
                if !matches!(format, FrameFormat::Raw(_)) {
                    return Err("stdin: raw formats only (rgb, bgr, gray, yuyv)".into());
                }
                if format == FrameFormat::Raw(oodmon_calibration::preprocess::PixelFormat::Yuyv)
                    && w % 2 == 1
                {
                    return Err(format!(
                        "stdin: YUYV frames have an even width (two pixels share one U and V); {w} is odd"
                    ).into());
                }
                Ok(SourceSpec::Stdin {
                    width: w as usize,
                    height: h as usize,
                    format,
                })
            }
            _ => Err(
                format!("source {s:?}: unknown kind {kind:?} (v4l, images, avi or stdin)").into(),
            ),
        }
    }
}

/// Settings that apply to every source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Start again at the end (image files, AVI).
    pub looped: bool,
    /// How long to wait for a camera frame.
    pub timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            looped: false,
            timeout: Duration::from_millis(2000),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Opens the source a spec names.
pub fn open(
    spec: &SourceSpec,
    options: &SourceOptions,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match spec {
        SourceSpec::Images { pattern } => Box::new(ImageFiles::open(pattern, options.looped)?),
        SourceSpec::Avi { path } => Box::new(AviSource::open(path, options.looped)?),
        SourceSpec::Stdin {
            width,
            height,
            format,
        } => Box::new(RawStream::new(
            std::io::stdin().lock(),
            "stdin",
            *width,
            *height,
            *format,
        )?),
        #[cfg(all(feature = "v4l2", target_os = "linux"))]
        SourceSpec::V4l {
            device,
            size,
            fps,
            format,
        } => Box::new(V4l2Camera::open(device, *size, *fps, *format, options)?),
        #[cfg(not(all(feature = "v4l2", target_os = "linux")))]
        SourceSpec::V4l { device, .. } => {
            return Err(SourceError::Open {
                source_name: device.clone(),
                problem: "this build has no V4L2 support (feature v4l2, Linux only)".into(),
            })
        }
    })
}
