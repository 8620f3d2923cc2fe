//! Building a planning problem from benchmark profiles (one per machine, all of one model).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::problem::{CostOptions, Link, Machine, Problem, ProblemError, RangeCost};
use crate::profile::{Profile, TierKind};

/// The default chain: device -> edge -> cloud.
pub const DEFAULT_TIERS: [TierKind; 3] = [TierKind::Device, TierKind::Edge, TierKind::Cloud];

/// A chain of tiers and where each machine sits in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Tier names in chain order; the first holds the raw input.
    pub tiers: Vec<String>,
    /// `(machine, tier)` placements overriding the tier recorded in a machine's profile.
    pub placement: Vec<(String, String)>,
}

impl Default for Topology {
    /// device -> edge -> cloud, each machine in the tier its profile names.
    fn default() -> Self {
        Self { tiers: DEFAULT_TIERS.iter().map(|t| t.as_str().to_string()).collect(), placement: Vec::new() }
    }
}

impl Topology {
    fn tier_of(&self, p: &Profile) -> Result<usize, ProblemError> {
        let name = self.placement.iter().find(|(m, _)| *m == p.machine.name).map_or(p.machine.tier.as_str(), |(_, t)| t.as_str());
        self.tiers.iter().position(|t| t == name).ok_or_else(|| {
            ProblemError::BadConstraint(format!(
                "machine '{}' is placed in tier '{name}', which is not in the chain {}",
                p.machine.name,
                self.tiers.join(" -> ")
            ))
        })
    }
}

/// Builds a problem over `topology` from `profiles`. The raw input's size on the wire is
/// `input_bytes`, or the dense input tensor's size when `None`. Links are added afterwards
/// (see [`set_link`]).
pub fn problem_from_profiles(
    profiles: &[Profile],
    topology: &Topology,
    input_bytes: Option<u64>,
    options: CostOptions,
) -> Result<Problem, ProblemError> {
    let first = profiles.first().ok_or(ProblemError::Empty("no profiles were given"))?;
    for p in profiles {
        if p.model.sha256 != first.model.sha256 {
            return Err(ProblemError::BadConstraint(format!(
                "profile of '{}' is for model {} ({}), but '{}' measured {} ({}): benchmark the same ONNX file everywhere",
                p.machine.name,
                p.model.name,
                short(&p.model.sha256),
                first.machine.name,
                first.model.name,
                short(&first.model.sha256)
            )));
        }
        let same_cuts = p.cuts.len() == first.cuts.len() && p.cuts.iter().zip(&first.cuts).all(|(a, b)| a.position == b.position);
        if !same_cuts || p.blocks.len() != first.blocks.len() {
            return Err(ProblemError::BadConstraint(format!(
                "profiles of '{}' and '{}' cut the model differently (max crossing {} vs {}): benchmark with the same --max-crossing",
                p.machine.name, first.machine.name, p.max_crossing, first.max_crossing
            )));
        }
    }
    let machines = profiles
        .iter()
        .map(|p| {
            Ok(Machine {
                name: p.machine.name.clone(),
                tier: topology.tier_of(p)?,
                block_ns: p.blocks.iter().map(|b| b.time.median_ns).collect(),
                queue_ns: 0,
                ranges: p.ranges.iter().map(|r| RangeCost { start: r.first_block, end: r.end_block, ns: r.time.median_ns }).collect(),
                messages: p.messages.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, ProblemError>>()?;
    let boundary_bytes: Vec<u64> = first.cuts.iter().map(|c| c.bytes).collect();
    Ok(Problem {
        tiers: topology.tiers.clone(),
        machines,
        input_bytes: input_bytes.unwrap_or(boundary_bytes[0]),
        boundary_bytes,
        block_weight_bytes: first.blocks.iter().map(|b| b.weight_bytes).collect(),
        block_activation_bytes: first.blocks.iter().map(|b| b.activation_bytes).collect(),
        links: Vec::new(),
        options,
    })
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Sets (adds or replaces) the directed link `from -> to`.
pub fn set_link(problem: &mut Problem, from: usize, to: usize, link: Link) {
    problem.links.retain(|(a, b, _)| !(*a == from && *b == to));
    problem.links.push((from, to, link));
}

/// Machines an endpoint name stands for: a machine name, or a tier name (all its machines).
pub fn resolve_endpoint(problem: &Problem, name: &str) -> Result<Vec<usize>, super::linkspec::LinkSpecError> {
    if let Some(m) = problem.machine_index(name) {
        return Ok(Vec::from([m]));
    }
    match problem.tiers.iter().position(|t| t == name) {
        Some(t) => Ok((0..problem.machines.len()).filter(|&m| problem.machines[m].tier == t).collect()),
        None => Err(super::linkspec::LinkSpecError::UnknownName(name.into())),
    }
}

/// Applies a what-if link override `FROM-TO=BANDWIDTH,LATENCY` (see
/// [`linkspec`](super::linkspec)) to every machine pair it names. With `both_ways`, the
/// reverse direction gets the same figures unless it already has a link.
pub fn apply_link_spec(
    problem: &mut Problem,
    text: &str,
    both_ways: bool,
) -> Result<super::linkspec::LinkSpec, super::linkspec::LinkSpecError> {
    let spec = super::linkspec::parse_link_spec(text, |n| problem.machine_index(n).is_some() || problem.tiers.iter().any(|t| t == n))?;
    let (from, to) = (resolve_endpoint(problem, &spec.from)?, resolve_endpoint(problem, &spec.to)?);
    for &a in &from {
        for &b in to.iter().filter(|&&b| b != a) {
            set_link(problem, a, b, spec.link);
            if both_ways && problem.link(b, a).is_none() {
                set_link(problem, b, a, spec.link);
            }
        }
    }
    Ok(spec)
}
