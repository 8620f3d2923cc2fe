//! How well the cost model predicts what a plan runs (issue 12's "H1" table): for random ranges
//! of whole blocks, the range's predicted cost against the measured median of the range built
//! and run as one slice, on this machine, one thread.
//!
//! Two predictions, side by side from one profile:
//! - `sum`: the sum of the range's block medians (what the solver charges today);
//! - `scaled`: that sum times the profile's unsplit median over its sum of block medians (a
//!   per-model, per-machine correction the profile already carries as `sum_over_whole`).
//!
//! ```text
//! cargo run --release -p scission-tests --example range_costs -- mobilenet_v2 resnet50 densenet121
//! cargo run --release -p scission-tests --example range_costs -- --warmup 2 --min-runs 5 --precision 2 resnet50
//! ```
//! Prints one line per model: the profile's benchmark time, the unsplit/sum ratio, then the
//! median and p90 of |predicted / measured - 1| over the ranges, for each prediction. The
//! benchmark's budget flags and defaults are `bench`'s; the measured ranges always use the
//! engine's default budget.

use anyhow::{Context, Result};
use clap::Parser;
use scission_core::cut::Block;
use scission_core::rng::WeightRng;
use scission_core::timing::{Budget, measure};
use scission_engine::bench::{BenchOptions, Silent, benchmark};
use scission_engine::pipeline::{advance, collect, graph_inputs};
use scission_engine::{LoadOptions, Model, Slice, input::synthetic_inputs, with_threads};

/// Random ranges measured per model.
const RANGES: usize = 24;

/// Predicted range costs against measured slices.
#[derive(Parser, Debug)]
struct Args {
    /// Zoo models (default: mobilenet_v2 resnet50 densenet121).
    models: Vec<String>,
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
    println!("{:<14} {:>8} {:>7} {:>6} {:>16} {:>16}", "model", "bench", "whole/", "ranges", "sum |err|", "scaled |err|");
    println!("{:<14} {:>8} {:>7} {:>6} {:>16} {:>16}", "", "seconds", "sum", "", "median  p90", "median  p90");
    for name in names {
        let model = Model::load_path(&scission_zoo::cached(&name, 1)?, &LoadOptions::default())?;
        let options = BenchOptions {
            budget,
            max_crossing: 1,
            threads: 1,
            machine: "here".into(),
            tier: scission_core::profile::TierKind::Device,
            seed: 1,
        };
        let profile = with_threads(1, || benchmark(&model, &options, &Silent))?;
        let scale = 1.0 / profile.sum_over_whole.max(f64::MIN_POSITIVE);
        let mut rng = WeightRng::new(7);
        let (mut sum_err, mut scaled_err) = (Vec::new(), Vec::new());
        let blocks = &profile.blocks;
        for _ in 0..RANGES {
            let a = (rng.next_u64() % blocks.len() as u64) as usize;
            let b = (rng.next_u64() % blocks.len() as u64) as usize;
            let (first, last) = (a.min(b), a.max(b));
            let block = Block { start: blocks[first].range.start, end: blocks[last].range.end };
            let predicted: u64 = blocks[first..=last].iter().map(|b| b.time.median_ns).sum();
            let measured = with_threads(1, || time_range(&model, block))?;
            sum_err.push((predicted as f64 / measured as f64 - 1.0).abs());
            scaled_err.push((predicted as f64 * scale / measured as f64 - 1.0).abs());
        }
        let (s50, s90) = quantiles(&mut sum_err);
        let (c50, c90) = quantiles(&mut scaled_err);
        println!(
            "{name:<14} {:>8.2} {:>7.2} {RANGES:>6} {:>7.1}% {:>6.1}% {:>7.1}% {:>6.1}%",
            profile.bench_seconds,
            1.0 / profile.sum_over_whole,
            s50 * 100.0,
            s90 * 100.0,
            c50 * 100.0,
            c90 * 100.0
        );
    }
    Ok(())
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
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    (at(0.5), at(0.9))
}
