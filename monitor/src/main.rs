//! `oodmon-monitor`: watch an oodmon alarm link on a serial line, or a fleet over MQTT.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

/// Watch an alarm link: live state, score sparkline, heartbeat age, CRC errors and alarm
/// history; warns when heartbeats stop or messages are lost. Or watch a fleet over MQTT
/// (--mqtt): one row per vehicle, offline and silent vehicles flagged.
#[derive(Parser)]
#[command(name = "oodmon-monitor", version)]
#[command(group(clap::ArgGroup::new("link").required(true).args(["port", "mqtt"])))]
struct Cli {
    /// Serial device the edge (or a tap on its line) is connected to.
    #[arg(long)]
    port: Option<String>,
    /// MQTT broker the fleet publishes to (mqtt://HOST[:PORT], or mqtts:// for TLS).
    #[arg(long)]
    mqtt: Option<String>,
    /// The broker's CA certificate (PEM), the only one trusted (mqtts://).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Username on the broker, and a file holding its password (first line).
    #[arg(long)]
    username: Option<String>,
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM), for brokers that authenticate by certificate.
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// Fleet to watch (`+`: every fleet on the broker).
    #[arg(long, default_value = "+")]
    fleet: String,
    /// MQTT client id, kept across restarts so the broker keeps the events published
    /// while the monitor is away (default: oodmon-monitor-FLEET).
    #[arg(long)]
    client_id: Option<String>,
    /// Serve the fleet's web dashboard here (e.g. 127.0.0.1:8080; beyond loopback only with
    /// --http-user and --http-password-file).
    #[arg(long)]
    http: Option<String>,
    /// Basic authentication for the dashboard: user, and a file holding the password.
    #[arg(long, requires = "http_password_file")]
    http_user: Option<String>,
    #[arg(long, requires = "http_user")]
    http_password_file: Option<std::path::PathBuf>,
    /// A vehicle without a heartbeat for this long is flagged silent.
    #[arg(long, default_value_t = 5000)]
    silence_ms: u64,
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
    let deadline = cli
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    if let Some(url) = cli.mqtt {
        let opts = oodmon_monitor::fleet::FleetOptions {
            broker: oodmon_fleet::client::BrokerConfig {
                url: Some(url),
                ca: cli.ca,
                username: cli.username,
                password_file: cli.password_file,
                client_cert: cli.cert,
                client_key: cli.key,
            },
            client_id: cli
                .client_id
                .unwrap_or_else(|| format!("oodmon-monitor-{}", cli.fleet.replace('+', "all"))),
            fleet: cli.fleet,
            silence_ms: cli.silence_ms,
            http: cli.http,
            http_auth: match (&cli.http_user, &cli.http_password_file) {
                (Some(u), Some(f)) => Some(oodmon_monitor::dashboard::credentials(u, f)?),
                _ => None,
            },
        };
        let mut out = std::io::stdout().lock();
        oodmon_monitor::fleet::watch_fleet(&opts, cli.plain, &stop, deadline, &mut out)?;
        return Ok(());
    }
    let port_name = cli.port.unwrap_or_default();
    let port = oodmon_serial::open_serial(
        &port_name,
        cli.baud,
        serialport::Parity::None,
        Duration::from_millis(100),
    )?;
    if cli.plain {
        let mut out = std::io::stdout().lock();
        oodmon_monitor::ui::plain(port, cli.heartbeat_ms, &stop, deadline, &mut out)?;
    } else {
        oodmon_monitor::ui::tui(port, &port_name, cli.heartbeat_ms, &stop, deadline)?;
    }
    Ok(())
}
