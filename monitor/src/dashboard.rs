//! The fleet's web dashboard (`oodmon-monitor --mqtt ... --http 127.0.0.1:PORT`): the same
//! table as the terminal, live in a browser over server-sent events, with a score sparkline
//! per vehicle and the latest evidence thumbnail. It listens on loopback unless told
//! otherwise, and then only with basic authentication (`--http-user`,
//! `--http-password-file`). Routes: `/` (the page), `/snapshot.json` (the table as JSON),
//! `/events` (a `text/event-stream` of snapshots, twice a second).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use oodmon_fleet::FleetView;
use serde::Serialize;

/// Concurrent event streams served (each holds a thread).
const MAX_STREAMS: usize = 16;

const PAGE: &str = include_str!("dashboard.html");

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("--http {0}: {1}")]
    Bind(String, String),
    #[error("--http {0}: serving beyond loopback needs --http-user and --http-password-file")]
    NoAuthBeyondLoopback(String),
    #[error("--http-password-file {0}: {1}")]
    Password(String, String),
}

/// One vehicle's row, as the page draws it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub fleet: String,
    pub vehicle: String,
    pub state: Option<String>,
    pub reason: Option<String>,
    pub heartbeat_age_ms: Option<u64>,
    pub alarms_last_hour: usize,
    pub backlog: u64,
    pub scores: Vec<f64>,
    pub threshold: Option<f64>,
    /// `OFFLINE (reason)`, `SILENT` or empty.
    pub flag: String,
    pub evidence_sequence: Option<u64>,
    pub evidence_dir: Option<String>,
    /// Base64 JPEG.
    pub thumbnail: Option<String>,
}

/// The table as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub fleet: String,
    pub connected: bool,
    pub refused: u64,
    pub vehicles: Vec<Row>,
}

impl Snapshot {
    pub fn of(view: &FleetView, fleet: &str, connected: bool, now: u64, silence_ms: u64) -> Self {
        let vehicles = view
            .vehicles()
            .map(|v| Row {
                fleet: v.fleet.clone(),
                vehicle: v.vehicle.clone(),
                state: v.state.clone(),
                reason: v.reason.clone(),
                heartbeat_age_ms: v.heartbeat_age_ms(now),
                alarms_last_hour: v.alarms_last_hour(now),
                backlog: v.backlog,
                scores: v.scores.iter().copied().collect(),
                threshold: v.threshold,
                flag: FleetView::flag(v, now, silence_ms),
                evidence_sequence: v.evidence.as_ref().map(|e| e.0),
                evidence_dir: v.evidence.as_ref().map(|e| e.1.clone()),
                thumbnail: v.evidence.as_ref().map(|e| e.2.clone()),
            })
            .collect();
        Self {
            fleet: fleet.into(),
            connected,
            refused: view.refused,
            vehicles,
        }
    }
}

/// The server thread; the monitor puts the latest snapshot's JSON in [`Dashboard::shared`].
pub struct Dashboard {
    pub shared: Arc<Mutex<String>>,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    server: Arc<tiny_http::Server>,
    handle: Option<JoinHandle<()>>,
}

/// `user:password` for basic authentication, the password from the first line of a file.
pub fn credentials(user: &str, password_file: &Path) -> Result<String, DashboardError> {
    let text = std::fs::read_to_string(password_file).map_err(|e| {
        DashboardError::Password(password_file.display().to_string(), e.to_string())
    })?;
    Ok(format!("{user}:{}", text.lines().next().unwrap_or("")))
}

impl Dashboard {
    /// Binds `addr`; `auth` is `user:password`. A non-loopback address needs `auth`.
    pub fn start(addr: &str, auth: Option<String>) -> Result<Self, DashboardError> {
        let parsed: SocketAddr = addr
            .parse()
            .map_err(|e| DashboardError::Bind(addr.into(), format!("{e} (e.g. 127.0.0.1:8080)")))?;
        if !parsed.ip().is_loopback() && auth.is_none() {
            return Err(DashboardError::NoAuthBeyondLoopback(addr.into()));
        }
        let server = Arc::new(
            tiny_http::Server::http(parsed)
                .map_err(|e| DashboardError::Bind(addr.into(), e.to_string()))?,
        );
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| DashboardError::Bind(addr.into(), "not an IP socket".into()))?;
        let shared = Arc::new(Mutex::new(String::from(
            r#"{"fleet":"","connected":false,"refused":0,"vehicles":[]}"#,
        )));
        let stop = Arc::new(AtomicBool::new(false));
        let expected = auth.map(|a| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(a)
            )
        });
        let (srv, sh, st) = (server.clone(), shared.clone(), stop.clone());
        let streams = Arc::new(AtomicUsize::new(0));
        let handle = std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || serve(&srv, &sh, &st, expected.as_deref(), &streams))
            .map_err(|e| DashboardError::Bind(addr.into(), e.to_string()))?;
        log::info!("dashboard on http://{bound}/");
        Ok(Self {
            shared,
            addr: bound,
            stop,
            server,
            handle: Some(handle),
        })
    }

    pub fn update(&self, snapshot: &Snapshot) {
        if let (Ok(json), Ok(mut s)) = (serde_json::to_string(snapshot), self.shared.lock()) {
            *s = json;
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    #[allow(clippy::expect_used)] // ASCII names and values written here
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

fn serve(
    server: &tiny_http::Server,
    shared: &Arc<Mutex<String>>,
    stop: &Arc<AtomicBool>,
    expected: Option<&str>,
    streams: &Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let authorised = expected.is_none_or(|want| {
            request
                .headers()
                .iter()
                .any(|h| h.field.equiv("Authorization") && h.value.as_str() == want)
        });
        if !authorised {
            let r = tiny_http::Response::from_string("authentication required\n")
                .with_status_code(401)
                .with_header(header("WWW-Authenticate", "Basic realm=\"oodmon fleet\""));
            let _ = request.respond(r);
            continue;
        }
        let snapshot = || shared.lock().map(|s| s.clone()).unwrap_or_default();
        match request.url() {
            "/" | "/index.html" => {
                // the current table inside the page: drawn before the page's load event,
                // and no `</script>` can close the script early
                let page = PAGE.replace("/*SNAPSHOT*/", &snapshot().replace("</", "<\\/"));
                let r = tiny_http::Response::from_string(page)
                    .with_header(header("Content-Type", "text/html; charset=utf-8"));
                let _ = request.respond(r);
            }
            "/snapshot.json" => {
                let r = tiny_http::Response::from_string(snapshot())
                    .with_header(header("Content-Type", "application/json"))
                    .with_header(header("Cache-Control", "no-store"));
                let _ = request.respond(r);
            }
            "/events" => {
                if streams.load(Ordering::SeqCst) >= MAX_STREAMS {
                    let r = tiny_http::Response::from_string("too many event streams\n")
                        .with_status_code(503);
                    let _ = request.respond(r);
                    continue;
                }
                streams.fetch_add(1, Ordering::SeqCst);
                let (sh, st, n) = (shared.clone(), stop.clone(), streams.clone());
                std::thread::spawn(move || {
                    // the response written by hand, one flush per event: a chunked body
                    // would sit in tiny_http's 8 KB buffer and arrive seconds late
                    let mut w = request.into_writer();
                    let _ = stream_events(&mut w, &sh, &st);
                    n.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ => {
                let _ = request
                    .respond(tiny_http::Response::from_string("not found\n").with_status_code(404));
            }
        }
    }
}

/// The event stream: the head, then one `data:` line with the snapshot every 500 ms, each
/// flushed, until the dashboard stops or the browser goes (a failed write).
fn stream_events(
    w: &mut dyn std::io::Write,
    shared: &Mutex<String>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          Connection: close\r\n\r\n",
    )?;
    w.flush()?;
    while !stop.load(Ordering::SeqCst) {
        let json = shared.lock().map(|s| s.clone()).unwrap_or_default();
        write!(w, "data: {json}\n\n")?;
        w.flush()?;
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
