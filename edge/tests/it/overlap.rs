//! The overlapped frame loop against a slow fake model: order, overlap, the drop policy and
//! its fault, errors in order, and a model that panics.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_calibration::PreprocessSpec;
use oodmon_edge::error::{EdgeError, SourceError};
use oodmon_edge::inference::{
    run_overlapped, Backlog, Event, FramePreparer, FrameRecord, InferStage, OverlapSettings,
    RunLimits,
};
use oodmon_edge::source::frame::{Frame, FrameFormat};
use oodmon_edge::source::FrameSource;

/// When something ran, relative to the test's start.
type Spans = Arc<Mutex<Vec<(Duration, Duration)>>>;

/// Frames of 8x8 grey pixels whose value is the frame's number; `period` between frames
/// (a camera's rate); frame numbers in `broken` are undecodable.
struct Counting {
    next: u64,
    count: u64,
    period: Duration,
    pixels: Vec<u8>,
    broken: Vec<u64>,
    reads: Spans,
    t0: Instant,
}

impl Counting {
    fn new(count: u64, period: Duration, t0: Instant) -> Self {
        Self {
            next: 0,
            count,
            period,
            pixels: vec![0; 64],
            broken: Vec::new(),
            reads: Spans::default(),
            t0,
        }
    }
}

impl FrameSource for Counting {
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        if self.next == self.count {
            return Ok(None);
        }
        let start = self.t0.elapsed();
        std::thread::sleep(self.period);
        let n = self.next;
        self.next += 1;
        self.pixels.fill((n % 200) as u8 + 10);
        self.reads.lock().unwrap().push((start, self.t0.elapsed()));
        let broken = self.broken.contains(&n);
        Ok(Some(Frame {
            data: if broken {
                &self.pixels[..10]
            } else {
                &self.pixels
            },
            width: 8,
            height: 8,
            stride: None,
            format: FrameFormat::Raw(PixelFormat::Gray8),
            timestamp_us: n,
            media_us: Some(n * 1000),
            sequence: n,
        }))
    }
    fn describe(&self) -> String {
        "counting".into()
    }
}

/// A model that takes `delay` per input; its score is the input's first value, so a record
/// shows which frame it judged. Panics on inputs from the value `fail_on` up.
struct SlowModel {
    delay: Duration,
    runs: Spans,
    t0: Instant,
    fail_on: Option<f32>,
}

impl InferStage for SlowModel {
    fn infer(&mut self, input: &[f32]) -> oodmon_edge::error::Result<FrameRecord> {
        let start = self.t0.elapsed();
        std::thread::sleep(self.delay);
        self.runs.lock().unwrap().push((start, self.t0.elapsed()));
        if self.fail_on.is_some_and(|v| input[0] >= v - 1e-4) {
            panic!("the fake model fails on {}", input[0]);
        }
        Ok(crate::util::fake_record(input[0] as f64, 1e9))
    }
}

fn model(delay_ms: u64, t0: Instant) -> SlowModel {
    SlowModel {
        delay: Duration::from_millis(delay_ms),
        runs: Spans::default(),
        t0,
        fail_on: None,
    }
}

fn spec() -> PreprocessSpec {
    PreprocessSpec::cifar(4)
}

fn limits() -> RunLimits {
    RunLimits {
        max_frames: None,
        max_consecutive_bad_frames: 5,
    }
}

/// What the loop reported, in order: `Ok(sequence, score)` or `Err(message)`.
type Events = Vec<Result<(u64, f64), String>>;

fn run(
    source: &mut Counting,
    model: &mut SlowModel,
    settings: OverlapSettings,
) -> (
    oodmon_edge::error::Result<oodmon_edge::inference::RunSummary>,
    Events,
) {
    let mut frames = FramePreparer::new(&spec(), None);
    let mut events = Events::new();
    let stop = AtomicBool::new(false);
    let summary = run_overlapped(
        &mut frames,
        model,
        source,
        &limits(),
        &settings,
        &stop,
        |e| {
            events.push(match e {
                Event::Record(r) => Ok((r.sequence, r.score)),
                Event::BadFrame(e) => Err(e.to_string()),
            });
            Ok(())
        },
    );
    (summary, events)
}

fn records(events: &Events) -> Vec<(u64, f64)> {
    events.iter().filter_map(|e| e.clone().ok()).collect()
}

/// Each record's score is its own frame's pixel value: sequences rise and scores with them
/// (the tensor and the frame's metadata travel together).
fn assert_in_order_and_paired(recs: &[(u64, f64)]) {
    for w in recs.windows(2) {
        assert!(w[0].0 < w[1].0, "out of order: {recs:?}");
        assert!(
            w[0].1 < w[1].1,
            "a record carries another frame's tensor: {recs:?}"
        );
    }
}

#[test]
fn waiting_judges_every_frame_in_order_while_the_next_is_read() {
    let t0 = Instant::now();
    let mut source = Counting::new(30, Duration::from_millis(3), t0);
    let mut slow = model(3, t0);
    let (summary, events) = run(&mut source, &mut slow, OverlapSettings::FILES);
    let summary = summary.unwrap();
    assert_eq!(summary.frames, 30);
    assert_eq!(summary.dropped_frames, 0);
    let recs = records(&events);
    assert_eq!(
        recs.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    assert_in_order_and_paired(&recs);
    // the overlap itself: some frame was read while the model ran on another
    let reads = source.reads.lock().unwrap().clone();
    let runs = slow.runs.lock().unwrap().clone();
    let overlapped = reads
        .iter()
        .filter(|r| runs.iter().any(|m| r.0 < m.1 && m.0 < r.1))
        .count();
    assert!(
        overlapped > 0,
        "no read overlapped an inference: {reads:?} {runs:?}"
    );
}

#[test]
fn waiting_a_frame_is_read_only_once_the_previous_one_is_in_inference() {
    // a fast file and a slow model: the reader must not run two frames ahead, or each
    // frame would wait for two inferences instead of one
    let t0 = Instant::now();
    let mut source = Counting::new(12, Duration::from_millis(1), t0);
    let mut slow = model(20, t0);
    let (summary, _) = run(&mut source, &mut slow, OverlapSettings::FILES);
    assert_eq!(summary.unwrap().frames, 12);
    let reads = source.reads.lock().unwrap().clone();
    let runs = slow.runs.lock().unwrap().clone();
    for k in 1..reads.len() {
        assert!(
            reads[k].0 + Duration::from_millis(5) >= runs[k - 1].0,
            "frame {k} was read at {:?}, before frame {} went into inference at {:?}",
            reads[k].0,
            k - 1,
            runs[k - 1].0
        );
    }
}

#[test]
fn a_slow_model_drops_the_oldest_frames_counts_them_and_faults() {
    let t0 = Instant::now();
    // a camera every 2 ms, a model taking 12: most frames cannot be judged
    let mut source = Counting::new(60, Duration::from_millis(2), t0);
    let mut slow = model(12, t0);
    let settings = OverlapSettings {
        backlog: Backlog::DropOldest,
        window: 10,
        max_dropped: 3,
    };
    let (summary, events) = run(&mut source, &mut slow, settings);
    let summary = summary.unwrap();
    assert!(summary.dropped_frames > 0);
    // every frame is either judged or counted as dropped
    assert_eq!(summary.frames + summary.dropped_frames, 60);
    assert_in_order_and_paired(&records(&events));
    // the last frame is never dropped: nothing newer displaces it
    assert_eq!(records(&events).last().map(|r| r.0), Some(59));
    let faults = events
        .iter()
        .filter(|e| matches!(e, Err(m) if m.contains("dropped unjudged")))
        .count();
    assert!(faults > 0, "{events:?}");
}

#[test]
fn a_model_that_keeps_up_drops_nothing() {
    let t0 = Instant::now();
    let mut source = Counting::new(20, Duration::from_millis(5), t0);
    let mut fast = model(0, t0);
    let (summary, events) = run(&mut source, &mut fast, OverlapSettings::LIVE);
    let summary = summary.unwrap();
    assert_eq!((summary.frames, summary.dropped_frames), (20, 0));
    assert!(events.iter().all(|e| e.is_ok()));
}

#[test]
fn bad_frames_are_reported_in_capture_order_and_too_many_are_a_fault() {
    let t0 = Instant::now();
    let mut source = Counting::new(20, Duration::from_millis(1), t0);
    source.broken = vec![5];
    let mut slow = model(2, t0);
    let (summary, events) = run(&mut source, &mut slow, OverlapSettings::FILES);
    assert_eq!(summary.unwrap().bad_frames, 1);
    let bad_at = events.iter().position(|e| e.is_err()).unwrap();
    // frames 0-4 came first, then the bad one, then 6-19
    assert_eq!(bad_at, 5, "{events:?}");
    assert_eq!(events.len(), 20);

    let mut source = Counting::new(20, Duration::from_millis(1), t0);
    source.broken = (3..20).collect();
    let (summary, _) = run(&mut source, &mut slow, OverlapSettings::FILES);
    assert!(
        matches!(summary, Err(EdgeError::Fault(5, 5))),
        "{summary:?}"
    );
}

#[test]
fn a_model_that_panics_is_an_error_not_a_hang() {
    let t0 = Instant::now();
    let mut source = Counting::new(50, Duration::from_millis(1), t0);
    let mut failing = model(1, t0);
    // frames from 7 on (pixel value 17, normalised with CIFAR's red mean and std): a
    // frame the drop policy skips cannot hide the panic
    let spec = spec();
    let v = (17.0 / 255.0 - spec.mean[0]) / spec.std[0];
    failing.fail_on = Some(v);
    for settings in [OverlapSettings::FILES, OverlapSettings::LIVE] {
        let (summary, _) = run(&mut source, &mut failing, settings);
        assert!(
            matches!(summary, Err(EdgeError::InferenceThread)),
            "{summary:?}"
        );
        source.next = 0;
    }
}
