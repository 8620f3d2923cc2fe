//! `scission-cloud zoo`: the built-in models (list, write, report).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use scission_core::stats::Summary;
use scission_engine::{LoadOptions, Model, input::synthetic_inputs, with_threads};
use scission_zoo::onnx::builder::encode;
use scission_zoo::{self as zoo, MODELS, ZooModel};

/// Arguments of `zoo`.
#[derive(Clone, Debug, clap::Args)]
pub struct ZooArgs {
    #[command(subcommand)]
    command: ZooCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
enum ZooCommand {
    /// List the models: name, family, input size, parameters.
    List {
        /// Print one JSON document (format `scission-zoo`) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write a model as ONNX.
    Write {
        /// Model name (see `zoo list`).
        name: String,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure every model (or those named): generation time, file size, nodes, cut points,
    /// single-threaded latency. Prints a Markdown table.
    Report {
        /// Models to report (default: all).
        names: Vec<String>,
        /// Timed runs per model for the latency median (0 skips latency).
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
}

/// Runs `zoo`.
pub fn run(args: &ZooArgs) -> Result<()> {
    match &args.command {
        ZooCommand::List { json: true } => {
            let models: Vec<serde_json::Value> = MODELS
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "name": m.name,
                        "family": m.family,
                        "input": [m.resolution, m.resolution],
                        "parameters": m.keras_params,
                        "reference": format!("zoo:{}", m.name),
                    })
                })
                .collect();
            println!("{}", serde_json::json!({ "format": "scission-zoo", "version": 1, "models": models }));
            Ok(())
        }
        ZooCommand::List { json: false } => {
            println!("{:<20} {:<10} {:>7} {:>12}", "name", "family", "input", "parameters");
            for m in &MODELS {
                println!("{:<20} {:<10} {:>7} {:>12}", m.name, m.family, format!("{0}x{0}", m.resolution), m.keras_params);
            }
            Ok(())
        }
        ZooCommand::Write { name, out, seed } => {
            let model = find(name)?;
            zoo::write(model, *seed, out)?;
            println!("wrote {} ({} parameters) to {}", model.name, model.keras_params, out.display());
            Ok(())
        }
        ZooCommand::Report { names, runs } => report(names, *runs),
    }
}

fn find(name: &str) -> Result<&'static ZooModel> {
    zoo::find(name).with_context(|| format!("'{name}' is not in the zoo; `scission-cloud zoo list` shows the models"))
}

fn report(names: &[String], runs: u32) -> Result<()> {
    let models: Vec<&ZooModel> =
        if names.is_empty() { MODELS.iter().collect() } else { names.iter().map(|n| find(n)).collect::<Result<_>>()? };
    println!(
        "| model | parameters | ONNX MB | generate s | nodes | blocks (cuts crossed by 1 tensor) | blocks (cuts crossed by <= 2) | original Scission blocks | median ms, 1 thread |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in models {
        let started = Instant::now();
        let (proto, params) = m.build(1);
        let bytes = encode(&proto);
        let generate = started.elapsed().as_secs_f64();
        let model = Model::load_bytes(m.name, &bytes, &LoadOptions::default())?;
        let (k1, k2) = (model.cuts.cut_points(1).len() - 1, model.cuts.cut_points(2).len() - 1);
        let latency = if runs == 0 { "-".to_string() } else { format!("{:.1}", median_ms(&model, runs)?) };
        println!(
            "| {} | {params} | {:.1} | {generate:.2} | {} | {k1} | {k2} | {} | {latency} |",
            m.name,
            bytes.len() as f64 / 1e6,
            model.summary.len(),
            original_blocks(m.name)
        );
    }
    Ok(())
}

fn median_ms(model: &Model, runs: u32) -> Result<f64> {
    let plan = model.whole()?;
    let inputs = synthetic_inputs(model, 1)?;
    let samples = with_threads(1, || -> Result<Vec<u64>> {
        let mut state = plan.spawn()?;
        state.run(inputs.clone())?;
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                state.run(inputs.clone())?;
                Ok(t.elapsed().as_nanos() as u64)
            })
            .collect()
    })?;
    Ok(Summary::of(&samples).map_or(0.0, |s| s.median_ns as f64 * 1e-6))
}

/// Block counts the original Scission found (its paper's table).
fn original_blocks(name: &str) -> &'static str {
    match name {
        "vgg16" => "22",
        "vgg19" => "25",
        "mobilenet" => "92",
        "mobilenet_v2" => "66",
        "resnet50" => "24",
        "resnet101" => "41",
        "resnet152" => "58",
        "resnet50v2" | "resnet101v2" | "resnet152v2" => "16",
        "inception_v3" => "19",
        "inception_resnet_v2" => "61",
        "xception" => "14",
        "densenet121" | "densenet169" | "densenet201" => "22",
        "nasnet_mobile" | "nasnet_large" => "5",
        _ => "-",
    }
}
