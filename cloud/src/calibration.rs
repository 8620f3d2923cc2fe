//! `plan --calibration RUN.json`: the plans a device measured (`scission-device run --report`),
//! set against the planner's ranking. Each ranked plan whose route was measured shows its
//! measured median beside its prediction, and the plans are ranked again with a measured
//! latency in place of the prediction wherever there is one. Then the closed loop's replay: the
//! run's stage compute times and hop residuals, as the device's planner keeps them, price the
//! problem, and the solver plans again over every plan, measured or not.

use std::path::Path;

use anyhow::{Context, Result, bail};
use scission_core::policy::pricing;
use scission_core::policy::{ObservedCosts, charged_compute, plan_route};
use scission_core::profile::BlockProfile;
use scission_core::solver::{Plan, Problem};
use scission_core::wire::message::Stage;
use serde::Deserialize;

/// The part of a run report this reads.
#[derive(Deserialize)]
struct Report {
    format: String,
    version: u32,
    plans: Vec<MeasuredPlan>,
    /// Every request, in the order they ran.
    #[serde(default)]
    requests: Vec<MeasuredRequest>,
}

/// One request a device ran: its route, each stage's compute and each hop's time.
#[derive(Deserialize)]
pub struct MeasuredRequest {
    stages: Vec<MeasuredStage>,
    /// One per stage, in route order.
    compute_ms: Vec<f64>,
    /// End to end.
    measured_ms: f64,
    /// Of that, the device's one-off making its slice ready (reports of older devices have none).
    #[serde(default)]
    setup_ms: f64,
    /// One per hop, in route order (reports of older devices have none).
    #[serde(default)]
    hops: Vec<MeasuredHop>,
}

#[derive(Deserialize)]
struct MeasuredHop {
    from: u8,
    to: u8,
    ms: f64,
}

/// One route a device ran, and what it measured.
#[derive(Deserialize)]
pub struct MeasuredPlan {
    /// The route, as the device wrote it.
    pub route: String,
    stages: Vec<MeasuredStage>,
    /// Requests answered along it.
    pub requests: u64,
    /// Median end to end after the first request, in ms; absent when it answered once.
    pub measured_median_ms: Option<f64>,
}

#[derive(Deserialize, PartialEq, Eq, Hash, Clone, Copy, Debug)]
struct MeasuredStage {
    tier: u8,
    start: u32,
    end: u32,
}

/// What a run report holds: the plans, and every request.
pub struct Run {
    /// The routes it ran, with their medians.
    pub plans: Vec<MeasuredPlan>,
    /// Every request.
    pub requests: Vec<MeasuredRequest>,
}

/// Reads a run report, refusing other files and absurd figures.
pub fn read(path: &Path) -> Result<Run> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: Report = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a run report", path.display()))?;
    if report.format != "scission-run-report" || report.version != 1 {
        bail!("{} is a '{}' version {} file, not a scission-run-report version 1", path.display(), report.format, report.version);
    }
    if let Some(bad) = report.plans.iter().find(|p| p.measured_median_ms.is_some_and(|ms| !(ms.is_finite() && ms >= 0.0))) {
        bail!("{}: plan {} has a measured latency of {:?} ms", path.display(), bad.route, bad.measured_median_ms);
    }
    let figures = |r: &MeasuredRequest| {
        r.compute_ms.iter().copied().chain(r.hops.iter().map(|h| h.ms)).chain([r.measured_ms, r.setup_ms]).collect::<Vec<f64>>()
    };
    if let Some((i, _)) = report.requests.iter().enumerate().find(|(_, r)| figures(r).iter().any(|&ms| nanos(ms).is_none())) {
        bail!("{}: request {i} has a time that is negative, not a number or above an hour", path.display());
    }
    Ok(Run { plans: report.plans, requests: report.requests })
}

/// Milliseconds as whole nanoseconds, for a time from 0 to an hour.
fn nanos(ms: f64) -> Option<u64> {
    (ms.is_finite() && (0.0..=3_600_000.0).contains(&ms)).then(|| (ms * 1e6).round() as u64)
}

/// The run's requests as the device's planner would have taken them in: each stage's compute
/// time (see [`charged_compute`]), and each hop's residual over `problem`'s link figures. Each
/// route's first request is left out, and so are requests whose stages do not fall on the
/// profile's blocks or whose figures do not pair up.
pub fn observed(problem: &Problem, blocks: &[BlockProfile], requests: &[MeasuredRequest]) -> ObservedCosts {
    let mut observed = ObservedCosts::default();
    let mut answered = std::collections::HashSet::new();
    // Each route's first request is left out, as the device's planner leaves it out.
    let later = requests.iter().filter(|r| !answered.insert(r.stages.as_slice()));
    for r in later.filter(|r| r.stages.len() == r.compute_ms.len()) {
        let stages: Vec<Stage> = r.stages.iter().map(|s| Stage { tier: s.tier, machine: 0, start: s.start, end: s.end }).collect();
        let total_ns = nanos(r.measured_ms - r.setup_ms).unwrap_or(0);
        for (stage, &ms) in stages.iter().zip(&r.compute_ms) {
            if let Some(ns) = nanos(ms) {
                observed.record(stage.tier, stage.block(), charged_compute(total_ns, &stages, ns));
            }
        }
        let hops: Option<Vec<((u8, u8), u64)>> = r.hops.iter().map(|h| Some(((h.from, h.to), nanos(h.ms)?))).collect();
        let residuals = hops.and_then(|hops| pricing::hop_residuals(problem, blocks, &stages, &hops));
        for (hop, residual) in residuals.unwrap_or_default() {
            observed.record_hop(hop, residual);
        }
    }
    observed
}

/// A ranked plan with what was measured of its route.
pub struct Calibrated<'a> {
    /// Rank in the planner's order (0 = best).
    pub rank: usize,
    /// Predicted latency, ms.
    pub predicted_ms: f64,
    /// The matching measured route, with a median.
    pub measured: Option<&'a MeasuredPlan>,
}

impl Calibrated<'_> {
    /// The latency this plan is ranked by: measured where it was, predicted otherwise.
    pub fn latency_ms(&self) -> f64 {
        self.measured.and_then(|m| m.measured_median_ms).unwrap_or(self.predicted_ms)
    }
}

/// The plans ranked again, measured latencies replacing predictions; routes are matched by
/// tier and node range (machine ids are the device's, not the planner's).
pub fn rerank<'a>(plans: &[Plan], blocks: &[BlockProfile], measured: &'a [MeasuredPlan]) -> Vec<Calibrated<'a>> {
    let mut ranked: Vec<Calibrated<'a>> = plans
        .iter()
        .enumerate()
        .map(|(rank, plan)| {
            let stages: Option<Vec<MeasuredStage>> = plan_route(plan, blocks, |_| 0)
                .map(|route| route.iter().map(|s| MeasuredStage { tier: s.tier, start: s.start, end: s.end }).collect());
            let measured = stages.and_then(|stages| measured.iter().find(|m| m.stages == stages && m.measured_median_ms.is_some()));
            Calibrated { rank, predicted_ms: plan.cost.latency_ns as f64 * 1e-6, measured }
        })
        .collect();
    ranked.sort_by(|a, b| a.latency_ms().total_cmp(&b.latency_ms()).then(a.rank.cmp(&b.rank)));
    ranked
}

/// The re-ranked plans as a table.
pub fn table(ranked: &[Calibrated<'_>], unmatched: usize) -> String {
    let mut out = String::from("calibrated ranking (measured latency where the run report has the route):\n");
    out.push_str(&format!("{:>4} {:>6} {:>13} {:>13} {:>9} {:>8}\n", "now", "was", "predicted ms", "measured ms", "requests", "error"));
    for (i, c) in ranked.iter().enumerate() {
        let (measured, requests, error) = match c.measured {
            Some(m) => {
                let ms = m.measured_median_ms.unwrap_or(f64::NAN);
                (format!("{ms:.2}"), m.requests.to_string(), format!("{:+.1}%", (ms / c.predicted_ms - 1.0) * 100.0))
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:>4} {:>6} {:>13.2} {measured:>13} {requests:>9} {error:>8}\n",
            format!("#{}", i + 1),
            format!("#{}", c.rank + 1),
            c.predicted_ms
        ));
    }
    if unmatched > 0 {
        out.push_str(&format!("({unmatched} measured route(s) are not among these plans)\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_from_a_report_are_whole_nanoseconds_from_zero_to_an_hour() {
        assert_eq!(nanos(1.5), Some(1_500_000));
        assert_eq!(nanos(0.0), Some(0));
        assert_eq!(nanos(3_600_000.0), Some(3_600_000_000_000));
        for bad in [-0.001, f64::NAN, f64::INFINITY, 3_600_000.1] {
            assert_eq!(nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_request_with_an_absurd_time_is_refused_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        let request = |ms: f64| serde_json::json!({"stages": [{"tier": 2, "start": 0, "end": 4}], "compute_ms": [ms], "measured_ms": 5.0, "hops": []});
        let report = |ms: f64| serde_json::json!({"format": "scission-run-report", "version": 1, "plans": [], "requests": [request(1.0), request(ms)]});
        std::fs::write(&path, serde_json::to_vec(&report(2.0)).unwrap()).unwrap();
        assert_eq!(read(&path).unwrap().requests.len(), 2);
        std::fs::write(&path, serde_json::to_vec(&report(-1.0)).unwrap()).unwrap();
        let error = read(&path).err().unwrap().to_string();
        assert!(error.contains("request 1 has a time that is negative"), "{error}");
    }
}
