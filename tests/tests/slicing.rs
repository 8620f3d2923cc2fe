//! Exact slicing: running a model as a chain of slices gives the unsplit model's output, for
//! every cut point and for random three-way splits.

mod common;

use common::relative_diff;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use scission_engine::tract::prelude::*;
use scission_engine::{LoadOptions, Model, Pipeline, input::synthetic_inputs};
use scission_zoo::onnx::builder::encode;
use scission_zoo::onnx::testmodels::TestModel;

fn load(kind: TestModel, resolution: usize) -> Model {
    let bytes = encode(&kind.build(resolution, 3));
    Model::load_bytes(kind.name(), &bytes, &LoadOptions::default()).expect("test model loads")
}

fn check_split(model: &Model, cuts: &[usize], inputs: &TVec<TValue>, reference: &TVec<TValue>) {
    let out = Pipeline::build(model, cuts).unwrap().run(model, inputs.clone()).unwrap();
    let d = relative_diff(&out, reference);
    assert!(d <= 1e-5, "{}: split {cuts:?} differs by {d:e}", model.name);
}

/// Every position crossed by at least one tensor, as a cut.
fn every_cut(model: &Model) -> Vec<usize> {
    model.cuts.cut_points(usize::MAX)
}

#[test]
fn every_two_way_split_matches_the_unsplit_model() {
    for kind in TestModel::ALL {
        let model = load(kind, 32);
        let inputs = synthetic_inputs(&model, 11).unwrap();
        let reference = model.whole().unwrap().run(inputs.clone()).unwrap();
        assert!(reference[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().all(|v| v.is_finite()));
        let n = model.summary.len();
        let points = every_cut(&model);
        assert_eq!(points.len(), n + 1, "{}: every position of these models is crossed by something", kind.name());
        for &k in &points[1..points.len() - 1] {
            check_split(&model, &[0, k, n], &inputs, &reference);
        }
        // The whole model as a single slice, and as one slice per node.
        check_split(&model, &[0, n], &inputs, &reference);
        check_split(&model, &points, &inputs, &reference);
    }
}

#[test]
fn random_three_way_splits_match_the_unsplit_model() {
    let model = load(TestModel::Branched, 32);
    let inputs = synthetic_inputs(&model, 5).unwrap();
    let reference = model.whole().unwrap().run(inputs.clone()).unwrap();
    let n = model.summary.len();
    let points = every_cut(&model);
    let inner = points.len() - 2;
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config { cases: 40, ..Config::default() }, rng);
    runner
        .run(&(1..=inner, 1..=inner).prop_filter("distinct", |(a, b)| a != b), |(a, b)| {
            let (a, b) = (points[a.min(b)], points[a.max(b)]);
            check_split(&model, &[0, a, b, n], &inputs, &reference);
            Ok(())
        })
        .unwrap();
}

#[test]
fn branched_model_has_more_cuts_than_the_original_rule_and_fan_out_cuts_are_valid() {
    let model = load(TestModel::Branched, 32);
    let (s, cuts) = (&model.summary, &model.cuts);
    let ours = cuts.cut_points(1);
    let legacy = cuts.legacy_cut_points(s);
    assert!(ours.len() > legacy.len(), "ours {ours:?} vs legacy {legacy:?}");
    assert!(legacy.iter().all(|k| ours.contains(k)), "the default rule is a superset of the original's");
    // A position right after a layer whose output fans out to several consumers.
    let fan_out = ours
        .iter()
        .copied()
        .find(|&k| match cuts.crossing(k) {
            [t] => s.tensors[*t].producer == k.checked_sub(1) && s.tensors[*t].consumers.len() > 1,
            _ => false,
        })
        .expect("the branched model has a fan-out cut");
    assert!(!legacy.contains(&fan_out));
    let inputs = synthetic_inputs(&model, 9).unwrap();
    let reference = model.whole().unwrap().run(inputs.clone()).unwrap();
    check_split(&model, &[0, fan_out, s.len()], &inputs, &reference);
    // Allowing two crossing tensors opens cuts inside the residual and Inception blocks.
    assert!(cuts.cut_points(2).len() > ours.len());
}

#[test]
fn a_symbolic_batch_is_pinned_to_one_and_other_symbolic_dimensions_need_an_input_shape() {
    let with_symbolic = |axis: usize| {
        let mut proto = TestModel::Chain.build(32, 1);
        let graph = proto.graph.as_mut().unwrap();
        let dim = &mut graph.input[0].r#type.as_mut().unwrap().value;
        if let Some(scission_engine::tract::pb::type_proto::Value::TensorType(t)) = dim {
            t.shape.as_mut().unwrap().dim[axis].value =
                Some(scission_engine::tract::pb::tensor_shape_proto::dimension::Value::DimParam("S".into()));
        }
        for out in &mut graph.output {
            out.r#type = None;
        }
        encode(&proto)
    };
    // A symbolic batch (torch's dynamic_axes, tf2onnx's unknown batch) loads as a batch of 1,
    // and the model can run batches.
    let model = Model::load_bytes("dyn", &with_symbolic(0), &LoadOptions::default()).unwrap();
    assert_eq!(model.input_shapes(), vec![vec![1, 3, 32, 32]]);
    assert!(model.batchable());
    // A symbolic height still needs a concrete shape from the user.
    let err = Model::load_bytes("dyn", &with_symbolic(2), &LoadOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("--input-shape"), "{err:#}");
    let given = LoadOptions { input_shapes: vec![vec![1, 3, 32, 32]] };
    assert_eq!(Model::load_bytes("dyn", &with_symbolic(2), &given).unwrap().input_shapes(), vec![vec![1, 3, 32, 32]]);
    // A batch pinned by the user above 1 is what the model runs, and it does not batch further.
    let pinned = Model::load_bytes("dyn", &with_symbolic(0), &LoadOptions { input_shapes: vec![vec![2, 3, 32, 32]] }).unwrap();
    assert_eq!(pinned.input_shapes(), vec![vec![2, 3, 32, 32]]);
    assert!(!pinned.batchable());
    let wrong = Model::load_bytes("dyn", &with_symbolic(0), &LoadOptions { input_shapes: vec![vec![2, 3, 32, 32], vec![1]] });
    assert!(wrong.is_err());
}
