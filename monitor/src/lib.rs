//! # oodmon-monitor
//!
//! The control-room end of the alarm link: it reads the edge's protocol frames from a
//! serial line, keeps what an engineer needs to see and warns when the link goes quiet,
//! drops messages, restarts or turns unreliable. It needs no model runtime and no tract;
//! the robot's binary carries no terminal UI.
//!
//! - [`monitor`]: [`Monitor`], the decoder-fed state and its [`MonitorEvent`]s.
//! - [`ui`]: the plain event log and the terminal UI over a serial port.
//! - [`fleet`]: a fleet's vehicles over MQTT (`--mqtt`), kept by `oodmon-fleet`'s view.
//! - [`dashboard`]: the same table in a browser (`--http`), over server-sent events.

pub mod dashboard;
pub mod fleet;
pub mod monitor;
pub mod ui;

pub use monitor::{Monitor, MonitorEvent};
