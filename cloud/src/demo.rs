//! The built-in demo: a zoo model (ResNet50 by default), benchmarked as a single-threaded
//! device and as a multi-threaded server, planned over device -> edge -> cloud with emulated
//! link figures, and every top plan's split run for real and checked against the unsplit model.

use anyhow::{Result, bail};
use embassy_time::Duration;
use scission_shared::bench::{BenchOptions, benchmark};
use scission_shared::engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs, with_threads};
use scission_shared::onnx::builder::encode;
use scission_shared::onnx::testmodels::TestModel;
use scission_shared::profile::{Profile, TierKind};
use scission_shared::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use scission_shared::solver::{self, Constraints, CostOptions, Objective, Plan};
use scission_shared::timing::Budget;

/// Arguments of `demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// A zoo model (`scission-cloud zoo list`) or a test model (`chain-cnn`, `branched-cnn`).
    #[arg(long, default_value = "resnet50")]
    model: String,
    /// Largest number of tensors that may cross a cut point.
    #[arg(long, default_value_t = 2)]
    max_crossing: usize,
    /// Link figures FROM-TO=BANDWIDTH,LATENCY between the tiers (directed; the reverse
    /// direction gets the same figures unless given).
    #[arg(long = "link", value_name = "SPEC", default_values_t = ["device-edge=300mbit,2ms".to_string(), "edge-cloud=1gbit,15ms".to_string(), "device-cloud=50mbit,30ms".to_string()])]
    links: Vec<String>,
    /// How many plans to show and check.
    #[arg(short = 'n', long, default_value_t = 5)]
    plans: usize,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let model = load(&args.model)?;
    let points = model.cuts.cut_points(args.max_crossing);
    println!(
        "{}: {} compute nodes, {} cut points with <= {} crossing tensor(s) ({} with the original Scission's rule)",
        model.name,
        model.summary.len(),
        points.len().saturating_sub(2),
        args.max_crossing,
        model.cuts.legacy_cut_points(&model.summary).len().saturating_sub(2)
    );
    let cores = scission_shared::host::available_cores();
    let device = bench_as(&model, args, "device-1t", TierKind::Device, 1)?;
    let edge = bench_as(&model, args, &format!("edge-{cores}t"), TierKind::Edge, cores)?;
    let mut cloud = edge.clone();
    cloud.machine.name = format!("cloud-{cores}t");
    cloud.machine.tier = TierKind::Cloud;
    println!("(edge and cloud share this host's {cores}-thread profile; the links below make them differ)");
    let plans = plan(&[device.clone(), edge, cloud], &args.links, args.plans)?;
    check_plans(&model, &device, &plans)
}

fn load(name: &str) -> Result<Model> {
    if let Some(kind) = TestModel::from_name(name) {
        let bytes = encode(&kind.build(128, 42));
        return Model::load_bytes(kind.name(), &bytes, &LoadOptions::default());
    }
    let path = scission_shared::zoo::cached(name, 1)?;
    Model::load_path(&path, &LoadOptions::default())
}

fn bench_as(model: &Model, args: &DemoArgs, name: &str, tier: TierKind, threads: usize) -> Result<Profile> {
    let options = BenchOptions {
        budget: Budget { warmup: 1, min_runs: 3, max_runs: 20, max_time: Duration::from_millis(100) },
        max_crossing: args.max_crossing,
        threads,
        machine: name.to_string(),
        tier,
        progress: true,
        seed: 1,
    };
    let profile = benchmark(model, &options)?;
    println!(
        "{name} ({threads} thread(s)): unsplit median {:.1} ms, sum of {} block medians {:.1} ms ({:.2}x), benchmark took {:.1} s",
        profile.whole_model.median_ns as f64 * 1e-6,
        profile.blocks.len(),
        profile.sum_of_blocks_ns as f64 * 1e-6,
        profile.sum_over_whole,
        profile.bench_seconds
    );
    Ok(profile)
}

fn plan(profiles: &[Profile], links: &[String], count: usize) -> Result<Vec<Plan>> {
    let mut problem = problem_from_profiles(profiles, &Topology::default(), None, CostOptions::default())?;
    for text in links {
        let spec = apply_link_spec(&mut problem, text, true).map_err(anyhow::Error::msg)?;
        println!("link {} <-> {}: {:.1} Mbit/s, {:.1} ms", spec.from, spec.to, spec.link.bits_per_sec as f64 * 1e-6, spec.link.latency_ns as f64 * 1e-6);
    }
    let plans = solver::solve(&problem, &Constraints::default(), Objective::Latency, count)?;
    print!("{}", crate::report::table(&problem, &crate::report::block_labels(&profiles[0]), &plans));
    Ok(plans)
}

/// Runs each plan's split (one slice per non-empty segment) and compares with the unsplit model.
fn check_plans(model: &Model, profile: &Profile, plans: &[Plan]) -> Result<()> {
    let inputs = synthetic_inputs(model, 7)?;
    let reference = with_threads(1, || model.whole()?.run(inputs.clone()))?;
    for (rank, plan) in plans.iter().enumerate() {
        let mut cuts: Vec<usize> = vec![0];
        cuts.extend(plan.segments.iter().filter(|s| s.end > s.start).map(|s| profile.blocks[s.end - 1].range.end));
        cuts.dedup();
        let outputs = with_threads(1, || Pipeline::build(model, &cuts)?.run(model, inputs.clone()))?;
        let diff = outputs.iter().zip(&reference).map(|(a, b)| max_abs_diff(a, b)).try_fold(0f32, |m, d| d.map(|d| m.max(d)))?;
        if diff > 1e-5 {
            bail!("plan #{} changed the output by {diff:e}", rank + 1);
        }
        println!("plan #{}: split at nodes {:?} runs slice by slice; max |difference| from the unsplit model = {diff:e}", rank + 1, &cuts[1..cuts.len() - 1]);
    }
    Ok(())
}

fn max_abs_diff(a: &scission_shared::tract::prelude::TValue, b: &scission_shared::tract::prelude::TValue) -> Result<f32> {
    let (a, b) = (a.try_as_plain_ram()?.as_slice::<f32>()?, b.try_as_plain_ram()?.as_slice::<f32>()?);
    Ok(a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max))
}
