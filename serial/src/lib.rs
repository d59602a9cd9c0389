//! # oodmon-serial
//!
//! Opening a serial line the way both ends of oodmon's alarm link need it: through
//! `serialport`, falling back to classic termios where its `termios2` ioctls are missing
//! (pseudo-terminals under qemu-user). The edge sends alarms over it; the monitor reads them.

use std::io::Write;
use std::time::Duration;

/// A serial port that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("serial port {device}: {cause}")]
pub struct SerialError {
    pub device: String,
    pub cause: serialport::Error,
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
) -> Result<Box<dyn SerialIo>, SerialError> {
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
            Err(_) => Err(SerialError {
                device: device.to_string(),
                cause: e,
            }),
        },
    }
}

#[cfg(unix)]
#[allow(unsafe_code)] // termios through libc: the one place it is needed
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

/// A pseudo-terminal pair `(master, slave, slave's device name)` with close-on-exec set:
/// a real serial line for tests and link simulations (a child process must not inherit the
/// master and keep the line up after its owner drops it). The master reads time out after
/// 20 ms.
#[cfg(unix)]
#[allow(unsafe_code)] // fcntl through libc
pub fn pty_pair() -> std::io::Result<(serialport::TTYPort, serialport::TTYPort, String)> {
    use std::os::unix::io::AsRawFd;
    let (mut master, slave) = serialport::TTYPort::pair().map_err(std::io::Error::other)?;
    serialport::SerialPort::set_timeout(&mut master, Duration::from_millis(20))
        .map_err(std::io::Error::other)?;
    for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
        // SAFETY: fcntl on descriptors this process owns for the whole call
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let name = serialport::SerialPort::name(&slave)
        .ok_or_else(|| std::io::Error::other("the pseudo-terminal has no name"))?;
    Ok((master, slave, name))
}

#[cfg(all(test, unix))]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

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
