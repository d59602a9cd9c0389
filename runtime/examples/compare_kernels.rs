//! tract's own operators against oodmon's kernels on one encoder: the embeddings compared
//! on random inputs (value for value for the exact kernels; distance and cosine for the
//! int8 pointwise convolutions), and the time per inference of each plan (one thread,
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
    let plans = [
        ("tract's operators", load(Kernels::Tract)),
        ("oodmon's exact kernels", load(Kernels::Exact)),
        ("oodmon's kernels with int8 pointwise", load(Kernels::Int8)),
    ];
    for (name, e) in &plans {
        println!("{name}: {}", e.own_kernels());
    }
    let mut sessions: Vec<_> = plans.iter().map(|(_, e)| e.session().unwrap()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let n = plans[0].1.input_len();
    let (mut differ, mut max_distance, mut sum_distance, mut min_cosine) =
        (0usize, 0f64, 0f64, 1f64);
    let inputs = 20;
    for _ in 0..inputs {
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.1f32..2.6)).collect();
        let e: Vec<Vec<f32>> = sessions
            .iter_mut()
            .map(|s| s.embed(&x).unwrap().to_vec())
            .collect();
        differ += e[0]
            .iter()
            .zip(&e[1])
            .filter(|(p, q)| p.to_bits() != q.to_bits())
            .count();
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
        };
        let diff: Vec<f32> = e[0].iter().zip(&e[2]).map(|(p, q)| p - q).collect();
        let distance = (dot(&diff, &diff) / dot(&e[0], &e[0])).sqrt();
        let cosine = dot(&e[0], &e[2]) / (dot(&e[0], &e[0]) * dot(&e[2], &e[2])).sqrt();
        max_distance = max_distance.max(distance);
        sum_distance += distance;
        min_cosine = min_cosine.min(cosine);
    }
    println!("exact kernels: values differing in bits from tract's over {inputs} inputs: {differ}");
    println!(
        "int8 pointwise: |difference| / |tract's embedding| mean {:.2e}, max {:.2e}; cosine min {:.6}",
        sum_distance / inputs as f64,
        max_distance,
        min_cosine
    );
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.1f32..2.6)).collect();
    let mut times = vec![Vec::new(); plans.len()];
    for round in 0..runs + 20 {
        for (s, t) in sessions.iter_mut().zip(&mut times) {
            let start = Instant::now();
            s.embed(&x).unwrap();
            if round >= 20 {
                t.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let p50: Vec<f64> = times.iter().map(|t| t[t.len() / 2]).collect();
    for ((name, _), p) in plans.iter().zip(&p50) {
        println!("p50 {p:>6.0} us  {name} ({:.2}x tract's)", p50[0] / p);
    }
}
