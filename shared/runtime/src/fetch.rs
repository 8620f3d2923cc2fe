//! Fetching the model file from the cloud in chunks, for a tier that does not have it: checked
//! against a pinned SHA-256 when the caller knows one (from its profile), capped in size,
//! written to a fresh temporary file (never through a link planted in its place) that is
//! renamed only once complete and verified.
//!
//! Resumable: a fetch that breaks off keeps what it received under a name that records the
//! file's size and SHA-256 as the server announced them, and the next fetch of the same file
//! continues from there (hashing the kept bytes again, so the final check still covers every
//! byte). A file whose final hash does not match is removed, never kept for resuming.

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

/// A temporary file: removed unless kept, or moved to `resume` for a later fetch.
struct Partial {
    path: PathBuf,
    kept: bool,
    /// Where to leave the bytes received so far if the fetch breaks off.
    resume: Option<PathBuf>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let moved = self.resume.as_ref().is_some_and(|to| std::fs::rename(&self.path, to).is_ok());
        if moved {
            tracing::info!("kept an interrupted download for the next attempt to resume");
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where an interrupted fetch of `path` keeps its bytes, for a fetch of the same file (same
/// size and SHA-256) to resume.
pub fn resume_path(path: &Path, total: u64, sha256: &[u8; 32]) -> PathBuf {
    let hex: String = sha256[..8].iter().map(|b| format!("{b:02x}")).collect();
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".partial-{hex}-{total}"));
    path.with_file_name(name)
}

/// Takes over the bytes an interrupted fetch left at `resume` (moving them to `to`), if they
/// are a regular file of at most `total` bytes: the file, its length, and the hash of its bytes.
fn claim(resume: &Path, to: &Path, total: u64) -> Option<(std::fs::File, u64, Sha256)> {
    // The rename is atomic: of two fetches racing for the bytes, one gets them.
    std::fs::rename(resume, to).ok()?;
    let claimed = open_kept(to, total);
    if claimed.is_none() {
        let _ = std::fs::remove_file(to);
    }
    claimed
}

#[cfg(unix)]
fn open_kept(path: &Path, total: u64) -> Option<(std::fs::File, u64, Sha256)> {
    use std::os::unix::fs::MetadataExt;
    let seen = std::fs::symlink_metadata(path).ok()?;
    if !seen.file_type().is_file() || seen.len() > total {
        return None;
    }
    let mut file = std::fs::OpenOptions::new().read(true).append(true).open(path).ok()?;
    let opened = file.metadata().ok()?;
    // Not a link, and the very file just looked at.
    if (opened.dev(), opened.ino()) != (seen.dev(), seen.ino()) {
        return None;
    }
    let mut hasher = Sha256::new();
    let hashed = std::io::copy(&mut file, &mut hasher).ok()?;
    (hashed == opened.len()).then_some((file, hashed, hasher))
}

#[cfg(not(unix))]
fn open_kept(_path: &Path, _total: u64) -> Option<(std::fs::File, u64, Sha256)> {
    None
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
    let mut partial = Partial { path: path.with_extension(format!("part{}", std::process::id())), kept: false, resume: None };
    let mut file: Option<std::fs::File> = None;
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
                if data.len() > CHUNK as usize {
                    bail!("the server sent a chunk of {} bytes, more than the {CHUNK} asked for", data.len());
                }
                let out = match file.as_mut() {
                    Some(out) => out,
                    None => {
                        check_announced(total, sha256, expected)?;
                        announced = Some((total, sha256));
                        let (opened, kept, kept_hash) = start_download(path, &mut partial, total, &sha256)?;
                        let out = file.insert(opened);
                        if kept > 0 {
                            tracing::info!("resuming the download at {kept} of {total} bytes");
                            (offset, hasher) = (kept, kept_hash);
                            progress(offset, total);
                            if offset == total {
                                break; // every byte was kept
                            }
                            continue; // ask for what follows the kept bytes
                        }
                        out
                    }
                };
                out.write_all(data)?;
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
    let file = file.context("no chunk arrived")?;
    if hasher.finalize().as_slice() != sha256 {
        partial.resume = None;
        bail!("the fetched model's SHA-256 does not match; nothing was kept");
    }
    file.sync_all()?;
    std::fs::rename(&partial.path, path).with_context(|| format!("cannot move the model to {}", path.display()))?;
    partial.kept = true;
    Ok(())
}

/// The file a download writes to: the bytes an interrupted fetch of the same file kept (see
/// [`resume_path`]), or a fresh file; with how many bytes are there and their hash. From now on
/// a broken-off download leaves its bytes for the next.
fn start_download(path: &Path, partial: &mut Partial, total: u64, sha256: &[u8; 32]) -> Result<(std::fs::File, u64, Sha256)> {
    let resume = resume_path(path, total, sha256);
    let started = match claim(&resume, &partial.path, total) {
        Some(kept) => kept,
        None => (create_fresh(&partial.path)?, 0, Sha256::new()),
    };
    partial.resume = Some(resume);
    Ok(started)
}

/// A new temporary file; `create_new` never follows a link planted at its name.
fn create_fresh(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path).with_context(|| format!("cannot create {}", path.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_off_download_leaves_its_bytes_for_the_next_and_a_bad_one_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        let (path, resume) = (dir.path().join("m.part1"), resume_path(&dir.path().join("m.onnx"), 10, &[0xab; 32]));
        assert_eq!(resume.file_name().unwrap().to_str().unwrap(), "m.onnx.partial-abababababababab-10");
        std::fs::write(&path, b"12345").unwrap();
        drop(Partial { path: path.clone(), kept: false, resume: Some(resume.clone()) });
        assert_eq!(std::fs::read(&resume).unwrap(), b"12345");
        assert!(!path.exists());
        // Claimed again: the bytes, their length and their hash.
        let (_, len, hash) = claim(&resume, &path, 10).unwrap();
        assert_eq!((len, hash.finalize().as_slice()), (5, Sha256::digest(b"12345").as_slice()));
        assert!(!resume.exists());
        // More bytes than the file has: not resumed from, and removed.
        std::fs::write(&resume, [0u8; 11]).unwrap();
        assert!(claim(&resume, &path, 10).is_none());
        assert!(!resume.exists() && !path.exists());
        // Without a resume place (a failed final check), nothing stays.
        std::fs::write(&path, b"x").unwrap();
        drop(Partial { path: path.clone(), kept: false, resume: None });
        assert!(!path.exists());
    }
}
