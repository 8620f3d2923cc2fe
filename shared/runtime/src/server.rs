//! Serving stages over QUIC (edge and cloud). Each stream carries one request frame and gets
//! exactly one answer frame: the outputs, or a failure whose kind and detail say why. A peer
//! that sends garbage, truncates a frame, announces an oversized one, stalls or vanishes only
//! loses its own stream; inference runs on a fixed number of blocking threads behind a bounded
//! queue, and a full queue answers `Busy` at once. With batching on (`Limits::batch`), the
//! requests for one slice that queue together run as one batch (see [`crate::batch`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::load::LoadMeter;
use std::time::{Duration, Instant};

use crate::error::Result;
use tokio::sync::{Mutex, Semaphore};

use super::convert::{bounded, decode as decode_tensor, infer_message, output_message};
use super::node::{Node, RecentlyUsed};
use super::planner::{Listed, ModelFile, PlanError, Planner};
use crate::directory::Directory;
use scission_core::batching::BatchWindow;
use scission_core::cut::Block;
use scission_core::link::Encoding;
use scission_core::wire::WireError;
use scission_core::wire::message::{
    Body, CONFIGURED, FailureCode, FailureDetail, MachineId, NamedTensor, PEEK_BYTES, Stage, StageTiming, bounded_text, decode, encode,
    failure_text, peek_infer,
};
use scission_engine::pipeline::Activations;
use scission_net::pki::{self, PeerCert, Role};
use scission_net::quic::{FrameError, connect, exchange, peer_cert, read_head, read_rest, write_frame};

/// Application close code for a connection the server will not serve.
const REFUSED: u32 = 403;

/// The next tier a server forwards to (the edge's cloud).
pub struct Upstream {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    name: String,
    connection: Mutex<Option<quinn::Connection>>,
}

impl Upstream {
    /// Forwards through `endpoint` to node `name` at `addr`, connecting on first use and again
    /// after a loss.
    pub fn new(endpoint: quinn::Endpoint, addr: SocketAddr, name: &str) -> Self {
        Self { endpoint, addr, name: name.to_string(), connection: Mutex::new(None) }
    }

    async fn connection(&self) -> Result<quinn::Connection> {
        if let Some(c) = self.connection.lock().await.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        // Connect without holding the lock: forwards do not queue behind one slow handshake.
        let c = connect(&self.endpoint, self.addr, &self.name).await?;
        // A next tier that went silent fails its forwards at once, and the next one reconnects.
        tokio::spawn(scission_net::quic::close_when_silent(c.clone(), scission_net::quic::Liveness::default()));
        *self.connection.lock().await = Some(c.clone());
        Ok(c)
    }
}

/// Registrations and plan requests worked on at once; more are answered `Busy`.
const PLANNING_AT_ONCE: usize = 2;

/// Most bytes of the model file sent in one chunk, whatever the reader asks for.
pub const MAX_CHUNK: u32 = 4 << 20;

/// How much a server takes on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted.
    pub max_frame: u32,
    /// Inferences running at once (each on a blocking thread).
    pub workers: usize,
    /// Inferences waiting for a worker when the request carries no deadline, or before this
    /// server has timed one (see [`StageServer`]'s admission); one more is answered `Busy`.
    pub queue: usize,
    /// Whether `queue` bounds every request, deadline or not (the operator set it).
    pub queue_is_cap: bool,
    /// Bytes the admitted inferences' tensors may hold together (as decoded: 4 bytes an
    /// element, or the payload where larger); a request that would go past it is `Busy`.
    pub queue_bytes: u64,
    /// Connections open at once; more are refused.
    pub connections: usize,
    /// Connections one peer (one certificate) may hold at once; more are closed.
    pub per_peer: usize,
    /// Time a peer has to deliver a whole request frame once it opened the stream, and to read
    /// its answer.
    pub read_deadline: Duration,
    /// Time the next tier has to answer a forwarded request; then it counts as unreachable (keep
    /// it below the devices' own timeout, so they blame the right tier).
    pub forward_timeout: Duration,
    /// Streams one connection may have open at once (QUIC flow control: more wait).
    pub streams_per_connection: u32,
    /// Slices kept built at once (least recently used dropped first).
    pub slice_cache: usize,
    /// Bytes this server may use in all (`None`: what the machine or its cgroup has available
    /// at start); what is left for built slices is [`serve`](crate::serve::serve)'s to work out.
    pub memory: Option<u64>,
    /// Edges the cloud's planner keeps registered at once.
    pub registrations: usize,
    /// A registration not renewed within this long is forgotten.
    pub registration_ttl: Duration,
    /// Dynamic batching: most requests per batch (1: off) and how long a request waits for
    /// others. Each worker may hold a whole batch, so admission allows `workers × max` running.
    pub batch: BatchWindow,
}

/// Default [`Limits::queue_bytes`]: 128 MiB of queued tensors (about 200 MobileNetV2 or ResNet50
/// inputs).
pub const DEFAULT_QUEUE_BYTES: u64 = 128 << 20;

/// Most inferences admitted at once, whatever their deadlines allow: a bound on the tasks a
/// flood of small requests can hold.
pub const MAX_ADMITTED: usize = 4096;

/// Batching off: every request runs alone.
pub const NO_BATCHING: BatchWindow = BatchWindow { max: 1, delay_ns: 0 };

impl Limits {
    /// Defaults for a machine with `cores` cores: a worker per core, four waiting per worker.
    pub fn for_cores(cores: usize, max_frame: u32) -> Self {
        let workers = cores.max(1);
        Self {
            max_frame,
            workers,
            queue: workers.saturating_mul(4),
            queue_is_cap: false,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            connections: 256,
            per_peer: 8,
            read_deadline: Duration::from_secs(30),
            forward_timeout: Duration::from_secs(4),
            streams_per_connection: scission_net::quic::MAX_STREAMS,
            slice_cache: crate::node::MAX_CACHED_SLICES,
            memory: None,
            registrations: crate::planner::MAX_REGISTERED,
            registration_ttl: crate::planner::REGISTRATION_TTL,
            batch: NO_BATCHING,
        }
    }
}

/// Why a stage request failed, as the server tells the peer.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The request is malformed or inconsistent with this node.
    #[error("{0}")]
    BadRequest(String),
    /// A frame was over the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The next tier on the route could not be reached.
    #[error("tier {tier} is unreachable: {reason}")]
    Unreachable {
        /// The tier.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
        /// What happened.
        reason: String,
    },
    /// Running the slice failed.
    #[error("engine: {0}")]
    Engine(String),
    /// Planning failed.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// This node does not offer what was asked.
    #[error("this node does not {0}")]
    NotOffered(&'static str),
    /// The request cannot be taken on: its deadline would pass before a worker is free, or the
    /// queue is full (in requests or in bytes).
    #[error("tier {tier} is busy: {waiting} inferences are waiting{}", expected_wait(*wait_ms))]
    Busy {
        /// This node's tier.
        tier: u8,
        /// This node, as the route named it.
        machine: MachineId,
        /// Inferences queued or running.
        waiting: usize,
        /// The expected time to answer (the wait for a worker and the run), in milliseconds (0:
        /// not why it was refused).
        wait_ms: u64,
    },
    /// The peer's role may not ask this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Building the stage's slice would take more than this server's memory budget for slices.
    #[error("{message}")]
    OverMemory {
        /// The node's words ([`RuntimeError::OverMemory`](crate::error::RuntimeError)).
        message: String,
        /// Bytes building the slice holds.
        need: u64,
        /// The budget for built slices.
        budget: u64,
    },
    /// The request's deadline passed before this tier (or the next) could answer.
    #[error("tier {tier} could not answer within the request's deadline of {deadline_ms} ms ({waiting_for})")]
    Expired {
        /// The tier that gave up.
        tier: u8,
        /// Its machine, as the route named it.
        machine: MachineId,
        /// The deadline the request carried.
        deadline_ms: u32,
        /// What it was waiting for.
        waiting_for: &'static str,
    },
}

/// The end of a busy refusal's message: the expected time to answer, where that was the reason.
fn expected_wait(wait_ms: u64) -> String {
    match wait_ms {
        0 => String::new(),
        ms => format!("; it would be answered in about {ms} ms, past the request's deadline"),
    }
}

/// When a request must be answered: its arrival plus the deadline it carried.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    ms: u32,
}

impl Deadline {
    /// The deadline of a request that arrived now carrying `ms` (0: none).
    fn from_arrival(ms: u32) -> Option<Self> {
        (ms > 0).then(|| Self { at: Instant::now() + Duration::from_millis(u64::from(ms)), ms })
    }

    /// What is left of it, in whole milliseconds (0 once passed).
    fn remaining_ms(&self) -> u32 {
        u32::try_from(self.at.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u32::MAX)
    }
}

impl StageError {
    fn engine(e: impl std::fmt::Display) -> Self {
        Self::Engine(e.to_string())
    }

    /// A failure of the node running a stage: over its memory budget, or the engine's.
    fn from_node(e: crate::error::RuntimeError) -> Self {
        match e {
            crate::error::RuntimeError::OverMemory { need, budget, .. } => Self::OverMemory { message: e.to_string(), need, budget },
            e => Self::Engine(format!("{e:#}")),
        }
    }

    fn code(&self) -> FailureCode {
        match self {
            Self::BadRequest(_) => FailureCode::BadRequest,
            Self::TooLarge { .. } | Self::OverMemory { .. } => FailureCode::TooLarge,
            Self::Unreachable { .. } => FailureCode::Unreachable,
            Self::Engine(_) => FailureCode::Engine,
            Self::Plan(PlanError::Infeasible { .. }) => FailureCode::Infeasible,
            Self::Plan(_) => FailureCode::BadRequest,
            Self::NotOffered(_) | Self::Forbidden(_) => FailureCode::Forbidden,
            Self::Busy { .. } => FailureCode::Busy,
            Self::Expired { .. } => FailureCode::Expired,
        }
    }

    fn detail(&self) -> FailureDetail {
        match self {
            Self::Unreachable { tier, machine, .. } => FailureDetail::Unreachable { tier: *tier, machine: *machine },
            Self::TooLarge { len, limit } => FailureDetail::TooLarge { len: *len, limit: *limit },
            Self::OverMemory { need, budget, .. } => FailureDetail::TooLarge { len: *need, limit: *budget },
            Self::Busy { tier, machine, .. } => FailureDetail::Busy { tier: *tier, machine: *machine },
            Self::Expired { tier, machine, .. } => FailureDetail::Expired { tier: *tier, machine: *machine },
            Self::Plan(PlanError::Infeasible { culprits }) => {
                let mut names = heapless::Vec::new();
                for c in culprits {
                    if names.push(bounded_text(c)).is_err() {
                        break;
                    }
                }
                FailureDetail::Infeasible { culprits: names }
            }
            _ => FailureDetail::None,
        }
    }

    /// The failure frame for `request`.
    pub fn to_frame(&self, request: u64) -> Vec<u8> {
        let body = Body::Failure { request, code: self.code(), message: failure_text(&self.to_string()), detail: self.detail() };
        encode(&body).unwrap_or_default()
    }
}

/// A stage server: a node, where to forward, its limits; the cloud also plans and serves the
/// model file.
pub struct StageServer {
    node: Arc<Node>,
    upstream: Option<Arc<Upstream>>,
    directory: Arc<Directory>,
    hops: std::sync::Mutex<std::collections::HashMap<u8, Arc<Upstream>>>,
    limits: Limits,
    workers: Arc<Semaphore>,
    load: Arc<LoadMeter>,
    /// Bytes the admitted inferences' tensors hold.
    queued_bytes: Arc<AtomicU64>,
    connections: Arc<AtomicUsize>,
    per_peer: NodeConnections<quinn::Connection>,
    planning: Semaphore,
    planner: Option<Arc<Planner>>,
    model_file: Option<ModelFile>,
    revocations: Option<Arc<pki::DenyList>>,
    #[cfg_attr(not(feature = "onnx"), allow(dead_code))]
    artifacts: Mutex<ArtifactCache>,
    #[cfg(feature = "onnx")]
    batcher: Option<Arc<crate::batch::Batcher>>,
}

/// Slice artifacts written for peers that fetch them; at most [`CACHED_ARTIFACTS`], and about
/// the model's weights in bytes together.
type ArtifactCache = RecentlyUsed<Arc<Artifact>>;

/// One artifact's bytes and hash.
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
struct Artifact {
    bytes: Vec<u8>,
    sha256: [u8; 32],
}

/// Slice artifacts kept in memory for fetching peers (the least recently used goes first).
#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
const CACHED_ARTIFACTS: usize = 4;

/// Whether a peer of `role` may send `body` (an edge registers only under its own name).
fn authorize(body: &Body<'_>, peer: &PeerCert) -> Result<(), StageError> {
    let role = peer.role();
    let allowed = match body {
        Body::Infer { .. } => matches!(role, Some(Role::Device | Role::Edge)),
        Body::PlanRequest { .. } => role == Some(Role::Device),
        Body::Register { name, tier, .. } => matches!(role, Some(Role::Edge | Role::Cloud)) && *tier > 0 && peer.is_named(name),
        _ => true,
    };
    if allowed {
        return Ok(());
    }
    let who = role.map_or("a certificate without a role", Role::as_str);
    let what = match body {
        Body::Infer { .. } => "send stage requests",
        Body::PlanRequest { .. } => "ask for plans",
        Body::Register { .. } => "register (only a server, as a server tier, under its own enrolled name)",
        _ => "ask this",
    };
    Err(StageError::Forbidden(format!("{who} may not {what}")))
}

impl StageServer {
    /// A server for `node` within `limits`.
    pub fn new(node: Arc<Node>, limits: Limits) -> Self {
        Self {
            node,
            upstream: None,
            directory: Arc::default(),
            hops: std::sync::Mutex::default(),
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            limits,
            load: Arc::new(LoadMeter::new(limits.workers)),
            queued_bytes: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicUsize::new(0)),
            per_peer: Arc::default(),
            planning: Semaphore::new(PLANNING_AT_ONCE),
            planner: None,
            model_file: None,
            revocations: None,
            artifacts: Mutex::new(RecentlyUsed::new()),
            #[cfg(feature = "onnx")]
            batcher: (limits.batch.max > 1).then(|| Arc::new(crate::batch::Batcher::new(limits.batch))),
        }
    }

    /// Refuses, on every stream, the nodes `deny` names (connections opened before a revocation).
    pub fn with_revocations(mut self, deny: Arc<pki::DenyList>) -> Self {
        self.revocations = Some(deny);
        self
    }

    fn revoked(&self, peer: &PeerCert) -> bool {
        self.revocations.as_ref().is_some_and(|r| r.is_revoked(peer))
    }

    /// Forwards later stages to `upstream`.
    pub fn with_upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = Some(Arc::new(upstream));
        self
    }

    /// Routes to the registered machines `directory` lists (and learns its own id there).
    pub fn with_directory(mut self, directory: Arc<Directory>) -> Self {
        self.directory = directory;
        self
    }

    /// Where the next stage goes: the configured next tier, or the directory's machine (one
    /// connection per machine, kept while its address stays the same).
    fn next_hop(&self, next: Option<&Stage>) -> Result<Arc<Upstream>, String> {
        let next = next.ok_or("no next stage")?;
        if next.machine == CONFIGURED {
            return self.upstream.clone().ok_or_else(|| "this node has no next tier to forward to".into());
        }
        let machine = self
            .directory
            .machine(next.tier, next.machine)
            .ok_or_else(|| format!("machine {} of tier {} is not in this node's directory", next.machine, next.tier))?;
        let client = self.upstream.as_ref().map(|u| u.endpoint.clone()).ok_or("this node has no client endpoint to forward with")?;
        let mut hops = self.hops.lock().map_err(|_| "the forwarding table is unusable".to_string())?;
        let hop =
            hops.entry(next.machine).or_insert_with(|| Arc::new(Upstream::new(client.clone(), machine.peer.addr, &machine.peer.name)));
        if hop.addr != machine.peer.addr || hop.name != machine.peer.name {
            *hop = Arc::new(Upstream::new(client, machine.peer.addr, &machine.peer.name));
        }
        Ok(hop.clone())
    }

    /// Also answers registrations and plan requests; the planner counts this server's own
    /// queue in the plans it makes.
    pub fn with_planner(mut self, planner: Planner) -> Self {
        self.planner = Some(Arc::new(planner.with_own_load(self.load.clone())));
        self
    }

    /// This server's load, as its heartbeat reports it.
    pub fn load(&self) -> Arc<LoadMeter> {
        self.load.clone()
    }

    /// Also serves the model file.
    pub fn with_model_file(mut self, file: ModelFile) -> Self {
        self.model_file = Some(file);
        self
    }

    /// Accepts connections on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            if self.connections.load(Ordering::Relaxed) >= self.limits.connections {
                tracing::warn!("refusing a connection from {}: {} open already", incoming.remote_address(), self.limits.connections);
                incoming.refuse();
                continue;
            }
            let server = self.clone();
            let open = ConnectionSlot::take(&self.connections);
            tokio::spawn(async move {
                let _open = open;
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("refused a connection: {e}");
                        return;
                    }
                };
                let Some(peer) = peer_cert(&connection) else {
                    connection.close(quinn::VarInt::from_u32(REFUSED), b"no verified certificate");
                    return;
                };
                let id = connection.stable_id();
                let Some((_slot, replaced)) = PeerSlot::take(&server.per_peer, peer.der(), id, &connection, server.limits.per_peer) else {
                    connection.close(quinn::VarInt::from_u32(REFUSED), b"the server's connection table is unusable");
                    return;
                };
                if let Some(old) = replaced {
                    // A node over its limit most often restarted and left a connection behind.
                    tracing::warn!(
                        "closing the oldest connection from {}: its node holds {} already, and a newer one from {} replaces it",
                        old.remote_address(),
                        server.limits.per_peer,
                        connection.remote_address()
                    );
                    old.close(quinn::VarInt::from_u32(REFUSED), b"too many connections from this node: replaced by a newer one");
                }
                while !server.revoked(&peer) {
                    let Ok((send, recv)) = connection.accept_bi().await else { return };
                    if server.revoked(&peer) {
                        break;
                    }
                    let (server, peer, from) = (server.clone(), peer.clone(), connection.remote_address());
                    tokio::spawn(async move { server.handle_stream(send, recv, &peer, from).await });
                }
                tracing::warn!("closing a connection from a revoked node ({})", connection.remote_address());
                connection.close(quinn::VarInt::from_u32(REFUSED), b"revoked");
            });
        }
    }

    async fn handle_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream, peer: &PeerCert, from: SocketAddr) {
        let read = async {
            let head = read_head(&mut recv, self.limits.max_frame, PEEK_BYTES).await?;
            // At capacity, an inference is refused from its first bytes: its tensors are
            // received but never decoded. (Stopping the stream instead hung a connection under
            // load: see the note in the README.)
            if let Some(request) = peek_infer(&head.start).filter(|_| self.full()) {
                read_rest(&mut recv, head).await?;
                return Ok(Err(request));
            }
            read_rest(&mut recv, head).await.map(Ok)
        };
        let reply = match tokio::time::timeout(self.limits.read_deadline, read).await {
            Ok(Ok(Err(request))) => {
                StageError::Busy { tier: self.node.tier, machine: CONFIGURED, waiting: self.load.admitted(), wait_ms: 0 }.to_frame(request)
            }
            Ok(Ok(Ok(bytes))) => self.answer(bytes, peer, from).await,
            Ok(Err(FrameError::Wire(WireError::TooLarge { len, limit }))) => StageError::TooLarge { len, limit }.to_frame(0),
            Ok(Err(e)) => StageError::BadRequest(e.to_string()).to_frame(0),
            Err(_) => {
                // A peer that starts a frame and stalls loses its stream, not a worker.
                let _ = recv.stop(quinn::VarInt::from_u32(1));
                StageError::BadRequest(format!("the request frame did not arrive within {} s", self.limits.read_deadline.as_secs()))
                    .to_frame(0)
            }
        };
        // A peer that does not read its answer loses the stream, not the server's memory.
        match tokio::time::timeout(self.limits.read_deadline, write_frame(&mut send, reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("could not answer: {e:#}"),
            Err(_) => {
                let _ = send.reset(quinn::VarInt::from_u32(1));
                tracing::debug!("a peer did not read its answer within {} s", self.limits.read_deadline.as_secs());
            }
        }
    }

    async fn answer(&self, bytes: Vec<u8>, peer: &PeerCert, from: SocketAddr) -> Vec<u8> {
        let arrived = Instant::now();
        // An inference taken on (to run once the frame is dropped), or the finished reply.
        let (request, step) = {
            let body = match decode(&bytes) {
                Ok(body) => body,
                Err(e) => return StageError::BadRequest(e.to_string()).to_frame(0),
            };
            let request = match &body {
                Body::Infer { request, .. } => *request,
                _ => 0,
            };
            if let Err(e) = authorize(&body, peer) {
                return e.to_frame(request);
            }
            let step = match body {
                Body::Infer { request, model, stages, encoding, tensors, deadline_ms } => {
                    let request = Request { id: request, model, encoding, deadline: Deadline::from_arrival(deadline_ms), arrived };
                    self.take_on(request, &stages, &tensors).map_err(Err)
                }
                body => Err(self.dispatch(body, from).await),
            };
            (request, step)
        };
        // The frame is decoded: an inference waiting for a worker holds its tensors once.
        drop(bytes);
        let reply = match step {
            Ok(taken) => self.infer(taken).await,
            Err(done) => done,
        };
        reply.unwrap_or_else(|e| e.to_frame(request))
    }

    /// Carries out one request other than an inference.
    async fn dispatch(&self, body: Body<'_>, from: SocketAddr) -> Result<Vec<u8>, StageError> {
        match body {
            Body::Ping { nonce, .. } => encode(&Body::Pong { nonce }).map_err(StageError::engine),
            Body::Register { name, tier, profile, link_to_cloud, load, addr } => {
                let planner = self.planner.clone().ok_or(StageError::NotOffered("plan"))?;
                let _permit = self.planning_permit()?;
                let (name, profile, addr) = (name.to_string(), profile.to_vec(), addr.to_string());
                let (id, listed) =
                    blocking(move || planner.register(&name, tier, &addr, from.ip(), &profile, link_to_cloud, load)).await??;
                let machines = bounded(listed.iter().map(Listed::entry).collect(), "directory entries").map_err(StageError::engine)?;
                encode(&Body::Registered { id, machines }).map_err(StageError::engine)
            }
            Body::PlanRequest { profile, uplinks, count, avoid, avoid_machines, device_memory } => {
                let planner = self.planner.clone().ok_or(StageError::NotOffered("plan (start the cloud with --profile)"))?;
                let _permit = self.planning_permit()?;
                let (profile, uplinks, avoid, avoid_machines) =
                    (profile.to_vec(), uplinks.to_vec(), avoid.to_vec(), avoid_machines.to_vec());
                let (routes, listed) =
                    blocking(move || planner.plan(&profile, &uplinks, &avoid, &avoid_machines, usize::from(count), device_memory))
                        .await??;
                let routes = bounded(routes, "routes").map_err(StageError::engine)?;
                let machines = bounded(listed.iter().map(Listed::entry).collect(), "directory entries").map_err(StageError::engine)?;
                encode(&Body::Plans { routes, machines }).map_err(StageError::engine)
            }
            Body::FetchModel { offset, max_len } => {
                let file = self.model_file.as_ref().ok_or(StageError::NotOffered("serve its model file"))?;
                let data = file
                    .chunk(offset, max_len.min(MAX_CHUNK).min(self.limits.max_frame / 2))
                    .map_err(|e| StageError::BadRequest(format!("{e:#}")))?;
                encode(&Body::ModelChunk { total: file.total, sha256: file.sha256, offset, data: &data }).map_err(StageError::engine)
            }
            Body::FetchSlice { start, end, offset, max_len } => {
                let artifact = self.artifact(Block { start: start as usize, end: end as usize }).await?;
                let total = artifact.bytes.len() as u64;
                let Some(from) = usize::try_from(offset).ok().filter(|&o| o <= artifact.bytes.len()) else {
                    return Err(StageError::BadRequest(format!("offset {offset} is past the end of the {total}-byte artifact")));
                };
                let len = (max_len.min(MAX_CHUNK).min(self.limits.max_frame / 2) as usize).min(artifact.bytes.len() - from);
                let data = &artifact.bytes[from..from + len];
                encode(&Body::ModelChunk { total, sha256: artifact.sha256, offset, data }).map_err(StageError::engine)
            }
            _ => Err(StageError::BadRequest("expected a request".into())),
        }
    }

    /// The artifact of `block`, written on first request (one at a time: the cache's lock is
    /// held while writing, so concurrent fetches of one slice write it once).
    #[cfg(not(feature = "onnx"))]
    async fn artifact(&self, _: Block) -> Result<Arc<Artifact>, StageError> {
        Err(StageError::NotOffered("serve slice artifacts (built without ONNX support)"))
    }

    /// The artifact of `block`, written on first request (one at a time: the cache's lock is
    /// held while writing, so concurrent fetches of one slice write it once).
    #[cfg(feature = "onnx")]
    async fn artifact(&self, block: Block) -> Result<Arc<Artifact>, StageError> {
        let Some(model) = self.node.whole_model() else {
            return Err(StageError::NotOffered("serve slice artifacts (it holds no whole model)"));
        };
        if block.start >= block.end || block.end > model.summary.len() {
            return Err(StageError::BadRequest(format!(
                "[{}, {}) is not a range of the model's {} nodes",
                block.start,
                block.end,
                model.summary.len()
            )));
        }
        let mut cache = self.artifacts.lock().await;
        if let Some(artifact) = cache.get(block) {
            return Ok(artifact);
        }
        let node = self.node.clone();
        let artifact = blocking(move || -> Result<Artifact> {
            let model = node.whole_model().ok_or_else(|| crate::error::error!("no whole model"))?;
            let mut bytes = Vec::new();
            let written = scission_engine::artifact::write(model, block, &mut bytes)?;
            Ok(Artifact { bytes, sha256: scission_core::profile::parse_sha256(&written.sha256)? })
        })
        .await?
        .map_err(StageError::engine)?;
        let artifact = Arc::new(artifact);
        // At most a few artifacts, and together no more than about the model's own weights: a
        // peer asking for many ranges costs CPU, not unbounded memory.
        let cap = model.summary.weight_bytes(0, model.summary.len()).saturating_add(64 << 20);
        let new = artifact.bytes.len() as u64;
        cache.insert(block, artifact.clone(), |entries| {
            let held = entries.iter().map(|(_, a)| a.bytes.len() as u64).fold(0, u64::saturating_add);
            entries.len() >= CACHED_ARTIFACTS || held.saturating_add(new) > cap
        });
        Ok(artifact)
    }

    /// Inferences running and waiting at most: the workers (each with a batch, when batching)
    /// and the queue.
    fn capacity(&self) -> usize {
        self.limits.queue.saturating_add(self.limits.workers.saturating_mul(self.limits.batch.max.max(1)))
    }

    /// Whether a new inference is refused from its first bytes, whatever its deadline: the
    /// queue holds its most requests or its bytes.
    fn full(&self) -> bool {
        let admitted = self.load.admitted();
        admitted >= MAX_ADMITTED
            || (self.limits.queue_is_cap && admitted >= self.capacity())
            || self.queued_bytes.load(Ordering::SeqCst) >= self.limits.queue_bytes
    }

    /// Whether an inference with `waiting` admitted before it, holding `bytes`, is taken on:
    /// with a deadline, when the expected wait for a worker (the requests ahead, shared among
    /// the workers, at the measured service time) and its own run fit what is left of it; with
    /// none, or before any inference was timed, when the queue has room. Always within
    /// [`MAX_ADMITTED`], the queue's bytes, and the queue's length where the operator set it.
    fn admission(&self, waiting: usize, bytes: u64, deadline: Option<Deadline>, machine: MachineId) -> Result<QueuedBytes, StageError> {
        let busy = |wait_ms| StageError::Busy { tier: self.node.tier, machine, waiting, wait_ms };
        if bytes > self.limits.queue_bytes {
            return Err(StageError::BadRequest(format!(
                "the request's tensors take {bytes} bytes, more than this server's whole queue budget of {} bytes (--queue-mib)",
                self.limits.queue_bytes
            )));
        }
        let held = QueuedBytes::take(&self.queued_bytes, bytes);
        let capped = self.limits.queue_is_cap && waiting >= self.capacity();
        if waiting >= MAX_ADMITTED || capped || held.total > self.limits.queue_bytes {
            return Err(busy(0));
        }
        let service_ns = self.load.snapshot().service_ns;
        match deadline {
            Some(d) if service_ns > 0 => {
                let rounds = u64::try_from(waiting / self.limits.workers.max(1)).unwrap_or(u64::MAX);
                let wait_ns = rounds.saturating_mul(service_ns);
                let left_ns = u64::try_from(d.at.saturating_duration_since(Instant::now()).as_nanos()).unwrap_or(u64::MAX);
                let answer_ns = wait_ns.saturating_add(service_ns);
                if answer_ns > left_ns {
                    return Err(busy((answer_ns / 1_000_000).max(1)));
                }
            }
            _ if waiting >= self.capacity() => return Err(busy(0)),
            _ => {}
        }
        Ok(held)
    }

    /// A place among the registrations and plans being worked on, or `Busy`.
    fn planning_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StageError> {
        self.planning.try_acquire().map_err(|_| StageError::Busy {
            tier: self.node.tier,
            machine: CONFIGURED,
            waiting: PLANNING_AT_ONCE,
            wait_ms: 0,
        })
    }

    /// Checks an inference, admits it and decodes its tensors (nothing is awaited: the frame
    /// it borrows from is dropped before it waits for a worker).
    fn take_on(&self, request: Request, stages: &[Stage], tensors: &[NamedTensor<'_>]) -> Result<TakenOn<'_>, StageError> {
        if request.model != self.node.sha256 {
            return Err(StageError::BadRequest("the request is for another model than this node serves".into()));
        }
        let Some((stage, rest)) = stages.split_first() else { return Err(StageError::BadRequest("a request with no stage".into())) };
        if !self.is_mine(stage) {
            return Err(StageError::BadRequest(format!(
                "stage for machine {} of tier {} sent to {} of tier {}",
                stage.machine,
                stage.tier,
                self.directory.own().map_or("the configured server".to_string(), |id| format!("machine {id}")),
                self.node.tier
            )));
        }
        // A request that cannot be taken on is answered at once, before its tensors are decoded.
        let (waiting, admitted) = self.load.admit();
        // A slice this server could never build is refused before the request takes a place
        // (a range outside the model is refused below, with the request's other checks).
        if let Err(e @ crate::error::RuntimeError::OverMemory { .. }) = self.node.fits(stage.block()) {
            return Err(StageError::from_node(e));
        }
        let held = self.admission(waiting, decoded_bytes(tensors), request.deadline, stage.machine)?;
        let mut live = Activations::new();
        for t in tensors {
            let (id, value) = decode_tensor(self.node.graph(), t).map_err(|e| StageError::BadRequest(format!("{e:#}")))?;
            live.insert(id, value);
        }
        // Refuse a request whose inputs cannot feed the stage before building anything for it.
        self.node.check_stage_inputs(stage.block(), &live).map_err(|e| StageError::BadRequest(format!("{e:#}")))?;
        Ok(TakenOn { request, stage: *stage, rest: rest.to_vec(), live, places: (admitted, held) })
    }

    /// Runs an admitted inference's stage, then answers or forwards the rest of its route.
    async fn infer(&self, taken: TakenOn<'_>) -> Result<Vec<u8>, StageError> {
        let TakenOn { request, stage, rest, live, places } = taken;
        let (live, compute_ns) = self.run_stage(stage.block(), live, request.deadline, stage.machine).await?;
        drop(places);
        let mine = StageTiming { tier: self.node.tier, machine: stage.machine, compute_ns, held_ns: 0 };
        if rest.is_empty() {
            let outputs = self.node.outputs(&live).map_err(|e| StageError::Engine(format!("{e:#}")))?;
            let mine = StageTiming { held_ns: held_since(request.arrived), ..mine };
            return output_message(request.id, &outputs, &[mine]).map_err(|e| StageError::Engine(format!("{e:#}")));
        }
        self.forward(request, &rest, &live, mine).await
    }

    /// Whether this server runs `stage`: its tier's, addressed to the tier's configured server
    /// or to the id the planner gave this one.
    fn is_mine(&self, stage: &Stage) -> bool {
        stage.tier == self.node.tier && (stage.machine == CONFIGURED || Some(stage.machine) == self.directory.own())
    }

    fn expired(&self, machine: MachineId, deadline: Deadline, waiting_for: &'static str) -> StageError {
        StageError::Expired { tier: self.node.tier, machine, deadline_ms: deadline.ms, waiting_for }
    }

    /// Runs an admitted stage on a worker, waiting in the bounded queue; a request still waiting
    /// for a worker at its deadline is `Expired` (it leaves the queue).
    async fn run_stage(
        &self,
        block: Block,
        live: Activations,
        deadline: Option<Deadline>,
        machine: MachineId,
    ) -> Result<(Activations, u64), StageError> {
        #[cfg(feature = "onnx")]
        if let Some(batcher) = self.batcher.as_ref().filter(|_| self.node.may_batch(block)) {
            return self.run_batched(batcher, block, live, deadline, machine).await;
        }
        let acquire = self.workers.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), acquire).await.map_err(|_| self.expired(machine, d, "a worker"))?,
            None => acquire.await,
        }
        .map_err(StageError::engine)?;
        let (node, load) = (self.node.clone(), self.load.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = load.start();
            node.run_stage(block, live)
        })
        .await
        .map_err(StageError::engine)?
        .map_err(StageError::from_node)
    }

    /// Queues an admitted stage to run with others for the same slice; a request whose batch
    /// has not left by its deadline is `Expired` (it leaves the queue).
    #[cfg(feature = "onnx")]
    async fn run_batched(
        &self,
        batcher: &Arc<crate::batch::Batcher>,
        block: Block,
        live: Activations,
        deadline: Option<Deadline>,
        machine: MachineId,
    ) -> Result<(Activations, u64), StageError> {
        let pool = crate::batch::Pool { workers: self.workers.clone(), node: self.node.clone(), load: self.load.clone() };
        let answer = batcher.submit(block, live, &pool);
        let answer = match deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), answer).await.map_err(|_| self.expired(machine, d, "a worker"))?,
            None => answer.await,
        };
        answer.map_err(|_| StageError::Engine("the batch ended without answering this request".into()))?.map_err(StageError::Engine)
    }

    /// Sends the rest of the route to the next tier, with what is left of the deadline, and
    /// relays its answer. The next tier is unreachable when it does not answer within
    /// `forward_timeout`; the request expired when its own deadline comes first.
    async fn forward(&self, request: Request, rest: &[Stage], live: &Activations, mine: StageTiming) -> Result<Vec<u8>, StageError> {
        let (next, next_machine) = rest.first().map_or((0, CONFIGURED), |s| (s.tier, s.machine));
        let unreachable = |reason: String| StageError::Unreachable { tier: next, machine: next_machine, reason };
        let me = mine.machine;
        let upstream = self.next_hop(rest.first()).map_err(unreachable)?;
        let left_ms = match request.deadline {
            Some(d) if d.remaining_ms() == 0 => return Err(self.expired(me, d, "its own stage")),
            Some(d) => d.remaining_ms(),
            None => 0,
        };
        let message = infer_message(request.id, request.model, rest, request.encoding, left_ms, live)
            .map_err(|e| StageError::Engine(format!("{e:#}")))?;
        let timeout = self.limits.forward_timeout;
        let wait = request.deadline.map_or(timeout, |d| timeout.min(d.at.saturating_duration_since(Instant::now())));
        let attempt = async {
            let connection = upstream.connection().await?;
            Ok::<_, crate::error::RuntimeError>(exchange(&connection, message, self.limits.max_frame).await?)
        };
        let answer = match tokio::time::timeout(wait, attempt).await {
            Ok(answer) => answer.map_err(|e| unreachable(format!("{e:#}")))?,
            Err(_) => match request.deadline {
                Some(d) if wait < timeout => return Err(self.expired(me, d, "the next tier")),
                _ => return Err(unreachable(format!("no answer within {} ms", timeout.as_millis()))),
            },
        };
        let (request, arrived) = (request.id, request.arrived);
        match decode(&answer) {
            Ok(Body::Output { request: answered, tensors, timings }) if answered == request => {
                let mine = StageTiming { held_ns: held_since(arrived), ..mine };
                let all = bounded(core::iter::once(mine).chain(timings).collect(), "stage timings").map_err(StageError::engine)?;
                encode(&Body::Output { request, tensors, timings: all }).map_err(StageError::engine)
            }
            // The next tier's failure travels back as it is (its kind and detail included).
            Ok(Body::Failure { request: answered, code, message, detail }) if answered == request => {
                encode(&Body::Failure { request, code, message, detail }).map_err(StageError::engine)
            }
            Ok(_) => Err(unreachable("the next tier answered something else than this request's result".into())),
            Err(e) => Err(unreachable(format!("the next tier sent a malformed answer: {e}"))),
        }
    }
}

/// What a request's tensors take once decoded: 4 bytes an element (f32), or the payload where
/// larger.
fn decoded_bytes(tensors: &[NamedTensor<'_>]) -> u64 {
    tensors
        .iter()
        .map(|t| t.tensor.volume().unwrap_or(u64::MAX).saturating_mul(4).max(t.tensor.data.len() as u64))
        .fold(0, u64::saturating_add)
}

/// An admitted inference's share of the queue's bytes, given back when dropped.
struct QueuedBytes {
    count: Arc<AtomicU64>,
    bytes: u64,
    /// The queue's bytes with these, when they were taken.
    total: u64,
}

impl QueuedBytes {
    fn take(count: &Arc<AtomicU64>, bytes: u64) -> Self {
        let before = count.fetch_add(bytes, Ordering::SeqCst);
        Self { count: count.clone(), bytes, total: before.saturating_add(bytes) }
    }
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// One inference request as the server handles it.
#[derive(Clone, Copy, Debug)]
struct Request {
    id: u64,
    model: [u8; 32],
    encoding: Encoding,
    deadline: Option<Deadline>,
    /// When its bytes had all arrived: what a [`StageTiming::held_ns`] counts from.
    arrived: Instant,
}

/// An inference taken on: its stage here, the rest of its route, its decoded tensors, and its
/// places in the admission count and the queue's bytes (released once its stage has run).
struct TakenOn<'s> {
    request: Request,
    stage: Stage,
    rest: Vec<Stage>,
    live: Activations,
    places: (crate::load::Admitted<'s>, QueuedBytes),
}

/// Nanoseconds since `arrived`, for [`StageTiming::held_ns`].
fn held_since(arrived: Instant) -> u64 {
    u64::try_from(arrived.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs blocking work (planning, registration) off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StageError> {
    tokio::task::spawn_blocking(work).await.map_err(StageError::engine)
}

/// One open connection, counted while it lives.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connections each node (by its certificate) holds, oldest first, by id.
type NodeConnections<C> = Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::collections::VecDeque<(usize, C)>>>>;

/// One of a node's connections, listed while it lives.
struct PeerSlot<C> {
    table: NodeConnections<C>,
    peer: Vec<u8>,
    id: usize,
}

impl<C: Clone> PeerSlot<C> {
    /// Lists `connection` (id `id`) among `peer`'s; when the node holds `limit` already, its
    /// oldest connection leaves the list and is returned for the caller to close: a node over
    /// its limit most often restarted and left connections behind, and the newest is the one it
    /// uses. `None` only when the table's lock is poisoned.
    fn take(table: &NodeConnections<C>, peer: &[u8], id: usize, connection: &C, limit: usize) -> Option<(Self, Option<C>)> {
        let mut map = table.lock().ok()?;
        let held = map.entry(peer.to_vec()).or_default();
        let replaced = if held.len() >= limit.max(1) { held.pop_front().map(|(_, c)| c) } else { None };
        held.push_back((id, connection.clone()));
        Some((Self { table: table.clone(), peer: peer.to_vec(), id }, replaced))
    }
}

impl<C> Drop for PeerSlot<C> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.table.lock()
            && let Some(held) = map.get_mut(&self.peer)
        {
            held.retain(|(id, _)| *id != self.id);
            if held.is_empty() {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_over_its_limit_gives_up_its_oldest_connection_and_gets_slots_back_when_they_close() {
        let table: NodeConnections<&str> = Arc::default();
        let take = |peer: &[u8], id: usize, name: &'static str| PeerSlot::take(&table, peer, id, &name, 3).unwrap();
        let mut held: Vec<PeerSlot<&str>> = Vec::new();
        for (id, name) in [(1, "first"), (2, "second"), (3, "third")] {
            let (slot, replaced) = take(b"a", id, name);
            assert_eq!(replaced, None);
            held.push(slot);
        }
        let (fourth, replaced) = take(b"a", 4, "fourth");
        assert_eq!(replaced, Some("first"), "the oldest makes room");
        assert_eq!(take(b"b", 5, "other").1, None, "another node is not touched");
        // The replaced connection's slot goes when its tasks end; the others stay listed.
        held.remove(0);
        assert_eq!(table.lock().unwrap()[&b"a".to_vec()].len(), 3);
        drop((held, fourth));
        assert!(!table.lock().unwrap().contains_key(&b"a".to_vec()), "an empty node leaves the table");
    }
}
