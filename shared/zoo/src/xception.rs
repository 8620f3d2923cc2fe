//! Xception, as `keras.applications.xception`: separable convs without bias, each followed by
//! a batch norm; residual 1×1 strided projections.

use super::{classifier, conv_bn_relu};
use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

fn sep_bn(g: &mut GraphBuilder, x: &Value, filters: usize) -> Value {
    let s = g.separable(x, filters, 3, 1, false);
    g.batch_norm(&s)
}

/// Entry/exit block: (ReLU) sep-BN, ReLU sep-BN, max pool, plus a strided 1×1 projection.
fn down_block(g: &mut GraphBuilder, x: &Value, f1: usize, f2: usize, relu_first: bool) -> Value {
    let r = g.conv(x, ConvSpec::new(f2, 1).stride(2));
    let residual = g.batch_norm(&r);
    let y = if relu_first { g.relu(x) } else { x.clone() };
    let y = sep_bn(g, &y, f1);
    let y = g.relu(&y);
    let y = sep_bn(g, &y, f2);
    let y = g.max_pool(&y, 3, 2, 1);
    g.add(&y, &residual)
}

pub fn xception(g: &mut GraphBuilder, x: &Value) -> Value {
    let x = conv_bn_relu(g, x, ConvSpec::new(32, 3).stride(2).valid());
    let x = conv_bn_relu(g, &x, ConvSpec::new(64, 3).valid());
    let mut x = down_block(g, &x, 128, 128, false);
    x = down_block(g, &x, 256, 256, true);
    x = down_block(g, &x, 728, 728, true);
    for _ in 0..8 {
        let mut y = x.clone();
        for _ in 0..3 {
            let r = g.relu(&y);
            y = sep_bn(g, &r, 728);
        }
        x = g.add(&y, &x);
    }
    x = down_block(g, &x, 728, 1024, true);
    let x = sep_bn(g, &x, 1536);
    let x = g.relu(&x);
    let x = sep_bn(g, &x, 2048);
    let x = g.relu(&x);
    classifier(g, &x)
}
