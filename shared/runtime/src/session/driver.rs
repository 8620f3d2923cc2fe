//! The session's driver: the one task that owns the device's policy, feeds it what happens
//! (answers, failures, rankings, fetched slices, lost connections) and carries out its actions.

use super::*;

/// What the driver's own tasks report back.
pub(super) enum Feedback {
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
pub(super) struct Waiter {
    inputs: TVec<TValue>,
    reply: oneshot::Sender<std::result::Result<Answer, InferError>>,
    /// The successful try's outcome and rank, until the policy reports the request done.
    outcome: Option<(Outcome, usize)>,
    /// When the application submitted it.
    submitted: Instant,
}

/// Owns the policy and carries out its actions; the only task that touches it.
pub(super) struct Driver {
    policy: DevicePolicy,
    client: Arc<DeviceClient>,
    planner: Arc<Mutex<Planner>>,
    /// Whether the planner takes in what stages cost (see [`Driver::observe`]).
    planner_observes: bool,
    /// Which planned routes this device can run, and what else it offers.
    rules: DeviceRoutes,
    /// The device's blocks as its profile has them: their measured memory, where counted, is
    /// what a device stage needs.
    blocks: Vec<BlockProfile>,
    observer: Option<Observer>,
    encoding: Encoding,
    /// The planner's last ranking, before the routes this device cannot run yet are left out.
    ranking: Vec<Route>,
    /// Device slices being fetched.
    fetching: HashSet<Block>,
    max_slice_bytes: u64,
    waiters: HashMap<u64, Waiter>,
    feedback: (mpsc::UnboundedSender<Feedback>, mpsc::UnboundedReceiver<Feedback>),
    pub(super) status_tx: Option<watch::Sender<Status>>,
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
pub(super) const ROUTES_REMEMBERED: usize = 1024;

impl Driver {
    pub(super) fn new(
        config: &SessionConfig,
        client: Arc<DeviceClient>,
        planner: Planner,
        rules: DeviceRoutes,
        blocks: Vec<BlockProfile>,
        observer: Option<Observer>,
    ) -> Self {
        Self {
            policy: DevicePolicy::new(config.policy, Vec::new(), Vec::new()),
            client,
            planner_observes: planner.keeps_estimates(),
            planner: Arc::new(Mutex::new(planner)),
            rules,
            blocks,
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
    pub(super) async fn start(&mut self, config: &SessionConfig, peers: &HashMap<u8, Peer>) -> Result<()> {
        let mut planner = self.planner.lock().await;
        let links = planner.initial_links(&self.client, peers).await;
        let cloud_planning = planner.asks_the_cloud();
        let ranked = if cloud_planning && !links.iter().any(|(t, _)| *t == CLOUD_TIER) {
            // It did not answer its probe: asking it to plan would only wait out more timeouts.
            Err(crate::error::RuntimeError::Invalid("the cloud did not answer its link probe, so it cannot plan".into()))
        } else {
            planner.rank(&self.client, &[], &links).await
        };
        drop(planner);
        let routes = match ranked {
            Ok(routes) => {
                check_addresses(&routes, peers)?;
                if let Some(refusal) = self.rules.memory_refusal(&routes, &self.device()) {
                    if config.require_plan && self.rules.offload.is_none() {
                        bail!("{refusal}");
                    }
                    tracing::warn!("{refusal}");
                    self.memory_refusal = Some(refusal.to_string());
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
        self.policy = DevicePolicy::new(config.policy, self.offer(routes), links.clone());
        self.fetch_missing_slices();
        // The session opens with its first plan's device slice built: its first request does
        // not wait for it.
        if let Some(building) = self.prepare_best_device_slice() {
            let _ = building.await;
        }
        if self.no_plan.is_some() {
            let now = self.now();
            for tier in peers.keys().copied().filter(|t| !links.iter().any(|(l, _)| l == t) || (cloud_planning && *t == CLOUD_TIER)) {
                self.policy.handle(now, Event::TierUnreachable { tier });
            }
            self.carry_out_all();
        }
        if let Some((_, route)) = self.policy.best_available() {
            self.emit(DeviceEvent::Plan { route: route.stages.clone() });
        }
        Ok(())
    }

    /// The device as the route rules see it.
    fn device(&self) -> DeviceView<'_> {
        DeviceView { node: &self.client.node, blocks: &self.blocks }
    }

    /// `ranked` as the policy gets it: without the routes this device cannot run, with the
    /// offload and fallback (see [`DeviceRoutes::offer`]).
    fn offer(&self, ranked: Vec<Route>) -> Vec<Route> {
        let offered = self.rules.offer(ranked, &self.device());
        if offered.not_held > 0 {
            tracing::info!("{} planned routes need device slices this device does not hold", offered.not_held);
        }
        if offered.over_memory > 0 {
            tracing::warn!("{} planned routes need more memory on the device than its {:?} bytes", offered.over_memory, self.rules.memory);
        }
        offered.routes
    }

    fn is_fallback(&self, route: &Route) -> bool {
        self.rules.fallback.as_ref().is_some_and(|f| f == route)
    }

    /// Keeps the device's artifacts within their byte budget, never dropping a slice of the
    /// best ranked routes.
    fn evict_slices(&self) {
        let Some(dir) = self.client.node.artifacts() else { return };
        let keep = DeviceRoutes::to_keep(&self.ranking);
        for block in dir.evict_to(self.max_slice_bytes, &keep) {
            tracing::info!("dropped the device slice [{}, {}) to stay within the slice cache", block.start, block.end);
        }
    }

    /// Fetches from the cloud, in the background, the device slices of the best ranked routes
    /// that this device (running from slice artifacts) lacks; each one offered to the policy
    /// as it arrives.
    fn fetch_missing_slices(&mut self) {
        let (Some(_), Some(_)) = (self.client.node.artifacts(), self.client.peer(CLOUD_TIER)) else { return };
        let wanted = self.rules.to_fetch(&self.ranking, &self.device());
        for block in wanted {
            if !self.fetching.insert(block) {
                continue;
            }
            tracing::info!("fetching the device slice [{}, {}) from the cloud", block.start, block.end);
            let (client, sender) = (self.client.clone(), self.feedback.0.clone());
            tokio::spawn(async move {
                let result = match (client.node.artifacts(), client.peer(CLOUD_TIER)) {
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
        let best = self.ranking.iter().find(|r| self.rules.runs(r, &self.device()));
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

    pub(super) async fn drive(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut lost: mpsc::UnboundedReceiver<u8>) {
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
                let plans = Event::Plans(self.offer(routes));
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
                        Event::Offered(self.offer(self.ranking.clone()))
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

    pub(super) fn status(&self) -> Status {
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
