//! `scission-device`: the device tier of Scission. It benchmarks its blocks of a DNN on this machine
//! (`bench`), shows where a model can be cut (`inspect`), and runs its slice of partitioned
//! inferences against edge and cloud servers (`run`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scission_shared::cli::{self, BenchArgs, InspectArgs};
use scission_shared::profile::TierKind;

/// The device tier of Scission: benchmark DNN blocks on this machine.
///
/// Typical use: `scission-device bench model.onnx --out device.json`, then give device.json to
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
    /// Run inferences split between this device, an edge and a cloud server (over QUIC with
    /// mutual TLS), checking every result against the unsplit model.
    Run(scission_shared::runtime::commands::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.verbose);
    cli::report(match &cli.command {
        Command::Bench(args) => cli::run_bench(args, TierKind::Device),
        Command::Inspect(args) => cli::run_inspect(args),
        Command::Run(args) => scission_shared::runtime::commands::run_device(args),
    })
}
