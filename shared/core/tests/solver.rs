//! The dynamic program ranks exactly like brute-force enumeration: same plans, same costs,
//! same order, on random instances with random constraints.

use proptest::prelude::*;
use scission_core::solver::{
    self, ComputeCap, Constraints, CostOptions, Encoding, Link, Machine, MessageCost, Objective, Problem, RangeCost, SolveError, brute,
};

/// Random instance: up to 4 tiers, up to 3 machines per tier, up to 7 blocks, and on some
/// machines measured ranges from the first block or to the last (cheaper or dearer than their
/// blocks). Small value ranges on purpose, so that ties happen and the tie-break is exercised.
fn problem() -> impl Strategy<Value = Problem> {
    (1usize..=4, 1usize..=7).prop_flat_map(|(tiers, n)| {
        let per_tier = proptest::collection::vec(1usize..=3, tiers);
        (Just(tiers), Just(n), per_tier).prop_flat_map(|(tiers, n, per_tier)| {
            let count: usize = per_tier.iter().sum();
            let times = proptest::collection::vec(proptest::collection::vec(0u64..6, n), count);
            // Mostly idle machines, some with a queue (ties between a queue and a slower machine).
            let queues = proptest::collection::vec(prop_oneof![3 => Just(0u64), 1 => 0u64..8], count);
            let links = proptest::collection::vec((0u64..4, 1u64..5), count * count);
            let bytes = proptest::collection::vec(0u64..40, n + 1);
            let weights = proptest::collection::vec(0u64..20, n);
            let acts = proptest::collection::vec(0u64..20, n);
            let options = (any::<bool>(), 0usize..3, 0u64..3);
            // (from the first block?, blocks in the range, its time) per machine.
            let measured = proptest::collection::vec(proptest::collection::vec((any::<bool>(), 1..=n, 0u64..20), 0..4), count);
            // Message costs per machine: none, or up to 3 ns fixed and 2000 ps per byte.
            let messages = proptest::collection::vec((0u64..4, 0u64..2001), count);
            (Just(tiers), Just(per_tier), (times, queues, measured, messages), links, bytes, 0u64..60, weights, acts, options).prop_map(
                move |(tiers, per_tier, (times, queues, measured, messages), links, bytes, input, weights, acts, (ret, enc, overhead))| {
                    let mut machines = Vec::new();
                    for (tier, &count) in per_tier.iter().enumerate() {
                        for i in 0..count {
                            let (block_ns, queue_ns) = (times[machines.len()].clone(), queues[machines.len()]);
                            let mut ranges: Vec<RangeCost> = Vec::new();
                            for &(from_start, len, ns) in &measured[machines.len()] {
                                let (start, end) = if from_start { (0, len) } else { (n - len, n) };
                                if !ranges.iter().any(|r| (r.start, r.end) == (start, end)) {
                                    ranges.push(RangeCost { start, end, ns });
                                }
                            }
                            let (fixed_ns, ps_per_byte) = messages[machines.len()];
                            let messages = MessageCost { fixed_ns, ps_per_byte };
                            machines.push(Machine { name: format!("t{tier}m{i}"), tier, block_ns, queue_ns, ranges, messages });
                        }
                    }
                    let m = machines.len();
                    let links = (0..m * m)
                        .filter(|i| i / m != i % m)
                        .map(|i| (i / m, i % m, Link { latency_ns: links[i].0, bits_per_sec: links[i].1 * 8_000_000_000 }))
                        .collect();
                    let encoding = [Encoding::F32, Encoding::F16, Encoding::Int8][enc];
                    Problem {
                        tiers: (0..tiers).map(|t| format!("tier{t}")).collect(),
                        machines,
                        boundary_bytes: bytes,
                        input_bytes: input,
                        block_weight_bytes: weights,
                        block_activation_bytes: acts,
                        links,
                        options: CostOptions { return_result: ret, encoding, message_overhead: overhead },
                    }
                },
            )
        })
    })
}

/// Random constraints for `p`, each kind present with some probability.
fn constraints(p: &Problem) -> impl Strategy<Value = Constraints> + use<> {
    let (n, tiers, machines) = (p.blocks(), p.tiers.len(), p.machines.len());
    let tier = 0..tiers;
    (
        proptest::collection::vec((0..n, tier.clone()), 0..2),
        proptest::collection::vec((0..n, tier.clone()), 0..3),
        proptest::collection::vec(tier.clone(), 0..2),
        proptest::collection::vec(tier.clone(), 0..2),
        proptest::collection::vec(0..machines, 0..2),
        proptest::collection::vec((tier.clone(), 0u64..120), 0..2),
        proptest::collection::vec((tier.clone(), 0u64..30, any::<bool>()), 0..2),
        proptest::collection::vec((tier, 0u64..80), 0..2),
        any::<bool>(),
        proptest::option::weighted(0.2, 0u64..100),
    )
        .prop_map(|(pin, forbid, must_use, must_not_use, exclude, upload, compute, memory, keep, cloud)| Constraints {
            pin,
            forbid,
            must_use,
            must_not_use,
            exclude_machines: exclude,
            upload_cap: upload,
            compute_cap: compute
                .into_iter()
                .map(|(t, v, frac)| (t, if frac { ComputeCap::Fraction(v as f64 / 30.0) } else { ComputeCap::Nanos(v) }))
                .collect(),
            memory_cap: memory,
            keep_input_on_device: keep,
            cloud_bytes_cap: cloud,
        })
}

fn instance() -> impl Strategy<Value = (Problem, Constraints, Objective, usize)> {
    problem().prop_flat_map(|p| {
        let objective =
            prop_oneof![Just(Objective::Latency), Just(Objective::Throughput), Just(Objective::DeviceTime), Just(Objective::DeviceUpload)];
        (constraints(&p), Just(p), objective, 1usize..=10).prop_map(|(c, p, o, k)| (p, c, o, k))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn dp_top_k_equals_brute_force((problem, constraints, objective, k) in instance()) {
        let expected = brute::top_k(&problem, &constraints, objective, k);
        let got = solver::solve(&problem, &constraints, objective, k);
        match (expected, got) {
            (Ok(want), Ok(got)) => prop_assert_eq!(got, want),
            (Ok(want), Err(SolveError::Infeasible { .. })) => prop_assert!(want.is_empty(), "DP found nothing, brute force found {}", want.len()),
            (Err(e), Err(SolveError::Problem(g))) => prop_assert_eq!(g, e),
            (want, got) => prop_assert!(false, "brute force {:?} vs DP {:?}", want, got),
        }
    }

    #[test]
    fn pareto_front_equals_brute_force((problem, constraints, _, _) in instance()) {
        let expected = brute::pareto(&problem, &constraints);
        match (expected, solver::pareto(&problem, &constraints)) {
            (Ok(want), Ok(got)) => prop_assert_eq!(got, want),
            (Ok(want), Err(SolveError::Infeasible { .. })) => prop_assert!(want.is_empty()),
            (Err(e), Err(SolveError::Problem(g))) => prop_assert_eq!(g, e),
            (want, got) => prop_assert!(false, "brute force {:?} vs DP {:?}", want, got),
        }
    }
}

/// The random instances are not mostly trivial: many are feasible with several ranked plans,
/// and many are infeasible, so both paths of the comparison above are exercised.
#[test]
fn random_instances_exercise_both_feasible_and_infeasible_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]));
    let (mut rich, mut infeasible, mut total) = (0, 0, 0);
    for _ in 0..500 {
        let (problem, constraints, objective, _) = instance().new_tree(&mut runner).unwrap().current();
        total += 1;
        match solver::solve(&problem, &constraints, objective, 10) {
            Ok(plans) if plans.len() >= 3 => rich += 1,
            Err(SolveError::Infeasible { .. }) => infeasible += 1,
            _ => {}
        }
    }
    eprintln!("{rich} of {total} instances have >= 3 plans, {infeasible} are infeasible");
    assert!(rich * 4 >= total, "only {rich} of {total} instances have 3 or more plans");
    assert!(infeasible * 10 >= total, "only {infeasible} of {total} instances are infeasible");
}

/// A cloud whose queue outweighs the edge's slower compute loses the plan to the edge; when the
/// queue drains, the cloud wins again. The queue is charged once, in the plan's breakdown too.
#[test]
fn a_queue_on_the_cloud_moves_the_plan_to_the_edge() {
    let machine = |name: &str, tier, per_block, queue_ns| Machine { queue_ns, ..Machine::new(name, tier, vec![per_block; 4]) };
    let fast = Link { latency_ns: 0, bits_per_sec: 8_000_000_000 };
    let problem = |cloud_queue| Problem {
        tiers: vec!["device".into(), "edge".into(), "cloud".into()],
        machines: vec![machine("device", 0, 1_000, 0), machine("edge", 1, 300, 0), machine("cloud", 2, 100, cloud_queue)],
        boundary_bytes: vec![8; 5],
        input_bytes: 8,
        block_weight_bytes: vec![0; 4],
        block_activation_bytes: vec![0; 4],
        links: (0..3).flat_map(|a| (0..3).filter(move |&b| b != a).map(move |b| (a, b, fast))).collect(),
        options: CostOptions::default(),
    };
    let best = |queue| solver::solve(&problem(queue), &Constraints::default(), Objective::Latency, 1).unwrap().remove(0);
    let idle = best(0);
    assert_eq!(idle.segments.last().map(|s| s.tier), Some(2), "an idle cloud runs everything: {idle:?}");
    assert_eq!(idle.cost.queue_ns, 0);
    let busy = best(5_000);
    assert_eq!(busy.segments.iter().map(|s| s.tier).collect::<Vec<_>>(), [0, 1], "a queued cloud is skipped: {busy:?}");
    let through_cloud = solver::brute::top_k(&problem(5_000), &Constraints::default(), Objective::Latency, 16)
        .unwrap()
        .into_iter()
        .find(|p| p.segments.iter().any(|s| s.tier == 2))
        .unwrap();
    assert_eq!(through_cloud.cost.queue_ns, 5_000, "charged once: {through_cloud:?}");
}

/// A measured range replaces the sum of its blocks; ranges the planner cannot use exactly (inside
/// the model, outside it, twice) are refused by name.
#[test]
fn measured_ranges_cost_what_was_measured_and_bad_ones_are_refused() {
    let fast = Link { latency_ns: 0, bits_per_sec: 8_000_000_000 };
    let problem = |ranges: Vec<RangeCost>| Problem {
        tiers: vec!["device".into(), "cloud".into()],
        machines: vec![Machine { ranges, ..Machine::new("device", 0, vec![100; 4]) }, Machine::new("cloud", 1, vec![50; 4])],
        boundary_bytes: vec![8; 5],
        input_bytes: 8,
        block_weight_bytes: vec![0; 4],
        block_activation_bytes: vec![0; 4],
        links: vec![(0, 1, fast), (1, 0, fast)],
        options: CostOptions::default(),
    };
    // By blocks, the cloud (200 ns plus 2 x 72 ns of hops) beats the device (400 ns); measured, the whole
    // model on the device takes 300 ns and wins.
    let best = |p: &Problem| solver::solve(p, &Constraints::default(), Objective::Latency, 1).unwrap().remove(0);
    let by_blocks = best(&problem(vec![]));
    assert_eq!(by_blocks.segments.last().map(|s| s.tier), Some(1), "{by_blocks:?}");
    let measured = best(&problem(vec![RangeCost { start: 0, end: 4, ns: 300 }]));
    assert_eq!((measured.segments.len(), measured.cost.device_ns, measured.cost.latency_ns), (1, 300, 300));
    for (ranges, says) in [
        (vec![RangeCost { start: 1, end: 3, ns: 5 }], "neither starts at the first block nor ends at the last"),
        (vec![RangeCost { start: 0, end: 5, ns: 5 }], "not within the 4 blocks"),
        (vec![RangeCost { start: 2, end: 2, ns: 5 }], "not within the 4 blocks"),
        (vec![RangeCost { start: 0, end: 2, ns: 5 }, RangeCost { start: 0, end: 2, ns: 6 }], "measured twice"),
        // A peer's profile listing more ranges than a model has from its ends.
        ((0..8).map(|i| RangeCost { start: 0, end: 1 + i % 4, ns: 5 }).collect(), "more than the 7"),
    ] {
        let error = solver::solve(&problem(ranges.clone()), &Constraints::default(), Objective::Latency, 1).unwrap_err().to_string();
        assert!(error.contains(says), "{ranges:?}: {error}");
    }
}
