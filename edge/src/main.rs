//! `oodmon-edge`: run a deployed bundle on camera frames, check a bundle, benchmark the
//! pipeline, or play the built-in demo.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use oodmon_cli::say;
use oodmon_edge::config::EdgeConfig;
use oodmon_edge::runner::{self, Event, RunLimits, RunSummary};
use oodmon_edge::source::{self, SourceSpec};
use oodmon_edge::{demo, Engine};
use oodmon_runtime::{Bundle, Encoder};

#[derive(Parser)]
#[command(
    name = "oodmon-edge",
    version,
    about = "Out-of-distribution monitoring of camera frames with a deployed oodmon bundle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score frames from a camera, files or a pipe, one record per frame.
    Run {
        /// Bundle directory (encoder.onnx + calib.json); overrides the config's.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// v4l:/dev/video0[:WxH@FPS[:yuyv|mjpeg]] | images:GLOB | avi:FILE | stdin:WxH:FORMAT
        #[arg(long)]
        source: Option<String>,
        /// TOML settings (unknown keys are errors); command-line values override them.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write per-frame records as JSON lines to this file (`-`: standard output).
        #[arg(long)]
        records: Option<PathBuf>,
        /// Stop after this many frames.
        #[arg(long)]
        max_frames: Option<u64>,
        /// Play file sources again from the start when they end.
        #[arg(long = "loop")]
        looped: bool,
        /// Bad frames in a row after which the run stops with a fault.
        #[arg(long)]
        max_bad_frames: Option<u32>,
        /// Send alarms over this serial device (protocol in PROTOCOL.md).
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        baud: Option<u32>,
        /// Also send a SCORE message per frame.
        #[arg(long)]
        scores: bool,
        /// Append every alarm state change to this JSON-lines journal.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Validate a bundle (hashes, shapes, schema) and run one inference.
    Check {
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Per-stage latency (p50/p99), frames per second and peak memory; with --model, the
    /// inference latency of one ONNX encoder alone.
    Bench {
        /// Bundle directory; the built-in demo bundle when omitted.
        #[arg(long, conflicts_with = "model")]
        bundle: Option<PathBuf>,
        /// Time only the inference of this ONNX encoder (no frames, no scoring).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Synthetic camera frames of this size in YUYV (e.g. 640x480) instead of the
        /// built-in MJPEG scenario.
        #[arg(long, conflicts_with = "source")]
        yuyv: Option<String>,
        /// Frame source; the built-in MJPEG scenario (640x480 camera frames) when omitted.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 500)]
        frames: u64,
        /// Decode JPEG frames at full resolution (no DCT scaling), as `[camera]
        /// scaled_jpeg_decode = false` does.
        #[arg(long)]
        full_jpeg_decode: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Play the built-in scenario through the built-in bundle: in-distribution frames,
    /// then out-of-distribution ones, then in-distribution again.
    Demo {
        /// Pause between frames, milliseconds (the scenario's camera rate by default).
        #[arg(long)]
        frame_delay_ms: Option<u64>,
        /// No live status line (for logs and tests).
        #[arg(long)]
        quiet: bool,
        /// Send the demo's alarms over this serial device (watch with `monitor`).
        #[arg(long)]
        serial: Option<String>,
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
    },
    /// False alarms per hour on an in-distribution stream: per-frame decisions through the
    /// alarm rules, either simulated (independent errors at --fpr) or replayed from the
    /// records of a run on in-distribution data (--records, looped to --hours).
    FalseAlarms {
        /// Per-frame false-positive rate(s) to simulate, comma-separated.
        #[arg(long, default_value = "0.01,0.05")]
        fpr: String,
        /// k/n pairs, comma-separated (e.g. 1/1,2/3,3/5,5/10).
        #[arg(long, default_value = "1/1,2/3,3/5,5/10")]
        k_of_n: String,
        #[arg(long, default_value_t = 10)]
        clear_m: usize,
        #[arg(long, default_value_t = 1000)]
        min_hold_ms: u64,
        #[arg(long, default_value_t = 30.0)]
        fps: f64,
        #[arg(long, default_value_t = 10.0)]
        hours: f64,
        /// Replay the `ood` decisions of these JSON-lines records instead of simulating.
        #[arg(long)]
        records: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // the demo owns the terminal: only warnings from it by default
    let default_log = match cli.command {
        Command::Demo { .. } => "warn,oodmon_edge::service=error",
        _ => "warn,oodmon_edge=info",
    };
    oodmon_cli::main("oodmon-edge", default_log, || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            bundle,
            source,
            config,
            records,
            max_frames,
            looped,
            max_bad_frames,
            serial,
            baud,
            scores,
            journal,
        } => {
            let mut cfg = match &config {
                Some(path) => EdgeConfig::load(path)?,
                None => EdgeConfig::default(),
            };
            cfg.bundle = bundle.or(cfg.bundle);
            cfg.source = source.or(cfg.source);
            cfg.output.records = records.or(cfg.output.records);
            cfg.output.max_frames = max_frames.or(cfg.output.max_frames);
            cfg.camera.looped |= looped;
            if let Some(m) = max_bad_frames {
                cfg.faults.max_consecutive_bad_frames = m;
            }
            cfg.serial.device = serial.or(cfg.serial.device);
            if let Some(b) = baud {
                cfg.serial.baud = b;
            }
            cfg.serial.scores |= scores;
            cfg.output.journal = journal.or(cfg.output.journal);
            // everything is checked before the bundle is loaded or a device opened
            cfg.validate()?;
            let bundle_dir = cfg
                .bundle
                .clone()
                .context("no bundle: give --bundle DIR or `bundle` in the config")?;
            let spec: SourceSpec = cfg
                .source
                .as_deref()
                .context("no source: give --source or `source` in the config")?
                .parse()
                .map_err(anyhow::Error::msg)?;
            let bundle = Bundle::load(&bundle_dir)?;
            if matches!(
                cfg.alarm.decision,
                oodmon_edge::alarm::DecisionRule::PValue { .. }
            ) && bundle.detector.thresholds.calibration_scores.is_empty()
            {
                anyhow::bail!(
                    "alarm.decision p_value needs a calibration that kept its scores; {} has none",
                    bundle_dir.display()
                );
            }
            let class_names = bundle.artifact.class_names.clone();
            let mut engine = Engine::new(bundle)?;
            engine.set_scaled_jpeg(cfg.camera.scaled_jpeg_decode);
            let outputs = outputs_from(&cfg)?;
            let service = oodmon_edge::service::AlarmService::start(cfg.alarm.clone(), outputs);
            let mut src = source::open(&spec, &cfg.source_options())?;
            log::info!("reading {}", src.describe());
            let mut sink: Option<Box<dyn Write>> = match &cfg.output.records {
                None => None,
                Some(p) if p == Path::new("-") => Some(Box::new(std::io::stdout().lock())),
                Some(p) => Some(Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| p.display().to_string())?,
                ))),
            };
            let stop = oodmon_cli::stop_flag()?;
            let mut notifier = oodmon_edge::watchdog::SystemdNotifier::from_env();
            notifier.ready();
            let limits = RunLimits {
                max_frames: cfg.output.max_frames,
                max_consecutive_bad_frames: cfg.faults.max_consecutive_bad_frames,
            };
            let summary = runner::run(&mut engine, &mut src, &limits, &stop, |event| {
                notifier.alive();
                match &event {
                    Event::Record(r) => service.frame(Ok(r)),
                    Event::BadFrame(e) => service.frame(Err(e)),
                }
                if let (Event::Record(r), Some(w)) = (&event, sink.as_mut()) {
                    let line = RecordLine {
                        record: r,
                        nearest_class_name: r
                            .nearest_class
                            .and_then(|c| class_names.get(c))
                            .map(String::as_str),
                    };
                    serde_json::to_writer(&mut *w, &line).map_err(std::io::Error::other)?;
                    w.write_all(b"\n")?;
                }
                if let Event::Record(r) = event {
                    if r.ood {
                        log::debug!("frame {} OOD, score {:.4}", r.sequence, r.score);
                    }
                }
                Ok(())
            })
            .map_err(|e| -> anyhow::Error { e.into() });
            notifier.stopping();
            let report = service.finish();
            log::info!(
                "alarm service: {} transitions, {} messages sent, {} send errors",
                report.transition_count,
                report.messages_sent,
                report.send_errors
            );
            if let Some(w) = sink.as_mut() {
                w.flush()?;
            }
            let summary = summary?;
            print_summary(
                &summary,
                cfg.output.records.as_deref() == Some(Path::new("-")),
            )?;
            source_ending(&spec, cfg.camera.looped, &summary)
        }
        Command::Check { bundle } => {
            let b = Bundle::load(&bundle)?;
            let (w, h) = b.encoder.input_size();
            let dim = b.encoder.dim();
            let clusters = b.artifact.model.clusters();
            let metric = format!("{:?}", b.artifact.fit.metric);
            let rule = format!("{:?}", b.artifact.thresholds.mode);
            let sha = b.artifact.encoder_sha256.clone().unwrap_or_default();
            let mut engine = Engine::new(b)?;
            let record = demo::probe(&mut engine)?;
            say!("bundle {}: OK", bundle.display());
            say!("  encoder sha256 {sha}, input 1x3x{h}x{w}, embedding {dim}");
            say!("  {clusters} clusters, {metric}, threshold rule {rule}");
            say!(
                "  one inference: score {:.4} (threshold {:.4}), {} us",
                record.score,
                record.threshold,
                record.latency.total_us()
            );
            Ok(())
        }
        Command::Bench {
            bundle,
            model,
            yuyv,
            source,
            frames,
            full_jpeg_decode,
            json,
        } => {
            if let Some(model) = model {
                let mut times = Encoder::load(&model)?
                    .session()?
                    .time(50, frames as usize)?;
                times.sort_unstable();
                let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
                let (p50, p99) = (at(0.5), at(0.99));
                if json {
                    say!(
                        "{}",
                        serde_json::json!({"model": model, "runs": times.len(), "p50_us": p50, "p99_us": p99,
                            "peak_memory_bytes": runner::peak_memory_bytes()})
                    );
                } else {
                    say!(
                        "{}: inference p50 {p50} us, p99 {p99} us over {} runs",
                        model.display(),
                        times.len()
                    );
                }
                return Ok(());
            }
            let b = match &bundle {
                Some(dir) => Bundle::load(dir)?,
                None => demo::bundle()?,
            };
            let mut engine = Engine::new(b)?;
            engine.set_scaled_jpeg(!full_jpeg_decode);
            let mut src: Box<dyn source::FrameSource> = match &source {
                Some(s) => {
                    let spec: SourceSpec = s.parse().map_err(anyhow::Error::msg)?;
                    let opts = source::SourceOptions {
                        looped: true,
                        ..Default::default()
                    };
                    source::open(&spec, &opts)?
                }
                None => match &yuyv {
                    Some(size) => Box::new(demo::synthetic_yuyv(size)?),
                    None => Box::new(demo::scenario(true)?),
                },
            };
            // warm-up: first frames plan the preprocessing and fault in tract's buffers
            let warm = RunLimits {
                max_frames: Some(20),
                max_consecutive_bad_frames: 1,
            };
            let stop = AtomicBool::new(false);
            runner::run(&mut engine, &mut src, &warm, &stop, |_| Ok(()))?;
            let limits = RunLimits {
                max_frames: Some(frames),
                max_consecutive_bad_frames: 1,
            };
            let summary = runner::run(&mut engine, &mut src, &limits, &stop, |_| Ok(()))?;
            if json {
                say!("{}", serde_json::to_string(&summary)?);
                Ok(())
            } else {
                print_summary(&summary, false)
            }
        }
        Command::FalseAlarms {
            fpr,
            k_of_n,
            clear_m,
            min_hold_ms,
            fps,
            hours,
            records,
            seed,
        } => {
            use rand::{Rng, SeedableRng};
            let pairs: Vec<(usize, usize)> = k_of_n
                .split(',')
                .map(|p| {
                    let (k, n) = p.split_once('/').context("k/n")?;
                    Ok((k.trim().parse()?, n.trim().parse()?))
                })
                .collect::<Result<_>>()
                .with_context(|| format!("--k-of-n {k_of_n:?}"))?;
            let frames = (hours * 3600.0 * fps) as usize;
            let replay: Option<Vec<bool>> = match &records {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| path.display().to_string())?;
                    let v: Vec<bool> = text
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| {
                            let r: serde_json::Value = serde_json::from_str(l)?;
                            r["ood"].as_bool().context("a record without `ood`")
                        })
                        .collect::<Result<_>>()
                        .with_context(|| path.display().to_string())?;
                    anyhow::ensure!(!v.is_empty(), "{}: no records", path.display());
                    Some(v)
                }
                None => None,
            };
            let rates: Vec<f64> = match &replay {
                Some(v) => vec![v.iter().filter(|&&o| o).count() as f64 / v.len() as f64],
                None => fpr
                    .split(',')
                    .map(|f| f.trim().parse::<f64>().map_err(anyhow::Error::from))
                    .collect::<Result<_>>()?,
            };
            say!(
                "| per-frame false-positive rate | k of n | false alarms per hour | share of time in OOD |"
            );
            say!("|---|---|---|---|");
            for &p in &rates {
                for &(k, n) in &pairs {
                    let cfg = oodmon_edge::alarm::AlarmConfig {
                        raise_k: k,
                        window_n: n,
                        clear_m,
                        min_hold_ms,
                        ..Default::default()
                    };
                    cfg.validate().map_err(anyhow::Error::msg)?;
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    let r = match &replay {
                        Some(v) => oodmon_edge::alarm::alarm_rate(
                            &cfg,
                            v.iter().copied().cycle().take(frames),
                            fps,
                        ),
                        None => oodmon_edge::alarm::alarm_rate(
                            &cfg,
                            (0..frames).map(|_| rng.random::<f64>() < p),
                            fps,
                        ),
                    };
                    say!(
                        "| {:.2}%{} | {k} of {n} | {:.1} | {:.3}% |",
                        100.0 * p,
                        if replay.is_some() { " (measured)" } else { "" },
                        r.raises_per_hour,
                        100.0 * r.ood_time_share
                    );
                }
            }
            Ok(())
        }
        Command::Demo {
            frame_delay_ms,
            quiet,
            serial,
            baud,
        } => {
            let link: Option<Box<dyn oodmon_edge::output::AlarmLink>> = match serial {
                Some(device) => Some(Box::new(
                    oodmon_edge::output::SerialLink::open(&oodmon_edge::output::SerialConfig {
                        device: Some(device),
                        baud,
                        scores: true,
                        ..Default::default()
                    })
                    .map_err(anyhow::Error::msg)?,
                )),
                None => None,
            };
            let summary =
                demo::play_with_alarms(frame_delay_ms, quiet, link, &mut std::io::stdout().lock())?;
            if !summary.passed() {
                anyhow::bail!("the demo did not reproduce its scenario (see the line above)");
            }
            Ok(())
        }
    }
}

/// The alarm outputs the configuration asks for; each is opened now, so a missing serial
/// port or GPIO chip stops start-up with a clear error.
fn outputs_from(cfg: &EdgeConfig) -> Result<oodmon_edge::service::Outputs> {
    let mut outputs = oodmon_edge::service::Outputs {
        scores: cfg.serial.scores,
        watchdog_ms: cfg.gpio.watchdog_ms,
        ..Default::default()
    };
    if cfg.serial.device.is_some() {
        let link =
            oodmon_edge::output::SerialLink::open(&cfg.serial).map_err(anyhow::Error::msg)?;
        log::info!(
            "alarms to {}",
            oodmon_edge::output::AlarmLink::describe(&link)
        );
        outputs.link = Some(Box::new(link));
    }
    if cfg.gpio.chip.is_some() {
        #[cfg(all(feature = "gpio", target_os = "linux"))]
        {
            let line =
                oodmon_edge::output::GpioLine::open(&cfg.gpio).map_err(anyhow::Error::msg)?;
            outputs.line = Some(Box::new(line));
        }
        #[cfg(not(all(feature = "gpio", target_os = "linux")))]
        anyhow::bail!("this build has no GPIO support (feature gpio, Linux only)");
    }
    if let Some(path) = &cfg.output.journal {
        let (journal, recovery) = oodmon_edge::journal::Journal::open(path)?;
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

/// One line of `--records`: the frame's record and its nearest class by name.
#[derive(serde::Serialize)]
struct RecordLine<'a> {
    #[serde(flatten)]
    record: &'a oodmon_edge::FrameRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    nearest_class_name: Option<&'a str>,
}

/// A live source (camera, pipe) or a looped file that runs out of frames is a failure, so
/// that a supervisor (`Restart=on-failure`) restarts the pipeline; a file read once may end.
fn source_ending(spec: &SourceSpec, looped: bool, summary: &RunSummary) -> Result<()> {
    if summary.ending != runner::Ending::SourceEnded {
        return Ok(());
    }
    let live = matches!(spec, SourceSpec::V4l { .. } | SourceSpec::Stdin { .. });
    if live || looped {
        anyhow::bail!(
            "the frame source ended after {} frames ({}): a {} must not end; exiting with an error so that a supervisor restarts the pipeline",
            summary.frames,
            if live { "the camera or pipe stopped delivering" } else { "the looped file cannot be read again" },
            if live { "live source" } else { "looped source" },
        );
    }
    eprintln!(
        "oodmon-edge: the file source ended after {} frames (no --loop)",
        summary.frames
    );
    Ok(())
}

fn print_summary(s: &RunSummary, to_stderr: bool) -> Result<()> {
    let l = &s.latency;
    let text = format!(
        "frames {} (OOD {}, bad {}) in {:.1} s, {:.1} frames/s\n\
         latency p50/p99 us: decode {}/{}, preprocess {}/{}, inference {}/{}, scoring {}/{}, total {}/{}\n\
         peak memory {}",
        s.frames,
        s.ood_frames,
        s.bad_frames,
        s.elapsed_s,
        s.frames_per_second,
        l.decode.p50_us,
        l.decode.p99_us,
        l.preprocess.p50_us,
        l.preprocess.p99_us,
        l.inference.p50_us,
        l.inference.p99_us,
        l.scoring.p50_us,
        l.scoring.p99_us,
        l.total.p50_us,
        l.total.p99_us,
        s.peak_memory_bytes
            .map(|b| format!("{:.1} MB", b as f64 / 1e6))
            .unwrap_or_else(|| "unknown".into()),
    );
    if to_stderr {
        eprintln!("{text}");
    } else {
        say!("{text}");
    }
    Ok(())
}
