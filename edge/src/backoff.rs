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
        self.failed_at(Instant::now());
    }

    /// [`Backoff::failed`] at `now` (the tests' clock).
    fn failed_at(&mut self, now: Instant) {
        self.retry_at = now + self.delay;
        self.delay = (self.delay * 2).min(self.max);
    }

    /// An attempt succeeded: the next failure waits the initial delay again.
    pub fn succeeded(&mut self) {
        self.delay = self.initial;
    }

    /// How long until a retry is allowed; `None` when it is allowed now.
    pub fn wait_left(&self) -> Option<Duration> {
        self.wait_left_at(Instant::now())
    }

    /// [`Backoff::wait_left`] at `now`.
    fn wait_left_at(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_limit_and_resets_on_success() {
        // explicit instants: the waits are exact whatever the machine's load (a wall-clock
        // version failed under qemu on a busy machine)
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(10), ms(35));
        let t = Instant::now();
        assert_eq!(
            b.wait_left_at(t),
            None,
            "a fresh back-off allows a retry at once"
        );
        let mut waits = Vec::new();
        for _ in 0..4 {
            b.failed_at(t);
            waits.push(b.wait_left_at(t));
        }
        assert_eq!(waits, [10, 20, 35, 35].map(|w| Some(ms(w))));
        b.succeeded();
        b.failed_at(t);
        assert_eq!(b.wait_left_at(t), Some(ms(10)));
        assert_eq!(b.wait_left_at(t + ms(4)), Some(ms(6)));
        assert_eq!(b.wait_left_at(t + ms(10)), None, "due exactly at the delay");
        assert_eq!(b.wait_left_at(t + ms(12)), None);
        // the public, wall-clock form agrees: a wait that has passed allows a retry
        b.failed_at(t);
        assert!(b.wait_left().is_none_or(|w| w <= ms(20)));
    }
}
