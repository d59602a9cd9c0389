//! The `eval --report` output: a Markdown report with ROC curves and score histograms as SVG.

use std::path::Path;

use plotters::prelude::*;

use oodmon_calibration::io::write_atomic;
use oodmon_calibration::metrics::{roc_points, OodMetrics};

/// One OOD set's scores and metrics, as the report shows them.
pub struct ReportSet<'a> {
    pub name: &'a str,
    pub scores: &'a [f64],
    pub metrics: OodMetrics,
    pub detection_rate: f64,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn plot_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("plotting failed: {e}"))
}

/// Draws the ROC curves of all sets into an SVG string.
pub fn roc_svg(id: &[f64], sets: &[ReportSet<'_>]) -> std::io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("ROC (positive = OOD)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("false-alarm rate on ID")
            .y_desc("detection rate on OOD")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                &BLACK.mix(0.3),
            ))
            .map_err(plot_err)?;
        for (i, s) in sets.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    roc_points(id, s.scores),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(format!("{} (AUROC {:.3})", s.name, s.metrics.auroc))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Draws overlaid, normalised score histograms of ID and one OOD set, with the threshold.
pub fn histogram_svg(id: &[f64], set: &ReportSet<'_>, threshold: f64) -> std::io::Result<String> {
    let all = id.iter().chain(set.scores).copied();
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let bins = 50usize;
    let width = (hi - lo) / bins as f64;
    let density = |v: &[f64]| {
        let mut h = vec![0f64; bins];
        for &x in v {
            let b = (((x - lo) / width) as usize).min(bins - 1);
            h[b] += 1.0;
        }
        let n = v.len().max(1) as f64;
        h.iter_mut().for_each(|c| *c /= n);
        h
    };
    let (hid, hood) = (density(id), density(set.scores));
    let top = hid.iter().chain(&hood).cloned().fold(0.0, f64::max) * 1.1 + 1e-12;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Scores: ID vs {}", set.name), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("OOD score (higher = more OOD)")
            .y_desc("fraction of samples")
            .draw()
            .map_err(plot_err)?;
        for (h, color, name) in [(&hid, PALETTE[0], "ID test"), (&hood, PALETTE[1], set.name)] {
            chart
                .draw_series(h.iter().enumerate().map(|(b, &v)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, v)], color.mix(0.45).filled())
                }))
                .map_err(plot_err)?
                .label(name.to_string())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                vec![(threshold, 0.0), (threshold, top)],
                BLACK.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label("threshold")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes `report.md`, `roc.svg` and one `hist_<set>.svg` per OOD set into `dir`.
pub fn write_report(
    dir: &Path,
    title: &str,
    id: &[f64],
    id_false_alarm: f64,
    threshold_text: &str,
    threshold: f64,
    sets: &[ReportSet<'_>],
) -> oodmon_calibration::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| oodmon_calibration::Error::io(dir, e))?;
    let save =
        |name: &str, text: &str| write_atomic(&dir.join(name), |w| w.write_all(text.as_bytes()));
    let roc =
        roc_svg(id, sets).map_err(|e| oodmon_calibration::Error::io(dir.join("roc.svg"), e))?;
    save("roc.svg", &roc)?;
    let mut md = format!(
        "# {title}\n\n{} ID test samples; decision rule: {threshold_text}.\nID false-alarm rate at the calibrated rule: **{:.2}%**.\n\n\
         | OOD set | samples | AUROC | AUPR-In | AUPR-Out | FPR@95TPR | detection error | detected at rule |\n|---|---|---|---|---|---|---|---|\n",
        id.len(),
        100.0 * id_false_alarm
    );
    for s in sets {
        let m = &s.metrics;
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            s.name,
            s.scores.len(),
            100.0 * m.auroc,
            100.0 * m.aupr_in,
            100.0 * m.aupr_out,
            100.0 * m.fpr_at_95_tpr,
            100.0 * m.detection_error,
            100.0 * s.detection_rate
        ));
    }
    md.push_str("\nPercentages. AUPR-In takes ID as positive, AUPR-Out OOD; FPR@95TPR is the fraction of OOD accepted when 95% of ID is accepted.\n\n![ROC curves](roc.svg)\n\n");
    for s in sets {
        let file = format!("hist_{}.svg", sanitize(s.name));
        let svg = histogram_svg(id, s, threshold)
            .map_err(|e| oodmon_calibration::Error::io(dir.join(&file), e))?;
        save(&file, &svg)?;
        md.push_str(&format!("![score histogram, {}]({file})\n\n", s.name));
    }
    save("report.md", &md)
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
