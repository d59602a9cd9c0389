//! `oodmon-trainer`: train an encoder, embed data for calibration, fit a calibration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use oodmon_calibration::{npy, ClusterSpec, FitConfig, Metric, PreprocessSpec, ThresholdMode};
use oodmon_cli::say;
use oodmon_onnx::{QuantForm, RangeMethod};
use oodmon_trainer::calibrate::{fit_run, FitRequest};
use oodmon_trainer::data::DataSpec;
use oodmon_trainer::efficientnet::LiteTap;
use oodmon_trainer::embedding::{embed_run, EmbedRequest};
use oodmon_trainer::export::{export_run, Int8};
use oodmon_trainer::loss::LossKind;
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::pretrained::{import, ImportRequest};
use oodmon_trainer::train::{self, EpochLog, Progress, TrainConfig};

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
    Train(TrainArgs),
    /// Embed a data set with a trained encoder: embeddings as .npy for oodmon-calibrate.
    Embed(EmbedArgs),
    /// Write the run's encoder as ONNX (batch norm folded, embedding output, preprocessing
    /// spec and provenance in the metadata).
    Export(ExportArgs),
    /// Training throughput on a fixed random batch (the same work as
    /// bench/train_reference.py in PyTorch); prints JSON.
    Bench(BenchArgs),
    /// Embed the run's ID training and held-out splits and fit a calibration in one step.
    Fit(FitArgs),
    /// Import an ImageNet-pretrained backbone (a PyTorch state dict, e.g. EfficientNet-Lite0's
    /// `efficientnet-lite0-57934424.pth`) into a run: frozen features that `embed`, `fit` and
    /// `export` use at once, or the start of fine-tuning.
    ImportPretrained(ImportArgs),
    /// The most likely classes of an image under a run's classifier head (for an imported
    /// ImageNet backbone: a check that the weights arrived whole).
    Classify(ClassifyArgs),
    /// Average the weights of finished runs that differ only in their seed (a uniform model
    /// soup) into a new run that `embed`, `fit` and `export` take like a trained one.
    Average(AverageArgs),
}

#[derive(clap::Args)]
struct AverageArgs {
    /// The runs, two or more, trained with the same settings and --split-seed.
    #[arg(long, num_args = 2.., required = true)]
    runs: Vec<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct ClassifyArgs {
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    image: PathBuf,
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Also write the encoder's input [1, 3*H*W] and the logits [1, C] as .npy, with
    /// this prefix (PREFIX-input.npy, PREFIX-logits.npy).
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ImportArgs {
    #[arg(long, default_value = "efficientnet-lite0")]
    arch: Arch,
    /// The checkpoint: `.pth` (converted with PyTorch, tensors only) or `.npz`.
    #[arg(long)]
    weights: PathBuf,
    /// The in-distribution data of the run: cifar10:DIR | cifar100:DIR | idx:DIR | folder:DIR
    #[arg(long)]
    data: String,
    /// Square input size (the preprocessing brings every image or frame to it).
    #[arg(long, default_value_t = 224)]
    input_size: u32,
    /// Bring every image or frame to this size first (e.g. 32 for CIFAR-10 data), so
    /// camera frames carry no more detail than the training images.
    #[arg(long)]
    detail_size: Option<u32>,
    /// Fraction of each class held out for calibration.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Python with PyTorch, to read `.pth` files (default: $OODMON_PYTHON, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct TrainArgs {
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
    /// Edge encoder embedding: 0 takes the pooled ReLU features themselves (128 x --width
    /// channels); N > 0 puts a linear layer to N dimensions on them, which cost 3 (MNIST)
    /// and 9 (DTD10) AUROC points of the cosine score after 5 cross-entropy epochs
    /// (EVALUATION.md).
    #[arg(long, default_value_t = 0)]
    embed_dim: usize,
    /// Input size (square); images are brought to it by the preprocessing spec.
    #[arg(long, default_value_t = 32)]
    input_size: u32,
    /// Bring every image or frame to this size first (e.g. 32 for CIFAR-10 data), so
    /// camera frames carry no more detail than the training images.
    #[arg(long)]
    detail_size: Option<u32>,
    /// Fraction of each class held out for validation and calibration.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Initialisation, shuffling and augmentation; also the held-out split's unless
    /// --split-seed is given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The held-out split's seed, so runs that differ only in --seed hold out the same images.
    #[arg(long)]
    split_seed: Option<u64>,
    /// Stop each epoch after this many steps (smoke runs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Fine-tune: start the encoder from this run (made by `import-pretrained`).
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// The encoder's learning rate as a fraction of --lr (the head's); default 0.1 when
    /// fine-tuning, 1 otherwise.
    #[arg(long)]
    backbone_lr_scale: Option<f64>,
    /// Keep the stem and the first N stages frozen (efficientnet-lite0, 0-7).
    #[arg(long, default_value_t = 0)]
    freeze_stages: usize,
    /// Train on these classes only (e.g. 2,3,4,5,6,7: an open-set split's known classes),
    /// relabelled 0.. in the order given.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<usize>>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct EmbedArgs {
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
    /// At most this many rows: evenly spaced over the run's own train/val split (all
    /// classes keep their share), the first ones of any other split.
    #[arg(long)]
    max_rows: Option<usize>,
}

#[derive(clap::Args)]
struct ExportArgs {
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
    /// EfficientNet-Lite: the embedding is the pooled features after the head convolution
    /// (`head`, 1280) or the last block's (`blocks`, 320: a truncated backbone).
    #[arg(long, default_value = "head")]
    features: LiteTap,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct BenchArgs {
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
    /// Side of the square input batch (the edge encoder and ResNet-18 train at CIFAR's
    /// 32; EfficientNet-Lite0 at the fine-tune's 64-224).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(i64).range(1..=1024))]
    input_size: i64,
}

#[derive(clap::Args)]
struct FitArgs {
    #[arg(long)]
    run: PathBuf,
    /// class | kmeans:K | kmeans-per-class:K
    #[arg(long, default_value = "class")]
    clusters: String,
    /// euclidean | cosine | mahalanobis | mahalanobis-per-cluster | mahalanobis++ |
    /// mahalanobis++:R (R leading directions, the rest flattened) | relative-mahalanobis |
    /// knn:K
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
}

fn main() -> ExitCode {
    oodmon_cli::main("oodmon-trainer", "warn", || run(Cli::parse()))
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

impl QuantArgs {
    fn int8(&self) -> Result<Int8> {
        Ok(Int8 {
            range: RangeMethod::parse(&self.range)?,
            form: self.form.into(),
            samples: self.calib_samples,
        })
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train_cmd(a),
        Command::Embed(a) => embed(a),
        Command::Export(a) => export(a),
        Command::Bench(a) => bench(a),
        Command::Fit(a) => fit(a),
        Command::ImportPretrained(a) => import_pretrained(a),
        Command::Classify(a) => classify_cmd(a),
        Command::Average(a) => average(a),
    }
}

fn average(a: AverageArgs) -> Result<()> {
    let done = oodmon_trainer::average::average_runs(&a.runs, &a.out)?;
    say!(
        "averaged {} tensors of {} runs (seeds {:?}) into {}",
        done.tensors,
        a.runs.len(),
        done.seeds,
        a.out.display()
    );
    Ok(())
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let TrainArgs {
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
        detail_size,
        val_fraction,
        device,
        seed,
        split_seed,
        max_steps,
        resume,
        pretrained,
        backbone_lr_scale,
        freeze_stages,
        classes,
        out,
    } = a;

    data.parse::<DataSpec>()?;
    let mut preprocessing = match arch {
        Arch::EfficientnetLite0 => PreprocessSpec::imagenet(input_size),
        _ => PreprocessSpec::cifar(input_size),
    };
    preprocessing.detail_size = detail_size;
    let backbone_lr_scale =
        backbone_lr_scale.unwrap_or(if pretrained.is_some() { 0.1 } else { 1.0 });
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
        split_seed,
        preprocessing,
        max_steps_per_epoch: max_steps,
        pretrained,
        backbone_lr_scale,
        freeze_stages,
        classes,
        averaged_from: None,
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
    // not a success when stopped early: a caller must not take the run as trained
    train::RunDir(out.clone()).require_finished(epochs)?;
    say!("run saved in {}", out.display());
    Ok(())
}

fn embed(a: EmbedArgs) -> Result<()> {
    let EmbedArgs {
        run,
        data,
        split,
        device,
        out,
        labels,
        model,
        max_rows,
    } = a;

    let request = EmbedRequest {
        run,
        data,
        split,
        device,
        model: model.clone(),
        max_rows,
    };
    let (embeddings, ids) = embed_run(&request)?;
    npy::write_embeddings(&out, &embeddings)?;
    if let Some(l) = labels {
        npy::write_labels(&l, &ids)?;
    }
    let through = model
        .as_ref()
        .map(|m| format!(" through {}", m.display()))
        .unwrap_or_default();
    say!(
        "wrote {} embeddings of dimension {}{through} to {}",
        embeddings.rows(),
        embeddings.dim(),
        out.display()
    );
    Ok(())
}

fn export(a: ExportArgs) -> Result<()> {
    let ExportArgs {
        run,
        dynamic_batch,
        int8,
        calib_data,
        quant,
        f16,
        features,
        out,
    } = a;

    let q = quant.int8()?;
    let calib = calib_data.unwrap_or_default();
    let exported = export_run(
        &run,
        dynamic_batch,
        int8.then_some((&q, calib.as_str())),
        f16,
        features,
    )?;
    if let Some(n) = exported.int8_images {
        say!(
            "quantized to int8 ({:?} form) with {n} calibration images",
            q.form
        );
    }
    if f16 {
        say!("converted to float16");
    }
    let bytes = exported.bytes;
    oodmon_calibration::io::write_atomic(&out, |w| w.write_all(&bytes))?;
    say!(
        "wrote {} ({} bytes, sha256 {})",
        out.display(),
        bytes.len(),
        oodmon_calibration::io::sha256_bytes(&bytes)
    );
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let BenchArgs {
        arch,
        batch,
        steps,
        threads,
        device,
        input_size,
    } = a;

    tch::set_num_threads(threads);
    let model = ModelConfig {
        arch,
        width: 1.0,
        embed_dim: 128,
        head: Head::Classifier { classes: 10 },
    };
    let step = train::bench_steps(
        &model,
        batch,
        steps.max(1),
        input_size,
        train::parse_device(&device)?,
    )?;
    say!(
        "{{\"arch\": \"{}\", \"images_per_second\": {}, \"median_step_seconds\": {step}}}",
        serde_json::to_value(arch)?.as_str().unwrap_or("?"),
        batch as f64 / step
    );
    Ok(())
}

fn fit(a: FitArgs) -> Result<()> {
    let FitArgs {
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
    } = a;

    let mut config = FitConfig::new(ClusterSpec::parse(&clusters)?, Metric::parse(&metric)?);
    config.normalize = normalize;
    let request = FitRequest {
        run,
        config,
        mode: ThresholdMode::from_options(target_tpr, alpha, per_cluster),
        device,
        bundle: bundle
            .then(|| int8.then(|| quant.int8()).transpose())
            .transpose()?,
        out,
        command: std::env::args().collect(),
    };
    say!("{}", fit_run(request)?);
    Ok(())
}

fn import_pretrained(a: ImportArgs) -> Result<()> {
    let python = a
        .python
        .or_else(|| std::env::var_os("OODMON_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let request = ImportRequest {
        arch: a.arch,
        weights: a.weights,
        data: a.data,
        input_size: a.input_size,
        detail_size: a.detail_size,
        val_fraction: a.val_fraction,
        seed: a.seed,
        python,
        out: a.out,
    };
    let imported = import(&request)?;
    say!(
        "imported {} tensors ({} parameters, a {}-class classifier) into {}",
        imported.tensors,
        imported.parameters,
        imported.classes,
        request.out.display()
    );
    Ok(())
}

fn classify_cmd(a: ClassifyArgs) -> Result<()> {
    let c = oodmon_trainer::pretrained::classify(&a.run, &a.image, a.top)?;
    for (class, p) in &c.top {
        say!("{class}\t{p:.4}");
    }
    if let Some(prefix) = a.dump {
        let with = |suffix: &str| {
            let mut name = prefix.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        let one_row = |v: &[f32]| oodmon_calibration::Embeddings::new(1, v.len(), v.to_vec());
        npy::write_embeddings(with("-input.npy"), &one_row(&c.input)?)?;
        npy::write_embeddings(with("-logits.npy"), &one_row(&c.logits)?)?;
    }
    Ok(())
}
