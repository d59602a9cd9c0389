//! PROTOCOL.md read by someone else: a receiver written in Python from the page alone
//! (tests/py/protocol_receiver.py) and the monitor agree, event by event, on a capture with
//! a duplicate, a step back, lost messages, a sender restart, a late frame of the old
//! session, a restart whose first messages were lost, CRC errors, a version 1 frame and an
//! over-long frame.

use oodmon_monitor::monitor::{Monitor, MonitorEvent};
use oodmon_protocol::{AlarmState, DecodeError, Message, Packet, Reason, MAX_FRAME};

use crate::util::run_python;

fn frame(session: u32, sequence: u32, message: Message) -> Vec<u8> {
    let p = Packet {
        session,
        sequence,
        timestamp_ms: 1_764_288_000_000 + sequence as u64,
        message,
    };
    let mut f = [0u8; MAX_FRAME];
    let n = p.encode(&mut f);
    f[..n].to_vec()
}

fn beat(session: u32, sequence: u32, state: AlarmState, reason: Reason) -> Vec<u8> {
    frame(
        session,
        sequence,
        Message::Heartbeat {
            state,
            reason,
            period_ms: 200,
        },
    )
}

fn capture() -> Vec<u8> {
    let (a, b, c) = (0x1111_1111, 0x2222_2222, 0x3333_3333);
    let ok = |s, q| beat(s, q, AlarmState::Ok, Reason::Cleared);
    let starting = |s, q| beat(s, q, AlarmState::Fault, Reason::Starting);
    let mut wire = Vec::new();
    for q in 0..5 {
        wire.extend(ok(a, q));
    }
    wire.extend(ok(a, 4)); // duplicate
    wire.extend(ok(a, 7)); // 5 and 6 lost
    wire.extend(ok(a, 5)); // step back
    let mut bad = ok(a, 8);
    bad[12] ^= 0x04; // a data byte corrupted on the line: CRC error
    wire.extend(bad);
    let mut bad = ok(a, 8);
    bad[9] ^= 0x04; // a COBS code byte corrupted: the frame is not valid COBS
    wire.extend(bad);
    wire.extend(starting(b, 0)); // the sender restarted
    wire.extend(ok(a, 9)); // a late frame of the old session
    wire.extend(starting(b, 1));
    wire.extend(starting(c, 3)); // restarted again; 0..2 of the new session lost
                                 // version 1's first worked example
    wire.extend([
        0x04, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x06, 0x70, 0xc2, 0xc7, 0x9a, 0x01, 0x01, 0x01,
        0x01, 0x05, 0x38, 0xfc, 0xf1, 0xbc, 0x00,
    ]);
    wire.extend([7u8; 40]); // longer than any frame
    wire.push(0);
    wire.extend(frame(
        c,
        4,
        Message::StateChange {
            state: AlarmState::Ood,
            reason: Reason::OodFrames,
            score: 0.5,
        },
    ));
    wire.extend(frame(
        c,
        5,
        Message::Score {
            score: 0.5,
            threshold: 0.4,
            cluster: 2,
            p_value: f32::NAN,
            ood: true,
        },
    ));
    wire
}

/// The events both receivers report, in a common form.
fn monitor_events(wire: &[u8]) -> (Vec<String>, Monitor) {
    let mut m = Monitor::new(1000);
    let mut events = Vec::new();
    m.feed(wire, 0, &mut events);
    let text = events
        .iter()
        .filter_map(|e| match e {
            MonitorEvent::Restart {
                previous,
                session,
                lost_at_start,
            } => Some(format!("restart {previous} {session} {lost_at_start}")),
            MonitorEvent::Lost { lost, .. } => Some(format!("lost {lost}")),
            MonitorEvent::Stale { sequence } => Some(format!("stale {sequence}")),
            MonitorEvent::BadFrame(e) => Some(format!(
                "rejected {}",
                match e {
                    DecodeError::TooLong => "too_long",
                    DecodeError::Cobs => "cobs",
                    DecodeError::Length => "length",
                    DecodeError::Crc => "crc",
                    DecodeError::Version(_) => "version",
                    DecodeError::Type(_) => "type",
                    DecodeError::Value => "value",
                }
            )),
            MonitorEvent::Unreliable { .. } => Some("unreliable".into()),
            _ => None,
        })
        .collect();
    (text, m)
}

#[test]
fn a_receiver_written_from_protocol_md_alone_agrees_with_the_monitor() {
    let wire = capture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.bin");
    std::fs::write(&path, &wire).unwrap();
    let out = run_python("protocol_receiver.py", &[&path]);
    let mut theirs = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in out.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = |k: &str| e[k].as_u64().unwrap_or(0);
        match e["event"].as_str().unwrap() {
            "restart" => theirs.push(format!(
                "restart {} {} {}",
                n("previous"),
                n("session"),
                n("lost_at_start")
            )),
            "lost" => theirs.push(format!("lost {}", n("lost"))),
            "stale" => theirs.push(format!("stale {}", n("sequence"))),
            "rejected" => theirs.push(format!("rejected {}", e["why"].as_str().unwrap())),
            "unreliable" => theirs.push("unreliable".into()),
            "summary" => summary = e,
            _ => {}
        }
    }
    let (ours, m) = monitor_events(&wire);
    assert_eq!(ours, theirs);
    assert_eq!(
        ours,
        [
            "stale 4",
            "lost 2",
            "stale 5",
            "rejected crc",
            "rejected cobs",
            "restart 286331153 572662306 0",
            "stale 9",
            "restart 572662306 858993459 3",
            "rejected version",
            "unreliable",
            "rejected too_long",
        ]
    );
    assert_eq!(summary["messages"].as_u64(), Some(m.messages));
    assert_eq!(summary["lost"].as_u64(), Some(m.lost_messages));
    assert_eq!(summary["stale"].as_u64(), Some(m.stale_messages));
    assert_eq!(summary["restarts"].as_u64(), Some(m.restarts));
    assert_eq!(summary["rejected"].as_u64(), Some(m.bad_frames));
    assert_eq!(m.state, Some((AlarmState::Ood, Reason::OodFrames)));
    assert!(m.unreliable, "four rejected frames among the last 100");
}

#[test]
fn the_python_receiver_passes_its_own_check_of_the_worked_examples() {
    let out = run_python(
        "protocol_receiver.py",
        &[std::path::Path::new("--self-test")],
    );
    assert!(out.contains("self-test: passed"), "{out}");
}
