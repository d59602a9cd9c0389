//! The corruption report (`oodmon-calibrate corruption`): what a bundle does when its camera
//! degrades. Every image of each set is run clean and through each camera corruption
//! (`oodmon_calibration::corrupt`, CIFAR-10-C) at each severity, through the bundle's
//! encoder in tract with the edge's preprocessing, and judged twice: by the semantic score
//! alone (the calibrated OOD rule) and by the score together with the camera guards (the
//! calibration's image-quality bounds). A frame "raises an alarm" when either says so; the
//! edge debounces these per-frame alarms (k of n), so the per-frame share is the rate to
//! read.
//!
//! Written: `corruption.md` (tables, goals, what the score misses and the guards catch),
//! `corruption.csv` (one row per set, kind and severity) and `corruption.svg` (heat maps,
//! kind x severity, score alone beside score + guards).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use oodmon_calibration::corrupt::{Corruption, CorruptionKind};
use oodmon_calibration::io::write_atomic;
use oodmon_calibration::metrics::ood_metrics;
use oodmon_calibration::quality::{CameraFault, ImageQuality};
use oodmon_data::{embed_dataset_with_quality, DataSpec, Split};
use oodmon_runtime::Bundle;

use crate::error::{Error, Result};

/// Severities of the corruption benchmark.
pub const SEVERITIES: [u8; 5] = [1, 2, 3, 4, 5];

/// One set's images, clean or corrupted, as judged by the bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub set: String,
    /// `None`: the clean images.
    pub kind: Option<CorruptionKind>,
    pub severity: u8,
    pub frames: usize,
    /// Share flagged OOD by the semantic score.
    pub score_alarm: f64,
    /// Share failing a camera guard.
    pub guard_alarm: f64,
    /// Share raising an alarm (either).
    pub alarm: f64,
    /// AUROC of the semantic score against the clean in-distribution images (the first
    /// set's clean images).
    pub auroc: f64,
    /// The commonest camera fault among the frames that fail a guard.
    pub top_fault: Option<CameraFault>,
}

/// The report's inputs.
#[derive(Debug, Clone)]
pub struct CorruptionJob {
    pub bundle: PathBuf,
    /// `(name, data spec)`; the first is the in-distribution reference (its test split).
    pub sets: Vec<(String, String)>,
    /// At most this many images per set.
    pub limit: Option<usize>,
    pub kinds: Vec<CorruptionKind>,
    pub out: PathBuf,
    /// The command line, recorded in the report.
    pub command: String,
}

/// Runs the report; returns every cell (clean rows first per set).
pub fn corruption_report(job: &CorruptionJob, progress: impl Fn(&str)) -> Result<Vec<Cell>> {
    let bundle = Bundle::load(&job.bundle)
        .map_err(|e| Error::from(e).context(format!("bundle {}", job.bundle.display())))?;
    let spec = bundle.preprocessing().clone();
    let guards = bundle.artifact.image_quality.clone();
    if job.sets.is_empty() {
        return Err(Error::input("no data sets to corrupt"));
    }
    let judge = |data: &DataSpec| -> Result<(Vec<f64>, Vec<bool>, Vec<ImageQuality>)> {
        let (e, q) =
            embed_dataset_with_quality(&bundle.encoder, &spec, data, Split::Test, job.limit)?;
        let scores = bundle.detector.scorer.score_batch(&e.embeddings)?;
        let ood = scores
            .iter()
            .map(|s| bundle.detector.thresholds.is_ood(s))
            .collect();
        Ok((scores.iter().map(|s| s.score).collect(), ood, q))
    };
    let mut cells = Vec::new();
    let mut id_clean: Vec<f64> = Vec::new();
    for (name, spec_text) in &job.sets {
        let inner: DataSpec = spec_text.parse()?;
        let mut runs: Vec<(Option<Corruption>, DataSpec)> = vec![(None, inner.clone())];
        for &kind in &job.kinds {
            for severity in SEVERITIES {
                let c = Corruption::new(kind, severity)?;
                runs.push((
                    Some(c),
                    DataSpec::Corrupt {
                        corruption: c,
                        inner: Box::new(inner.clone()),
                    },
                ));
            }
        }
        for (corruption, data) in runs {
            let (scores, ood, quality) = judge(&data)?;
            if scores.is_empty() {
                return Err(Error::input(format!(
                    "{name}: {spec_text} has no test images"
                )));
            }
            if id_clean.is_empty() {
                id_clean = scores.clone();
            }
            let n = scores.len() as f64;
            let faults: Vec<Option<CameraFault>> = quality
                .iter()
                .map(|q| guards.as_ref().and_then(|g| g.check(q)))
                .collect();
            let mut counts = [0usize; CameraFault::ALL.len()];
            for f in faults.iter().flatten() {
                counts[CameraFault::ALL.iter().position(|x| x == f).unwrap_or(0)] += 1;
            }
            let top = counts
                .iter()
                .enumerate()
                .max_by_key(|(_, &c)| c)
                .filter(|(_, &c)| c > 0)
                .map(|(i, _)| CameraFault::ALL[i]);
            let cell = Cell {
                set: name.clone(),
                kind: corruption.map(|c| c.kind),
                severity: corruption.map_or(0, |c| c.severity),
                frames: scores.len(),
                score_alarm: ood.iter().filter(|&&o| o).count() as f64 / n,
                guard_alarm: faults.iter().filter(|f| f.is_some()).count() as f64 / n,
                alarm: ood
                    .iter()
                    .zip(&faults)
                    .filter(|(&o, f)| o || f.is_some())
                    .count() as f64
                    / n,
                auroc: ood_metrics(&id_clean, &scores).auroc,
                top_fault: top,
            };
            progress(&format!(
                "{name} {}: alarm {:.1}% (score {:.1}%, guards {:.1}%), AUROC {:.1}",
                corruption.map_or("clean".to_string(), |c| c.to_string()),
                100.0 * cell.alarm,
                100.0 * cell.score_alarm,
                100.0 * cell.guard_alarm,
                100.0 * cell.auroc
            ));
            cells.push(cell);
        }
    }
    std::fs::create_dir_all(&job.out).map_err(|e| Error::io(&job.out, e))?;
    let has_guards = guards.is_some();
    write_text(&job.out.join("corruption.csv"), &to_csv(&cells))?;
    write_text(
        &job.out.join("corruption.md"),
        &to_markdown(&cells, &job.kinds, has_guards, &job.command),
    )?;
    write_text(&job.out.join("corruption.svg"), &to_svg(&cells, &job.kinds))?;
    Ok(cells)
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    Ok(write_atomic(path, |w| w.write_all(text.as_bytes()))?)
}

fn kind_name(k: Option<CorruptionKind>) -> &'static str {
    k.map_or("clean", |k| k.name())
}

/// One row per set, kind and severity.
pub fn to_csv(cells: &[Cell]) -> String {
    let mut s = String::from(
        "set,kind,severity,frames,score_alarm,guard_alarm,alarm,auroc_vs_clean_id,top_camera_fault\n",
    );
    for c in cells {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{}",
            c.set,
            kind_name(c.kind),
            c.severity,
            c.frames,
            c.score_alarm,
            c.guard_alarm,
            c.alarm,
            c.auroc,
            c.top_fault.map_or("", CameraFault::name)
        );
    }
    s
}

fn cell<'a>(
    cells: &'a [Cell],
    set: &str,
    kind: Option<CorruptionKind>,
    sev: u8,
) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|c| c.set == set && c.kind == kind && (kind.is_none() || c.severity == sev))
}

fn sets_of(cells: &[Cell]) -> Vec<String> {
    let mut sets: Vec<String> = Vec::new();
    for c in cells {
        if !sets.contains(&c.set) {
            sets.push(c.set.clone());
        }
    }
    sets
}

/// The report: per set, alarm rates and AUROC by kind and severity, the goals and what the
/// guards add.
pub fn to_markdown(
    cells: &[Cell],
    kinds: &[CorruptionKind],
    has_guards: bool,
    command: &str,
) -> String {
    let mut s = String::new();
    let pct = |v: f64| format!("{:.0}", 100.0 * v);
    let _ = writeln!(s, "Reproduce: `{command}`\n");
    if !has_guards {
        let _ = writeln!(
            s,
            "The bundle has no camera guards: the alarm is the semantic score's alone.\n"
        );
    }
    for set in sets_of(cells) {
        let Some(clean) = cell(cells, &set, None, 0) else {
            continue;
        };
        let _ = writeln!(
            s,
            "### {set} ({} frames)\n\nClean: alarm {}% (score {}%, guards {}%). Each cell: per-frame \
             alarm % with score + guards / with the score alone, then the score's AUROC against \
             clean in-distribution images.\n",
            clean.frames,
            pct(clean.alarm),
            pct(clean.score_alarm),
            pct(clean.guard_alarm)
        );
        let _ = writeln!(s, "| kind | s1 | s2 | s3 | s4 | s5 | guard at s5 |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for &k in kinds {
            let mut row = format!("| {} |", k.name());
            for sev in SEVERITIES {
                match cell(cells, &set, Some(k), sev) {
                    Some(c) => {
                        let _ = write!(
                            row,
                            " {} / {} ({:.0}) |",
                            pct(c.alarm),
                            pct(c.score_alarm),
                            100.0 * c.auroc
                        );
                    }
                    None => row.push_str(" - |"),
                }
            }
            let top = cell(cells, &set, Some(k), 5)
                .and_then(|c| c.top_fault)
                .map_or("-", CameraFault::name);
            let _ = writeln!(s, "{row} {top} |");
        }
        let _ = writeln!(s);
        // goals
        let sev5: Vec<&Cell> = kinds
            .iter()
            .filter_map(|&k| cell(cells, &set, Some(k), 5))
            .collect();
        let below: Vec<String> = sev5
            .iter()
            .filter(|c| c.alarm < 0.9)
            .map(|c| format!("{} {}%", kind_name(c.kind), pct(c.alarm)))
            .collect();
        let sev1_limit = (2.0 * clean.alarm).max(1.0 / clean.frames as f64);
        let over: Vec<String> = kinds
            .iter()
            .filter_map(|&k| cell(cells, &set, Some(k), 1))
            .filter(|c| c.alarm > sev1_limit)
            .map(|c| format!("{} {}%", kind_name(c.kind), pct(c.alarm)))
            .collect();
        let _ = writeln!(
            s,
            "- Severity 5 raises an alarm on at least 90% of frames: {}.",
            if below.is_empty() {
                "every kind".to_string()
            } else {
                format!("not for {}", below.join(", "))
            }
        );
        let _ = writeln!(
            s,
            "- Severity 1 stays within 2x the clean alarm rate ({}%): {}.",
            pct(sev1_limit),
            if over.is_empty() {
                "every kind".to_string()
            } else {
                format!("not for {}", over.join(", "))
            }
        );
        let missed: Vec<String> = sev5
            .iter()
            .filter(|c| c.score_alarm < 0.5)
            .map(|c| {
                format!(
                    "{} ({}% by the score, {}% with the guards)",
                    kind_name(c.kind),
                    pct(c.score_alarm),
                    pct(c.alarm)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "- The score alone flags under half of the frames at severity 5 for: {}.\n",
            if missed.is_empty() {
                "none".to_string()
            } else {
                missed.join(", ")
            }
        );
    }
    s
}

/// Heat maps, one row of two panels per set: alarm share by kind (rows) and severity
/// (columns), the score alone on the left, score + guards on the right.
pub fn to_svg(cells: &[Cell], kinds: &[CorruptionKind]) -> String {
    let sets = sets_of(cells);
    let (cw, ch, label_w, top, panel_gap, set_gap) = (38.0, 18.0, 110.0, 40.0, 30.0, 50.0);
    let panel_w = label_w + cw * SEVERITIES.len() as f64;
    let panel_h = ch * kinds.len() as f64;
    let width = 2.0 * panel_w + panel_gap + 20.0;
    let height = top + sets.len() as f64 * (panel_h + set_gap) + 10.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"10\" y=\"16\" font-size=\"13\">Per-frame alarm share \
         under camera corruptions (kind x severity 1-5)</text>\n"
    );
    for (si, set) in sets.iter().enumerate() {
        let y0 = top + si as f64 * (panel_h + set_gap);
        for (pi, (title, guarded)) in [("score alone", false), ("score + camera guards", true)]
            .into_iter()
            .enumerate()
        {
            let x0 = 10.0 + pi as f64 * (panel_w + panel_gap);
            let _ = writeln!(
                s,
                "<text x=\"{x0}\" y=\"{}\" font-weight=\"bold\">{set}: {title}</text>",
                y0 + 10.0
            );
            for (ki, &k) in kinds.iter().enumerate() {
                let y = y0 + 16.0 + ki as f64 * ch;
                let _ = writeln!(s, "<text x=\"{x0}\" y=\"{}\">{}</text>", y + 13.0, k.name());
                for (vi, sev) in SEVERITIES.into_iter().enumerate() {
                    let x = x0 + label_w + vi as f64 * cw;
                    let v = cell(cells, set, Some(k), sev).map(|c| {
                        if guarded {
                            c.alarm
                        } else {
                            c.score_alarm
                        }
                    });
                    let (fill, text) = match v {
                        Some(v) => {
                            // white (0) to red (1)
                            let g = (255.0 * (1.0 - v)).round() as u8;
                            (format!("rgb(255,{g},{g})"), format!("{:.0}", 100.0 * v))
                        }
                        None => ("#eee".to_string(), "-".to_string()),
                    };
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{fill}\" \
                         stroke=\"#999\" stroke-width=\"0.5\"/><text x=\"{}\" y=\"{}\" \
                         text-anchor=\"middle\">{text}</text>",
                        x + cw / 2.0,
                        y + 13.0
                    );
                }
            }
            for (vi, sev) in SEVERITIES.into_iter().enumerate() {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">s{sev}</text>",
                    x0 + label_w + vi as f64 * cw + cw / 2.0,
                    y0 + 16.0 + panel_h + 13.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(set: &str, kind: Option<CorruptionKind>, sev: u8, score: f64, alarm: f64) -> Cell {
        Cell {
            set: set.into(),
            kind,
            severity: sev,
            frames: 100,
            score_alarm: score,
            guard_alarm: alarm - score,
            alarm,
            auroc: 0.5 + score / 2.0,
            top_fault: (alarm > score).then_some(CameraFault::Dark),
        }
    }

    #[test]
    fn the_report_states_goals_and_what_the_guards_catch() {
        let k = CorruptionKind::Darken;
        let mut cells = vec![c("id", None, 0, 0.05, 0.06)];
        for sev in SEVERITIES {
            cells.push(c(
                "id",
                Some(k),
                sev,
                0.1,
                if sev == 5 { 0.95 } else { 0.08 },
            ));
        }
        let md = to_markdown(&cells, &[k], true, "cmd");
        assert!(md.contains("| darken | 8 / 10 (55) |"), "{md}");
        assert!(md.contains("Severity 5 raises an alarm on at least 90% of frames: every kind"));
        assert!(md.contains("Severity 1 stays within 2x the clean alarm rate (12%): every kind"));
        assert!(
            md.contains("darken (10% by the score, 95% with the guards)"),
            "{md}"
        );
        assert!(md.contains("camera_dark"));
        let csv = to_csv(&cells);
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.contains("id,darken,5,100,0.1000,0.8500,0.9500,0.5500,camera_dark"));
        let svg = to_svg(&cells, &[k]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(
            svg.contains(">95<") && svg.contains("rgb(255,13,13)"),
            "{svg}"
        );
        // a kind that stays quiet at severity 5 is named
        cells[5].alarm = 0.4;
        let md = to_markdown(&cells, &[k], true, "cmd");
        assert!(md.contains("not for darken 40%"), "{md}");
    }
}
