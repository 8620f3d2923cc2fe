//! A node of the cluster: the model it serves slices of (the whole model, or only slice
//! artifacts), its tier, and a bounded cache of built slices.

use std::sync::{Arc, Mutex};

use crate::error::{Context, Result, bail};
use scission_engine::tract::prelude::*;

use scission_core::cut::Block;
use scission_core::graph::TensorId;
#[cfg(feature = "onnx")]
use scission_engine::Model;
use scission_engine::artifact::ArtifactDir;
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
}

/// Most slices kept built at once by default; the least recently used goes first.
pub const MAX_CACHED_SLICES: usize = 32;

/// Values by node range, most recently used last (built slices here, artifacts written for
/// peers in the server).
pub(crate) struct RecentlyUsed<V> {
    entries: Vec<(Block, V)>,
}

impl<V: Clone> RecentlyUsed<V> {
    pub(crate) fn new() -> Self {
        Self { entries: Vec::new() }
    }

    /// The value of `block`, now the most recently used.
    pub(crate) fn get(&mut self, block: Block) -> Option<V> {
        let at = self.entries.iter().position(|(b, _)| *b == block)?;
        let entry = self.entries.remove(at);
        let value = entry.1.clone();
        self.entries.push(entry);
        Some(value)
    }

    /// Adds `value` for `block`, first dropping the least recently used entries while
    /// `too_full(entries)` says there is no room.
    pub(crate) fn insert(&mut self, block: Block, value: V, too_full: impl Fn(&[(Block, V)]) -> bool) {
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
}

impl Node {
    /// A node running slices from `source` (a loaded [`Model`] converts into one).
    pub fn new(source: impl Into<Slices>, tier: u8, threads: usize) -> Result<Self> {
        let source = source.into();
        let sha256 = scission_core::profile::parse_sha256(&source.graph().sha256)?;
        let slices = Mutex::new(SliceCache { recent: RecentlyUsed::new(), capacity: MAX_CACHED_SLICES });
        Ok(Self { sha256, tier, threads, source, slices })
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
        if let Some(s) = self.slices.lock().map_err(|_| crate::error::error!("slice cache poisoned"))?.recent.get(block) {
            return Ok(s);
        }
        let slice = Arc::new(match &self.source {
            #[cfg(feature = "onnx")]
            Slices::Whole(model) => Slice::build(model, block)?,
            Slices::Artifacts(dir) => dir.load(block)?,
        });
        let mut cache = self.slices.lock().map_err(|_| crate::error::error!("slice cache poisoned"))?;
        let capacity = cache.capacity;
        cache.recent.insert(block, slice.clone(), |entries| entries.len() >= capacity);
        Ok(slice)
    }

    /// Runs stage `block` on `live` (the tensors crossing its start) and returns the tensors
    /// crossing its end, with the compute time in nanoseconds.
    pub fn run_stage(&self, block: Block, live: Activations) -> Result<(Activations, u64)> {
        self.check_stage_inputs(block, &live)?;
        let slice = self.slice(block)?;
        let inputs = collect(&live, &slice.io.inputs, "stage input", self.graph())?;
        let started = std::time::Instant::now();
        let outputs =
            with_threads(self.threads, || slice.run(inputs)).with_context(|| format!("running stage [{}, {})", block.start, block.end))?;
        let compute_ns = started.elapsed().as_nanos() as u64;
        Ok((advance(self.graph(), &slice, live, outputs), compute_ns))
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
