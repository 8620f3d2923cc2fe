//! Per-block benchmarking: real activations flow block to block, each block is timed alone
//! under a [`Budget`], and the unsplit model is timed the same way for comparison.

use crate::error::{Context, Result};
use embassy_time::Instant;
use tract_onnx::prelude::*;

use crate::host::machine_facts;
use crate::pipeline::{advance, collect, graph_inputs};
use crate::{Model, Slice, input::synthetic_inputs, with_threads};
use scission_core::cut::{self, Block};
use scission_core::profile::{BlockProfile, CutProfile, ModelFacts, PROFILE_FORMAT, PROFILE_VERSION, Profile, TierKind};
use scission_core::stats::Summary;
use scission_core::timing::{Budget, measure};

/// What to benchmark and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Repetition budget per block (and for the whole model).
    pub budget: Budget,
    /// Largest number of tensors allowed to cross a cut point.
    pub max_crossing: usize,
    /// Engine threads.
    pub threads: usize,
    /// Machine name written in the profile.
    pub machine: String,
    /// Tier written in the profile.
    pub tier: TierKind,
    /// Seed of the synthetic input.
    pub seed: u64,
}

/// Where a benchmark reports its progress: one step for the unsplit model, then one per block.
/// The binaries draw a bar; [`Silent`] shows nothing.
pub trait Progress: Sync {
    /// The benchmark will take `steps` steps.
    fn start(&self, _steps: u64) {}
    /// The next step, named `label`, begins.
    fn begin(&self, _label: &str) {}
    /// A step finished.
    fn advance(&self) {}
    /// The benchmark is over.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
pub struct Silent;

impl Progress for Silent {}

/// Benchmarks every block of `model` on this machine and returns its profile.
pub fn benchmark(model: &Model, options: &BenchOptions, bar: &dyn Progress) -> Result<Profile> {
    let started = Instant::now();
    let points = model.cuts.cut_points(options.max_crossing);
    let blocks = cut::blocks(&points);
    bar.start(blocks.len() as u64 + 1);
    let (whole_model, block_profiles) = with_threads(options.threads, || -> Result<_> {
        let inputs = synthetic_inputs(model, options.seed)?;
        bar.begin("unsplit model");
        let whole_model = time_whole(model, options.budget, &inputs)?;
        bar.advance();
        let blocks = time_blocks(model, options.budget, &blocks, inputs, bar)?;
        Ok((whole_model, blocks))
    })?;
    bar.finish();
    let sum_of_blocks_ns: u64 = block_profiles.iter().map(|b| b.time.median_ns).sum();
    Ok(Profile {
        format: PROFILE_FORMAT.into(),
        version: PROFILE_VERSION,
        model: ModelFacts {
            name: model.name.clone(),
            sha256: model.sha256.clone(),
            input_shapes: model.input_shapes(),
            nodes: model.summary.len(),
        },
        machine: machine_facts(&options.machine, options.tier, options.threads),
        max_crossing: options.max_crossing,
        cuts: points.iter().map(|&k| cut_profile(model, k)).collect(),
        blocks: block_profiles,
        sum_over_whole: sum_of_blocks_ns as f64 / whole_model.median_ns.max(1) as f64,
        whole_model,
        sum_of_blocks_ns,
        bench_seconds: started.elapsed().as_micros() as f64 * 1e-6,
    })
}

fn time_whole(model: &Model, budget: Budget, inputs: &TVec<TValue>) -> Result<Summary> {
    let mut state = model.whole()?.spawn()?;
    let samples = measure(budget, || state.run(inputs.clone()).map(drop)).context("running the unsplit model")?;
    Summary::of(&samples).context("the budget allowed no timed run")
}

fn time_blocks(model: &Model, budget: Budget, blocks: &[Block], inputs: TVec<TValue>, bar: &dyn Progress) -> Result<Vec<BlockProfile>> {
    let mut live = graph_inputs(model, inputs)?;
    let mut profiles = Vec::with_capacity(blocks.len());
    for &block in blocks {
        bar.begin(&format!("[{}, {})", block.start, block.end));
        let slice = Slice::build(model, block)?;
        let inputs = collect(&live, &slice.io.inputs, "block input", model)?;
        let mut state = slice.spawn()?;
        let mut outputs = TVec::new();
        let samples = measure(budget, || {
            outputs = state.run(inputs.clone())?;
            Ok::<_, crate::error::EngineError>(())
        })
        .with_context(|| format!("running block [{}, {})", block.start, block.end))?;
        live = advance(model, &slice, live, outputs);
        profiles.push(block_profile(model, block, Summary::of(&samples).context("the budget allowed no timed run")?));
        bar.advance();
    }
    Ok(profiles)
}

fn block_profile(model: &Model, block: Block, time: Summary) -> BlockProfile {
    let nodes = &model.summary.nodes;
    BlockProfile {
        range: block,
        first_node: nodes[block.start].name.clone(),
        last_node: nodes[block.end - 1].name.clone(),
        time,
        weight_bytes: model.summary.weight_bytes(block.start, block.end),
        activation_bytes: model.cuts.bytes(block.start) + model.cuts.bytes(block.end),
    }
}

fn cut_profile(model: &Model, position: usize) -> CutProfile {
    let tensors = model.cuts.crossing(position).iter().map(|&t| model.summary.tensors[t].name.clone()).collect();
    CutProfile { position, bytes: model.cuts.bytes(position), tensors }
}
