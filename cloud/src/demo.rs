//! The built-in demo: a zoo model (MobileNetV2 by default), benchmarked as a small board (one
//! thread doing each run of the model ten times, see [`scission_engine::slower`], or under a CPU
//! quota, see [`crate::cpulimit`]) and as a multi-threaded server, planned over device -> edge ->
//! cloud with emulated link figures; every top plan's split checked against the unsplit model;
//! then edge and cloud started as separate processes on loopback (mutual TLS from a throw-away
//! cluster CA) and each top plan run for real from this process as the device (as the same
//! board, over emulated uplinks), each result checked against the unsplit model, with predicted
//! against measured latency per plan.

use anyhow::{Context, Result, bail};
use embassy_time::Duration;
use scission_core::profile::{Profile, TierKind, TimingMethod};
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Plan, Problem};
use scission_core::timing::Budget;
use scission_engine::bench::{BenchOptions, Ranges, benchmark, time_spans};
use scission_engine::pipeline::max_abs_diff;
use scission_engine::tract::prelude::*;
use scission_engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs, with_threads};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

use crate::cpulimit::CpuLimit;

/// Most verification passes before the plans are run.
const VERIFY_ROUNDS: usize = 3;

/// Arguments of `demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// A zoo model (`scission-cloud zoo list`) or a test model (`chain-cnn`, `branched-cnn`).
    #[arg(long, default_value = "mobilenet_v2")]
    model: String,
    /// How many times slower than this machine the device's board is: each run of the model,
    /// benchmark and inference alike, is done N times (1: this machine's speed). The default
    /// plays a Pi-class board. Steady work, so its times hold from request to request.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    device_slower: u32,
    /// Play the board with a Linux cgroup CPU quota instead: PERCENT of one core for the
    /// device's benchmark and inference (needs root; where none can be set, --device-slower
    /// 100/PERCENT). A quota stops and restarts the work at the scheduler's tick, so the
    /// device's times jump by a quarter or more from request to request.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    device_cpu: Option<u32>,
    /// Largest number of tensors that may cross a cut point.
    #[arg(long, default_value_t = 2)]
    max_crossing: usize,
    /// Link figures FROM-TO=BANDWIDTH,LATENCY between the tiers (directed; the reverse
    /// direction gets the same figures unless given).
    #[arg(long = "link", value_name = "SPEC", default_values_t = ["device-edge=20mbit,3ms".to_string(), "edge-cloud=1gbit,10ms".to_string(), "device-cloud=5mbit,30ms".to_string()])]
    links: Vec<String>,
    /// How many plans to show and check.
    #[arg(short = 'n', long, default_value_t = 5)]
    plans: usize,
    /// Requests to run through the distributed runtime on each of the top plans (0 skips it).
    #[arg(long, default_value_t = 10)]
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
    let board = Board::choose(args);
    let mut device = as_device(&board, || bench_as(&model, args, &board.device_name(), TierKind::Device, 1))?;
    if matches!(board, Board::Quota(_)) {
        calibrate_to_whole(&mut device);
    }
    let edge = bench_as(&model, args, &format!("edge-{cores}t"), TierKind::Edge, cores)?;
    let mut cloud = edge.clone();
    cloud.machine.name = format!("cloud-{cores}t");
    cloud.machine.tier = TierKind::Cloud;
    println!("(edge and cloud share this host's {cores}-thread profile; the links below make them differ)");
    let mut profiles = [device, edge, cloud];
    let mut problem = problem_with_links(&profiles, &args.links)?;
    let mut plans = rank(&problem, &profiles[0], args.plans)?;
    // Until the top plans' ranges are all measured (a new plan may rise into them); each round
    // only times what is new.
    for _ in 0..VERIFY_ROUNDS {
        if verify(&model, args, &mut profiles, &problem, &plans, &board, cores)? == 0 {
            break;
        }
        let links = std::mem::take(&mut problem.links);
        problem = problem_from_profiles(&profiles, &Topology::default(), None, CostOptions::default())?;
        problem.links = links;
        println!("planned again, with those ranges as measured:");
        plans = rank(&problem, &profiles[0], args.plans)?;
    }
    print_one_tier_plans(&problem);
    let [device, ..] = profiles;
    check_plans(&model, &device, &plans)?;
    if args.requests > 0 {
        distributed(model, &model_path, &device, &problem, &plans, args.requests, &board)?;
    }
    Ok(())
}

/// How this process plays the device's board.
enum Board {
    /// At this machine's own speed.
    Native,
    /// Under a CPU quota.
    Quota(CpuLimit),
    /// Doing each run of a model this many times.
    Slower(u32),
}

impl Board {
    /// What the arguments ask for (printed): a quota where one is asked for and the OS allows
    /// it, each run done 100 / percent times where it does not.
    fn choose(args: &DemoArgs) -> Self {
        let Some(percent) = args.device_cpu else {
            return Self::slower(args.device_slower);
        };
        if percent >= 100 {
            return Self::Native;
        }
        match CpuLimit::new(percent) {
            Ok(limit) => {
                println!("the device runs on {percent}% of one core (a cgroup CPU quota), like a small board");
                Self::Quota(limit)
            }
            Err(e) => {
                println!("note: no CPU quota here ({e:#}); the device does each run of the model more times instead");
                Self::slower((100 + percent / 2) / percent)
            }
        }
    }

    /// A board `n` times slower than this machine (printed).
    fn slower(n: u32) -> Self {
        if n <= 1 {
            return Self::Native;
        }
        println!("the device does each run of the model {n} times, like a board {n} times slower than this machine");
        Self::Slower(n)
    }

    /// The device's machine name in its profile.
    fn device_name(&self) -> String {
        match self {
            Self::Native => "device-1t".to_string(),
            Self::Quota(limit) => format!("device-1t-{}pct", limit.percent),
            Self::Slower(n) => format!("device-1t-{n}x-slower"),
        }
    }
}

/// While alive, this process's model runs are done `n` times ([`scission_engine::slower`]);
/// back to once when dropped.
struct Slowed;

impl Slowed {
    fn new(n: u32) -> Result<Self> {
        scission_engine::slower::emulate(n)?;
        Ok(Self)
    }
}

impl Drop for Slowed {
    fn drop(&mut self) {
        let _ = scission_engine::slower::emulate(1);
    }
}

/// Scales the block times so they sum to the unsplit model's time. Under a CPU quota the
/// kernel lets short work run at full speed until the period's budget is spent, so a block's
/// median misses the throttling that a whole inference (many periods long) pays.
fn calibrate_to_whole(profile: &mut Profile) {
    let (whole, sum) = (profile.whole_model.median_ns, profile.sum_of_blocks_ns);
    if whole == 0 || sum == 0 {
        return;
    }
    let factor = whole as f64 / sum as f64;
    for block in &mut profile.blocks {
        let t = &mut block.time;
        for v in [&mut t.median_ns, &mut t.p10_ns, &mut t.p90_ns, &mut t.min_ns, &mut t.max_ns] {
            *v = (*v as f64 * factor).round() as u64;
        }
    }
    profile.sum_of_blocks_ns = profile.blocks.iter().map(|b| b.time.median_ns).sum();
    profile.sum_over_whole = profile.sum_of_blocks_ns as f64 / whole as f64;
    println!(
        "device blocks scaled by {factor:.2}x to sum to its unsplit time (a CPU quota runs short blocks at full speed until the period's budget is spent)"
    );
}

/// Runs `work` as the device: on a thread inside its CPU quota (threads it starts inherit it),
/// or with every model run done as many times as its board says. The rest of the demo runs at
/// full speed (edge and cloud are benchmarked in this process, between the device's turns).
fn as_device<T: Send>(board: &Board, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let _slowed = match board {
        Board::Slower(n) => Some(Slowed::new(*n)?),
        _ => None,
    };
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            if let Board::Quota(limit) = board
                && let Err(e) = limit.enter()
            {
                println!("note: the device runs unlimited ({e:#})");
            }
            work()
        });
        thread.join().map_err(|_| anyhow::anyhow!("the device thread panicked"))?
    })
}

/// The model and its file (zoo models from the cache; test models written next to them).
fn load(name: &str) -> Result<(Model, std::path::PathBuf)> {
    let path = match TestModel::from_name(name) {
        Some(kind) => {
            let dir = scission_zoo::cache_dir().join("test");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(format!("{}.onnx", kind.name()));
            // Another demo may be reading the same file: replace it whole.
            scission_zoo::write_file(&path, &encode(&kind.build(128, 42)))?;
            path
        }
        None => scission_zoo::cached(name, 1)?,
    };
    Ok((Model::load_path(&path, &LoadOptions::default())?, path))
}

fn bench_options(args: &DemoArgs, name: &str, tier: TierKind, threads: usize) -> BenchOptions {
    BenchOptions {
        method: TimingMethod::Profile,
        budget: Budget { warmup: 1, min_runs: 3, max_runs: 20, max_time: Duration::from_millis(100), precision_permille: 20 },
        max_crossing: args.max_crossing,
        threads,
        machine: name.to_string(),
        tier,
        seed: 1,
        ranges: Ranges::default(),
        // The demo sets no memory limit: no need to count the heap (it would cost the board's
        // bench an artifact round trip per block under its quota).
        memory: false,
    }
}

fn bench_as(model: &Model, args: &DemoArgs, name: &str, tier: TierKind, threads: usize) -> Result<Profile> {
    let options = bench_options(args, name, tier, threads);
    // What a message costs this machine (under the device's quota for the device), as `bench`
    // records it: first, while no engine threads linger from the timed runs.
    let messages = scission_cli::measure_messages();
    let mut profile = benchmark(model, &options, &scission_cli::BenchBar::new(true))?;
    profile.messages = messages;
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

/// The verification pass: times, on each machine (the device under its quota), the ranges the
/// top plans run from the first block or to the last, as one slice each, and adds them to the
/// profiles. Returns how many it timed.
fn verify(
    model: &Model,
    args: &DemoArgs,
    profiles: &mut [Profile; 3],
    problem: &Problem,
    plans: &[Plan],
    board: &Board,
    cores: usize,
) -> Result<usize> {
    let pending = solver::unmeasured_ranges(problem, plans);
    let count = pending.iter().map(|(_, spans)| spans.len()).sum();
    if count > 0 {
        println!("verification pass: the {count} ranges these plans run from the first block or to the last, each timed as one slice");
    }
    for (m, spans) in pending {
        let profile = profiles.get(m).context("a plan names a machine without a profile")?;
        let threads = if m == 0 { 1 } else { cores };
        let options = bench_options(args, &profile.machine.name, profile.machine.tier, threads);
        let bar = scission_cli::BenchBar::new(true);
        let ranges = match m {
            0 => as_device(board, || Ok(time_spans(model, &options, profile, &spans, &bar)?))?,
            _ => time_spans(model, &options, profile, &spans, &bar)?,
        };
        for r in &ranges {
            let blocks = profile.blocks_ns(r.first_block, r.end_block);
            println!(
                "  {} blocks {}-{}: {:.1} ms as one slice, {:.1} ms as its blocks",
                profile.machine.name,
                r.first_block,
                r.end_block - 1,
                r.time.median_ns as f64 * 1e-6,
                blocks as f64 * 1e-6
            );
        }
        if let Some(profile) = profiles.get_mut(m) {
            profile.ranges.extend(ranges);
        }
    }
    Ok(count)
}

/// The planning problem of `profiles` with the demo's links (printed).
fn problem_with_links(profiles: &[Profile], links: &[String]) -> Result<Problem> {
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
    Ok(problem)
}

/// The `count` best plans of `problem`, printed as a table.
fn rank(problem: &Problem, profile: &Profile, count: usize) -> Result<Vec<Plan>> {
    let plans = solver::solve(problem, &Constraints::default(), Objective::Latency, count)?;
    print!("{}", crate::report::table(problem, &crate::report::block_labels(profile), &plans));
    Ok(plans)
}

/// The best plan that keeps the whole model on one tier, for each tier (printed): what the
/// ranked plans beat, or are.
fn print_one_tier_plans(problem: &Problem) {
    let tiers = problem.tiers.len();
    let best: Vec<String> = (0..tiers)
        .map(|tier| {
            let constraints = Constraints { must_not_use: (0..tiers).filter(|&t| t != tier).collect(), ..Constraints::default() };
            let name = &problem.tiers[tier];
            match solver::solve(problem, &constraints, Objective::Latency, 1).ok().and_then(|plans| plans.into_iter().next()) {
                Some(plan) => format!("{name} {:.1} ms", plan.cost.latency_ns as f64 * 1e-6),
                None => format!("{name} cannot"),
            }
        })
        .collect();
    println!("the whole model on one tier, for comparison: {}", best.join(", "));
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

/// Starts `tier` serving `model`; with an upstream, forwarding there over `link` (emulated).
fn start_tier(
    model: &std::path::Path,
    cluster: &std::path::Path,
    tier: &str,
    upstream: Option<(std::net::SocketAddr, Option<scission_core::link::Link>)>,
) -> Result<Tier> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command.args(["stage", "--tier", tier, "--name", tier, "--cluster"]).arg(cluster).arg(model);
    if let Some((up, link)) = upstream {
        command.arg("--upstream").arg(up.to_string());
        if let Some(link) = link {
            command.arg("--emulate-upstream").arg(format!("{}bit,{}ns", link.bits_per_sec, link.latency_ns));
        }
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

/// Runs each top plan for `requests` requests through real edge and cloud processes, this
/// process acting as the device (under its CPU quota), and prints predicted against measured.
fn distributed(
    model: Model,
    model_path: &std::path::Path,
    device: &Profile,
    problem: &Problem,
    plans: &[Plan],
    requests: u32,
    board: &Board,
) -> Result<()> {
    use scission_net::pki;
    let dir = tempfile::tempdir()?;
    let cluster = dir.path().join("cluster");
    pki::init_cluster(&cluster)?;
    for role in pki::Role::ALL {
        pki::enroll(&cluster, role.as_str(), role, false, 1)?;
    }
    // The servers start from this (unlimited) thread: a child inherits its parent's cgroup.
    let cloud = start_tier(model_path, &cluster, "cloud", None)?;
    // The edge's link to the cloud is emulated on its own socket, as the device's uplinks are.
    let tier_machine = |tier: usize| problem.machines.iter().position(|m| m.tier == tier);
    let edge_cloud = tier_machine(1).zip(tier_machine(2)).and_then(|(e, c)| problem.link(e, c));
    let edge = start_tier(model_path, &cluster, "edge", Some((cloud.addr, edge_cloud)))?;
    // Inputs and the unsplit model's outputs, computed at full speed.
    let whole = model.whole()?;
    let cases = (0..requests)
        .map(|i| {
            let inputs = synthetic_inputs(&model, 100 + u64::from(i))?;
            let reference = with_threads(1, || whole.run(inputs.clone()))?;
            Ok((inputs, reference))
        })
        .collect::<Result<Vec<_>>>()?;
    let servers = Servers { edge: edge.addr, cloud: cloud.addr, cluster: &cluster };
    let ran = as_device(board, || run_plans(model, device, problem, plans, &cases, &servers))?;
    println!("{:>4}  {:>12}  {:>12}  {:>7}  route", "plan", "predicted ms", "measured ms", "error");
    let mut errors = Vec::new();
    for (rank, (plan, measured, route)) in plans.iter().zip(&ran.medians).zip(&ran.routes).map(|((p, m), r)| (p, m, r)).enumerate() {
        let predicted = plan.cost.latency_ns as f64;
        let error = measured / predicted - 1.0;
        errors.push(error.abs());
        println!(
            "{:>4}  {:>12.1}  {:>12.1}  {:>+6.1}%  {route}",
            format!("#{}", rank + 1),
            predicted * 1e-6,
            measured * 1e-6,
            error * 100.0
        );
    }
    errors.sort_by(f64::total_cmp);
    println!(
        "{} requests on {} plans through 3 processes: every output equals the unsplit model's (max |difference| {:e}); \
         median |measured / predicted - 1| {:.1}% (medians of each plan's requests after its first, which pays the handshakes)",
        ran.count,
        plans.len(),
        ran.worst,
        errors.get(errors.len() / 2).copied().unwrap_or(0.0) * 100.0
    );
    if ran.worst > 1e-5 {
        bail!("the distributed result differs from the unsplit model by {:e}", ran.worst);
    }
    Ok(())
}

/// Where the demo's servers are.
struct Servers<'a> {
    edge: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    cluster: &'a std::path::Path,
}

/// What running the plans measured.
struct Ran {
    /// Median end-to-end time of each plan, in ns.
    medians: Vec<f64>,
    /// Each plan's route, as one line.
    routes: Vec<String>,
    /// Largest difference from the unsplit model.
    worst: f32,
    /// Requests run.
    count: usize,
}

/// The device's side: each plan's route, `cases.len()` requests each.
fn run_plans(
    model: Model,
    device: &Profile,
    problem: &Problem,
    plans: &[Plan],
    cases: &[(TVec<TValue>, TVec<TValue>)],
    servers: &Servers<'_>,
) -> Result<Ran> {
    use scission_core::policy::plan_route;
    use scission_net::{emulator::Shaper, pki, quic};
    use scission_runtime::client::{DeviceClient, Peer};
    use scission_runtime::node::Node;
    let identity = pki::Identity::load(servers.cluster, "device")?;
    let node = std::sync::Arc::new(Node::new(model, 0, 1)?);
    let peers: std::collections::HashMap<u8, Peer> =
        [(1u8, Peer::new(servers.edge, "edge")), (2u8, Peer::new(servers.cloud, "cloud"))].into();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async {
        let mut shapers = std::collections::HashMap::new();
        for (tier, peer) in &peers {
            let target = problem.machines.iter().position(|m| m.tier == usize::from(*tier)).context("tier without machine")?;
            let link = problem.link(0, target).context("no device uplink")?;
            shapers.insert(peer.addr, Shaper::new(link));
        }
        let endpoint = quic::client_with(&identity, shapers, quic::Datagrams::default())?;
        let client = DeviceClient::new(
            node.clone(),
            endpoint,
            peers,
            scission_core::wire::frame::DEFAULT_MAX_FRAME,
            std::time::Duration::from_secs(30),
        );
        let mut ran = Ran { medians: Vec::new(), routes: Vec::new(), worst: 0.0, count: 0 };
        println!(
            "running {} requests on each of the top {} plans: device (this process, as its board, emulated uplinks) -> edge -> cloud",
            cases.len(),
            plans.len()
        );
        for (rank, plan) in plans.iter().enumerate() {
            let route = plan_route(plan, &device.blocks, |_| 0).with_context(|| format!("plan #{} does not fit the profile", rank + 1))?;
            let mut times = Vec::new();
            for (i, (inputs, reference)) in cases.iter().enumerate() {
                let id = u64::try_from(rank * cases.len() + i).unwrap_or(u64::MAX);
                let outcome = client.infer(id, &route, inputs.clone(), CostOptions::default().encoding).await?;
                for ((_, got), want) in outcome.outputs.iter().zip(reference) {
                    ran.worst = ran.worst.max(max_abs_diff(got, want)?);
                }
                if i > 0 || cases.len() == 1 {
                    times.push(outcome.total_ns as f64);
                }
                ran.count += 1;
            }
            times.sort_by(f64::total_cmp);
            ran.medians.push(times.get(times.len() / 2).copied().unwrap_or(0.0));
            ran.routes.push(scission_core::policy::describe_route(&route));
        }
        Ok(ran)
    })
}
