//! The project's own small test models, written from Rust with deterministic weights.
//!
//! - [`TestModel::Chain`]: a plain chain CNN (every layer feeds only the next one).
//! - [`TestModel::Branched`]: a stem, a residual block (skip + main path joined by `Add`), an
//!   Inception-like block (three branches joined by `Concat`) and a classifier head.
//! - [`unsupported_op_model`]: a graph with an operator tract does not implement.

use tract_onnx::pb;

use super::builder::{ConvSpec, GraphBuilder, Value};

/// A built-in test model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestModel {
    /// Plain chain CNN.
    Chain,
    /// Residual + Inception-like branched CNN.
    Branched,
}

impl TestModel {
    /// Every test model.
    pub const ALL: [TestModel; 2] = [TestModel::Chain, TestModel::Branched];

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            TestModel::Chain => "chain-cnn",
            TestModel::Branched => "branched-cnn",
        }
    }

    /// Looks a model up by [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Builds the model for a `resolution`×`resolution` RGB input (a multiple of 16).
    pub fn build(self, resolution: usize, seed: u64) -> pb::ModelProto {
        match self {
            TestModel::Chain => chain_cnn(resolution, seed),
            TestModel::Branched => branched_cnn(resolution, seed),
        }
    }
}

fn conv_bn_relu(g: &mut GraphBuilder, x: &Value, spec: ConvSpec) -> Value {
    let c = g.conv(x, spec);
    let b = g.batch_norm(&c);
    g.relu(&b)
}

fn classifier(g: &mut GraphBuilder, x: &Value, classes: usize) -> Value {
    let p = g.global_avg_pool(x);
    let f = g.flatten(&p);
    let d = g.dense(&f, classes);
    g.softmax(&d)
}

fn chain_cnn(resolution: usize, seed: u64) -> pb::ModelProto {
    let (mut g, x) = GraphBuilder::new("chain-cnn", &[1, 3, resolution, resolution], seed);
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(16, 3));
    let x = g.max_pool(&x, 2, 2, 0);
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(32, 3).stride(2));
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(32, 3));
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(32, 3).groups(32));
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(64, 1));
    let y = classifier(&mut g, &x, 10);
    g.finish(&[&y])
}

fn residual_block(g: &mut GraphBuilder, x: &Value) -> Value {
    let c = x.channels();
    let a = conv_bn_relu(g, x, ConvSpec::new(c, 3));
    let b = g.conv(&a, ConvSpec::new(c, 3));
    let b = g.batch_norm(&b);
    let sum = g.add(&b, x);
    g.relu(&sum)
}

fn inception_block(g: &mut GraphBuilder, x: &Value) -> Value {
    let b1 = conv_bn_relu(g, x, ConvSpec::new(16, 1));
    let b2 = conv_bn_relu(g, x, ConvSpec::new(12, 1));
    let b2 = conv_bn_relu(g, &b2, ConvSpec::new(16, 3));
    let b3 = g.max_pool(x, 3, 1, 1);
    let b3 = conv_bn_relu(g, &b3, ConvSpec::new(8, 1));
    g.concat(&[&b1, &b2, &b3])
}

fn branched_cnn(resolution: usize, seed: u64) -> pb::ModelProto {
    let (mut g, x) = GraphBuilder::new("branched-cnn", &[1, 3, resolution, resolution], seed);
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(16, 3));
    let x = g.max_pool(&x, 2, 2, 0);
    let x = residual_block(&mut g, &x);
    let x = inception_block(&mut g, &x);
    let x = residual_block(&mut g, &x);
    let x = conv_bn_relu(&mut g, &x, ConvSpec::new(64, 3).stride(2));
    let y = classifier(&mut g, &x, 10);
    g.finish(&[&y])
}

/// A chain whose middle node is `Upsample`, an operator tract-onnx does not implement (it was
/// deprecated in opset 10, yet old exporters still emit it).
pub fn unsupported_op_model() -> pb::ModelProto {
    let (mut g, x) = GraphBuilder::new("unsupported", &[1, 3, 16, 16], 1);
    let x = g.conv(&x, ConvSpec::new(4, 3));
    let up = g.custom("Upsample", &[&x], vec![1, 4, 32, 32]);
    let y = g.relu(&up);
    g.finish(&[&y])
}
