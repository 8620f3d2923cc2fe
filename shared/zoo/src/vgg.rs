//! VGG16 and VGG19 (Simonyan & Zisserman), as `keras.applications.vgg16/vgg19`.

use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

fn vgg(g: &mut GraphBuilder, x: &Value, convs_per_block: [usize; 5]) -> Value {
    let mut x = x.clone();
    for (&convs, channels) in convs_per_block.iter().zip([64, 128, 256, 512, 512]) {
        for _ in 0..convs {
            let c = g.conv(&x, ConvSpec::new(channels, 3).bias());
            x = g.relu(&c);
        }
        x = g.max_pool(&x, 2, 2, 0);
    }
    let f = g.flatten(&x);
    let fc1 = g.dense(&f, 4096);
    let fc1 = g.relu(&fc1);
    let fc2 = g.dense(&fc1, 4096);
    let fc2 = g.relu(&fc2);
    g.dense(&fc2, 1000)
}

pub fn vgg16(g: &mut GraphBuilder, x: &Value) -> Value {
    vgg(g, x, [2, 2, 3, 3, 3])
}

pub fn vgg19(g: &mut GraphBuilder, x: &Value) -> Value {
    vgg(g, x, [2, 2, 4, 4, 4])
}
