//! ONNX encoders written from plain weight arrays (libtorch has no ONNX export, and edge
//! tests need small real encoders without libtorch). `oodmon-runtime` runs them.
//!
//! The graph uses only operators that tract optimises well: Conv (batch norm folded in),
//! Relu, Add, GlobalAveragePool, Flatten and Gemm.

use prost::Message;
use tract_onnx::pb;

use crate::error::{Error, Result};

/// ONNX IR version and default-domain opset written.
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
/// Names of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "embedding";
/// Metadata key holding the preprocessing spec as JSON.
pub use oodmon_calibration::preprocess::ONNX_METADATA_KEY as META_PREPROCESSING;

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

/// The geometry of one convolution: input channels, square kernel, stride, groups and
/// padding `[top, left, bottom, right]` (TensorFlow's "same" padding is asymmetric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub cin: usize,
    pub k: usize,
    pub stride: usize,
    pub groups: usize,
    pub pads: [usize; 4],
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

pub(crate) fn int(name: &str, value: i64) -> pb::AttributeProto {
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

    /// A square convolution with bias and symmetric padding `k / 2`; `weight` is
    /// `[out, in, k, k]`.
    pub fn conv(
        &mut self,
        x: &str,
        weight: &[f32],
        bias: &[f32],
        cin: usize,
        k: usize,
        stride: usize,
    ) -> Result<String> {
        let pad = k / 2;
        self.conv_with(
            x,
            weight,
            bias,
            ConvShape {
                cin,
                k,
                stride,
                groups: 1,
                pads: [pad, pad, pad, pad],
            },
        )
    }

    /// A square convolution with bias, any grouping (depthwise: `groups == cin`) and any
    /// padding; `weight` is `[out, cin / groups, k, k]`.
    pub fn conv_with(
        &mut self,
        x: &str,
        weight: &[f32],
        bias: &[f32],
        shape: ConvShape,
    ) -> Result<String> {
        let ConvShape {
            cin,
            k,
            stride,
            groups,
            pads,
        } = shape;
        let cout = bias.len();
        if groups == 0 || !cin.is_multiple_of(groups) || !cout.is_multiple_of(groups) {
            return Err(Error::invalid(
                "convolution groups",
                format!("{groups} groups for {cin} -> {cout} channels"),
            ));
        }
        let per_group = cin / groups;
        if weight.len() != cout * per_group * k * k {
            return Err(Error::invalid(
                "convolution weights",
                format!(
                    "{} values for [{cout}, {per_group}, {k}, {k}]",
                    weight.len()
                ),
            ));
        }
        self.count += 1;
        let w = self.initializer("conv_w", &[cout, per_group, k, k], weight);
        let b = self.initializer("conv_b", &[cout], bias);
        let [top, left, bottom, right] = pads.map(|p| p as i64);
        Ok(self.node(
            "Conv",
            vec![x.into(), w, b],
            vec![
                ints("kernel_shape", &[k as i64, k as i64]),
                ints("strides", &[stride as i64, stride as i64]),
                // ONNX order: all beginnings, then all ends
                ints("pads", &[top, left, bottom, right]),
                ints("dilations", &[1, 1]),
                int("group", groups as i64),
            ],
        ))
    }

    /// `min(max(x, lo), hi)`: ReLU6 is `clip(x, 0, 6)`.
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        self.count += 1;
        let lo = self.initializer("clip_min", &[], &[lo]);
        let hi = self.initializer("clip_max", &[], &[hi]);
        self.node("Clip", vec![x.into(), lo, hi], vec![])
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
            return Err(Error::invalid(
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
