//! The corruption generator against CIFAR-10-C's published formulas (NumPy, SciPy, Pillow
//! in `tests/py/corrupt_reference.py`): the deterministic kinds pixel by pixel, JPEG against
//! Pillow's encoder, the random ones (noise, fog's plasma, the occlusion patch) by their
//! statistics.

use oodmon_calibration::corrupt::{motion_angle, Corruption, CorruptionKind};

use crate::util::run_python;

/// A smooth scene with edges and colour, away from the extremes in most places.
fn scene(w: usize, h: usize) -> Vec<u8> {
    let mut img = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let ring = (((fx - 0.5).powi(2) + (fy - 0.4).powi(2)).sqrt() * 12.0).sin();
            let square = (fx > 0.6 && fy > 0.55) as u8 as f32;
            img.push((40.0 + 150.0 * fx + 25.0 * ring) as u8);
            img.push((50.0 + 120.0 * fy + 60.0 * square) as u8);
            img.push((180.0 - 100.0 * fx * fy + 20.0 * ring) as u8);
        }
    }
    img
}

/// Mean and largest difference allowed between our JPEG round trip and Pillow's (measured
/// 2.1-4.1 and 11-25 levels: two encoders, two decoders, both 4:2:0 with libjpeg's tables).
const JPEG_MEAN_LIMIT: f64 = 5.0;
const JPEG_MAX_LIMIT: f64 = 32.0;

#[test]
fn corruptions_match_the_published_formulas() {
    for (w, h) in [(32, 32), (64, 48)] {
        let dir = tempfile::tempdir().unwrap();
        let img = scene(w, h);
        std::fs::write(dir.path().join("input.rgb"), &img).unwrap();
        let seed = 11;
        std::fs::write(
            dir.path().join("motion_angle.txt"),
            motion_angle(seed).to_string(),
        )
        .unwrap();
        let kinds = CorruptionKind::ALL;
        for kind in kinds {
            for severity in 1..=5 {
                let c = Corruption::new(kind, severity).unwrap();
                let out = c.apply(&img, w, h, seed).unwrap();
                std::fs::write(dir.path().join(format!("{kind}-{severity}.rgb")), out).unwrap();
            }
        }
        let report = run_python(
            "corrupt_reference.py",
            &[
                dir.path(),
                std::path::Path::new(&w.to_string()),
                std::path::Path::new(&h.to_string()),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        let cases = v.as_object().unwrap();
        assert_eq!(cases.len(), kinds.len() * 5, "{report}");
        for (case, r) in cases {
            let kind = case.rsplit_once('-').unwrap().0;
            if let Some(mean) = r.get("mean").and_then(|m| m.as_f64()) {
                let max = r["max"].as_f64().unwrap();
                // float against float, rounding to bytes on both sides; Pillow's box filter
                // rounds to bytes between its two passes and ours does not; JPEG: two
                // encoders and decoders (the `image` crate's, libjpeg's)
                let (mean_limit, max_limit) = match kind {
                    "pixelate" => (1.0, 3.0),
                    "jpeg" => (JPEG_MEAN_LIMIT, JPEG_MAX_LIMIT),
                    _ => (0.6, 2.0),
                };
                assert!(
                    mean <= mean_limit && max <= max_limit,
                    "{w}x{h} {case}: mean {mean:.3}, max {max:.1} levels from the reference"
                );
                if kind == "jpeg" {
                    let (loss, reference) = (
                        r["loss"].as_f64().unwrap(),
                        r["reference_loss"].as_f64().unwrap(),
                    );
                    assert!(
                        (loss - reference).abs() <= 0.25 * reference + 0.2,
                        "{w}x{h} {case}: loses {loss:.2} levels, libjpeg {reference:.2}"
                    );
                }
            } else if let Some(low) = r.get("low").and_then(|m| m.as_f64()) {
                let (m, high) = (r["measured"].as_f64().unwrap(), r["high"].as_f64().unwrap());
                assert!(
                    (low..=high).contains(&m),
                    "{w}x{h} {case}: {m:.4} outside the reference's [{low:.4}, {high:.4}]"
                );
                if let Some(spread) = r.get("channel_spread").and_then(|m| m.as_f64()) {
                    let limit = r["spread_limit"].as_f64().unwrap();
                    assert!(
                        spread <= limit,
                        "{w}x{h} {case}: the fog differs by {spread:.4} between channels"
                    );
                }
            } else {
                let (m, e) = (
                    r["measured"].as_f64().unwrap(),
                    r["expected"].as_f64().unwrap(),
                );
                assert!(
                    (m - e).abs() <= 0.25 * e + 0.005,
                    "{w}x{h} {case}: {m:.4} against {e:.4}"
                );
            }
        }
    }
}
