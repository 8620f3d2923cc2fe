//! The engine beside its peer: each model run whole as one slice, the way the tiers run their
//! stages (tract, `Slice::run`), and by ONNX Runtime's CPU provider, on the same file, input
//! shapes and thread count, in alternating rounds so a drifting host moves both alike. Prints
//! one row per model (medians over the rounds of each round's median) with the ratio, then the
//! median ratio and the worst. A first column runs tract with a new execution state each run,
//! as the tiers did before their slices kept states.
//!
//! ONNX Runtime comes from the Python registry, in a venv made once:
//!
//! ```text
//! python3 -m venv target/ort-venv && target/ort-venv/bin/pip install onnxruntime numpy
//! cargo build --release -p scission-cloud
//! cargo run --release -p scission-tests --example engine_vs_ort -- --python target/ort-venv/bin/python
//! cargo run --release -p scission-tests --example engine_vs_ort -- --threads 2 zoo:resnet50 my.onnx
//! ```
//! Without models it runs the zoo's MobileNetV2, ResNet50 and DenseNet121 and every ONNX file
//! of `tests/fixtures/exports` (torch.onnx, torch dynamo and tf2onnx exports).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use common::quantile;
use scission_core::cut::Block;
use scission_core::stats::Summary;
use scission_core::timing::{Budget, measure_interleaved};
use scission_engine::input::synthetic_inputs;
use scission_engine::{LoadOptions, Model, Slice, with_threads};

/// tract against ONNX Runtime, model by model.
#[derive(Parser, Debug)]
struct Args {
    /// `zoo:NAME` or ONNX files (default: three zoo models and the fixture exports).
    models: Vec<String>,
    /// Threads for both engines (tract's executor; ONNX Runtime's intra-op pool).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Alternating rounds per model (tract, then ONNX Runtime, each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each engine is timed per round (after three untimed runs).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The Python with `onnxruntime` and `numpy`.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
}

/// Times a model with ONNX Runtime: `path threads seconds shapes-json`, prints the median.
const ORT_TIMER: &str = r#"
import json, sys, time
import numpy as np
import onnxruntime as ort
path, threads, seconds, specs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.inter_op_num_threads = 1
options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(1)
feeds = {}
for arg, spec in zip(session.get_inputs(), specs):
    if spec["float"]:
        feeds[arg.name] = rng.random(spec["shape"], dtype=np.float32)
    else:
        feeds[arg.name] = np.zeros(spec["shape"], dtype=np.int64)
for _ in range(3):
    session.run(None, feeds)
times = []
end = time.perf_counter() + seconds
while time.perf_counter() < end or len(times) < 5:
    started = time.perf_counter()
    session.run(None, feeds)
    times.append(time.perf_counter() - started)
print(json.dumps({"median_ms": float(np.median(times)) * 1e3, "runs": len(times)}))
"#;

fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let timer = work.path().join("ort_timer.py");
    std::fs::write(&timer, ORT_TIMER)?;
    let models = if args.models.is_empty() { default_models()? } else { args.models.clone() };
    println!("{} thread(s), {} rounds of {} s per engine; medians in ms", args.threads, args.rounds, args.seconds);
    println!("{:<28} {:>10} {:>10} {:>10} {:>7}", "model", "new state", "tract", "ORT", "ratio");
    let mut ratios = Vec::new();
    for name in &models {
        match compare(&args, &timer, work.path(), name) {
            Ok([fresh_ms, tract_ms, ort_ms]) => {
                let ratio = tract_ms / ort_ms;
                ratios.push((ratio, name.clone()));
                println!("{:<28} {fresh_ms:>10.2} {tract_ms:>10.2} {ort_ms:>10.2} {ratio:>6.2}x", short(name));
            }
            Err(e) => println!("{:<28} skipped: {e:#}", short(name)),
        }
    }
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let (Some(median), Some((worst, which))) = (ratios.get(ratios.len() / 2), ratios.last()) {
        println!("median ratio {:.2}x over {} models; worst {worst:.2}x ({})", median.0, ratios.len(), short(which));
    }
    Ok(())
}

/// The zoo's MobileNetV2, ResNet50 and DenseNet121, and the fixture exports.
fn default_models() -> Result<Vec<String>> {
    let mut models: Vec<String> = ["zoo:mobilenet_v2", "zoo:resnet50", "zoo:densenet121"].map(String::from).to_vec();
    let exports = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exports");
    let mut files: Vec<String> = std::fs::read_dir(&exports)
        .with_context(|| format!("reading {}", exports.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    models.extend(files);
    Ok(models)
}

fn short(name: &str) -> String {
    Path::new(name).file_stem().map_or(name.to_string(), |s| s.to_string_lossy().into_owned())
}

/// The model's file: itself, or the zoo's, written by the cloud binary into `dir`.
fn model_file(name: &str, dir: &Path) -> Result<PathBuf> {
    match name.strip_prefix("zoo:") {
        Some(zoo) => common::write_zoo(zoo, dir),
        None => Ok(PathBuf::from(name)),
    }
}

/// Medians over the rounds of each round's median, in ms: tract starting a new execution state
/// each run (as the tiers did before they kept states), tract as the tiers run it now
/// (`Slice::run_once`, states kept), ONNX Runtime.
fn compare(args: &Args, timer: &Path, dir: &Path, name: &str) -> Result<[f64; 3]> {
    let path = model_file(name, dir)?;
    let model = Model::load_path(&path, &LoadOptions::default())?;
    let whole = Slice::build(&model, Block { start: 0, end: model.summary.len() })?;
    let inputs = synthetic_inputs(&model, 1)?;
    let specs: Vec<serde_json::Value> =
        inputs.iter().map(|t| serde_json::json!({ "shape": t.shape(), "float": t.datum_type().is_float() })).collect();
    let specs = serde_json::to_string(&specs)?;
    let budget = Budget {
        warmup: 3,
        min_runs: 5,
        max_runs: u32::MAX,
        max_time: embassy_time::Duration::from_millis((args.seconds * 1e3) as u64),
        precision_permille: 0,
    };
    let plan = model.whole()?;
    let (mut fresh, mut tract, mut ort) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        // The two ways of running tract alternate run by run: their difference is a few per cent,
        // less than the host drifts between two blocks of runs.
        let both = with_threads(args.threads, || {
            measure_interleaved(budget, 2, |i| match i {
                0 => plan.run(inputs.clone()).map(drop),
                _ => whole.run_once(inputs.clone()).map(drop).map_err(anyhow::Error::from),
            })
        })?;
        let [new_state, kept]: [Vec<u64>; 2] = both.try_into().map_err(|_| anyhow::anyhow!("two pieces timed"))?;
        fresh.push(median_ms(new_state));
        tract.push(median_ms(kept));
        ort.push(ort_median_ms(args, timer, &path, &specs)?);
    }
    Ok([median(fresh), median(tract), median(ort)])
}

/// One round of ONNX Runtime on `path`: the median of its runs, in ms.
fn ort_median_ms(args: &Args, timer: &Path, path: &Path, specs: &str) -> Result<f64> {
    let out = Command::new(&args.python)
        .arg(timer)
        .arg(path)
        .arg(args.threads.to_string())
        .arg(args.seconds.to_string())
        .arg(specs)
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    if !out.status.success() {
        bail!("ONNX Runtime: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed"));
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    answer["median_ms"].as_f64().context("no median in ONNX Runtime's answer")
}

fn median_ms(samples: Vec<u64>) -> f64 {
    Summary::of(&samples).map_or(f64::NAN, |s| s.median_ns as f64 * 1e-6)
}

fn median(mut values: Vec<f64>) -> f64 {
    quantile(&mut values, 0.5)
}
