//! The commands every tier has: `bench` (profile this machine) and `inspect` (cut points).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use embassy_time::Duration;
use scission_core::profile::{Profile, TierKind};
use scission_core::timing::Budget;
use scission_engine::Model;
use scission_engine::bench::{BenchOptions, benchmark};
use scission_engine::profile_file::write_profile;

use crate::model::{ModelArgs, ZooLookup};
use crate::progress::BenchBar;

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
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Timed runs per block, at least.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_runs: u32,
    /// Timed runs per block, at most.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_runs: u32,
    /// Time budget per block in milliseconds, after the minimum runs.
    #[arg(long, default_value_t = 500)]
    pub max_time_ms: u64,
    /// Stop timing a block once its median is known within this many percent either side (95 %
    /// confidence); 0 times every block for --max-runs or --max-time-ms. A range's cost errs by
    /// more than that anyway (a slice fuses what its blocks did not), so 5 costs no accuracy.
    #[arg(long, default_value_t = 5.0)]
    pub precision: f64,
    /// Seed of the synthetic input.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    fn options(&self, tier: TierKind) -> Result<BenchOptions> {
        if !(0.0..=100.0).contains(&self.precision) {
            bail!("--precision {} is not a percentage from 0 to 100", self.precision);
        }
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
                precision_permille: (self.precision * 10.0).round() as u32,
            },
            max_crossing: usize::from(self.model.max_crossing),
            threads: self.threads.map_or(default_threads, usize::from),
            machine: self.name.clone().unwrap_or_else(scission_engine::host::hostname),
            tier,
            seed: self.seed,
        })
    }
}

/// Runs `bench` as the given tier: benchmarks every block, writes the profile, and returns the
/// line to show.
pub fn run_bench(args: &BenchArgs, tier: TierKind, zoo: Option<ZooLookup>) -> Result<String> {
    let options = args.options(tier)?;
    let model = args.model.load(zoo)?;
    let bar = BenchBar::new(!args.quiet);
    let profile = benchmark(&model, &options, &bar)?;
    write_profile(&profile, &args.out)?;
    Ok(format!("{}\n", profile_summary(&profile, &args.out)))
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

/// Runs `inspect`: loads the model; returns its cut points and blocks as text.
pub fn run_inspect(args: &InspectArgs, zoo: Option<ZooLookup>) -> Result<String> {
    let model = args.model.load(zoo)?;
    Ok(inspect_report(&model, usize::from(args.model.max_crossing), args.nodes))
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
        points.len().saturating_sub(1),
        cuts.legacy_cut_points(s).len().saturating_sub(1)
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
