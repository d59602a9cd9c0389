//! oodmon's own CPU kernels for the two operator patterns where tract 0.23.9 spends most of
//! an EfficientNet-Lite0 frame (BENCHMARKS.md, "Where tract loses"): depthwise convolution,
//! whose per-channel zone walk costs more than its arithmetic on small planes, and the QDQ
//! file's `QuantizeLinear` -> `DequantizeLinear` pairs, which tract runs as two scalar passes
//! with an 8-bit tensor in between.
//!
//! Both are swapped into the decluttered graph before tract optimises it; then each
//! depthwise convolution takes in the pair its input comes through and the ReLU6 and pair
//! its output goes through, so that its planes are walked once. Last, where
//! [`Kernels`] says so, the pointwise convolutions go to int8 ([`crate::pointwise`]: the
//! one swap that does not keep tract's values bit for bit). The rest gives
//! **bit-identical** results to tract's own operators, by construction: every depthwise
//! output is the bias plus one multiply and one add per tap, in tract's tap order, with no
//! fused multiply-add (padding taps add an exact zero, or on small planes are skipped, as
//! tract's own walk skips them); the fused quantize-dequantize is
//! tract's formula element for element. A bundle calibrated through tract stays valid, and
//! the tests compare the two plans value for value. `OODMON_TRACT_KERNELS=exact` keeps to
//! these, `tract` to tract's own operators (to bisect a difference, or to time them). On aarch64 tract's
//! decluttering lays most depthwise layers out channel-last (HWC) for a NEON kernel of its
//! own; those stay tract's.
//!
//! The loops are compiled a second time for AVX on x86-64, chosen at run time when the
//! CPU has it (as tract chooses its own kernels); no multiply and add is ever fused, so the
//! two give the same values. Output tensors are allocated uninitialised, as tract's own
//! operators do: the one `unsafe` here, and every element is written before it is read.

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Max, Min};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearI8, QuantizeLinearU8};

/// Which operators tract runs the CPU plan with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// oodmon's kernels where they apply and pay: the exact ones ([`Kernels::Exact`])
    /// everywhere, and int8 pointwise convolutions ([`crate::pointwise`]) on an x86-64 CPU
    /// with AVX-512 VNNI or AVX2.
    #[default]
    Oodmon,
    /// The exact ones and int8 pointwise convolutions on any CPU (plain loops where it has
    /// neither VNNI nor AVX2: the same values, slower than tract's).
    Int8,
    /// Only the kernels that give tract's values bit for bit: depthwise convolution and
    /// the fused quantize-dequantize pair.
    Exact,
    /// tract's own operators throughout.
    Tract,
}

impl Kernels {
    /// The choice from `OODMON_TRACT_KERNELS` (`oodmon`, the default, `int8`, `exact` or
    /// `tract`); an unknown value is an error naming it. `OODMON_INT8_PATH` is checked
    /// here too, so that a typo in either stops start-up.
    pub fn from_env() -> std::result::Result<Self, String> {
        crate::pointwise::IntPath::from_env()?;
        match std::env::var("OODMON_TRACT_KERNELS") {
            Err(_) => Ok(Self::Oodmon),
            Ok(v) => match v.trim() {
                "" | "oodmon" => Ok(Self::Oodmon),
                "int8" => Ok(Self::Int8),
                "exact" => Ok(Self::Exact),
                "tract" => Ok(Self::Tract),
                other => Err(format!(
                    "OODMON_TRACT_KERNELS={other:?}: expected \"oodmon\", \"int8\", \"exact\" or \"tract\""
                )),
            },
        }
    }
}

/// How many operators [`swap_in`] replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Swapped {
    pub depthwise: usize,
    /// Pairs run by oodmon, on their own or inside a depthwise convolution.
    pub quantize_dequantize: usize,
    /// Of those, the pairs folded into one of oodmon's convolutions (a depthwise one's
    /// input or output, a pointwise one's output).
    pub folded_quantize_dequantize: usize,
    /// Clips (`Max` and `Min` with a constant, ReLU6) folded into one of oodmon's
    /// convolutions.
    pub folded_clips: usize,
    /// Pointwise convolutions run in int8 (not bit-identical to tract: see
    /// [`crate::pointwise`]).
    pub pointwise_int8: usize,
    /// The loops those run on (`AVX-512 VNNI`, `AVX2` or `plain loops`), when any do.
    pub pointwise_loops: &'static str,
}

impl Swapped {
    /// In a few words, for a run's summary line.
    pub fn short(&self) -> String {
        if self.pointwise_int8 > 0 {
            format!("oodmon kernels, int8 pointwise on {}", self.pointwise_loops)
        } else if self.depthwise + self.quantize_dequantize > 0 {
            "oodmon's exact kernels".into()
        } else {
            "tract's own operators".into()
        }
    }
}

impl std::fmt::Display for Swapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::default() {
            write!(f, "tract's own operators")
        } else {
            write!(
                f,
                "oodmon kernels for {} depthwise convolutions and {} quantize-dequantize pairs",
                self.depthwise, self.quantize_dequantize
            )?;
            if self.folded_quantize_dequantize + self.folded_clips > 0 {
                write!(
                    f,
                    " ({} of the pairs and {} clips run inside the convolutions)",
                    self.folded_quantize_dequantize, self.folded_clips
                )?;
            }
            if self.pointwise_int8 > 0 {
                write!(
                    f,
                    ", {} pointwise convolutions in int8 ({})",
                    self.pointwise_int8, self.pointwise_loops
                )?;
            }
            Ok(())
        }
    }
}

/// Replaces, in a decluttered model, every depthwise convolution this module runs
/// (f32, NCHW, 2-D, no dilation, constant weights) and every `QuantizeLinear` ->
/// `DequantizeLinear` pair with oodmon's operators, then, as `kernels` says, the int8
/// pointwise convolutions ([`crate::pointwise`]). Anything else is left to tract.
pub fn swap_in(model: &mut TypedModel, kernels: Kernels) -> TractResult<Swapped> {
    let mut swapped = Swapped::default();
    if kernels == Kernels::Tract {
        return Ok(swapped);
    }
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(op) = depthwise_for(model, node)? {
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(model, node.inputs[0])?;
            let y = patch.wire_node(&node.name, op, &[x])?[0];
            patch.shunt_outside(model, OutletId::new(id, 0), y)?;
            patch.apply(model)?;
            swapped.depthwise += 1;
        } else if let Some((op, input)) = quantize_dequantize_for(model, node)? {
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(model, input)?;
            let y = patch.wire_node(&node.name, op, &[x])?[0];
            patch.shunt_outside(model, OutletId::new(id, 0), y)?;
            patch.apply(model)?;
            swapped.quantize_dequantize += 1;
        }
    }
    model.compact()?;
    for id in model.eval_order()? {
        if model.node(id).op_is::<DepthwiseNchw>() {
            fold_neighbours(model, id, &mut swapped)?;
        }
    }
    model.compact()?;
    let path = crate::pointwise::IntPath::chosen();
    if kernels == Kernels::Int8
        || (kernels == Kernels::Oodmon && path != crate::pointwise::IntPath::Portable)
    {
        let pointwise = crate::pointwise::swap_in(model, path)?;
        swapped.pointwise_int8 = pointwise.convolutions;
        swapped.pointwise_loops = path.name();
        swapped.folded_clips += pointwise.clips;
        swapped.folded_quantize_dequantize += pointwise.pairs;
    }
    Ok(swapped)
}

/// Folds into the depthwise convolution at `id` the quantize-dequantize pair its input
/// comes through and the clip and pair its output goes through, where each feeds only the
/// next: the same arithmetic in one walk over the tensor instead of three or four.
fn fold_neighbours(model: &mut TypedModel, id: usize, swapped: &mut Swapped) -> TractResult<()> {
    let node = model.node(id);
    let Some(op) = node.op_as::<DepthwiseNchw>() else {
        return Ok(());
    };
    let mut op = op.clone();
    let sole_user = |outlet: OutletId| sole_user(model, outlet);
    let mut input = node.inputs[0];
    if let Some(q) = model.node(input.node).op_as::<QuantizeDequantize>() {
        if sole_user(input)? == Some(id) {
            op.folded.input = Some(q.clone());
            input = model.node(input.node).inputs[0];
        }
    }
    let (last, clips) = op.folded.take_after(model, OutletId::new(id, 0))?;
    if op.folded == Folded::default() {
        return Ok(());
    }
    swapped.folded_clips += clips.min(1);
    swapped.folded_quantize_dequantize +=
        op.folded.input.is_some() as usize + op.folded.output.is_some() as usize;
    let name = model.node(id).name.clone();
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, input)?;
    let y = patch.wire_node(name, op, &[x])?[0];
    patch.shunt_outside(model, last, y)?;
    patch.apply(model)
}

/// The one node the tensor at `outlet` feeds, when it feeds one and is not a model output.
pub(crate) fn sole_user(model: &TypedModel, outlet: OutletId) -> TractResult<Option<usize>> {
    let successors = &model.node(outlet.node).outputs[outlet.slot].successors;
    Ok(
        (successors.len() == 1 && !model.output_outlets()?.contains(&outlet))
            .then(|| successors[0].node),
    )
}

/// The node `next` when it is an `f32` `Max` or `Min` (`which`) of the tensor at `from` and
/// a one-value constant, with that value.
fn clip_after(
    model: &TypedModel,
    from: OutletId,
    which: &str,
    next: Option<usize>,
) -> TractResult<Option<(usize, f32)>> {
    let Some(next) = next else {
        return Ok(None);
    };
    let node = model.node(next);
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let is_op = match which {
        "Max" => bin.0.is::<Max>(),
        _ => bin.0.is::<Min>(),
    };
    if !is_op || bin.1.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(other) = node.inputs.iter().find(|i| **i != from) else {
        return Ok(None);
    };
    let (from_fact, other_fact, out_fact) = (
        model.outlet_fact(from)?,
        model.outlet_fact(*other)?,
        model.outlet_fact(OutletId::new(next, 0))?,
    );
    let Some(value) = other_fact.konst.as_ref() else {
        return Ok(None);
    };
    if value.datum_type() != f32::datum_type()
        || value.len() != 1
        || out_fact.datum_type != f32::datum_type()
        || out_fact.shape != from_fact.shape
    {
        return Ok(None);
    }
    let value = value.try_as_plain_ram()?.as_slice::<f32>()?[0];
    Ok(Some((next, value)))
}

fn depthwise_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<DepthwiseNchw>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let channels = spec.input_channels;
    if conv.q_params.is_some()
        || conv.group < 2
        || conv.group != channels
        || spec.output_channels != channels
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.len() != 2
        || spec.dilations().iter().any(|&d| d != 1)
        || spec.kernel_shape.iter().product::<usize>() > MAX_TAPS
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let facts = model.node_input_facts(node.id)?;
    let (x, kernel, bias) = (facts[0], facts[1], facts[2]);
    let Some(shape) = x.shape.as_concrete() else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (kernel.konst.as_ref(), bias.konst.as_ref()) else {
        return Ok(None);
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    // tract drops a batch of one while decluttering: CHW then
    let batched = spec.data_format == DataFormat::NCHW;
    let hw = if batched { 2 } else { 1 };
    if x.datum_type != f32::datum_type()
        || shape.len() != hw + 2
        || shape[hw - 1] != channels
        || kernel.datum_type() != f32::datum_type()
        || kernel.shape() != [channels, 1, kh, kw]
        || bias.datum_type() != f32::datum_type()
        || !(bias.len() == channels || bias.len() == 1)
    {
        return Ok(None);
    }
    let padding = spec.computed_padding(&shape[hw..]);
    let strides = spec.strides();
    if padding.iter().any(|p| p.convoluted == 0) || strides.contains(&0) {
        return Ok(None);
    }
    let taps = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
    let bias = if bias.len() == channels {
        bias.to_vec()
    } else {
        vec![bias[0]; channels]
    };
    Ok(Some(DepthwiseNchw {
        batched,
        channels,
        input_hw: [shape[hw], shape[hw + 1]],
        output_hw: [padding[0].convoluted, padding[1].convoluted],
        kernel_hw: [kh, kw],
        strides: [strides[0], strides[1]],
        pad_before: [padding[0].pad_before, padding[1].pad_before],
        taps_by_lanes: Arc::new(taps_by_lanes(&taps, channels, kh * kw)),
        taps: Arc::new(taps),
        bias: Arc::new(bias),
        folded: Folded::default(),
    }))
}

fn quantize_dequantize_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(QuantizeDequantize, OutletId)>> {
    let Some(dq) = node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let q_node = model.node(node.inputs[0].node);
    let Some(q) = q_node.op_as::<ElementWiseOp>() else {
        return Ok(None);
    };
    let (scale, zero_point, low, high) = if let Some(q) = q.0.downcast_ref::<QuantizeLinearU8>() {
        (q.scale, q.zero_point as i32, 0, 255)
    } else if let Some(q) = q.0.downcast_ref::<QuantizeLinearI8>() {
        (q.scale, q.zero_point as i32, -128, 127)
    } else {
        return Ok(None);
    };
    let input = q_node.inputs[0];
    if model.outlet_fact(input)?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(Some((
        QuantizeDequantize {
            quantize_scale: scale,
            quantize_zero_point: zero_point,
            low,
            high,
            dequantize_scale: dq.scale,
            dequantize_zero_point: dq.zero_point,
        },
        input,
    )))
}

/// `[C, T]` taps as `[C / LANES, T, LANES]` (whole blocks of channels only).
fn taps_by_lanes(taps: &[f32], channels: usize, per_channel: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(channels / LANES * LANES * per_channel);
    for block in 0..channels / LANES {
        for t in 0..per_channel {
            out.extend((0..LANES).map(|l| taps[(block * LANES + l) * per_channel + t]));
        }
    }
    out
}

/// A depthwise 2-D convolution on NCHW (or CHW) `f32` with its weights in the op.
///
/// Each channel's padded plane is split into `stride_h x stride_w` phase planes, so that
/// every tap, at any stride, is one contiguous multiply-add over the output rows laid end
/// to end (the columns past the output's width are computed and dropped).
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseNchw {
    /// NCHW, or CHW where tract dropped a batch of one.
    batched: bool,
    channels: usize,
    input_hw: [usize; 2],
    output_hw: [usize; 2],
    kernel_hw: [usize; 2],
    strides: [usize; 2],
    pad_before: [usize; 2],
    /// `[C, kh * kw]`, taps row-major, tract's order.
    taps: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    /// The same taps as `[C / LANES, kh * kw, LANES]`, for small planes, where LANES
    /// channels go through together.
    taps_by_lanes: Arc<Vec<f32>>,
    /// The neighbouring operators run inside this one.
    folded: Folded,
}

/// What a depthwise convolution runs on its input before and on its output after, taken
/// from the graph's neighbouring nodes (see [`swap_in`]): the same values, one walk.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Folded {
    /// The quantize-dequantize pair the input came through.
    pub(crate) input: Option<QuantizeDequantize>,
    /// `Max` with this value, then `Min` with the next (ReLU6 as the graph writes it).
    pub(crate) max_with: Option<f32>,
    pub(crate) min_with: Option<f32>,
    /// The quantize-dequantize pair the output goes through.
    pub(crate) output: Option<QuantizeDequantize>,
}

impl Folded {
    /// Takes in the clip (`Max`, then `Min`, with constants) and the quantize-dequantize
    /// pair that the tensor at `from` goes through, each where it feeds only the next:
    /// the last outlet taken, and how many clip operators.
    pub(crate) fn take_after(
        &mut self,
        model: &TypedModel,
        from: OutletId,
    ) -> TractResult<(OutletId, usize)> {
        let (mut last, mut clips) = (from, 0);
        if let Some((next, value)) = clip_after(model, last, "Max", sole_user(model, last)?)? {
            self.max_with = Some(value);
            (last, clips) = (OutletId::new(next, 0), clips + 1);
        }
        if let Some((next, value)) = clip_after(model, last, "Min", sole_user(model, last)?)? {
            self.min_with = Some(value);
            (last, clips) = (OutletId::new(next, 0), clips + 1);
        }
        if let Some(next) = sole_user(model, last)? {
            if let Some(q) = model.node(next).op_as::<QuantizeDequantize>() {
                self.output = Some(q.clone());
                last = OutletId::new(next, 0);
            }
        }
        Ok((last, clips))
    }

    /// What runs inside, for an operator's `info` (", input QDQ, max 0, min 6, ...").
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}{}{}{}",
            if self.input.is_some() {
                ", input QDQ"
            } else {
                ""
            },
            self.max_with
                .map(|v| format!(", max {v}"))
                .unwrap_or_default(),
            self.min_with
                .map(|v| format!(", min {v}"))
                .unwrap_or_default(),
            if self.output.is_some() {
                ", output QDQ"
            } else {
                ""
            },
        )
    }

    /// The clip and the output's pair, in place, on one channel block's values.
    #[inline(always)]
    pub(crate) fn finish(&self, y: &mut [f32]) {
        if self.max_with.is_none() && self.min_with.is_none() && self.output.is_none() {
            return;
        }
        let one = |mut v: f32| {
            if let Some(low) = self.max_with {
                v = max_of(v, low);
            }
            if let Some(high) = self.min_with {
                v = min_of(v, high);
            }
            v
        };
        let mut chunks = y.chunks_exact_mut(LANES);
        for v in &mut chunks {
            let mut a = lanes(v).map(one);
            if let Some(q) = &self.output {
                a = q.vector(a);
            }
            v.copy_from_slice(&a);
        }
        for v in chunks.into_remainder() {
            *v = one(*v);
            if let Some(q) = &self.output {
                *v = q.exact(*v);
            }
        }
    }
}

impl Eq for DepthwiseNchw {}

impl Op for DepthwiseNchw {
    fn name(&self) -> StaticName {
        "OodmonDepthwiseNchw".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channels, {:?} -> {:?}, kernel {:?}, strides {:?}, pad before {:?}{}",
            self.channels,
            self.input_hw,
            self.output_hw,
            self.kernel_hw,
            self.strides,
            self.pad_before,
            self.folded.describe(),
        )])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for DepthwiseNchw {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape();
        let hw = 1 + self.batched as usize;
        ensure!(
            shape.len() == hw + 2
                && shape[hw - 1] == self.channels
                && shape[hw..] == self.input_hw[..]
                && x.datum_type() == f32::datum_type(),
            "depthwise input {:?} {:?}, expected [{}{}, {}, {}] f32",
            shape,
            x.datum_type(),
            if self.batched { "N, " } else { "" },
            self.channels,
            self.input_hw[0],
            self.input_hw[1]
        );
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[hw..].copy_from_slice(&self.output_hw);
        // SAFETY: `run` writes every output row of every plane (zeroing first cost 5% of
        // an EfficientNet-Lite0 inference)
        #[allow(unsafe_code)]
        let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        {
            let input = x.try_as_plain_ram()?;
            let input = input.as_slice::<f32>()?;
            let mut out = output.try_as_plain_ram_mut()?;
            let out = out.as_slice_mut::<f32>()?;
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                self.run(input, out, &mut scratch);
            });
        }
        Ok(tvec!(output.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for DepthwiseNchw {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let hw = 1 + self.batched as usize;
        ensure!(
            shape.len() == hw + 2,
            "depthwise input rank {}",
            shape.len()
        );
        shape[hw] = self.output_hw[0].to_dim();
        shape[hw + 1] = self.output_hw[1].to_dim();
        Ok(tvec!(f32::fact(&*shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let per_image = self.channels * self.output_hw[0] * self.output_hw[1] * self.taps_len();
        let batch = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.to_dim()
        };
        Ok(tvec!((Cost::FMA(f32::datum_type()), batch * per_image)))
    }
}

thread_local! {
    /// The phase planes and the accumulator: grown once per thread, reused by every call.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where the phase planes and the accumulator sit in the scratch, for one channel.
struct Geometry {
    /// Rows and columns of one phase plane.
    phase_hw: [usize; 2],
    /// Values the accumulator covers: the output rows laid end to end at the phase width,
    /// rounded up to whole vectors of [`LANES`].
    run: usize,
}

/// Values per step of the accumulation loop (one AVX register).
const LANES: usize = 8;

impl DepthwiseNchw {
    /// The grid the output lies on, when its quantize-dequantize pair runs inside.
    pub(crate) fn output_grid(&self) -> Option<crate::pointwise::Grid> {
        self.folded.output.as_ref().map(QuantizeDequantize::grid)
    }

    fn taps_len(&self) -> usize {
        self.kernel_hw[0] * self.kernel_hw[1]
    }

    fn geometry(&self) -> Geometry {
        let [sh, sw] = self.strides;
        let [kh, kw] = self.kernel_hw;
        let [oh, ow] = self.output_hw;
        // the padded extent the output reads, split by stride into phases
        let padded = [(oh - 1) * sh + kh, (ow - 1) * sw + kw];
        let phase_hw = [padded[0].div_ceil(sh), padded[1].div_ceil(sw)];
        Geometry {
            phase_hw,
            run: ((oh - 1) * phase_hw[1] + ow).next_multiple_of(LANES),
        }
    }

    fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
        depthwise(self, input, output, scratch)
    }
}

/// Every plane of `input` through `op`'s convolution into `output`.
#[multiversion::multiversion(targets("x86_64+avx"))]
fn depthwise(op: &DepthwiseNchw, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
    let [oh, ow] = op.output_hw;
    if oh * ow <= SMALL_PLANE && op.channels >= LANES {
        op.convolve_across_channels(input, output, scratch);
    } else {
        op.convolve_planes(input, output, scratch, 0);
    }
}

impl DepthwiseNchw {
    /// Channels `first_channel..` of every image, plane by plane.
    #[inline(always)]
    fn convolve_planes(
        &self,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut Vec<f32>,
        first_channel: usize,
    ) {
        let [sh, sw] = self.strides;
        let [kh, kw] = self.kernel_hw;
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let geo = self.geometry();
        let [ph, pw] = geo.phase_hw;
        let phase_len = ph * pw;
        let phases = sh * sw;
        // the last tap's run reads up to a vector past the planes: zeros there
        let planes_len = phases * phase_len + LANES;
        let (in_plane, out_plane) = (ih * iw, oh * ow);
        let quantized_len = if self.folded.input.is_some() {
            in_plane
        } else {
            0
        };
        let need = planes_len + geo.run + quantized_len;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (planes, rest) = scratch[..need].split_at_mut(planes_len);
        let (acc, quantized) = rest.split_at_mut(geo.run);
        // the padding: every channel writes the same places after this
        planes.fill(0.0);
        let taps_len = kh * kw;
        // where each tap's run starts in the planes, the same for every channel
        let mut starts = [0usize; MAX_TAPS];
        for ky in 0..kh {
            for kx in 0..kw {
                starts[ky * kw + kx] =
                    (ky % sh * sw + kx % sw) * phase_len + (ky / sh) * pw + kx / sw;
            }
        }
        let starts = &starts[..taps_len];
        let images = input.len() / (in_plane * self.channels);
        for image in 0..images {
            for c in first_channel..self.channels {
                let plane = image * self.channels + c;
                let mut x = &input[plane * in_plane..][..in_plane];
                if let Some(q) = &self.folded.input {
                    q.run_vectors(x, quantized);
                    x = quantized;
                }
                self.pad_into_phases(x, planes, geo.phase_hw);
                let taps = &self.taps[c * taps_len..(c + 1) * taps_len];
                convolve(acc, planes, starts, taps, self.bias[c]);
                let y = &mut output[plane * out_plane..][..out_plane];
                for (oy, row) in y.chunks_exact_mut(ow).enumerate() {
                    row.copy_from_slice(&acc[oy * pw..oy * pw + ow]);
                }
                self.folded.finish(y);
            }
        }
    }

    /// Small planes, [`GROUP`] blocks of [`LANES`] channels at a time: the group's planes
    /// are laid out channel-innermost, and every output point sums only the taps that land
    /// inside the input (on a 2x2 plane, 4 of a 5x5 kernel's 25), one vector multiply and
    /// add per tap and block, the blocks' sums independent. Channels past the last whole
    /// block take the plane path.
    #[inline(always)]
    fn convolve_across_channels(&self, input: &[f32], output: &mut [f32], scratch: &mut Vec<f32>) {
        let [ih, iw] = self.input_hw;
        let blocks = self.channels / LANES;
        let images = input.len() / (ih * iw * self.channels);
        for image in 0..images {
            let mut block = 0;
            while block < blocks {
                let group = (blocks - block).min(GROUP);
                match group {
                    GROUP => self.convolve_group::<GROUP>(input, output, scratch, image, block),
                    3 => self.convolve_group::<3>(input, output, scratch, image, block),
                    2 => self.convolve_group::<2>(input, output, scratch, image, block),
                    _ => self.convolve_group::<1>(input, output, scratch, image, block),
                }
                block += group;
            }
        }
        if blocks * LANES < self.channels {
            // the channels past the last whole block, through the plane path
            self.convolve_planes(input, output, scratch, blocks * LANES);
        }
    }

    /// Blocks `block..block + G` of one image (see [`Self::convolve_across_channels`]).
    #[inline(always)]
    fn convolve_group<const G: usize>(
        &self,
        input: &[f32],
        output: &mut [f32],
        scratch: &mut Vec<f32>,
        image: usize,
        block: usize,
    ) {
        let [sh, sw] = self.strides;
        let [kh, kw] = self.kernel_hw;
        let [ih, iw] = self.input_hw;
        let [oh, ow] = self.output_hw;
        let [pt, pl] = self.pad_before;
        let (in_plane, out_plane) = (ih * iw, oh * ow);
        let width = G * LANES;
        let c0 = image * self.channels + block * LANES;
        let quantized_len = if self.folded.input.is_some() {
            width * in_plane
        } else {
            0
        };
        let need = width * in_plane + quantized_len;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (buf, quantized) = scratch[..need].split_at_mut(width * in_plane);
        // the group's planes, one after the other
        let mut planes = &input[c0 * in_plane..][..width * in_plane];
        if let Some(q) = &self.folded.input {
            q.run_vectors(planes, quantized);
            planes = quantized;
        }
        for (l, plane) in planes.chunks_exact(in_plane).enumerate() {
            for (i, &v) in plane.iter().enumerate() {
                buf[i * width + l] = v;
            }
        }
        let taps_len = kh * kw;
        let taps = &self.taps_by_lanes[block * taps_len * LANES..][..G * taps_len * LANES];
        let bias: [[f32; LANES]; G] =
            std::array::from_fn(|g| lanes(&self.bias[c0 - image * self.channels + g * LANES..]));
        // the taps of a kernel row or column that land inside the input, for an output
        // row or column starting at `origin` (padding counted)
        let inside = |origin: usize, pad: usize, k: usize, extent: usize| {
            let low = pad.saturating_sub(origin);
            let high = (extent + pad).saturating_sub(origin).min(k);
            (low, high.max(low))
        };
        for oy in 0..oh {
            let (ky_low, ky_high) = inside(oy * sh, pt, kh, ih);
            for ox in 0..ow {
                let (kx_low, kx_high) = inside(ox * sw, pl, kw, iw);
                let mut acc = bias;
                for ky in ky_low..ky_high {
                    let iy = oy * sh + ky - pt;
                    for kx in kx_low..kx_high {
                        let ix = ox * sw + kx - pl;
                        let t = ky * kw + kx;
                        let at = (iy * iw + ix) * width;
                        for (g, a) in acc.iter_mut().enumerate() {
                            let k = lanes(&taps[(g * taps_len + t) * LANES..]);
                            let x = lanes(&buf[at + g * LANES..]);
                            *a = std::array::from_fn(|i| a[i] + k[i] * x[i]);
                        }
                    }
                }
                let p = oy * ow + ox;
                for (g, a) in acc.iter().enumerate() {
                    for (i, &v) in a.iter().enumerate() {
                        output[(c0 + g * LANES + i) * out_plane + p] = v;
                    }
                }
            }
        }
        self.folded
            .finish(&mut output[c0 * out_plane..][..width * out_plane]);
    }

    /// One input plane, split into phases: padded (r, q) goes to phase (r % sh, q % sw) at
    /// (r / sh, q / sw). The padding's places are never written: zeroed once per call.
    #[inline(always)]
    fn pad_into_phases(&self, x: &[f32], planes: &mut [f32], [ph, pw]: [usize; 2]) {
        let [sh, sw] = self.strides;
        let [ih, iw] = self.input_hw;
        let [pt, pl] = self.pad_before;
        let phase_len = ph * pw;
        for iy in 0..ih {
            let r = iy + pt;
            if r >= ph * sh {
                break;
            }
            let row_base = (r % sh * sw) * phase_len + (r / sh) * pw;
            let src = &x[iy * iw..(iy + 1) * iw];
            if sw == 2 {
                // pairs of input columns go to the two phases side by side
                let (p0, c0) = (pl % 2, pl / 2);
                let c1 = pl.div_ceil(2);
                let m = (iw / 2)
                    .min(pw.saturating_sub(c0))
                    .min(pw.saturating_sub(c1));
                let (head, tail) = planes.split_at_mut(row_base + phase_len);
                let (first, second) = (&mut head[row_base..row_base + pw], &mut tail[..pw]);
                let (d0, d1) = if p0 == 0 {
                    (first, second)
                } else {
                    (second, first)
                };
                let (d0, d1) = (&mut d0[c0..c0 + m], &mut d1[c1..c1 + m]);
                // a vector of pairs at a time, split into its even and odd values
                let mut vectors = 0;
                for ((a, b), pairs) in d0
                    .chunks_exact_mut(LANES)
                    .zip(d1.chunks_exact_mut(LANES))
                    .zip(src.chunks_exact(2 * LANES))
                {
                    let pairs: &[f32; 2 * LANES] =
                        pairs.try_into().unwrap_or_else(|_| unreachable!());
                    a.copy_from_slice(&std::array::from_fn::<f32, LANES, _>(|j| pairs[2 * j]));
                    b.copy_from_slice(&std::array::from_fn::<f32, LANES, _>(|j| pairs[2 * j + 1]));
                    vectors += 1;
                }
                let done = vectors * LANES;
                for ((a, b), pair) in d0[done..]
                    .iter_mut()
                    .zip(&mut d1[done..])
                    .zip(src[2 * done..].chunks_exact(2))
                {
                    *a = pair[0];
                    *b = pair[1];
                }
                for (ix, &v) in src.iter().enumerate().skip(2 * m) {
                    let q = ix + pl;
                    if q / 2 < pw {
                        planes[row_base + (q % 2) * phase_len + q / 2] = v;
                    }
                }
                continue;
            }
            // phase px holds padded columns px, px + sw, ...: input columns from the
            // first one at or after the left padding
            for px in 0..sw {
                let first_q = if px >= pl {
                    px
                } else {
                    px + (pl - px).div_ceil(sw) * sw
                };
                let dst = &mut planes[row_base + px * phase_len..][..pw];
                let (Some(dst), Some(src)) = (dst.get_mut(first_q / sw..), src.get(first_q - pl..))
                else {
                    continue;
                };
                if sw == 1 {
                    let n = dst.len().min(src.len());
                    dst[..n].copy_from_slice(&src[..n]);
                } else {
                    for (d, &v) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// tract's `Max` with a constant as it computes it on x86 (`f32::max`: a NaN gives the
/// constant).
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
fn max_of(v: f32, constant: f32) -> f32 {
    v.max(constant)
}

/// tract's `Min` with a constant on x86 (see [`max_of`]).
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
fn min_of(v: f32, constant: f32) -> f32 {
    v.min(constant)
}

/// tract's `Max` with a constant as its aarch64 kernels compute it: `fmax` carries a NaN
/// on. (Its own function: a NaN test in the x86 path cost 20% of the depthwise layers.)
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn max_of(v: f32, constant: f32) -> f32 {
    if v.is_nan() {
        v
    } else {
        v.max(constant)
    }
}

/// tract's `Min` with a constant on aarch64 (`fmin`, see [`max_of`]).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn min_of(v: f32, constant: f32) -> f32 {
    if v.is_nan() {
        v
    } else {
        v.min(constant)
    }
}

/// The first [`LANES`] values of `x`, as an array.
#[inline(always)]
fn lanes(x: &[f32]) -> [f32; LANES] {
    x[..LANES].try_into().unwrap_or_else(|_| unreachable!())
}

/// Blocks of [`LANES`] channels convolved together on small planes: independent sums.
const GROUP: usize = 4;

/// Output planes up to this many points (4x4) are convolved across channels.
const SMALL_PLANE: usize = 16;

/// The most taps a depthwise kernel may have here (7x7); larger ones stay with tract.
const MAX_TAPS: usize = 49;

/// `acc[i] = bias + taps[0] * planes[starts[0] + i] + taps[1] * ...`, a multiply then an add
/// per tap in tap order (never fused: tract's rounding), four vectors of [`LANES`] at a
/// time so that the adds form independent chains and each value is stored once.
#[inline(always)]
fn convolve(acc: &mut [f32], planes: &[f32], starts: &[usize], taps: &[f32], bias: f32) {
    let vector = |at: usize| -> &[f32; LANES] {
        planes[at..at + LANES]
            .try_into()
            .unwrap_or_else(|_| unreachable!())
    };
    let mut blocks = acc.chunks_exact_mut(4 * LANES);
    let mut base = 0;
    for block in &mut blocks {
        let mut a = [[bias; LANES]; 4];
        for (&start, &k) in starts.iter().zip(taps) {
            for (u, a) in a.iter_mut().enumerate() {
                let v = vector(start + base + u * LANES);
                *a = std::array::from_fn(|i| a[i] + k * v[i]);
            }
        }
        for (out, a) in block.chunks_exact_mut(LANES).zip(&a) {
            out.copy_from_slice(a);
        }
        base += 4 * LANES;
    }
    for out in blocks.into_remainder().chunks_exact_mut(LANES) {
        let mut a = [bias; LANES];
        for (&start, &k) in starts.iter().zip(taps) {
            let v = vector(start + base);
            a = std::array::from_fn(|i| a[i] + k * v[i]);
        }
        out.copy_from_slice(&a);
        base += LANES;
    }
}

/// Every value of `input` through `op` into `output`.
#[multiversion::multiversion(targets("x86_64+avx"))]
fn quantize_dequantize(op: &QuantizeDequantize, input: &[f32], output: &mut [f32]) {
    op.run_vectors(input, output)
}

/// Below this magnitude every integer is an `f32`, so adding a zero point is exact.
const EXACT: f32 = 16_777_216.0;

/// tract's `QuantizeLinear` (u8 or i8) followed by its `DequantizeLinear`, in one pass
/// with no 8-bit tensor in between, value for value what the two give.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeDequantize {
    /// tract's quantize multiplier (the reciprocal of the ONNX scale).
    quantize_scale: f32,
    quantize_zero_point: i32,
    low: i32,
    high: i32,
    dequantize_scale: f32,
    dequantize_zero_point: i32,
}

impl Eq for QuantizeDequantize {}

impl Op for QuantizeDequantize {
    fn name(&self) -> StaticName {
        "OodmonQuantizeDequantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "x * {} + {} in [{}, {}], then ({} - {}) * {}",
            self.quantize_scale,
            self.quantize_zero_point,
            self.low,
            self.high,
            "q",
            self.dequantize_zero_point,
            self.dequantize_scale
        )])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for QuantizeDequantize {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.datum_type() == f32::datum_type(),
            "quantize input is not f32"
        );
        // SAFETY: `run` writes every element
        #[allow(unsafe_code)]
        let mut output = unsafe { Tensor::uninitialized::<f32>(x.shape())? };
        {
            let input = x.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            self.run(input.as_slice::<f32>()?, out.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(output.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for QuantizeDequantize {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
}

impl QuantizeDequantize {
    /// A pair from its parameters (tract's quantize multiplier, the reciprocal of the ONNX
    /// scale), for tests elsewhere in the crate.
    #[cfg(test)]
    pub(crate) fn for_tests(
        quantize_scale: f32,
        quantize_zero_point: i32,
        [low, high]: [i32; 2],
        dequantize_scale: f32,
        dequantize_zero_point: i32,
    ) -> Self {
        Self {
            quantize_scale,
            quantize_zero_point,
            low,
            high,
            dequantize_scale,
            dequantize_zero_point,
        }
    }

    /// The grid the output lies on: `(q - dz) * ds` with `q` in `low..=high` is
    /// `(a - (dz - low)) * ds` with the byte `a = q - low`.
    pub(crate) fn grid(&self) -> crate::pointwise::Grid {
        crate::pointwise::Grid {
            scale: self.dequantize_scale,
            zero: self.dequantize_zero_point - self.low,
        }
    }

    fn run(&self, input: &[f32], output: &mut [f32]) {
        quantize_dequantize(self, input, output)
    }

    /// tract's arithmetic, in whole vectors where every rounded value is under 2^24 in
    /// magnitude (there the clamp in `f32` is exact), element by element elsewhere.
    #[inline(always)]
    fn run_vectors(&self, input: &[f32], output: &mut [f32]) {
        let mut inputs = input.chunks_exact(LANES);
        let mut outputs = output.chunks_exact_mut(LANES);
        for (x, y) in (&mut inputs).zip(&mut outputs) {
            y.copy_from_slice(&self.vector(lanes(x)));
        }
        for (y, &x) in outputs.into_remainder().iter_mut().zip(inputs.remainder()) {
            *y = self.exact(x);
        }
    }

    /// [`Self::exact`] on [`LANES`] values: in `f32` where every rounded value is under
    /// 2^24 in magnitude (there the clamp in `f32` is exact), value by value otherwise.
    #[inline(always)]
    fn vector(&self, x: [f32; LANES]) -> [f32; LANES] {
        let rounded: [f32; LANES] =
            std::array::from_fn(|i| (x[i] * self.quantize_scale).round_ties_even());
        // NaN fails the test too
        if rounded.iter().all(|r| r.abs() < EXACT) {
            let (zero, low, high) = (
                self.quantize_zero_point as f32,
                self.low as f32,
                self.high as f32,
            );
            let (ds, dz) = (self.dequantize_scale, self.dequantize_zero_point as f32);
            std::array::from_fn(|i| {
                let q = rounded[i] + zero;
                let q = if q < low { low } else { q };
                let q = if q > high { high } else { q };
                (q - dz) * ds
            })
        } else {
            x.map(|x| self.exact(x))
        }
    }

    /// tract's two operators on one value: `round_ties_to_even(x * scale) as i32 +
    /// zero_point` (a NaN becomes 0, the cast saturates, the add wraps as tract's release
    /// build does), clamped to the 8-bit range, then `(q - zero_point) as f32 * scale`.
    #[inline(always)]
    fn exact(&self, x: f32) -> f32 {
        let q = ((x * self.quantize_scale).round_ties_even() as i32)
            .wrapping_add(self.quantize_zero_point)
            .clamp(self.low, self.high);
        (q - self.dequantize_zero_point) as f32 * self.dequantize_scale
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};
    use tract_onnx::tract_core::ops::quant::{quantize_linear_f32_i8, quantize_linear_f32_u8};

    /// The depthwise convolution as tract's scalar walk computes it: the bias, then a
    /// multiply and an add per tap inside the input, taps row-major.
    fn reference(op: &DepthwiseNchw, x: &[f32]) -> Vec<f32> {
        let [ih, iw] = op.input_hw;
        let [oh, ow] = op.output_hw;
        let [kh, kw] = op.kernel_hw;
        let [sh, sw] = op.strides;
        let [pt, pl] = op.pad_before;
        let mut out = Vec::new();
        for (p, plane) in x.chunks_exact(ih * iw).enumerate() {
            let c = p % op.channels;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = op.bias[c];
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (y, x) = (
                                (oy * sh + ky) as isize - pt as isize,
                                (ox * sw + kx) as isize - pl as isize,
                            );
                            if (0..ih as isize).contains(&y) && (0..iw as isize).contains(&x) {
                                sum += op.taps[c * kh * kw + ky * kw + kx]
                                    * plane[y as usize * iw + x as usize];
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_matches_the_scalar_walk_bit_for_bit_at_every_geometry() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        // (channels, input h x w, kernel, stride, pads top/left/bottom/right)
        type Case = (usize, [usize; 2], [usize; 2], [usize; 2], [usize; 4]);
        let cases: &[Case] = &[
            (32, [32, 32], [3, 3], [1, 1], [1, 1, 1, 1]),
            (8, [17, 17], [3, 3], [2, 2], [0, 0, 1, 1]), // TF "same", stride 2
            (6, [16, 16], [5, 5], [2, 2], [1, 1, 2, 2]),
            (12, [4, 4], [5, 5], [1, 1], [2, 2, 2, 2]),
            (16, [2, 2], [5, 5], [1, 1], [2, 2, 2, 2]),
            (5, [7, 9], [3, 3], [1, 1], [0, 0, 0, 0]),
            (4, [1, 1], [3, 3], [1, 1], [1, 1, 1, 1]),
            (3, [11, 13], [7, 7], [3, 3], [3, 2, 1, 3]),
            (4, [6, 6], [3, 3], [2, 2], [0, 0, 0, 0]),
            (2, [9, 5], [3, 5], [2, 1], [4, 0, 1, 4]), // pads wider than the kernel
            (6, [2, 2], [3, 3], [1, 1], [1, 1, 1, 1]), // a small plane, too few channels for a block
            (19, [5, 5], [5, 5], [2, 2], [1, 1, 2, 2]), // across channels, 3 left over
            (40, [4, 4], [5, 5], [1, 1], [2, 2, 2, 2]), // a group of 4 blocks, then 1
            (24, [2, 2], [5, 5], [1, 1], [2, 2, 2, 2]), // a group of 3
            (72, [4, 4], [5, 5], [2, 2], [1, 1, 2, 2]), // 9 blocks: 4, 4, 1
            (8, [1, 1], [1, 1], [1, 1], [2, 2, 1, 1]), // points with no tap inside: the bias
        ];
        let mut scratch = Vec::new();
        let mut cases = cases.to_vec();
        // and 300 random geometries: 1-20 channels, planes 1-20, kernels 1-7, strides 1-3,
        // pads 0-4 on each side
        for _ in 0..300 {
            let mut r = |lo: usize, hi: usize| rng.random_range(lo..=hi);
            let (kh, kw) = (r(1, 7), r(1, 7));
            let pads = [r(0, 4), r(0, 4), r(0, 4), r(0, 4)];
            let (ih, iw) = (r(1, 20), r(1, 20));
            if ih + pads[0] + pads[2] < kh || iw + pads[1] + pads[3] < kw {
                continue;
            }
            cases.push((r(1, 20), [ih, iw], [kh, kw], [r(1, 3), r(1, 3)], pads));
        }
        for (channels, [ih, iw], [kh, kw], [sh, sw], [pt, pl, pb, pr]) in cases {
            let (oh, ow) = ((ih + pt + pb - kh) / sh + 1, (iw + pl + pr - kw) / sw + 1);
            for batch in [1, 2] {
                let taps: Vec<f32> = (0..channels * kh * kw)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let op = DepthwiseNchw {
                    batched: batch > 1,
                    channels,
                    input_hw: [ih, iw],
                    output_hw: [oh, ow],
                    kernel_hw: [kh, kw],
                    strides: [sh, sw],
                    pad_before: [pt, pl],
                    taps_by_lanes: Arc::new(taps_by_lanes(&taps, channels, kh * kw)),
                    taps: Arc::new(taps),
                    bias: Arc::new((0..channels).map(|_| rng.random_range(-0.5..0.5)).collect()),
                    folded: Folded::default(),
                };
                let x: Vec<f32> = (0..batch * channels * ih * iw)
                    .map(|_| rng.random_range(-3.0f32..3.0))
                    .collect();
                let mut got = vec![f32::NAN; batch * channels * oh * ow];
                op.run(&x, &mut got, &mut scratch);
                let want = reference(&op, &x);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g == w,
                        "{channels}x{ih}x{iw} k{kh}x{kw} s{sh}x{sw}: value {i} {g} != {w}"
                    );
                }
                // through tract's eval, as a plan calls it
                let input =
                    tract_ndarray::Array4::from_shape_vec((batch, channels, ih, iw), x).unwrap();
                let input = if batch > 1 {
                    input.into_tensor()
                } else {
                    input.into_tensor().into_shape(&[channels, ih, iw]).unwrap()
                };
                let out = op
                    .eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()))
                    .unwrap();
                let out = out[0].try_as_plain_ram().unwrap();
                assert_eq!(out.as_slice::<f32>().unwrap(), &want[..]);
            }
        }
    }

    #[test]
    fn quantize_dequantize_is_tracts_pair_value_for_value() {
        let specials = [
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            127.49,
            127.5,
            255.5,
            1e7,
            1.6777215e7,
            1.6777216e7,
            3e9,
            -3e9,
            2.1474835e9,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-40,
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (scale, zero_point, signed) in [
            (0.05f32, 0i32, false),
            (0.013, 128, false),
            (0.02, 0, true),
            (0.7, -5, true),
            (1.0, 255, false),
        ] {
            let (low, high) = if signed { (-128, 127) } else { (0, 255) };
            let op = QuantizeDequantize {
                quantize_scale: 1.0 / scale,
                quantize_zero_point: zero_point,
                low,
                high,
                dequantize_scale: scale,
                dequantize_zero_point: zero_point,
            };
            let mut x: Vec<f32> = specials.iter().map(|v| v * scale).collect();
            x.extend(specials);
            x.extend((0..1000).map(|_| rng.random_range(-20.0f32..20.0)));
            let mut got = vec![0.0; x.len()];
            op.run(&x, &mut got);
            for (&x, &g) in x.iter().zip(&got) {
                // tract's function overflows (a panic in a debug build) where the saturated
                // cast plus the zero point leaves i32: its release build wraps, as `exact`
                let rounded = (x * op.quantize_scale).round_ties_even() as i32;
                if rounded.checked_add(zero_point).is_none() {
                    let q = rounded.wrapping_add(zero_point).clamp(low, high);
                    assert_eq!(g.to_bits(), ((q - zero_point) as f32 * scale).to_bits());
                    continue;
                }
                let q = if signed {
                    quantize_linear_f32_i8(x, op.quantize_scale, zero_point) as i32
                } else {
                    quantize_linear_f32_u8(x, op.quantize_scale, zero_point) as i32
                };
                let want = (q - zero_point) as f32 * scale;
                assert_eq!(
                    g.to_bits(),
                    want.to_bits(),
                    "x {x}: {g} != {want} (scale {scale}, zero point {zero_point})"
                );
            }
        }
    }
}
