//! Where alarms go: a serial link carrying protocol frames, and a GPIO line that is driven
//! "healthy" only while the state is OK. One trait per hardware boundary, with fakes for
//! tests; the real backends reconnect (serial) or fail safe (GPIO).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{EdgeError, ParseError};

/// A byte link to the controller (a serial port in the field, anything in tests).
pub trait AlarmLink: Send {
    /// Writes one protocol frame completely, or fails.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// True once after the link was (re)opened, so the current state is sent at once.
    fn take_reconnected(&mut self) -> bool;
    fn describe(&self) -> String;
}

/// A digital alarm output.
pub trait AlarmLine: Send {
    /// `true` drives the alarm level, `false` the healthy level.
    fn set_alarm(&mut self, alarm: bool) -> std::io::Result<()>;
    fn describe(&self) -> String;
}

/// Serial settings; `[serial]` in `edge.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialConfig {
    pub device: Option<String>,
    pub baud: u32,
    /// none, odd or even.
    pub parity: String,
    /// Also send a SCORE message per frame.
    pub scores: bool,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            device: None,
            baud: 115_200,
            parity: "none".into(),
            scores: false,
        }
    }
}

impl SerialConfig {
    pub fn parity(&self) -> Result<serialport::Parity, ParseError> {
        match self.parity.as_str() {
            "none" => Ok(serialport::Parity::None),
            "odd" => Ok(serialport::Parity::Odd),
            "even" => Ok(serialport::Parity::Even),
            other => Err(format!("serial parity {other:?}: none, odd or even").into()),
        }
    }

    pub fn validate(&self) -> Result<(), ParseError> {
        self.parity()?;
        if !(300..=4_000_000).contains(&self.baud) {
            return Err(format!("serial baud {} is not in 300..=4000000", self.baud).into());
        }
        Ok(())
    }
}

pub use oodmon_serial::{open_serial, SerialIo};

/// A serial port that is reopened with back-off when it disappears (USB adapter unplugged)
/// and comes back.
pub struct SerialLink {
    device: String,
    baud: u32,
    parity: serialport::Parity,
    port: Option<Box<dyn SerialIo>>,
    retry_at: Instant,
    backoff: Duration,
    reconnected: bool,
}

impl SerialLink {
    /// Opens the port now; a port missing at start-up is an error.
    pub fn open(config: &SerialConfig) -> Result<Self, EdgeError> {
        let device = config
            .device
            .clone()
            .ok_or_else(|| EdgeError::invalid("serial.device", "no serial device configured"))?;
        let parity = config.parity()?;
        let mut link = Self {
            device,
            baud: config.baud,
            parity,
            port: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(50),
            reconnected: false,
        };
        link.port = Some(link.connect()?);
        link.reconnected = true;
        Ok(link)
    }

    fn connect(&self) -> Result<Box<dyn SerialIo>, oodmon_serial::SerialError> {
        open_serial(
            &self.device,
            self.baud,
            self.parity,
            Duration::from_millis(100),
        )
    }
}

impl AlarmLink for SerialLink {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if self.port.is_none() {
            if Instant::now() < self.retry_at {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("{} is gone; retrying", self.device),
                ));
            }
            match self.connect() {
                Ok(p) => {
                    log::warn!("serial port {} reopened", self.device);
                    self.port = Some(p);
                    self.backoff = Duration::from_millis(50);
                    self.reconnected = true;
                }
                Err(e) => {
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                    return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, e));
                }
            }
        }
        let Some(port) = self.port.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("{} is not open", self.device),
            ));
        };
        let result = port.write_all(frame).and_then(|()| port.flush());
        if let Err(e) = &result {
            log::warn!("serial port {}: {e}; reopening", self.device);
            self.port = None;
            self.retry_at = Instant::now() + self.backoff;
        }
        result
    }

    fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }

    fn describe(&self) -> String {
        format!("serial {} at {} baud", self.device, self.baud)
    }
}

/// Any writer as a link (a pseudo-terminal in tests, a socket, a file).
pub struct WriterLink<W> {
    writer: W,
    name: String,
    fresh: bool,
}

impl<W: Write + Send> WriterLink<W> {
    pub fn new(writer: W, name: &str) -> Self {
        Self {
            writer,
            name: name.into(),
            fresh: true,
        }
    }
}

impl<W: Write + Send> AlarmLink for WriterLink<W> {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(frame)?;
        self.writer.flush()
    }
    fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// GPIO settings; `[gpio]` in `edge.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// e.g. `/dev/gpiochip0`.
    pub chip: Option<String>,
    pub line: u32,
    /// Alarm is the low level (the default): a cut wire, a crash or no power read as
    /// alarm when the controller pulls the input low.
    pub active_low: bool,
    /// Release the line to alarm if the frame loop shows no progress for this long.
    pub watchdog_ms: u64,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self {
            chip: None,
            line: 0,
            active_low: true,
            watchdog_ms: 1000,
        }
    }
}

/// A GPIO line through the Linux character device (`gpiocdev`). Requested at the alarm
/// level; when the process exits the kernel releases it, and the board's default (pull
/// the controller's input to the alarm level) applies.
#[cfg(all(feature = "gpio", target_os = "linux"))]
pub struct GpioLine {
    request: gpiocdev::Request,
    offset: u32,
    name: String,
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
impl GpioLine {
    pub fn open(config: &GpioConfig) -> Result<Self, EdgeError> {
        let chip = config
            .chip
            .clone()
            .ok_or_else(|| EdgeError::invalid("gpio.chip", "no GPIO chip configured"))?;
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip.as_str())
            .with_consumer("oodmon-edge")
            .with_line(config.line)
            .as_output(gpiocdev::line::Value::Active);
        if config.active_low {
            builder.as_active_low();
        } else {
            builder.as_active_high();
        }
        let request = builder.request().map_err(|e| EdgeError::Gpio {
            line: format!("GPIO {chip} line {}", config.line),
            problem: e.to_string(),
        })?;
        Ok(Self {
            request,
            offset: config.line,
            name: format!("GPIO {chip} line {}", config.line),
        })
    }
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
impl AlarmLine for GpioLine {
    fn set_alarm(&mut self, alarm: bool) -> std::io::Result<()> {
        use gpiocdev::line::Value;
        self.request
            .set_value(
                self.offset,
                if alarm {
                    Value::Active
                } else {
                    Value::Inactive
                },
            )
            .map_err(std::io::Error::other)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A line for tests: records every level and can be made to fail.
#[derive(Clone, Default)]
pub struct FakeLine {
    pub levels: Arc<Mutex<Vec<bool>>>,
    pub fail: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeLine {
    /// The last level driven (`true` = alarm); `None` before any.
    pub fn alarm(&self) -> Option<bool> {
        self.levels.lock().ok()?.last().copied()
    }
}

impl AlarmLine for FakeLine {
    fn set_alarm(&mut self, alarm: bool) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("fake line failure"));
        }
        if let Ok(mut l) = self.levels.lock() {
            l.push(alarm);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "fake line".into()
    }
}
