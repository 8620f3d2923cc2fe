//! `scission-edge`: the edge tier of Scission. It benchmarks its blocks of a DNN on this machine
//! (`bench`), shows where a model can be cut (`inspect`), and serves its stages of partitioned
//! inferences (`serve`).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scission_cli::{self as cli, BenchArgs, InspectArgs, ZooLookup};
use scission_core::profile::TierKind;
use scission_runtime::client::Peer;

/// The edge tier of Scission: benchmark DNN blocks on this machine.
///
/// Typical use: `scission-edge bench model.onnx --out edge.json`, then give edge.json to
/// `scission-cloud plan`.
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
    /// Serve the edge's stages of partitioned inferences over QUIC, forwarding to the cloud.
    Serve {
        #[command(flatten)]
        serve: Box<cli::ServeArgs>,
        /// The cloud server, as HOST:PORT (resolved at start).
        #[arg(long, value_parser = cli::parse_host_port, value_name = "HOST:PORT")]
        cloud: std::net::SocketAddr,
        /// The cloud's enrolled name (its certificate must carry it).
        #[arg(long, default_value = "cloud")]
        cloud_name: String,
    },
}

/// `zoo:NAME` models, written on first use.
const ZOO: Option<ZooLookup> = Some(|name| Ok(scission_zoo::cached(name, 1)?));

/// Counts the heap, so that `bench` records and `run-slice` reports what slices really use.
#[global_allocator]
static HEAP: scission_engine::heap::Counting = scission_engine::heap::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.verbose);
    finish(match &cli.command {
        Command::Bench(args) => cli::run_bench(args, TierKind::Edge, ZOO),
        Command::Inspect(args) => cli::run_inspect(args, ZOO),
        Command::Serve { serve, cloud, cloud_name } => {
            let upstream = Peer::new(*cloud, cloud_name.clone());
            cli::run_serve(serve, TierKind::Edge, Some(upstream), ZOO, announce)
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
    println!("{}", said.serving);
    let _ = std::io::stdout().flush();
    let _ = writeln!(std::io::stderr(), "{}", said.memory);
}
