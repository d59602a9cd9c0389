//! Pointwise (1x1) convolutions of a QDQ graph run in int8, as onnxruntime runs them: the
//! one place oodmon trades tract's exact values for speed (BENCHMARKS.md, "int8 pointwise
//! convolutions").
//!
//! In an int8 QDQ encoder every pointwise convolution's input comes out of a
//! quantize-dequantize pair, so each input value is `(a - zero) * scale` for a byte `a`,
//! and its weights are int8 numbers times a scale per output channel. tract dequantizes
//! both and multiplies in `f32`, reading four bytes per weight: on EfficientNet-Lite0's
//! small planes (4x4, 2x2) that is a weight-bandwidth-bound 60% of an inference. Here the
//! bytes are recovered, summed exactly in `i32` (AVX-512 VNNI `vpdpbusd`, 64 products per
//! instruction, where the CPU has it; plain loops elsewhere), and scaled once:
//! `((sum - zero * row_sum) as f32) * (input_scale * weight_scale) + bias`. The sum is exact
//! and the same on every CPU and path; against tract's `f32` sums the result differs by
//! rounding only (one rounding instead of one per product), which after the graph's next
//! quantizer can move a value by one step (on the built-in Lite0 the embedding moves by
//! 0.8% on average; onnxruntime's int8 path is 7% from tract's). The plain loops are
//! slower than tract's `f32` plan on a CPU without VNNI (3.8 against 2.5 ms per Lite0
//! inference with AVX2), so the swap is made by default ([`crate::Kernels::Oodmon`]) only
//! on a CPU with VNNI, and anywhere with [`crate::Kernels::Int8`].
//!
//! The ReLU6 and the quantize-dequantize pair the output goes through, where each feeds
//! only the next, run inside the operator as in the depthwise one.

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

use crate::kernels::{sole_user, DepthwiseNchw, Folded, QuantizeDequantize};

/// Values on an 8-bit grid: `(a - zero) * scale` for a byte `a` in `0..=255`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Grid {
    pub(crate) scale: f32,
    pub(crate) zero: i32,
}

/// Whether this CPU runs the int8 sums with AVX-512 VNNI (the fast path).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A pointwise convolution on NCHW (or CHW) `f32` whose input lies on an 8-bit grid and
/// whose weights are int8 per output channel, run as an int8 matrix product.
#[derive(Debug, Clone, PartialEq)]
pub struct PointwiseInt8 {
    in_channels: usize,
    out_channels: usize,
    /// Output positions per channel (H x W).
    plane: usize,
    input_shape: TVec<usize>,
    output_shape: TVec<usize>,
    input: Grid,
    /// `[M, K]` int8 weights, for the portable loop.
    weights: Arc<Vec<i8>>,
    /// `[M, K4]` four weights along K per `i32` (K padded with zeros to a multiple of 4).
    rows: Arc<Vec<i32>>,
    /// `[M16 / 16, K4, 16]` the same words, 16 output channels side by side.
    lanes: Arc<Vec<i32>>,
    /// Per output channel (padded to a multiple of 16): `zero * sum of its weights`,
    /// `input scale * weight scale`, and the bias.
    corrections: Arc<Vec<i32>>,
    scales: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    folded: Folded,
}

impl Eq for PointwiseInt8 {}

/// Output channels per vector of the VNNI loops.
const VECTOR: usize = 16;

impl PointwiseInt8 {
    fn k4(&self) -> usize {
        self.in_channels.div_ceil(4)
    }

    /// The grid the output lies on, when its quantize-dequantize pair runs inside.
    pub(crate) fn output_grid(&self) -> Option<Grid> {
        self.folded.output.as_ref().map(QuantizeDequantize::grid)
    }

    /// The operator for `weights` (`[M, K]` `f32`) and `bias` when every weight row is an
    /// int8 row times one scale (to `f32` rounding); `None` otherwise (a float model).
    fn new(
        input: Grid,
        weights: &[f32],
        bias: &[f32],
        [m, k, plane]: [usize; 3],
        input_shape: TVec<usize>,
        output_shape: TVec<usize>,
    ) -> Option<Self> {
        let mut int8 = Vec::with_capacity(m * k);
        let mut weight_scales = Vec::with_capacity(m);
        for row in weights.chunks_exact(k) {
            let (scale, q) = int8_row(row)?;
            weight_scales.push(scale);
            int8.extend(q);
        }
        let k4 = k.div_ceil(4);
        let m16 = m.next_multiple_of(VECTOR);
        let word = |c: usize, k4i: usize| -> i32 {
            let b: [u8; 4] = std::array::from_fn(|j| {
                let kk = 4 * k4i + j;
                if c < m && kk < k {
                    int8[c * k + kk] as u8
                } else {
                    0
                }
            });
            i32::from_le_bytes(b)
        };
        let rows = (0..m)
            .flat_map(|c| (0..k4).map(move |i| (c, i)))
            .map(|(c, i)| word(c, i))
            .collect();
        let mut lanes = Vec::with_capacity(m16 * k4);
        for block in 0..m16 / VECTOR {
            for i in 0..k4 {
                lanes.extend((0..VECTOR).map(|l| word(block * VECTOR + l, i)));
            }
        }
        let mut corrections = vec![0; m16];
        let mut scales = vec![0.0; m16];
        let mut biases = vec![0.0; m16];
        for c in 0..m {
            let sum: i32 = int8[c * k..(c + 1) * k].iter().map(|&w| w as i32).sum();
            corrections[c] = input.zero * sum;
            scales[c] = input.scale * weight_scales[c];
            biases[c] = bias[c];
        }
        Some(Self {
            in_channels: k,
            out_channels: m,
            plane,
            input_shape,
            output_shape,
            input,
            weights: Arc::new(int8),
            rows: Arc::new(rows),
            lanes: Arc::new(lanes),
            corrections: Arc::new(corrections),
            scales: Arc::new(scales),
            bias: Arc::new(biases),
            folded: Folded::default(),
        })
    }

    /// The byte an input value stands for (exact: the value is on the grid).
    #[inline(always)]
    fn byte(&self, y: f32) -> u8 {
        ((y * (1.0 / self.input.scale)).round_ties_even() as i32 + self.input.zero).clamp(0, 255)
            as u8
    }

    /// One output value from its exact sum.
    #[inline(always)]
    fn output_value(&self, c: usize, sum: i32) -> f32 {
        (sum.wrapping_sub(self.corrections[c]) as f32) * self.scales[c] + self.bias[c]
    }

    /// Every image of `input` into `output`, on the VNNI path where the CPU has it.
    fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Scratch) {
        let (image_in, image_out) = (
            self.in_channels * self.plane,
            self.out_channels * self.plane,
        );
        #[cfg(target_arch = "x86_64")]
        let vnni = has_vnni();
        for (x, y) in input
            .chunks_exact(image_in)
            .zip(output.chunks_exact_mut(image_out))
        {
            #[cfg(target_arch = "x86_64")]
            if vnni {
                // SAFETY: the CPU has the features (checked above); the slices have the
                // lengths the operator's shapes give (checked in `eval`)
                #[allow(unsafe_code)]
                unsafe {
                    vnni::image(self, x, y, &mut scratch.bytes)
                };
                continue;
            }
            self.image_portable(x, y, scratch);
        }
    }

    /// One image in plain loops (any CPU): the same sums and the same values as the VNNI
    /// path.
    fn image_portable(&self, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
        portable(self, x, y, scratch)
    }

    /// Long rows (or few positions): each output value one dot product of a position's
    /// bytes `[K]` with a channel's weights, which vectorises as widening multiply-adds.
    #[inline(always)]
    fn by_dot_products(&self, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
        let (k, p) = (self.in_channels, self.plane);
        scratch.bytes.clear();
        scratch.bytes.resize(p * k, 0);
        for (kk, plane) in x.chunks_exact(p).enumerate() {
            for (pos, &v) in plane.iter().enumerate() {
                scratch.bytes[pos * k + kk] = self.byte(v);
            }
        }
        for (pos, column) in scratch.bytes.chunks_exact(k).enumerate() {
            for (c, row) in self.weights.chunks_exact(k).enumerate() {
                let sum: i32 = column
                    .iter()
                    .zip(row)
                    .map(|(&a, &w)| a as i32 * w as i32)
                    .sum();
                y[c * p + pos] = self.output_value(c, sum);
            }
        }
        self.folded.finish(y);
    }

    /// Short rows over large planes: each weight times a whole plane of bytes.
    #[inline(always)]
    fn by_planes(&self, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
        let (k, p) = (self.in_channels, self.plane);
        scratch.bytes.clear();
        scratch.bytes.extend(x.iter().map(|&v| self.byte(v)));
        scratch.sums.clear();
        scratch.sums.resize(p, 0);
        let (bytes, sums) = (&scratch.bytes, &mut scratch.sums);
        for (c, row) in y.chunks_exact_mut(p).enumerate() {
            sums.fill(0);
            for (kk, &w) in self.weights[c * k..(c + 1) * k].iter().enumerate() {
                let w = w as i32;
                for (s, &a) in sums.iter_mut().zip(&bytes[kk * p..(kk + 1) * p]) {
                    *s += a as i32 * w;
                }
            }
            for (out, &s) in row.iter_mut().zip(sums.iter()) {
                *out = self.output_value(c, s);
            }
            self.folded.finish(row);
        }
    }
}

/// One image in plain loops, compiled a second time for AVX2 on x86-64.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn portable(op: &PointwiseInt8, x: &[f32], y: &mut [f32], scratch: &mut Scratch) {
    if op.in_channels >= 32 || op.plane < VECTOR {
        op.by_dot_products(x, y, scratch)
    } else {
        op.by_planes(x, y, scratch)
    }
}

/// A weight row as `scale * q` with `q` int8: the scale that puts its largest magnitude at
/// 127 (or 128), accepted when every weight is within a hair of its int8 multiple (a float
/// row misses by up to half a step).
fn int8_row(row: &[f32]) -> Option<(f32, Vec<i8>)> {
    let max = row.iter().fold(0f32, |m, w| m.max(w.abs()));
    if !max.is_finite() {
        return None;
    }
    if max == 0.0 {
        return Some((1.0, vec![0; row.len()]));
    }
    'divisor: for divisor in [127.0f32, 128.0] {
        let scale = max / divisor;
        let mut q = Vec::with_capacity(row.len());
        for &w in row {
            let r = (w / scale).round_ties_even();
            if !(-128.0..=127.0).contains(&r) || (r * scale - w).abs() > 1e-4 * scale {
                continue 'divisor;
            }
            q.push(r as i8);
        }
        return Some((scale, q));
    }
    None
}

/// Per-thread buffers, grown once and reused by every call.
#[derive(Default)]
struct Scratch {
    bytes: Vec<u8>,
    sums: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod vnni {
    //! The AVX-512 VNNI loops. Planes of a multiple of 16 positions put 16 positions in
    //! a vector (input bytes `[K4, P, 4]`, weights broadcast); smaller or ragged planes put
    //! 16 output channels in a vector (input bytes `[P, K4 * 4]` broadcast, weights
    //! `[M16 / 16, K4, 16]`).
    use super::{PointwiseInt8, VECTOR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `x` is `[K, P]` and `y` `[M, P]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn image(op: &PointwiseInt8, x: &[f32], y: &mut [f32], bytes: &mut Vec<u8>) {
        let (k4, p) = (op.k4(), op.plane);
        bytes.clear();
        bytes.resize(k4 * 4 * p, 0);
        if p % VECTOR == 0 {
            pack_by_positions(op, x, bytes);
            by_positions(op, bytes, y);
        } else {
            pack_by_channels(op, x, bytes);
            by_channels(op, bytes, y);
        }
    }

    /// `[K, P]` values as `[K4, P, 4]` bytes, 16 positions at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pack_by_positions(op: &PointwiseInt8, x: &[f32], bytes: &mut [u8]) {
        let (k, p) = (op.in_channels, op.plane);
        let inverse = _mm512_set1_ps(1.0 / op.input.scale);
        let zero = _mm512_set1_epi32(op.input.zero);
        let (low, high) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
        for g in 0..op.k4() {
            for p0 in (0..p).step_by(VECTOR) {
                let mut word = _mm512_setzero_si512();
                for j in 0..4 {
                    let kk = 4 * g + j;
                    if kk >= k {
                        break;
                    }
                    let v = _mm512_loadu_ps(x.as_ptr().add(kk * p + p0));
                    // nearest, ties to even (the default rounding mode), as `byte`
                    let a = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inverse)), zero);
                    let a = _mm512_min_epi32(_mm512_max_epi32(a, low), high);
                    word = _mm512_or_si512(
                        word,
                        _mm512_sllv_epi32(a, _mm512_set1_epi32(8 * j as i32)),
                    );
                }
                _mm512_storeu_si512(bytes.as_mut_ptr().add((g * p + p0) * 4).cast(), word);
            }
        }
    }

    /// `[K, P]` values as `[P, K4 * 4]` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn pack_by_channels(op: &PointwiseInt8, x: &[f32], bytes: &mut [u8]) {
        let (k, p) = (op.in_channels, op.plane);
        let stride = op.k4() * 4;
        for kk in 0..k {
            for (pos, &v) in x[kk * p..(kk + 1) * p].iter().enumerate() {
                *bytes.get_unchecked_mut(pos * stride + kk) = op.byte(v);
            }
        }
    }

    /// Output channels `MR` at a time, positions `16 * NR` at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn by_positions(op: &PointwiseInt8, bytes: &[u8], y: &mut [f32]) {
        let (m, p) = (op.out_channels, op.plane);
        let wide = p / (4 * VECTOR) * 4 * VECTOR;
        let mut c = 0;
        while c + 6 <= m {
            tile_positions::<6, 4>(op, bytes, y, c, 0, wide);
            tile_positions::<6, 1>(op, bytes, y, c, wide, p);
            c += 6;
        }
        while c < m {
            tile_positions::<1, 4>(op, bytes, y, c, 0, wide);
            tile_positions::<1, 1>(op, bytes, y, c, wide, p);
            c += 1;
        }
        op.folded.finish(y);
    }

    #[inline(always)]
    unsafe fn tile_positions<const MR: usize, const NR: usize>(
        op: &PointwiseInt8,
        bytes: &[u8],
        y: &mut [f32],
        c0: usize,
        from: usize,
        to: usize,
    ) {
        let (k4, p) = (op.k4(), op.plane);
        let words = bytes.as_ptr().cast::<i32>();
        let rows = op.rows.as_ptr();
        let mut p0 = from;
        while p0 + NR * VECTOR <= to {
            let mut acc = [[_mm512_setzero_si512(); NR]; MR];
            for g in 0..k4 {
                let a: [__m512i; NR] = std::array::from_fn(|j| {
                    _mm512_loadu_si512(words.add(g * p + p0 + j * VECTOR).cast())
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_epi32(*rows.add((c0 + r) * k4 + g));
                    for (acc, &a) in acc.iter_mut().zip(&a) {
                        *acc = _mm512_dpbusd_epi32(*acc, a, w);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let c = c0 + r;
                let correction = _mm512_set1_epi32(op.corrections[c]);
                let scale = _mm512_set1_ps(op.scales[c]);
                let bias = _mm512_set1_ps(op.bias[c]);
                for (j, &acc) in acc.iter().enumerate() {
                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, correction));
                    let v = _mm512_add_ps(_mm512_mul_ps(v, scale), bias);
                    _mm512_storeu_ps(y.as_mut_ptr().add(c * p + p0 + j * VECTOR), v);
                }
            }
            p0 += NR * VECTOR;
        }
    }

    /// Blocks of 16 output channels `CB` at a time, positions `PT` at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn by_channels(op: &PointwiseInt8, bytes: &[u8], y: &mut [f32]) {
        let blocks = op.out_channels.div_ceil(VECTOR);
        let p = op.plane;
        let mut b = 0;
        while b + 4 <= blocks {
            tile_channels::<4, 4>(op, bytes, y, b, p / 4 * 4);
            tile_channels::<1, 4>(op, bytes, y, b, p);
            b += 4;
        }
        while b < blocks {
            tile_channels::<4, 1>(op, bytes, y, b, p / 4 * 4);
            tile_channels::<1, 1>(op, bytes, y, b, p);
            b += 1;
        }
        op.folded.finish(y);
    }

    /// Positions `PT` at a time up to `to` (from where the last whole tile left off), for
    /// `CB` blocks of channels from `b0`.
    #[inline(always)]
    unsafe fn tile_channels<const PT: usize, const CB: usize>(
        op: &PointwiseInt8,
        bytes: &[u8],
        y: &mut [f32],
        b0: usize,
        to: usize,
    ) {
        let (k4, p, m) = (op.k4(), op.plane, op.out_channels);
        let words = bytes.as_ptr().cast::<i32>();
        let lanes = op.lanes.as_ptr();
        let mut p0 = if PT == 1 { p / 4 * 4 } else { 0 };
        while p0 + PT <= to {
            let mut acc = [[_mm512_setzero_si512(); CB]; PT];
            for g in 0..k4 {
                let w: [__m512i; CB] = std::array::from_fn(|j| {
                    _mm512_loadu_si512(lanes.add(((b0 + j) * k4 + g) * VECTOR).cast())
                });
                for (t, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(*words.add((p0 + t) * k4 + g));
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_dpbusd_epi32(*acc, a, w);
                    }
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                for (j, &acc) in acc.iter().enumerate() {
                    let c0 = (b0 + j) * VECTOR;
                    let correction = _mm512_loadu_si512(op.corrections.as_ptr().add(c0).cast());
                    let scale = _mm512_loadu_ps(op.scales.as_ptr().add(c0));
                    let bias = _mm512_loadu_ps(op.bias.as_ptr().add(c0));
                    let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, correction));
                    let v = _mm512_add_ps(_mm512_mul_ps(v, scale), bias);
                    let mut lane = [0f32; VECTOR];
                    _mm512_storeu_ps(lane.as_mut_ptr(), v);
                    for (l, &v) in lane.iter().enumerate().take(m.saturating_sub(c0)) {
                        *y.get_unchecked_mut((c0 + l) * p + p0 + t) = v;
                    }
                }
            }
            p0 += PT;
        }
    }
}

impl Op for PointwiseInt8 {
    fn name(&self) -> StaticName {
        "OodmonPointwiseInt8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, {} positions{}",
            self.in_channels,
            self.out_channels,
            self.plane,
            self.folded.describe(),
        )])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for PointwiseInt8 {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            x.shape() == &*self.input_shape && x.datum_type() == f32::datum_type(),
            "pointwise input {:?} {:?}, expected {:?} f32",
            x.shape(),
            x.datum_type(),
            self.input_shape
        );
        // SAFETY: `run` writes every output value
        #[allow(unsafe_code)]
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        {
            let input = x.try_as_plain_ram()?;
            let mut out = output.try_as_plain_ram_mut()?;
            SCRATCH.with(|s| {
                self.run(
                    input.as_slice::<f32>()?,
                    out.as_slice_mut::<f32>()?,
                    &mut s.borrow_mut(),
                );
                TractResult::Ok(())
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for PointwiseInt8 {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(i8::datum_type()),
            (self.in_channels * self.out_channels * self.plane).to_dim()
        )))
    }
}

/// The grid the values at `outlet` lie on, when oodmon's operators put them there.
fn grid_at(model: &TypedModel, outlet: OutletId) -> Option<Grid> {
    let op = model.node(outlet.node);
    if let Some(q) = op.op_as::<QuantizeDequantize>() {
        Some(q.grid())
    } else if let Some(d) = op.op_as::<DepthwiseNchw>() {
        d.output_grid()
    } else if let Some(p) = op.op_as::<PointwiseInt8>() {
        p.output_grid()
    } else {
        None
    }
    .filter(|g| g.scale.is_finite() && g.scale > 0.0 && (0..=255).contains(&g.zero))
}

/// Replaces, in a decluttered model with oodmon's other operators already in, every
/// pointwise convolution (tract's `EinSum` with its bias `Add`) this module runs, with the
/// clip and quantize-dequantize pair after it. Returns how many.
pub(crate) fn swap_in(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        if let Some((op, input, last)) = pointwise_for(model, id)? {
            let name = model.node(id).name.clone();
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(model, input)?;
            let y = patch.wire_node(name, op, &[x])?[0];
            patch.shunt_outside(model, last, y)?;
            patch.apply(model)?;
            swapped += 1;
        }
    }
    model.compact()?;
    Ok(swapped)
}

/// The operator for the `EinSum` at `id` when it is a pointwise convolution on a grid with
/// int8 weights, with its input and the last node it takes in.
fn pointwise_for(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(PointwiseInt8, OutletId, OutletId)>> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some()
        || einsum.operating_dt != f32::datum_type()
        || node.inputs.len() != 2
        || ![
            "IHW,OI->OHW",
            "IHW,OI->NOHW",
            "NIHW,OI->OHW",
            "NIHW,OI->NOHW",
        ]
        .contains(&einsum.axes.to_string().as_str())
    {
        return Ok(None);
    }
    let Some(input) = grid_at(model, node.inputs[0]) else {
        return Ok(None);
    };
    let (x, w) = (
        model.outlet_fact(node.inputs[0])?,
        model.outlet_fact(node.inputs[1])?,
    );
    let out = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(x_shape), Some(out_shape), Some(weights)) = (
        x.shape.as_concrete(),
        out.shape.as_concrete(),
        w.konst.as_ref(),
    ) else {
        return Ok(None);
    };
    let [m, k] = weights.shape() else {
        return Ok(None);
    };
    let (m, k) = (*m, *k);
    let rank = x_shape.len();
    if x.datum_type != f32::datum_type()
        || weights.datum_type() != f32::datum_type()
        || rank < 3
        || x_shape[..rank - 3].iter().any(|&d| d != 1)
        || x_shape[rank - 3] != k
        || out_shape.len() < 3
        || out_shape[..out_shape.len() - 3].iter().any(|&d| d != 1)
        || out_shape[out_shape.len() - 3] != m
        || out_shape[out_shape.len() - 2..] != x_shape[rank - 2..]
    {
        return Ok(None);
    }
    let plane = x_shape[rank - 2] * x_shape[rank - 1];
    // the bias, where the graph adds one
    let mut last = OutletId::new(id, 0);
    let mut bias = vec![0f32; m];
    if let Some(next) = sole_user(model, last)? {
        let n = model.node(next);
        if let Some(bin) = n.op_as::<TypedBinOp>() {
            if bin.0.is::<Add>() && bin.1.is_none() && n.inputs.len() == 2 {
                let other = n.inputs.iter().find(|i| **i != last).copied();
                let konst = other
                    .map(|o| model.outlet_fact(o))
                    .transpose()?
                    .and_then(|f| f.konst.clone());
                let out_fact = model.outlet_fact(OutletId::new(next, 0))?;
                if let Some(b) = konst.filter(|b| {
                    b.datum_type() == f32::datum_type()
                        && out_fact.shape == out.shape
                        && (b.len() == 1 || (b.len() == m && bias_along_channels(b.shape(), m)))
                }) {
                    let b = b.try_as_plain_ram()?;
                    let b = b.as_slice::<f32>()?;
                    bias = if b.len() == 1 {
                        vec![b[0]; m]
                    } else {
                        b.to_vec()
                    };
                    last = OutletId::new(next, 0);
                }
            }
        }
    }
    let weights = weights.try_as_plain_ram()?;
    let Some(mut op) = PointwiseInt8::new(
        input,
        weights.as_slice::<f32>()?,
        &bias,
        [m, k, plane],
        x_shape.into(),
        out_shape.into(),
    ) else {
        return Ok(None);
    };
    let (last, _) = op.folded.take_after(model, last)?;
    Ok(Some((op, node.inputs[0], last)))
}

/// Whether a bias of `m` values with this shape lies along the channel axis of
/// `[.., C, H, W]` (`[C, 1, 1]` or `[1, C, 1, 1]`).
fn bias_along_channels(shape: &[usize], m: usize) -> bool {
    shape.len() >= 3
        && shape[shape.len() - 3] == m
        && shape[shape.len() - 2..] == [1, 1]
        && shape[..shape.len() - 3].iter().all(|&d| d == 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The exact sums in the plainest loops, through the same output formula.
    fn reference(op: &PointwiseInt8, x: &[f32]) -> Vec<f32> {
        let (k, m, p) = (op.in_channels, op.out_channels, op.plane);
        let mut y = vec![0f32; m * p];
        for c in 0..m {
            for pos in 0..p {
                let mut s = 0i64;
                for kk in 0..k {
                    s += op.byte(x[kk * p + pos]) as i64 * op.weights[c * k + kk] as i64;
                }
                y[c * p + pos] = op.output_value(c, s as i32);
            }
            op.folded.finish(&mut y[c * p..(c + 1) * p]);
        }
        y
    }

    fn random_op(rng: &mut impl Rng, k: usize, m: usize, p: usize) -> (PointwiseInt8, Vec<f32>) {
        let grid = Grid {
            scale: rng.random_range(0.01f32..0.5),
            zero: rng.random_range(0..=255),
        };
        let weight_scales: Vec<f32> = (0..m).map(|_| rng.random_range(0.001f32..0.05)).collect();
        let mut weights = Vec::with_capacity(m * k);
        for &s in &weight_scales {
            let mut row: Vec<f32> = (0..k)
                .map(|_| rng.random_range(-127i32..=127) as f32 * s)
                .collect();
            row[rng.random_range(0..k)] = 127.0 * s * if rng.random() { 1.0 } else { -1.0 };
            weights.extend(row);
        }
        let bias: Vec<f32> = (0..m).map(|_| rng.random_range(-1f32..1.0)).collect();
        let op = PointwiseInt8::new(
            grid,
            &weights,
            &bias,
            [m, k, p],
            tvec![k, p, 1],
            tvec![m, p, 1],
        )
        .unwrap();
        let x = (0..k * p)
            .map(|_| (rng.random_range(0i32..=255) - grid.zero) as f32 * grid.scale)
            .collect();
        (op, x)
    }

    #[test]
    fn every_path_gives_the_exact_sums_at_every_geometry() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for (k, m, p) in [
            (1, 1, 1),
            (3, 8, 9),
            (16, 96, 1024),
            (24, 144, 256),
            (5, 7, 48),
            (672, 112, 16),
            (1152, 192, 4),
            (320, 1280, 4),
            (13, 37, 80),
            (40, 23, 196),
            (7, 17, 3),
        ] {
            let (mut op, x) = random_op(&mut rng, k, m, p);
            if rng.random() {
                op.folded.max_with = Some(0.0);
                op.folded.min_with = Some(6.0);
            }
            let want = reference(&op, &x);
            let mut scratch = Scratch::default();
            let mut got = vec![f32::NAN; m * p];
            op.image_portable(&x, &mut got, &mut scratch);
            assert_eq!(got, want, "portable {k} -> {m} x {p}");
            let mut got = vec![f32::NAN; m * p];
            op.run(&x, &mut got, &mut scratch);
            assert_eq!(got, want, "run (vnni: {}) {k} -> {m} x {p}", has_vnni());
        }
    }

    #[test]
    fn a_float_row_is_not_taken_for_int8() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        let row: Vec<f32> = (0..16).map(|_| rng.random_range(-1f32..1.0)).collect();
        assert!(int8_row(&row).is_none());
        let s = 0.0123f32;
        let row: Vec<f32> = [127, -3, 0, 64, -127]
            .iter()
            .map(|&q| q as f32 * s)
            .collect();
        let (scale, q) = int8_row(&row).unwrap();
        assert_eq!(q, vec![127, -3, 0, 64, -127]);
        assert!((scale - s).abs() < 1e-7);
        assert!(int8_row(&[f32::NAN, 1.0]).is_none());
        assert_eq!(int8_row(&[0.0, 0.0]).unwrap().1, vec![0, 0]);
    }
}
