//! Exactness against trusted references: scikit-learn and NumPy on the same data.

use oodmon_calibration::{
    fit_model, kmeans, metrics, npy, ClusterSpec, Embeddings, FitConfig, KMeansConfig, Metric,
    Scorer,
};
use serde_json::Value;

use crate::util::{gaussian_classes, run_python};

const KNN_K: usize = 5;
const KMEANS_K: [usize; 3] = [3, 8, 20];

struct Case {
    _dir: tempfile::TempDir,
    train: Embeddings,
    labels: Vec<i64>,
    queries: Embeddings,
    kmeans_data: Embeddings,
    id_scores: Vec<f64>,
    ood_scores: Vec<f64>,
    reference: Value,
}

/// Writes one shared data set, runs the reference script once, and returns both sides.
fn case() -> &'static Case {
    static CASE: std::sync::OnceLock<Case> = std::sync::OnceLock::new();
    CASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (train, labels) = gaussian_classes(900, 16, 4, 1);
        let (mut q, _) = gaussian_classes(200, 16, 4, 2);
        let (far, _) = gaussian_classes(100, 16, 7, 3);
        let mut data = q.as_slice().to_vec();
        data.extend(far.as_slice().iter().map(|v| v * 1.5));
        q = Embeddings::new(300, 16, data).unwrap();
        let (kmeans_data, _) = gaussian_classes(3000, 16, 6, 4);
        // scores with many ties and with continuous values, ID and OOD overlapping
        let id_scores: Vec<f64> = (0..700)
            .map(|i| ((i * 37 % 101) as f64 / 10.0).round() + (i % 3) as f64 * 0.25)
            .collect();
        let ood_scores: Vec<f64> = (0..400)
            .map(|i| ((i * 53 % 97) as f64 / 8.0).round() + 2.0 + (i % 5) as f64 * 0.125)
            .collect();
        npy::write_embeddings(p("train.npy"), &train).unwrap();
        npy::write_labels(p("labels.npy"), &labels).unwrap();
        npy::write_embeddings(p("queries.npy"), &q).unwrap();
        npy::write_embeddings(p("kmeans.npy"), &kmeans_data).unwrap();
        npy::write_f64_vector(p("id_scores.npy"), &id_scores).unwrap();
        npy::write_f64_vector(p("ood_scores.npy"), &ood_scores).unwrap();
        let spec = serde_json::json!({"knn_k": KNN_K, "kmeans_k": KMEANS_K});
        std::fs::write(p("spec.json"), spec.to_string()).unwrap();
        run_python("reference.py", &[dir.path()]);
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(p("reference.json")).unwrap()).unwrap();
        Case {
            _dir: dir,
            train,
            labels,
            queries: q,
            kmeans_data,
            id_scores,
            ood_scores,
            reference,
        }
    })
}

fn reference_vector(key: &str) -> Vec<f64> {
    case().reference["scores"][key]
        .as_array()
        .unwrap_or_else(|| panic!("reference has no {key}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn our_scores(metric: &str) -> Vec<f64> {
    let c = case();
    let cfg = FitConfig::new(ClusterSpec::Class, Metric::parse(metric).unwrap());
    let model = fit_model(&c.train, Some(&c.labels), &cfg).unwrap().model;
    Scorer::new(&model)
        .unwrap()
        .score_batch(&c.queries)
        .unwrap()
        .iter()
        .map(|s| s.score)
        .collect()
}

fn assert_close(metric: &str, ours: &[f64], reference: &[f64], rel: f64) {
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0.0f64;
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let err = (a - b).abs() / b.abs().max(1e-12);
        worst = worst.max(err);
        assert!(
            err <= rel,
            "{metric} row {i}: ours {a}, reference {b} (relative error {err:.2e})"
        );
    }
    eprintln!(
        "{metric}: worst relative error {worst:.2e} over {} rows",
        ours.len()
    );
}

#[test]
fn metrics_match_sklearn() {
    let c = case();
    let m = metrics::ood_metrics(&c.id_scores, &c.ood_scores);
    let r = &c.reference["metrics"];
    for (name, ours) in [
        ("auroc", m.auroc),
        ("aupr_in", m.aupr_in),
        ("aupr_out", m.aupr_out),
        ("fpr_at_95_tpr", m.fpr_at_95_tpr),
    ] {
        let want = r[name].as_f64().unwrap();
        assert!(
            (ours - want).abs() <= 1e-9,
            "{name}: ours {ours}, sklearn {want}"
        );
    }
}

#[test]
fn euclidean_scores_match_numpy() {
    assert_close(
        "euclidean",
        &our_scores("euclidean"),
        &reference_vector("euclidean"),
        1e-5,
    );
    // the nearest cluster agrees too
    let c = case();
    let model = fit_model(
        &c.train,
        Some(&c.labels),
        &FitConfig::new(ClusterSpec::Class, Metric::Euclidean),
    )
    .unwrap()
    .model;
    let nearest: Vec<usize> = Scorer::new(&model)
        .unwrap()
        .score_batch(&c.queries)
        .unwrap()
        .iter()
        .map(|s| s.nearest)
        .collect();
    let want: Vec<usize> = reference_vector("euclidean_nearest")
        .iter()
        .map(|&v| v as usize)
        .collect();
    assert_eq!(nearest, want);
}

#[test]
fn cosine_scores_match_numpy() {
    assert_close(
        "cosine",
        &our_scores("cosine"),
        &reference_vector("cosine"),
        1e-5,
    );
}

#[test]
fn mahalanobis_tied_matches_numpy_with_sklearn_ledoit_wolf() {
    assert_close(
        "mahalanobis",
        &our_scores("mahalanobis"),
        &reference_vector("mahalanobis"),
        1e-5,
    );
}

#[test]
fn mahalanobis_per_cluster_matches_numpy_with_sklearn_ledoit_wolf() {
    assert_close(
        "mahalanobis-per-cluster",
        &our_scores("mahalanobis-per-cluster"),
        &reference_vector("mahalanobis_per_cluster"),
        1e-5,
    );
}

#[test]
fn mahalanobis_plus_plus_matches_numpy_on_normalised_embeddings() {
    assert_close(
        "mahalanobis++",
        &our_scores("mahalanobis++"),
        &reference_vector("mahalanobis_pp"),
        1e-5,
    );
}

#[test]
fn low_rank_mahalanobis_plus_plus_matches_numpy_probabilistic_pca() {
    // rank 5 of 16 (tests/py/reference.py: LOW_RANK), the other 11 eigenvalues flattened
    assert_close(
        "mahalanobis++:5",
        &our_scores("mahalanobis++:5"),
        &reference_vector("mahalanobis_pp_low_rank"),
        1e-5,
    );
}

#[test]
fn relative_mahalanobis_matches_numpy_with_a_background_gaussian() {
    // a difference of two squared distances computed in f32: the error is relative to the
    // squared distances it came from, not to the difference, which crosses zero. The tied
    // test allows 1e-5 on a root, 2e-5 on its square; two squares make 4e-5, so 5e-5.
    let ours = our_scores("relative-mahalanobis");
    let reference = reference_vector("relative_mahalanobis");
    let background = reference_vector("background_mahalanobis2");
    assert!(
        reference.iter().any(|&v| v < 0.0) && reference.iter().any(|&v| v > 0.0),
        "the case should cover scores of both signs"
    );
    let mut worst = 0.0f64;
    for (i, ((a, b), m)) in ours.iter().zip(&reference).zip(&background).enumerate() {
        let err = (a - b).abs() / m.max(b.abs()).max(1e-12);
        worst = worst.max(err);
        assert!(
            err <= 5e-5,
            "row {i}: ours {a}, reference {b}, background distance {m} (error {err:.2e})"
        );
    }
    eprintln!(
        "relative-mahalanobis: worst error {worst:.2e} over {} rows",
        ours.len()
    );
}

#[test]
fn knn_scores_match_numpy() {
    assert_close(
        "knn",
        &our_scores(&format!("knn:{KNN_K}")),
        &reference_vector("knn"),
        1e-5,
    );
}

#[test]
fn kmeans_inertia_is_within_one_percent_of_sklearn() {
    let c = case();
    for k in KMEANS_K {
        let ours = kmeans(&c.kmeans_data, &KMeansConfig::new(k))
            .unwrap()
            .inertia;
        let want = c.reference["kmeans_inertia"][k.to_string()]
            .as_f64()
            .unwrap();
        eprintln!(
            "k-means k={k}: ours {ours:.3}, sklearn {want:.3} ({:+.3}%)",
            100.0 * (ours / want - 1.0)
        );
        assert!(
            ours <= want * 1.01,
            "k={k}: inertia {ours} is more than 1% above sklearn's {want}"
        );
    }
}
