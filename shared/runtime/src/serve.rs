//! An edge or cloud server: loads the model, serves its stages over QUIC, forwards later
//! stages upstream, and (an edge with a profile) registers with the cloud's planner and keeps
//! the registration alive with a heartbeat that reports its link and load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, bail};

use scission_core::profile::{Profile, TierKind};
use scission_core::wire::message::{Body, decode, encode};
use scission_engine::Model;
use scission_net::{pki, quic};

use crate::directory::Directory;
use crate::load::LoadMeter;
use crate::node::Node;
use crate::peer::Peer;
use crate::planner::{ModelFile, Planner};
pub use crate::server::Limits;
use crate::server::{StageServer, Upstream};

/// Everything a server needs besides its loaded model.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The cluster directory.
    pub cluster: std::path::PathBuf,
    /// This node's enrolled name.
    pub name: String,
    /// The tier it serves.
    pub tier: TierKind,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The next tier (the edge's cloud).
    pub upstream: Option<Peer>,
    /// Emulate this link on the way to `upstream` (delay and bandwidth cap on this server's
    /// client socket): a what-if tool on loopback, as the device's `--emulate`.
    pub upstream_link: Option<scission_core::link::Link>,
    /// Where an edge registers (the cloud's planner), when not `upstream` (a cloud whose stage
    /// servers are scaled out apart from its one planner).
    pub planner: Option<Peer>,
    /// Engine threads.
    pub threads: usize,
    /// What the server takes on at once.
    pub limits: Limits,
    /// This machine's profile: the cloud plans with it, an edge registers it.
    pub profile: Option<Profile>,
    /// The model file, served to tiers that lack it.
    pub model_file: std::path::PathBuf,
    /// The planner's chain of tier names, device first, this cloud last (default: device, edge,
    /// cloud).
    pub tiers: Option<Vec<String>>,
    /// This server's index in the planner's chain (default: an edge 1, a cloud the chain's last).
    pub tier_index: Option<u8>,
    /// The address registered with the planner, where devices and other servers reach this
    /// one (default: the bound address when it is a specific IP, else none: then this server is
    /// reached only as its tier's configured one; an unspecified host stands for the address
    /// the planner sees the registration come from).
    pub advertise: Option<String>,
    /// How often an edge renews its registration (and reports its load); keep it well below
    /// the cloud's registration TTL.
    pub heartbeat: Duration,
}

/// How often an edge renews its registration unless told otherwise.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The server is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The bound address.
    pub addr: SocketAddr,
    /// The model's name.
    pub model: String,
    /// How its memory is shared out.
    pub memory: MemoryBudget,
}

/// The tier's index in the default chain.
pub fn tier_index(tier: TierKind) -> u8 {
    match tier {
        TierKind::Device => 0,
        TierKind::Edge => 1,
        TierKind::Cloud => 2,
    }
}

/// Serves `model` until the process ends; `on_ready` is called once the endpoint is bound.
pub fn serve(config: &ServeConfig, model: Model, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let identity = pki::Identity::load(&config.cluster, &config.name)?;
    let chain = config.tiers.as_ref().map(|t| u8::try_from(t.len().saturating_sub(1)).unwrap_or(u8::MAX));
    let tier = config.tier_index.or(chain).unwrap_or_else(|| tier_index(config.tier));
    let node = Node::new(model, tier, config.threads)?.with_slice_cache(config.limits.slice_cache);
    let budget = MemoryBudget::at_start(&config.limits, node.graph())?;
    let node = Arc::new(node.with_slice_budget(budget.slices()));
    let deny = Arc::new(pki::DenyList::new(&config.cluster));
    let mut server = StageServer::new(node.clone(), config.limits)
        .with_revocations(deny.clone())
        .with_model_file(ModelFile::new(config.model_file.clone(), node.sha256)?);
    let directory = Arc::new(Directory::default());
    server = server.with_directory(directory.clone());
    // A cloud with a profile plans, unless it registers with another cloud's planner.
    if let (TierKind::Cloud, Some(p), None) = (config.tier, &config.profile, &config.planner) {
        let mut planner =
            Planner::new(p.clone()).with_registry(config.limits.registrations, config.limits.registration_ttl).with_deny_list(deny.clone());
        if let Some(tiers) = &config.tiers {
            planner = planner.with_tiers(tiers.clone()).map_err(|e| crate::error::error!("--tiers: {e}"))?;
        }
        server = server.with_planner(planner);
    }
    crate::async_runtime()?.block_on(async move {
        let endpoint =
            quic::server_with(&identity, config.listen, Some(deny), config.limits.streams_per_connection, quic::Datagrams::default())?;
        let client = match (config.upstream_link, &config.upstream) {
            (Some(link), Some(up)) => {
                let shapers = std::collections::HashMap::from([(up.addr, scission_net::emulator::Shaper::new(link))]);
                quic::client_with(&identity, shapers, quic::Datagrams::default(), quic::Liveness::default())?
            }
            _ => quic::client(&identity)?,
        };
        let planner = config.planner.clone().or_else(|| config.upstream.clone());
        if let (Some(planner), Some(p)) = (planner, &config.profile) {
            let registrar = Registrar {
                client: client.clone(),
                planner,
                name: config.name.clone(),
                tier,
                addr: config.advertise.clone().unwrap_or(advertised(endpoint.local_addr()?)),
                profile: serde_json::to_vec(p)?,
                max_frame: config.limits.max_frame,
                load: server.load(),
                directory,
            };
            // The first registration is done before the server says it is ready.
            let registered = match registrar.register().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("registration with the cloud failed ({e:#}); retrying in the background");
                    false
                }
            };
            tokio::spawn(registrar.keep(config.heartbeat, registered));
        }
        if let Some(cloud) = &config.upstream {
            server = server.with_upstream(Upstream::new(client, cloud.addr, &cloud.name));
        }
        on_ready(&Ready { addr: endpoint.local_addr()?, model: node.graph().name.clone(), memory: budget });
        Arc::new(server).serve(endpoint).await;
        Ok(())
    })
}

/// How a server's memory is shared out at start: what it holds already (the process and its
/// model), the queued tensors, its runs, and the rest for built slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes the server may use in all.
    pub total: u64,
    /// Resident before any slice is built.
    pub resident: u64,
    /// The queued and running inferences' tensors ([`Limits::queue_bytes`]).
    pub queue: u64,
    /// Each worker's running slice: twice the model's largest tensor, per request of a batch.
    pub runs: u64,
}

impl MemoryBudget {
    /// The budget of a server with `limits` serving `graph`, its model loaded: the total is
    /// [`Limits::memory`], or what the machine (or its cgroup) has available. Errors when
    /// nothing is left for slices.
    pub fn at_start(limits: &Limits, graph: &scission_engine::ModelGraph) -> Result<Self> {
        let total = limits.memory.or_else(scission_engine::host::available_memory).unwrap_or(u64::MAX);
        let whole = scission_core::cut::Block { start: 0, end: graph.summary.len() };
        let per_run = scission_core::memory::largest_activation(&graph.summary, whole).saturating_mul(2);
        let budget = Self {
            total,
            resident: scission_engine::host::resident_bytes().unwrap_or(0),
            queue: limits.queue_bytes,
            runs: per_run.saturating_mul(limits.workers as u64).saturating_mul(limits.batch.max.max(1) as u64),
        };
        if budget.slices() == 0 {
            bail!("{budget}: give the server more memory (--memory-mib) or queue less (--queue-mib)");
        }
        Ok(budget)
    }

    /// What is set aside before any slice: resident, queue, runs and what the heap count
    /// cannot see ([`MEASURED_OVERHEAD`](scission_core::memory::MEASURED_OVERHEAD)).
    pub fn reserved(&self) -> u64 {
        [self.queue, self.runs, scission_core::memory::MEASURED_OVERHEAD].into_iter().fold(self.resident, u64::saturating_add)
    }

    /// Bytes built slices may hold together (what building one holds included).
    pub fn slices(&self) -> u64 {
        self.total.saturating_sub(self.reserved())
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b >> 20;
        write!(
            f,
            "memory budget {} MiB: {} MiB resident with the model loaded, {} MiB of queued tensors, {} MiB for running slices, {} MiB overhead, {} MiB left for built slices",
            mib(self.total),
            mib(self.resident),
            mib(self.queue),
            mib(self.runs),
            mib(scission_core::memory::MEASURED_OVERHEAD),
            mib(self.slices())
        )
    }
}

/// The address a server registers by default: the one it is bound to, when that is a specific
/// IP; bound to every interface (`0.0.0.0`), none: it is reached as its tier's configured server
/// (give `--advertise` to be reachable by the planner's directory).
fn advertised(bound: std::net::SocketAddr) -> String {
    if bound.ip().is_unspecified() { String::new() } else { bound.to_string() }
}

/// An edge's registration with the cloud's planner.
struct Registrar {
    client: quinn::Endpoint,
    planner: Peer,
    name: String,
    tier: u8,
    addr: String,
    directory: Arc<Directory>,
    profile: Vec<u8>,
    max_frame: u32,
    load: Arc<LoadMeter>,
}

/// First wait after a failed registration; it doubles up to the heartbeat.
const RETRY: Duration = Duration::from_secs(1);

impl Registrar {
    /// Registers (or renews): measures the link to the cloud, sends the profile and the load now.
    async fn register(&self) -> Result<()> {
        let connection = quic::connect(&self.client, self.planner.addr, &self.planner.name).await?;
        let link = quic::measure(&connection, 64 * 1024, Duration::from_secs(10), self.max_frame).await?;
        let mut label = heapless::String::new();
        for c in self.name.chars() {
            label.push(c).map_err(|_| crate::error::error!("node name '{}' is too long for the wire", self.name))?;
        }
        let load = self.load.snapshot();
        let addr = heapless::String::try_from(self.addr.as_str())
            .map_err(|_| crate::error::error!("the address '{}' is too long for the wire", self.addr))?;
        let message =
            encode(&Body::Register { name: label, tier: self.tier, profile: &self.profile, link_to_cloud: Some(link), load, addr })?;
        match decode(&quic::exchange(&connection, message, self.max_frame).await?) {
            Ok(Body::Registered { id, machines }) => {
                self.directory.set_own(id);
                for bad in self.directory.learn(&machines) {
                    tracing::warn!("the planner's directory lists an unusable machine: {bad}");
                }
                tracing::debug!(
                    "registered with the cloud; link {:.1} Mbit/s, {:.2} ms; {} queued, {} running",
                    link.bits_per_sec as f64 * 1e-6,
                    link.latency_ns as f64 * 1e-6,
                    load.queued,
                    load.running
                );
                Ok(())
            }
            Ok(Body::Failure { message, .. }) => bail!("the cloud refused the registration: {message}"),
            _ => bail!("unexpected answer to a registration"),
        }
    }

    /// Renews the registration every `heartbeat` while the server runs; after a failure
    /// (the cloud restarted, or is not up yet) retries sooner, backing off from [`RETRY`].
    async fn keep(self, heartbeat: Duration, mut registered: bool) {
        let mut retry = RETRY.min(heartbeat);
        loop {
            tokio::time::sleep(if registered { heartbeat } else { retry }).await;
            match self.register().await {
                Ok(()) => {
                    if !registered {
                        tracing::info!("registered with the cloud");
                    }
                    registered = true;
                }
                Err(e) => {
                    retry = if registered { RETRY.min(heartbeat) } else { retry.saturating_mul(2).min(heartbeat) };
                    registered = false;
                    tracing::warn!("registration with the cloud failed ({e:#}); retrying in {} s", retry.as_secs_f64());
                }
            }
        }
    }
}
