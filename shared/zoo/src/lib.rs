//! The model zoo: the 18 ImageNet DNNs the original Scission was evaluated on, rebuilt from
//! their Keras Applications definitions (same layers, input sizes and parameter counts) and
//! written as ONNX with deterministic random weights. Nothing is downloaded; latency does not
//! depend on weight values.
//!
//! Layout is NCHW (as torch exports), float32, batch 1, with the 1000-class softmax head.
//! Keras' `ZeroPadding2D` + "valid" convs are written as the equivalent padded convs, except
//! where the padding is asymmetric or feeds a max or average pool (NASNet), where explicit
//! `Pad` nodes keep Keras' semantics.

#![warn(missing_docs)]

pub mod onnx;

mod densenet;
mod inception;
mod mobilenet;
mod nasnet;
mod resnet;
mod vgg;
mod xception;

use tract_onnx::pb;

use crate::onnx::builder::{ConvSpec, GraphBuilder, Value};

/// One zoo model.
#[derive(Clone, Copy, Debug)]
pub struct ZooModel {
    /// Name as used on the command line (Keras' lower-case name).
    pub name: &'static str,
    /// Family (VGG, ResNet, ...).
    pub family: &'static str,
    /// Square input resolution.
    pub resolution: usize,
    /// Parameters of the Keras model (trainable + non-trainable).
    pub keras_params: u64,
    build: fn(&mut GraphBuilder, &Value) -> Value,
}

impl ZooModel {
    /// Builds the model with weights from `seed`; returns the ONNX model and its parameter count.
    pub fn build(&self, seed: u64) -> (pb::ModelProto, u64) {
        let (mut g, x) = GraphBuilder::new(self.name, &[1, 3, self.resolution, self.resolution], seed);
        let logits = (self.build)(&mut g, &x);
        let y = g.softmax(&logits);
        let params = g.params();
        (g.finish(&[&y]), params)
    }
}

/// Every zoo model, in the order of the original Scission's paper.
pub const MODELS: [ZooModel; 18] = [
    ZooModel { name: "vgg16", family: "VGG", resolution: 224, keras_params: 138_357_544, build: vgg::vgg16 },
    ZooModel { name: "vgg19", family: "VGG", resolution: 224, keras_params: 143_667_240, build: vgg::vgg19 },
    ZooModel { name: "resnet50", family: "ResNet", resolution: 224, keras_params: 25_636_712, build: resnet::resnet50 },
    ZooModel { name: "resnet101", family: "ResNet", resolution: 224, keras_params: 44_707_176, build: resnet::resnet101 },
    ZooModel { name: "resnet152", family: "ResNet", resolution: 224, keras_params: 60_419_944, build: resnet::resnet152 },
    ZooModel { name: "resnet50v2", family: "ResNetV2", resolution: 224, keras_params: 25_613_800, build: resnet::resnet50v2 },
    ZooModel { name: "resnet101v2", family: "ResNetV2", resolution: 224, keras_params: 44_675_560, build: resnet::resnet101v2 },
    ZooModel { name: "resnet152v2", family: "ResNetV2", resolution: 224, keras_params: 60_380_648, build: resnet::resnet152v2 },
    ZooModel { name: "inception_v3", family: "Inception", resolution: 299, keras_params: 23_851_784, build: inception::inception_v3 },
    ZooModel {
        name: "inception_resnet_v2",
        family: "Inception",
        resolution: 299,
        keras_params: 55_873_736,
        build: inception::inception_resnet_v2,
    },
    ZooModel { name: "xception", family: "Xception", resolution: 299, keras_params: 22_910_480, build: xception::xception },
    ZooModel { name: "mobilenet", family: "MobileNet", resolution: 224, keras_params: 4_253_864, build: mobilenet::mobilenet },
    ZooModel { name: "mobilenet_v2", family: "MobileNet", resolution: 224, keras_params: 3_538_984, build: mobilenet::mobilenet_v2 },
    ZooModel { name: "densenet121", family: "DenseNet", resolution: 224, keras_params: 8_062_504, build: densenet::densenet121 },
    ZooModel { name: "densenet169", family: "DenseNet", resolution: 224, keras_params: 14_307_880, build: densenet::densenet169 },
    ZooModel { name: "densenet201", family: "DenseNet", resolution: 224, keras_params: 20_242_984, build: densenet::densenet201 },
    ZooModel { name: "nasnet_mobile", family: "NASNet", resolution: 224, keras_params: 5_326_716, build: nasnet::nasnet_mobile },
    ZooModel { name: "nasnet_large", family: "NASNet", resolution: 331, keras_params: 88_949_818, build: nasnet::nasnet_large },
];

/// Looks a model up by name (case-insensitive; `-` and `_` are the same).
pub fn find(name: &str) -> Option<&'static ZooModel> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    MODELS.iter().find(|m| norm(m.name) == norm(name))
}

/// Conv (no bias) + batch norm + ReLU: the unit most Keras models repeat.
fn conv_bn_relu(g: &mut GraphBuilder, x: &Value, spec: ConvSpec) -> Value {
    let c = g.conv(x, spec);
    let b = g.batch_norm(&c);
    g.relu(&b)
}

/// Global average pooling then the 1000-way dense classifier (logits).
fn classifier(g: &mut GraphBuilder, x: &Value) -> Value {
    let p = g.global_avg_pool(x);
    let f = g.flatten(&p);
    g.dense(&f, 1000)
}

/// Where zoo models are cached: `$SCISSION_CACHE`, else `$XDG_CACHE_HOME/scission`, else
/// `~/.cache/scission`, else the system temporary directory.
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("SCISSION_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("scission");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache/scission"),
        None => std::env::temp_dir().join("scission"),
    }
}

/// Why a zoo model could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    /// No model of that name.
    #[error("'{0}' is not in the zoo; `scission-cloud zoo list` shows the models")]
    Unknown(String),
    /// The file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> ZooError {
    move |source| ZooError::Io { what: what(), source }
}

/// Writes `model` with `seed` to `path` (through a temporary file, so a crash never leaves a
/// truncated model behind).
pub fn write(model: &ZooModel, seed: u64, path: &std::path::Path) -> Result<(), ZooError> {
    let (proto, _) = model.build(seed);
    write_file(path, &crate::onnx::builder::encode(&proto))
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so that a crash never
/// leaves a truncated file behind and another process reading `path` meanwhile sees the old file
/// or the new one, whole.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), ZooError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(|| format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(|| format!("cannot move {} to {}", tmp.display(), path.display())))
}

/// The writer's format in cache file names: files of an older writer are not reused (2: the
/// batch dimension is symbolic).
const CACHE_FORMAT: u32 = 2;

/// The cached ONNX file of `name` with `seed`, written on first use.
pub fn cached(name: &str, seed: u64) -> Result<std::path::PathBuf, ZooError> {
    let model = find(name).ok_or_else(|| ZooError::Unknown(name.to_string()))?;
    let dir = cache_dir().join("zoo");
    std::fs::create_dir_all(&dir).map_err(io(|| format!("cannot create {}", dir.display())))?;
    let path = dir.join(format!("{}-seed{seed}-v{CACHE_FORMAT}.onnx", model.name));
    if !path.exists() {
        tracing::info!("writing {} to {}", model.name, path.display());
        write(model, seed, &path)?;
    }
    Ok(path)
}
