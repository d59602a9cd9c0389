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
        Self::connect_with(
            oodmon_fleet::client::BrokerConfig {
                url: Some(format!("mqtt://127.0.0.1:{port}")),
                ..Default::default()
            },
            "agv",
        )
    }

    /// A vehicle `name` on `broker` (TLS and credentials as configured).
    fn connect_with(broker: oodmon_fleet::client::BrokerConfig, name: &str) -> Self {
        let will = serde_json::json!({"v": 1, "fleet": "yard", "vehicle": name, "boot": "b",
            "online": false, "state": null, "reason": "connection_lost", "sequence": null,
            "since_ms": null});
        let mut o = broker
            .options(
                &format!("vehicle-{name}"),
                std::time::Duration::from_secs(1),
            )
            .unwrap();
        o.set_last_will(rumqttc::LastWill::new(
            format!("oodmon/yard/{name}/state"),
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
        self.publish_as("agv", kind, payload);
    }

    /// Publishes under `vehicle`'s topics, whoever this client is.
    fn publish_as(&self, vehicle: &str, kind: &str, payload: String) {
        let qos = if kind == "heartbeat" {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        self.client
            .publish(
                format!("oodmon/yard/{vehicle}/{kind}"),
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
    vehicle_event("agv", sequence, state, reason)
}

fn vehicle_event(vehicle: &str, sequence: u64, state: &str, reason: &str) -> String {
    serde_json::json!({"v": 1, "fleet": "yard", "vehicle": vehicle, "boot": "b",
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

/// Connects with `broker` settings and returns the first thing the connection says: a
/// CONNACK, or the error (a TLS failure, a refused login).
fn first_answer(broker: oodmon_fleet::client::BrokerConfig) -> Result<(), String> {
    let o = broker
        .options("probe", std::time::Duration::from_secs(5))
        .unwrap();
    let (_client, mut connection) = rumqttc::Client::new(o, 8);
    loop {
        match connection.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                return if a.code == rumqttc::ConnectReturnCode::Success {
                    Ok(())
                } else {
                    Err(format!("{:?}", a.code))
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[test]
fn tls_passwords_and_the_acl_keep_a_vehicle_to_its_own_topics() {
    use oodmon_fleet::client::BrokerConfig;
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start_secure(dir.path());
    let d = dir.path();
    let as_user = |user: &str| BrokerConfig {
        url: Some(broker.secure_url()),
        ca: Some(d.join("ca.pem")),
        username: Some(user.into()),
        password_file: Some(d.join(format!("{user}.pass"))),
        ..Default::default()
    };
    // the right CA and password connect; anything else is refused
    assert_eq!(first_answer(as_user("v1")), Ok(()), "{}", broker.log());
    std::fs::write(d.join("wrong.pass"), "guess\n").unwrap();
    let wrong_password = BrokerConfig {
        password_file: Some(d.join("wrong.pass")),
        ..as_user("v1")
    };
    assert!(first_answer(wrong_password).is_err());
    let anonymous = BrokerConfig {
        username: None,
        password_file: None,
        ..as_user("v1")
    };
    assert!(first_answer(anonymous).is_err());
    // a CA that did not sign the broker's certificate: the TLS handshake fails
    let (other, _) = untrusted_ca();
    std::fs::write(d.join("other-ca.pem"), other.pem()).unwrap();
    let other_ca = BrokerConfig {
        ca: Some(d.join("other-ca.pem")),
        ..as_user("v1")
    };
    let err = first_answer(other_ca).unwrap_err();
    assert!(
        err.to_lowercase().contains("tls") || err.contains("certificate"),
        "{err}"
    );
    // plain TCP to the TLS port gets nowhere either
    assert!(first_answer(BrokerConfig {
        url: Some(format!("mqtt://127.0.0.1:{}", broker.port)),
        ca: None,
        ..as_user("v1")
    })
    .is_err());

    let pass = d.join("monitor.pass");
    let child = secure_monitor(
        d,
        &broker,
        &[
            "--username",
            "monitor",
            "--password-file",
            pass.to_str().unwrap(),
        ],
        6,
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let v1 = FakeVehicle::connect_with(as_user("v1"), "v1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    v1.publish_as("v1", "event", vehicle_event("v1", 0, "OOD", "ood_frames"));
    // v1 tries to speak for v2: the broker's ACL drops it
    v1.publish_as("v2", "event", vehicle_event("v2", 0, "OK", "cleared"));
    v1.publish_as("v2", "state", "{}".into());
    // the monitor may read but not publish
    let monitor_as_vehicle = FakeVehicle::connect_with(as_user("monitor"), "monitor");
    monitor_as_vehicle.publish_as("v1", "event", vehicle_event("v1", 1, "FAULT", "stopping"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    v1.publish_as("v1", "event", vehicle_event("v1", 1, "OK", "cleared"));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("yard/v1 #0 OOD").count(), 1, "{stdout}");
    // sequence 1 is v1's own, not the monitor's attempt (which came first)
    assert_eq!(stdout.matches("yard/v1 #1 OK").count(), 1, "{stdout}");
    assert!(!stdout.contains("#1 FAULT"), "{stdout}");
    assert!(!stdout.contains("yard/v2"), "{stdout}");
    assert!(!stdout.contains("refused"), "{stdout}");
    drop(v1);
    drop(monitor_as_vehicle);
}

/// Client certificates instead of passwords (`require_certificate`, the certificate's
/// name as the username): a vehicle's certificate logs it in, none or one from another CA
/// does not, the ACL still keeps it to its own topics, and the monitor reads with its own.
#[test]
fn client_certificates_log_in_and_the_acl_still_holds() {
    use oodmon_fleet::client::BrokerConfig;
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start_cert_auth(dir.path());
    let d = dir.path();
    let as_cert = |name: &str| BrokerConfig {
        url: Some(broker.secure_url()),
        ca: Some(d.join("ca.pem")),
        client_cert: Some(d.join(format!("{name}.pem"))),
        client_key: Some(d.join(format!("{name}.key"))),
        ..Default::default()
    };
    assert_eq!(first_answer(as_cert("v1")), Ok(()), "{}", broker.log());
    // no certificate
    assert!(first_answer(BrokerConfig {
        client_cert: None,
        client_key: None,
        ..as_cert("v1")
    })
    .is_err());
    // a certificate named v1 from a CA the broker does not trust
    let (_, issuer) = untrusted_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "v1");
    let forged = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join("forged.pem"), forged.pem()).unwrap();
    std::fs::write(d.join("forged.key"), key.serialize_pem()).unwrap();
    assert!(first_answer(as_cert("forged")).is_err());

    let path = |name: &str| d.join(name).to_str().unwrap().to_string();
    let child = secure_monitor(
        d,
        &broker,
        &[
            "--cert",
            &path("monitor.pem"),
            "--key",
            &path("monitor.key"),
        ],
        5,
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let v1 = FakeVehicle::connect_with(as_cert("v1"), "v1");
    std::thread::sleep(std::time::Duration::from_millis(300));
    v1.publish_as("v1", "event", vehicle_event("v1", 0, "OOD", "ood_frames"));
    v1.publish_as("v2", "event", vehicle_event("v2", 0, "OK", "cleared"));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("yard/v1 #0 OOD").count(), 1, "{stdout}");
    assert!(!stdout.contains("yard/v2"), "{stdout}");
    drop(v1);
}

/// `oodmon-monitor --plain` on a broker from `start_secure` / `start_cert_auth` (its CA in
/// `ca.pem`), logged in with `login`, for `seconds`.
fn secure_monitor(
    d: &Path,
    broker: &oodmon_testkit::Broker,
    login: &[&str],
    seconds: u32,
) -> std::process::Child {
    let (url, ca, seconds) = (broker.secure_url(), d.join("ca.pem"), seconds.to_string());
    let mut args = vec!["--mqtt", url.as_str(), "--ca", ca.to_str().unwrap()];
    args.extend_from_slice(login);
    args.extend_from_slice(&["--fleet", "yard", "--plain", "--seconds", &seconds]);
    monitor_command(d, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A CA no broker here trusts: its certificate and its issuer.
fn untrusted_ca() -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert, rcgen::Issuer::new(params, key))
}

/// One HTTP/1.1 request on a fresh connection; the whole response (or, for an event
/// stream, what arrived until a `data:` line with `until` in it).
fn http_get(port: u16, path: &str, auth: Option<&str>, until: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let auth = auth.map_or(String::new(), |a| {
        use base64::Engine as _;
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
    });
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some(u) = until {
            if text
                .lines()
                .any(|l| l.starts_with("data: ") && l.contains(u))
            {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn the_web_dashboard_serves_the_fleet_live_behind_basic_authentication() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start(dir.path());
    std::fs::write(dir.path().join("http.pass"), "s3cret\n").unwrap();
    let mut child = monitor_command(
        dir.path(),
        &[
            "--mqtt",
            &broker.url(),
            "--fleet",
            "yard",
            "--plain",
            "--http",
            "127.0.0.1:0",
            "--http-user",
            "ops",
            "--http-password-file",
            "http.pass",
            "--seconds",
            "8",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("dashboard on http://127.0.0.1:")
                .map(|p| p.trim_end_matches('/').parse().unwrap())
        })
        .expect("the dashboard's address");
    let vehicle = FakeVehicle::connect(broker.port);
    std::thread::sleep(std::time::Duration::from_millis(300));
    vehicle.publish("event", fleet_event(0, "OOD", "ood_frames"));
    vehicle.publish(
        "score",
        serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
            "time_ms": 1, "frame": 3, "score": 51.5, "threshold": 46.1, "ood": true})
        .to_string(),
    );
    // a 1x1 JPEG as the evidence thumbnail
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .encode(&[200, 10, 10], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    let thumb = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&jpeg)
    };
    vehicle.publish(
        "evidence",
        serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
            "sequence": 0, "time_ms": 1, "state": "OOD", "reason": "ood_frames",
            "dir": "event-000000", "frames": 61, "frame": 3, "thumbnail_jpeg": thumb})
        .to_string(),
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    // no credentials, wrong ones: 401 with a challenge
    let anonymous = http_get(port, "/", None, None);
    assert!(
        anonymous.starts_with("HTTP/1.1 401") && anonymous.contains("WWW-Authenticate"),
        "{anonymous}"
    );
    assert!(http_get(port, "/snapshot.json", Some("ops:guess"), None).starts_with("HTTP/1.1 401"));
    let page = http_get(port, "/", Some("ops:s3cret"), None);
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("EventSource"),
        "{page}"
    );
    let snap = http_get(port, "/snapshot.json", Some("ops:s3cret"), None);
    let body = snap.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let row = &v["vehicles"][0];
    assert_eq!(row["vehicle"], "agv", "{body}");
    assert_eq!(row["state"], "OOD");
    assert_eq!(row["scores"][0], 51.5);
    assert_eq!(row["thumbnail"], thumb.as_str());
    // the live stream carries the same table
    let events = http_get(port, "/events", Some("ops:s3cret"), Some("\"agv\""));
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("data: {"), "{events}");
    assert_eq!(
        http_get(port, "/nothing", Some("ops:s3cret"), None)[..12].to_string(),
        "HTTP/1.1 404"
    );
    drop(vehicle);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // beyond loopback without credentials: refused at start
    let refused = monitor(
        dir.path(),
        &[
            "--mqtt",
            &broker.url(),
            "--http",
            "0.0.0.0:0",
            "--seconds",
            "1",
        ],
    );
    assert_fails_cleanly(&refused, &["beyond loopback"]);
}

/// Debian's Chromium (the test command installs it).
fn chromium() -> &'static str {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("chromium is not installed: `cargo xtask test` installs it (apt-get install chromium)");
}

/// Headless Chromium on `url` with `args`, its standard output; `profile` names a fresh
/// profile directory (a second instance on a profile in use would hand its work to the
/// first and exit).
fn headless(dir: &Path, profile: &str, url: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("90")
        .arg(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--timeout=5000",
        ])
        .arg(format!("--user-data-dir={}", dir.join(profile).display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_dashboard_renders_in_a_real_browser() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let broker = oodmon_testkit::Broker::start(dir.path());
    let mut child = monitor_command(
        dir.path(),
        &[
            "--mqtt",
            &broker.url(),
            "--fleet",
            "yard",
            "--plain",
            "--http",
            "127.0.0.1:0",
            "--seconds",
            "15",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("dashboard on http://127.0.0.1:")
                .map(|p| p.trim_end_matches('/').parse().unwrap())
        })
        .expect("the dashboard's address");
    std::thread::spawn(move || lines.for_each(drop));
    let vehicle = FakeVehicle::connect(broker.port);
    std::thread::sleep(std::time::Duration::from_millis(300));
    vehicle.publish("event", fleet_event(0, "OOD", "ood_frames"));
    for i in 0..20 {
        vehicle.publish(
            "score",
            serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
                "time_ms": 1, "frame": i, "score": 30.0 + i as f64, "threshold": 46.1,
                "ood": i > 16})
            .to_string(),
        );
    }
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .encode(
            &[200u8, 10, 10].repeat(64 * 48),
            64,
            48,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    let thumb = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&jpeg)
    };
    vehicle.publish(
        "evidence",
        serde_json::json!({"v": 1, "fleet": "yard", "vehicle": "agv", "boot": "b",
            "sequence": 0, "time_ms": 1, "state": "OOD", "reason": "ood_frames",
            "dir": "event-000000", "frames": 61, "frame": 3, "thumbnail_jpeg": thumb})
        .to_string(),
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    let url = format!("http://127.0.0.1:{port}/");
    // the DOM after the page's script ran: the vehicle's row, its sparkline and thumbnail
    let dom = headless(dir.path(), "chromium-dom", &url, &["--dump-dom"]);
    assert!(dom.contains("id=\"vehicle-yard-agv\""), "{dom}");
    assert!(dom.contains("class=\"OOD\""), "{dom}");
    assert!(dom.contains("<polyline"), "{dom}");
    assert!(dom.contains("data:image/jpeg;base64,"), "{dom}");
    // and a screenshot, kept beside the test's files: a page, not a blank
    let png = dir.path().join("dashboard.png");
    headless(
        dir.path(),
        "chromium-shot",
        &url,
        &[
            "--window-size=1200,400",
            &format!("--screenshot={}", png.display()),
        ],
    );
    let shot = image::open(&png).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (1200, 400));
    let distinct: std::collections::BTreeSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        distinct.len() > 20,
        "{} colours: a blank page",
        distinct.len()
    );
    if let Ok(keep) = std::env::var("OODMON_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    // live: a change published after the page loaded reaches its table through the event
    // stream (the page draws only the newest snapshot, on the next animation frame);
    // headless Chromium dumps the DOM when the stream ends, as the monitor stops at
    // --seconds
    let live = {
        let (dir, url) = (dir.path().to_path_buf(), url.clone());
        std::thread::spawn(move || {
            headless(
                &dir,
                "chromium-live",
                &url,
                &["--dump-dom", "--virtual-time-budget=3000"],
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    vehicle.publish("event", fleet_event(1, "FAULT", "camera_dark"));
    let dom = live.join().unwrap();
    assert!(dom.contains("camera_dark"), "{dom}");
    assert!(dom.contains("class=\"FAULT\""), "{dom}");
    drop(vehicle);
    let _ = child.kill();
    let _ = child.wait();
}
