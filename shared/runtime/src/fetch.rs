//! Fetching the model file from the cloud in chunks, for a tier that does not have it: checked
//! against a pinned SHA-256 when the caller knows one (from its profile), capped in size,
//! written to a fresh temporary file (never through a link planted in its place) that is
//! renamed only once complete and verified, and removed on any failure.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Context, Result, bail};
use sha2::{Digest, Sha256};

use scission_core::cut::Block;
use scission_core::wire::message::{Body, decode, encode};
use scission_engine::artifact::ArtifactDir;
use scission_net::quic::{connect, exchange};

use crate::peer::Peer;

/// Bytes asked for per chunk.
const CHUNK: u32 = 4 << 20;

/// Largest model accepted unless the caller says otherwise: 4 GiB.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 4 << 30;

/// What the fetched file must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Its SHA-256, when known; without it the server's word is taken (and logged).
    pub sha256: Option<[u8; 32]>,
    /// The most bytes accepted.
    pub max_bytes: u64,
}

impl Default for Expected {
    fn default() -> Self {
        Self { sha256: None, max_bytes: DEFAULT_MAX_MODEL_BYTES }
    }
}

/// A temporary file removed unless kept.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Downloads the model served at `addr` into `path`; `progress(done, total)` follows the bytes.
pub async fn fetch_model(
    endpoint: &quinn::Endpoint,
    from: &Peer,
    path: &Path,
    max_frame: u32,
    expected: Expected,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<()> {
    let ask = |offset| Body::FetchModel { offset, max_len: CHUNK };
    fetch_file(endpoint, from, path, max_frame, expected, &ask, progress).await
}

/// Downloads the artifact of slice `block` of the model `from` serves into the directory of
/// `artifacts` and adds it there (it must be a slice of the same model).
pub async fn fetch_slice(
    endpoint: &quinn::Endpoint,
    from: &Peer,
    artifacts: &ArtifactDir,
    block: Block,
    max_frame: u32,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<PathBuf> {
    let path = fetch_slice_file(endpoint, from, artifacts.dir(), block, max_frame, progress).await?;
    match artifacts.insert(&path) {
        Ok(got) if got == block => Ok(path),
        Ok(got) => {
            let _ = std::fs::remove_file(&path);
            bail!("asked for slice [{}, {}) and got [{}, {})", block.start, block.end, got.start, got.end)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e.into())
        }
    }
}

/// Downloads the artifact of slice `block` into `dir`, under its usual file name.
async fn fetch_slice_file(
    endpoint: &quinn::Endpoint,
    from: &Peer,
    dir: &Path,
    block: Block,
    max_frame: u32,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<PathBuf> {
    let (Ok(start), Ok(end)) = (u32::try_from(block.start), u32::try_from(block.end)) else { bail!("slice range too large") };
    let path = dir.join(scission_engine::artifact::file_name(block));
    let ask = move |offset| Body::FetchSlice { start, end, offset, max_len: CHUNK };
    let expected = Expected { sha256: None, max_bytes: DEFAULT_MAX_MODEL_BYTES };
    fetch_file(endpoint, from, &path, max_frame, expected, &ask, progress).await?;
    Ok(path)
}

/// Downloads the file whose chunks `ask(offset)` requests into `path`.
async fn fetch_file(
    endpoint: &quinn::Endpoint,
    from: &Peer,
    path: &Path,
    max_frame: u32,
    expected: Expected,
    ask: &(dyn Fn(u64) -> Body<'static> + Sync),
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<()> {
    let connection = connect(endpoint, from.addr, &from.name).await?;
    let mut partial = Partial { path: path.with_extension(format!("part{}", std::process::id())), kept: false };
    // create_new never follows a link planted at the temporary name.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial.path)
        .with_context(|| format!("cannot create {}", partial.path.display()))?;
    let mut hasher = Sha256::new();
    let (mut offset, mut announced): (u64, Option<(u64, [u8; 32])>) = (0, None);
    loop {
        let request = encode(&ask(offset))?;
        let answer = exchange(&connection, request, max_frame).await?;
        match decode(&answer).map_err(|e| crate::error::error!("malformed chunk: {e}"))? {
            Body::ModelChunk { total, sha256, offset: at, data } => {
                if at != offset || announced.is_some_and(|a| a != (total, sha256)) {
                    bail!("the file changed while it was being fetched");
                }
                if announced.is_none() {
                    check_announced(total, sha256, expected)?;
                }
                announced = Some((total, sha256));
                if data.len() > CHUNK as usize {
                    bail!("the server sent a chunk of {} bytes, more than the {CHUNK} asked for", data.len());
                }
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
    let (_, sha256) = announced.context("no chunk arrived")?;
    if hasher.finalize().as_slice() != sha256 {
        bail!("the fetched model's SHA-256 does not match; nothing was kept");
    }
    file.sync_all()?;
    std::fs::rename(&partial.path, path).with_context(|| format!("cannot move the model to {}", path.display()))?;
    partial.kept = true;
    Ok(())
}

/// The server's announced size and hash against what the caller expects.
fn check_announced(total: u64, sha256: [u8; 32], expected: Expected) -> Result<()> {
    if total > expected.max_bytes {
        bail!("the server's model is {total} bytes, more than the {} accepted", expected.max_bytes);
    }
    match expected.sha256 {
        Some(pinned) if pinned != sha256 => bail!("the server serves another model than the one expected (its SHA-256 differs)"),
        Some(_) => Ok(()),
        None => {
            tracing::warn!("no SHA-256 pinned for the model; trusting the server's");
            Ok(())
        }
    }
}

/// [`fetch_model`] from a blocking caller: connects as `name` of the cluster in `cluster`.
pub fn fetch_model_blocking(
    cluster: &Path,
    name: &str,
    from: &Peer,
    path: &Path,
    max_frame: u32,
    expected: Expected,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<()> {
    let identity = scission_net::pki::Identity::load(cluster, name)?;
    crate::async_runtime()?
        .block_on(async { fetch_model(&scission_net::quic::client(&identity)?, from, path, max_frame, expected, progress).await })
}

/// Opens the slice artifacts in `dir`; when it holds none yet, first fetches the one-node
/// artifact `[0, 1)` from `from` (the smallest one; its manifest describes the whole model), so
/// a device can start from an empty directory. Connects as `name` of the cluster in `cluster`.
pub fn open_artifacts_blocking(
    cluster: &Path,
    name: &str,
    from: Option<&Peer>,
    dir: &Path,
    pinned: Option<&str>,
    max_frame: u32,
) -> Result<ArtifactDir> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let empty = std::fs::read_dir(dir)?.filter_map(|e| e.ok()).all(|e| e.path().extension().is_none_or(|x| x != "slice"));
    if let (true, Some(from)) = (empty, from) {
        let identity = scission_net::pki::Identity::load(cluster, name)?;
        crate::async_runtime()?.block_on(async {
            let endpoint = scission_net::quic::client(&identity)?;
            fetch_slice_file(&endpoint, from, dir, Block { start: 0, end: 1 }, max_frame, &mut |_, _| {}).await
        })?;
    }
    Ok(ArtifactDir::open(dir, pinned)?)
}
