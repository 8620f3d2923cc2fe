//! The service's Prometheus metrics, fed from the session's events and status: requests,
//! failures by kind, end-to-end and per-tier latency, bytes per hop, the current plan and its
//! prediction against measurement, plan switches, tiers up and down, requests waiting at the
//! API, and the process's resident and heap memory.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use scission_core::policy::describe_route;
use scission_runtime::session::{DeviceEvent, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tier {
    tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabel {
    from: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

/// Latency buckets: 0.25 ms to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// Every metric of the service, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Counter,
    failures: Family<Kind, Counter>,
    latency: Histogram,
    degraded_requests: Counter,
    stage_compute: Family<Tier, Histogram, fn() -> Histogram>,
    hop_time: Family<HopLabel, Histogram, fn() -> Histogram>,
    hop_bytes: Family<Direction, Counter>,
    prediction_ratio: Histogram,
    switches: Counter,
    tier_up: Family<Tier, Gauge>,
    plan: Family<RouteLabel, Gauge>,
    predicted_seconds: Gauge<f64, AtomicU64>,
    degraded: Gauge,
    ready: Gauge,
    outstanding: Gauge,
    api_waiting: Gauge,
    resident: Gauge,
    heap: Gauge,
    /// The route shown in `plan`, to clear when it changes.
    shown_route: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics under the `scission_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("scission");
        let metrics = Self {
            requests: Counter::default(),
            failures: Family::default(),
            latency: latency_histogram(),
            degraded_requests: Counter::default(),
            stage_compute: Family::new_with_constructor(latency_histogram),
            hop_time: Family::new_with_constructor(latency_histogram),
            hop_bytes: Family::default(),
            prediction_ratio: Histogram::new([0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 4.0]),
            switches: Counter::default(),
            tier_up: Family::default(),
            plan: Family::default(),
            predicted_seconds: Gauge::default(),
            degraded: Gauge::default(),
            ready: Gauge::default(),
            outstanding: Gauge::default(),
            api_waiting: Gauge::default(),
            resident: Gauge::default(),
            heap: Gauge::default(),
            shown_route: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("requests", "Inference requests completed", metrics.requests.clone());
        registry.register("failures", "Inference requests failed, by kind", metrics.failures.clone());
        registry.register("request_duration_seconds", "Latency of completed requests, from submission to answer", metrics.latency.clone());
        registry.register("degraded_requests", "Requests served by the local fallback", metrics.degraded_requests.clone());
        registry.register("stage_compute_seconds", "Compute time of each stage, by tier", metrics.stage_compute.clone());
        registry.register("hop_bytes", "Bytes sent to the first remote tier and received back", metrics.hop_bytes.clone());
        registry.register("hop_seconds", "Time of each hop and its answer's way back, by pair of tiers", metrics.hop_time.clone());
        registry.register("measured_over_predicted", "Measured over predicted end-to-end latency", metrics.prediction_ratio.clone());
        registry.register("plan_switches", "Changes of the best route", metrics.switches.clone());
        registry.register("tier_up", "Whether each remote tier is considered up", metrics.tier_up.clone());
        registry.register("plan", "The route new requests take (1 for the current one)", metrics.plan.clone());
        registry.register("predicted_latency_seconds", "The planner's prediction for the current route", metrics.predicted_seconds.clone());
        registry.register("degraded", "1 while requests go to the local fallback", metrics.degraded.clone());
        registry.register("ready", "1 while requests can be served", metrics.ready.clone());
        registry.register("outstanding_requests", "Requests in flight", metrics.outstanding.clone());
        registry.register("api_waiting_requests", "Requests waiting for one of the API's slots", metrics.api_waiting.clone());
        registry.register("heap_bytes", "Heap bytes in use, as the allocator hands them out", metrics.heap.clone());
        // The standard name (node exporters and dashboards know it), without the prefix.
        root.register("process_resident_memory_bytes", "Resident memory of the process", metrics.resident.clone());
        Self { registry: root, ..metrics }
    }

    /// Counts one session event.
    pub fn observe(&self, event: &DeviceEvent) {
        match event {
            DeviceEvent::Completed { total_ns, latency_ns, predicted_ns, timings, degraded, bytes, hops, .. } => {
                self.requests.inc();
                self.latency.observe(seconds(*latency_ns));
                if *degraded {
                    self.degraded_requests.inc();
                }
                for t in timings {
                    self.stage_compute.get_or_create(&Tier { tier: t.tier.to_string() }).observe(seconds(t.compute_ns));
                }
                for ((from, to), ns) in hops {
                    self.hop_time.get_or_create(&HopLabel { from: from.to_string(), to: to.to_string() }).observe(seconds(*ns));
                }
                self.hop_bytes.get_or_create(&Direction { direction: "sent".into() }).inc_by(bytes.0);
                self.hop_bytes.get_or_create(&Direction { direction: "received".into() }).inc_by(bytes.1);
                if let Some(p) = predicted_ns.filter(|p| *p > 0) {
                    self.prediction_ratio.observe(*total_ns as f64 / p as f64);
                }
            }
            DeviceEvent::Failed { error, .. } => {
                self.failures.get_or_create(&Kind { kind: error.kind().into() }).inc();
            }
            DeviceEvent::Switched { .. } => {
                self.switches.inc();
            }
            DeviceEvent::TierDown { tier } => {
                self.tier_up.get_or_create(&Tier { tier: tier.to_string() }).set(0);
            }
            DeviceEvent::TierUp { tier } => {
                self.tier_up.get_or_create(&Tier { tier: tier.to_string() }).set(1);
            }
            DeviceEvent::Plan { .. } | DeviceEvent::LinkChanged { .. } | DeviceEvent::FailedOver { .. } => {}
        }
    }

    /// Records a request refused before it reached the session (bad input).
    pub fn refused(&self, kind: &str) {
        self.failures.get_or_create(&Kind { kind: kind.into() }).inc();
    }

    /// Shows how many requests wait for one of the API's slots.
    pub fn waiting(&self, count: usize) {
        self.api_waiting.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Shows the session's status, and the process's memory.
    pub fn show(&self, status: &Status, tiers: &[u8]) {
        if let Some(bytes) = resident_bytes() {
            self.resident.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(bytes) = scission_engine::heap::live() {
            self.heap.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.ready.set(i64::from(status.not_ready.is_none()));
        self.degraded.set(i64::from(status.degraded));
        self.outstanding.set(i64::try_from(status.outstanding).unwrap_or(i64::MAX));
        for tier in tiers {
            self.tier_up.get_or_create(&Tier { tier: tier.to_string() }).set(i64::from(!status.down.contains(tier)));
        }
        let route = status.route.as_ref().map(|r| describe_route(&r.stages));
        self.predicted_seconds.set(status.route.as_ref().and_then(|r| r.predicted_ns).map_or(0.0, seconds));
        if let Ok(mut shown) = self.shown_route.lock()
            && *shown != route
        {
            self.plan.clear();
            if let Some(r) = &route {
                self.plan.get_or_create(&RouteLabel { route: r.clone() }).set(1);
            }
            *shown = route;
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// The process's resident memory (Linux: `VmRSS` of `/proc/self/status`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

fn seconds(ns: u64) -> f64 {
    ns as f64 * 1e-9
}
