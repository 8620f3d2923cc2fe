//! A node of the cluster: the model it serves slices of (the whole model, or only slice
//! artifacts), its tier, and a cache of built slices bounded in count and in bytes.
//!
//! The cache's byte budget follows the core's rules ([`scission_core::memory::slice_kept`],
//! [`slice_build`](scission_core::memory::slice_build)): slices are built one at a time, and
//! before each build the least recently used slices are dropped until what stays, with what
//! the build holds, fits the budget; a slice that cannot fit even alone is refused
//! ([`RuntimeError::OverMemory`]). A dropped slice that a running request still holds is freed
//! when that request ends, so the budget can be passed by at most one slice per worker.

use std::sync::{Arc, Mutex};

use crate::error::{Context, Result, RuntimeError, bail};
use scission_engine::tract::prelude::*;

use scission_core::cut::Block;
use scission_core::graph::TensorId;
use scission_core::memory::{slice_build, slice_kept, slices_to_drop};
#[cfg(feature = "onnx")]
use scission_engine::Model;
use scission_engine::artifact::ArtifactDir;
#[cfg(feature = "onnx")]
use scission_engine::batch::BatchedSlice;
#[cfg(feature = "onnx")]
use scission_engine::pipeline::advance_past;
use scission_engine::pipeline::{Activations, advance, collect};
use scission_engine::{ModelGraph, Slice, with_threads};

/// Where a node's slices come from.
pub enum Slices {
    /// The whole model: any range is cut out of it on first use.
    #[cfg(feature = "onnx")]
    Whole(Model),
    /// Slice artifacts only: a range runs when its artifact is in the directory.
    Artifacts(ArtifactDir),
}

#[cfg(feature = "onnx")]
impl From<Model> for Slices {
    fn from(model: Model) -> Self {
        Slices::Whole(model)
    }
}

impl Slices {
    /// The model the slices belong to.
    pub fn graph(&self) -> &ModelGraph {
        match self {
            #[cfg(feature = "onnx")]
            Slices::Whole(model) => model,
            Slices::Artifacts(dir) => dir.graph(),
        }
    }
}

/// A node serving stages for one tier.
pub struct Node {
    /// SHA-256 of the model file, as bytes.
    pub sha256: [u8; 32],
    /// This node's tier index.
    pub tier: u8,
    /// Engine threads.
    pub threads: usize,
    source: Slices,
    slices: Mutex<SliceCache>,
    /// Held while a slice is built: builds run one at a time, so the budget sees each one's
    /// transient bytes alone, and a range many ask for at once is built once.
    building: Mutex<()>,
    #[cfg(feature = "onnx")]
    batches: BatchSlices,
}

/// Most slices kept built at once by default; the least recently used goes first.
pub const MAX_CACHED_SLICES: usize = 32;

/// Values by node range, most recently used last (built slices here, artifacts written for
/// peers in the server).
pub(crate) struct RecentlyUsed<V, K = Block> {
    entries: Vec<(K, V)>,
}

impl<V, K> Default for RecentlyUsed<V, K> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<V: Clone, K: PartialEq> RecentlyUsed<V, K> {
    pub(crate) fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// The value of `block`, now the most recently used.
    pub(crate) fn get(&mut self, block: K) -> Option<V> {
        let at = self.entries.iter().position(|(b, _)| *b == block)?;
        let entry = self.entries.remove(at);
        let value = entry.1.clone();
        self.entries.push(entry);
        Some(value)
    }

    /// Whether `block` has a value (its place in the order unchanged).
    pub(crate) fn contains(&self, block: &K) -> bool {
        self.entries.iter().any(|(b, _)| b == block)
    }

    /// The values, least recently used first.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Drops the `count` least recently used entries (all of them, if fewer).
    pub(crate) fn drop_oldest(&mut self, count: usize) {
        self.entries.drain(..count.min(self.entries.len()));
    }

    /// Adds `value` for `block`, first dropping the least recently used entries while
    /// `too_full(entries)` says there is no room.
    pub(crate) fn insert(&mut self, block: K, value: V, too_full: impl Fn(&[(K, V)]) -> bool) {
        self.entries.retain(|(b, _)| *b != block);
        while !self.entries.is_empty() && too_full(&self.entries) {
            self.entries.remove(0);
        }
        self.entries.push((block, value));
    }
}

/// A built slice: for one request at a time, or for batches of a size.
#[derive(Clone)]
enum Built {
    One(Arc<Slice>),
    #[cfg(feature = "onnx")]
    Batch(Arc<BatchedSlice>),
}

/// A cached slice and the bytes it is counted as keeping.
#[derive(Clone)]
struct Cached {
    built: Built,
    kept: u64,
}

/// A node range and the batch size its slice runs (1: one request at a time).
type SliceKey = (Block, usize);

/// Built slices, how many may be kept and the bytes they may hold together.
struct SliceCache {
    recent: RecentlyUsed<Cached, SliceKey>,
    capacity: usize,
    budget: u64,
}

impl Node {
    /// A node running slices from `source` (a loaded [`Model`] converts into one).
    pub fn new(source: impl Into<Slices>, tier: u8, threads: usize) -> Result<Self> {
        let source = source.into();
        let sha256 = scission_core::profile::parse_sha256(&source.graph().sha256)?;
        let slices = Mutex::new(SliceCache { recent: RecentlyUsed::new(), capacity: MAX_CACHED_SLICES, budget: u64::MAX });
        Ok(Self {
            sha256,
            tier,
            threads,
            source,
            slices,
            building: Mutex::new(()),
            #[cfg(feature = "onnx")]
            batches: BatchSlices::default(),
        })
    }

    /// Keeps at most `capacity` slices built (at least one).
    pub fn with_slice_cache(self, capacity: usize) -> Self {
        if let Ok(mut cache) = self.slices.lock() {
            cache.capacity = capacity.max(1);
        }
        self
    }

    /// Keeps the built slices within `bytes` together, counting what building one holds (no
    /// limit by default).
    pub fn with_slice_budget(self, bytes: u64) -> Self {
        if let Ok(mut cache) = self.slices.lock() {
            cache.budget = bytes;
        }
        self
    }

    /// The bytes built slices may hold together.
    pub fn slice_budget(&self) -> u64 {
        self.slices.lock().map_or(u64::MAX, |cache| cache.budget)
    }

    /// Whether the slice of `block` can be built within the budget (once older slices are
    /// dropped); [`RuntimeError::OverMemory`] says why not.
    pub fn fits(&self, block: Block) -> Result<()> {
        self.check_range(block)?;
        let need = slice_build(self.weights(block));
        let budget = self.slice_budget();
        slices_to_drop(&[], need, budget).map(drop).map_err(|_| over_memory(block, need, budget))
    }

    /// Bytes of `block`'s weights.
    fn weights(&self, block: Block) -> u64 {
        self.graph().summary.weight_bytes(block.start, block.end)
    }

    /// The model this node serves slices of.
    pub fn graph(&self) -> &ModelGraph {
        self.source.graph()
    }

    /// The whole model, when this node holds it.
    #[cfg(feature = "onnx")]
    pub fn whole_model(&self) -> Option<&Model> {
        match &self.source {
            Slices::Whole(model) => Some(model),
            Slices::Artifacts(_) => None,
        }
    }

    /// The slice artifacts this node runs from, when it holds no whole model.
    pub fn artifacts(&self) -> Option<&ArtifactDir> {
        match &self.source {
            #[cfg(feature = "onnx")]
            Slices::Whole(_) => None,
            Slices::Artifacts(dir) => Some(dir),
        }
    }

    /// Whether this node can run `block` without fetching anything.
    pub fn can_run(&self, block: Block) -> bool {
        match &self.source {
            #[cfg(feature = "onnx")]
            Slices::Whole(_) => true,
            Slices::Artifacts(dir) => dir.has(block),
        }
    }

    /// The slice for `block`, built (or loaded from its artifact) on first use.
    pub fn slice(&self, block: Block) -> Result<Arc<Slice>> {
        self.check_range(block)?;
        let built = self.cached((block, 1), || {
            let slice = match &self.source {
                #[cfg(feature = "onnx")]
                Slices::Whole(model) => Slice::build(model, block),
                Slices::Artifacts(dir) => dir.load(block),
            };
            Ok(Built::One(Arc::new(slice?)))
        })?;
        match built {
            Built::One(slice) => Ok(slice),
            #[cfg(feature = "onnx")]
            Built::Batch(_) => bail!("the slice cache holds a batch plan for [{}, {}) at size 1", block.start, block.end),
        }
    }

    /// The cached slice of `key`, or the one `build` makes, within the cache's count and bytes
    /// (see the module's documentation).
    fn cached(&self, key: SliceKey, build: impl FnOnce() -> Result<Built>) -> Result<Built> {
        if let Some(hit) = self.cache()?.recent.get(key) {
            return Ok(hit.built);
        }
        let weights = self.weights(key.0);
        // The gate guards nothing but the builds themselves: a poisoned one is as good.
        let _building = self.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        {
            let mut cache = self.cache()?;
            // Whoever held the gate before may have built it.
            if let Some(hit) = cache.recent.get(key) {
                return Ok(hit.built);
            }
            let held: Vec<u64> = cache.recent.values().map(|c| c.kept).collect();
            let need = slice_build(weights);
            let budget = cache.budget;
            let drop = slices_to_drop(&held, need, budget).map_err(|_| over_memory(key.0, need, budget))?;
            if drop > 0 {
                tracing::debug!("dropping {drop} built slice(s) to build [{}, {}) within the budget", key.0.start, key.0.end);
            }
            cache.recent.drop_oldest(drop);
        }
        // Weights load faster on huge pages; builds run one at a time, under the gate.
        let built = scission_engine::heap::with_huge_pages(build)?;
        let mut cache = self.cache()?;
        let capacity = cache.capacity;
        cache.recent.insert(key, Cached { built: built.clone(), kept: slice_kept(weights) }, |entries| entries.len() >= capacity);
        Ok(built)
    }

    /// Whether the slice of `block` is built and cached (so [`slice`](Self::slice) returns at
    /// once).
    pub fn is_built(&self, block: Block) -> bool {
        self.cache().is_ok_and(|cache| cache.recent.contains(&(block, 1)))
    }

    fn cache(&self) -> Result<std::sync::MutexGuard<'_, SliceCache>> {
        self.slices.lock().map_err(|_| crate::error::error!("slice cache poisoned"))
    }

    /// Runs stage `block` on `live` (the tensors crossing its start) and returns the tensors
    /// crossing its end, with the compute time in nanoseconds.
    pub fn run_stage(&self, block: Block, live: Activations) -> Result<(Activations, u64)> {
        self.check_stage_inputs(block, &live)?;
        self.run_checked_stage(block, live)
    }

    /// [`run_stage`](Self::run_stage) on inputs already checked against the stage.
    fn run_checked_stage(&self, block: Block, live: Activations) -> Result<(Activations, u64)> {
        let slice = self.slice(block)?;
        let inputs = collect(&live, &slice.io.inputs, "stage input", self.graph())?;
        let started = std::time::Instant::now();
        let outputs =
            with_threads(self.threads, || slice.run(inputs)).with_context(|| format!("running stage [{}, {})", block.start, block.end))?;
        Ok((advance(self.graph(), &slice, live, outputs), elapsed_ns(started)))
    }

    /// Whether requests for `block` may run as batches on this node: it holds the whole model,
    /// the model's batch is symbolic, and the range has not failed to batch.
    #[cfg(feature = "onnx")]
    pub fn may_batch(&self, block: Block) -> bool {
        match &self.source {
            Slices::Whole(model) => self.check_range(block).is_ok() && self.batches.may_batch(model, block),
            Slices::Artifacts(_) => false,
        }
    }

    /// Runs stage `block` for each of `lives` (the tensors crossing its start, one map per
    /// request) and returns each request's tensors crossing the end, or why that request
    /// failed, with the compute time of the whole batch in nanoseconds. The requests whose
    /// inputs check out run as one batch where the range batches; a lone request, or a range
    /// that does not batch, runs each alone on the batch-1 slice. A request with the wrong
    /// tensors fails alone: it never fails the others of its batch.
    #[cfg(feature = "onnx")]
    pub fn run_batch(&self, block: Block, lives: Vec<Activations>) -> (Vec<Result<Activations>>, u64) {
        let started = std::time::Instant::now();
        let mut answers: Vec<Option<Result<Activations>>> = Vec::with_capacity(lives.len());
        let mut valid = Vec::with_capacity(lives.len());
        for (r, live) in lives.into_iter().enumerate() {
            match self.check_stage_inputs(block, &live) {
                Ok(()) => {
                    answers.push(None);
                    valid.push((r, live));
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let batched = match (&self.source, valid.len()) {
            (Slices::Whole(model), 2..) => self.batched(model, block, valid.len()),
            _ => None,
        };
        match batched {
            Some(slice) => {
                let (positions, lives): (Vec<usize>, Vec<Activations>) = valid.into_iter().unzip();
                let results = self.run_batched(&slice, lives);
                for (r, result) in positions.into_iter().zip(results) {
                    answers[r] = Some(result);
                }
            }
            None => {
                for (r, live) in valid {
                    answers[r] = Some(self.run_checked_stage(block, live).map(|(out, _)| out));
                }
            }
        }
        let answers =
            answers.into_iter().map(|a| a.unwrap_or_else(|| Err(crate::error::error!("the batch skipped this request")))).collect();
        (answers, elapsed_ns(started))
    }

    /// The slice running `block` for batches of `size`, cached with the others; `None` when the
    /// range does not batch (remembered, and logged once) or the plan does not fit the budget.
    #[cfg(feature = "onnx")]
    fn batched(&self, model: &Model, block: Block, size: usize) -> Option<Arc<BatchedSlice>> {
        match self.cached((block, size), || Ok(Built::Batch(Arc::new(BatchedSlice::build(model, block, size)?)))) {
            Ok(Built::Batch(slice)) => Some(slice),
            Ok(Built::One(_)) => None,
            Err(e @ RuntimeError::OverMemory { .. }) => {
                tracing::debug!("{e}: the batch's requests run one at a time");
                None
            }
            Err(e) => {
                self.batches.refuse(block, &e);
                None
            }
        }
    }

    /// Runs `lives` (checked for `slice`'s range) as one batch of `slice`; an engine error
    /// fails every member.
    #[cfg(feature = "onnx")]
    fn run_batched(&self, slice: &BatchedSlice, lives: Vec<Activations>) -> Vec<Result<Activations>> {
        let graph = self.graph();
        let block = slice.block;
        let outputs = lives
            .iter()
            .map(|live| collect(live, &slice.io.inputs, "stage input", graph))
            .collect::<std::result::Result<Vec<_>, _>>()
            .and_then(|requests| with_threads(self.threads, || slice.run(&requests)));
        match outputs {
            Ok(outputs) => {
                lives.into_iter().zip(outputs).map(|(live, out)| Ok(advance_past(graph, block, &slice.io.outputs, live, out))).collect()
            }
            Err(e) => {
                let why = format!("running stage [{}, {}) for a batch of {}: {e:#}", block.start, block.end, lives.len());
                lives.iter().map(|_| Err(crate::error::error!("{why}"))).collect()
            }
        }
    }

    fn check_range(&self, block: Block) -> Result<()> {
        let nodes = self.graph().summary.len();
        if block.start >= block.end || block.end > nodes {
            bail!("stage [{}, {}) is outside the model's {nodes} nodes", block.start, block.end);
        }
        Ok(())
    }

    /// Whether `live` holds every tensor crossing into `block`, and nothing else: checked before
    /// any slice is built for it, so a request cannot make a node build slices it cannot feed.
    pub fn check_stage_inputs(&self, block: Block, live: &Activations) -> Result<()> {
        self.check_range(block)?;
        let graph = self.graph();
        let crossing_in = graph.cuts.crossing(block.start);
        if let Some(missing) = crossing_in.iter().find(|t| !live.contains_key(t)) {
            let name = graph.summary.tensors.get(*missing).map_or("?", |t| t.name.as_str());
            bail!("stage [{}, {}) needs tensor '{name}', which the request lacks", block.start, block.end);
        }
        if let Some(extra) = live.keys().find(|t| !crossing_in.contains(t)) {
            bail!("stage [{}, {}) does not take tensor {extra}, which the request carries", block.start, block.end);
        }
        Ok(())
    }

    /// Graph outputs from the final activations.
    pub fn outputs(&self, live: &Activations) -> Result<Vec<(TensorId, TValue)>> {
        self.graph()
            .summary
            .outputs
            .iter()
            .map(|&t| live.get(&t).cloned().map(|v| (t, v)).with_context(|| format!("output {t} missing")))
            .collect()
    }
}

/// Nanoseconds since `started`, saturating.
fn elapsed_ns(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The error for a slice of `block` needing `need` bytes, over `budget`.
fn over_memory(block: Block, need: u64, budget: u64) -> RuntimeError {
    RuntimeError::OverMemory { start: block.start, end: block.end, need, budget }
}

/// The ranges found not to batch: their requests run one at a time from then on (the batched
/// slices themselves live in the node's slice cache, within its budget).
#[cfg(feature = "onnx")]
#[derive(Default)]
pub(crate) struct BatchSlices {
    refused: Mutex<Vec<Block>>,
}

#[cfg(feature = "onnx")]
impl BatchSlices {
    /// Whether `block` of `model` may batch: the model's batch is symbolic and no batch of the
    /// range failed to build.
    pub(crate) fn may_batch(&self, model: &Model, block: Block) -> bool {
        model.batchable() && self.refused.lock().is_ok_and(|refused| !refused.contains(&block))
    }

    /// Remembers that `block` does not batch, and logs why once.
    pub(crate) fn refuse(&self, block: Block, why: &crate::error::RuntimeError) {
        tracing::info!("{why:#}: its requests run one at a time");
        if let Ok(mut refused) = self.refused.lock() {
            refused.push(block);
        }
    }
}
