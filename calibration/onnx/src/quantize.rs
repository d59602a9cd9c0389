//! Post-training quantization of an encoder written by [`crate::writer`]: int8 in QDQ form
//! (what the edge runs) or in operator form (QLinearConv, kept to measure against), and a
//! half-precision copy.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::f16;

use oodmon_runtime::probe::ActivationProbe;

use crate::error::{Error, Result};

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

impl RangeMethod {
    /// `minmax`, `entropy` or `percentile:P` (e.g. `percentile:99.99`).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "minmax" => RangeMethod::MinMax,
            "entropy" => RangeMethod::Entropy,
            other => match other
                .strip_prefix("percentile:")
                .and_then(|p| p.parse().ok())
            {
                Some(percentile) => RangeMethod::Percentile { percentile },
                None => {
                    return Err(Error::invalid(
                        "activation range",
                        format!("{other:?}: expected minmax, entropy or percentile:P"),
                    ))
                }
            },
        })
    }
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

/// How the int8 graph is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantForm {
    /// QuantizeLinear / DequantizeLinear pairs around float Conv and Gemm: the runtime
    /// chooses the integer kernels (tract folds the weight dequantization at load).
    Qdq,
    /// QLinearConv with int32 biases and output scales, dequantized after each convolution;
    /// Gemm stays in QDQ form.
    Operator,
}

/// Static post-training quantization in QDQ form: per-channel symmetric int8 weights and
/// per-tensor activation scales (uint8 for non-negative activations, else symmetric int8)
/// for the inputs of every Conv and Gemm, estimated from `inputs` (preprocessed images,
/// `3 x H x W` each). Biases stay float, as the QDQ form allows.
pub fn quantize_qdq(model: &[u8], inputs: &[Vec<f32>], method: RangeMethod) -> Result<Vec<u8>> {
    quantize(model, inputs, method, QuantForm::Qdq)
}

fn scalar_f32(name: String, v: f32) -> pb::TensorProto {
    pb::TensorProto {
        name,
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: v.to_le_bytes().to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: Vec<String>, output: String) -> pb::NodeProto {
    pb::NodeProto {
        name: output.clone(),
        op_type: op.into(),
        input: inputs,
        output: vec![output],
        ..Default::default()
    }
}

/// Adds the scale and zero point of a per-tensor activation range and returns the scale.
/// QDQ form: uint8 with zero point 0 when the range is non-negative, else symmetric int8.
/// Operator form: always uint8, asymmetric where the range is signed, because
/// onnxruntime's QLinearConv wants its input and output of one type.
fn activation_qparams(
    graph: &mut pb::GraphProto,
    name: &str,
    (lo, hi): (f32, f32),
    form: QuantForm,
) -> f32 {
    // a tensor that is both a convolution's output and another's input gets one scale
    if let Some(existing) = graph
        .initializer
        .iter()
        .find(|t| t.name == format!("{name}_scale"))
        .and_then(|t| f32_values(t).first().copied())
    {
        return existing;
    }
    let (scale, data_type, zero_point) = if lo >= 0.0 {
        (
            (hi / 255.0).max(1e-12),
            pb::tensor_proto::DataType::Uint8,
            0u8,
        )
    } else if form == QuantForm::Operator {
        let hi = hi.max(0.0);
        let scale = ((hi - lo) / 255.0).max(1e-12);
        let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        (scale, pb::tensor_proto::DataType::Uint8, zp)
    } else {
        (
            (hi.max(-lo) / 127.0).max(1e-12),
            pb::tensor_proto::DataType::Int8,
            0u8,
        )
    };
    graph
        .initializer
        .push(scalar_f32(format!("{name}_scale"), scale));
    graph.initializer.push(pb::TensorProto {
        name: format!("{name}_zp"),
        data_type: data_type as i32,
        raw_data: vec![zero_point],
        ..Default::default()
    });
    scale
}

fn f32_values(t: &pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        return t.float_data.clone();
    }
    t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Replaces the float weights `wname` `[out, ...]` by per-output-channel symmetric int8
/// (`{wname}_q`, `{wname}_scale`, `{wname}_zp`) and returns the scales.
fn quantize_weights(graph: &mut pb::GraphProto, wname: &str) -> Result<Vec<f32>> {
    let path = Path::new("<model being quantized>");
    let w = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == wname)
        .ok_or_else(|| Error::model(path, format!("weights {wname} are not an initializer")))?;
    let values = f32_values(w);
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
    w.float_data.clear();
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
    Ok(scales)
}

/// Static post-training int8 quantization in the given form; see [`QuantForm`] and
/// [`quantize_qdq`]. In operator form the convolutions' outputs get their own per-tensor
/// scales from the same calibration inputs, and their biases become int32 at scale
/// `x_scale * w_scale[o]`.
pub fn quantize(
    model: &[u8],
    inputs: &[Vec<f32>],
    method: RangeMethod,
    form: QuantForm,
) -> Result<Vec<u8>> {
    let path = Path::new("<model being quantized>");
    if inputs.is_empty() {
        return Err(Error::invalid("int8 calibration", "no calibration images"));
    }
    let mut proto = pb::ModelProto::decode(model).map_err(|e| Error::model(path, e))?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::model(path, "no graph"))?;
    let mut activations: Vec<String> = Vec::new();
    for n in &graph.node {
        if (n.op_type == "Conv" || n.op_type == "Gemm") && !activations.contains(&n.input[0]) {
            activations.push(n.input[0].clone());
        }
        if form == QuantForm::Operator && n.op_type == "Conv" && !activations.contains(&n.output[0])
        {
            activations.push(n.output[0].clone());
        }
        // QDQ: both inputs of a residual Add are quantized too, so that a runtime can keep
        // the whole block in int8 instead of leaving int8 at every Add
        if form == QuantForm::Qdq && n.op_type == "Add" {
            for i in &n.input {
                let constant = graph.initializer.iter().any(|t| &t.name == i);
                if !constant && !activations.contains(i) {
                    activations.push(i.clone());
                }
            }
        }
    }
    let ranges = activation_ranges(&proto, &activations, inputs, method)?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::model(path, "no graph"))?;
    let mut nodes = Vec::with_capacity(graph.node.len() * 3);
    // activation name -> (quantized name, scale)
    let mut quantized: HashMap<String, (String, f32)> = Default::default();
    for mut conv in std::mem::take(&mut graph.node) {
        if form == QuantForm::Qdq && conv.op_type == "Add" {
            for input in conv.input.iter_mut() {
                let Some(&range) = ranges.get(input.as_str()) else {
                    continue;
                };
                *input = qdq_pair(graph, &mut nodes, &mut quantized, input, range, form);
            }
            nodes.push(conv);
            continue;
        }
        if conv.op_type != "Conv" && conv.op_type != "Gemm" {
            nodes.push(conv);
            continue;
        }
        let act = conv.input[0].clone();
        let (act_q, act_scale) = match quantized.get(&act) {
            Some(q) => q.clone(),
            None => {
                let scale = activation_qparams(graph, &act, ranges[&act], form);
                let q = format!("{act}_q");
                nodes.push(node(
                    "QuantizeLinear",
                    vec![act.clone(), format!("{act}_scale"), format!("{act}_zp")],
                    q.clone(),
                ));
                quantized.insert(act.clone(), (q.clone(), scale));
                (q, scale)
            }
        };
        let wname = conv.input[1].clone();
        let w_scales = quantize_weights(graph, &wname)?;
        if form == QuantForm::Operator && conv.op_type == "Conv" {
            let out = conv.output[0].clone();
            let out_scale = activation_qparams(graph, &out, ranges[&out], form);
            let bias_name = conv.input.get(2).cloned();
            let mut inputs = vec![
                act_q,
                format!("{act}_scale"),
                format!("{act}_zp"),
                format!("{wname}_q"),
                format!("{wname}_scale"),
                format!("{wname}_zp"),
                format!("{out}_scale"),
                format!("{out}_zp"),
            ];
            if let Some(bias_name) = bias_name {
                let b = graph
                    .initializer
                    .iter_mut()
                    .find(|t| t.name == bias_name)
                    .ok_or_else(|| {
                        Error::model(path, format!("bias {bias_name} is not an initializer"))
                    })?;
                let q: Vec<u8> = f32_values(b)
                    .iter()
                    .zip(&w_scales)
                    .flat_map(|(v, s)| {
                        ((*v as f64 / (act_scale as f64 * *s as f64)).round() as i32).to_le_bytes()
                    })
                    .collect();
                b.name = format!("{bias_name}_q");
                b.data_type = pb::tensor_proto::DataType::Int32 as i32;
                b.raw_data = q;
                b.float_data.clear();
                inputs.push(format!("{bias_name}_q"));
            }
            let out_q = format!("{out}_q");
            // a convolution that reads this output directly takes the int8 tensor as is
            quantized.insert(out.clone(), (out_q.clone(), out_scale));
            nodes.push(pb::NodeProto {
                name: out_q.clone(),
                op_type: "QLinearConv".into(),
                input: inputs,
                output: vec![out_q.clone()],
                attribute: conv.attribute,
                ..Default::default()
            });
            nodes.push(node(
                "DequantizeLinear",
                vec![out_q, format!("{out}_scale"), format!("{out}_zp")],
                out,
            ));
            continue;
        }
        let act_dq = format!("{act}_dq");
        if !nodes.iter().any(|n| n.output[0] == act_dq) {
            nodes.push(node(
                "DequantizeLinear",
                vec![act_q, format!("{act}_scale"), format!("{act}_zp")],
                act_dq.clone(),
            ));
        }
        conv.input[0] = act_dq;
        let mut dq = node(
            "DequantizeLinear",
            vec![
                format!("{wname}_q"),
                format!("{wname}_scale"),
                format!("{wname}_zp"),
            ],
            format!("{wname}_dq"),
        );
        dq.attribute.push(crate::writer::int("axis", 0));
        nodes.push(dq);
        conv.input[1] = format!("{wname}_dq");
        nodes.push(conv);
    }
    graph.node = nodes;
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: "oodmon.quantization".into(),
        value: serde_json::json!({"form": form, "weights": "int8 per-channel symmetric", "activations": method, "calibration_images": inputs.len()}).to_string(),
    });
    Ok(proto.encode_to_vec())
}

/// `QuantizeLinear` then `DequantizeLinear` of activation `act` (each made once, however
/// many nodes read it); returns the dequantized tensor's name for the reader.
fn qdq_pair(
    graph: &mut pb::GraphProto,
    nodes: &mut Vec<pb::NodeProto>,
    quantized: &mut HashMap<String, (String, f32)>,
    act: &str,
    range: (f32, f32),
    form: QuantForm,
) -> String {
    let act_q = match quantized.get(act) {
        Some((q, _)) => q.clone(),
        None => {
            let scale = activation_qparams(graph, act, range, form);
            let q = format!("{act}_q");
            nodes.push(node(
                "QuantizeLinear",
                vec![act.to_string(), format!("{act}_scale"), format!("{act}_zp")],
                q.clone(),
            ));
            quantized.insert(act.to_string(), (q.clone(), scale));
            q
        }
    };
    let act_dq = format!("{act}_dq");
    if !nodes.iter().any(|n| n.output.first() == Some(&act_dq)) {
        nodes.push(node(
            "DequantizeLinear",
            vec![act_q, format!("{act}_scale"), format!("{act}_zp")],
            act_dq.clone(),
        ));
    }
    act_dq
}

/// A half-precision copy of a float encoder: every float initializer stored as float16,
/// the input cast to float16 and the output back to float32, so callers still pass and
/// receive float32 (the edge's interface does not change).
pub fn to_f16(model: &[u8]) -> Result<Vec<u8>> {
    use pb::tensor_proto::DataType;
    let path = Path::new("<model being converted>");
    let mut proto = pb::ModelProto::decode(model).map_err(|e| Error::model(path, e))?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::model(path, "no graph"))?;
    if graph
        .node
        .iter()
        .any(|n| n.op_type.contains("Quantize") || n.op_type.starts_with("QLinear"))
    {
        return Err(Error::model(
            path,
            "already quantized; convert the float model to float16",
        ));
    }
    // tract 0.23 mistypes a float16 Gemm's output, so Gemm becomes MatMul + Add
    let mut nodes = Vec::with_capacity(graph.node.len() + 4);
    for n in std::mem::take(&mut graph.node) {
        if n.op_type != "Gemm" {
            nodes.push(n);
            continue;
        }
        let trans_b = n.attribute.iter().any(|a| a.name == "transB" && a.i == 1);
        let other = n.attribute.iter().any(|a| {
            (a.name == "transA" && a.i != 0)
                || ((a.name == "alpha" || a.name == "beta") && a.f != 1.0)
        });
        if other {
            return Err(Error::model(
                path,
                "Gemm with transA, alpha or beta is not supported",
            ));
        }
        if trans_b {
            let w = graph
                .initializer
                .iter_mut()
                .find(|t| t.name == n.input[1])
                .ok_or_else(|| Error::model(path, "Gemm weights are not an initializer"))?;
            let (rows, cols) = (w.dims[0] as usize, w.dims[1] as usize);
            let v = f32_values(w);
            let t: Vec<f32> = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r, c)))
                .map(|(r, c)| v[r * cols + c])
                .collect();
            w.dims = vec![cols as i64, rows as i64];
            w.raw_data = t.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.float_data.clear();
        }
        let out = n.output[0].clone();
        match n.input.get(2) {
            Some(bias) => {
                let product = format!("{out}_matmul");
                nodes.push(node("MatMul", n.input[..2].to_vec(), product.clone()));
                nodes.push(node("Add", vec![product, bias.clone()], out));
            }
            None => nodes.push(node("MatMul", n.input[..2].to_vec(), out)),
        }
    }
    graph.node = nodes;
    for t in &mut graph.initializer {
        if t.data_type == DataType::Float as i32 {
            let half: Vec<u8> = f32_values(t)
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect();
            t.data_type = DataType::Float16 as i32;
            t.raw_data = half;
            t.float_data.clear();
        }
    }
    let input = graph
        .input
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| Error::model(path, "no input"))?;
    let output = graph
        .output
        .first()
        .map(|o| o.name.clone())
        .ok_or_else(|| Error::model(path, "no output"))?;
    let (input16, output16) = (format!("{input}_f16"), format!("{output}_f16"));
    for n in &mut graph.node {
        for i in n.input.iter_mut() {
            if *i == input {
                *i = input16.clone();
            }
        }
        for o in n.output.iter_mut() {
            if *o == output {
                *o = output16.clone();
            }
        }
    }
    let cast = |from: &str, to: &str, ty: DataType| {
        let mut n = node("Cast", vec![from.into()], to.into());
        n.name = format!("cast_{to}");
        n.attribute.push(crate::writer::int("to", ty as i64));
        n
    };
    graph
        .node
        .insert(0, cast(&input, &input16, DataType::Float16));
    graph.node.push(cast(&output16, &output, DataType::Float));
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: "oodmon.quantization".into(),
        value: serde_json::json!({"form": "f16", "weights": "float16", "activations": "float16"})
            .to_string(),
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
    let shape = |v: &[f32]| -> Result<(usize, usize)> {
        let hw = v.len() / 3;
        let side = (hw as f64).sqrt() as usize;
        if side * side * 3 != v.len() {
            return Err(Error::invalid(
                "int8 calibration",
                "inputs must be square 3 x H x W tensors",
            ));
        }
        Ok((side, side))
    };
    let first = inputs
        .first()
        .ok_or_else(|| Error::invalid("int8 calibration", "no calibration images"))?;
    let (h, w) = shape(first)?;
    let probe = ActivationProbe::new(proto, names, h, w)?;
    let mut ranges: Vec<(f32, f32)> = vec![(f32::INFINITY, f32::NEG_INFINITY); names.len()];
    for x in inputs {
        probe.run(x, |i, values| {
            let r = &mut ranges[i];
            for &v in values {
                r.0 = r.0.min(v);
                r.1 = r.1.max(v);
            }
        })?;
    }
    if method != RangeMethod::MinMax {
        if let RangeMethod::Percentile { percentile } = method {
            if !(50.0..=100.0).contains(&percentile) {
                return Err(Error::invalid(
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
            probe.run(x, |i, values| {
                let (h, b) = (&mut hist[i], bounds[i]);
                for &v in values {
                    let bin = ((v.abs() / b) * (HISTOGRAM_BINS - 1) as f32) as usize;
                    h[bin.min(HISTOGRAM_BINS - 1)] += 1;
                }
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::OnnxBuilder;

    /// conv -> relu -> conv, plus the skip: `relu(conv(x)) + conv(relu(conv(x)))`.
    fn residual_model() -> Vec<u8> {
        let w = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + seed) * 7919 % 1000) as f32 / 1000.0) - 0.5)
                .collect()
        };
        let mut b = OnnxBuilder::new(8, 8, false);
        let x = b.input();
        let a = b.conv(&x, &w(4 * 3 * 9, 1), &w(4, 2), 3, 3, 1).unwrap();
        let a = b.relu(&a);
        let c = b.conv(&a, &w(4 * 4 * 9, 3), &w(4, 4), 4, 3, 1).unwrap();
        let s = b.add(&a, &c);
        let p = b.pool_flatten(&s);
        b.finish(&p, 4, "test")
    }

    #[test]
    fn qdq_quantizes_both_inputs_of_a_residual_add() {
        let model = residual_model();
        let inputs: Vec<Vec<f32>> = (0..8)
            .map(|k| {
                (0..192)
                    .map(|i| ((i * 31 + k * 7) % 17) as f32 / 8.0 - 1.0)
                    .collect()
            })
            .collect();
        let q = quantize_qdq(&model, &inputs, RangeMethod::MinMax).unwrap();
        let proto = pb::ModelProto::decode(q.as_slice()).unwrap();
        let graph = proto.graph.unwrap();
        let producer = |name: &str| {
            graph
                .node
                .iter()
                .find(|n| n.output.iter().any(|o| o == name))
                .map(|n| n.op_type.clone())
        };
        let add = graph.node.iter().find(|n| n.op_type == "Add").unwrap();
        for input in &add.input {
            assert_eq!(
                producer(input).as_deref(),
                Some("DequantizeLinear"),
                "{input}"
            );
        }
        // each activation is quantized once however many nodes read it
        let mut quantized: Vec<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .map(|n| n.input[0].as_str())
            .collect();
        let all = quantized.len();
        quantized.sort_unstable();
        quantized.dedup();
        assert_eq!(quantized.len(), all);
        // and it still computes what the float model does
        let path = Path::new("t.onnx");
        let mut f = oodmon_runtime::Encoder::from_bytes(&model, path)
            .unwrap()
            .session()
            .unwrap();
        let mut g = oodmon_runtime::Encoder::from_bytes(&q, path)
            .unwrap()
            .session()
            .unwrap();
        for x in &inputs {
            let (a, b) = (f.embed(x).unwrap().to_vec(), g.embed(x).unwrap().to_vec());
            let err = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            assert!(err <= 0.05 * scale, "int8 off by {err} of {scale}");
        }
    }
}
