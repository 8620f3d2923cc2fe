//! Solver speed: the dynamic program against brute-force enumeration on the same instance, a
//! 500-block model over 3 tiers x 3 machines, top-10 under two constraints (the raw input stays
//! on the device, and the edge uploads at most 1 MB). Both are run side by side in one process.

use criterion::{Criterion, criterion_group, criterion_main};
use scission_core::solver::{self, Constraints, CostOptions, Link, Machine, Objective, Problem, brute};
use std::hint::black_box;

fn instance(blocks: usize) -> Problem {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |range: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % range
    };
    let speed = [40, 30, 25, 8, 6, 5, 2, 1, 1];
    let machines: Vec<Machine> = (0..9)
        .map(|i| Machine {
            name: format!("m{i}"),
            tier: i / 3,
            block_ns: (0..blocks).map(|_| (50_000 + next(2_000_000)) * speed[i] / 10).collect(),
            queue_ns: 0,
            ranges: Vec::new(),
            messages: Default::default(),
        })
        .collect();
    let mut links = Vec::new();
    for a in 0..9 {
        for b in 0..9 {
            if a / 3 != b / 3 {
                links.push((a, b, Link { latency_ns: 1_000_000 + next(50_000_000), bits_per_sec: 10_000_000 + next(1_000_000_000) }));
            }
        }
    }
    Problem {
        tiers: vec!["device".into(), "edge".into(), "cloud".into()],
        machines,
        boundary_bytes: (0..=blocks).map(|_| 1_000 + next(4_000_000)).collect(),
        input_bytes: 150_000,
        block_weight_bytes: (0..blocks).map(|_| next(1_000_000)).collect(),
        block_activation_bytes: (0..blocks).map(|_| next(1_000_000)).collect(),
        links,
        options: CostOptions::default(),
    }
}

fn constraints() -> Constraints {
    Constraints { keep_input_on_device: true, upload_cap: vec![(1, 1_000_000)], ..Constraints::default() }
}

fn bench(c: &mut Criterion) {
    let problem = instance(500);
    let constraints = constraints();
    let dp = solver::solve(&problem, &constraints, Objective::Latency, 10).expect("feasible");
    let reference = brute::top_k(&problem, &constraints, Objective::Latency, 10).expect("feasible");
    assert_eq!(dp, reference, "the benchmark instance must agree with brute force");
    let mut group = c.benchmark_group("solve 500 blocks, 3x3 machines, top-10, 2 constraints");
    group.bench_function("dynamic program", |b| b.iter(|| solver::solve(black_box(&problem), &constraints, Objective::Latency, 10)));
    group.sample_size(10);
    group.bench_function("brute force", |b| b.iter(|| brute::top_k(black_box(&problem), &constraints, Objective::Latency, 10)));
    group.finish();
    let mut modes = c.benchmark_group("other modes, 500 blocks");
    modes.sample_size(10);
    modes.bench_function("throughput top-10", |b| b.iter(|| solver::solve(black_box(&problem), &constraints, Objective::Throughput, 10)));
    modes.bench_function("pareto front", |b| b.iter(|| solver::pareto(black_box(&problem), &constraints)));
    modes.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
