//! The exported ONNX encoder passes the ONNX checker and gives the same embeddings in
//! onnxruntime as in tract.

use oodmon_calibration::{npy, Embeddings, PreprocessSpec};
use oodmon_onnx::{quantize, to_f16, QuantForm, RangeMethod};
use oodmon_runtime::Encoder;
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::train;
use tch::Device;

use crate::util::run_python;

#[test]
fn onnxruntime_and_the_checker_agree_with_tract_on_float_int8_and_f16_exports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        arch: Arch::Edge,
        width: 0.5,
        embed_dim: 32,
        head: Head::Classifier { classes: 4 },
    };
    tch::manual_seed(11);
    let (_vs, net) = train::build(&cfg, Device::Cpu);
    let spec = PreprocessSpec::cifar(32);
    let bytes = oodmon_trainer::export::export_onnx(&net, &spec, "{}", false).unwrap();
    let model = dir.path().join("encoder.onnx");
    std::fs::write(&model, &bytes).unwrap();
    let enc = Encoder::load(&model).unwrap();
    let n = 4;
    let inputs: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    npy::write_embeddings(
        dir.path().join("inputs.npy"),
        &Embeddings::new(n, 3 * 32 * 32, inputs.clone()).unwrap(),
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
        let ours = session.embed(&inputs[i * 3072..(i + 1) * 3072]).unwrap();
        let err = ours
            .iter()
            .zip(ort.row(i))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-4,
            "row {i}: tract and onnxruntime differ by {err}"
        );
        float_rows.push(ours.to_vec());
    }

    // int8 in both forms and float16: the checker and onnxruntime accept them, and both
    // runtimes stay close to float
    let calibration: Vec<Vec<f32>> = (0..16)
        .map(|k| {
            (0..3072)
                .map(|i| (((i + 131 * k) * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect()
        })
        .collect();
    let variants = [
        (
            "int8-qdq",
            quantize(&bytes, &calibration, RangeMethod::MinMax, QuantForm::Qdq).unwrap(),
            0.99,
        ),
        (
            "int8-operator",
            quantize(
                &bytes,
                &calibration,
                RangeMethod::MinMax,
                QuantForm::Operator,
            )
            .unwrap(),
            0.99,
        ),
        ("f16", to_f16(&bytes).unwrap(), 0.9999),
    ];
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
            let ours = q.embed(&inputs[i * 3072..(i + 1) * 3072]).unwrap();
            tract_cos += cosine(ours, &float_rows[i]) / n as f64;
            ort_cos += cosine(ort.row(i), &float_rows[i]) / n as f64;
        }
        eprintln!("{name} vs float mean cosine: tract {tract_cos:.6}, onnxruntime {ort_cos:.6}");
        assert!(tract_cos >= min_cosine, "tract {name}: {tract_cos}");
        assert!(ort_cos >= min_cosine, "onnxruntime {name}: {ort_cos}");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}
