//! The session as its three users drive it: bytes in, checked shapes, one preallocated
//! input, typed errors for corrupt models, wrong inputs and non-finite embeddings.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use oodmon_onnx::{OnnxBuilder, META_PREPROCESSING};
use oodmon_runtime::{Encoder, Error, InferenceError};

/// conv 3x3 (3 -> 4) -> relu -> pool -> linear (4 -> 5), weights all `w`.
fn encoder(size: usize, w: f32) -> Vec<u8> {
    let mut b = OnnxBuilder::new(size, size, false);
    let x = b.input();
    let c = b.conv(&x, &vec![w; 4 * 3 * 9], &[0.1; 4], 3, 3, 1).unwrap();
    let c = b.relu(&c);
    let p = b.pool_flatten(&c);
    let e = b.linear(&p, &[w; 5 * 4], &[0.0; 5], 4).unwrap();
    b.metadata(
        META_PREPROCESSING,
        &serde_json::to_string(&oodmon_calibration::PreprocessSpec::cifar(size as u32)).unwrap(),
    );
    b.finish(&e, 5, "test")
}

#[test]
fn shapes_metadata_and_two_ways_to_fill_the_input_agree() {
    let enc = Encoder::from_bytes(&encoder(8, 0.05), Path::new("e.onnx")).unwrap();
    assert_eq!(enc.input_size(), (8, 8));
    assert_eq!(enc.input_len(), 3 * 8 * 8);
    assert_eq!(enc.dim(), 5);
    assert_eq!(enc.preprocessing().map(|p| p.width), Some(8));
    let input: Vec<f32> = (0..enc.input_len()).map(|i| (i % 7) as f32 / 7.0).collect();
    let mut a = enc.session().unwrap();
    let copied = a.embed(&input).unwrap().to_vec();
    let mut b = enc.session().unwrap();
    b.with_input(|t| t.copy_from_slice(&input)).unwrap();
    let in_place = b.run().unwrap().to_vec();
    assert_eq!(copied, in_place);
    assert_eq!(b.input(), &input[..]);
    assert_eq!(b.embedding(), &in_place[..]);
    // the same session again, on other values: a different embedding
    let other: Vec<f32> = input.iter().map(|v| 1.0 - v).collect();
    assert_ne!(a.embed(&other).unwrap(), &copied[..]);
    let times = a.time(1, 3).unwrap();
    assert_eq!(times.len(), 3);
}

#[test]
fn corrupt_and_wrong_models_are_typed_errors_naming_the_file() {
    let good = encoder(8, 0.05);
    for bytes in [&good[..good.len() / 2], b"not onnx at all".as_slice(), &[]] {
        match Encoder::from_bytes(bytes, Path::new("broken.onnx")) {
            Err(e @ Error::Model { .. }) => assert!(e.to_string().contains("broken.onnx"), "{e}"),
            other => panic!("expected a model error, got {other:?}"),
        }
    }
    match Encoder::load(Path::new("/nonexistent/e.onnx")) {
        Err(Error::Io { path, .. }) => assert_eq!(path, Path::new("/nonexistent/e.onnx")),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn wrong_input_size_and_non_finite_embeddings_are_inference_errors() {
    let enc = Encoder::from_bytes(&encoder(8, 0.05), Path::new("e.onnx")).unwrap();
    let mut s = enc.session().unwrap();
    assert_eq!(
        s.embed(&[0.0; 10]).unwrap_err(),
        InferenceError::InputSize {
            expected: 192,
            found: 10
        }
    );
    // weights that overflow f32: the embedding is infinite, and the run says so
    let huge = Encoder::from_bytes(&encoder(8, f32::MAX), Path::new("huge.onnx")).unwrap();
    assert!(matches!(
        huge.session().unwrap().embed(&vec![1.0; 192]),
        Err(InferenceError::NonFinite { .. })
    ));
}
