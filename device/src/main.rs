//! `scission-device`: the device tier of Scission. It serves the board's applications with
//! partitioned inference (`serve`, the Open Inference Protocol over HTTP; `infer`, one input from
//! the command line), benchmarks its blocks of a DNN on this machine (`bench`), shows where a
//! model can be cut (`inspect`), and measures plans end to end (`run`).

mod config;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use scission_cli as cli;
#[cfg(feature = "full")]
use scission_cli::{BenchArgs, InspectArgs};
#[cfg(feature = "full")]
use scission_core::profile::TierKind;

/// The device tier of Scission: partitioned DNN inference for the applications on this board.
///
/// Typical use: `scission-device bench model.onnx --out device.json` once; then
/// `scission-device serve --config device.toml`, and applications POST inputs (or images) to
/// http://127.0.0.1:8080/v2/models/NAME/infer (the KServe v2 / Open Inference Protocol).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log as one JSON object per line on stderr (for a log collector), not text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Play a board N times slower than this machine: every run of a model, benchmark and
    /// inference alike, is done N times. For trying plans on one host (with `bench` and `run`
    /// or `serve` given the same N); a CPU quota does the same with root, but stops and starts
    /// the work at the scheduler's tick.
    #[arg(long, value_name = "N", global = true, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    emulate_slower: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the board's applications: the Open Inference Protocol (KServe v2) over HTTP, each
    /// request split between this device, the edge and the cloud by the current plan; re-plans
    /// on failures and on schedule, falls back to local inference when both servers are gone,
    /// Prometheus metrics at /metrics. Stops on SIGTERM after the requests in flight.
    Serve(Box<serve::ServeArgs>),
    /// Run one image (JPEG, PNG) or `.npy` array through the partitioned pipeline and print the
    /// route, the time and the top classes.
    Infer(Box<serve::InferArgs>),
    /// Check a service configuration and say what is missing.
    CheckConfig(Box<serve::CheckArgs>),
    /// Benchmark every block of a model on this machine and write a JSON profile.
    #[cfg(feature = "full")]
    Bench(BenchArgs),
    /// Show a model's cut points, the tensors crossing them and their sizes.
    #[cfg(feature = "full")]
    Inspect(InspectArgs),
    /// Load one slice (an artifact from `scission-cloud slice`, or cut out of the whole model),
    /// run it, and report load time, run time and peak memory.
    RunSlice(cli::RunSliceArgs),
    /// Measure a plan: run N inferences split between this device, an edge and a cloud server
    /// (over QUIC with mutual TLS), checking every result against the unsplit model.
    ///
    /// MODEL may also be a directory of slice artifacts (`scission-cloud slice`): the device
    /// then loads only the slices it runs, never the whole model (use --no-check: the check
    /// needs the whole model).
    Run(Box<run::RunArgs>),
}

/// Counts the heap, so that `bench` records and `run-slice` reports what slices really use.
#[global_allocator]
static HEAP: scission_engine::heap::Counting = scission_engine::heap::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing_as(cli.verbose, cli.log_json);
    if let Err(e) = scission_engine::slower::emulate(cli.emulate_slower) {
        return finish(Err(e.into()));
    }
    // The device image carries no model zoo: models come as files (or from the cloud).
    finish(match &cli.command {
        #[cfg(feature = "full")]
        Command::Bench(args) => cli::run_bench(args, TierKind::Device, None),
        #[cfg(feature = "full")]
        Command::Inspect(args) => cli::run_inspect(args, None),
        Command::RunSlice(args) => cli::run_run_slice(args, None),
        Command::Run(args) => run::run(args).map(|()| String::new()),
        Command::Serve(args) => serve::serve(args),
        Command::Infer(args) => serve::infer(args),
        Command::CheckConfig(args) => serve::check_config(args),
    })
}

/// Prints a command's text, or its error on one line; the exit code says which.
fn finish(result: anyhow::Result<String>) -> ExitCode {
    let ending = cli::Ending::of(result);
    print!("{}", ending.out);
    eprint!("{}", ending.err);
    ending.code
}
