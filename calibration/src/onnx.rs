//! ONNX encoders written from plain weight arrays (libtorch has no ONNX export, and edge
//! tests need small real encoders without libtorch), and run through tract, the runtime the
//! edge uses, so that calibration embeds exactly what is deployed.
//!
//! The graph uses only operators that tract optimises well: Conv (batch norm folded in),
//! Relu, Add, GlobalAveragePool, Flatten and Gemm.

use std::path::Path;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::preprocess::PreprocessSpec;

/// ONNX IR version and default-domain opset written.
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
/// Names of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "embedding";
/// Metadata key holding the preprocessing spec as JSON.
pub const META_PREPROCESSING: &str = "oodmon.preprocessing";

/// Folds batch norm (`gamma`, `beta`, running `mean` and `var`, `eps`) into the preceding
/// convolution's weights `[out, in, kh, kw]` and bias: `w' = w g / sqrt(v + eps)`,
/// `b' = (b - m) g / sqrt(v + eps) + beta`.
pub fn fold_batch_norm(
    weight: &[f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (Vec<f32>, Vec<f32>) {
    let out = gamma.len();
    let per = weight.len() / out.max(1);
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(out);
    for o in 0..out {
        let scale = gamma[o] as f64 / (var[o] as f64 + eps).sqrt();
        w.extend(
            weight[o * per..(o + 1) * per]
                .iter()
                .map(|&v| (v as f64 * scale) as f32),
        );
        let b0 = bias.map_or(0.0, |b| b[o] as f64);
        b.push(((b0 - mean[o] as f64) * scale + beta[o] as f64) as f32);
    }
    (w, b)
}

/// Builds an encoder graph node by node; tensors are referred to by name.
pub struct OnnxBuilder {
    graph: pb::GraphProto,
    metadata: Vec<pb::StringStringEntryProto>,
    count: usize,
    input_shape: [usize; 4],
}

fn tensor_type(shape: &[Option<usize>]) -> pb::TypeProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
            elem_type: pb::tensor_proto::DataType::Float as i32,
            shape: Some(pb::TensorShapeProto {
                dim: shape
                    .iter()
                    .map(|d| Dimension {
                        value: Some(match d {
                            Some(n) => Value::DimValue(*n as i64),
                            None => Value::DimParam("batch".into()),
                        }),
                        ..Default::default()
                    })
                    .collect(),
            }),
        })),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

impl OnnxBuilder {
    /// An encoder taking `[batch, 3, height, width]` float input; `dynamic_batch` names the
    /// batch dimension instead of fixing it to 1.
    pub fn new(height: usize, width: usize, dynamic_batch: bool) -> Self {
        let input = pb::ValueInfoProto {
            name: INPUT.into(),
            r#type: Some(tensor_type(&[
                (!dynamic_batch).then_some(1),
                Some(3),
                Some(height),
                Some(width),
            ])),
            ..Default::default()
        };
        Self {
            graph: pb::GraphProto {
                name: "oodmon-encoder".into(),
                input: vec![input],
                ..Default::default()
            },
            metadata: Vec::new(),
            count: 0,
            input_shape: [1, 3, height, width],
        }
    }

    pub fn input(&self) -> String {
        INPUT.into()
    }

    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{what}_{}", self.count)
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let name = format!("{name}_{}", self.count);
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        attributes: Vec<pb::AttributeProto>,
    ) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.graph.node.push(pb::NodeProto {
            name: out.clone(),
            op_type: op.into(),
            input: inputs,
            output: vec![out.clone()],
            attribute: attributes,
            ..Default::default()
        });
        out
    }

    /// A square convolution with bias; `weight` is `[out, in, k, k]`.
    pub fn conv(
        &mut self,
        x: &str,
        weight: &[f32],
        bias: &[f32],
        cin: usize,
        k: usize,
        stride: usize,
    ) -> Result<String> {
        let cout = bias.len();
        if weight.len() != cout * cin * k * k {
            return Err(Error::param(
                "convolution weights",
                format!("{} values for [{cout}, {cin}, {k}, {k}]", weight.len()),
            ));
        }
        self.count += 1;
        let w = self.initializer("conv_w", &[cout, cin, k, k], weight);
        let b = self.initializer("conv_b", &[cout], bias);
        let pad = (k / 2) as i64;
        Ok(self.node(
            "Conv",
            vec![x.into(), w, b],
            vec![
                ints("kernel_shape", &[k as i64, k as i64]),
                ints("strides", &[stride as i64, stride as i64]),
                ints("pads", &[pad, pad, pad, pad]),
                ints("dilations", &[1, 1]),
                int("group", 1),
            ],
        ))
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", vec![x.into()], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", vec![a.into(), b.into()], vec![])
    }

    /// Global average pooling then flatten to `[batch, channels]`.
    pub fn pool_flatten(&mut self, x: &str) -> String {
        let p = self.node("GlobalAveragePool", vec![x.into()], vec![]);
        self.node("Flatten", vec![p], vec![int("axis", 1)])
    }

    /// `y = x W^T + b` with `weight` `[out, in]` (PyTorch's layout).
    pub fn linear(&mut self, x: &str, weight: &[f32], bias: &[f32], cin: usize) -> Result<String> {
        let cout = bias.len();
        if weight.len() != cout * cin {
            return Err(Error::param(
                "linear weights",
                format!("{} values for [{cout}, {cin}]", weight.len()),
            ));
        }
        self.count += 1;
        let w = self.initializer("fc_w", &[cout, cin], weight);
        let b = self.initializer("fc_b", &[cout], bias);
        Ok(self.node("Gemm", vec![x.into(), w, b], vec![int("transB", 1)]))
    }

    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push(pb::StringStringEntryProto {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Declares `x` (`[batch, dim]`) the output, renamed to [`OUTPUT`], and encodes the model.
    pub fn finish(mut self, x: &str, dim: usize, producer_version: &str) -> Vec<u8> {
        let dynamic = matches!(
            self.graph.input[0].r#type.as_ref().and_then(|t| t.value.as_ref()),
            Some(pb::type_proto::Value::TensorType(t)) if matches!(
                t.shape.as_ref().and_then(|s| s.dim.first()).and_then(|d| d.value.as_ref()),
                Some(pb::tensor_shape_proto::dimension::Value::DimParam(_))
            )
        );
        for node in &mut self.graph.node {
            for o in &mut node.output {
                if o == x {
                    *o = OUTPUT.into();
                }
            }
            for i in &mut node.input {
                if i == x {
                    *i = OUTPUT.into();
                }
            }
        }
        self.graph.output.push(pb::ValueInfoProto {
            name: OUTPUT.into(),
            r#type: Some(tensor_type(&[
                (!dynamic).then_some(self.input_shape[0]),
                Some(dim),
            ])),
            ..Default::default()
        });
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "oodmon".into(),
            producer_version: producer_version.into(),
            graph: Some(self.graph),
            metadata_props: self.metadata,
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// An encoder loaded and optimised once by tract for a fixed `[1, 3, H, W]` input.
pub struct TractEncoder {
    plan: Arc<TypedSimplePlan>,
    height: usize,
    width: usize,
    dim: usize,
    preprocessing: Option<PreprocessSpec>,
}

impl std::fmt::Debug for TractEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TractEncoder([1, 3, {}, {}] -> [1, {}])",
            self.height, self.width, self.dim
        )
    }
}

fn tract_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        problem: format!("not a usable ONNX encoder: {e:#}"),
    }
}

impl TractEncoder {
    /// Loads an ONNX encoder, fixes its input to `[1, 3, H, W]` and optimises it. A corrupt or
    /// truncated file, or a graph that is not an image encoder, is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let proto = pb::ModelProto::decode(bytes).map_err(|e| tract_err(path, e))?;
        let preprocessing = proto
            .metadata_props
            .iter()
            .find(|m| m.key == META_PREPROCESSING)
            .map(|m| serde_json::from_str::<PreprocessSpec>(&m.value))
            .transpose()
            .map_err(|e| tract_err(path, format!("bad {META_PREPROCESSING} metadata: {e}")))?;
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| tract_err(path, e))?;
        let dims: Vec<Option<usize>> = proto
            .graph
            .as_ref()
            .and_then(|g| {
                g.input
                    .iter()
                    .find(|i| !g.initializer.iter().any(|t| t.name == i.name))
            })
            .and_then(|i| i.r#type.as_ref())
            .and_then(|t| match &t.value {
                Some(pb::type_proto::Value::TensorType(t)) => t.shape.as_ref(),
                _ => None,
            })
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (height, width) = match dims[..] {
            [_, Some(3), Some(h), Some(w)] => (h, w),
            _ => {
                return Err(tract_err(
                    path,
                    format!("input shape {dims:?} is not [batch, 3, H, W]"),
                ))
            }
        };
        let plan = model
            .with_input_fact(0, f32::fact([1, 3, height, width]).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| tract_err(path, e))?;
        let out = plan
            .model()
            .output_fact(0)
            .map_err(|e| tract_err(path, e))?;
        let dim = match out.shape.as_concrete() {
            Some([1, d]) => *d,
            other => {
                return Err(tract_err(
                    path,
                    format!("output shape {other:?} is not [1, D]"),
                ))
            }
        };
        Ok(Self {
            plan,
            height,
            width,
            dim,
            preprocessing,
        })
    }

    pub fn input_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The preprocessing spec stored in the model's metadata, if any.
    pub fn preprocessing(&self) -> Option<&PreprocessSpec> {
        self.preprocessing.as_ref()
    }

    /// Runs one `[1, 3, H, W]` input (as the preprocessing writes it) into `out` (`D` values).
    pub fn embed(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        let n = 3 * self.height * self.width;
        if input.len() != n || out.len() != self.dim {
            return Err(Error::param(
                "encoder input/output",
                format!(
                    "{} inputs and {} outputs, expected {n} and {}",
                    input.len(),
                    out.len(),
                    self.dim
                ),
            ));
        }
        let tensor =
            tract_ndarray::Array4::from_shape_vec((1, 3, self.height, self.width), input.to_vec())
                .map_err(|e| Error::param("encoder input", e.to_string()))?;
        let result = self
            .plan
            .run(tvec!(Tensor::from(tensor).into()))
            .map_err(|e| Error::param("encoder run", format!("{e:#}")))?;
        let view = result[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| Error::param("encoder output", format!("{e:#}")))?;
        for (o, v) in out.iter_mut().zip(view.iter()) {
            *o = *v;
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "encoder output".into(),
                row: 0,
            });
        }
        Ok(())
    }
}

/// How activation ranges are estimated from calibration inputs for int8 quantization.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RangeMethod {
    /// The largest magnitude seen.
    MinMax,
    /// The given percentile (e.g. 99.99) of magnitudes, clipping rare outliers.
    Percentile { percentile: f64 },
    /// The clipping bound whose 128-level quantization of the magnitude histogram is
    /// closest to it in KL divergence (TensorRT's entropy calibration).
    Entropy,
}

/// Clip bin (exclusive end) of a magnitude histogram minimising KL(P || Q), where P is the
/// histogram clipped at the candidate bin (outliers folded into its last bin) and Q is P
/// quantized to `levels` levels and expanded back.
fn entropy_clip_bin(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let mut best = (f64::INFINITY, n);
    let step = (n / 256).max(1);
    // start where TensorRT does relative to the range: 128 of 2048 bins
    let mut i = levels.max(n / 16);
    while i <= n {
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += hist[i..].iter().map(|&c| c as f64).sum::<f64>();
        let total: f64 = p.iter().sum();
        if total == 0.0 {
            i += step;
            continue;
        }
        let mut q = vec![0f64; i];
        for l in 0..levels {
            let (a, b) = (
                l * i / levels,
                ((l + 1) * i / levels).max(l * i / levels + 1),
            );
            let mass: f64 = hist[a..b.min(i)].iter().map(|&c| c as f64).sum();
            let nonzero = hist[a..b.min(i)].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for j in a..b.min(i) {
                    if hist[j] > 0 {
                        q[j] = mass / nonzero as f64;
                    }
                }
            }
        }
        let qt: f64 = q.iter().sum();
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(pv, _)| **pv > 0.0)
            .map(|(pv, qv)| {
                let (pn, qn) = (pv / total, (qv / qt.max(1e-300)).max(1e-12));
                pn * (pn / qn).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, i);
        }
        i += step;
    }
    best.1
}

const HISTOGRAM_BINS: usize = 4096;

/// Static post-training quantization in QDQ form: per-channel symmetric int8 weights and
/// per-tensor activation scales (uint8 for non-negative activations, else symmetric int8)
/// for the inputs of every Conv and Gemm, estimated from `inputs` (preprocessed images,
/// `3 x H x W` each). Biases stay float, as the QDQ form allows.
pub fn quantize_qdq(model: &[u8], inputs: &[Vec<f32>], method: RangeMethod) -> Result<Vec<u8>> {
    let path = Path::new("<model being quantized>");
    if inputs.is_empty() {
        return Err(Error::param("int8 calibration", "no calibration images"));
    }
    let mut proto = pb::ModelProto::decode(model).map_err(|e| tract_err(path, e))?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| tract_err(path, "no graph"))?;
    let activations: Vec<String> = {
        let mut names: Vec<String> = Vec::new();
        for n in &graph.node {
            if (n.op_type == "Conv" || n.op_type == "Gemm") && !names.contains(&n.input[0]) {
                names.push(n.input[0].clone());
            }
        }
        names
    };
    let ranges = activation_ranges(&proto, &activations, inputs, method)?;
    let graph = proto.graph.as_mut().expect("checked above");
    let mut nodes = Vec::with_capacity(graph.node.len() * 3);
    let mut quantized_acts: std::collections::HashMap<String, String> = Default::default();
    let scalar_f32 = |name: String, v: f32| pb::TensorProto {
        name,
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: v.to_le_bytes().to_vec(),
        ..Default::default()
    };
    for node in std::mem::take(&mut graph.node) {
        if node.op_type != "Conv" && node.op_type != "Gemm" {
            nodes.push(node);
            continue;
        }
        let mut node = node;
        // activation: Quantize -> Dequantize, once per tensor
        let act = node.input[0].clone();
        let dq = match quantized_acts.get(&act) {
            Some(dq) => dq.clone(),
            None => {
                let (lo, hi) = ranges[&act];
                let unsigned = lo >= 0.0;
                let (scale, zp) = if unsigned {
                    (
                        (hi / 255.0).max(1e-12),
                        pb::TensorProto {
                            name: format!("{act}_zp"),
                            data_type: pb::tensor_proto::DataType::Uint8 as i32,
                            raw_data: vec![0u8],
                            ..Default::default()
                        },
                    )
                } else {
                    (
                        (hi.max(-lo) / 127.0).max(1e-12),
                        pb::TensorProto {
                            name: format!("{act}_zp"),
                            data_type: pb::tensor_proto::DataType::Int8 as i32,
                            raw_data: vec![0u8],
                            ..Default::default()
                        },
                    )
                };
                graph
                    .initializer
                    .push(scalar_f32(format!("{act}_scale"), scale));
                graph.initializer.push(zp);
                let (q, dq) = (format!("{act}_q"), format!("{act}_dq"));
                for (op, input, output) in [
                    ("QuantizeLinear", act.clone(), q.clone()),
                    ("DequantizeLinear", q, dq.clone()),
                ] {
                    nodes.push(pb::NodeProto {
                        name: output.clone(),
                        op_type: op.into(),
                        input: vec![input, format!("{act}_scale"), format!("{act}_zp")],
                        output: vec![output],
                        ..Default::default()
                    });
                }
                quantized_acts.insert(act.clone(), dq.clone());
                dq
            }
        };
        node.input[0] = dq;
        // weights: per-output-channel symmetric int8
        let wname = node.input[1].clone();
        let w = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == wname)
            .ok_or_else(|| tract_err(path, format!("weights {wname} are not an initializer")))?;
        let values: Vec<f32> = w
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let out = w.dims[0] as usize;
        let per = values.len() / out.max(1);
        let mut q = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(out);
        for o in 0..out {
            let row = &values[o * per..(o + 1) * per];
            let s = (row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0).max(1e-12);
            scales.push(s);
            q.extend(
                row.iter()
                    .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8),
            );
        }
        w.name = format!("{wname}_q");
        w.data_type = pb::tensor_proto::DataType::Int8 as i32;
        w.raw_data = q;
        let dims = vec![out as i64];
        graph.initializer.push(pb::TensorProto {
            name: format!("{wname}_scale"),
            dims: dims.clone(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: scales.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        graph.initializer.push(pb::TensorProto {
            name: format!("{wname}_zp"),
            dims,
            data_type: pb::tensor_proto::DataType::Int8 as i32,
            raw_data: vec![0u8; out],
            ..Default::default()
        });
        nodes.push(pb::NodeProto {
            name: format!("{wname}_dq"),
            op_type: "DequantizeLinear".into(),
            input: vec![
                format!("{wname}_q"),
                format!("{wname}_scale"),
                format!("{wname}_zp"),
            ],
            output: vec![format!("{wname}_dq")],
            attribute: vec![int("axis", 0)],
            ..Default::default()
        });
        node.input[1] = format!("{wname}_dq");
        nodes.push(node);
    }
    graph.node = nodes;
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: "oodmon.quantization".into(),
        value: serde_json::json!({"form": "qdq", "weights": "int8 per-channel symmetric", "activations": method, "calibration_images": inputs.len()}).to_string(),
    });
    Ok(proto.encode_to_vec())
}

/// (min, max) of each named activation over the calibration inputs; with a percentile
/// method the magnitude bound is the percentile of a histogram of |x| (second pass).
fn activation_ranges(
    proto: &pb::ModelProto,
    names: &[String],
    inputs: &[Vec<f32>],
    method: RangeMethod,
) -> Result<std::collections::HashMap<String, (f32, f32)>> {
    let path = Path::new("<model being quantized>");
    let mut probe = proto.clone();
    let graph = probe.graph.as_mut().expect("checked by the caller");
    graph.output.clear();
    for n in names {
        graph.output.push(pb::ValueInfoProto {
            name: n.clone(),
            ..Default::default()
        });
    }
    let bytes = probe.encode_to_vec();
    let shape = |v: &[f32]| -> Result<(usize, usize)> {
        let hw = v.len() / 3;
        let side = (hw as f64).sqrt() as usize;
        if side * side * 3 != v.len() {
            return Err(Error::param(
                "int8 calibration",
                "inputs must be square 3 x H x W tensors",
            ));
        }
        Ok((side, side))
    };
    let (h, w) = shape(&inputs[0])?;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(&bytes))
        .and_then(|m| m.with_input_fact(0, f32::fact([1, 3, h, w]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| tract_err(path, e))?;
    let run = |x: &Vec<f32>| -> Result<TVec<TValue>> {
        let t = tract_ndarray::Array4::from_shape_vec((1, 3, h, w), x.clone())
            .map_err(|e| Error::param("int8 calibration input", e.to_string()))?;
        plan.run(tvec!(Tensor::from(t).into()))
            .map_err(|e| Error::param("int8 calibration run", format!("{e:#}")))
    };
    let mut ranges: Vec<(f32, f32)> = vec![(f32::INFINITY, f32::NEG_INFINITY); names.len()];
    for x in inputs {
        for (r, out) in ranges.iter_mut().zip(run(x)?.iter()) {
            let view = out
                .to_plain_array_view::<f32>()
                .map_err(|e| Error::param("int8 calibration", format!("{e:#}")))?;
            for &v in view.iter() {
                r.0 = r.0.min(v);
                r.1 = r.1.max(v);
            }
        }
    }
    if method != RangeMethod::MinMax {
        if let RangeMethod::Percentile { percentile } = method {
            if !(50.0..=100.0).contains(&percentile) {
                return Err(Error::param(
                    "percentile",
                    format!("{percentile} is not in [50, 100]"),
                ));
            }
        }
        let bounds: Vec<f32> = ranges
            .iter()
            .map(|r| r.0.abs().max(r.1.abs()).max(1e-12))
            .collect();
        let mut hist = vec![vec![0u64; HISTOGRAM_BINS]; names.len()];
        for x in inputs {
            for ((h, out), b) in hist.iter_mut().zip(run(x)?.iter()).zip(&bounds) {
                let view = out
                    .to_plain_array_view::<f32>()
                    .map_err(|e| Error::param("int8 calibration", format!("{e:#}")))?;
                for &v in view.iter() {
                    let bin = ((v.abs() / b) * (HISTOGRAM_BINS - 1) as f32) as usize;
                    h[bin.min(HISTOGRAM_BINS - 1)] += 1;
                }
            }
        }
        for ((r, h), b) in ranges.iter_mut().zip(&hist).zip(&bounds) {
            let clip = match method {
                RangeMethod::Entropy => entropy_clip_bin(h, 128) as f32 / HISTOGRAM_BINS as f32 * b,
                RangeMethod::Percentile { percentile } => {
                    let total: u64 = h.iter().sum();
                    let want = (total as f64 * percentile / 100.0).ceil() as u64;
                    let mut acc = 0;
                    let mut clip = *b;
                    for (i, &c) in h.iter().enumerate() {
                        acc += c;
                        if acc >= want {
                            clip = (i + 1) as f32 / HISTOGRAM_BINS as f32 * b;
                            break;
                        }
                    }
                    clip
                }
                RangeMethod::MinMax => *b,
            };
            *r = (r.0.max(-clip), r.1.min(clip));
        }
    }
    Ok(names.iter().cloned().zip(ranges).collect())
}
