//! oodmon-edge integration tests (one binary; shared helpers in `util`).
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod alarms;
mod alloc;
mod cli;
mod engine;
mod evidence;
#[cfg(feature = "mqtt")]
mod mqtt;
mod overlap;
mod sources;
mod util;
