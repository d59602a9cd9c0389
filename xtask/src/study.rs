//! `cargo xtask study`: the paper's comparison on real data, end to end through the
//! product's own binaries. For each loss: train the edge encoder on CIFAR-10, export it
//! (float and int8), embed ID and OOD sets through both, run the grid of clusterings,
//! metrics and threshold rules; then the report, and figures and a bundle for the
//! candidate default. Every step is cached in `--out`, so a stopped study resumes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{
    cargo_with_torch, json_number, output_text, python_env, root, run, step, target_dir, Result,
};

/// The study's settings and where its tools and data are.
struct Study {
    out: PathBuf,
    epochs: usize,
    losses: Vec<String>,
    python: PathBuf,
    trainer: PathBuf,
    calibrate: PathBuf,
    /// `cifar10:DIR` of the ID binary batches.
    id: String,
    /// (name, data spec) of the OOD sets.
    oods: Vec<(&'static str, String)>,
}

pub fn study(args: &[String]) -> Result {
    let s = setup(args)?;
    let total = s.losses.len() * 4;
    let mut done = 0;
    let mut progress = |what: &str| {
        done += 1;
        step(&format!("[{done}/{total}] {what}"));
    };
    for loss in &s.losses {
        let run_dir = s.out.join(format!("runs/edge-{loss}"));
        progress(&format!("train edge encoder, {loss}, {} epochs", s.epochs));
        train(&s, loss, &run_dir)?;
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
    report(&s)?;
    default_figures(&s)?;
    eprintln!(
        "\nstudy results under {} (report.md; the default's bundle in default/bundle)",
        s.out.display()
    );
    Ok(())
}

/// Parses the options, builds the tools and makes the CIFAR-10 binary batches.
fn setup(args: &[String]) -> Result<Study> {
    let mut data: Option<PathBuf> = None;
    let mut out = target_dir().join("study");
    let mut epochs = 15usize;
    let mut losses = "ce,supcon,simclr".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(value()?)),
            "--out" => out = PathBuf::from(value()?),
            "--epochs" => epochs = value()?.parse().map_err(|e| format!("--epochs: {e}"))?,
            "--losses" => losses = value()?,
            other => return Err(format!("study: unknown option {other}")),
        }
    }
    let data = data.ok_or("study needs --data DIR (e.g. ../shared/data)")?;
    let data = data
        .canonicalize()
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let python = python_env()?;
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    step("building oodmon-trainer and oodmon-calibrate (release)");
    run(cargo_with_torch(&python).args([
        "build",
        "--release",
        "-p",
        "oodmon-trainer",
        "-p",
        "oodmon-calibrate",
    ]))?;
    let bins = out.join("cifar10-bins");
    if !bins.join("test_batch.bin").exists() {
        step("CIFAR-10 binary batches from the JPEG archive (checked against BINS.sha256)");
        run(Command::new(&python)
            .arg(data.join("cifar10/to_bins.py"))
            .arg(&bins))?;
    }
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
    Ok(Study {
        id: format!("cifar10:{}", bins.display()),
        out,
        epochs,
        losses: losses.split(',').map(|l| l.trim().to_string()).collect(),
        python,
        trainer: target_dir().join("release/oodmon-trainer"),
        calibrate: target_dir().join("release/oodmon-calibrate"),
        oods,
    })
}

/// Trains (or resumes, or reuses a finished) edge encoder with `loss`.
fn train(s: &Study, loss: &str, run_dir: &Path) -> Result {
    let finished = std::fs::read_to_string(run_dir.join("state.json"))
        .ok()
        .and_then(|t| json_number(&t.replace(' ', ""), "epoch"))
        .is_some_and(|e| e as usize >= s.epochs);
    if finished {
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
        .arg(run_dir);
    if run_dir.join("config.json").exists() {
        cmd.arg("--resume");
    }
    run(&mut cmd)
}

/// The run's int8 encoder (QDQ, 512 calibration images), exported once.
fn export_int8(s: &Study, run_dir: &Path) -> Result<PathBuf> {
    let int8 = run_dir.join("encoder-int8.onnx");
    if !int8.exists() {
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
/// when given) into `dir`; each file is written once, under a temporary name first.
fn embed_sets(s: &Study, run_dir: &Path, model: Option<&Path>, dir: &Path) -> Result {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut sets: Vec<(&str, &str, &str, bool)> = vec![
        ("train", &s.id, "train", true),
        ("calib", &s.id, "val", false),
        ("test", &s.id, "test", true),
    ];
    for (name, spec) in &s.oods {
        sets.push((name, spec, "test", false));
    }
    for (name, spec, split, labels) in sets {
        let file = dir.join(format!("{name}.npy"));
        if file.exists() {
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

/// The grid of clusterings, metrics and threshold rules on one variant's embeddings.
fn grid(s: &Study, loss: &str, variant: &str) -> Result {
    let dir = s.out.join(format!("embeddings/{loss}-{variant}"));
    let grid = s.out.join(format!("grid/{loss}-{variant}"));
    if grid.join("grid.csv").exists() {
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
    cmd.args([
        "--clusters",
        "class,kmeans:10,kmeans:50,kmeans-per-class:3",
        "--metrics",
        "euclidean,cosine,mahalanobis,mahalanobis++,relative-mahalanobis,knn:50",
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

/// Figures (ROC, score histograms) and a bundle for the candidate default the report
/// named (`default.args`), from its int8 encoder's own tract embeddings.
fn default_figures(s: &Study) -> Result {
    let Ok(text) = std::fs::read_to_string(s.out.join("default.args")) else {
        return Ok(());
    };
    let mut lines = text.lines();
    let loss = lines.next().unwrap_or_default().to_string();
    let rule: Vec<&str> = lines.collect();
    step(&format!(
        "figures for the candidate default ({loss}, int8: {})",
        rule.join(" ")
    ));
    let emb = s.out.join(format!("embeddings/{loss}-int8"));
    let dir = s.out.join("default");
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
    // the calibration is fitted on the int8 encoder's own tract embeddings of the run's
    // training and held-out splits, and written with that encoder as a bundle
    let encoder = s.out.join(format!("runs/edge-{loss}/encoder-int8.onnx"));
    let bins = s.out.join("cifar10-bins");
    run(Command::new(&s.calibrate)
        .arg("fit")
        .arg("--train")
        .arg(emb.join("train.npy"))
        .arg("--labels")
        .arg(emb.join("train_labels.npy"))
        .arg("--calib")
        .arg(emb.join("calib.npy"))
        .args(&rule)
        .arg("--class-names")
        .arg(bins.join("batches.meta.txt"))
        .arg("--encoder")
        .arg(&encoder)
        .arg("--out")
        .arg(dir.join("calib.json")))?;
    std::fs::copy(&encoder, bundle.join("encoder.onnx")).map_err(|e| e.to_string())?;
    std::fs::copy(dir.join("calib.json"), bundle.join("calib.json")).map_err(|e| e.to_string())?;
    let mut eval = Command::new(&s.calibrate);
    eval.arg("eval")
        .arg("--calib")
        .arg(dir.join("calib.json"))
        .arg("--id")
        .arg(emb.join("test.npy"));
    ood_args(s, &mut eval, &emb);
    run(eval.arg("--report").arg(dir.join("report")))
}
