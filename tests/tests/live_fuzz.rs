//! A stateful fuzz of a live cloud: enrolled peers of each role send random sequences of
//! well-formed and mutated messages of every kind, on concurrent streams, while an honest device
//! keeps running real inferences. The server must answer (or drop) every hostile stream, never
//! panic, keep serving the honest device, and keep its memory bounded.
//!
//! CI sends a few thousand messages; the benchmark-style run is
//! `SCISSION_FUZZ_MESSAGES=100000 cargo test -p scission-tests --test live_fuzz -- --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, start};
use common::quick_bench;
use scission_core::link::{Encoding, Link};
use scission_core::rng::WeightRng;
use scission_core::wire::message::{
    Body, FailureCode, FailureDetail, Load, MachineEntry, NamedTensor, PlannedRoute, Stage, StageTiming, decode, encode,
};
use scission_core::wire::tensor::{Elements, TensorFrame};
use scission_engine::input::synthetic_inputs;
use scission_engine::pipeline::graph_inputs;
use scission_engine::{LoadOptions, Model};
use scission_net::{pki, quic};

fn pick(rng: &mut WeightRng, n: u64) -> u64 {
    rng.next_u64() % n.max(1)
}

/// A random value: often an edge case, otherwise anything.
fn wild(rng: &mut WeightRng) -> u64 {
    match pick(rng, 6) {
        0 => 0,
        1 => u64::MAX,
        2 => pick(rng, 64),
        3 => 1 << pick(rng, 64),
        _ => rng.next_u64(),
    }
}

fn stages(rng: &mut WeightRng, nodes: u32) -> heapless::Vec<Stage, 8> {
    let mut out = heapless::Vec::new();
    let mut start = pick(rng, u64::from(nodes) + 2) as u32;
    for tier in 0..pick(rng, 4) as u8 {
        let end = start.saturating_add(pick(rng, u64::from(nodes) + 2) as u32);
        let _ =
            out.push(Stage { tier: if pick(rng, 5) == 0 { pick(rng, 256) as u8 } else { tier }, machine: pick(rng, 4) as u8, start, end });
        start = end;
    }
    out
}

fn tensor<'a>(rng: &mut WeightRng, data: &'a [u8]) -> NamedTensor<'a> {
    let mut shape = heapless::Vec::new();
    for _ in 0..pick(rng, 9) {
        let _ = shape.push(if pick(rng, 3) == 0 { wild(rng) as u32 } else { 1 + pick(rng, 64) as u32 });
    }
    let elements = match pick(rng, 4) {
        0 => Elements::F32,
        1 => Elements::F16,
        2 => Elements::I64,
        _ => Elements::Int8 { scale: f32::from_bits(rng.next_u64() as u32), zero_point: pick(rng, 256) as u8 as i8 },
    };
    let len = pick(rng, data.len() as u64 + 1) as usize;
    NamedTensor {
        id: if pick(rng, 2) == 0 { pick(rng, 64) as u32 } else { wild(rng) as u32 },
        tensor: TensorFrame { elements, shape, data: &data[..len] },
    }
}

fn link(rng: &mut WeightRng) -> Link {
    Link { latency_ns: wild(rng), bits_per_sec: wild(rng) }
}

/// One message of a random kind with random (often absurd) fields, sometimes mutated.
fn hostile_message(rng: &mut WeightRng, profile: &[u8], sha: [u8; 32], nodes: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..pick(rng, 20_000)).map(|_| rng.next_u64() as u8).collect();
    let model = if pick(rng, 2) == 0 { sha } else { [pick(rng, 256) as u8; 32] };
    let junk_profile: Vec<u8> = if pick(rng, 2) == 0 { profile.to_vec() } else { data[..data.len().min(64)].to_vec() };
    let body = match pick(rng, 11) {
        0..=2 => {
            let mut tensors = heapless::Vec::new();
            for _ in 0..pick(rng, 4) {
                let _ = tensors.push(tensor(rng, &data));
            }
            Body::Infer {
                request: wild(rng),
                model,
                stages: stages(rng, nodes),
                encoding: Encoding::F32,
                tensors,
                deadline_ms: wild(rng) as u32,
            }
        }
        3 => Body::Ping { nonce: wild(rng), padding: &data },
        4 => Body::Register {
            name: heapless::String::try_from(["edge", "cloud", "device", "x"][pick(rng, 4) as usize]).unwrap_or_default(),
            tier: pick(rng, 4) as u8,
            profile: &junk_profile,
            link_to_cloud: Some(link(rng)),
            load: Load { queued: wild(rng) as u32, running: wild(rng) as u32, workers: wild(rng) as u32, service_ns: wild(rng) },
            addr: heapless::String::try_from(["127.0.0.1:1", "0.0.0.0:4434", "[::1]:0", "edge.local:4434", "x"][pick(rng, 5) as usize])
                .unwrap_or_default(),
        },
        5 | 6 => {
            let mut uplinks = heapless::Vec::new();
            for _ in 0..pick(rng, 5) {
                let _ = uplinks.push((pick(rng, 4) as u8, link(rng)));
            }
            let avoid = (0..pick(rng, 4)).map(|_| pick(rng, 4) as u8).collect();
            Body::PlanRequest {
                profile: &junk_profile,
                uplinks,
                count: wild(rng) as u16,
                avoid,
                avoid_machines: (0..pick(rng, 4)).map(|_| wild(rng) as u8).collect(),
                device_memory: (pick(rng, 2) == 0).then(|| wild(rng)),
            }
        }
        7 if pick(rng, 2) == 0 => Body::FetchModel { offset: wild(rng), max_len: wild(rng) as u32 },
        7 => {
            // Ranges inside the model most of the time (each one written as an artifact once).
            let start = pick(rng, nodes as u64 + 2) as u32;
            Body::FetchSlice { start, end: start + pick(rng, 4) as u32, offset: wild(rng), max_len: wild(rng) as u32 }
        }
        8 => Body::Output {
            request: wild(rng),
            tensors: heapless::Vec::new(),
            timings: [StageTiming { tier: 1, machine: 0, compute_ns: wild(rng), held_ns: wild(rng) }].into_iter().collect(),
        },
        9 => Body::Plans {
            routes: [PlannedRoute { stages: stages(rng, nodes), predicted_ns: wild(rng) }].into_iter().collect(),
            machines: [MachineEntry { id: pick(rng, 4) as u8, tier: pick(rng, 3) as u8, name: "cloud", addr: "127.0.0.1:1" }]
                .into_iter()
                .collect(),
        },
        _ => Body::Failure { request: wild(rng), code: FailureCode::Busy, message: Default::default(), detail: FailureDetail::None },
    };
    let mut bytes = encode(&body).unwrap_or_default();
    match pick(rng, 5) {
        0 if !bytes.is_empty() => {
            for _ in 0..1 + pick(rng, 8) {
                let at = pick(rng, bytes.len() as u64) as usize;
                bytes[at] ^= 1 << pick(rng, 8);
            }
        }
        1 => bytes.truncate(pick(rng, bytes.len() as u64 + 1) as usize),
        2 => bytes.extend((0..pick(rng, 64)).map(|_| rng.next_u64() as u8)),
        _ => {}
    }
    bytes
}

/// Peak resident memory of process `pid`, in MiB (Linux).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[test]
fn a_live_cloud_survives_random_and_mutated_messages_from_enrolled_peers() {
    let messages: u64 = std::env::var("SCISSION_FUZZ_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let c = Cluster::new();
    let cluster = c.cluster();
    let profile_path = quick_bench("scission-cloud", &c.model, &c.dir.path().join("cloud.json"), "cloud");
    let mut cloud = start(
        "scission-cloud",
        &[
            "serve",
            c.model.to_str().unwrap(),
            "--cluster",
            &cluster,
            "--profile",
            profile_path.to_str().unwrap(),
            "--read-deadline-ms",
            "2000",
            "--threads",
            "1",
        ],
    );
    let profile = Arc::new(std::fs::read(&profile_path).unwrap());
    let model = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let sha = scission_core::profile::parse_sha256(&model.sha256).unwrap();
    let nodes = model.summary.len() as u32;
    // The honest request: the whole model on the cloud, on a real input.
    let live = graph_inputs(&model, synthetic_inputs(&model, 1).unwrap()).unwrap();
    let honest =
        scission_runtime::convert::infer_message(9, sha, &[Stage { tier: 2, machine: 0, start: 0, end: nodes }], Encoding::F32, 0, &live)
            .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let (sent, answered, honest_ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (worker, name) in ["device", "edge", "device", "edge"].into_iter().enumerate() {
            let identity = pki::Identity::load(&c.dir.path().join("cluster"), name).unwrap();
            let (addr, profile, sent, answered) = (cloud.addr, profile.clone(), sent.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let endpoint = quic::client(&identity).unwrap();
                let mut rng = WeightRng::new(worker as u64 + 1);
                let mut conn = quic::connect(&endpoint, addr, "cloud").await.unwrap();
                while sent.fetch_add(1, Ordering::SeqCst) < messages {
                    if conn.close_reason().is_some() {
                        conn = quic::connect(&endpoint, addr, "cloud").await.unwrap();
                    }
                    let bytes = hostile_message(&mut rng, &profile, sha, nodes);
                    let Ok((mut send, mut recv)) = conn.open_bi().await else { continue };
                    let frame = match pick(&mut rng, 10) {
                        0 => (rng.next_u64() as u32).to_le_bytes().into_iter().chain(bytes).collect(),
                        _ => (bytes.len() as u32).to_le_bytes().into_iter().chain(bytes).collect::<Vec<u8>>(),
                    };
                    let _ = send.write_all(&frame).await;
                    let _ = send.finish();
                    if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), quic::read_frame(&mut recv, 64 << 20)).await
                        && decode(&answer).is_ok()
                    {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        // The honest device, throughout.
        let identity = pki::Identity::load(&c.dir.path().join("cluster"), "device").unwrap();
        let endpoint = quic::client(&identity).unwrap();
        let conn = quic::connect(&endpoint, cloud.addr, "cloud").await.unwrap();
        let mut honest_tries = 0;
        while tasks.iter().any(|t| !t.is_finished()) || honest_tries == 0 {
            honest_tries += 1;
            let answer = tokio::time::timeout(Duration::from_secs(20), quic::exchange(&conn, honest.clone(), 64 << 20)).await;
            if let Ok(Ok(bytes)) = answer
                && matches!(decode(&bytes), Ok(Body::Output { request: 9, .. }))
            {
                honest_ok.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(honest_ok.load(Ordering::SeqCst), honest_tries, "every honest request was served during the fuzz");
    });
    assert!(cloud.child.try_wait().unwrap().is_none(), "the cloud is still running");
    let rss = peak_rss_mib(cloud.child.id());
    eprintln!(
        "live fuzz: {} hostile messages in {:.1} s ({} answered with a well-formed frame), {} honest inferences served, 0 panics, cloud peak RSS {} MiB",
        messages,
        started.elapsed().as_secs_f64(),
        answered.load(Ordering::SeqCst),
        honest_ok.load(Ordering::SeqCst),
        rss.map_or("?".into(), |r| format!("{r:.0}"))
    );
}
