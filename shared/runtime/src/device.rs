//! The device's `run`: a benchmark and what-if tool over a [`Session`]. It sends a fixed number
//! of requests (synthetic or given inputs) one after another, optionally changes an emulated
//! link mid-run, checks every result against the unsplit model, and sums up how the
//! measurements compare with the planner's predictions. It prints nothing: what happens
//! reaches the caller as [`DeviceEvent`]s.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use scission_engine::tract::prelude::*;

use scission_core::link::Link;
use scission_core::wire::message::Stage;
use scission_engine::input::synthetic_inputs;
use scission_engine::{ModelGraph, with_threads};

use crate::node::Slices;

pub use crate::ranking::Planning;
pub use crate::session::{DeviceEvent, SwitchCause};
use crate::session::{Session, SessionConfig};

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
    /// The session the requests go through.
    pub session: SessionConfig,
    /// Pause between requests.
    pub interval: Duration,
    /// With emulated uplinks: a link change during the run.
    pub emulate_change: Option<LinkChange>,
    /// Requests to run.
    pub requests: u32,
    /// Inputs, used in turn; empty: deterministic random inputs from `seed`.
    pub inputs: Vec<TValue>,
    /// Seed of the synthetic inputs.
    pub seed: u64,
    /// Check each result against the unsplit model.
    pub check: bool,
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
    /// Hex SHA-256 of the last answered request's outputs (their bytes in order): equal
    /// digests mean bit-equal results, e.g. between a run from slice artifacts and a checked one.
    pub last_outputs_sha256: Option<String>,
    /// The last answered request's outputs, in the model's order.
    pub last_outputs: Vec<TValue>,
    /// Every answered request, in order: what the closed loop compares with the predictions.
    pub requests: Vec<Measured>,
}

/// One answered request's route, prediction and measured times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    /// The request.
    pub request: u64,
    /// The route it took.
    pub route: Vec<Stage>,
    /// The planner's prediction for that route.
    pub predicted_ns: Option<u64>,
    /// End to end, as the device measured it, from the moment it was sent on its route.
    pub total_ns: u64,
    /// From its submission to its answer (see
    /// [`DeviceEvent::Completed`](crate::session::DeviceEvent::Completed)).
    pub latency_ns: u64,
    /// Of `total_ns`, the device's one-off making its slice ready (see
    /// [`Outcome::setup_ns`](crate::client::Outcome::setup_ns)).
    pub setup_ns: u64,
    /// Compute time of each stage of the route, as the machine that ran it measured it.
    pub compute_ns: Vec<u64>,
    /// Each hop's time, `((from tier, to tier), ns)` in route order, from the tiers' hold times
    /// (see [`measured_hops`](scission_core::policy::measured_hops)); with the compute and the
    /// setup, they add up to `total_ns`. Empty when a tier sent no timing.
    pub hops_ns: Vec<((u8, u8), u64)>,
}

impl Measured {
    /// What the stages did not spend computing: transfers, encoding, queueing and handshakes.
    pub fn transfer_ns(&self) -> u64 {
        self.total_ns.saturating_sub(self.compute_ns.iter().fold(0u64, |sum, ns| sum.saturating_add(*ns)))
    }
}

/// The requests of one route: its prediction against what was measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteFigures {
    /// The route.
    pub route: Vec<Stage>,
    /// Its prediction: the median of the predictions its measured requests were sent with (a
    /// re-plan may predict the same route differently), or its first one.
    pub predicted_ns: Option<u64>,
    /// Requests answered along it.
    pub requests: usize,
    /// End-to-end times after the route's first request (which pays the handshakes); `None`
    /// when the route answered only once.
    pub measured: Option<scission_core::stats::Summary>,
    /// The median of `measured` over the prediction, less 1.
    pub error: Option<f64>,
}

/// The requests grouped by route, in the order the routes were first used.
pub fn by_route(requests: &[Measured]) -> Vec<RouteFigures> {
    let mut routes: Vec<(&[Stage], Vec<&Measured>)> = Vec::new();
    for r in requests {
        match routes.iter_mut().find(|(route, _)| *route == r.route.as_slice()) {
            Some((_, members)) => members.push(r),
            None => routes.push((&r.route, vec![r])),
        }
    }
    routes
        .into_iter()
        .map(|(route, members)| {
            let later = members.get(1..).unwrap_or_default();
            let times: Vec<u64> = later.iter().map(|r| r.total_ns).collect();
            let predictions: Vec<u64> = later.iter().filter_map(|r| r.predicted_ns).collect();
            let measured = scission_core::stats::Summary::of(&times);
            let predicted_ns = scission_core::stats::Summary::of(&predictions)
                .map(|p| p.median_ns)
                .or_else(|| members.first().and_then(|r| r.predicted_ns));
            let error = match (measured.as_ref(), predicted_ns) {
                (Some(m), Some(p)) if p > 0 => Some(m.median_ns as f64 / p as f64 - 1.0),
                _ => None,
            };
            RouteFigures { route: route.to_vec(), predicted_ns, requests: members.len(), measured, error }
        })
        .collect()
}

/// Runs `config.requests` requests of `model` through the pipeline.
/// `slices` is the whole model or the device's slice artifacts; checking results needs the
/// whole model.
pub fn run(config: &DeviceConfig, slices: impl Into<Slices>, mut on_event: impl FnMut(DeviceEvent)) -> Result<RunSummary> {
    let slices = slices.into();
    let whole: Option<Arc<TypedRunnableModel>> = match (&slices, config.check) {
        #[cfg(feature = "onnx")]
        (Slices::Whole(model), true) => Some(model.whole()?),
        (Slices::Artifacts(_), true) => {
            crate::error::bail!("checking results needs the whole model; from slice artifacts, run without the check")
        }
        (_, false) => None,
    };
    crate::async_runtime()?.block_on(async {
        let (events, received) = std::sync::mpsc::channel();
        // Completions and failures are reported below, with the check against the unsplit model.
        let observer: crate::session::Observer = Arc::new(move |event: &DeviceEvent| {
            if !matches!(event, DeviceEvent::Completed { .. } | DeviceEvent::Failed { .. }) {
                let _ = events.send(event.clone());
            }
        });
        let session_config = SessionConfig { require_plan: true, ..config.session.clone() };
        let session = Session::open(session_config, slices, Some(observer)).await?;
        let mut summary = RunSummary {
            ok: 0,
            failed: 0,
            largest_difference: None,
            prediction_error: None,
            last_outputs_sha256: None,
            last_outputs: Vec::new(),
            requests: Vec::new(),
        };
        for i in 0..config.requests {
            if i > 0 && !config.interval.is_zero() {
                tokio::time::sleep(config.interval).await;
            }
            if let Some(change) = config.emulate_change.filter(|c| c.before_request == i)
                && let Some(shaper) = session.shaper(change.tier)
            {
                shaper.set(change.link);
                on_event(DeviceEvent::LinkChanged { tier: change.tier, link: change.link, after_request: i.saturating_sub(1) });
            }
            let inputs = request_inputs(config, session.model(), i)?;
            let reference = match &whole {
                Some(plan) => Some(with_threads(1, || plan.run(inputs.clone()))?),
                None => None,
            };
            let result = session.infer(inputs).await;
            received.try_iter().for_each(&mut on_event);
            match result {
                Ok(answer) => {
                    let difference = reference.map(|r| max_diff(&answer.outputs, &r)).transpose()?;
                    if let Some(d) = difference {
                        summary.largest_difference = Some(summary.largest_difference.map_or(d, |w| w.max(d)));
                    }
                    summary.ok = summary.ok.saturating_add(1);
                    summary.last_outputs_sha256 = Some(outputs_sha256(&answer.outputs)?);
                    summary.requests.push(Measured {
                        request: answer.request,
                        route: answer.route.stages.clone(),
                        predicted_ns: answer.route.predicted_ns,
                        total_ns: answer.total_ns,
                        latency_ns: answer.latency_ns,
                        setup_ns: answer.setup_ns,
                        compute_ns: answer.timings.iter().map(|t| t.compute_ns).collect(),
                        hops_ns: answer.hops.clone(),
                    });
                    on_event(DeviceEvent::Completed {
                        request: answer.request,
                        rank: answer.rank,
                        total_ns: answer.total_ns,
                        latency_ns: answer.latency_ns,
                        predicted_ns: answer.route.predicted_ns,
                        timings: answer.timings,
                        difference,
                        degraded: answer.degraded,
                        bytes: answer.bytes,
                        hops: answer.hops,
                    });
                    summary.last_outputs = answer.outputs.into_iter().map(|(_, value)| value).collect();
                }
                Err(error) => {
                    summary.failed = summary.failed.saturating_add(1);
                    on_event(DeviceEvent::Failed { request: u64::from(i), error });
                }
            }
        }
        summary.prediction_error = prediction_error(&summary.requests);
        session.close_connections().await;
        Ok(summary)
    })
}

/// Request `i`'s inputs: the given ones in turn, or deterministic random ones.
fn request_inputs(config: &DeviceConfig, model: &ModelGraph, i: u32) -> Result<TVec<TValue>> {
    if config.inputs.is_empty() {
        return Ok(synthetic_inputs(model, config.seed.wrapping_add(u64::from(i)))?);
    }
    let index = usize::try_from(i).unwrap_or(0) % config.inputs.len();
    Ok(tvec![config.inputs[index].clone()])
}

/// Median relative error of measured against predicted latency; the first request on each
/// route is left out (it pays the connection handshake).
fn prediction_error(requests: &[Measured]) -> Option<(usize, f64)> {
    let mut seen = HashSet::new();
    let mut errors: Vec<f64> = requests
        .iter()
        .filter(|r| !seen.insert(r.route.as_slice()))
        .filter_map(|r| r.predicted_ns.filter(|p| *p > 0).map(|p| (r.total_ns as f64 - p as f64) / p as f64))
        .collect();
    if errors.is_empty() {
        return None;
    }
    errors.sort_by(f64::total_cmp);
    Some((errors.len(), errors[errors.len() / 2]))
}

/// Hex SHA-256 of the outputs' bytes, in order.
fn outputs_sha256(outputs: &[(usize, TValue)]) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (_, value) in outputs {
        hasher.update(value.try_as_plain_ram()?.as_bytes());
    }
    Ok(scission_engine::model_graph::hex(&hasher.finalize()))
}

fn max_diff(outputs: &[(usize, TValue)], reference: &TVec<TValue>) -> Result<f32> {
    if outputs.len() != reference.len() {
        crate::error::bail!("{} outputs, expected {}", outputs.len(), reference.len());
    }
    outputs
        .iter()
        .zip(reference)
        .try_fold(0f32, |worst, ((_, got), want)| Ok(worst.max(scission_engine::pipeline::max_abs_diff(got, want)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(request: u64, end: u32, predicted_ms: u64, total_ms: u64) -> Measured {
        let stages = vec![Stage { tier: 0, machine: 0, start: 0, end }, Stage { tier: 2, machine: 0, start: end, end: 10 }];
        Measured {
            request,
            route: stages,
            predicted_ns: Some(predicted_ms * 1_000_000),
            total_ns: total_ms * 1_000_000,
            latency_ns: total_ms * 1_000_000,
            setup_ns: 0,
            compute_ns: vec![1_000_000],
            hops_ns: Vec::new(),
        }
    }

    #[test]
    fn routes_are_summed_up_without_their_first_request_against_their_median_prediction() {
        let requests = [
            request(0, 4, 10, 90), // the handshake
            request(1, 4, 10, 11),
            request(2, 6, 20, 50),
            request(3, 4, 12, 12),
            request(4, 4, 12, 13),
        ];
        let routes = by_route(&requests);
        assert_eq!(routes.len(), 2);
        let first = &routes[0];
        assert_eq!((first.requests, first.predicted_ns), (4, Some(12_000_000)));
        assert_eq!(first.measured.as_ref().map(|m| m.median_ns), Some(12_000_000));
        assert_eq!(first.error, Some(0.0));
        let second = &routes[1];
        assert_eq!((second.requests, second.predicted_ns, second.measured.as_ref(), second.error), (1, Some(20_000_000), None, None));
        assert_eq!(requests[0].transfer_ns(), 89_000_000);
    }
}
