//! The local API's cost: requests per second and p50/p99 latency at 1, 4 and 16 concurrent
//! clients, calling the session directly (the library API) against HTTP with binary tensors and
//! with JSON tensors, side by side in one run, on a zoo model run entirely on this device (so
//! only the API differs between the columns).
//!
//! `cargo bench -p scission-serving --bench api [-- MODEL [REQUESTS]]` (default mobilenet_v2, 48).

use std::sync::Arc;
use std::time::{Duration, Instant};

use scission_core::policy::PolicyConfig;
use scission_runtime::device::Planning;
use scission_runtime::session::{Session, SessionConfig};
use scission_serving::http::{self, Listen, Service, ServiceOptions};
use scission_serving::metrics::Metrics;

const CLIENTS: [usize; 3] = [1, 4, 16];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let name = args.first().map_or("mobilenet_v2", String::as_str);
    let requests: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(48);
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("cluster");
    scission_net::pki::init_cluster(&cluster).expect("cluster");
    scission_net::pki::enroll(&cluster, "device", scission_net::pki::Role::Device, false, 30).expect("enroll");
    let model_path = scission_zoo::cached(name, 1).expect("zoo model");
    let model = scission_engine::Model::load_path(&model_path, &Default::default()).expect("model");
    let nodes = model.summary.len();
    let runtime = scission_runtime::async_runtime().expect("runtime");
    let config = SessionConfig {
        cluster,
        name: "device".into(),
        edge: None,
        cloud: None,
        planner: None,
        planning: Planning::Split { device_end: nodes, edge_end: nodes },
        policy: PolicyConfig::default(),
        emulate: false,
        timeout: Duration::from_secs(30),
        encoding: scission_core::link::Encoding::F32,
        threads: 1,
        max_frame: scission_core::wire::frame::DEFAULT_MAX_FRAME,
        local_fallback: false,
        require_plan: true,
        max_outstanding: 64,
        max_slice_bytes: u64::MAX,
        device_memory: None,
        liveness: Default::default(),
    };
    let session = Arc::new(runtime.block_on(Session::open(config, model, None)).expect("session"));
    let input = scission_engine::input::synthetic_inputs(session.model(), 1).expect("input");
    let shape: Vec<usize> = input[0].shape().to_vec();
    let values: Vec<f32> = input[0].try_as_plain_ram().expect("plain").as_slice::<f32>().expect("f32").to_vec();
    let input_name = session.model().summary.tensors[session.model().summary.inputs[0]].name.clone();
    let options = ServiceOptions { max_concurrent: 64, ..ServiceOptions::new(name) };
    let service = Arc::new(Service::new(session.clone(), Arc::new(Metrics::new()), options, Vec::new()).expect("service"));
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let listen = Listen { tcp: Some("127.0.0.1:0".parse().expect("addr")), unix: None };
        let _ = http::serve(service, &listen, std::future::pending(), move |a| {
            let _ = bound_tx.send(a);
        })
        .await;
    });
    let addr = bound_rx.recv().expect("bound").expect("tcp");
    let url = format!("http://{addr}/v2/models/{name}/infer");
    let binary = binary_body(&input_name, &shape, &values);
    let json = json_body(&input_name, &shape, &values);
    println!("{name}: {nodes} nodes, all on this device, 1 engine thread per request, {requests} requests per cell");
    println!("request bodies: binary {} KiB, JSON {} KiB", binary.1.len() / 1024, json.len() / 1024);
    println!("{:<14} {:>7} {:>9} {:>9} {:>9}", "client", "clients", "req/s", "p50 ms", "p99 ms");
    // Warm up every path once.
    runtime.block_on(session.infer(input.clone())).expect("warm-up");
    for clients in CLIENTS {
        let library = measure(clients, requests, |_| {
            let t = Instant::now();
            runtime.block_on(session.infer(input.clone())).expect("library infer");
            t.elapsed()
        });
        report("library", clients, &library);
        let http_binary = measure(clients, requests, |_| {
            let t = Instant::now();
            let mut response = ureq::post(&url)
                .header("Inference-Header-Content-Length", binary.0.to_string())
                .header("Content-Type", "application/octet-stream")
                .send(&binary.1[..])
                .expect("binary infer");
            let _ = response.body_mut().read_to_vec().expect("body");
            t.elapsed()
        });
        report("http binary", clients, &http_binary);
        let http_json = measure(clients, requests, |_| {
            let t = Instant::now();
            let mut response = ureq::post(&url).header("Content-Type", "application/json").send(&json[..]).expect("json infer");
            let _ = response.body_mut().read_to_vec().expect("body");
            t.elapsed()
        });
        report("http json", clients, &http_json);
    }
}

/// (JSON header length, whole body) of a binary-extension request.
fn binary_body(name: &str, shape: &[usize], values: &[f32]) -> (usize, Vec<u8>) {
    let header = serde_json::json!({
        "inputs": [{ "name": name, "shape": shape, "datatype": "FP32", "parameters": { "binary_data_size": values.len() * 4 } }],
        "parameters": { "binary_data_output": true }
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    values.iter().for_each(|v| body.extend_from_slice(&v.to_le_bytes()));
    (header.len(), body)
}

fn json_body(name: &str, shape: &[usize], values: &[f32]) -> Vec<u8> {
    serde_json::json!({ "inputs": [{ "name": name, "shape": shape, "datatype": "FP32", "data": values }] }).to_string().into_bytes()
}

/// Runs `requests` calls of `call` spread over `clients` threads; the wall time and each
/// call's latency.
fn measure(clients: usize, requests: usize, call: impl Fn(usize) -> Duration + Sync) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let call = &call;
                scope.spawn(move || (c..requests).step_by(clients).map(call).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    latencies.sort();
    (started.elapsed(), latencies)
}

fn report(what: &str, clients: usize, (wall, latencies): &(Duration, Vec<Duration>)) {
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    let rate = latencies.len() as f64 / wall.as_secs_f64();
    println!("{what:<14} {clients:>7} {rate:>9.1} {:>9.2} {:>9.2}", at(0.5), at(0.99));
}
