//! The reference solver: enumerate every plan, keep those that meet the constraints, sort.
//! Exponential in the number of tiers; used by tests and benchmarks to check the dynamic
//! program, never by the tool itself.

use alloc::vec::Vec;

use super::constraints::{Compiled, Constraints};
use super::plan::{Objective, Plan, Segment, compare_plans, evaluate, satisfies};
use super::problem::{Problem, ProblemError};

/// Every feasible plan, in enumeration order.
pub fn all_plans(problem: &Problem, constraints: &Constraints) -> Result<Vec<Plan>, ProblemError> {
    problem.validate()?;
    let c = constraints.compile(problem)?;
    let mut out = Vec::new();
    let devices = (0..problem.machines.len()).filter(|&m| problem.machines[m].tier == 0);
    for m0 in devices {
        for p1 in 0..=problem.blocks() {
            let mut segments = Vec::from([Segment { tier: 0, machine: m0, start: 0, end: p1 }]);
            extend(problem, &c, 1, &mut segments, &mut out);
        }
    }
    Ok(out)
}

fn extend(problem: &Problem, c: &Compiled, tier: usize, segments: &mut Vec<Segment>, out: &mut Vec<Plan>) {
    let p = segments.last().map_or(0, |s| s.end);
    if tier == problem.tiers.len() {
        if p == problem.blocks()
            && let Some(cost) = evaluate(problem, segments)
            && satisfies(problem, c, segments, &cost)
        {
            out.push(Plan { segments: segments.clone(), cost });
        }
        return;
    }
    extend(problem, c, tier + 1, segments, out);
    for m in (0..problem.machines.len()).filter(|&m| problem.machines[m].tier == tier) {
        for q in p + 1..=problem.blocks() {
            segments.push(Segment { tier, machine: m, start: p, end: q });
            extend(problem, c, tier + 1, segments, out);
            segments.pop();
        }
    }
}

/// The `k` best plans by full enumeration.
pub fn top_k(problem: &Problem, constraints: &Constraints, objective: Objective, k: usize) -> Result<Vec<Plan>, ProblemError> {
    let mut plans = all_plans(problem, constraints)?;
    plans.sort_by(|a, b| compare_plans(objective, a, b));
    plans.truncate(k);
    Ok(plans)
}

/// The Pareto front over (latency, device time, bytes leaving the device) by full enumeration.
pub fn pareto(problem: &Problem, constraints: &Constraints) -> Result<Vec<Plan>, ProblemError> {
    Ok(super::pareto_filter(all_plans(problem, constraints)?))
}
