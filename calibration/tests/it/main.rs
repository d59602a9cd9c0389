//! Integration tests of oodmon-calibration: the CLI as a user runs it, and properties of
//! the core. Runs on the host and, under qemu, on aarch64.

mod bundle;
mod cli;
mod properties;
mod util;
