//! Running one slice on several requests at once (dynamic batching).
//!
//! A [`BatchedSlice`] of size `k` is the batch-1 slice's own nodes (the same decluttered graph
//! every other slice is cut from) wired again with each input's leading axis set to `k`:
//! `wire_node` re-derives every fact, so an operator that bakes the batch of 1 into its
//! attributes (a reshape to `[1, 2048]`, say) refuses the wiring and the range is reported as
//! not batchable. The graph is then optimised with `k` concrete, as tract does best: a plan
//! with a symbolic batch ran 2 to 5 times slower per request than the batch-1 slice on this
//! machine (`examples/batch_throughput.rs`). Requests are stacked along the leading axis, run
//! once, and split back. Only models exported with a symbolic batch are batched (see
//! [`Model::batchable`]): a fixed batch of 1 is the exporter's word that the graph assumes it.
//!
//! Batched outputs equal the one-by-one outputs up to float rounding, not bit for bit: tract
//! picks kernels by shape, and a larger batch can change a reduction's order.

use crate::Model;
use crate::error::{Context, Result, bail};
use crate::slice::extract_nodes;
use scission_core::cut::{Block, SliceIo};
use tract_core::prelude::*;

/// A slice that runs exactly `size` requests in one pass.
#[derive(Clone, Debug)]
pub struct BatchedSlice {
    /// Node range.
    pub block: Block,
    /// Tensors read and produced, as for the batch-1 [`Slice`](crate::Slice).
    pub io: SliceIo,
    size: usize,
    /// Each input's shape for one request (leading axis 1).
    inputs: Vec<TVec<usize>>,
    plan: Arc<TypedRunnableModel>,
}

impl BatchedSlice {
    /// Cuts `block` out of `model` for batches of exactly `size` (at least 2) requests; an
    /// error when the model or the range does not batch (see the module's doc).
    pub fn build(model: &Model, block: Block, size: usize) -> Result<Self> {
        Self::build_unchecked(model, block, size)
            .with_context(|| format!("slice [{}, {}) cannot run batches of {size}", block.start, block.end))
    }

    fn build_unchecked(model: &Model, block: Block, size: usize) -> Result<Self> {
        if !model.batchable() {
            bail!("{}: the model was exported with a fixed batch", model.name);
        }
        if size < 2 {
            bail!("a batch holds at least 2 requests");
        }
        if block.start >= block.end || block.end > model.summary.len() {
            bail!("invalid slice [{}, {}) of a model with {} nodes", block.start, block.end, model.summary.len());
        }
        let io = SliceIo::new(&model.summary, &model.cuts, block);
        let single = |t: &usize| -> Result<TVec<usize>> {
            let info = &model.summary.tensors[*t];
            let shape = info.shape.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<TVec<usize>>>();
            match shape {
                Some(shape) if shape.first() == Some(&1) => Ok(shape),
                _ => bail!("'{}' has shape {:?}: no batch of 1 on its leading axis", info.name, info.shape),
            }
        };
        let inputs = io.inputs.iter().map(single).collect::<Result<Vec<_>>>()?;
        let outputs = io.outputs.iter().map(single).collect::<Result<Vec<_>>>()?;
        let sources = io
            .inputs
            .iter()
            .zip(&inputs)
            .map(|(&t, shape)| {
                let outlet = model.outlet(t)?;
                let fact = model.typed.outlet_fact(outlet)?;
                Ok((outlet, format!("scission.input.{t}"), TypedFact::dt_shape(fact.datum_type, batched(shape, size))))
            })
            .collect::<Result<Vec<_>>>()?;
        let sinks =
            io.outputs.iter().map(|&t| Ok((model.outlet(t)?, model.summary.tensors[t].name.clone()))).collect::<Result<Vec<_>>>()?;
        let sub = extract_nodes(&model.typed, &model.node_ids[block.start..block.end], &sources, &sinks)?;
        for ((outlet, name), shape) in sub.output_outlets()?.iter().zip(&sinks).map(|(o, (_, n))| (o, n)).zip(&outputs) {
            let fact = sub.outlet_fact(*outlet)?;
            if fact.shape.as_concrete() != Some(batched(shape, size).as_slice()) {
                bail!("'{name}' has shape {:?} in a batch of {size}, {shape:?} alone", fact.shape);
            }
        }
        let plan = sub.into_optimized().and_then(|m| m.into_runnable())?;
        Ok(Self { block, io, size, inputs, plan })
    }

    /// How many requests each run takes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `requests` (exactly [`size`](Self::size) of them, each ordered as `io.inputs` in
    /// the batch-1 shapes) as one batch and returns each request's outputs (ordered as
    /// `io.outputs`).
    pub fn run(&self, requests: &[TVec<TValue>]) -> Result<Vec<TVec<TValue>>> {
        if requests.len() != self.size {
            bail!("a batch of {} requests for a slice built for {}", requests.len(), self.size);
        }
        if let Some(r) = requests.iter().position(|r| r.len() != self.inputs.len()) {
            bail!("request {r} of the batch has {} inputs, the slice takes {}", requests[r].len(), self.inputs.len());
        }
        let mut stacked = TVec::new();
        for (ix, shape) in self.inputs.iter().enumerate() {
            let items = requests.iter().map(|r| checked(&r[ix], shape)).collect::<Result<Vec<_>>>()?;
            stacked.push(Tensor::stack_tensors(0, &items)?.into_tvalue());
        }
        let outputs = crate::slower::repeated(stacked, |stacked| self.plan.run(stacked))?;
        let mut answers: Vec<TVec<TValue>> = vec![TVec::new(); requests.len()];
        for output in &outputs {
            for (r, answer) in answers.iter_mut().enumerate() {
                answer.push(output.slice(0, r, r + 1)?.into_tvalue());
            }
        }
        Ok(answers)
    }
}

/// `shape` with its leading axis (the batch of 1) set to `size`.
fn batched(shape: &[usize], size: usize) -> TVec<usize> {
    std::iter::once(size).chain(shape.iter().skip(1).copied()).collect()
}

/// One request's tensor, checked against the slice's batch-1 shape.
fn checked<'a>(value: &'a TValue, shape: &[usize]) -> Result<&'a Tensor> {
    if value.shape() != shape {
        bail!("a tensor of shape {:?} where the slice takes {shape:?}", value.shape());
    }
    Ok(value)
}
