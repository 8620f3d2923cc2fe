//! `scission-device serve` (the long-running service with the local inference API),
//! `scission-device infer` (one input through the same session, from the command line) and
//! `scission-device check-config`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use scission_cli::FetchBar;
use scission_core::policy::describe_route;
use scission_core::wire::frame::DEFAULT_MAX_FRAME;
use scission_engine::tract::prelude::*;
use scission_runtime::fetch::{Expected, fetch_model_blocking};
use scission_runtime::node::Slices;
use scission_runtime::session::{DeviceEvent, Observer, Session, SessionConfig};
use scission_serving::http::{self, Listen, Service, ServiceOptions};
use scission_serving::image::{image_tensor, top_k};
use scission_serving::metrics::Metrics;
use scission_serving::protocol::InputSpec;

use crate::config::{Config, Overrides};

/// Arguments of `serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    overrides: Overrides,
}

/// Arguments of `infer`.
#[derive(Clone, Debug, clap::Args)]
pub struct InferArgs {
    /// An image (JPEG, PNG) or a `.npy` array of the model's input.
    input: PathBuf,
    #[command(flatten)]
    overrides: Overrides,
}

/// Arguments of `check-config`.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    overrides: Overrides,
}

/// Says what the configuration lacks, or that it can start.
pub fn check_config(args: &CheckArgs) -> Result<String> {
    let config = args.overrides.load()?;
    let problems = config.problems();
    if problems.is_empty() {
        return Ok(format!("the configuration can start: model {}, API on {}\n", config.model.display(), api_places(&config)));
    }
    refuse(&problems, " yet")
}

/// Lists the problems on stderr, one per line, and fails.
fn refuse(problems: &[String], when: &str) -> Result<String> {
    for problem in problems {
        eprintln!("  - {problem}");
    }
    bail!("the configuration cannot start{when}: {} problem(s), listed above", problems.len())
}

fn api_places(config: &Config) -> String {
    let tcp = (!config.api.listen.is_empty()).then(|| format!("http://{}", config.api.listen));
    let unix = config.api.unix_socket.as_ref().map(|p| format!("unix:{}", p.display()));
    tcp.into_iter().chain(unix).collect::<Vec<_>>().join(" and ")
}

/// Loads the configuration, refusing to start while something is missing; the session it opens;
/// and the model (fetched from the cloud first when configured so).
fn prepare(overrides: &Overrides) -> Result<(Config, SessionConfig, Slices)> {
    let config = overrides.load()?;
    let problems = config.problems();
    if !problems.is_empty() {
        refuse(&problems, "")?;
    }
    let session = config.session()?;
    if config.fetch_model && !config.model.exists() {
        fetch(&config, &session)?;
    }
    let pinned = crate::config::pinned_model(&session.planning)?;
    let options = scission_engine::LoadOptions { input_shapes: config.input_shapes.clone() };
    let slices = crate::config::open_slices(&config.model, &options, pinned, &session)
        .with_context(|| format!("cannot load the model {}", config.model.display()))?;
    Ok((config, session, slices))
}

fn fetch(config: &Config, session: &SessionConfig) -> Result<()> {
    let Some(cloud) = &session.cloud else { bail!("fetch_model needs a [cloud]") };
    let sha256 = crate::config::pinned_model(&session.planning)?;
    let mut bar = FetchBar::new("the model");
    let expected = Expected { sha256, ..Expected::default() };
    fetch_model_blocking(&config.cluster, &config.name, cloud, &config.model, DEFAULT_MAX_FRAME, expected, &mut |d, t| bar.update(d, t))?;
    Ok(())
}

/// How long the service's allocator keeps freed memory for reuse before handing it back, in
/// milliseconds (mimalloc's purge delay; `MIMALLOC_PURGE_DELAY` overrides it).
const FREED_MEMORY_KEPT_MS: u32 = 0;

/// Runs the service until SIGTERM or Ctrl-C; requests in flight then finish.
pub fn serve(args: &ServeArgs) -> Result<String> {
    let (config, session_config, model) = prepare(&args.overrides)?;
    use scission_core::policy::{CLOUD_TIER, EDGE_TIER};
    let tiers: Vec<u8> = [(EDGE_TIER, session_config.edge.is_some()), (CLOUD_TIER, session_config.cloud.is_some())]
        .into_iter()
        .filter_map(|(t, given)| given.then_some(t))
        .collect();
    let options = ServiceOptions {
        model_name: config.model_name(),
        preprocess: config.preprocess(),
        labels: config.labels()?,
        top_k: config.image.top_k,
        max_body: config.api.max_body_mib.saturating_mul(1 << 20),
        max_concurrent: config.api.max_concurrent.max(1),
        max_waiting: config.api.max_waiting,
    };
    let listen = Listen {
        tcp: (!config.api.listen.is_empty()).then(|| config.api.listen.parse()).transpose().context("[api] listen")?,
        unix: config.api.unix_socket.clone(),
    };
    // Memory stays flat on a small board: few blocking threads (each keeps allocator caches),
    // and freed memory handed back soon (see the README's memory table).
    scission_engine::heap::return_freed_memory_after(FREED_MEMORY_KEPT_MS);
    let blocking = scission_runtime::client::compute_slots(config.threads.max(1)).saturating_add(1).max(2);
    scission_runtime::async_runtime_with_blocking(blocking)?.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let counted = metrics.clone();
        let observer: Observer = Arc::new(move |event: &DeviceEvent| {
            counted.observe(event);
            log_event(event);
        });
        let session = Arc::new(Session::open(session_config, model, Some(observer)).await?);
        // The model is loaded: what is allocated from now on comes and goes with requests.
        scission_engine::heap::set_huge_pages(false);
        let closing = session.clone();
        let status = session.status();
        let service = Arc::new(Service::new(session, metrics, options.clone(), tiers)?);
        let name = options.model_name.clone();
        http::serve(service, &listen, shutdown_signal(), |bound| {
            let place = bound.map_or_else(|| api_places(&config), |addr| format!("http://{addr}"));
            let plan = status.route.as_ref().map_or_else(|| "none yet".to_string(), |r| describe_route(&r.stages));
            let state = status
                .not_ready
                .as_deref()
                .map_or_else(|| if status.degraded { "degraded" } else { "ready" }.to_string(), |r| format!("not ready: {r}"));
            println!("serving model '{name}' on {place} ({state}; plan: {plan})");
            let _ = std::io::stdout().flush();
        })
        .await
        .context("the API stopped")?;
        closing.close_connections().await;
        Ok(String::from("stopped: requests in flight have finished\n"))
    })
}

/// Resolves on SIGTERM (systemd's stop) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

/// The service's structured log of what the session does.
fn log_event(event: &DeviceEvent) {
    match event {
        DeviceEvent::Plan { route } => tracing::info!(route = %describe_route(route), "first plan"),
        DeviceEvent::Switched { cause, to, .. } => tracing::info!(route = %describe_route(to), ?cause, "plan switch"),
        DeviceEvent::FailedOver { request, tier, reason } => tracing::warn!(request, tier, %reason, "failing over"),
        // The session logs these itself.
        DeviceEvent::TierDown { .. } | DeviceEvent::TierUp { .. } => {}
        DeviceEvent::Completed { request, total_ns, degraded, .. } => {
            tracing::debug!(request, ms = *total_ns as f64 * 1e-6, degraded, "request done")
        }
        DeviceEvent::Failed { request, error } => tracing::warn!(request, %error, "request failed"),
        DeviceEvent::LinkChanged { .. } => {}
    }
}

/// Runs one input through the session and prints the route, the times and the top classes.
pub fn infer(args: &InferArgs) -> Result<String> {
    let (config, session_config, model) = prepare(&args.overrides)?;
    let input = read_input(&config, model.graph(), &args.input)?;
    let labels = config.labels()?;
    scission_runtime::async_runtime()?.block_on(async move {
        let session = Session::open(session_config, model, None).await?;
        let answer = session.infer(tvec![input.into_tvalue()]).await?;
        let mut out = format!(
            "route: {}{} in {:.2} ms\n",
            describe_route(&answer.route.stages),
            if answer.degraded { " (degraded: edge and cloud unreachable)" } else { "" },
            answer.total_ns as f64 * 1e-6
        );
        if let Some((_, first)) = answer.outputs.first()
            && first.datum_type() == DatumType::F32
        {
            let scores = first.try_as_plain_ram()?.as_slice::<f32>()?;
            for (rank, (class, score, label)) in top_k(scores, config.image.top_k.max(1), &labels).into_iter().enumerate() {
                let label = label.map_or_else(|| format!("class {class}"), str::to_string);
                out.push_str(&format!("{:>2}. {label} ({score:.4})\n", rank + 1));
            }
        }
        Ok(out)
    })
}

/// An image or a `.npy` array as the model's (single) input.
fn read_input(config: &Config, model: &scission_engine::ModelGraph, path: &Path) -> Result<Tensor> {
    let [_] = model.summary.inputs[..] else { bail!("`infer` takes one input, but the model has {}", model.summary.inputs.len()) };
    let (datum_type, shape) = scission_engine::input::input_fact(model, 0)?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        return Ok(scission_engine::npy::read_npy(path)?);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec = InputSpec { name: model.summary.tensors[model.summary.inputs[0]].name.clone(), datum_type, shape };
    image_tensor(&bytes, &spec, config.preprocess()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
