//! The embedded default: a bundle and a short camera scenario compiled into the binary, so
//! `oodmon-edge demo` runs from any directory with no set-up. `edge/demo/README.md` says
//! where the model and the frames come from.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use oodmon_calibration::preprocess::PixelFormat;
use oodmon_calibration::CalibrationArtifact;
use oodmon_runtime::{Backend, Bundle};
use serde::Deserialize;

use super::frames_to_alarms;
use crate::alarm::{AlarmConfig, AlarmService, Outputs, ServiceReport};
use crate::config::EdgeConfig;
use crate::error::{EdgeError, Result};
use crate::inference::{Engine, Event, FrameRecord, RunLimits, RunSummary};
use crate::output::AlarmLink;
use crate::source::frame::{now_us, Frame, FrameFormat};
use crate::source::{AviSource, RawStream};

pub const ENCODER: &[u8] = include_bytes!("../../demo/bundle/encoder.onnx");
pub const CALIBRATION: &str = include_str!("../../demo/bundle/calib.json");
pub const SCENARIO: &[u8] = include_bytes!("../../demo/scenario.avi");
pub const SCENARIO_META: &str = include_str!("../../demo/scenario.json");

/// The built-in bundle, checked like one loaded from disk.
pub fn bundle() -> Result<Bundle> {
    bundle_on(Backend::Tract)
}

/// The built-in bundle, its encoder prepared for `backend`.
pub fn bundle_on(backend: Backend) -> Result<Bundle> {
    let artifact = CalibrationArtifact::from_json(CALIBRATION)?;
    Ok(Bundle::from_parts_on(
        Path::new("<built-in demo bundle>"),
        ENCODER,
        artifact,
        backend,
    )?)
}

/// The built-in MJPEG scenario as a frame source.
pub fn scenario(looped: bool) -> Result<AviSource> {
    Ok(AviSource::from_bytes(
        SCENARIO,
        "<built-in scenario>",
        looped,
    )?)
}

/// An endless stream of synthetic YUYV camera frames of the given size (`WxH`): a moving
/// gradient, so consecutive frames differ, for benchmarking the camera-native path.
pub fn synthetic_yuyv(size: &str) -> Result<RawStream<SyntheticYuyv>> {
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0 && w % 2 == 0)
        .ok_or_else(|| EdgeError::invalid("--yuyv", format!("{size:?} is not WxH (even W)")))?;
    Ok(RawStream::new(
        SyntheticYuyv {
            frame: w * h * 2,
            width: w,
            at: 0,
            shift: 0,
        },
        "synthetic",
        w,
        h,
        FrameFormat::Raw(PixelFormat::Yuyv),
    )?)
}

/// The reader behind [`synthetic_yuyv`].
#[derive(Debug)]
pub struct SyntheticYuyv {
    frame: usize,
    width: usize,
    at: usize,
    shift: usize,
}

impl std::io::Read for SyntheticYuyv {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.frame - self.at);
        let row = self.width * 2;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let p = self.at + i;
            let (x, y) = ((p % row) / 2, p / row);
            *b = if p.is_multiple_of(2) {
                ((x + y + self.shift) % 220 + 16) as u8
            } else {
                ((x * 3 + self.shift) % 200 + 28) as u8
            };
        }
        self.at += n;
        if self.at == self.frame {
            self.at = 0;
            self.shift += 3;
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Segment {
    pub label: String,
    /// What the frames show (the source image's name).
    #[serde(default)]
    pub scene: String,
    pub first: u64,
    pub last: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScenarioMeta {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub frames: u64,
    pub segments: Vec<Segment>,
}

pub fn scenario_meta() -> Result<ScenarioMeta> {
    serde_json::from_str(SCENARIO_META)
        .map_err(|e| EdgeError::invalid("built-in scenario description", e))
}

/// Runs one mid-grey frame of the encoder's input size through the engine (a smoke test of
/// a freshly loaded bundle).
pub fn probe(engine: &mut Engine) -> Result<FrameRecord> {
    let (w, h) = (
        engine.preprocessing().width as usize,
        engine.preprocessing().height as usize,
    );
    let data = vec![128u8; w * h * 3];
    engine.process(&Frame {
        data: &data,
        width: w,
        height: h,
        stride: None,
        format: FrameFormat::Raw(PixelFormat::Rgb8),
        timestamp_us: now_us(),
        media_us: None,
        sequence: 0,
    })
}

/// Per-segment outcome of the demo.
#[derive(Debug, Clone)]
pub struct SegmentResult {
    pub label: String,
    pub scene: String,
    pub frames: u64,
    pub ood_frames: u64,
    /// Frames that failed a camera guard.
    pub camera_frames: u64,
    pub mean_score: f64,
}

/// The label of a segment whose frames come from a degraded camera.
pub const CAMERA_FAULT: &str = "camera-fault";
/// The label of an out-of-distribution segment.
pub const OUT_OF_DISTRIBUTION: &str = "out-of-distribution";

#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub run: RunSummary,
    pub segments: Vec<SegmentResult>,
    pub alarms: ServiceReport,
}

impl DemoSummary {
    /// Whether most frames of each segment got the segment's label: flagged OOD out of
    /// distribution, failing a camera guard from a degraded camera, neither otherwise.
    pub fn frames_match(&self) -> bool {
        self.segments.iter().all(|s| {
            let share = |n: u64| n as f64 / s.frames.max(1) as f64;
            match s.label.as_str() {
                OUT_OF_DISTRIBUTION => share(s.ood_frames) > 0.5,
                CAMERA_FAULT => share(s.camera_frames) > 0.5,
                _ => share(s.ood_frames) < 0.5 && share(s.camera_frames) < 0.5,
            }
        })
    }

    /// Whether the alarm itself followed the scenario: OK for each run of in-distribution
    /// segments, OOD for each run of out-of-distribution ones, FAULT with a camera reason
    /// for a degraded camera, in that order (OK -> OOD -> OK -> FAULT -> OK for the
    /// built-in scenario).
    pub fn alarm_followed_scenario(&self) -> bool {
        use oodmon_protocol::AlarmState::{Fault, Ok, Ood};
        let mut expected = Vec::new();
        for s in &self.segments {
            let state = match s.label.as_str() {
                OUT_OF_DISTRIBUTION => Ood,
                CAMERA_FAULT => Fault,
                _ => Ok,
            };
            if expected.last() != Some(&state) {
                expected.push(state);
            }
        }
        let mut wanted = expected.into_iter().peekable();
        for t in &self.alarms.transitions {
            let camera = t.reason.name().starts_with("camera_");
            if wanted.peek() == Some(&t.state) && (t.state != Fault || camera) {
                wanted.next();
            }
        }
        wanted.peek().is_none()
    }

    /// The alarm's path as the scenario expects it, for people.
    pub fn expected_path(&self) -> String {
        let mut path: Vec<&str> = Vec::new();
        for s in &self.segments {
            let state = match s.label.as_str() {
                OUT_OF_DISTRIBUTION => "OOD",
                CAMERA_FAULT => "FAULT (camera)",
                _ => "OK",
            };
            if path.last() != Some(&state) {
                path.push(state);
            }
        }
        path.join(" -> ")
    }

    /// The scenario was reproduced: frames classified as labelled, and the alarm went
    /// OK -> OOD -> OK.
    pub fn passed(&self) -> bool {
        self.frames_match() && self.alarm_followed_scenario()
    }
}

/// How the demo shows each frame: a terminal gets one line rewritten in place, a pipe or a
/// log file one line per frame (carriage returns would run a whole log into one line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusLines {
    /// The closing summary only, no pause between frames.
    Off,
    /// One status line, rewritten in place for each frame.
    Overwrite,
    /// One line per frame.
    PerFrame,
}

impl StatusLines {
    /// `Off` when `quiet`, else `Overwrite` on a terminal and `PerFrame` elsewhere.
    pub fn for_output(quiet: bool, is_terminal: bool) -> Self {
        match (quiet, is_terminal) {
            (true, _) => StatusLines::Off,
            (false, true) => StatusLines::Overwrite,
            (false, false) => StatusLines::PerFrame,
        }
    }
}

/// Plays the scenario, writing its status lines and a closing summary.
pub fn play(
    frame_delay_ms: Option<u64>,
    lines: StatusLines,
    out: &mut dyn Write,
) -> Result<DemoSummary> {
    play_with_alarms(None, frame_delay_ms, lines, None, out)
}

/// [`play`], with the alarm service debouncing the decisions (default rules) and sending
/// its protocol frames to `link` when given. The frames go through the same wiring as
/// `oodmon-edge run` ([`frames_to_alarms`]). `bundle_dir` plays the scenario through a
/// bundle on disk instead of the built-in one: how a candidate default is checked against
/// the product's own test before it is shipped.
pub fn play_with_alarms(
    bundle_dir: Option<&Path>,
    frame_delay_ms: Option<u64>,
    lines: StatusLines,
    link: Option<Box<dyn AlarmLink>>,
    out: &mut dyn Write,
) -> Result<DemoSummary> {
    let service = AlarmService::start(
        AlarmConfig {
            // the scenario is about OK -> OOD -> OK, timed on its media time; a slow host
            // (a debug build under emulation takes ~0.5 s a frame) must not turn it into
            // stall faults, which the run command's tests cover
            stall_ms: 10_000,
            ..AlarmConfig::default()
        },
        Outputs {
            scores: link.is_some(),
            link,
            ..Default::default()
        },
    );
    let meta = scenario_meta()?;
    let (bundle, bundle_name) = match bundle_dir {
        Some(dir) => (Bundle::load(dir)?, format!("bundle {}", dir.display())),
        None => (bundle()?, "built-in bundle".to_string()),
    };
    let names = bundle.artifact.class_names.clone();
    let mut engine = Engine::new(bundle)?;
    let mut source = scenario(false)?;
    let delay = Duration::from_millis(frame_delay_ms.unwrap_or(1000 / meta.fps.max(1) as u64));
    writeln!(
        out,
        "oodmon demo: {bundle_name} on {} built-in camera frames ({}x{}, {} fps)",
        meta.frames, meta.width, meta.height, meta.fps
    )?;
    let mut segments: Vec<SegmentResult> = meta
        .segments
        .iter()
        .map(|s| SegmentResult {
            label: s.label.clone(),
            scene: s.scene.clone(),
            frames: 0,
            ood_frames: 0,
            camera_frames: 0,
            mean_score: 0.0,
        })
        .collect();
    let limits = RunLimits {
        max_frames: None,
        max_consecutive_bad_frames: 3,
    };
    let stop = AtomicBool::new(false);
    let (run, report) = frames_to_alarms(
        EdgeConfig::default().loop_mode(false),
        &mut engine,
        &mut source,
        service,
        &limits,
        &stop,
        |event, service| {
            let Event::Record(r) = event else {
                return Ok(());
            };
            if let Some(i) = meta
                .segments
                .iter()
                .position(|s| (s.first..=s.last).contains(&r.sequence))
            {
                let s = &mut segments[i];
                s.frames += 1;
                s.ood_frames += r.ood as u64;
                s.camera_frames += r.camera.is_some() as u64;
                s.mean_score += (r.score - s.mean_score) / s.frames as f64;
            }
            if lines != StatusLines::Off {
                // the state the outputs carry once this frame is judged
                service.wait_judged(Duration::from_millis(200));
                write_status_line(out, r, &names, service, lines)?;
                std::thread::sleep(delay);
            }
            Ok(())
        },
    );
    let run = run?;
    if lines == StatusLines::Overwrite {
        writeln!(out)?;
    }
    write_closing_summary(out, &segments, &run, &report)?;
    let summary = DemoSummary {
        run,
        segments,
        alarms: report,
    };
    let path = summary.expected_path();
    match (summary.frames_match(), summary.alarm_followed_scenario()) {
        (true, true) => writeln!(
            out,
            "scenario reproduced: in-distribution frames pass, out-of-distribution frames are \
             flagged, the darkened camera fails its guards, and the alarm went {path}"
        )?,
        (false, _) => writeln!(
            out,
            "scenario NOT reproduced: the decisions do not match the scenario's labels"
        )?,
        (true, false) => writeln!(
            out,
            "scenario NOT reproduced: the frames were classified as labelled, but the alarm \
             did not go {path}"
        )?,
    }
    Ok(summary)
}

/// The live line: score bar against the threshold, nearest class, decision, latency and
/// the alarm's state.
fn write_status_line(
    out: &mut dyn Write,
    r: &FrameRecord,
    names: &[String],
    service: &AlarmService,
    lines: StatusLines,
) -> Result<()> {
    let bar_len = ((r.score / r.threshold.max(1e-9)) * 20.0).clamp(0.0, 40.0) as usize;
    let bar: String = (0..40)
        .map(|i| match i {
            20 => '|',
            i if i < bar_len => '#',
            _ => ' ',
        })
        .collect();
    let class_name = r
        .nearest_class
        .and_then(|c| names.get(c))
        .map_or("", String::as_str);
    let (state, reason) = service.current();
    let (start, end) = match lines {
        StatusLines::Overwrite => ("\r", " "),
        StatusLines::PerFrame | StatusLines::Off => ("", "\n"),
    };
    write!(
        out,
        "{start}frame {:>3}  [{}] score {:.3} / {:.3}  nearest {:<10} (cluster {:>2})  {}  {:>5} us  alarm {:<5} ({:<19}){end}",
        r.sequence,
        bar,
        r.score,
        r.threshold,
        class_name,
        r.nearest,
        match r.camera {
            Some(_) => "cam",
            None if r.ood => "OOD",
            None => "ok ",
        },
        r.latency.total_us(),
        state.name(),
        reason.name()
    )?;
    out.flush()?;
    Ok(())
}

/// Per-segment results, latency and the alarm's path.
fn write_closing_summary(
    out: &mut dyn Write,
    segments: &[SegmentResult],
    run: &RunSummary,
    report: &ServiceReport,
) -> Result<()> {
    for s in segments {
        let name = if s.scene.is_empty() {
            s.label.clone()
        } else {
            format!("{} ({})", s.label, s.scene)
        };
        writeln!(
            out,
            "{name:<32} {:>3} frames, {:>3} flagged OOD, {:>3} failing a camera guard, mean score {:.3}",
            s.frames, s.ood_frames, s.camera_frames, s.mean_score
        )?;
    }
    let l = &run.latency;
    writeln!(
        out,
        "{} frames, {} OOD decisions; latency p50 {} us (decode {}, preprocess {}, guards {}, inference {}, scoring {}), p99 {} us",
        run.frames,
        run.ood_frames,
        l.total.p50_us,
        l.decode.p50_us,
        l.preprocess.p50_us,
        l.quality.p50_us,
        l.inference.p50_us,
        l.scoring.p50_us,
        l.total.p99_us
    )?;
    let path: Vec<String> = report
        .transitions
        .iter()
        .map(|t| format!("{} ({})", t.state.name(), t.reason.name()))
        .collect();
    writeln!(
        out,
        "alarm (3 of 5 frames raise OOD or a camera FAULT, 10 in a row and 1 s clear it): FAULT (starting) -> {}",
        path.join(" -> ")
    )?;
    if report.messages_sent > 0 || report.send_errors > 0 {
        writeln!(
            out,
            "alarm link: {} messages sent, {} send errors",
            report.messages_sent, report.send_errors
        )?;
    }
    Ok(())
}
