//! EfficientNet-Lite0 in tch against the reference PyTorch port on the same weights: a
//! random checkpoint the test makes (the published 18 MB one is checked by hand, see
//! EVALUATION.md), saved in PyTorch's legacy format like the published one, imported
//! through `oodmon-trainer import-pretrained`'s path into a run and run there.

use oodmon_calibration::npy;
use oodmon_trainer::model::Arch;
use oodmon_trainer::pretrained::{import, ImportRequest};
use oodmon_trainer::train::RunDir;
use tch::Tensor;

use crate::util::{python, run_python};

fn max_abs_diff(a: &Tensor, b: &[f32]) -> (f32, f32) {
    let a: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let scale = b.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    (diff, scale)
}

#[test]
fn efficientnet_lite0_matches_the_reference_port_after_import() {
    for size in [96usize, 224] {
        let dir = tempfile::tempdir().unwrap();
        run_python(
            "efficientnet_reference.py",
            &[dir.path(), std::path::Path::new(&size.to_string())],
        );
        let run = dir.path().join("run");
        let imported = import(&ImportRequest {
            arch: Arch::EfficientnetLite0,
            weights: dir.path().join("model.pth"),
            data: "noise:uniform:20:1".into(),
            input_size: size as u32,
            detail_size: None,
            val_fraction: 0.1,
            seed: 0,
            python: python(),
            out: run.clone(),
        })
        .unwrap();
        assert_eq!(imported.classes, 1000);
        // the run as every later command loads it
        let rd = RunDir(run);
        let cfg = rd.load_config().unwrap();
        assert_eq!(cfg.preprocessing.width, size as u32);
        let net = oodmon_trainer::embedding::load_net(&rd, &cfg.model, tch::Device::Cpu).unwrap();
        let input = read_f32_npy(&dir.path().join("input.npy"));
        let s = size as i64;
        let x = Tensor::from_slice(&input).view([2, 3, s, s]);
        let (features, logits) = tch::no_grad(|| {
            let f = net.embed(&x, false);
            let l = net.head(&f);
            (f, l)
        });
        let want_f = npy::read_embeddings(dir.path().join("features.npy")).unwrap();
        let want_l = npy::read_embeddings(dir.path().join("logits.npy")).unwrap();
        let (df, sf) = max_abs_diff(&features, want_f.as_slice());
        let (dl, sl) = max_abs_diff(&logits, want_l.as_slice());
        eprintln!(
            "efficientnet-lite0 at {size}: max |tch - reference| features {df:.2e} (of {sf:.2}), logits {dl:.2e} (of {sl:.2})"
        );
        assert!(df <= 1e-4 * sf.max(1.0), "features differ by {df}");
        assert!(dl <= 1e-4 * sl.max(1.0), "logits differ by {dl}");
        // the comparison can fail: the same network without the imported weights does not
        // match (the Rust and Python sides compute separately)
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let fresh = oodmon_trainer::model::Net::new(&vs.root(), cfg.model.clone());
        let other = tch::no_grad(|| fresh.embed(&x, false));
        let (d_other, _) = max_abs_diff(&other, want_f.as_slice());
        assert!(
            d_other > 1e-3,
            "a fresh network matched the reference: {d_other}"
        );
    }
}

/// The float32 values of a C-order `.npy` of any shape.
fn read_f32_npy(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
