//! Integration tests of oodmon-calibrate: the CLI as a user runs it, and bundles fitted
//! through tract with a small real encoder. Runs on the host and, under qemu, on aarch64.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bundle;
mod cli;
mod util;
