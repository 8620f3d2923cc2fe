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
mod machine;
mod observed;
pub mod offer;
pub mod pricing;
mod routes;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use embassy_time::{Duration, Instant};

pub use estimate::{Probe, estimate_link};
pub use machine::*;
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
