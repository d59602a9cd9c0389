//! `oodmon-edge`: run a deployed bundle on camera frames, check a bundle, benchmark the
//! pipeline, or play the built-in demo.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use oodmon_cli::say;
use oodmon_edge::app::{self, bench::BenchFrames, false_alarms};
use oodmon_runtime::Backend;

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
    Run(RunArgs),
    /// Validate a bundle (hashes, shapes, schema) and run one inference.
    Check {
        #[arg(long)]
        bundle: PathBuf,
        /// The engine to run the encoder on: tract, tract-cuda, onnxruntime.
        #[arg(long, default_value = "tract")]
        backend: Backend,
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
        /// Frame source; the built-in MJPEG scenario (320x240 camera frames) when omitted.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, default_value_t = 500)]
        frames: u64,
        /// Decode JPEG frames at full resolution (no DCT scaling), as `[camera]
        /// scaled_jpeg_decode = false` does.
        #[arg(long)]
        full_jpeg_decode: bool,
        /// Prepare the next frame on this thread while the model judges the current one on
        /// a second thread (as `run` does by default on two cores or more).
        #[arg(long)]
        overlap: bool,
        /// With --overlap: cut the encoder in two and run this share of its multiply-adds
        /// on the frame thread (as `[pipeline] model_head_share`; 0: not cut).
        #[arg(
            long,
            allow_negative_numbers = true,
            default_value_t = oodmon_edge::config::DEFAULT_MODEL_HEAD_SHARE
        )]
        model_head_share: f64,
        /// The engine to run the encoder on: tract, tract-cuda, onnxruntime.
        #[arg(long, default_value = "tract")]
        backend: Backend,
        /// Degrade every frame with a camera corruption, KIND:SEVERITY (e.g. fog:3).
        #[arg(long)]
        corrupt: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Play the built-in scenario through the built-in bundle: in-distribution frames,
    /// then out-of-distribution ones, then in-distribution again.
    Demo {
        /// Play the scenario through this bundle instead of the built-in one (a candidate
        /// default must reproduce the scenario before it replaces the built-in bundle).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Pause between frames, milliseconds (the scenario's camera rate by default).
        #[arg(long)]
        frame_delay_ms: Option<u64>,
        /// The closing summary only: no per-frame lines, no pause between frames.
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

#[derive(clap::Args)]
struct RunArgs {
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
    /// Prepare frame N+1 while the model judges frame N, on two threads: auto (the
    /// default: with two cores or more), on, off. A camera then drops the oldest frame
    /// when the model falls behind, and too many drops are a FAULT (frames_dropped).
    #[arg(long)]
    overlap: Option<oodmon_edge::config::OverlapMode>,
    /// The engine to run the encoder on: tract (default), tract-cuda, onnxruntime (when
    /// built with those cargo features); overrides `[pipeline] backend`.
    #[arg(long)]
    backend: Option<Backend>,
    /// Degrade every frame with a camera corruption, KIND:SEVERITY (e.g. darken:4), to see
    /// what the monitor does with a bad camera (a test tool).
    #[arg(long)]
    corrupt: Option<String>,
    /// Do not judge frames by the calibration's image-quality bounds (no camera FAULT
    /// reasons); overrides `[camera] guards`.
    #[arg(long)]
    no_guards: bool,
    /// Keep the frames around each alarm (OOD or FAULT) in this directory, one
    /// sub-directory per journal event (needs --journal; `[evidence]` for the window and
    /// the size cap).
    #[arg(long)]
    evidence: Option<PathBuf>,
    /// Publish alarm events, state and heartbeats to this MQTT broker (mqtt://HOST:PORT),
    /// from the journal (needs --journal); topics under oodmon/FLEET/VEHICLE.
    #[arg(long)]
    mqtt: Option<String>,
    /// Fleet name, the topic level after `oodmon/` (default: default).
    #[arg(long)]
    fleet: Option<String>,
    /// This vehicle's id in the fleet.
    #[arg(long)]
    vehicle: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // the demo owns the terminal: only warnings from it by default
    let default_log = match cli.command {
        Command::Demo { .. } => "warn,oodmon_edge::alarm::service=error",
        _ => "warn,oodmon_edge=info",
    };
    oodmon_cli::main("oodmon-edge", default_log, || match cli.command {
        Command::Run(a) => run_cmd(a),
        Command::Check { bundle, backend } => {
            let report = app::check::check(&bundle, backend)?;
            say!("bundle {}: OK\n{report}", bundle.display());
            Ok(())
        }
        Command::Bench {
            bundle,
            model,
            yuyv,
            source,
            frames,
            full_jpeg_decode,
            overlap,
            model_head_share,
            backend,
            corrupt,
            json,
        } => bench(
            bundle,
            model,
            yuyv,
            source,
            app::bench::PipelineOptions {
                frames,
                full_jpeg_decode,
                overlap,
                model_head_share,
                backend,
                corrupt: corrupt.as_deref().map(str::parse).transpose()?,
            },
            json,
        ),
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
            let study = false_alarms::FalseAlarmStudy {
                rates: false_alarms::parse_rates(&fpr)?,
                k_of_n: false_alarms::parse_k_of_n(&k_of_n)?,
                clear_m,
                min_hold_ms,
                fps,
                hours,
                seed,
            };
            false_alarms_cmd(&study, records.as_deref())
        }
        Command::Demo {
            bundle,
            frame_delay_ms,
            quiet,
            serial,
            baud,
        } => demo(bundle.as_deref(), frame_delay_ms, quiet, serial, baud),
    })
}

fn bench(
    bundle: Option<PathBuf>,
    model: Option<PathBuf>,
    yuyv: Option<String>,
    source: Option<String>,
    options: app::bench::PipelineOptions,
    json: bool,
) -> Result<()> {
    let (frames, backend) = (options.frames, options.backend);
    if frames == 0 {
        return Err(oodmon_edge::EdgeError::invalid("--frames", "0: nothing to time").into());
    }
    if !options.overlap && options.model_head_share != oodmon_edge::config::DEFAULT_MODEL_HEAD_SHARE
    {
        log::warn!("--model-head-share applies with --overlap only: ignored");
    }
    if let Some(model) = model {
        let t = app::bench::inference(&model, frames as usize, backend)?;
        if json {
            say!("{}", serde_json::to_string(&t)?);
        } else {
            say!(
                "{} on {backend} ({}): inference p50 {} us, p99 {} us over {} runs",
                model.display(),
                t.own_kernels,
                t.p50_us,
                t.p99_us,
                t.runs
            );
        }
        return Ok(());
    }
    let frames_from = match (source, yuyv) {
        (Some(s), _) => BenchFrames::Source(s),
        (None, Some(size)) => BenchFrames::SyntheticYuyv(size),
        (None, None) => BenchFrames::Scenario,
    };
    let summary = app::bench::pipeline(bundle.as_deref(), &frames_from, &options)?;
    if json {
        say!("{}", serde_json::to_string(&summary)?);
    } else {
        say!("{}", app::run::summary_text(&summary));
    }
    Ok(())
}

fn demo(
    bundle: Option<&std::path::Path>,
    frame_delay_ms: Option<u64>,
    quiet: bool,
    serial: Option<String>,
    baud: u32,
) -> Result<()> {
    let link: Option<Box<dyn oodmon_edge::output::AlarmLink>> = match serial {
        Some(device) => Some(Box::new(oodmon_edge::output::SerialLink::open(
            &oodmon_edge::output::SerialConfig {
                device: Some(device),
                baud,
                scores: true,
                ..Default::default()
            },
        )?)),
        None => None,
    };
    let stdout = std::io::stdout();
    let lines = app::demo::StatusLines::for_output(quiet, stdout.is_terminal());
    let summary =
        app::demo::play_with_alarms(bundle, frame_delay_ms, lines, link, &mut stdout.lock())?;
    if !summary.passed() {
        anyhow::bail!("the demo did not reproduce its scenario (see the line above)");
    }
    Ok(())
}

fn false_alarms_cmd(
    study: &false_alarms::FalseAlarmStudy,
    records: Option<&std::path::Path>,
) -> Result<()> {
    let replay = records.map(false_alarms::read_decisions).transpose()?;
    let rows = false_alarms::study(study, replay.as_deref())?;
    say!("{}", false_alarms::to_markdown(&rows).trim_end());
    Ok(())
}

fn run_cmd(a: RunArgs) -> Result<()> {
    let overrides = app::run::Overrides {
        bundle: a.bundle,
        source: a.source,
        records: a.records,
        max_frames: a.max_frames,
        looped: a.looped,
        max_bad_frames: a.max_bad_frames,
        serial: a.serial,
        baud: a.baud,
        scores: a.scores,
        journal: a.journal,
        overlap: a.overlap,
        backend: a.backend,
        corrupt: a.corrupt,
        no_guards: a.no_guards,
        evidence: a.evidence,
        mqtt: a.mqtt,
        fleet: a.fleet,
        vehicle: a.vehicle,
    };
    let cfg = app::run::settings(a.config.as_deref(), overrides)?;
    let stop = oodmon_cli::stop_flag()?;
    match app::run::run(&cfg, &stop, &mut std::io::stdout().lock()) {
        // `--records - | head`: the reader went away, which ends the run, not a failure
        Err(oodmon_edge::EdgeError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}
