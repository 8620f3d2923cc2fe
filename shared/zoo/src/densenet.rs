//! DenseNet121/169/201, as `keras.applications.densenet`: growth rate 32, compression 0.5,
//! BN-ReLU-Conv ordering, dense connectivity by concatenation.

use super::{classifier, conv_bn_relu};
use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

fn bn_relu(g: &mut GraphBuilder, x: &Value) -> Value {
    let b = g.batch_norm(x);
    g.relu(&b)
}

fn conv_block(g: &mut GraphBuilder, x: &Value) -> Value {
    let y = bn_relu(g, x);
    let y = conv_bn_relu(g, &y, ConvSpec::new(4 * 32, 1));
    let y = g.conv(&y, ConvSpec::new(32, 3));
    g.concat(&[x, &y])
}

fn transition(g: &mut GraphBuilder, x: &Value) -> Value {
    let y = bn_relu(g, x);
    let y = g.conv(&y, ConvSpec::new(x.channels() / 2, 1));
    g.avg_pool(&y, 2, 2, 0)
}

fn densenet(g: &mut GraphBuilder, x: &Value, blocks: [usize; 4]) -> Value {
    let x = conv_bn_relu(g, x, ConvSpec::new(64, 7).stride(2).pad(3));
    let mut x = g.max_pool(&x, 3, 2, 1);
    for (i, &n) in blocks.iter().enumerate() {
        for _ in 0..n {
            x = conv_block(g, &x);
        }
        if i < 3 {
            x = transition(g, &x);
        }
    }
    let x = bn_relu(g, &x);
    classifier(g, &x)
}

pub fn densenet121(g: &mut GraphBuilder, x: &Value) -> Value {
    densenet(g, x, [6, 12, 24, 16])
}
pub fn densenet169(g: &mut GraphBuilder, x: &Value) -> Value {
    densenet(g, x, [6, 12, 32, 32])
}
pub fn densenet201(g: &mut GraphBuilder, x: &Value) -> Value {
    densenet(g, x, [6, 12, 48, 32])
}
