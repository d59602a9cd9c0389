//! Embeddings of a data set with a trained run, through libtorch or through an ONNX
//! export of the run in tract (the edge's runtime, e.g. the int8 model); the run defines
//! the splits either way.

use std::path::PathBuf;

use oodmon_calibration::Embeddings;
use oodmon_data::embed::{embed_dataset as embed_images_tract, embed_loaded};
use oodmon_runtime::Encoder;

use crate::data::{DataSpec, Split};
use crate::error::{Result, TrainError};
use crate::model::Net;
use crate::train::{self, RunDir};

/// What to embed.
#[derive(Debug, Clone)]
pub struct EmbedRequest {
    pub run: PathBuf,
    /// The data set (`cifar10:DIR`, ...); `train` and `val` of the run's own data use the
    /// run's stratified split.
    pub data: String,
    /// `train`, `val` (the run's held-out split) or `test`.
    pub split: String,
    /// libtorch device for the run's own model.
    pub device: String,
    /// An ONNX export of the run to embed through in tract instead.
    pub model: Option<PathBuf>,
    /// At most this many rows: evenly spaced over the run's own train/val split, the
    /// first ones of any other split.
    pub max_rows: Option<usize>,
}

/// The model that embeds: the run's libtorch network or an ONNX encoder in tract.
enum Backend {
    // the layers share the loaded weights' storage; the var store may go
    Torch(Box<Net>, tch::Device),
    Tract(Encoder),
}

/// Embeddings and labels of the requested split.
pub fn embed_run(r: &EmbedRequest) -> Result<(Embeddings, Vec<i64>)> {
    let rd = RunDir(r.run.clone());
    let cfg = rd.load_config()?;
    let backend = match &r.model {
        Some(m) => Backend::Tract(Encoder::load(m)?),
        None => {
            let device = train::parse_device(&r.device)?;
            Backend::Torch(Box::new(load_net(&rd, &cfg.model, device)?), device)
        }
    };
    let spec = &cfg.preprocessing;
    match r.split.as_str() {
        "train" | "val" if r.data == cfg.data => {
            // the run's own stratified split of its training set
            let (tr, va) = train::splits(&cfg)?;
            let mut ds = if r.split == "train" { tr } else { va };
            if let Some(max) = r.max_rows.filter(|&m| m < ds.len()) {
                let rows: Vec<usize> = (0..max).map(|i| i * ds.len() / max).collect();
                ds = ds.select(&rows);
            }
            let e = match &backend {
                Backend::Torch(net, device) => {
                    let v = train::embed_dataset(net, &ds, spec, *device, 256)?;
                    Embeddings::new(ds.len(), net.encoder.dim(), v)?
                }
                Backend::Tract(enc) => embed_loaded(enc, spec, &ds)?,
            };
            Ok((e, ds.labels))
        }
        "val" => Err(TrainError::Request(format!(
            "--split val needs --data {} (the run's training data)",
            cfg.data
        ))),
        "train" | "test" => {
            let which = if r.split == "train" {
                Split::Train
            } else {
                Split::Test
            };
            let data = r.data.parse::<DataSpec>()?;
            match &backend {
                Backend::Torch(net, device) => {
                    let (v, labels, _) =
                        train::embed_images(net, &data, which, spec, *device, 256, r.max_rows)?;
                    Ok((Embeddings::new(labels.len(), net.encoder.dim(), v)?, labels))
                }
                Backend::Tract(enc) => {
                    let e = embed_images_tract(enc, spec, &data, which, r.max_rows)?;
                    Ok((e.embeddings, e.labels))
                }
            }
        }
        other => Err(TrainError::Request(format!(
            "--split {other:?}: expected train, val or test"
        ))),
    }
}

/// The run's network with its trained weights.
pub fn load_net(
    rd: &RunDir,
    model: &crate::model::ModelConfig,
    device: tch::Device,
) -> Result<Net> {
    let (mut vs, net) = train::build(model, device);
    vs.load(rd.weights()).map_err(|e| TrainError::Io {
        path: rd.weights(),
        cause: std::io::Error::other(e.to_string()),
    })?;
    Ok(net)
}
