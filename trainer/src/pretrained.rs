//! Pretrained backbones into runs: an ImageNet checkpoint (a PyTorch state dict) becomes a
//! run directory (`config.json` + `model.safetensors`) that `embed`, `fit` and `export`
//! use like a trained one: frozen features with no training, or the start of fine-tuning.
//!
//! PyTorch's checkpoints are pickles that libtorch's C++ API cannot read in their legacy
//! form, so the user's PyTorch (the one the trainer's libtorch comes from) turns the file
//! into `.npz` once, by `py/pth_to_npz.py` (tensors only: no code from the file runs); the
//! names and shapes are then checked here, every variable of the network must be found,
//! and nothing in the file may be left over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use oodmon_calibration::PreprocessSpec;
use tch::nn;
use tch::{Device, Tensor};

use crate::error::{Result, TrainError};
use crate::loss::LossKind;
use crate::model::{Arch, Head, ModelConfig, Net};
use crate::train::{RunDir, TrainConfig};

/// The converter the Python side runs.
const PTH_TO_NPZ: &str = include_str!("../py/pth_to_npz.py");

/// What to import, and the run it starts.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub arch: Arch,
    /// The PyTorch checkpoint (`.pth`), or an `.npz` already converted.
    pub weights: PathBuf,
    /// The in-distribution data of the run (its splits calibrate frozen features).
    pub data: String,
    /// Square input size the network sees (recorded in the preprocessing spec).
    pub input_size: u32,
    /// Every input brought to this size first (see [`PreprocessSpec::detail_size`]).
    pub detail_size: Option<u32>,
    pub val_fraction: f64,
    pub seed: u64,
    /// The Python interpreter with PyTorch, for `.pth` files.
    pub python: PathBuf,
    pub out: PathBuf,
}

/// What was imported.
#[derive(Debug, Clone)]
pub struct Imported {
    pub tensors: usize,
    pub parameters: i64,
    /// Classes of the checkpoint's classifier, kept as the run's head.
    pub classes: usize,
}

/// Converts `.pth` to `.npz` in `dir` with the user's PyTorch.
fn to_npz(python: &Path, pth: &Path, dir: &Path) -> Result<PathBuf> {
    let script = dir.join("pth_to_npz.py");
    let npz = dir.join("weights.npz");
    std::fs::write(&script, PTH_TO_NPZ).map_err(|cause| TrainError::Io {
        path: script.clone(),
        cause,
    })?;
    let out = Command::new(python)
        .arg(&script)
        .arg(pth)
        .arg(&npz)
        .output()
        .map_err(|cause| TrainError::Io {
            path: python.to_path_buf(),
            cause,
        })?;
    if !out.status.success() {
        return Err(TrainError::Request(format!(
            "{}: converting with {} failed: {}",
            pth.display(),
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(npz)
}

/// The named tensors of a checkpoint (`.npz` as is, `.pth` through PyTorch).
pub fn read_checkpoint(python: &Path, weights: &Path) -> Result<Vec<(String, Tensor)>> {
    let is_npz = weights.extension().is_some_and(|e| e == "npz");
    // a directory of its own per call (removed when dropped): two imports in one process,
    // as tests run them, once shared one named by the process id and removed each other's
    let scratch = tempfile::Builder::new()
        .prefix("oodmon-import-")
        .tempdir()
        .map_err(|cause| TrainError::Io {
            path: std::env::temp_dir(),
            cause,
        })?;
    let npz = if is_npz {
        weights.to_path_buf()
    } else {
        to_npz(python, weights, scratch.path())?
    };
    Tensor::read_npz(&npz).map_err(|e| {
        TrainError::Request(format!("{}: not a readable checkpoint: {e}", npz.display()))
    })
}

/// Copies the checkpoint into `vs` by name: every variable must be there with its shape,
/// and every tensor of the checkpoint must find a variable.
pub fn load_into(vs: &nn::VarStore, tensors: &[(String, Tensor)], source: &Path) -> Result<usize> {
    let mut variables = vs.variables();
    let mut missing: BTreeSet<String> = variables.keys().cloned().collect();
    let mut unknown = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in tensors {
            match variables.get_mut(name) {
                Some(v) if v.size() == t.size() => {
                    v.copy_(t);
                    missing.remove(name);
                }
                Some(v) => {
                    return Err(TrainError::Request(format!(
                        "{}: {name} has shape {:?}, the network's is {:?}",
                        source.display(),
                        t.size(),
                        v.size()
                    )))
                }
                None => unknown.push(name.clone()),
            }
        }
        Ok(())
    })?;
    if !missing.is_empty() || !unknown.is_empty() {
        let list = |s: Vec<String>| {
            let n = s.len();
            let mut shown: Vec<String> = s.into_iter().take(5).collect();
            if n > 5 {
                shown.push(format!("... ({n} in all)"));
            }
            shown.join(", ")
        };
        return Err(TrainError::Request(format!(
            "{}: not this network's checkpoint: missing {}; not in the network {}",
            source.display(),
            list(missing.into_iter().collect()),
            list(unknown)
        )));
    }
    Ok(tensors.len())
}

/// The run's configuration for imported weights: no epochs trained yet, ImageNet
/// preprocessing at the requested size, the checkpoint's classifier as head.
fn import_config(r: &ImportRequest, classes: usize) -> TrainConfig {
    TrainConfig {
        data: r.data.clone(),
        model: ModelConfig {
            arch: r.arch,
            width: 1.0,
            embed_dim: crate::efficientnet::FEATURES as usize,
            head: Head::Classifier { classes },
        },
        loss: LossKind::Ce,
        epochs: 0,
        batch: 64,
        lr: 0.01,
        weight_decay: 1e-5,
        momentum: 0.9,
        warmup_epochs: 1,
        temperature: 0.1,
        val_fraction: r.val_fraction,
        seed: r.seed,
        split_seed: None,
        averaged_from: None,
        preprocessing: PreprocessSpec {
            detail_size: r.detail_size,
            ..PreprocessSpec::imagenet(r.input_size)
        },
        max_steps_per_epoch: None,
        pretrained: None,
        backbone_lr_scale: 1.0,
        freeze_stages: 0,
        classes: None,
    }
}

/// Imports the checkpoint into a new run directory.
pub fn import(r: &ImportRequest) -> Result<Imported> {
    if r.arch != Arch::EfficientnetLite0 {
        return Err(TrainError::Request(format!(
            "--arch {:?}: pretrained weights are imported for efficientnet-lite0 only",
            r.arch
        )));
    }
    r.data.parse::<crate::data::DataSpec>()?;
    let tensors = read_checkpoint(&r.python, &r.weights)?;
    let classes = tensors
        .iter()
        .find(|(n, _)| n == "head.0.bias")
        .map(|(_, t)| t.size()[0] as usize)
        .ok_or_else(|| {
            TrainError::Request(format!(
                "{}: no classifier (_fc.bias) in the checkpoint",
                r.weights.display()
            ))
        })?;
    let cfg = import_config(r, classes);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), cfg.model.clone());
    let n = load_into(&vs, &tensors, &r.weights)?;
    let rd = RunDir(r.out.clone());
    std::fs::create_dir_all(&r.out).map_err(|cause| TrainError::Io {
        path: r.out.clone(),
        cause,
    })?;
    crate::train::save_run(&rd, &cfg, &vs)?;
    Ok(Imported {
        tensors: n,
        parameters: vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum(),
        classes,
    })
}

/// The `k` most likely classes of an image under a run's classifier head (an imported
/// ImageNet classifier: a check that the weights arrived whole), with the encoder's input
/// and the logits for comparing against a reference.
#[derive(Debug, Clone)]
pub struct Classified {
    /// (class index, probability), most likely first.
    pub top: Vec<(usize, f64)>,
    /// The encoder's input in the spec's layout (`3 x H x W` for NCHW, `H x W x 3` for
    /// NHWC), as the shared preprocessing made it.
    pub input: Vec<f32>,
    pub logits: Vec<f32>,
}

pub fn classify(run: &Path, image: &Path, k: usize) -> Result<Classified> {
    use oodmon_calibration::preprocess::{PixelFormat, Preprocessor};
    let rd = RunDir(run.to_path_buf());
    let cfg = rd.load_config()?;
    if !matches!(cfg.model.head, Head::Classifier { .. }) {
        return Err(TrainError::Request(format!(
            "{}: the run's head is not a classifier",
            run.display()
        )));
    }
    let net = crate::embedding::load_net(&rd, &cfg.model, Device::Cpu)?;
    let img = image::open(image)
        .map_err(|e| TrainError::Request(format!("{}: {e}", image.display())))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut pre = Preprocessor::new(&cfg.preprocessing, w, h, PixelFormat::Rgb8)?;
    let mut input = vec![0f32; pre.tensor_len()];
    pre.run(img.as_raw(), None, &mut input)?;
    let spec = &cfg.preprocessing;
    let x = crate::train::batch_tensor(
        &input,
        1,
        spec.height as usize,
        spec.width as usize,
        spec.layout,
    );
    let logits = tch::no_grad(|| net.head(&net.embed(&x, false)));
    let probs: Vec<f64> = Vec::try_from(logits.softmax(-1, tch::Kind::Double).flatten(0, -1))?;
    let logits: Vec<f32> = Vec::try_from(logits.flatten(0, -1))?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    Ok(Classified {
        top: order.into_iter().take(k).map(|i| (i, probs[i])).collect(),
        input,
        logits,
    })
}
