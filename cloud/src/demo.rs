//! The built-in demo: a zoo model (ResNet50 by default), benchmarked as a single-threaded
//! device and as a multi-threaded server, planned over device -> edge -> cloud with emulated
//! link figures; every top plan's split checked against the unsplit model; then edge and cloud
//! started as separate processes on loopback (mutual TLS from a throw-away cluster CA) and a
//! batch of requests run from this process as the device, over emulated uplinks, each result
//! checked against the unsplit model, with predicted against measured latency.

use anyhow::{Context, Result, bail};
use embassy_time::Duration;
use scission_core::profile::{Profile, TierKind};
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Plan, Problem};
use scission_core::timing::Budget;
use scission_engine::bench::{BenchOptions, benchmark};
use scission_engine::pipeline::max_abs_diff;
use scission_engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs, with_threads};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

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
    /// Requests to run through the distributed runtime (0 skips it).
    #[arg(long, default_value_t = 50)]
    requests: u32,
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let (model, model_path) = load(&args.model)?;
    let points = model.cuts.cut_points(args.max_crossing);
    println!(
        "{}: {} compute nodes, {} cut points with <= {} crossing tensor(s) ({} with the original Scission's rule)",
        model.name,
        model.summary.len(),
        points.len().saturating_sub(2),
        args.max_crossing,
        model.cuts.legacy_cut_points(&model.summary).len().saturating_sub(2)
    );
    let cores = scission_engine::host::available_cores();
    let device = bench_as(&model, args, "device-1t", TierKind::Device, 1)?;
    let edge = bench_as(&model, args, &format!("edge-{cores}t"), TierKind::Edge, cores)?;
    let mut cloud = edge.clone();
    cloud.machine.name = format!("cloud-{cores}t");
    cloud.machine.tier = TierKind::Cloud;
    println!("(edge and cloud share this host's {cores}-thread profile; the links below make them differ)");
    let (problem, plans) = plan(&[device.clone(), edge, cloud], &args.links, args.plans)?;
    check_plans(&model, &device, &plans)?;
    if args.requests > 0 {
        distributed(model, &model_path, &device, &problem, &plans, args.requests)?;
    }
    Ok(())
}

/// The model and its file (zoo models from the cache; test models written next to them).
fn load(name: &str) -> Result<(Model, std::path::PathBuf)> {
    let path = match TestModel::from_name(name) {
        Some(kind) => {
            let dir = scission_zoo::cache_dir().join("test");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(format!("{}.onnx", kind.name()));
            std::fs::write(&path, encode(&kind.build(128, 42))).with_context(|| format!("cannot write {}", path.display()))?;
            path
        }
        None => scission_zoo::cached(name, 1)?,
    };
    Ok((Model::load_path(&path, &LoadOptions::default())?, path))
}

fn bench_as(model: &Model, args: &DemoArgs, name: &str, tier: TierKind, threads: usize) -> Result<Profile> {
    let options = BenchOptions {
        budget: Budget { warmup: 1, min_runs: 3, max_runs: 20, max_time: Duration::from_millis(100) },
        max_crossing: args.max_crossing,
        threads,
        machine: name.to_string(),
        tier,
        seed: 1,
    };
    let profile = benchmark(model, &options, &scission_cli::BenchBar::new(true))?;
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

fn plan(profiles: &[Profile], links: &[String], count: usize) -> Result<(Problem, Vec<Plan>)> {
    let mut problem = problem_from_profiles(profiles, &Topology::default(), None, CostOptions::default())?;
    for text in links {
        let spec = apply_link_spec(&mut problem, text, true).map_err(anyhow::Error::msg)?;
        println!(
            "link {} <-> {}: {:.1} Mbit/s, {:.1} ms",
            spec.from,
            spec.to,
            spec.link.bits_per_sec as f64 * 1e-6,
            spec.link.latency_ns as f64 * 1e-6
        );
    }
    let plans = solver::solve(&problem, &Constraints::default(), Objective::Latency, count)?;
    print!("{}", crate::report::table(&problem, &crate::report::block_labels(&profiles[0]), &plans));
    Ok((problem, plans))
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
        println!(
            "plan #{}: split at nodes {:?} runs slice by slice; max |difference| from the unsplit model = {diff:e}",
            rank + 1,
            &cuts[1..cuts.len() - 1]
        );
    }
    Ok(())
}

/// A child process serving one tier, killed when dropped.
struct Tier {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Tier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tier(model: &std::path::Path, cluster: &std::path::Path, tier: &str, upstream: Option<std::net::SocketAddr>) -> Result<Tier> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command.args(["stage", "--tier", tier, "--name", tier, "--cluster"]).arg(cluster).arg(model);
    if let Some(up) = upstream {
        command.arg("--upstream").arg(up.to_string());
    }
    let mut child = command.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("cannot start the {tier} process"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let addr =
        line.rsplit(' ').next().unwrap_or("").trim().parse().with_context(|| format!("the {tier} process did not start: {line:?}"))?;
    println!("{tier} process {} listening on {addr}", child.id());
    Ok(Tier { child, addr })
}

/// Runs `requests` through real edge and cloud processes, this process acting as the device.
fn distributed(
    model: Model,
    model_path: &std::path::Path,
    device: &Profile,
    problem: &Problem,
    plans: &[Plan],
    requests: u32,
) -> Result<()> {
    use scission_core::policy::plan_route;
    use scission_net::{emulator::Shaper, pki, quic};
    use scission_runtime::client::{DeviceClient, Peer};
    use scission_runtime::node::Node;
    let dir = tempfile::tempdir()?;
    let cluster = dir.path().join("cluster");
    pki::init_cluster(&cluster)?;
    for role in pki::Role::ALL {
        pki::enroll(&cluster, role.as_str(), role, false, 1)?;
    }
    let cloud = start_tier(model_path, &cluster, "cloud", None)?;
    let edge = start_tier(model_path, &cluster, "edge", Some(cloud.addr))?;
    let identity = pki::Identity::load(&cluster, "device")?;
    let route = plans.first().and_then(|p| plan_route(p, &device.blocks)).context("no plan to run")?;
    let node = std::sync::Arc::new(Node::new(model, 0, 1)?);
    let whole = node.model.whole()?;
    let peer = |addr, name: &str| Peer::new(addr, name);
    let peers: std::collections::HashMap<u8, Peer> = [(1u8, peer(edge.addr, "edge")), (2u8, peer(cloud.addr, "cloud"))].into();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut shapers = std::collections::HashMap::new();
        for (tier, peer) in &peers {
            let target = problem.machines.iter().position(|m| m.tier == usize::from(*tier)).context("tier without machine")?;
            let link = problem.link(0, target).context("no device uplink")?;
            shapers.insert(peer.addr, Shaper::new(link));
        }
        let endpoint = quic::client_with_links(&identity, shapers)?;
        let client = DeviceClient::new(node.clone(), endpoint, peers, scission_core::wire::frame::DEFAULT_MAX_FRAME, std::time::Duration::from_secs(10));
        let mut errors = Vec::new();
        let mut worst = 0f32;
        println!("running {requests} requests: device (this process, emulated uplinks) -> edge -> cloud");
        for i in 0..u64::from(requests) {
            let inputs = synthetic_inputs(&node.model, 100 + i)?;
            let reference = with_threads(1, || whole.run(inputs.clone()))?;
            let outcome = client.infer(i, &route, inputs, CostOptions::default().encoding).await?;
            for ((_, got), want) in outcome.outputs.iter().zip(&reference) {
                worst = worst.max(max_abs_diff(got, want)?);
            }
            let predicted = plans[0].cost.latency_ns as f64;
            if i > 0 {
                errors.push((outcome.total_ns as f64 - predicted) / predicted);
            }
            if i < 3 || i + 1 == u64::from(requests) {
                println!("request {i}: plan #1 measured {:.1} ms, predicted {:.1} ms", outcome.total_ns as f64 * 1e-6, predicted * 1e-6);
            }
        }
        errors.sort_by(f64::total_cmp);
        let median = errors.get(errors.len() / 2).copied().unwrap_or(0.0);
        println!(
            "{requests} requests through 3 processes: every output equals the unsplit model's (max |difference| {worst:e}); measured vs predicted latency, median error {:+.1}% (first request, which pays the handshakes, left out)",
            median * 100.0
        );
        if worst > 1e-5 {
            bail!("the distributed result differs from the unsplit model by {worst:e}");
        }
        Ok(())
    })
}
