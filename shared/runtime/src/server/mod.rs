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

mod errors;
mod limits;
mod stage;
mod upstream;

use errors::Deadline;
pub use errors::StageError;
pub use limits::*;
use stage::*;
pub use upstream::Upstream;

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
}
