//! Alarm events over MQTT against a real broker (Mosquitto, started here on a loopback port):
//! every journalled event reaches a subscriber in order across a broker outage, a `kill -9`
//! of the edge and its restart, and the last will marks a killed vehicle offline. The
//! subscriber is written from PROTOCOL.md ("MQTT"): it keeps the highest sequence per
//! vehicle and drops repeats.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oodmon_edge::output::journal::Journal;
use oodmon_fleet::client::BrokerConfig;
use oodmon_fleet::{EventPayload, StatePayload};
use rumqttc::{Client, Event, Packet, QoS};

use oodmon_testkit::Broker;

use crate::util::{edge_command, id_image, ood_image, write_tiny_bundle};

const W: usize = 40;
const H: usize = 30;

/// What a control room's subscriber saw: events first-arrival order after deduplication,
/// the number of repeats, and the last retained state.
#[derive(Default)]
struct Seen {
    events: Vec<EventPayload>,
    highest: BTreeMap<String, u64>,
    repeats: usize,
    states: Vec<StatePayload>,
    scores: usize,
    /// Evidence announcements whose thumbnail decodes to a JPEG at most 160 pixels wide.
    thumbnails: usize,
    malformed: usize,
}

struct Subscriber {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// A persistent session (clean session off): the broker queues QoS 1 messages while the
    /// subscriber is away, including over a broker restart.
    fn start(port: u16, fleet: &str) -> Self {
        Self::start_with(
            &BrokerConfig {
                url: Some(format!("mqtt://127.0.0.1:{port}")),
                ..Default::default()
            },
            fleet,
        )
    }

    fn start_with(broker: &BrokerConfig, fleet: &str) -> Self {
        let mut options = broker
            .options(&format!("monitor-{fleet}"), Duration::from_secs(5))
            .unwrap();
        options.set_clean_session(false);
        let (client, mut connection) = Client::new(options, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        // the four subscriptions the broker has acknowledged: events published before them
        // reach no session and are not queued for this one
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ack = acked.clone();
        let fleet = fleet.to_string();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match connection.recv_timeout(Duration::from_millis(50)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        for t in ["event", "state", "score", "evidence"] {
                            client
                                .try_subscribe(format!("oodmon/{fleet}/+/{t}"), QoS::AtLeastOnce)
                                .unwrap();
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let mut seen = s.lock().unwrap();
                        if p.topic.ends_with("/event") {
                            match serde_json::from_slice::<EventPayload>(&p.payload) {
                                Ok(e) => {
                                    let top = seen.highest.get(&e.vehicle).copied();
                                    if top.is_some_and(|t| e.sequence <= t) {
                                        seen.repeats += 1;
                                    } else {
                                        seen.highest.insert(e.vehicle.clone(), e.sequence);
                                        seen.events.push(e);
                                    }
                                }
                                Err(_) => seen.malformed += 1,
                            }
                        } else if p.topic.ends_with("/evidence") {
                            let thumb =
                                serde_json::from_slice::<oodmon_fleet::EvidencePayload>(&p.payload)
                                    .ok()
                                    .and_then(|e| {
                                        use base64::Engine as _;
                                        base64::engine::general_purpose::STANDARD
                                            .decode(e.thumbnail_jpeg)
                                            .ok()
                                    })
                                    .and_then(|j| image::load_from_memory(&j).ok());
                            match thumb {
                                Some(img) if img.width() <= 160 => seen.thumbnails += 1,
                                _ => seen.malformed += 1,
                            }
                        } else if p.topic.ends_with("/score") {
                            match serde_json::from_slice::<oodmon_fleet::ScorePayload>(&p.payload) {
                                Ok(_) => seen.scores += 1,
                                Err(_) => seen.malformed += 1,
                            }
                        } else {
                            match serde_json::from_slice::<StatePayload>(&p.payload) {
                                Ok(state) => seen.states.push(state),
                                Err(_) => seen.malformed += 1,
                            }
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                        ack.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(200)),
                    Err(rumqttc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        // a vehicle started next must not publish before the monitor listens (a TLS
        // handshake made that race visible once the edge started faster)
        let until = Instant::now() + Duration::from_secs(20);
        while acked.load(Ordering::SeqCst) < 4 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn sequences(&self) -> Vec<u64> {
        let seen = self.seen.lock().unwrap();
        seen.events.iter().map(|e| e.sequence).collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `oodmon-edge run` on frames the test writes to its standard input, 25 a second: 15
/// out-of-distribution frames, then 50 in-distribution ones, over and over, so the alarm
/// goes OOD and back every 2.6 s.
struct Vehicle {
    child: Child,
    feeding: Arc<AtomicBool>,
    feeder: Option<std::thread::JoinHandle<()>>,
}

impl Vehicle {
    fn start(dir: &Path, url: &str, vehicle: &str, config: Option<&str>) -> Self {
        let mut args = vec![
            "run",
            "--bundle",
            "b",
            "--source",
            "stdin:40x30:rgb",
            "--journal",
            "journal.jsonl",
            "--mqtt",
            url,
            "--fleet",
            "test",
            "--vehicle",
            vehicle,
        ];
        if let Some(c) = config {
            std::fs::write(dir.join("edge.toml"), c).unwrap();
            args.extend(["--config", "edge.toml"]);
        }
        let mut child = edge_command(dir, &args)
            .env("RUST_LOG", "warn,oodmon_edge::output::mqtt=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{vehicle}.log"))).unwrap())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeding = Arc::new(AtomicBool::new(true));
        let f = feeding.clone();
        let feeder = std::thread::spawn(move || {
            // in-distribution frames differ (noise), or the camera would look frozen
            let ood = ood_image(W, H);
            let ids: Vec<Vec<u8>> = (0..8).map(|s| id_image(0, W, H, s)).collect();
            let mut i = 0u64;
            while f.load(Ordering::SeqCst) {
                let frame = if i % 65 < 15 {
                    &ood
                } else {
                    &ids[i as usize % ids.len()]
                };
                if stdin.write_all(frame).is_err() {
                    return;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            // stdin stays open until the process is stopped by a signal
            std::mem::forget(stdin);
        });
        Self {
            child,
            feeding,
            feeder: Some(feeder),
        }
    }

    /// SIGINT: the edge journals FAULT (stopping), publishes what is left and goes offline.
    fn stop(mut self) {
        signal(self.child.id(), "INT");
        let until = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "the edge did not stop on SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.feeding.store(false, Ordering::SeqCst);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.feeding.store(false, Ordering::SeqCst);
        if let Some(f) = self.feeder.take() {
            let _ = f.join();
        }
    }
}

/// Sends a signal with kill(1) (the tests forbid `unsafe`).
fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

fn journal(dir: &Path) -> Vec<u64> {
    Journal::read(&dir.join("journal.jsonl"))
        .unwrap_or_default()
        .iter()
        .map(|e| e.sequence)
        .collect()
}

fn wait_for(what: &str, dir: &Path, secs: u64, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !done() {
        if Instant::now() > until {
            let logs: String = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect();
            panic!("timed out waiting for {what}; edge logs:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every journalled event arrived, first arrivals in journal order, with the journal's
/// times.
fn assert_all_delivered(dir: &Path, sub: &Subscriber) {
    let events = Journal::read(&dir.join("journal.jsonl")).unwrap();
    let seen = sub.seen.lock().unwrap();
    let got: Vec<u64> = seen.events.iter().map(|e| e.sequence).collect();
    let want: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(got, want, "first arrivals against the journal");
    for (e, j) in seen.events.iter().zip(&events) {
        assert_eq!(
            (e.time_ms, &e.state, &e.reason),
            (j.time_ms, &j.state, &j.reason)
        );
    }
    assert_eq!(seen.malformed, 0);
}

#[test]
fn events_survive_a_broker_outage_in_order_and_once() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(broker.port, "test");
    let vehicle = Vehicle::start(dir.path(), &broker.url(), "v1", None);
    wait_for("three events at the subscriber", dir.path(), 90, || {
        sub.sequences().len() >= 3
    });
    broker.pause();
    let before = journal(dir.path()).len();
    std::thread::sleep(Duration::from_secs(10));
    let during = journal(dir.path()).len() - before;
    assert!(during >= 2, "only {during} events during the outage");
    broker.resume();
    wait_for("the outage's events", dir.path(), 60, || {
        sub.sequences().len() >= before + during
    });
    vehicle.stop();
    wait_for("every journalled event", dir.path(), 30, || {
        sub.sequences().len() == journal(dir.path()).len()
    });
    assert_all_delivered(dir.path(), &sub);
    std::thread::sleep(Duration::from_millis(300));
    let seen = sub.seen.lock().unwrap();
    eprintln!(
        "{} events, {during} journalled during the outage, {} repeats dropped: {:?}",
        seen.events.len(),
        seen.repeats,
        seen.events
            .iter()
            .map(|e| format!("{} {}", e.state, e.reason))
            .collect::<Vec<_>>()
    );
    let last = seen.states.last().unwrap();
    assert!(!last.online, "{last:?}");
    assert_eq!(last.state.as_deref(), Some("FAULT"), "{last:?}");
    assert!(
        dir.path().join("journal.jsonl.mqtt-cursor").exists(),
        "the cursor file"
    );
}

#[test]
fn a_killed_vehicle_goes_offline_and_its_events_follow_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bundle(&dir.path().join("b"));
    let broker = Broker::start(dir.path());
    let sub = Subscriber::start(broker.port, "test");
    let config = "[mqtt]\nkeep_alive_s = 1\n";
    let vehicle = Vehicle::start(dir.path(), &broker.url(), "v2", Some(config));
    wait_for("two events at the subscriber", dir.path(), 90, || {
        sub.sequences().len() >= 2
    });
    vehicle.kill_9();
    // the broker publishes the will after 1.5 keep-alive periods without a packet
    wait_for("the last will", dir.path(), 20, || {
        sub.seen
            .lock()
            .unwrap()
            .states
            .last()
            .is_some_and(|s| !s.online && s.reason.as_deref() == Some("connection_lost"))
    });
    let killed_at = journal(dir.path()).len();
    let vehicle = Vehicle::start(dir.path(), &broker.url(), "v2", Some(config));
    wait_for("events after the restart", dir.path(), 90, || {
        journal(dir.path()).len() >= killed_at + 3
    });
    vehicle.stop();
    wait_for("every journalled event", dir.path(), 30, || {
        sub.sequences().len() == journal(dir.path()).len()
    });
    assert_all_delivered(dir.path(), &sub);
    let seen = sub.seen.lock().unwrap();
    eprintln!(
        "{} events, {killed_at} before the kill, {} repeats dropped",
        seen.events.len(),
        seen.repeats
    );
    // the restart's own events joined the killed run's: one sequence, no gap
    let seqs: Vec<u64> = seen.events.iter().map(|e| e.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let boots: std::collections::BTreeSet<&str> =
        seen.events.iter().map(|e| e.boot.as_str()).collect();
    assert_eq!(boots.len(), 2, "two edge processes published");
}

#[test]
fn events_go_over_tls_with_the_vehicles_own_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tiny_bundle(&d.join("b"));
    let broker = Broker::start_secure(d);
    let sub = Subscriber::start_with(
        &BrokerConfig {
            url: Some(broker.secure_url()),
            ca: Some(d.join("ca.pem")),
            username: Some("monitor".into()),
            password_file: Some(d.join("monitor.pass")),
            ..Default::default()
        },
        "test",
    );
    let config = format!(
        "[mqtt]\nca = \"{}\"\nusername = \"v1\"\npassword_file = \"{}\"\nscore_hz = 5.0\n\
         [evidence]\ndir = \"evidence\"\nframes_before = 5\nframes_after = 5\n",
        d.join("ca.pem").display(),
        d.join("v1.pass").display()
    );
    let vehicle = Vehicle::start(d, &broker.secure_url(), "v1", Some(&config));
    wait_for("three events over TLS", d, 90, || {
        sub.sequences().len() >= 3
    });
    vehicle.stop();
    wait_for("every journalled event", d, 30, || {
        sub.sequences().len() == journal(d).len()
    });
    assert_all_delivered(d, &sub);
}
