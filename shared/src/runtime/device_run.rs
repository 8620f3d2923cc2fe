//! The device's `run`: plans (fixed split, local solver, or the cloud's), requests along the best
//! route with failover and re-planning, link measurement and emulation, and checking each result
//! against the unsplit model.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::prelude::rust_2024::*;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tract_onnx::prelude::*;

use super::client::{DeviceClient, plan_route, route};
use super::commands::{ClusterArgs, runtime};
use super::node::Node;
use crate::cli::ModelArgs;
use crate::engine::{input::synthetic_inputs, with_threads};
use crate::net::{pki, quic};
use crate::solver::profiles::{Topology, apply_link_spec, problem_from_profiles};
use crate::solver::{self, Constraints, CostOptions, Encoding, Objective};
use crate::wire::frame::DEFAULT_MAX_FRAME;
use crate::wire::message::Stage;

/// Arguments of the device's `run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// The edge server's address.
    #[arg(long)]
    pub edge: Option<SocketAddr>,
    /// The cloud server's address.
    #[arg(long)]
    pub cloud: Option<SocketAddr>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// This device's enrolled name.
    #[arg(long, default_value = "device")]
    pub name: String,
    /// A fixed split, as node positions DEVICE_END,EDGE_END: the device runs [0, DEVICE_END),
    /// the edge [DEVICE_END, EDGE_END), the cloud the rest (`scission-device inspect` lists the
    /// positions). Without it, plans come from --profiles.
    #[arg(long, value_parser = parse_split, value_name = "DEVICE_END,EDGE_END", conflicts_with = "profiles")]
    pub split: Option<(usize, usize)>,
    /// Benchmark profiles of device, edge and cloud (from `bench`): the solver ranks plans from
    /// them and --link figures; requests use the best plan and fail over down the ranking when
    /// a tier becomes unreachable.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["split", "profile"])]
    pub profiles: Vec<PathBuf>,
    /// This device's profile: plans come from the cloud, which plans with the edge's and its own
    /// profiles and the links the device measures to them.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["split", "profiles"], requires = "cloud")]
    pub profile: Option<PathBuf>,
    /// When the model file is missing, fetch it from the cloud (chunked, SHA-256 checked).
    #[arg(long, requires = "cloud")]
    pub fetch_model: bool,
    /// Link figures FROM-TO=BANDWIDTH,LATENCY for planning (the reverse direction gets the same
    /// unless given), e.g. device-edge=50mbit,5ms.
    #[arg(long = "link", value_name = "SPEC")]
    pub links: Vec<String>,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Emulate the --link figures on this device's uplinks (delay and bandwidth cap on its UDP
    /// socket), so measured latencies reflect the planned network even on loopback.
    #[arg(long)]
    pub emulate: bool,
    /// With --emulate: change an emulated uplink before request N, as N:TIER=BANDWIDTH,LATENCY
    /// (tier 1 edge, 2 cloud), e.g. `10:1=2mbit,5ms`.
    #[arg(long, requires = "emulate")]
    pub emulate_change: Option<String>,
    /// Re-measure the uplinks (a small and a 64 KiB probe) every N requests and switch plans when
    /// another is predicted at least 10% faster (0: never). Profiles are kept.
    #[arg(long, default_value_t = 0)]
    pub replan_every: u32,
    /// Give up on a tier that has not answered within this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Requests to run (default: one per --inputs file, else 10).
    #[arg(long)]
    pub requests: Option<u32>,
    /// Input arrays (`.npy`, float32, the model's input shape), one per request, used in turn;
    /// without them, deterministic random inputs.
    #[arg(long, value_delimiter = ',', value_name = "FILE.npy")]
    pub inputs: Vec<PathBuf>,
    /// Activation encoding on the wire.
    #[arg(long, value_enum, default_value_t = EncodingArg::F32)]
    pub encoding: EncodingArg,
    /// Engine threads on the device.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the synthetic inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip checking each result against the unsplit model (which the device otherwise builds
    /// and runs too: a second copy of the model in memory and a full inference per request).
    #[arg(long)]
    pub no_check: bool,
}

fn parse_split(text: &str) -> Result<(usize, usize), String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    match parts[..] {
        [a, b] => match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(format!("'{text}': expected two node positions, e.g. 40,120")),
        },
        _ => Err(format!("'{text}': expected DEVICE_END,EDGE_END, e.g. 40,120")),
    }
}

/// Encodings on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum EncodingArg {
    /// 32-bit floats (bit-exact).
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit integers, per-tensor affine.
    Int8,
}

impl From<EncodingArg> for Encoding {
    fn from(e: EncodingArg) -> Self {
        match e {
            EncodingArg::F32 => Encoding::F32,
            EncodingArg::F16 => Encoding::F16,
            EncodingArg::Int8 => Encoding::Int8,
        }
    }
}

/// Ranked routes with what the solver predicts for them, and the device's uplink figures.
struct Planned {
    routes: Vec<Vec<Stage>>,
    predicted_ns: Vec<Option<u64>>,
    uplinks: HashMap<u8, crate::solver::Link>,
    /// The planning inputs, kept to re-plan when links change.
    basis: Option<(crate::solver::Problem, Vec<crate::profile::BlockProfile>)>,
    /// With plans from the cloud: this device's profile JSON, sent with every plan request.
    cloud_profile: Option<Vec<u8>>,
}

impl Planned {
    /// Whether some ranked route avoids every tier in `dead`.
    fn has_route_avoiding(&self, dead: &[u8]) -> bool {
        self.routes.iter().any(|r| r.iter().all(|s| !dead.contains(&s.tier)))
    }

    /// Re-solves locally with the tiers in `dead` excluded, putting those plans first.
    fn replan_avoiding(&mut self, dead: &[u8]) -> Result<()> {
        let Some((problem, blocks)) = self.basis.as_ref() else { return Ok(()) };
        let constraints = Constraints { must_not_use: dead.iter().map(|&t| usize::from(t)).collect(), ..Constraints::default() };
        let plans = solver::solve(problem, &constraints, Objective::Latency, 16)?;
        self.routes = plans.iter().map(|p| plan_route(p, blocks)).collect();
        self.predicted_ns = plans.iter().map(|p| Some(p.cost.latency_ns)).collect();
        Ok(())
    }

    /// Re-solves locally with the device's uplinks set to `measured`; true when the route
    /// changed.
    fn replan(&mut self, measured: &HashMap<u8, crate::solver::Link>) -> Result<bool> {
        let Some((problem, blocks)) = self.basis.as_mut() else { return Ok(false) };
        let device = problem.machines.iter().position(|m| m.tier == 0).context("no device machine")?;
        for (m, machine) in problem.machines.clone().iter().enumerate() {
            if let Some(link) = measured.get(&(machine.tier as u8)) {
                crate::solver::profiles::set_link(problem, device, m, *link);
            }
        }
        let plans = solver::solve(problem, &Constraints::default(), Objective::Latency, 16)?;
        let ranked = plans.iter().map(|p| (plan_route(p, blocks), p.cost.latency_ns)).collect();
        Ok(self.adopt(ranked))
    }

    /// Takes a new ranking. The current route stays first unless the new best is predicted at
    /// least 10% faster (no flapping on noise); true when the route changed.
    fn adopt(&mut self, ranked: Vec<(Vec<Stage>, u64)>) -> bool {
        let (mut routes, mut predicted): (Vec<Vec<Stage>>, Vec<Option<u64>>) = ranked.into_iter().map(|(r, p)| (r, Some(p))).unzip();
        if let Some(current) = routes.iter().position(|r| Some(r) == self.routes.first())
            && predicted[current].zip(predicted[0]).is_some_and(|(c, best)| best as f64 > 0.9 * c as f64)
        {
            let (r, p) = (routes.remove(current), predicted.remove(current));
            routes.insert(0, r);
            predicted.insert(0, p);
        }
        let changed = routes.first() != self.routes.first();
        self.routes = routes;
        self.predicted_ns = predicted;
        changed
    }
}

/// The fixed split, or the solver's plans from profiles and links.
fn plan_routes(args: &RunArgs, n: usize) -> Result<Planned> {
    if let Some((a, b)) = args.split {
        return Ok(Planned {
            routes: vec![route(a, b, n)?],
            predicted_ns: vec![None],
            uplinks: HashMap::new(),
            basis: None,
            cloud_profile: None,
        });
    }
    if let Some(profile) = &args.profile {
        let json = std::fs::read(profile).with_context(|| format!("cannot read {}", profile.display()))?;
        crate::cli::read_profile(profile)?;
        // --link figures from the device still drive --emulate.
        let mut uplinks = HashMap::new();
        for text in &args.links {
            let spec = crate::solver::linkspec::parse_link_spec(text, |n| ["device", "edge", "cloud"].contains(&n))
                .map_err(|e| anyhow::anyhow!("--link {e}"))?;
            let tier = match (spec.from.as_str(), spec.to.as_str()) {
                ("device", "edge") => 1,
                ("device", "cloud") => 2,
                _ => continue,
            };
            uplinks.insert(tier, spec.link);
        }
        return Ok(Planned { routes: Vec::new(), predicted_ns: Vec::new(), uplinks, basis: None, cloud_profile: Some(json) });
    }
    let profiles = args.profiles.iter().map(|p| crate::cli::read_profile(p)).collect::<Result<Vec<_>>>()?;
    let options = CostOptions { encoding: args.encoding.into(), ..CostOptions::default() };
    let mut problem = problem_from_profiles(&profiles, &Topology::default(), None, options)?;
    for text in &args.links {
        apply_link_spec(&mut problem, text, true).map_err(|e| anyhow::anyhow!("--link {e}"))?;
    }
    let plans = solver::solve(&problem, &Constraints::default(), Objective::Latency, 16)?;
    let routes = plans.iter().map(|plan| plan_route(plan, &profiles[0].blocks)).collect();
    let device = problem.machines.iter().position(|m| m.tier == 0);
    let mut uplinks = HashMap::new();
    for (m, machine) in problem.machines.iter().enumerate().filter(|(_, m)| m.tier > 0) {
        if let Some(link) = device.and_then(|d| problem.link(d, m)) {
            uplinks.insert(machine.tier as u8, link);
        }
    }
    let predicted_ns = plans.iter().map(|p| Some(p.cost.latency_ns)).collect();
    Ok(Planned { routes, predicted_ns, uplinks, basis: Some((problem, profiles[0].blocks.clone())), cloud_profile: None })
}

fn describe(route: &[Stage]) -> String {
    route.iter().map(|s| format!("tier {} [{}, {})", s.tier, s.start, s.end)).collect::<Vec<_>>().join(" -> ")
}

/// Runs the device's `run`: requests along the best route (failing over when a tier is
/// unreachable), each checked against the unsplit model. Every request ends in a result or an
/// explicit error.
pub fn run_device(args: &RunArgs) -> Result<()> {
    let identity = pki::Identity::load(&args.cluster.cluster, &args.name)?;
    let path = args.model.path()?;
    if args.fetch_model && !path.exists() {
        let cloud = args.cloud.context("--fetch-model needs --cloud")?;
        runtime()?.block_on(async { super::fetch::fetch_model(&quic::client(&identity)?, cloud, &path, DEFAULT_MAX_FRAME).await })?;
    }
    let node = Arc::new(Node::new(args.model.load()?, 0, args.threads)?);
    let mut planned = plan_routes(args, node.model.summary.len())?;
    let mut peers = HashMap::new();
    for (tier, addr) in [(1u8, args.edge), (2, args.cloud)] {
        match addr {
            Some(a) => drop(peers.insert(tier, a)),
            None if planned.routes.first().is_some_and(|r| r.iter().any(|s| s.tier == tier)) => {
                bail!("the plan gives tier {tier} work, but its address (--{}) is missing", if tier == 1 { "edge" } else { "cloud" })
            }
            None => {}
        }
    }
    let whole = if args.no_check { None } else { Some(node.model.whole()?) };
    let files = load_inputs(&node.model, &args.inputs)?;
    let requests = args.requests.unwrap_or(if files.is_empty() { 10 } else { files.len() as u32 });
    runtime()?.block_on(async {
        let timeout = std::time::Duration::from_millis(args.timeout_ms);
        let mut shapers = HashMap::new();
        let mut by_tier = HashMap::new();
        if args.emulate {
            for (tier, addr) in &peers {
                if let Some(link) = planned.uplinks.get(tier) {
                    let shaper = crate::net::emulator::Shaper::new(*link);
                    by_tier.insert(*tier, shaper.clone());
                    shapers.insert(*addr, shaper);
                }
            }
        }
        let change = args.emulate_change.as_deref().map(parse_change).transpose()?;
        let client =
            DeviceClient::new(node.clone(), quic::client_with_links(&identity, shapers)?, peers.clone(), DEFAULT_MAX_FRAME, timeout);
        let mut measured: Vec<(usize, u64)> = Vec::new();
        if planned.cloud_profile.is_some() {
            let measured = measure_uplinks(&client, &peers, &[]).await;
            let profile = planned.cloud_profile.clone().unwrap_or_default();
            let ranked = client.request_plans(2, &profile, &measured, &[], 16).await?;
            planned.adopt(ranked);
        }
        println!("plan #1: {}", describe(planned.routes.first().context("no plan")?));

        let (mut ok, mut failed, mut worst, mut dead) = (0u32, 0u32, 0f32, Vec::new());
        for i in 0..requests {
            if i > 0 && args.interval_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(args.interval_ms)).await;
            }
            if let Some((after, tier, link)) = change.filter(|c| c.0 == i) {
                if let Some(shaper) = by_tier.get(&tier) {
                    shaper.set(link);
                    println!(
                        "emulated link to tier {tier} now {:.1} Mbit/s, {:.1} ms (after request {})",
                        link.bits_per_sec as f64 * 1e-6,
                        link.latency_ns as f64 * 1e-6,
                        after.saturating_sub(1)
                    );
                }
            }
            if args.replan_every > 0 && i > 0 && i % args.replan_every == 0 {
                adapt(&client, &mut planned, &peers, &dead).await;
            }
            let inputs = match files.is_empty() {
                true => synthetic_inputs(&node.model, args.seed + u64::from(i))?,
                false => tvec![files[i as usize % files.len()].clone()],
            };
            let reference = match &whole {
                Some(plan) => Some(with_threads(1, || plan.run(inputs.clone()))?),
                None => None,
            };
            let result = loop {
                if !dead.is_empty() && !planned.has_route_avoiding(&dead) {
                    let replanned = match planned.cloud_profile.clone() {
                        Some(profile) => client.request_plans(2, &profile, &planned.uplinks, &dead, 16).await.map(|r| {
                            planned.adopt(r);
                        }),
                        None => planned.replan_avoiding(&dead),
                    };
                    if let Err(e) = replanned {
                        tracing::warn!("re-planning without tiers {dead:?} failed: {e:#}");
                    }
                }
                let known_dead = dead.len();
                let result =
                    client.infer_with_failover(u64::from(i), &planned.routes, &mut dead, inputs.clone(), args.encoding.into()).await;
                // A tier died during this request and no ranked route avoids it: re-plan, retry.
                if result.is_err() && dead.len() > known_dead && !planned.has_route_avoiding(&dead) {
                    continue;
                }
                break result;
            };
            match result {
                Ok((outcome, plan)) => {
                    let diff = reference.as_ref().map(|r| max_diff(&outcome.outputs, r)).transpose()?.unwrap_or(0.0);
                    worst = worst.max(diff);
                    let stages: Vec<String> =
                        outcome.timings.iter().map(|t| format!("tier {} {:.2} ms", t.tier, t.compute_ns as f64 * 1e-6)).collect();
                    let predicted = planned.predicted_ns[plan].map_or(String::new(), |p| format!(", predicted {:.2} ms", p as f64 * 1e-6));
                    println!(
                        "request {i}: plan #{} {:.2} ms end to end{predicted} ({}){}",
                        plan + 1,
                        outcome.total_ns as f64 * 1e-6,
                        stages.join(", "),
                        if whole.is_some() { format!("; max |difference| from the unsplit model {diff:e}") } else { String::new() }
                    );
                    measured.push((plan, outcome.total_ns));
                    ok += 1;
                }
                Err(e) => {
                    println!("request {i}: failed: {}", crate::cli::one_line(&e));
                    failed += 1;
                }
            }
        }
        if let Some(summary) = prediction_error(&measured, &planned.predicted_ns) {
            println!("{summary}");
        }
        match whole {
            Some(_) => println!("requests: {ok} ok, {failed} failed; largest difference from the unsplit model {worst:e}"),
            None => println!("requests: {ok} ok, {failed} failed (results not checked)"),
        }
        if failed > 0 {
            bail!("{failed} of {requests} requests failed");
        }
        Ok(())
    })
}

/// Reads the `--inputs` arrays, checking each against the model's (single) input.
fn load_inputs(model: &crate::engine::Model, files: &[PathBuf]) -> Result<Vec<TValue>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let [input] = model.summary.inputs[..] else {
        bail!("--inputs takes one array per request, but the model has {} inputs", model.summary.inputs.len())
    };
    let expected: Vec<usize> = model.summary.tensors[input].shape.iter().map(|&d| d as usize).collect();
    files
        .iter()
        .map(|f| {
            let t = crate::engine::npy::read_npy(f)?;
            if t.shape() != expected.as_slice() || t.datum_type() != DatumType::F32 {
                bail!(
                    "{} is a {:?} array of shape {:?}; the model takes f32 of shape {expected:?}",
                    f.display(),
                    t.datum_type(),
                    t.shape()
                );
            }
            Ok(t.into_tvalue())
        })
        .collect()
}

/// Measures the links to every reachable peer.
async fn measure_uplinks(client: &DeviceClient, peers: &HashMap<u8, SocketAddr>, dead: &[u8]) -> HashMap<u8, crate::solver::Link> {
    let mut measured = HashMap::new();
    for tier in peers.keys().filter(|t| !dead.contains(t)) {
        match client.measure_link(*tier, 64 * 1024).await {
            Ok(link) => drop(measured.insert(*tier, link)),
            Err(e) => tracing::warn!("could not measure the link to tier {tier}: {e:#}"),
        }
    }
    measured
}

/// Re-measures the device's uplinks and re-plans (locally, or by asking the cloud); logs a plan
/// switch with its reason.
async fn adapt(client: &DeviceClient, planned: &mut Planned, peers: &HashMap<u8, SocketAddr>, dead: &[u8]) {
    let measured = measure_uplinks(client, peers, dead).await;
    let before = planned.routes.first().cloned();
    let outcome = match planned.cloud_profile.clone() {
        Some(profile) => client.request_plans(2, &profile, &measured, &[], 16).await.map(|ranked| planned.adopt(ranked)),
        None => planned.replan(&measured),
    };
    match outcome {
        Ok(true) => {
            let figures: Vec<String> = measured
                .iter()
                .map(|(t, l)| format!("tier {t}: {:.1} Mbit/s, {:.1} ms", l.bits_per_sec as f64 * 1e-6, l.latency_ns as f64 * 1e-6))
                .collect();
            println!(
                "plan switch: links measured as {}; best plan was {}, now {}",
                figures.join("; "),
                before.as_deref().map_or_else(String::new, describe),
                describe(&planned.routes[0])
            );
        }
        Ok(false) => tracing::info!("links re-measured, best plan unchanged"),
        Err(e) => tracing::warn!("re-planning failed: {e:#}"),
    }
}

/// Parses `AFTER:TIER=BANDWIDTH,LATENCY`, e.g. `10:1=2mbit,5ms`.
fn parse_change(text: &str) -> Result<(u32, u8, crate::solver::Link)> {
    let bad = || anyhow::anyhow!("--emulate-change '{text}': expected REQUEST:TIER=BANDWIDTH,LATENCY, e.g. 10:1=2mbit,5ms");
    let (after, rest) = text.split_once(':').ok_or_else(bad)?;
    let (tier, figures) = rest.split_once('=').ok_or_else(bad)?;
    let (bw, lat) = figures.split_once(',').ok_or_else(bad)?;
    let link = crate::solver::Link {
        bits_per_sec: crate::solver::linkspec::parse_bandwidth(bw.trim()).map_err(anyhow::Error::msg)?,
        latency_ns: crate::solver::linkspec::parse_latency(lat.trim()).map_err(anyhow::Error::msg)?,
    };
    Ok((after.trim().parse().map_err(|_| bad())?, tier.trim().parse().map_err(|_| bad())?, link))
}

/// Median relative error of measured against predicted end-to-end latency (the first request
/// of each plan is left out: it pays the connection handshake).
fn prediction_error(measured: &[(usize, u64)], predicted: &[Option<u64>]) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let mut errors: Vec<f64> = measured
        .iter()
        .filter(|(plan, _)| !seen.insert(*plan))
        .filter_map(|&(plan, ns)| predicted[plan].map(|p| (ns as f64 - p as f64) / p as f64))
        .collect();
    if errors.is_empty() {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    Some(format!("measured vs predicted end-to-end latency over {} requests: median error {:+.1}%", errors.len(), median * 100.0))
}

fn max_diff(outputs: &[(usize, TValue)], reference: &TVec<TValue>) -> Result<f32> {
    if outputs.len() != reference.len() {
        bail!("{} outputs, expected {}", outputs.len(), reference.len());
    }
    outputs.iter().zip(reference).try_fold(0f32, |worst, ((_, got), want)| Ok(worst.max(crate::engine::pipeline::max_abs_diff(got, want)?)))
}
