//! Where tract spends an encoder's inference time, per optimised node (a tool for the
//! open performance work on x86; see BENCHMARKS.md).
//!
//! `cargo run --release -p oodmon-runtime --example profile_ops -- encoder.onnx` (set
//! `PROFILE_ALL_INFO=1` for every operator's shapes, tract's matmul geometry included)

#![allow(clippy::unwrap_used)]

use oodmon_runtime::Encoder;
use std::collections::HashMap;
use std::time::Instant;
use tract_onnx::prelude::*;
fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).unwrap();
    let enc = Encoder::load(std::path::Path::new(&path)).unwrap();
    let (w, h) = enc.input_size();
    let mut state = enc.plan().unwrap().spawn()?;
    let input: TValue = Tensor::zero::<f32>(&[1, 3, h, w])?.into();
    let all_info = std::env::var_os("PROFILE_ALL_INFO").is_some();
    let mut times: HashMap<String, (u128, usize)> = HashMap::new();
    for round in 0..300 {
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, st, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
            if round >= 50 {
                let e = times
                    .entry(format!(
                        "{} {}{}",
                        node.id,
                        node.op().name(),
                        // oodmon's own operators say their shapes; every operator's
                        // with PROFILE_ALL_INFO=1 (tract's matmuls: m, k, n and kernel)
                        if node.op().name().starts_with("Oodmon") || all_info {
                            format!(" [{}]", node.op().info().unwrap_or_default().join("; "))
                        } else {
                            String::new()
                        }
                    ))
                    .or_default();
                e.0 += t.elapsed().as_nanos();
                e.1 += 1;
            }
            r
        })?;
    }
    let mut v: Vec<_> = times.into_iter().collect();
    v.sort_by_key(|(_, (t, _))| std::cmp::Reverse(*t));
    let total: u128 = v.iter().map(|(_, (t, _))| *t).sum();
    for (name, (t, n)) in v.iter().take(25) {
        println!(
            "{:>8.1} us {:>5.1}%  {name}",
            *t as f64 / *n as f64 / 1000.0,
            100.0 * *t as f64 / total as f64
        );
    }
    println!("total {:.1} us/run", total as f64 / 250.0 / 1000.0);
    // the same time by operator kind
    let mut by_op: HashMap<String, (u128, usize)> = HashMap::new();
    for (name, (t, _)) in &v {
        let op = name.split_once(' ').map_or(name.as_str(), |(_, op)| op);
        let op = op.split_once(" [").map_or(op, |(op, _)| op);
        let e = by_op.entry(op.to_string()).or_default();
        e.0 += t;
        e.1 += 1;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by_key(|(_, (t, _))| std::cmp::Reverse(*t));
    println!("by operator:");
    for (op, (t, nodes)) in by_op {
        println!(
            "{:>8.1} us {:>5.1}%  {op} ({nodes} nodes)",
            t as f64 / 250.0 / 1000.0,
            100.0 * t as f64 / total as f64
        );
    }
    Ok(())
}
