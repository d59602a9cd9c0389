//! Controllable fakes for the hardware boundaries (alarm line, clock), for this crate's
//! tests and for users testing their integration; not in the shipped build (feature
//! `test-support`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::clock::{wall_now_ms, Clock};
use crate::output::AlarmLine;

/// A line for tests: records every level and can be made to fail.
#[derive(Clone, Default)]
pub struct FakeLine {
    pub levels: Arc<Mutex<Vec<bool>>>,
    pub fail: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeLine {
    /// The last level driven (`true` = alarm); `None` before any.
    pub fn alarm(&self) -> Option<bool> {
        self.levels.lock().ok()?.last().copied()
    }
}

impl AlarmLine for FakeLine {
    fn set_alarm(&mut self, alarm: bool) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("fake line failure"));
        }
        if let Ok(mut l) = self.levels.lock() {
            l.push(alarm);
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "fake line".into()
    }
}

/// A clock for tests: real time plus offsets the test controls. Stepping the wall clock
/// simulates an NTP step; advancing the monotonic clock makes time pass without waiting.
#[derive(Debug, Clone)]
pub struct FakeClock {
    origin: Instant,
    monotonic_offset_ms: Arc<AtomicI64>,
    wall_offset_ms: Arc<AtomicI64>,
}

impl FakeClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            monotonic_offset_ms: Arc::new(AtomicI64::new(0)),
            wall_offset_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Steps the wall clock by `ms` (negative: backwards), as NTP or a user might.
    pub fn step_wall(&self, ms: i64) {
        self.wall_offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Moves the monotonic clock forwards by `ms` at once.
    pub fn advance(&self, ms: u64) {
        self.monotonic_offset_ms
            .fetch_add(ms as i64, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FakeClock {
    fn monotonic_ms(&self) -> u64 {
        (self.origin.elapsed().as_millis() as i64 + self.monotonic_offset_ms.load(Ordering::SeqCst))
            .max(0) as u64
    }
    fn wall_ms(&self) -> u64 {
        (wall_now_ms() as i64 + self.wall_offset_ms.load(Ordering::SeqCst)).max(0) as u64
    }
}
