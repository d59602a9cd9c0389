//! The trainer's losses against PyTorch in Python on fixed tensors.

use oodmon_calibration::{npy, Embeddings};
use oodmon_trainer::loss::{nt_xent, supcon};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::util::run_python;

#[test]
fn supcon_and_nt_xent_match_pytorch_reference_code() {
    let (n, d, t) = (12usize, 8usize, 0.2f64);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut z: Vec<f32> = (0..2 * n * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for row in z.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    let dir = tempfile::tempdir().unwrap();
    npy::write_embeddings(
        dir.path().join("features.npy"),
        &Embeddings::new(2 * n, d, z.clone()).unwrap(),
    )
    .unwrap();
    npy::write_labels(dir.path().join("labels.npy"), &labels).unwrap();
    std::fs::write(dir.path().join("temperature.txt"), t.to_string()).unwrap();
    let reference: serde_json::Value =
        serde_json::from_str(&run_python("loss_reference.py", &[dir.path()])).unwrap();

    let zt = Tensor::from_slice(&z)
        .view([2 * n as i64, d as i64])
        .to_kind(Kind::Double);
    let y = Tensor::from_slice(&labels);
    let both = Tensor::cat(&[&y, &y], 0);
    let ours_supcon = supcon(&zt, &both, t).double_value(&[]);
    let ours_ntxent = nt_xent(&zt, t).double_value(&[]);
    let want_supcon = reference["supcon"].as_f64().unwrap();
    let want_ntxent = reference["ntxent"].as_f64().unwrap();
    assert!(
        (ours_supcon - want_supcon).abs() < 1e-9,
        "SupCon {ours_supcon} vs {want_supcon}"
    );
    assert!(
        (ours_ntxent - want_ntxent).abs() < 1e-9,
        "NT-Xent {ours_ntxent} vs {want_ntxent}"
    );
}
