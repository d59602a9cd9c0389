//! Frame bytes to pixels the preprocessing reads: raw formats pass through untouched, JPEG
//! (MJPEG cameras, AVI files) decodes into one buffer reused for every frame.

use image::ImageDecoder;
use oodmon_calibration::preprocess::PixelFormat;

use crate::error::{EdgeError, Result};
use crate::frame::{Frame, FrameFormat};

/// Pixels ready for the preprocessing.
#[derive(Debug, Clone, Copy)]
pub struct Pixels<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: Option<usize>,
    pub format: PixelFormat,
}

/// Largest decoded image accepted (a corrupt header must not make us allocate gigabytes).
const MAX_PIXELS: u64 = 1 << 26;

#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
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
                })
            }
        }
    }

    fn decode_jpeg(&mut self, data: &[u8]) -> Result<Pixels<'_>> {
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
        })
    }
}
