//! Command-line entry points of the runtime: `init` and `enroll` (cluster certificates) and
//! `serve` (edge and cloud). The device's `run` lives in [`device_run`](super::device_run) and is
//! re-exported here.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::prelude::rust_2024::*;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

pub use super::device_run::{EncodingArg, RunArgs, run_device};
use super::node::Node;
use super::server::{StageServer, Upstream};
use crate::cli::ModelArgs;
use crate::net::{pki, quic};
use crate::profile::TierKind;
use crate::wire::frame::DEFAULT_MAX_FRAME;

/// Where the cluster's certificates live.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// Cluster directory (CA and node certificates, from `scission-cloud init` and `enroll`).
    #[arg(long, default_value = "cluster")]
    pub cluster: PathBuf,
}

/// Arguments of `enroll`.
#[derive(Clone, Debug, clap::Args)]
pub struct EnrollArgs {
    /// Node name (used with --name when the node starts).
    pub name: String,
    /// The node's tier (recorded for the operator; every node may act as client and server).
    #[arg(long, value_parser = ["device", "edge", "cloud"])]
    pub tier: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
}

/// Runs `init`: a new cluster CA.
pub fn run_init(args: &ClusterArgs) -> Result<()> {
    pki::init_cluster(&args.cluster)?;
    println!(
        "created the cluster CA in {}; enroll nodes with `scission-cloud enroll NAME --tier edge|device|cloud`",
        args.cluster.display()
    );
    Ok(())
}

/// Runs `enroll`: a key and certificate for one node.
pub fn run_enroll(args: &EnrollArgs) -> Result<()> {
    let (cert, key) = pki::enroll(&args.cluster.cluster, &args.name)?;
    println!("enrolled {} ({}): {} and {}; copy them with ca.cert.pem to the node", args.name, args.tier, cert.display(), key.display());
    Ok(())
}

/// Arguments of `serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// UDP address to listen on (port 0 picks a free one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub cluster: ClusterArgs,
    /// This node's enrolled name (default: its tier).
    #[arg(long)]
    pub name: Option<String>,
    /// Engine threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest frame accepted, in MiB.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME >> 20)]
    pub max_frame_mib: u32,
    /// This machine's benchmark profile (from `bench`). The cloud plans with it; an edge sends
    /// it to the cloud with its measured link when it starts.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// When the model file is missing, fetch it from the next tier (chunked, SHA-256 checked).
    #[arg(long)]
    pub fetch_model: bool,
}

/// A multi-threaded async runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Runs `serve` as `tier`, forwarding later stages to `upstream` (the edge's cloud).
pub fn run_serve(args: &ServeArgs, tier: TierKind, upstream: Option<SocketAddr>) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(|| tier.as_str().to_string());
    let identity = pki::Identity::load(&args.cluster.cluster, &name)?;
    let threads = args.threads.unwrap_or_else(crate::host::available_cores);
    let max_frame = args.max_frame_mib.saturating_mul(1 << 20);
    let path = args.model.path()?;
    let runtime = runtime()?;
    if args.fetch_model && !path.exists() {
        let from = upstream.context("--fetch-model needs a next tier to fetch from")?;
        runtime.block_on(async { super::fetch::fetch_model(&quic::client(&identity)?, from, &path, max_frame).await })?;
    }
    let node = Arc::new(Node::new(args.model.load()?, tier_index(tier), threads)?);
    let profile = args.profile.as_deref().map(crate::cli::read_profile).transpose()?;
    let mut server = StageServer::new(node.clone(), None, max_frame).with_model_file(super::planner::ModelFile::new(path, node.sha256)?);
    if let (TierKind::Cloud, Some(p)) = (tier, &profile) {
        server = server.with_planner(super::planner::Planner::new(p.clone()));
    }
    runtime.block_on(async move {
        let endpoint = quic::server(&identity, args.listen)?;
        if let Some(addr) = upstream {
            let client = quic::client(&identity)?;
            if let Some(p) = &profile {
                let json = serde_json::to_vec(p)?;
                if let Err(e) = register_once(&client, addr, &name, &json, max_frame).await {
                    tracing::warn!("registration with the cloud failed ({e:#}); retrying in the background");
                    tokio::spawn(register(client.clone(), addr, name.clone(), json, max_frame));
                }
            }
            server = server.with_upstream(Upstream::new(client, addr));
        }
        let addr = endpoint.local_addr()?;
        println!("scission-{} '{name}' serving {} on {addr}", tier.as_str(), node.model.name);
        std::io::stdout().flush()?;
        Arc::new(server).serve(endpoint).await;
        Ok(())
    })
}

/// Registers an edge with the cloud: measures the link, sends the profile.
async fn register_once(client: &quinn::Endpoint, cloud: SocketAddr, name: &str, profile: &[u8], max_frame: u32) -> Result<()> {
    use crate::wire::message::{Body, decode, encode};
    let connection = quic::connect(client, cloud).await?;
    let link = quic::measure(&connection, 64 * 1024, std::time::Duration::from_secs(10), max_frame).await?;
    let mut label = heapless::String::new();
    for c in name.chars() {
        label.push(c).map_err(|_| anyhow::anyhow!("node name too long"))?;
    }
    let message = encode(&Body::Register { name: label, tier: 1, profile, link_to_cloud: Some(link) })?;
    match decode(&quic::exchange(&connection, &message, max_frame).await?) {
        Ok(Body::Registered) => {
            tracing::info!(
                "registered with the cloud; link {:.1} Mbit/s, {:.2} ms",
                link.bits_per_sec as f64 * 1e-6,
                link.latency_ns as f64 * 1e-6
            );
            Ok(())
        }
        Ok(Body::Failure { message, .. }) => bail!("the cloud refused the registration: {message}"),
        _ => bail!("unexpected answer to a registration"),
    }
}

/// Retries the registration every second for a minute (the cloud may start later).
async fn register(client: quinn::Endpoint, cloud: SocketAddr, name: String, profile: Vec<u8>, max_frame: u32) {
    for attempt in 0..60 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match register_once(&client, cloud, &name, &profile, max_frame).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("registration attempt {} failed: {e:#}", attempt + 2),
        }
    }
}

/// The tier's index in the default chain.
pub fn tier_index(tier: TierKind) -> u8 {
    match tier {
        TierKind::Device => 0,
        TierKind::Edge => 1,
        TierKind::Cloud => 2,
    }
}
