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
//! instruction, where the CPU has it; else AVX2 `vpmaddwd` on the bytes widened to 16 bits;
//! plain loops elsewhere: [`IntPath`]), and scaled once:
//! `((sum - zero * row_sum) as f32) * (input_scale * weight_scale) + bias`. The sum is exact
//! and the same on every CPU and path; against tract's `f32` sums the result differs by
//! rounding only (one rounding instead of one per product), which after the graph's next
//! quantizer can move a value by one step (on the built-in Lite0 the embedding moves by
//! 0.8% on average; onnxruntime's int8 path is 7% from tract's). Per Lite0 inference on
//! one x86 core: tract's `f32` plan with oodmon's exact kernels 2.6 ms, VNNI 1.3 ms, AVX2
//! 1.8 ms, the plain loops 3.8 ms (compiled for AVX2: they widen each byte on its own), so
//! the swap is made by default ([`crate::Kernels::Oodmon`]) where the CPU has VNNI or
//! AVX2, and anywhere with [`crate::Kernels::Int8`].
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

/// Which loops run the sums: all give the same values (exact integer sums, one formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntPath {
    /// AVX-512 VNNI: four byte products per 32-bit lane and instruction, 16 lanes.
    Vnni,
    /// AVX2: the bytes widened to 16 bits, two products per lane, 8 lanes.
    Avx2,
    /// Plain loops (any CPU).
    Portable,
}

impl IntPath {
    /// The path to take: `OODMON_INT8_PATH` (`vnni`, `avx2` or `portable`) where set and
    /// this CPU runs it (to time or bisect one), else [`Self::fastest`]. With the default
    /// kernels a `portable` path means no int8 layers (they take them only on a vector
    /// path); `OODMON_TRACT_KERNELS=int8` runs them on it.
    pub fn chosen() -> Self {
        let fastest = Self::fastest();
        match Self::from_env() {
            Ok(Some(path)) if path.runs_here() => path,
            Ok(Some(path)) => {
                log::warn!(
                    "OODMON_INT8_PATH asks for {}, which this CPU lacks: {} instead",
                    path.name(),
                    fastest.name()
                );
                fastest
            }
            Ok(None) => fastest,
            // refused where the kernels are chosen (`Kernels::from_env`)
            Err(e) => {
                log::warn!("{e}: {} instead", fastest.name());
                fastest
            }
        }
    }

    /// `OODMON_INT8_PATH` when set (and not empty); an unknown value is an error naming
    /// it.
    pub fn from_env() -> Result<Option<Self>, String> {
        let Ok(asked) = std::env::var("OODMON_INT8_PATH") else {
            return Ok(None);
        };
        match asked.trim() {
            "" => Ok(None),
            "vnni" => Ok(Some(Self::Vnni)),
            "avx2" => Ok(Some(Self::Avx2)),
            "portable" => Ok(Some(Self::Portable)),
            _ => Err(format!(
                "OODMON_INT8_PATH={asked:?}: expected \"vnni\", \"avx2\" or \"portable\""
            )),
        }
    }

    /// Whether this CPU has what the path needs.
    pub fn runs_here(self) -> bool {
        match self {
            Self::Vnni => has_vnni(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 => false,
            Self::Portable => true,
        }
    }

    /// The fastest this CPU runs.
    pub fn fastest() -> Self {
        if has_vnni() {
            return Self::Vnni;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") {
            return Self::Avx2;
        }
        Self::Portable
    }

    /// How it is shown (`check`, `bench`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni => "AVX-512 VNNI",
            Self::Avx2 => "AVX2",
            Self::Portable => "plain loops",
        }
    }

    /// Weights along K per 32-bit word, and words per vector.
    fn geometry(self) -> (usize, usize) {
        match self {
            Self::Vnni => (4, 16),
            Self::Avx2 => (2, 8),
            Self::Portable => (4, 16),
        }
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
    path: IntPath,
    /// `[M, K]` int8 weights, for the portable loop.
    weights: Arc<Vec<i8>>,
    /// `[M, G]` weights in words of G groups along K, as the path takes them (four bytes
    /// for VNNI, two 16-bit numbers for AVX2; K padded with zeros); empty for the plain
    /// loops.
    rows: Arc<Vec<i32>>,
    /// `[ceil(M / L), G, L]` the same words, L output channels side by side (a vector).
    lanes: Arc<Vec<i32>>,
    /// Per output channel (padded to a multiple of 16): `zero * sum of its weights`,
    /// `input scale * weight scale`, and the bias.
    corrections: Arc<Vec<i32>>,
    scales: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    folded: Folded,
}

impl Eq for PointwiseInt8 {}

/// Output channels per vector of the VNNI loops, and the padding of the per-channel
/// tables.
const VECTOR: usize = 16;

impl PointwiseInt8 {
    /// Words along K per row.
    fn groups(&self) -> usize {
        self.in_channels.div_ceil(self.path.geometry().0)
    }

    /// The grid the output lies on, when its quantize-dequantize pair runs inside.
    pub(crate) fn output_grid(&self) -> Option<Grid> {
        self.folded.output.as_ref().map(QuantizeDequantize::grid)
    }

    /// The operator for `weights` (`[M, K]` `f32`) and `bias` when every weight row is an
    /// int8 row times one scale of its own, symmetric per output channel (to `f32`
    /// rounding: see [`int8_row`]); `None` otherwise (a float model, or per-tensor or
    /// asymmetric weights, left to tract).
    fn new(
        input: Grid,
        path: IntPath,
        weights: &[f32],
        bias: &[f32],
        [m, k, plane]: [usize; 3],
        input_shape: TVec<usize>,
        output_shape: TVec<usize>,
    ) -> Option<Self> {
        debug_assert!(path.runs_here(), "{path:?} on a CPU without it");
        let mut int8 = Vec::with_capacity(m * k);
        let mut weight_scales = Vec::with_capacity(m);
        for row in weights.chunks_exact(k) {
            let (scale, q) = int8_row(row)?;
            weight_scales.push(scale);
            int8.extend(q);
        }
        let (per_word, width) = path.geometry();
        let groups = k.div_ceil(per_word);
        let m16 = m.next_multiple_of(VECTOR);
        let weight = |c: usize, kk: usize| -> i8 {
            if c < m && kk < k {
                int8[c * k + kk]
            } else {
                0
            }
        };
        let word = |c: usize, g: usize| -> i32 {
            if per_word == 4 {
                i32::from_le_bytes(std::array::from_fn(|j| weight(c, 4 * g + j) as u8))
            } else {
                let [a, b] = [weight(c, 2 * g), weight(c, 2 * g + 1)].map(|w| w as i16 as u16);
                (a as u32 | (b as u32) << 16) as i32
            }
        };
        let (mut rows, mut lanes) = (Vec::new(), Vec::new());
        if path != IntPath::Portable {
            rows = (0..m)
                .flat_map(|c| (0..groups).map(move |g| (c, g)))
                .map(|(c, g)| word(c, g))
                .collect();
            for block in 0..m.div_ceil(width) {
                for g in 0..groups {
                    lanes.extend((0..width).map(|l| word(block * width + l, g)));
                }
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
            path,
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
        // a value off the grid (unreachable: `grid_at`) saturates as the vector paths do
        ((y * (1.0 / self.input.scale)).round_ties_even() as i32)
            .wrapping_add(self.input.zero)
            .clamp(0, 255) as u8
    }

    /// One output value from its exact sum.
    #[inline(always)]
    fn output_value(&self, c: usize, sum: i32) -> f32 {
        (sum.wrapping_sub(self.corrections[c]) as f32) * self.scales[c] + self.bias[c]
    }

    /// Every image of `input` into `output`, on the operator's path.
    fn run(&self, input: &[f32], output: &mut [f32], scratch: &mut Scratch) {
        let (image_in, image_out) = (
            self.in_channels * self.plane,
            self.out_channels * self.plane,
        );
        for (x, y) in input
            .chunks_exact(image_in)
            .zip(output.chunks_exact_mut(image_out))
        {
            match self.path {
                // SAFETY: the path was chosen for this CPU's features (`IntPath::fastest`,
                // or a test that checked them); the slices have the lengths the operator's
                // shapes give (checked in `eval`)
                #[cfg(target_arch = "x86_64")]
                #[allow(unsafe_code)]
                IntPath::Vnni => unsafe { vnni::image(self, x, y, &mut scratch.bytes) },
                #[cfg(target_arch = "x86_64")]
                #[allow(unsafe_code)]
                IntPath::Avx2 => unsafe { avx2::image(self, x, y, &mut scratch.bytes) },
                _ => self.image_portable(x, y, scratch),
            }
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
        // every byte is written below: grown once, not cleared per call
        if scratch.bytes.len() < p * k {
            scratch.bytes.resize(p * k, 0);
        }
        for (kk, plane) in x.chunks_exact(p).enumerate() {
            for (pos, &v) in plane.iter().enumerate() {
                scratch.bytes[pos * k + kk] = self.byte(v);
            }
        }
        for (pos, column) in scratch.bytes[..p * k].chunks_exact(k).enumerate() {
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
/// row misses by up to half a step). What is checked is that the row is representable so,
/// which is what the exact sums need: a float row of one value, or of one magnitude, is
/// representable and taken (harmlessly: its values are the same).
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
        let (k4, p) = (op.groups(), op.plane);
        // not cleared per call: the packing writes every byte the sums read, except the
        // padding past K, which meets zero weights
        if bytes.len() < k4 * 4 * p {
            bytes.resize(k4 * 4 * p, 0);
        }
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
        for g in 0..op.groups() {
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
        let stride = op.groups() * 4;
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
        let (k4, p) = (op.groups(), op.plane);
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
            tile_channels::<4, 4>(op, bytes, y, b, 0, p / 4 * 4);
            tile_channels::<1, 4>(op, bytes, y, b, p / 4 * 4, p);
            b += 4;
        }
        while b < blocks {
            tile_channels::<4, 1>(op, bytes, y, b, 0, p / 4 * 4);
            tile_channels::<1, 1>(op, bytes, y, b, p / 4 * 4, p);
            b += 1;
        }
        op.folded.finish(y);
    }

    /// Positions `PT` at a time from `from` up to `to`, for `CB` blocks of channels from
    /// `b0`.
    #[inline(always)]
    unsafe fn tile_channels<const PT: usize, const CB: usize>(
        op: &PointwiseInt8,
        bytes: &[u8],
        y: &mut [f32],
        b0: usize,
        from: usize,
        to: usize,
    ) {
        let (k4, p, m) = (op.groups(), op.plane, op.out_channels);
        let words = bytes.as_ptr().cast::<i32>();
        let lanes = op.lanes.as_ptr();
        let mut p0 = from;
        while p0 + PT <= to {
            let mut acc = [[_mm512_setzero_si512(); CB]; PT];
            for g in 0..k4 {
                let w: [__m512i; CB] = std::array::from_fn(|j| {
                    _mm512_loadu_si512(lanes.add(((b0 + j) * k4 + g) * VECTOR).cast())
                });
                for (t, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(words.add((p0 + t) * k4 + g).read_unaligned());
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

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! The AVX2 loops: as the VNNI ones, with the bytes widened to 16 bits and summed in
    //! pairs (`vpmaddwd`: exact, no saturation), 8 lanes. Planes of a multiple of 8
    //! positions put 8 positions in a vector (input `[K2, P, 2]`, weights broadcast);
    //! others put 8 output channels in a vector (input `[P, K2 * 2]` broadcast, weights
    //! `[ceil(M / 8), K2, 8]`).
    use super::PointwiseInt8;
    use std::arch::x86_64::*;

    const LANES: usize = 8;

    /// # Safety
    /// The CPU has AVX2; `x` is `[K, P]` and `y` `[M, P]`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn image(op: &PointwiseInt8, x: &[f32], y: &mut [f32], bytes: &mut Vec<u8>) {
        let (groups, p) = (op.groups(), op.plane);
        // not cleared per call, as in the VNNI loops
        if bytes.len() < groups * 4 * p {
            bytes.resize(groups * 4 * p, 0);
        }
        if p % LANES == 0 {
            pack_by_positions(op, x, bytes);
            by_positions(op, bytes, y);
        } else {
            pack_by_channels(op, x, bytes);
            by_channels(op, bytes, y);
        }
    }

    /// `[K, P]` values as `[K2, P, 2]` 16-bit numbers, 8 positions at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn pack_by_positions(op: &PointwiseInt8, x: &[f32], bytes: &mut [u8]) {
        let (k, p) = (op.in_channels, op.plane);
        let inverse = _mm256_set1_ps(1.0 / op.input.scale);
        let zero = _mm256_set1_epi32(op.input.zero);
        let (low, high) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        for g in 0..op.groups() {
            for p0 in (0..p).step_by(LANES) {
                let mut word = _mm256_setzero_si256();
                for j in 0..2 {
                    let kk = 2 * g + j;
                    if kk >= k {
                        break;
                    }
                    let v = _mm256_loadu_ps(x.as_ptr().add(kk * p + p0));
                    // nearest, ties to even (the default rounding mode), as `byte`
                    let a = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)), zero);
                    let a = _mm256_min_epi32(_mm256_max_epi32(a, low), high);
                    let a = if j == 1 {
                        _mm256_slli_epi32::<16>(a)
                    } else {
                        a
                    };
                    word = _mm256_or_si256(word, a);
                }
                _mm256_storeu_si256(bytes.as_mut_ptr().add((g * p + p0) * 4).cast(), word);
            }
        }
    }

    /// `[K, P]` values as `[P, K2 * 2]` 16-bit numbers.
    #[target_feature(enable = "avx2")]
    unsafe fn pack_by_channels(op: &PointwiseInt8, x: &[f32], bytes: &mut [u8]) {
        let (k, p) = (op.in_channels, op.plane);
        let stride = op.groups() * 2;
        let numbers = bytes.as_mut_ptr().cast::<i16>();
        for kk in 0..k {
            for (pos, &v) in x[kk * p..(kk + 1) * p].iter().enumerate() {
                numbers
                    .add(pos * stride + kk)
                    .write_unaligned(op.byte(v) as i16);
            }
        }
    }

    /// Output channels `MR` at a time, positions `8 * NR` at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn by_positions(op: &PointwiseInt8, bytes: &[u8], y: &mut [f32]) {
        let (m, p) = (op.out_channels, op.plane);
        let wide = p / (2 * LANES) * 2 * LANES;
        let mut c = 0;
        while c + 4 <= m {
            tile_positions::<4, 2>(op, bytes, y, c, 0, wide);
            tile_positions::<4, 1>(op, bytes, y, c, wide, p);
            c += 4;
        }
        while c < m {
            tile_positions::<1, 2>(op, bytes, y, c, 0, wide);
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
        let (groups, p) = (op.groups(), op.plane);
        let words = bytes.as_ptr().cast::<i32>();
        let rows = op.rows.as_ptr();
        let mut p0 = from;
        while p0 + NR * LANES <= to {
            let mut acc = [[_mm256_setzero_si256(); NR]; MR];
            for g in 0..groups {
                let a: [__m256i; NR] = std::array::from_fn(|j| {
                    _mm256_loadu_si256(words.add(g * p + p0 + j * LANES).cast())
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let w = _mm256_set1_epi32(*rows.add((c0 + r) * groups + g));
                    for (acc, &a) in acc.iter_mut().zip(&a) {
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, w));
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let c = c0 + r;
                let correction = _mm256_set1_epi32(op.corrections[c]);
                let scale = _mm256_set1_ps(op.scales[c]);
                let bias = _mm256_set1_ps(op.bias[c]);
                for (j, &acc) in acc.iter().enumerate() {
                    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, correction));
                    let v = _mm256_add_ps(_mm256_mul_ps(v, scale), bias);
                    _mm256_storeu_ps(y.as_mut_ptr().add(c * p + p0 + j * LANES), v);
                }
            }
            p0 += NR * LANES;
        }
    }

    /// Blocks of 8 output channels `CB` at a time, positions `PT` at a time.
    #[target_feature(enable = "avx2")]
    unsafe fn by_channels(op: &PointwiseInt8, bytes: &[u8], y: &mut [f32]) {
        let blocks = op.out_channels.div_ceil(LANES);
        let p = op.plane;
        let mut b = 0;
        while b + 2 <= blocks {
            tile_channels::<4, 2>(op, bytes, y, b, 0, p / 4 * 4);
            tile_channels::<1, 2>(op, bytes, y, b, p / 4 * 4, p);
            b += 2;
        }
        while b < blocks {
            tile_channels::<4, 1>(op, bytes, y, b, 0, p / 4 * 4);
            tile_channels::<1, 1>(op, bytes, y, b, p / 4 * 4, p);
            b += 1;
        }
        op.folded.finish(y);
    }

    /// Positions `PT` at a time from `from` up to `to`, for `CB` blocks of channels from
    /// `b0`.
    #[inline(always)]
    unsafe fn tile_channels<const PT: usize, const CB: usize>(
        op: &PointwiseInt8,
        bytes: &[u8],
        y: &mut [f32],
        b0: usize,
        from: usize,
        to: usize,
    ) {
        let (groups, p, m) = (op.groups(), op.plane, op.out_channels);
        let words = bytes.as_ptr().cast::<i32>();
        let lanes = op.lanes.as_ptr();
        let mut p0 = from;
        while p0 + PT <= to {
            let mut acc = [[_mm256_setzero_si256(); CB]; PT];
            for g in 0..groups {
                let w: [__m256i; CB] = std::array::from_fn(|j| {
                    _mm256_loadu_si256(lanes.add(((b0 + j) * groups + g) * LANES).cast())
                });
                for (t, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_epi32(words.add((p0 + t) * groups + g).read_unaligned());
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(a, w));
                    }
                }
            }
            for (t, acc) in acc.iter().enumerate() {
                for (j, &acc) in acc.iter().enumerate() {
                    let c0 = (b0 + j) * LANES;
                    let correction = _mm256_loadu_si256(op.corrections.as_ptr().add(c0).cast());
                    let scale = _mm256_loadu_ps(op.scales.as_ptr().add(c0));
                    let bias = _mm256_loadu_ps(op.bias.as_ptr().add(c0));
                    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, correction));
                    let v = _mm256_add_ps(_mm256_mul_ps(v, scale), bias);
                    let mut lane = [0f32; LANES];
                    _mm256_storeu_ps(lane.as_mut_ptr(), v);
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
    // a subnormal scale has no finite reciprocal
    .filter(|g| g.scale.is_normal() && g.scale > 0.0 && (0..=255).contains(&g.zero))
}

/// What [`swap_in`] replaced: convolutions, and the clips and quantize-dequantize pairs
/// that run inside them.
#[derive(Debug, Default)]
pub(crate) struct SwappedPointwise {
    pub(crate) convolutions: usize,
    pub(crate) clips: usize,
    pub(crate) pairs: usize,
}

/// Replaces, in a decluttered model with oodmon's other operators already in, every
/// pointwise convolution (tract's `EinSum` with its bias `Add`) this module runs, with the
/// clip and quantize-dequantize pair after it.
pub(crate) fn swap_in(model: &mut TypedModel, path: IntPath) -> TractResult<SwappedPointwise> {
    let mut swapped = SwappedPointwise::default();
    for id in model.eval_order()? {
        if let Some((op, input, last)) = pointwise_for(model, id, path)? {
            let f = &op.folded;
            swapped.clips += (f.max_with.is_some() || f.min_with.is_some()) as usize;
            swapped.pairs += f.output.is_some() as usize;
            let name = model.node(id).name.clone();
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(model, input)?;
            let y = patch.wire_node(name, op, &[x])?[0];
            patch.shunt_outside(model, last, y)?;
            patch.apply(model)?;
            swapped.convolutions += 1;
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
    path: IntPath,
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
    // the exact sums fit in i32 while K * 255 * 128 does
    if m == 0 || k == 0 || k > 65_000 {
        return Ok(None);
    }
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
    if plane == 0 {
        return Ok(None);
    }
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
        path,
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

    fn random_op(
        rng: &mut impl Rng,
        path: IntPath,
        [k, m, p]: [usize; 3],
    ) -> (PointwiseInt8, Vec<f32>) {
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
            path,
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

    /// The paths this CPU runs (the vector ones are tested where the CPU has them: VNNI
    /// on this project's x86 build machine when its host has it, AVX2 on any x86-64 here).
    fn paths() -> Vec<IntPath> {
        [IntPath::Portable, IntPath::Avx2, IntPath::Vnni]
            .into_iter()
            .filter(|p| p.runs_here())
            .collect()
    }

    #[test]
    fn every_path_gives_the_exact_sums_at_every_geometry() {
        eprintln!("paths: {:?}", paths());
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
        for path in paths() {
            // one scratch for every geometry, full of stale bytes: the loops read only
            // what they wrote, or padding that meets zero weights
            let mut scratch = Scratch {
                bytes: vec![0xAB; 1 << 16],
                sums: Vec::new(),
            };
            for (k, m, p) in GEOMETRIES {
                let (mut op, x) = random_op(&mut rng, path, [k, m, p]);
                if rng.random() {
                    op.folded.max_with = Some(0.0);
                    op.folded.min_with = Some(6.0);
                }
                if rng.random() {
                    // the output's pair inside too: int8 at a scale of 0.05
                    op.folded.output =
                        Some(QuantizeDequantize::for_tests(20.0, 3, [-128, 127], 0.05, 3));
                }
                let want = reference(&op, &x);
                let mut got = vec![f32::NAN; m * p];
                op.image_portable(&x, &mut got, &mut scratch);
                assert_eq!(got, want, "portable {k} -> {m} x {p}");
                let mut got = vec![f32::NAN; m * p];
                op.run(&x, &mut got, &mut scratch);
                assert_eq!(got, want, "{path:?} {k} -> {m} x {p}");
            }
        }
    }

    /// Every tile and tail of both layouts: planes of 16, 8, 4 positions and ragged ones,
    /// with partial channel blocks inside a group of blocks and after it.
    const GEOMETRIES: [(usize, usize, usize); 16] = [
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
        (9, 5, 8),
        (2, 3, 24),
        (10, 70, 7),
        (10, 12, 7),
        (10, 50, 7),
    ];

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
