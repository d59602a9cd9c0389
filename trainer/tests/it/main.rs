//! The trainer end to end on a tiny generated dataset: every loss learns, interrupted runs
//! resume, bad settings are errors.
// tests and benches fail loudly on any broken assumption
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use oodmon_calibration::PreprocessSpec;
use oodmon_trainer::average;
use oodmon_trainer::loss::LossKind;
use oodmon_trainer::model::{Arch, Head, ModelConfig};
use oodmon_trainer::train::{self, EpochLog, Progress, RunDir, TrainConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Device;

/// 4 classes of 32x32 images (CIFAR record layout): a class colour and a stripe direction,
/// with noise, so that there is something to learn but not instantly.
fn tiny_dataset(dir: &std::path::Path, per_class: usize) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let colours = [
        [200u8, 60, 60],
        [60, 200, 60],
        [60, 60, 200],
        [180, 180, 60],
    ];
    let mut bytes = Vec::new();
    for i in 0..per_class * 4 {
        let class = i % 4;
        bytes.push(class as u8);
        for &base in &colours[class] {
            for y in 0..32 {
                for x in 0..32 {
                    let stripe = if class % 2 == 0 {
                        (x / 4) % 2
                    } else {
                        (y / 4) % 2
                    };
                    let v =
                        base as f32 * (0.6 + 0.4 * stripe as f32) + rng.random_range(-40.0..40.0);
                    bytes.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
    }
    let path = dir.join("tiny.bin");
    std::fs::write(&path, bytes).unwrap();
    format!("cifar10:{}", path.display())
}

fn config(data: String, loss: LossKind, epochs: usize) -> TrainConfig {
    TrainConfig {
        data,
        model: ModelConfig {
            arch: Arch::Edge,
            width: 0.25,
            embed_dim: 16,
            head: match loss {
                LossKind::Ce => Head::Classifier { classes: 0 },
                _ => Head::Projection { dim: 16 },
            },
        },
        loss,
        epochs,
        batch: 32,
        lr: 0.05,
        weight_decay: 5e-4,
        momentum: 0.9,
        warmup_epochs: 1,
        temperature: 0.5,
        val_fraction: 0.25,
        seed: 1,
        split_seed: None,
        preprocessing: PreprocessSpec::cifar(16),
        max_steps_per_epoch: None,
        pretrained: None,
        backbone_lr_scale: 1.0,
        freeze_stages: 0,
        classes: None,
        averaged_from: None,
    }
}

/// libtorch's random generator is process-global and the test harness runs tests on
/// several threads: tests that seed it and build models take this lock, so each sees the
/// initialisation its seed implies.
static TORCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[test]
fn every_loss_lowers_the_loss_on_a_tiny_dataset() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 48);
    for loss in [LossKind::Ce, LossKind::Supcon, LossKind::Simclr] {
        let out = dir.path().join(format!("{loss:?}"));
        let logs = train::train(
            &config(data.clone(), loss, 6),
            &out,
            Device::Cpu,
            false,
            no_stop(),
            &mut (),
        )
        .unwrap();
        assert_eq!(logs.len(), 6);
        let (first, last) = (logs[0].loss, logs[5].loss);
        eprintln!(
            "{loss:?}: loss {first:.4} -> {last:.4}, validation {:?}",
            logs[5].val_accuracy
        );
        assert!(
            last < first * 0.95,
            "{loss:?}: loss did not fall ({first} -> {last})"
        );
        assert!(logs[5].val_accuracy.is_some());
        let run = RunDir(out);
        assert!(run.weights().exists() && run.state().exists());
        assert_eq!(
            std::fs::read_to_string(run.log()).unwrap().lines().count(),
            6
        );
        assert_eq!(run.load_config().unwrap().loss, loss);
    }
}

/// Records every step's loss and, like Ctrl-C, raises the stop flag after `stop_after` steps.
struct Recorder {
    losses: Vec<f64>,
    stop_after: Option<usize>,
    flag: Arc<AtomicBool>,
}

impl Progress for Recorder {
    fn step(&mut self, loss: f64, _: Option<f64>, _: f64) {
        self.losses.push(loss);
        if Some(self.losses.len()) == self.stop_after {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn epoch_end(&mut self, _: &EpochLog) {}
}

fn recorder(stop_after: Option<usize>) -> Recorder {
    Recorder {
        losses: Vec::new(),
        stop_after,
        flag: no_stop(),
    }
}

#[test]
fn resuming_reproduces_the_uninterrupted_run_step_for_step() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    // 128 images, 96 for training, batch 32: 3 steps per epoch
    let data = tiny_dataset(dir.path(), 32);
    for loss in [LossKind::Ce, LossKind::Simclr] {
        let cfg = config(data.clone(), loss, 3);
        let mut straight = recorder(None);
        let flag = straight.flag.clone();
        train::train(
            &cfg,
            &dir.path().join("a"),
            Device::Cpu,
            false,
            flag,
            &mut straight,
        )
        .unwrap();
        assert_eq!(straight.losses.len(), 9);

        // interrupted mid-epoch (after 4 steps: epoch 1, step 1), then resumed
        let out = dir.path().join("b");
        let mut first = recorder(Some(4));
        let flag = first.flag.clone();
        train::train(&cfg, &out, Device::Cpu, false, flag, &mut first).unwrap();
        assert_eq!(first.losses.len(), 4);
        let state = std::fs::read_to_string(out.join("state.json")).unwrap();
        assert!(
            state.contains("\"epoch\": 1") && state.contains("\"step\": 1"),
            "{state}"
        );
        let mut rest = recorder(None);
        let flag = rest.flag.clone();
        train::train(&cfg, &out, Device::Cpu, true, flag, &mut rest).unwrap();
        let resumed: Vec<f64> = first.losses.iter().chain(&rest.losses).copied().collect();
        assert_eq!(resumed.len(), 9);
        for (i, (a, b)) in straight.losses.iter().zip(&resumed).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs(),
                "{loss:?} step {i}: {a} uninterrupted vs {b} resumed"
            );
        }
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        std::fs::remove_dir_all(&out).unwrap();
    }
    // a run cannot be resumed with another loss
    let out = dir.path().join("c");
    train::train(
        &config(data.clone(), LossKind::Ce, 1),
        &out,
        Device::Cpu,
        false,
        no_stop(),
        &mut (),
    )
    .unwrap();
    let err = train::train(
        &config(data, LossKind::Supcon, 2),
        &out,
        Device::Cpu,
        true,
        no_stop(),
        &mut (),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("other settings (epochs, loss, model)"),
        "{err}"
    );
    // nor with another seed: the held-out split and the batches would change mid-run
    let mut reseeded = config(data_of(&out), LossKind::Ce, 1);
    reseeded.seed = 2;
    let err = train::train(&reseeded, &out, Device::Cpu, true, no_stop(), &mut ()).unwrap_err();
    assert!(
        err.to_string()
            .contains("other settings (seed, split_seed)"),
        "{err}"
    );
}

/// The data setting a run in `dir` was trained on.
fn data_of(dir: &std::path::Path) -> String {
    RunDir(dir.to_path_buf()).load_config().unwrap().data
}

#[test]
fn a_split_seed_holds_out_the_same_images_whatever_the_training_seed() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let held_out = |seed: u64, split_seed: Option<u64>| {
        let mut cfg = config(data.clone(), LossKind::Ce, 1);
        cfg.seed = seed;
        cfg.split_seed = split_seed;
        let (train, val) = train::splits(&cfg).unwrap();
        assert_eq!(train.len() + val.len(), 64);
        (val.pixels, val.labels)
    };
    assert_eq!(held_out(1, Some(7)), held_out(2, Some(7)));
    assert_eq!(held_out(1, None), held_out(3, Some(1)));
    assert_ne!(held_out(1, None), held_out(2, None));
}

#[test]
fn bad_settings_and_missing_data_are_errors() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("cifar10:{}", dir.path().join("none.bin").display());
    let err = train::train(
        &config(missing, LossKind::Ce, 1),
        &dir.path().join("r"),
        Device::Cpu,
        false,
        no_stop(),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("none.bin"), "{err}");
    let data = tiny_dataset(dir.path(), 4);
    let mut cfg = config(data, LossKind::Ce, 1);
    cfg.lr = -1.0;
    assert!(train::train(
        &cfg,
        &dir.path().join("r"),
        Device::Cpu,
        false,
        no_stop(),
        &mut ()
    )
    .is_err());
    // listed twice, beyond CIFAR-10's classes, and a class the file has no images of
    for bad in [vec![1, 1], vec![0, 12], vec![0, 7]] {
        let mut cfg = config(tiny_dataset(dir.path(), 4), LossKind::Ce, 1);
        cfg.classes = Some(bad.clone());
        let err = train::train(
            &cfg,
            &dir.path().join("c"),
            Device::Cpu,
            false,
            no_stop(),
            &mut (),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
    assert!(train::parse_device("cuda:99").is_err());
    assert!(train::parse_device("gpu").is_err());
}

#[test]
fn the_edge_encoder_stays_well_under_a_million_parameters() {
    let _torch = torch_lock();
    for (width, limit) in [(1.0, 400_000), (0.5, 150_000)] {
        let cfg = ModelConfig {
            arch: Arch::Edge,
            width,
            embed_dim: 128,
            head: Head::Classifier { classes: 10 },
        };
        let (vs, net) = train::build(&cfg, Device::Cpu);
        let n = oodmon_trainer::model::parameter_count(&vs, "encoder");
        assert!(n > limit / 4 && n < limit, "width {width}: {n} parameters");
        let x = tch::Tensor::zeros([2, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
        assert_eq!(net.embed(&x, false).size(), vec![2, 128]);
    }
}

/// The largest difference between tch's embedding (eval mode) and the exported encoder's
/// in a tract session, on a random input of `shape` from `seed`, and the embedding's norm.
fn tract_vs_tch(
    net: &oodmon_trainer::model::Net,
    session: &mut oodmon_runtime::Session,
    shape: [i64; 4],
    seed: i64,
) -> (f32, f32) {
    tch::manual_seed(seed);
    let x = tch::Tensor::randn(shape, (tch::Kind::Float, Device::Cpu));
    let want: Vec<f32> = Vec::try_from(net.embed(&x, false).flatten(0, -1)).unwrap();
    let input: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
    let got = session.embed(&input).unwrap();
    max_error_and_norm(&want, got)
}

/// Largest absolute difference of `got` from `want`, and the norm of `want`.
fn max_error_and_norm(want: &[f32], got: &[f32]) -> (f32, f32) {
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    let err = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    (err, norm)
}

/// tract's output for the exported float ONNX equals tch's forward pass (eval mode).
#[test]
fn exported_onnx_in_tract_matches_the_tch_forward_pass() {
    let _torch = torch_lock();
    use oodmon_runtime::Encoder;
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let out = dir.path().join("run");
    // the edge encoder with a linear embedding, with its pooled features (embed_dim 0),
    // and ResNet-18
    for (arch, embed_dim) in [(Arch::Edge, 16), (Arch::Edge, 0), (Arch::Resnet18, 16)] {
        let mut cfg = config(data.clone(), LossKind::Ce, 1);
        cfg.model.arch = arch;
        cfg.model.embed_dim = embed_dim;
        // a trained step or two makes the batch-norm statistics non-trivial
        train::train(&cfg, &out, Device::Cpu, false, no_stop(), &mut ()).unwrap();
        let run = RunDir(out.clone());
        let saved = run.load_config().unwrap();
        let (mut vs, net) = train::build(&saved.model, Device::Cpu);
        vs.load(run.weights()).unwrap();
        for dynamic in [false, true] {
            let bytes =
                oodmon_trainer::export::export_onnx(&net, &saved.preprocessing, "{}", dynamic)
                    .unwrap();
            let enc = Encoder::from_bytes(&bytes, std::path::Path::new("test.onnx")).unwrap();
            assert_eq!(enc.input_size(), (16, 16));
            assert_eq!(enc.dim(), saved.model.embedding_dim());
            if (arch, embed_dim) == (Arch::Edge, 0) {
                assert_eq!(enc.dim(), 32, "width 0.25: 128 x 0.25 pooled channels");
            }
            assert_eq!(enc.preprocessing(), Some(&saved.preprocessing));
            let mut session = enc.session().unwrap();
            for seed in 0..3 {
                let (err, norm) = tract_vs_tch(&net, &mut session, [1, 3, 16, 16], seed);
                assert!(
                    err <= 1e-4 * norm,
                    "{arch:?} dynamic={dynamic}: max error {err} vs norm {norm}"
                );
            }
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// A two-class edge encoder at a quarter width, untrained: enough for the export's checks.
fn tiny_edge_classifier() -> (tch::nn::VarStore, oodmon_trainer::model::Net) {
    train::build(
        &ModelConfig {
            arch: Arch::Edge,
            width: 0.25,
            embed_dim: 8,
            head: Head::Classifier { classes: 2 },
        },
        Device::Cpu,
    )
}

#[test]
fn corrupt_onnx_is_an_error_naming_the_file() {
    let _torch = torch_lock();
    use oodmon_runtime::Encoder;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.onnx");
    std::fs::write(&p, b"\x08\x01garbage that is not protobuf").unwrap();
    let err = Encoder::load(&p).unwrap_err().to_string();
    assert!(err.contains("broken.onnx"), "{err}");
    let (_vs, net) = tiny_edge_classifier();
    let bytes =
        oodmon_trainer::export::export_onnx(&net, &PreprocessSpec::cifar(16), "{}", false).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = Encoder::load(&p).unwrap_err().to_string();
    assert!(err.contains("broken.onnx"), "{err}");
}

/// The graph's input is planar: an interleaved spec is refused, not exported to read its
/// pixels in the wrong order.
#[test]
fn the_export_refuses_an_interleaved_spec() {
    let _torch = torch_lock();
    let (_vs, net) = tiny_edge_classifier();
    assert!(
        oodmon_trainer::export::export_onnx(&net, &PreprocessSpec::cifar(16), "{}", false).is_ok()
    );
    let mut interleaved = PreprocessSpec::cifar(16);
    interleaved.layout = oodmon_calibration::preprocess::Layout::Nhwc;
    let err = oodmon_trainer::export::export_onnx(&net, &interleaved, "{}", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NCHW"), "{err}");
}

/// The trainer's embedding path (tch) and calibration's (tract, as fit-model and the edge
/// run it) read the same images of any size through the one shared preprocessing and agree.
#[test]
fn trainer_and_calibration_entry_points_embed_images_alike() {
    let _torch = torch_lock();
    use oodmon_data::datasets::{DataSpec, Split};
    use oodmon_runtime::Encoder;
    let dir = tempfile::tempdir().unwrap();
    // an image folder with odd sizes, so resizing and cropping are exercised
    for (class, (w, h)) in [("a", (40u32, 30u32)), ("b", (23, 57))] {
        let d = dir.path().join("imgs").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..3u32 {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + k * 30) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
            });
            img.save(d.join(format!("{k}.png"))).unwrap();
        }
    }
    let data = DataSpec::Folder(dir.path().join("imgs"));
    tch::manual_seed(5);
    let cfg = ModelConfig {
        arch: Arch::Edge,
        width: 0.25,
        embed_dim: 8,
        head: Head::Classifier { classes: 2 },
    };
    let (_vs, net) = train::build(&cfg, Device::Cpu);
    let spec = PreprocessSpec::cifar(24);
    let (ours, labels, names) =
        train::embed_images(&net, &data, Split::Train, &spec, Device::Cpu, 4, None).unwrap();
    assert_eq!(labels, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(names, vec!["a", "b"]);
    let bytes = oodmon_trainer::export::export_onnx(&net, &spec, "{}", false).unwrap();
    let enc = Encoder::from_bytes(&bytes, std::path::Path::new("e.onnx")).unwrap();
    let theirs = oodmon_data::embed::embed_dataset(&enc, &spec, &data, Split::Train, None).unwrap();
    assert_eq!(theirs.labels, labels);
    for (i, (a, b)) in ours
        .chunks(8)
        .zip(theirs.embeddings.iter_rows())
        .enumerate()
    {
        let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        let err = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            err <= 1e-4 * norm.max(1e-6),
            "image {i}: {err} vs norm {norm}"
        );
    }
}

/// `oodmon-trainer fit --bundle --int8`: export, quantize and calibrate through tract in one
/// step, producing a bundle that loads.
#[test]
fn fit_bundle_writes_a_loadable_int8_bundle() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let run = dir.path().join("run");
    train::train(
        &config(data, LossKind::Ce, 1),
        &run,
        Device::Cpu,
        false,
        no_stop(),
        &mut (),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oodmon-trainer"))
        .args(["fit", "--run"])
        .arg(&run)
        .args([
            "--bundle",
            "--int8",
            "--calib-samples",
            "8",
            "--metric",
            "euclidean",
            "--out",
        ])
        .arg(dir.path().join("bundle"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = oodmon_runtime::Bundle::load(dir.path().join("bundle")).unwrap();
    assert_eq!(bundle.encoder.dim(), 16);
    assert_eq!(bundle.preprocessing(), &PreprocessSpec::cifar(16));
    let onnx = std::fs::read(dir.path().join("bundle/encoder.onnx")).unwrap();
    assert!(String::from_utf8_lossy(&onnx).contains("QuantizeLinear"));
}

/// `oodmon-trainer embed --model`: the run's own splits embedded through an ONNX export in
/// tract give the same rows, labels and (for the float export) values as the libtorch path.
#[test]
fn embed_through_an_onnx_export_keeps_the_runs_splits() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let run = dir.path().join("run");
    train::train(
        &config(data.clone(), LossKind::Ce, 1),
        &run,
        Device::Cpu,
        false,
        no_stop(),
        &mut (),
    )
    .unwrap();
    let trainer = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oodmon-trainer"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    trainer(&["export", "--run", "run", "--out", "enc.onnx"]);
    for (split, file) in [("val", "v"), ("train", "t")] {
        trainer(&[
            "embed",
            "--run",
            "run",
            "--data",
            &data,
            "--split",
            split,
            "--device",
            "cpu",
            "--out",
            &format!("{file}-torch.npy"),
            "--labels",
            &format!("{file}-torch-l.npy"),
        ]);
        trainer(&[
            "embed",
            "--run",
            "run",
            "--data",
            &data,
            "--split",
            split,
            "--model",
            "enc.onnx",
            "--out",
            &format!("{file}-tract.npy"),
            "--labels",
            &format!("{file}-tract-l.npy"),
        ]);
        let read = |f: &str| oodmon_calibration::npy::read_embeddings(dir.path().join(f)).unwrap();
        let labels = |f: &str| oodmon_calibration::npy::read_labels(dir.path().join(f)).unwrap();
        let (a, b) = (
            read(&format!("{file}-torch.npy")),
            read(&format!("{file}-tract.npy")),
        );
        assert_eq!(a.rows(), b.rows(), "{split}");
        assert!(a.rows() > 0);
        assert_eq!(
            labels(&format!("{file}-torch-l.npy")),
            labels(&format!("{file}-tract-l.npy"))
        );
        for (x, y) in a.iter_rows().zip(b.iter_rows()) {
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let err = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(err <= 1e-4 * norm.max(1e-6), "{split}: {err} vs {norm}");
        }
    }
}

/// The open-set protocol trains on the known classes only: the run's splits, its
/// classifier and its embeddings' labels all see just those, relabelled in the given order.
#[test]
fn a_run_on_a_class_subset_sees_only_those_classes() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let mut cfg = config(data.clone(), LossKind::Ce, 1);
    cfg.classes = Some(vec![3, 1]);
    let (train_ds, val_ds) = train::splits(&cfg).unwrap();
    assert_eq!(train_ds.len() + val_ds.len(), 32);
    assert_eq!(train_ds.classes(), 2);
    // class 3's images are all kept, as class 0
    let full = oodmon_data::datasets::load(
        &data.parse().unwrap(),
        oodmon_data::datasets::Split::Train,
        &cfg.preprocessing,
    )
    .unwrap();
    let class3: Vec<usize> = (0..full.len()).filter(|&i| full.labels[i] == 3).collect();
    let all = train_ds.labels.iter().chain(&val_ds.labels);
    assert!(all.clone().all(|&l| l == 0 || l == 1));
    assert_eq!(all.filter(|&&l| l == 0).count(), class3.len());
    let run = dir.path().join("run");
    train::train(&cfg, &run, Device::Cpu, false, no_stop(), &mut ()).unwrap();
    let saved = RunDir(run.clone()).load_config().unwrap();
    assert_eq!(saved.classes, Some(vec![3, 1]));
    assert_eq!(saved.model.head, Head::Classifier { classes: 2 });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oodmon-trainer"))
        .args(["embed", "--run", "run", "--data", &data, "--split", "val"])
        .args(["--device", "cpu", "--out", "v.npy", "--labels", "l.npy"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels = oodmon_calibration::npy::read_labels(dir.path().join("l.npy")).unwrap();
    assert_eq!(labels.len(), val_ds.len());
    assert!(labels.iter().all(|&l| l == 0 || l == 1));
}

#[test]
fn a_checkpoint_for_another_network_is_refused_by_name_and_shape() {
    use oodmon_trainer::model::{Arch, Head, ModelConfig, Net};
    use oodmon_trainer::pretrained::{load_into, read_checkpoint};
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        arch: Arch::EfficientnetLite0,
        width: 1.0,
        embed_dim: 1280,
        head: Head::Classifier { classes: 10 },
    };
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), cfg);
    // all of the network's variables, written and read back: accepted
    let mut named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let good = dir.path().join("good.npz");
    tch::Tensor::write_npz(&named, &good).unwrap();
    let read = read_checkpoint(std::path::Path::new("python3"), &good).unwrap();
    assert_eq!(load_into(&vs, &read, &good).unwrap(), named.len());
    // a name the network does not have, and one it lacks: refused, both named
    named.retain(|(n, _)| n != "encoder._conv_head.weight");
    named.push((
        "encoder._conv_tail.weight".into(),
        tch::Tensor::zeros([1], (tch::Kind::Float, Device::Cpu)),
    ));
    let bad = dir.path().join("bad.npz");
    tch::Tensor::write_npz(&named, &bad).unwrap();
    let read = read_checkpoint(std::path::Path::new("python3"), &bad).unwrap();
    let err = load_into(&vs, &read, &bad).unwrap_err().to_string();
    assert!(
        err.contains("encoder._conv_head.weight") && err.contains("encoder._conv_tail.weight"),
        "{err}"
    );
    // a tensor of the wrong shape: refused with both shapes
    let shapes = vec![(
        "encoder._conv_stem.weight".to_string(),
        tch::Tensor::zeros([32, 3, 5, 5], (tch::Kind::Float, Device::Cpu)),
    )];
    let wrong = dir.path().join("wrong.npz");
    tch::Tensor::write_npz(&shapes, &wrong).unwrap();
    let read = read_checkpoint(std::path::Path::new("python3"), &wrong).unwrap();
    let err = load_into(&vs, &read, &wrong).unwrap_err().to_string();
    assert!(
        err.contains("[32, 3, 5, 5]") && err.contains("[32, 3, 3, 3]"),
        "{err}"
    );
    // not a checkpoint at all
    let junk = dir.path().join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    assert!(read_checkpoint(std::path::Path::new("python3"), &junk).is_err());
}

/// EfficientNet-Lite0 exported as ONNX (depthwise convolutions, asymmetric "same" padding,
/// ReLU6 as Clip, residual adds) gives tch's embedding in tract, on a non-square input
/// whose sizes go odd on the way down.
#[test]
fn exported_efficientnet_lite0_in_tract_matches_the_tch_forward_pass() {
    let _torch = torch_lock();
    use oodmon_runtime::Encoder;
    let cfg = ModelConfig {
        arch: Arch::EfficientnetLite0,
        width: 1.0,
        embed_dim: 1280,
        head: Head::Classifier { classes: 10 },
    };
    tch::manual_seed(5);
    let (vs, net) = train::build(&cfg, Device::Cpu);
    // batch norm with statistics that are not 0 and 1
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
    let mut spec = PreprocessSpec::imagenet(64);
    spec.height = 72;
    let bytes = oodmon_trainer::export::export_onnx(&net, &spec, "{}", false).unwrap();
    let enc = Encoder::from_bytes(&bytes, std::path::Path::new("lite0.onnx")).unwrap();
    assert_eq!((enc.input_size(), enc.dim()), ((64, 72), 1280));
    let mut session = enc.session().unwrap();
    for seed in 0..2 {
        let (err, norm) = tract_vs_tch(&net, &mut session, [1, 3, 72, 64], seed);
        eprintln!("lite0 export: max |tract - tch| {err:.2e} (norm {norm:.2})");
        assert!(err <= 1e-4 * norm, "max error {err} vs norm {norm}");
    }

    // the truncated backbone: the last block's 320 pooled features, no head convolution
    use oodmon_trainer::efficientnet::LiteTap;
    let bytes =
        oodmon_trainer::export::export_onnx_at(&net, &spec, "{}", false, LiteTap::Blocks).unwrap();
    let enc = Encoder::from_bytes(&bytes, std::path::Path::new("lite0-blocks.onnx")).unwrap();
    assert_eq!((enc.input_size(), enc.dim()), ((64, 72), 320));
    let mut session = enc.session().unwrap();
    let oodmon_trainer::model::Encoder::Lite(lite) = &net.encoder else {
        panic!("not a Lite encoder")
    };
    tch::manual_seed(3);
    let x = tch::Tensor::randn([1, 3, 72, 64], (tch::Kind::Float, Device::Cpu));
    let want: Vec<f32> =
        Vec::try_from(lite.embed_t(&x, false, LiteTap::Blocks).flatten(0, -1)).unwrap();
    let got = session
        .embed(&Vec::<f32>::try_from(x.flatten(0, -1)).unwrap())
        .unwrap();
    let (err, norm) = max_error_and_norm(&want, got);
    eprintln!("lite0 truncated export: max |tract - tch| {err:.2e} (norm {norm:.2})");
    assert!(err <= 1e-4 * norm, "max error {err} vs norm {norm}");
    // the edge encoder has one embedding
    let edge = ModelConfig {
        arch: Arch::Edge,
        width: 0.5,
        embed_dim: 16,
        head: Head::Classifier { classes: 4 },
    };
    let (_vs, edge_net) = train::build(&edge, Device::Cpu);
    let refused = oodmon_trainer::export::export_onnx_at(
        &edge_net,
        &PreprocessSpec::cifar(16),
        "{}",
        false,
        LiteTap::Blocks,
    );
    assert!(refused.is_err());
}

/// Fine-tuning from an imported backbone: the encoder starts from the import, the frozen
/// stages (weights and batch-norm statistics) do not move, the rest does, and the
/// backbone's first step is exactly its learning-rate scale times the unscaled one.
#[test]
fn fine_tuning_starts_from_the_import_keeps_frozen_stages_and_scales_the_backbone_lr() {
    use oodmon_trainer::model::Net;
    use oodmon_trainer::pretrained::{import, ImportRequest};
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    // a made-up "ImageNet" checkpoint with a 7-class classifier, imported as a run
    let lite = ModelConfig {
        arch: Arch::EfficientnetLite0,
        width: 1.0,
        embed_dim: 1280,
        head: Head::Classifier { classes: 7 },
    };
    tch::manual_seed(11);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = Net::new(&vs.root(), lite.clone());
    let named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    let npz = dir.path().join("imagenet.npz");
    tch::Tensor::write_npz(&named, &npz).unwrap();
    let imported = dir.path().join("imported");
    import(&ImportRequest {
        arch: Arch::EfficientnetLite0,
        weights: npz,
        data: data.clone(),
        input_size: 32,
        detail_size: None,
        val_fraction: 0.25,
        seed: 1,
        python: "python3".into(),
        out: imported.clone(),
    })
    .unwrap();
    let original: std::collections::HashMap<String, tch::Tensor> = named.into_iter().collect();

    let fine_tune = |name: &str, scale: f64, freeze: usize, steps: usize| {
        let mut cfg = config(data.clone(), LossKind::Ce, 1);
        cfg.model = ModelConfig {
            head: Head::Classifier { classes: 0 },
            ..lite.clone()
        };
        cfg.preprocessing = PreprocessSpec::imagenet(32);
        cfg.batch = 8;
        cfg.lr = 0.05;
        cfg.warmup_epochs = 0;
        cfg.max_steps_per_epoch = Some(steps);
        cfg.pretrained = Some(imported.clone());
        cfg.backbone_lr_scale = scale;
        cfg.freeze_stages = freeze;
        let out = dir.path().join(name);
        train::train(&cfg, &out, Device::Cpu, false, no_stop(), &mut ()).unwrap();
        tch::Tensor::read_safetensors(RunDir(out).weights())
            .unwrap()
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>()
    };
    let moved = |w: &std::collections::HashMap<String, tch::Tensor>, name: &str| {
        (&w[name] - &original[name]).abs().max().double_value(&[])
    };

    // frozen stem and stages 0-1 (blocks 0-2) stay bit for bit, statistics included
    let frozen = fine_tune("frozen", 0.1, 2, 3);
    for name in [
        "encoder._conv_stem.weight",
        "encoder._bn0.running_mean",
        "encoder._blocks.0._depthwise_conv.weight",
        "encoder._blocks.2._project_conv.weight",
        "encoder._blocks.2._bn2.running_var",
    ] {
        assert_eq!(moved(&frozen, name), 0.0, "{name} moved");
    }
    for name in [
        "encoder._blocks.3._depthwise_conv.weight",
        "encoder._blocks.3._bn1.running_mean",
        "encoder._conv_head.weight",
    ] {
        assert!(moved(&frozen, name) > 0.0, "{name} did not train");
    }

    // one step: the backbone moves by exactly its scale times the unscaled step; the
    // head (new, seeded alike) by the same step in both
    let scaled = fine_tune("scaled", 0.1, 0, 1);
    let full = fine_tune("full", 1.0, 0, 1);
    for name in [
        "encoder._conv_stem.weight",
        "encoder._blocks.7._expand_conv.weight",
        "encoder._conv_head.weight",
    ] {
        let a = (&scaled[name] - &original[name]).norm().double_value(&[]);
        let b = (&full[name] - &original[name]).norm().double_value(&[]);
        assert!(b > 0.0, "{name} did not move");
        assert!((a / b - 0.1).abs() < 1e-3, "{name}: step ratio {}", a / b);
    }
    let head = (&scaled["head.0.weight"] - &full["head.0.weight"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(head < 1e-5, "head steps differ by {head}");

    // fine-tuning options on a network they do not apply to are refused
    let mut cfg = config(data.clone(), LossKind::Ce, 1);
    cfg.freeze_stages = 1;
    assert!(train::train(
        &cfg,
        &dir.path().join("bad"),
        Device::Cpu,
        false,
        no_stop(),
        &mut ()
    )
    .is_err());
    let mut cfg = config(data, LossKind::Ce, 1);
    cfg.model.arch = Arch::EfficientnetLite0;
    cfg.pretrained = Some(dir.path().join("no-such-run"));
    let err = train::train(
        &cfg,
        &dir.path().join("bad2"),
        Device::Cpu,
        false,
        no_stop(),
        &mut (),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no-such-run"), "{err}");
}

#[test]
fn averaging_runs_of_one_recipe_gives_their_mean_weights_and_refuses_the_rest() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    // 48 training images in batches of 16: 3 steps an epoch
    let recipe = |seed: u64, split_seed: Option<u64>, loss: LossKind| {
        let mut cfg = config(data.clone(), loss, 1);
        cfg.batch = 16;
        cfg.seed = seed;
        cfg.split_seed = split_seed;
        cfg
    };
    let trained = |name: &str, seed: u64, split_seed: Option<u64>, loss: LossKind| {
        let cfg = recipe(seed, split_seed, loss);
        let out = dir.path().join(name);
        train::train(&cfg, &out, Device::Cpu, false, no_stop(), &mut ()).unwrap();
        out
    };
    let a = trained("a", 1, Some(0), LossKind::Ce);
    let b = trained("b", 2, Some(0), LossKind::Ce);
    let out = dir.path().join("avg");
    let done = average::average_runs(&[a.clone(), b.clone()], &out).unwrap();
    assert_eq!(done.seeds, vec![1, 2]);

    let read = |run: &std::path::Path| {
        let mut t = tch::Tensor::read_safetensors(RunDir(run.to_path_buf()).weights()).unwrap();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t
    };
    let (ta, tb, tm) = (read(&a), read(&b), read(&out));
    assert_eq!(tm.len(), ta.len());
    assert_eq!(done.tensors, ta.len());
    let mut differed = 0;
    for (((name, x), (_, y)), (_, m)) in ta.iter().zip(&tb).zip(&tm) {
        assert_eq!(m.kind(), x.kind(), "{name}");
        if x.is_floating_point() {
            let want = (x + y) / 2.0;
            let err = (m - &want).abs().max().double_value(&[]);
            assert!(err <= 1e-6, "{name}: {err}");
            differed += usize::from(!x.equal(y));
        } else {
            assert!(m.equal(x), "{name}");
        }
    }
    assert!(differed > 0, "the two seeds trained to the same weights");
    let run = RunDir(out.clone());
    let cfg = run.load_config().unwrap();
    assert_eq!(cfg.seed, 1);
    assert_eq!(cfg.split_seed, Some(0));
    assert_eq!(cfg.averaged_from, Some(vec![a.clone(), b.clone()]));
    assert_eq!(run.epochs_done().unwrap(), cfg.epochs);
    // the average loads and embeds like a trained run
    let (mut vs, _net) = train::build(&cfg.model, Device::Cpu);
    vs.load(run.weights()).unwrap();

    // an average is not trained further
    let err = train::train(&cfg, &out, Device::Cpu, true, no_stop(), &mut ()).unwrap_err();
    assert!(err.to_string().contains("not trained further"), "{err}");

    // other held-out images, another loss, an unfinished run, one run twice, a single run
    let x = dir.path().join("x");
    let c = trained("c", 3, None, LossKind::Ce);
    let err = average::average_runs(&[a.clone(), c], &x).unwrap_err();
    assert!(err.to_string().contains("split of seed 0"), "{err}");
    let d = trained("d", 4, Some(0), LossKind::Supcon);
    let err = average::average_runs(&[a.clone(), d], &x).unwrap_err();
    assert!(
        err.to_string()
            .contains("more than their seed (loss, model)"),
        "{err}"
    );
    let e = dir.path().join("e");
    let mut stopped = recorder(Some(1));
    let flag = stopped.flag.clone();
    let unfinished = recipe(5, Some(0), LossKind::Ce);
    train::train(&unfinished, &e, Device::Cpu, false, flag, &mut stopped).unwrap();
    let err = RunDir(e.clone()).require_finished(1).unwrap_err();
    assert!(
        err.to_string().contains("0 of its 1 epochs trained"),
        "{err}"
    );
    let err = average::average_runs(&[a.clone(), e], &x).unwrap_err();
    assert!(
        err.to_string().contains("0 of its 1 epochs trained"),
        "{err}"
    );
    let err = average::average_runs(&[a.clone(), a.clone()], &x).unwrap_err();
    assert!(err.to_string().contains("both seed 1"), "{err}");
    assert!(average::average_runs(std::slice::from_ref(&a), &x).is_err());

    // never over a source or a trained run; an earlier average is replaced
    let err = average::average_runs(&[a.clone(), b.clone()], &a).unwrap_err();
    assert!(
        err.to_string().contains("one of the runs averaged"),
        "{err}"
    );
    let f = trained("f", 6, Some(0), LossKind::Ce);
    let err = average::average_runs(&[a.clone(), b.clone()], &f).unwrap_err();
    assert!(
        err.to_string().contains("something other than an average"),
        "{err}"
    );
    average::average_runs(&[a.clone(), b.clone()], &out).unwrap();

    // a source whose weights hold NaN or another shape: nothing written
    let poisoned = |name: &str, edit: &dyn Fn(&str, tch::Tensor) -> tch::Tensor| {
        let dst = dir.path().join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["config.json", "state.json"] {
            std::fs::copy(b.join(f), dst.join(f)).unwrap();
        }
        let edited: Vec<(String, tch::Tensor)> = read(&b)
            .into_iter()
            .map(|(n, t)| {
                let t = edit(&n, t);
                (n, t)
            })
            .collect();
        tch::Tensor::write_safetensors(&edited, RunDir(dst.clone()).weights()).unwrap();
        dst
    };
    let first_float = ta
        .iter()
        .find(|(_, t)| t.is_floating_point())
        .unwrap()
        .0
        .clone();
    let nan = poisoned("nan", &|n, t| {
        if n == first_float {
            t.full_like(f64::NAN)
        } else {
            t
        }
    });
    let err = average::average_runs(&[a.clone(), nan], &x).unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
    let reshaped = poisoned("reshaped", &|n, t| {
        if n == first_float {
            t.reshape([-1, 1])
        } else {
            t
        }
    });
    let err = average::average_runs(&[a.clone(), reshaped], &x).unwrap_err();
    assert!(
        err.to_string().contains(&format!("{first_float} is")),
        "{err}"
    );
    assert!(!dir.path().join("x").exists());
}
