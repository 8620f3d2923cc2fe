//! The zoo's architectures match Keras Applications: parameter counts equal the published
//! figures, tract loads every model, and a forward pass gives finite [1, 1000] outputs.

use scission_engine::{LoadOptions, Model, input::synthetic_inputs};
use scission_zoo::onnx::builder::encode;
use scission_zoo::{MODELS, ZooModel, find};

#[test]
fn parameter_counts_equal_keras() {
    let mut wrong = Vec::new();
    for m in &MODELS {
        let (_, params) = m.build(1);
        if params != m.keras_params {
            wrong.push(format!("{}: {params} (Keras {}, diff {})", m.name, m.keras_params, params as i64 - m.keras_params as i64));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn forward(m: &ZooModel) {
    let (proto, _) = m.build(7);
    let bytes = encode(&proto);
    let model = Model::load_bytes(m.name, &bytes, &LoadOptions::default()).unwrap();
    let inputs = synthetic_inputs(&model, 1).unwrap();
    let out = model.whole().unwrap().run(inputs).unwrap();
    assert_eq!(out[0].shape(), &[1, 1000], "{}", m.name);
    let probs = out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
    assert!(probs.iter().all(|p| p.is_finite()), "{}: non-finite output", m.name);
    let sum: f32 = probs.iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "{}: softmax sums to {sum}", m.name);
}

/// One model per family runs in CI; the rest with `cargo test -- --ignored`.
#[test]
fn one_model_per_family_runs() {
    for name in ["vgg16", "resnet50", "resnet50v2", "inception_v3", "xception", "mobilenet_v2", "densenet121", "nasnet_mobile"] {
        forward(find(name).unwrap());
    }
}

#[test]
#[ignore = "slow: the other ten models"]
fn every_other_model_runs() {
    let ci = ["vgg16", "resnet50", "resnet50v2", "inception_v3", "xception", "mobilenet_v2", "densenet121", "nasnet_mobile"];
    for m in MODELS.iter().filter(|m| !ci.contains(&m.name)) {
        forward(m);
    }
}
