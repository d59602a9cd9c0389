//! Alarm events to a fleet's MQTT broker, published from the journal (store and forward).
//!
//! The alarm service journals every state change first (fsync'd); a forwarder thread
//! follows the journal and publishes each event with QoS 1, one at a time, and moves its
//! cursor (the last sequence the broker acknowledged, written atomically beside the
//! journal) only on the broker's PUBACK. After an outage of any length, a broker restart or
//! an edge restart (`kill -9` included), it publishes again from the cursor: every event
//! reaches the broker at least once, in journal order, with its original time and
//! sequence, and a receiver that keeps the highest sequence per vehicle drops the repeats.
//! The network never holds up the frame loop or the other outputs: the service only
//! writes the journal. Topics and payloads: `oodmon-fleet`, PROTOCOL.md ("Fleet monitoring
//! over MQTT").

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    Client, Connection, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError,
};
use serde::{Deserialize, Serialize};

use oodmon_fleet::client::BrokerConfig;
use oodmon_fleet::payload::valid_level;
use oodmon_fleet::{
    topic_prefix, EventPayload, EvidencePayload, HeartbeatPayload, ScorePayload, StatePayload,
    PAYLOAD_VERSION,
};

use crate::error::{EdgeError, Result};
use crate::output::journal::{JournalEvent, JournalTail};

/// `[mqtt]`: where and as whom to publish.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883, TLS with `ca`).
    pub url: Option<String>,
    /// The broker's CA certificate (PEM), the only one trusted (`mqtts://`).
    pub ca: Option<PathBuf>,
    /// This vehicle's username on the broker, and a file holding its password.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A client certificate and key (PEM) instead of, or beside, the password.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Topic level after `oodmon/`.
    pub fleet: String,
    /// This vehicle's id, the topic level after the fleet.
    pub vehicle: String,
    /// How often `heartbeat` is published.
    pub heartbeat_ms: u64,
    /// MQTT keep-alive: the broker publishes the last will (offline) after 1.5 times this
    /// without a packet.
    pub keep_alive_s: u64,
    /// Scores on `.../score`, at most this many a second (0: none).
    pub score_hz: f64,
    /// The cursor file (default: the journal's path with `.mqtt-cursor` appended).
    pub cursor: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: None,
            ca: None,
            username: None,
            password_file: None,
            client_cert: None,
            client_key: None,
            fleet: "default".into(),
            vehicle: String::new(),
            heartbeat_ms: 1000,
            keep_alive_s: 5,
            score_hz: 0.0,
            cursor: None,
        }
    }
}

impl MqttConfig {
    /// Checks the values that can be checked without a broker.
    pub fn validate(&self) -> Result<()> {
        if self.url.is_none() {
            return Ok(());
        }
        self.broker()
            .validate()
            .map_err(|e| EdgeError::invalid("mqtt", e))?;
        for (what, v) in [("mqtt.fleet", &self.fleet), ("mqtt.vehicle", &self.vehicle)] {
            if !valid_level(v) {
                return Err(EdgeError::invalid(
                    what,
                    format!("{v:?} must be a non-empty MQTT topic level (no '/', '+', '#')"),
                ));
            }
        }
        if !(50..=600_000).contains(&self.heartbeat_ms) {
            return Err(EdgeError::invalid(
                "mqtt.heartbeat_ms",
                format!("{} is not in 50..=600000", self.heartbeat_ms),
            ));
        }
        if !(0.0..=100.0).contains(&self.score_hz) {
            return Err(EdgeError::invalid(
                "mqtt.score_hz",
                format!("{} is not in 0..=100", self.score_hz),
            ));
        }
        if !(1..=3600).contains(&self.keep_alive_s) {
            return Err(EdgeError::invalid(
                "mqtt.keep_alive_s",
                format!("{} is not in 1..=3600", self.keep_alive_s),
            ));
        }
        Ok(())
    }

    /// The broker connection's settings.
    pub fn broker(&self) -> BrokerConfig {
        BrokerConfig {
            url: self.url.clone(),
            ca: self.ca.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }

    /// `oodmon/<fleet>/<vehicle>`.
    pub fn topic_prefix(&self) -> String {
        topic_prefix(&self.fleet, &self.vehicle)
    }
}

/// The cursor file: the last event sequence the broker acknowledged, for this topic prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    prefix: String,
    sequence: u64,
}

fn load_cursor(path: &Path, prefix: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match serde_json::from_str::<Cursor>(&text) {
        Ok(c) if c.prefix == prefix => Some(c.sequence),
        Ok(c) => {
            log::warn!(
                "MQTT cursor {} is for {}, not {prefix}: publishing the whole journal",
                path.display(),
                c.prefix
            );
            None
        }
        Err(e) => {
            log::warn!(
                "MQTT cursor {} is unreadable ({e}): publishing the whole journal (receivers drop repeats)",
                path.display()
            );
            None
        }
    }
}

fn save_cursor(path: &Path, prefix: &str, sequence: u64) -> std::io::Result<()> {
    let cursor = Cursor {
        prefix: prefix.into(),
        sequence,
    };
    #[allow(clippy::expect_used)] // a plain struct: serde_json cannot fail
    let json = serde_json::to_vec(&cursor).expect("cursor serialises");
    oodmon_calibration::io::write_atomic(path, |w| std::io::Write::write_all(w, &json))
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// What the forwarder did, for logs and tests.
#[derive(Debug, Default)]
pub struct ForwarderStats {
    /// Events the broker acknowledged.
    pub delivered: AtomicU64,
    /// Events published again after a reconnection (the broker may have had them).
    pub republished: AtomicU64,
    /// Connections made (1 + reconnections).
    pub connections: AtomicU64,
}

/// The latest frame's score, written by the frame loop (a few atomic stores, no lock, no
/// allocation) and sampled by the forwarder for `.../score`.
#[derive(Debug, Default)]
pub struct LatestScore {
    /// Frame sequence + 1 (0: no frame yet).
    frame: AtomicU64,
    score: AtomicU64,
    threshold: AtomicU64,
    time_ms: AtomicU64,
    ood: AtomicBool,
}

impl LatestScore {
    pub fn set(&self, frame: u64, score: f64, threshold: f64, ood: bool) {
        self.score.store(score.to_bits(), Ordering::Relaxed);
        self.threshold.store(threshold.to_bits(), Ordering::Relaxed);
        self.ood.store(ood, Ordering::Relaxed);
        self.time_ms.store(unix_ms(), Ordering::Relaxed);
        self.frame.store(frame + 1, Ordering::Release);
    }

    /// `(frame, score, threshold, ood, time_ms)` of the latest frame, if any.
    fn get(&self) -> Option<(u64, f64, f64, bool, u64)> {
        let f = self.frame.load(Ordering::Acquire);
        (f > 0).then(|| {
            (
                f - 1,
                f64::from_bits(self.score.load(Ordering::Relaxed)),
                f64::from_bits(self.threshold.load(Ordering::Relaxed)),
                self.ood.load(Ordering::Relaxed),
                self.time_ms.load(Ordering::Relaxed),
            )
        })
    }
}

/// The forwarder thread; stop it with [`MqttForwarder::stop`].
pub struct MqttForwarder {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<ForwarderStats>,
    /// Where the frame loop puts each frame's score (used when `score_hz` > 0).
    pub latest_score: Arc<LatestScore>,
}

impl MqttForwarder {
    /// Starts following `journal` and publishing to the configured broker. Fails only on
    /// a bad configuration: an unreachable broker is retried in the background.
    /// With `evidence`, the evidence directory: each alarm's evidence, once written, is
    /// announced on `.../evidence` with a thumbnail.
    pub fn start(cfg: &MqttConfig, journal: &Path, evidence: Option<&Path>) -> Result<Self> {
        cfg.validate()?;
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| EdgeError::invalid("mqtt.url", "not set"))?;
        let options = cfg
            .broker()
            .options(
                &format!("oodmon-{}-{}", cfg.fleet, cfg.vehicle),
                Duration::from_secs(cfg.keep_alive_s),
            )
            .map_err(|e| EdgeError::invalid("mqtt", e))?;
        let cursor_path = cfg.cursor.clone().unwrap_or_else(|| {
            let mut p = journal.as_os_str().to_owned();
            p.push(".mqtt-cursor");
            PathBuf::from(p)
        });
        let boot = format!("{:016x}", boot_id());
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ForwarderStats::default());
        let latest_score = Arc::new(LatestScore::default());
        let mut worker = Worker::new(cfg, options, journal, cursor_path, boot);
        worker.latest_score = latest_score.clone();
        worker.evidence_dir = evidence.map(Path::to_path_buf);
        let (s, st) = (stop.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || worker.run(&s, &st))
            .map_err(EdgeError::Io)?;
        log::info!("alarm events to {url} under {}", cfg.topic_prefix());
        Ok(Self {
            stop,
            handle: Some(handle),
            stats,
            latest_score,
        })
    }

    /// Publishes what is left in the journal (for up to 3 s when the broker answers), marks
    /// the vehicle offline and disconnects.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for MqttForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A QoS 1 publish waiting for its packet id, then for its PUBACK.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sent {
    Event(u64),
    State,
    Offline,
}

struct Worker {
    cfg: MqttConfig,
    prefix: String,
    boot: String,
    client: Client,
    connection: Connection,
    tail: JournalTail,
    cursor_path: PathBuf,
    cursor: Option<u64>,
    /// Journalled events after the cursor, oldest first.
    queue: VecDeque<JournalEvent>,
    latest: Option<JournalEvent>,
    connected: bool,
    state_dirty: bool,
    in_flight: Option<u64>,
    /// QoS 1 publishes handed to the client, waiting for their packet ids (in order).
    awaiting_id: VecDeque<Sent>,
    awaiting_ack: HashMap<u16, Sent>,
    offline_acked: bool,
    published_before: Option<u64>,
    latest_score: Arc<LatestScore>,
    score_published: Option<u64>,
    next_score: Instant,
    evidence_dir: Option<PathBuf>,
    /// Alarms whose evidence is being written, oldest first.
    evidence_pending: VecDeque<(JournalEvent, Instant)>,
}

impl Worker {
    fn new(
        cfg: &MqttConfig,
        mut options: MqttOptions,
        journal: &Path,
        cursor_path: PathBuf,
        boot: String,
    ) -> Self {
        let prefix = cfg.topic_prefix();
        options.set_clean_session(true);
        let will = StatePayload {
            v: PAYLOAD_VERSION,
            fleet: cfg.fleet.clone(),
            vehicle: cfg.vehicle.clone(),
            boot: boot.clone(),
            online: false,
            state: None,
            reason: Some("connection_lost".into()),
            sequence: None,
            since_ms: None,
        };
        options.set_last_will(LastWill::new(
            format!("{prefix}/state"),
            json(&will),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, connection) = Client::new(options, 64);
        let cursor = load_cursor(&cursor_path, &prefix);
        Self {
            cfg: cfg.clone(),
            prefix,
            boot,
            client,
            connection,
            tail: JournalTail::new(journal),
            cursor_path,
            cursor,
            queue: VecDeque::new(),
            latest: None,
            connected: false,
            state_dirty: true,
            in_flight: None,
            awaiting_id: VecDeque::new(),
            awaiting_ack: HashMap::new(),
            offline_acked: false,
            published_before: cursor,
            latest_score: Arc::new(LatestScore::default()),
            score_published: None,
            next_score: Instant::now(),
            evidence_dir: None,
            evidence_pending: VecDeque::new(),
        }
    }

    fn run(&mut self, stop: &AtomicBool, stats: &ForwarderStats) {
        let heartbeat = Duration::from_millis(self.cfg.heartbeat_ms);
        let mut next_heartbeat = Instant::now();
        let mut next_poll = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stop.load(Ordering::SeqCst) && deadline.is_none() {
                deadline = Some(now + Duration::from_secs(3));
                next_poll = now; // the service's last event (stopping) is in the journal now
            }
            if now >= next_poll {
                self.follow_journal();
                next_poll = now + Duration::from_millis(50);
            }
            if let Some(d) = deadline {
                let drained = self.queue.is_empty()
                    && self.in_flight.is_none()
                    && self.evidence_pending.is_empty();
                if (drained && self.connected) || now >= d {
                    self.go_offline();
                    return;
                }
            }
            if self.connected {
                self.publish_due(stats, &mut next_heartbeat, heartbeat);
            }
            match self.connection.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(event)) => {
                    backoff = Duration::from_millis(100);
                    self.on_event(event, stats);
                }
                Ok(Err(e)) => {
                    if self.connected {
                        log::warn!(
                            "MQTT connection lost ({e}); {} events wait in the journal",
                            self.queue.len()
                        );
                    } else {
                        log::debug!("MQTT connect failed: {e}");
                    }
                    self.disconnected();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn follow_journal(&mut self) {
        match self.tail.poll() {
            Ok(events) => {
                for e in events {
                    if self.cursor.is_none_or(|c| e.sequence > c) {
                        self.queue.push_back(e.clone());
                        if self.evidence_dir.is_some() && e.evidence.is_some() {
                            self.evidence_pending.push_back((e.clone(), Instant::now()));
                        }
                    }
                    self.latest = Some(e);
                    self.state_dirty = true;
                }
            }
            Err(e) => log::warn!("MQTT forwarder: {e}"),
        }
    }

    fn publish_due(
        &mut self,
        stats: &ForwarderStats,
        next_heartbeat: &mut Instant,
        heartbeat: Duration,
    ) {
        if self.state_dirty && self.publish(Sent::State) {
            self.state_dirty = false;
        }
        if self.in_flight.is_none() {
            if let Some(seq) = self.queue.front().map(|e| e.sequence) {
                if self.publish(Sent::Event(seq)) {
                    self.in_flight = Some(seq);
                    if self.published_before.is_some_and(|p| seq <= p) {
                        stats.republished.fetch_add(1, Ordering::Relaxed);
                    }
                    self.published_before = Some(self.published_before.map_or(seq, |p| p.max(seq)));
                }
            }
        }
        self.publish_evidence();
        let now = Instant::now();
        if self.cfg.score_hz > 0.0 && now >= self.next_score {
            if let Some((frame, score, threshold, ood, time_ms)) = self.latest_score.get() {
                if self.score_published != Some(frame) {
                    let p = ScorePayload {
                        v: PAYLOAD_VERSION,
                        fleet: self.cfg.fleet.clone(),
                        vehicle: self.cfg.vehicle.clone(),
                        boot: self.boot.clone(),
                        time_ms,
                        frame,
                        // JSON has no NaN or infinity: a non-finite score (a broken model) is
                        // sent as the largest finite one, above any threshold
                        score: if score.is_finite() { score } else { f64::MAX },
                        threshold,
                        ood,
                    };
                    let _ = self.client.try_publish(
                        format!("{}/score", self.prefix),
                        QoS::AtMostOnce,
                        false,
                        json(&p),
                    );
                    self.score_published = Some(frame);
                }
            }
            self.next_score = now + Duration::from_secs_f64(1.0 / self.cfg.score_hz);
        }
        if now >= *next_heartbeat {
            let beat = HeartbeatPayload {
                v: PAYLOAD_VERSION,
                fleet: self.cfg.fleet.clone(),
                vehicle: self.cfg.vehicle.clone(),
                boot: self.boot.clone(),
                time_ms: unix_ms(),
                state: self.latest.as_ref().map(|e| e.state.clone()),
                backlog: self.queue.len() as u64,
            };
            let _ = self.client.try_publish(
                format!("{}/heartbeat", self.prefix),
                QoS::AtMostOnce,
                false,
                json(&beat),
            );
            *next_heartbeat = now + heartbeat;
        }
    }

    /// Announces the oldest pending alarm evidence once its directory is complete (given up
    /// after a minute: the writer failed or the cap deleted it).
    fn publish_evidence(&mut self) {
        let Some(dir) = self.evidence_dir.clone() else {
            return;
        };
        let Some((event, since)) = self.evidence_pending.front() else {
            return;
        };
        let name = event.evidence.clone().unwrap_or_default();
        let meta_path = dir.join(&name).join("meta.json");
        if !meta_path.exists() {
            if since.elapsed() > Duration::from_secs(60) {
                log::warn!(
                    "MQTT: no evidence appeared in {} for event {}",
                    name,
                    event.sequence
                );
                self.evidence_pending.pop_front();
            }
            return;
        }
        let event = event.clone();
        let payload = match thumbnail(&dir.join(&name), &meta_path) {
            Ok((frames, frame, jpeg)) => {
                use base64::Engine as _;
                EvidencePayload {
                    v: PAYLOAD_VERSION,
                    fleet: self.cfg.fleet.clone(),
                    vehicle: self.cfg.vehicle.clone(),
                    boot: self.boot.clone(),
                    sequence: event.sequence,
                    time_ms: event.time_ms,
                    state: event.state.clone(),
                    reason: event.reason.clone(),
                    dir: name,
                    frames,
                    frame,
                    thumbnail_jpeg: base64::engine::general_purpose::STANDARD.encode(jpeg),
                }
            }
            Err(e) => {
                log::warn!("MQTT: evidence {name}: {e}");
                self.evidence_pending.pop_front();
                return;
            }
        };
        if self
            .client
            .try_publish(
                format!("{}/evidence", self.prefix),
                QoS::AtLeastOnce,
                true,
                json(&payload),
            )
            .is_ok()
        {
            self.evidence_pending.pop_front();
        }
    }

    /// Hands one QoS 1 message to the client; false when its queue is full (tried again).
    fn publish(&mut self, what: Sent) -> bool {
        let (topic, payload, retain) = match what {
            Sent::Event(seq) => {
                let Some(e) = self.queue.iter().find(|e| e.sequence == seq) else {
                    return false;
                };
                let p = EventPayload {
                    v: PAYLOAD_VERSION,
                    fleet: self.cfg.fleet.clone(),
                    vehicle: self.cfg.vehicle.clone(),
                    boot: self.boot.clone(),
                    sequence: e.sequence,
                    time_ms: e.time_ms,
                    state: e.state.clone(),
                    reason: e.reason.clone(),
                    score: e.score,
                    frame: e.frame,
                };
                (format!("{}/event", self.prefix), json(&p), false)
            }
            Sent::State | Sent::Offline => {
                let online = what == Sent::State;
                let p = StatePayload {
                    v: PAYLOAD_VERSION,
                    fleet: self.cfg.fleet.clone(),
                    vehicle: self.cfg.vehicle.clone(),
                    boot: self.boot.clone(),
                    online,
                    state: self.latest.as_ref().map(|e| e.state.clone()),
                    reason: if online {
                        self.latest.as_ref().map(|e| e.reason.clone())
                    } else {
                        Some("stopped".into())
                    },
                    sequence: self.latest.as_ref().map(|e| e.sequence),
                    since_ms: self.latest.as_ref().map(|e| e.time_ms),
                };
                (format!("{}/state", self.prefix), json(&p), true)
            }
        };
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.awaiting_id.push_back(what);
                true
            }
            Err(_) => false,
        }
    }

    fn on_event(&mut self, event: Event, stats: &ForwarderStats) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "MQTT connected; {} journalled events to publish",
                    self.queue.len()
                );
                self.disconnected();
                self.connected = true;
                self.state_dirty = true;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(what) = self.awaiting_id.pop_front() {
                    self.awaiting_ack.insert(pkid, what);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.awaiting_ack.remove(&ack.pkid) {
                Some(Sent::Event(seq)) => {
                    while self.queue.front().is_some_and(|e| e.sequence <= seq) {
                        self.queue.pop_front();
                    }
                    self.cursor = Some(seq);
                    if self.in_flight == Some(seq) {
                        self.in_flight = None;
                    }
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = save_cursor(&self.cursor_path, &self.prefix, seq) {
                        log::warn!(
                            "MQTT cursor {}: {e} (events may be published again after a restart)",
                            self.cursor_path.display()
                        );
                    }
                }
                Some(Sent::Offline) => self.offline_acked = true,
                Some(Sent::State) | None => {}
            },
            _ => {}
        }
    }

    /// Forgets what was in flight: after a reconnection everything unacknowledged is
    /// published again, from the cursor.
    fn disconnected(&mut self) {
        self.connected = false;
        self.in_flight = None;
        self.awaiting_id.clear();
        self.awaiting_ack.clear();
    }

    /// A clean stop: the retained state says offline, then the client disconnects (the
    /// broker then keeps the will to itself).
    fn go_offline(&mut self) {
        if self.connected && self.publish(Sent::Offline) {
            let until = Instant::now() + Duration::from_secs(1);
            while !self.offline_acked && Instant::now() < until {
                match self.connection.recv_timeout(Duration::from_millis(20)) {
                    Ok(Ok(event)) => self.on_event(event, &ForwarderStats::default()),
                    Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                }
            }
        }
        if !self.queue.is_empty() {
            log::warn!(
                "MQTT: stopping with {} events not acknowledged; they are published at the next start",
                self.queue.len()
            );
        }
        let _ = self.client.disconnect();
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            match self.connection.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Err(RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
    }
}

/// The evidence's frame count, the frame of the alarm (or the middle one) and a JPEG of it
/// at most 160 pixels wide.
fn thumbnail(dir: &Path, meta: &Path) -> std::io::Result<(u64, Option<u64>, Vec<u8>)> {
    let meta: crate::output::evidence::EvidenceMeta =
        serde_json::from_slice(&std::fs::read(meta)?).map_err(std::io::Error::other)?;
    let pick = meta
        .frames
        .iter()
        .find(|f| Some(f.frame) == meta.frame)
        .or_else(|| meta.frames.get(meta.frames.len() / 2))
        .ok_or_else(|| std::io::Error::other("no frames"))?;
    let img = image::load_from_memory(&std::fs::read(dir.join(&pick.file))?)
        .map_err(std::io::Error::other)?;
    let small = img.thumbnail(160, 160).to_rgb8();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 70)
        .encode(
            small.as_raw(),
            small.width() as u16,
            small.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(std::io::Error::other)?;
    Ok((meta.frames.len() as u64, Some(pick.frame), out))
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    #[allow(clippy::expect_used)] // plain structs: serde_json cannot fail
    serde_json::to_vec(v).expect("payloads serialise")
}

/// A random id for this process (the OS seeds `RandomState`).
fn boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_levels_and_the_broker_are_checked() {
        let mut cfg = MqttConfig {
            url: Some("mqtt://localhost".into()),
            vehicle: "v1".into(),
            ..Default::default()
        };
        cfg.validate().unwrap();
        assert_eq!(cfg.topic_prefix(), "oodmon/default/v1");
        for bad in ["", "a/b", "+", "#"] {
            cfg.vehicle = bad.into();
            assert!(cfg.validate().is_err(), "{bad:?}");
        }
        cfg.vehicle = "v1".into();
        cfg.url = Some("mqtts://localhost".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("CA"));
    }

    #[test]
    fn the_cursor_survives_a_restart_and_belongs_to_its_topics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.mqtt-cursor");
        assert_eq!(load_cursor(&p, "oodmon/f/v"), None);
        save_cursor(&p, "oodmon/f/v", 41).unwrap();
        assert_eq!(load_cursor(&p, "oodmon/f/v"), Some(41));
        assert_eq!(load_cursor(&p, "oodmon/f/other"), None);
        std::fs::write(&p, b"{torn").unwrap();
        assert_eq!(load_cursor(&p, "oodmon/f/v"), None);
    }
}
