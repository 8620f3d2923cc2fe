//! The command-line front end the three binaries share (as `uv-cli` is uv's): clap argument
//! types, the commands every tier has (`bench`, `inspect`, `serve`, the cluster's `init` and
//! `enroll`), progress bars, logging set-up and one-line error reporting. Only the binaries
//! depend on this crate; the libraries below it never print and know nothing of clap.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use embassy_time::Duration;

use scission_core::profile::{Profile, TierKind};
use scission_engine::bench::{BenchOptions, benchmark};
use scission_engine::profile_file::write_profile;
use scission_engine::{LoadOptions, Model};

pub mod cluster;
pub mod progress;

pub use cluster::{ClusterArgs, EncodingArg, EnrollArgs, ServeArgs, run_enroll, run_init, run_serve};
pub use progress::{BenchBar, FetchBar};
use scission_core::timing::Budget;

/// Which model to load and how.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// ONNX model file (as exported by torch.onnx or tf2onnx), or `zoo:NAME` for a built-in
    /// model (e.g. `zoo:resnet50`; `scission-cloud zoo list` shows them), written to a cache on
    /// first use.
    pub model: PathBuf,
    /// Concrete input shape, e.g. `1,3,224,224`; repeat once per input, in model order.
    /// Needed only when the model has symbolic dimensions (such as a dynamic batch).
    #[arg(long = "input-shape", value_name = "DIMS", value_parser = parse_shape)]
    pub input_shapes: Vec<Vec<usize>>,
    /// Largest number of tensors that may cross a cut point. 1 cuts only where the whole state
    /// is one tensor (what the original Scission meant); 2 or more also cuts inside residual and
    /// Inception-like blocks.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_crossing: u16,
}

/// Resolves a zoo name to its model file (binaries with the zoo pass one; the device has none).
pub type ZooLookup = fn(&str) -> Result<PathBuf>;

impl ModelArgs {
    /// Loads the model.
    pub fn load(&self, zoo: Option<ZooLookup>) -> Result<Model> {
        Model::load_path(&self.path(zoo)?, &self.load_options())
    }

    /// How to load it.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions { input_shapes: self.input_shapes.clone() }
    }

    /// The model file, with `zoo:NAME` resolved to its cached file.
    pub fn path(&self, zoo: Option<ZooLookup>) -> Result<PathBuf> {
        match (self.model.to_str().and_then(|s| s.strip_prefix("zoo:")), zoo) {
            (Some(name), Some(lookup)) => lookup(name),
            (Some(name), None) => {
                bail!("this binary has no model zoo; write {name} with `scission-cloud zoo write {name} --out FILE` and pass the file")
            }
            (None, _) => Ok(self.model.clone()),
        }
    }
}

/// Parses `1,3,224,224` (also `1x3x224x224`).
pub fn parse_shape(text: &str) -> Result<Vec<usize>, String> {
    let dims: Result<Vec<usize>, _> = text.split([',', 'x']).map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(dims) if !dims.is_empty() && dims.iter().all(|&d| d > 0) => Ok(dims),
        _ => Err(format!("'{text}' is not a shape: expected positive integers separated by commas, e.g. 1,3,224,224")),
    }
}

/// Arguments of `bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Where to write the JSON profile.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Machine name recorded in the profile (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Engine threads (default: 1 on a device, every core on edge and cloud).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Untimed warm-up runs per block.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Timed runs per block, at least.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_runs: u32,
    /// Timed runs per block, at most.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_runs: u32,
    /// Time budget per block in milliseconds, after the minimum runs.
    #[arg(long, default_value_t = 500)]
    pub max_time_ms: u64,
    /// Seed of the synthetic input.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    fn options(&self, tier: TierKind) -> Result<BenchOptions> {
        if self.min_runs > self.max_runs {
            bail!("--min-runs {} is larger than --max-runs {}", self.min_runs, self.max_runs);
        }
        let default_threads = if tier == TierKind::Device { 1 } else { scission_engine::host::available_cores() };
        Ok(BenchOptions {
            budget: Budget {
                warmup: self.warmup,
                min_runs: self.min_runs,
                max_runs: self.max_runs,
                max_time: Duration::from_millis(self.max_time_ms),
            },
            max_crossing: usize::from(self.model.max_crossing),
            threads: self.threads.map_or(default_threads, usize::from),
            machine: self.name.clone().unwrap_or_else(scission_engine::host::hostname),
            tier,
            seed: self.seed,
        })
    }
}

/// Runs `bench` as the given tier: benchmarks every block and writes the profile.
pub fn run_bench(args: &BenchArgs, tier: TierKind, zoo: Option<ZooLookup>) -> Result<()> {
    let options = args.options(tier)?;
    let model = args.model.load(zoo)?;
    let bar = BenchBar::new(!args.quiet);
    let profile = benchmark(&model, &options, &bar)?;
    write_profile(&profile, &args.out)?;
    println!("{}", profile_summary(&profile, &args.out));
    Ok(())
}

/// One line describing a profile.
pub fn profile_summary(profile: &Profile, path: &Path) -> String {
    format!(
        "{}: {} blocks on {} ({} thread(s)); unsplit median {:.3} ms, sum of block medians {:.3} ms ({:.3}x); benchmark took {:.1} s",
        path.display(),
        profile.blocks.len(),
        profile.machine.name,
        profile.machine.threads,
        profile.whole_model.median_ns as f64 * 1e-6,
        profile.sum_of_blocks_ns as f64 * 1e-6,
        profile.sum_over_whole,
        profile.bench_seconds,
    )
}

/// Arguments of `inspect`.
#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Print every node, not only the cut points.
    #[arg(long)]
    pub nodes: bool,
}

/// Runs `inspect`: loads the model and prints its cut points and blocks.
pub fn run_inspect(args: &InspectArgs, zoo: Option<ZooLookup>) -> Result<()> {
    let model = args.model.load(zoo)?;
    print!("{}", inspect_report(&model, usize::from(args.model.max_crossing), args.nodes));
    Ok(())
}

/// The text `inspect` prints.
pub fn inspect_report(model: &Model, max_crossing: usize, all_nodes: bool) -> String {
    use std::fmt::Write;
    let (s, cuts) = (&model.summary, &model.cuts);
    let points = cuts.cut_points(max_crossing);
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} compute nodes, sha256 {}", model.name, s.len(), model.sha256);
    let _ = writeln!(
        out,
        "cut points (<= {max_crossing} crossing tensor(s)): {} inner, {} blocks; the original Scission's rule finds {} blocks",
        points.len().saturating_sub(2),
        points.len() - 1,
        cuts.legacy_cut_points(s).len() - 1
    );
    let _ = writeln!(out, "{:>5}  {:>12}  {:<32}  crossing tensors", "pos", "bytes", "next node");
    for k in 0..cuts.positions() {
        let is_cut = points.binary_search(&k).is_ok();
        if !is_cut && !all_nodes {
            continue;
        }
        let next = s.nodes.get(k).map_or_else(|| "(end)".to_string(), |n| format!("{} [{}]", n.name, n.op));
        let names: Vec<&str> = cuts.crossing(k).iter().map(|&t| s.tensors[t].name.as_str()).collect();
        let mark = if is_cut { "*" } else { " " };
        let _ = writeln!(out, "{mark}{k:>4}  {:>12}  {next:<32}  {}", cuts.bytes(k), names.join(", "));
    }
    out
}

/// Sets up `tracing` output on stderr: warnings by default, more with each `-v`.
pub fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber_filter(level);
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn tracing_subscriber_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}

/// Turns a command's result into an exit code, printing an error as one line.
pub fn report(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, without duplicated messages.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(text.trim())) {
            parts.push(text.trim().to_string());
        }
    }
    parts.join(": ")
}
