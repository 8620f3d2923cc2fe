//! The built-in demo: a zoo model (MobileNetV2 by default), benchmarked as a small board (one
//! thread doing each run of the model ten times, see [`scission_engine::slower`], or under a CPU
//! quota, see [`crate::cpulimit`]) and as a multi-threaded server, planned over device -> edge ->
//! cloud with emulated link figures; every top plan's split checked against the unsplit model;
//! then edge and cloud started as separate processes on loopback (mutual TLS from a throw-away
//! cluster CA) and the top plans run for real from this process as the device (as the same
//! board, over emulated links), each result checked against the unsplit model, with predicted
//! against measured latency per plan and per part of its route, open loop and then closed
//! ([`service`]).

use anyhow::{Context, Result, bail};
use embassy_time::Duration;
use scission_core::profile::{Profile, TierKind, TimingMethod};
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Plan, Problem};
use scission_core::timing::Budget;
use scission_engine::bench::{BenchOptions, Ranges, benchmark, time_spans};
use scission_engine::pipeline::max_abs_diff;
use scission_engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs, with_threads};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

use crate::cpulimit::CpuLimit;

mod service;

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
    /// Requests to run through the distributed runtime on each of the top plans, in each of the
    /// two rounds (open loop, then closed); the first of each plan pays the handshakes and is
    /// left out of the figures. 0 skips running them.
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
    check_plans(&model, &profiles[0], &plans)?;
    if args.requests > 0 {
        let setup = service::Setup { model, model_path: &model_path, profiles: &profiles, problem: &problem, board: &board, cores };
        service::distributed(setup, &plans, args.requests)?;
    }
    print_next_steps(&args.links);
    Ok(())
}

/// The demo's last words: the three steps that do the same with the user's own model and
/// machines, with the demo's link figures.
fn print_next_steps(links: &[String]) {
    let links: Vec<String> = links.iter().map(|l| format!("--link {l}")).collect();
    println!(
        "\nthe same with your model and your machines (each binary's --help says more; docs/src/running.md has the cluster set-up):\n\
         1. bench each machine: scission-device bench model.onnx --out device.json   (on the board; scission-edge bench / scission-cloud bench likewise)\n\
         2. plan:               scission-cloud plan device.json edge.json cloud.json {links}\n\
         3. run:                scission-cloud serve model.onnx --cluster cluster --listen 0.0.0.0:4433   (and scission-edge serve ... --cloud CLOUD:4433), then\n\
         \x20                     scission-device run model.onnx --cluster cluster --edge EDGE:4434 --cloud CLOUD:4433 --profiles device.json,edge.json,cloud.json {links}",
        links = links.join(" ")
    );
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
