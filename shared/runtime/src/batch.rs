//! Dynamic batching on a stage server: requests for the same slice that queue together run as
//! one batch ([`Batcher`]); the node's slice cache keeps the slices that run them, within its
//! budget, and the node the ranges that do not batch. When a batch leaves is the core's
//! [`BatchWindow`]; memory stays bounded by the admission limit, since only admitted requests
//! queue here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use scission_core::batching::{BatchWindow, Dispatch};
use scission_core::cut::Block;
use scission_engine::pipeline::Activations;
use tokio::sync::{Notify, Semaphore, oneshot};

use crate::load::LoadMeter;
use crate::node::Node;

/// One batch member's answer: the tensors crossing the stage's end and the batch's compute
/// time, or why the batch failed.
pub(crate) type Answer = Result<(Activations, u64), String>;

struct Waiter {
    live: Activations,
    arrived: Instant,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    collecting: bool,
}

/// Queues per slice and the window that turns them into batches.
pub struct Batcher {
    window: BatchWindow,
    queues: Mutex<HashMap<Block, Queue>>,
    joined: Notify,
}

/// What a batch runs with: the worker pool, the node and the load meter.
#[derive(Clone)]
pub(crate) struct Pool {
    pub(crate) workers: Arc<Semaphore>,
    pub(crate) node: Arc<Node>,
    pub(crate) load: Arc<LoadMeter>,
}

impl Batcher {
    /// A batcher forming batches within `window`.
    pub fn new(window: BatchWindow) -> Self {
        Self { window, queues: Mutex::default(), joined: Notify::new() }
    }

    /// Queues `live` for stage `block` and returns where its answer comes; the first request of
    /// an idle queue starts the task that dispatches it.
    pub(crate) fn submit(self: &Arc<Self>, block: Block, live: Activations, pool: &Pool) -> oneshot::Receiver<Answer> {
        let (answer, receiver) = oneshot::channel();
        let waiter = Waiter { live, arrived: Instant::now(), answer };
        let start = match self.queues.lock() {
            Ok(mut queues) => {
                let queue = queues.entry(block).or_default();
                queue.waiting.push_back(waiter);
                !std::mem::replace(&mut queue.collecting, true)
            }
            Err(_) => {
                let _ = waiter.answer.send(Err("the batch queue is poisoned".into()));
                return receiver;
            }
        };
        self.joined.notify_waiters();
        if start {
            tokio::spawn(self.clone().dispatch(block, pool.clone()));
        }
        receiver
    }

    /// Runs `block`'s queue as batches until it is empty, one batch per free worker.
    async fn dispatch(self: Arc<Self>, block: Block, pool: Pool) {
        loop {
            let Ok(permit) = pool.workers.clone().acquire_owned().await else {
                self.fail_all(block, "the server is shutting down");
                return;
            };
            let batch = self.next_batch(block).await;
            if batch.is_empty() {
                drop(permit);
                if self.stop_if_empty(block) {
                    return;
                }
                continue;
            }
            let pool = pool.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                run(&pool, block, batch);
            });
        }
    }

    /// The next batch of `block`'s queue, once the window lets it leave (those whose requester
    /// gave up are dropped).
    async fn next_batch(&self, block: Block) -> Vec<Waiter> {
        loop {
            let joined = self.joined.notified();
            let decision = {
                let Ok(mut queues) = self.queues.lock() else { return Vec::new() };
                let Some(queue) = queues.get_mut(&block) else { return Vec::new() };
                queue.waiting.retain(|w| !w.answer.is_closed());
                let waited = queue.waiting.front().map_or(0, |w| u64::try_from(w.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX));
                match self.window.dispatch(queue.waiting.len(), waited) {
                    Dispatch::Idle => return Vec::new(),
                    Dispatch::Now(n) => return queue.waiting.drain(..n.min(queue.waiting.len())).collect(),
                    Dispatch::Wait(ns) => ns,
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_nanos(decision), joined).await;
        }
    }

    /// Marks `block`'s queue idle if nothing waits in it (a new request then starts a new task).
    fn stop_if_empty(&self, block: Block) -> bool {
        let Ok(mut queues) = self.queues.lock() else { return true };
        let Some(queue) = queues.get_mut(&block) else { return true };
        if queue.waiting.is_empty() {
            queues.remove(&block);
            return true;
        }
        false
    }

    fn fail_all(&self, block: Block, why: &str) {
        let waiting = self.queues.lock().ok().and_then(|mut q| q.remove(&block)).map(|q| q.waiting).unwrap_or_default();
        for waiter in waiting {
            let _ = waiter.answer.send(Err(why.to_string()));
        }
    }
}

/// Runs one batch on this (blocking) thread and answers each member.
fn run(pool: &Pool, block: Block, batch: Vec<Waiter>) {
    let _running = pool.load.start_batch(batch.len());
    let (lives, answers): (Vec<_>, Vec<_>) = batch.into_iter().map(|w| (w.live, w.answer)).unzip();
    tracing::debug!("stage [{}, {}): a batch of {}", block.start, block.end, lives.len());
    let (results, compute_ns) = pool.node.run_batch(block, lives);
    for (answer, result) in answers.into_iter().zip(results) {
        let _ = answer.send(result.map(|live| (live, compute_ns)).map_err(|e| format!("{e:#}")));
    }
}
