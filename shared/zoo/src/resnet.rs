//! ResNet50/101/152 (v1) and ResNet50V2/101V2/152V2, as `keras.applications.resnet` and
//! `resnet_v2`. Every conv of v1 has a bias; v2 drops the bias of convs followed by a norm.

use super::{classifier, conv_bn_relu};
use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

/// Scale of the last norm of each residual branch: keeps deep stacks' activations bounded.
const BRANCH_GAMMA: f32 = 0.25;

fn bn_relu(g: &mut GraphBuilder, x: &Value) -> Value {
    let b = g.batch_norm(x);
    g.relu(&b)
}

/// Keras' `block1`: bottleneck with a projection (conv) or identity shortcut, stride on the
/// first 1×1 conv.
fn block1(g: &mut GraphBuilder, x: &Value, filters: usize, stride: usize, conv_shortcut: bool) -> Value {
    let shortcut = if conv_shortcut {
        let s = g.conv(x, ConvSpec::new(4 * filters, 1).stride(stride).bias());
        g.batch_norm(&s)
    } else {
        x.clone()
    };
    let y = conv_bn_relu(g, x, ConvSpec::new(filters, 1).stride(stride).bias());
    let y = conv_bn_relu(g, &y, ConvSpec::new(filters, 3).bias());
    let y = g.conv(&y, ConvSpec::new(4 * filters, 1).bias());
    let y = g.batch_norm_with(&y, true, BRANCH_GAMMA);
    let sum = g.add(&shortcut, &y);
    g.relu(&sum)
}

fn stack1(g: &mut GraphBuilder, x: &Value, filters: usize, blocks: usize, stride: usize) -> Value {
    let mut x = block1(g, x, filters, stride, true);
    for _ in 1..blocks {
        x = block1(g, &x, filters, 1, false);
    }
    x
}

fn stem(g: &mut GraphBuilder, x: &Value, v1: bool) -> Value {
    let c = g.conv(x, ConvSpec::new(64, 7).stride(2).pad(3).bias());
    let c = if v1 { bn_relu(g, &c) } else { c };
    g.max_pool(&c, 3, 2, 1)
}

fn resnet_v1(g: &mut GraphBuilder, x: &Value, blocks: [usize; 4]) -> Value {
    let mut x = stem(g, x, true);
    for (i, (&n, filters)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        x = stack1(g, &x, filters, n, if i == 0 { 1 } else { 2 });
    }
    classifier(g, &x)
}

/// Keras' `block2` (pre-activation): the stride sits on the 3×3 conv of the stack's last
/// block, whose identity shortcut is then a 1×1 max pool with that stride.
fn block2(g: &mut GraphBuilder, x: &Value, filters: usize, stride: usize, conv_shortcut: bool) -> Value {
    let preact = bn_relu(g, x);
    let shortcut = if conv_shortcut {
        g.conv(&preact, ConvSpec::new(4 * filters, 1).stride(stride).bias())
    } else if stride > 1 {
        g.max_pool(x, 1, stride, 0)
    } else {
        x.clone()
    };
    let y = conv_bn_relu(g, &preact, ConvSpec::new(filters, 1));
    let y = g.conv(&y, ConvSpec::new(filters, 3).stride(stride));
    let y = g.batch_norm_with(&y, true, BRANCH_GAMMA);
    let y = g.relu(&y);
    let y = g.conv(&y, ConvSpec::new(4 * filters, 1).bias());
    g.add(&shortcut, &y)
}

fn stack2(g: &mut GraphBuilder, x: &Value, filters: usize, blocks: usize, stride: usize) -> Value {
    let mut x = block2(g, x, filters, 1, true);
    for _ in 1..blocks - 1 {
        x = block2(g, &x, filters, 1, false);
    }
    block2(g, &x, filters, stride, false)
}

fn resnet_v2(g: &mut GraphBuilder, x: &Value, blocks: [usize; 4]) -> Value {
    let mut x = stem(g, x, false);
    for (i, (&n, filters)) in blocks.iter().zip([64, 128, 256, 512]).enumerate() {
        x = stack2(g, &x, filters, n, if i == 3 { 1 } else { 2 });
    }
    let x = bn_relu(g, &x);
    classifier(g, &x)
}

pub fn resnet50(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v1(g, x, [3, 4, 6, 3])
}
pub fn resnet101(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v1(g, x, [3, 4, 23, 3])
}
pub fn resnet152(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v1(g, x, [3, 8, 36, 3])
}
pub fn resnet50v2(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v2(g, x, [3, 4, 6, 3])
}
pub fn resnet101v2(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v2(g, x, [3, 4, 23, 3])
}
pub fn resnet152v2(g: &mut GraphBuilder, x: &Value) -> Value {
    resnet_v2(g, x, [3, 8, 36, 3])
}
