//! The device policy's state machine: what it knows of down tiers and pending requests, and
//! how each event moves it (see the module above for the rules it keeps).

use super::*;

/// What the policy knows of one tier that went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Down {
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
pub(super) struct Pending {
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
pub(super) enum State {
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
pub(super) enum Waiting {
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

    /// Whether `server` (a [`Stage::server`] key: a tier index for a tier's configured server)
    /// is usable.
    pub fn is_up(&self, server: u8) -> bool {
        server == DEVICE_TIER || !self.down.contains_key(&server)
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

    /// Asks for the links to the tiers whose configured server is up: a tier's uplink is
    /// measured to that server (a re-plan follows their measurement).
    fn measure_links(&mut self) {
        self.measure_due = None;
        self.waiting = Waiting::Links;
        let configured_up = |tier: u8| self.is_up(crate::wire::message::server_key(tier, crate::wire::message::CONFIGURED));
        let tiers = self.tiers_in_routes().into_iter().filter(|&t| configured_up(t)).collect();
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
