//! `scission-cloud plan` on profiles written by the three binaries' `bench`.

mod common;

use std::path::{Path, PathBuf};

use common::{Verification, quick_bench, quick_bench_with, run, stderr, verification_commands, write_model};
use scission_core::profile::Profile;
use scission_zoo::onnx::testmodels::TestModel;

const LINKS: [&str; 6] = [
    "device-edge=20mbit,5ms",
    "edge-device=20mbit,5ms",
    "device-cloud=5mbit,40ms",
    "cloud-device=5mbit,40ms",
    "edge-cloud=200mbit,20ms",
    "cloud-edge=200mbit,20ms",
];

fn bench_all(dir: &Path, kind: TestModel) -> Vec<PathBuf> {
    bench_all_with(dir, kind, &[])
}

fn bench_all_with(dir: &Path, kind: TestModel, extra: &[&str]) -> Vec<PathBuf> {
    let model = write_model(dir, kind, 32);
    ["scission-device", "scission-edge", "scission-cloud"]
        .iter()
        .map(|bin| quick_bench_with(bin, &model, &dir.join(format!("{bin}-{}.json", kind.name())), bin, extra))
        .collect()
}

fn plan(profiles: &[PathBuf], extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec!["plan".into()];
    args.extend(profiles.iter().map(|p| p.to_string_lossy().into_owned()));
    for l in LINKS {
        args.push("--link".into());
        args.push(l.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run("scission-cloud", &args)
}

/// Recomputes a plan's latency from the profiles and the link figures, independently of the
/// solver: per segment, the median of its range where the profile timed that range, else the
/// medians of its blocks; plus latency + bytes x 8 / bandwidth per hop.
fn recompute(profiles: &[Profile], plan: &serde_json::Value) -> f64 {
    let link = |from: &str, to: &str| -> (f64, f64) {
        let tier = |name: &str| profiles.iter().find(|p| p.machine.name == name).unwrap().machine.tier.as_str();
        let spec = LINKS.iter().find(|l| l.starts_with(&format!("{}-{}=", tier(from), tier(to)))).unwrap();
        let (bw, lat) = spec.split_once('=').unwrap().1.split_once(',').unwrap();
        (lat.trim_end_matches("ms").parse::<f64>().unwrap() * 1e-3, bw.trim_end_matches("mbit").parse::<f64>().unwrap() * 1e6)
    };
    let mut total = 0.0;
    for s in plan["segments"].as_array().unwrap() {
        let p = profiles.iter().find(|p| p.machine.name == s["machine"]).unwrap();
        let (a, b) = (s["blocks"][0].as_u64().unwrap() as usize, s["blocks"][1].as_u64().unwrap() as usize);
        let blocks = p.blocks[a..b].iter().map(|b| b.time.median_ns).sum::<u64>();
        let range = p.ranges.iter().find(|r| (r.first_block, r.end_block) == (a, b));
        total += range.map_or(blocks, |r| r.time.median_ns) as f64 * 1e-9;
    }
    // Each end of a hop spends half of what its machine's bench measured for a loopback hop.
    let end = |name: &str, bytes: f64| -> f64 {
        let cost = profiles.iter().find(|p| p.machine.name == name).unwrap().messages.expect("bench measures the message cost");
        (cost.fixed_ns as f64 + bytes * cost.ps_per_byte as f64 * 1e-3) * 1e-9 / 2.0
    };
    let hops = plan["hops"].as_array().unwrap().iter().chain(plan["result_hops"].as_array().unwrap());
    for h in hops {
        let (from, to, bytes) = (h["from"].as_str().unwrap(), h["to"].as_str().unwrap(), h["bytes"].as_f64().unwrap());
        let (lat, bps) = link(from, to);
        total += lat + bytes * 8.0 / bps + end(from, bytes) + end(to, bytes);
    }
    total
}

#[test]
fn measured_ranges_replace_the_sums_of_their_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let files = bench_all_with(dir.path(), TestModel::Branched, &["--ranges", "auto"]);
    let profiles: Vec<Profile> = files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect();
    let n = profiles[0].blocks.len();
    let spans = |p: &Profile| p.ranges.iter().map(|r| (r.first_block, r.end_block)).collect::<Vec<_>>();
    let prefixes: Vec<(usize, usize)> = (1..=n).map(|end| (0, end)).collect();
    let suffixes: Vec<(usize, usize)> = (0..n).map(|first| (first, n)).collect();
    assert_eq!(spans(&profiles[0]), prefixes, "a device times its prefixes");
    let mut both: Vec<(usize, usize)> = prefixes.iter().chain(&suffixes[1..]).copied().collect();
    both.sort();
    assert_eq!(spans(&profiles[1]), both, "an edge times both");
    assert_eq!(spans(&profiles[2]), suffixes, "a cloud times its suffixes");
    for p in &profiles {
        let whole = p.ranges.iter().find(|r| (r.first_block, r.end_block) == (0, n)).unwrap();
        assert_eq!(whole.time, p.whole_model, "the whole model is the unsplit run");
        for r in &p.ranges {
            assert_eq!((r.range.start, r.range.end), (p.blocks[r.first_block].range.start, p.blocks[r.end_block - 1].range.end));
            assert!(r.time.median_ns > 0);
        }
    }
    let out = plan(&files, &["--json", "-n", "12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blocks_only: Vec<Profile> = profiles.iter().map(|p| Profile { ranges: Vec::new(), ..p.clone() }).collect();
    let mut differs = 0;
    for p in v["plans"].as_array().unwrap() {
        let latency = p["latency_ms"].as_f64().unwrap() * 1e-3;
        let expected = recompute(&profiles, p);
        assert!((latency - expected).abs() < 1e-6, "plan {} predicted {latency} s, recomputed {expected} s", p["rank"]);
        differs += usize::from((recompute(&blocks_only, p) - latency).abs() > 1e-6);
    }
    assert!(differs > 0, "no plan's cost came from a measured range");
}

#[test]
fn plans_from_profiles_follow_the_cost_model() {
    let dir = tempfile::tempdir().unwrap();
    let files = bench_all(dir.path(), TestModel::Branched);
    let profiles: Vec<Profile> = files.iter().map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()).collect();
    let out = plan(&files, &["--json", "-n", "8"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 8);
    let mut previous = 0.0;
    for p in plans {
        let latency = p["latency_ms"].as_f64().unwrap() * 1e-3;
        assert!(latency >= previous, "ranked by latency");
        previous = latency;
        let expected = recompute(&profiles, p);
        assert!((latency - expected).abs() < 1e-6, "plan {} predicted {latency} s, recomputed {expected} s", p["rank"]);
        let covered: Vec<(u64, u64)> = p["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["blocks"][0].as_u64().unwrap(), s["blocks"][1].as_u64().unwrap()))
            .collect();
        assert_eq!(covered[0].0, 0);
        assert_eq!(covered.last().unwrap().1 as usize, profiles[0].blocks.len());
    }
    // The table names every tier used by the best plan.
    let table = plan(&files, &["-n", "1"]);
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("#1"), "{text}");
    // Pareto mode: no listed plan dominates another.
    let front = plan(&files, &["--pareto", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&front.stdout).unwrap();
    let figures: Vec<(f64, f64, u64)> = v["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["latency_ms"].as_f64().unwrap(), p["device_ms"].as_f64().unwrap(), p["device_upload_bytes"].as_u64().unwrap()))
        .collect();
    assert!(!figures.is_empty());
    for a in &figures {
        for b in &figures {
            let dominates = a.0 <= b.0 && a.1 <= b.1 && a.2 <= b.2 && a != b;
            assert!(!dominates, "{a:?} dominates {b:?}");
        }
    }
}

#[test]
fn mismatched_profiles_and_missing_links_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let branched = bench_all(dir.path(), TestModel::Branched);
    let chain = bench_all(dir.path(), TestModel::Chain);
    let mixed = [branched[0].clone(), chain[1].clone()];
    let out = plan(&mixed, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("benchmark the same ONNX file everywhere"), "{}", stderr(&out));
    let two = [branched[0].to_str().unwrap(), branched[2].to_str().unwrap()];
    let out = run("scission-cloud", &["plan", two[0], two[1]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no link from 'scission-device' to 'scission-cloud'"), "{}", stderr(&out));
    // One direction given: the reverse gets the same figures, unless a later --link gives it.
    let json = |links: &[&str]| -> serde_json::Value {
        let mut args = vec!["plan", two[0], two[1], "--json"];
        args.extend(links);
        let out = run("scission-cloud", &args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let same = json(&["--link", "device-cloud=10mbit,10ms"]);
    let asymmetric = json(&["--link", "device-cloud=10mbit,10ms", "--link", "cloud-device=1mbit,100ms"]);
    assert_ne!(same, asymmetric, "the later --link cloud-device changed the plans' costs");
    // The device computes nothing yet may upload nothing: only relaxing one of the two helps.
    let out = plan(&branched, &["-d", "-1", "--device-upload", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let err = stderr(&out);
    assert!(err.contains("no plan satisfies the constraints"), "{err}");
    assert!(err.contains("upload caps") && err.contains("tiers that must be unused"), "{err}");
}

/// Sets every block's timings in the profile at `path` to `ns`.
fn set_block_times(path: &Path, ns: u64) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for block in v["blocks"].as_array_mut().unwrap() {
        for field in ["median_ns", "p10_ns", "p90_ns", "min_ns", "max_ns"] {
            block["time"][field] = ns.into();
        }
    }
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn four_tier_chains_and_placement() {
    let dir = tempfile::tempdir().unwrap();
    let files = bench_all(dir.path(), TestModel::Chain);
    let model = dir.path().join("chain-cnn.onnx");
    let edge2 = dir.path().join("edge2.json");
    quick_bench("scission-edge", &model, &edge2, "edge2");
    // Measured times on one host are noise-ranked ties; fix them so the ranking is known: both
    // edges take 1 ms per block, the device and the cloud 10 ms. The best plans then stay on the
    // edges, and every split between the two edges costs only one extra (fast) hop.
    for (file, ms) in [(&files[0], 10), (&files[1], 1), (&edge2, 1), (&files[2], 10)] {
        set_block_times(file, ms * 1_000_000);
    }
    let mut args: Vec<String> = vec!["plan".into()];
    args.extend(files.iter().chain([&edge2]).map(|p| p.to_string_lossy().into_owned()));
    for spec in ["--tiers", "device,edge1,edge2,cloud", "--place", "scission-edge=edge1", "--place", "edge2=edge2", "--json", "-n", "50"] {
        args.push(spec.into());
    }
    for (a, b) in
        [("device", "edge1"), ("device", "edge2"), ("device", "cloud"), ("edge1", "edge2"), ("edge1", "cloud"), ("edge2", "cloud")]
    {
        args.extend(["--link".into(), format!("{a}-{b}=10gbit,1us"), "--link".into(), format!("{b}-{a}=10gbit,1us")]);
    }
    let out = run("scission-cloud", &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 50);
    let order = ["device", "edge1", "edge2", "cloud"];
    let mut used_both_edges = false;
    for p in plans {
        let tiers: Vec<usize> =
            p["segments"].as_array().unwrap().iter().map(|s| order.iter().position(|t| *t == s["tier"]).unwrap()).collect();
        assert!(tiers.windows(2).all(|w| w[0] < w[1]), "{tiers:?}");
        used_both_edges |= tiers.contains(&1) && tiers.contains(&2);
    }
    assert!(used_both_edges, "some of the top 50 plans go through both edges");
    // A placement into a tier outside the chain is an error that names both.
    let bad: Vec<&str> = args.iter().map(|a| if a == "edge2=edge2" { "edge2=edge9" } else { a.as_str() }).collect();
    let out = run("scission-cloud", &bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("'edge9', which is not in the chain device -> edge1 -> edge2 -> cloud"), "{}", stderr(&out));
}

#[test]
fn a_verification_pass_times_what_the_top_plans_run_and_planning_again_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = bench_all(dir.path(), TestModel::Branched);
    let model = dir.path().join(format!("{}.onnx", TestModel::Branched.name()));
    assert!(model.exists());
    // Each round times what the top plans run; a plan that rises into the top with an unmeasured
    // range gets timed in the next, until none is left (the ranges are finitely many).
    let mut rounds = 0;
    loop {
        let out = plan(&files, &["-n", "4", "--verify"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let commands = verification_commands(&text).unwrap();
        if commands.is_empty() {
            assert!(text.contains("every range these plans run from the first block or to the last is measured"), "{text}");
            break;
        }
        rounds += 1;
        assert!(rounds <= 40, "the verification pass does not converge:\n{text}");
        for Verification { line, binary, profile, spans } in commands {
            let before = serde_json::from_slice::<Profile>(&std::fs::read(profile).unwrap()).unwrap().ranges.len();
            let args = ["bench", model.to_str().unwrap(), "--out", profile, "--add-ranges", spans, "--min-runs", "3", "--quiet"];
            let out = run(binary, &args);
            assert!(out.status.success(), "{line}: {}", stderr(&out));
            let written: Profile = serde_json::from_slice(&std::fs::read(profile).unwrap()).unwrap();
            assert_eq!(written.ranges.len(), before + spans.split(',').count(), "{line}: only new ranges are asked for");
        }
    }
    assert!(rounds > 0, "the first plans ran unmeasured ranges");

    // Only ranges touching an end of the model, within it, on a profile of this model.
    let n = serde_json::from_slice::<Profile>(&std::fs::read(&files[0]).unwrap()).unwrap().blocks.len();
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let bad_model = write_model(&dir.path().join("other"), TestModel::Chain, 32);
    for (spans, model, expected) in [
        (format!("1-{}", n - 2), &model, "only ranges from block 0 or to the last block"),
        (format!("0-{n}"), &model, "expected FIRST-LAST"),
        ("3-1".to_string(), &model, "expected FIRST-LAST"),
        ("0-0".to_string(), &bad_model, "not of"),
    ] {
        let out = run("scission-device", &["bench", model.to_str().unwrap(), "--out", files[0].to_str().unwrap(), "--add-ranges", &spans]);
        assert!(!out.status.success(), "{spans}");
        assert!(stderr(&out).contains(expected), "{spans}: {}", stderr(&out));
    }
}

/// Sets every block's median to `median_ns` and its 90th percentile to `p90_ns` in the profile
/// at `path`, and each timed range to the sum of its blocks, alike.
fn set_spread(path: &Path, median_ns: u64, p90_ns: u64) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let set = |time: &mut serde_json::Value, blocks: u64| {
        for (field, ns) in [("median_ns", median_ns), ("p10_ns", median_ns), ("min_ns", median_ns), ("p90_ns", p90_ns), ("max_ns", p90_ns)]
        {
            time[field] = (ns * blocks).into();
        }
    };
    for block in v["blocks"].as_array_mut().unwrap() {
        set(&mut block["time"], 1);
    }
    for range in v.get_mut("ranges").and_then(|r| r.as_array_mut()).into_iter().flatten() {
        let blocks = range["end_block"].as_u64().unwrap() - range["first_block"].as_u64().unwrap();
        set(&mut range["time"], blocks);
    }
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn a_stage_that_spreads_ranks_lower_when_plans_are_priced_at_the_90th_percentile() {
    let dir = tempfile::tempdir().unwrap();
    let files = bench_all(dir.path(), TestModel::Chain);
    // The edge is the fastest at the median and the slowest one run in ten (a shared host);
    // the cloud is steady; the device is slow.
    for (file, median_ms, p90_ms) in [(&files[0], 50, 50), (&files[1], 1, 20), (&files[2], 2, 2)] {
        set_spread(file, median_ms * 1_000_000, p90_ms * 1_000_000);
    }
    let blocks = scission_engine::profile_file::read_profile(&files[2]).unwrap().blocks.len() as f64;
    let mut args: Vec<String> = vec!["plan".into()];
    args.extend(files.iter().map(|p| p.to_string_lossy().into_owned()));
    for (a, b) in [("device", "edge"), ("device", "cloud"), ("edge", "cloud")] {
        args.extend(["--link".into(), format!("{a}-{b}=10gbit,1us"), "--link".into(), format!("{b}-{a}=10gbit,1us")]);
    }
    args.push("--json".into());
    let best = |extra: &[&str]| {
        let mut all = args.clone();
        all.extend(extra.iter().map(|s| s.to_string()));
        let out = run("scission-cloud", &all);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let plan = v["plans"][0].clone();
        // The tiers that run blocks (the device's empty segment only sends the input).
        let segments = plan["segments"].as_array().unwrap().iter().filter(|s| s["blocks"][0] != s["blocks"][1]);
        let tiers: Vec<String> = segments.map(|s| s["tier"].as_str().unwrap().to_string()).collect();
        (tiers, plan["latency_ms"].as_f64().unwrap())
    };
    let (tiers, latency_ms) = best(&[]);
    assert_eq!(tiers, ["edge"], "at the median the edge runs everything");
    assert!((latency_ms - blocks).abs() < 1.0, "{latency_ms} ms for {blocks} blocks of 1 ms");
    let (tiers, latency_ms) = best(&["--stage-time", "p90"]);
    assert_eq!(tiers, ["cloud"], "one run in ten the steady cloud is faster");
    assert!((latency_ms - 2.0 * blocks).abs() < 1.0, "{latency_ms} ms for {blocks} blocks of 2 ms");
}
