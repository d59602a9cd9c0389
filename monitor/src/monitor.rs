//! Field monitoring of the alarm link: decodes the byte stream with the protocol's decoder
//! and keeps what an engineer needs to see (state, scores, heartbeat age, CRC errors,
//! lost messages, alarm history), raising warnings when heartbeats stop or sequence
//! numbers jump. The terminal UI and the `--plain` log both render this.

use std::collections::VecDeque;

use oodmon_protocol::receiver::{link_timeout_ms, Arrival, ErrorRate, SequenceTracker};
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
    /// Sequence numbers jumped within a session: messages were lost.
    Lost { lost: u32, expected: u32, got: u32 },
    /// A new session id: the sender restarted (its first `lost_at_start` messages missed).
    Restart {
        previous: u32,
        session: u32,
        lost_at_start: u32,
    },
    /// A sequence number already passed: a duplicate or a step back, ignored.
    Stale { sequence: u32 },
    /// A frame failed its checks.
    BadFrame(DecodeError),
    /// Too many rejected frames among the last 100: the link is treated as FAULT.
    Unreliable { rejected: u32 },
    /// The rejection rate is acceptable again.
    Reliable,
    /// Nothing valid received at all for this long since the monitor started.
    NoTraffic { silent_ms: u64 },
    /// No heartbeat for longer than two heartbeat periods.
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
                    "state {} ({}) sent at {}",
                    state.name(),
                    reason.name(),
                    crate::ui::clock(*sent_ms)
                )?;
                if let Some(s) = score.filter(|s| s.is_finite()) {
                    write!(f, ", score {s:.4}")?;
                }
                Ok(())
            }
            MonitorEvent::Lost {
                lost,
                expected,
                got,
            } => write!(
                f,
                "WARNING: {lost} message(s) lost (sequence {expected} expected, {got} received)"
            ),
            MonitorEvent::Restart {
                previous,
                session,
                lost_at_start,
            } => {
                write!(
                    f,
                    "WARNING: the sender restarted (session {previous:08x} -> {session:08x})"
                )?;
                if *lost_at_start > 0 {
                    write!(
                        f,
                        "; its first {lost_at_start} message(s) were lost"
                    )?;
                }
                Ok(())
            }
            MonitorEvent::Stale { sequence } => write!(
                f,
                "WARNING: duplicate or out-of-order message (sequence {sequence}) ignored"
            ),
            MonitorEvent::BadFrame(e) => write!(f, "WARNING: bad frame: {e}"),
            MonitorEvent::Unreliable { rejected } => write!(
                f,
                "WARNING: link unreliable: {rejected} of the last {} frames rejected (more than {}): treat as FAULT",
                oodmon_protocol::receiver::ERROR_WINDOW,
                oodmon_protocol::receiver::MAX_REJECTED
            ),
            MonitorEvent::Reliable => write!(f, "link reliable again"),
            MonitorEvent::NoTraffic { silent_ms } => write!(
                f,
                "WARNING: no traffic yet: nothing valid received in {silent_ms} ms (wrong port, baud or wiring, or the edge is not running)"
            ),
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
    sequences: SequenceTracker,
    errors: ErrorRate,
    /// Silence after which the link counts as lost before the first heartbeat says its
    /// period (afterwards: two periods, from the wire).
    pub default_link_timeout_ms: u64,
    /// Heartbeat period the sender last announced.
    pub heartbeat_period_ms: Option<u16>,
    pub state: Option<(AlarmState, Reason)>,
    pub session: Option<u32>,
    pub started_ms: Option<u64>,
    pub last_message_ms: Option<u64>,
    pub last_heartbeat_ms: Option<u64>,
    pub link_lost: bool,
    pub no_traffic: bool,
    pub unreliable: bool,
    pub crc_errors: u64,
    pub bad_frames: u64,
    pub lost_messages: u64,
    pub stale_messages: u64,
    pub restarts: u64,
    pub messages: u64,
    pub scores: VecDeque<f32>,
    pub history: VecDeque<MonitorEvent>,
}

impl Monitor {
    pub fn new(default_link_timeout_ms: u64) -> Self {
        Self {
            decoder: Decoder::new(),
            sequences: SequenceTracker::new(),
            errors: ErrorRate::new(),
            default_link_timeout_ms,
            heartbeat_period_ms: None,
            state: None,
            session: None,
            started_ms: None,
            last_message_ms: None,
            last_heartbeat_ms: None,
            link_lost: false,
            no_traffic: false,
            unreliable: false,
            crc_errors: 0,
            bad_frames: 0,
            lost_messages: 0,
            stale_messages: 0,
            restarts: 0,
            messages: 0,
            scores: VecDeque::with_capacity(SCORE_HISTORY),
            history: VecDeque::with_capacity(ALARM_HISTORY),
        }
    }

    /// Silence after which the link counts as lost: two of the sender's heartbeat periods.
    pub fn link_timeout_ms(&self) -> u64 {
        self.heartbeat_period_ms
            .map_or(self.default_link_timeout_ms, link_timeout_ms)
    }

    /// Feeds received bytes (at local time `now_ms`); appends what happened to `events`.
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64, events: &mut Vec<MonitorEvent>) {
        self.started_ms.get_or_insert(now_ms);
        for &b in bytes {
            match self.decoder.push(b) {
                None => {}
                Some(Ok(p)) => {
                    self.record_frame(false, events);
                    self.on_packet(p, now_ms, events)
                }
                Some(Err(e)) => {
                    self.bad_frames += 1;
                    if e == DecodeError::Crc {
                        self.crc_errors += 1;
                    }
                    events.push(MonitorEvent::BadFrame(e));
                    self.record_frame(true, events);
                }
            }
        }
    }

    fn record_frame(&mut self, rejected: bool, events: &mut Vec<MonitorEvent>) {
        self.errors.record(rejected);
        match (self.unreliable, self.errors.unreliable()) {
            (false, true) => {
                self.unreliable = true;
                events.push(MonitorEvent::Unreliable {
                    rejected: self.errors.rejected(),
                });
            }
            (true, false) => {
                self.unreliable = false;
                events.push(MonitorEvent::Reliable);
            }
            _ => {}
        }
    }

    fn on_packet(&mut self, p: Packet, now_ms: u64, events: &mut Vec<MonitorEvent>) {
        let expected = self.sequences.expected();
        match self.sequences.observe(p.session, p.sequence) {
            Arrival::Stale => {
                self.stale_messages += 1;
                events.push(MonitorEvent::Stale {
                    sequence: p.sequence,
                });
                return;
            }
            Arrival::First | Arrival::InOrder => {}
            Arrival::Gap { lost } => {
                self.lost_messages += lost as u64;
                events.push(MonitorEvent::Lost {
                    lost,
                    expected: expected.unwrap_or(0),
                    got: p.sequence,
                });
            }
            Arrival::Restart {
                previous,
                lost_at_start,
            } => {
                self.restarts += 1;
                self.lost_messages += lost_at_start as u64;
                // a new session says its state afresh
                self.state = None;
                events.push(MonitorEvent::Restart {
                    previous,
                    session: p.session,
                    lost_at_start,
                });
            }
        }
        self.session = Some(p.session);
        self.messages += 1;
        self.last_message_ms = Some(now_ms);
        if self.no_traffic {
            self.no_traffic = false;
        }
        let state_event = match p.message {
            Message::Heartbeat {
                state,
                reason,
                period_ms,
            } => {
                self.last_heartbeat_ms = Some(now_ms);
                self.heartbeat_period_ms = Some(period_ms);
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
        if let Some(event @ MonitorEvent::State { state, reason, .. }) = &state_event {
            self.state = Some((*state, *reason));
            if self.history.len() == ALARM_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }
        events.extend(state_event);
    }

    /// Checks at `now_ms` for silence: nothing valid ever (no traffic yet), or no heartbeat
    /// for two heartbeat periods (link lost).
    pub fn check_link(&mut self, now_ms: u64, events: &mut Vec<MonitorEvent>) {
        let started = *self.started_ms.get_or_insert(now_ms);
        let timeout = self.link_timeout_ms();
        match self.last_heartbeat_ms {
            Some(last) => {
                let silent = now_ms.saturating_sub(last);
                if !self.link_lost && silent > timeout {
                    self.link_lost = true;
                    events.push(MonitorEvent::LinkLost { silent_ms: silent });
                }
            }
            None => {
                let silent = now_ms.saturating_sub(started);
                if !self.no_traffic && self.last_message_ms.is_none() && silent > timeout {
                    self.no_traffic = true;
                    events.push(MonitorEvent::NoTraffic { silent_ms: silent });
                }
            }
        }
    }

    /// What a controller should act on now: the last state, or FAULT while the link is
    /// lost, silent or unreliable.
    pub fn effective_state(&self) -> AlarmState {
        if self.link_lost || self.no_traffic || self.unreliable {
            return AlarmState::Fault;
        }
        self.state.map_or(AlarmState::Fault, |s| s.0)
    }

    /// Heartbeat age in ms, if one was ever received.
    pub fn heartbeat_age(&self, now_ms: u64) -> Option<u64> {
        self.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t))
    }
}
