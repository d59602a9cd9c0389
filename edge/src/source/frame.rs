//! A frame as sources deliver it: borrowed bytes in the camera's own format, so nothing is
//! copied before decoding or preprocessing.

use oodmon_calibration::preprocess::PixelFormat;

/// The byte format of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// Raw pixels the preprocessing reads directly.
    Raw(PixelFormat),
    /// One JPEG image (USB cameras' MJPEG, AVI files, image files).
    Jpeg,
    /// Any image file format the `image` crate decodes (PNG, JPEG, ...).
    Encoded,
}

impl std::str::FromStr for FrameFormat {
    type Err = crate::error::ParseError;
    fn from_str(s: &str) -> Result<Self, crate::error::ParseError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "rgb" | "rgb8" | "rgb24" => FrameFormat::Raw(PixelFormat::Rgb8),
            "bgr" | "bgr8" | "bgr24" => FrameFormat::Raw(PixelFormat::Bgr8),
            "gray" | "gray8" | "grey" | "y8" => FrameFormat::Raw(PixelFormat::Gray8),
            "yuyv" | "yuy2" => FrameFormat::Raw(PixelFormat::Yuyv),
            "mjpeg" | "mjpg" | "jpeg" => FrameFormat::Jpeg,
            other => {
                return Err(format!(
                    "unknown frame format {other:?} (rgb, bgr, gray, yuyv or mjpeg)"
                )
                .into())
            }
        })
    }
}

/// One captured frame, borrowed from the source until its next call.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub data: &'a [u8],
    /// Pixel size as the source reports it (0 when only decoding tells, e.g. image files).
    pub width: usize,
    pub height: usize,
    /// Bytes per row for raw formats (`None`: tightly packed).
    pub stride: Option<usize>,
    pub format: FrameFormat,
    /// Capture time, microseconds since the Unix epoch: a label only (the wall clock may
    /// step).
    pub timestamp_us: u64,
    /// Media time of a frame from a file (from its frame rate, running on across loops), on
    /// which the alarm's hold and clear times are measured; `None` for live sources, whose
    /// frames are timed by the monotonic clock as they arrive.
    pub media_us: Option<u64>,
    /// The source's frame counter; gaps are dropped frames.
    pub sequence: u64,
}

/// Frame interval of sources without a frame rate of their own (image files, AVI files
/// whose header gives none): 30 frames/s.
pub const NOMINAL_FRAME_US: u32 = 33_333;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
