//! Slice artifacts: written once, loaded alone (no ONNX), they compute bit for bit what the
//! unsplit model computes; the same model and range always give the same file; a damaged,
//! altered or foreign artifact is refused with a clear error, never run.

mod common;

use std::path::{Path, PathBuf};

use common::cluster::Cluster;
use common::{run, stderr};

use scission_core::cut::Block;
use scission_engine::artifact::{self, ArtifactDir};
use scission_engine::pipeline::{graph_inputs, run_slice};
use scission_engine::tract::prelude::*;
use scission_engine::{LoadOptions, Model, ModelGraph, Slice, input::synthetic_inputs};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

fn load(kind: TestModel) -> Model {
    Model::load_bytes(kind.name(), &encode(&kind.build(32, 3)), &LoadOptions::default()).unwrap()
}

/// Writes the artifacts of the consecutive ranges between `cuts` into `dir`.
fn write_chain(model: &Model, cuts: &[usize], dir: &Path) -> Vec<PathBuf> {
    cuts.windows(2)
        .map(|w| {
            let block = Block { start: w[0], end: w[1] };
            let path = dir.join(artifact::file_name(block));
            artifact::write_file(model, block, &path).unwrap();
            path
        })
        .collect()
}

/// Runs the chain of loaded slices as separate machines would and returns the graph outputs.
fn run_chain(graph: &ModelGraph, slices: &[Slice], inputs: TVec<TValue>) -> Vec<Tensor> {
    let mut live = graph_inputs(graph, inputs).unwrap();
    for slice in slices {
        live = run_slice(graph, slice, live).unwrap();
    }
    graph.summary.outputs.iter().map(|t| live[t].clone().into_tensor()).collect()
}

fn bits(tensors: &[Tensor]) -> Vec<Vec<u32>> {
    tensors.iter().map(|t| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()).collect()
}

fn check_chain(model: &Model, cuts: &[usize], dir: &Path) {
    let reference = model.whole().unwrap().run(synthetic_inputs(model, 4).unwrap()).unwrap();
    let reference: Vec<Tensor> = reference.into_iter().map(|v| v.into_tensor()).collect();
    let loaded: Vec<_> = write_chain(model, cuts, dir).iter().map(|p| artifact::load(p, None).unwrap()).collect();
    let graph = loaded[0].graph.clone();
    assert_eq!(graph.sha256, model.sha256);
    assert_eq!(graph.summary, model.summary);
    let slices: Vec<Slice> = loaded.into_iter().map(|l| l.slice).collect();
    let got = run_chain(&graph, &slices, synthetic_inputs(&graph, 4).unwrap());
    assert_eq!(bits(&got), bits(&reference), "{}: chain {cuts:?} of artifacts differs from the unsplit model", model.name);
}

#[test]
fn chains_of_artifacts_compute_exactly_the_unsplit_model() {
    for kind in TestModel::ALL {
        let model = load(kind);
        let n = model.summary.len();
        let points = model.cuts.cut_points(usize::MAX);
        let dir = tempfile::tempdir().unwrap();
        // Every two-way split, and the model as a single artifact.
        for &k in &points[1..points.len() - 1] {
            check_chain(&model, &[0, k, n], dir.path());
        }
        check_chain(&model, &[0, n], dir.path());
        check_chain(&model, &[0, points[1], points[points.len() / 2], n], dir.path());
    }
}

/// torch's export of a dynamic-batch `x.view(x.size(0), -1)` (a `Shape`, `Gather`, `Unsqueeze`,
/// `Concat`, `Reshape` chain, folded once the batch is pinned): every split runs from artifacts
/// exactly as the unsplit model.
#[test]
fn a_torch_style_dynamic_flatten_runs_from_artifacts_bit_exactly() {
    use scission_zoo::onnx::builder::{ConvSpec, GraphBuilder};
    let (mut g, x) = GraphBuilder::new("torch-flatten", &[1, 3, 16, 16], 5);
    let c = g.conv(&x, ConvSpec::new(8, 3).pad(1).bias());
    let r = g.relu(&c);
    let p = g.max_pool(&r, 2, 2, 0);
    let f = g.flatten_dynamic(&p);
    let d = g.dense(&f, 10);
    let y = g.softmax(&d);
    let model = Model::load_bytes("torch-flatten", &encode(&g.finish(&[&y])), &LoadOptions::default()).unwrap();
    let n = model.summary.len();
    let dir = tempfile::tempdir().unwrap();
    for k in model.cuts.cut_points(usize::MAX).into_iter().filter(|&k| k > 0 && k < n) {
        check_chain(&model, &[0, k, n], dir.path());
    }
    check_chain(&model, &[0, n], dir.path());
}

#[test]
fn zoo_exports_run_from_artifacts_bit_exactly() {
    // Depthwise convs, ReLU6 as Clip, padding as Pad (MobileNetV2); concatenations (DenseNet121);
    // stride-2 shortcut convolutions, which tract cannot declutter again after NNEF (ResNet50).
    for name in ["mobilenet_v2", "densenet121", "resnet50"] {
        let path = scission_zoo::cached(name, 1).unwrap();
        let model = Model::load_path(&path, &LoadOptions::default()).unwrap();
        let points = model.cuts.cut_points(1);
        let n = model.summary.len();
        let dir = tempfile::tempdir().unwrap();
        check_chain(&model, &[0, points[points.len() / 3], points[2 * points.len() / 3], n], dir.path());
    }
}

#[test]
fn the_same_model_and_range_always_give_the_same_bytes() {
    let model = load(TestModel::Branched);
    let block = Block { start: 3, end: model.summary.len() - 2 };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let first = artifact::write(&model, block, &mut a).unwrap();
    let second = artifact::write(&model, block, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(first, second);
    assert_eq!(first.bytes, a.len() as u64);
    let manifest = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.slice");
        std::fs::write(&path, &a).unwrap();
        assert_eq!(artifact::file_sha256(&path).unwrap(), first.sha256);
        artifact::read_manifest(&path).unwrap()
    };
    assert_eq!(manifest.block(), block);
    assert_eq!(manifest.model_sha256, model.sha256);
    assert_eq!(manifest.weight_bytes, model.summary.weight_bytes(block.start, block.end));
    assert!(!manifest.inputs.is_empty() && !manifest.outputs.is_empty());
}

/// The entries of an artifact: (name, bytes).
fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn pack(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.slice");
    std::fs::write(&path, bytes).unwrap();
    format!("{:#}", artifact::load(&path, None).unwrap_err())
}

#[test]
fn damaged_altered_or_foreign_artifacts_are_refused() {
    let model = load(TestModel::Chain);
    let block = Block { start: 2, end: 6 };
    let mut good = Vec::new();
    let written = artifact::write(&model, block, &mut good).unwrap();
    let parts = entries(&good);

    // One weight byte changed inside the NNEF archive.
    let mut tampered = parts.clone();
    let last = tampered[1].1.len() - 1024 - 100;
    tampered[1].1[last] ^= 0x40;
    assert!(load_err(&pack(&tampered)).contains("SHA-256"), "{}", load_err(&pack(&tampered)));

    // The manifest claims another range than its graph computes.
    let mut manifest: artifact::Manifest = serde_json::from_slice(&parts[0].1).unwrap();
    manifest.end += 1;
    let altered = vec![(parts[0].0.clone(), serde_json::to_vec(&manifest).unwrap()), parts[1].clone()];
    assert!(load_err(&pack(&altered)).contains("inputs and outputs"), "{}", load_err(&pack(&altered)));

    // A summary that indexes outside itself.
    let mut manifest: artifact::Manifest = serde_json::from_slice(&parts[0].1).unwrap();
    manifest.summary.tensors[1].producer = Some(usize::MAX);
    let hostile = vec![(parts[0].0.clone(), serde_json::to_vec(&manifest).unwrap()), parts[1].clone()];
    assert!(load_err(&pack(&hostile)).contains("outside the graph"), "{}", load_err(&pack(&hostile)));

    // Another format version, entries swapped, truncated, not a tar at all, empty.
    let mut manifest: artifact::Manifest = serde_json::from_slice(&parts[0].1).unwrap();
    manifest.version = 99;
    let future = vec![(parts[0].0.clone(), serde_json::to_vec(&manifest).unwrap()), parts[1].clone()];
    assert!(load_err(&pack(&future)).contains("version 99"));
    let swapped = vec![parts[1].clone(), parts[0].clone()];
    assert!(load_err(&pack(&swapped)).contains("not scission-slice.json"));
    for cut in [good.len() / 2, 600, 10] {
        let message = load_err(&good[..cut]);
        assert!(message.contains("not a usable slice artifact"), "truncated at {cut}: {message}");
    }
    assert!(load_err(b"definitely not a tar archive, just text").contains("not a usable slice artifact"));
    assert!(load_err(b"").contains("not a usable slice artifact"));

    // A pinned whole-file hash that does not match.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(artifact::file_name(block));
    std::fs::write(&path, &good).unwrap();
    assert!(artifact::load(&path, Some(&written.sha256)).is_ok());
    let wrong = "0".repeat(64);
    assert!(format!("{:#}", artifact::load(&path, Some(&wrong)).unwrap_err()).contains("is not the expected"));

    // A directory mixing two models, or pinned to another model.
    let other = load(TestModel::Branched);
    artifact::write_file(&other, Block { start: 0, end: 3 }, &dir.path().join("0-3.slice")).unwrap();
    assert!(format!("{:#}", ArtifactDir::open(dir.path(), None).unwrap_err()).contains("another model"));
    std::fs::remove_file(dir.path().join("0-3.slice")).unwrap();
    assert!(format!("{:#}", ArtifactDir::open(dir.path(), Some(&other.sha256)).unwrap_err()).contains("another model"));
    let held = ArtifactDir::open(dir.path(), Some(&model.sha256)).unwrap();
    assert_eq!(held.blocks(), vec![block]);
    assert!(held.load(Block { start: 0, end: 2 }).is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(format!("{:#}", ArtifactDir::open(empty.path(), None).unwrap_err()).contains("holds no slice artifact"));
}

/// The last line starting with `prefix` in a run's output.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().rev().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no '{prefix}' line in {text}"))
}

#[test]
fn a_device_starting_with_no_slice_offloads_to_the_cloud_fetches_its_slice_and_switches() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let model = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let n = model.summary.len();
    let k = model.cuts.cut_points(1)[model.cuts.cut_points(1).len() / 2];
    let split = format!("{k},{k}");
    // The reference: the whole model on the device, each result checked against the unsplit model.
    let args = c.run_args(&c.cluster(), edge.addr, cloud.addr, &["--split", &split, "--requests", "6"]);
    let checked = run("scission-device", &args);
    let checked_text = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(line(&checked_text, "requests:").contains("6 ok, 0 failed; largest difference from the unsplit model 0e0"), "{checked_text}");
    // The same requests from an empty directory of slice artifacts.
    let slices = c.dir.path().join("slices");
    std::fs::create_dir(&slices).unwrap();
    let mut args =
        c.run_args(&c.cluster(), edge.addr, cloud.addr, &["--split", &split, "--requests", "6", "--no-check", "--interval-ms", "100"]);
    args[1] = slices.to_string_lossy().into_owned();
    let out = run("scission-device", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(line(&text, "requests:").starts_with("requests: 6 ok, 0 failed"), "{text}");
    assert_eq!(line(&text, "last request's outputs:"), line(&checked_text, "last request's outputs:"), "bit-equal results");
    // First the cloud alone, then the planned split once the slice arrived.
    assert!(text.contains(&format!("plan #1: tier 2 [0, {n})")), "{text}");
    assert!(text.contains(&format!("now tier 0 [0, {k}) -> tier 2 [{k}, {n})")), "{text}");
    let held = ArtifactDir::open(&slices, Some(&model.sha256)).unwrap();
    assert_eq!(held.blocks(), vec![Block { start: 0, end: 1 }, Block { start: 0, end: k }]);
    // The device fetched its slice, not the model.
    let fetched: u64 = held.blocks().iter().map(|b| std::fs::metadata(slices.join(artifact::file_name(*b))).unwrap().len()).sum();
    assert!(fetched < std::fs::metadata(&c.model).unwrap().len(), "fetched {fetched} bytes");
}

#[test]
fn the_artifact_directory_stays_within_its_budget_keeping_what_the_plans_need() {
    let model = load(TestModel::Chain);
    let dir = tempfile::tempdir().unwrap();
    let blocks = [Block { start: 0, end: 1 }, Block { start: 0, end: 4 }, Block { start: 0, end: 6 }, Block { start: 0, end: 8 }];
    for block in blocks {
        artifact::write_file(&model, block, &dir.path().join(artifact::file_name(block))).unwrap();
    }
    let held = ArtifactDir::open(dir.path(), None).unwrap();
    // [0, 4) was used last: it is the last to go.
    std::thread::sleep(std::time::Duration::from_millis(20));
    held.load(Block { start: 0, end: 4 }).unwrap();
    let keep = [Block { start: 0, end: 8 }];
    assert!(held.evict_to(u64::MAX, &keep).is_empty());
    let size = |b: Block| std::fs::metadata(dir.path().join(artifact::file_name(b))).unwrap().len();
    let budget = size(blocks[0]) + size(blocks[1]) + size(blocks[3]);
    assert_eq!(held.evict_to(budget, &keep), vec![Block { start: 0, end: 6 }]);
    assert_eq!(held.blocks(), vec![blocks[0], blocks[1], blocks[3]]);
    // Nothing below the kept slices and the model's descriptor.
    assert_eq!(held.evict_to(0, &keep), vec![Block { start: 0, end: 4 }]);
    assert_eq!(held.blocks(), vec![blocks[0], blocks[3]]);
    assert!(!dir.path().join(artifact::file_name(blocks[1])).exists());
    assert!(held.load(blocks[3]).is_ok());
}

#[test]
fn plans_whose_device_slice_would_not_fit_the_device_memory_are_not_used() {
    let c = Cluster::new();
    let (cloud, edge) = c.servers();
    let model = Model::load_path(&c.model, &LoadOptions::default()).unwrap();
    let k = model.cuts.cut_points(1)[model.cuts.cut_points(1).len() / 2];
    let n = model.summary.len();
    let split = format!("{k},{k}");
    // Every slice counts at least the 40 MiB runtime overhead: 10 MiB fits none.
    let args = c.run_args(&c.cluster(), edge.addr, cloud.addr, &["--split", &split, "--requests", "2", "--memory-mib", "10"]);
    let out = run("scission-device", &args);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("no planned route fits the device's memory") && message.contains("has 10.0 MiB"), "{message}");
    // From slice artifacts, the device offloads to the cloud and fetches nothing it cannot hold.
    let slices = c.dir.path().join("slices");
    std::fs::create_dir(&slices).unwrap();
    let mut args =
        c.run_args(&c.cluster(), edge.addr, cloud.addr, &["--split", &split, "--requests", "3", "--no-check", "--memory-mib", "10"]);
    args[1] = slices.to_string_lossy().into_owned();
    let out = run("scission-device", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(line(&text, "requests:").starts_with("requests: 3 ok, 0 failed"), "{text}");
    assert!(text.contains(&format!("plan #1: tier 2 [0, {n})")) && !text.contains("now tier 0"), "{text}");
    assert_eq!(ArtifactDir::open(&slices, None).unwrap().blocks(), vec![Block { start: 0, end: 1 }]);
    // With memory enough, the same run uses the split.
    let args = c.run_args(&c.cluster(), edge.addr, cloud.addr, &["--split", &split, "--requests", "2", "--memory-mib", "200"]);
    let out = run("scission-device", &args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_model_loaded_from_its_file_is_named_by_the_hash_of_its_bytes() {
    let bytes = encode(&TestModel::Chain.build(32, 3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let from_file = Model::load_path(&path, &LoadOptions::default()).unwrap();
    let from_bytes = Model::load_bytes("chain.onnx", &bytes, &LoadOptions::default()).unwrap();
    assert_eq!(from_file.sha256, from_bytes.sha256);
    assert_eq!(from_file.summary, from_bytes.summary);
    // The hash runs beside the parse: a missing file is still reported as missing.
    let missing = dir.path().join("absent.onnx");
    let error = format!("{:#}", Model::load_path(&missing, &LoadOptions::default()).unwrap_err());
    assert!(error.contains("absent.onnx"), "{error}");
}
