extern crate std;

use std::vec::Vec;

use proptest::prelude::*;

use super::*;

fn frames(packets: &[Packet]) -> Vec<u8> {
    let mut wire = Vec::new();
    for p in packets {
        let mut f = [0u8; MAX_FRAME];
        let n = p.encode(&mut f);
        wire.extend_from_slice(&f[..n]);
    }
    wire
}

fn decode_all(wire: &[u8]) -> Vec<Result<Packet, DecodeError>> {
    let mut d = Decoder::new();
    wire.iter().filter_map(|&b| d.push(b)).collect()
}

fn same(a: &Packet, b: &Packet) -> bool {
    // NaN-aware equality
    let f = |x: f32, y: f32| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan());
    a.session == b.session
        && a.sequence == b.sequence
        && a.timestamp_ms == b.timestamp_ms
        && match (a.message, b.message) {
            (
                Message::Heartbeat {
                    state: s1,
                    reason: r1,
                    period_ms: h1,
                },
                Message::Heartbeat {
                    state: s2,
                    reason: r2,
                    period_ms: h2,
                },
            ) => s1 == s2 && r1 == r2 && h1 == h2,
            (
                Message::StateChange {
                    state: s1,
                    reason: r1,
                    score: c1,
                },
                Message::StateChange {
                    state: s2,
                    reason: r2,
                    score: c2,
                },
            ) => s1 == s2 && r1 == r2 && f(c1, c2),
            (
                Message::Score {
                    score: a1,
                    threshold: t1,
                    cluster: k1,
                    p_value: p1,
                    ood: o1,
                },
                Message::Score {
                    score: a2,
                    threshold: t2,
                    cluster: k2,
                    p_value: p2,
                    ood: o2,
                },
            ) => {
                f(a1, a2)
                    && f(t1, t2)
                    && k1 == k2
                    && o1 == o2
                    && ((p1.is_nan() && p2.is_nan()) || (p1 - p2).abs() <= 1.0 / 65534.0)
            }
            _ => false,
        }
}

/// Every (state, reason) pair the protocol allows.
fn state_reason() -> impl Strategy<Value = (AlarmState, Reason)> {
    let pairs: Vec<(AlarmState, Reason)> = [AlarmState::Ok, AlarmState::Ood, AlarmState::Fault]
        .into_iter()
        .flat_map(|s| (0u8..=11).map(move |r| (s, Reason::from_u8(r).unwrap())))
        .filter(|(s, r)| s.allows(*r))
        .collect();
    proptest::sample::select(pairs)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (state_reason(), 1u16..).prop_map(|((state, reason), period_ms)| Message::Heartbeat {
            state,
            reason,
            period_ms
        }),
        (state_reason(), any::<f32>()).prop_map(|((state, reason), score)| {
            Message::StateChange {
                state,
                reason,
                score,
            }
        }),
        (
            any::<f32>(),
            any::<f32>(),
            any::<u16>(),
            prop_oneof![Just(f32::NAN), 0.0f32..=1.0],
            any::<bool>()
        )
            .prop_map(|(score, threshold, cluster, p_value, ood)| Message::Score {
                score,
                threshold,
                cluster,
                p_value,
                ood
            }),
    ]
}

fn packet() -> impl Strategy<Value = Packet> {
    (1u32.., any::<u32>(), any::<u64>(), message()).prop_map(
        |(session, sequence, timestamp_ms, message)| Packet {
            session,
            sequence,
            timestamp_ms,
            message,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips(packets in proptest::collection::vec(packet(), 1..20)) {
        let wire = frames(&packets);
        prop_assert!(wire.iter().filter(|&&b| b == 0).count() == packets.len());
        let got = decode_all(&wire);
        prop_assert_eq!(got.len(), packets.len());
        for (g, p) in got.iter().zip(&packets) {
            let g = g.as_ref().unwrap();
            prop_assert!(same(g, p), "{:?} != {:?}", g, p);
        }
    }

    #[test]
    fn random_bytes_never_panic_and_frames_after_them_decode(
        noise in proptest::collection::vec(any::<u8>(), 0..600),
        packets in proptest::collection::vec(packet(), 1..5),
    ) {
        let mut wire = noise.clone();
        wire.push(0); // the receiver resynchronises at the next delimiter
        wire.extend(frames(&packets));
        let got = decode_all(&wire);
        let tail = &got[got.len() - packets.len()..];
        for (g, p) in tail.iter().zip(&packets) {
            prop_assert!(same(g.as_ref().unwrap(), p));
        }
    }

    #[test]
    fn corrupted_frames_are_rejected_and_the_rest_survive(
        packets in proptest::collection::vec(packet(), 3..12),
        hits in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let mut wire = frames(&packets);
        // flip bits in one frame's bytes (never creating or removing a delimiter)
        let ends: Vec<usize> = wire.iter().enumerate().filter(|(_, &b)| b == 0).map(|(i, _)| i).collect();
        let victim = hits[0].0 % packets.len();
        let start = if victim == 0 { 0 } else { ends[victim - 1] + 1 };
        let end = ends[victim];
        let before = wire[start..end].to_vec();
        for (pos, mask) in &hits {
            let i = start + pos % (end - start);
            if wire[i] ^ mask != 0 {
                wire[i] ^= mask;
            }
        }
        let changed = wire[start..end] != before[..];
        let got = decode_all(&wire);
        prop_assert_eq!(got.len(), packets.len());
        for (i, (g, p)) in got.iter().zip(&packets).enumerate() {
            if i == victim {
                // CRC-32C detects every error of up to 3 bits in short frames; a changed
                // COBS code byte shows as a framing, length or CRC error
                if changed {
                    prop_assert!(g.is_err(), "corruption of frame {} went unnoticed: {:?}", i, g);
                }
            } else {
                prop_assert!(same(g.as_ref().unwrap(), p));
            }
        }
    }
}

/// The worked examples of PROTOCOL.md: (packet, unencoded bytes, wire bytes).
pub(crate) fn examples() -> [(Packet, &'static str, &'static str); 3] {
    [
        (
            Packet {
                session: 0x2a5c_91e3,
                sequence: 0,
                timestamp_ms: 1_764_288_000_000,
                message: Message::Heartbeat {
                    state: AlarmState::Fault,
                    reason: Reason::Starting,
                    period_ms: 200,
                },
            },
            RAW_HEARTBEAT,
            WIRE_HEARTBEAT,
        ),
        (
            Packet {
                session: 0x2a5c_91e3,
                sequence: 1,
                timestamp_ms: 1_764_288_000_250,
                message: Message::StateChange {
                    state: AlarmState::Ood,
                    reason: Reason::OodFrames,
                    score: 0.625,
                },
            },
            RAW_STATE_CHANGE,
            WIRE_STATE_CHANGE,
        ),
        (
            Packet {
                session: 0x2a5c_91e3,
                sequence: 2,
                timestamp_ms: 1_764_288_000_300,
                message: Message::Score {
                    score: 0.625,
                    threshold: 0.5,
                    cluster: 3,
                    p_value: 0.0125,
                    ood: true,
                },
            },
            RAW_SCORE,
            WIRE_SCORE,
        ),
    ]
}

const RAW_HEARTBEAT: &str =
    "04 01 e3 91 5c 2a 00 00 00 00 00 70 c2 c7 9a 01 00 00 02 09 c8 00 1b 8c d6 ea";
const WIRE_HEARTBEAT: &str =
    "07 04 01 e3 91 5c 2a 01 01 01 01 06 70 c2 c7 9a 01 01 04 02 09 c8 05 1b 8c d6 ea 00";
const RAW_STATE_CHANGE: &str =
    "04 02 e3 91 5c 2a 01 00 00 00 fa 70 c2 c7 9a 01 00 00 01 01 00 00 20 3f c3 10 58 f4";
const WIRE_STATE_CHANGE: &str =
    "08 04 02 e3 91 5c 2a 01 01 01 07 fa 70 c2 c7 9a 01 01 03 01 01 01 07 20 3f c3 10 58 f4 00";
const RAW_SCORE: &str = "04 03 e3 91 5c 2a 02 00 00 00 2c 71 c2 c7 9a 01 00 00 00 00 20 3f 00 00 00 3f 03 00 01 33 03 41 21 72 10";
const WIRE_SCORE: &str = "08 04 03 e3 91 5c 2a 02 01 01 07 2c 71 c2 c7 9a 01 01 01 01 03 20 3f 01 01 03 3f 03 08 01 33 03 41 21 72 10 00";

fn hex(bytes: &[u8]) -> std::string::String {
    let parts: Vec<std::string::String> = bytes.iter().map(|b| std::format!("{b:02x}")).collect();
    parts.join(" ")
}

#[test]
fn worked_examples_match_protocol_md() {
    for (packet, raw_hex, wire_hex) in examples() {
        let mut raw = [0u8; MAX_MESSAGE];
        let n = packet.to_bytes(&mut raw);
        let mut wire = [0u8; MAX_FRAME];
        let m = packet.encode(&mut wire);
        std::println!(
            "{:?}\n  raw  {}\n  wire {}",
            packet.message,
            hex(&raw[..n]),
            hex(&wire[..m])
        );
        assert_eq!(hex(&raw[..n]), raw_hex);
        assert_eq!(hex(&wire[..m]), wire_hex);
        let got = decode_all(&wire[..m]);
        assert!(same(got[0].as_ref().unwrap(), &packet));
    }
}

#[test]
fn overlong_and_bad_frames_have_typed_errors() {
    let mut d = Decoder::new();
    for _ in 0..MAX_FRAME + 10 {
        assert!(d.push(7).is_none());
    }
    assert_eq!(d.push(0), Some(Err(DecodeError::TooLong)));
    // exactly one byte more than the longest valid frame holds is too long as well
    for _ in 0..MAX_ENCODED + 1 {
        assert!(d.push(7).is_none());
    }
    assert_eq!(d.push(0), Some(Err(DecodeError::TooLong)));
    // two delimiters in a row: nothing
    assert_eq!(d.push(0), None);
    // a valid COBS frame that is too short
    for b in [3u8, 1, 2] {
        d.push(b);
    }
    assert_eq!(d.push(0), Some(Err(DecodeError::Length)));
    // wrong version, with a correct CRC
    let p = Packet {
        session: 1,
        sequence: 0,
        timestamp_ms: 0,
        message: Message::Heartbeat {
            state: AlarmState::Ood,
            reason: Reason::OodFrames,
            period_ms: 200,
        },
    };
    let mut raw = [0u8; MAX_MESSAGE];
    let n = p.to_bytes(&mut raw);
    raw[0] = 9;
    let crc = CRC32C.checksum(&raw[..n - 4]);
    raw[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(Packet::from_bytes(&raw[..n]), Err(DecodeError::Version(9)));
    let resign = |raw: &mut [u8; MAX_MESSAGE]| {
        let crc = CRC32C.checksum(&raw[..n - 4]);
        raw[n - 4..n].copy_from_slice(&crc.to_le_bytes());
    };
    raw[0] = VERSION;
    raw[HEADER_LEN] = 7; // no such state
    resign(&mut raw);
    assert_eq!(Packet::from_bytes(&raw[..n]), Err(DecodeError::Value));
    raw[HEADER_LEN] = AlarmState::Ok as u8; // OK with reason ood_frames: not a valid pair
    resign(&mut raw);
    assert_eq!(Packet::from_bytes(&raw[..n]), Err(DecodeError::Value));
    raw[HEADER_LEN] = AlarmState::Ood as u8;
    raw[2..6].copy_from_slice(&[0; 4]); // session 0 is never sent
    resign(&mut raw);
    assert_eq!(Packet::from_bytes(&raw[..n]), Err(DecodeError::Value));
    raw[2] = 1;
    raw[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&[0, 0]); // heartbeat period 0
    resign(&mut raw);
    assert_eq!(Packet::from_bytes(&raw[..n]), Err(DecodeError::Value));
}

/// Version 1's first worked example (PROTOCOL.md of version 1): this receiver refuses it by
/// its version byte, with a message that says what to do.
const V1_HEARTBEAT_WIRE: &str = "04 01 01 01 01 01 01 06 70 c2 c7 9a 01 01 01 01 05 38 fc f1 bc 00";
/// Version 3's first worked example (before the oversaturated camera): refused the same way.
const V3_HEARTBEAT_WIRE: &str =
    "07 03 01 e3 91 5c 2a 01 01 01 01 06 70 c2 c7 9a 01 01 04 02 09 c8 05 e6 73 53 7b 00";
/// Version 2's first worked example (before the camera reasons): refused the same way.
const V2_HEARTBEAT_WIRE: &str =
    "07 02 01 e3 91 5c 2a 01 01 01 01 06 70 c2 c7 9a 01 01 04 02 09 c8 05 52 9d 46 27 00";

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn a_version_1_frame_is_refused_by_its_version_byte() {
    let got = decode_all(&unhex(V1_HEARTBEAT_WIRE));
    assert_eq!(got, [Err(DecodeError::Version(1))]);
    let text = std::format!("{}", DecodeError::Version(1));
    assert!(
        text.contains("version 1") && text.contains("version 4"),
        "{text}"
    );
    let got = decode_all(&unhex(V2_HEARTBEAT_WIRE));
    assert_eq!(got, [Err(DecodeError::Version(2))]);
    let got = decode_all(&unhex(V3_HEARTBEAT_WIRE));
    assert_eq!(got, [Err(DecodeError::Version(3))]);
}

/// What a version 1 receiver did with a frame (its `from_bytes` up to the version check):
/// the CRC still covers the whole message and the version is still byte 0, so it reports a
/// version mismatch rather than noise.
fn v1_receiver_verdict(raw: &[u8]) -> Result<(), u8> {
    let body = raw.len() - 4;
    let crc = u32::from_le_bytes([raw[body], raw[body + 1], raw[body + 2], raw[body + 3]]);
    assert_eq!(
        CRC32C.checksum(&raw[..body]),
        crc,
        "a v1 receiver sees a sound CRC"
    );
    if raw[0] != 1 {
        return Err(raw[0]);
    }
    Ok(())
}

#[test]
fn a_version_1_receiver_refuses_version_4_frames_by_their_version_byte() {
    for (packet, _, _) in examples() {
        let mut raw = [0u8; MAX_MESSAGE];
        let n = packet.to_bytes(&mut raw);
        assert_eq!(v1_receiver_verdict(&raw[..n]), Err(VERSION));
    }
}
