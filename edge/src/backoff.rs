//! Exponential back-off between reconnection attempts, shared by the camera (a V4L2
//! device that vanished) and the serial link (a USB adapter unplugged): the first retry
//! after `initial`, each failure doubling the wait up to `max`, a success resetting it.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    delay: Duration,
    retry_at: Instant,
}

impl Backoff {
    /// A back-off that allows a retry at once.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            delay: initial,
            retry_at: Instant::now(),
        }
    }

    /// An attempt failed (or the connection broke): no retry before the current delay has
    /// passed, and the delay after that doubles.
    pub fn failed(&mut self) {
        self.retry_at = Instant::now() + self.delay;
        self.delay = (self.delay * 2).min(self.max);
    }

    /// An attempt succeeded: the next failure waits the initial delay again.
    pub fn succeeded(&mut self) {
        self.delay = self.initial;
    }

    /// How long until a retry is allowed; `None` when it is allowed now.
    pub fn wait_left(&self) -> Option<Duration> {
        self.retry_at.checked_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_limit_and_resets_on_success() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(10), ms(35));
        assert_eq!(
            b.wait_left(),
            None,
            "a fresh back-off allows a retry at once"
        );
        let mut waits = Vec::new();
        for _ in 0..4 {
            b.failed();
            waits.push(b.wait_left().unwrap_or_default());
        }
        for (w, want) in waits.iter().zip([10, 20, 35, 35]) {
            assert!(*w <= ms(want) && *w + ms(5) >= ms(want), "{waits:?}");
        }
        b.succeeded();
        b.failed();
        assert!(b.wait_left().unwrap_or_default() <= ms(10));
        std::thread::sleep(ms(12));
        assert_eq!(b.wait_left(), None);
    }
}
