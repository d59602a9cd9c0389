//! MJPEG AVI files (each video frame a JPEG, as USB cameras deliver): a RIFF walker that
//! reads the stream headers once and then one frame chunk per call into a reused buffer.
//! No crate reads AVI containers without pulling in a whole media framework.

use std::io::{Read, Seek, SeekFrom};

use crate::error::SourceError;
use crate::source::frame::{now_us, Frame, FrameFormat};
use crate::source::FrameSource;

/// A reader that can seek: what an AVI source reads from.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Largest frame chunk accepted (a 4K JPEG is a few MB).
const MAX_FRAME_BYTES: u32 = 64 << 20;

pub struct AviSource {
    name: String,
    reader: Box<dyn ReadSeek + Send>,
    len: u64,
    width: usize,
    height: usize,
    frame_us: u32,
    frames: u32,
    /// `##dc` / `##db` of the video stream.
    chunk_ids: [[u8; 4]; 2],
    movi_start: u64,
    looped: bool,
    buffer: Vec<u8>,
    sequence: u64,
}

impl std::fmt::Debug for AviSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl AviSource {
    pub fn open(path: &str, looped: bool) -> Result<Self, SourceError> {
        let file = std::fs::File::open(path).map_err(|e| SourceError::Open {
            source_name: format!("avi:{path}"),
            problem: e.to_string(),
        })?;
        Self::from_reader(
            Box::new(std::io::BufReader::new(file)),
            &format!("avi:{path}"),
            looped,
        )
    }

    /// An AVI held in memory (e.g. compiled into the binary).
    pub fn from_bytes(bytes: &'static [u8], name: &str, looped: bool) -> Result<Self, SourceError> {
        Self::from_reader(Box::new(std::io::Cursor::new(bytes)), name, looped)
    }

    /// Reads an AVI from any seekable reader (a file, bytes in memory).
    pub fn from_reader(
        mut reader: Box<dyn ReadSeek + Send>,
        name: &str,
        looped: bool,
    ) -> Result<Self, SourceError> {
        let err = |problem: String| SourceError::Open {
            source_name: name.into(),
            problem,
        };
        let io = |e: std::io::Error| err(format!("not a readable AVI file: {e}"));
        let len = reader.seek(SeekFrom::End(0)).map_err(io)?;
        reader.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut head = [0u8; 12];
        reader.read_exact(&mut head).map_err(io)?;
        if &head[..4] != b"RIFF" || &head[8..] != b"AVI " {
            return Err(err("not an AVI file (no RIFF AVI header)".into()));
        }
        let (mut width, mut height, mut frame_us, mut frames) = (0, 0, 0, 0);
        let mut video_stream: Option<(usize, [u8; 4])> = None;
        let movi_start;
        loop {
            let mut ch = [0u8; 8];
            reader
                .read_exact(&mut ch)
                .map_err(|_| err("no 'movi' list: no frames".into()))?;
            let size = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            let pos = reader.stream_position().map_err(io)?;
            let mut kind = [0u8; 4];
            if &ch[..4] == b"LIST" {
                reader.read_exact(&mut kind).map_err(io)?;
                // frames are read as they come: a truncated movi list still plays
                if &kind == b"movi" {
                    movi_start = pos + 4;
                    break;
                }
            }
            if pos + size as u64 > len {
                return Err(err(format!(
                    "chunk {:?} runs past the end of the file (truncated?)",
                    String::from_utf8_lossy(&ch[..4])
                )));
            }
            if &ch[..4] == b"LIST" {
                if &kind == b"hdrl" {
                    if !(4..=1 << 20).contains(&size) {
                        return Err(err("header list too large".into()));
                    }
                    let mut hdrl = vec![0u8; size as usize - 4];
                    reader.read_exact(&mut hdrl).map_err(io)?;
                    parse_hdrl(
                        &hdrl,
                        &mut width,
                        &mut height,
                        &mut frame_us,
                        &mut frames,
                        &mut video_stream,
                    )
                    .map_err(|e| err(e.0))?;
                } else {
                    reader
                        .seek(SeekFrom::Start(pos + size as u64 + (size & 1) as u64))
                        .map_err(io)?;
                }
            } else {
                reader
                    .seek(SeekFrom::Start(pos + size as u64 + (size & 1) as u64))
                    .map_err(io)?;
            }
        }
        let (stream, codec) = video_stream.ok_or_else(|| err("no video stream".into()))?;
        let codec_name = String::from_utf8_lossy(&codec).to_string();
        if !matches!(&codec.map(|c| c.to_ascii_uppercase()), b"MJPG" | b"JPEG") {
            return Err(err(format!(
                "video codec {codec_name:?} is not MJPEG; re-encode it (e.g. ffmpeg -c:v mjpeg)"
            )));
        }
        if width == 0 || height == 0 {
            return Err(err("the header gives no frame size".into()));
        }
        let digits = format!("{stream:02}");
        let d = digits.as_bytes();
        Ok(Self {
            name: name.into(),
            reader,
            len,
            width,
            height,
            frame_us,
            frames,
            chunk_ids: [[d[0], d[1], b'd', b'c'], [d[0], d[1], b'd', b'b']],
            movi_start,
            looped,
            buffer: Vec::new(),
            sequence: 0,
        })
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Frame interval from the header (microseconds), if given.
    pub fn frame_interval_us(&self) -> u32 {
        self.frame_us
    }

    /// The header's frame interval, or 30 frames/s when the header gives none.
    fn frame_interval_or_default(&self) -> u32 {
        if self.frame_us > 0 {
            self.frame_us
        } else {
            crate::source::frame::NOMINAL_FRAME_US
        }
    }

    pub fn frame_count(&self) -> u32 {
        self.frames
    }

    fn bad(&self, problem: String) -> SourceError {
        SourceError::BadFrame {
            source_name: self.name.clone(),
            problem,
        }
    }

    /// Reads the next video chunk into the buffer; `false` at the end of the file.
    fn read_next_chunk(&mut self) -> Result<bool, SourceError> {
        loop {
            let mut ch = [0u8; 8];
            match self.reader.read_exact(&mut ch) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(self.bad(e.to_string())),
            }
            let size = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
            let pos = self
                .reader
                .stream_position()
                .map_err(|e| self.bad(e.to_string()))?;
            let id = [ch[0], ch[1], ch[2], ch[3]];
            if &id == b"LIST" || &id == b"RIFF" {
                // descend into movi / rec / AVIX lists, skip any other list
                let mut kind = [0u8; 4];
                if self.reader.read_exact(&mut kind).is_err() {
                    return Ok(false);
                }
                if matches!(&kind, b"movi" | b"rec " | b"AVIX") {
                    continue;
                }
            } else if self.chunk_ids.contains(&id) {
                if size > MAX_FRAME_BYTES || pos + size as u64 > self.len {
                    // a truncated file: report this frame, then end
                    let _ = self.reader.seek(SeekFrom::End(0));
                    return Err(self.bad(format!(
                        "frame chunk of {size} bytes runs past the end of the file"
                    )));
                }
                self.buffer.resize(size as usize, 0);
                self.reader
                    .read_exact(&mut self.buffer)
                    .map_err(|e| self.bad(e.to_string()))?;
                if size & 1 == 1 {
                    let _ = self.reader.seek(SeekFrom::Current(1));
                }
                return Ok(true);
            }
            let skip = pos + size as u64 + (size & 1) as u64;
            if skip > self.len {
                // a corrupt size or a truncated file: say so, then end
                let _ = self.reader.seek(SeekFrom::End(0));
                return Err(self.bad(format!(
                    "chunk {:?} of {size} bytes runs past the end of the file (truncated or corrupt)",
                    String::from_utf8_lossy(&id)
                )));
            }
            self.reader
                .seek(SeekFrom::Start(skip))
                .map_err(|e| self.bad(e.to_string()))?;
        }
    }
}

fn parse_hdrl(
    hdrl: &[u8],
    width: &mut usize,
    height: &mut usize,
    frame_us: &mut u32,
    frames: &mut u32,
    video: &mut Option<(usize, [u8; 4])>,
) -> Result<(), crate::error::ParseError> {
    let mut at = 0;
    let mut stream = 0;
    while at + 8 <= hdrl.len() {
        let id = &hdrl[at..at + 4];
        let size = u32_at(hdrl, at + 4).ok_or("truncated header chunk")? as usize;
        let body = hdrl
            .get(at + 8..at + 8 + size)
            .ok_or("header chunk runs past its list")?;
        match id {
            b"avih" => {
                *frame_us = u32_at(body, 0).unwrap_or(0);
                *frames = u32_at(body, 16).unwrap_or(0);
                *width = u32_at(body, 32).unwrap_or(0) as usize;
                *height = u32_at(body, 36).unwrap_or(0) as usize;
            }
            b"LIST" if body.get(..4) == Some(b"strl") => {
                // strh: fccType, fccHandler; strf (video): BITMAPINFOHEADER
                let mut inner = 4;
                let (mut kind, mut handler, mut compression) = ([0u8; 4], [0u8; 4], [0u8; 4]);
                while inner + 8 <= body.len() {
                    let cid = &body[inner..inner + 4];
                    let csize = u32_at(body, inner + 4).ok_or("truncated stream chunk")? as usize;
                    let c = body.get(inner + 8..inner + 8 + csize).unwrap_or(&[]);
                    if cid == b"strh" && c.len() >= 8 {
                        kind.copy_from_slice(&c[..4]);
                        handler.copy_from_slice(&c[4..8]);
                    } else if cid == b"strf" && c.len() >= 20 {
                        compression.copy_from_slice(&c[16..20]);
                    }
                    inner += 8 + csize + (csize & 1);
                }
                if &kind == b"vids" && video.is_none() {
                    let codec = if compression != [0; 4] {
                        compression
                    } else {
                        handler
                    };
                    *video = Some((stream, codec));
                }
                stream += 1;
            }
            _ => {}
        }
        at += 8 + size + (size & 1);
    }
    Ok(())
}

impl FrameSource for AviSource {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        if !self.read_next_chunk()? {
            if !self.looped || self.sequence == 0 {
                return Ok(None);
            }
            self.reader
                .seek(SeekFrom::Start(self.movi_start))
                .map_err(|e| self.bad(e.to_string()))?;
            if !self.read_next_chunk()? {
                return Ok(None);
            }
        }
        self.sequence += 1;
        Ok(Some(Frame {
            data: &self.buffer,
            width: self.width,
            height: self.height,
            stride: None,
            format: FrameFormat::Jpeg,
            timestamp_us: now_us(),
            // media time from the file's frame rate, running on across loops
            media_us: Some((self.sequence - 1) * self.frame_interval_or_default() as u64),
            sequence: self.sequence - 1,
        }))
    }

    fn describe(&self) -> String {
        format!(
            "{}: MJPEG {}x{}, {} frames",
            self.name, self.width, self.height, self.frames
        )
    }
}
