//! Where alarms go: a serial link carrying protocol frames, and a GPIO line that is driven
//! "healthy" only while the state is OK. One trait per hardware boundary, with fakes for
//! tests; the real backends reconnect (serial) or fail safe (GPIO).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

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
    pub fn parity(&self) -> Result<serialport::Parity, String> {
        match self.parity.as_str() {
            "none" => Ok(serialport::Parity::None),
            "odd" => Ok(serialport::Parity::Odd),
            "even" => Ok(serialport::Parity::Even),
            other => Err(format!("serial parity {other:?}: none, odd or even")),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.parity()?;
        if !(300..=4_000_000).contains(&self.baud) {
            return Err(format!("serial baud {} is not in 300..=4000000", self.baud));
        }
        Ok(())
    }
}

/// A byte stream to and from a serial device.
pub trait SerialIo: std::io::Read + Write + Send {}
impl<T: std::io::Read + Write + Send> SerialIo for T {}

/// Opens a serial device through `serialport`; where its `termios2` ioctls are missing
/// (e.g. under qemu-user emulation) falls back to classic termios via libc. Reads time
/// out after `timeout` (then return `Ok(0)` or a `TimedOut` error).
pub fn open_serial(
    device: &str,
    baud: u32,
    parity: serialport::Parity,
    timeout: Duration,
) -> Result<Box<dyn SerialIo>, String> {
    match serialport::new(device, baud)
        .parity(parity)
        .timeout(timeout)
        .open()
    {
        Ok(p) => Ok(Box::new(p)),
        Err(e) => match open_classic_tty(device, baud, parity, timeout) {
            Ok(f) => {
                log::debug!("{device}: serialport failed ({e}); using classic termios");
                Ok(Box::new(f))
            }
            Err(_) => Err(format!("serial port {device}: {e}")),
        },
    }
}

#[cfg(unix)]
fn open_classic_tty(
    device: &str,
    baud: u32,
    parity: serialport::Parity,
    timeout: Duration,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let speed = match baud {
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115_200 => libc::B115200,
        230_400 => libc::B230400,
        460_800 => libc::B460800,
        921_600 => libc::B921600,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{other} baud needs termios2"),
            ))
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(device)?;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the whole block, and `t` is a
    // plain C struct that tcgetattr fills before it is read.
    unsafe {
        if libc::isatty(fd) != 1 {
            return Err(std::io::Error::other("not a terminal device"));
        }
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        libc::cfsetispeed(&mut t, speed);
        libc::cfsetospeed(&mut t, speed);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        match parity {
            serialport::Parity::None => t.c_cflag &= !libc::PARENB,
            serialport::Parity::Odd => t.c_cflag |= libc::PARENB | libc::PARODD,
            serialport::Parity::Even => {
                t.c_cflag |= libc::PARENB;
                t.c_cflag &= !libc::PARODD;
            }
        }
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = (timeout.as_millis() / 100).clamp(1, 255) as u8;
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

#[cfg(not(unix))]
fn open_classic_tty(
    _device: &str,
    _baud: u32,
    _parity: serialport::Parity,
    _timeout: Duration,
) -> std::io::Result<std::fs::File> {
    Err(std::io::Error::other("no fallback on this platform"))
}

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
    pub fn open(config: &SerialConfig) -> Result<Self, String> {
        let device = config.device.clone().ok_or("no serial device configured")?;
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

    fn connect(&self) -> Result<Box<dyn SerialIo>, String> {
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
        let port = self.port.as_mut().expect("connected above");
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
    pub fn open(config: &GpioConfig) -> Result<Self, String> {
        let chip = config.chip.clone().ok_or("no GPIO chip configured")?;
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
        let request = builder
            .request()
            .map_err(|e| format!("GPIO {chip} line {}: {e}", config.line))?;
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

#[cfg(all(test, unix))]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn the_classic_termios_fallback_carries_bytes_both_ways() {
        let (mut master, slave) = serialport::TTYPort::pair().unwrap();
        serialport::SerialPort::set_timeout(&mut master, Duration::from_millis(200)).unwrap();
        let name = serialport::SerialPort::name(&slave).unwrap();
        let mut tty = open_classic_tty(
            &name,
            115_200,
            serialport::Parity::Even,
            Duration::from_millis(100),
        )
        .unwrap();
        tty.write_all(&[1, 0, 255, 13, 10]).unwrap();
        let mut got = [0u8; 5];
        master.read_exact(&mut got).unwrap();
        assert_eq!(got, [1, 0, 255, 13, 10], "raw mode: no translation");
        master.write_all(b"ok").unwrap();
        let mut back = [0u8; 2];
        tty.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ok");
        // nothing to read: the read times out with 0 bytes instead of blocking
        assert_eq!(tty.read(&mut back).unwrap(), 0);
        assert!(open_classic_tty(
            "/nonexistent",
            115_200,
            serialport::Parity::None,
            Duration::from_millis(100)
        )
        .is_err());
        assert!(open_classic_tty(
            &name,
            123,
            serialport::Parity::None,
            Duration::from_millis(100)
        )
        .is_err());
    }
}
