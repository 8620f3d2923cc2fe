//! The device's run: requests through the partitioned pipeline, driven by the core's
//! [`DevicePolicy`] (which route, failover, recovery, re-planning). This module only carries out
//! the policy's actions: it runs stages, talks QUIC, solves or asks the cloud for plans, probes
//! down tiers in the background, and reports what happens as [`DeviceEvent`]s. It prints
//! nothing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Context, Result, bail, error as invalid};
use scission_engine::tract::prelude::*;
use tokio::sync::mpsc;

use scission_core::link::{Encoding, Link};
use scission_core::policy::{Action, DevicePolicy, Event, PolicyConfig, ReplanReason, RequestFailure, Route, plan_route, split_route};
use scission_core::profile::Profile;
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles, set_link};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Problem};
use scission_core::wire::message::{Stage, StageTiming};
use scission_engine::input::synthetic_inputs;
use scission_engine::{Model, with_threads};
use scission_net::{emulator, pki, quic};

use crate::client::{DeviceClient, Outcome, Peer, RequestError};
use crate::error::RuntimeError;
use crate::node::Node;

/// Routes asked of the solver or the cloud.
const RANKED: u16 = 16;
/// Bytes of the large link probe.
const PROBE_BYTES: usize = 64 * 1024;

/// Where the device's plans come from.
#[derive(Clone, Debug)]
pub enum Planning {
    /// One fixed route: the device runs `[0, device_end)`, the edge up to `edge_end`, the cloud
    /// the rest.
    Split {
        /// End of the device's range.
        device_end: usize,
        /// End of the edge's range.
        edge_end: usize,
    },
    /// The solver, here, from the three tiers' profiles and link figures (`FROM-TO=BW,LAT`).
    Profiles {
        /// Device, edge and cloud profiles.
        profiles: Vec<Profile>,
        /// Link figures.
        links: Vec<String>,
    },
    /// The cloud's planner, sent this device's profile and its measured uplinks.
    Cloud {
        /// This device's profile, as JSON.
        profile_json: Vec<u8>,
        /// Link figures (used only to emulate the uplinks).
        links: Vec<String>,
    },
}

/// An emulated uplink that changes before a given request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkChange {
    /// The request before which the link changes.
    pub before_request: u32,
    /// The tier the uplink goes to.
    pub tier: u8,
    /// The new figures.
    pub link: Link,
}

/// Everything a device run needs besides its model.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// The cluster directory (CA and certificates).
    pub cluster: PathBuf,
    /// This device's enrolled name.
    pub name: String,
    /// The edge server.
    pub edge: Option<Peer>,
    /// The cloud server.
    pub cloud: Option<Peer>,
    /// Where plans come from.
    pub planning: Planning,
    /// Failover, recovery and re-planning tunables.
    pub policy: PolicyConfig,
    /// Pause between requests.
    pub interval: Duration,
    /// Emulate the planned uplinks on this device's socket.
    pub emulate: bool,
    /// With `emulate`: a link change during the run.
    pub emulate_change: Option<LinkChange>,
    /// Give up on a tier after this long without an answer.
    pub timeout: Duration,
    /// Requests to run.
    pub requests: u32,
    /// Inputs, used in turn; empty: deterministic random inputs from `seed`.
    pub inputs: Vec<TValue>,
    /// Activation encoding on the wire.
    pub encoding: Encoding,
    /// Engine threads on the device.
    pub threads: usize,
    /// Seed of the synthetic inputs.
    pub seed: u64,
    /// Check each result against the unsplit model.
    pub check: bool,
    /// Largest frame accepted.
    pub max_frame: u32,
}

/// Why the best route changed.
#[derive(Clone, Debug, PartialEq)]
pub enum SwitchCause {
    /// The links were re-measured as these figures.
    Measured(Vec<(u8, Link)>),
    /// These tiers went down.
    Down(Vec<u8>),
    /// A tier came back.
    Recovered,
    /// The first plan arrived.
    FirstPlan,
}

/// What happens during a run, for the caller to show.
#[derive(Debug)]
pub enum DeviceEvent<'a> {
    /// The best route at the start.
    Plan {
        /// Its stages.
        route: &'a [Stage],
    },
    /// An emulated uplink changed.
    LinkChanged {
        /// The tier.
        tier: u8,
        /// The new figures.
        link: Link,
        /// The request it changed after.
        after_request: u32,
    },
    /// A request's route failed at `tier`; it is retried on another.
    FailedOver {
        /// The request.
        request: u64,
        /// The tier.
        tier: u8,
        /// What happened.
        reason: &'a str,
    },
    /// A tier answered a probe after being down, and is used again.
    TierUp {
        /// The tier.
        tier: u8,
    },
    /// The best route changed.
    Switched {
        /// Why.
        cause: &'a SwitchCause,
        /// The route before.
        from: Option<&'a [Stage]>,
        /// The route now.
        to: &'a [Stage],
    },
    /// A request completed.
    Completed {
        /// The request.
        request: u64,
        /// Its route's rank when it was sent (0 = best).
        rank: usize,
        /// End-to-end time.
        total_ns: u64,
        /// The planner's prediction for its route.
        predicted_ns: Option<u64>,
        /// Compute time of each stage.
        timings: &'a [StageTiming],
        /// Largest absolute difference from the unsplit model, when checked.
        difference: Option<f32>,
    },
    /// A request failed for good.
    Failed {
        /// The request.
        request: u64,
        /// Why.
        error: &'a str,
    },
}

/// What a run achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Requests that completed.
    pub ok: u32,
    /// Requests that failed.
    pub failed: u32,
    /// The largest difference from the unsplit model, when results were checked.
    pub largest_difference: Option<f32>,
    /// Median relative error of measured against predicted latency, and how many requests it
    /// is over (the first request on each route is left out: it pays the handshake).
    pub prediction_error: Option<(usize, f64)>,
}

/// Runs `config.requests` requests of `model` through the pipeline.
pub fn run(config: &DeviceConfig, model: Model, mut on_event: impl FnMut(DeviceEvent<'_>)) -> Result<RunSummary> {
    let identity = pki::Identity::load(&config.cluster, &config.name)?;
    let node = Arc::new(Node::new(model, 0, config.threads)?);
    let whole = if config.check { Some(node.model.whole()?) } else { None };
    crate::async_runtime()?.block_on(async {
        let mut planner = Planner::new(&config.planning, config.encoding, node.model.summary.len())?;
        let peers = peers(config);
        let (endpoint, shapers) = endpoint(config, &identity, &peers, &planner.uplinks)?;
        let client = Arc::new(DeviceClient::new(node.clone(), endpoint, peers.clone(), config.max_frame, config.timeout));
        let (routes, links) = planner.initial(&client, &peers).await?;
        check_addresses(&routes, &peers)?;
        let mut run = Run {
            config,
            node: &node,
            whole: whole.as_ref(),
            client,
            planner,
            policy: DevicePolicy::new(config.policy, routes, links),
            probes: mpsc::unbounded_channel(),
            outcomes: HashMap::new(),
            inputs: HashMap::new(),
            last_cause: SwitchCause::FirstPlan,
            summary: RunSummary { ok: 0, failed: 0, largest_difference: None, prediction_error: None },
            measured: Vec::new(),
            started: std::time::Instant::now(),
        };
        let first = run.policy.best_available().map(|(_, r)| r.stages.clone()).context("the planner returned no route")?;
        on_event(DeviceEvent::Plan { route: &first });
        for i in 0..config.requests {
            if i > 0 && !config.interval.is_zero() {
                tokio::time::sleep(config.interval).await;
            }
            if let Some(change) = config.emulate_change.filter(|c| c.before_request == i)
                && let Some(shaper) = shapers.get(&change.tier)
            {
                shaper.set(change.link);
                on_event(DeviceEvent::LinkChanged { tier: change.tier, link: change.link, after_request: i.saturating_sub(1) });
            }
            run.request(u64::from(i), &mut on_event).await?;
        }
        run.summary.prediction_error = prediction_error(&run.measured);
        Ok(run.summary)
    })
}

/// Tier index -> address, for the tiers given.
fn peers(config: &DeviceConfig) -> HashMap<u8, Peer> {
    [(1u8, &config.edge), (2, &config.cloud)].into_iter().filter_map(|(t, p)| p.clone().map(|p| (t, p))).collect()
}

/// Every tier the best route uses must have an address.
fn check_addresses(routes: &[Route], peers: &HashMap<u8, Peer>) -> Result<()> {
    if let Some(first) = routes.first() {
        for stage in first.stages.iter().filter(|s| s.tier > 0) {
            if !peers.contains_key(&stage.tier) {
                let flag = if stage.tier == 1 { "edge" } else { "cloud" };
                bail!("the plan gives tier {} work, but its address (--{flag}) is missing", stage.tier);
            }
        }
    }
    Ok(())
}

/// The client endpoint, with emulated uplinks when asked for; also the shapers by tier.
fn endpoint(
    config: &DeviceConfig,
    identity: &pki::Identity,
    peers: &HashMap<u8, Peer>,
    uplinks: &HashMap<u8, Link>,
) -> Result<(quinn::Endpoint, HashMap<u8, Arc<emulator::Shaper>>)> {
    let (mut by_addr, mut by_tier) = (HashMap::new(), HashMap::new());
    if config.emulate {
        for (tier, peer) in peers {
            if let Some(link) = uplinks.get(tier) {
                let shaper = emulator::Shaper::new(*link);
                by_tier.insert(*tier, shaper.clone());
                by_addr.insert(peer.addr, shaper);
            }
        }
    }
    Ok((quic::client_with_links(identity, by_addr)?, by_tier))
}

/// Ranks routes: one fixed split, the local solver, or the cloud.
struct Planner {
    kind: PlannerKind,
    /// The device's uplinks as the plan assumes them (and as `--emulate` shapes them).
    uplinks: HashMap<u8, Link>,
}

enum PlannerKind {
    Fixed(Vec<Stage>),
    Local { problem: Box<Problem>, blocks: Vec<scission_core::profile::BlockProfile> },
    Cloud { profile_json: Vec<u8> },
}

impl Planner {
    fn new(planning: &Planning, encoding: Encoding, nodes: usize) -> Result<Self> {
        match planning {
            Planning::Split { device_end, edge_end } => {
                let route = split_route(*device_end, *edge_end, nodes).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
                Ok(Self { kind: PlannerKind::Fixed(route), uplinks: HashMap::new() })
            }
            Planning::Profiles { profiles, links } => {
                let [device, ..] = profiles.as_slice() else { bail!("no profiles to plan with") };
                let options = CostOptions { encoding, ..CostOptions::default() };
                let mut problem =
                    problem_from_profiles(profiles, &Topology::default(), None, options).context("planning from the profiles")?;
                for text in links {
                    apply_link_spec(&mut problem, text, true).map_err(|e| invalid!("--link {e}"))?;
                }
                let uplinks = device_uplinks(&problem);
                Ok(Self { kind: PlannerKind::Local { problem: Box::new(problem), blocks: device.blocks.clone() }, uplinks })
            }
            Planning::Cloud { profile_json, links } => {
                Ok(Self { kind: PlannerKind::Cloud { profile_json: profile_json.clone() }, uplinks: uplinks_from_specs(links)? })
            }
        }
    }

    /// The first ranking (the cloud is asked with freshly measured uplinks), and the uplink
    /// figures it assumed (later re-plans start from them).
    async fn initial(&mut self, client: &DeviceClient, peers: &HashMap<u8, Peer>) -> Result<(Vec<Route>, Vec<(u8, Link)>)> {
        let links = match self.kind {
            PlannerKind::Cloud { .. } => measure_uplinks(client, peers.keys().copied()).await,
            _ => {
                let mut links: Vec<(u8, Link)> = self.uplinks.iter().map(|(t, l)| (*t, *l)).collect();
                links.sort_by_key(|(t, _)| *t);
                links
            }
        };
        Ok((self.rank(client, &[], &links).await?, links))
    }

    /// Routes avoiding `avoid`, with the device's uplinks set to `links`.
    async fn rank(&mut self, client: &DeviceClient, avoid: &[u8], links: &[(u8, Link)]) -> Result<Vec<Route>> {
        match &mut self.kind {
            PlannerKind::Fixed(stages) => Ok(vec![Route { stages: stages.clone(), predicted_ns: None }]
                .into_iter()
                .filter(|r| avoid.iter().all(|t| !r.uses(*t)))
                .collect()),
            PlannerKind::Local { problem, blocks } => {
                set_device_uplinks(problem, links);
                let constraints = Constraints { must_not_use: avoid.iter().map(|&t| usize::from(t)).collect(), ..Constraints::default() };
                let plans = solver::solve(problem, &constraints, Objective::Latency, usize::from(RANKED))?;
                plans
                    .iter()
                    .map(|p| {
                        let stages = plan_route(p, blocks).context("the plan does not fit the profiled blocks")?;
                        Ok(Route { stages, predicted_ns: Some(p.cost.latency_ns) })
                    })
                    .collect()
            }
            PlannerKind::Cloud { profile_json } => {
                let links: HashMap<u8, Link> = links.iter().copied().collect();
                let ranked = client.request_plans(2, profile_json, &links, avoid, RANKED).await?;
                Ok(ranked.into_iter().map(|(stages, predicted)| Route { stages, predicted_ns: Some(predicted) }).collect())
            }
        }
    }
}

/// The device's uplinks in a problem, by tier.
fn device_uplinks(problem: &Problem) -> HashMap<u8, Link> {
    let device = problem.machines.iter().position(|m| m.tier == 0);
    let mut uplinks = HashMap::new();
    for (m, machine) in problem.machines.iter().enumerate().filter(|(_, m)| m.tier > 0) {
        if let (Some(link), Ok(tier)) = (device.and_then(|d| problem.link(d, m)), u8::try_from(machine.tier)) {
            uplinks.insert(tier, link);
        }
    }
    uplinks
}

/// Sets the device's uplink to every machine of each measured tier.
fn set_device_uplinks(problem: &mut Problem, links: &[(u8, Link)]) {
    let Some(device) = problem.machines.iter().position(|m| m.tier == 0) else { return };
    let targets: Vec<(usize, usize)> = problem.machines.iter().enumerate().map(|(m, machine)| (m, machine.tier)).collect();
    for (m, tier) in targets {
        if let Some((_, link)) = links.iter().find(|(t, _)| usize::from(*t) == tier && tier > 0) {
            set_link(problem, device, m, *link);
        }
    }
}

/// The device -> edge and device -> cloud figures among `--link` specs.
fn uplinks_from_specs(specs: &[String]) -> Result<HashMap<u8, Link>> {
    let mut uplinks = HashMap::new();
    for text in specs {
        let spec = scission_core::solver::linkspec::parse_link_spec(text, |n| ["device", "edge", "cloud"].contains(&n))
            .map_err(|e| invalid!("--link {e}"))?;
        match (spec.from.as_str(), spec.to.as_str()) {
            ("device", "edge") => drop(uplinks.insert(1, spec.link)),
            ("device", "cloud") => drop(uplinks.insert(2, spec.link)),
            _ => {}
        }
    }
    Ok(uplinks)
}

/// Measures the links to `tiers`, leaving out those that do not answer.
async fn measure_uplinks(client: &DeviceClient, tiers: impl Iterator<Item = u8>) -> Vec<(u8, Link)> {
    let mut measured = Vec::new();
    for tier in tiers {
        match client.measure_link(tier, PROBE_BYTES).await {
            Ok(link) => measured.push((tier, link)),
            Err(e) => tracing::warn!("could not measure the link to tier {tier}: {e:#}"),
        }
    }
    measured.sort_by_key(|(t, _)| *t);
    measured
}

/// One run's state: the policy and what its actions need.
struct Run<'a> {
    config: &'a DeviceConfig,
    node: &'a Arc<Node>,
    whole: Option<&'a Arc<TypedRunnableModel>>,
    client: Arc<DeviceClient>,
    planner: Planner,
    policy: DevicePolicy,
    /// Results of background probes.
    probes: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    /// The outcome of each request's successful try, until the policy reports it done.
    outcomes: HashMap<u64, (Outcome, usize)>,
    /// Each outstanding request's inputs (a failover sends them again).
    inputs: HashMap<u64, TVec<TValue>>,
    /// Why the policy last asked for plans.
    last_cause: SwitchCause,
    summary: RunSummary,
    /// (route, measured ns, predicted ns) of every completed request.
    measured: Vec<(Vec<Stage>, u64, Option<u64>)>,
    started: std::time::Instant,
}

impl Run<'_> {
    fn now(&self) -> embassy_time::Instant {
        embassy_time::Instant::from_micros(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        self.policy.handle(now, event);
    }

    /// Serves request `id` to its end: a result or an explicit failure.
    async fn request(&mut self, id: u64, on_event: &mut impl FnMut(DeviceEvent<'_>)) -> Result<()> {
        let inputs = match self.config.inputs.is_empty() {
            true => synthetic_inputs(&self.node.model, self.config.seed.wrapping_add(id))?,
            false => {
                let index = usize::try_from(id).unwrap_or(0) % self.config.inputs.len();
                tvec![self.config.inputs[index].clone()]
            }
        };
        let reference = match self.whole {
            Some(plan) => Some(with_threads(1, || plan.run(inputs.clone()))?),
            None => None,
        };
        self.inputs.insert(id, inputs);
        self.drain_probes();
        self.feed(Event::Tick);
        self.feed(Event::Submit { request: id });
        while self.inputs.contains_key(&id) {
            let Some(action) = self.policy.poll() else {
                // The policy waits only on what this loop carries out; nothing pending is a bug.
                self.inputs.remove(&id);
                bail!("request {id} was left without an outcome");
            };
            self.carry_out(action, reference.as_ref(), on_event).await?;
        }
        Ok(())
    }

    async fn carry_out(
        &mut self,
        action: Action,
        reference: Option<&TVec<TValue>>,
        on_event: &mut impl FnMut(DeviceEvent<'_>),
    ) -> Result<()> {
        match action {
            Action::Send { request, rank, stages } => self.send(request, rank, &stages).await,
            Action::Probe { tier } => self.probe_in_background(tier),
            Action::MeasureLinks { tiers } => {
                let links = measure_uplinks(&self.client, tiers.into_iter()).await;
                self.last_cause = SwitchCause::Measured(links.clone());
                self.feed(Event::LinksMeasured(links));
            }
            Action::Replan { avoid, links, reason } => {
                if reason == ReplanReason::NoRouteAvoidingDown {
                    self.last_cause = SwitchCause::Down(avoid.clone());
                } else if reason == ReplanReason::TierRecovered {
                    self.last_cause = SwitchCause::Recovered;
                }
                let event = match self.planner.rank(&self.client, &avoid, &links).await {
                    Ok(routes) => Event::Plans(routes),
                    Err(e) => {
                        tracing::warn!("re-planning without tiers {avoid:?} failed: {e:#}");
                        Event::PlanFailed { reason: format!("{e:#}") }
                    }
                };
                self.feed(event);
            }
            Action::Done { request, route, elapsed_ns } => self.completed(request, route, elapsed_ns, reference, on_event)?,
            Action::Fail { request, failure } => {
                self.inputs.remove(&request);
                self.outcomes.remove(&request);
                self.summary.failed = self.summary.failed.saturating_add(1);
                on_event(DeviceEvent::Failed { request, error: &describe_failure(&failure) });
            }
            Action::FailedOver { request, tier, reason } => on_event(DeviceEvent::FailedOver { request, tier, reason: &reason }),
            Action::TierDown { tier } => tracing::warn!("tier {tier} is down; probing it again after a back-off"),
            Action::TierUp { tier } => on_event(DeviceEvent::TierUp { tier }),
            Action::Switched { from, to } => on_event(DeviceEvent::Switched {
                cause: &self.last_cause,
                from: from.as_ref().map(|r| r.stages.as_slice()),
                to: &to.stages,
            }),
        }
        Ok(())
    }

    async fn send(&mut self, request: u64, rank: usize, stages: &[Stage]) {
        let Some(inputs) = self.inputs.get(&request).cloned() else { return };
        let event = match self.client.infer(request, stages, inputs, self.config.encoding).await {
            Ok(outcome) => {
                let elapsed_ns = outcome.total_ns;
                self.outcomes.insert(request, (outcome, rank));
                Event::Answered { request, elapsed_ns }
            }
            Err(RequestError::Unreachable { tier, reason }) => Event::Unreachable { request, tier, reason },
            Err(RequestError::Busy { tier }) => Event::Busy { request, tier },
            Err(RequestError::Failed(e)) => Event::Rejected { request, reason: format!("{e:#}") },
        };
        self.feed(event);
    }

    fn completed(
        &mut self,
        request: u64,
        route: Route,
        elapsed_ns: u64,
        reference: Option<&TVec<TValue>>,
        on_event: &mut impl FnMut(DeviceEvent<'_>),
    ) -> Result<()> {
        self.inputs.remove(&request);
        let (outcome, rank) = self.outcomes.remove(&request).with_context(|| format!("request {request} completed without an outcome"))?;
        let difference = reference.map(|r| max_diff(&outcome.outputs, r)).transpose()?;
        if let Some(d) = difference {
            self.summary.largest_difference = Some(self.summary.largest_difference.map_or(d, |w| w.max(d)));
        }
        self.summary.ok = self.summary.ok.saturating_add(1);
        self.measured.push((route.stages.clone(), elapsed_ns, route.predicted_ns));
        on_event(DeviceEvent::Completed {
            request,
            rank,
            total_ns: elapsed_ns,
            predicted_ns: route.predicted_ns,
            timings: &outcome.timings,
            difference,
        });
        Ok(())
    }

    /// Probes `tier` without holding up requests; the answer is fed in later.
    fn probe_in_background(&mut self, tier: u8) {
        let (client, sender) = (self.client.clone(), self.probes.0.clone());
        tokio::spawn(async move {
            let event = match client.measure_link(tier, 4096).await {
                Ok(_) => Event::ProbeAnswered { tier },
                Err(e) => Event::ProbeFailed { tier, reason: format!("{e:#}") },
            };
            let _ = sender.send(event);
        });
    }

    fn drain_probes(&mut self) {
        while let Ok(event) = self.probes.1.try_recv() {
            self.feed(event);
        }
    }
}

/// One line for a failure.
fn describe_failure(failure: &RequestFailure) -> String {
    match failure {
        RequestFailure::NoRoute { down } => format!("no plan avoids the unreachable tier(s) {down:?}"),
        RequestFailure::TooManyAttempts { attempts } => format!("gave up after {attempts} tries, each met an unreachable tier"),
        RequestFailure::Busy { tiers } => format!("every plan left goes through a busy tier {tiers:?}; try again later"),
        RequestFailure::Rejected { reason } => reason.clone(),
    }
}

/// Median relative error of measured against predicted latency; the first request on each
/// route is left out (it pays the connection handshake).
fn prediction_error(measured: &[(Vec<Stage>, u64, Option<u64>)]) -> Option<(usize, f64)> {
    let mut seen = HashSet::new();
    let mut errors: Vec<f64> = measured
        .iter()
        .filter(|(route, _, _)| !seen.insert(route.clone()))
        .filter_map(|(_, ns, predicted)| predicted.filter(|p| *p > 0).map(|p| (*ns as f64 - p as f64) / p as f64))
        .collect();
    if errors.is_empty() {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    Some((errors.len(), errors[errors.len() / 2]))
}

fn max_diff(outputs: &[(usize, TValue)], reference: &TVec<TValue>) -> Result<f32> {
    if outputs.len() != reference.len() {
        bail!("{} outputs, expected {}", outputs.len(), reference.len());
    }
    outputs
        .iter()
        .zip(reference)
        .try_fold(0f32, |worst, ((_, got), want)| Ok(worst.max(scission_engine::pipeline::max_abs_diff(got, want)?)))
}
