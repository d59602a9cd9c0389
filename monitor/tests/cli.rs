//! `oodmon-monitor` as a control room runs it, on a pseudo-terminal: states, gaps,
//! silence, no traffic, and a port that goes away mid-session.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use std::io::Write as _;

fn pty() -> (serialport::TTYPort, serialport::TTYPort, String) {
    oodmon_serial::pty_pair().expect("pseudo-terminal pair")
}

/// The `oodmon-monitor` command, through `OODMON_TEST_RUNNER` (e.g. qemu) when set.
fn monitor_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = oodmon_testkit::command(env!("CARGO_BIN_EXE_oodmon-monitor"), dir, args);
    cmd.env("RUST_LOG", "warn");
    cmd
}

fn monitor(dir: &Path, args: &[&str]) -> Output {
    monitor_command(dir, args)
        .output()
        .expect("run oodmon-monitor")
}

/// Exit code 1 (no panic, no signal) and one error line containing every `needle`.
fn assert_fails_cleanly(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("oodmon-monitor: error:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line:?}");
    }
}

#[test]
fn monitor_plain_prints_states_and_warns_about_gaps_and_silence() {
    use oodmon_protocol::{AlarmState, Message, Packet, Reason, MAX_FRAME};
    let dir = tempfile::tempdir().unwrap();
    let (mut master, _slave, name) = pty();
    let child = monitor_command(
        dir.path(),
        &[
            "--port",
            &name,
            "--plain",
            "--heartbeat-ms",
            "100",
            "--seconds",
            "3",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let send = |master: &mut serialport::TTYPort, seq: u32, message: Message| {
        let p = Packet {
            session: 0x5eed,
            sequence: seq,
            timestamp_ms: 1_764_288_000_000,
            message,
        };
        let mut f = [0u8; MAX_FRAME];
        let n = p.encode(&mut f);
        master.write_all(&f[..n]).unwrap();
    };
    send(
        &mut master,
        0,
        Message::Heartbeat {
            state: AlarmState::Ok,
            reason: Reason::Cleared,
            period_ms: 100,
        },
    );
    send(
        &mut master,
        1,
        Message::StateChange {
            state: AlarmState::Ood,
            reason: Reason::OodFrames,
            score: 0.7,
        },
    );
    send(
        &mut master,
        4,
        Message::Heartbeat {
            state: AlarmState::Ood,
            reason: Reason::OodFrames,
            period_ms: 100,
        },
    );
    // then silence: the link is lost after two heartbeat periods
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("state OK (cleared)"), "{stdout}");
    assert!(
        stdout.contains("state OOD (ood_frames)") && stdout.contains("score 0.7000"),
        "{stdout}"
    );
    assert!(stdout.contains("2 message(s) lost"), "{stdout}");
    assert!(stdout.contains("link lost"), "{stdout}");
    assert!(stdout.contains("3 messages, 0 bad frames"), "{stdout}");
}

#[test]
fn monitor_plain_says_when_no_traffic_comes_and_fails_loudly_when_its_port_goes() {
    let dir = tempfile::tempdir().unwrap();
    // nothing on the line at all
    let (_master, _slave, name) = pty();
    let out = monitor(
        dir.path(),
        &[
            "--port",
            &name,
            "--plain",
            "--heartbeat-ms",
            "100",
            "--seconds",
            "1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no traffic yet"), "{stdout}");
    // the port disappears mid-session
    let (mut master, slave, name) = pty();
    let child = monitor_command(dir.path(), &["--port", &name, "--plain", "--seconds", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let p = oodmon_protocol::Packet {
        session: 9,
        sequence: 0,
        timestamp_ms: 1_764_288_000_000,
        message: oodmon_protocol::Message::Heartbeat {
            state: oodmon_protocol::AlarmState::Ok,
            reason: oodmon_protocol::Reason::Cleared,
            period_ms: 200,
        },
    };
    let mut f = [0u8; oodmon_protocol::MAX_FRAME];
    let n = p.encode(&mut f);
    master.write_all(&f[..n]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(master);
    drop(slave);
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the monitor noticed the lost port only at its deadline"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("state OK (cleared)"), "{stdout}");
    assert!(stdout.contains("serial port lost"), "{stdout}");
    assert_fails_cleanly(&out, &["serial port lost"]);
}

/// A vehicle as the edge publishes (PROTOCOL.md, "Fleet monitoring over MQTT"), with a last
/// will; dropping it closes the connection without a DISCONNECT, as a crash does.
struct FakeVehicle {
    client: rumqttc::Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeVehicle {
    fn connect(port: u16) -> Self {
        let will = serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
            "online": false, "state": null, "reason": "connection_lost", "sequence": null,
            "since_ms": null});
        let mut o = rumqttc::MqttOptions::new("vehicle-agv", "127.0.0.1", port);
        o.set_keep_alive(std::time::Duration::from_secs(1));
        o.set_last_will(rumqttc::LastWill::new(
            "oodmon/yard/agv/state",
            will.to_string(),
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        let (client, mut connection) = rumqttc::Client::new(o, 64);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(Err(_)) = connection.recv_timeout(std::time::Duration::from_millis(20)) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            // the connection (and its socket) is dropped here without a DISCONNECT
        });
        Self {
            client,
            stop,
            thread: Some(thread),
        }
    }

    fn publish(&self, kind: &str, payload: String) {
        let qos = if kind == "heartbeat" {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        self.client
            .publish(
                format!("oodmon/yard/agv/{kind}"),
                qos,
                kind == "state",
                payload,
            )
            .unwrap();
    }

    fn crash(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
    }
}

fn fleet_event(sequence: u64, state: &str, reason: &str) -> String {
    serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
        "sequence": sequence, "time_ms": 1_764_850_000_000u64 + sequence, "state": state,
        "reason": reason, "score": 1.5, "frame": sequence * 10})
    .to_string()
}

#[test]
fn a_fleet_over_mqtt_shows_events_once_refuses_junk_and_flags_a_crashed_vehicle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start(dir.path());
    let child = monitor_command(
        dir.path(),
        &[
            "--mqtt",
            &broker.url(),
            "--fleet",
            "yard",
            "--plain",
            "--seconds",
            "8",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // let the monitor subscribe (a persistent session would keep these anyway)
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let vehicle = FakeVehicle::connect(broker.port);
    std::thread::sleep(std::time::Duration::from_millis(300));
    vehicle.publish("event", fleet_event(0, "OK", "cleared"));
    vehicle.publish("event", fleet_event(1, "OOD", "ood_frames"));
    // a repeat after a reconnection, and junk on the monitor's topics
    vehicle.publish("event", fleet_event(1, "OOD", "ood_frames"));
    vehicle.publish("event", "{not json".into());
    vehicle.publish(
        "event",
        fleet_event(2, "OK", "cleared").replace("\"v\":1", "\"v\":9"),
    );
    vehicle.publish("event", fleet_event(2, "OK", "cleared"));
    vehicle.publish(
        "heartbeat",
        serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
            "time_ms": 0, "state": "OK", "backlog": 0})
        .to_string(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    vehicle.crash();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (needle, times) in [
        ("yard/agv #0 OK cleared", 1),
        ("yard/agv #1 OOD ood_frames", 1),
        ("yard/agv #2 OK cleared", 1),
        ("refused oodmon/yard/agv/event", 2),
        ("yard/agv OFFLINE (connection_lost)", 1),
    ] {
        assert_eq!(
            stdout.matches(needle).count(),
            times,
            "{needle:?} in\n{stdout}"
        );
    }
    // the closing table: one vehicle, flagged, and the refusals counted
    assert!(stdout.contains("2 messages refused"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("yard") && l.contains("OFFLINE")),
        "{stdout}"
    );
}
