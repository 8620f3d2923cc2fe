//! Printing ranked plans: a readable table and JSON.

use std::fmt::Write;

use scission_core::solver::plan::Hop;
use scission_core::solver::{Plan, Problem};
use serde_json::{Value, json};

fn ms(ns: u64) -> f64 {
    ns as f64 * 1e-6
}

fn block_range(labels: &[String], start: usize, end: usize) -> String {
    match end - start {
        0 => "nothing".to_string(),
        1 => format!("block {start} ({})", labels[start]),
        _ => format!("blocks {start}-{} ({} .. {})", end - 1, first_label(&labels[start]), last_label(&labels[end - 1])),
    }
}

fn first_label(label: &str) -> &str {
    label.split(" .. ").next().unwrap_or(label)
}

fn last_label(label: &str) -> &str {
    label.rsplit(" .. ").next().unwrap_or(label)
}

/// One label per block of a profile: its node, or its first and last nodes.
pub fn block_labels(profile: &scission_core::profile::Profile) -> Vec<String> {
    profile
        .blocks
        .iter()
        .map(|b| if b.first_node == b.last_node { b.first_node.clone() } else { format!("{} .. {}", b.first_node, b.last_node) })
        .collect()
}

/// The ranked plans as a table: one paragraph per plan, a line per segment and hop.
pub fn table(problem: &Problem, labels: &[String], plans: &[Plan]) -> String {
    let mut out = String::new();
    for (rank, plan) in plans.iter().enumerate() {
        let c = &plan.cost;
        let compute: u64 = c.compute_ns.iter().sum();
        let _ = writeln!(
            out,
            "#{:<3} {:>10.3} ms  = compute {:.3} ms + transfer {:.3} ms   device {:.3} ms, uploads {} B, bottleneck {:.3} ms",
            rank + 1,
            ms(c.latency_ns),
            ms(compute),
            ms(c.latency_ns - compute),
            ms(c.device_ns),
            c.device_upload_bytes,
            ms(c.bottleneck_ns)
        );
        for (i, s) in plan.segments.iter().enumerate() {
            if i > 0 {
                write_hop(&mut out, problem, "hop", &c.hops[i - 1]);
            }
            let tier = &problem.tiers[s.tier];
            let machine = &problem.machines[s.machine].name;
            let _ = writeln!(out, "       {:>9.3} ms  {tier} {machine}: {}", ms(c.compute_ns[i]), block_range(labels, s.start, s.end));
        }
        for h in &c.result_hops {
            write_hop(&mut out, problem, "result", h);
        }
    }
    out
}

/// One line of a plan's table for a message between machines.
fn write_hop(out: &mut String, problem: &Problem, kind: &str, h: &Hop) {
    let (from, to) = (&problem.machines[h.from].name, &problem.machines[h.to].name);
    let _ = writeln!(out, "       {:>9.3} ms  {kind} {from} -> {to}: {} B", ms(h.ns), h.bytes);
}

/// The ranked plans as JSON (`scission-plans` version 2: the result's way back is `result_hops`,
/// one hop per forward hop, where version 1 had one `result_hop` to the device).
pub fn json(problem: &Problem, labels: &[String], plans: &[Plan]) -> Value {
    let hop = |h: &scission_core::solver::plan::Hop| json!({"from": problem.machines[h.from].name, "to": problem.machines[h.to].name, "bytes": h.bytes, "ms": ms(h.ns)});
    let plans: Vec<Value> = plans
        .iter()
        .enumerate()
        .map(|(rank, p)| {
            let segments: Vec<Value> = p
                .segments
                .iter()
                .zip(&p.cost.compute_ns)
                .map(|(s, &ns)| {
                    json!({
                        "tier": problem.tiers[s.tier],
                        "machine": problem.machines[s.machine].name,
                        "blocks": [s.start, s.end],
                        "first": labels.get(s.start),
                        "last": s.end.checked_sub(1).and_then(|e| labels.get(e)),
                        "compute_ms": ms(ns),
                    })
                })
                .collect();
            json!({
                "rank": rank + 1,
                "latency_ms": ms(p.cost.latency_ns),
                "device_ms": ms(p.cost.device_ns),
                "device_upload_bytes": p.cost.device_upload_bytes,
                "cloud_bytes": p.cost.cloud_bytes,
                "bottleneck_ms": ms(p.cost.bottleneck_ns),
                "segments": segments,
                "hops": p.cost.hops.iter().map(hop).collect::<Vec<_>>(),
                "result_hops": p.cost.result_hops.iter().map(hop).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"format": "scission-plans", "version": 2, "plans": plans})
}
