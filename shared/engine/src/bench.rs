//! Per-block benchmarking, two ways ([`TimingMethod`]): the unsplit model run with a timer around
//! each node, its node times summed per block (one optimised plan, every run prices every
//! block); or each block built as a slice of its own and timed alone on the real activations
//! the blocks before it produced. Both run under a [`Budget`], and both time the unsplit model.

use crate::error::{Context, Result};
use embassy_time::Instant;
use tract_onnx::prelude::*;

use crate::host::machine_facts;
use crate::pipeline::{advance, collect, graph_inputs};
use crate::{Model, Slice, heap, input::synthetic_inputs, with_threads};
use scission_core::attribution::{BlockTimes, NameIndex, block_of};
use scission_core::cut::{self, Block};
use scission_core::profile::{
    BlockMemory, BlockProfile, CutProfile, ModelFacts, PROFILE_FORMAT, PROFILE_VERSION, Profile, RangeProfile, TierKind, TimingMethod,
};
use scission_core::stats::Summary;
use scission_core::timing::{Budget, measure, measure_interleaved, measure_runs};

/// What to benchmark and how.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// How the blocks are timed.
    pub method: TimingMethod,
    /// Repetition budget per block (and for the whole model); with [`TimingMethod::Profile`], for
    /// the profiled runs of the whole model.
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
    /// Which ranges of blocks to time as one slice, besides the blocks.
    pub ranges: Ranges,
    /// Also count each block's heap the way a tier loads and runs it (see [`BlockMemory`]):
    /// one slice artifact written and loaded per block, where the process counts its heap
    /// ([`heap`]). Worth it where memory limits plans: on a device.
    pub memory: bool,
}

/// Ranges of blocks a benchmark also times as one slice. A device always runs a prefix of the
/// model and the last tier a suffix, and a slice fuses what its blocks did apart, so these
/// make the planner's costs the costs of what the tiers will run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ranges {
    /// Every `[0, q)`.
    pub prefixes: bool,
    /// Every `[p, end)`.
    pub suffixes: bool,
}

impl Ranges {
    /// The ranges `tier` can run from an end of the model: a device its prefixes, a cloud its
    /// suffixes, an edge both.
    pub fn for_tier(tier: TierKind) -> Self {
        Self { prefixes: tier != TierKind::Cloud, suffixes: tier != TierKind::Device }
    }

    /// How many ranges of a model of `blocks` blocks this times (the whole model counted once,
    /// and taken from its own timing).
    pub fn count(self, blocks: usize) -> usize {
        let partial = blocks.saturating_sub(1);
        partial * usize::from(self.prefixes) + partial * usize::from(self.suffixes) + usize::from(self.prefixes || self.suffixes)
    }
}

/// Where a benchmark reports its progress: one step for the unsplit model, then one per block
/// and per range timed as one slice.
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
    // One step for the unsplit model, one per range timed as a slice, and one per block
    // timed alone or counted for memory.
    let per_block = options.method == TimingMethod::Blocks || options.memory;
    let steps =
        options.ranges.count(blocks.len()).saturating_sub(1).saturating_add(1).saturating_add(if per_block { blocks.len() } else { 0 });
    bar.start(steps as u64);
    let (whole_model, block_profiles, ranges) = with_threads(options.threads, || -> Result<_> {
        let inputs = synthetic_inputs(model, options.seed)?;
        let (whole_model, block_profiles, mut ranges) = match options.method {
            TimingMethod::Profile => profile_blocks(model, options, &blocks, inputs, bar)?,
            TimingMethod::Blocks => time_each_block(model, options, &blocks, inputs, bar)?,
        };
        if let (Some(first), Some(last)) = (blocks.first(), blocks.last())
            && (options.ranges.prefixes || options.ranges.suffixes)
        {
            let range = Block { start: first.start, end: last.end };
            ranges.push(RangeProfile { first_block: 0, end_block: blocks.len(), range, time: whole_model });
        }
        ranges.sort_by_key(|r| (r.first_block, r.end_block));
        Ok((whole_model, block_profiles, ranges))
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
        ranges,
        messages: None,
        method: Some(options.method),
    })
}

/// What a method measured: the unsplit model, each block, and the ranges timed as one slice.
type Priced = (Summary, Vec<BlockProfile>, Vec<RangeProfile>);

/// [`TimingMethod::Profile`]: the unsplit model's timing and each block's from the same profiled
/// runs, then the ranges asked for (each timed as one slice) and, when asked, each block's heap.
fn profile_blocks(model: &Model, options: &BenchOptions, blocks: &[Block], inputs: TVec<TValue>, bar: &dyn Progress) -> Result<Priced> {
    let (whole_model, times) = profile_whole(model, options.budget, blocks, &inputs, bar)?;
    bar.advance();
    let mut ranges = time_prefixes(model, options, blocks, &inputs, bar)?;
    if options.ranges.suffixes {
        let end = blocks.len();
        let spans: Vec<(usize, usize)> = (1..end).map(|first| (first, end)).collect();
        ranges.extend(time_ordered_spans(model, options.budget, blocks, &spans, inputs.clone(), bar)?);
    }
    let memory = if options.memory { memory_pass(model, blocks, inputs, bar)? } else { vec![None; blocks.len()] };
    let profiles = blocks.iter().zip(times).zip(memory).map(|((&block, time), memory)| block_profile(model, block, time, memory)).collect();
    Ok((whole_model, profiles, ranges))
}

/// Share of a profiled run's time that may go to nodes no block holds before it is worth a
/// warning (sources, and nodes whose names the optimiser made up).
const UNATTRIBUTED_WARNING: f64 = 0.02;

/// Runs the optimised unsplit model under `budget` with a timer around each node: the unsplit
/// model's timing, and each block's from the sum of its nodes in the same runs.
fn profile_whole(
    model: &Model,
    budget: Budget,
    blocks: &[Block],
    inputs: &TVec<TValue>,
    bar: &dyn Progress,
) -> Result<(Summary, Vec<Summary>)> {
    bar.begin("unsplit model: optimising");
    let optimising = std::time::Instant::now();
    let plan = model.whole()?;
    tracing::info!("{}: unsplit model optimised in {:.1} ms", model.name, optimising.elapsed().as_secs_f64() * 1e3);
    let timing = std::time::Instant::now();
    let owners = block_owners(model, plan.model(), blocks);
    let mut state = plan.spawn()?;
    let mut run = 0u32;
    let runs = measure_runs(budget, || -> Result<BlockTimes> {
        run = run.saturating_add(1);
        bar.begin(&format!("unsplit model, node by node: run {run}"));
        let mut times = BlockTimes::new(blocks.len());
        // A slower machine (emulated) does the whole run again: its node times add up.
        crate::slower::repeated(inputs.clone(), |inputs| {
            state.run_plan_with_eval(inputs, |context, op_state, node, node_inputs| {
                let t0 = std::time::Instant::now();
                let outputs = tract_onnx::tract_core::plan::eval(context, op_state, node, node_inputs);
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                times.add(owners.get(node.id).copied().flatten(), ns);
                outputs
            })
        })?;
        Ok(times)
    })
    .context("running the unsplit model, node by node")?;
    tracing::info!("{}: {} timed run(s) and the warm-up in {:.1} ms", model.name, runs.len(), timing.elapsed().as_secs_f64() * 1e3);
    let whole: Vec<u64> = runs.iter().map(|(ns, _)| *ns).collect();
    let whole_model = Summary::of(&whole).context("the budget allowed no timed run")?;
    let (unattributed, total) =
        runs.iter().fold((0u64, 0u64), |(u, t), (_, times)| (u.saturating_add(times.unattributed), t.saturating_add(times.total())));
    if unattributed as f64 > UNATTRIBUTED_WARNING * total as f64 {
        tracing::warn!(
            "{}: {:.1} % of the profiled time went to nodes of no block; the blocks' times leave it out",
            model.name,
            unattributed as f64 * 100.0 / total.max(1) as f64
        );
    }
    let per_block = (0..blocks.len())
        .map(|b| {
            let samples: Vec<u64> = runs.iter().map(|(_, times)| times.blocks.get(b).copied().unwrap_or(0)).collect();
            Summary::of(&samples).context("the budget allowed no timed run")
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((whole_model, per_block))
}

/// For each node of `optimised` (the unsplit model optimised), the block its time goes to:
/// that of the decluttered node it came from ([`NameIndex`]), or `None`.
fn block_owners(model: &Model, optimised: &TypedModel, blocks: &[Block]) -> Vec<Option<usize>> {
    let index = NameIndex::new(model.summary.nodes.iter().map(|n| n.name.as_str()));
    optimised.nodes().iter().map(|node| index.position(&node.name).and_then(|p| block_of(blocks, p))).collect()
}

/// The nodes of the optimised unsplit model whose time [`TimingMethod::Profile`] gives to no block
/// (at `max_crossing`), as `name (operator)`, leaving out sources and constants, which take no
/// time: empty when every node's time lands in a block.
pub fn unattributed_nodes(model: &Model, max_crossing: usize) -> Result<Vec<String>> {
    let blocks = cut::blocks(&model.cuts.cut_points(max_crossing));
    let plan = model.whole()?;
    let optimised = plan.model();
    let owners = block_owners(model, optimised, &blocks);
    Ok(optimised
        .nodes()
        .iter()
        .zip(owners)
        .filter(|(node, owner)| owner.is_none() && !matches!(node.op.name().as_ref(), "Source" | "Const"))
        .map(|(node, _)| format!("{} ({})", node.name, node.op.name()))
        .collect())
}

/// Each block's heap, for [`TimingMethod::Profile`]: the block built as a slice and run on the
/// activations the blocks before it produced (what its run adds, as [`time_block`] counts it,
/// over [`ONE_RUN`]), and loaded from its artifact.
fn memory_pass(model: &Model, blocks: &[Block], inputs: TVec<TValue>, bar: &dyn Progress) -> Result<Vec<Option<BlockMemory>>> {
    let mut live = graph_inputs(model, inputs)?;
    let mut out = Vec::with_capacity(blocks.len());
    for &block in blocks {
        bar.begin(&format!("[{}, {}): memory", block.start, block.end));
        let ran = time_block(model, ONE_RUN, block, &live)?;
        live = advance(model, &ran.slice, live, ran.outputs);
        drop(ran.slice);
        out.push(block_memory(model, block, ran.run_heap)?);
        bar.advance();
    }
    Ok(out)
}

/// A budget of one timed run and no warm-up: a block run for its heap, not its time.
const ONE_RUN: Budget =
    Budget { warmup: 0, min_runs: 1, max_runs: 1, max_time: embassy_time::Duration::from_ticks(0), precision_permille: 0 };

/// [`TimingMethod::Blocks`]: the unsplit model timed, then each block alone (and the ranges asked
/// for, each as one slice).
fn time_each_block(model: &Model, options: &BenchOptions, blocks: &[Block], inputs: TVec<TValue>, bar: &dyn Progress) -> Result<Priced> {
    bar.begin("unsplit model");
    let whole_model = time_whole(model, options.budget, &inputs)?;
    bar.advance();
    let mut ranges = time_prefixes(model, options, blocks, &inputs, bar)?;
    let timed = time_blocks(model, options, blocks, inputs, bar)?;
    ranges.extend(timed.suffixes);
    Ok((whole_model, timed.blocks, ranges))
}

fn time_whole(model: &Model, budget: Budget, inputs: &TVec<TValue>) -> Result<Summary> {
    let mut state = model.whole()?.spawn()?;
    let samples = measure(budget, || crate::slower::repeated(inputs.clone(), |inputs| state.run(inputs)).map(drop))
        .context("running the unsplit model")?;
    Summary::of(&samples).context("the budget allowed no timed run")
}

/// What [`time_blocks`] measured: each block, and the suffixes asked for.
struct Timed {
    blocks: Vec<BlockProfile>,
    suffixes: Vec<RangeProfile>,
}

/// Times each block on the activations the blocks before it produced, and, when asked, each
/// suffix `[i, end)` (`i > 0`) on the same activations.
fn time_blocks(model: &Model, options: &BenchOptions, blocks: &[Block], inputs: TVec<TValue>, bar: &dyn Progress) -> Result<Timed> {
    let mut live = graph_inputs(model, inputs)?;
    let mut timed = Timed { blocks: Vec::with_capacity(blocks.len()), suffixes: Vec::new() };
    let end = blocks.last().map_or(0, |b| b.end);
    for (i, &block) in blocks.iter().enumerate() {
        if options.ranges.suffixes && i > 0 {
            let range = Block { start: block.start, end };
            bar.begin(&format!("[{}, {}) as one slice", range.start, range.end));
            let time = time_slice(model, options.budget, range, &live)?;
            timed.suffixes.push(RangeProfile { first_block: i, end_block: blocks.len(), range, time });
            bar.advance();
        }
        bar.begin(&format!("[{}, {})", block.start, block.end));
        let measured = time_block(model, options.budget, block, &live)?;
        live = advance(model, &measured.slice, live, measured.outputs);
        drop(measured.slice);
        let memory = if options.memory { block_memory(model, block, measured.run_heap)? } else { None };
        timed.blocks.push(block_profile(model, block, measured.time, memory));
        bar.advance();
    }
    Ok(timed)
}

/// Times each prefix `[0, q)` short of the whole model, when asked, on the model's inputs.
fn time_prefixes(
    model: &Model,
    options: &BenchOptions,
    blocks: &[Block],
    inputs: &TVec<TValue>,
    bar: &dyn Progress,
) -> Result<Vec<RangeProfile>> {
    if !options.ranges.prefixes {
        return Ok(Vec::new());
    }
    let live = graph_inputs(model, inputs.clone())?;
    let mut out = Vec::new();
    for (i, block) in blocks.iter().enumerate().take(blocks.len().saturating_sub(1)) {
        let range = Block { start: blocks[0].start, end: block.end };
        bar.begin(&format!("[{}, {}) as one slice", range.start, range.end));
        let time = time_slice(model, options.budget, range, &live)?;
        out.push(RangeProfile { first_block: 0, end_block: i + 1, range, time });
        bar.advance();
    }
    Ok(out)
}

/// Times each range of blocks in `spans` (`(first block, end block)` indices into the profile's
/// blocks) as one slice, on the activations the blocks before it produce from the benchmark's
/// input: a verification pass that adds to an existing profile what its plans will run. The
/// ranges are timed (and returned) in order of their first block, so the activations only
/// move forward, each stretch of the model run once.
pub fn time_spans(
    model: &Model,
    options: &BenchOptions,
    profile: &Profile,
    spans: &[(usize, usize)],
    bar: &dyn Progress,
) -> Result<Vec<RangeProfile>> {
    if profile.model.sha256 != model.sha256 {
        scission_core::bail!("the profile is of model {}, not of {} ({})", profile.model.name, model.name, model.sha256);
    }
    let blocks: Vec<Block> = profile.blocks.iter().map(|b| b.range).collect();
    bar.start(spans.len() as u64);
    let ranges = with_threads(options.threads, || {
        time_ordered_spans(model, options.budget, &blocks, spans, synthetic_inputs(model, options.seed)?, bar)
    })?;
    bar.finish();
    Ok(ranges)
}

/// Most ranges built at once to be timed side by side (each holds its own packed weights).
const SPANS_AT_ONCE: usize = 8;

/// Times each span of `blocks` (`(first block, end block)`) as one slice on the activations
/// the blocks before it produce from `inputs`: up to [`SPANS_AT_ONCE`] at a time, side by
/// side ([`measure_interleaved`]), so ranges a planner will choose between are timed on the
/// same machine and not one in a fast phase and the next in a slow one. Returned in order of
/// the first block.
fn time_ordered_spans(
    model: &Model,
    budget: Budget,
    blocks: &[Block],
    spans: &[(usize, usize)],
    inputs: TVec<TValue>,
    bar: &dyn Progress,
) -> Result<Vec<RangeProfile>> {
    let mut ordered = spans.to_vec();
    ordered.sort_unstable();
    ordered.dedup();
    let live = graph_inputs(model, inputs)?;
    let mut out = Vec::with_capacity(ordered.len());
    for group in ordered.chunks(SPANS_AT_ONCE) {
        let (first, last) = (group[0], group[group.len() - 1]);
        bar.begin(&format!("blocks {}-{} .. {}-{}, side by side", first.0, first.1.saturating_sub(1), last.0, last.1.saturating_sub(1)));
        let mut timer = SpanTimer::on(model, blocks, group, live.clone())?;
        let samples = measure_interleaved(budget, timer.spans.len(), |i| timer.run(i))?;
        for (span, samples) in timer.spans.iter().zip(samples) {
            let time = Summary::of(&samples).context("the budget allowed no timed run")?;
            out.push(RangeProfile { first_block: span.blocks.0, end_block: span.blocks.1, range: span.range, time });
            bar.advance();
        }
    }
    Ok(out)
}

/// Ranges of a model built once as one slice each, on the activations that reach them from a
/// synthetic input, and timed one run at a time: for timing them between other work (a
/// service's requests, so that both see the same machine), where [`time_spans`] times each
/// back to back. Runs on the caller's thread with the caller's engine threads.
pub struct SpanTimer {
    spans: Vec<TimedSpan>,
}

/// One range of a [`SpanTimer`], ready to run.
struct TimedSpan {
    blocks: (usize, usize),
    range: Block,
    state: TypedSimpleState,
    inputs: TVec<TValue>,
}

impl SpanTimer {
    /// Builds each span of `blocks` (`(first block, end block)`) as one slice, with the
    /// activations the blocks before it produce from the synthetic input of `seed`.
    pub fn new(model: &Model, blocks: &[Block], spans: &[(usize, usize)], seed: u64) -> Result<Self> {
        Self::on(model, blocks, spans, graph_inputs(model, synthetic_inputs(model, seed)?)?)
    }

    /// [`Self::new`] on the model's inputs `live`.
    fn on(model: &Model, blocks: &[Block], spans: &[(usize, usize)], mut live: crate::pipeline::Activations) -> Result<Self> {
        let mut ordered = spans.to_vec();
        ordered.sort_unstable();
        ordered.dedup();
        let mut at = 0;
        let mut built = Vec::with_capacity(ordered.len());
        for (first, end) in ordered {
            let range = node_range(blocks, first, end)?;
            if range.start > at {
                live = advance_to(model, at, range.start, live)?;
                at = range.start;
            }
            let slice = Slice::build(model, range)?;
            let inputs = collect(&live, &slice.io.inputs, "span input", model)?;
            built.push(TimedSpan { blocks: (first, end), range, state: slice.spawn()?, inputs });
        }
        Ok(Self { spans: built })
    }

    /// Runs span `(first block, end block)` once (as many times as this thread's emulated
    /// slowdown says, see [`crate::slower`]) and returns its wall time in nanoseconds.
    pub fn time(&mut self, span: (usize, usize)) -> Result<u64> {
        let Some(index) = self.spans.iter().position(|s| s.blocks == span) else {
            scission_core::bail!("blocks {}-{} were not prepared for timing", span.0, span.1);
        };
        let started = std::time::Instant::now();
        self.run(index)?;
        Ok(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs the `index`th span (in order of first block) as [`Self::time`] does, untimed.
    fn run(&mut self, index: usize) -> Result<()> {
        let timed = self.spans.get_mut(index).context("no such span")?;
        let state = &mut timed.state;
        drop(crate::slower::repeated(timed.inputs.clone(), |inputs| state.run(inputs))?);
        Ok(())
    }
}

/// The node range of blocks `[first, end)`.
fn node_range(blocks: &[Block], first: usize, end: usize) -> Result<Block> {
    let (Some(a), Some(b)) = (blocks.get(first), end.checked_sub(1).and_then(|e| blocks.get(e))) else {
        scission_core::bail!("blocks {first}-{end} are not within the profile's {} blocks", blocks.len());
    };
    if first >= end {
        scission_core::bail!("blocks {first}-{end} hold no block");
    }
    Ok(Block { start: a.start, end: b.end })
}

/// The activations crossing node boundary `to`, from those crossing `from` (`live`).
fn advance_to(model: &Model, from: usize, to: usize, live: crate::pipeline::Activations) -> Result<crate::pipeline::Activations> {
    let between = Slice::build(model, Block { start: from, end: to })?;
    let outputs = between.run_once(collect(&live, &between.io.inputs, "activation", model)?)?;
    Ok(advance(model, &between, live, outputs))
}

/// The timing of `range` run as one slice on the activations in `live`.
fn time_slice(model: &Model, budget: Budget, range: Block, live: &crate::pipeline::Activations) -> Result<Summary> {
    Ok(time_block(model, budget, range, live)?.time)
}

/// What [`time_block`] measured of one slice.
struct TimedSlice {
    slice: Slice,
    time: Summary,
    /// The heap its timed runs took over the built slice, where the process counts it.
    run_heap: Option<heap::Footprint>,
    outputs: TVec<TValue>,
}

/// Builds the slice of `block`, times it on the activations in `live`, and counts the heap its
/// runs take.
fn time_block(model: &Model, budget: Budget, block: Block, live: &crate::pipeline::Activations) -> Result<TimedSlice> {
    let slice = Slice::build(model, block)?;
    let inputs = collect(live, &slice.io.inputs, "block input", model)?;
    let mut state = slice.spawn()?;
    let mut outputs = TVec::new();
    let (samples, run_heap) = heap::measure(|| {
        measure(budget, || {
            // A tier holds one run's outputs at a time: the last run's go before the next.
            drop(std::mem::take(&mut outputs));
            outputs = crate::slower::repeated(inputs.clone(), |inputs| state.run(inputs))?;
            Ok::<_, crate::error::EngineError>(())
        })
    });
    let samples = samples.with_context(|| format!("running [{}, {})", block.start, block.end))?;
    let time = Summary::of(&samples).context("the budget allowed no timed run")?;
    Ok(TimedSlice { slice, time, run_heap, outputs })
}

/// The heap `block` takes the way a tier runs it: loaded from its slice artifact's graph (what
/// the loaded slice keeps, and the loader's high-water mark), and run (`run`, measured on the
/// timed slice). `None` where the process does not count its heap.
fn block_memory(model: &Model, block: Block, run: Option<heap::Footprint>) -> Result<Option<BlockMemory>> {
    let Some(run) = run else { return Ok(None) };
    let load = crate::artifact::measure_load(model, block)?;
    Ok(load.map(|load| BlockMemory { resident_bytes: load.kept, peak_bytes: load.peak.max(load.kept.saturating_add(run.peak)) }))
}

fn block_profile(model: &Model, block: Block, time: Summary, memory: Option<BlockMemory>) -> BlockProfile {
    let nodes = &model.summary.nodes;
    BlockProfile {
        range: block,
        first_node: nodes[block.start].name.clone(),
        last_node: nodes[block.end - 1].name.clone(),
        time,
        weight_bytes: model.summary.weight_bytes(block.start, block.end),
        activation_bytes: model.cuts.bytes(block.start) + model.cuts.bytes(block.end),
        memory,
    }
}

fn cut_profile(model: &Model, position: usize) -> CutProfile {
    let tensors = model.cuts.crossing(position).iter().map(|&t| model.summary.tensors[t].name.clone()).collect();
    CutProfile { position, bytes: model.cuts.bytes(position), tensors }
}
