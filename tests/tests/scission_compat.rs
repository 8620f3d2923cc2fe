//! `scission-cloud plan` is a drop-in for the original Scission's predictor: same inputs, same
//! criteria, the README example reproduced to the digit, and clear errors on bad input.

mod common;

use std::path::PathBuf;

use common::{run, stderr};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/scission-original/benchmark_data")
}

fn plan(args: &[&str]) -> std::process::Output {
    let dir = data();
    let csv = dir.join("network_stats.csv");
    let mut all = vec!["plan", dir.to_str().unwrap(), csv.to_str().unwrap()];
    all.extend_from_slice(args);
    run("scission-cloud", &all)
}

#[test]
fn reproduces_the_original_readme_example_exactly() {
    let out = plan(&["vgg19", "-d", "!-1", "-e", "10", "-c", "16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = "\
[1] 9.0106s - 2.4087MB - Device(raspi4) = 0 - 6, Edge(vm2Core) = 7 - 11, Cloud(6700k(GPU)) = 12 - 25
[2] 9.0594s - 2.4087MB - Device(raspi4) = 0 - 6, Edge(2500) = 7 - 11, Cloud(6700k(GPU)) = 12 - 25
[3] 9.0721s - 2.4087MB - Device(raspi4) = 0 - 6, Edge(vm2Core) = 7 - 11, Cloud(6700k(NoGPU)) = 12 - 25
[4] 9.1209s - 2.4087MB - Device(raspi4) = 0 - 6, Edge(2500) = 7 - 11, Cloud(6700k(NoGPU)) = 12 - 25
[5] 9.1511s - 3.2115MB - Device(raspi4) = 0 - 6, Edge(vm2Core) = 7 - 12, Cloud(6700k(GPU)) = 13 - 25
";
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

#[test]
fn criteria_limits_and_outputs() {
    // The device may upload at most 1 MB: it must compute past block 6 (1.6 MB out).
    let out = plan(&["resnet50", "-d", "!-1", "--device-upload", "1", "-n", "3", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 3);
    for p in plans {
        assert!(p["device_upload_bytes"].as_u64().unwrap() <= 1_000_000);
        assert_eq!(p["segments"][0]["machine"], "raspi4");
    }
    // A chart with one bar per plan.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("plans.svg");
    let out = plan(&["mobilenet", "-n", "4", "--chart", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    assert_eq!(text.matches(">#").count(), 4, "{text}");
}

#[test]
fn what_if_link_changes_the_best_plan() {
    let best = |extra: &[&str]| {
        let mut args = vec!["vgg19", "-n", "1"];
        args.extend_from_slice(extra);
        let out = plan(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let slow = best(&[]);
    assert!(slow.contains("= 0 - 25") && !slow.contains("Device"), "on the 1.6 Mbit/s uplink the cloud runs everything: {slow}");
    let fast = best(&["--link", "raspi4-6700k(GPU)=1gbit,1ms"]);
    assert!(fast.contains("Cloud(6700k(GPU)) = 0 - 25"), "{fast}");
    let slow_line: f64 = slow[4..].split('s').next().unwrap().parse().unwrap();
    let fast_line: f64 = fast[4..].split('s').next().unwrap().parse().unwrap();
    assert!(fast_line < slow_line);
}

fn assert_error(out: &std::process::Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' missing from: {err}");
    }
}

#[test]
fn bad_inputs_are_named() {
    assert_error(&plan(&["alexnet"]), &["no benchmark of 'alexnet'"]);
    assert_error(&plan(&["vgg19", "-d", "nosuchpi"]), &["'nosuchpi'", "device"]);
    assert_error(&plan(&["vgg19", "-e", "999"]), &["no layer 999"]);
    assert_error(&plan(&["vgg19", "-e", "10", "-d", "10"]), &["pinned to both 'device' and 'edge'"]);
    assert_error(&plan(&["vgg19", "-e", "10,-1"]), &["must be used and must not be used"]);
    assert_error(&plan(&["vgg19", "-d", "!-1", "--device-time", "0.001"]), &["no plan satisfies", "compute-time caps"]);

    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench");
    std::fs::create_dir(&bench).unwrap();
    for f in std::fs::read_dir(data()).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "dat") {
            std::fs::copy(&f, bench.join(f.file_name().unwrap())).unwrap();
        }
    }
    let csv = dir.path().join("net.csv");
    let original = std::fs::read_to_string(data().join("network_stats.csv")).unwrap();
    let run_with = |csv_text: &str| {
        std::fs::write(&csv, csv_text).unwrap();
        run("scission-cloud", &["plan", bench.to_str().unwrap(), csv.to_str().unwrap(), "vgg19"])
    };
    let without_link: String = original.lines().filter(|l| !l.starts_with("raspi4,2500")).map(|l| format!("{l}\n")).collect();
    assert_error(&run_with(&without_link), &["no link from 'raspi4' to '2500'"]);
    assert_error(&run_with(&format!("{original}raspi4,2500,fast,1\n")), &["line 10", "'fast'"]);
    assert_error(&run_with("source,destination\nraspi4,2500\n"), &["line 2", "4 fields"]);

    let good = bench.join("edge-2500.dat");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&good, &bytes[..bytes.len() / 3]).unwrap();
    assert_error(&run_with(&original), &["edge-2500.dat", "truncated"]);
    // A pickle that would run `os.system` in Python is rejected, not executed.
    std::fs::write(&good, b"\x80\x03cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.").unwrap();
    assert_error(&run_with(&original), &["edge-2500.dat", "os.system is not allowed"]);
}
