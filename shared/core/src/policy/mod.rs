//! The device's runtime decisions, as a sans-I/O state machine (the way `quinn-proto` sits under
//! `quinn`): which ranked route a request takes, failing over down the ranking when a tier stops
//! answering, which tiers are down and when to probe them again, when to re-measure links and
//! re-plan, and when a new ranking is worth switching to.
//!
//! The shell feeds [`Event`]s with the current time (a value, never read from a clock here)
//! through [`DevicePolicy::handle`] and carries out the [`Action`]s it gets back from
//! [`DevicePolicy::poll`]: send a request along a route, probe a tier, measure the links,
//! re-plan, and report. The policy never blocks, never does I/O and is deterministic, so every
//! path (failover on each tier, recovery, flapping links) is tested in-process.
//!
//! **Servers, not tiers.** What goes down and comes back is a server: the `tier` of every event
//! and action is a [`Stage::server`] key, the tier index for a tier's configured server (the
//! device's `--edge` or `--cloud`), [`REGISTERED_SERVER`](crate::wire::message::REGISTERED_SERVER)
//! plus the directory id for a registered machine. So a failed edge machine is avoided while
//! another edge of the same tier keeps serving.
//!
//! **Make before break.** While plans are out (a re-plan scheduled, on drift, or after a tier
//! changed), new requests go out on the best route of the ranking at hand that avoids the down
//! tiers, and wait only when there is none; the new ranking applies from the next request on.
//! They do wait while links are measured (a request on the link being probed corrupts the
//! measurement), and go out once that is done; so a scheduled measurement waits for a moment
//! with no request in flight (a gap between requests, where it costs nobody anything), for at
//! most [`MAX_DEFERRED_MEASUREMENT`] requests. (A request that failed over waits for a ranking
//! that knows why.)
//!
//! **Busy is back-pressure.** A request a tier refuses as busy tries a route without it; when
//! every route left goes through busy tiers, it backs off (with jitter, so a burst's refused
//! requests do not return together) and tries them all again while its
//! [`PolicyConfig::busy_patience`] lasts.
//!
//! Guarantee: every request the shell submits ends in exactly one [`Action::Done`] or one
//! [`Action::Fail`], whatever the peers do, provided the shell answers each `Send`, `Probe`,
//! `MeasureLinks` and `Replan` it is given (each with one event) and keeps sending
//! [`Event::Tick`] as time passes (a request backing off goes out again, or fails, on a tick).

mod estimate;
mod observed;
pub mod offer;
pub mod pricing;
mod routes;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use embassy_time::{Duration, Instant};

pub use estimate::{Probe, estimate_link};
pub use observed::{ObservedCosts, TierHop, charged_compute, measured_hops};
pub use routes::{BadSplit, describe_route, plan_route, split_route};

use crate::link::Link;
use crate::wire::message::Stage;

/// A deterministic jitter from 0 to 999 per mille for `request`'s `attempt`-th back-off (a
/// splitmix64 step): requests refused together spread out without a clock or a random source.
fn jitter_permille(request: u64, attempt: u32) -> u64 {
    jitter_permille_seeded(0, request, attempt)
}

/// [`jitter_permille`] from a `seed` of its own (a device's, so a fleet's devices differ).
fn jitter_permille_seeded(seed: u64, request: u64, attempt: u32) -> u64 {
    let mut z = request ^ (u64::from(attempt) << 48) ^ 0x9e37_79b9_7f4a_7c15 ^ seed.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % 1000
}

/// A seed for [`PolicyConfig::jitter_seed`] from a device's name (FNV-1a).
pub fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Tier index of the device itself: it never goes down.
pub const DEVICE_TIER: u8 = 0;
/// Tier index of the edge, in the device -> edge -> cloud chain.
pub const EDGE_TIER: u8 = 1;
/// Tier index of the cloud, in the device -> edge -> cloud chain.
pub const CLOUD_TIER: u8 = 2;

/// A ranked route with what the planner predicts for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The stages, in chain order; together they cover every node.
    pub stages: Vec<Stage>,
    /// Predicted end-to-end latency, when the route came from a cost model.
    pub predicted_ns: Option<u64>,
}

impl Route {
    /// Whether any stage runs on `server` (a [`Stage::server`] key).
    pub fn uses(&self, server: u8) -> bool {
        self.stages.iter().any(|s| s.server() == server)
    }
}

/// Tunables of the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A new ranking's best route replaces the current one only when it is predicted at least
    /// this many percent faster (no flapping on measurement noise).
    pub hysteresis_percent: u32,
    /// Re-measure the links and re-plan every N-th request (0: never), in the first moment with
    /// no request in flight (see [`MAX_DEFERRED_MEASUREMENT`]).
    pub replan_every: u32,
    /// Re-measure the links and re-plan this often, on [`Event::Tick`] (zero: never), in the
    /// first moment with no request in flight: a long-running service follows its network even
    /// when requests are rare.
    pub replan_period: Duration,
    /// First wait before a down tier is probed again; doubled after each failed probe.
    pub backoff_initial: Duration,
    /// Longest wait between probes of a down tier.
    pub backoff_max: Duration,
    /// Most times one request is sent (the first try plus failovers) before it fails.
    pub max_attempts: u32,
    /// Re-plan when the best route's measured latency departs from its prediction by more than
    /// this many percent (either way), as a running average over [`DRIFT_WINDOW`] answers (0:
    /// never). The planner then sees the servers' queues as they are now.
    pub drift_percent: u32,
    /// How long after its submission a request that meets only busy tiers keeps trying: it
    /// waits a back-off (from [`BUSY_BACKOFF_INITIAL`], doubling to [`BUSY_BACKOFF_MAX`], with
    /// jitter, so a burst's refused requests do not come back together) and is sent again,
    /// until a retry would start after this. Zero: it fails at once. A shell sets the request's
    /// own deadline.
    pub busy_patience: Duration,
    /// Each probe of a down tier waits its back-off give or take this many percent (0: exactly),
    /// drawn from [`PolicyConfig::jitter_seed`] and the tier: devices that lost a server
    /// together do not all probe it at once when it returns.
    pub probe_jitter_percent: u32,
    /// Seed of the probes' jitter; give each device its own (a hash of its name).
    pub jitter_seed: u64,
}

/// First wait before a request refused as busy everywhere is tried again (see
/// [`PolicyConfig::busy_patience`]).
pub const BUSY_BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest wait between two tries of a request refused as busy.
pub const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Answers on the best route averaged before its measured latency can count as drifting.
pub const DRIFT_WINDOW: u32 = 8;

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            hysteresis_percent: 10,
            replan_every: 0,
            replan_period: Duration::from_ticks(0),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_attempts: 8,
            drift_percent: 0,
            busy_patience: Duration::from_ticks(0),
            probe_jitter_percent: 0,
            jitter_seed: 0,
        }
    }
}

/// Why the policy asks for a new ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplanReason {
    /// There is no ranking yet.
    NoPlan,
    /// Links were re-measured on schedule.
    Scheduled,
    /// No ranked route avoids the tiers that are down.
    NoRouteAvoidingDown,
    /// A tier came back: routes through it may be best again.
    TierRecovered,
    /// The best route's measured latency departs from its prediction (by this percentage of
    /// the prediction, as a running average).
    Drift {
        /// Measured over predicted, in percent.
        measured_percent: u64,
    },
}

/// Why a request failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// No ranked route avoids the tiers that are down, and re-planning found none either.
    NoRoute {
        /// The tiers that were down.
        down: Vec<u8>,
    },
    /// The request was sent `attempts` times and every try met an unreachable tier.
    TooManyAttempts {
        /// How many times it was sent.
        attempts: u32,
    },
    /// Every route left for the request goes through a tier that said it is busy, and its
    /// patience ran out (or it has none).
    Busy {
        /// The busy tiers.
        tiers: Vec<u8>,
    },
    /// A tier refused or failed the request itself (bad input, engine error): retrying
    /// elsewhere would not help.
    Rejected {
        /// The tier's reason.
        reason: String,
    },
}

/// Something that happened, as the shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The application wants request `request` served. Ids must be unique.
    Submit {
        /// The request's id.
        request: u64,
    },
    /// The request's answer arrived.
    Answered {
        /// The request's id.
        request: u64,
        /// End-to-end time of this try, in nanoseconds.
        elapsed_ns: u64,
    },
    /// `tier` could not be reached (connection error, reset, or a tier before it said so).
    Unreachable {
        /// The request's id.
        request: u64,
        /// The tier that failed.
        tier: u8,
        /// What happened.
        reason: String,
    },
    /// `tier` did not answer in time.
    TimedOut {
        /// The request's id.
        request: u64,
        /// The tier that did not answer.
        tier: u8,
    },
    /// `tier` is at capacity (back-pressure): the request tries a route without it, but the
    /// tier stays up for other requests. When every route left goes through busy tiers, the
    /// request backs off and tries them all again while [`PolicyConfig::busy_patience`] lasts.
    Busy {
        /// The request's id.
        request: u64,
        /// The busy tier.
        tier: u8,
    },
    /// A tier answered with a failure that another route would not fix.
    Rejected {
        /// The request's id.
        request: u64,
        /// The reason.
        reason: String,
    },
    /// The links asked for by [`Action::MeasureLinks`], as measured (tiers that could not be
    /// measured are left out).
    LinksMeasured(Vec<(u8, Link)>),
    /// The ranking asked for by [`Action::Replan`], best first.
    Plans(Vec<Route>),
    /// A ranking the shell has without having asked (the device just got a slice some routes
    /// need, so they are usable now), best first: adopted like a re-plan's, with the same
    /// hysteresis; requests in flight keep their routes.
    Offered(Vec<Route>),
    /// The re-planning asked for by [`Action::Replan`] failed.
    PlanFailed {
        /// Why.
        reason: String,
    },
    /// A probe asked for by [`Action::Probe`] was answered.
    ProbeAnswered {
        /// The tier probed.
        tier: u8,
    },
    /// A probe asked for by [`Action::Probe`] failed.
    ProbeFailed {
        /// The tier probed.
        tier: u8,
        /// Why.
        reason: String,
    },
    /// `tier` could not be reached outside any request (at start, or a connection the shell
    /// keeps warm broke): it is marked down and probed after the back-off.
    TierUnreachable {
        /// The tier.
        tier: u8,
    },
    /// Time passed (down tiers whose back-off ran out are probed; a scheduled re-plan that is
    /// due starts).
    Tick,
}

/// Something the policy wants done or known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the request along `stages`; answer with `Answered`, `Unreachable`, `TimedOut` or
    /// `Rejected`.
    Send {
        /// The request's id.
        request: u64,
        /// The route's rank in the current ranking (0 = best).
        rank: usize,
        /// The route.
        stages: Vec<Stage>,
    },
    /// Probe `tier`; answer with `ProbeAnswered` or `ProbeFailed`.
    Probe {
        /// The tier.
        tier: u8,
    },
    /// Measure the links to `tiers`; answer with `LinksMeasured`.
    MeasureLinks {
        /// The tiers that are up.
        tiers: Vec<u8>,
    },
    /// Rank routes again, avoiding `avoid`, with the latest link estimates; answer with
    /// `Plans` or `PlanFailed`.
    Replan {
        /// Tiers that are down.
        avoid: Vec<u8>,
        /// The latest measured link from the device to each tier.
        links: Vec<(u8, Link)>,
        /// Why.
        reason: ReplanReason,
    },
    /// The request succeeded on `route`.
    Done {
        /// The request's id.
        request: u64,
        /// The route that served it.
        route: Route,
        /// End-to-end time of the successful try, in nanoseconds.
        elapsed_ns: u64,
    },
    /// The request failed for good.
    Fail {
        /// The request's id.
        request: u64,
        /// Why.
        failure: RequestFailure,
    },
    /// Every route left for the request goes through tiers that said they are busy: it is
    /// tried again from `until` on (the shell needs only to keep ticking).
    BackingOff {
        /// The request's id.
        request: u64,
        /// The busy tiers.
        busy: Vec<u8>,
        /// When it is tried again.
        until: Instant,
    },
    /// A route failed at `tier`; the request is retried elsewhere.
    FailedOver {
        /// The request's id.
        request: u64,
        /// The tier that failed.
        tier: u8,
        /// What happened.
        reason: String,
    },
    /// A tier is considered down from now on (until a probe succeeds).
    TierDown {
        /// The tier.
        tier: u8,
    },
    /// A down tier answered a probe and is used again.
    TierUp {
        /// The tier.
        tier: u8,
    },
    /// The best route changed.
    Switched {
        /// The best route before (none on the first ranking).
        from: Option<Route>,
        /// The best route now.
        to: Route,
    },
}

/// What the policy knows of one tier that went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Down {
    /// When to probe it next.
    retry_at: Instant,
    /// The wait that led to `retry_at`.
    backoff: Duration,
    /// A probe is out.
    probing: bool,
    /// Probes that failed since it went down (for the jitter).
    probes: u32,
}

/// Where one request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    /// When it was submitted.
    since: Instant,
    /// Tries so far (since its last back-off).
    attempts: u32,
    /// Tiers that answered this request `Busy` (since its last back-off).
    busy: Vec<u8>,
    /// Back-offs so far, after meeting only busy tiers.
    backoffs: u32,
    /// Where it stands.
    state: State,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a route (a re-plan or a measurement is out).
    Parked,
    /// Sent along this route.
    InFlight(Route),
    /// Every route left went through busy tiers: tried again from this time on.
    BackingOff(Instant),
}

impl Pending {
    fn new(since: Instant) -> Self {
        Self { since, attempts: 0, busy: Vec::new(), backoffs: 0, state: State::Parked }
    }

    fn route(&self) -> Option<&Route> {
        match &self.state {
            State::InFlight(route) => Some(route),
            State::Parked | State::BackingOff(_) => None,
        }
    }
}

/// What the policy waits for from the shell besides request outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Links,
    Plans,
}

/// Requests that may go out, one link measurement due, before the next one waits for it: a
/// device that is never idle still measures its links.
pub const MAX_DEFERRED_MEASUREMENT: u32 = 8;

/// The device's route selection, failover, tier health and re-planning.
#[derive(Clone, Debug)]
pub struct DevicePolicy {
    config: PolicyConfig,
    routes: Vec<Route>,
    down: BTreeMap<u8, Down>,
    /// Tiers that came back: when, and the back-off they had reached. A tier that goes down
    /// again soon after starts from the next back-off, not the first (no flapping at the first
    /// back-off's pace when a tier answers probes but fails requests).
    recovered: BTreeMap<u8, (Instant, Duration)>,
    links: BTreeMap<u8, Link>,
    requests: BTreeMap<u64, Pending>,
    waiting: Waiting,
    /// A re-plan that became due while another was out (asked for as soon as it returns).
    replan_again: Option<ReplanReason>,
    submitted: u64,
    /// When the next scheduled re-plan is due (set on the first tick).
    next_scheduled: Option<Instant>,
    /// A scheduled link measurement waiting for a moment with no request in flight: how many
    /// requests have gone out since it fell due.
    measure_due: Option<u32>,
    /// Measured over predicted latency of the best route, per mille, as a running average, and
    /// how many answers it holds (reset with every new ranking).
    drift: (u64, u32),
    /// The time of the event being handled.
    now: Instant,
    actions: VecDeque<Action>,
}

impl DevicePolicy {
    /// A policy starting from `routes` (best first; may be empty, then the first request asks
    /// for a plan) and the link figures the plan assumed.
    pub fn new(config: PolicyConfig, routes: Vec<Route>, links: Vec<(u8, Link)>) -> Self {
        Self {
            config,
            routes,
            down: BTreeMap::new(),
            recovered: BTreeMap::new(),
            links: links.into_iter().collect(),
            requests: BTreeMap::new(),
            drift: (0, 0),
            waiting: Waiting::Nothing,
            replan_again: None,
            submitted: 0,
            next_scheduled: None,
            measure_due: None,
            now: Instant::from_ticks(0),
            actions: VecDeque::new(),
        }
    }

    /// The current ranking, best first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route a new request would take now.
    pub fn best_available(&self) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.stages.iter().all(|s| self.is_up(s.server())))
    }

    /// The tiers that are down, in order.
    pub fn down_tiers(&self) -> Vec<u8> {
        self.down.keys().copied().collect()
    }

    /// Whether `tier` is usable.
    pub fn is_up(&self, tier: u8) -> bool {
        tier == DEVICE_TIER || !self.down.contains_key(&tier)
    }

    /// The latest link estimate for each tier.
    pub fn links(&self) -> Vec<(u8, Link)> {
        self.links.iter().map(|(t, l)| (*t, *l)).collect()
    }

    /// Requests submitted and not yet done or failed.
    pub fn outstanding(&self) -> usize {
        self.requests.len()
    }

    /// The next action, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes in one event at time `now`.
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.now = now;
        match event {
            Event::Submit { request } => self.submit(request),
            Event::Answered { request, elapsed_ns } => self.answered(request, elapsed_ns),
            Event::Unreachable { request, tier, reason } => self.unreachable(now, request, tier, reason),
            Event::TimedOut { request, tier } => self.unreachable(now, request, tier, String::from("no answer in time")),
            Event::Busy { request, tier } => self.busy(request, tier),
            Event::Rejected { request, reason } => self.finish_failed(request, RequestFailure::Rejected { reason }),
            Event::LinksMeasured(links) => self.links_measured(links),
            Event::Plans(ranked) => self.plans(ranked),
            Event::Offered(ranked) => {
                if !ranked.is_empty() {
                    self.adopt(ranked);
                }
            }
            Event::PlanFailed { .. } => self.plan_failed(),
            Event::ProbeAnswered { tier } => self.probe_answered(now, tier),
            Event::ProbeFailed { tier, .. } => self.probe_failed(now, tier),
            Event::TierUnreachable { tier } => self.tier_unreachable(now, tier),
            Event::Tick => self.tick(now),
        }
    }

    fn submit(&mut self, request: u64) {
        if self.requests.contains_key(&request) {
            // A duplicate id would make two outcomes indistinguishable: refuse the newcomer
            // without disturbing the request already under that id.
            let reason = String::from("a request with this id is already outstanding");
            self.actions.push_back(Action::Fail { request, failure: RequestFailure::Rejected { reason } });
            return;
        }
        let due = self.config.replan_every > 0 && self.submitted > 0 && self.submitted.is_multiple_of(u64::from(self.config.replan_every));
        self.submitted = self.submitted.saturating_add(1);
        self.requests.insert(request, Pending::new(self.now));
        if due {
            self.measure_due.get_or_insert(0);
        }
        if let Some(deferred) = self.measure_due
            && self.waiting == Waiting::Nothing
        {
            if deferred >= MAX_DEFERRED_MEASUREMENT {
                // No idle moment came: this request waits for the measurement.
                self.measure_links();
            } else {
                self.measure_due = Some(deferred.saturating_add(1));
            }
        }
        if self.waiting != Waiting::Nothing {
            // Plans out: the ranking at hand still serves (make before break), so a request
            // waits for the new one only when no route of it can. While links are measured,
            // requests wait: one on the link being probed would corrupt its measurement.
            if self.waiting == Waiting::Plans && self.best_available().is_some() {
                self.dispatch(request);
            }
            return;
        }
        if self.routes.is_empty() {
            self.ask_for_plans(ReplanReason::NoPlan);
            return;
        }
        self.dispatch(request);
    }

    /// Sends a parked request on the best route whose tiers are all up, or asks for a plan
    /// that avoids the down tiers, or (when already re-planned) fails it.
    fn dispatch(&mut self, request: u64) {
        let Some(pending) = self.requests.get(&request) else { return };
        let (attempts, busy) = (pending.attempts, pending.busy.clone());
        if attempts >= self.config.max_attempts {
            self.finish_failed(request, RequestFailure::TooManyAttempts { attempts });
            return;
        }
        let chosen = self.best_available_avoiding(&busy).map(|(rank, route)| (rank, route.clone()));
        match chosen {
            Some((rank, route)) => {
                let stages = route.stages.clone();
                if let Some(pending) = self.requests.get_mut(&request) {
                    pending.attempts = attempts.saturating_add(1);
                    pending.state = State::InFlight(route);
                }
                self.actions.push_back(Action::Send { request, rank, stages });
            }
            None if !busy.is_empty() && self.best_available().is_some() => {
                // Routes exist, but only through tiers that are busy for this request: it backs
                // off and tries them again while its patience lasts.
                match (self.busy_retry_at(request), self.requests.get_mut(&request)) {
                    (Some(at), Some(pending)) => {
                        pending.state = State::BackingOff(at);
                        pending.backoffs = pending.backoffs.saturating_add(1);
                        self.actions.push_back(Action::BackingOff { request, busy, until: at });
                    }
                    _ => self.finish_failed(request, RequestFailure::Busy { tiers: busy }),
                }
            }
            None => {
                if let Some(pending) = self.requests.get_mut(&request) {
                    pending.state = State::Parked;
                }
                if self.waiting == Waiting::Nothing {
                    self.ask_for_plans(ReplanReason::NoRouteAvoidingDown);
                }
            }
        }
    }

    /// When `request`, refused as busy everywhere, should be tried again: after its back-off
    /// (doubling per back-off, jittered between half and one and a half times), or `None` when
    /// that is past its patience.
    fn busy_retry_at(&self, request: u64) -> Option<Instant> {
        let pending = self.requests.get(&request)?;
        let patience = self.config.busy_patience;
        if patience.as_ticks() == 0 {
            return None;
        }
        let doubled = BUSY_BACKOFF_INITIAL.as_ticks().saturating_mul(1u64 << pending.backoffs.min(20));
        let backoff = doubled.min(BUSY_BACKOFF_MAX.as_ticks());
        let jittered = backoff.saturating_mul(500 + jitter_permille(request, pending.backoffs)) / 1000;
        let at = self.now.saturating_add(Duration::from_ticks(jittered));
        (at < pending.since.saturating_add(patience)).then_some(at)
    }

    /// The best route whose tiers are all up and none in `busy`.
    fn best_available_avoiding(&self, busy: &[u8]) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.stages.iter().all(|s| self.is_up(s.server()) && !busy.contains(&s.server())))
    }

    fn ask_for_plans(&mut self, reason: ReplanReason) {
        self.waiting = Waiting::Plans;
        self.actions.push_back(Action::Replan { avoid: self.down_tiers(), links: self.links(), reason });
    }

    fn answered(&mut self, request: u64, elapsed_ns: u64) {
        if let Some(route) = self.requests.get(&request).and_then(Pending::route).cloned() {
            self.requests.remove(&request);
            self.track_drift(&route, elapsed_ns);
            self.actions.push_back(Action::Done { request, route, elapsed_ns });
            self.measure_if_idle();
        }
    }

    /// Starts a due link measurement when no request is in flight (so none disturbs it, and
    /// none waits for it unless it comes meanwhile).
    fn measure_if_idle(&mut self) {
        let idle = self.requests.values().all(|p| p.route().is_none());
        if self.measure_due.is_some() && idle && self.waiting == Waiting::Nothing {
            self.measure_links();
        }
    }

    /// Folds an answer on the best route into the running measured/predicted ratio, and asks
    /// for plans once it departs from 1 by more than the configured percentage.
    fn track_drift(&mut self, route: &Route, elapsed_ns: u64) {
        let Some(predicted) = route.predicted_ns.filter(|&p| p > 0 && self.config.drift_percent > 0) else { return };
        if self.routes.first().is_none_or(|best| best.stages != route.stages) {
            return;
        }
        let ratio = u64::try_from(u128::from(elapsed_ns) * 1000 / u128::from(predicted)).unwrap_or(u64::MAX).min(1_000_000);
        let (average, count) = self.drift;
        let average = if count == 0 { ratio } else { (average * 7 + ratio) / 8 };
        self.drift = (average, count.saturating_add(1));
        let limit = u64::from(self.config.drift_percent).saturating_mul(10);
        // Either way: slower by more than the limit, or faster by as much (1 / (1 + limit)).
        let slower = average > 1000 + limit;
        let faster = average.saturating_mul(1000 + limit) < 1_000_000;
        if self.drift.1 >= DRIFT_WINDOW && (slower || faster) && self.waiting == Waiting::Nothing {
            self.drift = (0, 0);
            self.ask_for_plans(ReplanReason::Drift { measured_percent: average / 10 });
        }
    }

    /// The in-flight request's route, when `tier` is on it (only a tier on the route can fail
    /// it; anything else is a shell bug or a lying peer, and fails the request).
    fn route_through(&mut self, request: u64, tier: u8, what: &str) -> Option<Route> {
        let route = self.requests.get(&request).and_then(Pending::route)?.clone();
        if tier == DEVICE_TIER || !route.uses(tier) {
            let reason = alloc::format!("tier {tier} reported {what}, but the route does not use it");
            self.finish_failed(request, RequestFailure::Rejected { reason });
            return None;
        }
        Some(route)
    }

    fn unreachable(&mut self, now: Instant, request: u64, tier: u8, reason: String) {
        if self.route_through(request, tier, "unreachable").is_none() {
            return;
        }
        self.mark_down(now, tier);
        self.actions.push_back(Action::FailedOver { request, tier, reason });
        self.park_and_retry(request);
    }

    fn busy(&mut self, request: u64, tier: u8) {
        if self.route_through(request, tier, "busy").is_none() {
            return;
        }
        if let Some(pending) = self.requests.get_mut(&request) {
            pending.busy.push(tier);
        }
        self.park_and_retry(request);
    }

    fn park_and_retry(&mut self, request: u64) {
        if let Some(pending) = self.requests.get_mut(&request) {
            pending.state = State::Parked;
        }
        if self.waiting == Waiting::Nothing {
            self.dispatch(request);
        }
    }

    fn mark_down(&mut self, now: Instant, tier: u8) {
        if self.down.contains_key(&tier) {
            return;
        }
        let backoff = self.backoff_after_recovery(now, tier);
        let retry_at = self.probe_at(now, tier, backoff, 0);
        self.down.insert(tier, Down { retry_at, backoff, probing: false, probes: 0 });
        self.actions.push_back(Action::TierDown { tier });
        if self.waiting == Waiting::Plans {
            self.replan_again = Some(ReplanReason::NoRouteAvoidingDown);
        }
    }

    fn finish_failed(&mut self, request: u64, failure: RequestFailure) {
        if self.requests.remove(&request).is_some() {
            self.actions.push_back(Action::Fail { request, failure });
            self.measure_if_idle();
        }
    }

    fn links_measured(&mut self, links: Vec<(u8, Link)>) {
        if self.waiting != Waiting::Links {
            return;
        }
        for (tier, link) in links {
            self.links.insert(tier, link);
        }
        self.ask_for_plans(ReplanReason::Scheduled);
        // The links are measured: the requests that waited for that go out on the ranking at
        // hand while the plans are out (those that failed over wait for the new ranking).
        let waited: Vec<u64> =
            self.requests.iter().filter(|(_, p)| p.state == State::Parked && p.attempts == 0).map(|(id, _)| *id).collect();
        if self.best_available().is_some() {
            for request in waited {
                self.dispatch(request);
            }
        }
    }

    fn plans(&mut self, ranked: Vec<Route>) {
        if self.waiting != Waiting::Plans {
            return;
        }
        self.waiting = Waiting::Nothing;
        if !ranked.is_empty() {
            self.adopt(ranked);
        }
        self.resume_or_replan_again();
        self.measure_if_idle();
    }

    /// Parked requests go out, unless something changed while the plans were out (a tier went
    /// down or came back): then they wait for one more ranking that knows it.
    fn resume_or_replan_again(&mut self) {
        match self.replan_again.take() {
            Some(reason) => self.ask_for_plans(reason),
            None => self.resume_parked(),
        }
    }

    fn plan_failed(&mut self) {
        if self.waiting != Waiting::Plans {
            return;
        }
        self.waiting = Waiting::Nothing;
        // A failed re-plan is not retried at once (it would likely fail again): the parked
        // requests are decided on the ranking at hand.
        self.replan_again = None;
        self.resume_parked();
    }

    /// After a (failed or successful) re-plan: every parked request goes out, or fails when no
    /// route avoids the down tiers even now.
    fn resume_parked(&mut self) {
        let parked: Vec<u64> = self.requests.iter().filter(|(_, p)| p.state == State::Parked).map(|(id, _)| *id).collect();
        for request in parked {
            if self.best_available().is_some() {
                self.dispatch(request);
            } else {
                self.finish_failed(request, RequestFailure::NoRoute { down: self.down_tiers() });
            }
        }
    }

    /// Takes a new ranking. The current best stays first unless the new best is predicted at
    /// least `hysteresis_percent` faster than it (or the current best is gone or unusable).
    fn adopt(&mut self, mut ranked: Vec<Route>) {
        let before = self.best_available().map(|(_, r)| r.clone());
        let usable = |r: &Route| r.stages.iter().all(|s| self.is_up(s.server()));
        if let Some(current) = before.as_ref()
            && let Some(position) = ranked.iter().position(|r| r.stages == current.stages)
            && let Some(best) = ranked.iter().position(usable)
            && best < position
            && !self.clearly_faster(&ranked[best], &ranked[position])
        {
            let kept = ranked.remove(position);
            ranked.insert(0, kept);
        }
        self.routes = ranked;
        self.drift = (0, 0);
        let after = self.best_available().map(|(_, r)| r.clone());
        if let Some(to) = after
            && before.as_ref().map(|b| &b.stages) != Some(&to.stages)
        {
            self.actions.push_back(Action::Switched { from: before, to });
        }
    }

    /// Whether `candidate` is predicted at least the hysteresis margin faster than `current`.
    fn clearly_faster(&self, candidate: &Route, current: &Route) -> bool {
        match (candidate.predicted_ns, current.predicted_ns) {
            (Some(new), Some(old)) => {
                let margin = u128::from(100u32.saturating_sub(self.config.hysteresis_percent.min(100)));
                u128::from(new) * 100 <= u128::from(old) * margin
            }
            // Without predictions the planner's order is all there is.
            _ => true,
        }
    }

    fn probe_answered(&mut self, now: Instant, tier: u8) {
        if let Some(down) = self.down.get(&tier).filter(|d| d.probing).copied() {
            self.down.remove(&tier);
            self.recovered.insert(tier, (now, down.backoff));
            self.actions.push_back(Action::TierUp { tier });
            if self.waiting == Waiting::Nothing {
                self.ask_for_plans(ReplanReason::TierRecovered);
            } else {
                self.replan_again.get_or_insert(ReplanReason::TierRecovered);
            }
        }
    }

    /// The first back-off of a tier going down at `now`: the initial one, or, when it came back
    /// less than the longest back-off ago, double the back-off it had reached then.
    fn backoff_after_recovery(&mut self, now: Instant, tier: u8) -> Duration {
        let (initial, max) = (self.config.backoff_initial, self.config.backoff_max);
        match self.recovered.remove(&tier) {
            Some((at, reached)) if now.checked_duration_since(at).is_none_or(|since| since < max) => {
                let doubled = Duration::from_ticks(reached.as_ticks().saturating_mul(2));
                if doubled > max { max } else { doubled }
            }
            _ => initial,
        }
    }

    fn probe_failed(&mut self, now: Instant, tier: u8) {
        let max = self.config.backoff_max;
        let Some(mut down) = self.down.get(&tier).filter(|d| d.probing).copied() else { return };
        let doubled = Duration::from_ticks(down.backoff.as_ticks().saturating_mul(2));
        down.backoff = if doubled > max { max } else { doubled };
        down.probes = down.probes.saturating_add(1);
        down.retry_at = self.probe_at(now, tier, down.backoff, down.probes);
        down.probing = false;
        self.down.insert(tier, down);
    }

    /// When a down tier that failed `probes` probes is probed next, `backoff` after `now`, give
    /// or take [`PolicyConfig::probe_jitter_percent`].
    fn probe_at(&self, now: Instant, tier: u8, backoff: Duration, probes: u32) -> Instant {
        let spread = u64::from(self.config.probe_jitter_percent.min(100)) * 10;
        // From 1000 - spread to 1000 + spread per mille of the back-off.
        let permille = 1000 - spread + jitter_permille_seeded(self.config.jitter_seed, u64::from(tier), probes) * 2 * spread / 1000;
        now.saturating_add(Duration::from_ticks(backoff.as_ticks().saturating_mul(permille) / 1000))
    }

    /// Asks for the links to the tiers that are up (a re-plan follows their measurement).
    fn measure_links(&mut self) {
        self.measure_due = None;
        self.waiting = Waiting::Links;
        let tiers = self.tiers_in_routes().into_iter().filter(|&t| self.is_up(t)).collect();
        self.actions.push_back(Action::MeasureLinks { tiers });
    }

    fn tier_unreachable(&mut self, now: Instant, tier: u8) {
        if tier != DEVICE_TIER {
            self.mark_down(now, tier);
        }
    }

    fn tick(&mut self, now: Instant) {
        let due: Vec<u64> =
            self.requests.iter().filter(|(_, p)| matches!(p.state, State::BackingOff(at) if at <= now)).map(|(id, _)| *id).collect();
        for request in due {
            if let Some(pending) = self.requests.get_mut(&request) {
                // A fresh try: every tier may have room again, and failover has its full budget.
                pending.busy.clear();
                pending.attempts = 0;
            }
            self.park_and_retry(request);
        }
        for (tier, down) in self.down.iter_mut() {
            if !down.probing && down.retry_at <= now {
                down.probing = true;
                self.actions.push_back(Action::Probe { tier: *tier });
            }
        }
        self.scheduled_replan(now);
    }

    /// Starts the periodic re-plan when it is due and nothing else is out.
    fn scheduled_replan(&mut self, now: Instant) {
        let period = self.config.replan_period;
        if period.as_ticks() == 0 {
            return;
        }
        let due = *self.next_scheduled.get_or_insert(now.saturating_add(period));
        if due <= now && self.waiting == Waiting::Nothing {
            self.next_scheduled = Some(now.saturating_add(period));
            self.measure_due.get_or_insert(0);
            self.measure_if_idle();
        }
    }

    /// Every tier some ranked route uses, except the device.
    fn tiers_in_routes(&self) -> Vec<u8> {
        let mut tiers: Vec<u8> = self.routes.iter().flat_map(|r| r.stages.iter().map(|s| s.tier)).filter(|&t| t != DEVICE_TIER).collect();
        tiers.sort_unstable();
        tiers.dedup();
        tiers
    }
}
