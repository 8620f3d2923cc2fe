//! The HTTP service (axum): the Open Inference Protocol's health, metadata and infer endpoints
//! over a [`Session`], Prometheus metrics at `/metrics` and the session's status at `/status`,
//! on a TCP address and optionally a Unix socket, with graceful shutdown (in-flight requests
//! finish).
//!
//! Besides the protocol's JSON and binary bodies, `POST /v2/models/{name}/infer` takes an
//! encoded image as the whole body (`Content-Type: image/...`) when the model has one image
//! input: `curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' .../infer`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, TryAcquireError};

use scission_engine::input::{input_fact, output_fact};
use scission_engine::tract::prelude::*;
use scission_runtime::session::{Answer, InferError, Session};

use crate::image::{Preprocess, image_layout, image_tensor, top_k};
use crate::metrics::Metrics;
use crate::protocol::{
    self, HEADER_LENGTH, InferRequest, InputSpec, ModelMetadata, TensorMetadata, datatype_name, error_body, request_tensors,
};
use scission_core::policy::describe_route;

/// How the service answers, besides its session.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The model's name in URLs.
    pub model_name: String,
    /// Preprocessing of image inputs.
    pub preprocess: Preprocess,
    /// Class labels, one per line of the labels file (for `scission_top_k`).
    pub labels: Vec<String>,
    /// How many of the best classes `scission_top_k` lists.
    pub top_k: usize,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Inference requests read, parsed and run at once: each holds its body and tensors, so
    /// this bounds the service's working memory.
    pub max_concurrent: usize,
    /// Inference requests that wait for one of those slots (their bodies not read yet); one
    /// more is answered 503 with `Retry-After`.
    pub max_waiting: usize,
}

impl ServiceOptions {
    /// Options for `model_name` with the defaults: ImageNet preprocessing, no labels, the top
    /// 5 classes, bodies up to 64 MiB, 4 requests at once and 64 waiting.
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            preprocess: Preprocess::default(),
            labels: Vec::new(),
            top_k: 5,
            max_body: 64 << 20,
            max_concurrent: 4,
            max_waiting: 64,
        }
    }
}

/// The service's state: the session, the metrics and what requests are checked against.
pub struct Service {
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    options: ServiceOptions,
    inputs: Vec<InputSpec>,
    outputs: Vec<(String, DatumType, Vec<usize>)>,
    tiers: Vec<u8>,
    /// Slots of [`ServiceOptions::max_concurrent`].
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot.
    waiting: AtomicUsize,
}

/// Why a model cannot be served over the API.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An input or output whose type and shape the engine cannot tell.
    #[error("the model's {kind} {index} cannot be served")]
    Fact {
        /// `input` or `output`.
        kind: &'static str,
        /// Its position among the model's inputs or outputs.
        index: usize,
        /// What the engine said.
        #[source]
        source: scission_engine::EngineError,
    },
}

impl Service {
    /// A service over `session`; `tiers` are the remote tiers it may use (for `tier_up`).
    pub fn new(session: Arc<Session>, metrics: Arc<Metrics>, options: ServiceOptions, tiers: Vec<u8>) -> Result<Self, ServiceError> {
        let model = session.model();
        let fact = |kind, index, source| ServiceError::Fact { kind, index, source };
        let inputs = (0..model.summary.inputs.len())
            .map(|i| {
                let (datum_type, shape) = input_fact(model, i).map_err(|e| fact("input", i, e))?;
                Ok(InputSpec { name: model.summary.tensors[model.summary.inputs[i]].name.clone(), datum_type, shape })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let outputs = (0..model.summary.outputs.len())
            .map(|i| {
                let (datum_type, shape) = output_fact(model, i).map_err(|e| fact("output", i, e))?;
                Ok((model.summary.tensors[model.summary.outputs[i]].name.clone(), datum_type, shape))
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let slots = Arc::new(Semaphore::new(options.max_concurrent.max(1)));
        Ok(Self { session, metrics, options, inputs, outputs, tiers, slots, waiting: AtomicUsize::new(0) })
    }

    /// The model's metadata, as `GET /v2/models/{name}` shows it.
    pub fn metadata(&self) -> ModelMetadata {
        let shape = |s: &[usize]| s.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect();
        let name = |dt: DatumType| datatype_name(dt).unwrap_or("UNSUPPORTED").to_string();
        ModelMetadata {
            name: self.options.model_name.clone(),
            versions: vec![self.session.model().sha256.chars().take(12).collect()],
            platform: "scission_partitioned_onnx".into(),
            inputs: self
                .inputs
                .iter()
                .map(|i| TensorMetadata { name: i.name.clone(), datatype: name(i.datum_type), shape: shape(&i.shape) })
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|(n, dt, s)| TensorMetadata { name: n.clone(), datatype: name(*dt), shape: shape(s) })
                .collect(),
        }
    }

    /// Shows the session's status in the metrics.
    pub fn refresh_metrics(&self) {
        self.metrics.show(&self.session.status(), &self.tiers);
    }
}

/// The routes of the service.
pub fn router(service: Arc<Service>) -> Router {
    let limit = service.options.max_body;
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer).route_layer(middleware::from_fn_with_state(service.clone(), admit)))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint (see /v2, /v2/models/NAME, /v2/health/ready)") })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(service)
}

/// The protocol's error object with `status`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], error_body(message)).into_response()
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode the answer: {e}")),
    }
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "name": "scission-device", "version": env!("CARGO_PKG_VERSION"), "extensions": ["binary_tensor_data"] }),
    )
}

async fn ready(State(service): State<Arc<Service>>) -> Response {
    match service.session.status().not_ready {
        None => json_response(StatusCode::OK, &json!({ "ready": true })),
        Some(reason) => json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({ "ready": false, "error": reason })),
    }
}

/// A 404 when `name` is not the served model.
fn unknown_model(service: &Service, name: &str) -> Option<Response> {
    (name != service.options.model_name)
        .then(|| error(StatusCode::NOT_FOUND, &format!("unknown model '{name}' (this device serves '{}')", service.options.model_name)))
}

async fn model_metadata(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    if let Some(response) = unknown_model(&service, &name) {
        return response;
    }
    json_response(StatusCode::OK, &service.metadata())
}

async fn model_ready(State(service): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    if let Some(response) = unknown_model(&service, &name) {
        return response;
    }
    ready(State(service)).await
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    service.refresh_metrics();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], service.metrics.encode())
        .into_response()
}

async fn status(State(service): State<Arc<Service>>) -> Response {
    let s = service.session.status();
    let links: Vec<Value> =
        s.links.iter().map(|(t, l)| json!({ "tier": t, "bits_per_sec": l.bits_per_sec, "latency_ns": l.latency_ns })).collect();
    json_response(
        StatusCode::OK,
        &json!({
            "ready": s.not_ready.is_none(),
            "reason": s.not_ready,
            "degraded": s.degraded,
            "route": s.route.as_ref().map(|r| describe_route(&r.stages)),
            "predicted_ms": s.route.as_ref().and_then(|r| r.predicted_ns).map(|p| p as f64 * 1e-6),
            "down": s.down,
            "links": links,
            "outstanding": s.outstanding,
        }),
    )
}

/// Lets an inference request in when one of the service's slots is free, or waits for one
/// while fewer than [`ServiceOptions::max_waiting`] wait; otherwise, or while the session is not
/// ready, answers 503 at once with `Retry-After`. The slot is held until the answer is written, so its body is read, parsed
/// and run within it.
async fn admit(State(service): State<Arc<Service>>, request: Request, next: Next) -> Response {
    // With no route to run it on (every planned route through an unreachable tier, nothing to
    // fall back on), a request is refused before its body is read: during an outage clients
    // that retry at once would otherwise have their bodies read and parsed only to fail.
    let for_this_model = request.uri().path().split('/').nth(3) == Some(service.options.model_name.as_str());
    if for_this_model && let Some(reason) = service.session.status().not_ready {
        service.metrics.refused("unavailable");
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {reason}"));
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    }
    let slot = match service.slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(TryAcquireError::Closed) => return error(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping"),
        Err(TryAcquireError::NoPermits) => {
            let ahead = service.waiting.fetch_add(1, Ordering::SeqCst);
            if ahead >= service.options.max_waiting {
                service.waiting.fetch_sub(1, Ordering::SeqCst);
                service.metrics.refused("overloaded");
                return overloaded(&service);
            }
            service.metrics.waiting(ahead.saturating_add(1));
            let slot = service.slots.clone().acquire_owned().await;
            let left = service.waiting.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
            service.metrics.waiting(left);
            match slot {
                Ok(slot) => slot,
                Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "the service is stopping"),
            }
        }
    };
    let response = next.run(request).await;
    drop(slot);
    response
}

/// 503 with `Retry-After: 1`: every slot is taken and the waiting line is full.
fn overloaded(service: &Service) -> Response {
    let message = format!(
        "overloaded: {} requests are being served and {} wait (the [api] max_concurrent and max_waiting limits); try again",
        service.options.max_concurrent, service.options.max_waiting
    );
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &message);
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

/// A request as read: its inputs in model order, and how to answer it.
struct Parsed {
    inputs: TVec<TValue>,
    request: Option<InferRequest>,
    from_image: bool,
}

async fn infer(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(response) = unknown_model(&service, &name) {
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            service.metrics.refused("bad_input");
            return error(rejection.status(), &rejection.body_text());
        }
    };
    let reader = service.clone();
    let parsed = tokio::task::spawn_blocking(move || parse(&reader, &headers, &body)).await;
    let parsed = match parsed {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(message)) => {
            service.metrics.refused("bad_input");
            return error(StatusCode::BAD_REQUEST, &message);
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("reading the request failed: {e}")),
    };
    match service.session.infer(parsed.inputs).await {
        Ok(answer) => respond(&service, parsed.request.as_ref(), parsed.from_image, answer),
        Err(e) => {
            if matches!(e, InferError::BadInput(_)) {
                service.metrics.refused(e.kind());
            }
            error(status_of(&e), &e.to_string())
        }
    }
}

fn status_of(error: &InferError) -> StatusCode {
    match error {
        InferError::BadInput(_) => StatusCode::BAD_REQUEST,
        InferError::Unavailable(_) | InferError::Busy(_) | InferError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        InferError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Reads the body: an encoded image, or the protocol's JSON (and binary) request.
fn parse(service: &Service, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("image/") {
        let index = image_input(service)?;
        let tensor = image_tensor(body, &service.inputs[index], service.options.preprocess).map_err(|e| e.0)?;
        return Ok(Parsed { inputs: tvec![tensor.into_tvalue()], request: None, from_image: true });
    }
    let length = headers.get(HEADER_LENGTH).map(|v| v.to_str().unwrap_or("?"));
    let (json, binary) = protocol::split_body(body, length).map_err(|e| e.0)?;
    let request = protocol::parse_request(json).map_err(|e| e.0)?;
    let (mut tensors, images) = request_tensors(json, &request, binary, &service.inputs).map_err(|e| e.0)?;
    let from_image = !images.is_empty();
    for image in images {
        let tensor = image_tensor(image.bytes, &service.inputs[image.index], service.options.preprocess).map_err(|e| e.0)?;
        tensors[image.index] = Some(tensor);
    }
    let inputs =
        tensors.into_iter().map(|t| t.map(Tensor::into_tvalue).ok_or("an input is missing".to_string())).collect::<Result<_, _>>()?;
    Ok(Parsed { inputs, request: Some(request), from_image })
}

/// The model's one image input.
fn image_input(service: &Service) -> Result<usize, String> {
    match service.inputs.as_slice() {
        [only] if image_layout(&only.shape).is_some() => Ok(0),
        [only] => Err(format!("an image body needs an image input; '{}' has shape {:?}", only.name, only.shape)),
        many => Err(format!("an image body needs a model with one input; this one has {}", many.len())),
    }
}

/// The protocol's response: JSON, or JSON then binary outputs.
fn respond(service: &Service, request: Option<&InferRequest>, from_image: bool, answer: Answer) -> Response {
    let names: Vec<String> = service.outputs.iter().map(|(n, _, _)| n.clone()).collect();
    let wanted = match request.map(|r| protocol::wanted_outputs(r, &names)).transpose() {
        Ok(wanted) => wanted.unwrap_or_else(|| (0..names.len()).collect()),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.0),
    };
    let binary_flag = request.map(protocol::binary_outputs);
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    for index in wanted {
        let Some((_, value)) = answer.outputs.get(index) else { return error(StatusCode::INTERNAL_SERVER_ERROR, "an output is missing") };
        let as_binary = binary_flag.as_ref().is_some_and(|f| f(&names[index]));
        match protocol::response_output(&names[index], value, as_binary, &mut binary) {
            Ok(output) => outputs.push(output),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.0),
        }
    }
    let parameters = answer_parameters(service, &answer, from_image);
    let response = protocol::InferResponse {
        model_name: service.options.model_name.clone(),
        id: request.and_then(|r| r.id.clone()),
        parameters,
        outputs,
    };
    let Ok(json) = serde_json::to_vec(&response) else { return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the answer") };
    if binary.is_empty() {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response();
    }
    let length = json.len().to_string();
    let mut body = json;
    body.extend_from_slice(&binary);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream".to_string()), (header::HeaderName::from_static(HEADER_LENGTH), length)],
        body,
    )
        .into_response()
}

/// Scission's response parameters: the route, the times, and the top classes when asked.
fn answer_parameters(service: &Service, answer: &Answer, from_image: bool) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("scission_route".into(), describe_route(&answer.route.stages).into());
    p.insert("scission_rank".into(), (answer.rank + 1).into());
    p.insert("scission_degraded".into(), answer.degraded.into());
    p.insert("scission_total_ms".into(), ms(answer.total_ns));
    p.insert("scission_latency_ms".into(), ms(answer.latency_ns));
    if let Some(predicted) = answer.route.predicted_ns {
        p.insert("scission_predicted_ms".into(), ms(predicted));
    }
    let computes: Vec<String> = answer.timings.iter().map(|t| format!("tier{}={:.3}", t.tier, t.compute_ns as f64 * 1e-6)).collect();
    p.insert("scission_compute_ms".into(), computes.join(",").into());
    if (from_image || !service.options.labels.is_empty())
        && let Some(line) = top_line(service, answer)
    {
        p.insert("scission_top_k".into(), line.into());
    }
    p
}

fn ms(ns: u64) -> Value {
    serde_json::Number::from_f64(ns as f64 * 1e-6).map_or(Value::Null, Value::Number)
}

/// `label (score), ...` for the first output when it is one f32 score vector.
pub(crate) fn top_line(service: &Service, answer: &Answer) -> Option<String> {
    let (_, first) = answer.outputs.first()?;
    if first.datum_type() != DatumType::F32 || first.shape().iter().filter(|&&d| d > 1).count() != 1 {
        return None;
    }
    let scores = first.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    let best = top_k(scores, service.options.top_k.max(1), &service.options.labels);
    Some(
        best.iter()
            .map(|(i, s, l)| format!("{} ({s:.4})", l.map_or_else(|| format!("class {i}"), str::to_string)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Where the service listens.
#[derive(Clone, Debug, Default)]
pub struct Listen {
    /// A TCP address (loopback by default: the API is for the board's own applications).
    pub tcp: Option<SocketAddr>,
    /// A Unix socket path.
    pub unix: Option<PathBuf>,
}

/// Serves `service` on `listen` until `shutdown` resolves; then stops accepting and lets the
/// requests in flight finish. `on_bound` gets the TCP address actually bound (port 0 picks one).
pub async fn serve(
    service: Arc<Service>,
    listen: &Listen,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Option<SocketAddr>),
) -> std::io::Result<()> {
    let app = router(service);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = None;
    if let Some(addr) = listen.tcp {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        bound = Some(listener.local_addr()?);
        let (app, rx) = (app.clone(), stop_rx.clone());
        tasks.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped(rx)).await });
    }
    if let Some(path) = &listen.unix {
        remove_stale_socket(path)?;
        let listener = tokio::net::UnixListener::bind(path)?;
        let rx = stop_rx.clone();
        let app = app.clone();
        tasks.spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped(rx)).await });
    }
    on_bound(bound);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    while let Some(done) = tasks.join_next().await {
        done.map_err(std::io::Error::other)??;
    }
    Ok(())
}

/// A socket file left by an earlier run is removed; anything else at the path is an error.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(std::io::Error::other(format!("{} exists and is not a socket", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
