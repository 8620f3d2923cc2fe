//! `serve` for edge and cloud: a whole model's stages over QUIC (where the CLI reads ONNX).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::builder::TypedValueParser as _;
use scission_core::batching::BatchWindow;
use scission_core::profile::TierKind;
use scission_core::profile::parse_sha256;
use scission_core::wire::frame::DEFAULT_MAX_FRAME;
use scission_engine::profile_file::read_profile;
use scission_runtime::client::Peer;
use scission_runtime::fetch::{Expected, fetch_model_blocking};
use scission_runtime::serve::{Limits, ServeConfig, serve};

use crate::cluster::ClusterArgs;
use crate::model::{ModelArgs, ZooLookup};
use crate::progress::FetchBar;

/// Arguments of `serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// UDP address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// This node's enrolled name (default: its tier).
    #[arg(long)]
    pub name: Option<String>,
    /// Engine threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest frame accepted, in MiB.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME >> 20)]
    pub max_frame_mib: u32,
    /// This machine's benchmark profile (from `bench`). The cloud plans with it; an edge sends
    /// it to the cloud with its measured link when it starts.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// When the model file is missing, fetch it from the next tier (chunked, SHA-256 checked
    /// against --profile's when given).
    #[arg(long)]
    pub fetch_model: bool,
    /// Emulate a link to the next tier, as BANDWIDTH,LATENCY (e.g. `100mbit,20ms`): a delay
    /// and bandwidth cap on this server's own socket towards it, so that measured latencies
    /// reflect the planned network even on loopback (a what-if tool, like the device's
    /// `--emulate`).
    #[arg(long, value_name = "BW,LAT")]
    pub emulate_upstream: Option<String>,
    /// Inferences run at once (default: one per core); each holds its activations in memory.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Inferences that may wait for a worker, whatever their deadlines; one more is answered
    /// `Busy` at once. By default a request with a deadline (every device's) is taken on while
    /// the expected wait for a worker (the requests ahead, at the measured service time) and its
    /// own run fit it, within --queue-mib, and is `Busy` at once otherwise, with the expected
    /// wait (the device tries again later or elsewhere); four per worker may wait when a request
    /// carries no deadline or the server has timed none yet.
    #[arg(long)]
    pub queue: Option<u16>,
    /// Mebibytes the queued and running inferences' tensors may hold together; a request that
    /// would go past it is answered `Busy`.
    #[arg(long, default_value_t = scission_runtime::server::DEFAULT_QUEUE_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub queue_mib: u64,
    /// Dynamic batching: most requests for one slice run as one batch (1: off; batches hold
    /// 2, 4, 8... requests). Needs a model whose batch dimension is symbolic (the zoo's are;
    /// torch `dynamic_axes` and tf2onnx exports usually are); a model with a fixed batch runs
    /// its requests one at a time. Each worker may then hold a whole batch, on top of --queue.
    /// Off by default: tract's fastest CPU convolutions take a batch of 1, so on CPU a batch
    /// costs more per request than running its requests one by one (README, "Batching").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_max: u16,
    /// Dynamic batching: milliseconds a request may wait for others to join its batch (0: a
    /// batch is what queued while the workers were busy, so a quiet server adds no latency).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub batch_delay_ms: u64,
    /// Connections open at once; more are refused.
    #[arg(long, default_value_t = 256)]
    pub max_connections: u16,
    /// Connections one node may hold at once; more are closed.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections_per_node: u16,
    /// Milliseconds a peer has to deliver a whole request frame once it opened a stream (and
    /// to read its answer).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub read_deadline_ms: u64,
    /// Milliseconds the next tier has to answer a forwarded request before it counts as
    /// unreachable; keep it below the devices' --timeout-ms so they blame the right tier.
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub forward_timeout_ms: u64,
    /// Streams one connection may have open at once (more wait for QUIC flow control).
    #[arg(long, default_value_t = scission_net::quic::MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_streams: u32,
    /// Mebibytes this server may use in all (default: what the machine, or its cgroup, has
    /// available at start). What the process holds with its model loaded, --queue-mib, the
    /// running slices and 40 MiB of overhead are set aside; built slices share the rest (least
    /// recently used dropped first), and a stage whose slice alone would not fit is refused
    /// with the budget as the reason. The split is logged at start.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub memory_mib: Option<u64>,
    /// Slices kept built at once (each holds its weights; least recently used dropped first).
    #[arg(long, default_value_t = scission_runtime::node::MAX_CACHED_SLICES, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub slice_cache: usize,
    /// The cloud's planner: edges kept registered at once (more are refused).
    #[arg(long, default_value_t = scission_runtime::planner::MAX_REGISTERED, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_registrations: usize,
    /// The cloud's planner: seconds a registration lasts without renewal (edges renew every
    /// --heartbeat-s).
    #[arg(long, default_value_t = scission_runtime::planner::REGISTRATION_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub registration_ttl_s: u64,
    /// An edge: seconds between renewals of its registration with the cloud; each renewal
    /// re-measures the link and reports the edge's queue, which the planner plans with. Keep it
    /// well below the cloud's --registration-ttl-s.
    #[arg(long, default_value_t = scission_runtime::serve::HEARTBEAT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub heartbeat_s: u64,
    /// The cloud's planner, HOST:PORT, when this server registers there rather than with
    /// --cloud: an edge of a cloud whose planner runs apart from its stage servers, or a
    /// further cloud (with --profile) joining another cloud's plans. Resolved at start.
    #[arg(long, value_parser = crate::model::parse_host_port, value_name = "HOST:PORT")]
    pub planner: Option<SocketAddr>,
    /// The cloud's planner: the chain of tiers it plans over, device first and this cloud last,
    /// e.g. `device,edge,edge2,cloud` (default `device,edge,cloud`); servers of a middle tier
    /// register with --tier-index.
    #[arg(long, value_delimiter = ',', value_name = "TIER,TIER,...")]
    pub tiers: Option<Vec<String>>,
    /// This server's index in the planner's chain (default: an edge 1, a cloud the chain's last,
    /// 2 without --tiers), e.g. 2 for the edge2 of `device,edge,edge2,cloud`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..8))]
    pub tier_index: Option<u8>,
    /// The planner's enrolled name (its certificate must carry it).
    #[arg(long, default_value = "cloud")]
    pub planner_name: String,
    /// The address registered with the planner, where devices and other servers reach this one
    /// by the planner's directory. Default: the --listen address when it is a specific IP;
    /// listening on 0.0.0.0, none (the server is then reached only as its tier's configured
    /// one: the devices' --edge). A 0.0.0.0 host here stands for the address the planner sees
    /// the registration come from.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
}

impl ServeArgs {
    fn limits(&self, max_frame: u32) -> Limits {
        let defaults = Limits::for_cores(scission_engine::host::available_cores(), max_frame);
        let workers = self.workers.map_or(defaults.workers, usize::from);
        Limits {
            workers,
            queue: self.queue.map_or(workers.saturating_mul(4), usize::from),
            queue_is_cap: self.queue.is_some(),
            queue_bytes: self.queue_mib.saturating_mul(1 << 20),
            connections: usize::from(self.max_connections),
            per_peer: usize::from(self.max_connections_per_node),
            read_deadline: std::time::Duration::from_millis(self.read_deadline_ms),
            forward_timeout: std::time::Duration::from_millis(self.forward_timeout_ms),
            streams_per_connection: self.max_streams,
            slice_cache: self.slice_cache,
            memory: self.memory_mib.map(|m| m.saturating_mul(1 << 20)),
            registrations: self.max_registrations,
            registration_ttl: std::time::Duration::from_secs(self.registration_ttl_s),
            batch: BatchWindow { max: usize::from(self.batch_max), delay_ns: self.batch_delay_ms.saturating_mul(1_000_000) },
            ..defaults
        }
    }
}

/// What a server says once it is up.
pub struct Announcement {
    /// The line that says where it listens (test harnesses and the demo read it from stdout).
    pub serving: String,
    /// How its memory is shared out (for people: stderr).
    pub memory: String,
}

/// Runs `serve` as `tier`, forwarding later stages to `upstream` (the edge's cloud) and
/// registering with `--planner` (default: `upstream`); `announce` gets what to say once it is up.
pub fn run_serve(
    args: &ServeArgs,
    tier: TierKind,
    upstream: Option<Peer>,
    zoo: Option<ZooLookup>,
    announce: impl FnOnce(&Announcement),
) -> Result<String> {
    let name = args.name.clone().unwrap_or_else(|| tier.as_str().to_string());
    let max_frame = args.max_frame_mib.saturating_mul(1 << 20);
    let path = args.model.path(zoo)?;
    let profile = args.profile.as_deref().map(read_profile).transpose()?;
    if args.fetch_model && !path.exists() {
        let from = upstream.as_ref().context("--fetch-model needs a next tier to fetch from")?;
        let expected = Expected { sha256: profile.as_ref().map(|p| parse_sha256(&p.model.sha256)).transpose()?, ..Expected::default() };
        let mut bar = FetchBar::new("the model");
        fetch_model_blocking(&args.cluster.cluster, &name, from, &path, max_frame, expected, &mut |done, total| bar.update(done, total))?;
    }
    let upstream_link = args.emulate_upstream.as_deref().map(parse_link_figures).transpose()?;
    if upstream_link.is_some() && upstream.is_none() {
        bail!("--emulate-upstream needs a next tier (--cloud)");
    }
    let model = scission_engine::Model::load_path(&path, &args.model.load_options())?;
    // The model is loaded: what is allocated from now on comes and goes with requests, and a
    // huge page under a freed buffer stays resident while any of it is used. (Freed memory is
    // handed back after mimalloc's 10 ms: handing it back at once, as the device does, made
    // every run fault its buffers in again, 50 % slower stages in the demo.)
    scission_engine::heap::set_huge_pages(false);
    let config = ServeConfig {
        cluster: args.cluster.cluster.clone(),
        name: name.clone(),
        tier,
        listen: args.listen,
        upstream,
        upstream_link,
        planner: args.planner.map(|addr| Peer::new(addr, args.planner_name.clone())),
        advertise: args.advertise.map(|a| a.to_string()),
        tiers: args.tiers.clone(),
        tier_index: args.tier_index,
        threads: args.threads.unwrap_or_else(scission_engine::host::available_cores),
        limits: args.limits(max_frame),
        profile,
        model_file: path,
        heartbeat: std::time::Duration::from_secs(args.heartbeat_s),
    };
    serve(&config, model, |ready| {
        announce(&Announcement {
            serving: format!("scission-{} '{name}' serving {} on {}", tier.as_str(), ready.model, ready.addr),
            memory: ready.memory.to_string(),
        })
    })?;
    Ok(String::new())
}

/// `100mbit,20ms`: a link's bandwidth and one-way latency.
fn parse_link_figures(text: &str) -> Result<scission_core::link::Link> {
    use scission_core::solver::linkspec::{parse_bandwidth, parse_latency};
    let (bandwidth, latency) = text.split_once(',').with_context(|| format!("--emulate-upstream '{text}': expected BANDWIDTH,LATENCY"))?;
    let bits_per_sec = parse_bandwidth(bandwidth.trim()).map_err(|e| anyhow::anyhow!("--emulate-upstream {e}"))?;
    let latency_ns = parse_latency(latency.trim()).map_err(|e| anyhow::anyhow!("--emulate-upstream {e}"))?;
    Ok(scission_core::link::Link { latency_ns, bits_per_sec })
}
