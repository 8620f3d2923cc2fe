//! NASNetMobile and NASNetLarge (Zoph et al.), as `keras.applications.nasnet`: normal and
//! reduction "A" cells of separable-conv and pooling branches, with Keras' explicit padding
//! (`correct_pad`) before every strided conv or pool, and the previous cell's output adjusted
//! by a factorised reduction (two shifted 1×1 paths) when sizes differ.

use super::classifier;
use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

/// Keras' `correct_pad` for a square kernel: `[top, left, bottom, right]`.
fn correct_pad(x: &Value, kernel: usize) -> [usize; 4] {
    let (h, w) = (x.shape[2], x.shape[3]);
    let half = kernel / 2;
    let (ah, aw) = (1 - h % 2, 1 - w % 2);
    [half - ah, half - aw, half, half]
}

/// Keras' `_separable_conv_block`: ReLU, separable conv (strided: padded, then "valid"), BN,
/// ReLU, separable conv, BN.
fn sep_block(g: &mut GraphBuilder, x: &Value, filters: usize, kernel: usize, stride: usize) -> Value {
    let mut y = g.relu(x);
    if stride == 2 {
        y = g.pad(&y, correct_pad(&y, kernel));
        let d = g.conv(&y, ConvSpec::new(y.channels(), kernel).stride(2).valid().groups(y.channels()));
        y = g.conv(&d, ConvSpec::new(filters, 1));
    } else {
        y = g.separable(&y, filters, kernel, 1, false);
    }
    let y = g.batch_norm(&y);
    let y = g.relu(&y);
    let y = g.separable(&y, filters, kernel, 1, false);
    g.batch_norm(&y)
}

/// Keras' `_adjust_block`: makes the previous cell's output `p` match `ip` in size and width.
fn adjust(g: &mut GraphBuilder, p: Option<&Value>, ip: &Value, filters: usize) -> Value {
    let Some(p) = p else { return ip.clone() };
    if p.shape[2] != ip.shape[2] {
        let r = g.relu(p);
        let p1 = g.avg_pool(&r, 1, 2, 0);
        let p1 = g.conv(&p1, ConvSpec::new(filters / 2, 1));
        let shifted = g.pad(&r, [0, 0, 1, 1]);
        let shifted = g.crop(&shifted, [1, 1, 0, 0]);
        let p2 = g.avg_pool(&shifted, 1, 2, 0);
        let p2 = g.conv(&p2, ConvSpec::new(filters / 2, 1));
        let both = g.concat(&[&p1, &p2]);
        g.batch_norm(&both)
    } else if p.channels() != filters {
        let r = g.relu(p);
        let c = g.conv(&r, ConvSpec::new(filters, 1));
        g.batch_norm(&c)
    } else {
        p.clone()
    }
}

/// ReLU, 1×1 conv to `filters`, BN: a cell's view of its input.
fn squeeze(g: &mut GraphBuilder, ip: &Value, filters: usize) -> Value {
    let r = g.relu(ip);
    let c = g.conv(&r, ConvSpec::new(filters, 1));
    g.batch_norm(&c)
}

fn normal_cell(g: &mut GraphBuilder, ip: &Value, p: Option<&Value>, filters: usize) -> Value {
    let p = adjust(g, p, ip, filters);
    let h = squeeze(g, ip, filters);
    let x1a = sep_block(g, &h, filters, 5, 1);
    let x1b = sep_block(g, &p, filters, 3, 1);
    let x1 = g.add(&x1a, &x1b);
    let x2a = sep_block(g, &p, filters, 5, 1);
    let x2b = sep_block(g, &p, filters, 3, 1);
    let x2 = g.add(&x2a, &x2b);
    let x3 = g.avg_pool(&h, 3, 1, 1);
    let x3 = g.add(&x3, &p);
    let x4a = g.avg_pool(&p, 3, 1, 1);
    let x4b = g.avg_pool(&p, 3, 1, 1);
    let x4 = g.add(&x4a, &x4b);
    let x5 = sep_block(g, &h, filters, 3, 1);
    let x5 = g.add(&x5, &h);
    g.concat(&[&p, &x1, &x2, &x3, &x4, &x5])
}

fn reduction_cell(g: &mut GraphBuilder, ip: &Value, p: Option<&Value>, filters: usize) -> Value {
    let p = adjust(g, p, ip, filters);
    let h = squeeze(g, ip, filters);
    let h3 = g.pad(&h, correct_pad(&h, 3));
    let x1a = sep_block(g, &h, filters, 5, 2);
    let x1b = sep_block(g, &p, filters, 7, 2);
    let x1 = g.add(&x1a, &x1b);
    let x2a = g.max_pool(&h3, 3, 2, 0);
    let x2b = sep_block(g, &p, filters, 7, 2);
    let x2 = g.add(&x2a, &x2b);
    let x3a = g.avg_pool(&h3, 3, 2, 0);
    let x3b = sep_block(g, &p, filters, 5, 2);
    let x3 = g.add(&x3a, &x3b);
    let x4 = g.avg_pool(&x1, 3, 1, 1);
    let x4 = g.add(&x2, &x4);
    let x5a = sep_block(g, &x1, filters, 3, 1);
    let x5b = g.max_pool(&h3, 3, 2, 0);
    let x5 = g.add(&x5a, &x5b);
    g.concat(&[&x2, &x3, &x4, &x5])
}

fn nasnet(g: &mut GraphBuilder, x: &Value, penultimate: usize, blocks: usize, stem_filters: usize, skip_reduction: bool) -> Value {
    let filters = penultimate / 24;
    let stem = g.conv(x, ConvSpec::new(stem_filters, 3).stride(2).valid());
    let stem = g.batch_norm(&stem);
    let s1 = reduction_cell(g, &stem, None, filters / 4);
    let (mut x, mut p) = (reduction_cell(g, &s1, Some(&stem), filters / 2), s1);
    for (stage, width) in [filters, 2 * filters, 4 * filters].into_iter().enumerate() {
        if stage > 0 {
            let reduced = reduction_cell(g, &x, Some(&p), width);
            p = if skip_reduction { p } else { x };
            x = reduced;
        }
        for _ in 0..blocks {
            let next = normal_cell(g, &x, Some(&p), width);
            p = x;
            x = next;
        }
    }
    let x = g.relu(&x);
    classifier(g, &x)
}

pub fn nasnet_mobile(g: &mut GraphBuilder, x: &Value) -> Value {
    nasnet(g, x, 1056, 4, 32, false)
}

pub fn nasnet_large(g: &mut GraphBuilder, x: &Value) -> Value {
    nasnet(g, x, 4032, 6, 96, true)
}
