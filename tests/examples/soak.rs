//! Soak of the device service: `scission-device serve` with a real edge and cloud on loopback,
//! N Open Inference Protocol clients (JSON bodies over plain HTTP, no project code) in a closed
//! loop for a while, and the edge and the cloud killed with SIGKILL and restarted on a schedule,
//! or their packets silently dropped by a relay. Every answer is compared with the unsplit model
//! run by tract directly.
//!
//! It prints answers right / wrong / failed (by status), the longest gap between two answers
//! around each fault, how long after a tier's return the service was back on its first plan,
//! and each process's resident memory over time. It exits non-zero when an answer was wrong or
//! a request hung (no answer within `--request-timeout-s`).
//!
//! ```text
//! cargo build --workspace --bins
//! cargo run -p scission-tests --example soak -- --clients 4 --seconds 1800 --fault-every 120
//! cargo run -p scission-tests --example soak -- --seconds 120 --faults drop   # silent drops
//! ```
//! Without `--model` it writes the zoo's MobileNetV2 and splits it at 60,180.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use common::{Reference, bin, run, stderr};
use scission_engine::tract::prelude::*;
use serde_json::{Value, json};

/// The device service under clients and faults.
#[derive(Parser, Debug)]
struct Args {
    /// ONNX model (default: the zoo's MobileNetV2, written into the work directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// What the device loads instead of the model: a directory of its slice artifacts
    /// (`scission-cloud slice MODEL --range 0,DEVICE_END --out DIR`), as a small board runs it:
    /// only its slice in memory, no local fallback.
    #[arg(long, value_name = "DIR")]
    device_slices: Option<PathBuf>,
    /// The device's fixed split, DEVICE_END,EDGE_END.
    #[arg(long, default_value = "60,180")]
    split: String,
    /// Clients, each sending its next request when the last is answered.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// How long the clients run.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Seconds between two faults of the same tier; the edge's come at 1/4 of each period, the
    /// cloud's at 3/4 (0: no faults).
    #[arg(long, default_value_t = 60)]
    fault_every: u64,
    /// How long a faulted tier stays away.
    #[arg(long, default_value_t = 5.0)]
    down_s: f64,
    /// `kill` (SIGKILL, then a restart on the same port) or `drop` (a relay in front of each
    /// tier discards its packets both ways: no ICMP, no close).
    #[arg(long, default_value = "kill")]
    faults: String,
    /// A request not answered within this long counts as hung.
    #[arg(long, default_value_t = 30)]
    request_timeout_s: u64,
    /// Environment for the device process (`NAME=VALUE`, repeatable), e.g. `MALLOC_ARENA_MAX=2`.
    #[arg(long)]
    device_env: Vec<String>,
    /// Extra arguments for `scission-device serve` (repeatable, one word each).
    #[arg(long, allow_hyphen_values = true)]
    device_arg: Vec<String>,
    /// Threads of the edge and the cloud.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Print one JSON summary line at the end (for scripts and the CI test).
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.faults != "kill" && args.faults != "drop" {
        bail!("--faults is `kill` or `drop`, not {:?}", args.faults);
    }
    let work = tempfile::tempdir()?;
    let cluster = work.path().join("cluster");
    let cluster_arg = cluster.to_string_lossy().into_owned();
    checked(run("scission-cloud", &["init", "--cluster", &cluster_arg]))?;
    for n in ["device", "edge", "cloud"] {
        checked(run("scission-cloud", &["enroll", n, "--tier", n, "--cluster", &cluster_arg]))?;
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let path = work.path().join("mobilenetv2.onnx");
            checked(run("scission-cloud", &["zoo", "write", "mobilenet_v2", "--out", path.to_str().context("path")?]))?;
            path
        }
    };
    let reference = Reference::load(&model)?;
    let inputs: Vec<Tensor> = (0..4).map(|seed| reference.input(seed)).collect::<Result<_>>()?;
    let expected: Vec<Vec<f32>> = inputs.iter().map(|i| reference.run(i)).collect::<Result<_>>()?;

    let (cloud_port, edge_port) = (free_udp_port()?, free_udp_port()?);
    let model_arg = model.to_string_lossy().into_owned();
    let threads = args.server_threads.to_string();
    let cloud_args: Vec<String> = ["serve", &model_arg, "--cluster", &cluster_arg, "--threads", &threads]
        .iter()
        .map(|s| s.to_string())
        .chain(["--listen".into(), format!("127.0.0.1:{cloud_port}")])
        .collect();
    let cloud = Tier::start("cloud", "scission-cloud", cloud_args)?;
    // With drops, the device and the edge reach the next tier through a relay.
    let relays = (args.faults == "drop").then(|| (Relay::start(edge_port), Relay::start(cloud_port)));
    let (edge_seen, cloud_seen) = match &relays {
        Some((edge, cloud)) => {
            (edge.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.port, cloud.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?.port)
        }
        None => (edge_port, cloud_port),
    };
    let edge_args: Vec<String> = ["serve", &model_arg, "--cluster", &cluster_arg, "--threads", &threads]
        .iter()
        .map(|s| s.to_string())
        .chain(["--listen".into(), format!("127.0.0.1:{edge_port}"), "--cloud".into(), format!("127.0.0.1:{cloud_seen}")])
        .collect();
    let edge = Tier::start("edge", "scission-edge", edge_args)?;
    let device = DeviceService::start(&args, &model_arg, &cluster_arg, edge_seen, cloud_seen)?;
    let meta = get_json(&format!("{}/v2/models/{}", device.url, device.model_name))?;
    let input_name = meta["inputs"][0]["name"].as_str().context("the metadata names no input")?.to_string();
    let bodies: Vec<Arc<Vec<u8>>> = inputs.iter().map(|t| request_body(&input_name, t).map(Arc::new)).collect::<Result<_>>()?;
    let url = format!("{}/v2/models/{}/infer", device.url, device.model_name);

    println!(
        "soak: {} clients for {} s against {} (split {}), faults: {} every {} s, {} s down",
        args.clients, args.seconds, device.url, args.split, args.faults, args.fault_every, args.down_s
    );
    let started = Instant::now();
    let log = Arc::new(Mutex::new(Vec::<Answer>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (log, stop, url, bodies, expected) = (log.clone(), stop.clone(), url.clone(), bodies.clone(), expected.clone());
            let timeout = Duration::from_secs(args.request_timeout_s);
            std::thread::spawn(move || client(c, &url, &bodies, &expected, timeout, started, &log, &stop))
        })
        .collect();

    let tiers = Arc::new(Mutex::new([edge, cloud]));
    let relays = relays.map(|(e, c)| [e.ok(), c.ok()]);
    let mut faults = Vec::new();
    let mut samples = Vec::new();
    let end = Duration::from_secs(args.seconds);
    let schedule = fault_schedule(args.fault_every, args.down_s, end);
    let mut next = 0;
    let mut last_print = Duration::ZERO;
    while started.elapsed() < end {
        let now = started.elapsed();
        while let Some(&(at, tier, away)) = schedule.get(next).filter(|(at, _, _)| *at <= now) {
            let _ = at;
            let which = if tier == 0 { "edge" } else { "cloud" };
            if away {
                match &relays {
                    Some(r) => r[tier].as_ref().map_or((), |relay| relay.dropping.store(1, Ordering::SeqCst)),
                    None => tiers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[tier].kill(),
                }
                faults.push(Fault { tier: which, at: started.elapsed(), back: None });
            } else {
                match &relays {
                    Some(r) => r[tier].as_ref().map_or((), |relay| relay.dropping.store(0, Ordering::SeqCst)),
                    None => tiers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[tier].restart()?,
                }
                if let Some(f) = faults.iter_mut().rev().find(|f| f.tier == which) {
                    f.back = Some(started.elapsed());
                }
            }
            next += 1;
        }
        let rss = {
            let t = tiers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            Sample { at: now, device: rss_kib(device.pid()), edge: t[0].rss(), cloud: t[1].rss() }
        };
        samples.push(rss);
        if now >= last_print + Duration::from_secs(30) {
            last_print = now;
            let answered = log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len();
            println!("  {:>5.0} s  {answered:>6} answers  device RSS {:>6.1} MB", now.as_secs_f64(), mb(rss.device));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    let log = log.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let report = Report::new(&log, &faults, &samples, started.elapsed());
    report.print();
    if args.json {
        println!("{}", report.json());
    }
    drop(device);
    if report.wrong > 0 || report.hung > 0 {
        bail!("{} wrong and {} hung answers", report.wrong, report.hung);
    }
    Ok(())
}

fn checked(out: std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!("{}", stderr(&out));
    }
    Ok(())
}

/// A UDP port free now (bound and released), for a tier that must come back on the same one.
fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// (when, tier 0 edge / 1 cloud, true: goes away / false: comes back), in time order.
fn fault_schedule(every: u64, down_s: f64, end: Duration) -> Vec<(Duration, usize, bool)> {
    let mut events = Vec::new();
    if every == 0 {
        return events;
    }
    let period = Duration::from_secs(every);
    let down = Duration::from_secs_f64(down_s.max(0.0));
    let mut start = Duration::ZERO;
    while start < end {
        for (tier, offset) in [(0, period / 4), (1, period * 3 / 4)] {
            let at = start + offset;
            if at + down < end {
                events.push((at, tier, true));
                events.push((at + down, tier, false));
            }
        }
        start += period;
    }
    events.sort_by_key(|e| e.0);
    events
}

/// A server process that can be killed and started again on the same address.
struct Tier {
    name: &'static str,
    bin: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl Tier {
    fn start(name: &'static str, bin: &'static str, args: Vec<String>) -> Result<Self> {
        let mut tier = Self { name, bin, args, child: None };
        tier.restart()?;
        Ok(tier)
    }

    fn restart(&mut self) -> Result<()> {
        self.kill();
        let mut child = Command::new(bin(self.bin)).args(&self.args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep reading, so the server never blocks on a full pipe.
            for _ in lines {}
        });
        rx.recv_timeout(Duration::from_secs(120)).with_context(|| format!("the {} did not start", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn rss(&self) -> Option<u64> {
        self.child.as_ref().and_then(|c| rss_kib(c.id()))
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A UDP relay in front of a tier: forwards both ways for every peer that writes to it (each
/// gets its own upstream socket), or drops everything while `dropping`.
struct Relay {
    port: u16,
    dropping: Arc<AtomicU8>,
}

impl Relay {
    fn start(upstream: u16) -> std::io::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let port = front.local_addr()?.port();
        let dropping = Arc::new(AtomicU8::new(0));
        let flag = dropping.clone();
        std::thread::spawn(move || {
            let mut backs: std::collections::HashMap<SocketAddr, UdpSocket> = Default::default();
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = front.recv_from(&mut buf) {
                if let std::collections::hash_map::Entry::Vacant(slot) = backs.entry(from) {
                    let Ok(back) = Relay::back(&front, from, upstream, flag.clone()) else { continue };
                    slot.insert(back);
                }
                if let (Some(back), 0) = (backs.get(&from), flag.load(Ordering::SeqCst)) {
                    let _ = back.send(&buf[..n]);
                }
            }
        });
        Ok(Self { port, dropping })
    }

    /// The upstream socket of peer `to`, with a thread relaying the tier's datagrams to it.
    fn back(front: &UdpSocket, to: SocketAddr, upstream: u16, dropping: Arc<AtomicU8>) -> std::io::Result<UdpSocket> {
        let back = UdpSocket::bind("127.0.0.1:0")?;
        back.connect(("127.0.0.1", upstream))?;
        let (reader, front) = (back.try_clone()?, front.try_clone()?);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            loop {
                // A killed upstream answers with ICMP (ECONNREFUSED on a connected socket): go on.
                let Ok(n) = reader.recv(&mut buf) else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                if dropping.load(Ordering::SeqCst) == 0 {
                    let _ = front.send_to(&buf[..n], to);
                }
            }
        });
        Ok(back)
    }
}

/// `scission-device serve`, killed when dropped.
struct DeviceService {
    child: Child,
    url: String,
    model_name: String,
}

impl DeviceService {
    fn start(args: &Args, model: &str, cluster: &str, edge: u16, cloud: u16) -> Result<Self> {
        let mut command = Command::new(bin("scission-device"));
        let model = args.device_slices.as_deref().and_then(|d| d.to_str()).unwrap_or(model);
        command.args(["serve", "--model", model, "--name", "device", "--cluster", cluster, "--split", &args.split]);
        command.args(["--edge", &format!("127.0.0.1:{edge}"), "--cloud", &format!("127.0.0.1:{cloud}"), "--listen", "127.0.0.1:0"]);
        command.args(&args.device_arg);
        for pair in &args.device_env {
            let (k, v) = pair.split_once('=').with_context(|| format!("--device-env {pair:?} is not NAME=VALUE"))?;
            command.env(k, v);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).context("the device service did not start")?;
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).with_context(|| format!("no URL in {line:?}"))?.to_string();
        let model_name = line.split('\'').nth(1).with_context(|| format!("no model name in {line:?}"))?.to_string();
        Ok(Self { child, url, model_name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DeviceService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` in KiB (VmRSS), while it runs.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mb(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

impl Reference {
    /// A deterministic input in [-1, 1).
    fn input(&self, seed: u64) -> Result<Tensor> {
        let len: usize = self.shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        let data: Vec<f32> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Tensor::from_shape(&self.shape, &data)
    }

    fn run(&self, input: &Tensor) -> Result<Vec<f32>> {
        let out = self.plan.run(tvec![input.clone().into_tvalue()])?;
        Ok(out[0].to_plain_array_view::<f32>()?.iter().copied().collect())
    }
}

fn request_body(name: &str, input: &Tensor) -> Result<Vec<u8>> {
    let data: Vec<f32> = input.to_plain_array_view::<f32>()?.iter().copied().collect();
    Ok(serde_json::to_vec(&json!({
        "inputs": [{ "name": name, "shape": input.shape(), "datatype": "FP32", "data": data }]
    }))?)
}

fn get_json(url: &str) -> Result<Value> {
    let mut response = ureq::get(url).call()?;
    Ok(serde_json::from_slice(&response.body_mut().read_to_vec()?)?)
}

/// How one request ended.
#[derive(Clone, Debug)]
struct Answer {
    /// When it ended, since the start.
    done: Duration,
    took: Duration,
    outcome: Outcome,
    route: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Right,
    Wrong(String),
    Failed(u16),
    Hung,
}

#[allow(clippy::too_many_arguments)]
fn client(
    id: usize,
    url: &str,
    bodies: &[Arc<Vec<u8>>],
    expected: &[Vec<f32>],
    timeout: Duration,
    started: Instant,
    log: &Mutex<Vec<Answer>>,
    stop: &AtomicBool,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
    let mut n = id;
    while !stop.load(Ordering::SeqCst) {
        let which = n % bodies.len();
        n += 1;
        let sent = Instant::now();
        let result = agent.post(url).header("Content-Type", "application/json").send(&bodies[which][..]);
        let (outcome, route) = match result {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let body = response.body_mut().with_config().limit(64 << 20).read_to_vec();
                match (status, body) {
                    (200, Ok(body)) => judge(&body, &expected[which]),
                    (200, Err(e)) => (Outcome::Wrong(format!("unreadable body: {e}")), None),
                    (status, _) => (Outcome::Failed(status), None),
                }
            }
            Err(ureq::Error::Timeout(_)) => (Outcome::Hung, None),
            Err(_) => (Outcome::Failed(0), None),
        };
        let answer = Answer { done: started.elapsed(), took: sent.elapsed(), outcome, route };
        if let Ok(mut log) = log.lock() {
            log.push(answer);
        }
    }
}

/// Right when every output value is within 1e-4 of the reference's largest magnitude.
fn judge(body: &[u8], expected: &[f32]) -> (Outcome, Option<String>) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return (Outcome::Wrong("not JSON".into()), None) };
    let route = value["parameters"]["scission_route"].as_str().map(str::to_string);
    let Some(data) = value["outputs"][0]["data"].as_array() else { return (Outcome::Wrong("no output data".into()), route) };
    if data.len() != expected.len() {
        return (Outcome::Wrong(format!("{} values, expected {}", data.len(), expected.len())), route);
    }
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let worst = data.iter().zip(expected).map(|(g, w)| g.as_f64().map_or(f32::INFINITY, |g| (g as f32 - w).abs())).fold(0f32, f32::max);
    if worst / scale > 1e-4 {
        return (Outcome::Wrong(format!("off by {:.2e} relative", worst / scale)), route);
    }
    (Outcome::Right, route)
}

/// A tier's fault: when it went away and came back.
struct Fault {
    tier: &'static str,
    at: Duration,
    back: Option<Duration>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    device: Option<u64>,
    edge: Option<u64>,
    cloud: Option<u64>,
}

struct FaultFigures {
    tier: &'static str,
    at: f64,
    /// Longest gap between two answers from the fault to 10 s after its end.
    gap: f64,
    /// From the tier's return to the first answer on the first plan again.
    back_on_plan: Option<f64>,
    /// Right answers after the tier came back.
    right_after_return: usize,
}

struct Report {
    answered: usize,
    right: usize,
    wrong: usize,
    hung: usize,
    failed: Vec<(u16, usize)>,
    wrong_examples: Vec<String>,
    longest_gap: f64,
    p50_ms: f64,
    p99_ms: f64,
    faults: Vec<FaultFigures>,
    device_peak_mb: f64,
    device_windows: Vec<(f64, f64)>,
    edge_peak_mb: f64,
    cloud_peak_mb: f64,
    seconds: f64,
}

impl Report {
    fn new(log: &[Answer], faults: &[Fault], samples: &[Sample], elapsed: Duration) -> Self {
        let count = |o: &Outcome| log.iter().filter(|a| &a.outcome == o).count();
        let mut failed: std::collections::BTreeMap<u16, usize> = Default::default();
        let mut wrong_examples = Vec::new();
        for a in log {
            match &a.outcome {
                Outcome::Failed(s) => *failed.entry(*s).or_default() += 1,
                Outcome::Wrong(why) if wrong_examples.len() < 5 => wrong_examples.push(why.clone()),
                _ => {}
            }
        }
        let mut done: Vec<f64> = log.iter().map(|a| a.done.as_secs_f64()).collect();
        done.sort_by(f64::total_cmp);
        let gaps = |from: f64, to: f64| -> f64 {
            // The gap straddling `from` counts: the last answer before it to the first after.
            let start = done.iter().rposition(|&d| d <= from).unwrap_or(0);
            done[start..].windows(2).take_while(|w| w[0] <= to).map(|w| w[1] - w[0]).fold(0.0, f64::max)
        };
        let mut took: Vec<f64> = log.iter().map(|a| a.took.as_secs_f64() * 1e3).collect();
        took.sort_by(f64::total_cmp);
        let q = |q: f64| took.get(((took.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
        // The first plan: the route of most answers in the first 5 % of the run.
        let first_plan = {
            let early: Vec<&String> =
                log.iter().filter(|a| a.done.as_secs_f64() < elapsed.as_secs_f64() * 0.05).filter_map(|a| a.route.as_ref()).collect();
            let mut counts: std::collections::HashMap<&String, usize> = Default::default();
            for r in early {
                *counts.entry(r).or_default() += 1;
            }
            counts.into_iter().max_by_key(|(_, n)| *n).map(|(r, _)| r.clone())
        };
        let fault_figures = faults
            .iter()
            .map(|f| {
                let at = f.at.as_secs_f64();
                let end = f.back.map_or(elapsed.as_secs_f64(), |b| b.as_secs_f64()) + 10.0;
                let back_on_plan = f.back.and_then(|b| {
                    let b = b.as_secs_f64();
                    let mut after: Vec<&Answer> = log.iter().filter(|a| a.done.as_secs_f64() > b).collect();
                    after.sort_by_key(|a| a.done);
                    after.iter().find(|a| a.route.is_some() && a.route == first_plan).map(|a| a.done.as_secs_f64() - b)
                });
                let right_after_return = f.back.map_or(0, |b| log.iter().filter(|a| a.done > b && a.outcome == Outcome::Right).count());
                FaultFigures { tier: f.tier, at, gap: gaps(at, end), back_on_plan, right_after_return }
            })
            .collect();
        let peak = |f: fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).max().map_or(f64::NAN, |k| k as f64 / 1024.0);
        // Mean device RSS over each third of the run.
        let third = elapsed.as_secs_f64() / 3.0;
        let device_windows = (0..3)
            .map(|i| {
                let (from, to) = (third * i as f64, third * (i + 1) as f64);
                let v: Vec<f64> = samples
                    .iter()
                    .filter(|s| (from..to).contains(&s.at.as_secs_f64()))
                    .filter_map(|s| s.device)
                    .map(|k| k as f64 / 1024.0)
                    .collect();
                (from, if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 })
            })
            .collect();
        Self {
            answered: log.len(),
            right: count(&Outcome::Right),
            wrong: log.iter().filter(|a| matches!(a.outcome, Outcome::Wrong(_))).count(),
            hung: count(&Outcome::Hung),
            failed: failed.into_iter().collect(),
            wrong_examples,
            longest_gap: gaps(0.0, f64::INFINITY),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            faults: fault_figures,
            device_peak_mb: peak(|s| s.device),
            device_windows,
            edge_peak_mb: peak(|s| s.edge),
            cloud_peak_mb: peak(|s| s.cloud),
            seconds: elapsed.as_secs_f64(),
        }
    }

    fn print(&self) {
        let failed: usize = self.failed.iter().map(|(_, n)| n).sum();
        println!(
            "\n{} requests in {:.0} s: {} right, {} wrong, {} failed {:?} (HTTP status, count), {} hung; latency p50 {:.1} ms, p99 {:.1} ms",
            self.answered, self.seconds, self.right, self.wrong, failed, self.failed, self.hung, self.p50_ms, self.p99_ms
        );
        for why in &self.wrong_examples {
            println!("  wrong: {why}");
        }
        println!("longest gap between two answers: {:.2} s", self.longest_gap);
        for f in &self.faults {
            let back = f.back_on_plan.map_or_else(|| "never".to_string(), |b| format!("{b:.2} s"));
            println!("  {:>5} away at {:>6.1} s: longest gap {:.2} s; back on the first plan {back} after its return", f.tier, f.at, f.gap);
        }
        let windows: Vec<String> = self.device_windows.iter().map(|(from, mean)| format!("from {from:.0} s {mean:.1} MB")).collect();
        println!(
            "device RSS peak {:.1} MB, mean by thirds: {}; edge peak {:.1} MB, cloud peak {:.1} MB",
            self.device_peak_mb,
            windows.join(", "),
            self.edge_peak_mb,
            self.cloud_peak_mb
        );
    }

    fn json(&self) -> Value {
        json!({
            "answered": self.answered, "right": self.right, "wrong": self.wrong, "hung": self.hung,
            "failed": self.failed.iter().map(|(s, n)| json!({"status": s, "count": n})).collect::<Vec<_>>(),
            "longest_gap_s": self.longest_gap, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "faults": self.faults.iter().map(|f| json!({"tier": f.tier, "at_s": f.at, "gap_s": f.gap, "back_on_plan_s": f.back_on_plan, "right_after_return": f.right_after_return})).collect::<Vec<_>>(),
            "device_rss_peak_mb": self.device_peak_mb,
            "device_rss_by_thirds_mb": self.device_windows.iter().map(|w| w.1).collect::<Vec<_>>(),
            "edge_rss_peak_mb": self.edge_peak_mb, "cloud_rss_peak_mb": self.cloud_peak_mb,
        })
    }
}
