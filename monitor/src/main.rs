//! `oodmon-monitor`: watch an oodmon alarm link on a serial line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

/// Watch an alarm link: live state, score sparkline, heartbeat age, CRC errors and alarm
/// history; warns when heartbeats stop or messages are lost.
#[derive(Parser)]
#[command(name = "oodmon-monitor", version)]
struct Cli {
    /// Serial device the edge (or a tap on its line) is connected to.
    #[arg(long)]
    port: String,
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// One line per event instead of the terminal UI (for logs).
    #[arg(long)]
    plain: bool,
    /// Heartbeat period of the edge; the link counts as lost after two.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // the terminal UI owns the screen: only warnings by default
    oodmon_cli::main("oodmon-monitor", "warn", || watch(cli))
}

fn watch(cli: Cli) -> Result<()> {
    let stop = oodmon_cli::stop_flag()?;
    let port = oodmon_serial::open_serial(
        &cli.port,
        cli.baud,
        serialport::Parity::None,
        Duration::from_millis(100),
    )?;
    let deadline = cli
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    if cli.plain {
        let mut out = std::io::stdout().lock();
        oodmon_monitor::ui::plain(port, cli.heartbeat_ms, &stop, deadline, &mut out)?;
    } else {
        oodmon_monitor::ui::tui(port, &cli.port, cli.heartbeat_ms, &stop, deadline)?;
    }
    Ok(())
}
