//! MobileNet (v1, alpha 1) and MobileNetV2 (alpha 1), as `keras.applications.mobilenet` and
//! `mobilenet_v2`: depthwise convs are grouped `Conv`s, ReLU6 is `Clip(0, 6)`.

use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

fn conv_bn_relu6(g: &mut GraphBuilder, x: &Value, spec: ConvSpec) -> Value {
    let c = g.conv(x, spec);
    let b = g.batch_norm(&c);
    g.relu6(&b)
}

fn depthwise_bn_relu6(g: &mut GraphBuilder, x: &Value, stride: usize) -> Value {
    let d = g.depthwise(x, 3, stride);
    let b = g.batch_norm(&d);
    g.relu6(&b)
}

pub fn mobilenet(g: &mut GraphBuilder, x: &Value) -> Value {
    let mut x = conv_bn_relu6(g, x, ConvSpec::new(32, 3).stride(2));
    let blocks =
        [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)];
    for (filters, stride) in blocks {
        let d = depthwise_bn_relu6(g, &x, stride);
        x = conv_bn_relu6(g, &d, ConvSpec::new(filters, 1));
    }
    // Keras' head: global pooling kept as 1×1, a 1×1 conv with bias as the classifier.
    let p = g.global_avg_pool(&x);
    let c = g.conv(&p, ConvSpec::new(1000, 1).bias());
    g.flatten(&c)
}

fn inverted_residual(g: &mut GraphBuilder, x: &Value, filters: usize, stride: usize, expansion: usize) -> Value {
    let input = x.channels();
    let expanded = if expansion > 1 { conv_bn_relu6(g, x, ConvSpec::new(expansion * input, 1)) } else { x.clone() };
    let d = depthwise_bn_relu6(g, &expanded, stride);
    let p = g.conv(&d, ConvSpec::new(filters, 1));
    let p = g.batch_norm(&p);
    if stride == 1 && input == filters { g.add(x, &p) } else { p }
}

pub fn mobilenet_v2(g: &mut GraphBuilder, x: &Value) -> Value {
    let mut x = conv_bn_relu6(g, x, ConvSpec::new(32, 3).stride(2));
    x = inverted_residual(g, &x, 16, 1, 1);
    let stages = [(24, 2, 2), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1)];
    for (filters, repeats, stride) in stages {
        for i in 0..repeats {
            x = inverted_residual(g, &x, filters, if i == 0 { stride } else { 1 }, 6);
        }
    }
    let x = conv_bn_relu6(g, &x, ConvSpec::new(1280, 1));
    super::classifier(g, &x)
}
