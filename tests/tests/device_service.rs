//! `scission-device serve` as applications on the board see it: cloud, edge and the device
//! service as processes, driven over HTTP by clients that share no code with it (curl, and
//! Python's standard library for the binary extension). Results are compared with the unsplit
//! model run by tract directly, not through the project's slicing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Server, start};
use common::{Reference, bin, quick_bench, run, stderr};
use scission_engine::tract::prelude::*;
use serde_json::{Value, json};

/// The device service, stopped (SIGKILL) when dropped unless it was shut down.
struct Service {
    child: Option<Child>,
    url: String,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Service {
    fn start(config: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(bin("scission-device"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the service announces its address");
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}")).to_string();
        Self { child: Some(child), url, stdout: rx }
    }
}

/// `curl` with `args`; returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, Vec<u8>) {
    let out = Command::new("curl").args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"]).args(args).output().expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
    let text = out.stdout;
    let split = text.iter().rposition(|&b| b == b'\n').unwrap();
    let code = std::str::from_utf8(&text[split + 1..]).unwrap().trim().parse().unwrap();
    (code, text[..split].to_vec())
}

fn curl_json(args: &[&str]) -> (u16, Value) {
    let (code, body) = curl(args);
    (code, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body))))
}

/// POSTs `body` as JSON (through curl's stdin: large tensors exceed the argument limit).
fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs");
    child.stdin.take().unwrap().write_all(body.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl POST {url}: {}", stderr(&out));
    let text = out.stdout;
    let split = text.iter().rposition(|&b| b == b'\n').unwrap();
    let code = std::str::from_utf8(&text[split + 1..]).unwrap().trim().parse().unwrap();
    (code, serde_json::from_slice(&text[..split]).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&text[..split]))))
}

impl Reference {
    fn new(model: &Path) -> Self {
        Reference::load(model).unwrap()
    }

    fn input(&self, seed: u32) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) % 2000) as f32 / 1000.0 - 1.0).collect()
    }

    fn output(&self, input: &[f32]) -> Vec<f32> {
        let t = Tensor::from_shape(&self.shape, input).unwrap();
        let out = self.plan.run(tvec![t.into_tvalue()]).unwrap();
        out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }
}

fn floats(data: &Value) -> Vec<f32> {
    data.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// A JSON inference request for `input`.
fn json_request(name: &str, shape: &[usize], input: &[f32]) -> Value {
    json!({ "id": "r1", "inputs": [{ "name": name, "shape": shape, "datatype": "FP32", "data": input }] })
}

/// The same request through Python's urllib with the binary-data extension both ways.
fn python_binary(url: &str, name: &str, shape: &[usize], input: &[f32]) -> Value {
    const SCRIPT: &str = r#"
import json, struct, sys, urllib.request
url, name, shape, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), [float(v) for v in sys.stdin.read().split()]
header = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": "FP32",
                                 "parameters": {"binary_data_size": 4 * len(values)}}],
                     "parameters": {"binary_data_output": True}}).encode()
body = header + struct.pack("<%df" % len(values), *values)
request = urllib.request.Request(url, data=body, method="POST",
    headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
with urllib.request.urlopen(request, timeout=30) as response:
    length = int(response.headers["Inference-Header-Content-Length"])
    data = response.read()
meta = json.loads(data[:length])
out = meta["outputs"][0]
size = out["parameters"]["binary_data_size"]
print(json.dumps({"shape": out["shape"], "data": list(struct.unpack("<%df" % (size // 4), data[length:length + size])),
                  "parameters": meta["parameters"]}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, url, name, &serde_json::to_string(shape).unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let text: Vec<String> = input.iter().map(|v| format!("{v:e}")).collect();
    child.stdin.take().unwrap().write_all(text.join(" ").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python client: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A service configuration: a fixed split through all three tiers, quick retries.
fn write_config(
    dir: &Path,
    c: &Cluster,
    edge: SocketAddr,
    cloud: SocketAddr,
    split: (usize, usize),
    fallback: bool,
    name: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"device\"\ncluster = \"{}\"\nmodel = \"{}\"\n\n[edge]\naddress = \"{edge}\"\n\n[cloud]\naddress = \"{cloud}\"\n\n\
         [planning]\nsplit = [{}, {}]\nretry_after_ms = 200\ntimeout_ms = 1500\nreplan_every_s = 0\nlocal_fallback = {fallback}\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\nunix_socket = \"{name}.sock\"\nmax_body_mib = 1\n",
        c.cluster(),
        c.model.display(),
        split.0,
        split.1
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Node positions that give each tier part of the model.
fn three_way_split(model: &Path) -> (usize, usize) {
    let m = scission_engine::Model::load_path(model, &Default::default()).unwrap();
    let n = m.summary.len();
    (n / 3, 2 * n / 3)
}

fn restart(bin_name: &str, args: &[&str], addr: SocketAddr) -> Server {
    let mut all: Vec<&str> = args.to_vec();
    let listen = addr.to_string();
    all.extend(["--listen", &listen]);
    start(bin_name, &all)
}

/// Polls `/status` until `done` holds; returns how long that took.
fn wait_for(url: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (_, status) = curl_json(&[&format!("{url}/status")]);
        if done(&status) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "status never got there: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_device_service_answers_applications_and_survives_its_servers() {
    let c = Cluster::new();
    let reference = Reference::new(&c.model);
    let (cloud, edge) = c.servers();
    let (cloud_addr, edge_addr) = (cloud.addr, edge.addr);
    let split = three_way_split(&c.model);
    let config = write_config(c.dir.path(), &c, edge_addr, cloud_addr, split, true, "device");
    let checked = run("scission-device", &["check-config", "--config", config.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let service = Service::start(&config, &[]);
    let model_name = c.model.file_stem().unwrap().to_str().unwrap();
    let base = format!("{}/v2/models/{model_name}", service.url);

    // Health and metadata, as any Open Inference Protocol client reads them.
    assert_eq!(curl(&[&format!("{}/v2/health/live", service.url)]).0, 200);
    assert_eq!(curl(&[&format!("{}/v2/health/ready", service.url)]).0, 200);
    let (code, meta) = curl_json(&[&base]);
    assert_eq!(code, 200);
    let input_name = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    assert_eq!(meta["inputs"][0]["datatype"], "FP32");
    let shape: Vec<usize> = meta["inputs"][0]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(shape, reference.shape);

    // JSON tensors through curl: the split result equals the unsplit model, bit for bit.
    let input = reference.input(1);
    let want = reference.output(&input);
    let (code, answer) = post_json(&format!("{base}/infer"), &json_request(&input_name, &shape, &input));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["id"], "r1");
    assert_eq!(floats(&answer["outputs"][0]["data"]), want);
    let route = answer["parameters"]["scission_route"].as_str().unwrap().to_string();
    assert!(route.contains("device[") && route.contains("edge[") && route.contains("cloud["), "{route}");
    assert_eq!(answer["parameters"]["scission_degraded"], false);
    assert!(answer["parameters"]["scission_compute_ms"].as_str().unwrap().contains("tier2="), "{answer}");
    // From submission to answer, at least the route's own time.
    let (latency, total) =
        (answer["parameters"]["scission_latency_ms"].as_f64().unwrap(), answer["parameters"]["scission_total_ms"].as_f64().unwrap());
    assert!(latency >= total && total > 0.0, "{answer}");

    // Binary tensors both ways, from Python's standard library.
    let input2 = reference.input(2);
    let answer = python_binary(&format!("{base}/infer"), &input_name, &shape, &input2);
    assert_eq!(floats(&answer["data"]), reference.output(&input2));

    // The Unix socket serves the same API.
    let socket = c.dir.path().join("device.sock");
    let (code, _) = curl(&["--unix-socket", socket.to_str().unwrap(), "http://localhost/v2/health/ready"]);
    assert_eq!(code, 200);

    // Several applications at once.
    let handles: Vec<_> = (10..18u32)
        .map(|seed| {
            let (base, name, shape, input) = (base.clone(), input_name.clone(), shape.clone(), reference.input(seed));
            std::thread::spawn(move || (post_json(&format!("{base}/infer"), &json_request(&name, &shape, &input)), input))
        })
        .collect();
    for handle in handles {
        let ((code, answer), input) = handle.join().unwrap();
        assert_eq!(code, 200, "{answer}");
        assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&input));
    }

    // Bad requests get the protocol's error object and a 4xx, and the service keeps serving.
    let bad: [(&str, Value, u16, &str); 3] = [
        ("wrong shape", json!({"inputs": [{"name": input_name, "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}), 400, "takes shape"),
        ("wrong type", json!({"inputs": [{"name": input_name, "shape": shape, "datatype": "INT64", "data": [1]}]}), 400, "takes FP32"),
        ("no such input", json!({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}), 400, "no input 'nope'"),
    ];
    for (what, body, status, words) in bad {
        let (code, answer) = post_json(&format!("{base}/infer"), &body);
        assert_eq!(code, status, "{what}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(words), "{what}: {answer}");
    }
    let (code, answer) = curl_json(&["-X", "POST", "--data-binary", "{\"inputs\": [", &format!("{base}/infer")]);
    assert!(code == 400 && answer["error"].as_str().unwrap().contains("malformed"), "{answer}");
    let (code, answer) = curl_json(&["-X", "POST", "--data-binary", "{}", &format!("{}/v2/models/other/infer", service.url)]);
    assert!(code == 404 && answer["error"].as_str().unwrap().contains("unknown model"), "{answer}");
    let big = c.dir.path().join("big.bin");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let (code, _) = curl(&["-X", "POST", "--data-binary", &format!("@{}", big.display()), &format!("{base}/infer")]);
    assert_eq!(code, 413, "a body over max_body_mib is refused");
    let (code, answer) =
        curl_json(&["-X", "POST", "-H", "Content-Type: image/png", "--data-binary", "not a png", &format!("{base}/infer")]);
    assert_eq!(code, 400, "{answer}");

    // One image from the command line, through the same kind of session.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/example.png");
    let out = run("scission-device", &["infer", example, "--config", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains(&format!("route: {route}")) && text.contains(" 1. class "), "{text}");

    // Edge and cloud gone: requests are still answered, by the device alone, marked degraded.
    drop(edge);
    drop(cloud);
    let input3 = reference.input(3);
    let (code, answer) = post_json(&format!("{base}/infer"), &json_request(&input_name, &shape, &input3));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["parameters"]["scission_degraded"], true, "{answer}");
    assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&input3));
    let (_, status) = curl_json(&[&format!("{}/status", service.url)]);
    assert_eq!(status["degraded"], true, "{status}");
    assert_eq!(curl(&[&format!("{}/v2/health/ready", service.url)]).0, 200, "degraded is still ready");

    // They come back on the same addresses: the split is used again, without a restart.
    let model = c.model.to_str().unwrap();
    let cluster = c.cluster();
    let _cloud = restart("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"], cloud_addr);
    let cloud_text = cloud_addr.to_string();
    let _edge = restart("scission-edge", &["serve", model, "--cluster", &cluster, "--cloud", &cloud_text, "--threads", "1"], edge_addr);
    let back = wait_for(&service.url, Duration::from_secs(60), |s| s["degraded"] == false && s["route"].as_str() == Some(&route));
    eprintln!("the split was back in use {:.1} s after edge and cloud restarted", back.as_secs_f64());
    let (code, answer) = post_json(&format!("{base}/infer"), &json_request(&input_name, &shape, &input3));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["parameters"]["scission_route"], route.as_str());
    assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&input3));

    // The metrics saw all of it.
    let (code, metrics) = curl(&[&format!("{}/metrics", service.url)]);
    assert_eq!(code, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    for line in ["scission_requests_total 12", "scission_degraded_requests_total 1", "scission_failures_total{kind=\"bad_input\"} 6"] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(metrics.contains("scission_plan{route="), "{metrics}");
    assert!(metrics.contains("scission_hop_seconds_count{from=\"0\",to=\""), "the device's hops are timed: {metrics}");

    // SIGTERM: a clean stop.
    let mut service = service;
    let mut child = service.child.take().unwrap();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    // The process has exited: its stdout ends, the reader thread finishes, the channel closes.
    let said: Vec<String> = service.stdout.iter().collect();
    assert!(said.iter().any(|l| l.contains("stopped")), "{said:?}");
}

#[test]
fn without_a_local_fallback_health_says_why_until_a_tier_returns() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let (cloud_addr, edge_addr) = (cloud.addr, edge.addr);
    let split = three_way_split(&c.model);
    let config = write_config(c.dir.path(), &c, edge_addr, cloud_addr, split, false, "strict");
    let service = Service::start(&config, &[]);
    let model_name = c.model.file_stem().unwrap().to_str().unwrap();
    let infer = format!("{}/v2/models/{model_name}/infer", service.url);
    let reference = Reference::new(&c.model);
    let (_, meta) = curl_json(&[&format!("{}/v2/models/{model_name}", service.url)]);
    let input_name = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let request = json_request(&input_name, &reference.shape, &reference.input(4));
    assert_eq!(post_json(&infer, &request).0, 200);

    drop(edge);
    drop(cloud);
    // No request needed to notice: the warm connections time out (QUIC idle timeout, 10 s).
    let noticed = wait_for(&service.url, Duration::from_secs(40), |s| s["ready"] == false);
    eprintln!("not ready {:.1} s after edge and cloud died, with no request sent", noticed.as_secs_f64());
    let (code, answer) = post_json(&infer, &request);
    assert_eq!(code, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("unreachable"), "{answer}");
    // Refused before its body is read, with when to come back.
    let (code, head) = curl(&["-D", "-", "-o", "/dev/null", "-X", "POST", "--data-binary", "{}", &infer]);
    assert_eq!(code, 503);
    assert!(String::from_utf8_lossy(&head).to_ascii_lowercase().contains("retry-after: 1"), "{}", String::from_utf8_lossy(&head));
    let (code, ready) = curl_json(&[&format!("{}/v2/health/ready", service.url)]);
    assert_eq!(code, 503, "{ready}");
    assert!(ready["error"].as_str().unwrap().contains("cannot run the model alone"), "{ready}");
    assert_eq!(curl(&[&format!("{}/v2/health/live", service.url)]).0, 200, "not ready, but alive");

    let model = c.model.to_str().unwrap();
    let cluster = c.cluster();
    let _cloud = restart("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"], cloud_addr);
    let cloud_text = cloud_addr.to_string();
    let _edge = restart("scission-edge", &["serve", model, "--cluster", &cluster, "--cloud", &cloud_text, "--threads", "1"], edge_addr);
    wait_for(&service.url, Duration::from_secs(60), |s| s["ready"] == true);
    let (code, answer) = post_json(&infer, &request);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&reference.input(4)));
}

#[test]
fn check_config_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("device.toml");
    std::fs::write(&config, "model = \"missing.onnx\"\n[planning]\nprofile = \"nope.json\"\n").unwrap();
    let out = run("scission-device", &["check-config", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for words in ["ca.cert.pem is missing", "missing.onnx is missing", "nope.json", "no [cloud] address"] {
        assert!(err.contains(words), "{words}: {err}");
    }
    std::fs::write(&config, "[api]\nlisen = \"x\"\n").unwrap();
    let out = run("scission-device", &["serve", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("lisen"), "{}", stderr(&out));
}

/// Two distinct loopback addresses nothing listens on yet (both bound at once, then freed).
fn free_udp_addrs() -> (SocketAddr, SocketAddr) {
    let (a, b) = (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

#[test]
fn a_service_started_before_its_servers_answers_locally_then_takes_the_clouds_plan() {
    let c = Cluster::new();
    let dir = c.dir.path();
    let mut files = Vec::new();
    for (bin_name, name) in [("scission-device", "device"), ("scission-edge", "edge"), ("scission-cloud", "cloud")] {
        files.push(quick_bench(bin_name, &c.model, &dir.join(format!("{name}.json")), name));
    }
    // The device is made 50x slower, so the cloud's plan offloads.
    let mut device: scission_core::profile::Profile = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    device.blocks.iter_mut().for_each(|b| b.time.median_ns *= 50);
    std::fs::write(&files[0], serde_json::to_vec(&device).unwrap()).unwrap();
    let (edge_addr, cloud_addr) = free_udp_addrs();
    let config = dir.join("cloud-planned.toml");
    let text = format!(
        "cluster = \"{}\"\nmodel = \"{}\"\n[edge]\naddress = \"{edge_addr}\"\n[cloud]\naddress = \"{cloud_addr}\"\n\
         [planning]\nprofile = \"{}\"\nretry_after_ms = 200\ntimeout_ms = 1000\n[api]\nlisten = \"127.0.0.1:0\"\n",
        c.cluster(),
        c.model.display(),
        files[0].display()
    );
    std::fs::write(&config, text).unwrap();
    let service = Service::start(&config, &[]);
    let (_, status) = curl_json(&[&format!("{}/status", service.url)]);
    assert_eq!(status["degraded"], true, "no cloud to plan yet: {status}");
    assert_eq!(status["ready"], true, "{status}");

    let reference = Reference::new(&c.model);
    let model_name = c.model.file_stem().unwrap().to_str().unwrap();
    let infer = format!("{}/v2/models/{model_name}/infer", service.url);
    let (_, meta) = curl_json(&[&format!("{}/v2/models/{model_name}", service.url)]);
    let input_name = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let request = json_request(&input_name, &reference.shape, &reference.input(5));
    let (code, answer) = post_json(&infer, &request);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["parameters"]["scission_degraded"], true);

    let (model, cluster) = (c.model.to_str().unwrap(), c.cluster());
    let cloud_profile = files[2].to_str().unwrap();
    let _cloud =
        restart("scission-cloud", &["serve", model, "--cluster", &cluster, "--profile", cloud_profile, "--threads", "1"], cloud_addr);
    let cloud_text = cloud_addr.to_string();
    let edge_profile = files[1].to_str().unwrap();
    let edge_args = ["serve", model, "--cluster", &cluster, "--cloud", &cloud_text, "--profile", edge_profile, "--threads", "1"];
    let _edge = restart("scission-edge", &edge_args, edge_addr);
    let took = wait_for(&service.url, Duration::from_secs(60), |s| s["degraded"] == false && !s["predicted_ms"].is_null());
    eprintln!("the cloud's plan was in use {:.1} s after the servers started", took.as_secs_f64());
    let (code, answer) = post_json(&infer, &request);
    assert_eq!(code, 200, "{answer}");
    let route = answer["parameters"]["scission_route"].as_str().unwrap();
    assert!(route.contains("edge[") || route.contains("cloud["), "the cloud's plan offloads the slow device: {answer}");
    assert!(answer["parameters"]["scission_predicted_ms"].is_number(), "{answer}");
    assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&reference.input(5)));
}

#[test]
fn a_busy_edge_is_back_pressure_requests_go_around_it_and_it_stays_up() {
    let mut c = Cluster::new();
    // A larger input, so the edge's stage takes long enough for concurrent requests to overlap.
    c.model = common::write_model(c.dir.path(), scission_zoo::onnx::testmodels::TestModel::Branched, 96);
    let (model, cluster) = (c.model.to_str().unwrap(), c.cluster());
    let cloud = start("scission-cloud", &["serve", model, "--cluster", &cluster, "--threads", "1"]);
    let cloud_text = cloud.addr.to_string();
    // One worker and no queue: a second request at the same time is answered Busy.
    let edge_args = ["serve", model, "--cluster", &cluster, "--cloud", &cloud_text, "--threads", "1", "--workers", "1", "--queue", "0"];
    let edge = start("scission-edge", &edge_args);
    // The device computes nothing, so concurrent requests reach the edge together however
    // slowly a loaded host runs the device's own stage.
    let config = write_config(c.dir.path(), &c, edge.addr, cloud.addr, (0, three_way_split(&c.model).1), true, "busy");
    let service = Service::start(&config, &[]);
    let reference = Reference::new(&c.model);
    let model_name = c.model.file_stem().unwrap().to_str().unwrap();
    let (_, meta) = curl_json(&[&format!("{}/v2/models/{model_name}", service.url)]);
    let input_name = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    let infer = format!("{}/v2/models/{model_name}/infer", service.url);
    let (_, first) = post_json(&infer, &json_request(&input_name, &reference.shape, &reference.input(0)));
    let split = first["parameters"]["scission_route"].as_str().unwrap().to_string();
    let handles: Vec<_> = (20..36u32)
        .map(|seed| {
            let (infer, name, shape, input) = (infer.clone(), input_name.clone(), reference.shape.clone(), reference.input(seed));
            std::thread::spawn(move || (post_json(&infer, &json_request(&name, &shape, &input)), input))
        })
        .collect();
    let mut around = 0;
    for handle in handles {
        let ((code, answer), input) = handle.join().unwrap();
        assert_eq!(code, 200, "every request ends in a result: {answer}");
        assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&input));
        around += usize::from(answer["parameters"]["scission_route"] != split.as_str());
    }
    eprintln!("{around} of 16 concurrent requests went around the busy edge");
    assert!(around > 0, "with one edge worker and no queue, some of 16 concurrent requests are turned away");
    let (_, status) = curl_json(&[&format!("{}/status", service.url)]);
    assert_eq!(status["down"], json!([]), "busy is not down: {status}");
    assert_eq!(status["route"].as_str(), Some(split.as_str()), "{status}");
}

/// Sends a request head over raw TCP: `POST path` announcing `length` bytes of JSON body, of
/// which only `sent` go now. Returns the open stream.
fn partial_post(url: &str, path: &str, length: usize, sent: &[u8]) -> std::net::TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(sent).unwrap();
    stream
}

#[test]
fn requests_beyond_the_apis_slots_and_waiting_line_get_503_with_retry_after() {
    let c = Cluster::new();
    let reference = Reference::new(&c.model);
    let (cloud, edge) = c.servers();
    let split = three_way_split(&c.model);
    let config = write_config(c.dir.path(), &c, edge.addr, cloud.addr, split, true, "slots");
    // One slot, one place to wait.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_concurrent = 1\nmax_waiting = 1\n");
    std::fs::write(&config, text).unwrap();
    let service = Service::start(&config, &[]);
    let model_name = c.model.file_stem().unwrap().to_str().unwrap();
    let path = format!("/v2/models/{model_name}/infer");
    let input_name = curl_json(&[&format!("{}/v2/models/{model_name}", service.url)]).1["inputs"][0]["name"].as_str().unwrap().to_string();
    let input = reference.input(3);
    let body = json_request(&input_name, &reference.shape, &input).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);

    // A client that sends half its body holds the slot; a second waits for it.
    let mut holder = partial_post(&service.url, &path, body.len(), first);
    std::thread::sleep(Duration::from_millis(300));
    let waiter = partial_post(&service.url, &path, body.len(), body.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    // A third finds the slot taken and the line full: refused at once, with when to retry.
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@-"])
        .arg(format!("{}{path}", service.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(body.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let response = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(response.starts_with("http/1.1 503"), "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(response.contains("overloaded"), "{response}");

    // The holder finishes its body: it and the waiter are both answered, right.
    holder.write_all(rest).unwrap();
    for mut stream in [holder, waiter] {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 65536];
        // Read until the JSON body is complete (the answer ends with "}]}" of the outputs).
        while !answer.ends_with(b"}]}") {
            let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
            assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let json: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(floats(&json["outputs"][0]["data"]), reference.output(&input));
    }
    let (_, metrics) = curl(&[&format!("{}/metrics", service.url)]);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("scission_failures_total{kind=\"overloaded\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "{metrics}");
}

/// `model` with its input's height made symbolic, as detectors and OCR models are exported
/// (`[N, 3, H, W]` with `H` and `W` free).
fn with_symbolic_height(dir: &Path) -> PathBuf {
    use scission_engine::tract::pb::tensor_shape_proto::dimension::Value as Dim;
    use scission_engine::tract::pb::type_proto::Value as Type;
    let mut proto = scission_zoo::onnx::testmodels::TestModel::Branched.build(32, 5);
    let graph = proto.graph.as_mut().unwrap();
    if let Some(Type::TensorType(t)) = &mut graph.input[0].r#type.as_mut().unwrap().value {
        t.shape.as_mut().unwrap().dim[2].value = Some(Dim::DimParam("height".into()));
    }
    for out in &mut graph.output {
        out.r#type = None;
    }
    let path = dir.join("symbolic_height.onnx");
    std::fs::write(&path, scission_zoo::onnx::builder::encode(&proto)).unwrap();
    path
}

#[test]
fn a_model_with_a_symbolic_height_is_served_at_the_input_shape_given_on_every_tier() {
    let c = Cluster::new();
    // The same network with a concrete input is the reference, loaded by tract alone.
    let reference = Reference::new(&c.model);
    let model = with_symbolic_height(c.dir.path());
    let shape_arg = reference.shape.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let (m, cluster) = (model.to_str().unwrap(), c.cluster());
    let cloud = start("scission-cloud", &["serve", m, "--cluster", &cluster, "--threads", "1", "--input-shape", &shape_arg]);
    let cloud_addr = cloud.addr.to_string();
    let edge =
        start("scission-edge", &["serve", m, "--cluster", &cluster, "--cloud", &cloud_addr, "--threads", "1", "--input-shape", &shape_arg]);
    let split = three_way_split(&c.model);
    let config = write_config(c.dir.path(), &c, edge.addr, cloud.addr, split, false, "device");
    let model_flag = ["--model", m];

    // Without a shape the service stops at once and says how to give one.
    let out = Command::new(bin("scission-device")).args(["serve", "--config", config.to_str().unwrap()]).args(model_flag).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--input-shape"), "{}", stderr(&out));

    let service = Service::start(&config, &[&model_flag[..], &["--input-shape", &shape_arg]].concat());
    let base = format!("{}/v2/models/symbolic_height", service.url);
    let (code, meta) = curl_json(&[&base]);
    assert_eq!(code, 200, "{meta}");
    let shape: Vec<usize> = meta["inputs"][0]["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    assert_eq!(shape, reference.shape);
    let input_name = meta["inputs"][0]["name"].as_str().unwrap().to_string();
    for seed in 1..3 {
        let input = reference.input(seed);
        let (code, answer) = post_json(&format!("{base}/infer"), &json_request(&input_name, &shape, &input));
        assert_eq!(code, 200, "{answer}");
        assert_eq!(floats(&answer["outputs"][0]["data"]), reference.output(&input));
        let route = answer["parameters"]["scission_route"].as_str().unwrap();
        assert!(route.contains("device[") && route.contains("edge[") && route.contains("cloud["), "{route}");
    }
}
