//! The alarm protocol's decoder on any byte stream: never panics, and every packet it
//! accepts survives a round trip; the receiver rules accept any session and sequence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oodmon_protocol::receiver::{ErrorRate, SequenceTracker};
use oodmon_protocol::{Decoder, Packet, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    let mut tracker = SequenceTracker::new();
    let mut errors = ErrorRate::new();
    for &b in data {
        match decoder.push(b) {
            None => {}
            Some(Ok(p)) => {
                errors.record(false);
                tracker.observe(p.session, p.sequence);
                let mut wire = [0u8; MAX_FRAME];
                let n = p.encode(&mut wire);
                let mut again = Decoder::new();
                let back: Vec<Packet> = wire[..n]
                    .iter()
                    .filter_map(|&b| again.push(b))
                    .map(|r| r.expect("a packet the decoder accepted re-encodes validly"))
                    .collect();
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].session, p.session);
                assert_eq!(back[0].sequence, p.sequence);
            }
            Some(Err(_)) => errors.record(true),
        }
    }
    let _ = errors.unreliable();
});
