//! Running a request's stage: admission against the queue, the deadline and memory, the
//! stage itself (alone or batched), and forwarding to the next tier.

use super::*;

impl StageServer {
    /// Inferences running and waiting at most: the workers (each with a batch, when batching)
    /// and the queue.
    fn capacity(&self) -> usize {
        self.limits.queue.saturating_add(self.limits.workers.saturating_mul(self.limits.batch.max.max(1)))
    }

    /// Whether a new inference is refused from its first bytes, whatever its deadline: the
    /// queue holds its most requests or its bytes.
    pub(super) fn full(&self) -> bool {
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
    pub(super) fn planning_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, StageError> {
        self.planning.try_acquire().map_err(|_| StageError::Busy {
            tier: self.node.tier,
            machine: CONFIGURED,
            waiting: PLANNING_AT_ONCE,
            wait_ms: 0,
        })
    }

    /// Checks an inference, admits it and decodes its tensors (nothing is awaited: the frame
    /// it borrows from is dropped before it waits for a worker).
    pub(super) fn take_on(&self, request: Request, stages: &[Stage], tensors: &[NamedTensor<'_>]) -> Result<TakenOn<'_>, StageError> {
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
    pub(super) async fn infer(&self, taken: TakenOn<'_>) -> Result<Vec<u8>, StageError> {
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
pub(super) fn decoded_bytes(tensors: &[NamedTensor<'_>]) -> u64 {
    tensors
        .iter()
        .map(|t| t.tensor.volume().unwrap_or(u64::MAX).saturating_mul(4).max(t.tensor.data.len() as u64))
        .fold(0, u64::saturating_add)
}

/// One inference request as the server handles it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Request {
    pub(super) id: u64,
    pub(super) model: [u8; 32],
    pub(super) encoding: Encoding,
    pub(super) deadline: Option<Deadline>,
    /// When its bytes had all arrived: what a [`StageTiming::held_ns`] counts from.
    pub(super) arrived: Instant,
}

/// An inference taken on: its stage here, the rest of its route, its decoded tensors, and its
/// places in the admission count and the queue's bytes (released once its stage has run).
pub(super) struct TakenOn<'s> {
    request: Request,
    stage: Stage,
    rest: Vec<Stage>,
    live: Activations,
    places: (crate::load::Admitted<'s>, QueuedBytes),
}

/// Nanoseconds since `arrived`, for [`StageTiming::held_ns`].
pub(super) fn held_since(arrived: Instant) -> u64 {
    u64::try_from(arrived.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs blocking work (planning, registration) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, StageError> {
    tokio::task::spawn_blocking(work).await.map_err(StageError::engine)
}
