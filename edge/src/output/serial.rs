//! The serial alarm link: protocol frames to the controller over a port that is reopened
//! with back-off when it disappears (a USB adapter unplugged) and comes back.

use std::io::Write;
use std::time::Duration;

use serde::Deserialize;

use super::AlarmLink;
use crate::backoff::Backoff;
use crate::error::{EdgeError, ParseError};

pub use oodmon_serial::{open_serial, SerialIo};

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

/// A serial port that is reopened with back-off when it disappears (USB adapter unplugged)
/// and comes back.
pub struct SerialLink {
    device: String,
    baud: u32,
    parity: serialport::Parity,
    port: Option<Box<dyn SerialIo>>,
    backoff: Backoff,
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
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
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
            if self.backoff.wait_left().is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    format!("{} is gone; retrying", self.device),
                ));
            }
            match self.connect() {
                Ok(p) => {
                    log::warn!("serial port {} reopened", self.device);
                    self.port = Some(p);
                    self.backoff.succeeded();
                    self.reconnected = true;
                }
                Err(e) => {
                    self.backoff.failed();
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
            self.backoff.failed();
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
