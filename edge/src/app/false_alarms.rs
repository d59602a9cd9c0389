//! `oodmon-edge false-alarms`: false alarms per hour on an in-distribution stream, with
//! per-frame decisions run through the real alarm state machine, either simulated
//! (independent errors at a per-frame false-positive rate) or replayed from the records of
//! a run on in-distribution data.

use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::alarm::{alarm_rate, AlarmConfig};
use crate::error::{EdgeError, ParseError, Result};

/// The study's settings.
#[derive(Debug, Clone)]
pub struct FalseAlarmStudy {
    /// Per-frame false-positive rates to simulate (ignored when replaying).
    pub rates: Vec<f64>,
    /// (k, n): raise after k OOD frames among the last n.
    pub k_of_n: Vec<(usize, usize)>,
    pub clear_m: usize,
    pub min_hold_ms: u64,
    pub fps: f64,
    pub hours: f64,
    pub seed: u64,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct FalseAlarmRow {
    pub rate: f64,
    /// The rate was measured from replayed records, not simulated.
    pub measured: bool,
    pub k: usize,
    pub n: usize,
    pub raises_per_hour: f64,
    pub ood_time_share: f64,
}

/// `k/n` pairs, comma-separated (e.g. `1/1,2/3,3/5`).
pub fn parse_k_of_n(text: &str) -> Result<Vec<(usize, usize)>, ParseError> {
    text.split(',')
        .map(|p| {
            let (k, n) = p.split_once('/').ok_or("expected k/n")?;
            let k = k.trim().parse().map_err(|_| format!("k {k:?}"))?;
            let n = n.trim().parse().map_err(|_| format!("n {n:?}"))?;
            Ok((k, n))
        })
        .collect::<Result<_, ParseError>>()
        .map_err(|e| format!("--k-of-n {text:?}: {e}").into())
}

/// Rates, comma-separated (e.g. `0.01,0.05`).
pub fn parse_rates(text: &str) -> Result<Vec<f64>, ParseError> {
    text.split(',')
        .map(|f| {
            f.trim()
                .parse::<f64>()
                .map_err(|e| ParseError(format!("--fpr {f:?}: {e}")))
        })
        .collect()
}

/// The `ood` decisions of a run's JSON-lines records, in order.
pub fn read_decisions(path: &Path) -> Result<Vec<bool>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EdgeError::invalid("--records", format!("{}: {e}", path.display())))?;
    let v = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let r: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                EdgeError::invalid(
                    "--records",
                    format!("{} line {}: {e}", path.display(), i + 1),
                )
            })?;
            r["ood"].as_bool().ok_or_else(|| {
                EdgeError::invalid(
                    "--records",
                    format!("{} line {}: a record without `ood`", path.display(), i + 1),
                )
            })
        })
        .collect::<Result<Vec<bool>>>()?;
    if v.is_empty() {
        return Err(EdgeError::invalid(
            "--records",
            format!("{}: no records", path.display()),
        ));
    }
    Ok(v)
}

/// Runs every rate (or the replayed decisions, looped to `hours`) through every k-of-n.
pub fn study(s: &FalseAlarmStudy, replay: Option<&[bool]>) -> Result<Vec<FalseAlarmRow>> {
    let frames = (s.hours * 3600.0 * s.fps) as usize;
    let rates: Vec<f64> = match replay {
        Some(v) => vec![v.iter().filter(|&&o| o).count() as f64 / v.len().max(1) as f64],
        None => s.rates.clone(),
    };
    let mut rows = Vec::new();
    for &rate in &rates {
        for &(k, n) in &s.k_of_n {
            let cfg = AlarmConfig {
                raise_k: k,
                window_n: n,
                clear_m: s.clear_m,
                min_hold_ms: s.min_hold_ms,
                ..Default::default()
            };
            cfg.validate()?;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s.seed);
            let r = match replay {
                Some(v) => alarm_rate(&cfg, v.iter().copied().cycle().take(frames), s.fps),
                None => alarm_rate(&cfg, (0..frames).map(|_| rng.random::<f64>() < rate), s.fps),
            };
            rows.push(FalseAlarmRow {
                rate,
                measured: replay.is_some(),
                k,
                n,
                raises_per_hour: r.raises_per_hour,
                ood_time_share: r.ood_time_share,
            });
        }
    }
    Ok(rows)
}

/// The rows as a Markdown table.
pub fn to_markdown(rows: &[FalseAlarmRow]) -> String {
    let mut out = String::from(
        "| per-frame false-positive rate | k of n | false alarms per hour | share of time in OOD |\n|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {:.2}%{} | {} of {} | {:.1} | {:.3}% |\n",
            100.0 * r.rate,
            if r.measured { " (measured)" } else { "" },
            r.k,
            r.n,
            r.raises_per_hour,
            100.0 * r.ood_time_share
        ));
    }
    out
}
