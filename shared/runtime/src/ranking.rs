//! Where a device's ranked routes come from: one fixed split, the solver here (from the tiers'
//! profiles and link figures), or the cloud's planner (sent this device's profile and its
//! measured uplinks). Also measures the device's uplinks.

use std::collections::HashMap;

use crate::error::{Context, Result, bail, error as invalid};
use scission_core::link::{Encoding, Link};
use scission_core::policy::pricing::{self, block_span};
use scission_core::policy::{CLOUD_TIER, DEVICE_TIER, ObservedCosts, Route, charged_compute, plan_route, split_route};
use scission_core::profile::{BlockProfile, Profile, RangeProfile};
use scission_core::solver::profiles::{Topology, apply_link_spec, problem_from_profiles, set_link};
use scission_core::solver::{self, Constraints, CostOptions, Objective, Problem};
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

impl Planner {
    /// The device's blocks as its profile has them (with their measured memory, where
    /// counted); none for a fixed split.
    pub(crate) fn device_blocks(&self) -> &[BlockProfile] {
        match &self.kind {
            PlannerKind::Fixed(_) => &[],
            PlannerKind::Local { blocks, .. } => blocks,
            PlannerKind::Cloud { profile, .. } => &profile.blocks,
        }
    }
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
        /// This device's profile; each ranking sends it with the prefixes the device has
        /// measured since in place of its figures.
        profile: Box<Profile>,
        device_memory: Option<u64>,
        /// The device's own stages and its first hops, as measured.
        observed: ObservedCosts,
        /// The uplinks the last ranking assumed, by tier, before any residual.
        asked: HashMap<u8, Link>,
    },
}

/// What an answered request tells the planner.
#[derive(Clone, Debug)]
pub(crate) struct Answered {
    /// The device's end to end time, without its one-off setup
    /// ([`Outcome::steady_ns`](crate::client::Outcome::steady_ns)).
    pub(crate) total_ns: u64,
    /// One per tier of the route, in route order.
    pub(crate) timings: Vec<StageTiming>,
    /// Each hop's time, in route order (see
    /// [`measured_hops`](scission_core::policy::measured_hops)).
    pub(crate) hops: Vec<((u8, u8), u64)>,
    /// Bytes the device sent to its first remote tier, and received back from it.
    pub(crate) bytes: (u64, u64),
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
                let memory_cap = device_memory
                    .map(|m| (0, scission_core::memory::device_memory_cap(&mut problem, &device.blocks, m)))
                    .into_iter()
                    .collect();
                let kind = PlannerKind::Local {
                    problem: Box::new(problem),
                    blocks: device.blocks.clone(),
                    observed: ObservedCosts::default(),
                    memory_cap,
                };
                Ok(Self { kind, uplinks })
            }
            Planning::Cloud { profile_json, links } => {
                let profile = Box::new(scission_engine::profile_file::parse_profile(profile_json)?);
                let kind = PlannerKind::Cloud { profile, device_memory, observed: ObservedCosts::default(), asked: HashMap::new() };
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

    /// Whether [`Planner::observe`] is of use: the local solver and the cloud's planner keep
    /// running estimates, a fixed split none.
    pub(crate) fn keeps_estimates(&self) -> bool {
        !matches!(self.kind, PlannerKind::Fixed(_))
    }

    /// Takes in what an answered request cost: each stage's compute (see [`charged_compute`])
    /// and each hop's time beyond what its link figures predict (from the tiers' hold times),
    /// both without the device's one-off setup (`total_ns` is without it). From the next ranking on,
    /// the local solver prices every stage and hop by these running estimates, in place of the
    /// profiles' and links' figures; the cloud's planner is sent the device's own prefixes and
    /// uplinks so priced (it knows its servers itself). A fixed split keeps its route.
    pub(crate) fn observe(&mut self, route: &Route, answered: &Answered) {
        let Answered { total_ns, timings, hops, bytes } = answered;
        let charged = |compute_ns: u64| charged_compute(*total_ns, &route.stages, compute_ns);
        match &mut self.kind {
            PlannerKind::Fixed(_) => {}
            PlannerKind::Local { problem, blocks, observed, .. } => {
                for stage in &route.stages {
                    if let Some(t) = timings.iter().find(|t| t.tier == stage.tier) {
                        observed.record(stage.tier, stage.block(), charged(t.compute_ns));
                    }
                }
                for (hop, residual) in pricing::hop_residuals(problem, blocks, &route.stages, hops).unwrap_or_default() {
                    observed.record_hop(hop, residual);
                }
            }
            PlannerKind::Cloud { observed, asked, .. } => {
                let device = route.stages.first().filter(|s| s.tier == DEVICE_TIER);
                if let (Some(stage), Some(t)) = (device, timings.iter().find(|t| t.tier == DEVICE_TIER)) {
                    observed.record(0, stage.block(), charged(t.compute_ns));
                }
                if let Some(&((0, tier), ns)) = hops.first()
                    && let Some(link) = asked.get(&tier)
                {
                    observed.record_hop((0, tier), uplink_residual(ns, link, *bytes));
                }
            }
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
                pricing::price(&mut problem, blocks, observed);
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
            PlannerKind::Cloud { profile, device_memory, observed, asked } => {
                // The cloud plans only with measured uplinks: measure those not known yet (a
                // tier that was down at start and has come back).
                let mut links: HashMap<u8, Link> = links.iter().copied().collect();
                let missing: Vec<u8> = client.tiers().into_iter().filter(|t| !links.contains_key(t) && !avoid.contains(t)).collect();
                links.extend(measure_uplinks(client, missing.into_iter()).await);
                asked.clone_from(&links);
                for (tier, link) in &mut links {
                    if let Some(residual) = observed.hop_estimate((0, *tier)) {
                        *link = pricing::with_residual(*link, residual);
                    }
                }
                let profile_json = serde_json::to_vec(&with_observed_prefixes(profile, observed))
                    .map_err(|e| invalid!("cannot encode the device's profile: {e}"))?;
                let ranked = client.request_plans(CLOUD_TIER, &profile_json, &links, avoid, RANKED, *device_memory).await?;
                Ok(ranked.into_iter().map(|(stages, predicted)| Route { stages, predicted_ns: Some(predicted) }).collect())
            }
        }
    }
}

/// How much longer (or, negative, shorter) a first hop of `measured_ns` took than `uplink`
/// predicts for the `(sent, received)` bytes, the answer coming back over the same figures (as
/// the cloud's planner assumes of measured uplinks).
fn uplink_residual(measured_ns: u64, uplink: &Link, (sent, received): (u64, u64)) -> i64 {
    let expected = uplink.transfer_ns(sent).saturating_add(uplink.transfer_ns(received));
    i64::try_from(measured_ns).unwrap_or(i64::MAX).saturating_sub(i64::try_from(expected).unwrap_or(i64::MAX))
}

/// `profile` with the device's measured prefixes as measured ranges, replacing any it had.
fn with_observed_prefixes(profile: &Profile, observed: &ObservedCosts) -> Profile {
    let mut priced = profile.clone();
    for (_, block, ns) in observed.estimates().filter(|(tier, ..)| *tier == DEVICE_TIER) {
        let Some((0, end)) = block_span(&profile.blocks, block) else { continue };
        let Some(time) = scission_core::stats::Summary::of(&[ns]) else { continue };
        priced.ranges.retain(|r| (r.first_block, r.end_block) != (0, end));
        priced.ranges.push(RangeProfile { first_block: 0, end_block: end, range: block, time });
    }
    priced
}

/// The device's uplinks in a problem, by tier.
fn device_uplinks(problem: &Problem) -> HashMap<u8, Link> {
    let device = problem.machines.iter().position(|m| m.tier == usize::from(DEVICE_TIER));
    let mut uplinks = HashMap::new();
    for (m, machine) in problem.machines.iter().enumerate().filter(|(_, m)| m.tier != usize::from(DEVICE_TIER)) {
        if let (Some(link), Ok(tier)) = (device.and_then(|d| problem.link(d, m)), u8::try_from(machine.tier)) {
            uplinks.insert(tier, link);
        }
    }
    uplinks
}

/// Sets the device's uplink to every machine of each measured tier.
fn set_device_uplinks(problem: &mut Problem, links: &[(u8, Link)]) {
    let Some(device) = problem.machines.iter().position(|m| m.tier == usize::from(DEVICE_TIER)) else { return };
    let targets: Vec<(usize, usize)> = problem.machines.iter().enumerate().map(|(m, machine)| (m, machine.tier)).collect();
    for (m, tier) in targets {
        if let Some((_, link)) = links.iter().find(|(t, _)| usize::from(*t) == tier && *t != DEVICE_TIER) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: Link = Link { latency_ns: 1_000_000, bits_per_sec: 8_000_000 };

    #[test]
    fn an_uplink_residual_is_what_the_figures_leave_out_both_ways() {
        // 1000 bytes out and back at 1 MB/s: 1 ms each, plus 1 ms of latency each way.
        assert_eq!(uplink_residual(4_500_000, &LINK, (1_000, 1_000)), 500_000);
        assert_eq!(uplink_residual(3_000_000, &LINK, (1_000, 1_000)), -1_000_000);
        // Absurd figures saturate, never overflow.
        assert_eq!(uplink_residual(u64::MAX, &LINK, (0, 0)), i64::MAX - 2_000_000);
        assert_eq!(uplink_residual(0, &LINK, (u64::MAX, u64::MAX)), -i64::MAX);
    }
}
