//! Time for the alarm path, behind one seam. Every duration (hold and clear times,
//! heartbeats, stall detection, the GPIO watchdog) is measured on a monotonic clock, which
//! an NTP step or a board without a battery-backed clock cannot move; the wall clock is
//! read only to label records, journal lines and protocol messages.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time for the alarm service and the frame loop.
pub trait Clock: Send + Sync {
    /// Milliseconds on a monotonic clock with an arbitrary origin: never steps back.
    fn monotonic_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch, as a label only: it may step either way.
    fn wall_ms(&self) -> u64;
}

/// Milliseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The machine's clocks: `Instant` (CLOCK_MONOTONIC on Linux) and `SystemTime`.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn wall_ms(&self) -> u64 {
        wall_now_ms()
    }
}
