//! `scission-device`: the device tier of Scission. It benchmarks its blocks of a DNN on this machine
//! (`bench`), shows where a model can be cut (`inspect`), and runs its slice of partitioned
//! inferences against edge and cloud servers (`run`).

mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scission_cli::{self as cli, BenchArgs, InspectArgs};
use scission_core::profile::TierKind;

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
    Run(Box<run::RunArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing(cli.verbose);
    // The device image carries no model zoo: models come as files (or from the cloud).
    finish(match &cli.command {
        Command::Bench(args) => cli::run_bench(args, TierKind::Device, None),
        Command::Inspect(args) => cli::run_inspect(args, None),
        Command::Run(args) => run::run(args).map(|()| String::new()),
    })
}

/// Prints a command's text, or its error on one line; the exit code says which.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    let ending = cli::Ending::of(result);
    print!("{}", ending.out);
    eprint!("{}", ending.err);
    ending.code
}
