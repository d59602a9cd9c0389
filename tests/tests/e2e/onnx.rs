//! The exported ONNX encoder passes the ONNX checker and gives the same embeddings in
//! onnxruntime as in tract.

use oodmon_calibration::{npy, Embeddings, PreprocessSpec};
use oodmon_onnx::{quantize, to_f16, QuantForm, RangeMethod};
use oodmon_runtime::Encoder;
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::train;
use tch::Device;

use crate::util::{python, run_python, tests_dir, torch_lock};

#[test]
fn onnxruntime_and_the_checker_agree_with_tract_on_float_int8_and_f16_exports() {
    let cfg = ModelConfig {
        arch: Arch::Edge,
        width: 0.5,
        embed_dim: 32,
        head: Head::Classifier { classes: 4 },
    };
    let torch = torch_lock();
    tch::manual_seed(11);
    let (_vs, net) = train::build(&cfg, Device::Cpu);
    drop(torch);
    let spec = PreprocessSpec::cifar(32);
    let bytes = oodmon_trainer::export::export_onnx(&net, &spec, "{}", false).unwrap();
    exports_agree("edge", &bytes, 32 * 32, 0.99, true);
}

/// EfficientNet-Lite0 (depthwise and asymmetric-padded convolutions, Clip, residual adds):
/// the same agreement, on random weights with non-trivial batch-norm statistics.
#[test]
fn onnxruntime_and_the_checker_agree_with_tract_on_efficientnet_lite0_exports() {
    let cfg = ModelConfig {
        arch: Arch::EfficientnetLite0,
        width: 1.0,
        embed_dim: 1280,
        head: Head::Classifier { classes: 10 },
    };
    let torch = torch_lock();
    tch::manual_seed(12);
    let (vs, net) = train::build(&cfg, Device::Cpu);
    tch::no_grad(|| {
        // in name order: the map's own order changes from run to run, and with it which
        // statistics each random draw lands in
        let mut variables: Vec<_> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in variables {
            if name.ends_with("running_mean") {
                let r = t.rand_like() * 0.4 - 0.2;
                t.copy_(&r);
            } else if name.ends_with("running_var") {
                let r = t.rand_like() + 0.5;
                t.copy_(&r);
            }
        }
    });
    drop(torch);
    let spec = PreprocessSpec::imagenet(64);
    let bytes = oodmon_trainer::export::export_onnx(&net, &spec, "{}", false).unwrap();
    // not the operator form: tract 0.23.9's AVX-512 AMX int32 kernel
    // (`avx512amx_mmm_i32_16x16`) crashes on it now and then on this machine's CPU
    // (EVALUATION.md); the form shipped is QDQ
    exports_agree("efficientnet-lite0", &bytes, 64 * 64, 0.98, false);
}

/// The float export in onnxruntime equals tract's (and passes the checker); int8 (QDQ, and
/// operator form when asked) and float16 stay within `min_cosine` (f16: 0.9999) of float
/// in both runtimes.
fn exports_agree(what: &str, bytes: &[u8], pixels: usize, min_cosine: f64, operator_form: bool) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("encoder.onnx");
    std::fs::write(&model, bytes).unwrap();
    let enc = Encoder::load(&model).unwrap();
    let (n, len) = (4, 3 * pixels);
    let inputs: Vec<f32> = (0..n * len)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    npy::write_embeddings(
        dir.path().join("inputs.npy"),
        &Embeddings::new(n, len, inputs.clone()).unwrap(),
    )
    .unwrap();
    run_python(
        "onnx_reference.py",
        &[
            &model,
            &dir.path().join("inputs.npy"),
            &dir.path().join("ort.npy"),
        ],
    );
    let ort = npy::read_embeddings(dir.path().join("ort.npy")).unwrap();
    let mut session = enc.session().unwrap();
    let mut float_rows = Vec::new();
    for i in 0..n {
        let ours = session.embed(&inputs[i * len..(i + 1) * len]).unwrap();
        let err = ours
            .iter()
            .zip(ort.row(i))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let scale = ours.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 1e-4 * scale,
            "{what} row {i}: tract and onnxruntime differ by {err}"
        );
        float_rows.push(ours.to_vec());
    }
    // the GPU benchmark's PyTorch peer (bench/onnx_torch.py) computes the same network
    let torch_float = torch_peer(dir.path(), &model, "float");
    for (i, row) in float_rows.iter().enumerate() {
        let err = max_abs_diff(row, torch_float.row(i));
        let scale = row.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 1e-4 * scale,
            "{what} row {i}: tract and onnx_torch.py differ by {err}"
        );
    }
    let calibration: Vec<Vec<f32>> = (0..16)
        .map(|k| {
            (0..len)
                .map(|i| (((i + 131 * k) * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect()
        })
        .collect();
    let mut variants = vec![
        (
            "int8-qdq",
            quantize(bytes, &calibration, RangeMethod::MinMax, QuantForm::Qdq).unwrap(),
            min_cosine,
        ),
        ("f16", to_f16(bytes).unwrap(), 0.9999),
    ];
    if operator_form {
        let model = quantize(
            bytes,
            &calibration,
            RangeMethod::MinMax,
            QuantForm::Operator,
        );
        variants.push(("int8-operator", model.unwrap(), min_cosine));
    }
    for (name, model, min_cosine) in variants {
        let path = dir.path().join(format!("encoder-{name}.onnx"));
        std::fs::write(&path, &model).unwrap();
        let out = dir.path().join(format!("ort-{name}.npy"));
        run_python(
            "onnx_reference.py",
            &[&path, &dir.path().join("inputs.npy"), &out],
        );
        let ort = npy::read_embeddings(&out).unwrap();
        let mut q = Encoder::load(&path).unwrap().session().unwrap();
        let (mut tract_cos, mut ort_cos) = (0.0, 0.0);
        for i in 0..n {
            let ours = q.embed(&inputs[i * len..(i + 1) * len]).unwrap();
            tract_cos += cosine(ours, &float_rows[i]) / n as f64;
            ort_cos += cosine(ort.row(i), &float_rows[i]) / n as f64;
        }
        eprintln!(
            "{what} {name} vs float mean cosine: tract {tract_cos:.6}, onnxruntime {ort_cos:.6}"
        );
        if name == "int8-qdq" {
            // the peer follows the file's activation rounding: a row equals tract's to float
            // rounding (3e-7 seen) unless one rounding to int8 falls the other way between
            // the two float paths, which moves a deep network's embedding by up to about 1%
            // (4e-3 to 6.5e-3 seen)
            let peer = torch_peer(dir.path(), &path, "qdq");
            let mut q = Encoder::load(&path).unwrap().session().unwrap();
            let mut exact = 0;
            for i in 0..n {
                let ours = q.embed(&inputs[i * len..(i + 1) * len]).unwrap();
                let scale = ours.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let rel = max_abs_diff(ours, peer.row(i)) / scale;
                eprintln!("{what} int8-qdq row {i}: tract vs onnx_torch.py qdq {rel:.2e}");
                assert!(rel <= 2e-2, "{what} row {i}: {rel}");
                assert!(cosine(ours, peer.row(i)) >= 0.9999, "{what} row {i}");
                exact += usize::from(rel <= 1e-5);
            }
            // a peer that ran the float network instead would be off on every row (the
            // weights' and activations' int8 rounding: 6e-3 here)
            assert!(exact >= 1, "{what}: no row equals tract's");
            if what == "efficientnet-lite0" {
                sensitivity_probe_runs(dir.path(), &path);
            }
        }
        assert!(tract_cos >= min_cosine, "tract {what} {name}: {tract_cos}");
        assert!(
            ort_cos >= min_cosine,
            "onnxruntime {what} {name}: {ort_cos}"
        );
    }
}

/// `bench/int8_sensitivity.py` (the evidence BENCHMARKS.md cites for backends disagreeing
/// on int8 files) runs on a QDQ file, over four CIFAR-format records of random pixels, and
/// reports every probe on every image and every quantized activation.
fn sensitivity_probe_runs(dir: &std::path::Path, model: &std::path::Path) {
    use rand::{RngCore, SeedableRng};
    let bin = dir.join("cifar-test.bin");
    let mut records = vec![0u8; 4 * 3073];
    rand_chacha::ChaCha8Rng::seed_from_u64(5).fill_bytes(&mut records);
    std::fs::write(&bin, records).unwrap();
    let script = tests_dir()
        .parent()
        .unwrap()
        .join("bench/int8_sensitivity.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(model)
        .arg(&bin)
        .args(["--images", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "int8_sensitivity.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for probe in ["noise_1e-7", "conv_f64", "one_step_first_activation"] {
        assert_eq!(r[probe]["images"], 4, "{probe}: {r}");
    }
    // a step up in the first layer reaches the embedding
    assert!(
        r["one_step_first_activation"]["max_pct"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    let activations = r["per_activation"].as_array().unwrap();
    assert_eq!(
        Some(activations.len() as u64),
        r["activations"].as_u64(),
        "{r}"
    );
    assert!(activations.len() > 20, "{r}");
    assert!(activations
        .iter()
        .all(|a| a["median_steps"].as_f64().is_some_and(|m| m >= 0.0)));
}

/// `bench/onnx_torch.py` on the CPU over the test's inputs.npy, in `precision`.
fn torch_peer(dir: &std::path::Path, model: &std::path::Path, precision: &str) -> Embeddings {
    let out = dir.join(format!("torch-{precision}.npy"));
    run_python(
        "onnx_torch_reference.py",
        &[
            model,
            &dir.join("inputs.npy"),
            &out,
            std::path::Path::new(precision),
        ],
    );
    npy::read_embeddings(&out).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
