//! The training loop: SGD with momentum, cosine schedule with warm-up, weight decay;
//! a checkpoint (safetensors) every epoch, `--resume`, Ctrl-C saves before exiting, the full
//! configuration beside the weights and a per-epoch JSON-lines log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use oodmon_calibration::preprocess::Layout;
use oodmon_calibration::PreprocessSpec;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::augment::{crop_flip, normalise_into, simclr_view};
use crate::data::{Dataset, Split};
use crate::loss::{cross_entropy, nt_xent, supcon, LossKind};
use crate::model::{Head, ModelConfig, Net};
use crate::optim::Sgd;

use oodmon_data::embed::for_each_input;

use crate::error::io;
pub use crate::error::{Result, TrainError};

/// The full configuration of a run; written as `config.json` beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: String,
    pub model: ModelConfig,
    pub loss: LossKind,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub warmup_epochs: usize,
    pub temperature: f64,
    /// Fraction of each class held out as the ID calibration/validation split.
    pub val_fraction: f64,
    /// Initialisation, shuffling and augmentation; also the held-out split's unless
    /// `split_seed` is set.
    pub seed: u64,
    /// The held-out split's seed, when it differs from `seed`: runs that differ only in
    /// their training seed then hold out the same images (seed studies, weight averages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    pub preprocessing: PreprocessSpec,
    /// Stop after this many optimiser steps per epoch (tests and smoke runs).
    #[serde(default)]
    pub max_steps_per_epoch: Option<usize>,
    /// Fine-tuning: the run (from `import-pretrained`) whose encoder weights start this one.
    #[serde(default)]
    pub pretrained: Option<PathBuf>,
    /// The encoder's learning rate relative to `lr` (the head's).
    #[serde(default = "one")]
    pub backbone_lr_scale: f64,
    /// Stem and first stages kept frozen (EfficientNet-Lite only).
    #[serde(default)]
    pub freeze_stages: usize,
    /// Train on these classes only, relabelled 0.. in this order (the open-set
    /// protocol's known classes); the run's splits, embeddings and calibration follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<usize>>,
    /// Not trained but averaged: the runs (same settings, other seeds) whose weights this
    /// run's are the mean of (`oodmon-trainer average`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub averaged_from: Option<Vec<PathBuf>>,
}

fn one() -> f64 {
    1.0
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Invalid(m.into()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch < 2 {
            return bad("batch must be at least 2");
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(self.lr) || !non_negative(self.weight_decay) || !positive(self.temperature) {
            return bad("lr and temperature must be positive, weight decay non-negative");
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("val_fraction must be in [0, 1)");
        }
        if !non_negative(self.backbone_lr_scale) {
            return bad("backbone_lr_scale must be non-negative");
        }
        let lite = self.model.arch == crate::model::Arch::EfficientnetLite0;
        if self.freeze_stages > 0 && !lite {
            return bad("freeze_stages applies to efficientnet-lite0 only");
        }
        if self.pretrained.is_some() && !lite {
            return bad("pretrained weights are imported for efficientnet-lite0 only");
        }
        Ok(())
    }
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub loss: f64,
    /// Training accuracy (CE) or validation k-NN accuracy (contrastive losses).
    pub accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub images_per_second: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Where a run lives and what it holds.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn weights(&self) -> PathBuf {
        self.0.join("model.safetensors")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.0.join("optimizer.safetensors")
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("log.jsonl")
    }

    /// Fails unless the checkpoint finished all of `epochs`: what a caller (a script, the
    /// study) must check before taking the run as trained.
    pub fn require_finished(&self, epochs: usize) -> Result<()> {
        let done = self.epochs_done()?;
        if done >= epochs {
            return Ok(());
        }
        Err(TrainError::Unfinished {
            run: self.0.clone(),
            done,
            epochs,
        })
    }

    /// Whole epochs the run's checkpoint has finished (0 without a checkpoint).
    pub fn epochs_done(&self) -> Result<usize> {
        let p = self.state();
        if !p.exists() {
            return Ok(0);
        }
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let state: State =
            serde_json::from_str(&text).map_err(|cause| TrainError::Config { path: p, cause })?;
        Ok(state.epoch)
    }

    pub fn load_config(&self) -> Result<TrainConfig> {
        let p = self.config();
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&text).map_err(|cause| TrainError::Config { path: p, cause })
    }
}

/// The top-level settings (`loss`, `seed`, `model`, ...) in which two configurations
/// differ: a resumed run must go on as it started, or its weights mix two recipes.
pub(crate) fn differing_settings(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    // the held-out split compares by the seed it comes from, however it was spelled
    let effective = |c: &TrainConfig| TrainConfig {
        split_seed: Some(c.split_seed.unwrap_or(c.seed)),
        ..c.clone()
    };
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(effective(a)),
        serde_json::to_value(effective(b)),
    ) else {
        return vec!["the configuration".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Where a checkpoint stands: `step` optimiser steps done in `epoch` (0 at a boundary).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct State {
    epoch: usize,
    #[serde(default)]
    step: usize,
}

/// Picks `cuda:N`, `cpu` or the best available (`auto`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        _ => {
            let n = s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    TrainError::Invalid(format!("device {s:?} (auto, cpu or cuda:N)"))
                })?;
            if !tch::Cuda::is_available() || n >= tch::Cuda::device_count() as usize {
                return Err(TrainError::Invalid(format!(
                    "device {s}: no such CUDA device"
                )));
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// Learning rate at a fractional epoch: linear warm-up, then cosine decay to zero.
pub fn learning_rate(cfg: &TrainConfig, epoch_f: f64) -> f64 {
    let warm = cfg.warmup_epochs as f64;
    if epoch_f < warm {
        cfg.lr * (epoch_f + 1e-3) / warm
    } else {
        let t = (epoch_f - warm) / (cfg.epochs as f64 - warm).max(1e-9);
        0.5 * cfg.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
    }
}

/// `[n, 3, h, w]` from `n` preprocessed images in `layout`, stored channels-last (NHWC in
/// memory, NCHW in shape): libtorch's CPU convolutions and batch norm run this layout
/// 1.3-1.7x faster than contiguous NCHW on the edge encoder and EfficientNet-Lite0 (the
/// trainer bench, BENCHMARKS.md), and every later layer keeps it.
pub fn batch_tensor(buf: &[f32], n: usize, h: usize, w: usize, layout: Layout) -> Tensor {
    let (n, h, w) = (n as i64, h as i64, w as i64);
    let t = Tensor::from_slice(buf);
    match layout {
        Layout::Nhwc => t.view([n, h, w, 3]).permute([0, 3, 1, 2]),
        Layout::Nchw => t
            .view([n, 3, h, w])
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]),
    }
}

/// Normalised batch of the given rows through the shared [`Preprocessor`], exactly as
/// calibration and the edge compute encoder inputs (no augmentation); channels-last
/// ([`batch_tensor`]).
pub fn eval_batch(ds: &Dataset, rows: &[usize], spec: &PreprocessSpec) -> Result<Tensor> {
    let n = 3 * spec.width as usize * spec.height as usize;
    let mut p = ds
        .preprocessor(spec)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let mut buf = vec![0f32; rows.len() * n];
    for (b, &i) in rows.iter().enumerate() {
        p.run(ds.image(i), None, &mut buf[b * n..(b + 1) * n])
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
    }
    Ok(batch_tensor(
        &buf,
        rows.len(),
        spec.height as usize,
        spec.width as usize,
        spec.layout,
    ))
}

/// Embeddings of a data set's split straight from its stored images (any size or format)
/// through the shared preprocessing, in batches: the same input tensors calibration and
/// the edge compute. Returns embeddings, labels and class names.
pub fn embed_images(
    net: &Net,
    data: &crate::data::DataSpec,
    split: Split,
    spec: &PreprocessSpec,
    device: Device,
    batch: usize,
    limit: Option<usize>,
) -> Result<(Vec<f32>, Vec<i64>, Vec<String>)> {
    let n = 3 * spec.width as usize * spec.height as usize;
    let batch = batch.max(1);
    let mut pending: Vec<f32> = Vec::with_capacity(batch * n);
    let mut out = Vec::new();
    let mut labels = Vec::new();
    let run = |pending: &mut Vec<f32>, out: &mut Vec<f32>| -> Result<()> {
        let rows = pending.len() / n;
        if rows == 0 {
            return Ok(());
        }
        let x = batch_tensor(
            pending,
            rows,
            spec.height as usize,
            spec.width as usize,
            spec.layout,
        )
        .to_device(device);
        let e = tch::no_grad(|| net.embed(&x, false))
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        out.extend(Vec::<f32>::try_from(e.flatten(0, -1))?);
        pending.clear();
        Ok(())
    };
    let mut failure: Option<TrainError> = None;
    let names = for_each_input(spec, data, split, limit, |tensor, label| {
        pending.extend_from_slice(tensor);
        labels.push(label);
        if pending.len() == batch * n {
            if let Err(e) = run(&mut pending, &mut out) {
                failure.get_or_insert(e);
            }
        }
        Ok(())
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    run(&mut pending, &mut out)?;
    Ok((out, labels, names))
}

/// Embeddings of every image, in order, in eval mode.
pub fn embed_dataset(
    net: &Net,
    ds: &Dataset,
    spec: &PreprocessSpec,
    device: Device,
    batch: usize,
) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(ds.len() * net.encoder.dim());
    tch::no_grad(|| -> Result<()> {
        let rows: Vec<usize> = (0..ds.len()).collect();
        for chunk in rows.chunks(batch.max(1)) {
            let x = eval_batch(ds, chunk, spec)?.to_device(device);
            let e = net
                .embed(&x, false)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .contiguous();
            out.extend(Vec::<f32>::try_from(e.flatten(0, -1))?);
        }
        Ok(())
    })?;
    Ok(out)
}

/// k-NN (k = 20, cosine) accuracy of `val` against `train` embeddings: a training-free
/// way to compare encoders trained without labels.
pub fn knn_accuracy(
    train: &[f32],
    train_labels: &[i64],
    val: &[f32],
    val_labels: &[i64],
    dim: usize,
) -> f64 {
    let norm = |v: &[f32]| -> Vec<f32> {
        v.chunks_exact(dim)
            .flat_map(|r| {
                let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                r.iter().map(move |x| x / n)
            })
            .collect()
    };
    let (t, v) = (norm(train), norm(val));
    let classes = train_labels
        .iter()
        .map(|&l| l as usize + 1)
        .max()
        .unwrap_or(1);
    let k = 20.min(train_labels.len());
    let mut correct = 0usize;
    let mut sims: Vec<(f32, usize)> = Vec::with_capacity(train_labels.len());
    for (q, &label) in v.chunks_exact(dim).zip(val_labels) {
        sims.clear();
        sims.extend(
            t.chunks_exact(dim)
                .enumerate()
                .map(|(i, r)| (r.iter().zip(q).map(|(a, b)| a * b).sum(), i)),
        );
        sims.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0f32; classes];
        for &(s, i) in &sims[..k] {
            votes[train_labels[i] as usize] += (s / 0.07).exp();
        }
        let pred = votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(c, _)| c)
            .unwrap_or(0);
        correct += (pred as i64 == label) as usize;
    }
    correct as f64 / val_labels.len().max(1) as f64
}

/// Observes training; the CLI shows a progress bar, tests stay quiet.
pub trait Progress {
    fn epoch_start(&mut self, _epoch: usize, _steps: usize) {}
    fn step(&mut self, _loss: f64, _accuracy: Option<f64>, _images_per_second: f64) {}
    fn epoch_end(&mut self, _log: &EpochLog) {}
}

impl Progress for () {}

/// Builds the net for a config on a fresh var store.
pub fn build(cfg: &ModelConfig, device: Device) -> (nn::VarStore, Net) {
    let vs = nn::VarStore::new(device);
    let net = Net::new(&vs.root(), cfg.clone());
    (vs, net)
}

/// The training and validation splits a run uses (seeded, stratified).
pub fn splits(cfg: &TrainConfig) -> Result<(Dataset, Dataset)> {
    let spec: crate::data::DataSpec = cfg.data.parse()?;
    let full = crate::data::load(&spec, Split::Train, &cfg.preprocessing)?;
    let full = match &cfg.classes {
        None => full,
        Some(classes) => full.keep_classes(classes).ok_or_else(|| {
            TrainError::Invalid(format!(
                "classes {classes:?}: each must be listed once and be below {}",
                full.classes()
            ))
        })?,
    };
    if let Some(classes) = &cfg.classes {
        if let Some((_, empty)) = classes
            .iter()
            .enumerate()
            .find(|(i, _)| !full.labels.contains(&(*i as i64)))
        {
            return Err(TrainError::Invalid(format!(
                "classes {classes:?}: class {empty} has no training images"
            )));
        }
    }
    if full.len() < 2 {
        return Err(TrainError::Invalid(
            "the training set has fewer than 2 images (of the run's classes)".into(),
        ));
    }
    Ok(full.split(cfg.val_fraction, cfg.split_seed.unwrap_or(cfg.seed)))
}

pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| TrainError::Invalid(e.to_string()))?;
    oodmon_calibration::io::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .map_err(|e| TrainError::Invalid(e.to_string()))
}

/// Trains (or resumes) a run in `dir`. Returns the epoch logs of this invocation.
pub fn train(
    cfg: &TrainConfig,
    dir: &Path,
    device: Device,
    resume: bool,
    stop: Arc<AtomicBool>,
    progress: &mut dyn Progress,
) -> Result<Vec<EpochLog>> {
    cfg.validate()?;
    let run = RunDir(dir.to_path_buf());
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    tch::manual_seed(cfg.seed as i64);
    let (train_ds, val_ds) = splits(cfg)?;
    let mut model_cfg = cfg.model.clone();
    if let Head::Classifier { classes } = &mut model_cfg.head {
        *classes = train_ds.classes();
    }
    let cfg = TrainConfig {
        model: model_cfg,
        ..cfg.clone()
    };
    let (mut vs, mut net) = build(&cfg.model, device);
    if let (Some(source), false) = (&cfg.pretrained, resume) {
        load_backbone(&vs, source)?;
    }
    freeze(&vs, &mut net, cfg.freeze_stages);
    let scale = cfg.backbone_lr_scale;
    let mut opt = Sgd::with_lr_scale(&vs, cfg.lr, cfg.momentum, cfg.weight_decay, |name| {
        if name.starts_with("encoder.") {
            scale
        } else {
            1.0
        }
    });
    let mut start = State { epoch: 0, step: 0 };
    if resume {
        let saved = run.load_config()?;
        if saved.averaged_from.is_some() {
            return Err(TrainError::Invalid(format!(
                "--resume: {} is an average of runs, not a training checkpoint; an average \
                 is not trained further",
                run.0.display()
            )));
        }
        let differ = differing_settings(&saved, &cfg);
        if !differ.is_empty() {
            return Err(TrainError::Invalid(format!(
                "--resume: {} was trained with other settings ({}); resume with the same \
                 ones, or start a new run",
                run.config().display(),
                differ.join(", ")
            )));
        }
        vs.load(run.weights())?;
        opt.load(&run.optimizer())?;
        let st = run.state();
        let text = std::fs::read_to_string(&st).map_err(io(&st))?;
        start = serde_json::from_str::<State>(&text)
            .map_err(|cause| TrainError::Config { path: st, cause })?;
    }
    write_json(&run.config(), &cfg)?;
    let (w, h) = (train_ds.width, train_ds.height);
    let px = w * h * 3;
    let views = if cfg.loss == LossKind::Ce { 1 } else { 2 };
    let batch = cfg.batch.min(train_ds.len());
    let steps_full = train_ds.len() / batch;
    let steps = cfg
        .max_steps_per_epoch
        .map_or(steps_full, |m| m.min(steps_full))
        .max(1);
    let mut logs = Vec::new();
    let mut xbuf = vec![0f32; views * batch * px];
    let mut tmp = vec![0f32; px];
    for epoch in start.epoch..cfg.epochs {
        let started = Instant::now();
        // Shuffling and augmentation draw from generators seeded by (seed, epoch, step),
        // so a resumed run sees exactly the batches the uninterrupted one would have.
        let mut order: Vec<usize> = (0..train_ds.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
            cfg.seed,
            epoch as u64,
            u64::MAX,
        )));
        progress.epoch_start(epoch, steps);
        let first = if epoch == start.epoch { start.step } else { 0 };
        let (mut loss_sum, mut correct, mut seen, mut done) = (0.0, 0usize, 0usize, first);
        let mut lr = cfg.lr;
        for step in first..steps {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64, step as u64));
            lr = learning_rate(&cfg, epoch as f64 + step as f64 / steps as f64);
            opt.lr = lr;
            let rows = &order[step * batch..(step + 1) * batch];
            for v in 0..views {
                for (b, &i) in rows.iter().enumerate() {
                    let img = train_ds.image(i);
                    match cfg.loss {
                        LossKind::Simclr => simclr_view(img, w, h, &mut rng, &mut tmp),
                        // 4 px at CIFAR's 32, in proportion at larger inputs
                        _ => crop_flip(img, w, h, (w / 8).max(1), &mut rng, &mut tmp),
                    }
                    let at = (v * batch + b) * px;
                    let out = &mut xbuf[at..at + px];
                    normalise_into(&tmp, w, h, &cfg.preprocessing, Layout::Nhwc, out);
                }
            }
            let x = batch_tensor(&xbuf, views * batch, h, w, Layout::Nhwc).to_device(device);
            let labels: Vec<i64> = rows.iter().map(|&i| train_ds.labels[i]).collect();
            let y = Tensor::from_slice(&labels).to_device(device);
            let out = net.head(&net.embed(&x, true));
            let loss = match cfg.loss {
                LossKind::Ce => {
                    let acc = out
                        .argmax(1, false)
                        .eq_tensor(&y)
                        .sum(Kind::Int64)
                        .int64_value(&[]);
                    correct += acc as usize;
                    cross_entropy(&out, &y)
                }
                LossKind::Supcon => supcon(&out, &Tensor::cat(&[&y, &y], 0), cfg.temperature),
                LossKind::Simclr => nt_xent(&out, cfg.temperature),
            };
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(TrainError::Invalid(format!(
                    "the loss became {value} at epoch {epoch}, step {step}: lower --lr"
                )));
            }
            opt.backward_step(&loss);
            loss_sum += value;
            seen += batch;
            done = step + 1;
            let ips = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let acc = (cfg.loss == LossKind::Ce).then(|| correct as f64 / seen as f64);
            progress.step(value, acc, ips);
        }
        let seconds = started.elapsed().as_secs_f64();
        let finished = done == steps;
        let state = if finished {
            State {
                epoch: epoch + 1,
                step: 0,
            }
        } else {
            State { epoch, step: done }
        };
        save_checkpoint(&run, &vs, &opt, state)?;
        if !finished {
            break; // interrupted: the checkpoint holds the exact position
        }
        let val_accuracy = if val_ds.is_empty() {
            None
        } else if cfg.loss == LossKind::Ce {
            Some(classifier_accuracy(
                &net,
                &val_ds,
                &cfg.preprocessing,
                device,
            )?)
        } else {
            let sub: Vec<usize> = (0..train_ds.len())
                .step_by((train_ds.len() / 5000).max(1))
                .collect();
            let tr = train_ds.select(&sub);
            let te = embed_dataset(&net, &tr, &cfg.preprocessing, device, 256)?;
            let ve = embed_dataset(&net, &val_ds, &cfg.preprocessing, device, 256)?;
            Some(knn_accuracy(
                &te,
                &tr.labels,
                &ve,
                &val_ds.labels,
                net.encoder.dim(),
            ))
        };
        let log = EpochLog {
            epoch,
            loss: loss_sum / (seen / batch).max(1) as f64,
            accuracy: (cfg.loss == LossKind::Ce && seen > 0).then(|| correct as f64 / seen as f64),
            val_accuracy,
            images_per_second: seen as f64 / seconds.max(1e-9),
            lr,
            seconds,
        };
        #[allow(clippy::expect_used)] // a plain struct: serde_json cannot fail
        let mut line = serde_json::to_string(&log).expect("serialisable");
        line.push('\n');
        let logp = run.log();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&logp)
            .map_err(io(&logp))?;
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(io(&logp))?;
        progress.epoch_end(&log);
        logs.push(log);
    }
    Ok(logs)
}

/// Copies the encoder of a pretrained run (`import-pretrained`) into `vs`: every encoder
/// variable must be there with its shape; the head starts fresh.
fn load_backbone(vs: &nn::VarStore, source: &Path) -> Result<()> {
    let run = RunDir(source.to_path_buf());
    let saved = run.load_config()?;
    let mut variables = vs.variables();
    if saved.model.arch != crate::model::Arch::EfficientnetLite0 {
        return Err(TrainError::Invalid(format!(
            "--pretrained {}: a {:?} run, not efficientnet-lite0",
            source.display(),
            saved.model.arch
        )));
    }
    let weights = run.weights();
    let tensors = Tensor::read_safetensors(&weights)?;
    let mut loaded = 0usize;
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &tensors {
            if !name.starts_with("encoder.") {
                continue;
            }
            let v = variables.get_mut(name).ok_or_else(|| {
                TrainError::Invalid(format!(
                    "{}: {name} is not in the network",
                    weights.display()
                ))
            })?;
            if v.size() != t.size() {
                return Err(TrainError::Invalid(format!(
                    "{}: {name} has shape {:?}, the network's is {:?}",
                    weights.display(),
                    t.size(),
                    v.size()
                )));
            }
            v.copy_(t);
            loaded += 1;
        }
        Ok(())
    })?;
    let wanted = variables
        .keys()
        .filter(|n| n.starts_with("encoder."))
        .count();
    if loaded != wanted {
        return Err(TrainError::Invalid(format!(
            "{}: {loaded} of the encoder's {wanted} variables found",
            weights.display()
        )));
    }
    Ok(())
}

/// Turns off the gradients of the frozen stages (and keeps their batch norms in eval).
fn freeze(vs: &nn::VarStore, net: &mut Net, stages: usize) {
    let crate::model::Encoder::Lite(lite) = &mut net.encoder else {
        return;
    };
    let prefixes: Vec<String> = lite
        .freeze(stages)
        .into_iter()
        .map(|p| format!("encoder.{p}"))
        .collect();
    for (name, t) in vs.variables() {
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let _ = t.set_requires_grad(false);
        }
    }
}

/// A seed for one (run seed, epoch, step): splitmix64 over the three.
fn mix(seed: u64, epoch: u64, step: u64) -> u64 {
    let mut z =
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `path` through `write` on a temporary file beside it (`.NAME.tmp.EXT`: the
/// extension kept, since libtorch picks the format by it), then renames it into place.
pub(crate) fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let tmp = match path.extension() {
        Some(ext) => path.with_file_name(format!(".{stem}.tmp.{}", ext.to_string_lossy())),
        None => path.with_file_name(format!(".{stem}.tmp")),
    };
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A run that starts from given weights (imported, not trained here): the weights, then
/// its configuration, each written to a temporary file and renamed.
pub fn save_run(run: &RunDir, cfg: &TrainConfig, vs: &nn::VarStore) -> Result<()> {
    replace_file(&run.weights(), |tmp| Ok(vs.save(tmp)?))?;
    write_json(&run.config(), cfg)
}

/// Weights, optimiser state and position, each written to a temporary file and renamed,
/// the position last, so a crash never leaves a checkpoint that points past its weights.
fn save_checkpoint(run: &RunDir, vs: &nn::VarStore, opt: &Sgd, state: State) -> Result<()> {
    replace_file(&run.weights(), |tmp| Ok(vs.save(tmp)?))?;
    replace_file(&run.optimizer(), |tmp| Ok(opt.save(tmp)?))?;
    write_json(&run.state(), &state)
}

fn classifier_accuracy(
    net: &Net,
    ds: &Dataset,
    spec: &PreprocessSpec,
    device: Device,
) -> Result<f64> {
    let mut correct = 0i64;
    tch::no_grad(|| -> Result<()> {
        let rows: Vec<usize> = (0..ds.len()).collect();
        for chunk in rows.chunks(256) {
            let x = eval_batch(ds, chunk, spec)?.to_device(device);
            let labels: Vec<i64> = chunk.iter().map(|&i| ds.labels[i]).collect();
            let y = Tensor::from_slice(&labels).to_device(device);
            correct += net
                .forward_logits(&x)
                .argmax(1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        Ok(())
    })?;
    Ok(correct as f64 / ds.len().max(1) as f64)
}

impl Net {
    /// Class logits in eval mode (classifier head only).
    pub fn forward_logits(&self, x: &Tensor) -> Tensor {
        self.head(&self.embed(x, false))
    }
}

/// Median seconds per training step (forward, cross-entropy, backward, SGD update) on a
/// fixed random `input x input` batch, after 3 warm-up steps: the trainer benchmark's
/// measure, the same work `bench/train_reference.py` times in PyTorch.
pub fn bench_steps(
    model: &ModelConfig,
    batch: usize,
    steps: usize,
    input: i64,
    device: Device,
) -> Result<f64> {
    let mut model = model.clone();
    model.head = Head::Classifier { classes: 10 };
    let (vs, net) = build(&model, device);
    let mut opt = Sgd::new(&vs, 0.05, 0.9, 5e-4);
    // channels-last, as the trainer's batches ([`batch_tensor`])
    let x =
        Tensor::randn([batch as i64, input, input, 3], (Kind::Float, device)).permute([0, 3, 1, 2]);
    let y = Tensor::randint(10, [batch as i64], (Kind::Int64, device));
    let mut times = Vec::with_capacity(steps);
    for step in 0..steps + 3 {
        let t = Instant::now();
        let loss = cross_entropy(&net.head(&net.embed(&x, true)), &y);
        opt.backward_step(&loss);
        let _ = loss.double_value(&[]); // waits for the device
        if step >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tensor_is_nchw_in_shape_and_channels_last_in_memory_from_either_layout() {
        let (n, h, w) = (2usize, 3usize, 4usize);
        // value = a code of (image, channel, row, column), written in each layout
        let code =
            |b: usize, c: usize, y: usize, x: usize| (b * 1000 + c * 100 + y * 10 + x) as f32;
        let mut nchw = vec![0f32; n * 3 * h * w];
        let mut nhwc = vec![0f32; n * 3 * h * w];
        for b in 0..n {
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        nchw[((b * 3 + c) * h + y) * w + x] = code(b, c, y, x);
                        nhwc[((b * h + y) * w + x) * 3 + c] = code(b, c, y, x);
                    }
                }
            }
        }
        for t in [
            batch_tensor(&nchw, n, h, w, Layout::Nchw),
            batch_tensor(&nhwc, n, h, w, Layout::Nhwc),
        ] {
            assert_eq!(t.size(), [n as i64, 3, h as i64, w as i64]);
            // channels-last strides: the channel is the fastest-moving index
            assert_eq!(t.stride(), [(h * w * 3) as i64, 1, (w * 3) as i64, 3]);
            let back: Vec<f32> = Vec::try_from(t.contiguous().flatten(0, -1)).unwrap();
            assert_eq!(back, nchw);
        }
    }
}
