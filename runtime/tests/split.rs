//! The encoder cut in two for two threads: every cut of the built-in bundle's int8
//! EfficientNet-Lite0 and of a small float encoder gives the whole model's embedding.
// tests fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use oodmon_runtime::session::Part;
use oodmon_runtime::{Backend, Encoder, Kernels};
use rand::{Rng, SeedableRng};

fn inputs(n: usize, len: usize) -> Vec<Vec<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    (0..n)
        .map(|_| (0..len).map(|_| rng.random_range(-2.1f32..2.6)).collect())
        .collect()
}

/// Head then tail against the whole encoder: the same values on x86-64, where tract and
/// oodmon's kernels give the same values whatever the plan around them; elsewhere (tract's
/// own aarch64 kernels may fuse differently at the cut's edges) the same direction.
fn halves_agree(whole: &Encoder, share: f64) -> f64 {
    let split = whole.split(share).unwrap().expect("a cut");
    assert_eq!(split.head.part(), Part::Head);
    assert_eq!(split.tail.part(), Part::Tail);
    assert_eq!(split.head.input_len(), whole.input_len());
    assert_eq!(split.head.dim(), split.tail.input_len());
    assert_eq!(split.tail.dim(), whole.dim());
    let (mut w, mut h, mut t) = (
        whole.session().unwrap(),
        split.head.session().unwrap(),
        split.tail.session().unwrap(),
    );
    for x in inputs(3, whole.input_len()) {
        let want = w.embed(&x).unwrap().to_vec();
        let middle = h.embed(&x).unwrap().to_vec();
        let got = t.embed(&middle).unwrap().to_vec();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(got, want, "cut at {} ({:.2})", split.cut.name, share);
        } else {
            let dot: f32 = got.iter().zip(&want).map(|(p, q)| p * q).sum();
            let norm = |v: &[f32]| v.iter().map(|p| p * p).sum::<f32>().sqrt();
            assert!(dot / (norm(&got) * norm(&want)) > 0.99);
        }
    }
    split.cut.head_share
}

#[test]
fn every_cut_of_the_built_in_bundle_gives_the_whole_models_embedding() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge/demo/bundle/encoder.onnx");
    let bytes = std::fs::read(path).unwrap();
    for kernels in [
        Kernels::Oodmon,
        Kernels::Int8,
        Kernels::Exact,
        Kernels::Tract,
    ] {
        let whole =
            Encoder::from_bytes_with(&bytes, Path::new("e.onnx"), Backend::Tract, kernels).unwrap();
        let mut seen = Vec::new();
        for share in [0.1, 0.3, 0.5, 0.7, 0.9] {
            let got = halves_agree(&whole, share);
            // the cuts fall between Lite0's blocks: within a block's share of the asked one
            assert!((got - share).abs() < 0.12, "asked {share}, cut at {got}");
            seen.push(got);
        }
        seen.dedup();
        assert!(seen.len() >= 4, "{seen:?}");
    }
}

#[test]
fn parts_and_other_backends_are_not_cut() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../edge/demo/bundle/encoder.onnx");
    let whole = Encoder::load(&path).unwrap();
    let split = whole.split(0.5).unwrap().unwrap();
    assert!(split.head.split(0.5).unwrap().is_none());
    assert!(split.tail.split(0.5).unwrap().is_none());
    // a tail's input is the cut, and a wrong length is an error, not a panic
    let mut tail = split.tail.session().unwrap();
    assert!(tail.embed(&[0.0; 7]).is_err());
}
