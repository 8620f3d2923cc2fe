//! Dynamic batching gives each request what it gets alone: a slice run on a stack of requests
//! is compared with the same range run one request at a time by the batch-1 slices (the path
//! every other test checks against the unsplit model), within float rounding (1e-5 of the
//! largest output; measured up to 1.1e-7: a larger batch may reorder a sum).

mod common;

use common::relative_diff;
use scission_core::cut::Block;
use scission_engine::batch::BatchedSlice;
use scission_engine::pipeline::{Activations, collect, graph_inputs, run_slice};
use scission_engine::tract::prelude::*;
use scission_engine::{LoadOptions, Model, Slice, input::synthetic_inputs};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

/// The tensors crossing `start` for the request whose graph inputs come from `seed`.
fn live_at(model: &Model, start: usize, seed: u64) -> Activations {
    let live = graph_inputs(model, synthetic_inputs(model, seed).unwrap()).unwrap();
    if start == 0 {
        return live;
    }
    run_slice(model, &Slice::build(model, Block { start: 0, end: start }).unwrap(), live).unwrap()
}

/// Runs `block` for `requests` requests as one batch and one by one; each request's outputs
/// must be the same bits both ways.
fn check_batch(model: &Model, block: Block, requests: u64) {
    let batched = BatchedSlice::build(model, block, requests as usize).unwrap_or_else(|e| panic!("{}: {e:#}", model.name));
    let single = Slice::build(model, block).unwrap();
    let inputs: Vec<TVec<TValue>> = (0..requests)
        .map(|seed| collect(&live_at(model, block.start, 100 + seed), &single.io.inputs, "slice input", model).unwrap())
        .collect();
    let answers = batched.run(&inputs).unwrap();
    assert_eq!(answers.len(), inputs.len());
    for (r, (input, answer)) in inputs.into_iter().zip(&answers).enumerate() {
        let alone = single.run(input).unwrap();
        let d = relative_diff(answer, &alone);
        assert!(d <= 1e-5, "{} [{}, {}): request {r} of {requests} differs in a batch by {d:e}", model.name, block.start, block.end);
    }
}

/// The whole model, the first and last thirds, and a range in the middle.
fn ranges(model: &Model) -> Vec<Block> {
    let points = model.cuts.cut_points(1);
    let n = model.summary.len();
    let at = |f: usize| points[(points.len() - 1) * f / 6];
    let mut ranges = vec![
        Block { start: 0, end: n },
        Block { start: 0, end: at(2) },
        Block { start: at(2), end: at(4) },
        Block { start: at(4), end: n },
    ];
    ranges.retain(|b| b.start < b.end);
    ranges
}

#[test]
fn batched_slices_of_the_test_models_answer_each_request_as_it_would_run_alone() {
    for kind in TestModel::ALL {
        let model = Model::load_bytes(kind.name(), &encode(&kind.build(32, 3)), &LoadOptions::default()).unwrap();
        assert!(model.batchable(), "{}: the writer's batch is symbolic", kind.name());
        for block in ranges(&model) {
            for requests in [2, 3, 8] {
                check_batch(&model, block, requests);
            }
        }
    }
}

#[test]
fn batched_slices_of_zoo_models_answer_each_request_as_it_would_run_alone() {
    for name in ["mobilenet_v2", "resnet50", "densenet121"] {
        let model = Model::load_path(&scission_zoo::cached(name, 1).unwrap(), &LoadOptions::default()).unwrap();
        for block in ranges(&model) {
            check_batch(&model, block, 4);
        }
    }
}

#[test]
fn a_model_with_a_fixed_batch_cannot_batch_and_says_why() {
    let mut proto = TestModel::Chain.build(32, 3);
    let graph = proto.graph.as_mut().unwrap();
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        if let Some(scission_engine::tract::pb::type_proto::Value::TensorType(t)) = value.r#type.as_mut().unwrap().value.as_mut() {
            t.shape.as_mut().unwrap().dim[0].value = Some(scission_engine::tract::pb::tensor_shape_proto::dimension::Value::DimValue(1));
        }
    }
    let model = Model::load_bytes("fixed", &encode(&proto), &LoadOptions::default()).unwrap();
    assert!(!model.batchable());
    let err = BatchedSlice::build(&model, Block { start: 0, end: model.summary.len() }, 2).unwrap_err();
    assert!(format!("{err:#}").contains("fixed batch"), "{err:#}");
}

#[test]
fn a_batch_refuses_requests_of_the_wrong_shape_instead_of_mixing_them() {
    let kind = TestModel::Branched;
    let model = Model::load_bytes(kind.name(), &encode(&kind.build(32, 3)), &LoadOptions::default()).unwrap();
    let block = Block { start: 0, end: model.summary.len() };
    let batched = BatchedSlice::build(&model, block, 2).unwrap();
    let good = synthetic_inputs(&model, 1).unwrap();
    let wrong: TVec<TValue> = tvec![Tensor::zero::<f32>(&[1, 3, 16, 16]).unwrap().into_tvalue()];
    let err = batched.run(&[good.clone(), wrong]).unwrap_err();
    assert!(format!("{err:#}").contains("shape"), "{err:#}");
    let err = batched.run(&[good.clone(), tvec![]]).unwrap_err();
    assert!(format!("{err:#}").contains("inputs"), "{err:#}");
    let err = batched.run(&[good.clone(), good.clone(), good]).unwrap_err();
    assert!(format!("{err:#}").contains("built for 2"), "{err:#}");
    assert!(BatchedSlice::build(&model, block, 1).is_err());
}

/// torch's export of `x.view(x.size(0), -1)` reads the batch from the shape at run time (a
/// `Shape`, `Gather`, `Unsqueeze`, `Concat`, `Reshape` chain): it loads with the batch pinned,
/// splits exactly, and batches (tract folds the chain into batch-agnostic axis ops).
#[test]
fn a_torch_style_dynamic_flatten_loads_splits_and_batches() {
    use scission_zoo::onnx::builder::{ConvSpec, GraphBuilder};
    let (mut g, x) = GraphBuilder::new("torch-flatten", &[1, 3, 16, 16], 5);
    let c = g.conv(&x, ConvSpec::new(8, 3).pad(1).bias());
    let r = g.relu(&c);
    let p = g.global_avg_pool(&r);
    let f = g.flatten_dynamic(&p);
    let d = g.dense(&f, 10);
    let y = g.softmax(&d);
    let model = Model::load_bytes("torch-flatten", &encode(&g.finish(&[&y])), &LoadOptions::default()).unwrap();
    assert!(model.batchable(), "the export's batch is symbolic");
    let n = model.summary.len();
    let inputs = synthetic_inputs(&model, 3).unwrap();
    let reference = model.whole().unwrap().run(inputs.clone()).unwrap();
    for k in model.cuts.cut_points(usize::MAX).into_iter().filter(|&k| k > 0 && k < n) {
        let split = scission_engine::Pipeline::build(&model, &[0, k, n]).unwrap().run(&model, inputs.clone()).unwrap();
        assert!(relative_diff(&split, &reference) <= 1e-6, "split at {k}");
    }
    for block in ranges(&model) {
        check_batch(&model, block, 2);
        check_batch(&model, block, 4);
    }
}

/// A reshape that folds the batch into another axis (a fixed `view(8, -1)` of a batch-1
/// tensor) cannot take a batch: a range holding it is refused with the reason, never run with
/// requests mixed, while the range before it still batches.
#[test]
fn a_range_whose_reshape_folds_the_batch_away_refuses_to_batch() {
    use scission_zoo::onnx::builder::{ConvSpec, GraphBuilder};
    let (mut g, x) = GraphBuilder::new("folded-batch", &[1, 3, 8, 8], 5);
    let c = g.conv(&x, ConvSpec::new(4, 3).pad(1).bias());
    let r = g.relu(&c);
    let folded = g.reshape(&r, &[4, -1]);
    let y = g.softmax(&folded);
    let model = Model::load_bytes("folded-batch", &encode(&g.finish(&[&y])), &LoadOptions::default()).unwrap();
    let n = model.summary.len();
    let err = BatchedSlice::build(&model, Block { start: 0, end: n }, 2).unwrap_err();
    assert!(format!("{err:#}").contains("cannot run batches of 2"), "{err:#}");
    // The last cut whose tensors still have the conv's NCHW shape (batch leading) batches.
    let nchw = model
        .cuts
        .cut_points(usize::MAX)
        .into_iter()
        .rev()
        .find(|&k| k > 0 && k < n && model.cuts.crossing(k).iter().all(|&t| model.summary.tensors[t].shape == [1, 4, 8, 8]))
        .expect("a cut after the conv");
    check_batch(&model, Block { start: 0, end: nchw }, 2);
    let after = BatchedSlice::build(&model, Block { start: nchw, end: n }, 2).unwrap_err();
    assert!(format!("{after:#}").contains("cannot run batches"), "{after:#}");
}
