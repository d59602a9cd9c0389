//! Raw frames of a fixed size and format from a byte stream: standard input in pipelines
//! (e.g. GStreamer's `appsink`/`fdsink` on Jetson CSI cameras) or any reader in tests.

use std::io::Read;

use crate::error::SourceError;
use crate::source::frame::{now_us, Frame, FrameFormat};
use crate::source::FrameSource;

pub struct RawStream<R> {
    reader: R,
    name: String,
    width: usize,
    height: usize,
    format: FrameFormat,
    buffer: Vec<u8>,
    sequence: u64,
}

impl<R: Read> RawStream<R> {
    pub fn new(
        reader: R,
        name: &str,
        width: usize,
        height: usize,
        format: FrameFormat,
    ) -> Result<Self, SourceError> {
        let FrameFormat::Raw(pixels) = format else {
            return Err(SourceError::Open {
                source_name: name.into(),
                problem: "raw streams carry rgb, bgr, gray or yuyv frames".into(),
            });
        };
        if width == 0 || height == 0 || width > 1 << 14 || height > 1 << 14 {
            return Err(SourceError::Open {
                source_name: name.into(),
                problem: format!("frame size {width}x{height} is out of range"),
            });
        }
        let bytes = pixels.row_bytes(width) * height;
        Ok(Self {
            reader,
            name: name.into(),
            width,
            height,
            format,
            buffer: vec![0; bytes],
            sequence: 0,
        })
    }
}

impl<R: Read> FrameSource for RawStream<R> {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        let mut filled = 0;
        while filled < self.buffer.len() {
            match self.reader.read(&mut self.buffer[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SourceError::Disconnected {
                        source_name: self.name.clone(),
                        problem: e.to_string(),
                    })
                }
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        if filled < self.buffer.len() {
            return Err(SourceError::BadFrame {
                source_name: self.name.clone(),
                problem: format!(
                    "stream ended inside a frame ({filled} of {} bytes)",
                    self.buffer.len()
                ),
            });
        }
        self.sequence += 1;
        Ok(Some(Frame {
            data: &self.buffer,
            width: self.width,
            height: self.height,
            stride: None,
            format: self.format,
            timestamp_us: now_us(),
            media_us: None,
            sequence: self.sequence - 1,
        }))
    }

    fn describe(&self) -> String {
        format!(
            "{}: raw {}x{} {:?}",
            self.name, self.width, self.height, self.format
        )
    }
}
