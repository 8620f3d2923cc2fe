//! The device side of a request: run the device's stage locally, send the rest of the route
//! to the next tier, and turn the answer into outputs or an explicit error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result, error as invalid};
use scission_engine::tract::prelude::*;
use tokio::sync::Mutex;

use super::convert::{bounded, decode as decode_tensor, infer_message};
use super::node::Node;
use crate::directory::Directory;
pub use crate::peer::Peer;
use scission_core::cut::Block;
use scission_core::graph::TensorId;
use scission_core::solver::Encoding;
use scission_core::wire::message::{
    Body, CONFIGURED, FailureCode, FailureDetail, MachineId, REGISTERED_SERVER, Stage, StageTiming, decode, describe_server, server_key,
};
use scission_engine::pipeline::graph_inputs;
use scission_net::quic::{connect, exchange};

/// What one request produced.
#[derive(Debug)]
pub struct Outcome {
    /// Graph outputs, in model order.
    pub outputs: Vec<(TensorId, TValue)>,
    /// Compute time of each stage, device first.
    pub timings: Vec<StageTiming>,
    /// Wall time of the whole request.
    pub total_ns: u64,
    /// Of `total_ns`, what the device spent making its own stage's slice ready (building or
    /// loading it on first use; 0 once it is cached): a one-off, neither compute nor a hop.
    pub setup_ns: u64,
    /// Bytes sent to the first remote tier, and received back from it.
    pub bytes: (u64, u64),
}

impl Outcome {
    /// The request's time without the device's one-off setup: what the route costs once its
    /// slices are ready, which the hops and the running estimates are made of.
    pub fn steady_ns(&self) -> u64 {
        self.total_ns.saturating_sub(self.setup_ns)
    }
}

/// Why a request did not complete. `tier` is the failing server's
/// [`Stage::server`](scission_core::wire::message::Stage::server) key: the tier index for a
/// tier's configured server, a registered machine's own key otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A tier could not be reached or stopped answering; another route may avoid it.
    #[error("{} is unreachable: {reason}", describe_server(*tier))]
    Unreachable {
        /// The server.
        tier: u8,
        /// What happened.
        reason: String,
    },
    /// A tier on the route is at capacity; another route may avoid it.
    #[error("{} is busy", describe_server(*tier))]
    Busy {
        /// The server.
        tier: u8,
    },
    /// A tier on the route could not answer within the request's deadline (it is overloaded,
    /// not down); another route may avoid it.
    #[error("{} could not answer in time: {reason}", describe_server(*tier))]
    Expired {
        /// The server.
        tier: u8,
        /// Its words.
        reason: String,
    },
    /// The request failed for another reason (bad input, engine error).
    #[error(transparent)]
    Failed(#[from] crate::error::RuntimeError),
}

/// Why the cloud gave no plans.
#[derive(Debug, thiserror::Error)]
pub enum PlanRequestError {
    /// No plan satisfies the constraints; relaxing one of `culprits` alone would allow one.
    #[error("{message}")]
    Infeasible {
        /// The constraint groups, as data.
        culprits: Vec<String>,
        /// The cloud's words.
        message: String,
    },
    /// The cloud could not be asked or answered with something else.
    #[error(transparent)]
    Failed(#[from] crate::error::RuntimeError),
}

impl From<PlanRequestError> for crate::error::RuntimeError {
    fn from(e: PlanRequestError) -> Self {
        crate::error::RuntimeError::Invalid(e.to_string())
    }
}

/// The connection-cache key of the planner, when it is not the cloud (no tier uses it).
const PLANNER: u8 = u8::MAX;

/// The server key of the stage of `route` that `machine` of `tier` runs, as a failure names it.
/// A server that refuses a request from its first bytes does not know the id the route gave
/// it and names [`CONFIGURED`]: then the route's stage on that tier (a route has one per tier).
fn on_route(route: &[Stage], tier: u8, machine: MachineId) -> Option<u8> {
    route.iter().find(|s| s.tier == tier && (s.machine == machine || machine == CONFIGURED)).map(Stage::server)
}

/// The configured peer that serves `tier`'s [`CONFIGURED`] machine: 1 the device's edge; any
/// later tier its cloud (the planner's own tier is the chain's last, however long the chain; the
/// tiers between are reached through their registered machines).
pub fn configured_key(tier: u8) -> u8 {
    tier.min(scission_core::policy::CLOUD_TIER)
}

/// Sends a device's requests along routes.
pub struct DeviceClient {
    /// The device node whose stages it runs.
    pub node: Arc<Node>,
    endpoint: quinn::Endpoint,
    peers: HashMap<u8, Peer>,
    /// Where plans are asked for, when not the cloud (a planner apart from its stage servers).
    planner: Option<Peer>,
    /// The registered machines the planner listed with the last plans.
    directory: Directory,
    /// Open connections by (tier, machine).
    connections: Mutex<HashMap<(u8, MachineId), quinn::Connection>>,
    max_frame: u32,
    timeout: Duration,
    /// Told the tier of every connection the peer's side ended (it went away, timed out or
    /// closed), so a service notices a dead tier without a request failing on it.
    lost: Option<tokio::sync::mpsc::UnboundedSender<u8>>,
    /// Device stages computed at once (each holds its activations): more wait their turn.
    compute: Arc<tokio::sync::Semaphore>,
    /// How its connections' peers are watched (the endpoint pings them to match).
    liveness: scission_net::quic::Liveness,
}

impl DeviceClient {
    /// The endpoint requests leave through (emulated uplinks included).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// The peer serving tier `tier`, when given.
    pub fn peer(&self, tier: u8) -> Option<&Peer> {
        self.peers.get(&tier)
    }

    /// The registered machines the planner listed with its last plans.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The largest frame accepted.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// A client for `node` that reaches tier `t` at `peers[t]`.
    pub fn new(node: Arc<Node>, endpoint: quinn::Endpoint, peers: HashMap<u8, Peer>, max_frame: u32, timeout: Duration) -> Self {
        let compute = Arc::new(tokio::sync::Semaphore::new(compute_slots(node.threads)));
        Self {
            node,
            endpoint,
            peers,
            planner: None,
            directory: Directory::default(),
            connections: Mutex::new(HashMap::new()),
            max_frame,
            timeout,
            lost: None,
            compute,
            liveness: scission_net::quic::Liveness::default(),
        }
    }

    /// Gives a connection up after `liveness`'s silence (the endpoint must ping to match).
    pub fn with_liveness(mut self, liveness: scission_net::quic::Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// Asks `planner` for plans instead of the cloud's stage server.
    pub fn with_planner(mut self, planner: Option<Peer>) -> Self {
        self.planner = planner;
        self
    }

    /// Reports on `lost` the tier of every cached connection the peer's side ends.
    pub fn reporting_lost(mut self, lost: tokio::sync::mpsc::UnboundedSender<u8>) -> Self {
        self.lost = Some(lost);
        self
    }

    /// Watches `connection` to `tier`: gives it up when the peer goes silent (its requests fail
    /// at once), and, for a tier's configured server, says so when the peer's side ends it or
    /// it went silent.
    fn watch(&self, tier: u8, connection: &quinn::Connection, report: bool) {
        let (lost, liveness) = (self.lost.clone().filter(|_| report), self.liveness);
        let connection = connection.clone();
        tokio::spawn(async move {
            let silent = scission_net::quic::close_when_silent(connection.clone(), liveness).await;
            let Some(lost) = lost else { return };
            if silent {
                tracing::info!(tier, "connection given up: the peer went silent");
                let _ = lost.send(tier);
                return;
            }
            match connection.close_reason() {
                // Closed here (dropped from the cache, or the endpoint shut down): not the peer.
                Some(quinn::ConnectionError::LocallyClosed) | None => {}
                Some(reason) => {
                    tracing::info!(tier, "connection lost: {reason}");
                    let _ = lost.send(tier);
                }
            }
        });
    }

    /// The peer that runs `machine` of `tier`: the configured one, or the directory's.
    fn peer_of(&self, tier: u8, machine: MachineId) -> Result<Peer> {
        match (tier, machine) {
            (PLANNER, _) => self.planner.clone().context("no planner address"),
            (_, CONFIGURED) => self.peers.get(&configured_key(tier)).cloned().with_context(|| format!("no address for tier {tier}")),
            _ => self
                .directory
                .machine(tier, machine)
                .map(|m| m.peer)
                .with_context(|| format!("machine {machine} of tier {tier} is not in the directory the planner sent with its plans")),
        }
    }

    async fn connection(&self, tier: u8, machine: MachineId) -> Result<quinn::Connection> {
        if let Some(c) = self.connections.lock().await.get(&(tier, machine)).filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        // Connect without holding the cache: a tier that hangs (a probe of a dead one) must not
        // hold up requests to the others.
        let peer = self.peer_of(tier, machine)?;
        // Resolving the name counts against the timeout too (a DNS server that hangs).
        let attempt = async {
            let addr = peer.current_addr().await;
            connect(&self.endpoint, addr, &peer.name).await
        };
        let c = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| invalid!("{} did not answer within {} ms", peer.name, self.timeout.as_millis()))??;
        // Only a configured tier's loss says the tier is down (a registered machine's loss
        // shows on the requests it fails).
        self.watch(tier, &c, tier != PLANNER && machine == CONFIGURED);
        self.connections.lock().await.insert((tier, machine), c.clone());
        Ok(c)
    }

    /// Drops the cached connection to `machine` of `tier` after a failure, closing it (its
    /// watcher, which holds a handle, would otherwise keep it alive on keep-alives).
    async fn forget(&self, tier: u8, machine: MachineId) {
        if let Some(connection) = self.connections.lock().await.remove(&(tier, machine)) {
            connection.close(quinn::VarInt::from_u32(0), b"failed");
        }
    }

    /// The tiers this client has addresses for, in order.
    pub fn tiers(&self) -> Vec<u8> {
        let mut tiers: Vec<u8> = self.peers.keys().copied().collect();
        tiers.sort_unstable();
        tiers
    }

    /// Runs request `id` on `inputs` along `route` (stages in tier order, covering every node).
    pub async fn infer(&self, id: u64, route: &[Stage], inputs: TVec<TValue>, encoding: Encoding) -> Result<Outcome, RequestError> {
        let started = Instant::now();
        let mut live = graph_inputs(self.node.graph(), inputs).map_err(crate::error::RuntimeError::from)?;
        let mut timings = Vec::new();
        let mut rest = route;
        let mut setup_ns = 0;
        if let Some(first) = route.first().filter(|s| s.tier == self.node.tier) {
            // More stages at once than the cores can run only add activations in memory.
            let slot = self.compute.clone().acquire_owned().await.map_err(|_| invalid!("the device is stopping"))?;
            let node = self.node.clone();
            let block = Block { start: first.start as usize, end: first.end as usize };
            let (after, ns, setup) = tokio::task::spawn_blocking(move || -> crate::error::Result<_> {
                let setup = if node.is_built(block) {
                    0
                } else {
                    let preparing = Instant::now();
                    node.slice(block)?;
                    u64::try_from(preparing.elapsed().as_nanos()).unwrap_or(u64::MAX)
                };
                let (after, ns) = node.run_stage(block, live)?;
                drop(slot);
                Ok((after, ns, setup))
            })
            .await
            .map_err(crate::error::RuntimeError::from)??;
            live = after;
            setup_ns = setup;
            timings.push(StageTiming { tier: self.node.tier, machine: 0, compute_ns: ns, held_ns: 0 });
            rest = &route[1..];
        }
        let (outputs, bytes) = match rest.first() {
            None => (self.node.outputs(&live)?, (0, 0)),
            Some(next) => {
                let message = infer_message(id, self.node.sha256, rest, encoding, self.deadline_ms(), &live)?;
                let sent = message.len() as u64;
                let answer = self.send(next.tier, next.machine, message).await?;
                let bytes = (sent, answer.len() as u64);
                (self.read_answer(id, &answer, rest, &mut timings)?, bytes)
            }
        };
        let total_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Ok(Outcome { outputs, timings, total_ns, setup_ns, bytes })
    }

    /// The deadline a request carries: a tenth less than this client waits, so a tier that
    /// cannot make it says so before the client gives up on it.
    fn deadline_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis().saturating_mul(9) / 10).unwrap_or(u32::MAX).max(1)
    }

    async fn send(&self, tier: u8, machine: MachineId, message: Vec<u8>) -> Result<Vec<u8>, RequestError> {
        let unreachable = |reason: String| RequestError::Unreachable { tier: server_key(tier, machine), reason };
        let attempt = async {
            let connection = self.connection(tier, machine).await?;
            Ok::<_, crate::error::RuntimeError>(exchange(&connection, message, self.max_frame).await?)
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.forget(tier, machine).await;
                Err(unreachable(format!("{e:#}")))
            }
            Err(_) => {
                self.forget(tier, machine).await;
                Err(unreachable(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        }
    }

    /// Measures the link to `tier`'s configured server (see
    /// [`quic::measure`](scission_net::quic::measure)).
    pub async fn measure_link(&self, tier: u8, probe_bytes: usize) -> Result<scission_core::solver::Link> {
        let connection = self.connection(tier, CONFIGURED).await?;
        Ok(scission_net::quic::measure(&connection, probe_bytes, self.timeout, self.max_frame).await?)
    }

    /// Probes the server with [`Stage::server`](scission_core::wire::message::Stage::server)
    /// key `server`: a tier's configured server, or a registered machine the directory lists.
    pub async fn probe(&self, server: u8, probe_bytes: usize) -> Result<scission_core::solver::Link> {
        let (tier, machine) = match server & REGISTERED_SERVER {
            0 => (server, CONFIGURED),
            _ => {
                let id = server & !REGISTERED_SERVER;
                (self.directory.tier_of(id).with_context(|| format!("machine {id} is no longer in the directory"))?, id)
            }
        };
        let connection = self.connection(tier, machine).await?;
        Ok(scission_net::quic::measure(&connection, probe_bytes, self.timeout, self.max_frame).await?)
    }

    /// Asks the planner (the cloud, tier `cloud`, unless [`DeviceClient::with_planner`] named
    /// another) for `count` ranked plans, given this device's profile JSON, measured uplinks and
    /// the memory it may use (`device_memory`, bytes), avoiding the servers `avoid` names
    /// (server keys: tiers and registered machines).
    pub async fn request_plans(
        &self,
        cloud: u8,
        profile: &[u8],
        uplinks: &HashMap<u8, scission_core::solver::Link>,
        avoid: &[u8],
        count: u16,
        device_memory: Option<u64>,
    ) -> Result<Vec<(Vec<Stage>, u64)>, PlanRequestError> {
        let uplinks = bounded(uplinks.iter().map(|(t, l)| (*t, *l)).collect(), "uplinks")?;
        // `avoid` holds server keys: tiers, and registered machines.
        let tiers = avoid.iter().copied().filter(|k| k & REGISTERED_SERVER == 0).collect();
        let machines = avoid.iter().filter(|k| *k & REGISTERED_SERVER != 0).map(|k| k & !REGISTERED_SERVER).collect();
        let (avoid, avoid_machines) = (bounded(tiers, "tiers to avoid")?, bounded(machines, "machines to avoid")?);
        let message =
            scission_core::wire::message::encode(&Body::PlanRequest { profile, uplinks, count, avoid, avoid_machines, device_memory })
                .map_err(crate::error::RuntimeError::from)?;
        let answer = match &self.planner {
            Some(planner) => self.send(PLANNER, CONFIGURED, message).await.map_err(|e| match e {
                RequestError::Unreachable { reason, .. } => invalid!("the planner {} is unreachable: {reason}", planner.name),
                other => invalid!("{other}"),
            })?,
            None => self.send(cloud, CONFIGURED, message).await.map_err(|e| invalid!("{e}"))?,
        };
        match decode(&answer).map_err(|e| invalid!("malformed plan answer: {e}"))? {
            Body::Plans { routes, .. } if routes.is_empty() => Err(invalid!("the cloud answered with no plan").into()),
            Body::Plans { routes, machines } => {
                for bad in self.directory.learn(&machines) {
                    tracing::warn!("the planner's directory lists an unusable machine: {bad}");
                }
                Ok(routes.into_iter().map(|r| (r.stages.to_vec(), r.predicted_ns)).collect())
            }
            Body::Failure { detail: FailureDetail::Infeasible { culprits }, message, .. } => Err(PlanRequestError::Infeasible {
                culprits: culprits.iter().map(|c| c.to_string()).collect(),
                message: message.to_string(),
            }),
            Body::Failure { code, message, .. } => Err(invalid!("the cloud could not plan ({code:?}): {message}").into()),
            _ => Err(invalid!("unexpected answer to a plan request").into()),
        }
    }

    fn read_answer(
        &self,
        id: u64,
        answer: &[u8],
        rest: &[Stage],
        timings: &mut Vec<StageTiming>,
    ) -> Result<Vec<(TensorId, TValue)>, RequestError> {
        match decode(answer).map_err(|e| invalid!("malformed answer: {e}"))? {
            Body::Output { request, tensors, timings: remote } => {
                if request != id {
                    return Err(invalid!("answer for request {request} arrived on the stream of request {id}").into());
                }
                timings.extend(remote);
                let outputs: Vec<(TensorId, TValue)> =
                    tensors.iter().map(|t| decode_tensor(self.node.graph(), t)).collect::<Result<_>>()?;
                // Exactly the model's outputs, in order: anything else is a lying or broken peer.
                if !outputs.iter().map(|(id, _)| *id).eq(self.node.graph().summary.outputs.iter().copied()) {
                    return Err(invalid!("the answer to request {id} does not carry the model's outputs").into());
                }
                Ok(outputs)
            }
            // A tier further along could not reach the next; only a tier on the route counts.
            Body::Failure { code: FailureCode::Unreachable, message, detail: FailureDetail::Unreachable { tier, machine }, .. }
                if rest.iter().skip(1).any(|s| s.server() == server_key(tier, machine)) =>
            {
                Err(RequestError::Unreachable { tier: server_key(tier, machine), reason: message.to_string() })
            }
            Body::Failure { code: FailureCode::Busy, detail: FailureDetail::Busy { tier, machine }, .. }
                if on_route(rest, tier, machine).is_some() =>
            {
                Err(RequestError::Busy { tier: on_route(rest, tier, machine).unwrap_or(server_key(tier, machine)) })
            }
            Body::Failure { code: FailureCode::Expired, detail: FailureDetail::Expired { tier, machine }, message, .. }
                if on_route(rest, tier, machine).is_some() =>
            {
                Err(RequestError::Expired {
                    tier: on_route(rest, tier, machine).unwrap_or(server_key(tier, machine)),
                    reason: message.to_string(),
                })
            }
            Body::Failure { code, message, .. } => Err(invalid!("request {id} failed ({code:?}): {message}").into()),
            _ => Err(invalid!("unexpected answer to request {id}").into()),
        }
    }
}

/// Device stages worth computing at once with `threads` engine threads each: one per group of
/// that many cores (at least one).
pub fn compute_slots(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / threads.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_naming_the_configured_server_of_a_tier_is_the_routes_stage_there() {
        let route = [Stage { tier: 1, machine: 3, start: 0, end: 4 }, Stage { tier: 2, machine: 0, start: 4, end: 9 }];
        // Refused from its first bytes, the edge did not know it was machine 3.
        assert_eq!(on_route(&route, 1, CONFIGURED), Some(server_key(1, 3)));
        assert_eq!(on_route(&route, 1, 3), Some(server_key(1, 3)));
        assert_eq!(on_route(&route, 2, CONFIGURED), Some(2));
        assert_eq!(on_route(&route, 1, 4), None, "another machine of the tier is not on the route");
        assert_eq!(on_route(&route, 3, CONFIGURED), None, "nor is another tier");
    }
}
