//! The backends behind one session API: names, a backend missing from the build, and,
//! where this build has them, the same embeddings as tract on the same ONNX file.
// tests fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use oodmon_onnx::{OnnxBuilder, META_PREPROCESSING};
use oodmon_runtime::{Backend, Encoder, Error};

/// conv 3x3 (3 -> 6) -> relu -> pool -> linear (6 -> 5), varied weights of scale `w`.
fn encoder(size: usize, w: f32) -> Vec<u8> {
    let mut b = OnnxBuilder::new(size, size, false);
    let x = b.input();
    let k: Vec<f32> = (0..6 * 3 * 9)
        .map(|i| w * (((i * 37) % 17) as f32 / 8.0 - 1.0))
        .collect();
    let c = b.conv(&x, &k, &[0.1; 6], 3, 3, 1).unwrap();
    let c = b.relu(&c);
    let p = b.pool_flatten(&c);
    let l: Vec<f32> = (0..5 * 6)
        .map(|i| ((i * 11) % 7) as f32 / 3.0 - 1.0)
        .collect();
    let e = b.linear(&p, &l, &[0.0; 5], 6).unwrap();
    b.metadata(
        META_PREPROCESSING,
        &serde_json::to_string(&oodmon_calibration::PreprocessSpec::cifar(size as u32)).unwrap(),
    );
    b.finish(&e, 5, "test")
}

#[test]
fn backend_names_round_trip_and_unknown_ones_are_errors() {
    for b in Backend::ALL {
        assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        assert_eq!(b.to_string(), b.name());
    }
    assert_eq!("ort".parse::<Backend>().unwrap(), Backend::Onnxruntime);
    let err = "gpu".parse::<Backend>().unwrap_err().to_string();
    assert!(err.contains("gpu") && err.contains("tract-cuda"), "{err}");
    assert!(Backend::available().contains(&Backend::Tract));
    assert_eq!(Backend::default(), Backend::Tract);
}

#[test]
fn a_backend_missing_from_this_build_is_a_clear_error() {
    let bytes = encoder(8, 0.1);
    for b in Backend::ALL.into_iter().filter(|b| !b.compiled_in()) {
        match Encoder::from_bytes_on(&bytes, Path::new("e.onnx"), b) {
            Err(Error::Backend { backend, problem }) => {
                assert_eq!(backend, b);
                assert!(problem.contains(b.feature().unwrap()), "{problem}");
            }
            other => panic!("{b}: {other:?}"),
        }
    }
}

/// Embeddings of `backend` against tract's on varied inputs: float rounding only.
#[allow(dead_code)]
fn assert_same_embeddings_as_tract(backend: Backend) {
    let bytes = encoder(12, 0.2);
    let tract = Encoder::from_bytes(&bytes, Path::new("e.onnx")).unwrap();
    let other = Encoder::from_bytes_on(&bytes, Path::new("e.onnx"), backend).unwrap();
    assert_eq!(other.backend(), backend);
    assert_eq!(other.dim(), tract.dim());
    let (mut a, mut b) = (tract.session().unwrap(), other.session().unwrap());
    for seed in 0..10 {
        let input: Vec<f32> = (0..tract.input_len())
            .map(|i| (((i + seed * 131) * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let ea = a.embed(&input).unwrap().to_vec();
        // written in place, as the edge's preprocessing does
        b.with_input(|t| t.copy_from_slice(&input)).unwrap();
        let eb = b.run().unwrap().to_vec();
        assert_eq!(b.input(), &input[..]);
        for (x, y) in ea.iter().zip(&eb) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{ea:?} vs {eb:?}");
        }
    }
    assert_eq!(b.time(1, 2).unwrap().len(), 2);
}

#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_embeds_like_tract_and_reports_broken_models_and_nan() {
    assert_same_embeddings_as_tract(Backend::Onnxruntime);
    // a file ONNX Runtime cannot read
    let mut bytes = encoder(8, 0.1);
    bytes.truncate(bytes.len() / 2);
    assert!(Encoder::from_bytes_on(&bytes, Path::new("cut.onnx"), Backend::Onnxruntime).is_err());
    // an encoder that overflows: a typed non-finite error, not a NaN embedding
    let huge = Encoder::from_bytes_on(&encoder(8, 1e38), Path::new("h.onnx"), Backend::Onnxruntime)
        .unwrap();
    let err = huge.session().unwrap().embed(&vec![1.0; 192]).unwrap_err();
    assert!(
        matches!(err, oodmon_runtime::InferenceError::NonFinite { .. }),
        "{err}"
    );
}

#[cfg(any(feature = "tract-cuda", feature = "tract-cuda-13"))]
#[test]
fn tract_cuda_embeds_like_tract_or_says_why_it_cannot_run_here() {
    match Encoder::from_bytes_on(&encoder(12, 0.2), Path::new("e.onnx"), Backend::TractCuda) {
        // a machine with an NVIDIA driver: the same embeddings as on the CPU
        Ok(_) => assert_same_embeddings_as_tract(Backend::TractCuda),
        // none here: a typed error that names what is missing (on a machine known to have
        // a GPU, `OODMON_REQUIRE_GPU=1` makes that a failure: bench/gpu_check.sh sets it)
        Err(Error::Backend { backend, problem }) => {
            assert!(
                std::env::var_os("OODMON_REQUIRE_GPU").is_none(),
                "OODMON_REQUIRE_GPU is set but tract-cuda cannot run: {problem}"
            );
            assert_eq!(backend, Backend::TractCuda);
            assert!(
                problem.contains("CUDA") || problem.contains("cuda"),
                "{problem}"
            );
        }
        Err(other) => panic!("{other}"),
    }
}

/// `OODMON_ORT_PROVIDERS` picks onnxruntime's execution providers: the CPU one by default,
/// and a provider the loaded library lacks (the onnxruntime wheel has no CUDA or TensorRT)
/// or an unknown name is a clear error, never a silent CPU run. (The variable itself is
/// read at session start; the edge's CLI tests set it on a child process.)
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_providers_are_asked_for_by_name_and_a_missing_one_is_an_error() {
    use oodmon_runtime::backend::onnxruntime::{parse_providers, Provider};
    assert_eq!(parse_providers("").unwrap(), [Provider::Cpu]);
    assert_eq!(parse_providers(" CPU , cpu").unwrap(), [Provider::Cpu]);
    let unknown = parse_providers("cpu,gpu").unwrap_err();
    assert!(
        unknown.contains("OODMON_ORT_PROVIDERS") && unknown.contains("\"gpu\""),
        "{unknown}"
    );
    // this machine's library is the CPU wheel's: CUDA and TensorRT are refused by name
    // (where a library has them, they are kept in the order asked)
    for (asked, ort_name, want) in [
        ("cuda", "CUDAExecutionProvider", vec![Provider::Cuda]),
        (
            "tensorrt,cuda",
            "TensorrtExecutionProvider",
            vec![Provider::TensorRt, Provider::Cuda],
        ),
    ] {
        match parse_providers(asked) {
            Ok(got) => assert_eq!(got, want, "{asked}"),
            Err(text) => assert!(
                text.contains(ort_name) && text.contains("built without"),
                "{asked}: {text}"
            ),
        }
    }
    // and a session starts on the default
    Encoder::from_bytes_on(&encoder(8, 0.1), Path::new("p.onnx"), Backend::Onnxruntime)
        .unwrap()
        .session()
        .unwrap();
}
