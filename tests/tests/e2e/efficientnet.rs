//! EfficientNet-Lite0 in tch against the reference PyTorch port on the same weights: a
//! random checkpoint the test makes (the published 18 MB one is checked by hand, see
//! EVALUATION.md), saved in PyTorch's legacy format like the published one, imported
//! through `oodmon-trainer import-pretrained`'s path into a run and run there.

use oodmon_calibration::npy;
use oodmon_calibration::preprocess::Layout;
use oodmon_trainer::model::Arch;
use oodmon_trainer::pretrained::{import, ImportRequest};
use oodmon_trainer::train::{batch_tensor, RunDir};
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
        // channels-last, as the trainer's own batches (train::batch_tensor)
        let x = batch_tensor(&input, 2, size, size, Layout::Nchw);
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

/// `bench/finetune_torch.py`, the fine-tune in PyTorch for a GPU machine without Rust, must
/// train the network the Rust side exports and on the images the Rust trainer stores: on
/// a run imported from a random checkpoint (CIFAR's 32x32 detail stage), its network's
/// embeddings equal tch's on the same inputs, and its stored images equal the Rust data
/// set's: byte for byte at 96 px (a factor of 3 cannot land a pixel on a half-way value),
/// within one level at 48 px, where exact half-way values occur and the Rust side's own
/// rounding of them depends on its fused multiply-adds.
#[test]
fn the_pytorch_fine_tune_port_sees_the_rust_trainer_s_images_and_network() {
    for size in [96usize, 48] {
        port_matches_rust(size);
    }
}

fn port_matches_rust(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let size_arg = size.to_string();
    run_python(
        "efficientnet_reference.py",
        &[dir.path(), std::path::Path::new(&size_arg)],
    );
    // twelve CIFAR records with smooth and sharp content, so the resize is exercised
    let n = 12usize;
    let file = dir.path().join("batch.bin");
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072usize).map(|p| ((p * (5 + i) + (p / 32) * 17 + i * 31) % 256) as u8));
    }
    std::fs::write(&file, bytes).unwrap();
    let data = format!("cifar10:{}", file.display());
    let run = dir.path().join("run");
    import(&ImportRequest {
        arch: Arch::EfficientnetLite0,
        weights: dir.path().join("model.pth"),
        data: data.clone(),
        input_size: size as u32,
        detail_size: Some(32),
        val_fraction: 0.1,
        seed: 0,
        python: python(),
        out: run.clone(),
    })
    .unwrap();
    let rd = RunDir(run.clone());
    let cfg = rd.load_config().unwrap();
    let out = dir.path().join("port");
    std::fs::create_dir_all(&out).unwrap();
    run_python("finetune_port.py", &[&run, &file, &out]);

    // the images the Rust trainer trains on, as stored
    let spec: oodmon_data::DataSpec = data.parse().unwrap();
    let ds =
        oodmon_data::datasets::load(&spec, oodmon_data::Split::Train, &cfg.preprocessing).unwrap();
    let stored = std::fs::read(out.join("stored.npy")).unwrap();
    let header_len = u16::from_le_bytes([stored[8], stored[9]]) as usize;
    let shape = format!("({n}, {size}, {size}, 3)");
    assert!(std::str::from_utf8(&stored[10..10 + header_len])
        .unwrap()
        .contains(&shape));
    let port = &stored[10 + header_len..];
    assert_eq!(port.len(), ds.pixels.len());
    let differ = port.iter().zip(&ds.pixels).filter(|(a, b)| a != b).count();
    let worst = port
        .iter()
        .zip(&ds.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    eprintln!(
        "fine-tune port at {size} px: {differ} of {} stored bytes differ, by at most {worst}",
        port.len()
    );
    if size.is_multiple_of(32) && !(size / 32).is_multiple_of(2) {
        assert_eq!(
            differ, 0,
            "{differ} stored bytes differ between the port and Rust"
        );
    } else {
        assert!(worst <= 1, "stored bytes differ by {worst}");
    }

    // the network, on the inputs calibration and the edge compute
    let mut inputs = Vec::new();
    oodmon_data::embed::for_each_input(
        &cfg.preprocessing,
        &spec,
        oodmon_data::Split::Test,
        None,
        |t, _| {
            inputs.extend_from_slice(t);
            Ok(())
        },
    )
    .unwrap();
    let x = batch_tensor(&inputs, n, size, size, cfg.preprocessing.layout);
    let net = oodmon_trainer::embedding::load_net(&rd, &cfg.model, tch::Device::Cpu).unwrap();
    let ours = tch::no_grad(|| net.embed(&x, false));
    let want = read_f32_npy(&out.join("embeddings.npy"));
    let (d, scale) = max_abs_diff(&ours, &want);
    eprintln!("fine-tune port at {size} px: max |tch - PyTorch port| {d:.2e} (of {scale:.2})");
    assert!(scale > 0.1, "embeddings too small to compare: {scale}");
    assert!(d <= 1e-4 * scale.max(1.0), "embeddings differ by {d}");
    // the comparison can fail: a network without the run's weights does not match
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let fresh = oodmon_trainer::model::Net::new(&vs.root(), cfg.model.clone());
    let (d_other, _) = max_abs_diff(&tch::no_grad(|| fresh.embed(&x, false)), &want);
    assert!(
        d_other > 1e-3,
        "a fresh network matched the port: {d_other}"
    );
}
