//! A node of the cluster: the model it serves slices of (the whole model, or only slice
//! artifacts), its tier, and a bounded cache of built slices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Context, Result, bail};
use scission_engine::tract::prelude::*;

use scission_core::cut::Block;
use scission_core::graph::TensorId;
#[cfg(feature = "onnx")]
use scission_engine::Model;
use scission_engine::artifact::ArtifactDir;
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
    #[cfg(feature = "onnx")]
    batches: crate::batch::BatchSlices,
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

/// Built slices, and how many may be kept.
struct SliceCache {
    recent: RecentlyUsed<Arc<Slice>>,
    capacity: usize,
    /// Ranges being built now, each behind a gate that whoever else wants it waits at: a
    /// range is built once however many ask for it at once (a request, and the session
    /// preparing the slice its new plan needs).
    building: HashMap<Block, Arc<Mutex<()>>>,
}

impl Node {
    /// A node running slices from `source` (a loaded [`Model`] converts into one).
    pub fn new(source: impl Into<Slices>, tier: u8, threads: usize) -> Result<Self> {
        let source = source.into();
        let sha256 = scission_core::profile::parse_sha256(&source.graph().sha256)?;
        let slices = Mutex::new(SliceCache { recent: RecentlyUsed::new(), capacity: MAX_CACHED_SLICES, building: HashMap::new() });
        Ok(Self {
            sha256,
            tier,
            threads,
            source,
            slices,
            #[cfg(feature = "onnx")]
            batches: crate::batch::BatchSlices::default(),
        })
    }

    /// Keeps at most `capacity` slices built (at least one).
    pub fn with_slice_cache(self, capacity: usize) -> Self {
        if let Ok(mut cache) = self.slices.lock() {
            cache.capacity = capacity.max(1);
        }
        self
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
        if let Some(s) = self.cache()?.recent.get(block) {
            return Ok(s);
        }
        let gate = self.cache()?.building.entry(block).or_default().clone();
        // The gate guards nothing but the build itself: a poisoned one is as good.
        let _building = gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Whoever held the gate before may have built it.
        if let Some(s) = self.cache()?.recent.get(block) {
            return Ok(s);
        }
        let built = match &self.source {
            #[cfg(feature = "onnx")]
            Slices::Whole(model) => Slice::build(model, block),
            Slices::Artifacts(dir) => dir.load(block),
        };
        let mut cache = self.cache()?;
        cache.building.remove(&block);
        let slice = Arc::new(built?);
        let capacity = cache.capacity;
        cache.recent.insert(block, slice.clone(), |entries| entries.len() >= capacity);
        Ok(slice)
    }

    /// Whether the slice of `block` is built and cached (so [`slice`](Self::slice) returns at
    /// once).
    pub fn is_built(&self, block: Block) -> bool {
        self.cache().is_ok_and(|cache| cache.recent.contains(&block))
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
            (Slices::Whole(model), 2..) => {
                let capacity = self.slices.lock().map_or(MAX_CACHED_SLICES, |c| c.capacity);
                self.batches.get(model, block, valid.len(), capacity)
            }
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

    /// Runs `lives` (checked for `slice`'s range) as one batch of `slice`; an engine error
    /// fails every member.
    #[cfg(feature = "onnx")]
    fn run_batched(&self, slice: &scission_engine::batch::BatchedSlice, lives: Vec<Activations>) -> Vec<Result<Activations>> {
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
