//! An edge or cloud server: loads the model, serves its stages over QUIC, forwards later
//! stages upstream, and (an edge with a profile) registers with the cloud's planner.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{Result, bail};

use scission_core::profile::{Profile, TierKind};
use scission_core::wire::message::{Body, decode, encode};
use scission_engine::Model;
use scission_net::{pki, quic};

use crate::node::Node;
use crate::peer::Peer;
use crate::planner::{ModelFile, Planner};
pub use crate::server::Limits;
use crate::server::{StageServer, Upstream};

/// Everything a server needs besides its loaded model.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The cluster directory.
    pub cluster: std::path::PathBuf,
    /// This node's enrolled name.
    pub name: String,
    /// The tier it serves.
    pub tier: TierKind,
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The next tier (the edge's cloud).
    pub upstream: Option<Peer>,
    /// Engine threads.
    pub threads: usize,
    /// What the server takes on at once.
    pub limits: Limits,
    /// This machine's profile: the cloud plans with it, an edge registers it.
    pub profile: Option<Profile>,
    /// The model file, served to tiers that lack it.
    pub model_file: std::path::PathBuf,
}

/// The server is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The bound address.
    pub addr: SocketAddr,
    /// The model's name.
    pub model: String,
}

/// The tier's index in the default chain.
pub fn tier_index(tier: TierKind) -> u8 {
    match tier {
        TierKind::Device => 0,
        TierKind::Edge => 1,
        TierKind::Cloud => 2,
    }
}

/// Serves `model` until the process ends; `on_ready` is called once the endpoint is bound.
pub fn serve(config: &ServeConfig, model: Model, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let identity = pki::Identity::load(&config.cluster, &config.name)?;
    let node = Arc::new(Node::new(model, tier_index(config.tier), config.threads)?.with_slice_cache(config.limits.slice_cache));
    let deny = Arc::new(pki::DenyList::new(&config.cluster));
    let mut server = StageServer::new(node.clone(), config.limits)
        .with_revocations(deny.clone())
        .with_model_file(ModelFile::new(config.model_file.clone(), node.sha256)?);
    if let (TierKind::Cloud, Some(p)) = (config.tier, &config.profile) {
        server = server.with_planner(
            Planner::new(p.clone()).with_registry(config.limits.registrations, config.limits.registration_ttl).with_deny_list(deny.clone()),
        );
    }
    crate::async_runtime()?.block_on(async move {
        let endpoint = quic::server_with_streams(&identity, config.listen, Some(deny), config.limits.streams_per_connection)?;
        if let Some(cloud) = &config.upstream {
            let client = quic::client(&identity)?;
            if let Some(p) = &config.profile {
                let json = serde_json::to_vec(p)?;
                if let Err(e) = register_once(&client, cloud, &config.name, &json, config.limits.max_frame).await {
                    tracing::warn!("registration with the cloud failed ({e:#}); retrying in the background");
                    tokio::spawn(register(client.clone(), cloud.clone(), config.name.clone(), json, config.limits.max_frame));
                }
            }
            server = server.with_upstream(Upstream::new(client, cloud.addr, &cloud.name));
        }
        on_ready(&Ready { addr: endpoint.local_addr()?, model: node.graph().name.clone() });
        Arc::new(server).serve(endpoint).await;
        Ok(())
    })
}

/// Registers an edge with the cloud: measures the link, sends the profile.
async fn register_once(client: &quinn::Endpoint, cloud: &Peer, name: &str, profile: &[u8], max_frame: u32) -> Result<()> {
    let connection = quic::connect(client, cloud.addr, &cloud.name).await?;
    let link = quic::measure(&connection, 64 * 1024, std::time::Duration::from_secs(10), max_frame).await?;
    let mut label = heapless::String::new();
    for c in name.chars() {
        label.push(c).map_err(|_| crate::error::error!("node name '{name}' is too long for the wire"))?;
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
async fn register(client: quinn::Endpoint, cloud: Peer, name: String, profile: Vec<u8>, max_frame: u32) {
    for attempt in 0..60 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match register_once(&client, &cloud, &name, &profile, max_frame).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("registration attempt {} failed: {e:#}", attempt + 2),
        }
    }
}
