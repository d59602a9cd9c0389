//! Frame bytes to pixels the preprocessing reads: raw formats pass through untouched, JPEG
//! (MJPEG cameras, AVI files) decodes into one buffer reused for every frame.
//!
//! JPEG frames much larger than the encoder's input are decoded at 1/4 or 1/8 scale
//! straight from the DCT coefficients (what libjpeg's scaled decoding and Pillow's
//! `Image.draft` do), keeping at least twice the input size as Pillow's `reducing_gap = 2`
//! does, so the resize after it is close to one from the full image at a lower cost.

use image::ImageDecoder;
use oodmon_calibration::preprocess::{PixelFormat, PreprocessSpec};

use crate::error::{EdgeError, Result};
use crate::source::frame::{Frame, FrameFormat};

/// Pixels ready for the preprocessing.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: Option<usize>,
    pub format: PixelFormat,
    /// Decoded at a reduced scale (a DCT-scaled JPEG): the frame's own pixel noise is
    /// averaged away already.
    pub reduced: bool,
}

/// Largest decoded image accepted (a corrupt header must not make us allocate gigabytes).
const MAX_PIXELS: u64 = 1 << 26;

#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Encoder input size, when JPEG frames may be decoded scaled.
    scaled_for: Option<(u32, u32)>,
}

/// The largest JPEG reduction (8, 4, 2 or 1) that keeps the region the preprocessing
/// resamples at least twice the encoder's input size along both axes and divides the frame
/// size exactly (standard camera modes do: 640x480, 1280x720, 1920x1080), so the reduced
/// frame covers exactly the same scene and the crop stays aligned.
/// (Centre crop scales both axes by the larger factor, stretch each by its own; the
/// reduction is common to both axes, so the larger factor bounds it either way.)
pub fn jpeg_reduction(width: u32, height: u32, input: (u32, u32)) -> u32 {
    let (w, h) = input;
    let scale = (w as f64 / width as f64).max(h as f64 / height as f64);
    let limit = 1.0 / (2.0 * scale);
    [8, 4, 2]
        .into_iter()
        .find(|&d| d as f64 <= limit && width.is_multiple_of(d) && height.is_multiple_of(d))
        .unwrap_or(1)
}

impl FrameDecoder {
    /// A decoder for frames going to an encoder with this preprocessing; `scaled_jpeg`
    /// allows DCT-scaled decoding of large JPEG frames.
    pub fn new(spec: &PreprocessSpec, scaled_jpeg: bool) -> Self {
        Self {
            buffer: Vec::new(),
            // with a detail stage the frame is reduced to the detail size first
            scaled_for: scaled_jpeg.then_some(match spec.detail_size {
                Some(d) => (d.min(spec.width), d.min(spec.height)),
                None => (spec.width, spec.height),
            }),
        }
    }

    pub fn decode<'a>(&'a mut self, frame: &Frame<'a>) -> Result<Pixels<'a>> {
        match frame.format {
            FrameFormat::Raw(format) => {
                let row = format.row_bytes(frame.width);
                let stride = frame.stride.unwrap_or(row);
                let need = if frame.height == 0 {
                    0
                } else {
                    stride * (frame.height - 1) + row
                };
                if frame.width == 0 || frame.height == 0 || stride < row || frame.data.len() < need
                {
                    return Err(EdgeError::Frame(format!(
                        "{} bytes for a {}x{} {format:?} frame (stride {stride}) that needs {need}",
                        frame.data.len(),
                        frame.width,
                        frame.height
                    )));
                }
                Ok(Pixels {
                    data: frame.data,
                    width: frame.width,
                    height: frame.height,
                    stride: frame.stride,
                    format,
                    reduced: false,
                })
            }
            FrameFormat::Jpeg => self.decode_jpeg(frame.data),
            FrameFormat::Encoded => {
                // image files allocate while decoding anyway; take the pixels without a copy
                let img = image::load_from_memory(frame.data)
                    .map_err(|e| EdgeError::Decode(e.to_string()))?
                    .into_rgb8();
                let (w, h) = img.dimensions();
                self.buffer = img.into_raw();
                Ok(Pixels {
                    data: &self.buffer,
                    width: w as usize,
                    height: h as usize,
                    stride: None,
                    format: PixelFormat::Rgb8,
                    reduced: false,
                })
            }
        }
    }

    fn decode_jpeg(&mut self, data: &[u8]) -> Result<Pixels<'_>> {
        if let Some(input) = self.scaled_for {
            let mut decoder = jpeg_decoder::Decoder::new(data);
            decoder
                .read_info()
                .map_err(|e| EdgeError::Decode(format!("JPEG: {e}")))?;
            let info = decoder
                .info()
                .ok_or_else(|| EdgeError::Decode("JPEG without a frame header".into()))?;
            let (w, h) = (info.width as u32, info.height as u32);
            if w == 0 || h == 0 || w as u64 * h as u64 > MAX_PIXELS {
                return Err(EdgeError::Decode(format!("JPEG of {w}x{h} pixels")));
            }
            // at 1/2 the full decode (zune-jpeg) is as fast: entropy decoding dominates
            let d = jpeg_reduction(w, h, input);
            if d >= 4 {
                return self.decode_jpeg_scaled(decoder, w.div_ceil(d), h.div_ceil(d));
            }
        }
        let decoder = image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(data))
            .map_err(|e| EdgeError::Decode(format!("JPEG: {e}")))?;
        let (w, h) = decoder.dimensions();
        let format = match decoder.color_type() {
            image::ColorType::Rgb8 => PixelFormat::Rgb8,
            image::ColorType::L8 => PixelFormat::Gray8,
            other => {
                return Err(EdgeError::Decode(format!(
                    "JPEG with {other:?} pixels is not supported"
                )))
            }
        };
        let bytes = decoder.total_bytes();
        if w == 0 || h == 0 || bytes > MAX_PIXELS * 3 {
            return Err(EdgeError::Decode(format!("JPEG of {w}x{h} pixels")));
        }
        self.buffer.resize(bytes as usize, 0);
        decoder
            .read_image(&mut self.buffer)
            .map_err(|e| EdgeError::Decode(format!("JPEG: {e}")))?;
        Ok(Pixels {
            data: &self.buffer,
            width: w as usize,
            height: h as usize,
            stride: None,
            format,
            reduced: false,
        })
    }

    fn decode_jpeg_scaled(
        &mut self,
        mut decoder: jpeg_decoder::Decoder<&[u8]>,
        width: u32,
        height: u32,
    ) -> Result<Pixels<'_>> {
        let (w, h) = decoder
            .scale(width as u16, height as u16)
            .map_err(|e| EdgeError::Decode(format!("JPEG: {e}")))?;
        let pixels = decoder
            .decode()
            .map_err(|e| EdgeError::Decode(format!("JPEG: {e}")))?;
        let format = match decoder.info().map(|i| i.pixel_format) {
            Some(jpeg_decoder::PixelFormat::RGB24) => PixelFormat::Rgb8,
            Some(jpeg_decoder::PixelFormat::L8) => PixelFormat::Gray8,
            other => {
                return Err(EdgeError::Decode(format!(
                    "JPEG with {other:?} pixels is not supported"
                )))
            }
        };
        let (w, h) = (w as usize, h as usize);
        if pixels.len() < format.row_bytes(w) * h {
            return Err(EdgeError::Decode(format!(
                "JPEG decoded to {} bytes, short of {w}x{h} pixels",
                pixels.len()
            )));
        }
        self.buffer = pixels;
        Ok(Pixels {
            data: &self.buffer,
            width: w,
            height: h,
            stride: None,
            format,
            reduced: true,
        })
    }
}
