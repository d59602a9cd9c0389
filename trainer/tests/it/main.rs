//! The trainer end to end on a tiny generated dataset: every loss learns, interrupted runs
//! resume, bad settings are errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use oodmon_calibration::PreprocessSpec;
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
        preprocessing: PreprocessSpec::cifar(16),
        max_steps_per_epoch: None,
    }
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

#[test]
fn every_loss_lowers_the_loss_on_a_tiny_dataset() {
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

/// Stops the run after a number of steps, as Ctrl-C does.
struct StopAfter {
    steps: usize,
    flag: Arc<AtomicBool>,
}

impl Progress for StopAfter {
    fn step(&mut self, _: f64, _: Option<f64>, _: f64) {
        self.steps = self.steps.saturating_sub(1);
        if self.steps == 0 {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn epoch_end(&mut self, _: &EpochLog) {}
}

#[test]
fn an_interrupted_run_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path(), 16);
    let out = dir.path().join("run");
    let cfg = config(data, LossKind::Ce, 3);
    let flag = no_stop();
    let mut stopper = StopAfter {
        steps: 2,
        flag: flag.clone(),
    };
    // 48 training images, batch 32: 1 step per epoch, so the stop lands after epoch 2
    let logs = train::train(&cfg, &out, Device::Cpu, false, flag, &mut stopper).unwrap();
    assert_eq!(logs.len(), 2);
    let state = std::fs::read_to_string(out.join("state.json")).unwrap();
    assert!(state.contains("\"epoch\": 1"), "{state}");
    let logs = train::train(&cfg, &out, Device::Cpu, true, no_stop(), &mut ()).unwrap();
    assert_eq!(logs.iter().map(|l| l.epoch).collect::<Vec<_>>(), vec![1, 2]);
    let other = TrainConfig {
        loss: LossKind::Supcon,
        ..config(cfg.data.clone(), LossKind::Supcon, 3)
    };
    let err = train::train(&other, &out, Device::Cpu, true, no_stop(), &mut ()).unwrap_err();
    assert!(err.to_string().contains("another model or loss"), "{err}");
}

#[test]
fn bad_settings_and_missing_data_are_errors() {
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
    assert!(train::parse_device("cuda:99").is_err());
    assert!(train::parse_device("gpu").is_err());
}
