//! `scission-cloud`: the cloud tier of Scission. It benchmarks its blocks (`bench`), shows a
//! model's cut points (`inspect`) and runs the built-in demo (`demo`).

mod calibration;
mod chart;
mod cpulimit;
mod demo;
mod plan;
mod report;
mod zoo;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scission_cli::{self as cli, BenchArgs, InspectArgs, ZooLookup};
use scission_core::profile::TierKind;
use scission_runtime::client::Peer;

/// The cloud tier of Scission: benchmark DNN blocks, inspect cut points, run the demo.
///
/// Start with `scission-cloud demo`: it writes a built-in model, benchmarks it as a
/// single-threaded device and a multi-threaded server, and checks that every split of the
/// model computes exactly what the unsplit model does.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark every block of a model on this machine and write a JSON profile.
    Bench(BenchArgs),
    /// Show a model's cut points, the tensors crossing them and their sizes.
    Inspect(InspectArgs),
    /// Write each tier's slice of a model as a standalone artifact (only that range's operators
    /// and weights, its interface, the model's hash): what a tier loads instead of the model.
    Slice(cli::SliceArgs),
    /// Load one slice (an artifact, or cut out of the whole model), run it, and report load
    /// time, run time and peak memory.
    RunSlice(cli::RunSliceArgs),
    /// Rank the ways to split a model over device, edge and cloud (from profiles, or from
    /// the original Scission's benchmark files).
    Plan(plan::PlanArgs),
    /// Run the built-in demo on an embedded model (nothing to download).
    Demo(demo::DemoArgs),
    /// The built-in model zoo: the 18 Keras Applications DNNs as ONNX (list, write, report).
    Zoo(zoo::ZooArgs),
    /// Create the cluster CA (mutual TLS between all nodes).
    Init(cli::ClusterArgs),
    /// Issue a key and certificate for a node from the cluster CA, naming its role.
    Enroll(cli::EnrollArgs),
    /// Refuse a node from now on (servers reading the cluster's deny list, within a second).
    Revoke(cli::RevokeArgs),
    /// Serve the cloud's stages of partitioned inferences over QUIC.
    Serve(cli::ServeArgs),
    /// Serve any tier's stages (used by `demo` to start edge and cloud as processes).
    #[command(hide = true)]
    Stage {
        #[command(flatten)]
        serve: cli::ServeArgs,
        /// Tier to serve.
        #[arg(long)]
        tier: String,
        /// Next tier's address.
        #[arg(long)]
        upstream: Option<std::net::SocketAddr>,
    },
}

/// `zoo:NAME` models, written on first use.
pub const ZOO: Option<ZooLookup> = Some(|name| Ok(scission_zoo::cached(name, 1)?));

/// Counts the heap, so that `bench` records and `run-slice` reports what slices really use.
#[global_allocator]
static HEAP: scission_engine::heap::Counting = scission_engine::heap::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.verbose);
    finish(match &cli.command {
        Command::Bench(args) => cli::run_bench(args, TierKind::Cloud, ZOO),
        Command::Inspect(args) => cli::run_inspect(args, ZOO),
        Command::Slice(args) => cli::run_slice(args, ZOO),
        Command::RunSlice(args) => cli::run_run_slice(args, ZOO),
        Command::Plan(args) => plan::run(args).map(|()| String::new()),
        Command::Demo(args) => demo::run(args).map(|()| String::new()),
        Command::Zoo(args) => zoo::run(args).map(|()| String::new()),
        Command::Init(args) => cli::run_init(args),
        Command::Enroll(args) => cli::run_enroll(args),
        Command::Revoke(args) => cli::run_revoke(args),
        Command::Serve(args) => cli::run_serve(args, TierKind::Cloud, None, ZOO, announce),
        Command::Stage { serve, tier, upstream } => {
            let tier = if tier == "edge" { TierKind::Edge } else { TierKind::Cloud };
            cli::run_serve(serve, tier, upstream.map(|addr| Peer::new(addr, "cloud")), ZOO, announce_address)
        }
    })
}

/// Prints a command's text, or its error on one line; the exit code says which.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    let ending = cli::Ending::of(result);
    print!("{}", ending.out);
    eprint!("{}", ending.err);
    ending.code
}

/// Prints the line a server announces itself with, at once (harnesses wait for it), and its
/// memory budget on stderr (a closed stderr is no reason to stop serving).
fn announce(said: &cli::Announcement) {
    announce_address(said);
    let _ = writeln!(std::io::stderr(), "{}", said.memory);
}

/// Prints only the line a server announces itself with (the demo's tiers).
fn announce_address(said: &cli::Announcement) {
    println!("{}", said.serving);
    let _ = std::io::stdout().flush();
}
