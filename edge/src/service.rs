//! The alarm service: a thread that turns frame outcomes into states, and states into
//! protocol frames on the link, journal lines and the GPIO level, with a heartbeat that
//! keeps going when frames stop (which is itself a fault). A second thread, the software
//! watchdog, drives the GPIO line to alarm if the service itself stops making progress.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use oodmon_protocol::{AlarmState, Message, Packet, Reason, MAX_FRAME};

use crate::alarm::{AlarmConfig, AlarmMachine, DecisionRule, FrameOutcome, Transition};
use crate::engine::FrameRecord;
use crate::error::EdgeError;
use crate::journal::{Journal, JournalEvent};
use crate::output::{AlarmLine, AlarmLink};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
}

/// A frame's result as the frame loop hands it over.
#[derive(Debug, Clone, Copy)]
pub enum LoopEvent {
    Scored(FrameRecord),
    NonFinite,
    InferenceError,
    BadFrame,
}

impl LoopEvent {
    /// Classifies an engine error.
    pub fn from_error(e: &EdgeError) -> Self {
        match e {
            EdgeError::Inference(_) => LoopEvent::InferenceError,
            EdgeError::NonFinite(_) => LoopEvent::NonFinite,
            _ => LoopEvent::BadFrame,
        }
    }
}

/// What the service did, for summaries and tests.
#[derive(Debug, Clone, Default)]
pub struct ServiceReport {
    pub transitions: Vec<Transition>,
    pub messages_sent: u64,
    pub send_errors: u64,
    pub final_state: Option<(AlarmState, Reason)>,
}

/// A running alarm service; dropping the sender (via [`AlarmService::finish`]) stops it.
pub struct AlarmService {
    current: Arc<std::sync::atomic::AtomicU16>,
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
        let (tx, rx) = sync_channel(QUEUE);
        let alive = Arc::new(AtomicU64::new(now_ms()));
        let line = outputs.line.take().map(|l| Arc::new(Mutex::new(l)));
        let watchdog = match (&line, outputs.watchdog_ms) {
            (Some(line), ms) if ms > 0 => {
                let (line, alive, stop) = (
                    line.clone(),
                    alive.clone(),
                    Arc::new(AtomicBool::new(false)),
                );
                let stop2 = stop.clone();
                let h = std::thread::Builder::new()
                    .name("oodmon-watchdog".into())
                    .spawn(move || watchdog_loop(line, alive, ms, stop2))
                    .expect("spawn watchdog thread");
                Some((stop, h))
            }
            _ => None,
        };
        let handle = std::thread::Builder::new()
            .name("oodmon-alarm".into())
            .spawn(move || {
                let mut s = Service {
                    machine: AlarmMachine::new(config, now_ms()),
                    outputs,
                    line,
                    alive,
                    sequence: 0,
                    last_frame: None,
                    link_failed: false,
                    report: ServiceReport::default(),
                    current: current2,
                };
                s.run(rx)
            })
            .expect("spawn alarm thread");
        Self {
            current,
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
            let _ = tx.send(event);
        }
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

pub(crate) fn watchdog_loop(
    line: Arc<Mutex<Box<dyn AlarmLine>>>,
    alive: Arc<AtomicU64>,
    ms: u64,
    stop: Arc<AtomicBool>,
) {
    let tick = Duration::from_millis((ms / 4).max(1));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if now_ms().saturating_sub(alive.load(Ordering::Relaxed)) > ms {
            log::error!("alarm service stalled for more than {ms} ms: releasing the alarm line");
            if let Ok(mut l) = line.lock() {
                let _ = l.set_alarm(true);
            }
        }
    }
}

struct Service {
    machine: AlarmMachine,
    outputs: Outputs,
    line: Option<Arc<Mutex<Box<dyn AlarmLine>>>>,
    alive: Arc<AtomicU64>,
    sequence: u32,
    last_frame: Option<u64>,
    link_failed: bool,
    report: ServiceReport,
    current: Arc<std::sync::atomic::AtomicU16>,
}

impl Service {
    fn run(&mut self, rx: Receiver<LoopEvent>) -> ServiceReport {
        let heartbeat = self.machine.config().heartbeat_ms;
        let (state, reason) = self.machine.state();
        self.journal(state, reason, f64::NAN, now_ms());
        self.drive_line();
        self.heartbeat();
        let mut next_heartbeat = now_ms() + heartbeat;
        loop {
            let now = now_ms();
            self.alive.store(now, Ordering::Relaxed);
            let wait = Duration::from_millis(next_heartbeat.saturating_sub(now));
            match rx.recv_timeout(wait) {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = now_ms();
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
            at_ms: now_ms(),
        };
        self.apply(t);
        self.report.final_state = Some((t.state, t.reason));
        std::mem::take(&mut self.report)
    }

    fn on_event(&mut self, event: LoopEvent) {
        let now = now_ms();
        let outcome = match event {
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
                FrameOutcome::Scored {
                    ood,
                    score: r.score,
                    fingerprint: r.fingerprint,
                }
            }
            LoopEvent::NonFinite => FrameOutcome::NonFinite,
            LoopEvent::InferenceError => FrameOutcome::InferenceError,
            LoopEvent::BadFrame => FrameOutcome::BadFrame,
        };
        if let Some(t) = self.machine.on_frame(outcome, now) {
            self.apply(t);
        }
    }

    fn publish(&self) {
        let (state, reason) = self.machine.state();
        self.current
            .store(((state as u16) << 8) | reason as u16, Ordering::Relaxed);
    }

    fn apply(&mut self, t: Transition) {
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
        self.report.transitions.push(t);
        self.journal(t.state, t.reason, t.score, t.at_ms);
        self.drive_line();
        self.send(Message::StateChange {
            state: t.state,
            reason: t.reason,
            score: t.score as f32,
        });
    }

    fn journal(&mut self, state: AlarmState, reason: Reason, score: f64, at: u64) {
        if let Some(j) = &mut self.outputs.journal {
            let event = JournalEvent::new(at, state, reason, score, self.last_frame, 0);
            if let Err(e) = j.append(event) {
                log::error!("{e}");
            }
        }
    }

    /// Healthy level only while OK.
    fn drive_line(&mut self) {
        let alarm = self.machine.state().0 != AlarmState::Ok;
        let failed = match &self.line {
            Some(line) => match line.lock() {
                Ok(mut l) => l.set_alarm(alarm).err(),
                Err(_) => Some(std::io::Error::other("line lock poisoned")),
            },
            None => None,
        };
        if let Some(e) = failed {
            log::error!("alarm line: {e}");
            if let Some(t) = self.machine.on_output_error(now_ms()) {
                self.publish();
                self.report.transitions.push(t);
                self.journal(t.state, t.reason, t.score, t.at_ms);
            }
        }
    }

    fn heartbeat(&mut self) {
        let (state, reason) = self.machine.state();
        self.send(Message::Heartbeat { state, reason });
    }

    fn send(&mut self, message: Message) {
        let Some(link) = self.outputs.link.as_mut() else {
            return;
        };
        let reopened = link.take_reconnected();
        let packet = Packet {
            sequence: self.sequence,
            timestamp_ms: now_ms(),
            message,
        };
        let mut frame = [0u8; MAX_FRAME];
        let n = packet.encode(&mut frame);
        match link.send(&frame[..n]) {
            Ok(()) => {
                self.sequence = self.sequence.wrapping_add(1);
                self.report.messages_sent += 1;
                if self.link_failed {
                    self.link_failed = false;
                    self.machine.on_output_restored();
                }
                // after a reconnection the controller hears the current state at once
                if reopened || link.take_reconnected() {
                    let (state, reason) = self.machine.state();
                    if !matches!(message, Message::Heartbeat { .. }) {
                        self.send(Message::Heartbeat { state, reason });
                    }
                }
            }
            Err(e) => {
                self.report.send_errors += 1;
                if !self.link_failed {
                    log::error!("alarm link {}: {e}", link.describe());
                    self.link_failed = true;
                    if let Some(t) = self.machine.on_output_error(now_ms()) {
                        self.publish();
                        self.report.transitions.push(t);
                        self.journal(t.state, t.reason, t.score, t.at_ms);
                        self.drive_line();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::FakeLine;

    #[test]
    fn the_software_watchdog_releases_the_line_when_progress_stops() {
        let fake = FakeLine::default();
        let line: Arc<Mutex<Box<dyn AlarmLine>>> = Arc::new(Mutex::new(Box::new(fake.clone())));
        line.lock().unwrap().set_alarm(false).unwrap();
        let alive = Arc::new(AtomicU64::new(now_ms()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, a, s) = (line.clone(), alive.clone(), stop.clone());
        let h = std::thread::spawn(move || watchdog_loop(l, a, 40, s));
        // progress reported: the line stays healthy
        for _ in 0..10 {
            alive.store(now_ms(), Ordering::Relaxed);
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
