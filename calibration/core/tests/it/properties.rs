//! Properties of the core that must hold for every input, not just chosen examples.

use base64::Engine;
use oodmon_calibration::metrics::{auroc, average_precision, fpr_at_tpr};
use oodmon_calibration::preprocess::{
    PixelFormat, PreprocessSpec, Preprocessor, ResizeFilter, ResizePolicy,
};
use oodmon_calibration::{
    calibrate, npy, CalibrationArtifact, ClusterSpec, FitConfig, Metric, Provenance, Scorer,
    ThresholdMode, Thresholds,
};
use proptest::prelude::*;

use crate::util::{blobs, noise};

fn scores() -> impl Strategy<Value = Vec<f64>> {
    // small integers make ties common, which is where AUROC implementations go wrong
    prop::collection::vec((0i32..12).prop_map(|v| v as f64 * 0.5), 1..40)
}

proptest! {
    #[test]
    fn auroc_is_invariant_to_monotone_transforms(id in scores(), ood in scores()) {
        let a = auroc(&id, &ood);
        let f = |v: &Vec<f64>| v.iter().map(|x| (x * 0.7).exp() * 3.0 - 1.0).collect::<Vec<_>>();
        prop_assert!((auroc(&f(&id), &f(&ood)) - a).abs() < 1e-12);
        let cube = |v: &Vec<f64>| v.iter().map(|x| (x - 2.0).powi(3)).collect::<Vec<_>>();
        prop_assert!((auroc(&cube(&id), &cube(&ood)) - a).abs() < 1e-12);
    }

    #[test]
    fn swapping_id_and_ood_gives_one_minus_auroc(id in scores(), ood in scores()) {
        prop_assert!((auroc(&ood, &id) - (1.0 - auroc(&id, &ood))).abs() < 1e-12);
    }

    #[test]
    fn auroc_equals_the_pair_count(id in scores(), ood in scores()) {
        let mut wins = 0.0;
        for &o in &ood {
            for &i in &id {
                wins += if o > i { 1.0 } else if o == i { 0.5 } else { 0.0 };
            }
        }
        let want = wins / (id.len() * ood.len()) as f64;
        prop_assert!((auroc(&id, &ood) - want).abs() < 1e-12);
    }

    #[test]
    fn average_precision_and_fpr_are_in_range(id in scores(), ood in scores()) {
        let ap = average_precision(&ood, &id);
        prop_assert!(ap > 0.0 && ap <= 1.0 + 1e-12);
        let fpr = fpr_at_tpr(&id, &ood, 0.95);
        prop_assert!((0.0..=1.0).contains(&fpr));
        // at the FPR@95 threshold at least 95% of ID is accepted: so FPR is monotone in TPR
        prop_assert!(fpr_at_tpr(&id, &ood, 0.5) <= fpr);
    }

    #[test]
    fn global_threshold_accepts_at_least_the_target(cal in prop::collection::vec(-50.0f64..50.0, 1..200), tpr in 0.5f64..1.0) {
        let s: Vec<_> = cal.iter().map(|&score| oodmon_calibration::Score { score, nearest: 0 }).collect();
        let t = Thresholds::fit(ThresholdMode::Global { target_tpr: tpr }, &s, 1).unwrap();
        let accepted = s.iter().filter(|x| !t.is_ood(x)).count() as f64 / s.len() as f64;
        prop_assert!(accepted >= tpr - 1e-9);
        // and it is the smallest such threshold: one step lower accepts too few
        let lower = cal.iter().filter(|&&v| v < t.global).count() as f64 / s.len() as f64;
        prop_assert!(lower < tpr + 1e-9);
    }

    #[test]
    fn npy_reader_never_panics(flips in prop::collection::vec((0usize..400, any::<u8>()), 0..6), cut in 0usize..400) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let (e, _) = blobs(5, 6, 2, 9);
        npy::write_embeddings(&p, &e).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] = v;
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        std::fs::write(&p, &bytes).unwrap();
        let _ = npy::read_embeddings(&p);
        let _ = npy::read_labels(&p);
    }

    /// Any geometry, stride, format, resize policy and filter: a constant-colour frame
    /// comes out as that colour everywhere (the filter weights of every output pixel and
    /// component sum to one and read only that pixel's bytes), a short frame is an error,
    /// and nothing panics.
    #[test]
    fn preprocessing_any_geometry_keeps_a_constant_colour(
        src_w in 1usize..150, src_h in 1usize..120, pad in 0usize..9,
        out_w in 1u32..40, out_h in 1u32..40, format in 0usize..4,
        stretch in any::<bool>(), nearest in any::<bool>(), colour in any::<[u8; 3]>(),
    ) {
        let format = [PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Gray8, PixelFormat::Yuyv][format];
        let mut spec = PreprocessSpec::cifar(32);
        spec.width = out_w;
        spec.height = out_h;
        if stretch {
            spec.resize = ResizePolicy::Stretch;
        }
        if nearest {
            spec.filter = ResizeFilter::Nearest;
        }
        // one pixel (a YUYV pair) of the colour, and a frame made of it with padded rows
        let unit: Vec<u8> = match format {
            PixelFormat::Gray8 => vec![colour[0]],
            PixelFormat::Yuyv => vec![colour[0], colour[1], colour[0], colour[2]],
            _ => colour.to_vec(),
        };
        let row_bytes = format.row_bytes(src_w);
        let stride = row_bytes + pad;
        let mut frame = vec![0xAAu8; stride * (src_h - 1) + row_bytes];
        for r in 0..src_h {
            for (i, b) in frame[r * stride..r * stride + row_bytes].iter_mut().enumerate() {
                *b = unit[i % unit.len()];
            }
        }
        let mut pre = Preprocessor::new(&spec, src_w, src_h, format).unwrap();
        let mut out = vec![f32::NAN; pre.tensor_len()];
        pre.run(&frame, Some(stride), &mut out).unwrap();
        // the colour as a 1x1 (YUYV: 2x1) frame taken at its own size
        let (one_w, one) = if format == PixelFormat::Yuyv { (2, &unit[..]) } else { (1, &unit[..]) };
        let mut spec1 = spec.clone();
        spec1.width = one_w as u32;
        spec1.height = 1;
        let mut pre1 = Preprocessor::new(&spec1, one_w, 1, format).unwrap();
        let mut want = vec![0f32; pre1.tensor_len()];
        pre1.run(one, None, &mut want).unwrap();
        let plane = (out_w * out_h) as usize;
        for c in 0..3 {
            for v in &out[c * plane..(c + 1) * plane] {
                // normalised units: 1e-3 is far below one grey level (1 / (255 * std))
                prop_assert!((v - want[c * one_w]).abs() < 1e-3, "channel {c}: {v} vs {}", want[c * one_w]);
            }
        }
        prop_assert!(pre.run(&frame[..frame.len() - 1], Some(stride), &mut out).is_err());
    }

    #[test]
    fn artifact_loader_never_panics_on_corruption(at in 0usize..100_000, byte in any::<u8>(), cut in 0usize..100_000) {
        let text = small_artifact().to_json();
        let mut bytes = text.into_bytes();
        let n = bytes.len();
        bytes[at % n] = byte;
        bytes.truncate(cut % (n + 1));
        let text = String::from_utf8_lossy(&bytes);
        let _ = CalibrationArtifact::from_json(&text);
    }
}

fn small_artifact() -> CalibrationArtifact {
    let (train, labels) = blobs(60, 4, 2, 5);
    let (cal, _) = blobs(40, 4, 2, 6);
    let mut artifact = two_class_artifact("mahalanobis", &train, &labels, &cal);
    artifact.encoder_sha256 = Some("ab".repeat(32));
    artifact
}

#[test]
fn artifact_round_trips_and_rejects_tampering() {
    let a = small_artifact();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("calib.json");
    a.save(&p).unwrap();
    assert_eq!(CalibrationArtifact::load(&p).unwrap(), a);
    assert!(a.check_encoder_hash(&"ab".repeat(32)).is_ok());
    assert!(matches!(
        a.check_encoder_hash(&"cd".repeat(32)),
        Err(oodmon_calibration::Error::EncoderHashMismatch { .. })
    ));
    // a whitening factor whose L L^T is not positive definite (a zero on the diagonal)
    let mut bad = a.clone();
    let d = bad.model.dim;
    bad.model.whitening[0].data[(d - 1) * d + d - 1] = 0.0;
    assert!(matches!(
        CalibrationArtifact::from_json(&bad.to_json()),
        Err(oodmon_calibration::Error::NotPositiveDefinite { .. })
    ));
    // a schema-5 file stores the precision P = L L^T itself: it loads as the same factor
    // (to the f32 rounding the scorer always applied), and scores the same
    let l = &a.model.whitening[0];
    let mut p = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            p[i * d + j] = (0..d)
                .map(|k| l.data[i * d + k] as f64 * l.data[j * d + k] as f64)
                .sum();
        }
    }
    let mut v5: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    v5["schema_version"] = 5.into();
    let model = v5["model"].as_object_mut().unwrap();
    model.remove("whitening");
    model.insert(
        "precision".into(),
        serde_json::to_value(vec![oodmon_calibration::matrix::MatrixF64::new(d, d, p)]).unwrap(),
    );
    let old = CalibrationArtifact::from_json(&v5.to_string()).unwrap();
    assert_eq!(old.schema_version, oodmon_calibration::SCHEMA_VERSION);
    assert!(old.model.precision.is_empty());
    for (x, y) in old.model.whitening[0].data.iter().zip(&l.data) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{x} vs {y}");
    }
    let (probe, _) = blobs(10, 4, 2, 7);
    let score = |m| {
        oodmon_calibration::Scorer::new(m)
            .unwrap()
            .score_batch(&probe)
            .unwrap()
    };
    for (x, y) in score(&a.model).iter().zip(&score(&old.model)) {
        assert!((x.score - y.score).abs() <= 1e-4 * x.score.abs().max(1.0));
        assert_eq!(x.nearest, y.nearest);
    }
    // a schema-10 file stores the factor's lower triangle uncompressed (`f32-lower`): it
    // loads to the same factor bit for bit, and is written back compressed
    let mut v10: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    v10["schema_version"] = 10.into();
    assert_eq!(
        v10["model"]["whitening"][0]["dtype"],
        oodmon_calibration::matrix::LOWER_SHUFFLE_ZLIB
    );
    let raw: Vec<u8> = (0..d)
        .flat_map(|i| l.data[i * d..i * d + i + 1].iter())
        .flat_map(|v| v.to_le_bytes())
        .collect();
    v10["model"]["whitening"][0] = serde_json::json!({
        "rows": d, "cols": d, "dtype": "f32-lower",
        "data": base64::engine::general_purpose::STANDARD.encode(raw),
    });
    let old = CalibrationArtifact::from_json(&v10.to_string()).unwrap();
    assert_eq!(old.schema_version, oodmon_calibration::SCHEMA_VERSION);
    let bits = |m: &oodmon_calibration::matrix::LowerF32| {
        m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(bits(&old.model.whitening[0]), bits(l));
    assert!(old
        .to_json()
        .contains(oodmon_calibration::matrix::LOWER_SHUFFLE_ZLIB));
    // non-finite values
    let mut bad = a.clone();
    bad.thresholds.global = f64::NAN;
    let json = bad
        .to_json()
        .replace("\"global\": null", "\"global\": 1e999");
    assert!(CalibrationArtifact::from_json(&json).is_err());
    let mut bad = a.clone();
    bad.model.centroids.data[0] = f32::INFINITY;
    assert!(matches!(
        CalibrationArtifact::from_json(&bad.to_json()),
        Err(oodmon_calibration::Error::InvalidArtifact(_))
    ));
    // dimension mismatch between header and model
    let mut bad = a.clone();
    bad.embedding_dim = 5;
    assert!(matches!(
        CalibrationArtifact::from_json(&bad.to_json()),
        Err(oodmon_calibration::Error::DimensionMismatch { .. })
    ));
    // unknown fields are refused, not ignored
    let json = a.to_json().replacen('{', "{\"surprise\": 1,", 1);
    assert!(CalibrationArtifact::from_json(&json).is_err());
}

#[test]
fn a_schema_3_artifact_reads_as_embedded_on_tract_and_the_backend_round_trips() {
    let a = small_artifact();
    assert_eq!(a.embedded_on, oodmon_calibration::DEFAULT_EMBEDDED_ON);
    let mut v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("embedded_on");
    o.insert("schema_version".into(), 3.into());
    let migrated = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    assert_eq!(migrated, a);
    // schema 4 without the field is not schema 4
    v["schema_version"] = 4.into();
    assert!(CalibrationArtifact::from_json(&v.to_string()).is_err());
    let ort = a.clone().with_embedded_on("onnxruntime").unwrap();
    assert_eq!(
        CalibrationArtifact::from_json(&ort.to_json())
            .unwrap()
            .embedded_on,
        "onnxruntime"
    );
    assert!(a.clone().with_embedded_on("").is_err());
    assert!(a.with_embedded_on("ONNX Runtime").is_err());
}

#[test]
fn a_schema_1_artifact_is_migrated_on_load_and_bounds_round_trip() {
    use oodmon_calibration::quality::{ImageQuality, QualityBounds};
    let a = small_artifact();
    // a file as schema 1 wrote it: no image-quality field
    let mut v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("image_quality");
    o.remove("embedded_on");
    o.insert("schema_version".into(), 1.into());
    let old = serde_json::to_string_pretty(&v).unwrap();
    assert_eq!(CalibrationArtifact::schema_version_of(&old), Some(1));
    let migrated = CalibrationArtifact::from_json(&old).unwrap();
    assert_eq!(migrated.schema_version, oodmon_calibration::SCHEMA_VERSION);
    assert_eq!(migrated.image_quality, None);
    assert_eq!(migrated, a);
    // bounds need the preprocessing they were measured after
    let images: Vec<ImageQuality> = (0..100)
        .map(|i| ImageQuality {
            mean_luma: 0.3 + 0.004 * i as f32,
            contrast: 0.2,
            sharpness: 0.01 + 0.0001 * i as f32,
            blockiness: 1.0,
            ..Default::default()
        })
        .collect();
    let bounds = QualityBounds::fit(&images, 0.01).unwrap();
    assert!(a.clone().with_image_quality(bounds.clone()).is_err());
    let mut with_spec = a.clone();
    with_spec.preprocessing = Some(oodmon_calibration::PreprocessSpec::cifar(32));
    let guarded = with_spec.with_image_quality(bounds).unwrap();
    let back = CalibrationArtifact::from_json(&guarded.to_json()).unwrap();
    assert_eq!(back, guarded);
    // bounds that are not bounds are refused
    let json = guarded
        .to_json()
        .replace("\"contrast_min\": 0.2", "\"contrast_min\": 1e999");
    assert!(CalibrationArtifact::from_json(&json).is_err());
    // a schema 2 file (no noise or detail bounds) keeps its other bounds
    assert!(guarded.image_quality.as_ref().unwrap().noise_max.is_some());
    let mut v: serde_json::Value = serde_json::from_str(&guarded.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("schema_version".into(), 2.into());
    o.remove("embedded_on");
    let iq = o["image_quality"].as_object_mut().unwrap();
    iq.remove("noise_max").unwrap();
    iq.remove("detail_min").unwrap();
    iq.remove("saturation_max").unwrap();
    iq.remove("black_level_max").unwrap();
    for added_in_7 in [
        "dark_flat_share_max",
        "value_min_max",
        "saturated_share_max",
    ] {
        iq.remove(added_in_7).unwrap();
    }
    let v2 = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    let kept = v2.image_quality.unwrap();
    assert_eq!((kept.noise_max, kept.detail_min), (None, None));
    assert_eq!(
        QualityBounds {
            noise_max: None,
            detail_min: None,
            saturation_max: None,
            black_level_max: None,
            dark_flat_share_max: None,
            value_min_max: None,
            saturated_share_max: None,
            ..guarded.image_quality.clone().unwrap()
        },
        kept
    );
    // a schema 4 file (no saturation or black-level bounds) keeps the others, and reads
    // back as the current schema
    assert!(guarded
        .image_quality
        .as_ref()
        .unwrap()
        .saturation_max
        .is_some());
    let mut v: serde_json::Value = serde_json::from_str(&guarded.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("schema_version".into(), 4.into());
    let iq = o["image_quality"].as_object_mut().unwrap();
    iq.remove("saturation_max").unwrap();
    iq.remove("black_level_max").unwrap();
    for added_in_7 in [
        "dark_flat_share_max",
        "value_min_max",
        "saturated_share_max",
    ] {
        iq.remove(added_in_7).unwrap();
    }
    let v4 = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    assert_eq!(v4.schema_version, oodmon_calibration::SCHEMA_VERSION);
    assert_eq!(v4.embedded_on, guarded.embedded_on);
    assert_eq!(
        v4.image_quality.unwrap(),
        QualityBounds {
            saturation_max: None,
            black_level_max: None,
            dark_flat_share_max: None,
            value_min_max: None,
            saturated_share_max: None,
            ..guarded.image_quality.clone().unwrap()
        }
    );
    // a schema 6 file (no dark flat, darkest-value or saturated-share bounds) likewise
    let mut v: serde_json::Value = serde_json::from_str(&guarded.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("schema_version".into(), 6.into());
    let iq = o["image_quality"].as_object_mut().unwrap();
    for added_in_7 in [
        "dark_flat_share_max",
        "value_min_max",
        "saturated_share_max",
    ] {
        iq.remove(added_in_7).unwrap();
    }
    let v6 = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    assert_eq!(v6.schema_version, oodmon_calibration::SCHEMA_VERSION);
    assert_eq!(
        v6.image_quality.unwrap(),
        QualityBounds {
            dark_flat_share_max: None,
            value_min_max: None,
            saturated_share_max: None,
            ..guarded.image_quality.clone().unwrap()
        }
    );
    // a schema 7 file (bounds that tolerate nothing) reads as it is; a tolerated severity
    // round-trips (a schema 7 reader refuses it as an unknown field: hence version 8)
    let mut v: serde_json::Value = serde_json::from_str(&guarded.to_json()).unwrap();
    v.as_object_mut()
        .unwrap()
        .insert("schema_version".into(), 7.into());
    let v7 = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    assert_eq!(v7.schema_version, oodmon_calibration::SCHEMA_VERSION);
    // a schema 8 file (no radial-detail bound) keeps the others, and the guards it loads
    // say the zoom-blur measure is not checked
    let mut v: serde_json::Value = serde_json::from_str(&guarded.to_json()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("schema_version".into(), 8.into());
    let iq = o["image_quality"].as_object_mut().unwrap();
    assert!(iq.remove("radial_detail_min").unwrap().is_number());
    let v8 = CalibrationArtifact::from_json(&v.to_string()).unwrap();
    assert_eq!(v8.schema_version, oodmon_calibration::SCHEMA_VERSION);
    let v8 = v8.image_quality.unwrap();
    assert_eq!(
        v8,
        QualityBounds {
            radial_detail_min: None,
            ..guarded.image_quality.clone().unwrap()
        }
    );
    assert!(v8.absent().contains(&"radial detail"), "{v8}");
    assert!(
        v8.to_string().contains("not checked: radial detail"),
        "{v8}"
    );
    assert_eq!(v7.image_quality, guarded.image_quality);
    assert_eq!(v7.image_quality.as_ref().unwrap().tolerated_severity, None);
    let tolerant = CalibrationArtifact {
        image_quality: Some(QualityBounds {
            tolerated_severity: Some(2),
            ..guarded.image_quality.clone().unwrap()
        }),
        ..guarded.clone()
    };
    let json = tolerant.to_json();
    assert!(json.contains("\"tolerated_severity\": 2"), "{json}");
    assert_eq!(
        CalibrationArtifact::from_json(&json)
            .unwrap()
            .image_quality
            .unwrap()
            .tolerated_severity,
        Some(2)
    );
    // too few images, or a quantile that is no tail
    assert!(QualityBounds::fit(&images[..10], 0.01).is_err());
    assert!(QualityBounds::fit(&images, 0.5).is_err());
}

#[test]
fn batch_scoring_equals_one_at_a_time() {
    let (train, labels) = blobs(400, 24, 4, 11);
    let mut queries = blobs(300, 24, 4, 12).0.as_slice().to_vec();
    queries.extend_from_slice(noise(300, 24, 10.0, 13).as_slice());
    let queries = oodmon_calibration::Embeddings::new(600, 24, queries).unwrap();
    for metric in [
        "euclidean",
        "cosine",
        "mahalanobis",
        "mahalanobis-per-cluster",
        "mahalanobis++",
        "mahalanobis++:6",
        "relative-mahalanobis",
        "knn:7",
    ] {
        for normalize in [false, true] {
            let mut cfg = FitConfig::new(
                ClusterSpec::KmeansPerClass { k: 2 },
                Metric::parse(metric).unwrap(),
            );
            cfg.normalize = normalize;
            let model = oodmon_calibration::fit_model(&train, Some(&labels), &cfg)
                .unwrap()
                .model;
            let scorer = Scorer::new(&model).unwrap();
            let batch = scorer.score_batch(&queries).unwrap();
            let tied = (metric == "relative-mahalanobis").then(|| {
                cfg.metric = Metric::parse("mahalanobis").unwrap();
                let m = oodmon_calibration::fit_model(&train, Some(&labels), &cfg).unwrap();
                Scorer::new(&m.model)
                    .unwrap()
                    .score_batch(&queries)
                    .unwrap()
            });
            let mut scratch = scorer.scratch(1);
            for (i, b) in batch.iter().enumerate() {
                let one = scorer.score_one(queries.row(i), &mut scratch).unwrap();
                let exact = !metric.contains("mahalanobis");
                if exact {
                    assert_eq!(one, *b, "{metric} row {i}");
                } else {
                    // relative Mahalanobis is a difference of squared distances: its
                    // rounding is relative to those (the class one bounds it), not to
                    // the difference
                    let floor = match &tied {
                        Some(t) if metric == "relative-mahalanobis" => t[i].score.powi(2),
                        _ => 1e-3,
                    };
                    assert!(
                        (one.score - b.score).abs() <= 1e-5 * b.score.abs().max(floor),
                        "{metric} row {i}: {one:?} vs {b:?}"
                    );
                }
            }
        }
    }
}

/// A two-class artifact fitted with `metric` (class centroids, one global threshold).
fn two_class_artifact(
    metric: &str,
    train: &oodmon_calibration::Embeddings,
    labels: &[i64],
    cal: &oodmon_calibration::Embeddings,
) -> CalibrationArtifact {
    let cfg = FitConfig::new(ClusterSpec::Class, Metric::parse(metric).unwrap());
    let (model, thresholds) = calibrate(
        train,
        Some(labels),
        cal,
        &cfg,
        ThresholdMode::Global { target_tpr: 0.95 },
    )
    .unwrap();
    CalibrationArtifact::new(
        cfg,
        model,
        thresholds,
        vec!["a".into(), "b".into()],
        None,
        None,
        Provenance::now("test", vec![], vec![]),
    )
    .unwrap()
}

/// The new members of the Mahalanobis family round-trip through the artifact and refuse
/// what they cannot score: a missing or broken background, an un-normalised ++ model.
#[test]
fn mahalanobis_family_artifacts_round_trip_and_refuse_broken_parts() {
    let (train, labels) = blobs(80, 4, 2, 5);
    let (cal, _) = blobs(40, 4, 2, 6);
    for name in ["mahalanobis++", "relative-mahalanobis"] {
        let a = two_class_artifact(name, &train, &labels, &cal);
        assert_eq!(a.model.normalize, name == "mahalanobis++", "{name}");
        assert_eq!(a.model.background.is_some(), name == "relative-mahalanobis");
        assert_eq!(CalibrationArtifact::from_json(&a.to_json()).unwrap(), a);
        assert_eq!(a.fit.metric.name(), name);
        if name == "mahalanobis++" {
            let mut bad = a.clone();
            bad.model.normalize = false;
            bad.fit.metric = Metric::parse("mahalanobis").unwrap();
            bad.model.metric = Metric::parse("mahalanobis++").unwrap();
            assert!(CalibrationArtifact::from_json(&bad.to_json()).is_err());
            continue;
        }
        let mut bad = a.clone();
        bad.model.background = None;
        assert!(matches!(
            CalibrationArtifact::from_json(&bad.to_json()),
            Err(oodmon_calibration::Error::InvalidArtifact(_))
        ));
        let mut bad = a.clone();
        if let Some(bg) = bad.model.background.as_mut() {
            bg.mean[1] = f32::NAN;
        }
        assert!(CalibrationArtifact::from_json(&bad.to_json()).is_err());
        let mut bad = a.clone();
        if let Some(bg) = bad.model.background.as_mut() {
            bg.mean.pop();
        }
        assert!(matches!(
            CalibrationArtifact::from_json(&bad.to_json()),
            Err(oodmon_calibration::Error::DimensionMismatch { .. })
        ));
        let mut bad = a.clone();
        if let Some(w) = bad
            .model
            .background
            .as_mut()
            .and_then(|bg| bg.whitening.as_mut())
        {
            w.data[0] = -1.0;
        }
        assert!(matches!(
            CalibrationArtifact::from_json(&bad.to_json()),
            Err(oodmon_calibration::Error::NotPositiveDefinite { .. })
        ));
    }
}

/// `mahalanobis++:R` keeps R eigenvalues and flattens the rest to their mean: at R = d - 1
/// the "rest" is one eigenvalue, so the precision is the full one and so are the scores.
#[test]
fn low_rank_mahalanobis_at_full_rank_minus_one_is_the_full_metric() {
    let (train, labels) = blobs(300, 12, 3, 21);
    let queries = noise(200, 12, 3.0, 22);
    let score = |name: &str| {
        let cfg = FitConfig::new(ClusterSpec::Class, Metric::parse(name).unwrap());
        let model = oodmon_calibration::fit_model(&train, Some(&labels), &cfg)
            .unwrap()
            .model;
        Scorer::new(&model).unwrap().score_batch(&queries).unwrap()
    };
    let (full, low) = (score("mahalanobis++"), score("mahalanobis++:11"));
    for (i, (f, l)) in full.iter().zip(&low).enumerate() {
        assert!(
            (f.score - l.score).abs() <= 1e-4 * f.score,
            "row {i}: full {f:?}, rank 11 {l:?}"
        );
        assert_eq!(f.nearest, l.nearest, "row {i}");
    }
    // a rank that keeps every direction is refused: that is the full metric
    let cfg = FitConfig::new(
        ClusterSpec::Class,
        Metric::parse("mahalanobis++:12").unwrap(),
    );
    assert!(oodmon_calibration::fit_model(&train, Some(&labels), &cfg).is_err());
    assert!(Metric::parse("mahalanobis++:0").is_err());
}

/// The low-rank precision round-trips through the artifact, and a missing, mis-shaped or
/// broken one is refused when the artifact is read.
#[test]
fn low_rank_mahalanobis_artifacts_round_trip_and_refuse_broken_parts() {
    let (train, labels) = blobs(80, 6, 2, 5);
    let (cal, _) = blobs(40, 6, 2, 6);
    let a = two_class_artifact("mahalanobis++:2", &train, &labels, &cal);
    assert!(a.model.normalize && a.model.whitening.is_empty());
    let sub = a.model.subspace.as_ref().unwrap();
    assert_eq!((sub.basis.rows, sub.basis.cols), (6, 2));
    assert_eq!(CalibrationArtifact::from_json(&a.to_json()).unwrap(), a);
    assert_eq!(a.fit.metric.name(), "mahalanobis++:2");
    type Breaks = fn(&mut oodmon_calibration::Model);
    let broken: [(&str, Breaks); 5] = [
        ("no subspace", |m| m.subspace = None),
        ("NaN in the basis", |m| {
            m.subspace.as_mut().unwrap().basis.data[3] = f32::NAN
        }),
        ("a rank-3 basis for rank 2", |m| {
            let b = &mut m.subspace.as_mut().unwrap().basis;
            b.cols = 3;
            b.data.extend([0.0; 6]);
        }),
        ("a negative residual precision", |m| {
            m.subspace.as_mut().unwrap().residual_precision = -1.0
        }),
        ("not normalised", |m| m.normalize = false),
    ];
    for (what, breaks) in broken {
        let mut bad = a.clone();
        breaks(&mut bad.model);
        assert!(
            CalibrationArtifact::from_json(&bad.to_json()).is_err(),
            "{what} was accepted"
        );
    }
}

#[test]
fn scoring_refuses_nan_and_wrong_dimensions() {
    let (train, labels) = blobs(100, 8, 2, 1);
    let model = oodmon_calibration::fit_model(
        &train,
        Some(&labels),
        &FitConfig::new(ClusterSpec::Class, Metric::Cosine),
    )
    .unwrap()
    .model;
    let scorer = Scorer::new(&model).unwrap();
    let mut s = scorer.scratch(1);
    let mut x = vec![0.1f32; 8];
    x[3] = f32::NAN;
    assert!(matches!(
        scorer.score_one(&x, &mut s),
        Err(oodmon_calibration::Error::NonFinite { .. })
    ));
    assert!(matches!(
        scorer.score_one(&[0.0; 7], &mut s),
        Err(oodmon_calibration::Error::DimensionMismatch { .. })
    ));
}

/// Split-conformal guarantee: over many calibration draws, the ID false-alarm rate at
/// alpha stays at alpha (it is exactly floor(alpha (n+1)) / (n+1) in expectation).
#[test]
fn conformal_false_alarm_rate_stays_at_or_below_alpha() {
    let (train, labels) = blobs(300, 6, 3, 21);
    let cfg = FitConfig::new(ClusterSpec::Class, Metric::Euclidean);
    let model = oodmon_calibration::fit_model(&train, Some(&labels), &cfg)
        .unwrap()
        .model;
    let scorer = Scorer::new(&model).unwrap();
    let (alpha, n_cal, n_test, draws) = (0.05, 99, 200, 300);
    let mut flagged = 0usize;
    for draw in 0..draws {
        let cal = scorer
            .score_batch(&blobs(n_cal, 6, 3, 10_000 + draw).0)
            .unwrap();
        let t = Thresholds::fit(ThresholdMode::Conformal { alpha }, &cal, 3).unwrap();
        let test = scorer
            .score_batch(&blobs(n_test, 6, 3, 50_000 + draw).0)
            .unwrap();
        flagged += test.iter().filter(|s| t.is_ood(s)).count();
    }
    let rate = flagged as f64 / (draws * n_test as u64) as f64;
    // standard error ~0.0015 here (calibration draws dominate): allow 4 of them
    assert!(
        rate <= alpha + 0.006,
        "false-alarm rate {rate} above alpha {alpha}"
    );
    assert!(
        rate >= alpha - 0.006,
        "false-alarm rate {rate} far below alpha {alpha}: too conservative"
    );
}
