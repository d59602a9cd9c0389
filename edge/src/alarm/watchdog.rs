//! The software watchdog of the alarm service: a thread that drives the GPIO line to alarm
//! when the service has not made progress for `ms` (a hung service must not leave the
//! line at "healthy"). Distinct from systemd's watchdog (`crate::output::notify`), which
//! restarts a process that stops sending keep-alives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::output::AlarmLine;

/// Runs until `stop`: every quarter period, checks `alive` (the service's last progress,
/// monotonic ms) and releases the line to alarm once it is older than `ms`.
pub(crate) fn watchdog_loop(
    line: Arc<Mutex<Box<dyn AlarmLine>>>,
    alive: Arc<AtomicU64>,
    ms: u64,
    stop: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
) {
    let tick = Duration::from_millis((ms / 4).max(1));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if clock
            .monotonic_ms()
            .saturating_sub(alive.load(Ordering::Relaxed))
            > ms
        {
            log::error!("alarm service stalled for more than {ms} ms: releasing the alarm line");
            if let Ok(mut l) = line.lock() {
                let _ = l.set_alarm(true);
            }
        }
    }
}
