//! Field monitoring of the alarm link: decodes the byte stream with the protocol's decoder
//! and keeps what an engineer needs to see (state, scores, heartbeat age, CRC errors,
//! lost messages, alarm history), raising warnings when heartbeats stop or sequence
//! numbers jump. The terminal UI and the `--plain` log both render this.

use std::collections::VecDeque;

use oodmon_protocol::{AlarmState, DecodeError, Decoder, Message, Packet, Reason};

/// Scores kept for the sparkline.
pub const SCORE_HISTORY: usize = 240;
/// Alarm history entries kept.
pub const ALARM_HISTORY: usize = 100;

/// Something worth a line in the log.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// A STATE_CHANGE, or a heartbeat that shows a state we had not seen.
    State {
        state: AlarmState,
        reason: Reason,
        score: Option<f32>,
        sent_ms: u64,
    },
    /// Sequence numbers jumped: messages were lost.
    Lost { expected: u32, got: u32 },
    /// A frame failed its checks.
    BadFrame(DecodeError),
    /// No heartbeat for longer than the limit.
    LinkLost { silent_ms: u64 },
    /// Heartbeats are back.
    LinkBack,
}

impl std::fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MonitorEvent::State {
                state,
                reason,
                score,
                sent_ms,
            } => {
                write!(
                    f,
                    "state {} ({}) at {sent_ms} ms",
                    state.name(),
                    reason.name()
                )?;
                if let Some(s) = score.filter(|s| s.is_finite()) {
                    write!(f, ", score {s:.4}")?;
                }
                Ok(())
            }
            MonitorEvent::Lost { expected, got } => write!(
                f,
                "WARNING: {} message(s) lost (sequence {expected} expected, {got} received)",
                got.wrapping_sub(*expected)
            ),
            MonitorEvent::BadFrame(e) => write!(f, "WARNING: bad frame: {e:?}"),
            MonitorEvent::LinkLost { silent_ms } => {
                write!(f, "WARNING: link lost: no heartbeat for {silent_ms} ms")
            }
            MonitorEvent::LinkBack => write!(f, "link back"),
        }
    }
}

#[derive(Debug)]
pub struct Monitor {
    decoder: Decoder,
    /// Silence after which the link counts as lost (two heartbeat periods by default).
    pub link_timeout_ms: u64,
    pub state: Option<(AlarmState, Reason)>,
    pub last_message_ms: Option<u64>,
    pub last_heartbeat_ms: Option<u64>,
    pub link_lost: bool,
    pub crc_errors: u64,
    pub bad_frames: u64,
    pub lost_messages: u64,
    pub messages: u64,
    next_sequence: Option<u32>,
    pub scores: VecDeque<f32>,
    pub history: VecDeque<MonitorEvent>,
}

impl Monitor {
    pub fn new(link_timeout_ms: u64) -> Self {
        Self {
            decoder: Decoder::new(),
            link_timeout_ms,
            state: None,
            last_message_ms: None,
            last_heartbeat_ms: None,
            link_lost: false,
            crc_errors: 0,
            bad_frames: 0,
            lost_messages: 0,
            messages: 0,
            next_sequence: None,
            scores: VecDeque::with_capacity(SCORE_HISTORY),
            history: VecDeque::with_capacity(ALARM_HISTORY),
        }
    }

    /// Feeds received bytes (at local time `now_ms`); appends what happened to `events`.
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64, events: &mut Vec<MonitorEvent>) {
        for &b in bytes {
            match self.decoder.push(b) {
                None => {}
                Some(Ok(p)) => self.on_packet(p, now_ms, events),
                Some(Err(e)) => {
                    self.bad_frames += 1;
                    if e == DecodeError::Crc {
                        self.crc_errors += 1;
                    }
                    events.push(MonitorEvent::BadFrame(e));
                }
            }
        }
    }

    fn on_packet(&mut self, p: Packet, now_ms: u64, events: &mut Vec<MonitorEvent>) {
        self.messages += 1;
        self.last_message_ms = Some(now_ms);
        if let Some(expected) = self.next_sequence {
            if p.sequence != expected {
                self.lost_messages += p.sequence.wrapping_sub(expected) as u64;
                events.push(MonitorEvent::Lost {
                    expected,
                    got: p.sequence,
                });
            }
        }
        self.next_sequence = Some(p.sequence.wrapping_add(1));
        let state_event = match p.message {
            Message::Heartbeat { state, reason } => {
                self.last_heartbeat_ms = Some(now_ms);
                if self.link_lost {
                    self.link_lost = false;
                    events.push(MonitorEvent::LinkBack);
                }
                (self.state != Some((state, reason))).then_some(MonitorEvent::State {
                    state,
                    reason,
                    score: None,
                    sent_ms: p.timestamp_ms,
                })
            }
            Message::StateChange {
                state,
                reason,
                score,
            } => Some(MonitorEvent::State {
                state,
                reason,
                score: Some(score),
                sent_ms: p.timestamp_ms,
            }),
            Message::Score { score, .. } => {
                if self.scores.len() == SCORE_HISTORY {
                    self.scores.pop_front();
                }
                self.scores.push_back(score);
                None
            }
        };
        if let Some(MonitorEvent::State { state, reason, .. }) = &state_event {
            self.state = Some((*state, *reason));
            if self.history.len() == ALARM_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(state_event.clone().expect("some"));
            let _ = reason;
        }
        events.extend(state_event);
    }

    /// Checks heartbeat age at `now_ms`.
    pub fn check_link(&mut self, now_ms: u64, events: &mut Vec<MonitorEvent>) {
        let since = self.last_heartbeat_ms.unwrap_or(0);
        let silent = now_ms.saturating_sub(since);
        if !self.link_lost && self.last_heartbeat_ms.is_some() && silent > self.link_timeout_ms {
            self.link_lost = true;
            events.push(MonitorEvent::LinkLost { silent_ms: silent });
        }
    }

    /// Heartbeat age in ms, if one was ever received.
    pub fn heartbeat_age(&self, now_ms: u64) -> Option<u64> {
        self.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t))
    }
}
