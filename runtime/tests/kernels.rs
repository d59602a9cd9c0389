//! oodmon's own kernels in tract's CPU plan against tract's own operators, on the built-in
//! bundle's int8 EfficientNet-Lite0 and on a small QDQ encoder with depthwise layers:
//! the operators are swapped in, and the embeddings are the same values with the exact
//! kernels, and within rounding of them (far closer than onnxruntime comes) with the int8
//! pointwise convolutions.
// tests fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use oodmon_onnx::{quantize_qdq, ConvShape, OnnxBuilder, RangeMethod};
use oodmon_runtime::{Backend, Encoder, Kernels};
use rand::{Rng, SeedableRng};

fn both(bytes: &[u8]) -> (Encoder, Encoder) {
    let load = |k| Encoder::from_bytes_with(bytes, Path::new("e.onnx"), Backend::Tract, k).unwrap();
    (load(Kernels::Tract), load(Kernels::Exact))
}

/// How far `ours` is from `tract` at most over `inputs`: `|a - b| / |a|`, and the lowest
/// cosine.
fn distance(tract: &Encoder, ours: &Encoder, inputs: &[Vec<f32>]) -> (f64, f64) {
    let (mut a, mut b) = (tract.session().unwrap(), ours.session().unwrap());
    let dot =
        |p: &[f32], q: &[f32]| -> f64 { p.iter().zip(q).map(|(x, y)| *x as f64 * *y as f64).sum() };
    let (mut far, mut cosine) = (0f64, 1f64);
    for x in inputs {
        let ea = a.embed(x).unwrap().to_vec();
        let eb = b.embed(x).unwrap().to_vec();
        let diff: Vec<f32> = ea.iter().zip(&eb).map(|(p, q)| p - q).collect();
        far = far.max((dot(&diff, &diff) / dot(&ea, &ea)).sqrt());
        cosine = cosine.min(dot(&ea, &eb) / (dot(&ea, &ea) * dot(&eb, &eb)).sqrt());
    }
    (far, cosine)
}

/// Embeds `inputs` through both plans and compares them. On x86-64 they are the same
/// values. On aarch64 tract's depthwise kernel fuses multiply-adds where oodmon's (and
/// tract's on x86) does not, and the int8 graph amplifies last-bit differences (BENCHMARKS,
/// "Why"), so there the embeddings only point the same way.
fn agree(tract: &Encoder, ours: &Encoder, inputs: &[Vec<f32>]) {
    let (mut a, mut b) = (tract.session().unwrap(), ours.session().unwrap());
    for (n, x) in inputs.iter().enumerate() {
        let (ea, eb) = (
            a.embed(x).map(<[f32]>::to_vec),
            b.embed(x).map(<[f32]>::to_vec),
        );
        let (ea, eb) = match (ea, eb) {
            (Ok(ea), Ok(eb)) => (ea, eb),
            (Err(ea), Err(eb)) => {
                assert_eq!(ea.to_string(), eb.to_string(), "input {n}");
                continue;
            }
            other => panic!("input {n}: one plan failed: {other:?}"),
        };
        if cfg!(target_arch = "x86_64") {
            assert_eq!(ea, eb, "input {n}");
        } else {
            let dot: f32 = ea.iter().zip(&eb).map(|(p, q)| p * q).sum();
            let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            let cosine = dot / (norm(&ea) * norm(&eb));
            assert!(cosine > 0.9, "input {n}: cosine {cosine}");
        }
    }
}

fn random_inputs(n: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..len).map(|_| rng.random_range(-2.1f32..2.6)).collect())
        .collect()
}

#[test]
fn the_built_in_bundle_runs_on_oodmon_kernels_with_tracts_values() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge/demo/bundle/encoder.onnx");
    let (tract, ours) = both(&std::fs::read(path).unwrap());
    assert_eq!(
        tract.own_kernels().depthwise + tract.own_kernels().quantize_dequantize,
        0
    );
    // EfficientNet-Lite0: 16 depthwise layers; 58 activation QDQ pairs in the int8 file.
    // On aarch64 tract's decluttering lays 15 of the 16 out channel-last (HWC), where it
    // has a NEON kernel of its own; ours takes the NCHW ones only, so there it runs one.
    let own = ours.own_kernels();
    eprintln!("{own:?}");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(own.depthwise, 16);
        // every one with its input's pair, its ReLU6 and its output's pair folded in
        assert_eq!(own.folded_quantize_dequantize, 32);
        assert_eq!(own.folded_clips, 16);
    } else {
        assert!(own.depthwise >= 1, "{own:?}");
    }
    assert_eq!(own.quantize_dequantize, 58);
    assert_eq!(
        own.pointwise_int8, 0,
        "the exact kernels take no pointwise layer"
    );
    agree(&tract, &ours, &random_inputs(3, tract.input_len(), 1));
}

/// The int8 pointwise convolutions: every one of Lite0's 32 taken (on any CPU with
/// `Kernels::Int8`; by default only where VNNI or AVX2 make them pay), the same embedding on both
/// paths, and close to tract's: over 20 inputs at most 10% away and a cosine over 0.99
/// (measured: 0.8% mean, 5.8% max, 0.998; onnxruntime is 7% away from tract on average).
#[test]
fn int8_pointwise_convolutions_stay_close_to_tracts_values() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge/demo/bundle/encoder.onnx");
    let bytes = std::fs::read(path).unwrap();
    let load =
        |k| Encoder::from_bytes_with(&bytes, Path::new("e.onnx"), Backend::Tract, k).unwrap();
    let (tract, int8, default) = (
        load(Kernels::Tract),
        load(Kernels::Int8),
        load(Kernels::Oodmon),
    );
    let own = int8.own_kernels();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(own.pointwise_int8, 32, "{own:?}");
    } else {
        // tract lays most of the graph out channel-last there: fewer pointwise layers on
        // a grid it knows
        assert!(own.pointwise_int8 >= 1, "{own:?}");
    }
    let by_default = default.own_kernels().pointwise_int8;
    assert_eq!(
        by_default,
        if oodmon_runtime::pointwise::IntPath::chosen()
            != oodmon_runtime::pointwise::IntPath::Portable
        {
            own.pointwise_int8
        } else {
            0
        }
    );
    let inputs = random_inputs(20, tract.input_len(), 4);
    let (far, cosine) = distance(&tract, &int8, &inputs);
    eprintln!("int8 pointwise: at most {far:.3e} away, cosine at least {cosine:.6}");
    assert!(far < 0.1 && cosine > 0.99, "{far} {cosine}");
    // two plans built apart give the same values (the per-path equality of the sums is
    // the unit test's, in pointwise.rs)
    if by_default > 0 {
        let (mut a, mut b) = (int8.session().unwrap(), default.session().unwrap());
        for x in &inputs[..3] {
            assert_eq!(a.embed(x).unwrap(), b.embed(x).unwrap());
        }
    }
}

/// pointwise 3 -> 8, ReLU6, a depthwise layer of each kind the swap handles (3x3 and 5x5,
/// stride 1 and 2, TF "same" asymmetric padding), a residual add, pooling, linear.
fn depthwise_encoder(size: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut w = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.4f32..0.4)).collect() };
    let mut b = OnnxBuilder::new(size, size, false);
    let x = b.input();
    let x = b.conv(&x, &w(8 * 3), &w(8), 3, 1, 1).unwrap();
    let x = b.clip(&x, 0.0, 6.0);
    let dw = |b: &mut OnnxBuilder, x: &str, k, stride, pads, weights: Vec<f32>, bias: Vec<f32>| {
        let shape = ConvShape {
            cin: 8,
            k,
            stride,
            groups: 8,
            pads,
        };
        let y = b.conv_with(x, &weights, &bias, shape).unwrap();
        b.clip(&y, 0.0, 6.0)
    };
    let y = dw(&mut b, &x, 3, 1, [1, 1, 1, 1], w(8 * 9), w(8));
    let x = b.add(&x, &y);
    let x = dw(&mut b, &x, 3, 2, [0, 0, 1, 1], w(8 * 9), w(8));
    let x = dw(&mut b, &x, 5, 2, [1, 1, 2, 2], w(8 * 25), w(8));
    let x = dw(&mut b, &x, 5, 1, [2, 2, 2, 2], w(8 * 25), w(8));
    let p = b.pool_flatten(&x);
    let e = b.linear(&p, &w(6 * 8), &w(6), 8).unwrap();
    b.finish(&e, 6, "test")
}

#[test]
fn float_and_int8_depthwise_encoders_agree_with_tract_even_on_wild_inputs() {
    let size = 19;
    let float = depthwise_encoder(size);
    let calibration = random_inputs(16, 3 * size * size, 2);
    let int8 = quantize_qdq(&float, &calibration, RangeMethod::MinMax).unwrap();
    let mut inputs = random_inputs(4, 3 * size * size, 3);
    // values the int8 graph clamps, and a NaN its first quantizer turns into a zero point
    let mut wild = inputs[0].clone();
    wild[0] = 1e30;
    wild[1] = -1e30;
    wild[5] = 1e6;
    inputs.push(wild.clone());
    wild[7] = f32::NAN;
    inputs.push(wild);
    for (bytes, what) in [(&float, "float"), (&int8, "int8")] {
        let (tract, ours) = both(bytes);
        let int8_pointwise =
            Encoder::from_bytes_with(bytes, Path::new("e.onnx"), Backend::Tract, Kernels::Int8)
                .unwrap();
        // the first convolution is a pointwise one, on the input's quantizer in the int8
        // graph; the float graph's weights are no int8 numbers
        let pointwise = int8_pointwise.own_kernels().pointwise_int8;
        assert_eq!(pointwise, (what == "int8") as usize, "{what}");
        let (far, cosine) = distance(&tract, &int8_pointwise, &inputs[..4]);
        assert!(far < 0.1 && cosine > 0.99, "{what}: {far} {cosine}");
        let own = ours.own_kernels();
        assert_eq!(own.depthwise, 4, "{what}");
        assert_eq!(own.quantize_dequantize > 0, what == "int8");
        // each depthwise layer's ReLU6 runs inside it, and in the int8 graph the pairs
        // around it
        assert_eq!(own.folded_clips, 4, "{what} {own:?}");
        assert_eq!(
            own.folded_quantize_dequantize > 0,
            what == "int8",
            "{own:?}"
        );
        agree(&tract, &ours, &inputs);
    }
}

/// A depthwise layer straight on the input, then ReLU6: NaN and infinities reach the clip
/// folded into oodmon's convolution, which must treat them as tract's `Max` and `Min` do.
#[test]
fn a_folded_clip_treats_nan_and_infinities_as_tract_does() {
    let size = 9;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut w = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-0.4f32..0.4)).collect() };
    let mut b = OnnxBuilder::new(size, size, false);
    let x = b.input();
    let shape = ConvShape {
        cin: 3,
        k: 3,
        stride: 1,
        groups: 3,
        pads: [1, 1, 1, 1],
    };
    let y = b.conv_with(&x, &w(3 * 9), &w(3), shape).unwrap();
    let y = b.clip(&y, 0.0, 6.0);
    let p = b.pool_flatten(&y);
    let e = b.linear(&p, &w(4 * 3), &w(4), 3).unwrap();
    let float = b.finish(&e, 4, "test");
    let len = 3 * size * size;
    let calibration = random_inputs(8, len, 12);
    let int8 = quantize_qdq(&float, &calibration, RangeMethod::MinMax).unwrap();
    let mut inputs = random_inputs(2, len, 13);
    // one special value in a plane at a time, so that the rest of the embedding is finite
    for (at, v) in [
        (4, f32::NAN),
        (40, f32::INFINITY),
        (100, f32::NEG_INFINITY),
        (200, 1e30),
        (30, -1e30),
    ] {
        let mut x = inputs[0].clone();
        x[at] = v;
        inputs.push(x);
    }
    for (bytes, what) in [(&float, "float"), (&int8, "int8")] {
        let (tract, ours) = both(bytes);
        let own = ours.own_kernels();
        assert_eq!((own.depthwise, own.folded_clips), (1, 1), "{what} {own:?}");
        agree(&tract, &ours, &inputs);
    }
}
