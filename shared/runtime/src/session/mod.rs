//! A device's inference session: the library API that `scission-device serve` and `run` (and
//! any Rust program on the board) use. [`Session::open`] loads the plan, connects to edge and
//! cloud and starts a driver task that owns the core's [`DevicePolicy`]; [`Session::infer`]
//! hands it one request's inputs and waits for the outputs (or an explicit error). Many requests
//! are in flight at once: the driver sends each along the policy's route, fails over, probes
//! tiers that went down, re-measures links and re-plans, all without blocking the others.
//!
//! When every remote route is down and the session may run the whole model here
//! ([`SessionConfig::local_fallback`]), requests are answered locally and marked degraded; the
//! planner's routes come back as soon as their tiers answer a probe again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scission_core::cut::Block;
use scission_core::graph::TensorId;
use scission_core::link::{Encoding, Link};
use scission_core::policy::offer::{DeviceRoutes, DeviceSlices, device_blocks};
use scission_core::policy::{
    Action, CLOUD_TIER, DEVICE_TIER, DevicePolicy, EDGE_TIER, Event, PolicyConfig, ReplanReason, RequestFailure, Route,
};
use scission_core::profile::BlockProfile;
use scission_core::wire::message::{Stage, StageTiming, describe_servers};
use scission_engine::ModelGraph;
use scission_engine::tract::prelude::*;
use scission_net::{emulator, pki, quic};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};

use crate::client::{DeviceClient, Outcome, Peer, RequestError};
use crate::error::{Result, bail};
use crate::fetch::fetch_slice;
use crate::node::{Node, Slices};
use crate::ranking::{Answered, Planner, Planning, measure_uplinks};

mod driver;
use driver::*;

/// How often the driver gives the policy the time (probes of down tiers, scheduled re-plans).
const TICK: Duration = Duration::from_millis(100);

/// Everything a session needs besides its model.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The cluster directory (CA and certificates).
    pub cluster: std::path::PathBuf,
    /// This device's enrolled name.
    pub name: String,
    /// The edge server.
    pub edge: Option<Peer>,
    /// The cloud server.
    pub cloud: Option<Peer>,
    /// The cloud's planner, when it is apart from the cloud's stage servers (default: the cloud).
    pub planner: Option<Peer>,
    /// Where plans come from.
    pub planning: Planning,
    /// Failover, recovery and re-planning tunables.
    pub policy: PolicyConfig,
    /// Emulate the planned uplinks on this device's socket.
    pub emulate: bool,
    /// Give up on a tier after this long without an answer.
    pub timeout: Duration,
    /// Activation encoding on the wire.
    pub encoding: Encoding,
    /// Engine threads on the device.
    pub threads: usize,
    /// Largest frame accepted.
    pub max_frame: u32,
    /// When no planned route is usable, run the whole model on the device (degraded) instead of
    /// failing. Off where the device cannot hold the whole model.
    pub local_fallback: bool,
    /// Fail to open when no first ranking can be had (a tool); otherwise start without one, mark
    /// the tiers that did not answer down and re-plan when they do (a service).
    pub require_plan: bool,
    /// Most requests in the session at once; more wait for a slot.
    pub max_outstanding: usize,
    /// Running from slice artifacts: the most bytes of them the device keeps on disk (the least
    /// recently used go first once a fetch passes it; the best routes' slices are kept).
    pub max_slice_bytes: u64,
    /// Bytes the device may use (`host::available_memory`); plans whose device slice would
    /// need more are not used. `None`: no check.
    pub device_memory: Option<u64>,
    /// How fast a dead or unreachable server is noticed (see [`quic::Liveness`]).
    pub liveness: quic::Liveness,
}

/// Why the best route changed.
#[derive(Clone, Debug, PartialEq)]
pub enum SwitchCause {
    /// The links were re-measured as these figures.
    Measured(Vec<(u8, Link)>),
    /// These tiers went down.
    Down(Vec<u8>),
    /// A tier came back.
    Recovered,
    /// The first plan arrived.
    FirstPlan,
    /// The best plan's measured latency, in percent of its prediction, drifted past the limit.
    Drift(u64),
}

/// What happens in a session, for the caller to show or count.
#[derive(Clone, Debug)]
pub enum DeviceEvent {
    /// The best route at the start.
    Plan {
        /// Its stages.
        route: Vec<Stage>,
    },
    /// An emulated uplink changed.
    LinkChanged {
        /// The tier.
        tier: u8,
        /// The new figures.
        link: Link,
        /// The request it changed after.
        after_request: u32,
    },
    /// A request's route failed at `tier`; it is retried on another.
    FailedOver {
        /// The request.
        request: u64,
        /// The tier.
        tier: u8,
        /// What happened.
        reason: String,
    },
    /// A tier stopped answering; it is probed again after a back-off.
    TierDown {
        /// The tier.
        tier: u8,
    },
    /// A tier answered a probe after being down, and is used again.
    TierUp {
        /// The tier.
        tier: u8,
    },
    /// The best route changed.
    Switched {
        /// Why.
        cause: SwitchCause,
        /// The route before.
        from: Option<Vec<Stage>>,
        /// The route now.
        to: Vec<Stage>,
    },
    /// A request completed.
    Completed {
        /// The request.
        request: u64,
        /// Its route's rank when it was sent (0 = best).
        rank: usize,
        /// End-to-end time on its route, from the moment it was sent.
        total_ns: u64,
        /// From its submission to its answer, as the application sees it: `total_ns`, and any
        /// wait before it was sent (a re-plan out, a failed try).
        latency_ns: u64,
        /// The planner's prediction for its route.
        predicted_ns: Option<u64>,
        /// Compute time of each stage.
        timings: Vec<StageTiming>,
        /// Largest absolute difference from the unsplit model, when checked.
        difference: Option<f32>,
        /// Served by the local fallback, not a planned route.
        degraded: bool,
        /// Bytes sent to the first remote tier and received back.
        bytes: (u64, u64),
        /// Each hop's time, `((from tier, to tier), ns)` in route order, from the tiers' hold
        /// times (see [`measured_hops`](scission_core::policy::measured_hops)).
        hops: Vec<((u8, u8), u64)>,
    },
    /// A request failed for good.
    Failed {
        /// The request.
        request: u64,
        /// Why.
        error: InferError,
    },
}

/// Called with every event, from the session's driver task: keep it quick.
pub type Observer = Arc<dyn Fn(&DeviceEvent) + Send + Sync>;

/// One request's result.
#[derive(Debug)]
pub struct Answer {
    /// The session's id of the request.
    pub request: u64,
    /// Graph outputs, in model order.
    pub outputs: Vec<(TensorId, TValue)>,
    /// Compute time of each stage, device first.
    pub timings: Vec<StageTiming>,
    /// The route that served it.
    pub route: Route,
    /// Its rank when sent (0 = best).
    pub rank: usize,
    /// End-to-end time of the successful try.
    pub total_ns: u64,
    /// From submission to answer (see [`DeviceEvent::Completed`]).
    pub latency_ns: u64,
    /// Of `total_ns`, the device's one-off making its slice ready (see
    /// [`Outcome::setup_ns`](crate::client::Outcome::setup_ns)).
    pub setup_ns: u64,
    /// Served by the local fallback because no planned route was usable.
    pub degraded: bool,
    /// Bytes sent to the first remote tier and received back.
    pub bytes: (u64, u64),
    /// Each hop's time, `((from tier, to tier), ns)` in route order, from the tiers' hold times
    /// (see [`measured_hops`](scission_core::policy::measured_hops)).
    pub hops: Vec<((u8, u8), u64)>,
}

/// Why a request did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The inputs are not what the model takes.
    #[error("bad input: {0}")]
    BadInput(String),
    /// No route can serve the request now (tiers down, no plan); it may work later.
    #[error("no route can serve the request now: {0}")]
    Unavailable(String),
    /// Every route left goes through a tier at capacity.
    #[error("busy: {0}")]
    Busy(String),
    /// A tier failed the request itself (engine error, refusal).
    #[error("the request failed: {0}")]
    Failed(String),
    /// The session is shutting down.
    #[error("the session is closed")]
    Closed,
}

impl InferError {
    fn of(failure: &RequestFailure) -> Self {
        match failure {
            RequestFailure::NoRoute { down } => Self::Unavailable(format!("no plan avoids the unreachable {}", describe_servers(down))),
            RequestFailure::TooManyAttempts { attempts } => {
                Self::Unavailable(format!("gave up after {attempts} tries, each met an unreachable tier"))
            }
            RequestFailure::Busy { tiers } => {
                Self::Busy(format!("every plan left goes through a busy server ({}); try again later", describe_servers(tiers)))
            }
            RequestFailure::Rejected { reason } => Self::Failed(reason.clone()),
        }
    }

    /// A short name of the kind, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "bad_input",
            Self::Unavailable(_) => "unavailable",
            Self::Busy(_) => "busy",
            Self::Failed(_) => "failed",
            Self::Closed => "closed",
        }
    }
}

/// What the session is doing now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// The route a new request would take.
    pub route: Option<Route>,
    /// That route is the local fallback, not a planned one.
    pub degraded: bool,
    /// Tiers that are down.
    pub down: Vec<u8>,
    /// The latest link estimate per tier.
    pub links: Vec<(u8, Link)>,
    /// Why no request can be served now, when none can.
    pub not_ready: Option<String>,
    /// Requests in flight.
    pub outstanding: usize,
}

enum Command {
    Infer { inputs: TVec<TValue>, reply: oneshot::Sender<std::result::Result<Answer, InferError>> },
}

/// An open session. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Session {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    slots: Arc<Semaphore>,
    node: Arc<Node>,
    shapers: HashMap<u8, Arc<emulator::Shaper>>,
    /// The endpoint every connection of the session goes through.
    endpoint: quinn::Endpoint,
}

/// Longest a closing session waits for its connections' closes to leave.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Session {
    /// Loads the plan, connects and starts the driver (on the current tokio runtime).
    /// `slices` is the whole model, or the slice artifacts the device holds: then only routes
    /// whose device stages it has are used.
    pub async fn open(config: SessionConfig, slices: impl Into<Slices>, observer: Option<Observer>) -> Result<Self> {
        let identity = pki::Identity::load(&config.cluster, &config.name)?;
        let node = Arc::new(Node::new(slices, 0, config.threads)?);
        let nodes = node.graph().summary.len();
        let planner = Planner::new(&config.planning, config.encoding, nodes, config.device_memory)?;
        let peers = peers(&config);
        let (endpoint, shapers) = endpoint(&config, &identity, &peers, &planner.uplinks)?;
        let closer = endpoint.clone();
        let (lost_tx, lost) = mpsc::unbounded_channel();
        let client = Arc::new(
            DeviceClient::new(node.clone(), endpoint, peers.clone(), config.max_frame, config.timeout)
                .with_liveness(config.liveness)
                .with_planner(config.planner.clone())
                .reporting_lost(lost_tx),
        );
        if u32::try_from(nodes).is_err() {
            bail!("a model of {nodes} nodes is too large");
        }
        let blocks = planner.device_blocks().to_vec();
        // A device that runs from slice artifacts and lacks some offloads whole requests to the
        // cloud (which holds the model) while it fetches them.
        let offload = node.artifacts().is_some() && config.cloud.is_some();
        let device = DeviceView { node: &node, blocks: &blocks };
        let rules = DeviceRoutes::for_model(nodes, config.device_memory, config.local_fallback, offload, &device);
        let mut driver = Driver::new(&config, client, planner, rules, blocks, observer);
        driver.start(&config, &peers).await?;
        let (status_tx, status) = watch::channel(driver.status());
        driver.status_tx = Some(status_tx);
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(driver.drive(receiver, lost));
        let slots = Arc::new(Semaphore::new(config.max_outstanding.max(1)));
        Ok(Self { commands, status, slots, node, shapers, endpoint: closer })
    }

    /// Runs one request: `inputs` (one per graph input, each of the model's type and shape)
    /// through the current route. Ends in outputs or an explicit error, whatever the peers do.
    pub async fn infer(&self, inputs: TVec<TValue>) -> std::result::Result<Answer, InferError> {
        scission_engine::input::check_inputs(self.node.graph(), &inputs).map_err(|e| InferError::BadInput(format!("{e:#}")))?;
        let _slot = self.slots.acquire().await.map_err(|_| InferError::Closed)?;
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Infer { inputs, reply }).map_err(|_| InferError::Closed)?;
        answer.await.map_err(|_| InferError::Closed)?
    }

    /// Closes every connection of the session, telling each server at once (otherwise a server
    /// holds a connection until it idles out, and a device that restarts often runs into the
    /// server's limit of connections per node), and waits at most a second for the closes to
    /// leave. Requests still out fail; call it once the session's work is done.
    pub async fn close_connections(&self) {
        self.endpoint.close(quinn::VarInt::from_u32(0), b"the device closed its session");
        if tokio::time::timeout(CLOSE_WAIT, self.endpoint.wait_idle()).await.is_err() {
            tracing::debug!("the session's connections did not finish closing within {} ms", CLOSE_WAIT.as_millis());
        }
    }

    /// What the session is doing now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until the status changes (or the session closes).
    pub async fn status_changed(&mut self) -> bool {
        self.status.changed().await.is_ok()
    }

    /// The model the session serves.
    pub fn model(&self) -> &ModelGraph {
        self.node.graph()
    }

    /// The shaper of the emulated uplink to `tier`, when emulating.
    pub fn shaper(&self, tier: u8) -> Option<&Arc<emulator::Shaper>> {
        self.shapers.get(&tier)
    }
}

/// The device's node as the route rules see it: what it holds, and what a range needs (as
/// measured where its profile counted it).
struct DeviceView<'a> {
    node: &'a Node,
    blocks: &'a [BlockProfile],
}

impl DeviceSlices for DeviceView<'_> {
    fn holds(&self, block: Block) -> bool {
        self.node.can_run(block)
    }

    fn need(&self, block: Block) -> u64 {
        scission_core::memory::need(&self.node.graph().summary, self.blocks, block)
    }
}

/// Tier index -> address, for the tiers given.
fn peers(config: &SessionConfig) -> HashMap<u8, Peer> {
    [(EDGE_TIER, &config.edge), (CLOUD_TIER, &config.cloud)].into_iter().filter_map(|(t, p)| p.clone().map(|p| (t, p))).collect()
}

/// The client endpoint, with emulated uplinks when asked for; also the shapers by tier.
fn endpoint(
    config: &SessionConfig,
    identity: &pki::Identity,
    peers: &HashMap<u8, Peer>,
    uplinks: &HashMap<u8, Link>,
) -> Result<(quinn::Endpoint, HashMap<u8, Arc<emulator::Shaper>>)> {
    let (mut by_addr, mut by_tier) = (HashMap::new(), HashMap::new());
    if config.emulate {
        for (tier, peer) in peers {
            if let Some(link) = uplinks.get(tier) {
                let shaper = emulator::Shaper::new(*link);
                by_tier.insert(*tier, shaper.clone());
                by_addr.insert(peer.addr, shaper);
            }
        }
    }
    Ok((quic::client_with(identity, by_addr, quic::Datagrams::default(), config.liveness)?, by_tier))
}

/// Every tier the best route uses must have an address.
fn check_addresses(routes: &[Route], peers: &HashMap<u8, Peer>) -> Result<()> {
    if let Some(first) = routes.first() {
        for stage in first.stages.iter().filter(|s| s.tier != DEVICE_TIER) {
            if stage.machine == scission_core::wire::message::CONFIGURED && !peers.contains_key(&crate::client::configured_key(stage.tier))
            {
                let flag = if stage.tier == EDGE_TIER { "edge" } else { "cloud" };
                bail!("the plan gives tier {} work, but its address (--{flag}) is missing", stage.tier);
            }
        }
    }
    Ok(())
}
