//! Running a model as a chain of slices, exactly as separate machines would: after each slice
//! only the tensors crossing its end are kept, and the next slice sees nothing else.

use std::collections::HashMap;

use crate::error::{Context, Result, bail};
use tract_core::prelude::*;

use scission_core::cut::Block;
use scission_core::graph::TensorId;

#[cfg(feature = "onnx")]
use super::Model;
use super::{ModelGraph, Slice};

/// Consecutive slices covering a whole model.
#[derive(Clone, Debug)]
pub struct Pipeline {
    slices: Vec<Slice>,
}

/// Tensors alive between slices, by tensor id.
pub type Activations = HashMap<TensorId, TValue>;

impl Pipeline {
    /// Builds the slices between consecutive `cuts` (ascending positions, 0 and the end
    /// included).
    #[cfg(feature = "onnx")]
    pub fn build(model: &Model, cuts: &[usize]) -> Result<Self> {
        let n = model.summary.len();
        if cuts.first() != Some(&0) || cuts.last() != Some(&n) || cuts.windows(2).any(|w| w[0] >= w[1]) {
            bail!("cuts {cuts:?} must rise strictly from 0 to {n}");
        }
        let slices = scission_core::cut::blocks(cuts).into_iter().map(|b| Slice::build(model, b)).collect::<Result<_>>()?;
        Ok(Self { slices })
    }

    /// The slices, in order.
    pub fn slices(&self) -> &[Slice] {
        &self.slices
    }

    /// Runs every slice in turn on the graph inputs and returns the graph outputs.
    pub fn run(&self, model: &ModelGraph, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let mut live = graph_inputs(model, inputs)?;
        for slice in &self.slices {
            live = run_slice(model, slice, live)?;
        }
        collect(&live, &model.summary.outputs, "graph output", model)
    }
}

/// Pairs the graph inputs with their tensor ids.
pub fn graph_inputs(model: &ModelGraph, inputs: TVec<TValue>) -> Result<Activations> {
    let expected = model.summary.inputs.len();
    if inputs.len() != expected {
        bail!("the model takes {expected} input(s), got {}", inputs.len());
    }
    Ok(model.summary.inputs.iter().copied().zip(inputs).collect())
}

/// Runs `slice` on the tensors in `live`, then keeps only what crosses its end.
pub fn run_slice(model: &ModelGraph, slice: &Slice, live: Activations) -> Result<Activations> {
    let inputs = collect(&live, &slice.io.inputs, "slice input", model)?;
    let outputs = slice.run(inputs).with_context(|| block_label(slice.block))?;
    Ok(advance(model, slice, live, outputs))
}

/// Adds a slice's `outputs` to `live` and keeps only the tensors crossing the slice's end: what
/// the next machine receives.
pub fn advance(model: &ModelGraph, slice: &Slice, live: Activations, outputs: TVec<TValue>) -> Activations {
    advance_past(model, slice.block, &slice.io.outputs, live, outputs)
}

/// Adds the `outputs` (tensors `ids`) of a slice over `block` to `live` and keeps only the
/// tensors crossing the block's end.
pub fn advance_past(model: &ModelGraph, block: Block, ids: &[TensorId], mut live: Activations, outputs: TVec<TValue>) -> Activations {
    live.extend(ids.iter().copied().zip(outputs));
    let crossing = model.cuts.crossing(block.end);
    live.retain(|t, _| crossing.contains(t));
    live
}

/// Largest absolute difference between two f32 tensors of the same shape.
pub fn max_abs_diff(a: &TValue, b: &TValue) -> Result<f32> {
    if a.shape() != b.shape() {
        crate::error::bail!("shapes differ: {:?} and {:?}", a.shape(), b.shape());
    }
    let (a, b) = (a.try_as_plain_ram()?.as_slice::<f32>()?, b.try_as_plain_ram()?.as_slice::<f32>()?);
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}

/// Picks `ids` out of `live`, in order.
pub fn collect(live: &Activations, ids: &[TensorId], what: &str, model: &ModelGraph) -> Result<TVec<TValue>> {
    ids.iter().map(|t| live.get(t).cloned().with_context(|| format!("{what} '{}' is missing", model.summary.tensors[*t].name))).collect()
}

fn block_label(block: Block) -> String {
    format!("running slice [{}, {})", block.start, block.end)
}
