//! Weight averaging of runs that differ only in their training seed (a uniform "model
//! soup", Wortsman et al., ICML 2022): fine-tunes that start from the same pretrained
//! weights tend to stay in one basin, and their average is as cheap to run as one of them
//! while it varies less from seed to seed than each does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::error::{io, Result, TrainError};
use crate::train::{differing_settings, RunDir, TrainConfig};

/// What [`average_runs`] wrote.
#[derive(Debug)]
pub struct Averaged {
    pub tensors: usize,
    /// The runs' seeds, in the order given.
    pub seeds: Vec<u64>,
}

/// Averages the weights of `runs` (each finished, the same settings but `seed`, the same
/// held-out split) into a new run in `out`: its configuration is the first run's with the
/// split's seed made explicit and the sources listed in `averaged_from`, its checkpoint
/// marked finished (there is no optimiser state: an average is not trained further).
pub fn average_runs(runs: &[PathBuf], out: &Path) -> Result<Averaged> {
    if runs.len() < 2 {
        return Err(TrainError::Invalid(
            "averaging needs at least two runs".into(),
        ));
    }
    let configs: Vec<TrainConfig> = runs
        .iter()
        .map(|r| RunDir(r.clone()).load_config())
        .collect::<Result<_>>()?;
    let first = &configs[0];
    check_out(runs, out)?;
    for (i, (run, cfg)) in runs.iter().zip(&configs).enumerate() {
        RunDir(run.clone()).require_finished(cfg.epochs)?;
        if let Some(twin) = configs[..i].iter().position(|c| c.seed == cfg.seed) {
            return Err(TrainError::Invalid(format!(
                "{} and {} are both seed {}: an average of one run with itself",
                runs[twin].display(),
                run.display(),
                cfg.seed
            )));
        }
        let differ: Vec<String> = differing_settings(first, cfg)
            .into_iter()
            .filter(|k| k != "seed" && k != "split_seed")
            .collect();
        if !differ.is_empty() {
            return Err(TrainError::Invalid(format!(
                "{} and {} differ in more than their seed ({}): only runs of one recipe \
                 average into a meaningful model",
                runs[0].display(),
                run.display(),
                differ.join(", ")
            )));
        }
        let (a, b) = (split_seed(first), split_seed(cfg));
        if a != b {
            return Err(TrainError::Invalid(format!(
                "{} holds out the split of seed {a}, {} that of seed {b}: each would have \
                 trained on the other's held-out images (train them with the same \
                 --split-seed)",
                runs[0].display(),
                run.display()
            )));
        }
    }
    // (name, running sum in f64 for floats, the stored kind)
    let mut sums: Vec<(String, Tensor, Kind)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let path = RunDir(run.clone()).weights();
        let mut tensors = Tensor::read_safetensors(&path)?;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        if i == 0 {
            sums = tensors
                .into_iter()
                .map(|(name, t)| {
                    let kind = t.kind();
                    let t = if t.is_floating_point() {
                        t.to_kind(Kind::Double)
                    } else {
                        t
                    };
                    (name, t, kind)
                })
                .collect();
            continue;
        }
        let same_names = sums.len() == tensors.len()
            && sums.iter().zip(&tensors).all(|((a, _, _), (b, _))| a == b);
        if !same_names {
            return Err(TrainError::Invalid(format!(
                "{}: its tensors are not those of {}",
                path.display(),
                RunDir(runs[0].clone()).weights().display()
            )));
        }
        for ((name, sum, kind), (_, t)) in sums.iter_mut().zip(&tensors) {
            if t.kind() != *kind {
                return Err(TrainError::Invalid(format!(
                    "{}: {name} is {:?}, not {kind:?}",
                    path.display(),
                    t.kind()
                )));
            }
            if sum.size() != t.size() {
                return Err(TrainError::Invalid(format!(
                    "{}: {name} is {:?}, not {:?}",
                    path.display(),
                    t.size(),
                    sum.size()
                )));
            }
            if t.is_floating_point() {
                *sum = &*sum + t.to_kind(Kind::Double);
            } else if !sum.equal(t) {
                // counters (batch norm's batches seen) are not averaged; they must agree
                return Err(TrainError::Invalid(format!(
                    "{}: {name} differs between the runs and cannot be averaged",
                    path.display()
                )));
            }
        }
    }
    let n = runs.len() as f64;
    let mut averaged: Vec<(String, Tensor)> = Vec::with_capacity(sums.len());
    for (name, t, kind) in sums {
        if !t.is_floating_point() {
            averaged.push((name, t));
            continue;
        }
        if t.isfinite().all().int64_value(&[]) == 0 {
            return Err(TrainError::Invalid(format!(
                "{name}: not finite in a source run (NaN or infinity); nothing averaged"
            )));
        }
        averaged.push((name, (t / n).to_kind(kind)));
    }

    std::fs::create_dir_all(out).map_err(io(out))?;
    let dir = RunDir(out.to_path_buf());
    crate::train::replace_file(&dir.weights(), |tmp| {
        Ok(Tensor::write_safetensors(&averaged, tmp)?)
    })?;
    let mut cfg = first.clone();
    cfg.split_seed = Some(split_seed(first));
    cfg.averaged_from = Some(runs.to_vec());
    crate::train::write_json(&dir.config(), &cfg)?;
    crate::train::write_json(&dir.state(), &Finished { epoch: cfg.epochs })?;
    Ok(Averaged {
        tensors: averaged.len(),
        seeds: configs.iter().map(|c| c.seed).collect(),
    })
}

/// Refuses to write the average over one of its sources, or into a folder that holds
/// something other than an earlier average (a trained run's optimiser state and log would
/// be left beside weights that are no longer theirs).
fn check_out(runs: &[PathBuf], out: &Path) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Some(run) = runs.iter().find(|r| same(r, out)) {
        return Err(TrainError::Invalid(format!(
            "--out {} is one of the runs averaged ({})",
            out.display(),
            run.display()
        )));
    }
    let Ok(mut entries) = std::fs::read_dir(out) else {
        return Ok(()); // not there yet
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let earlier_average = RunDir(out.to_path_buf())
        .load_config()
        .is_ok_and(|c| c.averaged_from.is_some());
    if earlier_average && !RunDir(out.to_path_buf()).optimizer().exists() {
        return Ok(());
    }
    Err(TrainError::Invalid(format!(
        "--out {}: the folder holds something other than an average of runs; give a new \
         or empty folder",
        out.display()
    )))
}

/// The seed of the images a run holds out.
fn split_seed(cfg: &TrainConfig) -> u64 {
    cfg.split_seed.unwrap_or(cfg.seed)
}

/// A checkpoint position at the end of the last epoch.
#[derive(Serialize)]
struct Finished {
    epoch: usize,
}
