//! The tensors an encoder can be cut at for two threads, with the share of its
//! multiply-adds before each and the time of each half (one thread, medians).
//!
//! `cargo run --release -p oodmon-runtime --example cuts -- encoder.onnx`

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use oodmon_runtime::Encoder;
use std::path::Path;
use std::time::Instant;

fn median_us(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..220)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e6
        })
        .skip(20)
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let whole = Encoder::load(Path::new(&path)).unwrap();
    let x: Vec<f32> = (0..whole.input_len())
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut w = whole.session().unwrap();
    println!(
        "whole: {:.0} us",
        median_us(|| {
            w.embed(&x).unwrap();
        })
    );
    let mut last = f64::NAN;
    for share in (1..20).map(|i| i as f64 / 20.0) {
        let split = whole.split(share).unwrap().unwrap();
        if split.cut.head_share == last {
            continue;
        }
        last = split.cut.head_share;
        let (mut h, mut t) = (split.head.session().unwrap(), split.tail.session().unwrap());
        let middle = h.embed(&x).unwrap().to_vec();
        let head = median_us(|| {
            h.embed(&x).unwrap();
        });
        let tail = median_us(|| {
            t.embed(&middle).unwrap();
        });
        println!(
            "{:>5.1}% of the multiply-adds before {} {:?}: head {head:.0} us, tail {tail:.0} us",
            100.0 * split.cut.head_share,
            split.cut.name,
            split.cut.shape
        );
    }
}
