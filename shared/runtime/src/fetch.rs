//! Fetching the model file from the cloud in chunks, verified by SHA-256, for a tier that does
//! not have it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use scission_core::wire::message::{Body, decode, encode};
use scission_net::quic::{connect, exchange};

/// Bytes asked for per chunk.
const CHUNK: u32 = 4 << 20;

/// Downloads the model served at `addr` into `path` (through a temporary file, renamed only
/// once the SHA-256 matches); `progress(done, total)` follows the bytes.
pub async fn fetch_model(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    path: &Path,
    max_frame: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let connection = connect(endpoint, addr).await?;
    let tmp = path.with_extension(format!("part{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut hasher = Sha256::new();
    let (mut offset, mut expected): (u64, Option<(u64, [u8; 32])>) = (0, None);
    loop {
        let request = encode(&Body::FetchModel { offset, max_len: CHUNK })?;
        let answer = exchange(&connection, &request, max_frame).await?;
        match decode(&answer).map_err(|e| anyhow::anyhow!("malformed chunk: {e}"))? {
            Body::ModelChunk { total, sha256, offset: at, data } => {
                if at != offset || expected.is_some_and(|e| e != (total, sha256)) {
                    bail!("the model changed while it was being fetched");
                }
                expected = Some((total, sha256));
                file.write_all(data)?;
                hasher.update(data);
                offset = offset.saturating_add(data.len() as u64);
                progress(offset, total);
                if offset > total {
                    bail!("the server sent {offset} bytes of a {total}-byte model");
                }
                if offset == total {
                    break;
                }
                if data.is_empty() {
                    bail!("the server sent an empty chunk at {offset} of {total}");
                }
            }
            Body::Failure { message, .. } => bail!("the server cannot send its model: {message}"),
            _ => bail!("unexpected answer to a model fetch"),
        }
    }
    let (_, sha256) = expected.context("no chunk arrived")?;
    if hasher.finalize().as_slice() != sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!("the fetched model's SHA-256 does not match the server's; nothing was kept");
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move the model to {}", path.display()))
}

/// [`fetch_model`] from a blocking caller: connects as `name` of the cluster in `cluster`.
pub fn fetch_model_blocking(
    cluster: &Path,
    name: &str,
    addr: SocketAddr,
    path: &Path,
    max_frame: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let identity = scission_net::pki::Identity::load(cluster, name)?;
    crate::async_runtime()?.block_on(async { fetch_model(&scission_net::quic::client(&identity)?, addr, path, max_frame, progress).await })
}
