//! The CLI as a user runs it: the happy path end to end, and every bad input the issue lists.

use oodmon_calibration::{npy, CalibrationArtifact, Embeddings};

use crate::util::{assert_fails_cleanly, calibrate, calibrate_command, write_inputs};

fn fit_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "fit",
        "--train",
        "train.npy",
        "--labels",
        "labels.npy",
        "--calib",
        "calib.npy",
        "--out",
        "calib.json",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn fit_score_eval_grid_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let out = calibrate(
        dir.path(),
        &fit_args(&[
            "--metric",
            "mahalanobis",
            "--calib-labels",
            "calib_labels.npy",
        ]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("accuracy on the calibration split: 100.00%"),
        "{stdout}"
    );
    let artifact = CalibrationArtifact::load(dir.path().join("calib.json")).unwrap();
    assert_eq!(artifact.embedding_dim, 12);
    assert_eq!(artifact.model.clusters(), 3);
    assert_eq!(artifact.provenance.inputs.len(), 4);

    let out = calibrate(
        dir.path(),
        &[
            "score",
            "--calib",
            "calib.json",
            "--embeddings",
            "ood.npy",
            "--out",
            "s.csv",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
    assert_eq!(csv.lines().count(), 201);
    assert!(
        csv.lines().skip(1).all(|l| l.ends_with(",1")),
        "noise must be flagged"
    );
    let out = calibrate(
        dir.path(),
        &[
            "score",
            "--calib",
            "calib.json",
            "--embeddings",
            "test.npy",
            "--out",
            "s.npy",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        npy::read_f64_vector(dir.path().join("s.npy"))
            .unwrap()
            .len(),
        300
    );

    let out = calibrate(
        dir.path(),
        &[
            "eval",
            "--calib",
            "calib.json",
            "--id",
            "test.npy",
            "--ood",
            "noise=ood.npy",
            "--report",
            "rep",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("noise"), "{stdout}");
    let report = std::fs::read_to_string(dir.path().join("rep/report.md")).unwrap();
    assert!(report.contains("| noise | 200 | 100.00 |"), "{report}");
    for svg in ["rep/roc.svg", "rep/hist_noise.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("<path") || text.contains("<polyline"),
            "{svg}"
        );
    }

    let out = calibrate(
        dir.path(),
        &[
            "grid",
            "--train",
            "train.npy",
            "--labels",
            "labels.npy",
            "--calib",
            "calib.npy",
            "--test",
            "test.npy",
            "--ood",
            "ood.npy",
            "--clusters",
            "class,kmeans:3,kmeans-per-class:2",
            "--metrics",
            "euclidean,cosine,mahalanobis,mahalanobis-per-cluster,mahalanobis++,relative-mahalanobis,knn:5",
            "--out",
            "grid",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("grid/grid.csv")).unwrap();
    // 3 clusterings x (2 normalisations x 6 metrics + mahalanobis++ once, normalised)
    // x 3 rules x 1 OOD set
    assert_eq!(csv.lines().count(), 1 + 117, "{csv}");
    let plus = csv
        .lines()
        .filter(|l| l.contains(",mahalanobis++,"))
        .count();
    assert_eq!(plus, 9);
    assert!(csv
        .lines()
        .filter(|l| l.contains(",mahalanobis++,"))
        .all(|l| l.contains(",mahalanobis++,true,")));
    assert!(std::fs::read_to_string(dir.path().join("grid/grid.md"))
        .unwrap()
        .contains("| class | cosine |"));
}

#[test]
fn conformal_and_per_cluster_fits() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let out = calibrate(
        dir.path(),
        &fit_args(&["--alpha", "0.05", "--metric", "knn:5"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = calibrate(
        dir.path(),
        &fit_args(&["--per-cluster", "--clusters", "kmeans-per-class:2"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = CalibrationArtifact::load(dir.path().join("calib.json")).unwrap();
    assert_eq!(a.thresholds.per_cluster.len(), 6);
    for metric in ["mahalanobis++", "relative-mahalanobis"] {
        let out = calibrate(dir.path(), &fit_args(&["--metric", metric]));
        assert!(
            out.status.success(),
            "{metric}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let a = CalibrationArtifact::load(dir.path().join("calib.json")).unwrap();
        assert_eq!(a.fit.metric.name(), metric);
        let out = calibrate(
            dir.path(),
            &[
                "score",
                "--calib",
                "calib.json",
                "--embeddings",
                "ood.npy",
                "--out",
                "s.csv",
            ],
        );
        assert!(out.status.success(), "{metric}");
        let csv = std::fs::read_to_string(dir.path().join("s.csv")).unwrap();
        let flagged = csv.lines().skip(1).filter(|l| l.ends_with(",1")).count();
        // Relative Mahalanobis discounts the directions the classes spread along, so some
        // uniform noise lands low (187 of 200 here; NumPy agrees, see e2e::reference).
        let want = if metric == "mahalanobis++" { 200 } else { 180 };
        assert!(
            flagged >= want,
            "{metric}: {flagged} of 200 noise rows flagged"
        );
    }
}

#[test]
fn malformed_npy() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    std::fs::write(dir.path().join("train.npy"), b"not numpy at all").unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "train.npy",
        "not a valid .npy",
    );
}

#[test]
fn truncated_npy() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let p = dir.path().join("calib.npy");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "calib.npy",
        "truncated",
    );
}

#[test]
fn wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    npy::write_labels(dir.path().join("train.npy"), &[1, 2, 3]).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "train.npy",
        "expected float32",
    );
}

#[test]
fn mismatched_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let e = Embeddings::new(10, 5, vec![0.5; 50]).unwrap();
    npy::write_embeddings(dir.path().join("calib.npy"), &e).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "calib.npy",
        "dimension 5",
    );
}

#[test]
fn nan_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let mut v = [0.5f32; 12 * 4];
    v[2 * 12 + 3] = f32::NAN;
    npy::write_embeddings(
        dir.path().join("calib.npy"),
        &Embeddings::new(4, 12, vec![0.5; 48]).unwrap(),
    )
    .unwrap();
    // write the NaN directly into the file's data section (Embeddings refuses NaN)
    let p = dir.path().join("calib.npy");
    let mut bytes = std::fs::read(&p).unwrap();
    let offset = bytes.len() - 48 * 4;
    for (i, x) in v.iter().enumerate() {
        bytes[offset + i * 4..offset + i * 4 + 4].copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "calib.npy",
        "row 2 holds a NaN",
    );
}

#[test]
fn empty_class() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let labels: Vec<i64> = (0..600).map(|i| if i % 2 == 0 { 0 } else { 2 }).collect();
    npy::write_labels(dir.path().join("labels.npy"), &labels).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "train.npy",
        "class 1 has no training samples",
    );
}

#[test]
fn labels_of_another_length() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    npy::write_labels(dir.path().join("labels.npy"), &[0, 1, 2]).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "labels.npy",
        "3 labels but",
    );
}

#[test]
fn unachievable_alpha() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    // 300 calibration samples: the smallest achievable alpha is 1/301
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&["--alpha", "0.001"])),
        "calib.npy",
        "alpha 0.001 cannot be guaranteed with 300 calibration samples",
    );
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    std::fs::remove_file(dir.path().join("labels.npy")).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &fit_args(&[])),
        "labels.npy",
        "no such file",
    );
}

#[test]
fn artifact_problems_on_score() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    assert!(calibrate(dir.path(), &fit_args(&[])).status.success());
    let p = dir.path().join("calib.json");
    let good = std::fs::read_to_string(&p).unwrap();
    let score = [
        "score",
        "--calib",
        "calib.json",
        "--embeddings",
        "test.npy",
        "--out",
        "s.npy",
    ];

    // a file from a newer build
    let newer = oodmon_calibration::SCHEMA_VERSION + 1;
    std::fs::write(
        &p,
        good.replace(
            &format!("\"schema_version\": {}", oodmon_calibration::SCHEMA_VERSION),
            &format!("\"schema_version\": {newer}"),
        ),
    )
    .unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &score),
        "calib.json",
        &format!("unknown calibration schema version {newer}"),
    );

    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    assert_fails_cleanly(
        &calibrate(dir.path(), &score),
        "calib.json",
        "not valid JSON",
    );

    let e = Embeddings::new(3, 4, vec![1.0; 12]).unwrap();
    std::fs::write(&p, &good).unwrap();
    npy::write_embeddings(dir.path().join("test.npy"), &e).unwrap();
    assert_fails_cleanly(&calibrate(dir.path(), &score), "test.npy", "dimension 4");
}

/// Regression: `oodmon-calibrate fit ... | head -1` panicked when stdout closed early.
#[test]
fn closed_stdout_is_success_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let mut child = calibrate_command(dir.path(), &fit_args(&[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
