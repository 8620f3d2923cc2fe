//! Load generator: N simulated devices against real edge and cloud server processes, and the
//! figures a capacity plan needs: throughput, p50/p99 latency, failures by kind, the servers'
//! peak RSS and CPU, and which plans the cloud's planner handed out as the load grew.
//!
//! Each simulated device is a device of the cluster: its own certificate, its own QUIC
//! endpoint and connections (all in this one process), its own plan request. The devices start
//! one after another over the ramp, so later ones are planned against the queues the earlier
//! ones built (edges report theirs with their heartbeat, the cloud counts its own). A device
//! profile 1000x slower than this machine makes every plan offload the whole model, so the
//! servers, not the generator, do the work.
//!
//! ```text
//! cargo build --workspace && cargo run -p scission-tests --example load -- --devices 1,8,64,256
//! cargo run -p scission-tests --example load -- --devices 64 --edges 2   # two edges and the cloud
//! cargo run -p scission-tests --example load -- --devices 64 --batch-max 8   # dynamic batching
//! ```
//! Without `--model` it writes the zoo's ResNet50. Every request ends in a result or an
//! explicit failure, counted by kind; nothing is retried (a busy or late answer is
//! back-pressure: the device waits `--backoff-ms` before its next request, twice as long after
//! each further failure in a row, up to 16 times as long).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use common::cluster::{Server, start};
use common::quick_bench;
use scission_core::link::{Encoding, Link};
use scission_core::profile::Profile;
use scission_core::wire::message::Stage;
use scission_engine::input::synthetic_inputs;
use scission_engine::{LoadOptions, Model};
use scission_net::{pki, quic};
use scission_runtime::client::{DeviceClient, Peer, RequestError};
use scission_runtime::node::Node;

/// Simulated devices against real servers.
#[derive(Parser, Debug)]
struct Args {
    /// ONNX model (default: the zoo's ResNet50, written into the work directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Device counts to run, one after another, each against fresh servers.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    devices: Vec<usize>,
    /// Seconds each device count runs (the ramp included).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds over which the devices start, one after another.
    #[arg(long, default_value_t = 5)]
    ramp: u64,
    /// Also run this many edges (`edge-0`, `edge-1`, ...), registered with the cloud (heartbeat
    /// 1 s): devices are planned over them and the cloud.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=8))]
    edges: u8,
    /// Start the last of the --edges this many seconds into each run (0: with the others): an
    /// edge that registers under load.
    #[arg(long, default_value_t = 0)]
    late_edge: u64,
    /// Each device asks for plans again this often, in seconds (0: once, at its start), and
    /// follows the new best plan.
    #[arg(long, default_value_t = 0)]
    replan: u64,
    /// Workers per server (inferences run at once); default: the servers' own (a worker per core).
    #[arg(long)]
    workers: Option<u16>,
    /// Queue per server (inferences waiting); default: the servers' own (4 per worker).
    #[arg(long)]
    queue: Option<u16>,
    /// Dynamic batching on every server: most requests per batch (1: off, the servers' default).
    #[arg(long, default_value_t = 1)]
    batch_max: u16,
    /// Dynamic batching: milliseconds a request waits for others to join its batch.
    #[arg(long, default_value_t = 0)]
    batch_delay_ms: u64,
    /// Milliseconds a device waits after a failed request before its next one (doubling with
    /// each failure in a row, up to 16x).
    #[arg(long, default_value_t = 100)]
    backoff_ms: u64,
    /// Seconds a device waits for an answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    Ok,
    Busy,
    Expired,
    Unreachable,
    Failed,
    /// The plan request itself failed (the cloud too loaded to answer it in time).
    NoPlan,
}

/// One finished request: when, how, how long.
struct Sample {
    at: Instant,
    ending: Ending,
    ns: u64,
}

/// What one simulated device did.
struct DeviceRun {
    /// Its first plan and its last.
    plans: (String, String),
    samples: Vec<Sample>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let model = match &args.model {
        Some(path) => path.clone(),
        None => common::write_zoo("resnet50", work.path())?,
    };
    let most = args.devices.iter().copied().max().unwrap_or(1);
    let cluster = make_cluster(work.path(), most, args.edges)?;
    eprintln!("benchmarking the servers' profiles (3 runs per block)...");
    let cloud_profile = quick_bench("scission-cloud", &model, &work.path().join("cloud.json"), "cloud");
    let edge_profile = quick_bench("scission-edge", &model, &work.path().join("edge.json"), "edge");
    let device_profile = slow_device_profile(&cloud_profile, 1000)?;
    let loaded = Model::load_path(&model, &LoadOptions::default())?;
    let inputs = synthetic_inputs(&loaded.graph, 1)?;
    let node = Arc::new(Node::new(loaded, 0, 1)?);
    println!(
        "model {}, {} s per count ({} s ramp), {}, backoff {} ms",
        model.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        args.seconds,
        args.ramp,
        match args.edges {
            0 => "cloud only".to_string(),
            n => format!("{n} edge(s) + cloud"),
        },
        args.backoff_ms
    );
    println!(
        "{:>7} {:>9} {:>8} {:>8} {:>6} {:>6} {:>6} {:>6} {:>11} {:>10} {:>10} {:>6} {:>6}  plans",
        "devices", "req/s", "p50 ms", "p99 ms", "ok", "busy", "late", "unrch", "fail+noplan", "cloud MB", "edge MB", "cloud%", "edge%"
    );
    for &n in &args.devices {
        let servers = Servers::start(&args, &cluster, &model, &cloud_profile, &edge_profile)?;
        let runs = drive(&args, n, &cluster, &servers, node.clone(), &inputs, &device_profile)?;
        let usage = servers.usage();
        print_row(&args, n, &runs, &usage);
    }
    Ok(())
}

/// A cluster with a cloud, `edges` edges (`edge-0`, ...) and `devices` devices (`sim-0`, ...).
fn make_cluster(dir: &Path, devices: usize, edges: u8) -> Result<PathBuf> {
    let cluster = dir.join("cluster");
    pki::init_cluster(&cluster)?;
    pki::enroll(&cluster, "cloud", pki::Role::Cloud, false, 1)?;
    for i in 0..edges {
        pki::enroll(&cluster, &format!("edge-{i}"), pki::Role::Edge, false, 1)?;
    }
    for i in 0..devices {
        pki::enroll(&cluster, &format!("sim-{i}"), pki::Role::Device, false, 1)?;
    }
    Ok(cluster)
}

/// The cloud's profile made `slowdown` times slower and renamed: a device that offloads.
fn slow_device_profile(cloud: &Path, slowdown: u64) -> Result<Vec<u8>> {
    let mut profile: Profile = serde_json::from_slice(&std::fs::read(cloud)?)?;
    profile.machine.name = "sim".into();
    for b in &mut profile.blocks {
        b.time.median_ns = b.time.median_ns.saturating_mul(slowdown);
    }
    Ok(serde_json::to_vec(&profile)?)
}

/// The server processes of one run.
struct Servers {
    cloud: Server,
    edges: Vec<Server>,
    /// The edge started --late-edge seconds into the run, once it is up.
    late: Arc<std::sync::Mutex<Option<Server>>>,
    started: Instant,
    cpu_at_start: (f64, Vec<f64>),
}

/// Peak RSS (MiB) and mean CPU use (cores) of each server over a run.
struct Usage {
    cloud_mib: f64,
    edge_mib: Vec<f64>,
    cloud_cores: f64,
    edge_cores: Vec<f64>,
}

impl Servers {
    fn start(args: &Args, cluster: &Path, model: &Path, cloud_profile: &Path, edge_profile: &Path) -> Result<Self> {
        let (cluster, model) = (cluster.to_str().context("path")?, model.to_str().context("path")?);
        let mut limits = Vec::new();
        if let Some(w) = args.workers {
            limits.extend(["--workers".to_string(), w.to_string()]);
        }
        if let Some(q) = args.queue {
            limits.extend(["--queue".to_string(), q.to_string()]);
        }
        if args.batch_max > 1 {
            limits.extend([
                "--batch-max".to_string(),
                args.batch_max.to_string(),
                "--batch-delay-ms".to_string(),
                args.batch_delay_ms.to_string(),
            ]);
        }
        let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
        let common = ["serve", model, "--cluster", cluster, "--threads", "1"];
        let cloud_profile = cloud_profile.to_str().context("path")?;
        let cloud = start("scission-cloud", &[&common[..], &["--profile", cloud_profile], &limits].concat());
        let cloud_addr = cloud.addr.to_string();
        let edge_profile = edge_profile.to_str().context("path")?;
        let edge_args = |i: u8| -> Vec<String> {
            let name = format!("edge-{i}");
            let own = ["--name", &name, "--cloud", &cloud_addr, "--profile", edge_profile, "--heartbeat-s", "1"];
            [&common[..], &own, &limits].concat().into_iter().map(String::from).collect()
        };
        let on_time = if args.late_edge > 0 { args.edges.saturating_sub(1) } else { args.edges };
        let edges: Vec<Server> = (0..on_time)
            .map(|i| {
                let owned = edge_args(i);
                start("scission-edge", &owned.iter().map(String::as_str).collect::<Vec<_>>())
            })
            .collect();
        let late = Arc::new(std::sync::Mutex::new(None));
        if on_time < args.edges {
            let (owned, slot, after) = (edge_args(on_time), late.clone(), Duration::from_secs(args.late_edge));
            std::thread::spawn(move || {
                std::thread::sleep(after);
                let server = start("scission-edge", &owned.iter().map(String::as_str).collect::<Vec<_>>());
                eprintln!("edge-{on_time} registered {} s into the run", after.as_secs());
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(server);
                }
            });
        }
        let cpu_at_start = (cpu_seconds(&cloud), edges.iter().map(cpu_seconds).collect());
        Ok(Self { cloud, edges, late, started: Instant::now(), cpu_at_start })
    }

    fn usage(&self) -> Usage {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let late = self.late.lock().ok();
        let late = late.as_ref().and_then(|l| l.as_ref());
        let mut edge_mib: Vec<f64> = self.edges.iter().map(peak_rss_mib).collect();
        let mut edge_cores: Vec<f64> = self.edges.iter().zip(&self.cpu_at_start.1).map(|(e, at)| (cpu_seconds(e) - at) / elapsed).collect();
        if let Some(late) = late {
            edge_mib.push(peak_rss_mib(late));
            edge_cores.push(cpu_seconds(late) / elapsed);
        }
        Usage {
            cloud_mib: peak_rss_mib(&self.cloud),
            edge_mib,
            cloud_cores: (cpu_seconds(&self.cloud) - self.cpu_at_start.0) / elapsed,
            edge_cores,
        }
    }
}

/// A process's peak resident set (VmHWM), MiB.
fn peak_rss_mib(server: &Server) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
    kib.map_or(f64::NAN, |k: f64| k / 1024.0)
}

/// A process's user + system CPU seconds so far.
fn cpu_seconds(server: &Server) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `n` devices against `servers` for the run's duration.
fn drive(
    args: &Args,
    n: usize,
    cluster: &Path,
    servers: &Servers,
    node: Arc<Node>,
    inputs: &scission_engine::tract::prelude::TVec<scission_engine::tract::prelude::TValue>,
    profile: &[u8],
) -> Result<Vec<DeviceRun>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut peers = std::collections::HashMap::from([(2u8, Peer::new(servers.cloud.addr, "cloud"))]);
    if let Some(edge) = servers.edges.first() {
        // The first edge is every device's configured one; the planner's directory has them all.
        peers.insert(1, Peer::new(edge.addr, "edge-0"));
        // Edges register before they announce their address; one heartbeat more for their load.
        std::thread::sleep(Duration::from_millis(1100));
    }
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..n {
            let identity = pki::Identity::load(cluster, &format!("sim-{i}"))?;
            let delay = Duration::from_secs(args.ramp).mul_f64(i as f64 / n as f64);
            let device = SimulatedDevice {
                id: i,
                identity,
                node: node.clone(),
                peers: peers.clone(),
                inputs: inputs.clone(),
                profile: profile.to_vec(),
                timeout: Duration::from_secs(args.timeout),
                backoff: Duration::from_millis(args.backoff_ms),
                replan: Duration::from_secs(args.replan),
                has_edge: args.edges > 0,
            };
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                device.run(end).await
            }));
        }
        let mut runs = Vec::new();
        for t in tasks {
            runs.push(t.await??);
        }
        Ok(runs)
    })
}

/// One simulated device.
struct SimulatedDevice {
    id: usize,
    identity: pki::Identity,
    node: Arc<Node>,
    peers: std::collections::HashMap<u8, Peer>,
    inputs: scission_engine::tract::prelude::TVec<scission_engine::tract::prelude::TValue>,
    profile: Vec<u8>,
    timeout: Duration,
    backoff: Duration,
    replan: Duration,
    has_edge: bool,
}

impl SimulatedDevice {
    /// Asks for plans, then sends requests along the best one that offloads until `end`.
    async fn run(self, end: Instant) -> Result<DeviceRun> {
        let endpoint = quic::client(&self.identity)?;
        let client = DeviceClient::new(self.node.clone(), endpoint, self.peers.clone(), 256 << 20, self.timeout);
        // Loopback is far faster than any real link; plan as if each tier were a 1 Gbit/s, 1 ms hop.
        let link = Link { latency_ns: 1_000_000, bits_per_sec: 1_000_000_000 };
        let mut uplinks = std::collections::HashMap::from([(2u8, link)]);
        if self.has_edge {
            uplinks.insert(1, link);
        }
        let mut samples = Vec::new();
        // A device keeps asking for plans (backing off) until it gets some or the run ends.
        let mut plans = None;
        while plans.is_none() && Instant::now() < end {
            let started = Instant::now();
            match client.request_plans(2, &self.profile, &uplinks, &[], 4, None).await {
                Ok(p) => plans = Some(p),
                Err(e) => {
                    tracing_line(self.id, &format!("plan request: {e}"));
                    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    samples.push(Sample { at: Instant::now(), ending: Ending::NoPlan, ns });
                    tokio::time::sleep(self.backoff * 4).await;
                }
            }
        }
        let Some(plans) = plans else { return Ok(DeviceRun { plans: ("no plan".into(), "no plan".into()), samples }) };
        let mut route = offloading(plans)?;
        let first = describe(&route, &client);
        let mut planned_at = Instant::now();
        let mut request = (self.id as u64) << 32;
        let mut failures_in_a_row = 0u32;
        while Instant::now() < end {
            if self.replan > Duration::ZERO && planned_at.elapsed() >= self.replan {
                // A failed re-plan keeps the current route.
                if let Ok(plans) = client.request_plans(2, &self.profile, &uplinks, &[], 4, None).await {
                    route = offloading(plans)?;
                }
                planned_at = Instant::now();
            }
            request += 1;
            let started = Instant::now();
            let ending = match client.infer(request, &route, self.inputs.clone(), Encoding::F32).await {
                Ok(_) => Ending::Ok,
                Err(RequestError::Busy { .. }) => Ending::Busy,
                Err(RequestError::Expired { .. }) => Ending::Expired,
                Err(RequestError::Unreachable { .. }) => Ending::Unreachable,
                Err(RequestError::Failed(e)) => {
                    tracing_line(self.id, &e.to_string());
                    Ending::Failed
                }
            };
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            samples.push(Sample { at: Instant::now(), ending, ns });
            failures_in_a_row = if ending == Ending::Ok { 0 } else { failures_in_a_row.saturating_add(1) };
            if failures_in_a_row > 0 {
                tokio::time::sleep(self.backoff * (1 << (failures_in_a_row - 1).min(4))).await;
            }
        }
        Ok(DeviceRun { plans: (first, describe(&route, &client)), samples })
    }
}

/// The best of `plans` that offloads the whole model, without its empty stages.
fn offloading(plans: Vec<(Vec<Stage>, u64)>) -> Result<Vec<Stage>> {
    let offloads = |stages: &[Stage]| stages.iter().all(|s| s.tier != 0 || s.start == s.end);
    plans
        .into_iter()
        .map(|(stages, _)| stages.into_iter().filter(|s| s.start < s.end).collect::<Vec<_>>())
        .find(|s| offloads(s))
        .context("no plan offloads the whole model")
}

/// Reports one unexpected failure (the first few only).
fn tracing_line(device: usize, message: &str) {
    static SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if SHOWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("device {device}: {message}");
    }
}

/// A route as the machines that run it: "cloud", "edge-1", "edge-0+cloud".
fn describe(route: &[Stage], client: &DeviceClient) -> String {
    let name = |s: &Stage| match client.directory().name(s.machine) {
        Some(name) => name,
        None => ["device", "edge", "cloud"].get(usize::from(s.tier)).copied().unwrap_or("?").to_string(),
    };
    route.iter().map(name).collect::<Vec<_>>().join("+")
}

fn print_row(args: &Args, n: usize, runs: &[DeviceRun], usage: &Usage) {
    // Steady state: completions after the ramp.
    let first = runs.iter().flat_map(|r| r.samples.first()).map(|s| s.at).min();
    let steady_from = first.map(|f| f + Duration::from_secs(args.ramp));
    let steady: Vec<&Sample> = runs.iter().flat_map(|r| &r.samples).filter(|s| steady_from.is_some_and(|from| s.at >= from)).collect();
    let window = args.seconds.saturating_sub(args.ramp).max(1) as f64;
    let mut ok_ns: Vec<u64> = steady.iter().filter(|s| s.ending == Ending::Ok).map(|s| s.ns).collect();
    ok_ns.sort_unstable();
    let quantile =
        |q: f64| ok_ns.get(((ok_ns.len() as f64 * q) as usize).min(ok_ns.len().saturating_sub(1))).map_or(f64::NAN, |&ns| ns as f64 * 1e-6);
    let mut endings: BTreeMap<Ending, usize> = BTreeMap::new();
    for s in runs.iter().flat_map(|r| &r.samples) {
        *endings.entry(s.ending).or_default() += 1;
    }
    let count = |e| endings.get(&e).copied().unwrap_or(0);
    let mut plans: BTreeMap<&str, usize> = BTreeMap::new();
    for r in runs {
        *plans.entry(r.plans.1.as_str()).or_default() += 1;
    }
    let mut plans: Vec<String> = plans.iter().map(|(p, c)| format!("{c}x {p}")).collect();
    let moved = runs.iter().filter(|r| r.plans.0 != r.plans.1).count();
    if args.replan > 0 {
        plans.push(format!("({moved} moved since their first plan)"));
    }
    let list = |values: &[f64], scale: f64| match values {
        [] => "-".to_string(),
        _ => values.iter().map(|v| format!("{:.0}", v * scale)).collect::<Vec<_>>().join("/"),
    };
    println!(
        "{:>7} {:>9.2} {:>8.1} {:>8.1} {:>6} {:>6} {:>6} {:>6} {:>11} {:>10} {:>10} {:>6} {:>6}  {}",
        n,
        ok_ns.len() as f64 / window,
        quantile(0.5),
        quantile(0.99),
        count(Ending::Ok),
        count(Ending::Busy),
        count(Ending::Expired),
        count(Ending::Unreachable),
        format!("{}+{}", count(Ending::Failed), count(Ending::NoPlan)),
        list(&[usage.cloud_mib], 1.0),
        list(&usage.edge_mib, 1.0),
        list(&[usage.cloud_cores], 100.0),
        list(&usage.edge_cores, 100.0),
        plans.join(", ")
    );
}
