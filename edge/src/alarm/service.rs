//! The alarm service: a thread that turns frame outcomes into states, and states into
//! protocol frames on the link, journal lines and the GPIO level, with a heartbeat that
//! keeps going when frames stop (which is itself a fault). A second thread, the software
//! watchdog ([`super::watchdog`]), drives the GPIO line to alarm if the service itself
//! stops making progress.
//! Every timer runs on the [`Clock`]'s monotonic time; the wall clock only labels journal
//! lines and messages. An output that cannot deliver holds FAULT until it delivers again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use oodmon_protocol::{AlarmState, Message, Packet, Reason, MAX_FRAME};

use super::machine::{AlarmConfig, AlarmMachine, DecisionRule, FrameOutcome, Output, Transition};
use super::watchdog::watchdog_loop;
use crate::clock::{Clock, SystemClock};
use crate::error::EdgeError;
use crate::inference::FrameRecord;
use crate::output::journal::{Journal, JournalEvent};
use crate::output::{AlarmLine, AlarmLink};

/// Milliseconds since the Unix epoch (a label; timers use a [`Clock`]'s monotonic time).
pub fn now_ms() -> u64 {
    crate::clock::wall_now_ms()
}

/// A fresh protocol session id: random (the OS seeds `RandomState`), never 0.
pub fn new_session_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let v = h.finish();
    ((v >> 32) as u32 ^ v as u32).max(1)
}

/// What the service writes to.
#[derive(Default)]
pub struct Outputs {
    pub link: Option<Box<dyn AlarmLink>>,
    pub line: Option<Box<dyn AlarmLine>>,
    pub journal: Option<Journal>,
    /// Send a SCORE message per frame.
    pub scores: bool,
    /// Software watchdog period for the GPIO line (0: none).
    pub watchdog_ms: u64,
    /// Time for every timer (`None`: the system's monotonic and wall clocks).
    pub clock: Option<Arc<dyn Clock>>,
}

/// A frame's result as the frame loop hands it over.
// Nearly every event is `Scored`, one per frame: boxing the record would allocate per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum LoopEvent {
    Scored(FrameRecord),
    NonFinite,
    InferenceError,
    BadFrame,
    FramesDropped,
}

impl LoopEvent {
    /// Classifies an engine error.
    pub fn from_error(e: &EdgeError) -> Self {
        match e {
            EdgeError::Inference(oodmon_runtime::InferenceError::NonFinite { .. }) => {
                LoopEvent::NonFinite
            }
            EdgeError::Inference(_) | EdgeError::InferenceThread => LoopEvent::InferenceError,
            EdgeError::FramesDropped { .. } => LoopEvent::FramesDropped,
            _ => LoopEvent::BadFrame,
        }
    }
}

/// Transitions a [`ServiceReport`] keeps. A soak of a million frames found the unbounded
/// list growing by 1 MB (27,781 transitions).
pub const REPORTED_TRANSITIONS: usize = 1024;

/// What the service did, for summaries and tests.
#[derive(Debug, Clone, Default)]
pub struct ServiceReport {
    /// The last [`REPORTED_TRANSITIONS`] transitions (bounded: a service runs for months).
    pub transitions: std::collections::VecDeque<Transition>,
    /// All transitions, including those no longer kept.
    pub transition_count: u64,
    pub messages_sent: u64,
    pub send_errors: u64,
    /// The protocol session id this run sent under.
    pub session: u32,
    pub final_state: Option<(AlarmState, Reason)>,
}

/// A running alarm service; dropping the sender (via [`AlarmService::finish`]) stops it.
pub struct AlarmService {
    current: Arc<std::sync::atomic::AtomicU16>,
    /// Frame events handed over, and those the service has judged.
    handed: AtomicU64,
    judged: Arc<AtomicU64>,
    tx: Option<SyncSender<LoopEvent>>,
    handle: Option<JoinHandle<ServiceReport>>,
    watchdog: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    rule: DecisionRule,
}

/// Bounded hand-over queue: the frame loop never allocates per frame and memory stays
/// bounded; if the service falls behind the frame loop waits.
const QUEUE: usize = 64;

impl AlarmService {
    pub fn start(config: AlarmConfig, mut outputs: Outputs) -> Self {
        let rule = config.decision;
        let current = Arc::new(std::sync::atomic::AtomicU16::new(
            ((AlarmState::Fault as u16) << 8) | Reason::Starting as u16,
        ));
        let current2 = current.clone();
        let judged = Arc::new(AtomicU64::new(0));
        let judged2 = judged.clone();
        let (tx, rx) = sync_channel(QUEUE);
        let clock: Arc<dyn Clock> = outputs
            .clock
            .take()
            .unwrap_or_else(|| Arc::new(SystemClock::new()));
        let alive = Arc::new(AtomicU64::new(clock.monotonic_ms()));
        let line = outputs.line.take().map(|l| Arc::new(Mutex::new(l)));
        let watchdog = match (&line, outputs.watchdog_ms) {
            (Some(line), ms) if ms > 0 => {
                let (line, alive, stop, clock) = (
                    line.clone(),
                    alive.clone(),
                    Arc::new(AtomicBool::new(false)),
                    clock.clone(),
                );
                let stop2 = stop.clone();
                // thread creation fails only when the OS is out of threads or memory at
                // start-up: there is no service to fall back to, and a supervisor restarts
                #[allow(clippy::expect_used)]
                let h = std::thread::Builder::new()
                    .name("oodmon-watchdog".into())
                    .spawn(move || watchdog_loop(line, alive, ms, stop2, clock))
                    .expect("spawn watchdog thread");
                Some((stop, h))
            }
            _ => None,
        };
        #[allow(clippy::expect_used)] // as the watchdog thread above
        let handle = std::thread::Builder::new()
            .name("oodmon-alarm".into())
            .spawn(move || {
                let session = new_session_id();
                let mut s = Service {
                    machine: AlarmMachine::new(config, clock.monotonic_ms()),
                    outputs,
                    line,
                    alive,
                    session,
                    sequence: 0,
                    last_frame: None,
                    link_failed: false,
                    line_failed: false,
                    report: ServiceReport {
                        session,
                        ..Default::default()
                    },
                    current: current2,
                    judged: judged2,
                    clock,
                };
                s.run(rx)
            })
            .expect("spawn alarm thread");
        Self {
            current,
            handed: AtomicU64::new(0),
            judged,
            tx: Some(tx),
            handle: Some(handle),
            watchdog,
            rule,
        }
    }

    /// Hands one frame's result to the service (blocks only if it is 64 frames behind).
    pub fn frame(&self, result: Result<&FrameRecord, &EdgeError>) {
        let event = match result {
            Ok(r) => LoopEvent::Scored(*r),
            Err(e) => LoopEvent::from_error(e),
        };
        if let Some(tx) = &self.tx {
            if tx.send(event).is_ok() {
                self.handed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `limit`) until every frame handed over has been judged, so that
    /// [`AlarmService::current`] is the state the outputs carry after it.
    pub fn wait_judged(&self, limit: Duration) -> bool {
        let handed = self.handed.load(Ordering::Relaxed);
        let start = std::time::Instant::now();
        while self.judged.load(Ordering::Acquire) < handed {
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// The alarm state now.
    pub fn current(&self) -> (AlarmState, Reason) {
        let v = self.current.load(Ordering::Relaxed);
        (
            AlarmState::from_u8((v >> 8) as u8).unwrap_or(AlarmState::Fault),
            Reason::from_u8(v as u8).unwrap_or(Reason::None),
        )
    }

    /// The per-frame OOD decision under the configured rule.
    pub fn decision_rule(&self) -> DecisionRule {
        self.rule
    }

    /// Stops the service: a final STATE_CHANGE (FAULT, stopping) is sent and journalled.
    pub fn finish(mut self) -> ServiceReport {
        self.tx.take();
        let report = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some((stop, h)) = self.watchdog.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
        report
    }
}

struct Service {
    machine: AlarmMachine,
    outputs: Outputs,
    line: Option<Arc<Mutex<Box<dyn AlarmLine>>>>,
    alive: Arc<AtomicU64>,
    session: u32,
    /// The sequence number the next message gets, sent or not.
    sequence: u32,
    last_frame: Option<u64>,
    link_failed: bool,
    line_failed: bool,
    report: ServiceReport,
    current: Arc<std::sync::atomic::AtomicU16>,
    judged: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
}

impl Service {
    fn run(&mut self, rx: Receiver<LoopEvent>) -> ServiceReport {
        let heartbeat = self.machine.config().heartbeat_ms;
        let (state, reason) = self.machine.state();
        self.journal(state, reason, f64::NAN);
        self.drive_line();
        self.heartbeat();
        let mut next_heartbeat = self.clock.monotonic_ms() + heartbeat;
        loop {
            let now = self.clock.monotonic_ms();
            self.alive.store(now, Ordering::Relaxed);
            let wait = Duration::from_millis(next_heartbeat.saturating_sub(now));
            match rx.recv_timeout(wait) {
                Ok(event) => {
                    self.on_event(event);
                    self.judged.fetch_add(1, Ordering::Release);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = self.clock.monotonic_ms();
            if now >= next_heartbeat {
                if let Some(t) = self.machine.on_tick(now) {
                    self.apply(t);
                }
                self.heartbeat();
                self.drive_line();
                next_heartbeat = now + heartbeat;
            }
        }
        // shutting down: fail safe, and say so
        let t = Transition {
            state: AlarmState::Fault,
            reason: Reason::Stopping,
            score: f64::NAN,
            at_ms: self.clock.monotonic_ms(),
        };
        self.apply(t);
        self.report.final_state = Some((t.state, t.reason));
        std::mem::take(&mut self.report)
    }

    fn on_event(&mut self, event: LoopEvent) {
        let now = self.clock.monotonic_ms();
        let (outcome, frame_ms) = match event {
            LoopEvent::Scored(r) => {
                self.last_frame = Some(r.sequence);
                let ood = match self.machine.config().decision {
                    DecisionRule::Threshold => r.ood,
                    DecisionRule::PValue { alpha } => r.p_value.is_none_or(|p| p <= alpha),
                };
                if self.outputs.scores {
                    self.send(Message::Score {
                        score: r.score as f32,
                        threshold: r.threshold as f32,
                        cluster: r.nearest.min(u16::MAX as usize) as u16,
                        p_value: r.p_value.map_or(f32::NAN, |p| p as f32),
                        ood,
                    });
                }
                let outcome = FrameOutcome::Scored {
                    ood,
                    score: r.score,
                    fingerprint: r.fingerprint,
                    camera: r.camera,
                };
                // files carry media time; live frames are timed as they arrive
                (outcome, r.media_us.map_or(now, |us| us / 1000))
            }
            LoopEvent::NonFinite => (FrameOutcome::NonFinite, now),
            LoopEvent::InferenceError => (FrameOutcome::InferenceError, now),
            LoopEvent::FramesDropped => (FrameOutcome::FramesDropped, now),
            LoopEvent::BadFrame => (FrameOutcome::BadFrame, now),
        };
        if let Some(t) = self.machine.on_frame_at(outcome, frame_ms, now) {
            self.apply(t);
        }
    }

    fn publish(&self) {
        let (state, reason) = self.machine.state();
        self.current
            .store(((state as u16) << 8) | reason as u16, Ordering::Relaxed);
    }

    /// A transition reaches every output: the line first (the fail-safe level reaches the
    /// controller before anything else, and whoever reads the published state finds the
    /// line already driven), then log, journal and link. A line that fails to drive makes
    /// a transition of its own, applied after this one so the order stays as it happened.
    fn apply(&mut self, t: Transition) {
        let follow_up = self.set_line();
        self.publish();
        log::info!(
            "alarm: {} ({}){}",
            t.state.name(),
            t.reason.name(),
            if t.score.is_finite() {
                format!(", score {:.4}", t.score)
            } else {
                String::new()
            }
        );
        if self.report.transitions.len() == REPORTED_TRANSITIONS {
            self.report.transitions.pop_front();
        }
        self.report.transitions.push_back(t);
        self.report.transition_count += 1;
        self.journal(t.state, t.reason, t.score);
        self.send(Message::StateChange {
            state: t.state,
            reason: t.reason,
            score: t.score as f32,
        });
        if let Some(next) = follow_up {
            self.apply(next);
        }
    }

    fn journal(&mut self, state: AlarmState, reason: Reason, score: f64) {
        let at = self.clock.wall_ms();
        if let Some(j) = &mut self.outputs.journal {
            let event = JournalEvent::new(at, state, reason, score, self.last_frame, 0);
            if let Err(e) = j.append(event) {
                log::error!("{e}");
            }
        }
    }

    /// Healthy level only while OK. A line that cannot be driven holds FAULT.
    fn drive_line(&mut self) {
        if let Some(t) = self.set_line() {
            self.apply(t);
        }
    }

    /// Drives the line to the machine's state; returns the transition a failure makes.
    fn set_line(&mut self) -> Option<Transition> {
        let alarm = self.machine.state().0 != AlarmState::Ok;
        let result = match &self.line {
            Some(line) => match line.lock() {
                Ok(mut l) => l.set_alarm(alarm),
                Err(_) => Err(std::io::Error::other("line lock poisoned")),
            },
            None => return None,
        };
        match result {
            Ok(()) if self.line_failed => {
                self.line_failed = false;
                log::warn!("alarm line delivers again");
                self.machine.on_output_restored(Output::Line);
                None
            }
            Ok(()) => None,
            Err(e) => {
                if !self.line_failed {
                    self.line_failed = true;
                    log::error!("alarm line: {e}; FAULT until it can be driven again");
                }
                let now = self.clock.monotonic_ms();
                self.machine.on_output_error(Output::Line, now)
            }
        }
    }

    fn heartbeat(&mut self) {
        let (state, reason) = self.machine.state();
        let period_ms = self.machine.config().heartbeat_ms.min(u16::MAX as u64) as u16;
        self.send(Message::Heartbeat {
            state,
            reason,
            period_ms,
        });
    }

    /// Sends one message. Its sequence number is used up whether or not it reaches the
    /// wire, so a receiver sees a gap where a message was lost. A link that cannot be
    /// written holds FAULT until it can.
    fn send(&mut self, message: Message) {
        let Some(link) = self.outputs.link.as_mut() else {
            return;
        };
        let reopened = link.take_reconnected();
        let packet = Packet {
            session: self.session,
            sequence: self.sequence,
            timestamp_ms: self.clock.wall_ms(),
            message,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let mut frame = [0u8; MAX_FRAME];
        let n = packet.encode(&mut frame);
        match link.send(&frame[..n]) {
            Ok(()) => {
                self.report.messages_sent += 1;
                let reopened = reopened || link.take_reconnected();
                if self.link_failed {
                    self.link_failed = false;
                    log::warn!("alarm link {} delivers again", link.describe());
                    self.machine.on_output_restored(Output::Link);
                }
                // after a reconnection the controller hears the current state at once
                if reopened && !matches!(message, Message::Heartbeat { .. }) {
                    self.heartbeat();
                }
            }
            Err(e) => {
                self.report.send_errors += 1;
                if !self.link_failed {
                    self.link_failed = true;
                    log::error!(
                        "alarm link {}: {e}; FAULT until it delivers again",
                        link.describe()
                    );
                }
                let now = self.clock.monotonic_ms();
                if let Some(t) = self.machine.on_output_error(Output::Link, now) {
                    self.apply(t);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeLine;

    #[test]
    fn the_software_watchdog_releases_the_line_when_progress_stops() {
        let fake = FakeLine::default();
        let line: Arc<Mutex<Box<dyn AlarmLine>>> = Arc::new(Mutex::new(Box::new(fake.clone())));
        line.lock().unwrap().set_alarm(false).unwrap();
        let clock = crate::testing::FakeClock::new();
        let alive = Arc::new(AtomicU64::new(clock.monotonic_ms()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, a, s, c) = (line.clone(), alive.clone(), stop.clone(), clock.clone());
        let h = std::thread::spawn(move || watchdog_loop(l, a, 40, s, Arc::new(c)));
        // progress reported: the line stays healthy, whatever the wall clock does
        for i in 0..10 {
            clock.step_wall(if i % 2 == 0 { -3_600_000 } else { 7_200_000 });
            alive.store(clock.monotonic_ms(), Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(fake.alarm(), Some(false));
        // progress stops: released within about one watchdog period
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(fake.alarm(), Some(true));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
}
