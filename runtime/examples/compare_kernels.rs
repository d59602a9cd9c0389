//! tract's own operators against oodmon's kernels on one encoder: the embeddings compared
//! value for value on random inputs, and the time per inference of each plan (one thread,
//! interleaved rounds).
//!
//! `cargo run --release -p oodmon-runtime --example compare_kernels -- encoder.onnx [runs]`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use oodmon_runtime::{Backend, Encoder, Kernels};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let runs: usize = std::env::args()
        .nth(2)
        .map(|r| r.parse().unwrap())
        .unwrap_or(500);
    let bytes = std::fs::read(&path).unwrap();
    let load = |k| Encoder::from_bytes_with(&bytes, Path::new(&path), Backend::Tract, k).unwrap();
    let (tract, ours) = (load(Kernels::Tract), load(Kernels::Oodmon));
    println!("oodmon kernels: {:?}", ours.own_kernels());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut a, mut b) = (tract.session().unwrap(), ours.session().unwrap());
    let n = tract.input_len();
    let (mut differ, mut max_rel) = (0usize, 0f64);
    for _ in 0..20 {
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.1f32..2.6)).collect();
        let ea = a.embed(&x).unwrap().to_vec();
        let eb = b.embed(&x).unwrap().to_vec();
        for (p, q) in ea.iter().zip(&eb) {
            if p.to_bits() != q.to_bits() {
                differ += 1;
                max_rel = max_rel.max(((p - q).abs() / p.abs().max(1e-12)) as f64);
            }
        }
    }
    println!("values differing in bits over 20 inputs: {differ} (max rel {max_rel:.3e})");
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.1f32..2.6)).collect();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for round in 0..runs + 20 {
        let t = Instant::now();
        a.embed(&x).unwrap();
        let da = t.elapsed();
        let t = Instant::now();
        b.embed(&x).unwrap();
        let db = t.elapsed();
        if round >= 20 {
            ta.push(da.as_secs_f64() * 1e6);
            tb.push(db.as_secs_f64() * 1e6);
        }
    }
    ta.sort_by(f64::total_cmp);
    tb.sort_by(f64::total_cmp);
    let p50 = |v: &[f64]| v[v.len() / 2];
    println!(
        "p50 us: tract's operators {:.0}, oodmon's kernels {:.0} ({:.2}x faster)",
        p50(&ta),
        p50(&tb),
        p50(&ta) / p50(&tb)
    );
}
