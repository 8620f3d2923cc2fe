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
use scission_core::policy::{Action, DevicePolicy, Event, PolicyConfig, ReplanReason, RequestFailure, Route};
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
        let whole = Block { start: 0, end: nodes };
        let blocks = planner.device_blocks().to_vec();
        let fits_whole = config.device_memory.is_none_or(|m| scission_core::memory::need(&node.graph().summary, &blocks, whole) <= m);
        let fallback = (config.local_fallback && node.can_run(whole) && fits_whole).then(|| local_route(nodes)).transpose()?;
        // A device that runs from slice artifacts and lacks some offloads whole requests to the
        // cloud (which holds the model) while it fetches them.
        let offload = (node.artifacts().is_some() && config.cloud.is_some()).then(|| cloud_route(nodes)).transpose()?;
        let mut driver =
            Driver::new(&config, client, planner, RouteRules { memory: config.device_memory, blocks, offload, fallback }, observer);
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

/// The route that runs every node on the device.
fn local_route(nodes: usize) -> Result<Route> {
    whole_on(0, nodes)
}

/// The route that runs every node in the cloud.
fn cloud_route(nodes: usize) -> Result<Route> {
    whole_on(2, nodes)
}

fn whole_on(tier: u8, nodes: usize) -> Result<Route> {
    let Ok(end) = u32::try_from(nodes) else { bail!("a model of {nodes} nodes is too large") };
    Ok(Route { stages: vec![Stage { tier, machine: 0, start: 0, end }], predicted_ns: None })
}

/// What the session does to every ranking: the routes it adds, and the device memory that
/// planned device slices must fit in.
#[derive(Clone, Debug, Default)]
struct RouteRules {
    /// Bytes the device may use; device stages that need more (`memory::need`) rule their
    /// routes out.
    memory: Option<u64>,
    /// The device's blocks as its profile has them: their measured memory, where counted,
    /// is what a device stage needs.
    blocks: Vec<BlockProfile>,
    /// Everything in the cloud, for a device that lacks the slices of the planned routes.
    offload: Option<Route>,
    /// Everything on the device (degraded), when every remote route is down.
    fallback: Option<Route>,
}

/// The planner's ranking without the routes whose device stages this device does not hold (it
/// runs from slice artifacts), then the cloud-only offload route (for such a device), then the
/// local fallback when no route left runs on the device alone.
fn with_fallback(mut routes: Vec<Route>, rules: &RouteRules, node: &Node) -> Vec<Route> {
    let before = routes.len();
    routes.retain(|r| device_blocks(r).all(|b| node.can_run(b)));
    if routes.len() < before {
        tracing::info!("{} of {before} planned routes need device slices this device does not hold", before - routes.len());
    }
    let fitting = routes.len();
    routes.retain(|r| fits(r, rules, node));
    if routes.len() < fitting {
        tracing::warn!("{} planned routes need more memory on the device than its {:?} bytes", fitting - routes.len(), rules.memory);
    }
    if let Some(offload) = &rules.offload
        && !routes.contains(offload)
    {
        routes.push(offload.clone());
    }
    if let Some(fallback) = &rules.fallback
        && !routes.iter().any(|r| r.stages.iter().all(|s| s.tier == 0))
    {
        routes.push(fallback.clone());
    }
    routes
}

/// The node ranges `route` gives the device.
fn device_blocks(route: &Route) -> impl Iterator<Item = Block> + '_ {
    route.stages.iter().filter(|s| s.tier == 0).map(Stage::block)
}

/// Whether every device stage of `route` fits in the device's memory.
fn fits(route: &Route, rules: &RouteRules, node: &Node) -> bool {
    let Some(memory) = rules.memory else { return true };
    device_blocks(route).all(|b| device_need(rules, node, b) <= memory)
}

/// The bytes a device stage of `block` needs: as measured where the profile counted them.
fn device_need(rules: &RouteRules, node: &Node, block: Block) -> u64 {
    scission_core::memory::need(&node.graph().summary, &rules.blocks, block)
}

/// Why no route of `routes` fits the device's memory: the tier and the bytes.
fn memory_refusal(routes: &[Route], rules: &RouteRules, node: &Node) -> Option<String> {
    let memory = rules.memory?;
    if routes.is_empty() || routes.iter().any(|r| fits(r, rules, node)) {
        return None;
    }
    let smallest = routes.iter().flat_map(device_blocks).map(|b| device_need(rules, node, b)).min()?;
    Some(format!(
        "no planned route fits the device's memory: its smallest device slice needs {:.1} MiB, the device (tier 0) has {:.1} MiB",
        smallest as f64 / f64::from(1 << 20),
        memory as f64 / f64::from(1 << 20)
    ))
}

/// Tier index -> address, for the tiers given.
fn peers(config: &SessionConfig) -> HashMap<u8, Peer> {
    [(1u8, &config.edge), (2, &config.cloud)].into_iter().filter_map(|(t, p)| p.clone().map(|p| (t, p))).collect()
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
        for stage in first.stages.iter().filter(|s| s.tier > 0) {
            if stage.machine == scission_core::wire::message::CONFIGURED && !peers.contains_key(&crate::client::configured_key(stage.tier))
            {
                let flag = if stage.tier == 1 { "edge" } else { "cloud" };
                bail!("the plan gives tier {} work, but its address (--{flag}) is missing", stage.tier);
            }
        }
    }
    Ok(())
}

/// How many of the best ranked routes get their device slices fetched.
const FETCHED_ROUTES: usize = 3;

/// What the driver's own tasks report back.
enum Feedback {
    /// The planner's ranking (as ranked, before the routes the device cannot run are left out).
    Ranked(Vec<Route>),
    /// A device slice was fetched (or not).
    SliceFetched { block: Block, result: std::result::Result<(), String> },
    /// A try of request `request` on the route of rank `rank` ended.
    Tried { request: u64, rank: usize, result: std::result::Result<Outcome, RequestError> },
    /// Anything else the policy asked for (links, plans, probes).
    Event(Event),
}

/// A request the driver holds until the policy decides it.
struct Waiter {
    inputs: TVec<TValue>,
    reply: oneshot::Sender<std::result::Result<Answer, InferError>>,
    /// The successful try's outcome and rank, until the policy reports the request done.
    outcome: Option<(Outcome, usize)>,
    /// When the application submitted it.
    submitted: Instant,
}

/// Owns the policy and carries out its actions; the only task that touches it.
struct Driver {
    policy: DevicePolicy,
    client: Arc<DeviceClient>,
    planner: Arc<Mutex<Planner>>,
    /// Whether the planner takes in what stages cost (see [`Driver::observe`]).
    planner_observes: bool,
    rules: RouteRules,
    observer: Option<Observer>,
    encoding: Encoding,
    /// The planner's last ranking, before the routes this device cannot run yet are left out.
    ranking: Vec<Route>,
    /// Device slices being fetched.
    fetching: HashSet<Block>,
    max_slice_bytes: u64,
    waiters: HashMap<u64, Waiter>,
    feedback: (mpsc::UnboundedSender<Feedback>, mpsc::UnboundedReceiver<Feedback>),
    status_tx: Option<watch::Sender<Status>>,
    /// Why the last ranking could not be had, while there is none.
    no_plan: Option<String>,
    /// Why no planned route fits the device's memory, when none does.
    memory_refusal: Option<String>,
    last_cause: SwitchCause,
    /// Routes that have answered at least once (see [`Driver::observe`]); forgotten all at
    /// once past [`ROUTES_REMEMBERED`].
    answered_routes: HashSet<Vec<Stage>>,
    next_id: u64,
    started: Instant,
}

/// Routes a session remembers having answered on.
const ROUTES_REMEMBERED: usize = 1024;

impl Driver {
    fn new(config: &SessionConfig, client: Arc<DeviceClient>, planner: Planner, rules: RouteRules, observer: Option<Observer>) -> Self {
        Self {
            policy: DevicePolicy::new(config.policy, Vec::new(), Vec::new()),
            client,
            planner_observes: planner.keeps_estimates(),
            planner: Arc::new(Mutex::new(planner)),
            rules,
            observer,
            encoding: config.encoding,
            ranking: Vec::new(),
            fetching: HashSet::new(),
            max_slice_bytes: config.max_slice_bytes,
            waiters: HashMap::new(),
            feedback: mpsc::unbounded_channel(),
            status_tx: None,
            no_plan: None,
            memory_refusal: None,
            last_cause: SwitchCause::FirstPlan,
            answered_routes: HashSet::new(),
            next_id: 0,
            started: Instant::now(),
        }
    }

    fn now(&self) -> embassy_time::Instant {
        embassy_time::Instant::from_micros(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn emit(&self, event: DeviceEvent) {
        if let Some(observer) = &self.observer {
            observer(&event);
        }
    }

    /// The first ranking. Without one, a tool fails here; a service starts on the local
    /// fallback (or not ready) with the unanswering tiers down, to be probed and re-planned.
    async fn start(&mut self, config: &SessionConfig, peers: &HashMap<u8, Peer>) -> Result<()> {
        let mut planner = self.planner.lock().await;
        let links = planner.initial_links(&self.client, peers).await;
        let cloud_planning = planner.asks_the_cloud();
        let ranked = if cloud_planning && !links.iter().any(|(t, _)| *t == 2) {
            // It did not answer its probe: asking it to plan would only wait out more timeouts.
            Err(crate::error::RuntimeError::Invalid("the cloud did not answer its link probe, so it cannot plan".into()))
        } else {
            planner.rank(&self.client, &[], &links).await
        };
        drop(planner);
        let routes = match ranked {
            Ok(routes) => {
                check_addresses(&routes, peers)?;
                if let Some(refusal) = memory_refusal(&routes, &self.rules, &self.client.node) {
                    if config.require_plan && self.rules.offload.is_none() {
                        bail!("{refusal}");
                    }
                    tracing::warn!("{refusal}");
                    self.memory_refusal = Some(refusal);
                }
                routes
            }
            // Only the cloud's planner can be away; a local ranking that fails is a mistake.
            Err(e) if config.require_plan || !cloud_planning => return Err(e),
            Err(e) => {
                tracing::warn!("no plan yet: {e:#}");
                self.no_plan = Some(format!("no plan yet: {e:#}"));
                Vec::new()
            }
        };
        self.ranking = routes.clone();
        self.policy = DevicePolicy::new(config.policy, with_fallback(routes, &self.rules, &self.client.node), links.clone());
        self.fetch_missing_slices();
        // The session opens with its first plan's device slice built: its first request does
        // not wait for it.
        if let Some(building) = self.prepare_best_device_slice() {
            let _ = building.await;
        }
        if self.no_plan.is_some() {
            let now = self.now();
            for tier in peers.keys().copied().filter(|t| !links.iter().any(|(l, _)| l == t) || (cloud_planning && *t == 2)) {
                self.policy.handle(now, Event::TierUnreachable { tier });
            }
            self.carry_out_all();
        }
        if let Some((_, route)) = self.policy.best_available() {
            self.emit(DeviceEvent::Plan { route: route.stages.clone() });
        }
        Ok(())
    }

    fn is_fallback(&self, route: &Route) -> bool {
        self.rules.fallback.as_ref().is_some_and(|f| f == route)
    }

    /// Keeps the device's artifacts within their byte budget, never dropping a slice of the
    /// best ranked routes.
    fn evict_slices(&self) {
        let Some(dir) = self.client.node.artifacts() else { return };
        let keep: Vec<Block> = self.ranking.iter().take(FETCHED_ROUTES).flat_map(device_blocks).collect();
        for block in dir.evict_to(self.max_slice_bytes, &keep) {
            tracing::info!("dropped the device slice [{}, {}) to stay within the slice cache", block.start, block.end);
        }
    }

    /// Fetches from the cloud, in the background, the device slices of the best ranked routes
    /// that this device (running from slice artifacts) lacks; each one offered to the policy
    /// as it arrives.
    fn fetch_missing_slices(&mut self) {
        let (Some(_), Some(_)) = (self.client.node.artifacts(), self.client.peer(2)) else { return };
        let node = &self.client.node;
        let wanted: Vec<Block> = self
            .ranking
            .iter()
            .filter(|r| fits(r, &self.rules, node))
            .take(FETCHED_ROUTES)
            .flat_map(device_blocks)
            .filter(|b| !self.client.node.can_run(*b))
            .collect();
        for block in wanted {
            if !self.fetching.insert(block) {
                continue;
            }
            tracing::info!("fetching the device slice [{}, {}) from the cloud", block.start, block.end);
            let (client, sender) = (self.client.clone(), self.feedback.0.clone());
            tokio::spawn(async move {
                let result = match (client.node.artifacts(), client.peer(2)) {
                    (Some(dir), Some(cloud)) => {
                        fetch_slice(client.endpoint(), cloud, dir, block, client.max_frame(), &mut |_, _| {}).await.map(|_| ())
                    }
                    _ => Err(crate::error::RuntimeError::Invalid("no artifact directory or cloud".into())),
                };
                let _ = sender.send(Feedback::SliceFetched { block, result: result.map_err(|e| format!("{e:#}")) });
            });
        }
    }

    /// Builds, in the background, the device slice of the best ranked route the device can run
    /// now, so that the first request on a new plan does not wait for it (a request that comes
    /// while it is built waits for that build, not for one of its own: see [`Node::slice`]).
    /// The build's task, when there is one to do.
    fn prepare_best_device_slice(&self) -> Option<tokio::task::JoinHandle<()>> {
        let node = &self.client.node;
        let best = self.ranking.iter().find(|r| fits(r, &self.rules, node) && device_blocks(r).all(|b| node.can_run(b)));
        let block = best.and_then(|r| device_blocks(r).next())?;
        if block.start >= block.end || node.is_built(block) {
            return None;
        }
        let node = node.clone();
        Some(tokio::task::spawn_blocking(move || match node.slice(block) {
            Ok(_) => tracing::debug!("device slice [{}, {}) built ahead of its first request", block.start, block.end),
            Err(e) => tracing::warn!("building the device slice [{}, {}) ahead failed: {e:#}", block.start, block.end),
        }))
    }

    async fn drive(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut lost: mpsc::UnboundedReceiver<u8>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        while open || !self.waiters.is_empty() {
            tokio::select! {
                command = commands.recv(), if open => match command {
                    Some(Command::Infer { inputs, reply }) => self.submit(inputs, reply),
                    None => open = false,
                },
                Some(feedback) = self.feedback.1.recv() => self.take(feedback),
                // A warm connection the peer ended: the tier is down until a probe says otherwise.
                Some(tier) = lost.recv() => self.feed(Event::TierUnreachable { tier }),
                _ = tick.tick() => self.feed(Event::Tick),
            }
            self.carry_out_all();
            self.publish();
        }
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        self.policy.handle(now, event);
    }

    fn submit(&mut self, inputs: TVec<TValue>, reply: oneshot::Sender<std::result::Result<Answer, InferError>>) {
        let request = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.waiters.insert(request, Waiter { inputs, reply, outcome: None, submitted: Instant::now() });
        self.feed(Event::Submit { request });
    }

    fn take(&mut self, feedback: Feedback) {
        let event = match feedback {
            Feedback::Tried { request, rank, result } => match result {
                Ok(outcome) => {
                    let elapsed_ns = outcome.total_ns;
                    if let Some(waiter) = self.waiters.get_mut(&request) {
                        waiter.outcome = Some((outcome, rank));
                    }
                    Event::Answered { request, elapsed_ns }
                }
                Err(RequestError::Unreachable { tier, reason }) => Event::Unreachable { request, tier, reason },
                // Too slow now is overloaded, not down: another route, and no probing.
                Err(RequestError::Busy { tier } | RequestError::Expired { tier, .. }) => Event::Busy { request, tier },
                Err(RequestError::Failed(e)) => Event::Rejected { request, reason: format!("{e:#}") },
            },
            Feedback::Ranked(routes) => {
                self.ranking = routes.clone();
                self.fetch_missing_slices();
                let plans = Event::Plans(with_fallback(routes, &self.rules, &self.client.node));
                // The policy gets the ranking once its best plan's device slice is built: until
                // then requests go on along the plan at hand (make before break), and none on
                // the new plan waits for the build.
                let Some(building) = self.prepare_best_device_slice() else { return self.feed(plans) };
                let sender = self.feedback.0.clone();
                tokio::spawn(async move {
                    let _ = building.await;
                    let _ = sender.send(Feedback::Event(plans));
                });
                return;
            }
            Feedback::SliceFetched { block, result } => {
                self.fetching.remove(&block);
                match result {
                    Ok(()) => {
                        tracing::info!("device slice [{}, {}) fetched; routes using it are usable now", block.start, block.end);
                        self.evict_slices();
                        Event::Offered(with_fallback(self.ranking.clone(), &self.rules, &self.client.node))
                    }
                    Err(reason) => {
                        tracing::warn!("cannot fetch the device slice [{}, {}): {reason}", block.start, block.end);
                        return;
                    }
                }
            }
            Feedback::Event(event) => event,
        };
        self.feed(event);
    }

    fn carry_out_all(&mut self) {
        while let Some(action) = self.policy.poll() {
            self.carry_out(action);
        }
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { request, rank, stages } => self.send(request, rank, stages),
            Action::Probe { tier } => self.probe(tier),
            Action::MeasureLinks { tiers } => self.measure(tiers),
            Action::Replan { avoid, links, reason } => self.replan(avoid, links, reason),
            Action::Done { request, route, elapsed_ns } => self.done(request, route, elapsed_ns),
            Action::Fail { request, failure } => self.fail(request, InferError::of(&failure)),
            Action::FailedOver { request, tier, reason } => self.emit(DeviceEvent::FailedOver { request, tier, reason }),
            Action::BackingOff { request, busy, until } => {
                let wait_ms = until.saturating_duration_since(self.now()).as_millis();
                tracing::debug!(request, ?busy, wait_ms, "every route left is busy; trying again after a back-off");
            }
            Action::TierDown { tier } => {
                tracing::warn!(tier, "tier is down; probing it again after a back-off");
                self.emit(DeviceEvent::TierDown { tier });
            }
            Action::TierUp { tier } => {
                tracing::info!(tier, "tier answers again");
                self.emit(DeviceEvent::TierUp { tier });
            }
            Action::Switched { from, to } => {
                self.emit(DeviceEvent::Switched { cause: self.last_cause.clone(), from: from.map(|r| r.stages), to: to.stages });
            }
        }
    }

    /// Runs one try in its own task; its end comes back as feedback.
    fn send(&mut self, request: u64, rank: usize, stages: Vec<Stage>) {
        let Some(inputs) = self.waiters.get(&request).map(|w| w.inputs.clone()) else { return };
        let (client, sender, encoding) = (self.client.clone(), self.feedback.0.clone(), self.encoding);
        tokio::spawn(async move {
            let result = client.infer(request, &stages, inputs, encoding).await;
            let _ = sender.send(Feedback::Tried { request, rank, result });
        });
    }

    fn probe(&mut self, tier: u8) {
        let (client, sender) = (self.client.clone(), self.feedback.0.clone());
        tokio::spawn(async move {
            let event = match client.probe(tier, 4096).await {
                Ok(_) => Event::ProbeAnswered { tier },
                Err(e) => Event::ProbeFailed { tier, reason: format!("{e:#}") },
            };
            let _ = sender.send(Feedback::Event(event));
        });
    }

    fn measure(&mut self, tiers: Vec<u8>) {
        let (client, sender) = (self.client.clone(), self.feedback.0.clone());
        tokio::spawn(async move {
            let links = measure_uplinks(&client, tiers.into_iter()).await;
            let _ = sender.send(Feedback::Event(Event::LinksMeasured(links)));
        });
    }

    fn replan(&mut self, avoid: Vec<u8>, links: Vec<(u8, Link)>, reason: ReplanReason) {
        self.last_cause = match reason {
            ReplanReason::NoRouteAvoidingDown => SwitchCause::Down(avoid.clone()),
            ReplanReason::TierRecovered => SwitchCause::Recovered,
            ReplanReason::Scheduled => SwitchCause::Measured(links.clone()),
            ReplanReason::NoPlan => SwitchCause::FirstPlan,
            ReplanReason::Drift { measured_percent } => SwitchCause::Drift(measured_percent),
        };
        let (client, planner, sender) = (self.client.clone(), self.planner.clone(), self.feedback.0.clone());
        tokio::spawn(async move {
            let ranked = planner.lock().await.rank(&client, &avoid, &links).await;
            let feedback = match ranked {
                Ok(routes) => Feedback::Ranked(routes),
                Err(e) => {
                    tracing::warn!("re-planning without tiers {avoid:?} failed: {e:#}");
                    Feedback::Event(Event::PlanFailed { reason: format!("{e:#}") })
                }
            };
            let _ = sender.send(feedback);
        });
    }

    fn done(&mut self, request: u64, route: Route, elapsed_ns: u64) {
        let Some(waiter) = self.waiters.remove(&request) else { return };
        let Some((outcome, rank)) = waiter.outcome else {
            let _ = waiter.reply.send(Err(InferError::Failed(format!("request {request} completed without an outcome"))));
            return;
        };
        self.no_plan = None;
        let hops = scission_core::policy::measured_hops(outcome.steady_ns(), &route.stages, &outcome.timings).unwrap_or_default();
        self.observe(&route, &outcome, &hops);
        let degraded = self.is_fallback(&route);
        let latency_ns = u64::try_from(waiter.submitted.elapsed().as_nanos()).unwrap_or(u64::MAX).max(elapsed_ns);
        self.emit(DeviceEvent::Completed {
            request,
            rank,
            total_ns: elapsed_ns,
            latency_ns,
            predicted_ns: route.predicted_ns,
            timings: outcome.timings.clone(),
            difference: None,
            degraded,
            bytes: outcome.bytes,
            hops: hops.clone(),
        });
        let answer = Answer {
            request,
            outputs: outcome.outputs,
            timings: outcome.timings,
            route,
            rank,
            total_ns: elapsed_ns,
            latency_ns,
            setup_ns: outcome.setup_ns,
            degraded,
            bytes: outcome.bytes,
            hops,
        };
        let _ = waiter.reply.send(Ok(answer));
    }

    /// Hands what a request's stages cost to the planner: its running estimates (see
    /// [`ObservedCosts`](scission_core::policy::ObservedCosts)) price the next ranking. A
    /// route's first answer is left out, as the run's per-plan figures leave it out: it pays
    /// the handshakes and the first runs of fresh slices, which the route's later requests do
    /// not.
    fn observe(&mut self, route: &Route, outcome: &Outcome, hops: &[((u8, u8), u64)]) {
        if !self.planner_observes || self.first_answer_on(route) {
            return;
        }
        let answered =
            Answered { total_ns: outcome.steady_ns(), timings: outcome.timings.clone(), hops: hops.to_vec(), bytes: outcome.bytes };
        let (planner, route) = (self.planner.clone(), route.clone());
        tokio::spawn(async move { planner.lock().await.observe(&route, &answered) });
    }

    /// Whether `route` answers for the first time (as far as this session remembers).
    fn first_answer_on(&mut self, route: &Route) -> bool {
        if self.answered_routes.len() >= ROUTES_REMEMBERED {
            self.answered_routes.clear();
        }
        self.answered_routes.insert(route.stages.clone())
    }

    fn fail(&mut self, request: u64, error: InferError) {
        self.emit(DeviceEvent::Failed { request, error: error.clone() });
        if let Some(waiter) = self.waiters.remove(&request) {
            let _ = waiter.reply.send(Err(error));
        }
    }

    fn status(&self) -> Status {
        let best = self.policy.best_available();
        let down = self.policy.down_tiers();
        let not_ready = match best {
            Some(_) => None,
            None if self.policy.routes().is_empty() => Some(
                self.no_plan
                    .clone()
                    .or_else(|| self.memory_refusal.clone())
                    .unwrap_or_else(|| "no plan yet, and the device cannot run the model alone".to_string()),
            ),
            None => {
                Some(format!("every planned route goes through an unreachable tier {down:?}, and the device cannot run the model alone"))
            }
        };
        Status {
            route: best.map(|(_, r)| r.clone()),
            degraded: best.is_some_and(|(_, r)| self.is_fallback(r)),
            down,
            links: self.policy.links(),
            not_ready,
            outstanding: self.waiters.len(),
        }
    }

    fn publish(&self) {
        if let Some(tx) = &self.status_tx {
            let status = self.status();
            tx.send_if_modified(|old| {
                let changed = *old != status;
                if changed {
                    *old = status;
                }
                changed
            });
        }
    }
}
