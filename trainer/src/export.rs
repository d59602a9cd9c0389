//! Writes a trained encoder as ONNX from its weights (libtorch cannot): batch norm folded
//! into the convolutions, the embedding as the output, the preprocessing spec and the run's
//! provenance as metadata. The projection or classifier head is not exported.

use oodmon_calibration::preprocess::Layout;
use oodmon_calibration::PreprocessSpec;
use oodmon_onnx::{fold_batch_norm, ConvShape, OnnxBuilder, META_PREPROCESSING};
use tch::{Device, Kind, Tensor};

use crate::efficientnet::LiteTap;
use crate::model::{ConvBn, Net};
use crate::train::{Result, TrainError};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        t.detach()
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .flatten(0, -1),
    )?)
}

fn conv_bn(b: &mut OnnxBuilder, x: &str, cb: &ConvBn) -> Result<String> {
    let size = cb.conv.ws.size();
    let (cin, k) = (size[1] as usize, size[2] as usize);
    let bn = &cb.bn;
    let gamma = match &bn.ws {
        Some(w) => values(w)?,
        None => vec![1.0; size[0] as usize],
    };
    let beta = match &bn.bs {
        Some(b) => values(b)?,
        None => vec![0.0; size[0] as usize],
    };
    let conv_bias = cb.conv.bs.as_ref().map(values).transpose()?;
    let (w, bias) = fold_batch_norm(
        &values(&cb.conv.ws)?,
        conv_bias.as_deref(),
        &gamma,
        &beta,
        &values(&bn.running_mean)?,
        &values(&bn.running_var)?,
        cb.eps,
    );
    b.conv(x, &w, &bias, cin, k, cb.stride as usize)
        .map_err(|e| TrainError::Invalid(e.to_string()))
}

/// The encoder of `net` as ONNX bytes (float32), input `[1, 3, H, W]` or a dynamic batch.
pub fn export_onnx(
    net: &Net,
    preprocessing: &PreprocessSpec,
    provenance: &str,
    dynamic_batch: bool,
) -> Result<Vec<u8>> {
    export_onnx_at(net, preprocessing, provenance, dynamic_batch, LiteTap::Head)
}

/// [`export_onnx`] with the EfficientNet-Lite embedding taken at `tap` (ignored by the
/// other encoders, which have one embedding).
pub fn export_onnx_at(
    net: &Net,
    preprocessing: &PreprocessSpec,
    provenance: &str,
    dynamic_batch: bool,
    tap: LiteTap,
) -> Result<Vec<u8>> {
    // the graph's input is planar; an interleaved spec would feed it pixels in the wrong
    // order without a word (the edge and the int8 calibration preprocess by the spec)
    if preprocessing.layout != Layout::Nchw {
        return Err(TrainError::Request(format!(
            "the ONNX export writes an NCHW input; this run's preprocessing spec is {:?}",
            preprocessing.layout
        )));
    }
    let enc = match &net.encoder {
        crate::model::Encoder::Cifar(e) if tap == LiteTap::Head => e,
        crate::model::Encoder::Cifar(_) => {
            return Err(TrainError::Request(
                "--features blocks is for efficientnet-lite0 runs (the edge and ResNet encoders have one embedding)".into(),
            ))
        }
        crate::model::Encoder::Lite(e) => {
            return export_lite(e, preprocessing, provenance, dynamic_batch, tap)
        }
    };
    let mut b = OnnxBuilder::new(
        preprocessing.height as usize,
        preprocessing.width as usize,
        dynamic_batch,
    );
    let input = b.input();
    let stem = conv_bn(&mut b, &input, &enc.stem)?;
    let mut y = b.relu(&stem);
    for block in &enc.blocks {
        let a = conv_bn(&mut b, &y, &block.a)?;
        let a = b.relu(&a);
        let main = conv_bn(&mut b, &a, &block.b)?;
        let skip = match &block.shortcut {
            Some(s) => conv_bn(&mut b, &y, s)?,
            None => y.clone(),
        };
        let sum = b.add(&main, &skip);
        y = b.relu(&sum);
    }
    let mut e = b.pool_flatten(&y);
    if let Some(fc) = &enc.fc {
        let size = fc.ws.size();
        let bias = match &fc.bs {
            Some(t) => values(t)?,
            None => vec![0.0; size[0] as usize],
        };
        e = b
            .linear(&e, &values(&fc.ws)?, &bias, size[1] as usize)
            .map_err(|err| TrainError::Invalid(err.to_string()))?;
    }
    b.metadata(
        META_PREPROCESSING,
        #[allow(clippy::expect_used)] // a plain struct: serde_json cannot fail
        &serde_json::to_string(preprocessing).expect("serialisable"),
    );
    b.metadata("oodmon.provenance", provenance);
    Ok(b.finish(&e, enc.dim, env!("CARGO_PKG_VERSION")))
}

/// A "same"-padded convolution and its batch norm, folded into one ONNX convolution with
/// the padding the reference computes for an input of `size` (height, width); returns the
/// output and its size.
fn same_conv_bn(
    b: &mut OnnxBuilder,
    x: &str,
    conv: &crate::efficientnet::SameConv,
    bn: &tch::nn::BatchNorm,
    size: (i64, i64),
) -> Result<(String, (i64, i64))> {
    let dims = conv.conv.ws.size();
    let (cout, per_group, k) = (dims[0], dims[1], dims[2]);
    let gamma = match &bn.ws {
        Some(w) => values(w)?,
        None => vec![1.0; cout as usize],
    };
    let beta = match &bn.bs {
        Some(b) => values(b)?,
        None => vec![0.0; cout as usize],
    };
    let (w, bias) = fold_batch_norm(
        &values(&conv.conv.ws)?,
        None,
        &gamma,
        &beta,
        &values(&bn.running_mean)?,
        &values(&bn.running_var)?,
        crate::efficientnet::BN_EPS,
    );
    let (top, bottom) = conv.padding(size.0);
    let (left, right) = conv.padding(size.1);
    let shape = ConvShape {
        cin: (per_group * conv.groups) as usize,
        k: k as usize,
        stride: conv.stride as usize,
        groups: conv.groups as usize,
        pads: [top, left, bottom, right].map(|p| p as usize),
    };
    let y = b
        .conv_with(x, &w, &bias, shape)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let out = (
        (size.0 + conv.stride - 1) / conv.stride,
        (size.1 + conv.stride - 1) / conv.stride,
    );
    Ok((y, out))
}

/// EfficientNet-Lite as ONNX: folded convolutions with the reference's padding for the
/// preprocessing's input size, ReLU6 as `Clip(0, 6)`, the residual `Add`s, and the pooled
/// features at `tap` as the embedding (the 1280 head features, or the last block's 320
/// without the head convolution).
fn export_lite(
    enc: &crate::efficientnet::LiteEncoder,
    preprocessing: &PreprocessSpec,
    provenance: &str,
    dynamic_batch: bool,
    tap: LiteTap,
) -> Result<Vec<u8>> {
    let mut size = (preprocessing.height as i64, preprocessing.width as i64);
    let mut b = OnnxBuilder::new(size.0 as usize, size.1 as usize, dynamic_batch);
    let input = b.input();
    let (y, s) = same_conv_bn(&mut b, &input, &enc.stem.0, &enc.stem.1, size)?;
    size = s;
    let mut y = b.clip(&y, 0.0, 6.0);
    for block in &enc.blocks {
        let block_in = y.clone();
        if let Some((conv, bn)) = &block.expand {
            let (e, s) = same_conv_bn(&mut b, &y, conv, bn, size)?;
            size = s;
            y = b.clip(&e, 0.0, 6.0);
        }
        let (d, s) = same_conv_bn(&mut b, &y, &block.depthwise.0, &block.depthwise.1, size)?;
        size = s;
        y = b.clip(&d, 0.0, 6.0);
        let (p, s) = same_conv_bn(&mut b, &y, &block.project.0, &block.project.1, size)?;
        size = s;
        y = if block.residual {
            b.add(&p, &block_in)
        } else {
            p
        };
    }
    let features = match tap {
        LiteTap::Head => {
            let (h, _) = same_conv_bn(&mut b, &y, &enc.head.0, &enc.head.1, size)?;
            b.clip(&h, 0.0, 6.0)
        }
        LiteTap::Blocks => y,
    };
    let e = b.pool_flatten(&features);
    b.metadata(
        META_PREPROCESSING,
        #[allow(clippy::expect_used)] // a plain struct: serde_json cannot fail
        &serde_json::to_string(preprocessing).expect("serialisable"),
    );
    b.metadata("oodmon.provenance", provenance);
    Ok(b.finish(&e, enc.dim(tap), env!("CARGO_PKG_VERSION")))
}

/// How the exported encoder is quantized to int8.
#[derive(Debug, Clone)]
pub struct Int8 {
    /// How activation ranges are estimated.
    pub range: oodmon_onnx::RangeMethod,
    pub form: oodmon_onnx::QuantForm,
    /// Images whose activations set the scales.
    pub samples: usize,
}

/// The run's configuration and weights hash, stored in an exported model's metadata.
pub fn provenance(rd: &crate::train::RunDir, cfg: &crate::train::TrainConfig) -> Result<String> {
    provenance_at(rd, cfg, LiteTap::Head)
}

/// [`provenance`], naming where the embedding was taken when it is not the default.
fn provenance_at(
    rd: &crate::train::RunDir,
    cfg: &crate::train::TrainConfig,
    tap: LiteTap,
) -> Result<String> {
    let mut p = serde_json::json!({
        "run_config": cfg,
        "weights_sha256": oodmon_calibration::io::sha256_file(&rd.weights())?,
        "tool": format!("oodmon-trainer {}", env!("CARGO_PKG_VERSION")),
    });
    if tap == LiteTap::Blocks {
        p["features"] = "blocks: the last block's pooled features, no head convolution".into();
    }
    Ok(p.to_string())
}

/// An exported encoder.
#[derive(Debug, Clone)]
pub struct Exported {
    pub bytes: Vec<u8>,
    /// Calibration images the int8 scales came from, when quantized.
    pub int8_images: Option<usize>,
}

/// The run's encoder as ONNX bytes, its EfficientNet-Lite embedding taken at `tap`,
/// quantized to int8 with `int8` (scales from the train split of `calib_data`) or converted
/// to float16 with `f16`.
pub fn export_run(
    run: &std::path::Path,
    dynamic_batch: bool,
    int8: Option<(&Int8, &str)>,
    f16: bool,
    tap: LiteTap,
) -> Result<Exported> {
    let rd = crate::train::RunDir(run.to_path_buf());
    let cfg = rd.load_config()?;
    let net = crate::embedding::load_net(&rd, &cfg.model, Device::Cpu)?;
    let mut bytes = export_onnx_at(
        &net,
        &cfg.preprocessing,
        &provenance_at(&rd, &cfg, tap)?,
        dynamic_batch,
        tap,
    )?;
    let mut int8_images = None;
    if let Some((q, calib_data)) = int8 {
        let spec: crate::data::DataSpec = calib_data.parse()?;
        // a run on a class subset (the open-set protocol) must not see the other classes'
        // images through its activation ranges either
        let known = |label: i64| match &cfg.classes {
            Some(classes) if calib_data == cfg.data => {
                usize::try_from(label).is_ok_and(|l| classes.contains(&l))
            }
            _ => true,
        };
        let limit = cfg.classes.is_none().then_some(q.samples);
        let mut images = Vec::new();
        oodmon_data::embed::for_each_input(
            &cfg.preprocessing,
            &spec,
            crate::data::Split::Train,
            limit,
            |t, label| {
                if images.len() < q.samples && known(label) {
                    images.push(t.to_vec());
                }
                Ok(())
            },
        )?;
        bytes = oodmon_onnx::quantize(&bytes, &images, q.range, q.form)?;
        int8_images = Some(images.len());
    }
    if f16 {
        bytes = oodmon_onnx::to_f16(&bytes)?;
    }
    Ok(Exported { bytes, int8_images })
}
