//! Loading an ONNX model: parse, pin input shapes, type, declutter portably, summarise.

use std::path::Path;

use crate::error::{Context, Result, bail};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::model_graph::{LoadOptions, ModelGraph, sha256_hex};
use super::summary::{Summarised, summarise};

/// A loaded model: its [`ModelGraph`] (reached through `Deref`: `model.summary`) and the typed
/// tract graph it was made from, which slices are cut out of.
#[derive(Clone, Debug)]
pub struct Model {
    /// Name, hash, summary and cuts.
    pub graph: ModelGraph,
    /// The typed graph after `declutter_portable` (the same on every architecture);
    /// positions refer to its compute nodes.
    pub typed: TypedModel,
    /// For each tensor id, its outlet in `typed`.
    pub(crate) outlets: Vec<OutletId>,
    /// For each position, the node id in `typed`.
    pub(crate) node_ids: Vec<usize>,
    /// Whether the export's batch dimension is symbolic (pinned to 1 here): slices may then
    /// run several requests at once (see [`crate::batch`]).
    pub(crate) batchable: bool,
}

impl Model {
    /// Loads an ONNX file. External data is resolved next to the file.
    pub fn load_path(path: &Path, options: &LoadOptions) -> Result<Self> {
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let started = std::time::Instant::now();
        // Hashed in a stream (the file is not held twice) on a thread of its own while tract
        // parses it: the hash costs a tenth of the load, and most boards have a second core.
        let (sha256, inference) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| crate::artifact::file_sha256(path));
            let inference = tract_onnx::onnx().model_for_path(path);
            (hashing.join(), inference)
        });
        let sha256 = sha256.map_err(|_| crate::error::EngineError::Invalid(format!("hashing {} failed", path.display())))??;
        let inference = inference.with_context(|| format!("{} is not a valid ONNX model", path.display()))?;
        tracing::debug!("{name}: parsed and hashed in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        let model = Self::from_inference(name, sha256, inference, options)?;
        tracing::info!("{}: loaded in {:.1} ms", model.name, started.elapsed().as_secs_f64() * 1e3);
        Ok(model)
    }

    /// Loads ONNX bytes held in memory (models without external data).
    pub fn load_bytes(name: &str, bytes: &[u8], options: &LoadOptions) -> Result<Self> {
        let inference = tract_onnx::onnx().model_for_read(&mut &bytes[..]).with_context(|| format!("{name} is not a valid ONNX model"))?;
        Self::from_inference(name.to_string(), sha256_hex(bytes), inference, options)
    }

    fn from_inference(name: String, sha256: String, mut inference: InferenceModel, options: &LoadOptions) -> Result<Self> {
        let symbolic_batch = leading_dims_symbolic(&inference)?;
        pin_input_shapes(&mut inference, &options.input_shapes)?;
        if options.input_shapes.is_empty() && symbolic_batch {
            pin_batch_to_one(&mut inference)?;
            tracing::info!("{name}: its batch dimension is symbolic; slices run one request each, or batches where a server batches");
        }
        let batchable = symbolic_batch && batch_of_one(&inference)?;
        let typed = inference.into_typed().and_then(declutter_portable).with_context(|| format!("{name}: tract cannot run this model"))?;
        check_concrete_inputs(&typed, &name)?;
        let Summarised { summary, outlets, node_ids } = summarise(&typed).with_context(|| format!("{name}: cannot analyse the graph"))?;
        let graph = ModelGraph::new(name, sha256, summary)?;
        Ok(Self { graph, typed, outlets, node_ids, batchable })
    }

    /// Whether the model's batch dimension is symbolic, so that slices of it can run several
    /// requests at once (see [`crate::batch`]).
    pub fn batchable(&self) -> bool {
        self.batchable
    }

    /// The typed tract graph's outlet for tensor `t`.
    pub(crate) fn outlet(&self, t: usize) -> Result<OutletId> {
        self.outlets.get(t).copied().with_context(|| format!("{}: no tensor {t}", self.name))
    }

    /// Concrete input shapes.
    pub fn input_shapes(&self) -> Vec<Vec<u64>> {
        self.summary.inputs.iter().map(|&t| self.summary.tensors[t].shape.clone()).collect()
    }

    /// The whole model, optimised and runnable as one plan (the reference the slices must match).
    pub fn whole(&self) -> Result<Arc<TypedRunnableModel>> {
        self.typed.clone().into_optimized()?.into_runnable().context("cannot build the unsplit model")
    }
}

/// tract's declutter without its `ChangeAxes` pass. That pass follows per-architecture kernel
/// preferences (it moves a depthwise conv's channels last where a channels-last kernel exists,
/// as on aarch64), so the tensors between nodes would be laid out differently on an ARM device
/// and an x86 server. Everything else (constant folding, batch-norm folding into convs) stays,
/// so a cut never separates what the unsplit model fuses at this stage, and f32 splits remain
/// bit-exact. Each slice gets the full declutter when it is optimised.
fn declutter_portable(mut model: TypedModel) -> TractResult<TypedModel> {
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    optimizer.passes.retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
    optimizer.optimize(&mut model)?;
    Ok(model)
}

/// Whether every input's leading dimension is symbolic (a dynamic batch) and every other one
/// known or open.
fn leading_dims_symbolic(model: &InferenceModel) -> Result<bool> {
    let inputs = model.input_outlets()?.len();
    if inputs == 0 {
        return Ok(false);
    }
    for ix in 0..inputs {
        let fact = model.input_fact(ix)?;
        let symbolic = fact.shape.dim(0).and_then(|d| d.concretize()).is_some_and(|d| d.to_i64().is_err());
        if !symbolic {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Pins each input's symbolic leading dimension to 1, keeping the rest as the model says, and
/// every shape the export declares in terms of it: torch's dynamo exporter declares inner
/// tensors as `batch,16,32,32`, which would not unify with a batch of 1.
fn pin_batch_to_one(model: &mut InferenceModel) -> Result<()> {
    let one = 1.to_dim();
    let mut batch = std::collections::HashMap::new();
    for ix in 0..model.input_outlets()?.len() {
        let mut fact = model.input_fact(ix)?.clone();
        if let Some(dim) = fact.shape.dim(0).and_then(|d| d.concretize()) {
            batch.extend(dim.symbols().into_iter().map(|s| (s, one.clone())));
        }
        fact.shape.set_dim(0, one.clone());
        model.set_input_fact(ix, fact)?;
    }
    for outlet in model.nodes.iter_mut().flat_map(|node| node.outputs.iter_mut()) {
        let shape = &mut outlet.fact.shape;
        let declared: Vec<(usize, TDim)> = shape
            .dims()
            .enumerate()
            .filter_map(|(i, d)| d.concretize().map(|d| (i, d)))
            .filter(|(_, d)| d.symbols().iter().any(|s| batch.contains_key(s)))
            .collect();
        for (i, dim) in declared {
            shape.set_dim(i, dim.substitute_all(&batch)?);
        }
    }
    Ok(())
}

/// Whether every input is pinned to a concrete shape with a batch of 1.
fn batch_of_one(model: &InferenceModel) -> Result<bool> {
    for ix in 0..model.input_outlets()?.len() {
        match model.input_fact(ix)?.shape.as_concrete_finite()? {
            Some(shape) if shape.first() == Some(&1) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn pin_input_shapes(model: &mut InferenceModel, shapes: &[Vec<usize>]) -> Result<()> {
    let inputs = model.input_outlets()?.len();
    if !shapes.is_empty() && shapes.len() != inputs {
        bail!("the model has {inputs} input(s) but {} input shape(s) were given", shapes.len());
    }
    for (ix, shape) in shapes.iter().enumerate() {
        let dt = model.input_fact(ix)?.datum_type.concretize().unwrap_or(DatumType::F32);
        model.set_input_fact(ix, InferenceFact::dt_shape(dt, shape.as_slice()))?;
    }
    Ok(())
}

fn check_concrete_inputs(model: &TypedModel, name: &str) -> Result<()> {
    for (ix, outlet) in model.input_outlets()?.iter().enumerate() {
        let fact = model.outlet_fact(*outlet)?;
        if fact.shape.as_concrete().is_none() {
            bail!(
                "{name}: input {ix} ('{}') has symbolic shape {:?}; give a concrete one with --input-shape (e.g. 1,3,224,224)",
                model.node(outlet.node).name,
                fact.shape
            );
        }
    }
    Ok(())
}

impl std::ops::Deref for Model {
    type Target = ModelGraph;

    fn deref(&self) -> &ModelGraph {
        &self.graph
    }
}
