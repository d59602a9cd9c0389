//! From per-frame decisions to an alarm a controller can act on: OK / OOD / FAULT with
//! k-of-n raising, m-in-a-row clearing after a minimum hold time, and faults that take
//! precedence (no frames, a frozen camera, inference errors, NaN scores, bad frames in a
//! row, an output that cannot be written). Pure logic on millisecond timestamps, so every
//! rule is tested without clocks or hardware. Two time lines come in: the frame's own time
//! (media time for files, the monotonic capture time for cameras), which the hold time is
//! measured on, and the monotonic arrival time, which stalls are measured on; the wall
//! clock never enters.

use oodmon_calibration::quality::CameraFault;
use oodmon_protocol::{AlarmState, Reason};
use serde::Deserialize;

/// Which per-frame decision feeds the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DecisionRule {
    /// The calibrated threshold (global or per cluster, as the bundle says).
    Threshold,
    /// OOD when the frame's conformal p-value is at most `alpha` (needs a calibration
    /// that kept its scores).
    PValue { alpha: f64 },
}

/// Largest k-of-n window.
pub const MAX_WINDOW: usize = 256;

/// The alarm rules; `[alarm]` in `edge.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// OOD is raised when `raise_k` of the last `window_n` frames are OOD.
    pub raise_k: usize,
    pub window_n: usize,
    /// OOD clears after `clear_m` in-distribution frames in a row, once it has been held
    /// for `min_hold_ms`.
    pub clear_m: usize,
    pub min_hold_ms: u64,
    pub decision: DecisionRule,
    /// FAULT when no frame arrived for this long.
    pub stall_ms: u64,
    /// FAULT after this many identical frames in a row (0: off).
    pub frozen_frames: usize,
    /// FAULT after this many bad frames (undecodable, wrong size, timeouts) in a row.
    pub max_bad_frames: u32,
    /// Camera FAULT (`camera_dark`, ...) when `camera_raise_k` of the last
    /// `camera_window_n` frames fail the calibration's image-quality guards.
    pub camera_raise_k: usize,
    pub camera_window_n: usize,
    /// HEARTBEAT period.
    pub heartbeat_ms: u64,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            raise_k: 3,
            window_n: 5,
            clear_m: 10,
            min_hold_ms: 1000,
            decision: DecisionRule::Threshold,
            stall_ms: 500,
            frozen_frames: 30,
            max_bad_frames: 5,
            camera_raise_k: 3,
            camera_window_n: 5,
            heartbeat_ms: 200,
        }
    }
}

impl AlarmConfig {
    pub fn validate(&self) -> Result<(), crate::error::ParseError> {
        if self.window_n == 0 || self.window_n > MAX_WINDOW {
            return Err(format!("window_n {} is not in 1..={MAX_WINDOW}", self.window_n).into());
        }
        if self.raise_k == 0 || self.raise_k > self.window_n {
            return Err(format!(
                "raise_k {} is not in 1..=window_n ({})",
                self.raise_k, self.window_n
            )
            .into());
        }
        if self.camera_window_n == 0 || self.camera_window_n > MAX_WINDOW {
            return Err(format!(
                "camera_window_n {} is not in 1..={MAX_WINDOW}",
                self.camera_window_n
            )
            .into());
        }
        if self.camera_raise_k == 0 || self.camera_raise_k > self.camera_window_n {
            return Err(format!(
                "camera_raise_k {} is not in 1..=camera_window_n ({})",
                self.camera_raise_k, self.camera_window_n
            )
            .into());
        }
        if self.clear_m == 0 {
            return Err("clear_m must be at least 1".into());
        }
        if self.max_bad_frames == 0 {
            return Err("max_bad_frames must be at least 1".into());
        }
        if !(10..=60_000).contains(&self.heartbeat_ms) {
            return Err(format!("heartbeat_ms {} is not in 10..=60000", self.heartbeat_ms).into());
        }
        if self.stall_ms < self.heartbeat_ms {
            return Err(format!(
                "stall_ms {} is shorter than heartbeat_ms {}",
                self.stall_ms, self.heartbeat_ms
            )
            .into());
        }
        if let DecisionRule::PValue { alpha } = self.decision {
            if !(alpha > 0.0 && alpha < 1.0) {
                return Err(format!("decision alpha {alpha} is not in (0, 1)").into());
            }
        }
        Ok(())
    }
}

/// What happened to one frame, as the alarm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameOutcome {
    /// Scored: the per-frame decision, the score, a fingerprint of the frame's pixels
    /// (identical frames have identical fingerprints) and the camera guard it fails, if
    /// any (then its decision is not trusted either way).
    Scored {
        ood: bool,
        score: f64,
        fingerprint: u64,
        camera: Option<CameraFault>,
    },
    /// The score was NaN or infinite.
    NonFinite,
    /// The encoder failed.
    InferenceError,
    /// Undecodable, malformed or missing (timeout).
    BadFrame,
    /// Inference fell behind the camera: too many recent frames were dropped unjudged.
    FramesDropped,
}

/// An alarm output. Each one that cannot deliver holds FAULT (`output_error`) until it
/// delivers again, whatever the frames say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The serial link to the controller.
    Link = 1,
    /// The GPIO alarm line.
    Line = 2,
}

/// A change of state, to be sent, journalled and put on the GPIO line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub state: AlarmState,
    pub reason: Reason,
    /// Score of the frame that caused it (NaN when none did).
    pub score: f64,
    pub at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct AlarmMachine {
    config: AlarmConfig,
    state: AlarmState,
    reason: Reason,
    since_ms: u64,
    window: [bool; MAX_WINDOW],
    window_at: usize,
    window_filled: usize,
    ood_in_window: usize,
    id_streak: usize,
    last_frame_ms: u64,
    last_fingerprint: Option<u64>,
    same_streak: usize,
    bad_streak: u32,
    /// Camera guard outcomes of the last `camera_window_n` frames (0: passed, else 1 +
    /// the fault's index in [`CameraFault::ALL`]), and how many of each.
    camera_window: [u8; MAX_WINDOW],
    camera_at: usize,
    camera_filled: usize,
    camera_counts: [usize; CameraFault::ALL.len()],
    /// The camera fault named last (an index in [`CameraFault::ALL`]), kept while it stays
    /// nearly as common as raising needs, so that the reason does not flap between causes.
    camera_shown: Option<usize>,
    /// The fault that holds now, if any (cleared by the condition going away).
    fault: Option<Reason>,
    /// Outputs that cannot deliver now ([`Output`] bits).
    failed_outputs: u8,
}

impl AlarmMachine {
    /// Starts in FAULT (reason `starting`): nothing is vouched for before frames arrive.
    pub fn new(config: AlarmConfig, now_ms: u64) -> Self {
        Self {
            config,
            state: AlarmState::Fault,
            reason: Reason::Starting,
            since_ms: now_ms,
            window: [false; MAX_WINDOW],
            window_at: 0,
            window_filled: 0,
            ood_in_window: 0,
            id_streak: 0,
            last_frame_ms: now_ms,
            last_fingerprint: None,
            same_streak: 0,
            bad_streak: 0,
            camera_window: [0; MAX_WINDOW],
            camera_at: 0,
            camera_filled: 0,
            camera_counts: [0; CameraFault::ALL.len()],
            camera_shown: None,
            fault: Some(Reason::Starting),
            failed_outputs: 0,
        }
    }

    pub fn state(&self) -> (AlarmState, Reason) {
        (self.state, self.reason)
    }

    pub fn config(&self) -> &AlarmConfig {
        &self.config
    }

    fn go(
        &mut self,
        state: AlarmState,
        reason: Reason,
        score: f64,
        now: u64,
    ) -> Option<Transition> {
        if state == self.state && reason == self.reason {
            return None;
        }
        let changed_state = state != self.state;
        self.state = state;
        self.reason = reason;
        if changed_state {
            self.since_ms = now;
        }
        Some(Transition {
            state,
            reason,
            score,
            at_ms: now,
        })
    }

    fn push_window(&mut self, ood: bool) {
        let n = self.config.window_n;
        if self.window_filled == n {
            self.ood_in_window -= self.window[self.window_at] as usize;
        } else {
            self.window_filled += 1;
        }
        self.window[self.window_at] = ood;
        self.ood_in_window += ood as usize;
        self.window_at = (self.window_at + 1) % n;
    }

    /// Records the frame's guard outcome; returns the camera fault that k of the last n
    /// frames show, if any: the one named last while it still fails on k - 1 of the
    /// window's frames (at least one), else the commonest in the window, ties to the latest
    /// frame's. A degraded camera often fails several guards by turns (fog: contrast,
    /// exposure, detail); naming the commonest afresh each frame made the reason, and the
    /// journal, flap.
    fn push_camera(&mut self, camera: Option<CameraFault>) -> Option<CameraFault> {
        let n = self.config.camera_window_n;
        if self.camera_filled == n {
            let old = self.camera_window[self.camera_at];
            if old > 0 {
                self.camera_counts[old as usize - 1] -= 1;
            }
        } else {
            self.camera_filled += 1;
        }
        let code = camera.map_or(0, |c| {
            1 + CameraFault::ALL.iter().position(|&f| f == c).unwrap_or(0) as u8
        });
        self.camera_window[self.camera_at] = code;
        if code > 0 {
            self.camera_counts[code as usize - 1] += 1;
        }
        self.camera_at = (self.camera_at + 1) % n;
        if self.camera_counts.iter().sum::<usize>() < self.config.camera_raise_k {
            self.camera_shown = None;
            return None;
        }
        let keep = self.config.camera_raise_k.saturating_sub(1).max(1);
        let best = match self.camera_shown {
            Some(shown) if self.camera_counts[shown] >= keep => shown,
            _ => {
                let mut best = (code as usize).saturating_sub(1);
                for (i, &count) in self.camera_counts.iter().enumerate() {
                    if count > self.camera_counts[best] {
                        best = i;
                    }
                }
                best
            }
        };
        self.camera_shown = Some(best);
        Some(CameraFault::ALL[best])
    }

    fn fault(&mut self, reason: Reason, score: f64, now: u64) -> Option<Transition> {
        self.fault = Some(reason);
        self.id_streak = 0;
        // an output that cannot deliver stays the reason shown until it delivers again (the
        // frame-side fault is kept and judged afresh then), so the reason does not flap
        let shown = if self.failed_outputs != 0 {
            Reason::OutputError
        } else {
            reason
        };
        self.go(AlarmState::Fault, shown, score, now)
    }

    /// One frame's outcome, the frame's time and its arrival being the same clock.
    pub fn on_frame(&mut self, outcome: FrameOutcome, now_ms: u64) -> Option<Transition> {
        self.on_frame_at(outcome, now_ms, now_ms)
    }

    /// One frame's outcome: `frame_ms` is the frame's own time (media time for files, the
    /// monotonic capture time for cameras; the hold time is measured on it), `arrival_ms`
    /// the monotonic time it reached the alarm (stalls are measured on it).
    pub fn on_frame_at(
        &mut self,
        outcome: FrameOutcome,
        frame_ms: u64,
        arrival_ms: u64,
    ) -> Option<Transition> {
        self.last_frame_ms = arrival_ms;
        let now_ms = frame_ms;
        match outcome {
            FrameOutcome::BadFrame => {
                self.bad_streak += 1;
                if self.bad_streak >= self.config.max_bad_frames {
                    return self.fault(Reason::BadFrames, f64::NAN, now_ms);
                }
                None
            }
            FrameOutcome::InferenceError => {
                self.bad_streak = 0;
                self.fault(Reason::InferenceError, f64::NAN, now_ms)
            }
            FrameOutcome::NonFinite => {
                self.bad_streak = 0;
                self.fault(Reason::NonFiniteScore, f64::NAN, now_ms)
            }
            FrameOutcome::FramesDropped => self.fault(Reason::FramesDropped, f64::NAN, now_ms),
            FrameOutcome::Scored {
                ood,
                score,
                fingerprint,
                camera,
            } => {
                if !score.is_finite() {
                    return self.fault(Reason::NonFiniteScore, score, now_ms);
                }
                self.bad_streak = 0;
                if self.last_fingerprint == Some(fingerprint) {
                    self.same_streak += 1;
                } else {
                    self.same_streak = 1;
                    self.last_fingerprint = Some(fingerprint);
                }
                if self.config.frozen_frames > 0 && self.same_streak >= self.config.frozen_frames {
                    return self.fault(Reason::FrozenCamera, score, now_ms);
                }
                if let Some(c) = self.push_camera(camera) {
                    return self.fault(camera_reason(c), score, now_ms);
                }
                self.fault = None;
                if camera.is_some() {
                    // a degraded picture: its verdict counts neither as OOD nor as evidence
                    // that the scene is in distribution
                    self.id_streak = 0;
                } else {
                    self.push_window(ood);
                    self.id_streak = if ood { 0 } else { self.id_streak + 1 };
                }
                if self.failed_outputs != 0 {
                    // the frames are fine, but an output cannot deliver: hold FAULT
                    return self.go(AlarmState::Fault, Reason::OutputError, score, now_ms);
                }
                self.judge(score, now_ms)
            }
        }
    }

    /// The OK / OOD rule once no fault holds.
    fn judge(&mut self, score: f64, now: u64) -> Option<Transition> {
        let raise = self.ood_in_window >= self.config.raise_k;
        let clear = self.id_streak >= self.config.clear_m;
        match self.state {
            AlarmState::Ok if raise => self.go(AlarmState::Ood, Reason::OodFrames, score, now),
            AlarmState::Ok => None,
            AlarmState::Ood => {
                let held = now.saturating_sub(self.since_ms) >= self.config.min_hold_ms;
                if clear && held {
                    self.go(AlarmState::Ok, Reason::Cleared, score, now)
                } else {
                    None
                }
            }
            // leaving FAULT needs the same evidence as clearing OOD: m ID frames in a row
            AlarmState::Fault if raise => self.go(AlarmState::Ood, Reason::OodFrames, score, now),
            AlarmState::Fault if clear => self.go(AlarmState::Ok, Reason::Cleared, score, now),
            AlarmState::Fault => None,
        }
    }

    /// Time passing without frames (call at least every heartbeat).
    pub fn on_tick(&mut self, now_ms: u64) -> Option<Transition> {
        if now_ms.saturating_sub(self.last_frame_ms) >= self.config.stall_ms
            && self.fault != Some(Reason::Starting)
        {
            return self.fault(Reason::NoFrames, f64::NAN, now_ms);
        }
        if self.fault == Some(Reason::Starting)
            && now_ms.saturating_sub(self.last_frame_ms) >= self.config.stall_ms
        {
            // still no first frame: keep FAULT, now for want of frames
            return self.fault(Reason::NoFrames, f64::NAN, now_ms);
        }
        None
    }

    /// An alarm output could not deliver: FAULT (`output_error`) until it delivers again.
    pub fn on_output_error(&mut self, output: Output, now_ms: u64) -> Option<Transition> {
        // the frames' evidence (window, streaks) stays valid: only delivery failed
        self.failed_outputs |= output as u8;
        self.go(AlarmState::Fault, Reason::OutputError, f64::NAN, now_ms)
    }

    /// The output delivers again. FAULT stays until every output delivers and frames vouch
    /// for a state again (k of n OOD, or m in-distribution frames in a row).
    pub fn on_output_restored(&mut self, output: Output) {
        self.failed_outputs &= !(output as u8);
    }

    /// Whether some output cannot deliver now.
    pub fn output_failed(&self) -> bool {
        self.failed_outputs != 0
    }
}

/// The alarm reason of a camera guard.
pub fn camera_reason(c: CameraFault) -> Reason {
    match c {
        CameraFault::Dark => Reason::CameraDark,
        CameraFault::Overexposed => Reason::CameraOverexposed,
        CameraFault::LowContrast => Reason::CameraLowContrast,
        CameraFault::Occluded => Reason::CameraOccluded,
        CameraFault::Noisy => Reason::CameraNoisy,
        CameraFault::Blurred => Reason::CameraBlurred,
        CameraFault::Oversaturated => Reason::CameraOversaturated,
    }
}

/// What a stream of per-frame decisions does to the alarm.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct AlarmRate {
    pub frames: u64,
    pub hours: f64,
    pub ood_frames: u64,
    /// OK -> OOD transitions.
    pub raises: u64,
    pub raises_per_hour: f64,
    /// Share of the time spent in OOD.
    pub ood_time_share: f64,
}

/// Runs in-distribution per-frame decisions (`true` = a false OOD decision), one every
/// `1/fps` s, through the alarm rules (faults aside: frames are distinct) and counts the
/// false alarms raised. The machine starts OK.
pub fn alarm_rate(
    config: &AlarmConfig,
    decisions: impl Iterator<Item = bool>,
    fps: f64,
) -> AlarmRate {
    let mut cfg = config.clone();
    cfg.frozen_frames = 0;
    cfg.stall_ms = u64::MAX;
    let mut m = AlarmMachine::new(cfg, 0);
    let step_us = 1e6 / fps;
    let mut r = AlarmRate::default();
    let mut ood_since: Option<u64> = None;
    let mut ood_ms = 0u64;
    let mut t_ms = 0;
    // leave the start-up fault with enough in-distribution frames
    for i in 0..m.config().clear_m {
        m.on_frame(
            FrameOutcome::Scored {
                ood: false,
                score: 0.0,
                fingerprint: i as u64,
                camera: None,
            },
            0,
        );
    }
    for (i, ood) in decisions.enumerate() {
        t_ms = ((i as f64 + 1.0) * step_us / 1000.0) as u64;
        r.frames += 1;
        r.ood_frames += ood as u64;
        let out = FrameOutcome::Scored {
            ood,
            score: ood as u8 as f64,
            fingerprint: i as u64 + 1_000_000,
            camera: None,
        };
        if let Some(t) = m.on_frame(out, t_ms) {
            match t.state {
                AlarmState::Ood => {
                    r.raises += 1;
                    ood_since = Some(t_ms);
                }
                _ => {
                    if let Some(s) = ood_since.take() {
                        ood_ms += t_ms - s;
                    }
                }
            }
        }
    }
    if let Some(s) = ood_since {
        ood_ms += t_ms - s;
    }
    r.hours = r.frames as f64 / fps / 3600.0;
    r.raises_per_hour = r.raises as f64 / r.hours.max(1e-12);
    r.ood_time_share = ood_ms as f64 / (t_ms.max(1)) as f64;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(ood: bool, fp: u64) -> FrameOutcome {
        FrameOutcome::Scored {
            ood,
            score: if ood { 0.9 } else { 0.1 },
            fingerprint: fp,
            camera: None,
        }
    }

    fn config() -> AlarmConfig {
        AlarmConfig {
            raise_k: 3,
            window_n: 5,
            clear_m: 4,
            min_hold_ms: 100,
            stall_ms: 300,
            frozen_frames: 5,
            max_bad_frames: 3,
            camera_raise_k: 3,
            camera_window_n: 5,
            heartbeat_ms: 100,
            decision: DecisionRule::Threshold,
        }
    }

    /// Runs frames 10 ms apart with distinct fingerprints; returns the transitions.
    fn run(m: &mut AlarmMachine, t: &mut u64, frames: &[bool]) -> Vec<(AlarmState, Reason)> {
        let mut out = Vec::new();
        for &ood in frames {
            *t += 10;
            if let Some(tr) = m.on_frame(scored(ood, *t), *t) {
                out.push((tr.state, tr.reason));
            }
        }
        out
    }

    #[test]
    fn starts_in_fault_and_clears_after_m_in_distribution_frames() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        assert_eq!(m.state(), (AlarmState::Fault, Reason::Starting));
        let tr = run(&mut m, &mut t, &[false; 4]);
        assert_eq!(tr, [(AlarmState::Ok, Reason::Cleared)]);
    }

    #[test]
    fn k_of_n_raises_and_a_single_noisy_frame_does_not() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        run(&mut m, &mut t, &[false; 4]);
        // isolated OOD frames: at most 2 in any 5
        assert!(run(
            &mut m,
            &mut t,
            &[true, false, false, false, true, false, false, false]
        )
        .is_empty());
        let tr = run(&mut m, &mut t, &[true, false, true, true]);
        assert_eq!(tr, [(AlarmState::Ood, Reason::OodFrames)]);
    }

    #[test]
    fn clearing_needs_m_in_a_row_and_the_hold_time() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        run(&mut m, &mut t, &[false; 4]);
        run(&mut m, &mut t, &[true; 3]);
        assert_eq!(m.state().0, AlarmState::Ood);
        // 3 ID frames then an OOD one: the streak restarts
        assert!(run(&mut m, &mut t, &[false, false, false, true]).is_empty());
        // 4 in a row are enough once the hold (100 ms since raising) has passed
        assert!(run(&mut m, &mut t, &[false; 4]).is_empty(), "hold not over");
        let tr = run(&mut m, &mut t, &[false; 2]);
        assert_eq!(tr, [(AlarmState::Ok, Reason::Cleared)]);
        // with a long hold the same streak is not enough
        let mut cfg = config();
        cfg.min_hold_ms = 10_000;
        let mut t = 0;
        let mut m = AlarmMachine::new(cfg, t);
        run(&mut m, &mut t, &[false; 4]);
        run(&mut m, &mut t, &[true; 3]);
        assert!(run(&mut m, &mut t, &[false; 20]).is_empty());
        t += 10_000;
        assert_eq!(
            run(&mut m, &mut t, &[false]),
            [(AlarmState::Ok, Reason::Cleared)]
        );
    }

    #[test]
    fn faults_take_precedence_and_need_evidence_to_clear() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        run(&mut m, &mut t, &[false; 4]);
        // NaN score
        t += 10;
        let tr = m.on_frame(
            FrameOutcome::Scored {
                ood: false,
                score: f64::NAN,
                fingerprint: 1,
                camera: None,
            },
            t,
        );
        assert_eq!(tr.map(|x| x.reason), Some(Reason::NonFiniteScore));
        assert_eq!(m.state().0, AlarmState::Fault);
        assert_eq!(
            run(&mut m, &mut t, &[false; 4]),
            [(AlarmState::Ok, Reason::Cleared)]
        );
        // inference error
        t += 10;
        assert_eq!(
            m.on_frame(FrameOutcome::InferenceError, t)
                .map(|x| x.reason),
            Some(Reason::InferenceError)
        );
        run(&mut m, &mut t, &[false; 4]);
        // bad frames: only max_bad_frames in a row
        for i in 0..3 {
            t += 10;
            let tr = m.on_frame(FrameOutcome::BadFrame, t);
            assert_eq!(tr.is_some(), i == 2);
        }
        assert_eq!(m.state(), (AlarmState::Fault, Reason::BadFrames));
        run(&mut m, &mut t, &[false; 4]);
        assert_eq!(m.state().0, AlarmState::Ok);
        // OOD frames during a fault: OOD once the fault is gone, not OK
        t += 10;
        m.on_frame(FrameOutcome::InferenceError, t);
        assert_eq!(
            run(&mut m, &mut t, &[true; 3]),
            [(AlarmState::Ood, Reason::OodFrames)]
        );
    }

    /// A frame that fails a camera guard, with its own decision `ood`.
    fn degraded(ood: bool, fp: u64, c: CameraFault) -> FrameOutcome {
        FrameOutcome::Scored {
            ood,
            score: 0.5,
            fingerprint: fp,
            camera: Some(c),
        }
    }

    #[test]
    fn k_of_n_degraded_frames_raise_a_camera_fault_that_clears_on_clean_frames() {
        let mut m = AlarmMachine::new(config(), 0);
        let mut t = 0;
        run(&mut m, &mut t, &[false; 4]);
        assert_eq!(m.state(), (AlarmState::Ok, Reason::Cleared));
        // two degraded frames of five: no fault, and their verdicts do not count
        for ood in [true, true] {
            t += 10;
            assert_eq!(m.on_frame(degraded(ood, t, CameraFault::Dark), t), None);
        }
        t += 10;
        assert_eq!(
            m.on_frame(scored(true, t), t),
            None,
            "one trusted OOD frame"
        );
        // the third degraded frame of five: FAULT, named by the commonest cause
        t += 10;
        let tr = m
            .on_frame(degraded(false, t, CameraFault::Blurred), t)
            .unwrap();
        assert_eq!(
            (tr.state, tr.reason),
            (AlarmState::Fault, Reason::CameraDark)
        );
        for _ in 0..3 {
            t += 10;
            m.on_frame(degraded(false, t, CameraFault::Blurred), t);
        }
        assert_eq!(m.state(), (AlarmState::Fault, Reason::CameraBlurred));
        // clean frames: the window empties below k, then m in-distribution frames clear it
        let path = run(&mut m, &mut t, &[false; 8]);
        assert_eq!(path, [(AlarmState::Ok, Reason::Cleared)]);
        // degraded OOD verdicts never raise OOD on their own
        let mut m = AlarmMachine::new(config(), 0);
        let mut t = 0;
        run(&mut m, &mut t, &[false; 4]);
        for i in 0..2 {
            t += 10;
            m.on_frame(degraded(true, t, CameraFault::Noisy), t);
            t += 10;
            m.on_frame(scored(false, t), t);
            t += 10;
            m.on_frame(scored(false, t), t);
            assert_eq!(m.state(), (AlarmState::Ok, Reason::Cleared), "round {i}");
        }
        // a camera failing two guards by turns keeps one reason, and a lasting change of cause
        // still renames it
        let mut m = AlarmMachine::new(config(), 0);
        let mut t = 0;
        run(&mut m, &mut t, &[false; 4]);
        let mut reasons = Vec::new();
        for i in 0..20 {
            t += 10;
            let cause = [CameraFault::LowContrast, CameraFault::Overexposed][i % 2];
            m.on_frame(degraded(false, t, cause), t);
            reasons.push(m.state().1);
        }
        reasons.dedup();
        assert_eq!(
            reasons,
            [Reason::Cleared, Reason::CameraLowContrast],
            "{reasons:?}"
        );
        for _ in 0..5 {
            t += 10;
            m.on_frame(degraded(false, t, CameraFault::Blurred), t);
        }
        assert_eq!(m.state(), (AlarmState::Fault, Reason::CameraBlurred));
        // every reason has its protocol code
        for c in CameraFault::ALL {
            assert_eq!(camera_reason(c).name(), c.name());
            assert!(AlarmState::Fault.allows(camera_reason(c)));
        }
    }

    #[test]
    fn a_frozen_camera_and_a_stall_are_faults() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        run(&mut m, &mut t, &[false; 4]);
        let mut got = None;
        for _ in 0..5 {
            t += 10;
            got = got.or(m.on_frame(scored(false, 42), t));
        }
        assert_eq!(got.map(|x| x.reason), Some(Reason::FrozenCamera));
        run(&mut m, &mut t, &[false; 4]);
        assert_eq!(m.state().0, AlarmState::Ok);
        assert_eq!(m.on_tick(t + 299), None);
        let tr = m.on_tick(t + 300).unwrap();
        assert_eq!((tr.state, tr.reason), (AlarmState::Fault, Reason::NoFrames));
        // no first frame at all: starting turns into no_frames
        let mut m = AlarmMachine::new(config(), 0);
        assert_eq!(m.on_tick(300).map(|x| x.reason), Some(Reason::NoFrames));
        // output failure
        let mut m = AlarmMachine::new(config(), 0);
        let mut t = 0;
        run(&mut m, &mut t, &[false; 4]);
        assert_eq!(
            m.on_output_error(Output::Link, t).map(|x| x.reason),
            Some(Reason::OutputError)
        );
        m.on_output_restored(Output::Link);
        assert_eq!(
            run(&mut m, &mut t, &[false; 4]),
            [(AlarmState::Ok, Reason::Cleared)]
        );
    }

    #[test]
    fn an_output_that_cannot_deliver_holds_fault_whatever_the_frames_say() {
        let mut t = 0;
        let mut m = AlarmMachine::new(config(), t);
        run(&mut m, &mut t, &[false; 4]);
        assert_eq!(m.state(), (AlarmState::Ok, Reason::Cleared));
        m.on_output_error(Output::Link, t);
        m.on_output_error(Output::Line, t);
        // OOD evidence, then in-distribution evidence, then a stall and frames again:
        // nothing leaves FAULT while an output is down
        let seen = run(&mut m, &mut t, &[true; 6]);
        assert!(seen.is_empty(), "{seen:?}");
        let seen = run(&mut m, &mut t, &[false; 8]);
        assert!(seen.is_empty(), "{seen:?}");
        t += 1000;
        assert_eq!(m.on_tick(t), None, "output_error stays the reason shown");
        let seen = run(&mut m, &mut t, &[false; 8]);
        assert!(seen.is_empty(), "{seen:?}");
        // one output back is not enough
        m.on_output_restored(Output::Link);
        let seen = run(&mut m, &mut t, &[false; 8]);
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(m.state(), (AlarmState::Fault, Reason::OutputError));
        // both back: frames decide again
        m.on_output_restored(Output::Line);
        let seen = run(&mut m, &mut t, &[true; 3]);
        assert_eq!(seen, [(AlarmState::Ood, Reason::OodFrames)]);
    }

    #[test]
    fn the_hold_time_runs_on_the_frames_time_and_stalls_on_arrival_time() {
        let mut m = AlarmMachine::new(config(), 0);
        // frames of a file at 10 ms media spacing, decoded in a burst 1 ms apart
        let mut seen = Vec::new();
        let pattern = [false, false, false, false, true, true, true]
            .into_iter()
            .chain([false; 12]);
        for (i, ood) in pattern.enumerate() {
            let i = i as u64;
            if let Some(x) = m.on_frame_at(scored(ood, i), 10 * i, 1000 + i) {
                seen.push((x.state, x.reason, 10 * i));
            }
        }
        // OOD at media 60 ms; four ID frames (media 70..100) would clear, but the hold
        // (100 ms of media time) lets it clear only at media 160 ms
        assert_eq!(
            seen,
            [
                (AlarmState::Ok, Reason::Cleared, 30),
                (AlarmState::Ood, Reason::OodFrames, 60),
                (AlarmState::Ok, Reason::Cleared, 160),
            ]
        );
        // stalls are measured from the arrival (1018), not from the media time
        assert_eq!(m.on_tick(1018 + 299), None);
        assert_eq!(
            m.on_tick(1018 + 300).map(|x| x.reason),
            Some(Reason::NoFrames)
        );
    }

    #[test]
    fn alarm_rate_counts_raises_and_k_of_n_suppresses_isolated_errors() {
        let cfg = AlarmConfig {
            raise_k: 2,
            window_n: 2,
            clear_m: 1,
            min_hold_ms: 0,
            ..config()
        };
        // OOD pairs every 10 frames: one raise each
        let stream = (0..1000).map(|i| i % 10 == 0 || i % 10 == 1);
        let r = alarm_rate(&cfg, stream, 10.0);
        assert_eq!(r.raises, 100);
        assert_eq!(r.frames, 1000);
        // isolated errors never raise 2 of 2
        let r = alarm_rate(&cfg, (0..1000).map(|i| i % 10 == 0), 10.0);
        assert_eq!(r.raises, 0);
        // 1 of 1 raises on every isolated error
        let one = AlarmConfig {
            raise_k: 1,
            window_n: 1,
            clear_m: 1,
            min_hold_ms: 0,
            ..config()
        };
        assert_eq!(
            alarm_rate(&one, (0..1000).map(|i| i % 10 == 0), 10.0).raises,
            100
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        for bad in [
            AlarmConfig {
                raise_k: 6,
                ..config()
            },
            AlarmConfig {
                window_n: 0,
                ..config()
            },
            AlarmConfig {
                window_n: 300,
                raise_k: 1,
                ..config()
            },
            AlarmConfig {
                clear_m: 0,
                ..config()
            },
            AlarmConfig {
                stall_ms: 50,
                ..config()
            },
            AlarmConfig {
                decision: DecisionRule::PValue { alpha: 1.5 },
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(config().validate().is_ok());
        assert!(AlarmConfig::default().validate().is_ok());
    }
}
