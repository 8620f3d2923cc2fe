//! Attacks from inside the cluster: a peer with a valid certificate sends absurd plan requests,
//! stage requests it cannot feed, and frames it never finishes; a user passes absurd figures.
//! Each attack used to panic, poison or pin a server; now it gets an explicit answer while
//! honest requests keep being served.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Server, start};
use common::{bin, quick_bench, run, stderr};
use scission_core::link::Link;
use scission_core::wire::message::{Body, FailureCode, Load, MAX_WAIT_NS, PlannedRoute, Stage, decode, encode};
use scission_net::{pki, quic};

/// A cloud that plans (with `extra` flags), and the device's profile JSON.
fn planning_cloud(c: &Cluster, extra: &[&str]) -> (Server, Vec<u8>) {
    let cloud_profile = quick_bench("scission-cloud", &c.model, &c.dir.path().join("cloud.json"), "cloud");
    let device_profile = quick_bench("scission-device", &c.model, &c.dir.path().join("device.json"), "device");
    let mut args =
        vec!["serve", c.model.to_str().unwrap(), "--cluster", "", "--profile", cloud_profile.to_str().unwrap(), "--threads", "1"];
    let cluster = c.cluster();
    args[3] = &cluster;
    args.extend_from_slice(extra);
    (start("scission-cloud", &args), std::fs::read(device_profile).unwrap())
}

/// Connects to the cloud at `addr` as the enrolled device, and runs `attack` with the connection.
fn as_device<F: AsyncFnOnce(quinn::Connection)>(c: &Cluster, addr: SocketAddr, attack: F) {
    as_node(c, "device", addr, attack)
}

/// Connects to the cloud at `addr` as enrolled node `name`, and runs `attack` with the connection.
fn as_node<F: AsyncFnOnce(quinn::Connection)>(c: &Cluster, name: &str, addr: SocketAddr, attack: F) {
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), name).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        let connection = quic::connect(&endpoint, addr, "cloud").await.unwrap();
        attack(connection).await;
    });
}

/// Sends `body` and returns the answer's failure code, or `None` for a non-failure.
async fn failure_code(connection: &quinn::Connection, body: &Body<'_>) -> (Option<FailureCode>, String) {
    let answer = quic::exchange(connection, encode(body).unwrap(), 64 << 20).await.unwrap();
    match decode(&answer).unwrap() {
        Body::Failure { code, message, .. } => (Some(code), message.to_string()),
        other => (None, format!("{other:?}")),
    }
}

/// Edge `edge`'s registration with `profile`, its measured `link` to the cloud, `load` and `addr`.
fn edge_registration<'a>(profile: &'a [u8], link: Link, load: Load, addr: &str) -> Body<'a> {
    Body::Register {
        name: heapless::String::try_from("edge").unwrap(),
        tier: 1,
        profile,
        link_to_cloud: Some(link),
        load,
        addr: heapless::String::try_from(addr).unwrap(),
    }
}

fn plan_request<'a>(profile: &'a [u8], count: u16, uplinks: &[(u8, Link)]) -> Body<'a> {
    Body::PlanRequest {
        profile,
        uplinks: uplinks.iter().copied().collect(),
        count,
        avoid: heapless::Vec::new(),
        avoid_machines: heapless::Vec::new(),
        device_memory: None,
    }
}

#[test]
fn absurd_plan_requests_are_refused_and_the_planner_keeps_planning() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &[]);
    as_device(&c, cloud.addr, async |conn| {
        let fast = Link { latency_ns: 1_000_000, bits_per_sec: 100_000_000 };
        let attacks: Vec<(&str, Body<'_>, &str)> = vec![
            ("zero plans asked (panicked the solver under the registry lock)", plan_request(&profile, 0, &[]), "at least one plan"),
            (
                "an uplink latency of u64::MAX (overflowed the cost sums)",
                plan_request(&profile, 4, &[(2, Link { latency_ns: u64::MAX, bits_per_sec: 1 })]),
                "hour",
            ),
            ("an uplink with no bandwidth", plan_request(&profile, 4, &[(2, Link { latency_ns: 1, bits_per_sec: 0 })]), "zero bandwidth"),
            ("a profile that is not JSON", plan_request(b"{nope", 4, &[]), "profile"),
        ];
        for (what, body, says) in attacks {
            let (code, message) = failure_code(&conn, &body).await;
            assert_eq!(code, Some(FailureCode::BadRequest), "{what}: {message}");
            assert!(message.contains(says), "{what}: {message}");
            // After each attack, an honest request is still planned.
            let (code, answer) = failure_code(&conn, &plan_request(&profile, 4, &[(2, fast)])).await;
            assert_eq!(code, None, "after {what}: {answer}");
            assert!(answer.starts_with("Plans"), "{answer}");
        }
    });
}

#[test]
fn stage_requests_without_their_inputs_are_refused_before_anything_is_built() {
    let c = Cluster::new();
    let (cloud, _edge) = c.servers();
    let sha = sha256_of(&c.model);
    as_device(&c, cloud.addr, async |conn| {
        let started = Instant::now();
        // Every range of the model, each without the tensors it needs (the old server built
        // and cached a slice for each before noticing, without bound).
        let mut refused = 0;
        for start in 0..12u32 {
            for end in start + 1..=12 {
                let stages = [Stage { tier: 2, machine: 0, start, end }].into_iter().collect();
                let body = Body::Infer {
                    request: 1,
                    model: sha,
                    stages,
                    encoding: Default::default(),
                    tensors: heapless::Vec::new(),
                    deadline_ms: 0,
                };
                let (code, message) = failure_code(&conn, &body).await;
                assert_eq!(code, Some(FailureCode::BadRequest), "[{start}, {end}): {message}");
                refused += 1;
            }
        }
        eprintln!("{refused} unfed stage requests refused in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    });
}

fn sha256_of(model: &Path) -> [u8; 32] {
    let m = scission_engine::Model::load_path(model, &scission_engine::LoadOptions::default()).unwrap();
    scission_core::profile::parse_sha256(&m.sha256).unwrap()
}

#[test]
fn frames_that_never_finish_lose_their_streams_not_the_server() {
    // As many connections as one node may hold by default (`--max-connections-per-node`).
    const CONNECTIONS: usize = 8;
    let c = Cluster::new();
    let cluster = c.cluster();
    let cloud = start("scission-cloud", &["serve", c.model.to_str().unwrap(), "--cluster", &cluster, "--read-deadline-ms", "500"]);
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), "device").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        // Slow loris: many connections, each with as many streams as a peer may open, each
        // sending half a header and stalling.
        let started = Instant::now();
        let mut stalled = Vec::new();
        let mut connections = Vec::new();
        for c in 0..CONNECTIONS {
            let conn = quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap();
            for _ in 0..quic::MAX_STREAMS - 1 {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&[9, 0]).await.unwrap();
                stalled.push((c, send, recv));
            }
            connections.push(conn);
        }
        // One more connection from the same node: the server closes one of the nine, the oldest
        // it lists (replaced by the newer one). Which one that is depends on the order its tasks
        // list them in, so it is looked for.
        connections.push(quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap());
        let closed = || connections.iter().enumerate().filter(|(_, c)| c.close_reason().is_some()).map(|(i, _)| i).collect::<Vec<_>>();
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = closed();
        assert_eq!(refused.len(), 1, "exactly one of nine connections from one node is refused: {refused:?}");
        let reason = connections[refused[0]].close_reason().map(|r| r.to_string()).unwrap_or_default();
        assert!(reason.contains("too many connections from this node"), "{reason}");
        // An honest ping on a stalled connection is answered while they stall.
        let honest = connections.iter().enumerate().find(|(i, _)| *i != refused[0] && *i < CONNECTIONS).map(|(_, c)| c).unwrap();
        let ping = encode(&Body::Ping { nonce: 7, padding: &[] }).unwrap();
        let pong =
            tokio::time::timeout(Duration::from_secs(5), quic::exchange(honest, ping, 1 << 20)).await.expect("ping answered").unwrap();
        assert_eq!(decode(&pong).unwrap(), Body::Pong { nonce: 7 });
        // Each stalled stream of a served connection is answered with an explicit failure once
        // its deadline passes.
        stalled.retain(|(c, _, _)| *c != refused[0]);
        let count = stalled.len();
        assert!(count >= (CONNECTIONS - 1) * (quic::MAX_STREAMS as usize - 1), "{count} stalled streams served");
        for (_, _send, mut recv) in stalled {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), quic::read_frame(&mut recv, 1 << 20)).await.expect("answered").unwrap();
            assert!(matches!(decode(&answer).unwrap(), Body::Failure { code: FailureCode::BadRequest, .. }));
        }
        let waited = started.elapsed();
        let rss = std::fs::read_to_string(format!("/proc/{}/status", cloud.child.id()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
            .unwrap_or_default();
        eprintln!(
            "slow loris: {count} stalled streams on the served connections all answered after {:.2} s (deadline 0.5 s); cloud {rss}",
            waited.as_secs_f64()
        );
        assert!(waited >= Duration::from_millis(500), "not before the deadline");
    });
}

#[test]
fn a_fetched_model_must_match_the_pinned_hash_and_leaves_nothing_behind() {
    let c = Cluster::new();
    let (cloud, _edge) = c.servers();
    let device_profile = quick_bench("scission-device", &c.model, &c.dir.path().join("device.json"), "device");
    // The device's profile pins another model than the cloud serves.
    let mut profile: serde_json::Value = serde_json::from_slice(&std::fs::read(&device_profile).unwrap()).unwrap();
    profile["model"]["sha256"] = serde_json::Value::String("ab".repeat(32));
    let pinned = c.dir.path().join("pinned.json");
    std::fs::write(&pinned, serde_json::to_vec(&profile).unwrap()).unwrap();
    let target = c.dir.path().join("fetched").join("model.onnx");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let cluster = c.cluster();
    let cloud_addr = cloud.addr.to_string();
    let args = [
        "run",
        target.to_str().unwrap(),
        "--fetch-model",
        "--cluster",
        &cluster,
        "--cloud",
        &cloud_addr,
        "--profile",
        pinned.to_str().unwrap(),
    ];
    let out = run("scission-device", &args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("another model than the one expected"), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(target.parent().unwrap()).unwrap().collect();
    assert!(left.is_empty(), "nothing is left behind: {left:?}");
}

#[test]
fn absurd_figures_on_the_command_line_are_errors_not_panics() {
    let c = Cluster::new();
    let dir = c.dir.path();
    let files: Vec<String> = [("scission-device", "device"), ("scission-edge", "edge"), ("scission-cloud", "cloud")]
        .iter()
        .map(|(bin, name)| quick_bench(bin, &c.model, &dir.join(format!("{name}.json")), name).to_string_lossy().into_owned())
        .collect();
    let mut args: Vec<&str> = vec!["plan"];
    args.extend(files.iter().map(String::as_str));
    let zero = [args.clone(), vec!["-n", "0"]].concat();
    let out = run("scission-cloud", &zero);
    assert_eq!(out.status.code(), Some(2), "-n 0 is a usage error: {}", stderr(&out));
    let slow = [args, vec!["--link", "device-edge=1bit,20000000000s"]].concat();
    let out = run("scission-cloud", &slow);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("above one hour"), "{}", stderr(&out));
}

#[test]
fn roles_in_certificates_decide_who_may_register_plan_and_serve() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &[]);
    let register = |name: &'static str| Body::Register {
        name: heapless::String::try_from(name).unwrap(),
        tier: 1,
        profile: &profile,
        link_to_cloud: Some(Link { latency_ns: 1_000_000, bits_per_sec: 1_000_000_000 }),
        load: Load::default(),
        addr: heapless::String::try_from("127.0.0.1:9").unwrap(),
    };
    // A device may not pose as an edge (it used to replace the real edge's profile).
    as_device(&c, cloud.addr, async |conn| {
        let (code, message) = failure_code(&conn, &register("edge")).await;
        assert_eq!(code, Some(FailureCode::Forbidden), "{message}");
    });
    // An edge registers under its own name only, and does not ask for plans.
    as_node(&c, "edge", cloud.addr, async |conn| {
        let (code, message) = failure_code(&conn, &register("cloud")).await;
        assert_eq!(code, Some(FailureCode::Forbidden), "another node's name: {message}");
        let (code, message) = failure_code(&conn, &register("edge")).await;
        assert_eq!(code, None, "its own name: {message}");
        let (code, message) = failure_code(&conn, &plan_request(&profile, 2, &[])).await;
        assert_eq!(code, Some(FailureCode::Forbidden), "{message}");
    });
    // A device key cannot serve: its certificate is for clients only.
    let cluster = c.cluster();
    let impostor = start("scission-cloud", &["serve", c.model.to_str().unwrap(), "--cluster", &cluster, "--name", "device"]);
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), "edge").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        let refused = quic::connect(&endpoint, impostor.addr, "device").await;
        assert!(refused.is_err(), "a device certificate served a connection");
        // Nor can a server pass for another node: the cloud is not the edge.
        assert!(quic::connect(&endpoint, cloud.addr, "edge").await.is_err(), "the cloud passed for the edge");
    });
}

#[test]
fn a_revoked_device_is_refused_without_restarting_the_server() {
    let c = Cluster::new();
    let cluster = c.cluster();
    let cloud = start("scission-cloud", &["serve", c.model.to_str().unwrap(), "--cluster", &cluster]);
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), "device").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ping = encode(&Body::Ping { nonce: 1, padding: &[] }).unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        let conn = quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap();
        quic::exchange(&conn, ping.clone(), 1 << 20).await.expect("served before revocation");
    });
    let out = run("scission-cloud", &["revoke", "device", "--cluster", &cluster]);
    assert!(out.status.success(), "{}", stderr(&out));
    let revoked_at = Instant::now();
    let refused_after = rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        loop {
            let served = match quic::connect(&endpoint, cloud.addr, "cloud").await {
                Ok(conn) => tokio::time::timeout(Duration::from_secs(2), quic::exchange(&conn, ping.clone(), 1 << 20))
                    .await
                    .is_ok_and(|r| r.is_ok()),
                Err(_) => false,
            };
            if !served {
                return revoked_at.elapsed();
            }
            assert!(revoked_at.elapsed() < Duration::from_secs(10), "still served 10 s after revocation");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    eprintln!("the revoked device was refused {:.2} s after `revoke`", refused_after.as_secs_f64());
    // At the handshake: the TLS alert says why, before any stream is opened.
    let refusal = rt.block_on(async {
        let endpoint = quic::client(&identity).unwrap();
        match quic::connect(&endpoint, cloud.addr, "cloud").await {
            Err(e) => format!("{e:#}"),
            Ok(conn) => format!("{}", conn.closed().await),
        }
    });
    assert!(refusal.to_lowercase().contains("revoked"), "{refusal}");
    // The edge is still served.
    let edge = pki::Identity::load(&c.dir.path().join("cluster"), "edge").unwrap();
    rt.block_on(async {
        let endpoint = quic::client(&edge).unwrap();
        let conn = quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap();
        quic::exchange(&conn, ping.clone(), 1 << 20).await.expect("other nodes are still served");
    });
}

#[test]
fn a_revoked_edge_leaves_the_plans_at_once_not_when_its_registration_expires() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &[]);
    let fast = Link { latency_ns: 1_000, bits_per_sec: 10_000_000_000 };
    as_node(&c, "edge", cloud.addr, async |conn| {
        let register = edge_registration(&profile, fast, Load::default(), "127.0.0.1:9");
        assert_eq!(failure_code(&conn, &register).await.0, None);
    });
    let tiers_planned = || {
        let mut tiers = Vec::new();
        as_device(&c, cloud.addr, async |conn| {
            let answer =
                quic::exchange(&conn, encode(&plan_request(&profile, 16, &[(1, fast), (2, fast)])).unwrap(), 64 << 20).await.unwrap();
            let Body::Plans { routes, .. } = decode(&answer).unwrap() else { panic!("no plans") };
            tiers = routes.iter().flat_map(|r| r.stages.iter().map(|s| s.tier)).collect();
        });
        tiers
    };
    assert!(tiers_planned().contains(&1), "the registered edge is planned with");
    let out = run("scission-cloud", &["revoke", "edge", "--cluster", &c.cluster()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(pki::DenyList::FRESH + Duration::from_millis(200));
    assert!(!tiers_planned().contains(&1), "a revoked edge gets no work, though its registration has 10 minutes left");
}

/// The routes the cloud plans for a device with `profile` over `link` to both tiers.
fn routes_planned(c: &Cluster, cloud: SocketAddr, profile: &[u8], link: Link) -> Vec<PlannedRoute> {
    let mut routes = Vec::new();
    as_device(c, cloud, async |conn| {
        let answer = quic::exchange(&conn, encode(&plan_request(profile, 16, &[(1, link), (2, link)])).unwrap(), 64 << 20).await.unwrap();
        let Body::Plans { routes: planned, .. } = decode(&answer).unwrap() else { panic!("no plans") };
        routes = planned.to_vec();
    });
    routes
}

#[test]
fn an_edge_that_reports_a_long_queue_gets_no_work_until_it_drains_and_absurd_reports_are_capped() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &[]);
    let fast = Link { latency_ns: 1_000, bits_per_sec: 10_000_000_000 };
    let report = |load: Load| {
        as_node(&c, "edge", cloud.addr, async |conn| {
            assert_eq!(failure_code(&conn, &edge_registration(&profile, fast, load, "127.0.0.1:9")).await.0, None);
        })
    };
    let uses_edge = |r: &PlannedRoute| r.stages.iter().any(|s| s.tier == 1);
    report(Load::default());
    let idle = routes_planned(&c, cloud.addr, &profile, fast);
    assert!(idle.iter().any(uses_edge), "an idle edge is planned with: {idle:?}");
    // 1 001 requests ahead of a new one, a second each, on 2 workers: 500 s, far longer than any route.
    report(Load { queued: 1_000, running: 2, workers: 2, service_ns: 1_000_000_000 });
    let busy = routes_planned(&c, cloud.addr, &profile, fast);
    assert!(!uses_edge(&busy[0]), "the best route avoids the queued edge: {busy:?}");
    let waits: Vec<u64> = busy.iter().filter(|r| uses_edge(r)).map(|r| r.predicted_ns).collect();
    assert!(waits.iter().all(|&ns| ns >= 500_000_000_000), "routes through it are charged its queue: {waits:?}");
    // A report that would overflow any sum is capped, and the planner keeps planning.
    report(Load { queued: u32::MAX, running: u32::MAX, workers: 0, service_ns: u64::MAX });
    let absurd = routes_planned(&c, cloud.addr, &profile, fast);
    assert!(absurd.iter().filter(|r| uses_edge(r)).all(|r| r.predicted_ns >= MAX_WAIT_NS), "{absurd:?}");
    report(Load::default());
    assert_eq!(routes_planned(&c, cloud.addr, &profile, fast), idle, "drained: the same plans as before");
}

#[test]
fn an_edge_keeps_its_registration_alive_with_heartbeats() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &["--registration-ttl-s", "2"]);
    let edge_profile = quick_bench("scission-edge", &c.model, &c.dir.path().join("edge.json"), "edge");
    let cloud_addr = cloud.addr.to_string();
    let cluster = c.cluster();
    let model = c.model.to_str().unwrap();
    let args = ["serve", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--profile", edge_profile.to_str().unwrap()];
    let edge = start("scission-edge", &[&args[..], &["--threads", "1", "--heartbeat-s", "1"]].concat());
    let fast = Link { latency_ns: 1_000, bits_per_sec: 10_000_000_000 };
    let uses_edge = |routes: &[PlannedRoute]| routes.iter().any(|r| r.stages.iter().any(|s| s.tier == 1));
    assert!(uses_edge(&routes_planned(&c, cloud.addr, &profile, fast)), "registered before it announced its address");
    // Three TTLs later the edge is still planned with: it renewed, more than once.
    std::thread::sleep(Duration::from_secs(6));
    assert!(uses_edge(&routes_planned(&c, cloud.addr, &profile, fast)), "the edge's registration lapsed");
    drop(edge);
    // A stopped edge stops renewing, and leaves the plans when its registration expires.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!uses_edge(&routes_planned(&c, cloud.addr, &profile, fast)), "a dead edge is still planned with");
}

/// Sends `count` whole-model requests at once, each with `deadline_ms`, and returns how many
/// came back as outputs and how many as `Expired` (anything else fails the test).
fn flood(c: &Cluster, cloud: SocketAddr, count: u64, deadline_ms: u32) -> (usize, usize) {
    let (outputs, expired, busy) = flood_counting_busy(c, cloud, count, deadline_ms);
    assert_eq!(busy, 0, "the queue holds them all");
    (outputs, expired)
}

/// Sends each of `messages` on its own stream at once and returns the answers as they come.
async fn exchange_all(conn: &quinn::Connection, messages: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut answers = tokio::task::JoinSet::new();
    for message in messages {
        let conn = conn.clone();
        answers.spawn(async move { quic::exchange(&conn, message.clone(), 64 << 20).await.unwrap() });
    }
    let mut received = Vec::new();
    while let Some(answer) = answers.join_next().await {
        received.push(answer.unwrap());
    }
    received
}

/// [`flood`], counting `Busy` answers too.
fn flood_counting_busy(c: &Cluster, cloud: SocketAddr, count: u64, deadline_ms: u32) -> (usize, usize, usize) {
    use scission_engine::input::synthetic_inputs;
    use scission_engine::pipeline::graph_inputs;
    let model = scission_engine::Model::load_path(&c.model, &scission_engine::LoadOptions::default()).unwrap();
    let sha = scission_core::profile::parse_sha256(&model.sha256).unwrap();
    let route = [Stage { tier: 2, machine: 0, start: 0, end: model.summary.len() as u32 }];
    let live = graph_inputs(&model, synthetic_inputs(&model, 1).unwrap()).unwrap();
    let encoding = scission_core::link::Encoding::F32;
    let messages: Vec<Vec<u8>> =
        (0..count).map(|id| scission_runtime::convert::infer_message(id, sha, &route, encoding, deadline_ms, &live).unwrap()).collect();
    let (mut outputs, mut expired, mut busy) = (0, 0, 0);
    as_device(c, cloud, async |conn| {
        for answer in exchange_all(&conn, messages).await {
            match decode(&answer).unwrap() {
                Body::Output { .. } => outputs += 1,
                Body::Failure { code: FailureCode::Expired, message, .. } => {
                    assert!(message.contains("deadline of 1 ms"), "{message}");
                    expired += 1;
                }
                Body::Failure { code: FailureCode::Busy, .. } => busy += 1,
                other => panic!("neither an output nor an expired deadline: {other:?}"),
            }
        }
    });
    (outputs, expired, busy)
}

#[test]
fn requests_still_waiting_for_a_worker_at_their_deadline_fail_expired_and_leave_the_queue() {
    let c = Cluster::new();
    let (cloud, _) = planning_cloud(&c, &["--workers", "1", "--queue", "64"]);
    // With 1 ms, on a server that has timed nothing yet (so it cannot tell the wait), the first
    // gets the worker and those still queued behind it expire.
    let (outputs, expired) = flood(&c, cloud.addr, 32, 1);
    assert_eq!(outputs + expired, 32, "every request ends in an output or an explicit failure");
    assert!(outputs >= 1 && expired >= 1, "{outputs} outputs, {expired} expired");
    // The expired ones left the queue; without a deadline, 32 at once on one worker all wait
    // their turn.
    assert_eq!(flood(&c, cloud.addr, 32, 0), (32, 0));
    // Now it knows its service time: what cannot make 1 ms is refused up front, not queued.
    let (outputs, expired, busy) = flood_counting_busy(&c, cloud.addr, 32, 1);
    assert_eq!(outputs + expired + busy, 32, "every request ends in an output or an explicit failure");
    assert!(busy >= 1, "{outputs} outputs, {expired} expired, {busy} busy");
}

#[test]
fn requests_with_a_deadline_are_taken_on_while_their_expected_wait_fits_it() {
    let c = Cluster::new();
    // One worker and the default queue (four) for requests without a deadline.
    let (cloud, _) = planning_cloud(&c, &["--workers", "1"]);
    let (outputs, _, busy) = flood_counting_busy(&c, cloud.addr, 32, 0);
    assert!(outputs >= 1 && busy >= 1, "without a deadline the queue's length holds: {outputs} outputs, {busy} busy");
    // The server has timed its requests: 32 at once that may each wait a minute all wait their
    // turn, far past the queue's length.
    assert_eq!(flood_counting_busy(&c, cloud.addr, 32, 60_000), (32, 0, 0));
}

/// A batching cloud (one worker, batches of up to 4 after a 30 ms window) gets 12 different
/// requests at once and a hostile one among them: every honest request gets its own answer,
/// equal to the unsplit model's for its own input (within float rounding: a batch may reorder
/// a sum), the hostile one fails alone, and the server's log shows the batches it ran.
#[test]
fn a_batching_server_answers_each_request_with_its_own_result_and_a_bad_request_fails_alone() {
    use scission_engine::input::synthetic_inputs;
    use scission_engine::pipeline::graph_inputs;
    let c = Cluster::new();
    let cloud_profile = quick_bench("scission-cloud", &c.model, &c.dir.path().join("cloud.json"), "cloud");
    let log = c.dir.path().join("cloud.log");
    let args = [
        "serve",
        c.model.to_str().unwrap(),
        "--cluster",
        &c.cluster(),
        "--profile",
        cloud_profile.to_str().unwrap(),
        "--threads",
        "1",
        "--workers",
        "1",
        "--queue",
        "32",
        "--batch-max",
        "4",
        "--batch-delay-ms",
        "30",
    ];
    let mut child = std::process::Command::new(common::bin("scission-cloud"))
        .args(args)
        .env("RUST_LOG", "scission_runtime=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let cloud = Server { child, addr: line.rsplit(' ').next().unwrap().trim().parse().unwrap() };

    let model = scission_engine::Model::load_path(&c.model, &scission_engine::LoadOptions::default()).unwrap();
    assert!(model.batchable());
    let sha = scission_core::profile::parse_sha256(&model.sha256).unwrap();
    let n = model.summary.len() as u32;
    let whole = model.whole().unwrap();
    let encoding = scission_core::link::Encoding::F32;
    let mut messages = Vec::new();
    let mut expected = std::collections::HashMap::new();
    for request in 0..12u64 {
        let inputs = synthetic_inputs(&model, 1000 + request).unwrap();
        expected.insert(request, whole.run(inputs.clone()).unwrap());
        let live = graph_inputs(&model, inputs).unwrap();
        let route = [Stage { tier: 2, machine: 0, start: 0, end: n }];
        messages.push(scission_runtime::convert::infer_message(request, sha, &route, encoding, 0, &live).unwrap());
    }
    // A stage that starts past the graph inputs, fed the graph inputs: it must fail alone.
    let live = graph_inputs(&model, synthetic_inputs(&model, 1).unwrap()).unwrap();
    let hostile_route = [Stage { tier: 2, machine: 0, start: 1, end: n }];
    messages.insert(5, scission_runtime::convert::infer_message(99, sha, &hostile_route, encoding, 0, &live).unwrap());
    let mut answered = 0;
    as_device(&c, cloud.addr, async |conn| {
        for answer in exchange_all(&conn, messages).await {
            match decode(&answer).unwrap() {
                Body::Output { request, tensors, .. } => {
                    let got: Vec<_> = tensors.iter().map(|named| scission_runtime::convert::decode(&model, named).unwrap().1).collect();
                    let diff = common::relative_diff(&got, &expected[&request]);
                    assert!(diff <= 1e-5, "request {request}: off by {diff} of its largest output");
                    answered += 1;
                }
                Body::Failure { request, code, message, .. } => {
                    assert_eq!((request, code), (99, FailureCode::BadRequest), "{message}");
                }
                other => panic!("neither an output nor a failure: {other:?}"),
            }
        }
    });
    assert_eq!(answered, 12);
    drop(cloud);
    let log = std::fs::read_to_string(&log).unwrap();
    let batches: Vec<usize> =
        log.lines().filter_map(|l| l.split("a batch of ").nth(1)?.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()).collect();
    assert!(batches.iter().any(|&b| b > 1), "requests queued together ran as batches: {batches:?}");
    assert_eq!(batches.iter().sum::<usize>(), 12, "each honest request ran once: {batches:?}");
}

#[test]
fn an_edge_without_an_advertised_address_is_planned_as_the_configured_edge() {
    let c = Cluster::new();
    let (cloud, profile) = planning_cloud(&c, &[]);
    let fast = Link { latency_ns: 1_000, bits_per_sec: 10_000_000_000 };
    let register = |addr: &str| {
        as_node(&c, "edge", cloud.addr, async |conn| {
            let register = edge_registration(&profile, fast, Load::default(), addr);
            let answer = quic::exchange(&conn, encode(&register).unwrap(), 1 << 20).await.unwrap();
            let Body::Registered { id, machines } = decode(&answer).unwrap() else { panic!("not registered") };
            assert!(id > 0);
            assert_eq!(
                machines.iter().map(|m| (m.id, m.addr)).collect::<Vec<_>>(),
                [(id, addr)].iter().filter(|(_, a)| !a.is_empty()).copied().collect::<Vec<_>>(),
                "listed only with an address"
            );
        })
    };
    let edge_machines = || {
        let routes = routes_planned(&c, cloud.addr, &profile, fast);
        routes.iter().flat_map(|r| r.stages.iter().filter(|s| s.tier == 1).map(|s| s.machine)).collect::<std::collections::BTreeSet<u8>>()
    };
    register("");
    assert_eq!(edge_machines(), [0].into(), "no address: the devices' configured edge");
    register("127.0.0.1:9");
    assert!(!edge_machines().contains(&0), "with an address: its directory id");
    // An address that is not IP:PORT is refused, with the planner unharmed.
    as_node(&c, "edge", cloud.addr, async |conn| {
        let register = edge_registration(&profile, fast, Load::default(), "edge.local:4434");
        let (code, message) = failure_code(&conn, &register).await;
        assert_eq!(code, Some(FailureCode::BadRequest), "{message}");
        assert!(message.contains("not an IP address"), "{message}");
    });
    assert!(!edge_machines().is_empty());
}

/// A device names machines: an edge forwards only to machines its planner's directory lists,
/// never to one a request makes up, and runs only stages addressed to it.
#[test]
fn routes_naming_machines_the_directory_does_not_list_are_refused_and_connect_nowhere() {
    use scission_engine::input::synthetic_inputs;
    use scission_engine::pipeline::graph_inputs;
    let c = Cluster::new();
    let (cloud, _) = planning_cloud(&c, &[]);
    let edge_profile = quick_bench("scission-edge", &c.model, &c.dir.path().join("edge.json"), "edge");
    let (cluster, cloud_addr) = (c.cluster(), cloud.addr.to_string());
    let args = ["serve", c.model.to_str().unwrap(), "--cluster", &cluster, "--cloud", &cloud_addr, "--threads", "1"];
    let edge = start("scission-edge", &[&args[..], &["--profile", edge_profile.to_str().unwrap()]].concat());
    let model = scission_engine::Model::load_path(&c.model, &scission_engine::LoadOptions::default()).unwrap();
    let sha = scission_core::profile::parse_sha256(&model.sha256).unwrap();
    let (n, cut) = (model.summary.len() as u32, 1u32);
    let live = graph_inputs(&model, synthetic_inputs(&model, 1).unwrap()).unwrap();
    let request =
        |stages: &[Stage]| scission_runtime::convert::infer_message(1, sha, stages, scission_core::link::Encoding::F32, 0, &live).unwrap();
    let identity = pki::Identity::load(&c.dir.path().join("cluster"), "device").unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = quic::connect(&quic::client(&identity).unwrap(), edge.addr, "edge").await.unwrap();
        let answer = |message: Vec<u8>| {
            let conn = conn.clone();
            async move {
                match decode(&quic::exchange(&conn, message.clone(), 64 << 20).await.unwrap()).unwrap() {
                    Body::Failure { code, message, detail, .. } => (Some(code), message.to_string(), detail),
                    other => (None, format!("{other:?}"), scission_core::wire::message::FailureDetail::None),
                }
            }
        };
        // The honest route: the edge (its configured id), then the configured cloud.
        let honest = [Stage { tier: 1, machine: 0, start: 0, end: cut }, Stage { tier: 2, machine: 0, start: cut, end: n }];
        assert_eq!(answer(request(&honest)).await.0, None, "the honest route is answered");
        // A next machine no directory lists: refused as unreachable, naming the tier.
        let made_up = [honest[0], Stage { machine: 7, ..honest[1] }];
        let (code, message, detail) = answer(request(&made_up)).await;
        assert_eq!(code, Some(FailureCode::Unreachable), "{message}");
        assert!(message.contains("not in this node's directory"), "{message}");
        assert_eq!(detail, scission_core::wire::message::FailureDetail::Unreachable { tier: 2, machine: 7 });
        // A stage for another machine of the edge's tier is not run here.
        let elsewhere = [Stage { machine: 9, ..honest[0] }, honest[1]];
        let (code, message, _) = answer(request(&elsewhere)).await;
        assert_eq!(code, Some(FailureCode::BadRequest), "{message}");
        assert!(message.contains("stage for machine 9 of tier 1"), "{message}");
    });
}

#[test]
fn a_full_server_refuses_inferences_from_their_first_bytes_and_the_peer_reads_why() {
    let c = Cluster::new();
    let (cloud, _) = planning_cloud(&c, &["--workers", "1", "--queue", "1"]);
    // 32 at once on one worker and one place in the queue: the rest are refused, each with an
    // explicit Busy answer.
    let (outputs, expired, busy) = flood_counting_busy(&c, cloud.addr, 32, 0);
    assert_eq!(outputs + expired + busy, 32);
    assert!(outputs >= 1 && busy >= 1 && expired == 0, "{outputs} outputs, {busy} busy");
    assert_eq!(flood(&c, cloud.addr, 1, 0), (1, 0), "and serves again once the queue drains");
    // Large requests that arrive while it is full are refused from their first bytes (8 MB of
    // tensors that would not even decode: refused after decoding, they would be BadRequest).
    use scission_core::wire::message::NamedTensor;
    use scission_core::wire::tensor::{Elements, TensorFrame};
    let sha = sha256_of(&c.model);
    let big = vec![0u8; 8 << 20];
    let tensor = TensorFrame { elements: Elements::F32, shape: [2 << 20].into_iter().collect(), data: &big };
    let large = |request| {
        let body = Body::Infer {
            request,
            model: sha,
            stages: [Stage { tier: 2, machine: 0, start: 0, end: 1 }].into_iter().collect(),
            encoding: Default::default(),
            tensors: [NamedTensor { id: 0, tensor: tensor.clone() }].into_iter().collect(),
            deadline_ms: 0,
        };
        encode(&body).unwrap()
    };
    let honest = {
        use scission_engine::input::synthetic_inputs;
        use scission_engine::pipeline::graph_inputs;
        let model = scission_engine::Model::load_path(&c.model, &scission_engine::LoadOptions::default()).unwrap();
        let live = graph_inputs(&model, synthetic_inputs(&model, 1).unwrap()).unwrap();
        let route = [Stage { tier: 2, machine: 0, start: 0, end: model.summary.len() as u32 }];
        scission_runtime::convert::infer_message(100, sha, &route, scission_core::link::Encoding::F32, 0, &live).unwrap()
    };
    let (mut busy, mut refused) = (0, 0);
    as_device(&c, cloud.addr, async |conn| {
        let mut answers = tokio::task::JoinSet::new();
        // Honest requests keep the worker and the queue full meanwhile, back to back.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut keep_busy = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (conn, message, done) = (conn.clone(), honest.clone(), done.clone());
            keep_busy.spawn(async move {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    quic::exchange(&conn, message.clone(), 64 << 20).await.expect("an answer");
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for request in 0..12u64 {
            let (conn, message) = (conn.clone(), large(request));
            answers.spawn(async move { quic::exchange(&conn, message.clone(), 64 << 20).await.expect("every sender reads its answer") });
        }
        while let Some(answer) = answers.join_next().await {
            match decode(&answer.unwrap()).unwrap() {
                Body::Failure { code: FailureCode::Busy, .. } => busy += 1,
                Body::Failure { code: FailureCode::BadRequest, .. } => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        while keep_busy.join_next().await.is_some() {}
    });
    assert_eq!(busy + refused, 12);
    assert!(busy >= 1, "{busy} busy, {refused} refused after decoding");
}

/// A device that says how much memory it may use gets only plans whose device slice fits: by
/// the heap its profile measured for each block where `bench` counted it (the default on a
/// device), otherwise by the rule on tensor sizes (the slice's weights and largest block
/// activation, doubled, plus the runtime). One that says it has none gets plans that run
/// nothing on it, and an absurdly large figure changes nothing.
#[test]
fn a_device_gets_only_plans_that_fit_its_memory() {
    use scission_core::cut::Block;
    use scission_core::memory::{MEASURED_OVERHEAD, RUNTIME_OVERHEAD, measured_need, solver_cap};
    let c = Cluster::new();
    let (cloud, profile_json) = planning_cloud(&c, &[]);
    let mut measured: scission_core::profile::Profile = serde_json::from_slice(&profile_json).unwrap();
    assert!(measured.blocks.iter().all(|b| b.memory.is_some_and(|m| m.resident_bytes > 0)), "the device's bench counts each block's heap");
    // A fast device behind slow links: without a memory figure, it keeps everything.
    for b in &mut measured.blocks {
        b.time.median_ns = 1;
    }
    let mut unmeasured = measured.clone();
    for b in &mut unmeasured.blocks {
        b.memory = None;
    }
    let device_end = |route: &PlannedRoute| route.stages.iter().find(|s| s.tier == 0).map_or(0, |s| s.end as usize);
    let rule_need = |route: &PlannedRoute| -> u64 {
        let blocks: Vec<_> = unmeasured.blocks.iter().filter(|b| b.range.end <= device_end(route)).collect();
        blocks.iter().map(|b| b.weight_bytes).sum::<u64>() + blocks.iter().map(|b| b.activation_bytes).max().unwrap_or(0)
    };
    let measured_need = |route: &PlannedRoute| match device_end(route) {
        0 => 0,
        end => measured_need(&measured.blocks, Block { start: 0, end }).expect("blocks tile every prefix"),
    };
    let weights: u64 = unmeasured.blocks.iter().map(|b| b.weight_bytes).sum();
    let rule_memory = RUNTIME_OVERHEAD + weights; // room for about half the weights
    let memories = measured.blocks.iter().filter_map(|b| b.memory);
    let resident: u64 = memories.clone().map(|m| m.resident_bytes).sum();
    let transient = memories.map(|m| m.transient_bytes()).max().unwrap_or(0);
    let measured_memory = MEASURED_OVERHEAD + resident / 2 + transient; // room for about half of what they keep
    let slow = Link { latency_ns: 50_000_000, bits_per_sec: 1_000_000 };
    as_device(&c, cloud.addr, async |conn| {
        let ask = async |profile: &scission_core::profile::Profile, device_memory| {
            let json = serde_json::to_vec(profile).unwrap();
            let body = Body::PlanRequest {
                profile: &json,
                uplinks: [(1, slow), (2, slow)].into_iter().collect(),
                count: 8,
                avoid: heapless::Vec::new(),
                avoid_machines: heapless::Vec::new(),
                device_memory,
            };
            decode(&quic::exchange(&conn, encode(&body).unwrap(), 64 << 20).await.unwrap()).unwrap().to_owned_plans()
        };
        // The rule, for a profile without measured memory.
        let free = ask(&unmeasured, None).await.expect("plans");
        assert!(rule_need(&free[0]) > solver_cap(rule_memory), "unbounded, the device keeps more than half: {:?}", free[0]);
        let bounded = ask(&unmeasured, Some(rule_memory)).await.expect("plans that fit");
        assert!(!bounded.is_empty());
        for route in &bounded {
            assert!(rule_need(route) <= solver_cap(rule_memory), "{route:?} needs {} > {}", rule_need(route), solver_cap(rule_memory));
        }
        assert_eq!(ask(&unmeasured, Some(u64::MAX)).await.expect("plans"), free, "an absurd figure is no constraint");
        // The measured heap, for the profile as the device's bench wrote it.
        let free = ask(&measured, None).await.expect("plans");
        assert!(measured_need(&free[0]) > measured_memory, "unbounded, the device keeps everything: {:?}", free[0]);
        let bounded = ask(&measured, Some(measured_memory)).await.expect("plans that fit");
        assert!(bounded.iter().any(|r| device_end(r) > 0), "some plan still runs a part on the device: {bounded:?}");
        for route in &bounded {
            assert!(measured_need(route) <= measured_memory, "{route:?} needs {} > {measured_memory}", measured_need(route));
        }
        for profile in [&measured, &unmeasured] {
            let offload = ask(profile, Some(0)).await.expect("no room at all still offloads");
            assert!(
                offload.iter().all(|r| device_end(r) == 0 && r.stages.iter().all(|s| s.tier > 0)),
                "the device runs nothing: {offload:?}"
            );
        }
    });
}

/// Plans out of a planner's answer, or its failure message.
trait PlansOrFailure {
    fn to_owned_plans(self) -> Result<Vec<PlannedRoute>, String>;
}

impl PlansOrFailure for Body<'_> {
    fn to_owned_plans(self) -> Result<Vec<PlannedRoute>, String> {
        match self {
            Body::Plans { routes, .. } => Ok(routes.to_vec()),
            Body::Failure { message, .. } => Err(message.to_string()),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
}

/// A device killed mid-run (SIGKILL: no close) leaves its connection open on the cloud; with
/// one connection per node allowed, the next run's connection replaces it and is served.
#[test]
fn a_killed_devices_leftover_connection_is_replaced_by_its_next_run() {
    let c = Cluster::new();
    let (model, cluster) = (c.model.to_str().unwrap(), c.cluster());
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1", "--max-connections-per-node", "1"]);
    let cloud_addr = cloud.addr.to_string();
    let args = ["run", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--split", "0,0"];
    let mut killed = Command::new(bin("scission-device"))
        .args([&args[..], &["--requests", "1000", "--interval-ms", "20"]].concat())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(killed.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.starts_with("request 1:"))), "the first run is served");
    killed.kill().unwrap();
    killed.wait().unwrap();
    let out = run("scission-device", &[&args[..], &["--requests", "3"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("requests: 3 ok, 0 failed"), "{text}\n{}", stderr(&out));
}

#[test]
fn a_device_that_restarts_often_is_served_every_time() {
    let c = Cluster::new();
    let (model, cluster) = (c.model.to_str().unwrap(), c.cluster());
    // Two connections per node: each run closes its own when it ends (a lingering one would
    // be replaced by the next run's, as the test above shows).
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1", "--max-connections-per-node", "2"]);
    let cloud_addr = cloud.addr.to_string();
    for run_number in 0..5 {
        let args = ["run", model, "--cluster", &cluster, "--cloud", &cloud_addr, "--split", "0,0", "--requests", "1"];
        let out = run("scission-device", &args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "run {run_number}: {text}\n{}", stderr(&out));
        assert!(text.contains("requests: 1 ok, 0 failed"), "run {run_number}: {text}");
    }
}
