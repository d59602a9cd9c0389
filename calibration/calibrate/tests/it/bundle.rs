//! Bundles and calibration through tract, with a small real encoder written by the ONNX
//! builder (no libtorch needed).

use oodmon_calibration::PreprocessSpec;
use oodmon_onnx::{OnnxBuilder, META_PREPROCESSING};
use oodmon_runtime::bundle::{Bundle, CALIBRATION_FILE, ENCODER_FILE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::{assert_fails_cleanly, calibrate};

/// conv 3x3 (3 -> 8) -> relu -> global pool -> linear (8 -> 6), random weights.
pub fn tiny_encoder(size: usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut r = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-0.5f32..0.5))
            .collect::<Vec<_>>()
    };
    let mut b = OnnxBuilder::new(size, size, false);
    let x = b.input();
    let c = b.conv(&x, &r(8 * 3 * 9), &r(8), 3, 3, 1).unwrap();
    let c = b.relu(&c);
    let p = b.pool_flatten(&c);
    let e = b.linear(&p, &r(6 * 8), &r(6), 8).unwrap();
    b.metadata(
        META_PREPROCESSING,
        &serde_json::to_string(&PreprocessSpec::cifar(size as u32)).unwrap(),
    );
    b.finish(&e, 6, "test")
}

/// A CIFAR-layout file: 3 classes of coloured images with noise.
pub fn tiny_cifar(path: &std::path::Path, n: usize, seed: u64, shift: u8) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = Vec::new();
    for i in 0..n {
        let class = i % 3;
        bytes.push(class as u8);
        for c in 0..3 {
            let base = if c == class { 200u8 } else { 40 }.saturating_add(shift);
            bytes.extend((0..1024).map(|_| base.saturating_add(rng.random_range(0..30))));
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn fit_model_writes_a_bundle_that_eval_model_and_load_accept() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("enc.onnx"), tiny_encoder(32)).unwrap();
    tiny_cifar(&dir.path().join("id.bin"), 150, 1, 0);
    tiny_cifar(&dir.path().join("ood.bin"), 60, 2, 50);
    let out = calibrate(
        dir.path(),
        &[
            "fit-model",
            "--model",
            "enc.onnx",
            "--train",
            "cifar10:id.bin",
            "--holdout",
            "0.3",
            "--metric",
            "euclidean",
            "--out",
            "bundle",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = Bundle::load(dir.path().join("bundle")).unwrap();
    assert_eq!(bundle.encoder.dim(), 6);
    assert_eq!(bundle.artifact.embedding_dim, 6);
    assert_eq!(bundle.preprocessing(), &PreprocessSpec::cifar(32));
    let out = calibrate(
        dir.path(),
        &[
            "eval-model",
            "--bundle",
            "bundle",
            "--id",
            "cifar10:id.bin",
            "--ood",
            "shifted=cifar10:ood.bin",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("shifted"));

    // another encoder in the bundle: hash mismatch
    let b = dir.path().join("bundle");
    let good = std::fs::read(b.join(ENCODER_FILE)).unwrap();
    std::fs::write(b.join(ENCODER_FILE), tiny_encoder(16)).unwrap();
    assert!(matches!(
        Bundle::load(&b),
        Err(oodmon_runtime::Error::Calibration(
            oodmon_calibration::Error::EncoderHashMismatch { .. }
        ))
    ));
    let out = calibrate(
        dir.path(),
        &[
            "eval-model",
            "--bundle",
            "bundle",
            "--id",
            "cifar10:id.bin",
            "--ood",
            "cifar10:ood.bin",
        ],
    );
    assert_fails_cleanly(&out, "bundle", "encoder hash mismatch");
    // the right hash but a calibration for another input size
    let small = tiny_encoder(16);
    let mut artifact = bundle.artifact.clone();
    artifact.encoder_sha256 = Some(oodmon_calibration::io::sha256_bytes(&small));
    Bundle::write(&b, &small, &artifact).unwrap();
    let err = Bundle::load(&b).unwrap_err().to_string();
    assert!(err.contains("16x16") && err.contains("32x32"), "{err}");
    // a truncated encoder
    std::fs::write(b.join(ENCODER_FILE), &good[..good.len() / 3]).unwrap();
    artifact.encoder_sha256 = Some(oodmon_calibration::io::sha256_bytes(
        &good[..good.len() / 3],
    ));
    artifact.save(b.join(CALIBRATION_FILE)).unwrap();
    let err = Bundle::load(&b).unwrap_err().to_string();
    assert!(err.contains(ENCODER_FILE), "{err}");
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[test]
fn int8_in_both_forms_and_f16_stay_close_to_float_in_tract() {
    use oodmon_onnx::{quantize, to_f16, QuantForm, RangeMethod};
    use oodmon_runtime::Encoder;
    let float = tiny_encoder(16);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let images: Vec<Vec<f32>> = (0..40)
        .map(|_| {
            (0..3 * 16 * 16)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect()
        })
        .collect();
    let path = std::path::Path::new("t.onnx");
    let f = Encoder::from_bytes(&float, path).unwrap();
    let mean_cosine = |model: &[u8]| {
        let q = Encoder::from_bytes(model, path).unwrap();
        assert_eq!(q.dim(), f.dim());
        let (mut fs, mut qs) = (f.session().unwrap(), q.session().unwrap());
        let mut total = 0.0;
        for x in &images[20..] {
            total += cosine(fs.embed(x).unwrap(), qs.embed(x).unwrap());
        }
        total / 20.0
    };
    for form in [QuantForm::Qdq, QuantForm::Operator] {
        for method in [
            RangeMethod::MinMax,
            RangeMethod::Percentile { percentile: 99.99 },
        ] {
            let int8 = quantize(&float, &images[..20], method, form).unwrap();
            let mean = mean_cosine(&int8);
            assert!(mean >= 0.99, "{form:?} {method:?}: mean cosine {mean}");
            assert!(int8.len() < float.len() + 2048);
        }
        assert!(quantize(&float, &[], RangeMethod::MinMax, form).is_err());
    }
    let half = to_f16(&float).unwrap();
    let mean = mean_cosine(&half);
    assert!(mean >= 0.9999, "f16: mean cosine {mean}");
    // an int8 model is not converted again
    let int8 = quantize(&float, &images[..20], RangeMethod::MinMax, QuantForm::Qdq).unwrap();
    assert!(to_f16(&int8).is_err());
}

/// `fit-model --backend B` embeds through B and records it in the bundle (`embedded_on`),
/// which the edge then runs unchecked on B and compares any other backend against; a
/// backend missing from the build is a clean error.
#[test]
fn fit_model_records_the_backend_it_embedded_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("enc.onnx"), tiny_encoder(32)).unwrap();
    tiny_cifar(&dir.path().join("id.bin"), 90, 1, 0);
    let fit = |backend: &str, out: &str| {
        calibrate(
            dir.path(),
            &[
                "fit-model",
                "--model",
                "enc.onnx",
                "--train",
                "cifar10:id.bin",
                "--holdout",
                "0.3",
                "--metric",
                "euclidean",
                "--no-guards",
                "--backend",
                backend,
                "--out",
                out,
            ],
        )
    };
    for backend in oodmon_runtime::Backend::ALL {
        let out = fit(backend.name(), backend.name());
        if !backend.compiled_in() {
            assert_fails_cleanly(&out, backend.name(), "not in this build");
            continue;
        }
        if backend != oodmon_runtime::Backend::Tract && !out.status.success() {
            // compiled in but without its device or library here (tract-cuda on a machine
            // without a GPU): one clean line naming it
            assert_fails_cleanly(&out, backend.name(), "backend");
            continue;
        }
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bundle = Bundle::load(dir.path().join(backend.name())).unwrap();
        assert_eq!(bundle.artifact.embedded_on, backend.name());
        assert_eq!(bundle.calibrated_on(), backend);
    }
    // with no --backend: tract, as before schema 4
    let out = fit("tract", "default");
    assert!(out.status.success());
    assert_eq!(
        Bundle::load(dir.path().join("default"))
            .unwrap()
            .calibrated_on(),
        oodmon_runtime::Backend::Tract
    );
}

#[test]
fn guards_are_widened_by_the_margin_asked_for_and_record_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("enc.onnx"), tiny_encoder(32)).unwrap();
    tiny_cifar(&dir.path().join("id.bin"), 150, 1, 0);
    let fit = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "fit-model",
            "--model",
            "enc.onnx",
            "--train",
            "cifar10:id.bin",
            "--holdout",
            "0.3",
            "--metric",
            "euclidean",
            "--out",
            out,
        ];
        args.extend_from_slice(extra);
        let o = calibrate(dir.path(), &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Bundle::load(dir.path().join(out))
            .unwrap()
            .artifact
            .image_quality
            .expect("guards fitted by default")
    };
    let plain = fit("plain", &[]);
    let wide = fit("wide", &["--guard-margin", "2"]);
    assert_eq!((plain.margin, wide.margin), (0.0, 2.0));
    assert!(wide.mean_luma.low < plain.mean_luma.low, "{plain} / {wide}");
    assert!(
        wide.mean_luma.high > plain.mean_luma.high,
        "{plain} / {wide}"
    );
    assert!(wide.noise_max > plain.noise_max, "{plain} / {wide}");
    // `guards` refits with a margin too, and says so
    let guards = |extra: &[&str]| {
        let mut args = vec![
            "guards",
            "--calibration",
            "plain",
            "--data",
            "cifar10:id.bin",
        ];
        args.extend_from_slice(extra);
        calibrate(dir.path(), &args)
    };
    let o = guards(&["--guard-margin", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("widened by 2 interquartile ranges"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let refit = Bundle::load(dir.path().join("plain"))
        .unwrap()
        .artifact
        .image_quality
        .unwrap();
    assert_eq!(refit.margin, 2.0);
    let o = guards(&["--guard-margin=-1"]);
    assert_fails_cleanly(&o, "cifar10:id.bin", "margin");
    // tolerating a severity: the same images through every corruption at it pass, so no
    // bound is tighter than the clean images' own; recorded and shown
    let tolerate = |severity: &str| guards(&["--guard-tolerate", severity]);
    let o = tolerate("1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("tolerating every corruption at severity 1"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let tolerant = Bundle::load(dir.path().join("plain"))
        .unwrap()
        .artifact
        .image_quality
        .unwrap();
    assert_eq!(
        (tolerant.tolerated_severity, tolerant.margin),
        (Some(1), 0.0)
    );
    assert!(
        tolerant.mean_luma.low < plain.mean_luma.low,
        "{plain} / {tolerant}"
    );
    assert!(tolerant.noise_max > plain.noise_max, "{plain} / {tolerant}");
    assert!(
        tolerant.detail_min < plain.detail_min,
        "{plain} / {tolerant}"
    );
    assert!(
        tolerant.contrast_min < plain.contrast_min,
        "{plain} / {tolerant}"
    );
    // a severity the generator does not have is refused before anything is measured
    let o = tolerate("6");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--guard-tolerate"));
}
