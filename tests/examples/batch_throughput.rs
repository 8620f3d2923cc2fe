//! What dynamic batching buys on this machine, engine only (no network): a zoo model's whole
//! range run one request at a time (the batch-1 slice every server runs without batching)
//! against the same range run as batches of 2, 4, 8 and 16, side by side in one process, on one
//! thread (a server's worker).
//!
//! ```text
//! cargo run --release -p scission-tests --example batch_throughput -- resnet50 mobilenet_v2
//! ```
//! Prints, per model and batch size, the time per request and the ratio to batch 1.

use std::time::Instant;

use anyhow::{Context, Result};
use scission_core::cut::Block;
use scission_engine::batch::BatchedSlice;
use scission_engine::input::synthetic_inputs;
use scission_engine::{LoadOptions, Model, Slice};

fn main() -> Result<()> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let names = if names.is_empty() { vec!["resnet50".to_string(), "mobilenet_v2".to_string()] } else { names };
    println!("{:<14} {:>6} {:>14} {:>10}", "model", "batch", "ms/request", "speed-up");
    for name in names {
        let model = Model::load_path(&scission_zoo::cached(&name, 1)?, &LoadOptions::default())?;
        let block = Block { start: 0, end: model.summary.len() };
        let single = Slice::build(&model, block)?;
        let input = synthetic_inputs(&model, 1)?;
        let rounds = 16;
        single.run(input.clone())?;
        let started = Instant::now();
        for _ in 0..rounds {
            single.run(input.clone())?;
        }
        let base = started.elapsed().as_secs_f64() / f64::from(rounds);
        println!("{name:<14} {:>6} {:>14.2} {:>10.2}", "alone", base * 1e3, 1.0);
        for size in [2usize, 4, 8, 16] {
            let batched = BatchedSlice::build(&model, block, size)?;
            let requests = vec![input.clone(); size];
            batched.run(&requests).context("warm-up")?;
            let runs = (rounds as usize).div_ceil(size).max(2);
            let started = Instant::now();
            for _ in 0..runs {
                batched.run(&requests)?;
            }
            let per_request = started.elapsed().as_secs_f64() / (runs * size) as f64;
            println!("{name:<14} {size:>6} {:>14.2} {:>10.2}", per_request * 1e3, base / per_request);
        }
    }
    Ok(())
}
