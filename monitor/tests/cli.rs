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
