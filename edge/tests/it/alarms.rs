//! Alarms end to end: frames in, protocol frames out over a pseudo-terminal (a real serial
//! line for the OS), decoded by the monitor's decoder; fault injection; the GPIO fake; and
//! the journal surviving `kill -9`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_edge::alarm::service::{now_ms, AlarmService, Outputs};
use oodmon_edge::alarm::{AlarmConfig, DecisionRule};
use oodmon_edge::output::journal::{Journal, JournalEvent};
use oodmon_edge::output::{SerialConfig, SerialLink};
use oodmon_edge::testing::FakeLine;
use oodmon_edge::{Engine, Frame, FrameFormat};
use oodmon_monitor::monitor::{Monitor, MonitorEvent};
use oodmon_protocol::{AlarmState, Reason};
use oodmon_runtime::Bundle;
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
        camera_raise_k: 3,
        camera_window_n: 5,
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
                clock: None,
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
            media_us: None,
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

    /// Waits (reading the link) until the monitor has shown `state` since the `mark`-th
    /// event: a state the frames already reached counts even if a later one (the source
    /// stopping) has replaced it by the time the wait begins.
    fn wait_seen(&mut self, mark: usize, state: AlarmState, reason: Reason, limit_ms: u64) {
        let start = Instant::now();
        loop {
            let seen = self.events[mark..].iter().any(|(_, e)| {
                matches!(e, MonitorEvent::State { state: s, reason: r, .. }
                    if *s == state && *r == reason)
            });
            if seen {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_millis(limit_ms),
                "no {state:?} ({reason:?}) within {limit_ms} ms; monitor saw {:?}",
                self.states()
            );
            self.pump(2);
        }
    }

    /// Sends at least `frames` frames (`next(i)` is the i-th), then goes on sending until
    /// the monitor shows `state`: on a busy machine the monitor may take longer than the
    /// stall limit to show a state, and a wait without frames would then be a real
    /// `no_frames` stall.
    fn wait_feeding(
        &mut self,
        state: AlarmState,
        reason: Reason,
        limit_ms: u64,
        frames: u64,
        mut next: impl FnMut(u64) -> Vec<u8>,
    ) {
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_millis(limit_ms) {
            if i >= frames && self.monitor.state == Some((state, reason)) {
                return;
            }
            self.frame(&next(i));
            i += 1;
        }
        panic!(
            "no {state:?} ({reason:?}) within {limit_ms} ms of frames; monitor saw {:?}",
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
    // frames keep coming until the monitor shows each state: a gap longer than the stall
    // limit (one heartbeat) would be a no_frames fault, which this test does not expect
    // until the frames stop at the end
    let id = |i| id_image(i as usize % 3, 40, 30, 100 + i);
    rig.wait_feeding(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms(), 12, id);
    assert_eq!(rig.gpio.alarm(), Some(false), "line healthy while OK");
    let ood = |_| ood_image(40, 30);
    rig.wait_feeding(
        AlarmState::Ood,
        Reason::OodFrames,
        10 * heartbeat_ms(),
        4,
        ood,
    );
    assert_eq!(rig.gpio.alarm(), Some(true), "line at alarm while OOD");
    let id = |i| id_image(i as usize % 3, 40, 30, 200 + i);
    rig.wait_feeding(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms(), 12, id);
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
    let id = |i| id_image(i as usize % 3, 40, 30, 300 + i);
    rig.wait_feeding(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms(), 12, id);
    // the source stops: FAULT (no_frames) within two heartbeat periods
    let took = rig.wait_for(AlarmState::Fault, Reason::NoFrames, 10 * heartbeat_ms());
    // two periods, plus scheduling slack for a loaded 2-core machine (a run beside a soak
    // once took 152 ms with 50 ms heartbeats)
    assert!(took <= 2 * heartbeat_ms() + 60, "no_frames after {took} ms");
    assert_eq!(rig.gpio.alarm(), Some(true));
    let id = |i| id_image(i as usize % 3, 40, 30, 400 + i);
    rig.wait_feeding(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms(), 12, id);
    // a frozen camera: the same frame again and again
    let frozen = id_image(0, 40, 30, 7);
    let mark = rig.events.len();
    let start = Instant::now();
    for _ in 0..6 {
        rig.frame(&frozen);
    }
    // on a loaded machine the source's stop (no_frames) may already follow the fault
    rig.wait_seen(
        mark,
        AlarmState::Fault,
        Reason::FrozenCamera,
        2 * heartbeat_ms(),
    );
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
    let id = |i| id_image(i as usize % 3, 40, 30, 500 + i);
    rig.wait_feeding(AlarmState::Ok, Reason::Cleared, 10 * heartbeat_ms(), 12, id);
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
    // while the port stays gone, neither in-distribution nor OOD frames leave FAULT: the
    // controller cannot hear the state, so the GPIO line must read alarm throughout
    let outage = Instant::now();
    let mut i = 0;
    while outage.elapsed() < Duration::from_millis(5 * heartbeat_ms()) {
        if i % 20 < 10 {
            ok_frames(&mut rig, 1, 800 + i);
        } else {
            rig.frame(&ood_image(40, 30));
        }
        i += 1;
        assert_eq!(
            rig.service().current(),
            (AlarmState::Fault, Reason::OutputError),
            "left FAULT while the link was down"
        );
        assert_eq!(rig.gpio.alarm(), Some(true));
    }
    // plugged in again: the edge reopens the port and says where it stands at once, and
    // frames vouch for a state again
    let link = rig.line.link.clone();
    rig.line = Line::plug(&link);
    rig.monitor = Monitor::new(2 * heartbeat_ms());
    rig.events.clear();
    let replugged = Instant::now();
    let mut seed = 700;
    while rig.monitor.state != Some((AlarmState::Ok, Reason::Cleared)) {
        assert!(
            replugged.elapsed() < Duration::from_millis(20 * heartbeat_ms()),
            "no OK after the port came back; monitor saw {:?}",
            rig.states()
        );
        ok_frames(&mut rig, 1, seed);
        seed += 1;
    }
    assert_eq!(rig.monitor.crc_errors, 0);
    // the line follows the state (it is driven before a state is published; on a loaded
    // machine a stall may still come and go in between, so wait for the two to agree)
    let agreed = Instant::now();
    while !(rig.service().current() == (AlarmState::Ok, Reason::Cleared)
        && rig.gpio.alarm() == Some(false))
    {
        assert!(
            agreed.elapsed() < Duration::from_millis(10 * heartbeat_ms()),
            "the line stayed at alarm after OK: {:?}",
            rig.service().current()
        );
        ok_frames(&mut rig, 1, seed);
        seed += 1;
    }
    rig.service.take().unwrap().finish();
    let journal = Journal::read(&rig.journal).unwrap();
    let fault = journal
        .iter()
        .position(|e| e.reason == "output_error")
        .unwrap_or_else(|| panic!("no output_error in {journal:?}"));
    // after the output_error the next state journalled is the recovery, nothing between
    assert_eq!(
        journal[fault + 1].state,
        "OK",
        "the state changed during the outage: {journal:?}"
    );
}

fn heartbeat(session: u32, sequence: u32, state: AlarmState, reason: Reason) -> Vec<u8> {
    use oodmon_protocol::{Message, Packet, MAX_FRAME};
    let p = Packet {
        session,
        sequence,
        timestamp_ms: 1000 + sequence as u64,
        message: Message::Heartbeat {
            state,
            reason,
            period_ms: 50,
        },
    };
    let mut f = [0u8; MAX_FRAME];
    let n = p.encode(&mut f);
    f[..n].to_vec()
}

#[test]
fn the_monitor_warns_when_heartbeats_stop_and_messages_are_lost() {
    use oodmon_protocol::{Message, Packet, MAX_FRAME};
    let mut m = Monitor::new(1000);
    let mut events = Vec::new();
    let mut wire = Vec::new();
    for seq in [0u32, 1, 2, 5] {
        wire.extend(heartbeat(7, seq, AlarmState::Ok, Reason::Cleared));
    }
    // a frame corrupted on the line (one bit of its state byte), between two good ones
    let p = Packet {
        session: 7,
        sequence: 99,
        timestamp_ms: 1,
        message: Message::Heartbeat {
            state: AlarmState::Ok,
            reason: Reason::Cleared,
            period_ms: 50,
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
            lost: 2,
            expected: 3,
            got: 5
        }),
        "{events:?}"
    );
    assert_eq!(m.crc_errors, 1, "{events:?}");
    // the heartbeat period comes from the wire (50 ms): lost after 100 ms of silence
    assert_eq!(m.link_timeout_ms(), 100);
    m.check_link(1050, &mut events);
    assert!(!m.link_lost);
    m.check_link(1101, &mut events);
    assert!(m.link_lost);
    assert!(events
        .iter()
        .any(|e| matches!(e, MonitorEvent::LinkLost { .. })));
}

#[test]
fn the_monitor_tells_a_restart_from_lost_messages_and_ignores_duplicates() {
    let mut m = Monitor::new(1000);
    let mut events = Vec::new();
    let mut wire = Vec::new();
    for seq in 70..=76 {
        wire.extend(heartbeat(0xaaaa, seq, AlarmState::Ok, Reason::Cleared));
    }
    // a duplicate, then a step back
    wire.extend(heartbeat(0xaaaa, 76, AlarmState::Ok, Reason::Cleared));
    wire.extend(heartbeat(0xaaaa, 60, AlarmState::Ood, Reason::OodFrames));
    // the sender restarts: a new session counting from 0
    wire.extend(heartbeat(0xbbbb, 0, AlarmState::Fault, Reason::Starting));
    wire.extend(heartbeat(0xbbbb, 1, AlarmState::Fault, Reason::Starting));
    m.feed(&wire, 1000, &mut events);
    assert_eq!(m.lost_messages, 0, "{events:?}");
    assert_eq!(m.stale_messages, 2, "{events:?}");
    assert_eq!(m.restarts, 1, "{events:?}");
    assert!(events.contains(&MonitorEvent::Restart {
        previous: 0xaaaa,
        session: 0xbbbb,
        lost_at_start: 0
    }));
    // the step back did not change the state
    assert_eq!(m.state, Some((AlarmState::Fault, Reason::Starting)));
    assert!(!events.iter().any(|e| matches!(
        e,
        MonitorEvent::State {
            state: AlarmState::Ood,
            ..
        }
    )));
    let text: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains("the sender restarted")),
        "{text:?}"
    );
    assert!(
        !text.iter().any(|t| t.contains("lost")),
        "a restart is not a loss: {text:?}"
    );
    // a restart whose first messages were lost counts those
    let mut events = Vec::new();
    m.feed(
        &heartbeat(0xcccc, 3, AlarmState::Fault, Reason::Starting),
        1001,
        &mut events,
    );
    assert_eq!(m.lost_messages, 3);
}

#[test]
fn the_monitor_reports_no_traffic_and_an_unreliable_link() {
    let mut m = Monitor::new(400);
    let mut events = Vec::new();
    m.check_link(0, &mut events);
    m.check_link(399, &mut events);
    assert!(events.is_empty());
    m.check_link(401, &mut events);
    assert_eq!(events, [MonitorEvent::NoTraffic { silent_ms: 401 }]);
    assert_eq!(m.effective_state(), AlarmState::Fault);
    // three rejected frames among the last 100: unreliable, treated as FAULT
    let mut events = Vec::new();
    let good = heartbeat(1, 0, AlarmState::Ok, Reason::Cleared);
    m.feed(&good, 500, &mut events);
    assert_eq!(m.effective_state(), AlarmState::Ok);
    for seq in 1..4 {
        let mut bad = heartbeat(1, seq, AlarmState::Ok, Reason::Cleared);
        bad[3] ^= 0x10;
        m.feed(&bad, 500, &mut events);
    }
    assert!(m.unreliable);
    assert_eq!(m.effective_state(), AlarmState::Fault);
    assert!(events
        .iter()
        .any(|e| matches!(e, MonitorEvent::Unreliable { rejected: 3 })));
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
}

fn event_line(sequence: u64) -> String {
    let mut e = JournalEvent::new(
        1000 + sequence,
        AlarmState::Ood,
        Reason::OodFrames,
        0.5,
        Some(sequence),
        0,
    );
    e.sequence = sequence;
    serde_json::to_string(&e).unwrap()
}

#[test]
fn a_corrupt_line_in_the_middle_is_reported_and_skipped_and_nothing_after_it_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    let text = format!(
        "{}\n{}\n{{\"oops\": 1}}\n\u{0}\u{0}garbage\n{}\n{}\n",
        event_line(0),
        event_line(1),
        event_line(2),
        event_line(3)
    );
    std::fs::write(&path, &text).unwrap();
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert_eq!(recovery.corrupt_lines, vec![3, 4]);
    assert_eq!(recovery.events, 4);
    assert_eq!(recovery.last_sequence, Some(3));
    assert_eq!(recovery.torn_bytes, 0);
    journal
        .append(JournalEvent::new(
            9,
            AlarmState::Ok,
            Reason::Cleared,
            0.1,
            None,
            0,
        ))
        .unwrap();
    let events = Journal::read(&path).unwrap();
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, vec![0, 1, 2, 3, 4]);
    // the corrupt lines are left where they are, for a person to look at
    assert!(std::fs::read_to_string(&path).unwrap().contains("oops"));
}

#[test]
fn a_complete_last_event_without_its_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    std::fs::write(&path, format!("{}\n{}", event_line(0), event_line(1))).unwrap();
    let (mut journal, recovery) = Journal::open(&path).unwrap();
    assert!(recovery.completed_last_line, "{recovery:?}");
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(recovery.events, 2);
    journal
        .append(JournalEvent::new(
            9,
            AlarmState::Ok,
            Reason::Cleared,
            0.1,
            None,
            0,
        ))
        .unwrap();
    let sequences: Vec<u64> = Journal::read(&path)
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, vec![0, 1, 2]);
}

/// Bytes the service wrote, shared with the test.
#[derive(Clone, Default)]
struct Wire(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn record(i: u64, ood: bool) -> oodmon_edge::FrameRecord {
    oodmon_edge::FrameRecord {
        sequence: i,
        timestamp_us: 0,
        media_us: None,
        score: if ood { 0.9 } else { 0.1 },
        nearest: 0,
        nearest_class: None,
        p_value: None,
        threshold: 0.5,
        ood,
        latency: Default::default(),
        quality: Default::default(),
        camera: None,
        fingerprint: i,
    }
}

fn fake_service(
    clock: &oodmon_edge::testing::FakeClock,
    line: &FakeLine,
    wire: &Wire,
    journal: &Path,
) -> AlarmService {
    let (journal, _) = Journal::open(journal).unwrap();
    AlarmService::start(
        AlarmConfig {
            heartbeat_ms: 50,
            stall_ms: 150,
            ..config()
        },
        Outputs {
            link: Some(Box::new(oodmon_edge::output::WriterLink::new(
                wire.clone(),
                "wire",
            ))),
            line: Some(Box::new(line.clone())),
            journal: Some(journal),
            scores: false,
            watchdog_ms: 0,
            clock: Some(std::sync::Arc::new(clock.clone())),
        },
    )
}

#[test]
fn wall_clock_steps_leave_heartbeats_and_stall_detection_alone() {
    use oodmon_edge::testing::FakeClock;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("alarms.jsonl");
    let (clock, line, wire) = (FakeClock::new(), FakeLine::default(), Wire::default());
    let service = fake_service(&clock, &line, &wire, &journal);
    let start = Instant::now();
    let mut i = 0;
    let mut stepped = (false, false);
    while start.elapsed() < Duration::from_millis(1000) {
        if !stepped.0 && start.elapsed() > Duration::from_millis(300) {
            clock.step_wall(-3_600_000); // NTP sets the clock an hour back
            stepped.0 = true;
        }
        if !stepped.1 && start.elapsed() > Duration::from_millis(600) {
            clock.step_wall(7_200_000); // and two hours forward
            stepped.1 = true;
        }
        service.frame(Ok(&record(i, false)));
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(service.current(), (AlarmState::Ok, Reason::Cleared));
    // time passes on the monotonic clock with no frame: a stall, at the next heartbeat
    clock.advance(1000);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(service.current(), (AlarmState::Fault, Reason::NoFrames));
    let report = service.finish();
    let states: Vec<_> = report.transitions.iter().map(|t| t.reason).collect();
    assert_eq!(
        states,
        [Reason::Cleared, Reason::NoFrames, Reason::Stopping],
        "the wall-clock steps caused a transition"
    );
    // heartbeats every 50 ms throughout, in one session with no gap
    let mut monitor = Monitor::new(1000);
    let mut events = Vec::new();
    monitor.feed(&wire.0.lock().unwrap(), 0, &mut events);
    assert_eq!(monitor.lost_messages, 0, "{events:?}");
    assert_eq!(monitor.restarts, 0);
    assert!(monitor.messages >= 18, "{} messages", monitor.messages);
    // the journal's wall-clock labels show the steps; the alarm did not care
    let labels: Vec<u64> = Journal::read(&journal)
        .unwrap()
        .iter()
        .map(|e| e.time_ms)
        .collect();
    assert!(
        labels.windows(2).any(|w| w[1] > w[0] + 3_000_000),
        "{labels:?}"
    );
}

#[test]
fn a_gpio_line_that_cannot_be_driven_holds_fault_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("alarms.jsonl");
    let clock = oodmon_edge::testing::FakeClock::new();
    let (line, wire) = (FakeLine::default(), Wire::default());
    let service = fake_service(&clock, &line, &wire, &journal);
    let feed = |from: u64, n: u64, ood: bool| {
        for i in from..from + n {
            service.frame(Ok(&record(i, ood)));
            std::thread::sleep(Duration::from_millis(5));
        }
        service.wait_judged(Duration::from_millis(500));
    };
    feed(0, 10, false);
    assert_eq!(service.current(), (AlarmState::Ok, Reason::Cleared));
    line.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    // the line is driven at every heartbeat: within two the failure is a FAULT
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(service.current(), (AlarmState::Fault, Reason::OutputError));
    feed(10, 20, false);
    feed(30, 10, true);
    feed(40, 20, false);
    assert_eq!(service.current(), (AlarmState::Fault, Reason::OutputError));
    line.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(120));
    feed(60, 2, false);
    assert_eq!(service.current(), (AlarmState::Ok, Reason::Cleared));
    assert_eq!(line.alarm(), Some(false));
    service.finish();
    // the controller heard the fault on the serial link too
    let mut monitor = Monitor::new(1000);
    let mut events = Vec::new();
    monitor.feed(&wire.0.lock().unwrap(), 0, &mut events);
    assert!(events.iter().any(|e| matches!(
        e,
        MonitorEvent::State {
            state: AlarmState::Fault,
            reason: Reason::OutputError,
            ..
        }
    )));
}

#[test]
fn the_state_after_a_frame_is_the_one_the_wire_carries_for_it() {
    // what the demo's status line shows: once a frame is judged, `current` is the state
    // the outputs carry after it, never the one before
    let dir = tempfile::tempdir().unwrap();
    let clock = oodmon_edge::testing::FakeClock::new();
    let (line, wire) = (FakeLine::default(), Wire::default());
    let service = fake_service(&clock, &line, &wire, &dir.path().join("j.jsonl"));
    let mut i = 0;
    for round in 0..20 {
        let ood = round % 2 == 1;
        if !ood {
            std::thread::sleep(Duration::from_millis(25)); // past the 20 ms hold
        }
        for k in 1..=8 {
            service.frame(Ok(&record(i, ood)));
            i += 1;
            assert!(service.wait_judged(Duration::from_secs(5)));
            // raise_k 3 of window_n 5 raises at the 3rd OOD frame; clear_m 5 clears at the
            // 5th in-distribution one
            let want = match (ood, k) {
                (true, k) if k >= 3 => AlarmState::Ood,
                (true, _) => AlarmState::Ok,
                (false, k) if k >= 5 => AlarmState::Ok,
                (false, _) if round == 0 => AlarmState::Fault,
                (false, _) => AlarmState::Ood,
            };
            assert_eq!(service.current().0, want, "round {round}, frame {k}");
        }
    }
    service.finish();
}

#[test]
fn the_service_report_keeps_a_bounded_number_of_transitions() {
    // a long run must not grow memory with every transition (the soak found it)
    let dir = tempfile::tempdir().unwrap();
    let clock = oodmon_edge::testing::FakeClock::new();
    let (line, wire) = (FakeLine::default(), Wire::default());
    let service = fake_service(&clock, &line, &wire, &dir.path().join("j.jsonl"));
    let nan = oodmon_edge::EdgeError::Inference(oodmon_runtime::InferenceError::NonFinite {
        index: 0,
        value: f32::NAN,
    });
    let mut i = 0;
    for _ in 0..600 {
        service.frame(Err(&nan)); // FAULT (non_finite_score) at once
        for _ in 0..5 {
            service.frame(Ok(&record(i, false))); // OK (cleared) after clear_m
            i += 1;
        }
    }
    assert!(service.wait_judged(Duration::from_secs(30)));
    let report = service.finish();
    assert!(
        report.transition_count >= 1200,
        "{}",
        report.transition_count
    );
    assert_eq!(
        report.transitions.len(),
        oodmon_edge::alarm::service::REPORTED_TRANSITIONS
    );
    assert_eq!(report.transitions.back().unwrap().reason, Reason::Stopping);
}
