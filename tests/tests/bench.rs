//! `bench` on every tier writes a consistent, versioned profile of the model it measured.

mod common;

use common::{run, stderr, write_model};
use scission_core::profile::{PROFILE_FORMAT, PROFILE_VERSION, Profile, TierKind};
use scission_engine::{LoadOptions, Model};
use scission_zoo::onnx::testmodels::TestModel;

fn bench(bin: &str, model: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Profile {
    let mut args = vec![
        "bench",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--min-runs",
        "3",
        "--max-runs",
        "3",
        "--max-time-ms",
        "5",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let result = run(bin, &args);
    assert!(result.status.success(), "{bin} bench failed: {}", stderr(&result));
    serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
}

#[test]
fn profiles_cover_the_model_block_by_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), TestModel::Branched, 32);
    let model = Model::load_path(&path, &LoadOptions::default()).unwrap();
    for (bin, tier, extra) in [
        ("scission-device", TierKind::Device, vec!["--name", "pi"]),
        ("scission-edge", TierKind::Edge, vec!["--max-crossing", "2", "--threads", "2", "--method", "blocks"]),
        ("scission-cloud", TierKind::Cloud, vec![]),
    ] {
        let out = dir.path().join(format!("{bin}.json"));
        let p = bench(bin, &path, &out, &extra);
        assert_eq!((p.format.as_str(), p.version), (PROFILE_FORMAT, PROFILE_VERSION));
        assert_eq!(p.model.sha256, model.sha256);
        assert_eq!(p.model.input_shapes, vec![vec![1, 3, 32, 32]]);
        assert_eq!(p.machine.tier, tier);
        let max_crossing = if extra.contains(&"--max-crossing") { 2 } else { 1 };
        assert_eq!(p.max_crossing, max_crossing);
        let points = model.cuts.cut_points(max_crossing);
        assert_eq!(p.cuts.iter().map(|c| c.position).collect::<Vec<_>>(), points);
        assert_eq!(p.blocks.len(), points.len() - 1);
        for (block, w) in p.blocks.iter().zip(points.windows(2)) {
            assert_eq!((block.range.start, block.range.end), (w[0], w[1]));
            assert_eq!(block.time.runs, 3);
            assert!(block.time.p10_ns <= block.time.median_ns && block.time.median_ns <= block.time.p90_ns);
            // Profiled, a block whose nodes the optimiser folded away takes no time; alone, it
            // still runs as a slice.
            if extra.contains(&"blocks") {
                assert!(block.time.median_ns > 0);
            }
        }
        assert!(p.sum_of_blocks_ns > 0);
        for cut in &p.cuts {
            assert_eq!(cut.bytes, model.cuts.bytes(cut.position));
        }
        let weights: u64 = p.blocks.iter().map(|b| b.weight_bytes).sum();
        assert_eq!(weights, model.summary.weight_bytes(0, model.summary.len()));
        let sum: u64 = p.blocks.iter().map(|b| b.time.median_ns).sum();
        assert_eq!(p.sum_of_blocks_ns, sum);
        assert!(p.whole_model.median_ns > 0 && p.bench_seconds > 0.0);
    }
    let device: Profile = serde_json::from_slice(&std::fs::read(dir.path().join("scission-device.json")).unwrap()).unwrap();
    assert_eq!((device.machine.name.as_str(), device.machine.threads), ("pi", 1));
}

#[test]
fn bad_bench_arguments_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), TestModel::Chain, 32);
    let out = dir.path().join("p.json");
    let r = run("scission-device", &["bench", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--input-shape", "1,three"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    let r =
        run("scission-device", &["bench", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--min-runs", "9", "--max-runs", "3"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("--min-runs"), "{}", stderr(&r));
    assert!(!out.exists());
}

#[test]
fn a_device_playing_a_slower_board_says_so_in_its_profile_and_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), TestModel::Chain, 32);
    let slow_json = dir.path().join("slow.json");
    let slow = bench("scission-device", &path, &slow_json, &["--emulate-slower", "3"]);
    assert_eq!((slow.machine.emulated_slowdown, slow.machine.slowdown()), (Some(3), 3));
    let native = bench("scission-device", &path, &dir.path().join("native.json"), &[]);
    assert_eq!((native.machine.emulated_slowdown, native.machine.slowdown()), (None, 1));
    // Planning with it, a device that plays another board is told so before anything runs.
    let r = run("scission-device", &["run", path.to_str().unwrap(), "--profiles", slow_json.to_str().unwrap(), "--edge", "127.0.0.1:9"]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("slow.json: benchmarked with --emulate-slower 3, and this process runs with --emulate-slower 1"),
        "{}",
        stderr(&r)
    );
    // Nor can the verification pass add ranges timed at another speed to it.
    let r =
        run("scission-device", &["bench", path.to_str().unwrap(), "--out", slow_json.to_str().unwrap(), "--add-ranges", "0-1", "--quiet"]);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("slow.json: benchmarked with --emulate-slower 3, and this process runs with --emulate-slower 1"),
        "{}",
        stderr(&r)
    );
    // The same slice, run as the slower board and as this machine: the same outputs.
    let mut saved = Vec::new();
    for (name, extra) in [("native", vec![]), ("slow", vec!["--emulate-slower", "3"])] {
        let out = dir.path().join(name);
        let mut args =
            vec!["run-slice", "--model", path.to_str().unwrap(), "--range", "0,4", "--runs", "2", "--save", out.to_str().unwrap()];
        args.extend(extra);
        let r = run("scission-device", &args);
        assert!(r.status.success(), "{}", stderr(&r));
        saved.push(std::fs::read(out.join("output-0.npy")).unwrap());
    }
    assert_eq!(saved[0], saved[1]);
    let r = run("scission-device", &["--emulate-slower", "0", "run-slice", "--model", path.to_str().unwrap(), "--range", "0,4"]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains("--emulate-slower"), "{}", stderr(&r));
}
