//! `oodmon-trainer`: train an encoder, embed data for calibration, fit a calibration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use oodmon_calibration::artifact::InputChecksum;
use oodmon_calibration::io::sha256_file;
use oodmon_calibration::{
    calibrate, npy, CalibrationArtifact, ClusterSpec, Embeddings, FitConfig, Metric,
    PreprocessSpec, Provenance, ThresholdMode,
};
use oodmon_data::embed::{dataset_inputs, embed_loaded, for_each_input};
use oodmon_onnx::{quantize, to_f16, QuantForm, RangeMethod};
use oodmon_runtime::Bundle;
use oodmon_runtime::Encoder;
use oodmon_trainer::data::{self, DataSpec, Split};
use oodmon_trainer::export;
use oodmon_trainer::loss::LossKind;
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::train::{self, EpochLog, Progress, RunDir, TrainConfig};

/// `println!` that returns a closed pipe (`| head`) as an error instead of panicking;
/// `main` treats that error as success.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

#[derive(Parser)]
#[command(
    name = "oodmon-trainer",
    version,
    about = "Train oodmon encoders with libtorch and embed data for calibration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How int8 activation scales are estimated.
#[derive(clap::Args)]
struct QuantArgs {
    /// Images whose activations set the int8 scales.
    #[arg(long, default_value_t = 256)]
    calib_samples: usize,
    /// Activation range estimate: minmax, entropy or percentile:P (e.g. percentile:99.99).
    #[arg(long, default_value = "minmax")]
    range: String,
    /// Graph form: qdq (QuantizeLinear/DequantizeLinear pairs, the fast one in tract) or
    /// operator (QLinearConv).
    #[arg(long, value_enum, default_value = "qdq")]
    form: FormArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormArg {
    Qdq,
    Operator,
}

impl From<FormArg> for QuantForm {
    fn from(f: FormArg) -> Self {
        match f {
            FormArg::Qdq => QuantForm::Qdq,
            FormArg::Operator => QuantForm::Operator,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Train an encoder with cross-entropy, SupCon or SimCLR.
    Train {
        /// cifar10:DIR | cifar100:DIR | idx:DIR | folder:DIR
        #[arg(long)]
        data: String,
        #[arg(long, default_value = "edge")]
        arch: Arch,
        #[arg(long, default_value = "ce")]
        loss: LossKind,
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 0.1)]
        lr: f64,
        #[arg(long, default_value_t = 5e-4)]
        wd: f64,
        #[arg(long, default_value_t = 0.1)]
        temperature: f64,
        #[arg(long, default_value_t = 1)]
        warmup_epochs: usize,
        /// Edge encoder channel multiplier.
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Edge encoder embedding size.
        #[arg(long, default_value_t = 128)]
        embed_dim: usize,
        /// Input size (square); images are brought to it by the preprocessing spec.
        #[arg(long, default_value_t = 32)]
        input_size: u32,
        /// Fraction of each class held out for validation and calibration.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop each epoch after this many steps (smoke runs).
        #[arg(long)]
        max_steps: Option<usize>,
        /// Continue the run in --out from its last checkpoint.
        #[arg(long)]
        resume: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed a data set with a trained encoder: embeddings as .npy for oodmon-calibrate.
    Embed {
        #[arg(long)]
        run: PathBuf,
        #[arg(long)]
        data: String,
        /// train | test | val (the run's held-out split of the training set)
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long, default_value = "auto")]
        device: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Embed through this ONNX export of the run in tract (the edge's runtime, e.g. the
        /// int8 model) instead of the libtorch model; the run still defines the splits.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Write the run's encoder as ONNX (batch norm folded, embedding output, preprocessing
    /// spec and provenance in the metadata).
    Export {
        #[arg(long)]
        run: PathBuf,
        /// Name the batch dimension instead of fixing it to 1.
        #[arg(long)]
        dynamic_batch: bool,
        /// Quantize to int8 (QDQ: per-channel symmetric weights, per-tensor activation
        /// scales from --calib-data).
        #[arg(long, requires = "calib_data")]
        int8: bool,
        /// ID images whose activations set the int8 scales (their train split).
        #[arg(long)]
        calib_data: Option<String>,
        #[command(flatten)]
        quant: QuantArgs,
        /// Store weights and compute in float16 (input and output stay float32).
        #[arg(long, conflicts_with = "int8")]
        f16: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Training throughput on a fixed random batch (the same work as
    /// bench/train_reference.py in PyTorch); prints JSON.
    Bench {
        #[arg(long, default_value = "edge")]
        arch: Arch,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Intra-op threads (libtorch's default is the number of cores).
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Embed the run's ID training and held-out splits and fit a calibration in one step.
    Fit {
        #[arg(long)]
        run: PathBuf,
        /// class | kmeans:K | kmeans-per-class:K
        #[arg(long, default_value = "class")]
        clusters: String,
        /// euclidean | cosine | mahalanobis | mahalanobis-per-cluster | knn:K
        #[arg(long, default_value = "cosine")]
        metric: String,
        #[arg(long)]
        normalize: bool,
        #[arg(long, conflicts_with = "alpha")]
        target_tpr: Option<f64>,
        #[arg(long)]
        alpha: Option<f64>,
        #[arg(long, conflicts_with = "alpha")]
        per_cluster: bool,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Write a deployable bundle directory (--out) instead of calib.json: the encoder is
        /// exported (and quantized with --int8) and the calibration computed through tract,
        /// exactly as the edge will run it.
        #[arg(long)]
        bundle: bool,
        #[arg(long, requires = "bundle")]
        int8: bool,
        #[command(flatten)]
        quant: QuantArgs,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(e) = err.downcast_ref::<std::io::Error>() {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("oodmon-trainer: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Bar {
    bar: Option<ProgressBar>,
    epochs: usize,
}

impl Progress for Bar {
    fn epoch_start(&mut self, epoch: usize, steps: usize) {
        let bar = ProgressBar::new(steps as u64);
        // a constant template: it parses, or the default style is as good
        if let Ok(style) =
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{}/{}", epoch + 1, self.epochs));
        self.bar = Some(bar);
    }
    fn step(&mut self, loss: f64, accuracy: Option<f64>, ips: f64) {
        if let Some(b) = &self.bar {
            let acc = accuracy
                .map(|a| format!(" acc {:.1}%", 100.0 * a))
                .unwrap_or_default();
            b.set_message(format!("loss {loss:.4}{acc} {ips:.0} img/s"));
            b.inc(1);
        }
    }
    fn epoch_end(&mut self, log: &EpochLog) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let val = log
            .val_accuracy
            .map(|a| format!(", validation {:.2}%", 100.0 * a))
            .unwrap_or_default();
        // A closed stdout must not stop training: the epoch is in log.jsonl regardless.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout().lock(),
            "epoch {}: loss {:.4}{}{val}, {:.0} img/s, {:.0}s",
            log.epoch + 1,
            log.loss,
            log.accuracy
                .map(|a| format!(", train acc {:.2}%", 100.0 * a))
                .unwrap_or_default(),
            log.images_per_second,
            log.seconds
        );
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train {
            data,
            arch,
            loss,
            epochs,
            batch,
            lr,
            wd,
            temperature,
            warmup_epochs,
            width,
            embed_dim,
            input_size,
            val_fraction,
            device,
            seed,
            max_steps,
            resume,
            out,
        } => {
            data.parse::<DataSpec>()?;
            let head = match loss {
                LossKind::Ce => Head::Classifier { classes: 0 },
                _ => Head::Projection { dim: 128 },
            };
            let cfg = TrainConfig {
                data,
                model: ModelConfig {
                    arch,
                    width,
                    embed_dim,
                    head,
                },
                loss,
                epochs,
                batch,
                lr,
                weight_decay: wd,
                momentum: 0.9,
                warmup_epochs,
                temperature,
                val_fraction,
                seed,
                preprocessing: PreprocessSpec::cifar(input_size),
                max_steps_per_epoch: max_steps,
            };
            let device = train::parse_device(&device)?;
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            ctrlc::set_handler(move || {
                eprintln!("\ninterrupted: saving a checkpoint after this step");
                flag.store(true, Ordering::SeqCst);
            })
            .context("installing the Ctrl-C handler")?;
            say!("training on {device:?}");
            let mut bar = Bar { bar: None, epochs };
            train::train(&cfg, &out, device, resume, stop.clone(), &mut bar)?;
            if stop.load(Ordering::SeqCst) {
                say!(
                    "checkpoint saved in {}; continue with --resume",
                    out.display()
                );
            } else {
                say!("run saved in {}", out.display());
            }
            Ok(())
        }
        Command::Embed {
            run,
            data,
            split,
            device,
            out,
            labels,
            model,
        } => {
            let rd = RunDir(run.clone());
            let cfg = rd.load_config()?;
            // the libtorch model, or an ONNX export of it in tract; the run defines the splits
            enum Backend {
                // the layers share the loaded weights' storage; the var store may go
                Torch(Box<oodmon_trainer::model::Net>, tch::Device),
                Tract(Encoder),
            }
            let backend = match &model {
                Some(m) => Backend::Tract(Encoder::load(m)?),
                None => {
                    let device = train::parse_device(&device)?;
                    let (mut vs, net) = train::build(&cfg.model, device);
                    vs.load(rd.weights())
                        .with_context(|| rd.weights().display().to_string())?;
                    Backend::Torch(Box::new(net), device)
                }
            };
            let dim = match &backend {
                Backend::Torch(net, _) => net.encoder.dim,
                Backend::Tract(enc) => enc.dim(),
            };
            let (embeddings, ids) = match split.as_str() {
                "train" | "val" if data == cfg.data => {
                    // the run's own stratified split of its training set
                    let (tr, va) = train::splits(&cfg)?;
                    let ds = if split == "train" { tr } else { va };
                    let e = match &backend {
                        Backend::Torch(net, device) => {
                            train::embed_dataset(net, &ds, &cfg.preprocessing, *device, 256)?
                        }
                        Backend::Tract(enc) => embed_loaded(enc, &cfg.preprocessing, &ds)?
                            .as_slice()
                            .to_vec(),
                    };
                    (e, ds.labels)
                }
                "val" => bail!(
                    "--split val needs --data {} (the run's training data)",
                    cfg.data
                ),
                "train" | "test" => {
                    let which = if split == "train" {
                        Split::Train
                    } else {
                        Split::Test
                    };
                    let spec = data.parse::<DataSpec>()?;
                    match &backend {
                        Backend::Torch(net, device) => {
                            let (e, l, _) = train::embed_images(
                                net,
                                &spec,
                                which,
                                &cfg.preprocessing,
                                *device,
                                256,
                            )?;
                            (e, l)
                        }
                        Backend::Tract(enc) => {
                            let e = oodmon_data::embed::embed_dataset(
                                enc,
                                &cfg.preprocessing,
                                &spec,
                                which,
                                None,
                            )?;
                            (e.embeddings.as_slice().to_vec(), e.labels)
                        }
                    }
                }
                other => bail!("--split {other:?}: expected train, val or test"),
            };
            let rows = ids.len();
            npy::write_embeddings(&out, &Embeddings::new(rows, dim, embeddings)?)?;
            if let Some(l) = labels {
                npy::write_labels(&l, &ids)?;
            }
            let through = model
                .as_ref()
                .map(|m| format!(" through {}", m.display()))
                .unwrap_or_default();
            say!(
                "wrote {rows} embeddings of dimension {dim}{through} to {}",
                out.display()
            );
            Ok(())
        }
        Command::Export {
            run,
            dynamic_batch,
            int8,
            calib_data,
            quant,
            f16,
            out,
        } => {
            let rd = RunDir(run.clone());
            let cfg = rd.load_config()?;
            let (mut vs, net) = train::build(&cfg.model, tch::Device::Cpu);
            vs.load(rd.weights())
                .with_context(|| rd.weights().display().to_string())?;
            let mut bytes = export::export_onnx(
                &net,
                &cfg.preprocessing,
                &provenance(&rd, &cfg)?,
                dynamic_batch,
            )?;
            if int8 {
                let method = parse_range(&quant.range)?;
                let spec: DataSpec = calib_data.as_deref().unwrap_or_default().parse()?;
                let mut images = Vec::new();
                for_each_input(
                    &cfg.preprocessing,
                    &spec,
                    Split::Train,
                    Some(quant.calib_samples),
                    |t, _| {
                        images.push(t.to_vec());
                        Ok(())
                    },
                )?;
                bytes = quantize(&bytes, &images, method, quant.form.into())?;
                say!(
                    "quantized to int8 ({:?} form) with {} calibration images",
                    QuantForm::from(quant.form),
                    images.len()
                );
            }
            if f16 {
                bytes = to_f16(&bytes)?;
                say!("converted to float16");
            }
            oodmon_calibration::io::write_atomic(&out, |w| w.write_all(&bytes))?;
            say!(
                "wrote {} ({} bytes, sha256 {})",
                out.display(),
                bytes.len(),
                oodmon_calibration::io::sha256_bytes(&bytes)
            );
            Ok(())
        }
        Command::Bench {
            arch,
            batch,
            steps,
            threads,
            device,
        } => {
            tch::set_num_threads(threads);
            let model = ModelConfig {
                arch,
                width: 1.0,
                embed_dim: 128,
                head: Head::Classifier { classes: 10 },
            };
            let step =
                train::bench_steps(&model, batch, steps.max(1), train::parse_device(&device)?)?;
            say!(
                "{{\"arch\": \"{}\", \"images_per_second\": {}, \"median_step_seconds\": {step}}}",
                serde_json::to_value(arch)?.as_str().unwrap_or("?"),
                batch as f64 / step
            );
            Ok(())
        }
        Command::Fit {
            run,
            clusters,
            metric,
            normalize,
            target_tpr,
            alpha,
            per_cluster,
            device,
            bundle,
            int8,
            quant,
            out,
        } => {
            let rd = RunDir(run.clone());
            let cfg = rd.load_config()?;
            let device = if bundle {
                tch::Device::Cpu
            } else {
                train::parse_device(&device)?
            };
            let (mut vs, net) = train::build(&cfg.model, device);
            vs.load(rd.weights())
                .with_context(|| rd.weights().display().to_string())?;
            let (train_ds, val_ds) = train::splits(&cfg)?;
            if val_ds.is_empty() {
                bail!(
                    "{}: the run holds out no calibration split (val_fraction 0)",
                    rd.config().display()
                );
            }
            let dim = net.encoder.dim;
            // With --bundle the embeddings come from the exported encoder in tract.
            let encoder = if bundle {
                let mut bytes =
                    export::export_onnx(&net, &cfg.preprocessing, &provenance(&rd, &cfg)?, false)?;
                if int8 {
                    let rows: Vec<usize> = (0..train_ds.len().min(quant.calib_samples)).collect();
                    let images = dataset_inputs(&train_ds, &rows, &cfg.preprocessing)?;
                    bytes = quantize(
                        &bytes,
                        &images,
                        parse_range(&quant.range)?,
                        quant.form.into(),
                    )?;
                }
                let enc = Encoder::from_bytes(&bytes, &out.join("encoder.onnx"))?;
                Some((bytes, enc))
            } else {
                None
            };
            let embed = |ds: &data::Dataset| -> Result<Embeddings> {
                Ok(match &encoder {
                    Some((_, enc)) => embed_loaded(enc, &cfg.preprocessing, ds)?,
                    None => Embeddings::new(
                        ds.len(),
                        dim,
                        train::embed_dataset(&net, ds, &cfg.preprocessing, device, 256)?,
                    )?,
                })
            };
            let (train_e, calib_e) = (embed(&train_ds)?, embed(&val_ds)?);
            let mode = ThresholdMode::from_options(target_tpr, alpha, per_cluster);
            let mut fit = FitConfig::new(ClusterSpec::parse(&clusters)?, Metric::parse(&metric)?);
            fit.normalize = normalize;
            fit.kmeans.seed = cfg.seed;
            let (model, thresholds) =
                calibrate(&train_e, Some(&train_ds.labels), &calib_e, &fit, mode)?;
            let inputs = [("weights", rd.weights()), ("run_config", rd.config())]
                .into_iter()
                .map(|(role, p)| {
                    Ok(InputChecksum {
                        role: role.into(),
                        sha256: sha256_file(&p)?,
                        path: p.display().to_string(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let artifact = CalibrationArtifact::new(
                fit,
                model,
                thresholds,
                train_ds.class_names.clone(),
                encoder
                    .as_ref()
                    .map(|(b, _)| oodmon_calibration::io::sha256_bytes(b)),
                Some(cfg.preprocessing.clone()),
                Provenance::now("oodmon-trainer", inputs, std::env::args().collect()),
            )?;
            match &encoder {
                Some((bytes, _)) => Bundle::write(&out, bytes, &artifact)?,
                None => artifact.save(&out)?,
            }
            say!(
                "wrote {}: {} clusters, {} on {} training and {} calibration embeddings, threshold {:.6}",
                out.display(),
                artifact.model.clusters(),
                artifact.model.metric.name(),
                train_e.rows(),
                calib_e.rows(),
                artifact.thresholds.global
            );
            Ok(())
        }
    }
}

/// The run's configuration and weights hash, stored in an exported model's metadata.
fn provenance(rd: &RunDir, cfg: &TrainConfig) -> Result<String> {
    Ok(serde_json::json!({
        "run_config": cfg,
        "weights_sha256": sha256_file(&rd.weights())?,
        "tool": format!("oodmon-trainer {}", env!("CARGO_PKG_VERSION")),
    })
    .to_string())
}

fn parse_range(range: &str) -> Result<RangeMethod> {
    Ok(match range {
        "minmax" => RangeMethod::MinMax,
        "entropy" => RangeMethod::Entropy,
        other => match other
            .strip_prefix("percentile:")
            .and_then(|p| p.parse().ok())
        {
            Some(percentile) => RangeMethod::Percentile { percentile },
            None => bail!("--range {other:?}: expected minmax, entropy or percentile:P"),
        },
    })
}
