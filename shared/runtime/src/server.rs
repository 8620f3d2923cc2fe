//! Serving stages over QUIC (edge and cloud). Each stream carries one request frame and gets
//! exactly one answer frame: the outputs, or a failure that says why. A peer that sends
//! garbage, truncates a frame, announces an oversized one or vanishes only loses its own
//! stream.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Mutex;

use super::convert::{bounded, decode as decode_tensor, infer_message, output_message};
use super::node::Node;
use super::planner::{ModelFile, Planner};
use scission_core::cut::Block;
use scission_core::solver::Encoding;
use scission_core::wire::WireError;
use scission_core::wire::message::{Body, FailureCode, NamedTensor, Stage, StageTiming, decode, encode};
use scission_engine::pipeline::Activations;
use scission_net::quic::{FrameError, connect, exchange, read_frame, write_frame};

/// The next tier a server forwards to (the edge's cloud).
pub struct Upstream {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    connection: Mutex<Option<quinn::Connection>>,
}

impl Upstream {
    /// Forwards through `endpoint` to `addr`, connecting on first use and again after a loss.
    pub fn new(endpoint: quinn::Endpoint, addr: SocketAddr) -> Self {
        Self { endpoint, addr, connection: Mutex::new(None) }
    }

    async fn connection(&self) -> Result<quinn::Connection> {
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        let c = connect(&self.endpoint, self.addr).await?;
        *guard = Some(c.clone());
        Ok(c)
    }
}

/// A stage server: a node, where to forward, and the largest frame it accepts; the cloud also
/// plans and serves the model file.
pub struct StageServer {
    node: Arc<Node>,
    upstream: Option<Upstream>,
    max_frame: u32,
    planner: Option<Planner>,
    model_file: Option<ModelFile>,
}

type Failed = (FailureCode, String);

fn failure(request: u64, code: FailureCode, message: impl std::fmt::Display) -> Vec<u8> {
    let mut text = heapless::String::new();
    for c in message.to_string().chars() {
        if text.push(c).is_err() {
            break;
        }
    }
    encode(&Body::Failure { request, code, message: text }).unwrap_or_default()
}

impl StageServer {
    /// A server for `node`, forwarding later stages to `upstream`.
    pub fn new(node: Arc<Node>, upstream: Option<Upstream>, max_frame: u32) -> Self {
        Self { node, upstream, max_frame, planner: None, model_file: None }
    }

    /// Forwards later stages to `upstream`.
    pub fn with_upstream(mut self, upstream: Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Also answers registrations and plan requests.
    pub fn with_planner(mut self, planner: Planner) -> Self {
        self.planner = Some(planner);
        self
    }

    /// Also serves the model file.
    pub fn with_model_file(mut self, file: ModelFile) -> Self {
        self.model_file = Some(file);
        self
    }

    /// Accepts connections on `endpoint` until it closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("refused a connection: {e}");
                        return;
                    }
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let server = server.clone();
                    tokio::spawn(async move { server.handle_stream(send, recv).await });
                }
            });
        }
    }

    async fn handle_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let reply = match read_frame(&mut recv, self.max_frame).await {
            Ok(bytes) => self.answer(&bytes).await,
            Err(FrameError::Wire(e @ WireError::TooLarge { .. })) => failure(0, FailureCode::TooLarge, e),
            Err(e) => failure(0, FailureCode::BadRequest, e),
        };
        if let Err(e) = write_frame(&mut send, &reply).await {
            tracing::debug!("could not answer: {e:#}");
        }
    }

    async fn answer(&self, bytes: &[u8]) -> Vec<u8> {
        match decode(bytes) {
            Ok(Body::Ping { nonce, .. }) => encode(&Body::Pong { nonce }).unwrap_or_default(),
            Ok(Body::Infer { request, model, stages, encoding, tensors }) => {
                match self.infer(request, model, &stages, encoding, &tensors).await {
                    Ok(reply) => reply,
                    Err((code, message)) => failure(request, code, message),
                }
            }
            Ok(Body::Register { name, tier, profile, link_to_cloud }) => match &self.planner {
                Some(p) => match p.register(&name, tier, profile, link_to_cloud) {
                    Ok(()) => encode(&Body::Registered).unwrap_or_default(),
                    Err(e) => failure(0, FailureCode::BadRequest, format!("{e:#}")),
                },
                None => failure(0, FailureCode::BadRequest, "this node does not plan"),
            },
            Ok(Body::PlanRequest { profile, uplinks, count, avoid }) => match &self.planner {
                Some(p) => match p.plan(profile, &uplinks, &avoid, usize::from(count)) {
                    Ok(routes) => encode(&Body::Plans { routes: routes.into_iter().collect() }).unwrap_or_default(),
                    Err(e) => failure(0, FailureCode::BadRequest, format!("{e:#}")),
                },
                None => failure(0, FailureCode::BadRequest, "this node does not plan (start the cloud with --profile)"),
            },
            Ok(Body::FetchModel { offset, max_len }) => match &self.model_file {
                Some(f) => match f.chunk(offset, max_len.min(self.max_frame / 2)) {
                    Ok(data) => encode(&Body::ModelChunk { total: f.total, sha256: f.sha256, offset, data: &data }).unwrap_or_default(),
                    Err(e) => failure(0, FailureCode::BadRequest, format!("{e:#}")),
                },
                None => failure(0, FailureCode::BadRequest, "this node does not serve its model file"),
            },
            Ok(_) => failure(0, FailureCode::BadRequest, "expected a request"),
            Err(e) => failure(0, FailureCode::BadRequest, e),
        }
    }

    async fn infer(
        &self,
        request: u64,
        model: [u8; 32],
        stages: &[Stage],
        encoding: Encoding,
        tensors: &[NamedTensor<'_>],
    ) -> Result<Vec<u8>, Failed> {
        let bad = |m: String| (FailureCode::BadRequest, m);
        if model != self.node.sha256 {
            return Err(bad("the request is for another model than this node serves".into()));
        }
        let stage = stages[0];
        if stage.tier != self.node.tier {
            return Err(bad(format!("stage for tier {} sent to tier {}", stage.tier, self.node.tier)));
        }
        let mut live = Activations::new();
        for t in tensors {
            let (id, value) = decode_tensor(&self.node.model, t).map_err(|e| bad(format!("{e:#}")))?;
            live.insert(id, value);
        }
        let node = self.node.clone();
        let block = Block { start: stage.start as usize, end: stage.end as usize };
        let (live, compute_ns) = tokio::task::spawn_blocking(move || node.run_stage(block, live))
            .await
            .map_err(|e| (FailureCode::Engine, e.to_string()))?
            .map_err(|e| (FailureCode::Engine, format!("{e:#}")))?;
        let mine = StageTiming { tier: self.node.tier, compute_ns };
        let rest = &stages[1..];
        if rest.is_empty() {
            let outputs = self.node.outputs(&live).map_err(|e| (FailureCode::Engine, format!("{e:#}")))?;
            return output_message(request, &outputs, &[mine]).map_err(|e| (FailureCode::Engine, format!("{e:#}")));
        }
        self.forward(request, model, rest, encoding, &live, mine).await
    }

    async fn forward(
        &self,
        request: u64,
        model: [u8; 32],
        rest: &[Stage],
        encoding: Encoding,
        live: &Activations,
        mine: StageTiming,
    ) -> Result<Vec<u8>, Failed> {
        let unreachable = |m: String| (FailureCode::Unreachable, m);
        let upstream = self.upstream.as_ref().ok_or_else(|| unreachable("this node has no next tier to forward to".into()))?;
        let message = infer_message(request, model, rest, encoding, live).map_err(|e| (FailureCode::Engine, format!("{e:#}")))?;
        let connection = upstream.connection().await.map_err(|e| unreachable(format!("{e:#}")))?;
        let answer = exchange(&connection, &message, self.max_frame).await.map_err(|e| unreachable(format!("next tier: {e:#}")))?;
        match decode(&answer) {
            Ok(Body::Output { request, tensors, timings }) => {
                let all = bounded(core::iter::once(mine).chain(timings).collect(), "stage timings")
                    .map_err(|e| (FailureCode::Engine, format!("{e:#}")))?;
                encode(&Body::Output { request, tensors, timings: all }).map_err(|e| (FailureCode::Engine, e.to_string()))
            }
            Ok(Body::Failure { request, code, message }) => {
                encode(&Body::Failure { request, code, message }).map_err(|e| (FailureCode::Engine, e.to_string()))
            }
            Ok(_) => Err(unreachable("next tier answered with something else than a result".into())),
            Err(e) => Err(unreachable(format!("next tier sent a malformed answer: {e}"))),
        }
    }
}
