//! `scission-device run`: its arguments, and the lines it prints for each request.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use scission_cli::{ClusterArgs, EncodingArg, FetchBar, HostPort, ModelArgs};
use scission_core::link::Link;
use scission_core::policy::{PolicyConfig, describe_route};
use scission_core::solver::linkspec::{parse_bandwidth, parse_latency};
use scission_core::wire::frame::DEFAULT_MAX_FRAME;
use scission_core::wire::message::{Stage, describe_server, describe_servers};
use scission_engine::tract::prelude::*;
use scission_runtime::device::{self, DeviceConfig, DeviceEvent, LinkChange, Planning, SwitchCause};
use scission_runtime::fetch::{Expected, fetch_model_blocking};
use scission_runtime::peer::Peer;
use scission_runtime::session::SessionConfig;

/// Arguments of the device's `run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The edge server, as HOST:PORT (a name is resolved again on every reconnect).
    #[arg(long, value_name = "HOST:PORT")]
    edge: Option<HostPort>,
    /// The cloud server, as HOST:PORT (a name is resolved again on every reconnect).
    #[arg(long, value_name = "HOST:PORT")]
    cloud: Option<HostPort>,
    /// The cloud's planner, as HOST:PORT, when it runs apart from the cloud's stage servers (a
    /// scaled-out cloud); default: plans are asked of --cloud. Its certificate carries
    /// --cloud-name.
    #[arg(long, value_name = "HOST:PORT", requires = "cloud")]
    planner: Option<HostPort>,
    /// The edge's enrolled name (its certificate must carry it).
    #[arg(long, default_value = "edge")]
    edge_name: String,
    /// The cloud's enrolled name (its certificate must carry it).
    #[arg(long, default_value = "cloud")]
    cloud_name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// This device's enrolled name.
    #[arg(long, default_value = "device")]
    name: String,
    /// A fixed split, as node positions DEVICE_END,EDGE_END: the device runs [0, DEVICE_END),
    /// the edge [DEVICE_END, EDGE_END), the cloud the rest (`scission-device inspect` lists the
    /// positions). Without it, plans come from --profiles.
    #[arg(long, value_parser = crate::config::parse_split, value_name = "DEVICE_END,EDGE_END", conflicts_with = "profiles")]
    split: Option<[usize; 2]>,
    /// Benchmark profiles of device, edge and cloud (from `bench`): the solver ranks plans from
    /// them and --link figures; requests use the best plan and fail over down the ranking when
    /// a tier becomes unreachable.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["split", "profile"])]
    profiles: Vec<PathBuf>,
    /// This device's profile: plans come from the cloud, which plans with the edge's and its own
    /// profiles and the links the device measures to them.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["split", "profiles"], requires = "cloud")]
    profile: Option<PathBuf>,
    /// When the model file is missing, fetch it from the cloud (chunked, SHA-256 checked).
    #[arg(long, requires = "cloud")]
    fetch_model: bool,
    /// Link figures FROM-TO=BANDWIDTH,LATENCY for planning (the reverse direction gets the same
    /// unless given), e.g. device-edge=50mbit,5ms.
    #[arg(long = "link", value_name = "SPEC")]
    links: Vec<String>,
    /// Pause between requests, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Emulate the --link figures on this device's uplinks (delay and bandwidth cap on its UDP
    /// socket), so measured latencies reflect the planned network even on loopback.
    #[arg(long)]
    emulate: bool,
    /// With --emulate: change an emulated uplink before request N, as N:TIER=BANDWIDTH,LATENCY
    /// (tier 1 edge, 2 cloud), e.g. `10:1=2mbit,5ms`.
    #[arg(long, requires = "emulate", value_parser = parse_change)]
    emulate_change: Option<LinkChange>,
    /// Re-measure the uplinks (a small and a 64 KiB probe) every N requests, in the first moment
    /// with no request in flight, and switch plans when another is predicted at least 10%
    /// faster (0: never). Profiles are kept.
    #[arg(long, default_value_t = 0)]
    replan_every: u32,
    /// Re-plan when the best plan's measured latency departs from its prediction by more than
    /// this many percent, averaged over 8 requests (0: never); the cloud's planner then sees the
    /// servers' queues as they are now, and with --profiles the new ranking prices each stage
    /// by its measured compute time (the median of its last 8).
    #[arg(long, default_value_t = 50, value_name = "PERCENT")]
    replan_on_drift: u32,
    /// Give up on a tier that has not answered within this many milliseconds. A request that
    /// every plan's tiers refuse as busy tries again, after a back-off with jitter, for as long.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Probe a tier that stopped answering again after this many milliseconds (doubling after
    /// each failed probe up to --retry-max-ms, give or take a quarter); it is used again once it
    /// answers.
    #[arg(long, default_value_t = 250)]
    retry_after_ms: u64,
    /// Longest wait between two probes of a tier that stopped answering, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    retry_max_ms: u64,
    /// Give a server up after this many milliseconds without a packet from it (it is pinged
    /// five times as often). Default: --timeout-ms, so a server that only stalls (a busy
    /// host) still counts as up while a plan is measured; `serve` gives up sooner (500 ms).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    silence_ms: Option<u64>,
    /// Requests to run (default: one per --inputs file, else 10).
    #[arg(long)]
    requests: Option<u32>,
    /// Input arrays (`.npy`, float32, the model's input shape), one per request, used in turn;
    /// without them, deterministic random inputs.
    #[arg(long, value_delimiter = ',', value_name = "FILE.npy")]
    inputs: Vec<PathBuf>,
    /// Activation encoding on the wire.
    #[arg(long, value_enum, default_value_t = EncodingArg::F32)]
    encoding: EncodingArg,
    /// Engine threads on the device.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the synthetic inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Memory this device may use, in MiB (default: its cgroup limit or the system's available
    /// memory): plans whose device slice would need more (twice its weights and largest
    /// activation, plus 40 MiB) are not used.
    #[arg(long, value_name = "MIB")]
    memory_mib: Option<u64>,
    /// Running from a directory of slice artifacts: the most MiB of them kept on disk (the least
    /// recently used are removed once a fetched slice passes it).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    slice_cache_mib: u64,
    /// Skip checking each result against the unsplit model (which the device otherwise builds
    /// and runs too: a second copy of the model in memory and a full inference per request).
    #[arg(long)]
    no_check: bool,
    /// Also write every answered request (route, predicted and measured times, each stage's
    /// compute time) and the per-plan figures to this JSON file.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Print that report (format `scission-run-report`), with the run's totals, as one JSON
    /// document on stdout; the text goes to stderr.
    #[arg(long)]
    json: bool,
    /// Write the last answered request's outputs to this directory as `output-K.npy` (e.g. to
    /// compare them with another machine's).
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
}

/// Parses `AFTER:TIER=BANDWIDTH,LATENCY`, e.g. `10:1=2mbit,5ms`.
fn parse_change(text: &str) -> Result<LinkChange, String> {
    let bad = || format!("'{text}': expected REQUEST:TIER=BANDWIDTH,LATENCY, e.g. 10:1=2mbit,5ms");
    let (after, rest) = text.split_once(':').ok_or_else(bad)?;
    let (tier, figures) = rest.split_once('=').ok_or_else(bad)?;
    let (bw, lat) = figures.split_once(',').ok_or_else(bad)?;
    let link = Link {
        bits_per_sec: parse_bandwidth(bw.trim()).map_err(|e| e.to_string())?,
        latency_ns: parse_latency(lat.trim()).map_err(|e| e.to_string())?,
    };
    Ok(LinkChange { before_request: after.trim().parse().map_err(|_| bad())?, tier: tier.trim().parse().map_err(|_| bad())?, link })
}

impl RunArgs {
    fn cloud(&self) -> Option<Peer> {
        self.cloud.as_ref().map(|c| c.peer(&self.cloud_name))
    }

    fn planning(&self) -> Result<Planning> {
        crate::config::planning(self.split, self.profile.as_deref(), &self.profiles, &self.links)
    }

    fn config(&self, planning: Planning, inputs: Vec<TValue>) -> Result<DeviceConfig> {
        let requests = self.requests.unwrap_or(if inputs.is_empty() { 10 } else { u32::try_from(inputs.len()).unwrap_or(u32::MAX) });
        let timings = crate::config::Timings {
            timeout_ms: self.timeout_ms,
            retry_after_ms: self.retry_after_ms,
            retry_max_ms: self.retry_max_ms,
            // A server that only stalls (a busy host) still counts as up while a plan is measured.
            silence_ms: self.silence_ms.unwrap_or(self.timeout_ms),
        };
        let session = SessionConfig {
            cluster: self.cluster.cluster.clone(),
            name: self.name.clone(),
            edge: self.edge.as_ref().map(|e| e.peer(&self.edge_name)),
            cloud: self.cloud(),
            planner: self.planner.as_ref().map(|p| p.peer(&self.cloud_name)),
            planning,
            policy: PolicyConfig { replan_every: self.replan_every, drift_percent: self.replan_on_drift, ..timings.policy(&self.name) },
            emulate: self.emulate,
            timeout: timings.timeout(),
            encoding: self.encoding.into(),
            threads: self.threads.max(1),
            max_frame: DEFAULT_MAX_FRAME,
            // A what-if tool runs the plans it is given: no silent local fallback.
            local_fallback: false,
            require_plan: true,
            max_outstanding: 1,
            max_slice_bytes: self.slice_cache_mib.saturating_mul(1 << 20),
            device_memory: crate::config::device_memory(self.memory_mib),
            liveness: timings.liveness(),
        };
        Ok(DeviceConfig {
            session,
            interval: Duration::from_millis(self.interval_ms),
            emulate_change: self.emulate_change,
            requests,
            inputs,
            seed: self.seed,
            check: !self.no_check,
        })
    }
}

/// Runs the device's `run`, printing a line per request and a summary.
pub fn run(args: &RunArgs) -> Result<()> {
    let path = args.model.path(None)?;
    let planning = args.planning()?;
    if args.fetch_model && !path.exists() {
        let Some(cloud) = args.cloud() else { bail!("--fetch-model needs --cloud") };
        let expected = Expected { sha256: crate::config::pinned_model(&planning)?, ..Expected::default() };
        let mut bar = FetchBar::new("the model");
        fetch_model_blocking(&args.cluster.cluster, &args.name, &cloud, &path, DEFAULT_MAX_FRAME, expected, &mut |d, t| bar.update(d, t))?;
    }
    let pinned = crate::config::pinned_model(&planning)?;
    let mut config = args.config(planning, Vec::new())?;
    let slices = crate::config::open_slices(&path, &args.model.load_options(), pinned, &config.session)?;
    config.inputs = load_inputs(slices.graph(), &args.inputs)?;
    if args.requests.is_none() && !config.inputs.is_empty() {
        config.requests = u32::try_from(config.inputs.len()).unwrap_or(u32::MAX);
    }
    let requests = config.requests;
    let json = args.json;
    let summary = device::run(&config, slices, |event| say(json, &event_line(event)))?;
    let routes = device::by_route(&summary.requests);
    let table = route_table(&routes);
    if !table.is_empty() {
        say(json, &table);
    }
    // The report is built only where it goes somewhere: a long run answers many requests.
    let document = (json || args.report.is_some()).then(|| report(&summary.requests, &routes));
    if let (Some(path), Some(document)) = (&args.report, &document) {
        let bytes = serde_json::to_vec_pretty(document)?;
        std::fs::write(path, bytes).map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
        say(json, &format!("report written to {}", path.display()));
    }
    if let Some((count, median)) = summary.prediction_error {
        say(json, &format!("measured vs predicted end-to-end latency over {count} requests: median error {:+.1}%", median * 100.0));
    }
    say(
        json,
        &match summary.largest_difference {
            Some(worst) => {
                format!("requests: {} ok, {} failed; largest difference from the unsplit model {worst:e}", summary.ok, summary.failed)
            }
            None if config.check => format!("requests: {} ok, {} failed", summary.ok, summary.failed),
            None => format!("requests: {} ok, {} failed (results not checked)", summary.ok, summary.failed),
        },
    );
    if let Some(digest) = &summary.last_outputs_sha256 {
        say(json, &format!("last request's outputs: SHA-256 {digest}"));
    }
    if let Some(dir) = &args.save {
        save_outputs(dir, &summary.last_outputs)?;
        say(json, &format!("last request's outputs written to {}", dir.display()));
    }
    if let Some(mut document) = document.filter(|_| json) {
        document["ok"] = summary.ok.into();
        document["failed"] = summary.failed.into();
        document["largest_difference"] = summary.largest_difference.map(f64::from).into();
        document["last_outputs_sha256"] = summary.last_outputs_sha256.clone().into();
        document["median_prediction_error"] = summary.prediction_error.map(|(_, median)| median).into();
        println!("{}", serde_json::to_string(&document)?);
    }
    if summary.failed > 0 {
        bail!("{} of {requests} requests failed", summary.failed);
    }
    Ok(())
}

/// Predicted against measured latency, per plan used (empty without a plan).
fn route_table(routes: &[device::RouteFigures]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if routes.is_empty() {
        return out;
    }
    let _ = writeln!(out, "{:>9} {:>13} {:>13} {:>13} {:>8}  route", "requests", "predicted ms", "measured ms", "p90 ms", "error");
    let ms = |ns: u64| format!("{:.2}", ns as f64 * 1e-6);
    for r in routes {
        let predicted = r.predicted_ns.map_or_else(|| "-".into(), ms);
        let (median, p90) = r.measured.as_ref().map_or_else(|| ("-".into(), "-".into()), |m| (ms(m.median_ns), ms(m.p90_ns)));
        let error = r.error.map_or_else(|| "-".into(), |e| format!("{:+.1}%", e * 100.0));
        let _ = writeln!(out, "{:>9} {predicted:>13} {median:>13} {p90:>13} {error:>8}  {}", r.requests, describe_route(&r.route));
    }
    let _ = write!(out, "(measured: each plan's requests after its first, which pays the handshakes)");
    out
}

/// Prints a line of `run`'s text: on stdout, or on stderr where stdout carries `--json`'s
/// document.
fn say(json: bool, line: &str) {
    match json {
        true => eprintln!("{line}"),
        false => println!("{line}"),
    }
}

/// The `--report` document: every answered request and the per-plan figures, times in ms.
fn report(requests: &[device::Measured], routes: &[device::RouteFigures]) -> serde_json::Value {
    let ms = |ns: u64| ns as f64 * 1e-6;
    let stages = |route: &[Stage]| -> Vec<serde_json::Value> {
        route.iter().map(|s| serde_json::json!({ "tier": s.tier, "machine": s.machine, "start": s.start, "end": s.end })).collect()
    };
    serde_json::json!({
        "format": "scission-run-report",
        "version": 1,
        "requests": requests.iter().map(|r| serde_json::json!({
            "request": r.request,
            "route": describe_route(&r.route),
            "stages": stages(&r.route),
            "predicted_ms": r.predicted_ns.map(ms),
            "measured_ms": ms(r.total_ns),
            "latency_ms": ms(r.latency_ns),
            "setup_ms": ms(r.setup_ns),
            "compute_ms": r.compute_ns.iter().map(|&ns| ms(ns)).collect::<Vec<_>>(),
            "transfer_and_overhead_ms": ms(r.transfer_ns()),
            "hops": r.hops_ns.iter().map(|((from, to), ns)| serde_json::json!({ "from": from, "to": to, "ms": ms(*ns) })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "plans": routes.iter().map(|r| serde_json::json!({
            "route": describe_route(&r.route),
            "stages": stages(&r.route),
            "requests": r.requests,
            "predicted_ms": r.predicted_ns.map(ms),
            "measured_median_ms": r.measured.as_ref().map(|m| ms(m.median_ns)),
            "measured_p90_ms": r.measured.as_ref().map(|m| ms(m.p90_ns)),
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}

fn describe(route: &[Stage]) -> String {
    route.iter().map(|s| format!("tier {} [{}, {})", s.tier, s.start, s.end)).collect::<Vec<_>>().join(" -> ")
}

fn mbit(link: &Link) -> String {
    format!("{:.1} Mbit/s, {:.1} ms", link.bits_per_sec as f64 * 1e-6, link.latency_ns as f64 * 1e-6)
}

/// The line `run` prints for `event`.
fn event_line(event: DeviceEvent) -> String {
    match event {
        DeviceEvent::Plan { route } => format!("plan #1: {}", describe(&route)),
        DeviceEvent::LinkChanged { tier, link, after_request } => {
            format!("emulated link to tier {tier} now {} (after request {after_request})", mbit(&link))
        }
        DeviceEvent::FailedOver { request, tier, reason } => {
            format!("request {request}: {} unreachable ({reason}); failing over to a plan without it", describe_server(tier))
        }
        DeviceEvent::TierUp { tier } => format!("{} answers again; plans may use it", describe_server(tier)),
        DeviceEvent::Switched { cause, from, to } => {
            let why = match cause {
                SwitchCause::Measured(links) => {
                    let figures: Vec<String> = links.iter().map(|(t, l)| format!("tier {t}: {}", mbit(l))).collect();
                    format!("links measured as {}", figures.join("; "))
                }
                SwitchCause::Down(tiers) => format!("{} down", describe_servers(&tiers)),
                SwitchCause::Recovered => "a tier came back".to_string(),
                SwitchCause::FirstPlan => "first plan".to_string(),
                SwitchCause::Drift(percent) => format!("measured latency was {percent}% of the prediction"),
            };
            format!("plan switch: {why}; best plan was {}, now {}", from.as_deref().map_or_else(String::new, describe), describe(&to))
        }
        DeviceEvent::TierDown { tier } => format!("{} stopped answering; probing it again after a back-off", describe_server(tier)),
        DeviceEvent::Completed { request, rank, total_ns, latency_ns, predicted_ns, timings, difference, .. } => {
            let where_ = |t: &scission_core::wire::message::StageTiming| match t.machine {
                0 => format!("tier {}", t.tier),
                m => format!("tier {} machine {m}", t.tier),
            };
            let stages: Vec<String> = timings.iter().map(|t| format!("{} {:.2} ms", where_(t), t.compute_ns as f64 * 1e-6)).collect();
            let predicted = predicted_ns.map_or(String::new(), |p| format!(", predicted {:.2} ms", p as f64 * 1e-6));
            let checked = difference.map_or(String::new(), |d| format!("; max |difference| from the unsplit model {d:e}"));
            // A wait before it went out (links being measured, a failed try) of a millisecond or more.
            let waited = latency_ns.saturating_sub(total_ns);
            let waited = if waited >= 1_000_000 { format!("; waited {:.2} ms before", waited as f64 * 1e-6) } else { String::new() };
            format!(
                "request {request}: plan #{} {:.2} ms end to end{predicted} ({}){waited}{checked}",
                rank + 1,
                total_ns as f64 * 1e-6,
                stages.join(", ")
            )
        }
        DeviceEvent::Failed { request, error } => format!("request {request}: failed: {error}"),
    }
}

/// Reads the `--inputs` arrays, checking each against the model's (single) input.
fn load_inputs(model: &scission_engine::ModelGraph, files: &[PathBuf]) -> Result<Vec<TValue>> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let [input] = model.summary.inputs[..] else {
        bail!("--inputs takes one array per request, but the model has {} inputs", model.summary.inputs.len())
    };
    let expected: Vec<usize> = model.summary.tensors[input].shape.iter().map(|&d| d as usize).collect();
    files
        .iter()
        .map(|f| {
            let t = scission_engine::npy::read_npy(f)?;
            if t.shape() != expected.as_slice() || t.datum_type() != DatumType::F32 {
                bail!(
                    "{} is a {:?} array of shape {:?}; the model takes f32 of shape {expected:?}",
                    f.display(),
                    t.datum_type(),
                    t.shape()
                );
            }
            Ok(t.into_tvalue())
        })
        .collect()
}

/// Writes `outputs` to `dir` as `output-K.npy`.
fn save_outputs(dir: &std::path::Path, outputs: &[TValue]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    for (k, output) in outputs.iter().enumerate() {
        scission_engine::npy::write_npy(&dir.join(format!("output-{k}.npy")), output)?;
    }
    Ok(())
}
