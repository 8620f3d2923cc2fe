//! Where a device's ranked routes come from: one fixed split, the solver here (from the tiers'
//! profiles and link figures), or the cloud's planner (sent this device's profile and its
//! measured uplinks). Also measures the device's uplinks.

use std::collections::HashMap;

use crate::error::{Context, Result, bail, error as invalid};
use scission_core::cut::Block;
use scission_core::link::{Encoding, Link};
use scission_core::policy::{ObservedCosts, Route, TierHop, measured_hops, plan_route, split_route};
use scission_core::profile::{BlockProfile, Profile};
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles, set_link};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Problem, RangeCost, Segment};
use scission_core::wire::message::{Stage, StageTiming};

use crate::client::{DeviceClient, Peer};
use crate::error::RuntimeError;

/// Routes asked of the solver or the cloud.
const RANKED: u16 = 16;
/// Bytes of the large link probe.
pub(crate) const PROBE_BYTES: usize = 64 * 1024;

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

/// Ranks routes: one fixed split, the local solver, or the cloud.
pub(crate) struct Planner {
    kind: PlannerKind,
    /// The device's uplinks as the plan assumes them (and as `--emulate` shapes them).
    pub(crate) uplinks: HashMap<u8, Link>,
}

enum PlannerKind {
    Fixed(Vec<Stage>),
    Local {
        problem: Box<Problem>,
        blocks: Vec<BlockProfile>,
        observed: ObservedCosts,
        /// The device's memory, as the solver's cap on tier 0.
        memory_cap: Vec<(usize, u64)>,
    },
    Cloud {
        profile_json: Vec<u8>,
        device_memory: Option<u64>,
    },
}

impl Planner {
    /// A planner for `planning`; `device_memory` (bytes the device may use) caps the device's
    /// slice in every ranking, the local solver's and the cloud's.
    pub(crate) fn new(planning: &Planning, encoding: Encoding, nodes: usize, device_memory: Option<u64>) -> Result<Self> {
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
                let memory_cap = device_memory.map(|m| (0, scission_core::memory::solver_cap(m))).into_iter().collect();
                let kind = PlannerKind::Local {
                    problem: Box::new(problem),
                    blocks: device.blocks.clone(),
                    observed: ObservedCosts::default(),
                    memory_cap,
                };
                Ok(Self { kind, uplinks })
            }
            Planning::Cloud { profile_json, links } => {
                let kind = PlannerKind::Cloud { profile_json: profile_json.clone(), device_memory };
                Ok(Self { kind, uplinks: uplinks_from_specs(links)? })
            }
        }
    }

    /// The uplink figures the first ranking assumes: measured when the cloud plans (tiers
    /// that do not answer are left out), else as configured.
    pub(crate) async fn initial_links(&self, client: &DeviceClient, peers: &HashMap<u8, Peer>) -> Vec<(u8, Link)> {
        match self.kind {
            PlannerKind::Cloud { .. } => measure_uplinks(client, peers.keys().copied()).await,
            _ => {
                let mut links: Vec<(u8, Link)> = self.uplinks.iter().map(|(t, l)| (*t, *l)).collect();
                links.sort_by_key(|(t, _)| *t);
                links
            }
        }
    }

    /// Whether rankings come from the cloud (so none can be had while it is down).
    pub(crate) fn asks_the_cloud(&self) -> bool {
        matches!(self.kind, PlannerKind::Cloud { .. })
    }

    /// Whether [`Planner::observe`] is of use: only the local solver keeps running estimates.
    pub(crate) fn keeps_estimates(&self) -> bool {
        matches!(self.kind, PlannerKind::Local { .. })
    }

    /// Takes in what an answered request cost: each stage's compute (`timings`, one per tier
    /// of `route`) and each hop's time beyond what its link figures predict (from the tiers'
    /// hold times and `total_ns`, the device's end to end time). The local solver ranks with
    /// these running estimates in place of the profiles' and links' figures, from the next
    /// ranking on. The fixed split and the cloud's planner keep their own.
    pub(crate) fn observe(&mut self, route: &Route, timings: &[StageTiming], total_ns: u64) {
        let PlannerKind::Local { problem, blocks, observed, .. } = &mut self.kind else { return };
        for stage in &route.stages {
            if let Some(t) = timings.iter().find(|t| t.tier == stage.tier) {
                let block = Block { start: stage.start as usize, end: stage.end as usize };
                observed.record(stage.tier, block, t.compute_ns);
            }
        }
        for (hop, residual) in hop_residuals(problem, blocks, route, timings, total_ns).unwrap_or_default() {
            observed.record_hop(hop, residual);
        }
    }

    /// Routes avoiding `avoid`, with the device's uplinks set to `links`.
    pub(crate) async fn rank(&mut self, client: &DeviceClient, avoid: &[u8], links: &[(u8, Link)]) -> Result<Vec<Route>> {
        match &mut self.kind {
            PlannerKind::Fixed(stages) => Ok(vec![Route { stages: stages.clone(), predicted_ns: None }]
                .into_iter()
                .filter(|r| avoid.iter().all(|t| !r.uses(*t)))
                .collect()),
            PlannerKind::Local { problem, blocks, observed, memory_cap } => {
                set_device_uplinks(problem, links);
                // The problem keeps the profiles' and links' figures; each ranking prices a copy
                // with what has been observed since.
                let mut problem = problem.clone();
                apply_observed(&mut problem, blocks, observed);
                apply_hop_residuals(&mut problem, observed);
                // The local solver plans tiers (one machine each): a registered machine's key
                // (with the REGISTERED_SERVER bit) names none of them.
                let tiers = avoid.iter().filter(|k| *k & scission_core::wire::message::REGISTERED_SERVER == 0);
                let constraints = Constraints {
                    must_not_use: tiers.map(|&t| usize::from(t)).collect(),
                    memory_cap: memory_cap.clone(),
                    ..Constraints::default()
                };
                let plans = solver::solve(&problem, &constraints, Objective::Latency, usize::from(RANKED))?;
                plans
                    .iter()
                    .map(|p| {
                        let stages = plan_route(p, blocks, |_| 0).context("the plan does not fit the profiled blocks")?;
                        Ok(Route { stages, predicted_ns: Some(p.cost.latency_ns) })
                    })
                    .collect()
            }
            PlannerKind::Cloud { profile_json, device_memory } => {
                // The cloud plans only with measured uplinks: measure those not known yet (a
                // tier that was down at start and has come back).
                let mut links: HashMap<u8, Link> = links.iter().copied().collect();
                let missing: Vec<u8> = client.tiers().into_iter().filter(|t| !links.contains_key(t) && !avoid.contains(t)).collect();
                links.extend(measure_uplinks(client, missing.into_iter()).await);
                let ranked = client.request_plans(2, profile_json, &links, avoid, RANKED, *device_memory).await?;
                Ok(ranked.into_iter().map(|(stages, predicted)| Route { stages, predicted_ns: Some(predicted) }).collect())
            }
        }
    }
}

/// Puts the running estimates into `problem` as measured ranges of their tier's machines, for
/// the stages the solver can cost exactly (those from the first block or to the last; see
/// [`RangeCost`](scission_core::solver::RangeCost)). A stage that does not fall on block
/// boundaries is left out.
fn apply_observed(problem: &mut Problem, blocks: &[BlockProfile], observed: &ObservedCosts) {
    let n = blocks.len();
    for (tier, block, ns) in observed.estimates() {
        let Some((first, end)) = block_span(blocks, block) else { continue };
        if first >= end || (first != 0 && end != n) {
            continue;
        }
        for machine in problem.machines.iter_mut().filter(|m| m.tier == usize::from(tier)) {
            machine.ranges.retain(|r| (r.start, r.end) != (first, end));
            machine.ranges.push(RangeCost { start: first, end, ns });
        }
    }
}

/// The profile's blocks `[first, end)` that node range `block` covers, if it falls on block
/// boundaries.
fn block_span(blocks: &[BlockProfile], block: Block) -> Option<(usize, usize)> {
    let first = blocks.iter().position(|b| b.range.start == block.start)?;
    let end = blocks.iter().position(|b| b.range.end == block.end)?.checked_add(1)?;
    Some((first, end))
}

/// The solver's segments for `route` in the local problem (one machine per tier): the
/// device's first, empty when it computes nothing.
fn route_segments(problem: &Problem, blocks: &[BlockProfile], route: &Route) -> Option<Vec<Segment>> {
    let machine = |tier: u8| problem.machines.iter().position(|m| m.tier == usize::from(tier));
    let mut segments = Vec::with_capacity(route.stages.len() + 1);
    if route.stages.first().is_none_or(|s| s.tier != 0) {
        segments.push(Segment { tier: 0, machine: machine(0)?, start: 0, end: 0 });
    }
    for stage in &route.stages {
        let (start, end) = block_span(blocks, Block { start: stage.start as usize, end: stage.end as usize })?;
        segments.push(Segment { tier: usize::from(stage.tier), machine: machine(stage.tier)?, start, end });
    }
    Some(segments)
}

/// How much longer (or, negative, shorter) each hop of an answered route took than `problem`'s
/// link figures predict for its message and the result's way back over it. `None` when the
/// route or its timings do not fit the problem.
fn hop_residuals(
    problem: &Problem,
    blocks: &[BlockProfile],
    route: &Route,
    timings: &[StageTiming],
    total_ns: u64,
) -> Option<Vec<(TierHop, i64)>> {
    let measured = measured_hops(total_ns, &route.stages, timings)?;
    let predicted = solver::evaluate(problem, &route_segments(problem, blocks, route)?)?;
    if predicted.hops.len() != measured.len() {
        return None;
    }
    let residuals = measured
        .iter()
        .zip(&predicted.hops)
        .map(|((hop, ns), figure)| {
            let back = predicted.result_hops.iter().find(|h| (h.from, h.to) == (figure.to, figure.from)).map_or(0, |h| h.ns);
            let expected = figure.ns.saturating_add(back);
            (*hop, i64::try_from(*ns).unwrap_or(i64::MAX).saturating_sub(i64::try_from(expected).unwrap_or(i64::MAX)))
        })
        .collect();
    Some(residuals)
}

/// Adds each hop's running residual to the latency of the links between its tiers' machines
/// (never below zero, never above the solver's bound).
fn apply_hop_residuals(problem: &mut Problem, observed: &ObservedCosts) {
    let tiers: Vec<usize> = problem.machines.iter().map(|m| m.tier).collect();
    for ((from, to), residual) in observed.hop_estimates() {
        let between = |a: usize, b: usize| tiers.get(a) == Some(&usize::from(from)) && tiers.get(b) == Some(&usize::from(to));
        for (_, _, link) in problem.links.iter_mut().filter(|(a, b, _)| between(*a, *b)) {
            let latency = i64::try_from(link.latency_ns).unwrap_or(i64::MAX).saturating_add(residual);
            link.latency_ns = u64::try_from(latency.max(0)).unwrap_or(0).min(solver::MAX_LATENCY_NS);
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
pub(crate) async fn measure_uplinks(client: &DeviceClient, tiers: impl Iterator<Item = u8>) -> Vec<(u8, Link)> {
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
