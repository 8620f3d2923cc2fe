//! The built-in demo: an embedded model, benchmarked as two different machines, with every
//! split checked against the unsplit model.

use anyhow::{Context, Result, bail};
use embassy_time::Duration;
use scission_shared::bench::{BenchOptions, benchmark};
use scission_shared::engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs, with_threads};
use scission_shared::onnx::builder::encode;
use scission_shared::onnx::testmodels::TestModel;
use scission_shared::profile::{Profile, TierKind};
use scission_shared::timing::Budget;

/// Arguments of `demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Built-in model: `branched-cnn` (residual + Inception-like) or `chain-cnn`.
    #[arg(long, default_value = "branched-cnn")]
    model: String,
    /// Input resolution (a multiple of 16).
    #[arg(long, default_value_t = 128)]
    resolution: usize,
    /// Largest number of tensors that may cross a cut point.
    #[arg(long, default_value_t = 2)]
    max_crossing: usize,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let Some(kind) = TestModel::from_name(&args.model) else {
        bail!("unknown built-in model '{}'; choose chain-cnn or branched-cnn", args.model)
    };
    if args.resolution == 0 || args.resolution % 16 != 0 {
        bail!("--resolution must be a positive multiple of 16, got {}", args.resolution);
    }
    let bytes = encode(&kind.build(args.resolution, 42));
    let model = Model::load_bytes(kind.name(), &bytes, &LoadOptions::default())?;
    print!("{}", scission_shared::cli::inspect_report(&model, args.max_crossing, false));
    let device = bench_as(&model, args, "device (1 thread)", TierKind::Device, 1)?;
    let server_threads = scission_shared::host::available_cores();
    let server = bench_as(&model, args, &format!("server ({server_threads} threads)"), TierKind::Cloud, server_threads)?;
    print_blocks(&device, &server);
    check_every_split(&model, args.max_crossing)
}

fn bench_as(model: &Model, args: &DemoArgs, name: &str, tier: TierKind, threads: usize) -> Result<Profile> {
    let options = BenchOptions {
        budget: Budget { warmup: 2, min_runs: 5, max_runs: 50, max_time: Duration::from_millis(200) },
        max_crossing: args.max_crossing,
        threads,
        machine: name.to_string(),
        tier,
        progress: true,
        seed: 1,
    };
    let profile = benchmark(model, &options)?;
    println!(
        "{name}: unsplit median {:.3} ms, sum of {} block medians {:.3} ms ({:.2}x)",
        profile.whole_model.median_ns as f64 * 1e-6,
        profile.blocks.len(),
        profile.sum_of_blocks_ns as f64 * 1e-6,
        profile.sum_over_whole
    );
    Ok(profile)
}

fn print_blocks(device: &Profile, server: &Profile) {
    println!("{:>5}  {:<28}  {:>12}  {:>12}  {:>10}", "block", "last node", "device ms", "server ms", "out bytes");
    for (i, (d, s)) in device.blocks.iter().zip(&server.blocks).enumerate() {
        let out_bytes = device.cuts.get(i + 1).map_or(0, |c| c.bytes);
        println!(
            "{i:>5}  {:<28}  {:>12.3}  {:>12.3}  {:>10}",
            d.last_node,
            d.time.median_ns as f64 * 1e-6,
            s.time.median_ns as f64 * 1e-6,
            out_bytes
        );
    }
}

/// Runs the model split at every cut point and checks the result against the unsplit model.
fn check_every_split(model: &Model, max_crossing: usize) -> Result<()> {
    let inputs = synthetic_inputs(model, 7)?;
    let reference = with_threads(1, || model.whole()?.run(inputs.clone()))?;
    let points = model.cuts.cut_points(max_crossing);
    let n = model.summary.len();
    let mut worst = 0f32;
    for &k in &points[1..points.len() - 1] {
        let outputs = Pipeline::build(model, &[0, k, n])?.run(model, inputs.clone())?;
        for (got, want) in outputs.iter().zip(&reference) {
            let diff = max_abs_diff(got, want).with_context(|| format!("split at {k}"))?;
            worst = worst.max(diff);
        }
    }
    if worst > 1e-5 {
        bail!("a split changed the output by {worst:e}");
    }
    println!("checked {} two-way splits against the unsplit model: max |difference| = {worst:e}", points.len() - 2);
    Ok(())
}

fn max_abs_diff(a: &scission_shared::tract::prelude::TValue, b: &scission_shared::tract::prelude::TValue) -> Result<f32> {
    let (a, b) = (a.try_as_plain_ram()?.as_slice::<f32>()?, b.try_as_plain_ram()?.as_slice::<f32>()?);
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}
