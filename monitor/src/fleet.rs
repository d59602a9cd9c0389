//! `oodmon-monitor --mqtt URL --fleet NAME`: a fleet's vehicles from an MQTT broker, as a
//! table (state, reason, heartbeat age, alarms in the last hour, backlog, offline or silent
//! vehicles flagged), kept by [`oodmon_fleet::FleetView`]. The subscription is a persistent
//! session (QoS 1, clean session off), so events published while the monitor is away are
//! kept by the broker and arrive when it is back; repeats are dropped by sequence.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oodmon_fleet::client::{BrokerConfig, ClientError};
use oodmon_fleet::view::Applied;
use oodmon_fleet::FleetView;
use rumqttc::{Client, Event, Packet, QoS, RecvTimeoutError};

use crate::ui::now_ms;

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The broker: URL (`mqtt://` or `mqtts://`), pinned CA, credentials.
    pub broker: BrokerConfig,
    /// A fleet name, or `+` for every fleet on the broker.
    pub fleet: String,
    /// The MQTT client id; one per monitor, kept across restarts for the persistent
    /// session.
    pub client_id: String,
    /// A vehicle whose heartbeat is older than this is flagged silent.
    pub silence_ms: u64,
    /// Serve the web dashboard on this address (`127.0.0.1:8080`).
    pub http: Option<String>,
    /// `user:password` the dashboard asks for (basic authentication).
    pub http_auth: Option<String>,
}

/// Why watching the fleet ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Broker(#[from] ClientError),
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// Watches until `stop` or `deadline`: one line per new event, vehicle going offline or
/// coming back, and refused message (`plain`), or the table redrawn in place; the table
/// is printed once more at the end.
pub fn watch_fleet(
    opts: &FleetOptions,
    plain: bool,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    out: &mut dyn Write,
) -> Result<FleetView, FleetError> {
    let mut options = opts
        .broker
        .options(&opts.client_id, Duration::from_secs(5))?;
    options.set_clean_session(false);
    let url = opts.broker.url.clone().unwrap_or_default();
    let (client, mut connection) = Client::new(options, 64);
    let mut view = FleetView::new();
    let mut connected = false;
    let mut refusals = 0u32;
    let mut next_draw = Instant::now();
    let dashboard = opts
        .http
        .as_deref()
        .map(|addr| crate::dashboard::Dashboard::start(addr, opts.http_auth.clone()))
        .transpose()?;
    if let (Some(d), true) = (&dashboard, plain) {
        writeln!(out, "dashboard on http://{}/", d.addr)?;
    }
    let mut next_snapshot = Instant::now();
    // the terminal UI owns the screen until the end; --plain writes lines to `out`
    let mut terminal = (!plain).then(ratatui::init);
    let mut flagged_before: Vec<(String, String)> = Vec::new();
    // the loop in a closure, so that the terminal is restored however it ends
    let result = (|| -> Result<(), FleetError> {
        while !stop.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
            match connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    connected = true;
                    refusals = 0;
                    for kind in ["event", "state", "heartbeat", "score", "evidence"] {
                        let qos = if kind == "heartbeat" || kind == "score" {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        };
                        let _ =
                            client.try_subscribe(format!("oodmon/{}/+/{kind}", opts.fleet), qos);
                    }
                    if plain {
                        writeln!(out, "connected to {} (fleet {})", url, opts.fleet)?;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let applied = view.apply(&p.topic, &p.payload, now_ms());
                    if plain {
                        match applied {
                            Applied::Evidence => {
                                let vehicle = view.vehicles().find(|v| {
                                    p.topic == format!("oodmon/{}/{}/evidence", v.fleet, v.vehicle)
                                });
                                if let Some((v, (seq, dir, thumb))) =
                                    vehicle.and_then(|v| Some((v, v.evidence.as_ref()?)))
                                {
                                    writeln!(
                                        out,
                                        "{}/{} evidence of #{seq} in {dir} (thumbnail, {} bytes of base64)",
                                        v.fleet,
                                        v.vehicle,
                                        thumb.len()
                                    )?;
                                }
                            }
                            Applied::Event(e) => writeln!(
                                out,
                                "{}/{} #{} {} {} at {}{}",
                                e.fleet,
                                e.vehicle,
                                e.sequence,
                                e.state,
                                e.reason,
                                humantime::format_rfc3339_millis(
                                    std::time::UNIX_EPOCH + Duration::from_millis(e.time_ms)
                                ),
                                e.score.map_or(String::new(), |s| format!(" score {s:.3}"))
                            )?,
                            Applied::Refused(r) => writeln!(out, "refused {}: {r}", p.topic)?,
                            Applied::Repeat
                            | Applied::State
                            | Applied::Heartbeat
                            | Applied::Score => {}
                        }
                    }
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => {
                    if connected {
                        log::warn!("MQTT connection lost: {e}");
                        if plain {
                            writeln!(out, "broker lost: {e}")?;
                        }
                    } else if refusals == 0 {
                        // a wrong CA, password or ACL shows here: say it once
                        log::warn!("cannot connect to {url}: {e}");
                        if plain {
                            writeln!(out, "cannot connect to {url}: {e}")?;
                        }
                    }
                    refusals += 1;
                    connected = false;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = now_ms();
            if let Some(d) = &dashboard {
                if Instant::now() >= next_snapshot {
                    d.update(&crate::dashboard::Snapshot::of(
                        &view,
                        &opts.fleet,
                        connected,
                        now,
                        opts.silence_ms,
                    ));
                    next_snapshot = Instant::now() + Duration::from_millis(250);
                }
            }
            let flagged: Vec<(String, String)> = view
                .vehicles()
                .filter(|v| FleetView::flagged(v, now, opts.silence_ms))
                .map(|v| (v.fleet.clone(), v.vehicle.clone()))
                .collect();
            if plain {
                for v in view.vehicles() {
                    let key = (v.fleet.clone(), v.vehicle.clone());
                    match (flagged.contains(&key), flagged_before.contains(&key)) {
                        (true, false) => writeln!(
                            out,
                            "{}/{} {}",
                            v.fleet,
                            v.vehicle,
                            if v.online {
                                "SILENT (no heartbeat)".to_string()
                            } else {
                                format!(
                                    "OFFLINE ({})",
                                    v.offline_reason.as_deref().unwrap_or("unknown")
                                )
                            }
                        )?,
                        (false, true) => writeln!(out, "{}/{} back online", v.fleet, v.vehicle)?,
                        _ => {}
                    }
                }
            } else if let Some(t) = terminal.as_mut() {
                if Instant::now() >= next_draw {
                    let title = format!(
                        " oodmon fleet {} on {url}{} (q quits) ",
                        opts.fleet,
                        if connected { "" } else { ": connecting" }
                    );
                    t.draw(|f| draw_fleet(f, &view, now, opts.silence_ms, &title))?;
                    next_draw = Instant::now() + Duration::from_millis(250);
                }
                use ratatui::crossterm::event::{self, Event as Key, KeyCode};
                if event::poll(Duration::from_millis(0))? {
                    if let Key::Key(k) = event::read()? {
                        if k.code == KeyCode::Char('q') {
                            break;
                        }
                    }
                }
            }
            flagged_before = flagged;
        }
        Ok(())
    })();
    if terminal.take().is_some() {
        ratatui::restore();
    }
    result?;
    let _ = client.disconnect();
    write!(out, "{}", view.table(now_ms(), opts.silence_ms))?;
    out.flush()?;
    Ok(view)
}

/// Eight levels of a sparkline, one character a score.
fn sparkline(scores: &std::collections::VecDeque<f64>, threshold: Option<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = threshold
        .map(|t| 1.5 * t)
        .unwrap_or_else(|| scores.iter().copied().fold(1e-9, f64::max));
    scores
        .iter()
        .rev()
        .take(30)
        .rev()
        .map(|s| BARS[((s / top).clamp(0.0, 1.0) * 7.0).round() as usize])
        .collect()
}

/// The fleet table: one row per vehicle, coloured by state, flagged when offline or silent.
fn draw_fleet(f: &mut ratatui::Frame, view: &FleetView, now: u64, silence_ms: u64, title: &str) {
    use ratatui::layout::Constraint;
    use ratatui::style::{Color, Style, Stylize};
    use ratatui::widgets::{Block, Row, Table};
    let rows: Vec<Row> = view
        .vehicles()
        .map(|v| {
            let colour = match v.state.as_deref() {
                Some("OK") => Color::Green,
                Some("OOD") => Color::Yellow,
                Some(_) => Color::Red,
                None => Color::Gray,
            };
            let flag = FleetView::flag(v, now, silence_ms);
            Row::new(vec![
                format!("{}/{}", v.fleet, v.vehicle),
                v.state.clone().unwrap_or_else(|| "-".into()),
                v.reason.clone().unwrap_or_else(|| "-".into()),
                v.heartbeat_age_ms(now)
                    .map_or("-".into(), |a| format!("{:.1} s", a as f64 / 1000.0)),
                v.alarms_last_hour(now).to_string(),
                v.backlog.to_string(),
                sparkline(&v.scores, v.threshold),
                flag,
            ])
            .style(Style::default().fg(colour))
        })
        .collect();
    let header = Row::new(vec![
        "vehicle",
        "state",
        "reason",
        "heartbeat",
        "alarms/h",
        "backlog",
        "score",
        "flag",
    ])
    .bold();
    let widths = [
        Constraint::Length(24),
        Constraint::Length(6),
        Constraint::Length(20),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(31),
        Constraint::Min(10),
    ];
    let footer = format!(" {} messages refused ", view.refused);
    f.render_widget(
        Table::new(rows, widths).header(header).block(
            Block::bordered()
                .title(title.to_string())
                .title_bottom(footer),
        ),
        f.area(),
    );
}
