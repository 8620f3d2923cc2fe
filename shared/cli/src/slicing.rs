//! `slice` (write one tier's slice of a model as a standalone artifact) and `run-slice` (load
//! one slice, from its artifact or cut out of the whole model, run it, and say what it cost).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use scission_core::cut::Block;
use scission_engine::Slice;
use scission_engine::artifact;
use scission_engine::heap;
use scission_engine::npy;
use scission_engine::tract::prelude::{IntoTValue, TValue, TVec};
use scission_engine::with_threads;

#[cfg(feature = "onnx")]
use crate::model::ModelArgs;
use crate::model::ZooLookup;

/// Arguments of `slice`.
#[cfg(feature = "onnx")]
#[derive(Clone, Debug, clap::Args)]
pub struct SliceArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// The plan's boundaries DEVICE_END,EDGE_END (node positions, as `plan` and `inspect`
    /// print them): writes the device's [0, DEVICE_END), the edge's [DEVICE_END, EDGE_END) and
    /// the cloud's [EDGE_END, end), leaving out empty ranges.
    #[arg(long, value_name = "A,B", value_parser = parse_pair, conflicts_with = "range")]
    pub split: Option<(usize, usize)>,
    /// A node range START,END to write; repeat for several.
    #[arg(long, value_name = "START,END", value_parser = parse_pair)]
    pub range: Vec<(usize, usize)>,
    /// Directory the artifacts go to (created if missing), one `START-END.slice` per range.
    #[arg(long, short, default_value = "slices")]
    pub out: PathBuf,
}

/// Parses `40,120`.
pub fn parse_pair(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{text}': expected two node positions A,B, e.g. 40,120");
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// Writes the artifacts and returns a table of what was written.
#[cfg(feature = "onnx")]
pub fn run_slice(args: &SliceArgs, zoo: Option<ZooLookup>) -> Result<String> {
    let model = args.model.load(zoo)?;
    let n = model.summary.len();
    let ranges: Vec<(&str, Block)> = match args.split {
        Some((a, b)) => {
            if a > b || b > n {
                bail!("--split {a},{b} is not 0 <= DEVICE_END <= EDGE_END <= {n} (the model's node count)");
            }
            [("device", 0, a), ("edge", a, b), ("cloud", b, n)]
                .into_iter()
                .filter(|(_, s, e)| s < e)
                .map(|(tier, start, end)| (tier, Block { start, end }))
                .collect()
        }
        None => args.range.iter().map(|&(start, end)| ("", Block { start, end })).collect(),
    };
    if ranges.is_empty() {
        bail!("nothing to write: give --split A,B or at least one --range START,END");
    }
    if let Some((_, bad)) = ranges.iter().find(|(_, b)| b.start >= b.end || b.end > n) {
        bail!("[{}, {}) is not a node range of a model with {n} nodes", bad.start, bad.end);
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut table = format!("{:<7} {:>13} {:>12} {:>12}  file (SHA-256)\n", "tier", "nodes", "bytes", "weights");
    for (tier, block) in ranges {
        let path = args.out.join(artifact::file_name(block));
        let written = artifact::write_file(&model, block, &path)?;
        let weights = model.summary.weight_bytes(block.start, block.end);
        let range = format!("[{}, {})", block.start, block.end);
        table += &format!("{tier:<7} {range:>13} {:>12} {weights:>12}  {} ({})\n", written.bytes, path.display(), &written.sha256[..16]);
    }
    Ok(table)
}

/// Arguments of `run-slice`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunSliceArgs {
    /// A slice artifact (`scission-cloud slice` writes them). With `--model`, the ONNX model
    /// to cut the slice out of instead (the whole model is loaded: the comparison point).
    pub artifact: Option<PathBuf>,
    /// Cut the slice out of this model (file or `zoo:NAME`) instead of loading an artifact.
    #[arg(long, conflicts_with = "artifact", requires = "range")]
    pub model: Option<PathBuf>,
    /// With `--model`: the node range START,END.
    #[arg(long, value_name = "START,END", value_parser = parse_pair)]
    pub range: Option<(usize, usize)>,
    /// Timed runs (on synthetic inputs of the slice's input shapes).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Engine threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// The slice's inputs as `.npy` files (float32 or int64), in the order of its input
    /// tensors, instead of synthetic ones: e.g. what `--save` wrote for the slice before it.
    #[arg(long, value_name = "FILE.npy", value_delimiter = ',')]
    pub inputs: Vec<PathBuf>,
    /// Write the last run's outputs to this directory as `output-K.npy` (K in the order of the
    /// slice's output tensors): to chain slices across machines by hand, or compare them.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
}

/// Loads the slice, runs it, and reports load time, run time and the process's peak memory.
pub fn run_run_slice(args: &RunSliceArgs, zoo: Option<ZooLookup>) -> Result<String> {
    let rss_before = current_rss_kib();
    let started = Instant::now();
    let (loaded, load_heap) = heap::measure(|| -> Result<_> {
        Ok(match (&args.artifact, &args.model, args.range) {
            (Some(path), None, _) => {
                let loaded = artifact::load(path, None)?;
                let memory = SliceMemory::of(&loaded.graph, loaded.slice.block);
                (loaded.slice, format!("artifact {}", path.display()), memory)
            }
            #[cfg(feature = "onnx")]
            (None, Some(model), Some((start, end))) => {
                let model_args = ModelArgs { model: model.clone(), input_shapes: Vec::new(), max_crossing: 1 };
                let model = model_args.load(zoo)?;
                let block = Block { start, end };
                (Slice::build(&model, block)?, format!("cut out of {}", model.name), SliceMemory::of(&model, block))
            }
            #[cfg(not(feature = "onnx"))]
            (None, Some(_), _) => {
                let _ = zoo;
                bail!("this build runs slice artifacts only; --model needs the full build")
            }
            _ => bail!("give an artifact, or --model MODEL --range START,END"),
        })
    });
    let (slice, source, memory) = loaded?;
    let load_s = started.elapsed().as_secs_f64();
    let inputs = slice_inputs(&slice, &args.inputs)?;
    let threads = usize::from(args.threads);
    let (runs, run_heap) = heap::measure(|| -> Result<_> {
        let (mut times, mut outputs) = (Vec::new(), TVec::new());
        for _ in 0..args.runs {
            let run = Instant::now();
            outputs = with_threads(threads, || slice.run(inputs.clone()))?;
            times.push(run.elapsed().as_secs_f64());
        }
        Ok((times, outputs))
    });
    let (mut times, outputs) = runs?;
    if let Some(dir) = &args.save {
        save_outputs(dir, &outputs)?;
    }
    times.sort_by(f64::total_cmp);
    let median_ms = times[times.len() / 2] * 1e3;
    let peak = peak_rss_kib().map_or_else(|| "unknown".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let mut report = format!(
        "slice [{}, {}) ({source}): loaded and optimised in {load_s:.3} s, median run {median_ms:.2} ms over {} runs, peak RSS {peak}; \
         weights {:.1} MiB, largest activation {:.1} MiB, counted as needing {:.1} MiB\n",
        slice.block.start,
        slice.block.end,
        args.runs,
        mib(memory.weights),
        mib(memory.largest_activation),
        mib(memory.need)
    );
    if let (Some(load), Some(run)) = (load_heap, run_heap) {
        let before = rss_before.map_or_else(|| "unknown".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        report.push_str(&format!(
            "heap: the loaded slice keeps {:.1} MiB (load peak {:.1} MiB), a run adds at most {:.1} MiB; resident before loading {before}\n",
            mib(load.kept),
            mib(load.peak),
            mib(run.peak)
        ));
    }
    Ok(report)
}

/// The slice's inputs: read from `files` (one per input tensor, shapes checked), or synthetic.
fn slice_inputs(slice: &Slice, files: &[PathBuf]) -> Result<TVec<TValue>> {
    if files.is_empty() {
        return Ok(slice.synthetic_inputs(1)?);
    }
    let wanted = slice.input_types()?;
    if files.len() != wanted.len() {
        bail!("the slice takes {} input(s); --inputs gives {}", wanted.len(), files.len());
    }
    files
        .iter()
        .zip(&wanted)
        .map(|(file, (_, datum_type, shape))| {
            let tensor = npy::read_npy(file)?;
            if tensor.shape() != shape.as_slice() || tensor.datum_type() != *datum_type {
                bail!(
                    "{}: a {:?} {:?} array, the slice takes {datum_type:?} {shape:?}",
                    file.display(),
                    tensor.datum_type(),
                    tensor.shape()
                );
            }
            Ok(tensor.into_tvalue())
        })
        .collect()
}

/// Writes `outputs` to `dir` as `output-K.npy`.
fn save_outputs(dir: &std::path::Path, outputs: &[TValue]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (k, output) in outputs.iter().enumerate() {
        npy::write_npy(&dir.join(format!("output-{k}.npy")), output)?;
    }
    Ok(())
}

/// What a slice holds by the summary: its weights, its largest activation, and the memory the
/// runtime counts it as needing (`scission_core::memory::slice_need`).
struct SliceMemory {
    weights: u64,
    largest_activation: u64,
    need: u64,
}

impl SliceMemory {
    fn of(graph: &scission_engine::ModelGraph, block: Block) -> Self {
        let summary = &graph.summary;
        Self {
            weights: summary.weight_bytes(block.start, block.end.min(summary.len())),
            largest_activation: scission_core::memory::largest_activation(summary, block),
            need: scission_core::memory::slice_need(summary, block),
        }
    }
}

/// The process's peak resident set (`VmHWM`), in KiB, where `/proc` has it.
pub fn peak_rss_kib() -> Option<u64> {
    scission_engine::host::peak_resident_bytes().map(|b| b / 1024)
}

/// The process's resident set now (`VmRSS`), in KiB, where `/proc` has it.
pub fn current_rss_kib() -> Option<u64> {
    scission_engine::host::resident_bytes().map(|b| b / 1024)
}
