//! Slice artifacts: one node range of a model as a standalone, self-describing file, so a tier
//! can run its slice without the model file, the ONNX parser or the memory of the whole model.
//!
//! An artifact is a tar archive of two entries, in this order:
//! - `scission-slice.json`, the [`Manifest`]: format and version, the source model's name and
//!   SHA-256, the node range, the slice's input and output tensors (id, name, type, shape), its
//!   weight bytes, the size and SHA-256 of the second entry, and the model's graph summary (a
//!   tier holding only slices still knows what crosses every cut);
//! - `slice.nnef.tar`: the slice's decluttered graph and weights in tract's NNEF format, with the
//!   ONNX operator extensions of `tract-onnx-opl`: read without protobuf or ONNX parsing.
//!
//! Reading checks, before the graph is built: the manifest's format and version, that its
//! interface is what its summary says for the range, and the graph entry's size and SHA-256.
//! After: that the graph's input and output facts are the manifest's. Writing is deterministic
//! (fixed timestamps, sorted entries), so the same model and range always give the same bytes
//! and the same hash, on every machine.

use std::fs::File;
#[cfg(feature = "onnx")]
use std::io::Write;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_core::framework::Framework;
use tract_core::prelude::*;
use tract_onnx_opl::WithOnnx;

use scission_core::cut::{Block, SliceIo};
use scission_core::graph::{GraphSummary, TensorId};

#[cfg(feature = "onnx")]
use super::Model;
use super::Slice;
use super::model_graph::{ModelGraph, hex};

/// The manifest's `format` field.
pub const FORMAT: &str = "scission-slice";
/// The manifest's `version` field this build reads and writes.
pub const VERSION: u32 = 1;
/// Name of the manifest entry (first in the archive).
pub const MANIFEST_ENTRY: &str = "scission-slice.json";
/// Name of the NNEF graph entry (second in the archive).
pub const GRAPH_ENTRY: &str = "slice.nnef.tar";
/// Largest manifest read (the summary of a model of many thousand nodes fits well below).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Timestamp of every entry: the MS-DOS epoch, as tract's deterministic NNEF writer uses.
#[cfg(feature = "onnx")]
const MTIME: u64 = 315_532_800;

/// A tensor crossing the slice's boundary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Tensor id in the model's summary.
    pub id: TensorId,
    /// Tensor name.
    pub name: String,
    /// Element type, as in the summary (`F32`).
    pub dtype: String,
    /// Concrete shape.
    pub shape: Vec<u64>,
}

/// What an artifact holds, read without loading its graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version, [`VERSION`].
    pub version: u32,
    /// The source model's display name.
    pub model_name: String,
    /// Hex SHA-256 of the source ONNX file.
    pub model_sha256: String,
    /// First node position of the range.
    pub start: usize,
    /// One past the last node position.
    pub end: usize,
    /// Tensors the slice reads, in the order it takes them.
    pub inputs: Vec<Port>,
    /// Tensors the slice produces, in the order it returns them.
    pub outputs: Vec<Port>,
    /// Bytes of the weights of the range's nodes.
    pub weight_bytes: u64,
    /// Bytes of the graph entry.
    pub graph_bytes: u64,
    /// Hex SHA-256 of the graph entry.
    pub graph_sha256: String,
    /// The whole model's graph summary.
    pub summary: GraphSummary,
}

impl Manifest {
    /// The node range.
    pub fn block(&self) -> Block {
        Block { start: self.start, end: self.end }
    }
}

/// What [`write`](fn@write) produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Hex SHA-256 of the whole artifact.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A loaded artifact: the model it belongs to and its slice, optimised and runnable.
#[derive(Debug)]
pub struct Loaded {
    /// The source model's graph, from the manifest.
    pub graph: ModelGraph,
    /// The slice.
    pub slice: Slice,
}

fn nnef() -> TractResult<tract_nnef::framework::Nnef> {
    Ok(tract_nnef::nnef().with_onnx())
}

/// Writes the artifact of `block` of `model` to `out`.
#[cfg(feature = "onnx")]
pub fn write(model: &Model, block: Block, out: impl Write) -> Result<Written> {
    if block.start >= block.end || block.end > model.summary.len() {
        bail!("invalid slice [{}, {}) of a model with {} nodes", block.start, block.end, model.summary.len());
    }
    let (graph, io) = graph_entry(model, block)?;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: VERSION,
        model_name: model.name.clone(),
        model_sha256: model.sha256.clone(),
        start: block.start,
        end: block.end,
        inputs: ports(&model.summary, &io.inputs),
        outputs: ports(&model.summary, &io.outputs),
        weight_bytes: model.summary.weight_bytes(block.start, block.end),
        graph_bytes: graph.len() as u64,
        graph_sha256: hex(&Sha256::digest(&graph)),
        summary: model.summary.clone(),
    };
    let manifest_json = serde_json::to_vec(&manifest)?;
    let mut hashing = HashingWriter { inner: out, hasher: Sha256::new(), bytes: 0 };
    let mut archive = tar::Builder::new(&mut hashing);
    append(&mut archive, MANIFEST_ENTRY, &manifest_json)?;
    append(&mut archive, GRAPH_ENTRY, &graph)?;
    archive.into_inner()?.flush()?;
    Ok(Written { sha256: hex(&hashing.hasher.finalize()), bytes: hashing.bytes })
}

/// The graph entry of `block`'s artifact (its NNEF tar) and its interface.
#[cfg(feature = "onnx")]
fn graph_entry(model: &Model, block: Block) -> Result<(Vec<u8>, SliceIo)> {
    let io = SliceIo::new(&model.summary, &model.cuts, block);
    let sub = super::slice::extract(model, block, &io)?;
    let graph = nnef()?
        .write_to_tar_with_config(&sub, Vec::new(), false, true)
        .with_context(|| format!("cannot write slice [{}, {}) as NNEF", block.start, block.end))?;
    Ok((graph, io))
}

/// Loads `block` of `model` the way a tier loads its artifact, measuring the heap that takes
/// (see [`crate::heap::measure`]): its graph entry is written to memory first, then read back,
/// built and optimised as [`load_from`] does, without the manifest's checks (the slice is
/// this process's own). What `bench --memory` records per block.
#[cfg(feature = "onnx")]
pub fn measure_load(model: &Model, block: Block) -> Result<Option<crate::heap::Footprint>> {
    let (graph, io) = graph_entry(model, block)?;
    let (slice, footprint) = crate::heap::measure(|| -> Result<Slice> {
        let nnef = nnef()?;
        let proto = nnef.proto_model_for_read(&mut graph.as_slice()).context("cannot read the NNEF graph")?;
        let typed = nnef.model_for_proto_model(&proto).context("cannot build the NNEF graph")?;
        drop(proto);
        optimise_loaded(block, io, typed)
    });
    drop(slice?);
    Ok(footprint)
}

/// Writes the artifact of `block` of `model` to the file `path` (through a temporary file
/// renamed once complete).
#[cfg(feature = "onnx")]
pub fn write_file(model: &Model, block: Block, path: &Path) -> Result<Written> {
    let partial = path.with_extension(format!("part{}", std::process::id()));
    let result = File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))
        .and_then(|file| {
            let mut file = std::io::BufWriter::new(file);
            let written = write(model, block, &mut file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            Ok(written)
        })
        .and_then(|written| {
            std::fs::rename(&partial, path).with_context(|| format!("cannot move the artifact to {}", path.display()))?;
            Ok(written)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg_attr(not(feature = "onnx"), allow(dead_code))]
fn ports(summary: &GraphSummary, ids: &[TensorId]) -> Vec<Port> {
    ids.iter()
        .filter_map(|&id| {
            summary.tensors.get(id).map(|t| Port { id, name: t.name.clone(), dtype: t.dtype.clone(), shape: t.shape.clone() })
        })
        .collect()
}

#[cfg(feature = "onnx")]
fn append<W: Write>(archive: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(MTIME);
    archive.append_data(&mut header, name, data).with_context(|| format!("cannot write entry {name}"))?;
    Ok(())
}

/// Reads only the manifest of the artifact at `path`, checked against its own summary.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive.entries().with_context(|| format!("{} is not a slice artifact", path.display()))?;
    let (manifest, _) = next_manifest(&mut entries).with_context(|| format!("{} is not a usable slice artifact", path.display()))?;
    Ok(manifest)
}

/// Loads the artifact at `path`: checks it (see the module's documentation), builds its graph
/// and optimises its slice. `expected_sha256`, when given, pins the whole file's hash.
pub fn load(path: &Path, expected_sha256: Option<&str>) -> Result<Loaded> {
    if let Some(expected) = expected_sha256 {
        let actual = file_sha256(path)?;
        if !actual.eq_ignore_ascii_case(expected) {
            bail!("{}: SHA-256 {actual} is not the expected {expected}", path.display());
        }
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    load_from(BufReader::new(file)).with_context(|| format!("{} is not a usable slice artifact", path.display()))
}

/// Loads an artifact from a reader (see [`load`]).
pub fn load_from(reader: impl Read) -> Result<Loaded> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries()?;
    let (manifest, graph) = next_manifest(&mut entries)?;
    let block = manifest.block();
    let Some(entry) = entries.next() else { bail!("the archive has no {GRAPH_ENTRY} entry") };
    let entry = entry?;
    if entry.path()?.as_os_str() != GRAPH_ENTRY {
        bail!("the second entry is {}, not {GRAPH_ENTRY}", entry.path()?.display());
    }
    if entry.size() != manifest.graph_bytes {
        bail!("the graph entry holds {} bytes; the manifest says {}", entry.size(), manifest.graph_bytes);
    }
    let nnef = nnef()?;
    let mut hashing = HashingReader { inner: entry, hasher: Sha256::new() };
    let proto = nnef.proto_model_for_read(&mut hashing).context("cannot read the NNEF graph")?;
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let actual = hex(&hashing.hasher.finalize());
    if actual != manifest.graph_sha256 {
        bail!("the graph entry's SHA-256 {actual} is not the manifest's {}", manifest.graph_sha256);
    }
    let typed = nnef.model_for_proto_model(&proto).context("cannot build the NNEF graph")?;
    drop(proto);
    check_facts(&typed, &manifest)?;
    let io = SliceIo { inputs: manifest.inputs.iter().map(|p| p.id).collect(), outputs: manifest.outputs.iter().map(|p| p.id).collect() };
    let slice = optimise_loaded(block, io, typed)?;
    Ok(Loaded { graph, slice })
}

/// Optimises a slice read back from NNEF the way [`Slice::build`] does (declutter, then
/// codegen). tract 0.23.9's declutter can fail on some reloaded graphs: after the NNEF round
/// trip a 1x1 EinSum is rewritten into a matmul with a reshape first, and pulling a stride-2
/// `Downsample` over that reshape errors ("Invalid axis") instead of stopping (ResNet50's
/// shortcut convolutions). The graph written is already decluttered, so codegen alone runs it.
///
/// Only the declutter works on a copy (it shares the weights); codegen, which packs each
/// weight into a new buffer, runs on the one graph left, so that the unpacked weights are
/// dropped as it goes. A copy kept through codegen held every weight twice at the peak (VGG16's
/// `[0, 31)`: 147 MiB, against 127 MiB now).
fn optimise_loaded(block: Block, io: SliceIo, typed: TypedModel) -> Result<Slice> {
    let mut typed = match typed.clone().into_decluttered() {
        Ok(decluttered) => {
            drop(typed);
            decluttered
        }
        Err(error) => {
            tracing::debug!("slice [{}, {}): declutter failed after loading ({error:#}); codegen only", block.start, block.end);
            typed
        }
    };
    typed.optimize().with_context(|| format!("cannot optimise slice [{}, {})", block.start, block.end))?;
    Slice::from_optimised(block, io, typed)
}

/// Reads and checks the first entry: the manifest, and the model graph its summary describes.
fn next_manifest<R: Read>(entries: &mut tar::Entries<'_, R>) -> Result<(Manifest, ModelGraph)> {
    let Some(entry) = entries.next() else { bail!("the archive is empty") };
    let entry = entry?;
    if entry.path()?.as_os_str() != MANIFEST_ENTRY {
        bail!("the first entry is {}, not {MANIFEST_ENTRY}", entry.path()?.display());
    }
    if entry.size() > MAX_MANIFEST_BYTES {
        bail!("the manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} accepted", entry.size());
    }
    let mut json = Vec::new();
    entry.take(MAX_MANIFEST_BYTES).read_to_end(&mut json)?;
    let manifest: Manifest = serde_json::from_slice(&json).context("the manifest is not valid")?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        bail!("the manifest is {} version {}; this build reads {FORMAT} version {VERSION}", manifest.format, manifest.version);
    }
    let graph = ModelGraph::new(manifest.model_name.clone(), manifest.model_sha256.clone(), manifest.summary.clone())?;
    check_interface(&manifest, &graph)?;
    Ok((manifest, graph))
}

/// The manifest's range and ports against what its summary says for that range.
fn check_interface(manifest: &Manifest, graph: &ModelGraph) -> Result<()> {
    let block = manifest.block();
    if block.start >= block.end || block.end > graph.summary.len() {
        bail!("range [{}, {}) is not a slice of a model with {} nodes", block.start, block.end, graph.summary.len());
    }
    let io = SliceIo::new(&graph.summary, &graph.cuts, block);
    if ports(&graph.summary, &io.inputs) != manifest.inputs || ports(&graph.summary, &io.outputs) != manifest.outputs {
        bail!("the manifest's inputs and outputs are not those of range [{}, {}) of its model", block.start, block.end);
    }
    Ok(())
}

/// The built graph's input and output facts against the manifest's ports.
fn check_facts(typed: &TypedModel, manifest: &Manifest) -> Result<()> {
    let inputs = typed.input_outlets()?.to_vec();
    let outputs = typed.output_outlets()?.to_vec();
    for (what, outlets, ports) in [("input", inputs, &manifest.inputs), ("output", outputs, &manifest.outputs)] {
        if outlets.len() != ports.len() {
            bail!("the graph has {} {what}s; the manifest lists {}", outlets.len(), ports.len());
        }
        for (outlet, port) in outlets.iter().zip(ports) {
            let fact = typed.outlet_fact(*outlet)?;
            let shape: Option<Vec<u64>> = fact.shape.as_concrete().map(|s| s.iter().map(|&d| d as u64).collect());
            if format!("{:?}", fact.datum_type) != port.dtype || shape.as_ref() != Some(&port.shape) {
                bail!("{what} '{}' is {:?} in the graph; the manifest says {} {:?}", port.name, fact, port.dtype, port.shape);
            }
        }
    }
    Ok(())
}

/// Hex SHA-256 of the file at `path`, read in a stream.
pub fn file_sha256(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hashing = HashingReader { inner: BufReader::new(file), hasher: Sha256::new() };
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    Ok(hex(&hashing.hasher.finalize()))
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(feature = "onnx")]
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

#[cfg(feature = "onnx")]
impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes = self.bytes.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The file name of the artifact of `block` inside a directory of artifacts.
pub fn file_name(block: Block) -> String {
    format!("{}-{}.slice", block.start, block.end)
}

/// A directory of slice artifacts of one model, indexed by range from their manifests: what a
/// tier that holds only slices runs from.
#[derive(Debug)]
pub struct ArtifactDir {
    dir: std::path::PathBuf,
    graph: ModelGraph,
    entries: std::sync::Mutex<std::collections::BTreeMap<Block, std::path::PathBuf>>,
}

impl ArtifactDir {
    /// Indexes the `*.slice` files of `dir`. They must all belong to one model (the one with hex
    /// SHA-256 `model_sha256`, when given); a file that is not a usable artifact is an error.
    pub fn open(dir: &Path, model_sha256: Option<&str>) -> Result<Self> {
        let mut entries = std::collections::BTreeMap::new();
        let mut graph: Option<ModelGraph> = None;
        let listing = std::fs::read_dir(dir).with_context(|| format!("cannot list the slice artifacts in {}", dir.display()))?;
        let mut paths: Vec<std::path::PathBuf> =
            listing.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "slice")).collect();
        paths.sort();
        for path in paths {
            let manifest = read_manifest(&path)?;
            let expected = model_sha256.map(str::to_string).or_else(|| graph.as_ref().map(|g| g.sha256.clone()));
            if let Some(expected) = expected
                && !manifest.model_sha256.eq_ignore_ascii_case(&expected)
            {
                bail!("{} is a slice of another model (SHA-256 {}, expected {expected})", path.display(), manifest.model_sha256);
            }
            if let Some(graph) = &graph
                && graph.summary != manifest.summary
            {
                bail!("{} describes its model differently from the other artifacts", path.display());
            }
            if graph.is_none() {
                graph = Some(ModelGraph::new(manifest.model_name.clone(), manifest.model_sha256.clone(), manifest.summary.clone())?);
            }
            entries.insert(manifest.block(), path);
        }
        let Some(graph) = graph else { bail!("{} holds no slice artifact (*.slice; `scission-cloud slice` writes them)", dir.display()) };
        Ok(Self { dir: dir.to_path_buf(), graph, entries: std::sync::Mutex::new(entries) })
    }

    /// The model the artifacts belong to.
    pub fn graph(&self) -> &ModelGraph {
        &self.graph
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ranges held, ascending.
    pub fn blocks(&self) -> Vec<Block> {
        self.entries.lock().map(|e| e.keys().copied().collect()).unwrap_or_default()
    }

    /// Whether the artifact of `block` is here.
    pub fn has(&self, block: Block) -> bool {
        self.entries.lock().is_ok_and(|e| e.contains_key(&block))
    }

    /// Adds the artifact at `path` (e.g. one just fetched into the directory) after checking
    /// that it belongs to this model.
    pub fn insert(&self, path: &Path) -> Result<Block> {
        let manifest = read_manifest(path)?;
        if manifest.model_sha256 != self.graph.sha256 || manifest.summary != self.graph.summary {
            bail!("{} is a slice of another model", path.display());
        }
        let block = manifest.block();
        self.entries
            .lock()
            .map_err(|_| crate::error::EngineError::Invalid("artifact index poisoned".into()))?
            .insert(block, path.to_path_buf());
        Ok(block)
    }

    /// Removes the least recently used artifacts (by file time; loading one renews it) until
    /// the directory's artifacts take at most `max_bytes`, never one of `keep` nor the
    /// one-node artifact `[0, 1)` that describes the model. Returns the ranges removed.
    pub fn evict_to(&self, max_bytes: u64, keep: &[Block]) -> Vec<Block> {
        let Ok(mut entries) = self.entries.lock() else { return Vec::new() };
        let stat = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok()));
        let mut held: Vec<(Block, u64, Option<std::time::SystemTime>)> =
            entries.iter().filter_map(|(b, p)| stat(p).map(|(len, at)| (*b, len, at))).collect();
        let mut total: u64 = held.iter().map(|(_, len, _)| *len).fold(0, u64::saturating_add);
        held.sort_by_key(|(_, _, at)| *at);
        let mut removed = Vec::new();
        for (block, len, _) in held {
            if total <= max_bytes {
                break;
            }
            if keep.contains(&block) || block == (Block { start: 0, end: 1 }) {
                continue;
            }
            if let Some(path) = entries.remove(&block)
                && std::fs::remove_file(&path).is_ok()
            {
                total = total.saturating_sub(len);
                removed.push(block);
            }
        }
        removed
    }

    /// Loads the slice of `block`.
    pub fn load(&self, block: Block) -> Result<Slice> {
        let path = self.entries.lock().ok().and_then(|e| e.get(&block).cloned());
        let Some(path) = path else {
            bail!("no slice artifact for [{}, {}) in {}", block.start, block.end, self.dir.display());
        };
        // Recently used for eviction.
        if let Ok(file) = File::options().append(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        let loaded = load(&path, None)?;
        if loaded.graph.sha256 != self.graph.sha256 {
            bail!("{} changed: it is now a slice of another model", path.display());
        }
        Ok(loaded.slice)
    }
}
