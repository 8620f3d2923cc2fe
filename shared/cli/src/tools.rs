//! The commands every tier has: `bench` (profile this machine) and `inspect` (cut points).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use embassy_time::Duration;
use scission_core::link::MessageCost;
use scission_core::profile::{Profile, TierKind, TimingMethod};
use scission_core::timing::Budget;
use scission_engine::Model;
use scission_engine::bench::{BenchOptions, Ranges, benchmark, time_spans};
use scission_engine::profile_file::{read_profile, write_profile};

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
    /// How the blocks are timed. `profile` runs the unsplit model with a timer around each
    /// node and sums each block's nodes: the model is optimised once and every run prices
    /// every block. `blocks` builds each block as a slice of its own and times it alone, with
    /// the budget below per block: slower, and a block's cost as a one-block slice.
    #[arg(long, value_enum, default_value_t = MethodChoice::Profile)]
    pub method: MethodChoice,
    /// Untimed warm-up runs (of the unsplit model; per block with --method blocks).
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Timed runs, at least (of the unsplit model; per block with --method blocks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_runs: u32,
    /// Timed runs, at most.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_runs: u32,
    /// Time budget in milliseconds after the minimum runs (per block with --method blocks, and
    /// per range that --ranges or --add-ranges times).
    #[arg(long, default_value_t = 500)]
    pub max_time_ms: u64,
    /// Stop timing once the median is known within this many percent either side (95 %
    /// confidence): the unsplit model's median, or each block's with --method blocks; 0 times
    /// for --max-runs or --max-time-ms. A range's cost errs by more than that anyway (a slice
    /// fuses what its blocks did not), so 5 costs no accuracy.
    #[arg(long, default_value_t = 5.0)]
    pub precision: f64,
    /// Seed of the synthetic input.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also time ranges of blocks as one slice, so the planner costs what a tier will run: a
    /// slice fuses what its blocks did apart, and costs up to a third more or less than their
    /// sum. `auto` times what this tier can run from an end of the model: a device its
    /// prefixes, a cloud its suffixes, an edge both. Each range costs a run of its slice.
    #[arg(long, value_enum, default_value_t = RangeChoice::None)]
    pub ranges: RangeChoice,
    /// Verification pass: time these ranges of blocks (e.g. `0-5,12-20`: blocks 0 to 5 and 12
    /// to 20, as `plan` lists them) as one slice each and add them to the profile already in
    /// --out, keeping its blocks and its engine threads (unless --threads). `scission-cloud
    /// plan --verify` prints which ranges its top plans need. Only ranges from block 0 or to
    /// the last block count (the planner uses no others).
    #[arg(long, value_name = "SPANS", value_delimiter = ',', conflicts_with = "ranges")]
    pub add_ranges: Vec<String>,
    /// Count each block's heap as a tier loads it from its slice artifact and runs it, and
    /// record it in the profile: the planner then caps the device's slice by what it really
    /// takes rather than by a rule on tensor sizes. `auto` counts on a device, whose memory
    /// limits its plans; each block then costs a write and a load of its artifact.
    #[arg(long, value_enum, default_value_t = MemoryChoice::Auto)]
    pub memory: MemoryChoice,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON document (format `scission-bench-summary`, or
    /// `scission-bench-ranges` with --add-ranges) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Whether `bench --memory` counts each block's heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryChoice {
    /// On a device only.
    Auto,
    /// Always.
    Yes,
    /// Never.
    No,
}

impl MemoryChoice {
    fn counts(self, tier: TierKind) -> bool {
        match self {
            MemoryChoice::Auto => tier == TierKind::Device,
            MemoryChoice::Yes => true,
            MemoryChoice::No => false,
        }
    }
}

/// `bench --method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodChoice {
    /// The unsplit model, node by node.
    Profile,
    /// Each block alone.
    Blocks,
}

impl From<MethodChoice> for TimingMethod {
    fn from(choice: MethodChoice) -> Self {
        match choice {
            MethodChoice::Profile => TimingMethod::Profile,
            MethodChoice::Blocks => TimingMethod::Blocks,
        }
    }
}

/// Which ranges `bench --ranges` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RangeChoice {
    /// Blocks only.
    None,
    /// By tier: prefixes on a device, suffixes on a cloud, both on an edge.
    Auto,
    /// Every range from the first block.
    Prefixes,
    /// Every range to the last block.
    Suffixes,
    /// Both.
    Both,
}

impl RangeChoice {
    fn ranges(self, tier: TierKind) -> Ranges {
        match self {
            RangeChoice::None => Ranges::default(),
            RangeChoice::Auto => Ranges::for_tier(tier),
            RangeChoice::Prefixes => Ranges { prefixes: true, suffixes: false },
            RangeChoice::Suffixes => Ranges { prefixes: false, suffixes: true },
            RangeChoice::Both => Ranges { prefixes: true, suffixes: true },
        }
    }
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
            method: self.method.into(),
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
            ranges: self.ranges.ranges(tier),
            memory: self.memory.counts(tier),
        })
    }
}

/// Runs `bench` as the given tier: benchmarks every block, writes the profile, and returns the
/// line to show.
pub fn run_bench(args: &BenchArgs, tier: TierKind, zoo: Option<ZooLookup>) -> Result<String> {
    let options = args.options(tier)?;
    let loading = std::time::Instant::now();
    let model = args.model.load(zoo)?;
    let loaded_in = loading.elapsed();
    let bar = BenchBar::new(!args.quiet);
    if !args.add_ranges.is_empty() {
        return add_ranges(args, &model, &options, &bar);
    }
    // First, while no engine threads linger from the timed runs.
    let messages = measure_messages();
    let mut profile = benchmark(&model, &options, &bar)?;
    profile.messages = messages;
    write_profile(&profile, &args.out)?;
    if args.json {
        return json_line(&bench_summary_json(&profile, &args.out, loaded_in.as_secs_f64()));
    }
    Ok(format!("{}; loading the model took {:.1} s\n", profile_summary(&profile, &args.out), loaded_in.as_secs_f64()))
}

/// `value` as one line of JSON.
fn json_line(value: &serde_json::Value) -> Result<String> {
    Ok(serde_json::to_string(value)? + "\n")
}

/// What `bench --json` prints: the profile's headline figures (times in ms).
fn bench_summary_json(profile: &Profile, path: &Path, load_seconds: f64) -> serde_json::Value {
    let ms = |ns: u64| ns as f64 * 1e-6;
    serde_json::json!({
        "format": "scission-bench-summary",
        "version": 1,
        "profile": path.display().to_string(),
        "model": profile.model.name,
        "machine": profile.machine.name,
        "tier": profile.machine.tier,
        "threads": profile.machine.threads,
        "blocks": profile.blocks.len(),
        "unsplit_median_ms": ms(profile.whole_model.median_ns),
        "unsplit_p90_ms": ms(profile.whole_model.p90_ns),
        "sum_of_block_medians_ms": ms(profile.sum_of_blocks_ns),
        "sum_over_whole": profile.sum_over_whole,
        "bench_seconds": profile.bench_seconds,
        "load_seconds": load_seconds,
        "message_fixed_us": profile.messages.map(|m| m.fixed_ns as f64 * 1e-3),
        "message_ms_per_mib": profile.messages.map(|m| m.ps_per_byte as f64 * 1048576e-9),
    })
}

/// Hops over loopback timed per size and round before fitting what a message costs.
const LOOPBACK_RUNS: usize = 9;

/// What a message costs this machine beyond the link (`scission_net::loopback`), for the
/// profile; a failure leaves it out, logged.
pub fn measure_messages() -> Option<MessageCost> {
    let started = std::time::Instant::now();
    let measured = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the loopback hops")
        .and_then(|rt| Ok(rt.block_on(scission_net::loopback::message_cost(LOOPBACK_RUNS))?));
    tracing::info!("message cost measured in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    measured.inspect_err(|e| tracing::warn!("the message cost was not measured: {e:#}")).ok()
}

/// `bench --add-ranges`: times the ranges and adds them to the profile in `--out`.
fn add_ranges(args: &BenchArgs, model: &Model, options: &BenchOptions, bar: &BenchBar) -> Result<String> {
    use std::fmt::Write;
    let mut profile = read_profile(&args.out).with_context(|| format!("--add-ranges adds to the profile in {}", args.out.display()))?;
    if profile.max_crossing != options.max_crossing {
        bail!("{} was benchmarked with --max-crossing {}; give the same", args.out.display(), profile.max_crossing);
    }
    scission_engine::slower::check_same_board(&profile.machine).with_context(|| args.out.display().to_string())?;
    let n = profile.blocks.len();
    let spans = args.add_ranges.iter().map(|text| parse_span(text, n)).collect::<Result<Vec<_>>>()?;
    // The ranges run with the threads the blocks ran with (at most this machine's cores),
    // unless told otherwise.
    let recorded = usize::try_from(profile.machine.threads).unwrap_or(1).clamp(1, scission_engine::host::available_cores().max(1));
    let threads = args.threads.map_or(recorded, usize::from);
    let options = BenchOptions { threads, ..options.clone() };
    let timed = time_spans(model, &options, &profile, &spans, bar)?;
    let mut out = String::new();
    let mut ranges = Vec::with_capacity(timed.len());
    for r in timed {
        let blocks = profile.blocks_ns(r.first_block, r.end_block);
        ranges.push(serde_json::json!({
            "first_block": r.first_block,
            "last_block": r.end_block - 1,
            "median_ms": r.time.median_ns as f64 * 1e-6,
            "p90_ms": r.time.p90_ns as f64 * 1e-6,
            "sum_of_blocks_ms": blocks as f64 * 1e-6,
        }));
        let _ = writeln!(
            out,
            "blocks {}-{}: {:.3} ms as one slice, {:.3} ms as the sum of its blocks",
            r.first_block,
            r.end_block - 1,
            r.time.median_ns as f64 * 1e-6,
            blocks as f64 * 1e-6
        );
        profile.ranges.retain(|o| (o.first_block, o.end_block) != (r.first_block, r.end_block));
        profile.ranges.push(r);
    }
    profile.ranges.sort_by_key(|r| (r.first_block, r.end_block));
    write_profile(&profile, &args.out)?;
    if args.json {
        return json_line(&serde_json::json!({
            "format": "scission-bench-ranges",
            "version": 1,
            "profile": args.out.display().to_string(),
            "timed": ranges,
            "measured_ranges": profile.ranges.len(),
        }));
    }
    let _ = writeln!(out, "{}: {} measured range(s)", args.out.display(), profile.ranges.len());
    Ok(out)
}

/// A range of blocks written `FIRST-LAST` (both included, as `plan` lists them), within `n`
/// blocks and touching an end of the model: `(first, end)` with the end excluded.
fn parse_span(text: &str, n: usize) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--add-ranges '{text}': expected FIRST-LAST, block indices with FIRST <= LAST < {n}");
    let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
    let (a, b): (usize, usize) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b || b >= n {
        return Err(bad());
    }
    if a != 0 && b + 1 != n {
        bail!("--add-ranges '{text}': the planner uses only ranges from block 0 or to the last block ({})", n - 1);
    }
    Ok((a, b + 1))
}

/// One line describing a profile.
pub fn profile_summary(profile: &Profile, path: &Path) -> String {
    format!(
        "{}: {} blocks {} on {} ({} thread(s)); unsplit median {:.3} ms, sum of block medians {:.3} ms ({:.3}x); benchmark took {:.1} s",
        path.display(),
        profile.blocks.len(),
        match profile.method {
            Some(TimingMethod::Profile) => "profiled in the unsplit model",
            Some(TimingMethod::Blocks) | None => "timed alone",
        },
        profile.machine.name,
        profile.machine.threads,
        profile.whole_model.median_ns as f64 * 1e-6,
        profile.sum_of_blocks_ns as f64 * 1e-6,
        profile.sum_over_whole,
        profile.bench_seconds,
    ) + &profile.messages.map_or_else(String::new, |m| {
        format!(
            "; a message costs {:.1} us + {:.2} ms/MiB on loopback (both ends)",
            m.fixed_ns as f64 * 1e-3,
            m.ps_per_byte as f64 * 1048576e-9
        )
    })
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
    /// Print one JSON document (format `scission-inspect`) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`: loads the model; returns its cut points and blocks as text or JSON.
pub fn run_inspect(args: &InspectArgs, zoo: Option<ZooLookup>) -> Result<String> {
    let model = args.model.load(zoo)?;
    let max_crossing = usize::from(args.model.max_crossing);
    match args.json {
        true => json_line(&inspect_json(&model, max_crossing, args.nodes)),
        false => Ok(inspect_report(&model, max_crossing, args.nodes)),
    }
}

/// What `inspect --json` prints: the model, its block counts, and each position (a cut point,
/// or with `all_nodes` every boundary between two nodes) with the bytes and tensors crossing
/// it and the node after it.
pub fn inspect_json(model: &Model, max_crossing: usize, all_nodes: bool) -> serde_json::Value {
    let (s, cuts) = (&model.summary, &model.cuts);
    let points = cuts.cut_points(max_crossing);
    let positions: Vec<serde_json::Value> = (0..cuts.positions())
        .filter_map(|k| {
            let is_cut = points.binary_search(&k).is_ok();
            (is_cut || all_nodes).then(|| {
                serde_json::json!({
                    "position": k,
                    "cut_point": is_cut,
                    "bytes": cuts.bytes(k),
                    "next_node": s.nodes.get(k).map(|n| serde_json::json!({ "name": n.name, "op": n.op })),
                    "crossing": cuts.crossing(k).iter().map(|&t| s.tensors[t].name.as_str()).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    serde_json::json!({
        "format": "scission-inspect",
        "version": 1,
        "model": model.name,
        "sha256": model.sha256,
        "compute_nodes": s.len(),
        "max_crossing": max_crossing,
        "blocks": points.len().saturating_sub(1),
        "original_scission_blocks": cuts.legacy_cut_points(s).len().saturating_sub(1),
        "positions": positions,
    })
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
