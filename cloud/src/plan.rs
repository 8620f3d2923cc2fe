//! `scission-cloud plan`: rank the ways to split a DNN over device, edge and cloud.
//!
//! Two kinds of input:
//! - our JSON profiles (`scission-* bench`), with links from `--network CSV` and/or `--link`;
//! - the original Scission's files: `plan BENCHMARK_DIR NETWORK.csv MODEL` (drop-in for
//!   `scission_predict.py`, same criteria flags, same output lines).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use scission_cli::EncodingArg;
use scission_core::compat::scission::{self as legacy, Criterion, LegacyLimits, LegacyPlanning};
use scission_core::profile::Profile;
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use scission_core::solver::{self, ComputeCap, Constraints, CostOptions, Objective, Problem};
use scission_engine::profile_file::read_profile;

use crate::report;

/// Arguments of `plan`.
#[derive(Clone, Debug, clap::Args)]
#[command(after_long_help = "Examples:
  scission-cloud plan device.json edge.json cloud.json --network links.csv
  scission-cloud plan device.json edge.json cloud.json --link device-edge=20mbit,15ms --link edge-cloud=1gbit,10ms --link device-cloud=50mbit,60ms
  scission-cloud plan benchmark_data network_stats.csv vgg19 -d '!-1' -e 10 -c 16   (original Scission files)")]
pub struct PlanArgs {
    /// Profiles (JSON from `bench`), or the original's BENCHMARK_DIR NETWORK_CSV MODEL.
    #[arg(required = true, value_name = "INPUTS")]
    inputs: Vec<PathBuf>,
    /// Network CSV (`source,destination,ping(ms),bandwidth(mbps)`, one directed pair per line).
    #[arg(long, value_name = "CSV")]
    network: Option<PathBuf>,
    /// What-if link override FROM-TO=BANDWIDTH,LATENCY (machine or tier names), e.g.
    /// `device-edge=20mbit,15ms`. Repeatable; applied after --network. The reverse direction
    /// gets the same figures unless it has a link already (from --network or an earlier --link;
    /// a later --link TO-FROM overrides it), as `demo` and the device's `run --link` do.
    #[arg(long = "link", value_name = "SPEC")]
    links: Vec<String>,
    /// Device criteria, comma-separated: N (Keras layer / block N runs here), !N, -1 (device
    /// runs nothing), !-1 (runs something), NAME (use this machine), !NAME (exclude it);
    /// write @NAME for a machine whose name is a number.
    #[arg(short = 'd', long = "device", allow_hyphen_values = true, value_name = "CRITERIA")]
    device: Option<String>,
    /// Edge criteria (same syntax as --device).
    #[arg(short = 'e', long = "edge", allow_hyphen_values = true, value_name = "CRITERIA")]
    edge: Option<String>,
    /// Cloud criteria (same syntax as --device).
    #[arg(short = 'c', long = "cloud", allow_hyphen_values = true, value_name = "CRITERIA")]
    cloud: Option<String>,
    /// Most megabytes the device may upload.
    #[arg(long, value_name = "MB")]
    device_upload: Option<f64>,
    /// Most megabytes the edge may upload.
    #[arg(long, value_name = "MB")]
    edge_upload: Option<f64>,
    /// Device compute cap: seconds, or a share of the model's time on that machine (`30%`).
    #[arg(long, value_name = "SECONDS|N%")]
    device_time: Option<String>,
    /// Edge compute cap (as --device-time).
    #[arg(long, value_name = "SECONDS|N%")]
    edge_time: Option<String>,
    /// Cloud compute cap (as --device-time).
    #[arg(long, value_name = "SECONDS|N%")]
    cloud_time: Option<String>,
    /// Memory cap TIER=MB (weights plus the largest block activations of its slice).
    #[arg(long, value_name = "TIER=MB")]
    memory_cap: Vec<String>,
    /// The chain of tiers, first to last (the first holds the raw input), e.g.
    /// `device,edge1,edge2,cloud`. -d applies to the first tier, -e to the second, -c to the last.
    #[arg(long, value_delimiter = ',', default_value = "device,edge,cloud")]
    tiers: Vec<String>,
    /// Put a machine in a tier of --tiers: MACHINE=TIER (default: the tier its profile names).
    #[arg(long = "place", value_name = "MACHINE=TIER")]
    placement: Vec<String>,
    /// Most megabytes that may reach the cloud (the last tier).
    #[arg(long, value_name = "MB")]
    cloud_bytes_cap: Option<f64>,
    /// Keep the raw input on the device (it runs at least the first block).
    #[arg(long)]
    keep_input_on_device: bool,
    /// How many plans to list.
    #[arg(short = 'n', long = "result-count", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    result_count: u16,
    /// Raw input size on the wire in MB (original files: 0.15, a JPEG; profiles: the dense
    /// input tensor).
    #[arg(short = 'i', long = "input-mb", value_name = "MB")]
    input_mb: Option<f64>,
    /// What to minimise.
    #[arg(long, value_enum, default_value_t = ObjectiveArg::Latency)]
    objective: ObjectiveArg,
    /// Which time of each stage plans are priced at: the median of its benchmark runs, or its
    /// 90th percentile (added stage by stage), for a plan that must hold one request in ten on
    /// a machine whose speed shifts. Profiles only.
    #[arg(long, value_enum, default_value_t = StageTime::Median)]
    stage_time: StageTime,
    /// List the plans not dominated in (latency, device time, bytes uploaded) instead.
    #[arg(long)]
    pareto: bool,
    /// Activation encoding on the wire.
    #[arg(long, value_enum, default_value_t = EncodingArg::F32)]
    encoding: EncodingArg,
    /// Do not charge the hop that returns the result to the device (the original's model;
    /// always off with original files).
    #[arg(long)]
    no_return: bool,
    /// Bytes of framing per message.
    #[arg(long, default_value_t = 64)]
    overhead: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the top plans as stacked bars into this SVG file.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// A device's run report (`scission-device run --report FILE.json`): show each plan's
    /// measured latency beside its prediction, and rank the plans again with the measured
    /// latencies in place of the predictions (profiles only).
    #[arg(long, value_name = "FILE.json")]
    calibration: Option<PathBuf>,
    /// Print the verification pass for the listed plans: per machine, the `bench --add-ranges`
    /// command that times the ranges they run (from the first block or to the last) as one
    /// slice each, so that planning again costs what will run (profiles only).
    #[arg(long)]
    verify: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ObjectiveArg {
    Latency,
    Throughput,
    DeviceTime,
    DeviceUpload,
}

/// What a planning run works on, with names for printing.
pub struct Planning {
    pub problem: Problem,
    pub constraints: Constraints,
    /// Per block: a label (layer range or node names).
    pub block_labels: Vec<String>,
    /// With the original's files: each block's Keras layer range, for its result lines.
    legacy_layers: Option<Vec<(u32, u32)>>,
    /// With profiles: the blocks (node ranges) the plans' segments index.
    blocks: Vec<scission_core::profile::BlockProfile>,
}

/// Runs `plan`.
pub fn run(args: &PlanArgs) -> Result<()> {
    let mut planning = if args.inputs[0].is_dir() { legacy_planning(args)? } else { profile_planning(args)? };
    apply_links(&mut planning.problem, &args.links)?;
    let plans = if args.pareto {
        solver::pareto(&planning.problem, &planning.constraints)?
    } else {
        solver::solve(&planning.problem, &planning.constraints, objective(args.objective), usize::from(args.result_count))?
    };
    if let Some(path) = &args.chart {
        std::fs::write(path, crate::chart::svg(&planning.problem, &plans)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report::json(&planning.problem, &planning.block_labels, &plans))?);
    } else if let Some(layers) = &planning.legacy_layers {
        for (i, plan) in plans.iter().enumerate() {
            println!("{}", legacy::format_line(i + 1, &planning.problem, layers, plan));
        }
    } else {
        if args.stage_time == StageTime::P90 {
            println!("each stage priced at its 90th percentile run (--stage-time p90), added stage by stage");
        }
        print!("{}", report::table(&planning.problem, &planning.block_labels, &plans));
    }
    if args.verify {
        if planning.legacy_layers.is_some() {
            bail!("--verify needs profiles (our JSON), not the original's files");
        }
        print!("{}", verification(args, &planning.problem, &plans));
    }
    if let Some(path) = &args.calibration {
        if planning.legacy_layers.is_some() {
            bail!("--calibration needs profiles (our JSON), not the original's files");
        }
        let run = crate::calibration::read(path)?;
        let ranked = crate::calibration::rerank(&plans, &planning.blocks, &run.plans);
        let matched = ranked.iter().filter(|c| c.measured.is_some()).count();
        let unmatched = run.plans.iter().filter(|m| m.measured_median_ms.is_some()).count().saturating_sub(matched);
        print!("{}", crate::calibration::table(&ranked, unmatched));
        print!("{}", replay(args, &planning, &run.requests)?);
    }
    Ok(())
}

/// The closed loop's replay: the problem priced with the run's stage and hop figures (see
/// [`crate::calibration::observed`]), and planned again.
fn replay(args: &PlanArgs, planning: &Planning, requests: &[crate::calibration::MeasuredRequest]) -> Result<String> {
    use std::fmt::Write;
    let problem = &planning.problem;
    let tiers_once = (0..problem.tiers.len()).all(|t| problem.machines.iter().filter(|m| m.tier == t).count() <= 1);
    if !tiers_once {
        return Ok("\n(the replay prices one machine per tier; these profiles put several in a tier)\n".into());
    }
    let observed = crate::calibration::observed(problem, &planning.blocks, requests);
    let (stages, hops) = (observed.estimates().count(), observed.hop_estimates().count());
    let mut priced = problem.clone();
    scission_core::policy::pricing::price(&mut priced, &planning.blocks, &observed);
    let plans = solver::solve(&priced, &planning.constraints, objective(args.objective), usize::from(args.result_count))?;
    let mut out = format!("\nplanned again with the run's measured costs ({stages} stage(s), {hops} hop(s)):\n");
    for (i, plan) in plans.iter().enumerate() {
        let route = scission_core::policy::plan_route(plan, &planning.blocks, |_| 0)
            .map_or_else(|| "-".into(), |r| scission_core::policy::describe_route(&r));
        let _ = writeln!(out, "{:>4} {:>12.2} ms  {route}", format!("#{}", i + 1), plan.cost.latency_ns as f64 * 1e-6);
    }
    Ok(out)
}

/// The commands of a verification pass: per machine with unmeasured ranges in `plans`, its
/// tier's `bench --add-ranges` on its own profile.
fn verification(args: &PlanArgs, problem: &Problem, plans: &[solver::Plan]) -> String {
    use std::fmt::Write;
    let pending = solver::unmeasured_ranges(problem, plans);
    if pending.is_empty() {
        return "\nverification: every range these plans run from the first block or to the last is measured\n".into();
    }
    let mut out = String::from("\nverification pass: time what these plans run, on each machine, then plan again:\n");
    for (m, spans) in pending {
        let machine = &problem.machines[m];
        let tier = problem.tiers.get(machine.tier).map_or("cloud", String::as_str);
        let binary = match tier {
            "device" | "edge" => format!("scission-{tier}"),
            _ => "scission-cloud".into(),
        };
        let profile = args.inputs.get(m).map_or_else(|| format!("{}.json", machine.name), |p| p.display().to_string());
        let spans: Vec<String> = spans.iter().map(|(a, end)| format!("{a}-{}", end - 1)).collect();
        let _ = writeln!(out, "  {}: {binary} bench MODEL --out {profile} --add-ranges {}", machine.name, spans.join(","));
    }
    out
}

fn objective(o: ObjectiveArg) -> Objective {
    match o {
        ObjectiveArg::Latency => Objective::Latency,
        ObjectiveArg::Throughput => Objective::Throughput,
        ObjectiveArg::DeviceTime => Objective::DeviceTime,
        ObjectiveArg::DeviceUpload => Objective::DeviceUpload,
    }
}

fn megabytes(mb: f64, what: &str) -> Result<u64> {
    if !(mb.is_finite() && mb >= 0.0) {
        bail!("{what} must be a non-negative number of megabytes, got {mb}");
    }
    Ok((mb * 1e6).round() as u64)
}

fn compute_cap(text: &str, flag: &str) -> Result<ComputeCap> {
    let bad = || anyhow::anyhow!("{flag} '{text}': expected seconds (e.g. 0.5) or a percentage (e.g. 30%)");
    match text.trim().strip_suffix('%') {
        Some(pct) => {
            pct.trim().parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(|p| ComputeCap::Fraction(p / 100.0)).ok_or_else(bad)
        }
        None => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| ComputeCap::Nanos((s * 1e9).round() as u64))
            .ok_or_else(bad),
    }
}

fn criteria(args: &PlanArgs) -> Result<[Vec<Criterion>; 3]> {
    let parse = |tier: &'static str, text: &Option<String>| legacy::parse_criteria(tier, text.as_deref().unwrap_or(""));
    Ok([parse("device", &args.device)?, parse("edge", &args.edge)?, parse("cloud", &args.cloud)?])
}

fn limits(args: &PlanArgs) -> Result<LegacyLimits> {
    let upload = [
        args.device_upload.map(|v| megabytes(v, "--device-upload")).transpose()?,
        args.edge_upload.map(|v| megabytes(v, "--edge-upload")).transpose()?,
    ];
    let time = [
        args.device_time.as_deref().map(|t| compute_cap(t, "--device-time")).transpose()?,
        args.edge_time.as_deref().map(|t| compute_cap(t, "--edge-time")).transpose()?,
        args.cloud_time.as_deref().map(|t| compute_cap(t, "--cloud-time")).transpose()?,
    ];
    Ok(LegacyLimits { upload, time })
}

fn legacy_planning(args: &PlanArgs) -> Result<Planning> {
    let [dir, csv, model] = &args.inputs[..] else {
        bail!("with original Scission files, give exactly BENCHMARK_DIR NETWORK_CSV MODEL");
    };
    if args.stage_time == StageTime::P90 {
        bail!("--stage-time p90 needs profiles (our JSON): the original's files hold one time per layer");
    }
    let machines = read_legacy_dir(dir)?;
    let network = read_csv(csv)?;
    let input_bytes = megabytes(args.input_mb.unwrap_or(0.15), "--input-mb")?;
    let model = model.to_string_lossy();
    let LegacyPlanning { problem, mut constraints, layers } =
        legacy::build(&machines, &model, &network, input_bytes, &criteria(args)?, &limits(args)?)?;
    add_common_constraints(args, &problem, &mut constraints)?;
    let block_labels = layers.iter().map(|(a, b)| if a == b { format!("layer {a}") } else { format!("layers {a}-{b}") }).collect();
    Ok(Planning { problem, constraints, block_labels, legacy_layers: Some(layers), blocks: Vec::new() })
}

fn read_legacy_dir(dir: &Path) -> Result<Vec<legacy::LegacyMachine>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .dat benchmark files", dir.display());
    }
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(legacy::read_benchmark(&name, &bytes)?)
        })
        .collect()
}

/// Which of a stage's benchmarked times plans are priced at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StageTime {
    /// The median run.
    Median,
    /// The 90th percentile run.
    P90,
}

fn read_csv(path: &Path) -> Result<Vec<legacy::NetworkRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    legacy::read_network_csv(&text).with_context(|| path.display().to_string())
}

fn profile_planning(args: &PlanArgs) -> Result<Planning> {
    let mut profiles: Vec<Profile> = args.inputs.iter().map(|p| read_profile(p)).collect::<Result<_, _>>()?;
    if args.stage_time == StageTime::P90 {
        profiles = profiles.into_iter().map(Profile::at_p90).collect();
    }
    let options = CostOptions { return_result: !args.no_return, encoding: args.encoding.into(), message_overhead: args.overhead };
    let input_bytes = args.input_mb.map(|mb| megabytes(mb, "--input-mb")).transpose()?;
    let placement = args
        .placement
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(m, t)| (m.trim().to_string(), t.trim().to_string()))
                .with_context(|| format!("--place '{p}': expected MACHINE=TIER"))
        })
        .collect::<Result<_>>()?;
    let topology = Topology { tiers: args.tiers.clone(), placement };
    let mut problem = problem_from_profiles(&profiles, &topology, input_bytes, options)?;
    if let Some(csv) = &args.network {
        for row in read_csv(csv)? {
            let spec = format!("{}-{}={}mbit,{}ms", row.source, row.destination, row.mbps, row.ping_ms);
            apply_links(&mut problem, &[spec]).with_context(|| csv.display().to_string())?;
        }
    }
    let block_labels = crate::report::block_labels(&profiles[0]);
    let mut constraints = profile_constraints(args, &problem)?;
    add_common_constraints(args, &problem, &mut constraints)?;
    Ok(Planning { problem, constraints, block_labels, legacy_layers: None, blocks: profiles[0].blocks.clone() })
}

/// Criteria and limits for profiles: `N` means block N.
fn profile_constraints(args: &PlanArgs, problem: &Problem) -> Result<Constraints> {
    let layers: Vec<(u32, u32)> = (0..problem.blocks() as u32).map(|b| (b, b)).collect();
    Ok(legacy::build_constraints(problem, &layers, &criteria(args)?, &limits(args)?)?)
}

fn add_common_constraints(args: &PlanArgs, problem: &Problem, c: &mut Constraints) -> Result<()> {
    c.keep_input_on_device |= args.keep_input_on_device;
    if let Some(mb) = args.cloud_bytes_cap {
        c.cloud_bytes_cap = Some(megabytes(mb, "--cloud-bytes-cap")?);
    }
    for spec in &args.memory_cap {
        let (tier, mb) = spec.split_once('=').with_context(|| format!("--memory-cap '{spec}': expected TIER=MB"))?;
        let t = problem.tiers.iter().position(|t| t == tier.trim()).with_context(|| format!("--memory-cap: unknown tier '{tier}'"))?;
        let mb: f64 = mb.trim().parse().with_context(|| format!("--memory-cap '{spec}': '{mb}' is not a number"))?;
        c.memory_cap.push((t, megabytes(mb, "--memory-cap")?));
    }
    Ok(())
}

fn apply_links(problem: &mut Problem, specs: &[String]) -> Result<()> {
    for text in specs {
        apply_link_spec(problem, text, true).map_err(|e| anyhow::anyhow!("--link {e}"))?;
    }
    Ok(())
}
