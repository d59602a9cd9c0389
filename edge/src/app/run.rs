//! `oodmon-edge run`: the pipeline on the vehicle. Settings come from the TOML file with
//! the command line's overrides; everything is checked before a device opens; a live or
//! looped source that ends is a failure so that a supervisor restarts the pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use oodmon_runtime::Bundle;

use super::frames_to_alarms;
use crate::alarm::{AlarmService, DecisionRule, Outputs};
use crate::config::{EdgeConfig, OverlapMode};
use crate::error::{EdgeError, Result};
use crate::inference::{self, Ending, Engine, Event, FrameRecord, LoopMode, RunLimits, RunSummary};
use std::sync::Arc;

use crate::output::evidence::{EvidenceRing, EvidenceTap, EvidenceWriter};
use crate::output::journal::Journal;
use crate::output::notify::SystemdNotifier;
use crate::output::SerialLink;
use crate::source::{self, SourceSpec};

/// Command-line values that override the configuration file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bundle: Option<PathBuf>,
    pub source: Option<String>,
    pub records: Option<PathBuf>,
    pub max_frames: Option<u64>,
    pub looped: bool,
    pub max_bad_frames: Option<u32>,
    pub serial: Option<String>,
    pub baud: Option<u32>,
    pub scores: bool,
    pub journal: Option<PathBuf>,
    pub overlap: Option<OverlapMode>,
    pub backend: Option<oodmon_runtime::Backend>,
    pub corrupt: Option<String>,
    /// Turn the camera guards off.
    pub no_guards: bool,
    /// Evidence directory (`[evidence] dir`).
    pub evidence: Option<PathBuf>,
    /// MQTT broker URL, fleet and vehicle id (`[mqtt]`).
    pub mqtt: Option<String>,
    pub fleet: Option<String>,
    pub vehicle: Option<String>,
}

/// The configuration file (or the defaults) with the overrides applied.
pub fn settings(config: Option<&Path>, o: Overrides) -> Result<EdgeConfig> {
    let mut cfg = match config {
        Some(path) => EdgeConfig::load(path)?,
        None => EdgeConfig::default(),
    };
    cfg.bundle = o.bundle.or(cfg.bundle);
    cfg.source = o.source.or(cfg.source);
    cfg.output.records = o.records.or(cfg.output.records);
    cfg.output.max_frames = o.max_frames.or(cfg.output.max_frames);
    cfg.camera.looped |= o.looped;
    if let Some(m) = o.max_bad_frames {
        cfg.faults.max_consecutive_bad_frames = m;
    }
    cfg.serial.device = o.serial.or(cfg.serial.device);
    if let Some(b) = o.baud {
        cfg.serial.baud = b;
    }
    cfg.serial.scores |= o.scores;
    cfg.output.journal = o.journal.or(cfg.output.journal);
    if let Some(m) = o.overlap {
        cfg.pipeline.overlap = m;
    }
    if let Some(b) = o.backend {
        cfg.pipeline.backend = b;
    }
    cfg.camera.corrupt = o.corrupt.or(cfg.camera.corrupt);
    cfg.camera.guards &= !o.no_guards;
    cfg.evidence.dir = o.evidence.or(cfg.evidence.dir);
    #[cfg(feature = "mqtt")]
    {
        cfg.mqtt.url = o.mqtt.or(cfg.mqtt.url);
        cfg.mqtt.fleet = o.fleet.unwrap_or(cfg.mqtt.fleet);
        cfg.mqtt.vehicle = o.vehicle.unwrap_or(cfg.mqtt.vehicle);
    }
    #[cfg(not(feature = "mqtt"))]
    if o.mqtt.is_some() {
        return Err(EdgeError::invalid(
            "mqtt",
            "this build has no MQTT support (feature mqtt)",
        ));
    }
    Ok(cfg)
}

/// Runs the pipeline until the source ends, `max_frames` or `stop`; the summary goes to
/// `out` (to standard error when the records go to standard output).
pub fn run(cfg: &EdgeConfig, stop: &AtomicBool, out: &mut dyn Write) -> Result<RunSummary> {
    // everything is checked before the bundle is loaded or a device opened
    cfg.validate_for_run()?;
    let bundle_dir = cfg.bundle.clone().ok_or_else(|| {
        EdgeError::invalid(
            "bundle",
            "no bundle: give --bundle DIR or `bundle` in the config",
        )
    })?;
    let spec: SourceSpec = cfg
        .source
        .as_deref()
        .ok_or_else(|| {
            EdgeError::invalid(
                "source",
                "no source: give --source or `source` in the config",
            )
        })?
        .parse()?;
    let backend = cfg.pipeline.backend;
    let bundle = Bundle::load_on(&bundle_dir, backend)?;
    let kernels = (backend == oodmon_runtime::Backend::Tract).then(|| bundle.encoder.own_kernels());
    match kernels {
        Some(k) => log::info!("encoder on {backend}: {k}"),
        None => log::info!("encoder on {backend}"),
    }
    let reference = bundle.calibrated_on();
    if backend != reference && cfg.pipeline.verify_backend {
        let agreement = super::check::agreement(Some(&bundle_dir), reference, backend)?;
        if !agreement.acceptable() {
            return Err(EdgeError::BackendDisagrees {
                backend,
                reference,
                agreement,
            });
        }
        log::info!("{backend} against {reference}: {agreement}");
    }
    if matches!(cfg.alarm.decision, DecisionRule::PValue { .. })
        && bundle.detector.thresholds.calibration_scores.is_empty()
    {
        return Err(EdgeError::invalid(
            "alarm.decision",
            format!(
                "p_value needs a calibration that kept its scores; {} has none",
                bundle_dir.display()
            ),
        ));
    }
    let class_names = bundle.artifact.class_names.clone();
    let mut engine = Engine::new(bundle)?;
    engine.set_scaled_jpeg(cfg.camera.scaled_jpeg_decode);
    if !cfg.camera.guards {
        engine.disable_guards();
    }
    match engine.guards() {
        Some(g) => log::info!(
            "camera guards on: image-quality bounds from {} calibration images",
            g.images
        ),
        None if cfg.camera.guards => log::warn!(
            "camera guards off: the calibration has no image-quality bounds (add them with \
             `oodmon-calibrate guards`)"
        ),
        None => log::info!("camera guards off"),
    }
    let service = AlarmService::start(cfg.alarm.clone(), outputs(cfg)?);
    #[cfg(feature = "mqtt")]
    let forwarder = match (&cfg.mqtt.url, &cfg.output.journal) {
        (Some(_), Some(journal)) => Some(crate::output::mqtt::MqttForwarder::start(
            &cfg.mqtt,
            journal,
            cfg.evidence.dir.as_deref(),
        )?),
        _ => None,
    };
    let mut src = source::open(&spec, &cfg.source_options())?;
    if let Some(c) = &cfg.camera.corrupt {
        src = Box::new(source::CorruptedSource::new(src, c.parse()?));
    }
    let evidence = match (&cfg.evidence.dir, &cfg.output.journal) {
        (Some(dir), Some(journal)) => {
            let ring = Arc::new(EvidenceRing::new(cfg.evidence.slots()));
            src = Box::new(EvidenceTap::new(src, ring.clone()));
            log::info!(
                "evidence: {} frames before and {} after each alarm into {}",
                cfg.evidence.frames_before,
                cfg.evidence.frames_after,
                dir.display()
            );
            Some(EvidenceWriter::start(&cfg.evidence, journal, ring)?)
        }
        _ => None,
    };
    log::info!("reading {}", src.describe());
    let records_to_stdout = cfg.output.records.as_deref() == Some(Path::new("-"));
    let mut records = RecordSink::open(cfg.output.records.as_deref())?;
    let mut notifier = SystemdNotifier::from_env();
    notifier.ready();
    let limits = RunLimits {
        max_frames: cfg.output.max_frames,
        max_consecutive_bad_frames: cfg.faults.max_consecutive_bad_frames,
    };
    let mode = cfg.loop_mode(matches!(spec, SourceSpec::V4l { .. }));
    match mode {
        LoopMode::Sequential => log::info!("frame loop: sequential, one thread"),
        LoopMode::Overlapped(o) => log::info!(
            "frame loop: overlapped, two threads ({}; FAULT past {} dropped of the last {})",
            match o.backlog {
                inference::Backlog::Wait => "a frame waits for the model",
                inference::Backlog::DropOldest => "the oldest waiting frame is dropped",
            },
            o.max_dropped,
            o.window
        ),
    }
    if !matches!(mode, LoopMode::Overlapped(_)) || cfg.pipeline.model_head_share == 0.0 {
        log::info!("encoder whole on one thread (cut only with overlap and model_head_share > 0)");
    } else {
        match engine.split_model(cfg.pipeline.model_head_share)? {
            Some(cut) => log::info!(
                "encoder cut in two {}: the frame thread runs the head while the model \
                 thread is busy",
                inference::describe_cut(cut)
            ),
            None => log::info!("encoder not cut in two (tract on the CPU only)"),
        }
    }
    let (summary, report) = frames_to_alarms(
        mode,
        &mut engine,
        &mut src,
        service,
        &limits,
        stop,
        |event, _| {
            notifier.alive();
            if let Event::Record(r) = event {
                #[cfg(feature = "mqtt")]
                if let Some(f) = &forwarder {
                    f.latest_score.set(r.sequence, r.score, r.threshold, r.ood);
                }
                records.write(r, &class_names)?;
            }
            Ok(())
        },
    );
    notifier.stopping();
    log::info!(
        "alarm service: {} transitions, {} messages sent, {} send errors",
        report.transition_count,
        report.messages_sent,
        report.send_errors
    );
    if let Some(w) = evidence {
        let stats = w.stats.clone();
        w.stop();
        log::info!(
            "evidence: {} alarms written ({} frames), {} deleted by the size cap, {} failed",
            stats.written.load(std::sync::atomic::Ordering::Relaxed),
            stats.frames.load(std::sync::atomic::Ordering::Relaxed),
            stats.deleted.load(std::sync::atomic::Ordering::Relaxed),
            stats.failed.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    #[cfg(feature = "mqtt")]
    if let Some(f) = forwarder {
        let stats = f.stats.clone();
        f.stop();
        log::info!(
            "MQTT: {} events acknowledged by the broker ({} published again after a reconnection), {} connections",
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            stats.republished.load(std::sync::atomic::Ordering::Relaxed),
            stats.connections.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    records.flush()?;
    let mut summary = summary?;
    summary.backend = Some(cfg.pipeline.backend);
    summary.kernels = kernels;
    if records_to_stdout {
        eprintln!("{}", summary_text(&summary));
    } else {
        writeln!(out, "{}", summary_text(&summary))?;
    }
    source_ending(&spec, cfg.camera.looped, &summary)?;
    Ok(summary)
}

/// The alarm outputs the configuration asks for; each is opened now, so a missing serial
/// port or GPIO chip stops start-up with a clear error.
pub fn outputs(cfg: &EdgeConfig) -> Result<Outputs> {
    let mut outputs = Outputs {
        scores: cfg.serial.scores,
        watchdog_ms: cfg.gpio.watchdog_ms,
        ..Default::default()
    };
    if cfg.serial.device.is_some() {
        let link = SerialLink::open(&cfg.serial)?;
        log::info!("alarms to {}", crate::output::AlarmLink::describe(&link));
        outputs.link = Some(Box::new(link));
    }
    if cfg.gpio.chip.is_some() {
        #[cfg(all(feature = "gpio", target_os = "linux"))]
        {
            outputs.line = Some(Box::new(crate::output::GpioLine::open(&cfg.gpio)?));
        }
        #[cfg(not(all(feature = "gpio", target_os = "linux")))]
        return Err(EdgeError::invalid(
            "gpio.chip",
            "this build has no GPIO support (feature gpio, Linux only)",
        ));
    }
    if let Some(path) = &cfg.output.journal {
        let (mut journal, recovery) = Journal::open(path)?;
        journal.name_evidence(cfg.evidence.dir.is_some());
        log::info!(
            "journal {}: {} events{}",
            path.display(),
            recovery.events,
            if recovery.torn_bytes > 0 {
                format!(
                    ", a torn last line of {} bytes cut off",
                    recovery.torn_bytes
                )
            } else {
                String::new()
            }
        );
        outputs.journal = Some(journal);
    }
    Ok(outputs)
}

/// Where `--records` go: nowhere, standard output (`-`) or a file, one JSON line a frame.
///
/// A file is appended to, never truncated (a restarted service keeps the crashed run's
/// records), and each line goes out in one write, so that a killed process leaves at most
/// one torn last line, which the next run cuts off.
pub struct RecordSink {
    writer: Option<Box<dyn Write>>,
    /// One line, serialised here first (grown once, reused).
    line: Vec<u8>,
}

/// One line of `--records`: the frame's record and its nearest class by name.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    #[serde(flatten)]
    record: &'a FrameRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    nearest_class_name: Option<&'a str>,
}

impl RecordSink {
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let writer: Option<Box<dyn Write>> = match path {
            None => None,
            Some(p) if p == Path::new("-") => Some(Box::new(std::io::stdout().lock())),
            Some(p) => {
                let named = |e: std::io::Error| {
                    EdgeError::Io(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", p.display()),
                    ))
                };
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(p)
                    .map_err(named)?;
                let (kept, torn) = cut_torn_line(&mut file).map_err(named)?;
                if torn > 0 {
                    log::warn!(
                        "records {}: a torn last line of {torn} bytes cut off (the process \
                         was stopped while writing it)",
                        p.display()
                    );
                }
                if kept > 0 {
                    log::info!(
                        "records {}: appending after the {kept} bytes already there",
                        p.display()
                    );
                }
                Some(Box::new(file))
            }
        };
        Ok(Self {
            writer,
            line: Vec::new(),
        })
    }

    /// Writes one record, naming its nearest class from `class_names`.
    pub fn write(&mut self, record: &FrameRecord, class_names: &[String]) -> Result<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let line = RecordLine {
            record,
            nearest_class_name: record
                .nearest_class
                .and_then(|c| class_names.get(c))
                .map(String::as_str),
        };
        self.line.clear();
        serde_json::to_writer(&mut self.line, &line).map_err(std::io::Error::other)?;
        self.line.push(b'\n');
        w.write_all(&self.line)?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
        }
        Ok(())
    }
}

/// Cuts off an unterminated last line of a records file (a process killed mid-write),
/// looking back at most 1 MiB (a record is about 2 KB): the bytes kept and the bytes cut.
fn cut_torn_line(file: &mut std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let len = file.metadata()?.len();
    let window = len.min(1 << 20);
    let mut tail = vec![0u8; window as usize];
    file.seek(SeekFrom::Start(len - window))?;
    file.read_exact(&mut tail)?;
    if tail.last().is_none_or(|&b| b == b'\n') {
        return Ok((len, 0));
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => len - window + i as u64 + 1,
        None if window == len => 0,
        // no line end in the last MiB: not a records file this wrote; leave it
        None => return Ok((len, 0)),
    };
    file.set_len(keep)?;
    Ok((keep, len - keep))
}

/// A live source (camera, pipe) or a looped file that runs out of frames is a failure, so
/// that a supervisor (`Restart=on-failure`) restarts the pipeline; a file read once may end.
pub fn source_ending(spec: &SourceSpec, looped: bool, summary: &RunSummary) -> Result<()> {
    if summary.ending != Ending::SourceEnded {
        return Ok(());
    }
    let live = matches!(spec, SourceSpec::V4l { .. } | SourceSpec::Stdin { .. });
    if live || looped {
        return Err(EdgeError::SourceEnded {
            frames: summary.frames,
            why: if live {
                "the camera or pipe stopped delivering"
            } else {
                "the looped file cannot be read again"
            },
            kind: if live { "live source" } else { "looped source" },
        });
    }
    log::warn!(
        "the file source ended after {} frames (no --loop)",
        summary.frames
    );
    Ok(())
}

/// The run's summary in three lines: frames, per-stage latency, peak memory.
pub fn summary_text(s: &RunSummary) -> String {
    let l = &s.latency;
    format!(
        "frames {} (OOD {}, bad {}, dropped {}) in {:.1} s, {:.1} frames/s{}, {}{}\n\
         latency p50/p99 us: decode {}/{}, preprocess {}/{}, guards {}/{}, queue {}/{}, inference {}/{}, scoring {}/{}, total {}/{}\n\
         peak memory {}",
        s.frames,
        s.ood_frames,
        s.bad_frames,
        s.dropped_frames,
        s.elapsed_s,
        s.frames_per_second,
        match s.ending {
            Ending::Stopped => ", stopped (Ctrl-C or a signal)",
            Ending::MaxFrames => ", frame limit reached",
            Ending::SourceEnded => "",
        },
        if s.overlapped {
            match &s.model_cut {
                Some(cut) => format!(
                    "overlapped, encoder cut {cut} (its head on the frame thread for {} of {} \
                     frames)",
                    s.frames_cut, s.frames
                ),
                None => "overlapped".to_string(),
            }
        } else {
            "sequential".to_string()
        },
        s.backend
            .map(|b| format!(
                ", encoder on {b}{}",
                s.kernels
                    .map(|k| format!(" ({})", k.short()))
                    .unwrap_or_default()
            ))
            .unwrap_or_default(),
        l.decode.p50_us,
        l.decode.p99_us,
        l.preprocess.p50_us,
        l.preprocess.p99_us,
        l.quality.p50_us,
        l.quality.p99_us,
        l.queue.p50_us,
        l.queue.p99_us,
        l.inference.p50_us,
        l.inference.p99_us,
        l.scoring.p50_us,
        l.scoring.p99_us,
        l.total.p50_us,
        l.total.p99_us,
        s.peak_memory_bytes
            .map(|b| format!("{:.1} MB", b as f64 / 1e6))
            .unwrap_or_else(|| "unknown".into()),
    )
}
