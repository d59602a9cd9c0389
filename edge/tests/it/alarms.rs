//! Alarms end to end: frames in, protocol frames out over a pseudo-terminal (a real serial
//! line for the OS), decoded by the monitor's decoder; fault injection; the GPIO fake; and
//! the journal surviving `kill -9`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oodmon_calibration::bundle::Bundle;
use oodmon_calibration::preprocess::PixelFormat;
use oodmon_edge::alarm::{AlarmConfig, DecisionRule};
use oodmon_edge::journal::{Journal, JournalEvent};
use oodmon_edge::monitor::{Monitor, MonitorEvent};
use oodmon_edge::output::{FakeLine, SerialConfig, SerialLink};
use oodmon_edge::service::{now_ms, AlarmService, Outputs};
use oodmon_edge::{Engine, Frame, FrameFormat};
use oodmon_protocol::{AlarmState, Reason};
use serialport::TTYPort;

use crate::util::{id_image, ood_image, write_nan_bundle, write_tiny_bundle};

/// Heartbeat period of the tests: short on the host, longer under emulation (qemu runs the
/// frame loop tens of times slower); every time limit is a multiple of it.
fn heartbeat_ms() -> u64 {
    if std::env::var("OODMON_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
        400
    } else {
        50
    }
}

fn config() -> AlarmConfig {
    AlarmConfig {
        raise_k: 3,
        window_n: 5,
        clear_m: 5,
        min_hold_ms: 20,
        decision: DecisionRule::Threshold,
        stall_ms: heartbeat_ms(),
        frozen_frames: 6,
        max_bad_frames: 3,
        heartbeat_ms: heartbeat_ms(),
    }
}

/// A pseudo-terminal pair whose slave is reached through a stable symlink, like a USB
/// serial adapter's `/dev/serial/by-id` name: "unplugging" removes both, "plugging in"
/// makes a new pair behind the same name.
struct Line {
    link: PathBuf,
    master: Option<TTYPort>,
    _slave: Option<TTYPort>,
}

impl Line {
    fn plug(link: &Path) -> Self {
        let (master, slave) = TTYPort::pair().expect("pseudo-terminal pair");
        let name = serialport::SerialPort::name(&slave).expect("slave name");
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(name, link).unwrap();
        let mut master = master;
        serialport::SerialPort::set_timeout(&mut master, Duration::from_millis(5)).unwrap();
        Self {
            link: link.into(),
            master: Some(master),
            _slave: Some(slave),
        }
    }

    fn unplug(&mut self) {
        self.master.take();
        self._slave.take();
        let _ = std::fs::remove_file(&self.link);
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    engine: Engine,
    service: Option<AlarmService>,
    line: Line,
    gpio: FakeLine,
    monitor: Monitor,
    events: Vec<(u64, MonitorEvent)>,
    journal: PathBuf,
}

impl Rig {
    fn new(bundle: impl Fn(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        bundle(&dir.path().join("b"));
        let engine = Engine::new(Bundle::load(dir.path().join("b")).unwrap()).unwrap();
        let line = Line::plug(&dir.path().join("ttyOODMON"));
        let gpio = FakeLine::default();
        let journal_path = dir.path().join("alarms.jsonl");
        let (journal, _) = Journal::open(&journal_path).unwrap();
        let link = SerialLink::open(&SerialConfig {
            device: Some(line.link.to_string_lossy().into_owned()),
            baud: 115_200,
            ..Default::default()
        })
        .unwrap();
        let service = AlarmService::start(
            config(),
            Outputs {
                link: Some(Box::new(link)),
                line: Some(Box::new(gpio.clone())),
                journal: Some(journal),
                scores: true,
                watchdog_ms: 0,
            },
        );
        Self {
            _dir: dir,
            engine,
            service: Some(service),
            line,
            gpio,
            monitor: Monitor::new(2 * heartbeat_ms()),
            events: Vec::new(),
            journal: journal_path,
        }
    }

    fn service(&self) -> &AlarmService {
        self.service.as_ref().unwrap()
    }

    /// Reads the link for `ms` milliseconds.
    fn pump(&mut self, ms: u64) {
        let end = Instant::now() + Duration::from_millis(ms);
        let mut buf = [0u8; 512];
        let mut ev = Vec::new();
        while Instant::now() < end {
            let n = match self.line.master.as_mut() {
                Some(m) => m.read(&mut buf).unwrap_or(0),
                None => {
                    std::thread::sleep(Duration::from_millis(5));
                    0
                }
            };
            let now = now_ms();
            self.monitor.feed(&buf[..n], now, &mut ev);
            self.events.extend(ev.drain(..).map(|e| (now, e)));
        }
    }

    fn frame(&mut self, rgb: &[u8]) {
        let frame = Frame {
            data: rgb,
            width: 40,
            height: 30,
            stride: None,
            format: FrameFormat::Raw(PixelFormat::Rgb8),
            timestamp_us: 0,
            sequence: 0,
        };
        let result = self.engine.process(&frame);
        self.service.as_ref().unwrap().frame(result.as_ref());
        self.pump(3);
    }

    /// State changes the monitor decoded, in order.
    fn states(&self) -> Vec<(AlarmState, Reason)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                MonitorEvent::State { state, reason, .. } => Some((*state, *reason)),
                _ => None,
            })
            .collect()
    }

    /// Waits (reading the link) until the monitor shows `state`; returns the time it took.
    fn wait_for(&mut self, state: AlarmState, reason: Reason, limit_ms: u64) -> u64 {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(limit_ms) {
            if self.monitor.state == Some((state, reason)) {
                return start.elapsed().as_millis() as u64;
            }
            self.pump(2);
        }
        panic!(
            "no {state:?} ({reason:?}) within {limit_ms} ms; monitor saw {:?}",
            self.states()
        );
    }
}

fn ok_frames(rig: &mut Rig, n: usize, seed: u64) {
    for i in 0..n {
        rig.frame(&id_image(i % 3, 40, 30, seed + i as u64));
    }
}

#[test]
fn frames_to_protocol_to_monitor_in_order_with_no_crc_error() {
    let mut rig = Rig::new(write_tiny_bundle);
    rig.pump(20);
    ok_frames(&mut rig, 12, 100);
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms());
    assert_eq!(rig.gpio.alarm(), Some(false), "line healthy while OK");
    for _ in 0..4 {
        rig.frame(&ood_image(40, 30));
    }
    rig.wait_for(AlarmState::Ood, Reason::OodFrames, 10 * heartbeat_ms());
    assert_eq!(rig.gpio.alarm(), Some(true), "line at alarm while OOD");
    std::thread::sleep(Duration::from_millis(25));
    ok_frames(&mut rig, 12, 200);
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms());
    rig.pump(3 * heartbeat_ms());
    let report = rig.service.take().unwrap().finish();
    rig.pump(50);
    assert_eq!(
        rig.states(),
        [
            (AlarmState::Fault, Reason::Starting),
            (AlarmState::Ok, Reason::Cleared),
            (AlarmState::Ood, Reason::OodFrames),
            (AlarmState::Ok, Reason::Cleared),
            // no more frames: the stall is a fault before the service stops
            (AlarmState::Fault, Reason::NoFrames),
            (AlarmState::Fault, Reason::Stopping),
        ]
    );
    assert_eq!(rig.monitor.crc_errors, 0);
    assert_eq!(rig.monitor.bad_frames, 0);
    assert_eq!(rig.monitor.lost_messages, 0);
    assert!(rig.monitor.scores.len() >= 16, "SCORE messages");
    assert_eq!(report.send_errors, 0);
    assert_eq!(rig.gpio.alarm(), Some(true), "released when stopping");
    // the journal holds the same changes, in order, with contiguous sequence numbers
    let journal = Journal::read(&rig.journal).unwrap();
    let names: Vec<(String, String)> = journal
        .iter()
        .map(|e| (e.state.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("FAULT".into(), "starting".into()),
            ("OK".into(), "cleared".into()),
            ("OOD".into(), "ood_frames".into()),
            ("OK".into(), "cleared".into()),
            ("FAULT".into(), "no_frames".into()),
            ("FAULT".into(), "stopping".into()),
        ]
    );
    assert!(journal
        .iter()
        .enumerate()
        .all(|(i, e)| e.sequence == i as u64));
}

#[test]
fn a_stopped_source_and_a_frozen_camera_reach_fault_within_two_heartbeats() {
    let mut rig = Rig::new(write_tiny_bundle);
    ok_frames(&mut rig, 12, 300);
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms());
    // the source stops: FAULT (no_frames) within two heartbeat periods
    let took = rig.wait_for(AlarmState::Fault, Reason::NoFrames, 10 * heartbeat_ms());
    assert!(took <= 2 * heartbeat_ms() + 20, "no_frames after {took} ms");
    assert_eq!(rig.gpio.alarm(), Some(true));
    ok_frames(&mut rig, 12, 400);
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms());
    // a frozen camera: the same frame again and again
    let frozen = id_image(0, 40, 30, 7);
    let start = Instant::now();
    for _ in 0..6 {
        rig.frame(&frozen);
    }
    rig.wait_for(AlarmState::Fault, Reason::FrozenCamera, 2 * heartbeat_ms());
    assert!(start.elapsed() < Duration::from_millis(2 * heartbeat_ms() + 100));
    assert_eq!(rig.gpio.alarm(), Some(true));
    rig.service.take().unwrap().finish();
}

#[test]
fn a_nan_producing_encoder_is_a_fault_at_once() {
    let mut rig = Rig::new(write_nan_bundle);
    rig.pump(10);
    let start = Instant::now();
    rig.frame(&id_image(0, 40, 30, 1));
    rig.wait_for(
        AlarmState::Fault,
        Reason::NonFiniteScore,
        2 * heartbeat_ms(),
    );
    assert!(start.elapsed() < Duration::from_millis(2 * heartbeat_ms() + 50));
    assert_eq!(rig.gpio.alarm(), Some(true));
    rig.service.take().unwrap().finish();
}

#[test]
fn an_unplugged_port_is_a_fault_and_the_state_is_resent_when_it_comes_back() {
    let mut rig = Rig::new(write_tiny_bundle);
    ok_frames(&mut rig, 12, 10 * heartbeat_ms());
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms());
    assert_eq!(rig.gpio.alarm(), Some(false));
    rig.line.unplug();
    let unplugged = Instant::now();
    // frames keep coming; the link cannot be written: FAULT (output_error), line released
    while rig.service().current() != (AlarmState::Fault, Reason::OutputError) {
        assert!(
            unplugged.elapsed() < Duration::from_millis(2 * heartbeat_ms() + 50),
            "no output_error fault"
        );
        ok_frames(&mut rig, 1, 600);
    }
    assert!(unplugged.elapsed() <= Duration::from_millis(2 * heartbeat_ms() + 50));
    assert_eq!(rig.gpio.alarm(), Some(true));
    // plugged in again: the edge reopens the port and says where it stands at once
    let link = rig.line.link.clone();
    rig.line = Line::plug(&link);
    rig.monitor = Monitor::new(2 * heartbeat_ms());
    rig.events.clear();
    let replugged = Instant::now();
    ok_frames(&mut rig, 8, 700);
    rig.wait_for(AlarmState::Ok, Reason::Cleared, 20 * heartbeat_ms());
    assert!(replugged.elapsed() < Duration::from_millis(20 * heartbeat_ms()));
    assert_eq!(rig.monitor.crc_errors, 0);
    assert_eq!(rig.gpio.alarm(), Some(false));
    rig.service.take().unwrap().finish();
    let journal = Journal::read(&rig.journal).unwrap();
    assert!(
        journal.iter().any(|e| e.reason == "output_error"),
        "{journal:?}"
    );
}

#[test]
fn the_monitor_warns_when_heartbeats_stop_and_messages_are_lost() {
    use oodmon_protocol::{Message, Packet, MAX_FRAME};
    let mut m = Monitor::new(100);
    let mut events = Vec::new();
    let mut wire = Vec::new();
    for seq in [0u32, 1, 2, 5] {
        let p = Packet {
            sequence: seq,
            timestamp_ms: 1000 + seq as u64,
            message: Message::Heartbeat {
                state: AlarmState::Ok,
                reason: Reason::None,
            },
        };
        let mut f = [0u8; MAX_FRAME];
        let n = p.encode(&mut f);
        wire.extend_from_slice(&f[..n]);
    }
    // a frame corrupted on the line (one bit of its state byte), between two good ones
    let p = Packet {
        sequence: 99,
        timestamp_ms: 1,
        message: Message::Heartbeat {
            state: AlarmState::Ok,
            reason: Reason::None,
        },
    };
    let mut raw = [0u8; oodmon_protocol::MAX_MESSAGE];
    let n = p.to_bytes(&mut raw);
    raw[oodmon_protocol::HEADER_LEN] ^= 1;
    let mut bad = [0u8; MAX_FRAME];
    let k = corncobs::encode_buf(&raw[..n], &mut bad);
    let first_end = wire.iter().position(|&b| b == 0).unwrap() + 1;
    wire.splice(first_end..first_end, bad[..k].iter().copied());
    m.feed(&wire, 1000, &mut events);
    assert!(
        events.contains(&MonitorEvent::Lost {
            expected: 3,
            got: 5
        }),
        "{events:?}"
    );
    assert_eq!(m.crc_errors, 1, "{events:?}");
    m.check_link(1050, &mut events);
    assert!(!m.link_lost);
    m.check_link(1101, &mut events);
    assert!(m.link_lost);
    assert!(events
        .iter()
        .any(|e| matches!(e, MonitorEvent::LinkLost { .. })));
}

/// Helper process for the kill -9 test: appends events as fast as it can.
#[test]
#[ignore = "helper process, started by journal_survives_kill_9"]
fn journal_writer_process() {
    let path = std::env::var("OODMON_JOURNAL_CHILD").expect("started by the kill -9 test");
    let (mut journal, _) = Journal::open(Path::new(&path)).unwrap();
    for i in 0.. {
        journal
            .append(JournalEvent::new(
                i,
                AlarmState::Ood,
                Reason::OodFrames,
                0.5,
                Some(i),
                0,
            ))
            .unwrap();
    }
}

#[test]
fn journal_survives_kill_9_and_skips_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let exe = std::env::current_exe().unwrap();
    let runner = std::env::var("OODMON_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    let mut cmd = match parts.next() {
        Some(first) => {
            let mut c = std::process::Command::new(first);
            c.args(parts).arg(&exe);
            c
        }
        None => std::process::Command::new(&exe),
    };
    let mut child = cmd
        .args([
            "--ignored",
            "--exact",
            "alarms::journal_writer_process",
            "--nocapture",
        ])
        .env("OODMON_JOURNAL_CHILD", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // let it write for a while, then kill -9 (SIGKILL) mid-stream
    let start = Instant::now();
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < 20_000
        && start.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert!(recovery.events > 50, "{recovery:?}");
    let events = Journal::read(&path).unwrap();
    assert_eq!(events.len(), recovery.events);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence == i as u64),
        "no gap, no loss"
    );
    // a torn last line (the process died inside a write): detected, cut off, reported
    drop(journal);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"time_ms\":12,\"state\":\"O").unwrap();
    }
    let recovered;
    (journal, recovered) = Journal::open(&path).unwrap();
    assert_eq!(recovered.torn_bytes, 24);
    assert_eq!(recovered.events, recovery.events);
    journal
        .append(JournalEvent::new(
            1,
            AlarmState::Ok,
            Reason::Cleared,
            0.1,
            None,
            0,
        ))
        .unwrap();
    let after = Journal::read(&path).unwrap();
    assert_eq!(after.len(), recovery.events + 1);
    assert_eq!(after.last().unwrap().sequence, recovery.events as u64);
    // garbage in the middle is not silently skipped
    std::fs::write(&path, "{\"oops\": 1}\n").unwrap();
    assert!(Journal::open(&path).is_err());
}
