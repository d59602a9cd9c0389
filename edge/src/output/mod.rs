//! Where alarms go, one trait per hardware boundary: a serial link carrying protocol
//! frames ([`serial`]), a GPIO line driven "healthy" only while the state is OK
//! ([`gpio`]), the append-only journal of state changes ([`journal`]) and systemd's
//! readiness and watchdog notifications ([`notify`]), and the journal's events forwarded to
//! an MQTT broker (`mqtt`, feature `mqtt`); the frames around each alarm ([`evidence`]). The real backends reconnect (serial)
//! or fail safe (GPIO); fakes for tests are in `crate::testing` (feature `test-support`).

pub mod evidence;
pub mod gpio;
pub mod journal;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod notify;
pub mod serial;

pub use gpio::GpioConfig;
#[cfg(all(feature = "gpio", target_os = "linux"))]
pub use gpio::GpioLine;
pub use serial::{open_serial, SerialConfig, SerialIo, SerialLink, WriterLink};

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
