//! How many vehicles one fleet monitor keeps up with: N simulated vehicles publish at real
//! rates into a local Mosquitto (10 scores and 5 heartbeats a second each, QoS 0, and a
//! burst of 3 events every 10 s, QoS 1, payloads as `oodmon-edge` writes them), and a
//! consumer doing what `oodmon-monitor --mqtt` does (parse, check, apply to the fleet
//! view) measures, per second, the lag from a message's time stamp to its arrival, and its
//! own memory. It keeps up when the lag stays flat (last third against first third) and
//! its p99 stays under a second. It also times what the web dashboard does with that view
//! every 250 ms (the table as JSON).
//!
//! ```sh
//! cargo run --release -p oodmon-monitor --example fleet_load -- 50 200 800 --seconds 20
//! # the peer: Mosquitto's own C client (`mosquitto_sub`) consuming the same load
//! cargo run --release -p oodmon-monitor --example fleet_load -- 3200 6400 --peer
//! ```
//!
//! With `--peer`, `mosquitto_sub -F '%U %p'` takes the monitor's place: it subscribes to the
//! same topics (QoS 1; the load's scores and heartbeats are QoS 0, so they arrive at 0) and
//! prints each message's arrival time and payload; this process reads its output and takes
//! the lag from the payload's `time_ms`. The C client parses nothing, so where it keeps up
//! and the monitor does not, the monitor is the limit; where neither does, the broker or
//! the load generator is.
//!
//! The vehicles run in a child process (one tokio runtime, one MQTT connection each); the
//! broker is started on a free loopback port (`oodmon-testkit`). All three share this
//! machine's cores, so the figures are a floor for a monitor on its own machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oodmon_fleet::{FleetView, Message, PAYLOAD_VERSION};
use rumqttc::{AsyncClient, Client, Event, MqttOptions, Packet, QoS, RecvTimeoutError};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rss_kib() -> u64 {
    rss_kib_of("/proc/self/status")
}

/// The child: `n` vehicles publishing until killed.
fn publish(port: u16, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        for i in 0..n {
            let mut o = MqttOptions::new(format!("load-v{i}"), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(o, 256);
            tokio::spawn(async move {
                loop {
                    if eventloop.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
            tokio::spawn(async move {
                let vehicle = format!("v{i}");
                let prefix = format!("oodmon/load/{vehicle}");
                // spread the vehicles over the 100 ms tick
                tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 100)).await;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let (mut n, mut sequence) = (0u64, 0u64);
                loop {
                    tick.tick().await;
                    let t = now_ms();
                    let score = format!(
                        r#"{{"v":{PAYLOAD_VERSION},"fleet":"load","vehicle":"{vehicle}","boot":"b","time_ms":{t},"frame":{n},"score":{:.3},"threshold":40.0,"ood":false}}"#,
                        30.0 + (n % 17) as f64
                    );
                    let _ = client
                        .publish(format!("{prefix}/score"), QoS::AtMostOnce, false, score)
                        .await;
                    if n % 2 == 0 {
                        let beat = format!(
                            r#"{{"v":{PAYLOAD_VERSION},"fleet":"load","vehicle":"{vehicle}","boot":"b","time_ms":{t},"state":"OK","backlog":0}}"#
                        );
                        let _ = client
                            .publish(format!("{prefix}/heartbeat"), QoS::AtMostOnce, false, beat)
                            .await;
                    }
                    if n % 100 == (i as u64 % 100) {
                        for state in ["OOD", "OK", "OOD"] {
                            let reason = if state == "OK" { "cleared" } else { "ood_frames" };
                            let event = format!(
                                r#"{{"v":{PAYLOAD_VERSION},"fleet":"load","vehicle":"{vehicle}","boot":"b","sequence":{sequence},"time_ms":{t},"state":"{state}","reason":"{reason}","score":null,"frame":{n}}}"#
                            );
                            sequence += 1;
                            let _ = client
                                .publish(format!("{prefix}/event"), QoS::AtLeastOnce, false, event)
                                .await;
                        }
                    }
                    n += 1;
                }
            });
        }
        std::future::pending::<()>().await;
    });
}

struct Window {
    lags: Vec<u64>,
    messages: u64,
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((p * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

/// One run with `n` vehicles: returns the table row.
fn run(port: u16, n: usize, seconds: u64) -> String {
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new(me)
        .args(["--publish", &port.to_string(), &n.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut o = MqttOptions::new(format!("load-monitor-{n}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(o, 256);
    let mut view = FleetView::new();
    let warmup = Instant::now() + Duration::from_secs(3);
    let end = warmup + Duration::from_secs(seconds);
    let mut windows: Vec<Window> = Vec::new();
    let mut current = Window {
        lags: Vec::new(),
        messages: 0,
    };
    let mut next_window = warmup + Duration::from_secs(1);
    let mut rss_peak = 0;
    let cpu_start = cpu_ms();
    while Instant::now() < end {
        match connection.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                for kind in ["event", "state", "heartbeat", "score"] {
                    let qos = if kind == "event" || kind == "state" {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    };
                    client
                        .try_subscribe(format!("oodmon/load/+/{kind}"), qos)
                        .unwrap();
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let now = now_ms();
                if let Ok(msg) = Message::parse(&p.topic, &p.payload) {
                    let sent = match &msg {
                        Message::Event(e) => Some(e.time_ms),
                        Message::Score(s) => Some(s.time_ms),
                        Message::Heartbeat(h) => Some(h.time_ms),
                        Message::State(_) | Message::Evidence(_) => None,
                    };
                    view.apply_message(msg, now);
                    if Instant::now() >= warmup {
                        current.messages += 1;
                        if let Some(t) = sent {
                            current.lags.push(now.saturating_sub(t));
                        }
                    }
                }
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => panic!("monitor connection: {e}"),
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_window {
            rss_peak = rss_peak.max(rss_kib());
            windows.push(std::mem::replace(
                &mut current,
                Window {
                    lags: Vec::new(),
                    messages: 0,
                },
            ));
            next_window += Duration::from_secs(1);
        }
    }
    let cpu = cpu_ms() - cpu_start;
    // what the web dashboard does every 250 ms with this view: the table as JSON
    let t = Instant::now();
    let mut json_len = 0;
    for _ in 0..10 {
        let snap = oodmon_monitor::dashboard::Snapshot::of(&view, "load", true, now_ms(), 5000);
        json_len = serde_json::to_string(&snap).unwrap().len();
    }
    let snapshot_ms = t.elapsed().as_secs_f64() * 100.0;
    let _ = child.kill();
    let _ = child.wait();
    let _ = client.disconnect();
    let vehicles_seen = view.vehicles().count();
    format!(
        "| {n} | {vehicles_seen} | {} | {:.0}% | {} | {} KB in {snapshot_ms:.1} ms |",
        lag_columns(&windows),
        100.0 * cpu as f64 / (seconds as f64 * 1000.0 + 3000.0),
        rss_peak / 1024,
        json_len / 1024
    )
}

/// Messages a second, lag p50 / p99 / max, the p99 of the first third against the last
/// third, and whether it keeps up (p99 under 1 s and not growing), as table cells.
fn lag_columns(windows: &[Window]) -> String {
    let lags = |w: &[Window]| w.iter().flat_map(|w| w.lags.clone()).collect::<Vec<u64>>();
    let third = (windows.len() / 3).max(1);
    let (mut first, mut last, mut all) = (
        lags(&windows[..third]),
        lags(&windows[windows.len() - third..]),
        lags(windows),
    );
    let rate = windows.iter().map(|w| w.messages).sum::<u64>() as f64 / windows.len() as f64;
    let (p50, p99, max) = (
        percentile(&mut all, 0.5),
        percentile(&mut all, 0.99),
        all.iter().copied().max().unwrap_or(0),
    );
    let (p99_first, p99_last) = (percentile(&mut first, 0.99), percentile(&mut last, 0.99));
    let keeps_up = p99 < 1000 && p99_last <= p99_first.max(50) * 2;
    format!(
        "{rate:.0} | {p50} | {p99} | {max} | {p99_first} -> {p99_last} | {}",
        if keeps_up { "yes" } else { "**no**" }
    )
}

/// One run with `n` vehicles and `mosquitto_sub` as the consumer: the table row.
fn run_peer(port: u16, n: usize, seconds: u64) -> String {
    use std::io::BufRead;
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new(me)
        .args(["--publish", &port.to_string(), &n.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", &format!("load-peer-{n}"), "-t", "oodmon/load/+/+"])
        .args(["-F", "%U %p"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian's mosquitto-clients)");
    let pid = sub.id();
    let lines = std::io::BufReader::new(sub.stdout.take().unwrap()).lines();
    let warmup = Instant::now() + Duration::from_secs(3);
    let end = warmup + Duration::from_secs(seconds);
    let mut windows: Vec<Window> = Vec::new();
    let mut current = Window {
        lags: Vec::new(),
        messages: 0,
    };
    let mut next_window = warmup + Duration::from_secs(1);
    let mut rss_peak = 0;
    let cpu_start = cpu_ms_of(&format!("/proc/{pid}/stat"));
    for line in lines {
        let Ok(line) = line else { break };
        if Instant::now() >= warmup {
            current.messages += 1;
            // "SECONDS.NANOS {json}": arrival, then the payload's time stamp
            let arrived = line
                .split_once(' ')
                .and_then(|(t, _)| t.parse::<f64>().ok())
                .map(|t| (t * 1000.0) as u64);
            let sent = line.split_once("\"time_ms\":").and_then(|(_, rest)| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .find(|d| !d.is_empty())?
                    .parse::<u64>()
                    .ok()
            });
            if let (Some(a), Some(t)) = (arrived, sent) {
                current.lags.push(a.saturating_sub(t));
            }
        }
        if Instant::now() >= next_window {
            rss_peak = rss_peak.max(rss_kib_of(&format!("/proc/{pid}/status")));
            windows.push(std::mem::replace(
                &mut current,
                Window {
                    lags: Vec::new(),
                    messages: 0,
                },
            ));
            next_window += Duration::from_secs(1);
        }
        if Instant::now() >= end {
            break;
        }
    }
    let cpu = cpu_ms_of(&format!("/proc/{pid}/stat")) - cpu_start;
    let _ = sub.kill();
    let _ = sub.wait();
    let _ = child.kill();
    let _ = child.wait();
    format!(
        "| {n} (mosquitto_sub) | - | {} | {:.0}% | {} | - |",
        lag_columns(&windows),
        100.0 * cpu as f64 / (seconds as f64 * 1000.0 + 3000.0),
        rss_peak / 1024,
    )
}

fn rss_kib_of(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of this process (user + system), milliseconds.
fn cpu_ms() -> u64 {
    cpu_ms_of("/proc/self/stat")
}

/// CPU time (user + system) of the process whose `/proc/PID/stat` this is, milliseconds.
fn cpu_ms_of(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks * 10 // USER_HZ = 100 on Linux
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--publish") {
        publish(args[1].parse().unwrap(), args[2].parse().unwrap());
        return;
    }
    let mut counts = Vec::new();
    let mut seconds = 20;
    let mut peer = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--peer" {
            peer = true;
        } else if a == "--seconds" {
            seconds = it.next().expect("--seconds N").parse().unwrap();
        } else {
            counts.push(a.parse::<usize>().expect("vehicle counts, e.g. 50 200 800"));
        }
    }
    if counts.is_empty() {
        counts = vec![50, 200, 800];
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start(dir.path());
    println!(
        "{seconds} s per run after 3 s of warm-up; each vehicle: 10 scores/s, 5 heartbeats/s, 3 events every 10 s"
    );
    println!(
        "| vehicles | seen | messages/s | lag p50 ms | lag p99 ms | lag max ms | p99 first third -> last third | keeps up | consumer CPU | consumer RSS MiB | dashboard snapshot |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for n in counts {
        if peer {
            println!("{}", run_peer(broker.port, n, seconds));
        } else {
            println!("{}", run(broker.port, n, seconds));
        }
    }
}
