//! # oodmon-testkit
//!
//! Test support shared by the crates' integration tests (a dev-dependency only): running a
//! binary under test, and a real MQTT broker ([`Broker`]).

use std::path::Path;
use std::process::Command;

pub mod mqtt;
pub use mqtt::Broker;

/// The command that runs the binary `bin` (a test's `env!("CARGO_BIN_EXE_...")`) in `dir`
/// with `args`, through the emulator command line in `OODMON_TEST_RUNNER` when set (e.g.
/// `qemu-aarch64-static -L /usr/aarch64-linux-gnu` for the aarch64 checks).
pub fn command(bin: &str, dir: &Path, args: &[&str]) -> Command {
    let runner = std::env::var("OODMON_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    let mut cmd = match parts.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(parts).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.current_dir(dir).args(args);
    cmd
}
