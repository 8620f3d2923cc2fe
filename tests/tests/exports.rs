//! Real exports: models written by torch.onnx (its TorchScript and dynamo exporters) and by
//! tf2onnx from Keras, shipped in `tests/fixtures/exports` with an input and onnxruntime's output
//! for it (made by that directory's `make.py`). Each loads, computes what onnxruntime computed,
//! and split anywhere (slices in one process, slice artifacts, tiers as separate processes over
//! QUIC) computes the unsplit model's output bit for bit, except where a cut separates a
//! transpose from the matrix product tract folds it into (then to the last bits).

mod common;

use std::path::{Path, PathBuf};

use common::cluster::{Cluster, start};
use common::{run, stderr};
use scission_core::cut::Block;
use scission_engine::artifact;
use scission_engine::pipeline::{graph_inputs, run_slice};
use scission_engine::tract::prelude::*;
use scission_engine::{LoadOptions, Model, Pipeline};

/// One export as `exports.json` lists it.
struct Export {
    name: String,
    file: PathBuf,
    input: (PathBuf, Vec<usize>),
    output: (PathBuf, Vec<usize>),
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/exports")
}

fn exports() -> Vec<Export> {
    let dir = fixtures();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("exports.json")).unwrap()).unwrap();
    let tensor = |t: &serde_json::Value| {
        let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        (dir.join(t["file"].as_str().unwrap()), shape)
    };
    let exports: Vec<Export> = manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Export {
            name: m["name"].as_str().unwrap().to_string(),
            file: dir.join(m["file"].as_str().unwrap()),
            input: tensor(&m["input"]),
            output: tensor(&m["output"]),
        })
        .collect();
    assert!(exports.len() >= 5, "the fixtures list their exports");
    exports
}

/// A raw little-endian f32 file as a tensor of `shape`.
fn read_tensor((path, shape): &(PathBuf, Vec<usize>)) -> Tensor {
    let bytes = std::fs::read(path).unwrap();
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(values.len(), shape.iter().product::<usize>(), "{}", path.display());
    Tensor::from_shape(shape, &values).unwrap()
}

fn load(export: &Export) -> Model {
    Model::load_path(&export.file, &LoadOptions::default()).unwrap_or_else(|e| panic!("{} loads: {e:#}", export.name))
}

/// An export loaded, its input, the unsplit model's output for it, its node count and its cut
/// points.
struct Reference {
    model: Model,
    inputs: TVec<TValue>,
    reference: TVec<TValue>,
    n: usize,
    points: Vec<usize>,
}

fn reference(export: &Export) -> Reference {
    let model = load(export);
    let inputs: TVec<TValue> = tvec![read_tensor(&export.input).into()];
    let reference = model.whole().unwrap().run(inputs.clone()).unwrap();
    let (n, points) = (model.summary.len(), model.cuts.cut_points(usize::MAX));
    Reference { model, inputs, reference, n, points }
}

fn bits(values: &[TValue]) -> Vec<Vec<u32>> {
    values.iter().map(|v| v.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn every_export_computes_what_onnxruntime_computes() {
    for export in exports() {
        let model = load(&export);
        let got = model.whole().unwrap().run(tvec![read_tensor(&export.input).into()]).unwrap();
        let want = read_tensor(&export.output);
        let got = got[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        let want = want.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{}", export.name);
        // Kernels add in different orders: equal to a few units in the last place of the
        // largest output.
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "{}: tract differs from onnxruntime by {worst:e}: {got:?} against {want:?}", export.name);
    }
}

/// Cuts that separate a transpose from the matrix product after it (torch's channel shuffle
/// before a 1x1 convolution, tf2onnx's NHWC flatten before a dense layer). In one slice, tract
/// folds the transpose into the product's weights, which sums over the channels in another
/// order; split there, it cannot. So these splits differ from the unsplit model in the last bits.
const TRANSPOSE_FOLDING_CUTS: &[(&str, &[usize])] = &[("torch_shufflenet", &[218, 219, 220]), ("keras_concat", &[21, 22, 23])];

/// Exports whose slice artifacts reload a transpose-then-product graph that tract re-declutters
/// into another product than the one it had (see [`TRANSPOSE_FOLDING_CUTS`]).
const TRANSPOSE_FOLDING_ARTIFACTS: &[&str] = &["torch_shufflenet"];

/// Largest relative difference any split may make: a few units in the last place.
const LAST_BITS: f32 = 1e-6;

#[test]
fn every_two_way_split_of_every_export_is_bit_exact_except_across_a_folded_transpose() {
    for export in exports() {
        let Reference { model, inputs, reference, n, points } = reference(&export);
        assert!(points.len() > 4, "{}: a real export has cuts ({points:?})", export.name);
        let mut inexact = Vec::new();
        for &k in &points[1..points.len() - 1] {
            let out = Pipeline::build(&model, &[0, k, n]).unwrap().run(&model, inputs.clone()).unwrap();
            if bits(&out) != bits(&reference) {
                let d = common::relative_diff(&out, &reference);
                assert!(d <= LAST_BITS, "{}: split at {k} of {n} differs by {d:e}", export.name);
                inexact.push(k);
            }
        }
        let expected = TRANSPOSE_FOLDING_CUTS.iter().find(|(name, _)| *name == export.name).map_or(&[][..], |(_, cuts)| cuts);
        assert_eq!(inexact, expected, "{}: the splits that are not bit-exact", export.name);
    }
}

#[test]
fn chains_of_slice_artifacts_of_every_export_compute_the_unsplit_model() {
    let dir = tempfile::tempdir().unwrap();
    for export in exports() {
        let Reference { model, inputs, reference, n, points } = reference(&export);
        let cuts = [0, points[points.len() / 3], points[2 * points.len() / 3], n];
        let slices: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let block = Block { start: w[0], end: w[1] };
                let path = dir.path().join(format!("{}-{}", export.name, artifact::file_name(block)));
                artifact::write_file(&model, block, &path).unwrap();
                artifact::load(&path, None).unwrap_or_else(|e| panic!("{}: artifact {block:?} loads: {e:#}", export.name))
            })
            .collect();
        let graph = slices[0].graph.clone();
        let mut live = graph_inputs(&graph, inputs).unwrap();
        for loaded in &slices {
            live = run_slice(&graph, &loaded.slice, live).unwrap();
        }
        let got: Vec<TValue> = graph.summary.outputs.iter().map(|t| live[t].clone()).collect();
        if TRANSPOSE_FOLDING_ARTIFACTS.contains(&export.name.as_str()) {
            let d = common::relative_diff(&got, &reference);
            assert!(bits(&got) != bits(&reference) && d <= LAST_BITS, "{}: artifacts of {cuts:?} differ by {d:e}", export.name);
        } else {
            assert_eq!(bits(&got), bits(&reference), "{}: artifacts of {cuts:?}", export.name);
        }
    }
}

/// Device, edge and cloud as separate processes, each running its third of a torch export and of
/// a tf2onnx export; the device checks every answer against the unsplit model.
#[test]
fn exports_run_split_over_device_edge_and_cloud() {
    let c = Cluster::new();
    let cluster = c.cluster();
    for name in ["torch_mobilenetv2", "keras_concat"] {
        let export = exports().into_iter().find(|e| e.name == name).unwrap();
        let model = load(&export);
        let points = model.cuts.cut_points(usize::MAX);
        let split = format!("{},{}", points[points.len() / 3], points[2 * points.len() / 3]);
        let file = export.file.to_str().unwrap();
        let cloud = start("scission-cloud", &["serve", file, "--cluster", &cluster, "--threads", "1"]);
        let cloud_addr = cloud.addr.to_string();
        let edge = start("scission-edge", &["serve", file, "--cluster", &cluster, "--cloud", &cloud_addr, "--threads", "1"]);
        let (edge_addr, requests) = (edge.addr.to_string(), "3");
        let args =
            ["run", file, "--cluster", &cluster, "--edge", &edge_addr, "--cloud", &cloud_addr, "--split", &split, "--requests", requests];
        let out = run("scission-device", &args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}\n{}", stderr(&out));
        assert!(text.contains("requests: 3 ok, 0 failed; largest difference from the unsplit model 0e0"), "{name}: {text}");
        assert!(text.contains("tier 1") && text.contains("tier 2"), "{name}: every tier ran its part: {text}");
    }
}

/// `bench --method profile` times the optimised unsplit model node by node and gives each node's
/// time to the block its decluttered node lies in, by name. Every computing node of every export
/// must find its block, at every cut granularity, or its time would be lost from the blocks.
#[test]
fn every_node_of_every_optimised_export_is_priced_in_a_block() {
    for export in exports() {
        let model = load(&export);
        for max_crossing in [1, usize::MAX] {
            let lost = scission_engine::bench::unattributed_nodes(&model, max_crossing).unwrap();
            assert!(lost.is_empty(), "{} (max crossing {max_crossing}): no block for {lost:?}", export.name);
        }
    }
}
