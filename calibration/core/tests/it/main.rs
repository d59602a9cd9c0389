//! Integration tests of oodmon-calibration: properties of the core. Runs on the host and,
//! under qemu, on aarch64.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod properties;
mod util;
