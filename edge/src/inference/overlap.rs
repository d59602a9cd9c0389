//! The overlapped frame loop: while a worker thread runs the encoder on frame N, this
//! thread reads, decodes and preprocesses frame N+1. One slot sits between them, so a
//! frame waits for at most one inference, and records come back in capture order.
//!
//! When frames arrive faster than the model judges them ([`Backlog::DropOldest`], for live
//! cameras), a newly prepared frame replaces the one still waiting in the slot; the
//! replaced frame is counted as dropped, and more than `max_dropped` drops among the last
//! `window` frames raise a FAULT (`frames_dropped`) for as long as it lasts, so a slow
//! model never makes the alarm lag, nor skip frames, silently. Files use
//! [`Backlog::Wait`]: the reader waits for the slot and every frame is judged.
//!
//! Memory is bounded and allocated once: three input tensors circulate (one being
//! prepared, one waiting, one in inference).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::engine::{FramePreparer, InferStage, Prepared};
use super::frame_loop::{peak_memory_bytes, Ending, Event, LatencyStats, RunLimits, RunSummary};
use super::score::FrameRecord;
use crate::error::{EdgeError, Result};
use crate::source::FrameSource;

/// What a prepared frame does when the previous one still waits for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Wait for the slot: every frame is judged (files, and sources that wait for us).
    Wait,
    /// Replace the waiting frame and count it as dropped (live cameras: the newest frame
    /// is the one worth judging).
    DropOldest,
}

/// How the overlapped loop treats a model slower than the camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlapSettings {
    pub backlog: Backlog,
    /// Frames the drop count looks back over (at least 1).
    pub window: u32,
    /// More drops than this among the last `window` frames is a fault.
    pub max_dropped: u32,
}

impl OverlapSettings {
    /// Live sources: drop the oldest; a fault past half of the last 30 frames.
    pub const LIVE: OverlapSettings = OverlapSettings {
        backlog: Backlog::DropOldest,
        window: 30,
        max_dropped: 15,
    };
    /// Files: every frame is judged.
    pub const FILES: OverlapSettings = OverlapSettings {
        backlog: Backlog::Wait,
        window: 30,
        max_dropped: 15,
    };
}

/// Input tensors in circulation: one being prepared, one waiting, one in inference.
const POOL_TENSORS: usize = 3;

/// One frame's tensors: the encoder's input, and the cut's values where the encoder is cut
/// in two (empty otherwise). Allocated once.
struct Tensors {
    input: Vec<f32>,
    cut: Vec<f32>,
}

/// A prepared frame on its way to the model.
struct Job {
    tensors: Tensors,
    /// The frame thread ran the encoder's head (in this many microseconds): the model
    /// thread takes the cut's values.
    head_us: Option<u32>,
    sequence: u64,
    timestamp_us: u64,
    media_us: Option<u64>,
    prepared: Prepared,
    fingerprint: u64,
    /// When it entered the slot.
    queued: Instant,
}

/// A judged frame coming back, with its tensor for reuse.
struct Done {
    job: Job,
    outcome: Result<FrameRecord>,
    queue_us: u32,
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    closed: bool,
    worker_gone: bool,
    /// The worker is judging a frame (from taking it until its record is made).
    working: bool,
}

/// The one slot between the reader and the worker.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // a panic elsewhere cannot leave the slot half-written: it holds plain values
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot, locked once it is empty (or the worker is gone).
    fn lock_when_empty(&self) -> MutexGuard<'_, Slot> {
        let mut slot = self.lock();
        while slot.job.is_some() && !slot.worker_gone {
            slot = self
                .changed
                .wait_timeout(slot, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        slot
    }

    /// Whether the model thread is judging a frame or one waits for it: the frame thread
    /// then has time to run the encoder's head itself.
    fn model_busy(&self) -> bool {
        let slot = self.lock();
        slot.working || slot.job.is_some()
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// Marks the worker gone when it ends, panicking or not, so the reader never waits on a
/// slot nobody empties.
struct WorkerGone<'a>(&'a Mailbox);

impl Drop for WorkerGone<'_> {
    fn drop(&mut self) {
        self.0.lock().worker_gone = true;
        self.0.changed.notify_all();
    }
}

fn worker(mailbox: &Mailbox, stage: &mut dyn InferStage, done: mpsc::SyncSender<Done>) {
    let _gone = WorkerGone(mailbox);
    loop {
        let job = {
            let mut slot = mailbox.lock();
            loop {
                if let Some(job) = slot.job.take() {
                    slot.working = true;
                    break job;
                }
                if slot.closed {
                    return;
                }
                slot = mailbox
                    .changed
                    .wait(slot)
                    .unwrap_or_else(|e| e.into_inner());
            }
        };
        mailbox.changed.notify_all();
        let queue_us = job.queued.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let outcome = match job.head_us {
            Some(_) => stage.infer_cut(&job.tensors.cut),
            None => stage.infer(&job.tensors.input),
        };
        mailbox.lock().working = false;
        if done
            .send(Done {
                job,
                outcome,
                queue_us,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Drops among the last `window` frames, in a ring allocated once.
struct DropWindow {
    ring: Vec<bool>,
    next: usize,
    dropped: u32,
}

impl DropWindow {
    fn new(window: u32) -> Self {
        Self {
            ring: vec![false; window.max(1) as usize],
            next: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, dropped: bool) -> u32 {
        self.dropped -= self.ring[self.next] as u32;
        self.ring[self.next] = dropped;
        self.dropped += dropped as u32;
        self.next = (self.next + 1) % self.ring.len();
        self.dropped
    }
}

/// Where the time of a frame goes on each thread, measured as the run goes (moving
/// averages), to choose per frame whether the frame thread runs the encoder's head.
///
/// With the head on the frame thread a frame costs that thread F + H (reading and
/// preparing, then the head) and the model thread T + S (tail and scoring); whole, F and
/// H + T + S. The slower thread sets the pace, so cutting pays exactly when F < T + S:
/// on a heavy source (a large MJPEG frame to decode) the frame thread is the slower one
/// already, and the head stays with the model.
///
/// H is only measured on a frame whose head ran here, and the first runs are cold, so
/// every [`Balance::PROBE_EVERY`]th frame the model thread is busy for is cut regardless,
/// to measure it again: a choice made on a cold start or a passing load does not stick.
#[derive(Debug, Clone, Copy)]
struct Balance {
    /// Reading and preparing a frame on the frame thread (F): its work, not a wait for a
    /// camera.
    frame_us: f32,
    /// The head on the frame thread (H).
    head_us: f32,
    /// The tail and the scoring on the model thread (T + S).
    tail_us: f32,
    /// Frames the choice was asked for since the last probe.
    since_probe: u32,
}

impl Balance {
    /// Weight of the newest sample in each average (about the last 16 frames).
    const NEWEST: f32 = 1.0 / 16.0;
    /// One frame in this many (of those the model thread is busy for) is cut to measure.
    const PROBE_EVERY: u32 = 32;

    fn new() -> Self {
        Self {
            frame_us: f32::NAN,
            head_us: f32::NAN,
            tail_us: f32::NAN,
            since_probe: 0,
        }
    }

    /// Whether to cut this frame (the model thread being busy): as [`Self::cut_pays`]
    /// says, and on every [`Self::PROBE_EVERY`]th frame to measure again.
    fn should_cut(&mut self) -> bool {
        self.since_probe += 1;
        if self.since_probe >= Self::PROBE_EVERY {
            self.since_probe = 0;
            return true;
        }
        self.cut_pays()
    }

    fn update(average: &mut f32, sample: f32) {
        *average = if average.is_nan() {
            sample
        } else {
            *average + Self::NEWEST * (sample - *average)
        };
    }

    /// A judged frame's times: the model thread's share, and the head's where it ran on
    /// the frame thread (the model thread's time on a whole frame, less the head's
    /// average, stands for T + S there).
    fn judged(&mut self, model_us: u32, head_us: Option<u32>) {
        match head_us {
            Some(h) => {
                Self::update(&mut self.head_us, h as f32);
                Self::update(&mut self.tail_us, model_us as f32);
            }
            None if !self.head_us.is_nan() => {
                Self::update(&mut self.tail_us, (model_us as f32 - self.head_us).max(0.0));
            }
            None => {}
        }
    }

    /// Whether the frame thread should run the head: until both sides are measured, yes
    /// (to measure the head).
    fn cut_pays(&self) -> bool {
        // NaN (not measured yet) on either side: cut
        self.frame_us.is_nan() || self.tail_us.is_nan() || self.frame_us < self.tail_us
    }
}

/// The reader's side: everything but the model.
struct Reader<'a, F: FnMut(Event<'_>) -> Result<()>> {
    settings: OverlapSettings,
    limits: &'a RunLimits,
    mailbox: &'a Mailbox,
    done: &'a mpsc::Receiver<Done>,
    pool: Vec<Tensors>,
    stats: LatencyStats,
    summary: RunSummary,
    bad_in_a_row: u32,
    /// Frames put in the slot and not yet back.
    in_flight: u32,
    drops: DropWindow,
    /// The encoder is cut in two on both sides: the frame thread may run the head.
    stage_takes_cut: bool,
    balance: Balance,
    on_event: F,
}

impl<F: FnMut(Event<'_>) -> Result<()>> Reader<'_, F> {
    /// One judged frame: its record (or its error) goes out, its tensor back to the pool.
    fn handle(&mut self, done: Done) -> Result<()> {
        self.in_flight -= 1;
        let Done {
            job,
            outcome,
            queue_us,
        } = done;
        let result = match outcome {
            Ok(mut record) => {
                record.sequence = job.sequence;
                record.timestamp_us = job.timestamp_us;
                record.media_us = job.media_us;
                record.fingerprint = job.fingerprint;
                record.latency.decode_us = job.prepared.decode_us;
                record.latency.preprocess_us = job.prepared.preprocess_us;
                record.latency.quality_us = job.prepared.quality_us;
                self.balance.judged(
                    record.latency.inference_us + record.latency.scoring_us,
                    job.head_us,
                );
                // the head's time on the frame thread counts in the inference's
                record.latency.inference_us += job.head_us.unwrap_or(0);
                self.summary.frames_cut += job.head_us.is_some() as u64;
                record.quality = job.prepared.quality;
                record.camera = job.prepared.camera;
                record.latency.queue_us = queue_us;
                self.bad_in_a_row = 0;
                self.summary.frames += 1;
                self.summary.ood_frames += record.ood as u64;
                self.stats.push(record.latency);
                (self.on_event)(Event::Record(&record))
            }
            Err(e) => self.bad_frame(e),
        };
        self.pool.push(job.tensors);
        result
    }

    fn bad_frame(&mut self, e: EdgeError) -> Result<()> {
        self.bad_in_a_row += 1;
        self.summary.bad_frames += 1;
        log::warn!("frame skipped: {e}");
        (self.on_event)(Event::BadFrame(&e))?;
        if self.bad_in_a_row >= self.limits.max_consecutive_bad_frames {
            return Err(EdgeError::Fault(
                self.bad_in_a_row,
                self.limits.max_consecutive_bad_frames,
            ));
        }
        Ok(())
    }

    /// Waits for the next judged frame.
    fn receive(&mut self) -> Result<()> {
        match self.done.recv() {
            Ok(done) => self.handle(done),
            Err(_) => Err(worker_died()),
        }
    }

    /// Hands out whatever the worker has finished, without waiting.
    fn collect(&mut self) -> Result<()> {
        while let Ok(done) = self.done.try_recv() {
            self.handle(done)?;
        }
        Ok(())
    }

    /// Waits until every frame handed over is back (before a bad frame is reported, so
    /// events stay in capture order, and at the end).
    fn flush(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.receive()?;
        }
        Ok(())
    }

    /// Tensors to prepare into: from the pool, or the next judged frame's.
    fn buffer(&mut self) -> Result<Tensors> {
        loop {
            if let Some(b) = self.pool.pop() {
                return Ok(b);
            }
            self.receive()?;
        }
    }

    /// Waits until the worker has taken the frame in the slot.
    fn wait_for_empty_slot(&mut self) -> Result<()> {
        if self.mailbox.lock_when_empty().worker_gone {
            return Err(worker_died());
        }
        Ok(())
    }

    /// Puts a prepared frame in the slot, per the backlog policy.
    fn hand_over(&mut self, job: Job) -> Result<()> {
        let (mut slot, displaced) = match self.settings.backlog {
            Backlog::Wait => (self.mailbox.lock_when_empty(), None),
            Backlog::DropOldest => {
                let mut slot = self.mailbox.lock();
                let displaced = slot.job.take();
                (slot, displaced)
            }
        };
        if slot.worker_gone {
            return Err(worker_died());
        }
        slot.job = Some(job);
        drop(slot);
        self.mailbox.changed.notify_all();
        self.in_flight += 1;
        let dropped = displaced.is_some();
        if let Some(old) = displaced {
            self.in_flight -= 1;
            self.summary.dropped_frames += 1;
            log::debug!("frame {} dropped: the model is busy", old.sequence);
            self.pool.push(old.tensors);
        }
        let recent = self.drops.push(dropped);
        if recent > self.settings.max_dropped {
            let e = EdgeError::FramesDropped {
                dropped: recent,
                window: self.drops.ring.len() as u32,
                limit: self.settings.max_dropped,
            };
            log::warn!("{e}");
            (self.on_event)(Event::BadFrame(&e))?;
        }
        Ok(())
    }

    /// Reads, prepares and hands over frames until the source ends, the frame limit, a
    /// stop or an error.
    fn feed(
        &mut self,
        frames: &mut FramePreparer,
        source: &mut dyn FrameSource,
        stop: &AtomicBool,
    ) -> Result<Ending> {
        let mut accepted = 0u64;
        loop {
            self.collect()?;
            if stop.load(Ordering::Relaxed) {
                return Ok(Ending::Stopped);
            }
            if self
                .limits
                .max_frames
                .is_some_and(|m| accepted.saturating_sub(self.summary.dropped_frames) >= m)
            {
                return Ok(Ending::MaxFrames);
            }
            if self.settings.backlog == Backlog::Wait {
                // read the next frame only once the previous one is in inference, so that
                // a frame waits for at most one inference, not two
                self.wait_for_empty_slot()?;
            }
            let mut tensors = self.buffer()?;
            let reading = Instant::now();
            let frame = match source.next_frame() {
                Ok(None) => {
                    self.pool.push(tensors);
                    return Ok(Ending::SourceEnded);
                }
                Ok(Some(frame)) => frame,
                Err(e) if e.is_transient() => {
                    self.pool.push(tensors);
                    self.flush()?;
                    self.bad_frame(e.into())?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (sequence, timestamp_us, media_us) =
                (frame.sequence, frame.timestamp_us, frame.media_us);
            // with the encoder cut in two, the head runs here while the model thread is busy
            // (a frame prepared while it waits goes over whole) and where the measured
            // balance says it pays
            // a camera's read is mostly waiting for the next frame, not work: its frame
            // side starts here
            let working = match self.settings.backlog {
                Backlog::DropOldest => Instant::now(),
                Backlog::Wait => reading,
            };
            let prepared = frames.prepare(&frame, &mut tensors.input).and_then(|p| {
                Balance::update(
                    &mut self.balance.frame_us,
                    working.elapsed().as_micros() as f32,
                );
                let cut =
                    self.stage_takes_cut && self.mailbox.model_busy() && self.balance.should_cut();
                let head_us = match cut {
                    true => Some(frames.run_head(&tensors.input, &mut tensors.cut)?),
                    false => None,
                };
                Ok((p, head_us))
            });
            match prepared {
                Ok((prepared, head_us)) => {
                    let job = Job {
                        fingerprint: prepared.fingerprint,
                        tensors,
                        head_us,
                        sequence,
                        timestamp_us,
                        media_us,
                        prepared,
                        queued: Instant::now(),
                    };
                    accepted += 1;
                    self.hand_over(job)?;
                }
                Err(e) => {
                    self.pool.push(tensors);
                    self.flush()?;
                    self.bad_frame(e)?;
                }
            }
        }
    }
}

fn worker_died() -> EdgeError {
    EdgeError::InferenceThread
}

/// Runs frames from `source` through `frames` (on this thread) and `stage` (on a worker
/// thread), overlapped; otherwise as [`super::frame_loop::run`]: the same events in the
/// same order, the same limits, and the summary also counts dropped frames.
pub fn run_overlapped(
    frames: &mut FramePreparer,
    stage: &mut dyn InferStage,
    source: &mut dyn FrameSource,
    limits: &RunLimits,
    settings: &OverlapSettings,
    stop: &AtomicBool,
    on_event: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<RunSummary> {
    let mailbox = Mailbox::default();
    // bounded, so its slots are allocated once; at most two frames are ever in flight
    // (one in the slot, one in inference), so the worker never waits on it
    let (done_tx, done_rx) = mpsc::sync_channel(POOL_TENSORS);
    let (n, cut) = (frames.tensor_len(), frames.cut_len().unwrap_or(0));
    let mut reader = Reader {
        settings: *settings,
        limits,
        mailbox: &mailbox,
        done: &done_rx,
        pool: (0..POOL_TENSORS)
            .map(|_| Tensors {
                input: vec![0f32; n],
                cut: vec![0f32; cut],
            })
            .collect(),
        stats: LatencyStats::default(),
        summary: RunSummary::default(),
        bad_in_a_row: 0,
        in_flight: 0,
        drops: DropWindow::new(settings.window),
        stage_takes_cut: frames.cut_len().is_some() && stage.takes_cut(),
        balance: Balance::new(),
        on_event,
    };
    let start = Instant::now();
    let ending = std::thread::scope(|scope| {
        let mailbox = &mailbox;
        let worker = std::thread::Builder::new()
            .name("oodmon-inference".into())
            .spawn_scoped(scope, move || worker(mailbox, stage, done_tx))
            .map_err(EdgeError::from)?;
        let fed = reader.feed(frames, source, stop);
        // the frames already handed over are judged and reported, even after an error
        mailbox.close();
        let flushed = reader.flush();
        let joined = worker.join();
        let ending = fed?;
        flushed?;
        joined.map_err(|_| worker_died())?;
        Ok::<_, EdgeError>(ending)
    })?;
    let mut summary = reader.summary;
    summary.overlapped = true;
    summary.ending = ending;
    summary.elapsed_s = start.elapsed().as_secs_f64();
    summary.frames_per_second = summary.frames as f64 / summary.elapsed_s.max(1e-9);
    summary.latency = reader.stats.percentiles();
    summary.peak_memory_bytes = peak_memory_bytes();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::Balance;

    #[test]
    fn the_head_goes_to_the_frame_thread_only_while_that_thread_is_the_lighter_one() {
        let mut b = Balance::new();
        // nothing measured yet: cut, to measure the head
        assert!(b.cut_pays());
        b.frame_us = 400.0;
        b.judged(900, Some(350));
        assert_eq!((b.head_us, b.tail_us), (350.0, 900.0));
        assert!(b.cut_pays(), "F 400 < T + S 900");
        // a heavy source: the frame thread is the slower one
        for _ in 0..200 {
            Balance::update(&mut b.frame_us, 1_100.0);
        }
        assert!(!b.cut_pays());
        // whole frames keep T + S measured: the model's time less the head's
        for _ in 0..200 {
            b.judged(1_000, None);
        }
        assert!((b.tail_us - 650.0).abs() < 1.0, "{}", b.tail_us);
        assert!(!b.cut_pays());
        // the source gets light again: cutting resumes
        for _ in 0..200 {
            Balance::update(&mut b.frame_us, 300.0);
        }
        assert!(b.cut_pays());
    }

    #[test]
    fn a_cold_first_head_does_not_keep_the_encoder_whole_for_good() {
        let mut b = Balance::new();
        // the first head ran cold (planning, buffers growing): 5 ms; the model thread's
        // tail and scoring 900 us, the frame side 400 us
        b.frame_us = 400.0;
        b.judged(900, Some(5_000));
        // whole frames then estimate T + S as the model's 1,250 us less that head: none
        for _ in 0..100 {
            b.judged(1_250, None);
        }
        assert!(!b.cut_pays(), "the cold head hides the balance");
        // but every PROBE_EVERY frames one is cut and measured: the head's real 350 us
        // brings the estimate back within a few probes
        let mut cut = 0;
        for _ in 0..40 * Balance::PROBE_EVERY {
            if b.should_cut() {
                cut += 1;
                b.judged(900, Some(350));
            } else {
                b.judged(1_250, None);
            }
        }
        assert!(b.cut_pays(), "{b:?}");
        assert!(cut > 40, "{cut}");
        // and on a frame-bound source the probes are all it cuts
        let mut b = Balance::new();
        b.frame_us = 2_000.0;
        b.judged(900, Some(350));
        let cut = (0..320).filter(|_| b.should_cut()).count();
        assert_eq!(cut, 320 / Balance::PROBE_EVERY as usize);
    }
}
