//! The exported ONNX encoder passes the ONNX checker and gives the same embeddings in
//! onnxruntime as in tract.

use oodmon_calibration::onnx::TractEncoder;
use oodmon_calibration::{npy, Embeddings, PreprocessSpec};
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::train;
use tch::Device;

use crate::util::run_python;

#[test]
fn onnxruntime_and_the_checker_agree_with_tract_on_the_float_export() {
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
    let enc = TractEncoder::load(&model).unwrap();
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
    let mut ours = vec![0f32; enc.dim()];
    for i in 0..n {
        enc.embed(&inputs[i * 3072..(i + 1) * 3072], &mut ours)
            .unwrap();
        let err = ours
            .iter()
            .zip(ort.row(i))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-4,
            "row {i}: tract and onnxruntime differ by {err}"
        );
    }
}
