//! The distributed runtime end to end: real `scission-cloud serve`, `scission-edge serve` and
//! `scission-device run` processes on loopback, with the cluster's mutual TLS.

mod common;

use std::io::{BufRead, BufReader};

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::cluster::{Cluster, start};
use common::{bin, quick_bench, run, stderr};
use scission_core::wire::message::{Body, FailureCode, decode, encode};
use scission_engine::{LoadOptions, Model};
use scission_net::{pki, quic};

/// A float32 `.npy` file of `shape` with varied values.
fn npy(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let count: usize = shape.iter().product();
    out.extend((0..count).flat_map(|i| ((i % 17) as f32 * 0.1 - 0.8).to_le_bytes()));
    out
}

/// The largest difference `scission-device run` reports in its summary line.
fn largest_difference(out: &std::process::Output) -> f32 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("requests: ")).unwrap_or_else(|| panic!("no summary in {text}"));
    assert!(line.starts_with("requests: 4 ok, 0 failed"), "{line}\n{text}\n{}", stderr(out));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Split positions that cross one tensor, two tensors (inside a residual block) and run
/// device-only, edge-only and cloud-only paths.
fn splits(model: &Path) -> Vec<String> {
    let m = Model::load_path(model, &LoadOptions::default()).unwrap();
    let n = m.summary.len();
    let two = (1..n).find(|&k| m.cuts.crossing(k).len() == 2).unwrap();
    let one = (two..n).find(|&k| m.cuts.crossing(k).len() == 1).unwrap();
    vec![format!("{two},{one}"), format!("0,{two}"), format!("{two},{two}"), format!("0,0"), format!("{n},{n}"), format!("{one},{n}")]
}

#[test]
fn three_tiers_compute_what_the_unsplit_model_does() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    for split in splits(&c.model) {
        let out = c.device(&c.cluster(), edge.addr, cloud.addr, &split, &[]);
        assert_eq!(largest_difference(&out), 0.0, "f32 is bit-exact at split {split}");
    }
    let split = &splits(&c.model)[0];
    // User inputs as .npy files: one request each.
    let good = c.dir.path().join("good.npy");
    std::fs::write(&good, npy(&[1, 3, 32, 32])).unwrap();
    let out = c.device(&c.cluster(), edge.addr, cloud.addr, split, &["--inputs", good.to_str().unwrap()]);
    assert_eq!(largest_difference(&out), 0.0);
    let wrong = c.dir.path().join("wrong.npy");
    std::fs::write(&wrong, npy(&[1, 3, 16, 16])).unwrap();
    let out = c.device(&c.cluster(), edge.addr, cloud.addr, split, &["--inputs", wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("the model takes f32 of shape [1, 3, 32, 32]"), "{}", stderr(&out));
    let f16 = largest_difference(&c.device(&c.cluster(), edge.addr, cloud.addr, split, &["--encoding", "f16"]));
    let int8 = largest_difference(&c.device(&c.cluster(), edge.addr, cloud.addr, split, &["--encoding", "int8"]));
    assert!(f16 <= 1e-3, "f16 difference {f16}");
    assert!(int8 <= 2e-2, "int8 difference {int8}");
}

#[test]
fn a_device_from_another_cluster_is_refused() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let other = c.dir.path().join("other");
    assert!(run("scission-cloud", &["init", "--cluster", other.to_str().unwrap()]).status.success());
    assert!(run("scission-cloud", &["enroll", "device", "--tier", "device", "--cluster", other.to_str().unwrap()]).status.success());
    let out = c.device(other.to_str().unwrap(), edge.addr, cloud.addr, "0,0", &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests: 0 ok, 4 failed"), "{text}");
    assert!(text.contains("handshake"), "{text}");
}

#[test]
fn garbage_truncated_and_oversized_frames_do_not_stop_the_server() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), "device").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        let conn = Arc::new(quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap());
        // Each case: raw bytes on a fresh stream, and the failure the server must answer with.
        let cases: Vec<(&str, Vec<u8>, FailureCode)> = vec![
            ("a frame that claims 4 GiB", vec![0xff; 4].into_iter().chain(vec![1, 2, 3]).collect(), FailureCode::TooLarge),
            ("a truncated frame", 100u32.to_le_bytes().into_iter().chain([7; 10]).collect(), FailureCode::BadRequest),
            ("garbage in a well-formed frame", 20u32.to_le_bytes().into_iter().chain([0xAB; 20]).collect(), FailureCode::BadRequest),
            ("half a header", vec![1, 2], FailureCode::BadRequest),
        ];
        for (what, bytes, expected) in cases {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&bytes).await.unwrap();
            send.finish().unwrap();
            let answer = quic::read_frame(&mut recv, 1 << 20).await.unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
            match decode(&answer).unwrap() {
                Body::Failure { code, .. } => assert_eq!(code, expected, "{what}"),
                other => panic!("{what}: expected a failure, got {other:?}"),
            }
        }
        // A stream abandoned mid-frame.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&1000u32.to_le_bytes()).await.unwrap();
        drop(send);
        // The server still answers on the same connection, and on a new one.
        let ping = encode(&Body::Ping { nonce: 42, padding: &[0; 16] }).unwrap();
        let pong = quic::exchange(&conn, ping.clone(), 1 << 20).await.unwrap();
        assert_eq!(decode(&pong).unwrap(), Body::Pong { nonce: 42 });
        conn.close(0u32.into(), b"bye");
        let again = quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap();
        let pong = quic::exchange(&again, ping.clone(), 1 << 20).await.unwrap();
        assert_eq!(decode(&pong).unwrap(), Body::Pong { nonce: 42 });
    });
    let out = c.device(&c.cluster(), edge.addr, cloud.addr, &splits(&c.model)[0], &[]);
    assert_eq!(largest_difference(&out), 0.0);
}

/// Profiles of the three tiers for `model`, with the device's block times scaled by `slowdown`
/// (this host plays all three machines; the scaling stands in for a slower board when
/// planning, while every stage still runs for real).
fn profiles(dir: &Path, model: &Path, slowdown: u64) -> String {
    let mut files = Vec::new();
    for (bin_name, name) in [("scission-device", "device"), ("scission-edge", "edge"), ("scission-cloud", "cloud")] {
        let out = quick_bench(bin_name, model, &dir.join(format!("{name}.json")), name);
        if name == "device" {
            let mut p: scission_core::profile::Profile = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
            for b in &mut p.blocks {
                b.time.median_ns *= slowdown;
            }
            std::fs::write(&out, serde_json::to_vec(&p).unwrap()).unwrap();
        }
        files.push(out.to_string_lossy().into_owned());
    }
    files.join(",")
}

#[test]
fn killing_the_edge_mid_stream_fails_over_without_losing_a_request() {
    let c = Cluster::new();
    let (cloud, mut edge) = c.servers();
    let profiles = profiles(c.dir.path(), &c.model, 50);
    let args = c.run_args(
        &c.cluster(),
        edge.addr,
        cloud.addr,
        &[
            "--profiles",
            &profiles,
            "--link",
            "device-edge=1gbit,1ms",
            "--link",
            "edge-cloud=100mbit,20ms",
            "--link",
            "device-cloud=10mbit,30ms",
            "--requests",
            "20",
            "--interval-ms",
            "50",
            "--timeout-ms",
            "2000",
        ],
    );
    let mut device = Command::new(bin("scission-device")).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = BufReader::new(device.stdout.take().unwrap());
    let mut lines = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.starts_with("request 3:") {
            let _ = edge.child.kill();
            let _ = edge.child.wait();
        }
        lines.push(line);
    }
    let status = device.wait().unwrap();
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    assert!(lines[0].starts_with("plan #1:") && lines[0].contains("tier 1"), "plan #1 uses the edge: {text}");
    assert!(text.contains("tier 1 unreachable"), "{text}");
    assert!(text.contains("requests: 20 ok, 0 failed"), "{text}");
    for i in 0..20 {
        let results = lines.iter().filter(|l| l.starts_with(&format!("request {i}: plan #"))).count();
        assert_eq!(results, 1, "request {i} has {results} results:\n{text}");
    }
    let last = lines.iter().rev().find(|l| l.starts_with("request 19:")).unwrap();
    assert!(!last.contains("tier 1 "), "after the edge died, requests avoid it: {last}");
}

#[test]
fn a_slower_emulated_uplink_makes_the_device_switch_plans() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let profiles = profiles(c.dir.path(), &c.model, 50);
    let args = c.run_args(
        &c.cluster(),
        edge.addr,
        cloud.addr,
        &[
            "--profiles",
            &profiles,
            "--link",
            "device-edge=100mbit,2ms",
            "--link",
            "edge-cloud=1gbit,5ms",
            "--link",
            "device-cloud=50mbit,10ms",
            "--requests",
            "16",
            "--emulate",
            "--emulate-change",
            "6:1=2mbit,5ms",
            "--replan-every",
            "4",
            "--report",
            c.dir.path().join("report.json").to_str().unwrap(),
        ],
    );
    let out = run("scission-device", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("plan #1: tier 1"), "the edge is used first: {text}");
    let changed = lines.iter().position(|l| l.starts_with("emulated link to tier 1 now 2.0 Mbit/s")).expect("the link changes");
    let switch = lines.iter().position(|l| l.starts_with("plan switch:")).unwrap_or_else(|| panic!("no plan switch:\n{text}"));
    assert!(switch > changed, "the switch follows the change:\n{text}");
    assert!(
        lines[switch].contains("tier 1: 2.") || lines[switch].contains("tier 1: 1."),
        "the measured uplink is near 2 Mbit/s: {}",
        lines[switch]
    );
    assert!(text.contains("requests: 16 ok, 0 failed"), "{text}");
    // Back to back, a request that comes while the links are measured waits, and says so.
    assert!(lines.iter().any(|l| l.starts_with("request ") && l.contains("; waited ")), "{text}");
    let last = lines.iter().rev().find(|l| l.starts_with("request 15:")).unwrap();
    assert!(!last.contains("tier 1 "), "after the switch the edge is no longer used: {last}");

    // The report: every request once, each with its route's prediction and a compute time
    // within its end-to-end time; per plan, the requests add up and both plans are there.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(c.dir.path().join("report.json")).unwrap()).unwrap();
    let requests = report["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 16);
    for r in requests {
        let measured = r["measured_ms"].as_f64().unwrap();
        let compute: f64 = r["compute_ms"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!(r["predicted_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(compute > 0.0 && compute <= measured, "compute {compute} ms within {measured} ms: {r}");
        assert!((r["transfer_and_overhead_ms"].as_f64().unwrap() - (measured - compute)).abs() < 1e-3, "{r}");
        assert!(r["latency_ms"].as_f64().unwrap() >= measured, "submission to answer takes at least the route's time: {r}");
        let setup = r["setup_ms"].as_f64().unwrap();
        assert!((0.0..=measured - compute + 1e-3).contains(&setup), "the device's setup is within what its stages did not compute: {r}");
    }
    // The device slice of the plan switched to was built as its ranking arrived, while the
    // request at hand went on along the edge: none waited for a slice.
    assert!(requests.iter().all(|r| r["setup_ms"].as_f64() == Some(0.0)), "{requests:?}");
    let plans = report["plans"].as_array().unwrap();
    assert!(plans.len() >= 2, "the plan before and after the switch: {plans:?}");
    assert_eq!(plans.iter().map(|p| p["requests"].as_u64().unwrap()).sum::<u64>(), 16);
    assert!(plans.iter().any(|p| p["route"].as_str().unwrap().contains("edge")), "{plans:?}");
    assert!(plans.iter().any(|p| !p["route"].as_str().unwrap().contains("edge")), "{plans:?}");
    assert!(text.contains("predicted ms") && text.contains("measured ms"), "the per-plan table is printed: {text}");

    // The planner replays the report: the plans the device measured show their medians beside
    // their predictions, and the ranking is redone with them.
    let report_path = c.dir.path().join("report.json");
    let mut plan_args: Vec<&str> = vec!["plan"];
    plan_args.extend(profiles.split(','));
    for link in [
        "device-edge=100mbit,2ms",
        "edge-device=100mbit,2ms",
        "edge-cloud=1gbit,5ms",
        "cloud-edge=1gbit,5ms",
        "device-cloud=50mbit,10ms",
        "cloud-device=50mbit,10ms",
    ] {
        plan_args.extend(["--link", link]);
    }
    plan_args.extend(["-n", "20", "--calibration", report_path.to_str().unwrap()]);
    let out = run("scission-cloud", &plan_args);
    let planned = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{planned}\n{}", stderr(&out));
    let table: Vec<Vec<&str>> = planned
        .lines()
        .skip_while(|l| !l.starts_with("calibrated ranking"))
        .skip(2)
        .take_while(|l| l.trim_start().starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table.len(), 20, "{planned}");
    let medians: Vec<String> = plans.iter().filter_map(|p| p["measured_median_ms"].as_f64()).map(|ms| format!("{ms:.2}")).collect();
    let matched: Vec<&Vec<&str>> = table.iter().filter(|row| row[3] != "-").collect();
    assert!(!matched.is_empty(), "a measured route is among the plans: {planned}");
    assert!(matched.iter().all(|row| medians.contains(&row[3].to_string())), "measured figures come from the report: {planned}");
    let ranked_by: Vec<f64> = table.iter().map(|row| if row[3] == "-" { row[2] } else { row[3] }.parse().unwrap()).collect();
    assert!(ranked_by.windows(2).all(|w| w[0] <= w[1]), "ranked by measured, else predicted, latency: {planned}");
    // The replay: priced with the run's stage and hop costs, the plans are ranked again; the
    // route the device ran after the switch is now predicted within 10 % of its measured median.
    let replayed: Vec<(f64, String)> = planned
        .lines()
        .skip_while(|l| !l.starts_with("planned again with the run's measured costs"))
        .skip(1)
        .filter_map(|l| {
            let (ms, route) = l.trim_start().split_once(' ')?.1.trim_start().split_once(" ms  ")?;
            Some((ms.parse().ok()?, route.to_string()))
        })
        .collect();
    assert_eq!(replayed.len(), 20, "{planned}");
    let after = plans.iter().find(|p| !p["route"].as_str().unwrap().contains("edge") && p["measured_median_ms"].is_f64()).unwrap();
    let (route, median) = (after["route"].as_str().unwrap(), after["measured_median_ms"].as_f64().unwrap());
    let (again, _) = replayed.iter().find(|(_, r)| r == route).unwrap_or_else(|| panic!("{route} is among the replayed plans: {planned}"));
    // Without the run's costs this route is predicted over 50 % slow (past the 20 plans listed).
    assert!((0.9..1.1).contains(&(again / median)), "{route}: replayed {again} ms against {median} ms measured: {planned}");
    // Anything but a run report is refused with a clear error.
    let profile_path = profiles.split(',').next().unwrap().to_string();
    let wrong: Vec<&str> = plan_args.iter().map(|a| if *a == report_path.to_str().unwrap() { profile_path.as_str() } else { a }).collect();
    let out = run("scission-cloud", &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not a run report"), "{}", stderr(&out));
}

#[test]
fn the_cloud_plans_and_serves_the_model_to_tiers_without_it() {
    let c = Cluster::new();
    let profiles = profiles(c.dir.path(), &c.model, 50);
    let files: Vec<&str> = profiles.split(',').collect();
    let cluster = c.cluster();
    let cloud =
        start("scission-cloud", &["serve", c.model.to_str().unwrap(), "--cluster", &cluster, "--profile", files[2], "--threads", "1"]);
    let edge_model = c.dir.path().join("edge-copy.onnx");
    let cloud_addr = cloud.addr.to_string();
    let edge = start(
        "scission-edge",
        &[
            "serve",
            edge_model.to_str().unwrap(),
            "--fetch-model",
            "--cluster",
            &cluster,
            "--cloud",
            &cloud_addr,
            "--profile",
            files[1],
            "--threads",
            "1",
        ],
    );
    assert_eq!(std::fs::read(&edge_model).unwrap(), std::fs::read(&c.model).unwrap(), "the edge fetched the exact model");
    let device_model = c.dir.path().join("device-copy.onnx");
    let edge_addr = edge.addr.to_string();
    // The edge registered with the cloud before announcing its address.
    let out = run(
        "scission-device",
        &[
            "run",
            device_model.to_str().unwrap(),
            "--fetch-model",
            "--cluster",
            &cluster,
            "--edge",
            &edge_addr,
            "--cloud",
            &cloud_addr,
            "--profile",
            files[0],
            "--requests",
            "6",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert_eq!(std::fs::read(&device_model).unwrap(), std::fs::read(&c.model).unwrap());
    assert!(text.lines().next().is_some_and(|l| l.starts_with("plan #1: ")), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(first.contains("tier 1") || first.contains("tier 2"), "the cloud's plan offloads the 50x slower device: {text}");
    assert!(text.contains("requests: 6 ok, 0 failed; largest difference from the unsplit model 0e0"), "{text}");
}

/// A scaled-out cloud: stage servers without a planner behind --cloud, one planner apart
/// (--planner). The edge registers with the planner and forwards to the stage server; the
/// device asks the planner for plans and sends its stages to the edge and the stage server.
#[test]
fn a_planner_apart_from_the_cloud_stage_servers_plans_while_they_serve() {
    let c = Cluster::new();
    let profiles = profiles(c.dir.path(), &c.model, 50);
    let files: Vec<&str> = profiles.split(',').collect();
    let (cluster, model) = (c.cluster(), c.model.to_str().unwrap());
    let planner = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--profile", files[2], "--threads", "1"]);
    // Without a profile a cloud serves stages and does not plan.
    let stages = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"]);
    let (planner_addr, stages_addr) = (planner.addr.to_string(), stages.addr.to_string());
    let edge_args = ["serve", model, "--cluster", &cluster, "--cloud", &stages_addr, "--planner", &planner_addr];
    let edge = start("scission-edge", &[&edge_args[..], &["--profile", files[1], "--threads", "1"]].concat());
    let edge_addr = edge.addr.to_string();
    let device = |cloud: &str, extra: &[&str]| {
        let args = ["run", model, "--cluster", &cluster, "--edge", &edge_addr, "--cloud", cloud, "--requests", "6"];
        let out = run("scission-device", &[&args[..], extra].concat());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        text
    };
    // Plans come from the planner (the stage server would refuse to plan).
    let refused = run("scission-device", &["run", model, "--cluster", &cluster, "--cloud", &stages_addr, "--profile", files[0]]);
    assert!(!refused.status.success() && stderr(&refused).contains("plan"), "{}", stderr(&refused));
    let text = device(&stages_addr, &["--planner", &planner_addr, "--profile", files[0]]);
    assert!(text.contains("requests: 6 ok, 0 failed; largest difference from the unsplit model 0e0"), "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(first.contains("tier 1") || first.contains("tier 2"), "the 50x slower device offloads: {text}");
    // The stage server serves tier 2 by itself, with the planner gone.
    drop(planner);
    let nodes = Model::load_path(&c.model, &LoadOptions::default()).unwrap().summary.len();
    let split = format!("0,{}", nodes / 2);
    let text = device(&stages_addr, &["--split", &split]);
    assert!(text.contains("requests: 6 ok, 0 failed"), "{text}");
}

/// `scission-BIN serve` of the cluster's model as enrolled node `name` with `profile`, one
/// engine thread and a 1 s heartbeat, followed by `extra`.
fn serve_as(bin: &str, c: &Cluster, name: &str, profile: &str, extra: &[&str]) -> common::cluster::Server {
    let (cluster, model) = (c.cluster(), c.model.to_string_lossy().into_owned());
    let args = ["serve", &model, "--cluster", &cluster, "--name", name, "--profile", profile, "--threads", "1", "--heartbeat-s", "1"];
    start(bin, &[&args[..], extra].concat())
}

/// Every output of a request along `route` came back, equal (as f32 bits) to the unsplit model's.
fn assert_bit_equal(
    outputs: &[(usize, scission_engine::tract::prelude::TValue)],
    unsplit: &[scission_engine::tract::prelude::TValue],
    route: &[scission_core::wire::message::Stage],
) {
    assert!(!unsplit.is_empty() && outputs.len() == unsplit.len(), "every output came back along {route:?}");
    let bits = |t: &scission_engine::tract::prelude::Tensor| -> Vec<u32> {
        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
    };
    for ((_, got), want) in outputs.iter().zip(unsplit) {
        assert_eq!(bits(got), bits(want), "route {route:?} differs from the unsplit model");
    }
}

/// A benchmark profile of `model` for `name` whose every block takes `block_us` microseconds
/// (so which machine a plan picks does not depend on this machine's noise).
fn set_profile(dir: &Path, model: &Path, name: &str, block_us: u64) -> String {
    let path = dir.join(format!("{name}.json"));
    let bin_name = if name.starts_with("cloud") { "scission-cloud" } else { "scission-edge" };
    quick_bench(bin_name, model, &path, name);
    let mut p: scission_core::profile::Profile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for b in &mut p.blocks {
        b.time.median_ns = block_us * 1_000;
    }
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

/// Two edges and two clouds, each its own process: the plan chooses the second edge and the
/// second cloud (the fast ones), and the requests run there: they keep being answered, equal to
/// the unsplit model, after the first edge and the first cloud (the planner) are killed.
#[test]
fn plans_choose_among_registered_edges_and_clouds_and_requests_run_on_the_chosen_machines() {
    use scission_core::link::{Encoding, Link};
    use scission_engine::input::synthetic_inputs;
    use scission_runtime::client::{DeviceClient, Peer};
    let c = Cluster::new();
    let (cluster, dir) = (c.cluster(), c.dir.path());
    for (name, tier) in [("edge-b", "edge"), ("cloud-b", "cloud")] {
        assert!(run("scission-cloud", &["enroll", name, "--tier", tier, "--cluster", &cluster]).status.success());
    }
    // The planner's own cloud and the first edge are slow; the second edge is fast, the second
    // cloud ten times faster still. The gaps are tens of milliseconds a block, so the links the
    // edges measure on a busy host (a loopback round trip delayed by a few ms) cannot reorder them.
    let profile = |name: &str, us| set_profile(dir, &c.model, name, us);
    let (cloud_a, edge_a, edge_b, cloud_b) =
        (profile("cloud", 50_000), profile("edge", 50_000), profile("edge-b", 1_000), profile("cloud-b", 100));
    let device_profile = set_profile(dir, &c.model, "device", 10_000);
    let serve = |bin: &str, name: &str, profile: &str, extra: &[&str]| serve_as(bin, &c, name, profile, extra);
    let planner = serve("scission-cloud", "cloud", &cloud_a, &[]);
    let planner_addr = planner.addr.to_string();
    let second_cloud = serve("scission-cloud", "cloud-b", &cloud_b, &["--planner", &planner_addr]);
    let first_edge = serve("scission-edge", "edge", &edge_a, &["--cloud", &planner_addr]);
    let second_edge = serve("scission-edge", "edge-b", &edge_b, &["--cloud", &planner_addr]);
    let loaded = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let inputs = synthetic_inputs(&loaded.graph, 1).unwrap();
    let unsplit = loaded.whole().unwrap().run(inputs.clone()).unwrap();
    let node = Arc::new(scission_runtime::node::Node::new(loaded, 0, 1).unwrap());
    let identity = pki::Identity::load(&dir.join("cluster"), "device").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        let peers = std::collections::HashMap::from([(1u8, Peer::new(first_edge.addr, "edge")), (2u8, Peer::new(planner.addr, "cloud"))]);
        let client = DeviceClient::new(node, endpoint, peers, 64 << 20, std::time::Duration::from_secs(10));
        // A fast link to the edges, a slow one to the clouds: the input goes through an edge.
        let (fast, slow) =
            (Link { latency_ns: 10_000, bits_per_sec: 10_000_000_000 }, Link { latency_ns: 10_000, bits_per_sec: 1_000_000 });
        let uplinks = std::collections::HashMap::from([(1u8, fast), (2u8, slow)]);
        let profile = std::fs::read(&device_profile).unwrap();
        let plans = client.request_plans(2, &profile, &uplinks, &[], 4, None).await.unwrap();
        let (route, _) = &plans[0];
        let name_of = |s: &scission_core::wire::message::Stage| client.directory().name(s.machine);
        let names: Vec<Option<String>> = route.iter().filter(|s| s.tier > 0).map(name_of).collect();
        assert_eq!(names, [Some("edge-b".to_string()), Some("cloud-b".to_string())], "the best route: {route:?}");
        // The first edge and the planner go; the route does not need them.
        drop((first_edge, planner));
        for id in 0..5 {
            let outcome = client.infer(id, route, inputs.clone(), Encoding::F32).await.unwrap();
            let ran: Vec<(u8, u8)> = outcome.timings.iter().map(|t| (t.tier, t.machine)).collect();
            let named: Vec<(u8, u8)> = route.iter().map(|s| (s.tier, s.machine)).collect();
            assert_eq!(ran, named, "every stage reports the machine it ran on");
            assert_bit_equal(&outcome.outputs, &unsplit, route);
        }
    });
    drop((second_edge, second_cloud));
}

/// A chain of four tiers: the planner plans over `device,edge,edge2,cloud`, the second edge
/// serves tier 2 (--tier-index 2), and a route through all four runs end to end, equal to the
/// unsplit model; so does the planner's own best route.
#[test]
fn a_four_tier_chain_runs_end_to_end_and_matches_the_unsplit_model() {
    use scission_core::link::{Encoding, Link};
    use scission_core::wire::message::{CONFIGURED, Stage};
    use scission_engine::input::synthetic_inputs;
    use scission_runtime::client::{DeviceClient, Peer};
    let c = Cluster::new();
    let (cluster, dir) = (c.cluster(), c.dir.path());
    assert!(run("scission-cloud", &["enroll", "edge2", "--tier", "edge", "--cluster", &cluster]).status.success());
    let profile = |name: &str, us| set_profile(dir, &c.model, name, us);
    let (cloud, edge, edge2, device) = (profile("cloud", 100), profile("edge", 1_000), profile("edge2", 500), profile("device", 10_000));
    let serve = |bin: &str, name: &str, profile: &str, extra: &[&str]| serve_as(bin, &c, name, profile, extra);
    let planner = serve("scission-cloud", "cloud", &cloud, &["--tiers", "device,edge,edge2,cloud"]);
    let planner_addr = planner.addr.to_string();
    let second = serve("scission-edge", "edge2", &edge2, &["--cloud", &planner_addr, "--tier-index", "2"]);
    let first = serve("scission-edge", "edge", &edge, &["--cloud", &planner_addr]);
    let loaded = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let inputs = synthetic_inputs(&loaded.graph, 3).unwrap();
    let unsplit = loaded.whole().unwrap().run(inputs.clone()).unwrap();
    let node = Arc::new(scission_runtime::node::Node::new(loaded, 0, 1).unwrap());
    let profile: scission_core::profile::Profile = serde_json::from_slice(&std::fs::read(&device).unwrap()).unwrap();
    let identity = pki::Identity::load(&dir.join("cluster"), "device").unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let peers = std::collections::HashMap::from([(1u8, Peer::new(first.addr, "edge")), (2u8, Peer::new(planner.addr, "cloud"))]);
        let client = DeviceClient::new(node, quic::client(&identity).unwrap(), peers, 64 << 20, std::time::Duration::from_secs(10));
        let link = Link { latency_ns: 10_000, bits_per_sec: 10_000_000_000 };
        let uplinks = std::collections::HashMap::from([(1u8, link), (2u8, link)]);
        let json = serde_json::to_vec(&profile).unwrap();
        let plans = client.request_plans(2, &json, &uplinks, &[], 8, None).await.unwrap();
        let id_of = |name: &str| (1..=32u8).find(|&id| client.directory().name(id).as_deref() == Some(name)).expect(name);
        // Device, edge, edge2 and cloud one block or more each, at the profile's block boundaries.
        let cut = |i: usize| profile.blocks[i * profile.blocks.len() / 4].range.start as u32;
        let end = profile.blocks.last().unwrap().range.end as u32;
        let through_all = vec![
            Stage { tier: 0, machine: CONFIGURED, start: 0, end: cut(1) },
            Stage { tier: 1, machine: id_of("edge"), start: cut(1), end: cut(2) },
            Stage { tier: 2, machine: id_of("edge2"), start: cut(2), end: cut(3) },
            Stage { tier: 3, machine: CONFIGURED, start: cut(3), end },
        ];
        assert!(plans[0].0.iter().all(|s| s.tier <= 3), "the planner plans over its four tiers: {plans:?}");
        for route in [&through_all, &plans[0].0] {
            let outcome = client.infer(1, route, inputs.clone(), Encoding::F32).await.unwrap();
            let ran: Vec<(u8, u8)> = outcome.timings.iter().map(|t| (t.tier, t.machine)).collect();
            assert_eq!(ran, route.iter().map(|s| (s.tier, s.machine)).collect::<Vec<_>>(), "each stage ran where the route said");
            assert_bit_equal(&outcome.outputs, &unsplit, route);
        }
    });
    drop((first, second, planner));
}

/// The device's policy tracks machines: when the registered edge its plan uses dies, requests
/// fail over to the configured edge of the same tier (the next best), not away from the tier.
#[test]
fn a_dead_edge_machine_is_avoided_while_the_other_edge_keeps_serving() {
    let c = Cluster::new();
    let (cluster, model, dir) = (c.cluster(), c.model.to_str().unwrap(), c.dir.path());
    assert!(run("scission-cloud", &["enroll", "edge-b", "--tier", "edge", "--cluster", &cluster]).status.success());
    let profile = |name: &str, us| set_profile(dir, &c.model, name, us);
    let (cloud, edge_a, edge_b, device) =
        (profile("cloud", 5_000), profile("edge", 1_000), profile("edge-b", 100), profile("device", 10_000));
    let serve = |bin: &str, name: &str, profile: &str, extra: &[&str]| serve_as(bin, &c, name, profile, extra);
    let planner = serve("scission-cloud", "cloud", &cloud, &[]);
    let planner_addr = planner.addr.to_string();
    let edge = serve("scission-edge", "edge", &edge_a, &["--cloud", &planner_addr]);
    let mut fast_edge = serve("scission-edge", "edge-b", &edge_b, &["--cloud", &planner_addr]);
    let edge_addr = edge.addr.to_string();
    let args = [
        "run",
        model,
        "--cluster",
        &cluster,
        "--edge",
        &edge_addr,
        "--cloud",
        &planner_addr,
        "--profile",
        &device,
        "--requests",
        "20",
        "--interval-ms",
        "50",
        "--timeout-ms",
        "2000",
    ];
    let mut run_device = Command::new(bin("scission-device")).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(run_device.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("request 3:") {
            let _ = fast_edge.child.kill();
            let _ = fast_edge.child.wait();
        }
        lines.push(line);
    }
    let status = run_device.wait().unwrap();
    let text = lines.join("\n");
    assert!(status.success(), "{text}");
    // Which edge machine served a request ("... (tier 1 machine 2 0.31 ms)").
    let edge_of = |request: usize| {
        let line = lines.iter().find(|l| l.starts_with(&format!("request {request}: plan #"))).unwrap();
        let at = line.find("tier 1 machine ").unwrap_or_else(|| panic!("request {request} not on an edge machine: {text}"));
        line[at + 15..].split_whitespace().next().unwrap().to_string()
    };
    let (before, after) = (edge_of(0), edge_of(19));
    assert!(text.contains("requests: 20 ok, 0 failed"), "{text}");
    assert!(text.contains(&format!("machine {before} unreachable")), "the dead machine is named: {text}");
    assert_ne!(before, after, "the other edge of tier 1 serves now, not the cloud: {text}");
    drop((edge, planner));
}

/// A download that broke off resumes where it stopped; kept bytes that do not hash right are
/// thrown away, and the next download starts over.
#[test]
fn an_interrupted_model_download_resumes_and_bad_kept_bytes_are_discarded() {
    use scission_runtime::fetch::{Expected, fetch_model_blocking, resume_path};
    use scission_runtime::peer::Peer;
    let c = Cluster::new();
    // MobileNetV2 is 14 MB: four chunks of 4 MiB.
    let model = c.dir.path().join("mobilenet_v2.onnx");
    std::fs::copy(scission_zoo::cached("mobilenet_v2", 1).unwrap(), &model).unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let sha = scission_core::profile::parse_sha256(&Model::load_path(&model, &LoadOptions::default()).unwrap().sha256).unwrap();
    let cluster = c.cluster();
    let cloud = start("scission-cloud", &["serve", model.to_str().unwrap(), "--cluster", &cluster, "--threads", "1"]);
    let from = Peer::new(cloud.addr, "cloud");
    let dest = c.dir.path().join("fetched.onnx");
    let kept = resume_path(&dest, bytes.len() as u64, &sha);
    let fetch = |seen: &mut Vec<u64>| {
        let mut progress = |done: u64, _total: u64| seen.push(done);
        fetch_model_blocking(Path::new(&cluster), "device", &from, &dest, 64 << 20, Expected::default(), &mut progress)
    };

    // 9 MiB kept from an earlier attempt: only the rest is asked for.
    let at = 9 << 20;
    std::fs::write(&kept, &bytes[..at]).unwrap();
    let mut seen = Vec::new();
    fetch(&mut seen).unwrap();
    assert_eq!(seen.first(), Some(&(at as u64)), "resumed at the kept length: {seen:?}");
    assert_eq!(seen.len(), 3, "9 MiB kept, then 4 MiB and the last 1 MiB or so: {seen:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!kept.exists(), "the kept bytes became the file");

    // Kept bytes that are not the file's: the final check fails, and nothing is kept.
    std::fs::remove_file(&dest).unwrap();
    std::fs::write(&kept, vec![7u8; at]).unwrap();
    let error = fetch(&mut Vec::new()).unwrap_err().to_string();
    assert!(error.contains("SHA-256 does not match"), "{error}");
    assert!(!kept.exists() && !dest.exists(), "bad bytes are not kept for another resume");
    let mut seen = Vec::new();
    fetch(&mut seen).unwrap();
    assert_eq!(seen.first(), Some(&(4 << 20)), "started over: {seen:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);

    // A link planted at the resume name is not followed (nor kept).
    std::fs::remove_file(&dest).unwrap();
    let elsewhere = c.dir.path().join("elsewhere");
    std::fs::write(&elsewhere, &bytes[..at]).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &kept).unwrap();
    let mut seen = Vec::new();
    fetch(&mut seen).unwrap();
    assert_eq!(seen.first(), Some(&(4 << 20)), "a link is not resumed from: {seen:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(std::fs::read(&elsewhere).unwrap(), &bytes[..at], "the link's target is untouched");
}

/// Runs `scission-device` on the cluster's model against `edge` and `cloud`, planned by
/// `planning` (its planner and link flags), for 20 requests that re-plan on a 20 % drift, results
/// unchecked, with a run report in the cluster's directory. Returns the report's requests, each
/// one's predicted / measured latency, and what the device printed.
fn closed_loop(c: &Cluster, edge: SocketAddr, cloud: SocketAddr, planning: &[&str]) -> (Vec<serde_json::Value>, Vec<f64>, String) {
    let report = c.dir.path().join("closed-loop.json");
    let report_arg = report.to_string_lossy().into_owned();
    let common = ["--requests", "20", "--replan-on-drift", "20", "--no-check", "--report", &report_arg];
    let args = c.run_args(&c.cluster(), edge, cloud, &[planning, &common[..]].concat());
    let out = run("scission-device", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let requests = v["requests"].as_array().unwrap().clone();
    let ratios = requests.iter().map(|r| r["predicted_ms"].as_f64().unwrap() / r["measured_ms"].as_f64().unwrap()).collect();
    (requests, ratios, text)
}

/// Every request ran on the device alone; the first predictions were far too slow (50 times, or
/// less when the machine is busy: other tests run beside these), the last four within a factor
/// of two of what the last eight requests measured (their median: a single request of about a
/// millisecond can take five times longer when the other tests' processes are scheduled first).
fn assert_device_predictions_converge(requests: &[serde_json::Value], ratios: &[f64], text: &str) {
    for r in requests {
        assert!(r["route"].as_str().is_some_and(|route| route.starts_with("device[0,") && !route.contains(' ')), "{r}\n{text}");
    }
    assert!(ratios[..4].iter().any(|&r| r > 5.0), "first predicted far too slow: {ratios:?}\n{text}");
    let field = |r: &serde_json::Value, name: &str| r[name].as_f64().unwrap();
    let mut recent: Vec<f64> = requests[requests.len() - 8..].iter().map(|r| field(r, "measured_ms")).collect();
    let measured = common::quantile(&mut recent, 0.5);
    let last: Vec<f64> = requests[requests.len() - 4..].iter().map(|r| field(r, "predicted_ms") / measured).collect();
    assert!(last.iter().all(|r| (0.5..2.0).contains(r)), "then within a factor of two: {last:?} ({ratios:?})\n{text}");
}

/// The closed loop: profiles that make the device look 50 times slower than it is mispredict its
/// plan; once the measured latency drifts from the prediction, the device ranks again with what
/// its stages really cost, and the predictions follow the measurements.
#[test]
fn predictions_follow_measured_stage_costs_after_a_drift() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let profiles = profiles(c.dir.path(), &c.model, 50);
    // Links so slow that the device runs everything, however slow it is predicted.
    let links = ["--link", "device-edge=100kbit,100ms", "--link", "device-cloud=100kbit,100ms", "--link", "edge-cloud=100kbit,100ms"];
    let (requests, ratios, text) = closed_loop(&c, edge.addr, cloud.addr, &[&["--profiles", &profiles][..], &links].concat());
    assert_device_predictions_converge(&requests, &ratios, &text);
    // The session opened with its plan's device slice built: no request waited for it.
    assert!(requests.iter().all(|r| r["setup_ms"].as_f64() == Some(0.0)), "{requests:?}");
}

/// The closed loop learns what hops cost, too: the device plans with a 1 ms link from the edge to
/// the cloud, but the edge emulates 60 ms. The route through both stays the best (the edge alone
/// looks far too slow), and stage compute alone cannot explain its time; the hop's running
/// residual, from the hold times the tiers report, does, and the predictions follow the
/// measurements.
#[test]
fn predictions_follow_measured_hop_costs_after_a_drift() {
    let c = Cluster::new();
    let (dir, model) = (c.dir.path(), c.model.to_str().unwrap());
    let cluster = c.cluster();
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"]);
    let cloud_addr = cloud.addr.to_string();
    let edge = start(
        "scission-edge",
        &["serve", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--threads", "1", "--emulate-upstream", "1gbit,60ms"],
    );
    // A device and an edge that look slow, a cloud that looks fast, the cloud reached directly
    // only over a slow link: every plan hands the edge as little as it can and goes on to the
    // cloud.
    let all = profiles(dir, &c.model, 5_000);
    let device = all.split(',').next().unwrap();
    let profiles = [device.to_string(), set_profile(dir, &c.model, "edge", 100_000), set_profile(dir, &c.model, "cloud", 1)].join(",");
    let links = ["--link", "device-edge=1gbit,1ms", "--link", "device-cloud=100kbit,100ms", "--link", "edge-cloud=1gbit,1ms"];
    let (requests, ratios, text) = closed_loop(&c, edge.addr, cloud.addr, &[&["--profiles", &profiles][..], &links].concat());
    for r in &requests {
        let route = r["route"].as_str().unwrap();
        assert!(route.starts_with("edge[0,") && route.contains(" cloud["), "every route goes through the edge to the cloud: {r}");
        assert!(r["measured_ms"].as_f64().unwrap() >= 60.0, "the edge -> cloud hop is 60 ms: {r}");
        // The report's hops: device -> edge, then edge -> cloud, which carries the 60 ms; with
        // the compute they add up to the whole.
        let hops: Vec<(u64, u64, f64)> = r["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["from"].as_u64().unwrap(), h["to"].as_u64().unwrap(), h["ms"].as_f64().unwrap()))
            .collect();
        assert_eq!(hops.iter().map(|h| (h.0, h.1)).collect::<Vec<_>>(), [(0, 1), (1, 2)], "{r}");
        assert!(hops[1].2 >= 60.0 && hops[0].2 < 60.0, "{r}");
        let compute: f64 = r["compute_ms"].as_array().unwrap().iter().map(|c| c.as_f64().unwrap()).sum();
        let whole = hops.iter().map(|h| h.2).sum::<f64>() + compute;
        assert!((whole - r["measured_ms"].as_f64().unwrap()).abs() < 1e-3, "{r}");
    }
    let last = &ratios[ratios.len() - 4..];
    assert!(last.iter().all(|r| (0.7..1.4).contains(r)), "the last predictions are within 30 % of the measurements: {ratios:?}\n{text}");
}

/// The closed loop with the cloud's planner: the device's profile makes it look 50 times slower
/// than it is, and its (emulated, measured) uplinks are so slow that the cloud plans everything
/// on the device anyway. Each later plan request carries the device's measured prefix in place
/// of its profile's figure, and the cloud's predictions follow the measurements.
#[test]
fn the_clouds_predictions_follow_the_devices_measured_stages() {
    let c = Cluster::new();
    let (dir, model) = (c.dir.path(), c.model.to_str().unwrap());
    let cluster = c.cluster();
    let profiles = profiles(dir, &c.model, 50);
    let files: Vec<&str> = profiles.split(',').collect();
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--profile", files[2], "--threads", "1"]);
    let cloud_addr = cloud.addr.to_string();
    let edge =
        start("scission-edge", &["serve", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--profile", files[1], "--threads", "1"]);
    let uplinks = ["--link", "device-edge=1mbit,100ms", "--link", "device-cloud=1mbit,100ms", "--emulate"];
    // Requests keep going out on the plan at hand while the cloud re-plans over the slow
    // uplink (make before break): spaced out, the later ones see the new ranking.
    let spaced = ["--interval-ms", "50"];
    let (requests, ratios, text) = closed_loop(&c, edge.addr, cloud.addr, &[&["--profile", files[0]][..], &uplinks, &spaced].concat());
    assert_device_predictions_converge(&requests, &ratios, &text);
}

/// `serve --emulate-upstream` delays what an edge forwards to its cloud: a route through both
/// takes at least the emulated latency, one that stops at the edge does not; a cloud, which has
/// no next tier, refuses the flag.
#[test]
fn an_edge_emulates_its_link_to_the_cloud() {
    let c = Cluster::new();
    let model = c.model.to_str().unwrap();
    let cluster = c.cluster();
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"]);
    let cloud_addr = cloud.addr.to_string();
    let edge = start(
        "scission-edge",
        &["serve", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--threads", "1", "--emulate-upstream", "100mbit,150ms"],
    );
    let times = |split: &str| -> Vec<f64> {
        let out = c.device(&cluster, edge.addr, cloud.addr, split, &["--no-check"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        text.lines()
            .filter(|l| l.starts_with("request "))
            .filter_map(|l| l.split(" ms end to end").next()?.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let n = Model::load_path(&c.model, &LoadOptions::default()).unwrap().summary.len();
    let through_cloud = times("0,1");
    assert_eq!(through_cloud.len(), 4);
    assert!(through_cloud.iter().all(|&ms| ms >= 150.0), "edge -> cloud is 150 ms away: {through_cloud:?}");
    let at_edge = times(&format!("0,{n}"));
    assert_eq!(at_edge.len(), 4);
    assert!(at_edge.iter().all(|&ms| ms < 150.0), "the edge alone is not delayed: {at_edge:?}");
    let refused = run("scission-cloud", &["serve", model, "--cluster", &cluster, "--emulate-upstream", "1mbit,1ms"]);
    assert!(!refused.status.success() && stderr(&refused).contains("needs a next tier"), "{}", stderr(&refused));
    let bad = run("scission-edge", &["serve", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--emulate-upstream", "fast"]);
    assert!(!bad.status.success() && stderr(&bad).contains("BANDWIDTH,LATENCY"), "{}", stderr(&bad));
}

#[test]
fn a_slice_that_many_ask_for_at_once_is_built_once() {
    let c = Cluster::new();
    let loaded = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let node = scission_runtime::node::Node::new(loaded, 0, 1).unwrap();
    let block = scission_core::cut::Block { start: 0, end: node.graph().summary.len() };
    assert!(!node.is_built(block));
    let start = std::sync::Barrier::new(4);
    let slices: Vec<Arc<scission_engine::Slice>> = std::thread::scope(|s| {
        let asking: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    node.slice(block).unwrap()
                })
            })
            .collect();
        asking.into_iter().map(|a| a.join().unwrap()).collect()
    });
    assert!(node.is_built(block));
    assert!(slices.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])), "the four got the one slice built");
}

/// A node's built slices stay within its byte budget: building a slice drops the least recently
/// used ones until it fits, and a slice that could not fit alone is refused with the budget as
/// the reason (a stage server answers it TooLarge, naming --memory-mib), nothing built.
#[test]
fn built_slices_stay_within_the_byte_budget_and_a_slice_over_it_is_refused() {
    use scission_core::cut::Block;
    use scission_core::memory::slice_build;
    let c = Cluster::new();
    let loaded = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let n = loaded.summary.len();
    let weights = |b: Block| loaded.summary.weight_bytes(b.start, b.end);
    // Two halves, each holding weights; a budget that builds either, not both.
    let cut = (1..n).find(|&k| weights(Block { start: 0, end: k }) > 0 && weights(Block { start: k, end: n }) > 0).unwrap();
    let (first, second, whole) = (Block { start: 0, end: cut }, Block { start: cut, end: n }, Block { start: 0, end: n });
    let budget = slice_build(weights(first)).max(slice_build(weights(second)));
    assert!(budget < slice_build(weights(whole)), "the test model's halves are each smaller than the whole");
    let node = scission_runtime::node::Node::new(loaded, 2, 1).unwrap().with_slice_budget(budget);
    node.slice(first).unwrap();
    assert!(node.is_built(first));
    node.slice(second).unwrap();
    assert!(node.is_built(second) && !node.is_built(first), "the older half was dropped to build the other");
    let refused = node.slice(whole).map(drop).unwrap_err();
    assert!(matches!(refused, scission_runtime::error::RuntimeError::OverMemory { .. }), "{refused}");
    assert!(refused.to_string().contains("--memory-mib"), "{refused}");
    assert!(node.fits(whole).is_err() && node.fits(first).is_ok());
    assert!(node.is_built(second) && !node.is_built(whole), "a refused slice drops nothing and builds nothing");
}
