//! V4L2 cameras through `v4l`: format negotiation (YUYV or MJPEG), memory-mapped streaming
//! with a frame timeout, and reconnection with exponential back-off when the camera is
//! unplugged and comes back. Needs real hardware; the frame loop is tested through the
//! other sources.

use std::time::Duration;

use oodmon_calibration::preprocess::PixelFormat;
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use crate::backoff::Backoff;
use crate::error::SourceError;
use crate::source::frame::{now_us, Frame, FrameFormat};
use crate::source::{FrameSource, SourceOptions};

const BUFFERS: u32 = 4;

struct Open {
    stream: Stream<'static>,
    // the stream's buffers are mapped from this device; keep it open as long
    _device: Device,
    width: usize,
    height: usize,
    stride: usize,
    format: FrameFormat,
}

pub struct V4l2Camera {
    path: String,
    size: Option<(u32, u32)>,
    fps: Option<u32>,
    format: Option<FrameFormat>,
    options: SourceOptions,
    open: Option<Open>,
    backoff: Backoff,
    sequence: u64,
    frame: Vec<u8>,
}

fn fourcc_of(f: FrameFormat) -> FourCC {
    match f {
        FrameFormat::Jpeg => FourCC::new(b"MJPG"),
        _ => FourCC::new(b"YUYV"),
    }
}

fn open_device(
    path: &str,
    size: Option<(u32, u32)>,
    fps: Option<u32>,
    format: Option<FrameFormat>,
    timeout: Duration,
) -> std::io::Result<Open> {
    let device = Device::with_path(path)?;
    let mut fmt = device.format()?;
    if let Some((w, h)) = size {
        fmt.width = w;
        fmt.height = h;
    }
    let wanted: Vec<FrameFormat> = match format {
        Some(f) => vec![f],
        None => vec![FrameFormat::Raw(PixelFormat::Yuyv), FrameFormat::Jpeg],
    };
    let mut chosen = None;
    for f in wanted {
        fmt.fourcc = fourcc_of(f);
        // drivers adjust what they cannot do: read the format back
        let got = device.set_format(&fmt)?;
        if got.fourcc == fmt.fourcc {
            chosen = Some((f, got));
            break;
        }
    }
    let (format, got) = chosen.ok_or_else(|| {
        std::io::Error::other("the camera offers neither YUYV nor MJPEG at this size")
    })?;
    if let Some((w, h)) = size {
        if (got.width, got.height) != (w, h) {
            log::warn!(
                "{path}: asked for {w}x{h}, the driver gives {}x{}",
                got.width,
                got.height
            );
        }
    }
    if let Some(fps) = fps {
        let p = device.set_params(&v4l::video::capture::Parameters::with_fps(fps))?;
        log::info!("{path}: frame interval {}", p.interval);
    }
    let mut stream = Stream::with_buffers(&device, Type::VideoCapture, BUFFERS)?;
    stream.set_timeout(timeout);
    Ok(Open {
        stream,
        _device: device,
        width: got.width as usize,
        height: got.height as usize,
        stride: got.stride as usize,
        format,
    })
}

impl V4l2Camera {
    /// Opens the camera now: a missing camera at start-up is an error, not a retry loop.
    pub fn open(
        path: &str,
        size: Option<(u32, u32)>,
        fps: Option<u32>,
        format: Option<FrameFormat>,
        options: &SourceOptions,
    ) -> Result<Self, SourceError> {
        let open = open_device(path, size, fps, format, options.timeout).map_err(|e| {
            SourceError::Open {
                source_name: format!("v4l:{path}"),
                problem: e.to_string(),
            }
        })?;
        log::info!(
            "{path}: {}x{} {:?}, stride {}",
            open.width,
            open.height,
            open.format,
            open.stride
        );
        Ok(Self {
            path: path.into(),
            size,
            fps,
            format,
            options: options.clone(),
            open: Some(open),
            backoff: Backoff::new(Duration::from_millis(100), options.max_backoff),
            sequence: 0,
            frame: Vec::new(),
        })
    }

    fn disconnected(&mut self, problem: String) -> SourceError {
        if let Some(open) = self.open.take() {
            // v4l's stream panics in drop when stopping fails for another reason than a
            // vanished device; a panic must not take the frame loop down
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(open))).is_err() {
                log::warn!("v4l:{}: the stream could not be stopped cleanly", self.path);
            }
        }
        self.backoff.failed();
        SourceError::Disconnected {
            source_name: format!("v4l:{}", self.path),
            problem,
        }
    }
}

impl FrameSource for V4l2Camera {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        if self.open.is_none() {
            if let Some(wait) = self.backoff.wait_left() {
                std::thread::sleep(wait.min(self.options.timeout));
                if self.backoff.wait_left().is_some() {
                    return Err(SourceError::Timeout {
                        source_name: format!("v4l:{}", self.path),
                        timeout_ms: self.options.timeout.as_millis() as u64,
                    });
                }
            }
            match open_device(
                &self.path,
                self.size,
                self.fps,
                self.format,
                self.options.timeout,
            ) {
                Ok(open) => {
                    log::warn!("v4l:{}: reconnected", self.path);
                    self.open = Some(open);
                    self.backoff.succeeded();
                }
                Err(e) => return Err(self.disconnected(format!("reconnecting: {e}"))),
            }
        }
        let Some(open) = self.open.as_mut() else {
            return Err(self.disconnected("the device is not open".into()));
        };
        // Copied out of the mapped buffer (a memcpy into a buffer reused for every frame):
        // the buffer goes back to the driver on the next call, and the copy lets a
        // disconnect drop the stream while a frame is still being processed.
        let result = match open.stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                self.frame.clear();
                self.frame.extend_from_slice(&buf[..used]);
                Ok(meta.sequence)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(sequence) => {
                let Some(open) = self.open.as_ref() else {
                    return Err(self.disconnected("the device is not open".into()));
                };
                self.sequence = sequence as u64;
                Ok(Some(Frame {
                    data: &self.frame,
                    width: open.width,
                    height: open.height,
                    stride: matches!(open.format, FrameFormat::Raw(_)).then_some(open.stride),
                    format: open.format,
                    timestamp_us: now_us(),
                    media_us: None,
                    sequence: self.sequence,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(SourceError::Timeout {
                source_name: format!("v4l:{}", self.path),
                timeout_ms: self.options.timeout.as_millis() as u64,
            }),
            Err(e) => Err(self.disconnected(e.to_string())),
        }
    }

    fn describe(&self) -> String {
        match &self.open {
            Some(o) => format!("v4l:{} {}x{} {:?}", self.path, o.width, o.height, o.format),
            None => format!("v4l:{} (disconnected)", self.path),
        }
    }
}
