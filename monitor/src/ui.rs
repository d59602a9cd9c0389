//! The two faces of `oodmon-monitor`: one line per event for logs (`--plain`), and a
//! terminal UI (ratatui) with the live state, a score sparkline, heartbeat age, error
//! counters and the alarm history.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use oodmon_protocol::AlarmState;

use crate::monitor::{Monitor, MonitorEvent};

/// The serial port stopped working (unplugged, or the other end closed): the monitor can
/// no longer see the link, which is itself an alarm, so it ends with an error.
#[derive(Debug, thiserror::Error)]
#[error("serial port lost: {problem}; the link is not being watched any more")]
pub struct PortLost {
    problem: String,
}

/// Why watching the link ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    PortLost(#[from] PortLost),
    /// Writing the event lines or drawing the terminal failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

/// Wall-clock now, milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads what arrived (waiting at most the port's timeout), feeds it to the monitor and
/// checks the heartbeat age; returns the local time used.
fn poll(
    port: &mut dyn Read,
    monitor: &mut Monitor,
    buf: &mut [u8],
    events: &mut Vec<MonitorEvent>,
) -> Result<u64, PortLost> {
    let n = read_some(port, buf).map_err(|e| PortLost {
        problem: e.to_string(),
    })?;
    let now = now_ms();
    monitor.feed(&buf[..n], now, events);
    monitor.check_link(now, events);
    Ok(now)
}

fn read_some(port: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    match port.read(buf) {
        // 0 bytes: the classic-termios fallback's read timeout
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// A wall-clock time (UTC, milliseconds) for log lines.
pub fn clock(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// Decodes the link and prints one line per event until `stop` or the deadline; a port that
/// stops working ends it with [`PortLost`] after the summary line.
pub fn plain(
    mut port: Box<dyn oodmon_serial::SerialIo>,
    heartbeat_ms: u64,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    out: &mut dyn Write,
) -> Result<(), WatchError> {
    let mut monitor = Monitor::new(2 * heartbeat_ms);
    let mut buf = [0u8; 256];
    let mut events = Vec::new();
    let mut lost = None;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        let now = match poll(&mut port, &mut monitor, &mut buf, &mut events) {
            Ok(now) => now,
            Err(e) => {
                writeln!(out, "{} ERROR: {e}", clock(now_ms()))?;
                lost = Some(e);
                break;
            }
        };
        for e in events.drain(..) {
            writeln!(out, "{} {e}", clock(now))?;
        }
        out.flush()?;
    }
    writeln!(
        out,
        "{} messages, {} bad frames ({} CRC errors), {} lost, {} duplicate or stale, {} sender restart(s)",
        monitor.messages,
        monitor.bad_frames,
        monitor.crc_errors,
        monitor.lost_messages,
        monitor.stale_messages,
        monitor.restarts
    )?;
    out.flush()?;
    match lost {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The terminal UI; `q` or Ctrl-C quits.
pub fn tui(
    mut port: Box<dyn oodmon_serial::SerialIo>,
    name: &str,
    heartbeat_ms: u64,
    stop: &AtomicBool,
    deadline: Option<Instant>,
) -> Result<(), WatchError> {
    use ratatui::crossterm::event::{self, Event, KeyCode};
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Color, Style, Stylize};
    use ratatui::text::Line;
    use ratatui::widgets::{Block, List, ListItem, Paragraph, Sparkline};

    let mut monitor = Monitor::new(2 * heartbeat_ms);
    let mut terminal = ratatui::init();
    let mut buf = [0u8; 256];
    let mut events = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let result = (|| -> Result<(), WatchError> {
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            let now = poll(&mut port, &mut monitor, &mut buf, &mut events)?;
            for e in events.drain(..) {
                if !matches!(e, MonitorEvent::State { .. }) {
                    log.push(format!("{} {e}", clock(now)));
                    if log.len() > 50 {
                        log.remove(0);
                    }
                }
            }
            terminal.draw(|f| {
                let [top, spark, bottom] = Layout::vertical([
                    Constraint::Length(5),
                    Constraint::Length(6),
                    Constraint::Min(4),
                ])
                .areas(f.area());
                let (state, reason) = match monitor.state {
                    Some((s, r)) => (s.name(), r.name()),
                    None if monitor.no_traffic => ("NO TRAFFIC", ""),
                    None => ("(waiting)", ""),
                };
                let colour = match monitor.effective_state() {
                    AlarmState::Ok => Color::Green,
                    AlarmState::Ood => Color::Yellow,
                    AlarmState::Fault => Color::Red,
                };
                let age = monitor
                    .heartbeat_age(now)
                    .map_or("never".into(), |a| format!("{a} ms"));
                let status = Paragraph::new(vec![
                    Line::from(vec![
                        "state ".into(),
                        state.bold().fg(colour),
                        format!("  ({reason})").into(),
                        if monitor.link_lost { "  LINK LOST".bold().fg(Color::Red) } else { "".into() },
                        if monitor.unreliable { "  LINK UNRELIABLE".bold().fg(Color::Red) } else { "".into() },
                    ]),
                    Line::from(format!(
                        "heartbeat age {age}   messages {}   CRC errors {}   bad frames {}   lost {}   stale {}   restarts {}",
                        monitor.messages, monitor.crc_errors, monitor.bad_frames, monitor.lost_messages,
                        monitor.stale_messages, monitor.restarts
                    )),
                ])
                .block(Block::bordered().title(format!(" oodmon monitor: {name} (q quits) ")));
                f.render_widget(status, top);
                let max = monitor.scores.iter().cloned().fold(1e-6f32, f32::max);
                let data: Vec<u64> = monitor
                    .scores
                    .iter()
                    .map(|s| if s.is_finite() { (s / max * 100.0) as u64 } else { 100 })
                    .collect();
                f.render_widget(
                    Sparkline::default()
                        .block(Block::bordered().title(format!(" score (max {max:.3}) ")))
                        .data(&data)
                        .style(Style::default().fg(Color::Cyan)),
                    spark,
                );
                let [hist, warn] =
                    Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
                let items: Vec<ListItem> = monitor
                    .history
                    .iter()
                    .rev()
                    .map(|e| ListItem::new(e.to_string()))
                    .collect();
                f.render_widget(List::new(items).block(Block::bordered().title(" alarm history ")), hist);
                let items: Vec<ListItem> = log.iter().rev().map(|l| ListItem::new(l.as_str())).collect();
                f.render_widget(List::new(items).block(Block::bordered().title(" warnings ")), warn);
            })?;
            if event::poll(std::time::Duration::from_millis(10))? {
                if let Event::Key(k) = event::read()? {
                    if k.code == KeyCode::Char('q') {
                        break;
                    }
                }
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}
