//! Partition planning: which machine of which tier runs which blocks, ranked by a cost model.
//!
//! - [`problem`]: the instance (tiers, machines, block times, boundary bytes, links) and the
//!   cost model's switches;
//! - [`constraints`]: what users may require;
//! - [`plan`]: plans, their cost breakdown, the ranking order;
//! - `dp`: the exact top-K dynamic program (private);
//! - [`brute`]: the reference enumerator the tests compare against.
//!
//! The cost of a plan: the compute time of every segment on its machine, plus every hop's
//! latency and serialisation time (`latency + bytes × 8 / bandwidth`), plus, when enabled, the
//! hop that brings the result back to the device, plus the expected queueing delay each machine
//! after the device reported (`Machine::queue_ns`, charged once per machine a plan hands work
//! to). Everything is integer nanoseconds and bytes.
//!
//! A segment's compute time is the sum of its blocks' times, unless its machine measured that
//! range as one slice ([`RangeCost`]): ranges from the first block (a device's) or to the last
//! (the last tier's) can be, and then their measured time counts. The ranking is exact for this
//! model; a middle tier's range that starts and ends inside the model is always a sum.

pub mod brute;
pub mod constraints;
mod dp;
pub mod linkspec;
pub mod plan;
pub mod problem;
pub mod profiles;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

pub use constraints::{ComputeCap, Constraints};
pub use plan::{Breakdown, Objective, Plan, Segment, evaluate};
pub use problem::{
    CostOptions, Encoding, Link, MAX_BYTES, MAX_LATENCY_NS, MAX_PS_PER_BYTE, MAX_SPAN_NS, MAX_TIERS, Machine, MessageCost, Problem,
    ProblemError, RangeCost,
};

use constraints::Compiled;
use dp::Dp;
use plan::compare_plans;

/// Why planning failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    /// The input is inconsistent.
    #[error(transparent)]
    Problem(#[from] ProblemError),
    /// No plan meets the constraints.
    #[error("no plan satisfies the constraints{}", explain(.culprits))]
    Infeasible {
        /// Constraint groups whose removal alone would make the problem feasible.
        culprits: Vec<String>,
    },
}

fn explain(culprits: &[String]) -> String {
    match culprits {
        [] => String::from(" (no single group of constraints is to blame; several conflict together)"),
        _ => format!("; relaxing any one of these would allow a plan: {}", culprits.join(", ")),
    }
}

/// The ranges `plans` run that their machines could measure (from the first block or to the
/// last) but have not: per machine index, sorted, each `(first block, end block)` once. Timing
/// them (a verification pass) makes those plans' costs the costs of what will run.
pub fn unmeasured_ranges(problem: &Problem, plans: &[Plan]) -> Vec<(usize, Vec<(usize, usize)>)> {
    let n = problem.blocks();
    let mut out: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for s in plans.iter().flat_map(|p| &p.segments) {
        let Some(machine) = problem.machines.get(s.machine) else { continue };
        let measurable = s.start < s.end && (s.start == 0 || s.end == n);
        if !measurable || machine.ranges.iter().any(|r| (r.start, r.end) == (s.start, s.end)) {
            continue;
        }
        match out.iter_mut().find(|(m, _)| *m == s.machine) {
            Some((_, spans)) => spans.push((s.start, s.end)),
            None => out.push((s.machine, vec![(s.start, s.end)])),
        }
    }
    for (_, spans) in &mut out {
        spans.sort_unstable();
        spans.dedup();
    }
    out.sort_unstable_by_key(|(m, _)| *m);
    out
}

/// The `k` best plans under `constraints`, ranked by `objective` (ties: latency, then
/// segments). Exact: equal to [`brute::top_k`], in far less time.
pub fn solve(problem: &Problem, constraints: &Constraints, objective: Objective, k: usize) -> Result<Vec<Plan>, SolveError> {
    let c = prepare(problem, constraints)?;
    if k == 0 {
        return Ok(Vec::new());
    }
    let plans = match objective {
        Objective::Throughput => throughput(problem, &c, k),
        _ => ranked(problem, &c, objective, k, None),
    };
    if plans.is_empty() && k > 0 {
        return Err(infeasible(problem, constraints));
    }
    Ok(plans)
}

/// The plans not dominated in (latency, device time, bytes leaving the device), fastest first.
/// Plans with identical figures are represented by the first in ranking order.
pub fn pareto(problem: &Problem, constraints: &Constraints) -> Result<Vec<Plan>, SolveError> {
    let c = prepare(problem, constraints)?;
    let mut candidates = Vec::new();
    let mut dp = Dp::new(problem, &c, Objective::Latency, 1);
    for m0 in device_machines(problem, &c) {
        for p1 in 0..=problem.blocks() {
            candidates.extend(finish(problem, dp.solve(&[m0], Some(p1)), Objective::Latency));
        }
    }
    if candidates.is_empty() {
        return Err(infeasible(problem, constraints));
    }
    Ok(pareto_filter(candidates))
}

/// Keeps the non-dominated plans (one per distinct figure triple), fastest first.
pub fn pareto_filter(mut plans: Vec<Plan>) -> Vec<Plan> {
    let figures = |p: &Plan| (p.cost.latency_ns, p.cost.device_ns, p.cost.device_upload_bytes);
    plans.sort_by(|a, b| compare_plans(Objective::Latency, a, b));
    let mut front: Vec<Plan> = Vec::new();
    for plan in plans {
        let (l, d, u) = figures(&plan);
        let dominated = front.iter().any(|f| {
            let (fl, fd, fu) = figures(f);
            fl <= l && fd <= d && fu <= u
        });
        if !dominated {
            front.push(plan);
        }
    }
    front
}

fn prepare(problem: &Problem, constraints: &Constraints) -> Result<Compiled, ProblemError> {
    problem.validate()?;
    let c = constraints.compile(problem)?;
    check_links(problem, &c)?;
    Ok(c)
}

fn device_machines(problem: &Problem, c: &Compiled) -> Vec<usize> {
    (0..problem.machines.len()).filter(|&m| problem.machines[m].tier == 0 && c.allowed[m]).collect()
}

/// Every link a feasible plan could use must be given.
fn check_links(problem: &Problem, c: &Compiled) -> Result<(), ProblemError> {
    let usable = |t: usize| t == 0 || !c.must_not_use[t];
    let adjacent = |t: usize, t2: usize| t < t2 && usable(t) && usable(t2) && (t + 1..t2).all(|b| !c.must_use[b]);
    let machines = &problem.machines;
    for (a, ma) in machines.iter().enumerate().filter(|(a, _)| c.allowed[*a]) {
        for (b, mb) in machines.iter().enumerate().filter(|(b, _)| c.allowed[*b]) {
            let forward = adjacent(ma.tier, mb.tier);
            // The result returns along the chain: each forward link needs its way back.
            let back = problem.options.return_result && adjacent(mb.tier, ma.tier);
            if (forward || back) && problem.link(a, b).is_none() {
                return Err(ProblemError::MissingLink { from: ma.name.clone(), to: mb.name.clone() });
            }
        }
    }
    Ok(())
}

/// Top-k by an additive objective, optionally with every stage capped (throughput search).
fn ranked(problem: &Problem, c: &Compiled, objective: Objective, k: usize, stage_cap: Option<u64>) -> Vec<Plan> {
    let capped;
    let c = match stage_cap {
        Some(cap) => {
            capped = Compiled { stage_cap: cap, ..c.clone() };
            &capped
        }
        None => c,
    };
    let devices = device_machines(problem, c);
    let groups: Vec<Vec<usize>> = if problem.options.return_result { devices.iter().map(|&m| vec![m]).collect() } else { vec![devices] };
    let mut dp = Dp::new(problem, c, objective, k);
    let mut plans: Vec<Plan> = Vec::new();
    for group in &groups {
        plans.extend(finish(problem, dp.solve(group, None), objective));
        plans.sort_by(|a, b| compare_plans(objective, a, b));
        plans.truncate(k);
        if plans.len() == k {
            dp.set_bound(objective.key(&plans[k - 1].cost));
        }
    }
    plans
}

fn finish(problem: &Problem, found: Vec<(dp::Finish, Vec<Segment>)>, objective: Objective) -> Vec<Plan> {
    found
        .into_iter()
        .filter_map(|(f, segments)| {
            let cost = evaluate(problem, &segments)?;
            debug_assert_eq!(objective.key(&cost), f.key, "dynamic program and evaluator disagree on {segments:?}");
            Some(Plan { segments, cost })
        })
        .collect()
}

/// Top-k by bottleneck stage: find the smallest bottleneck values in turn by bisection, each
/// time ranking the plans whose every stage fits under it by latency.
fn throughput(problem: &Problem, c: &Compiled, k: usize) -> Vec<Plan> {
    let mut chosen: Vec<Plan> = Vec::new();
    let mut floor = 0u64;
    while chosen.len() < k {
        let want = chosen.len() + 1;
        let uncapped = ranked(problem, c, Objective::Latency, want, None);
        if uncapped.len() < want {
            break;
        }
        let mut hi = uncapped.iter().map(|p| p.cost.bottleneck_ns).max().unwrap_or(0);
        let mut lo = floor;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ranked(problem, c, Objective::Latency, want, Some(mid)).len() >= want { hi = mid } else { lo = mid + 1 }
        }
        let fresh = ranked(problem, c, Objective::Latency, k, Some(hi)).into_iter().filter(|p| p.cost.bottleneck_ns == hi);
        chosen.extend(fresh.take(k - chosen.len()));
        floor = hi + 1;
    }
    chosen
}

fn infeasible(problem: &Problem, constraints: &Constraints) -> SolveError {
    let culprits = constraints
        .groups()
        .into_iter()
        .filter(|(_, relaxed)| prepare(problem, relaxed).is_ok_and(|c| !ranked(problem, &c, Objective::Latency, 1, None).is_empty()))
        .map(|(name, _)| name)
        .collect();
    SolveError::Infeasible { culprits }
}
