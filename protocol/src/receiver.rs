//! The receiver's rules of PROTOCOL.md, for any receiver written in Rust (the monitor, a
//! controller's firmware): telling a sender restart from lost messages and duplicates, and
//! when the link itself must be treated as FAULT (silence, or too many rejected frames).

/// How one valid packet relates to those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first packet this receiver has seen. A sequence above 0 means it joined a
    /// session under way; nothing is counted as lost.
    First,
    /// The packet expected next.
    InOrder,
    /// `lost` messages of this session before this one never arrived.
    Gap { lost: u32 },
    /// Another session id: the sender restarted. `lost_at_start` messages of the new
    /// session (which starts at sequence 0) never arrived.
    Restart { previous: u32, lost_at_start: u32 },
    /// A sequence number already passed in this session (a duplicate or a step back), or a
    /// late frame of the session before this one. Ignore its content.
    Stale,
}

/// Follows one sender's session id and sequence numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceTracker {
    session: Option<u32>,
    /// The session before the current one: its late frames are stale, not a restart.
    previous: Option<u32>,
    next: u32,
}

impl SequenceTracker {
    pub const fn new() -> Self {
        Self {
            session: None,
            previous: None,
            next: 0,
        }
    }

    /// Classifies a valid packet's session and sequence, and moves on when it is new.
    /// Within a session, sequence numbers are compared modulo 2^32: up to 2^31 - 1 ahead
    /// is a gap, anything behind is stale.
    pub fn observe(&mut self, session: u32, sequence: u32) -> Arrival {
        let arrival = match self.session {
            None => Arrival::First,
            Some(_) if self.previous == Some(session) => return Arrival::Stale,
            Some(s) if s != session => {
                self.previous = Some(s);
                Arrival::Restart {
                    previous: s,
                    lost_at_start: sequence,
                }
            }
            Some(_) => match sequence.wrapping_sub(self.next) as i32 {
                0 => Arrival::InOrder,
                d if d > 0 => Arrival::Gap { lost: d as u32 },
                _ => return Arrival::Stale,
            },
        };
        self.session = Some(session);
        self.next = sequence.wrapping_add(1);
        arrival
    }

    /// The session followed now.
    pub fn session(&self) -> Option<u32> {
        self.session
    }

    /// The sequence number expected next in that session.
    pub fn expected(&self) -> Option<u32> {
        self.session.map(|_| self.next)
    }
}

/// Frames looked back on for the error rate.
pub const ERROR_WINDOW: usize = 100;
/// Rejected frames (CRC, COBS, length or value errors) allowed among the last
/// [`ERROR_WINDOW`]; more means the link is unreliable: treat it as FAULT.
pub const MAX_REJECTED: u32 = 2;

/// The share of rejected frames among the last [`ERROR_WINDOW`] frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorRate {
    rejected_bits: u128,
    at: usize,
}

impl ErrorRate {
    pub const fn new() -> Self {
        Self {
            rejected_bits: 0,
            at: 0,
        }
    }

    /// Records one frame, valid or rejected.
    pub fn record(&mut self, rejected: bool) {
        let bit = 1u128 << self.at;
        if rejected {
            self.rejected_bits |= bit;
        } else {
            self.rejected_bits &= !bit;
        }
        self.at = (self.at + 1) % ERROR_WINDOW;
    }

    /// Rejected frames among the last [`ERROR_WINDOW`].
    pub fn rejected(&self) -> u32 {
        self.rejected_bits.count_ones()
    }

    /// More than [`MAX_REJECTED`] of the last [`ERROR_WINDOW`] frames were rejected.
    pub fn unreliable(&self) -> bool {
        self.rejected() > MAX_REJECTED
    }
}

/// Silence after which a receiver treats the link as lost: two heartbeat periods.
pub const fn link_timeout_ms(heartbeat_period_ms: u16) -> u64 {
    2 * heartbeat_period_ms as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_gaps_and_duplicates_are_told_apart() {
        let mut t = SequenceTracker::new();
        assert_eq!(t.observe(7, 40), Arrival::First);
        assert_eq!(t.observe(7, 41), Arrival::InOrder);
        assert_eq!(t.observe(7, 44), Arrival::Gap { lost: 2 });
        assert_eq!(t.observe(7, 44), Arrival::Stale);
        assert_eq!(t.observe(7, 30), Arrival::Stale);
        assert_eq!(t.observe(7, 45), Arrival::InOrder);
        // the sender restarts: new session, counting from 0
        assert_eq!(
            t.observe(9, 0),
            Arrival::Restart {
                previous: 7,
                lost_at_start: 0
            }
        );
        assert_eq!(t.observe(9, 1), Arrival::InOrder);
        // a late frame of the old session is stale, not another restart
        assert_eq!(t.observe(7, 46), Arrival::Stale);
        assert_eq!(t.observe(9, 2), Arrival::InOrder);
        // a restart whose first messages were lost
        assert_eq!(
            t.observe(11, 3),
            Arrival::Restart {
                previous: 9,
                lost_at_start: 3
            }
        );
        // wrapping
        let mut t = SequenceTracker::new();
        t.observe(1, u32::MAX - 1);
        assert_eq!(t.observe(1, u32::MAX), Arrival::InOrder);
        assert_eq!(t.observe(1, 0), Arrival::InOrder);
        assert_eq!(t.observe(1, 2), Arrival::Gap { lost: 1 });
        assert_eq!(t.observe(1, u32::MAX), Arrival::Stale);
    }

    #[test]
    fn the_error_rate_looks_at_the_last_hundred_frames() {
        let mut r = ErrorRate::new();
        for _ in 0..2 {
            r.record(true);
        }
        assert!(!r.unreliable());
        r.record(true);
        assert!(r.unreliable());
        for _ in 0..ERROR_WINDOW - 3 {
            r.record(false);
        }
        assert!(r.unreliable(), "the three errors are still in the window");
        r.record(false);
        assert!(!r.unreliable());
        assert_eq!(r.rejected(), 2);
    }
}
