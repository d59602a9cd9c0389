//! # oodmon-edge
//!
//! The runtime that ships on the vehicle, one folder per stage of a frame's path:
//!
//! - [`source`]: camera (V4L2), image files, MJPEG AVI and raw pipes as [`FrameSource`]s;
//!   frames and their decoding to pixels.
//! - [`inference`]: the [`Engine`] (preprocessing straight into the encoder session's
//!   input, the session run by `oodmon-runtime`), the scoring stage and the frame loop.
//! - [`alarm`]: the debouncing state machine, the service thread that drives the outputs
//!   with heartbeats, and the GPIO software watchdog.
//! - [`output`]: the serial link, the GPIO line, the journal and systemd notifications,
//!   one trait per hardware boundary.
//! - [`app`]: what the binary's commands do (run, check, bench, demo, false-alarms), as
//!   functions; `main.rs` only parses arguments.
//!
//! Around them: [`config`] (the TOML settings, validated before any device opens),
//! [`clock`] (monotonic and wall time behind a trait), [`backoff`] (reconnection delays),
//! [`error`]. Fakes for the hardware boundaries are in `testing` (feature `test-support`).

pub mod alarm;
pub mod app;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod error;
pub mod inference;
pub mod output;
pub mod source;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use error::{EdgeError, ParseError, Result, SourceError};
pub use inference::{Engine, FrameRecord, StageLatency};
pub use source::frame::{Frame, FrameFormat};
pub use source::FrameSource;
