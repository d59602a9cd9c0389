//! # oodmon-edge
//!
//! The runtime that ships on the vehicle: frames from a camera (or files, or a pipe) go
//! through the deployed bundle's encoder in tract and the calibration core's scoring, one
//! record per frame, with bounded memory and typed errors for every bad input.
//!
//! - [`source`]: the [`source::FrameSource`] trait and its V4L2, image-file, AVI and raw
//!   stream implementations.
//! - [`decode`]: JPEG and raw frames to pixels.
//! - [`engine`]: preprocessing, inference and scoring of one frame.
//! - [`runner`]: the frame loop, its fault counting and statistics.
//! - [`config`]: the TOML configuration, validated before any device is opened.
//! - [`watchdog`]: systemd readiness and watchdog notifications.

pub mod alarm;
pub mod clock;
pub mod config;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod error;
pub mod frame;
pub mod journal;
pub mod output;
pub mod runner;
pub mod service;
pub mod source;
pub mod watchdog;

pub use engine::{Engine, FrameRecord, StageLatency};
pub use error::{EdgeError, Result, SourceError};
pub use frame::{Frame, FrameFormat};
