//! Building a runnable sub-model for a node range `[a, b)` of a loaded model.
//!
//! The slice gets one source per tensor it reads from outside, copies of the constants its
//! nodes read, and the nodes themselves, rewired with `wire_node` (which re-derives every
//! output fact, so a wrong rewiring fails loudly). It is then optimised on its own.

use crate::error::{Context, Result, bail};
use tract_core::prelude::*;

use scission_core::cut::{Block, SliceIo};

/// A runnable slice of a model.
#[derive(Clone, Debug)]
pub struct Slice {
    /// Node range.
    pub block: Block,
    /// Tensors read and produced, in the order of the plan's inputs and outputs.
    pub io: SliceIo,
    plan: Arc<TypedRunnableModel>,
    states: StatePool,
}

/// Execution states a slice keeps between runs, at most this many (one per runner at once).
pub const KEPT_STATES: usize = 4;

/// Execution states kept between runs: a run takes one (or starts one) and gives it back, so
/// its operators' scratch space is reused, as the benchmark's timed runs reuse theirs (a new
/// state each run was 4-11 % slower on the zoo's models: `--example engine_vs_ort`).
#[derive(Clone, Default)]
struct StatePool(Arc<std::sync::Mutex<Vec<TypedSimpleState>>>);

impl StatePool {
    fn take(&self) -> Option<TypedSimpleState> {
        self.0.lock().ok()?.pop()
    }

    fn give_back(&self, state: TypedSimpleState) {
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < KEPT_STATES
        {
            kept.push(state);
        }
    }
}

impl std::fmt::Debug for StatePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().map_or(0, |kept| kept.len());
        write!(f, "StatePool({kept} kept)")
    }
}

impl Slice {
    /// Builds and optimises the slice `block` of `model`.
    #[cfg(feature = "onnx")]
    pub fn build(model: &crate::Model, block: Block) -> Result<Self> {
        if block.start >= block.end || block.end > model.summary.len() {
            bail!("invalid slice [{}, {}) of a model with {} nodes", block.start, block.end, model.summary.len());
        }
        let io = SliceIo::new(&model.summary, &model.cuts, block);
        let sub = extract(model, block, &io)?;
        Self::optimise(block, io, sub)
    }

    /// Wraps an already optimised graph.
    pub(crate) fn from_optimised(block: Block, io: SliceIo, optimised: TypedModel) -> Result<Self> {
        let plan = optimised.into_runnable().with_context(|| format!("cannot prepare slice [{}, {})", block.start, block.end))?;
        Ok(Self { block, io, plan, states: StatePool::default() })
    }

    /// Optimises `sub`, the extracted (decluttered) graph of `block` with interface `io`.
    #[cfg(feature = "onnx")]
    pub(crate) fn optimise(block: Block, io: SliceIo, sub: TypedModel) -> Result<Self> {
        let plan = sub
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .with_context(|| format!("cannot optimise slice [{}, {})", block.start, block.end))?;
        Ok(Self { block, io, plan, states: StatePool::default() })
    }

    /// A fresh execution state; keep one per worker and reuse it across runs.
    pub fn spawn(&self) -> Result<TypedSimpleState> {
        Ok(self.plan.spawn()?)
    }

    /// Deterministic inputs of the slice's input types and shapes (see
    /// [`synthetic_inputs`](crate::input::synthetic_inputs)).
    pub fn synthetic_inputs(&self, seed: u64) -> Result<TVec<TValue>> {
        let mut rng = scission_core::rng::WeightRng::new(seed);
        self.input_types()?
            .into_iter()
            .map(|(name, datum_type, shape)| crate::input::synthetic_tensor(&mut rng, datum_type, &shape, &name))
            .collect()
    }

    /// Each input's name, type and concrete shape, in the order of the plan's inputs.
    pub fn input_types(&self) -> Result<Vec<(String, DatumType, Vec<usize>)>> {
        let model = self.plan.model();
        let mut types = Vec::new();
        for (ix, outlet) in model.input_outlets()?.iter().enumerate() {
            let fact = model.outlet_fact(*outlet)?;
            let Some(shape) = fact.shape.as_concrete() else { bail!("slice input {ix} has a symbolic shape") };
            types.push((model.node(outlet.node).name.clone(), fact.datum_type, shape.to_vec()));
        }
        Ok(types)
    }

    /// Runs the slice on `inputs` (ordered as `io.inputs`): once, or as many times as this
    /// process's emulated slowdown says ([`crate::slower`]).
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        crate::slower::repeated(inputs, |inputs| self.run_once(inputs))
    }

    /// Runs the slice once on `inputs`, whatever the emulated slowdown, on a kept execution
    /// state (a state whose run failed is dropped, not kept).
    pub fn run_once(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        let mut state = match self.states.take() {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(inputs)?;
        self.states.give_back(state);
        Ok(outputs)
    }
}

#[cfg(feature = "onnx")]
pub(crate) use cut_out::{extract, extract_nodes};

/// Cutting a slice out of a whole model (where the engine reads ONNX).
#[cfg(feature = "onnx")]
mod cut_out {
    use std::collections::HashMap;

    use crate::Model;
    use crate::error::{Context, Result, bail};
    use scission_core::cut::{Block, SliceIo};
    use scission_core::graph::TensorId;
    use tract_core::ops::konst::Const;
    use tract_core::prelude::*;

    /// The decluttered graph of `block` alone: a source per tensor of `io.inputs`, the constants
    /// its nodes read, its nodes, and `io.outputs` as outputs.
    pub(crate) fn extract(model: &Model, block: Block, io: &SliceIo) -> Result<TypedModel> {
        let named = |t: TensorId| {
            let outlet = model.outlet(t)?;
            let fact = model.typed.outlet_fact(outlet)?;
            Ok((outlet, format!("scission.input.{t}"), TypedFact::dt_shape(fact.datum_type, fact.shape.clone())))
        };
        let inputs = io.inputs.iter().map(|&t| named(t)).collect::<Result<Vec<_>>>()?;
        let outputs =
            io.outputs.iter().map(|&t| Ok((model.outlet(t)?, model.summary.tensors[t].name.clone()))).collect::<Result<Vec<_>>>()?;
        extract_nodes(&model.typed, &model.node_ids[block.start..block.end], &inputs, &outputs)
            .with_context(|| format!("cannot extract slice [{}, {})", block.start, block.end))
    }

    /// The graph of `nodes` of `source` alone: a source per outlet of `inputs` (with the name
    /// and fact given), the constants the nodes read, the nodes in the order given (their facts
    /// derived again from the inputs'), and `outputs` (each with a name for errors) as outputs.
    pub(crate) fn extract_nodes(
        source: &TypedModel,
        nodes: &[usize],
        inputs: &[(OutletId, String, TypedFact)],
        outputs: &[(OutletId, String)],
    ) -> Result<TypedModel> {
        let mut sub = TypedModel { symbols: source.symbols.clone(), ..TypedModel::default() };
        let mut wired: HashMap<OutletId, OutletId> = HashMap::new();
        for (outlet, name, fact) in inputs {
            wired.insert(*outlet, sub.add_source(name.clone(), fact.clone())?);
        }
        for &node_id in nodes {
            let node = source.node(node_id);
            let mut wires = TVec::new();
            for input in &node.inputs {
                wires.push(wire_input(source, &mut sub, &mut wired, *input, &node.name)?);
            }
            let produced = sub.wire_node(&node.name, node.op.clone(), &wires)?;
            for (slot, outlet) in produced.into_iter().enumerate() {
                wired.insert(OutletId::new(node_id, slot), outlet);
            }
        }
        let outlets = outputs
            .iter()
            .map(|(outlet, name)| wired.get(outlet).copied().with_context(|| format!("slice output '{name}' was not produced")))
            .collect::<Result<Vec<_>>>()?;
        sub.select_output_outlets(&outlets)?;
        Ok(sub)
    }

    fn wire_input(
        source: &TypedModel,
        sub: &mut TypedModel,
        wired: &mut HashMap<OutletId, OutletId>,
        input: OutletId,
        reader: &str,
    ) -> Result<OutletId> {
        if let Some(&w) = wired.get(&input) {
            return Ok(w);
        }
        let producer = source.node(input.node);
        if !producer.op_is::<Const>() {
            bail!("node '{reader}' reads '{}', which is neither a slice input nor computed inside the slice", producer.name);
        }
        let w = sub.wire_node(&producer.name, producer.op.clone(), &[])?[0];
        wired.insert(input, w);
        Ok(w)
    }
}
