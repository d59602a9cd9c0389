//! What `oodmon-edge`'s commands do, as functions the binary calls after parsing its
//! arguments: [`run`] (the vehicle's pipeline), [`check`] (a bundle's smoke test),
//! [`bench`] (latency and throughput), [`demo`] (the embedded default) and
//! [`false_alarms`] (what debouncing buys). `run` and the demo share one wiring,
//! [`frames_to_alarms`].

pub mod bench;
pub mod check;
pub mod demo;
pub mod false_alarms;
pub mod run;

use std::sync::atomic::AtomicBool;

use crate::alarm::{AlarmService, ServiceReport};
use crate::error::Result;
use crate::inference::{self, Engine, Event, LoopMode, RunLimits, RunSummary};
use crate::source::FrameSource;

/// The runtime's wiring, shared by [`run`] and the [`demo`]: frames from `source` through
/// `engine` (overlapped or not, per `mode`); every outcome (record or bad frame) goes to the alarm `service` first, then to
/// `on_event`. The service is finished here and its report returned beside the run's
/// outcome, so its transitions are kept even when the run fails.
pub fn frames_to_alarms(
    mode: LoopMode,
    engine: &mut Engine,
    source: &mut dyn FrameSource,
    service: AlarmService,
    limits: &RunLimits,
    stop: &AtomicBool,
    mut on_event: impl FnMut(Event<'_>, &AlarmService) -> Result<()>,
) -> (Result<RunSummary>, ServiceReport) {
    let summary = inference::run_in(mode, engine, source, limits, stop, |event| {
        match &event {
            Event::Record(r) => service.frame(Ok(r)),
            Event::BadFrame(e) => service.frame(Err(e)),
        }
        on_event(event, &service)
    });
    (summary, service.finish())
}
