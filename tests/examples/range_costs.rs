//! How well the cost model predicts what a plan runs (issue 12's "H1" table): a range's
//! predicted cost against the measured median of the range built and run as one slice, on this
//! machine, one thread.
//!
//! Three profiles per model, from `bench`'s budget: blocks only, timed both ways (`--method
//! blocks`: each block alone; `--method profile`: the unsplit model node by node), then blocks
//! plus every range from the first block or to the last (`bench --ranges both`). Then:
//! - random ranges of whole blocks, predicted by the sum of their block medians, per method;
//! - random ranges from the first block or to the last (what a device or the last tier runs),
//!   predicted by the sum of their block medians, per method, and by the profile's measured range.
//!
//! ```text
//! cargo run --release -p scission-tests --example range_costs -- mobilenet_v2 resnet50 densenet121
//! cargo run --release -p scission-tests --example range_costs -- --warmup 2 --min-runs 5 --precision 2 resnet50
//! cargo run --release -p scission-tests --example range_costs -- tests/fixtures/exports/torch_shufflenet.onnx
//! ```
//! Prints one line per model and method: the benchmark's time (and the ranged one's), the
//! unsplit/sum ratio, then the median and p90 of |predicted / measured - 1| for each
//! prediction, and of |predicted - measured| / the unsplit model's time for the end ranges.
//! The measured ranges always use the engine's default budget, in separate runs after the
//! benchmarks; both methods are scored against the same measured ranges.

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{Context, Result};
use clap::Parser;
use scission_core::cut::Block;
use scission_core::profile::{Profile, TimingMethod};
use scission_core::rng::WeightRng;
use scission_core::timing::{Budget, measure};
use scission_engine::bench::{BenchOptions, Ranges, Silent, benchmark};
use scission_engine::pipeline::{advance, collect, graph_inputs};
use scission_engine::{LoadOptions, Model, Slice, input::synthetic_inputs, with_threads};

/// Random ranges measured per model, for each kind.
const RANGES: usize = 24;

/// Predicted range costs against measured slices.
#[derive(Parser, Debug)]
struct Args {
    /// Zoo models, or ONNX files (default: mobilenet_v2 resnet50 densenet121).
    models: Vec<String>,
    /// Engine threads, for the benchmarks and the measured ranges.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The profile's benchmark: untimed runs per block.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// The profile's benchmark: timed runs per block, at least.
    #[arg(long, default_value_t = 3)]
    min_runs: u32,
    /// The profile's benchmark: milliseconds per block after the minimum runs.
    #[arg(long, default_value_t = 500)]
    max_time_ms: u64,
    /// The profile's benchmark: stop a block once its median is known within this many percent.
    #[arg(long, default_value_t = 5.0)]
    precision: f64,
    /// Also print every range: its blocks, measured median, and each method's prediction.
    #[arg(long)]
    detail: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let names =
        if args.models.is_empty() { ["mobilenet_v2", "resnet50", "densenet121"].map(String::from).to_vec() } else { args.models.clone() };
    let budget = Budget {
        warmup: args.warmup,
        min_runs: args.min_runs.max(1),
        max_runs: 200,
        max_time: embassy_time::Duration::from_millis(args.max_time_ms),
        precision_permille: (args.precision * 10.0).round().clamp(0.0, 1000.0) as u32,
    };
    let threads = args.threads.max(1);
    println!(
        "{:<14} {:<8} {:>15} {:>7} {:>15} {:>15} {:>15} {:>15}",
        "model", "method", "bench seconds", "whole/", "any range", "end range", "end range", "end range"
    );
    println!(
        "{:<14} {:<8} {:>7} {:>7} {:>7} {:>15} {:>15} {:>15} {:>15}",
        "", "", "blocks", "+ranges", "sum", "sum of blocks", "sum of blocks", "measured", "sum, of whole"
    );
    for name in names {
        let file = std::path::Path::new(&name);
        let (path, name) = match file.file_stem() {
            Some(stem) if file.is_file() => (file.to_path_buf(), stem.to_string_lossy().into_owned()),
            _ => (scission_zoo::cached(&name, 1)?, name),
        };
        let model = Model::load_path(&path, &LoadOptions::default())?;
        let options = |method, ranges| BenchOptions {
            method,
            budget,
            max_crossing: 1,
            threads,
            machine: "here".into(),
            tier: scission_core::profile::TierKind::Device,
            seed: 1,
            ranges,
            memory: false,
        };
        let methods = [("blocks", TimingMethod::Blocks), ("profile", TimingMethod::Profile)];
        let mut plain = Vec::new();
        for (_, method) in methods {
            plain.push(benchmark(&model, &options(method, Ranges::default()), &Silent)?);
        }
        let both = Ranges { prefixes: true, suffixes: true };
        let ranged = benchmark(&model, &options(TimingMethod::Profile, both), &Silent)?;
        let mut rng = WeightRng::new(7);
        let n = ranged.blocks.len();
        let mut any = Vec::new();
        for _ in 0..RANGES {
            let a = (rng.next_u64() % n as u64) as usize;
            let b = (rng.next_u64() % n as u64) as usize;
            let (first, end) = (a.min(b), a.max(b) + 1);
            any.push((first, end, with_threads(threads, || time_range(&model, span(&ranged, first, end)))?));
        }
        let mut ends = Vec::new();
        for i in 0..RANGES {
            let cut = 1 + (rng.next_u64() % n.saturating_sub(1).max(1) as u64) as usize;
            let (first, end) = if i % 2 == 0 { (0, cut) } else { (cut.min(n - 1), n) };
            ends.push((first, end, with_threads(threads, || time_range(&model, span(&ranged, first, end)))?));
        }
        let mut measured_err = Vec::new();
        for &(first, end, measured) in &ends {
            let range = ranged.ranges.iter().find(|r| (r.first_block, r.end_block) == (first, end)).context("the range was not timed")?;
            measured_err.push(error(range.time.median_ns, measured));
        }
        let (m50, m90) = quantiles(&mut measured_err);
        if args.detail {
            for &(first, end, measured) in any.iter().chain(&ends) {
                let predicted: Vec<String> = plain.iter().map(|p| format!("{:.3}", p.blocks_ns(first, end) as f64 * 1e-6)).collect();
                println!(
                    "  blocks {first}-{end}: measured {:.3} ms, predicted (blocks, profile) {} ms",
                    measured as f64 * 1e-6,
                    predicted.join(", ")
                );
            }
        }
        for ((label, _), profile) in methods.iter().zip(&plain) {
            let mut any_err: Vec<f64> = any.iter().map(|&(f, e, measured)| error(profile.blocks_ns(f, e), measured)).collect();
            let mut sum_err: Vec<f64> = ends.iter().map(|&(f, e, measured)| error(profile.blocks_ns(f, e), measured)).collect();
            // The same errors in nanoseconds, as a share of the unsplit model's time: what a
            // plan's latency feels (a range of a few microseconds can be 100 % off and matter
            // to no plan).
            let whole = ranged.whole_model.median_ns.max(1) as f64;
            let mut share: Vec<f64> =
                ends.iter().map(|&(f, e, measured)| (profile.blocks_ns(f, e) as f64 - measured as f64).abs() / whole).collect();
            let ((a50, a90), (s50, s90), (w50, w90)) = (quantiles(&mut any_err), quantiles(&mut sum_err), quantiles(&mut share));
            println!(
                "{name:<14} {label:<8} {:>7.2} {:>7.2} {:>7.2} {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}%",
                profile.bench_seconds,
                ranged.bench_seconds,
                1.0 / profile.sum_over_whole,
                a50 * 100.0,
                a90 * 100.0,
                s50 * 100.0,
                s90 * 100.0,
                m50 * 100.0,
                m90 * 100.0,
                w50 * 100.0,
                w90 * 100.0
            );
        }
    }
    Ok(())
}

/// The node range of blocks `[first, end)`.
fn span(profile: &Profile, first: usize, end: usize) -> Block {
    Block { start: profile.blocks[first].range.start, end: profile.blocks[end - 1].range.end }
}

/// |predicted / measured - 1|.
fn error(predicted: u64, measured: u64) -> f64 {
    (predicted as f64 / measured.max(1) as f64 - 1.0).abs()
}

/// The median time of `block` built and run as one slice, on the activations the blocks before
/// it produce from the benchmark's input.
fn time_range(model: &Model, block: Block) -> Result<u64> {
    let mut live = graph_inputs(model, synthetic_inputs(model, 1)?)?;
    if block.start > 0 {
        let before = Slice::build(model, Block { start: 0, end: block.start })?;
        let outputs = before.run(collect(&live, &before.io.inputs, "input", model)?)?;
        live = advance(model, &before, live, outputs);
    }
    let slice = Slice::build(model, block)?;
    let inputs = collect(&live, &slice.io.inputs, "input", model)?;
    let mut state = slice.spawn()?;
    let mut samples = measure(Budget::default(), || state.run(inputs.clone()).map(drop))?;
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().context("no timed run")
}

/// The median and the 90th percentile of `values`.
fn quantiles(values: &mut [f64]) -> (f64, f64) {
    (common::quantile(values, 0.5), common::quantile(values, 0.9))
}
