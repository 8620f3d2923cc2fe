//! Every `--json` output parses, names its format and version, and says what the text output
//! says: `inspect`, `zoo list`, `bench` (and `bench --add-ranges`), and `scission-device run`,
//! whose stdout then carries the JSON document alone.

mod common;

use common::cluster::Cluster;
use common::{run, stderr, write_model};
use scission_zoo::onnx::testmodels::TestModel;
use serde_json::Value;

/// The one JSON document a command printed on stdout (a failed command fails the test).
fn document(bin: &str, args: &[&str], format: &str) -> Value {
    let out = run(bin, args);
    assert!(out.status.success(), "{bin} {args:?}: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{bin} {args:?} printed more than one JSON document ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!((v["format"].as_str(), v["version"].as_u64()), (Some(format), Some(1)), "{v}");
    v
}

/// The text a command printed on stdout.
fn text(bin: &str, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(out.status.success(), "{bin} {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn inspect_json_lists_the_cut_points_the_table_marks() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), TestModel::Branched, 32);
    let model = model.to_str().unwrap();
    for (crossing, nodes) in [("1", false), ("2", false), ("2", true)] {
        let mut args = vec!["inspect", model, "--max-crossing", crossing];
        if nodes {
            args.push("--nodes");
        }
        let table = text("scission-cloud", &args);
        args.push("--json");
        let v = document("scission-cloud", &args, "scission-inspect");
        // The table's rows: `*` marks a cut point; then the position and the bytes crossing it.
        let rows: Vec<(bool, u64, u64)> = table
            .lines()
            .skip(3)
            .map(|l| {
                let mut words = l[1..].split_whitespace();
                (l.starts_with('*'), words.next().unwrap().parse().unwrap(), words.next().unwrap().parse().unwrap())
            })
            .collect();
        let positions = v["positions"].as_array().unwrap();
        let listed: Vec<(bool, u64, u64)> = positions
            .iter()
            .map(|p| (p["cut_point"].as_bool().unwrap(), p["position"].as_u64().unwrap(), p["bytes"].as_u64().unwrap()))
            .collect();
        assert_eq!(listed, rows, "--max-crossing {crossing}, --nodes {nodes}");
        let cuts = listed.iter().filter(|(cut, _, _)| *cut).count() as u64;
        assert_eq!(v["blocks"].as_u64(), Some(cuts - 1), "{v}");
        assert!(table.contains(&format!("{} blocks;", cuts - 1)), "{table}");
        let nodes_total = v["compute_nodes"].as_u64().unwrap();
        assert_eq!((listed[0].1, listed.last().unwrap().1), (0, nodes_total), "from the input to the end");
        assert!(positions.last().unwrap()["next_node"].is_null(), "nothing after the end");
        if nodes {
            assert_eq!(listed.len() as u64, nodes_total + 1, "every position with --nodes");
        }
    }
}

#[test]
fn zoo_list_json_names_every_model_of_the_table() {
    let table = text("scission-cloud", &["zoo", "list"]);
    let v = document("scission-cloud", &["zoo", "list", "--json"], "scission-zoo");
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    let listed: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, listed);
    assert_eq!(names.len(), 18, "the original Scission's 18 DNNs");
    assert!(v["models"].as_array().unwrap().iter().all(|m| m["parameters"].as_u64().unwrap() > 0 && m["input"][0] == m["input"][1]));
}

#[test]
fn bench_json_summarises_the_profile_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(dir.path(), TestModel::Chain, 32);
    let out = dir.path().join("p.json");
    let (model, out) = (model.to_str().unwrap(), out.to_str().unwrap());
    let quick = ["--min-runs", "3", "--max-runs", "3", "--quiet", "--json"];
    let v = document("scission-cloud", &[&["bench", model, "--out", out, "--name", "box"][..], &quick].concat(), "scission-bench-summary");
    let profile: Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(v["profile"].as_str(), Some(out));
    assert_eq!(v["machine"].as_str(), Some("box"));
    assert_eq!(v["tier"], profile["machine"]["tier"]);
    assert_eq!(v["blocks"].as_u64(), Some(profile["blocks"].as_array().unwrap().len() as u64));
    let median_ns = profile["whole_model"]["median_ns"].as_f64().unwrap();
    assert!((v["unsplit_median_ms"].as_f64().unwrap() * 1e6 - median_ns).abs() < 1.0, "{v}");
    let last = v["blocks"].as_u64().unwrap() - 1;
    let span = format!("0-{last}");
    let ranges =
        document("scission-cloud", &[&["bench", model, "--out", out, "--add-ranges", &span][..], &quick].concat(), "scission-bench-ranges");
    let timed = ranges["timed"].as_array().unwrap();
    assert_eq!(timed.len(), 1, "{ranges}");
    assert_eq!((timed[0]["first_block"].as_u64(), timed[0]["last_block"].as_u64()), (Some(0), Some(last)));
    assert!(timed[0]["median_ms"].as_f64().unwrap() > 0.0);
    let profile: Value = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
    assert_eq!(ranges["measured_ranges"].as_u64(), Some(profile["ranges"].as_array().unwrap().len() as u64));
}

#[test]
fn run_json_prints_the_report_alone_on_stdout() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let out = c.device(&c.cluster(), edge.addr, cloud.addr, "0,0", &["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!((v["format"].as_str(), v["version"].as_u64()), (Some("scission-run-report"), Some(1)));
    assert_eq!((v["ok"].as_u64(), v["failed"].as_u64()), (Some(4), Some(0)), "{v}");
    assert_eq!(v["largest_difference"].as_f64(), Some(0.0), "f32 on the cloud is bit-exact");
    assert_eq!(v["requests"].as_array().unwrap().len(), 4);
    assert_eq!(v["last_outputs_sha256"].as_str().map(str::len), Some(64));
    // The text went to stderr.
    assert!(stderr(&out).contains("requests: 4 ok, 0 failed"), "{}", stderr(&out));
}
