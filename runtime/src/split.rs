//! An encoder cut in two at one tensor, so that two threads can share an inference: the
//! head can run on the thread that reads and preprocesses the camera's frames, the tail on
//! the thread that scores. With inference 75% of a frame, overlapping only the frame side
//! leaves one core mostly idle; a cut near the middle of the model's work lets both cores
//! carry half a frame each (BENCHMARKS.md, "The model cut in two").
//!
//! The cut is a tensor every path from the input to the embedding goes through: between
//! two blocks, or inside a block that has no residual connection, never beside one. Both halves are planned by
//! tract from the same decluttered graph, with oodmon's kernels already in it: the same
//! operators on the same values, so the embedding is the same, bit for bit on x86-64 (the
//! tests compare them).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::Cost;

/// A tensor the whole model's data goes through, and the share of the model's
/// multiply-adds before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub outlet: OutletId,
    /// The node that writes it, by name.
    pub name: String,
    pub shape: Vec<usize>,
    /// Multiply-adds up to and including the node that writes it, as a share of the whole.
    pub head_share: f64,
}

/// Every tensor of `model` (decluttered) that all of its data passes through: at that
/// point in the evaluation order it is the only value still needed later (constants
/// aside, which each half keeps a copy of).
pub fn cuts(model: &TypedModel) -> TractResult<Vec<Cut>> {
    let order = model.eval_order()?;
    let constant = |node: usize| model.node(node).op_is::<Const>();
    let mut last_use: HashMap<OutletId, usize> = HashMap::new();
    for (at, &id) in order.iter().enumerate() {
        for input in &model.node(id).inputs {
            if !constant(input.node) {
                last_use.insert(*input, at);
            }
        }
    }
    for output in model.output_outlets()? {
        last_use.insert(*output, usize::MAX);
    }
    let costs: Vec<f64> = order
        .iter()
        .map(|&id| multiply_adds(model, id))
        .collect::<TractResult<_>>()?;
    let total: f64 = costs.iter().sum();
    if total <= 0.0 {
        return Ok(vec![]);
    }
    let mut live: BTreeSet<OutletId> = BTreeSet::new();
    let mut done = 0.0;
    let mut found = Vec::new();
    for (at, &id) in order.iter().enumerate() {
        live.retain(|outlet| last_use.get(outlet).is_some_and(|&last| last > at));
        if !constant(id) {
            for slot in 0..model.node(id).outputs.len() {
                let outlet = OutletId::new(id, slot);
                if last_use.get(&outlet).is_some_and(|&last| last > at) {
                    live.insert(outlet);
                }
            }
        }
        done += costs[at];
        if live.len() != 1 || done <= 0.0 || done >= total {
            continue;
        }
        let Some(&outlet) = live.first() else {
            continue;
        };
        if model.output_outlets()?.contains(&outlet) || model.input_outlets()?.contains(&outlet) {
            continue;
        }
        let fact = model.outlet_fact(outlet)?;
        let Some(shape) = fact.shape.as_concrete() else {
            continue;
        };
        if fact.datum_type != f32::datum_type() {
            continue;
        }
        found.push(Cut {
            outlet,
            name: model.node(outlet.node).name.clone(),
            shape: shape.to_vec(),
            head_share: done / total,
        });
    }
    Ok(found)
}

/// The multiply-adds a node reports (0 for those that report none).
fn multiply_adds(model: &TypedModel, id: usize) -> TractResult<f64> {
    let node = model.node(id);
    let inputs = model.node_input_facts(id)?;
    let mut sum = 0.0;
    for (cost, count) in node.op.cost(&inputs)? {
        if let (Cost::FMA(_), Ok(n)) = (cost, count.to_i64()) {
            sum += n as f64;
        }
    }
    Ok(sum)
}

/// The cut whose share of the work before it is nearest to `head_share`.
pub fn nearest(cuts: &[Cut], head_share: f64) -> Option<&Cut> {
    cuts.iter().min_by(|a, b| {
        (a.head_share - head_share)
            .abs()
            .total_cmp(&(b.head_share - head_share).abs())
    })
}

/// The two halves of `model` at `cut`, each optimised into its own plan: the head from
/// the model's input to the cut, the tail from the cut (its new input) to the output.
pub fn halves(
    model: &TypedModel,
    cut: &Cut,
) -> TractResult<(Arc<TypedSimplePlan>, Arc<TypedSimplePlan>)> {
    let mut head = model.clone();
    head.select_output_outlets(&[cut.outlet])?;
    let head = head.into_optimized()?.into_runnable()?;
    let mut tail = model.clone();
    let fact = tail.outlet_fact(cut.outlet)?.without_value();
    let successors = tail.outlet_successors(cut.outlet).to_vec();
    let source = tail.add_source("oodmon_cut", fact)?;
    for inlet in successors {
        tail.add_edge(source, inlet)?;
    }
    tail.set_input_outlets(&[source])?;
    let tail = tail.into_optimized()?.into_runnable()?;
    Ok((head, tail))
}
