//! InceptionV3 and InceptionResNetV2, as `keras.applications.inception_v3` and
//! `inception_resnet_v2`: every conv is bias-free and followed by a batch norm without a
//! learned scale (`scale=False`), except the residual up-projections of InceptionResNetV2,
//! which have a bias and no norm.

use super::classifier;
use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

/// Keras' `conv2d_bn`: conv (no bias), BN (no scale), ReLU. `valid` drops the padding.
fn cbn(g: &mut GraphBuilder, x: &Value, filters: usize, kh: usize, kw: usize, stride: usize, valid: bool) -> Value {
    let mut spec = ConvSpec::rect(filters, kh, kw).stride(stride);
    if valid {
        spec = spec.valid();
    }
    let c = g.conv(x, spec);
    let b = g.batch_norm_no_scale(&c);
    g.relu(&b)
}

/// A chain of `(filters, kh, kw)` same-padded `conv2d_bn`s.
fn chain(g: &mut GraphBuilder, x: &Value, convs: &[(usize, usize, usize)]) -> Value {
    convs.iter().fold(x.clone(), |x, &(f, kh, kw)| cbn(g, &x, f, kh, kw, 1, false))
}

fn stem(g: &mut GraphBuilder, x: &Value) -> Value {
    let x = cbn(g, x, 32, 3, 3, 2, true);
    let x = cbn(g, &x, 32, 3, 3, 1, true);
    let x = cbn(g, &x, 64, 3, 3, 1, false);
    let x = g.max_pool(&x, 3, 2, 0);
    let x = cbn(g, &x, 80, 1, 1, 1, true);
    let x = cbn(g, &x, 192, 3, 3, 1, true);
    g.max_pool(&x, 3, 2, 0)
}

fn pool_branch(g: &mut GraphBuilder, x: &Value, filters: usize) -> Value {
    let p = g.avg_pool(x, 3, 1, 1);
    cbn(g, &p, filters, 1, 1, 1, false)
}

fn mixed_35(g: &mut GraphBuilder, x: &Value, pool_filters: usize) -> Value {
    let b1 = chain(g, x, &[(64, 1, 1)]);
    let b5 = chain(g, x, &[(48, 1, 1), (64, 5, 5)]);
    let b3 = chain(g, x, &[(64, 1, 1), (96, 3, 3), (96, 3, 3)]);
    let bp = pool_branch(g, x, pool_filters);
    g.concat(&[&b1, &b5, &b3, &bp])
}

fn mixed_17(g: &mut GraphBuilder, x: &Value, c: usize) -> Value {
    let b1 = chain(g, x, &[(192, 1, 1)]);
    let b7 = chain(g, x, &[(c, 1, 1), (c, 1, 7), (192, 7, 1)]);
    let b7d = chain(g, x, &[(c, 1, 1), (c, 7, 1), (c, 1, 7), (c, 7, 1), (192, 1, 7)]);
    let bp = pool_branch(g, x, 192);
    g.concat(&[&b1, &b7, &b7d, &bp])
}

fn mixed_8x8(g: &mut GraphBuilder, x: &Value) -> Value {
    let b1 = chain(g, x, &[(384, 1, 1)]);
    let b1a = cbn(g, &b1, 384, 1, 3, 1, false);
    let b1b = cbn(g, &b1, 384, 3, 1, 1, false);
    let b2 = chain(g, x, &[(448, 1, 1), (384, 3, 3)]);
    let b2a = cbn(g, &b2, 384, 1, 3, 1, false);
    let b2b = cbn(g, &b2, 384, 3, 1, 1, false);
    let b0 = chain(g, x, &[(320, 1, 1)]);
    let bp = pool_branch(g, x, 192);
    g.concat(&[&b0, &b1a, &b1b, &b2a, &b2b, &bp])
}

pub fn inception_v3(g: &mut GraphBuilder, x: &Value) -> Value {
    let mut x = stem(g, x);
    for pool_filters in [32, 64, 64] {
        x = mixed_35(g, &x, pool_filters);
    }
    // mixed3: 35 -> 17
    let b3 = cbn(g, &x, 384, 3, 3, 2, true);
    let bd = chain(g, &x, &[(64, 1, 1), (96, 3, 3)]);
    let bd = cbn(g, &bd, 96, 3, 3, 2, true);
    let bp = g.max_pool(&x, 3, 2, 0);
    x = g.concat(&[&b3, &bd, &bp]);
    for c in [128, 160, 160, 192] {
        x = mixed_17(g, &x, c);
    }
    // mixed8: 17 -> 8
    let b3 = chain(g, &x, &[(192, 1, 1)]);
    let b3 = cbn(g, &b3, 320, 3, 3, 2, true);
    let b7 = chain(g, &x, &[(192, 1, 1), (192, 1, 7), (192, 7, 1)]);
    let b7 = cbn(g, &b7, 192, 3, 3, 2, true);
    let bp = g.max_pool(&x, 3, 2, 0);
    x = g.concat(&[&b3, &b7, &bp]);
    for _ in 0..2 {
        x = mixed_8x8(g, &x);
    }
    classifier(g, &x)
}

/// Keras' `inception_resnet_block`: branches, concat, 1×1 up-projection with bias, scaled
/// residual add, optional ReLU.
fn resnet_block(g: &mut GraphBuilder, x: &Value, branches: &[&[(usize, usize, usize)]], scale: f32, relu: bool) -> Value {
    let outs: Vec<Value> = branches.iter().map(|b| chain(g, x, b)).collect();
    let refs: Vec<&Value> = outs.iter().collect();
    let mixed = g.concat(&refs);
    let up = g.conv(&mixed, ConvSpec::new(x.channels(), 1).bias());
    let up = g.scale(&up, scale);
    let sum = g.add(x, &up);
    if relu { g.relu(&sum) } else { sum }
}

pub fn inception_resnet_v2(g: &mut GraphBuilder, x: &Value) -> Value {
    let x = stem(g, x);
    // mixed_5b
    let b0 = chain(g, &x, &[(96, 1, 1)]);
    let b1 = chain(g, &x, &[(48, 1, 1), (64, 5, 5)]);
    let b2 = chain(g, &x, &[(64, 1, 1), (96, 3, 3), (96, 3, 3)]);
    let bp = pool_branch(g, &x, 64);
    let mut x = g.concat(&[&b0, &b1, &b2, &bp]);
    for _ in 0..10 {
        x = resnet_block(g, &x, &[&[(32, 1, 1)], &[(32, 1, 1), (32, 3, 3)], &[(32, 1, 1), (48, 3, 3), (64, 3, 3)]], 0.17, true);
    }
    // mixed_6a
    let b0 = cbn(g, &x, 384, 3, 3, 2, true);
    let b1 = chain(g, &x, &[(256, 1, 1), (256, 3, 3)]);
    let b1 = cbn(g, &b1, 384, 3, 3, 2, true);
    let bp = g.max_pool(&x, 3, 2, 0);
    x = g.concat(&[&b0, &b1, &bp]);
    for _ in 0..20 {
        x = resnet_block(g, &x, &[&[(192, 1, 1)], &[(128, 1, 1), (160, 1, 7), (192, 7, 1)]], 0.1, true);
    }
    // mixed_7a
    let b0 = chain(g, &x, &[(256, 1, 1)]);
    let b0 = cbn(g, &b0, 384, 3, 3, 2, true);
    let b1 = chain(g, &x, &[(256, 1, 1)]);
    let b1 = cbn(g, &b1, 288, 3, 3, 2, true);
    let b2 = chain(g, &x, &[(256, 1, 1), (288, 3, 3)]);
    let b2 = cbn(g, &b2, 320, 3, 3, 2, true);
    let bp = g.max_pool(&x, 3, 2, 0);
    x = g.concat(&[&b0, &b1, &b2, &bp]);
    let block8: [&[(usize, usize, usize)]; 2] = [&[(192, 1, 1)], &[(192, 1, 1), (224, 1, 3), (256, 3, 1)]];
    for _ in 0..9 {
        x = resnet_block(g, &x, &block8, 0.2, true);
    }
    x = resnet_block(g, &x, &block8, 1.0, false);
    let x = cbn(g, &x, 1536, 1, 1, 1, false);
    classifier(g, &x)
}
