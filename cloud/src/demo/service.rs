//! The demo's service rounds: edge and cloud as processes on loopback, this process as the
//! device. The top plans' requests go out interleaved, round-robin over the plans, so a drift
//! of the machine hits every plan alike; each part of each route (a stage's compute, a hop) is
//! measured and set against its prediction, at the median and the 90th percentile.
//!
//! Each round's first request on each plan warms its route up (handshakes, the servers' slices)
//! and is left out. Then the confirmation pass times every stage range of the round's plans
//! again, side by side on the machine that runs it, with the servers up: the round's
//! prediction. These timings are fresh, not the ones the plans were chosen by: among ranges
//! timed with noise, the planner picks the one whose timing happened to come out low, so its
//! own figure is biased low (the winner's curse; on this project's VM adjacent ranges timed 106
//! and 132 ms, and every top plan used the 106).
//!
//! Between the requests the plans' ranges are timed again the same way: the prediction *now*.
//! Set against the round's prediction, it says how far the machine itself drifted during the
//! round (a shared virtual machine can run the same model at 1.65 times its time for ten
//! seconds on end); set against the measured, it says how far the cost model is off.
//!
//! Then the closed loop: what the first round measured (stage times, each hop's residual over
//! its link figures) prices the problem as a device's planner does, the plans are ranked again,
//! and a second round runs the new top plans.

use std::collections::HashMap;
use std::sync::mpsc;

use anyhow::{Context, Result, bail};
use scission_core::policy::{ObservedCosts, charged_compute, describe_route, measured_hops, plan_route, pricing};
use scission_core::profile::Profile;
use scission_core::solver::{self, Constraints, CostOptions, Objective, Plan, Problem};
use scission_core::stats::Summary;
use scission_core::timing::{Budget, measure_interleaved};
use scission_core::wire::message::Stage;
use scission_engine::bench::SpanTimer;
use scission_engine::pipeline::max_abs_diff;
use scission_engine::tract::prelude::*;
use scission_engine::{Model, input::synthetic_inputs, slower, with_threads};

use super::{Board, as_device};

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

/// What the demo runs against: the model, its profiles and problem, and the device's board.
pub(super) struct Setup<'a> {
    /// The model, as the device loads it.
    pub model: Model,
    /// Its file, which edge and cloud load.
    pub model_path: &'a std::path::Path,
    /// Device, edge and cloud profiles (ranges of the verification pass included).
    pub profiles: &'a [Profile; 3],
    /// The planning problem the plans come from.
    pub problem: &'a Problem,
    /// How this process plays the device's board.
    pub board: &'a Board,
    /// Engine threads of edge and cloud.
    pub cores: usize,
}

/// Runs the top `plans` through real edge and cloud processes, `requests` each, this process
/// acting as the device; then the closed loop's round. Prints predicted against measured.
pub(super) fn distributed(setup: Setup<'_>, plans: &[Plan], requests: u32) -> Result<()> {
    use scission_net::pki;
    let dir = tempfile::tempdir()?;
    let cluster = dir.path().join("cluster");
    pki::init_cluster(&cluster)?;
    for role in pki::Role::ALL {
        pki::enroll(&cluster, role.as_str(), role, false, 1)?;
    }
    // The servers start from this (unlimited) thread: a child inherits its parent's cgroup.
    let cloud = start_tier(setup.model_path, &cluster, "cloud", None)?;
    // The edge's link to the cloud is emulated on its own socket, as the device's uplinks are.
    let problem = setup.problem;
    let tier_machine = |tier: usize| problem.machines.iter().position(|m| m.tier == tier);
    let edge_cloud = tier_machine(1).zip(tier_machine(2)).and_then(|(e, c)| problem.link(e, c));
    let edge = start_tier(setup.model_path, &cluster, "edge", Some((cloud.addr, edge_cloud)))?;
    // Inputs and the unsplit model's outputs, computed at full speed.
    let whole = setup.model.whole()?;
    let cases = (0..requests.max(1))
        .map(|i| {
            let inputs = synthetic_inputs(&setup.model, 100 + u64::from(i))?;
            let reference = with_threads(1, || whole.run(inputs.clone()))?;
            Ok((inputs, reference))
        })
        .collect::<Result<Vec<_>>>()?;
    let servers = Servers { edge: edge.addr, cloud: cloud.addr, cluster: &cluster };
    // The edge's and cloud's ranges are timed on a thread of their own, started here: outside
    // the device's CPU quota, at this machine's speed, with the servers' engine threads.
    let blocks: Vec<scission_core::cut::Block> = setup.profiles[0].blocks.iter().map(|b| b.range).collect();
    std::thread::scope(|scope| {
        let (jobs, timer) = RemoteTimer::channel();
        let (model, cores) = (&setup.model, setup.cores);
        scope.spawn(move || timer.serve(model, &blocks, cores));
        let device = DeviceSide { setup: &setup, servers: &servers, remote: &jobs };
        as_device(setup.board, || device.run(plans, &cases))
    })
}

/// Where the demo's servers are.
struct Servers<'a> {
    edge: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    cluster: &'a std::path::Path,
}

/// Machine index of the device in the demo's problems (device, edge, cloud).
const DEVICE_MACHINE: usize = 0;

/// Timed runs of each stage range in a round's confirmation pass.
const CONFIRM_RUNS: u32 = 5;

/// The block spans `(first block, end block)` the stages of `trials` run on the device
/// (`on_device`) or on the other machines.
fn spans(trials: &[Trial<'_>], on_device: bool) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = trials
        .iter()
        .flat_map(|t| t.parts.iter())
        .filter_map(|p| p.span)
        .filter(|&(machine, _, _)| (machine == DEVICE_MACHINE) == on_device)
        .map(|(_, first, end)| (first, end))
        .collect();
    spans.sort_unstable();
    spans.dedup();
    spans
}

/// Asks the remote timer's thread to time spans, and waits for the answer.
struct RemoteJobs {
    ask: mpsc::Sender<RemoteJob>,
}

/// One request to the remote timer: prepare spans, or time one.
enum RemoteJob {
    Prepare(Vec<(usize, usize)>, mpsc::Sender<Result<()>>),
    Time((usize, usize), mpsc::Sender<Result<u64>>),
}

/// The thread that times what the edge and cloud run.
struct RemoteTimer {
    jobs: mpsc::Receiver<RemoteJob>,
}

impl RemoteTimer {
    fn channel() -> (RemoteJobs, Self) {
        let (ask, jobs) = mpsc::channel();
        (RemoteJobs { ask }, Self { jobs })
    }

    /// Answers jobs until every sender is gone.
    fn serve(self, model: &Model, blocks: &[scission_core::cut::Block], cores: usize) {
        let mut timer: Option<SpanTimer> = None;
        for job in self.jobs {
            match job {
                RemoteJob::Prepare(spans, done) => {
                    let built = SpanTimer::new(model, blocks, &spans, 1).map_err(anyhow::Error::from);
                    let _ = done.send(built.map(|t| timer = Some(t)));
                }
                RemoteJob::Time(span, done) => {
                    let ns = match timer.as_mut() {
                        Some(t) => slower::at_full_speed(|| with_threads(cores, || t.time(span))).map_err(anyhow::Error::from),
                        None => Err(anyhow::anyhow!("no spans were prepared")),
                    };
                    let _ = done.send(ns);
                }
            }
        }
    }
}

impl RemoteJobs {
    fn prepare(&self, spans: Vec<(usize, usize)>) -> Result<()> {
        let (done, answer) = mpsc::channel();
        self.ask.send(RemoteJob::Prepare(spans, done)).map_err(|_| anyhow::anyhow!("the remote timer stopped"))?;
        answer.recv().context("the remote timer stopped")?
    }

    fn time(&self, span: (usize, usize)) -> Result<u64> {
        let (done, answer) = mpsc::channel();
        self.ask.send(RemoteJob::Time(span, done)).map_err(|_| anyhow::anyhow!("the remote timer stopped"))?;
        answer.recv().context("the remote timer stopped")?
    }
}

/// One part of a route: a stage's compute, or a hop (its message and its result's way back).
struct Part {
    /// What it is, as printed.
    label: String,
    /// The plan's figure in nanoseconds (as benchmarked, or as the closed loop priced it).
    planned_ns: u64,
    /// Predicted nanoseconds for this round: the plan's figure, a stage's scaled by the
    /// confirmation pass (its span timed side by side with the others just before the round).
    predicted_ns: u64,
    /// For a stage: the time of its span, timed alone, that `predicted_ns` stands for (the
    /// benchmark's figure, or the span as timed between an earlier round's requests); the
    /// prediction now is `predicted_ns` scaled by the span's time now over this.
    base_ns: u64,
    /// For a stage: its machine and block span, timed between requests.
    span: Option<(usize, usize, usize)>,
    /// For a stage: how far its benchmark's 90th percentile lies above its median.
    spread_ns: u64,
}

impl Part {
    /// What this stage is predicted to take now, its span taking `retimed_ns` alone: its figure
    /// scaled by `retimed_ns` over the time the figure stands for (the machine's drift since).
    fn now_ns(&self, retimed_ns: u64) -> u64 {
        u64::try_from(u128::from(retimed_ns) * u128::from(self.predicted_ns) / u128::from(self.base_ns.max(1))).unwrap_or(u64::MAX)
    }
}

/// A plan as a round runs it: its route, its parts, and what each request measured.
struct Trial<'p> {
    plan: &'p Plan,
    /// End to end, predicted for this round: the plan's figure, its stages confirmed.
    predicted_ns: u64,
    route: Vec<Stage>,
    parts: Vec<Part>,
    /// End to end, steady (without the device's one-off setup), per counted request.
    totals: Vec<u64>,
    /// Per part, per counted request.
    measured: Vec<Vec<u64>>,
    /// Per part (stages only), the span's times between requests.
    retimed: Vec<Vec<u64>>,
}

impl<'p> Trial<'p> {
    fn new(problem: &Problem, profiles: &[Profile; 3], plan: &'p Plan, rank: usize) -> Result<Self> {
        let device = &profiles[0];
        let route = plan_route(plan, &device.blocks, |_| 0).with_context(|| format!("plan #{} does not fit the profile", rank + 1))?;
        let mut parts = Vec::new();
        let c = &plan.cost;
        for (i, s) in plan.segments.iter().enumerate() {
            if i > 0 {
                let hop = c.hops.get(i - 1).context("a plan without its hop")?;
                let back = c.result_hops.iter().find(|h| (h.from, h.to) == (hop.to, hop.from)).map_or(0, |h| h.ns);
                let names = (&problem.tiers[problem.machines[hop.from].tier], &problem.tiers[problem.machines[hop.to].tier]);
                let predicted_ns = hop.ns + back;
                parts.push(Part {
                    label: format!("hop {}->{}", names.0, names.1),
                    planned_ns: predicted_ns,
                    predicted_ns,
                    base_ns: predicted_ns,
                    span: None,
                    spread_ns: 0,
                });
            }
            if s.end > s.start {
                let first = device.blocks[s.start].range.start;
                let end = device.blocks[s.end - 1].range.end;
                parts.push(Part {
                    label: format!("{}[{first},{end})", problem.tiers[s.tier]),
                    planned_ns: c.compute_ns[i],
                    predicted_ns: c.compute_ns[i],
                    base_ns: c.compute_ns[i],
                    span: Some((s.machine, s.start, s.end)),
                    spread_ns: profiles.get(s.machine).map_or(0, |p| spread(p, s.start, s.end)),
                });
            }
        }
        let n = parts.len();
        Ok(Self {
            plan,
            predicted_ns: plan.cost.latency_ns,
            route,
            parts,
            totals: Vec::new(),
            measured: vec![Vec::new(); n],
            retimed: vec![Vec::new(); n],
        })
    }

    /// Records what one request measured: its total, each stage's compute, each hop.
    fn record(&mut self, outcome: &scission_runtime::client::Outcome) -> Result<()> {
        let total = outcome.steady_ns();
        let hops = measured_hops(total, &self.route, &outcome.timings).context("a tier answered without its timing")?;
        let (mut stages, mut hops) = (self.route.iter(), hops.into_iter());
        for (part, samples) in self.parts.iter().zip(&mut self.measured) {
            let ns = match part.span {
                Some(_) => {
                    let stage = stages.next().context("fewer stages than parts")?;
                    let timing = outcome.timings.iter().find(|t| t.tier == stage.tier).context("a stage without its timing")?;
                    charged_compute(total, &self.route, timing.compute_ns)
                }
                None => hops.next().context("fewer hops than parts")?.1,
            };
            samples.push(ns);
        }
        self.totals.push(total);
        Ok(())
    }

    /// Request `i`'s latency predicted now: the plan's figure, each stage's figure scaled by
    /// its span's time just before the request over the time the figure stands for (the
    /// machine's drift since it was benchmarked), each hop as its link's figures say.
    fn predicted_now(&self, i: usize) -> Option<u64> {
        let mut ns = self.predicted_ns;
        for (part, retimed) in self.parts.iter().zip(&self.retimed).filter(|(p, _)| p.span.is_some()) {
            ns = ns.saturating_sub(part.predicted_ns).saturating_add(part.now_ns(*retimed.get(i)?));
        }
        Some(ns)
    }

    /// Every counted request's prediction now.
    fn predictions_now(&self) -> Option<Vec<u64>> {
        (0..self.totals.len()).map(|i| self.predicted_now(i)).collect()
    }

    /// The median over the requests of measured / predicted now - 1: each request against the
    /// machine as it was just before it.
    fn paired_error(&self) -> Option<f64> {
        let predicted = self.predictions_now()?;
        let ratios: Vec<f64> = self.totals.iter().zip(&predicted).map(|(&m, &p)| m as f64 / p.max(1) as f64).collect();
        Some(median(ratios)? - 1.0)
    }

    /// The 90th percentile predicted for this round: its prediction plus its stages' spreads
    /// as benchmarked (each p90 over its median), added as independent spreads (the root of
    /// the sum of their squares); hops over emulated links add none of their own.
    fn predicted_p90(&self) -> u64 {
        let squares: f64 = self.parts.iter().map(|p| (p.spread_ns as f64).powi(2)).sum();
        self.predicted_ns.saturating_add(squares.sqrt().round() as u64)
    }

    /// Takes each stage's prediction for the round from its span's time in the confirmation
    /// pass (`confirmed`): the plan's figure scaled by that time over the time the figure
    /// stands for.
    fn confirm(&mut self, confirmed: &HashMap<(usize, usize, usize), u64>) {
        for part in &mut self.parts {
            let Some(&ns) = part.span.and_then(|s| confirmed.get(&s)) else { continue };
            let predicted = part.now_ns(ns);
            self.predicted_ns = self.predicted_ns.saturating_sub(part.predicted_ns).saturating_add(predicted);
            part.predicted_ns = predicted;
            part.base_ns = ns;
        }
    }

    /// Each stage span's median time between this round's requests.
    fn span_medians(&self) -> impl Iterator<Item = ((usize, usize, usize), u64)> + '_ {
        self.parts.iter().zip(&self.retimed).filter_map(|(p, r)| Some((p.span?, Summary::of(r)?.median_ns)))
    }

    /// Takes each stage's base from an earlier round's span times (`medians`): its figure
    /// then stands for the machine as it was in that round.
    fn based_on(mut self, medians: &HashMap<(usize, usize, usize), u64>) -> Self {
        for part in &mut self.parts {
            if let Some(&ns) = part.span.and_then(|s| medians.get(&s)) {
                part.base_ns = ns;
            }
        }
        self
    }
}

/// What the device side (this process, as the board) does: both rounds.
struct DeviceSide<'a> {
    setup: &'a Setup<'a>,
    servers: &'a Servers<'a>,
    remote: &'a RemoteJobs,
}

/// What a round's requests computed.
#[derive(Default)]
struct Checked {
    /// Largest difference from the unsplit model.
    worst: f32,
    /// Requests run.
    count: usize,
}

impl DeviceSide<'_> {
    fn run(&self, plans: &[Plan], cases: &[(TVec<TValue>, TVec<TValue>)]) -> Result<()> {
        use scission_net::{emulator::Shaper, pki, quic};
        use scission_runtime::client::{DeviceClient, Peer};
        use scission_runtime::node::Node;
        let setup = self.setup;
        let device = &setup.profiles[0];
        let identity = pki::Identity::load(self.servers.cluster, "device")?;
        let node = std::sync::Arc::new(Node::new(setup.model.clone(), 0, 1)?);
        let peers: HashMap<u8, Peer> = [(1u8, Peer::new(self.servers.edge, "edge")), (2u8, Peer::new(self.servers.cloud, "cloud"))].into();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        rt.block_on(async {
            let mut shapers = HashMap::new();
            for (tier, peer) in &peers {
                let target = setup.problem.machines.iter().position(|m| m.tier == usize::from(*tier)).context("tier without machine")?;
                let link = setup.problem.link(0, target).context("no device uplink")?;
                let back = setup.problem.link(target, 0).unwrap_or(link);
                shapers.insert(peer.addr, Shaper::both(link, back));
            }
            let endpoint = quic::client_with(&identity, shapers, quic::Datagrams::default(), quic::Liveness::default())?;
            let client = DeviceClient::new(
                node.clone(),
                endpoint,
                peers,
                scission_core::wire::frame::DEFAULT_MAX_FRAME,
                std::time::Duration::from_secs(30),
            );
            println!(
                "open loop: {} requests on each of the top {} plans, interleaved round-robin over the plans, the first of each left out \
                 (it pays the handshakes); device (this process, as its board, emulated uplinks) -> edge -> cloud",
                cases.len(),
                plans.len()
            );
            let mut trials = self.trials(setup.problem, plans)?;
            let mut checked = Checked::default();
            self.round(&client, &mut trials, cases, &mut checked).await?;
            let open = report(&trials);
            println!(
                "{} requests on {} plans through 3 processes: every output equals the unsplit model's (max |difference| {:e}); \
                 median |measured / predicted - 1| {:.1}% as predicted ({:.1}% at the 90th percentile), {:.1}% as benchmarked, \
                 {:.1}% now; the machine itself drifted {:.1}% during the round",
                checked.count,
                plans.len(),
                checked.worst,
                open.predicted * 100.0,
                open.p90 * 100.0,
                open.planned * 100.0,
                open.now * 100.0,
                open.drift * 100.0,
            );
            let replanned = closed_loop_plans(setup.problem, device, &trials, plans.len())?;
            let medians: HashMap<_, _> = trials.iter().flat_map(Trial::span_medians).collect();
            let mut again: Vec<Trial<'_>> = self.trials(&replanned.0, &replanned.1)?.into_iter().map(|t| t.based_on(&medians)).collect();
            println!("closed loop: the top {} plans priced with what those requests measured, run the same way:", again.len());
            self.round(&client, &mut again, cases, &mut checked).await?;
            let closed = report(&again);
            println!(
                "closed loop: median |measured / predicted - 1| {:.1}% as predicted ({:.1}% at the 90th percentile), {:.1}% as \
                 priced, {:.1}% now; the machine itself drifted {:.1}% during the round; every output of the {} requests \
                 equals the unsplit model's (max |difference| {:e})",
                closed.predicted * 100.0,
                closed.p90 * 100.0,
                closed.planned * 100.0,
                closed.now * 100.0,
                closed.drift * 100.0,
                checked.count,
                checked.worst
            );
            if checked.worst > 1e-5 {
                bail!("the distributed result differs from the unsplit model by {:e}", checked.worst);
            }
            Ok(())
        })
    }

    /// The trials of `plans`, their spans prepared for timing on the device and remotely.
    fn trials<'p>(&self, problem: &Problem, plans: &'p [Plan]) -> Result<Vec<Trial<'p>>> {
        let profiles = self.setup.profiles;
        let trials = plans.iter().enumerate().map(|(rank, plan)| Trial::new(problem, profiles, plan, rank)).collect::<Result<Vec<_>>>()?;
        self.remote.prepare(spans(&trials, false))?;
        Ok(trials)
    }

    /// One round: each case's request on every plan in turn, each plan's spans timed again
    /// before its request. The first case's requests warm the route up and are left out of
    /// the figures; after them the confirmation pass sets the round's predictions.
    async fn round(
        &self,
        client: &scission_runtime::client::DeviceClient,
        trials: &mut [Trial<'_>],
        cases: &[(TVec<TValue>, TVec<TValue>)],
        checked: &mut Checked,
    ) -> Result<()> {
        let blocks: Vec<scission_core::cut::Block> = self.setup.profiles[0].blocks.iter().map(|b| b.range).collect();
        let mut device_timer = SpanTimer::new(&self.setup.model, &blocks, &spans(trials, true), 1)?;
        let encoding = CostOptions::default().encoding;
        for (i, (inputs, reference)) in cases.iter().enumerate() {
            let counted = i > 0 || cases.len() == 1;
            for (rank, trial) in trials.iter_mut().enumerate() {
                if counted {
                    for (part, retimed) in trial.parts.iter().zip(&mut trial.retimed) {
                        let Some(span) = part.span else { continue };
                        retimed.push(self.time_span(&mut device_timer, span)?);
                    }
                }
                let id = u64::try_from(checked.count).unwrap_or(u64::MAX);
                let outcome =
                    client.infer(id, &trial.route, inputs.clone(), encoding).await.with_context(|| format!("plan #{}", rank + 1))?;
                for ((_, got), want) in outcome.outputs.iter().zip(reference) {
                    checked.worst = checked.worst.max(max_abs_diff(got, want)?);
                }
                if counted {
                    trial.record(&outcome)?;
                }
                checked.count += 1;
            }
            if i == 0 {
                self.confirm(trials, &mut device_timer)?;
            }
        }
        Ok(())
    }

    /// Runs stage span `(machine, first block, end block)` once where it runs and returns its
    /// time: the device's on this thread (its board), the others' on the remote timer.
    fn time_span(&self, device_timer: &mut SpanTimer, (machine, first, end): (usize, usize, usize)) -> Result<u64> {
        match machine {
            DEVICE_MACHINE => Ok(with_threads(1, || device_timer.time((first, end)))?),
            _ => self.remote.time((first, end)),
        }
    }

    /// The confirmation pass (printed): every stage span of `trials` timed side by side
    /// ([`measure_interleaved`]) on the machine that runs it, with the servers up and the
    /// routes warm, as the service is about to run them; each stage's prediction for the round
    /// follows ([`Trial::confirm`]). These are fresh timings, not the ones the plans were
    /// chosen by: a range chosen because its benchmark caught a fast moment would otherwise be
    /// predicted by that luck.
    fn confirm(&self, trials: &mut [Trial<'_>], device_timer: &mut SpanTimer) -> Result<()> {
        let mut spans: Vec<(usize, usize, usize)> = trials.iter().flat_map(|t| t.parts.iter().filter_map(|p| p.span)).collect();
        spans.sort_unstable();
        spans.dedup();
        let budget = Budget {
            warmup: 0,
            min_runs: CONFIRM_RUNS,
            max_runs: CONFIRM_RUNS,
            max_time: embassy_time::Duration::from_ticks(0),
            precision_permille: 0,
        };
        let started = std::time::Instant::now();
        let samples = measure_interleaved(budget, spans.len(), |i| {
            let Some(&span) = spans.get(i) else { bail!("no span {i}") };
            self.time_span(device_timer, span).map(drop)
        })?;
        let confirmed: HashMap<(usize, usize, usize), u64> =
            spans.iter().zip(&samples).filter_map(|(&span, s)| Some((span, Summary::of(s)?.median_ns))).collect();
        for trial in trials.iter_mut() {
            trial.confirm(&confirmed);
        }
        println!(
            "confirmation pass: the {} stage ranges of these plans timed again {CONFIRM_RUNS} times side by side, on their machines, \
             with the servers up ({:.1} s); the round is predicted from them",
            spans.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The median over a round's plans of |measured / predicted - 1|: at the median as planned
/// (benchmarked, or priced by the closed loop), as predicted after the confirmation pass,
/// paired with the machine just before each request, and at the 90th percentile (predicted
/// after the confirmation pass).
struct Errors {
    planned: f64,
    predicted: f64,
    now: f64,
    p90: f64,
    /// How far the machine itself moved during the round: the median over the plans of
    /// |predicted now / predicted - 1| (the same ranges, timed between the requests, against
    /// the confirmation pass). No prediction made before the round can beat it by much.
    drift: f64,
}

/// How far the 90th percentile of `profile`'s blocks `[first, end)` lies above their median:
/// the range's own, where the verification pass timed it as one slice, else the blocks'
/// spreads added as independent ones.
fn spread(profile: &Profile, first: usize, end: usize) -> u64 {
    if let Some(r) = profile.ranges.iter().find(|r| (r.first_block, r.end_block) == (first, end)) {
        return r.time.p90_ns.saturating_sub(r.time.median_ns);
    }
    let blocks = profile.blocks.get(first..end).unwrap_or_default();
    let squares: f64 = blocks.iter().map(|b| (b.time.p90_ns.saturating_sub(b.time.median_ns) as f64).powi(2)).sum();
    squares.sqrt().round() as u64
}

/// Prints a round's table (each plan's p50 as planned; p50 and p90 as predicted after the
/// confirmation pass, predicted now, and measured) and where the time went (each part's
/// median: as planned, predicted, now, measured); returns the median errors.
fn report(trials: &[Trial<'_>]) -> Errors {
    let ms = |ns: u64| ns as f64 * 1e-6;
    let pct = |measured: u64, predicted: u64| (measured as f64 / predicted.max(1) as f64 - 1.0) * 100.0;
    println!(
        "{:>4}  {:>8}  {:>8} {:>7}  {:>7} {:>7}  {:>7} {:>7}  {:>7} {:>7} {:>7} {:>7}  route",
        "plan", "planned", "pred.", "p90", "now", "p90", "meas.", "p90", "planned", "pred.", "now", "p90"
    );
    let (mut planned, mut predicted, mut now, mut p90s, mut drift) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (rank, t) in trials.iter().enumerate() {
        let predictions = t.predictions_now().unwrap_or_default();
        let (Some(measured), Some(now_summary), Some(paired)) = (Summary::of(&t.totals), Summary::of(&predictions), t.paired_error())
        else {
            println!("{:>4}  (no request counted)", format!("#{}", rank + 1));
            continue;
        };
        let errors = [
            pct(measured.median_ns, t.plan.cost.latency_ns),
            pct(measured.median_ns, t.predicted_ns),
            paired * 100.0,
            pct(measured.p90_ns, t.predicted_p90()),
        ];
        for (kept, error) in [&mut planned, &mut predicted, &mut now, &mut p90s].into_iter().zip(errors) {
            kept.push(error.abs());
        }
        drift.push(pct(now_summary.median_ns, t.predicted_ns).abs());
        println!(
            "{:>4}  {:>8.1}  {:>8.1} {:>7.1}  {:>7.1} {:>7.1}  {:>7.1} {:>7.1}  {:>+6.1}% {:>+6.1}% {:>+6.1}% {:>+6.1}%  {}",
            format!("#{}", rank + 1),
            ms(t.plan.cost.latency_ns),
            ms(t.predicted_ns),
            ms(t.predicted_p90()),
            ms(now_summary.median_ns),
            ms(now_summary.p90_ns),
            ms(measured.median_ns),
            ms(measured.p90_ns),
            errors[0],
            errors[1],
            errors[2],
            errors[3],
            describe_route(&t.route)
        );
    }
    println!("where the time went (medians, ms: as planned / predicted / now / measured):");
    for (rank, t) in trials.iter().enumerate() {
        let parts: Vec<String> = t
            .parts
            .iter()
            .zip(&t.measured)
            .zip(&t.retimed)
            .map(|((part, measured), retimed)| {
                let median = |v: &[u64]| Summary::of(v).map(|s| s.median_ns);
                let now = match part.span {
                    Some(_) => median(retimed).map(|ns| part.now_ns(ns)),
                    None => Some(part.predicted_ns),
                };
                let shown = |ns: Option<u64>| ns.map_or(f64::NAN, ms);
                format!(
                    "{} {:.1} / {:.1} / {:.1} / {:.1}",
                    part.label,
                    ms(part.planned_ns),
                    ms(part.predicted_ns),
                    shown(now),
                    shown(median(measured))
                )
            })
            .collect();
        println!("  #{} {}", rank + 1, parts.join("  |  "));
    }
    let middle = |v: Vec<f64>| median(v).map_or(f64::NAN, |m| m / 100.0);
    Errors { planned: middle(planned), predicted: middle(predicted), now: middle(now), p90: middle(p90s), drift: middle(drift) }
}

/// The median of `values` (the mean of the middle two for an even count, as
/// [`Summary::of`] takes it); `None` when there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n % 2 {
        1 => values.get(n / 2).copied(),
        _ => Some((values.get(n.checked_sub(1)? / 2)? + values.get(n / 2)?) / 2.0),
    }
}

/// The closed loop, as a device's planner runs it: every counted request of `trials` goes
/// into the running estimates (each stage's compute, each hop's residual over its link's
/// figures), the estimates price the problem, and the solver ranks the plans again (printed:
/// each new plan with the rank it had).
fn closed_loop_plans(problem: &Problem, device: &Profile, trials: &[Trial<'_>], count: usize) -> Result<(Problem, Vec<Plan>)> {
    let mut observed = ObservedCosts::default();
    for t in trials {
        for request in 0..t.totals.len() {
            let mut hops = Vec::new();
            let mut stages = t.route.iter();
            for (part, samples) in t.parts.iter().zip(&t.measured) {
                let Some(&ns) = samples.get(request) else { continue };
                match part.span {
                    Some(_) => {
                        let stage = stages.next().context("fewer stages than parts")?;
                        observed.record(stage.tier, stage.block(), ns);
                    }
                    None => hops.push(ns),
                }
            }
            let tiers: Vec<u8> = std::iter::once(0).chain(t.route.iter().map(|s| s.tier).filter(|&tier| tier != 0)).collect();
            let paired: Vec<((u8, u8), u64)> = tiers.windows(2).map(|w| (w[0], w[1])).zip(hops).collect();
            for (hop, residual) in pricing::hop_residuals(problem, &device.blocks, &t.route, &paired).unwrap_or_default() {
                observed.record_hop(hop, residual);
            }
        }
    }
    let mut priced = problem.clone();
    pricing::price(&mut priced, &device.blocks, &observed);
    let plans = solver::solve(&priced, &Constraints::default(), Objective::Latency, count)?;
    let was =
        |plan: &Plan| trials.iter().position(|t| t.plan.segments == plan.segments).map_or("new".to_string(), |r| format!("#{}", r + 1));
    for (rank, plan) in plans.iter().enumerate() {
        let route = plan_route(plan, &device.blocks, |_| 0).map(|r| describe_route(&r)).unwrap_or_default();
        println!("  #{} (was {}) {:.1} ms  {route}", rank + 1, was(plan), plan.cost.latency_ns as f64 * 1e-6);
    }
    Ok((priced, plans))
}
