//! A shape-tracking NCHW graph builder that emits an ONNX `ModelProto` with the ops torch and
//! tf2onnx exports use (Conv with groups, BatchNormalization, Relu, Clip, Add, Concat, pools,
//! Gemm, Softmax). It counts parameters as it goes.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use scission_core::rng::WeightRng;

/// ONNX opset the builder targets (inside tract's tested range 9..=18).
pub const OPSET: i64 = 13;

/// A tensor in the graph under construction: its name and NCHW (or N×features) shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// ONNX value name.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
}

impl Value {
    /// Channels (axis 1).
    pub fn channels(&self) -> usize {
        self.shape[1]
    }
}

/// Convolution geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: usize,
    /// Zero padding of height and width (each applied on both sides).
    pub pad: (usize, usize),
    /// Groups (equal to input channels for depthwise).
    pub groups: usize,
    /// Whether the conv has a bias.
    pub bias: bool,
}

impl ConvSpec {
    /// A `kernel`×`kernel` conv with stride 1, "same" padding, no groups, no bias.
    pub fn new(out_channels: usize, kernel: usize) -> Self {
        Self::rect(out_channels, kernel, kernel)
    }
    /// A `kh`×`kw` conv with stride 1, "same" padding, no groups, no bias.
    pub fn rect(out_channels: usize, kh: usize, kw: usize) -> Self {
        Self { out_channels, kernel: (kh, kw), stride: 1, pad: (kh / 2, kw / 2), groups: 1, bias: false }
    }
    /// Sets the stride.
    pub fn stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }
    /// No padding (Keras "valid").
    pub fn valid(mut self) -> Self {
        self.pad = (0, 0);
        self
    }
    /// Sets the padding.
    pub fn pad(mut self, pad: usize) -> Self {
        self.pad = (pad, pad);
        self
    }
    /// Sets the groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    /// Adds a bias.
    pub fn bias(mut self) -> Self {
        self.bias = true;
        self
    }
    /// Sets whether there is a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
}

/// Builds one ONNX graph with a single input.
pub struct GraphBuilder {
    name: String,
    input: Value,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    rng: WeightRng,
    params: u64,
    next_id: usize,
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
}

fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 7, ints: ints.to_vec(), ..Default::default() }
}

fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 1, f, ..Default::default() }
}

/// The batch dimension's name in a graph's inputs and outputs, as torch's `dynamic_axes` and
/// tf2onnx write it: loaders pin it to 1, and servers may run several requests as one batch.
pub const BATCH: &str = "N";

/// A graph input's or output's type: float, with a symbolic batch [`BATCH`] on the leading axis
/// and `v`'s other dimensions.
fn value_info(v: &Value) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let dim = v
        .shape
        .iter()
        .enumerate()
        .map(|(axis, &d)| {
            let value = if axis == 0 { dimension::Value::DimParam(BATCH.into()) } else { dimension::Value::DimValue(d as i64) };
            Dimension { value: Some(value), ..Default::default() }
        })
        .collect();
    let tensor = pb::type_proto::Tensor { elem_type: DataType::Float as i32, shape: Some(pb::TensorShapeProto { dim }) };
    pb::ValueInfoProto {
        name: v.name.clone(),
        r#type: Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

fn pooled(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

impl GraphBuilder {
    /// Starts a graph called `name` whose input `input` has `shape`; weights come from `seed`.
    pub fn new(name: &str, shape: &[usize], seed: u64) -> (Self, Value) {
        let input = Value { name: "input".into(), shape: shape.to_vec() };
        let builder = Self {
            name: name.into(),
            input: input.clone(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            rng: WeightRng::new(seed),
            params: 0,
            next_id: 0,
        };
        (builder, input)
    }

    /// Parameters (weights, biases and batch-norm statistics) added so far.
    pub fn params(&self) -> u64 {
        self.params
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.next_id += 1;
        format!("{stem}_{}", self.next_id)
    }

    fn initializer(&mut self, stem: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(stem);
        self.params += data.len() as u64;
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    /// A constant that is not a learned parameter (e.g. clip bounds, shapes).
    fn constant(&mut self, stem: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.initializer(stem, dims, data);
        self.params -= data.len() as u64;
        name
    }

    fn constant_i64(&mut self, stem: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(stem);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attrs: Vec<pb::AttributeProto>, shape: Vec<usize>) -> Value {
        let name = self.fresh(&op.to_lowercase());
        self.nodes.push(pb::NodeProto {
            name: name.clone(),
            op_type: op.into(),
            input: inputs,
            output: vec![name.clone()],
            attribute: attrs,
            ..Default::default()
        });
        Value { name, shape }
    }

    /// Adds a node of any op type, for ops the builder has no helper for; the caller states the
    /// output shape.
    pub fn custom(&mut self, op: &str, inputs: &[&Value], shape: Vec<usize>) -> Value {
        self.node(op, inputs.iter().map(|v| v.name.clone()).collect(), vec![], shape)
    }

    /// Convolution with He-uniform weights.
    pub fn conv(&mut self, x: &Value, spec: ConvSpec) -> Value {
        let in_per_group = x.channels() / spec.groups;
        let ((kh, kw), s, (ph, pw)) = (spec.kernel, spec.stride, spec.pad);
        let fan_in = in_per_group * kh * kw;
        let limit = (6.0f32 / fan_in as f32).sqrt();
        let dims = [spec.out_channels, in_per_group, kh, kw];
        let w = self.rng.uniform_vec(dims.iter().product(), limit);
        let mut inputs = vec![x.name.clone(), self.initializer("w", &dims, &w)];
        if spec.bias {
            let b = vec![0.0; spec.out_channels];
            inputs.push(self.initializer("b", &[spec.out_channels], &b));
        }
        let attrs = vec![
            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
            attr_ints("strides", &[s as i64, s as i64]),
            attr_ints("pads", &[ph as i64, pw as i64, ph as i64, pw as i64]),
            attr_int("group", spec.groups as i64),
        ];
        let shape = vec![x.shape[0], spec.out_channels, pooled(x.shape[2], kh, s, ph), pooled(x.shape[3], kw, s, pw)];
        self.node("Conv", inputs, attrs, shape)
    }

    /// A depthwise `kernel`×`kernel` conv (one filter per channel, no bias), as Keras'
    /// `DepthwiseConv2D` and the first half of `SeparableConv2D`.
    pub fn depthwise(&mut self, x: &Value, kernel: usize, stride: usize) -> Value {
        let c = x.channels();
        self.conv(x, ConvSpec::new(c, kernel).stride(stride).groups(c))
    }

    /// Keras' `SeparableConv2D`: a depthwise conv then a 1×1 conv to `out` channels.
    pub fn separable(&mut self, x: &Value, out: usize, kernel: usize, stride: usize, bias: bool) -> Value {
        let d = self.depthwise(x, kernel, stride);
        self.conv(&d, ConvSpec::new(out, 1).with_bias(bias))
    }

    /// Batch normalisation with unit scale, zero shift, and near-standard running statistics.
    pub fn batch_norm(&mut self, x: &Value) -> Value {
        self.batch_norm_with(x, true, 1.0)
    }

    /// Batch normalisation without a learned scale (Keras `scale=False`): the scale input is a
    /// constant of ones and does not count as parameters.
    pub fn batch_norm_no_scale(&mut self, x: &Value) -> Value {
        self.batch_norm_with(x, false, 1.0)
    }

    /// Batch normalisation whose learned scale is `gamma` (a small gamma on the last norm of a
    /// residual branch keeps deep residual stacks' activations bounded, as zero-init does).
    pub fn batch_norm_with(&mut self, x: &Value, learned_scale: bool, gamma: f32) -> Value {
        let c = x.channels();
        let scale = vec![gamma; c];
        let shift = vec![0.0; c];
        let mean: Vec<f32> = (0..c).map(|_| self.rng.uniform(0.05)).collect();
        let var: Vec<f32> = (0..c).map(|_| 1.0 + self.rng.uniform(0.05)).collect();
        let scale = if learned_scale { self.initializer("bn_scale", &[c], &scale) } else { self.constant("bn_scale", &[c], &scale) };
        let inputs = vec![
            x.name.clone(),
            scale,
            self.initializer("bn_shift", &[c], &shift),
            self.initializer("bn_mean", &[c], &mean),
            self.initializer("bn_var", &[c], &var),
        ];
        self.node("BatchNormalization", inputs, vec![attr_float("epsilon", 1e-3)], x.shape.clone())
    }

    /// ReLU.
    pub fn relu(&mut self, x: &Value) -> Value {
        self.node("Relu", vec![x.name.clone()], vec![], x.shape.clone())
    }

    /// ReLU6, as `Clip(x, 0, 6)` the way exporters write it.
    pub fn relu6(&mut self, x: &Value) -> Value {
        let lo = self.constant("clip_min", &[], &[0.0]);
        let hi = self.constant("clip_max", &[], &[6.0]);
        self.node("Clip", vec![x.name.clone(), lo, hi], vec![], x.shape.clone())
    }

    /// Element-wise sum of two tensors of the same shape.
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.node("Add", vec![a.name.clone(), b.name.clone()], vec![], a.shape.clone())
    }

    /// Zero padding `[top, left, bottom, right]` (Keras `ZeroPadding2D`).
    pub fn pad(&mut self, x: &Value, pads: [usize; 4]) -> Value {
        let [t, l, b, r] = pads.map(|p| p as i64);
        let amounts = self.constant_i64("pads", &[8], &[0, 0, t, l, 0, 0, b, r]);
        let shape = vec![x.shape[0], x.shape[1], x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3]];
        self.node("Pad", vec![x.name.clone(), amounts], vec![], shape)
    }

    /// Cropping `[top, left, bottom, right]` (Keras `Cropping2D`), as a `Slice`.
    pub fn crop(&mut self, x: &Value, crop: [usize; 4]) -> Value {
        let (h, w) = (x.shape[2], x.shape[3]);
        let starts = self.constant_i64("starts", &[2], &[crop[0] as i64, crop[1] as i64]);
        let ends = self.constant_i64("ends", &[2], &[(h - crop[2]) as i64, (w - crop[3]) as i64]);
        let axes = self.constant_i64("axes", &[2], &[2, 3]);
        let shape = vec![x.shape[0], x.shape[1], h - crop[0] - crop[2], w - crop[1] - crop[3]];
        self.node("Slice", vec![x.name.clone(), starts, ends, axes], vec![], shape)
    }

    /// Element-wise product (e.g. a residual branch scaled by a constant).
    pub fn scale(&mut self, x: &Value, factor: f32) -> Value {
        let k = self.constant("scale", &[], &[factor]);
        self.node("Mul", vec![x.name.clone(), k], vec![], x.shape.clone())
    }

    /// Concatenation along channels.
    pub fn concat(&mut self, parts: &[&Value]) -> Value {
        let mut shape = parts[0].shape.clone();
        shape[1] = parts.iter().map(|p| p.channels()).sum();
        let inputs = parts.iter().map(|p| p.name.clone()).collect();
        self.node("Concat", inputs, vec![attr_int("axis", 1)], shape)
    }

    fn pool(&mut self, op: &str, x: &Value, kernel: usize, stride: usize, pad: usize) -> Value {
        let attrs = vec![
            attr_ints("kernel_shape", &[kernel as i64; 2]),
            attr_ints("strides", &[stride as i64; 2]),
            attr_ints("pads", &[pad as i64; 4]),
        ];
        let shape = vec![x.shape[0], x.shape[1], pooled(x.shape[2], kernel, stride, pad), pooled(x.shape[3], kernel, stride, pad)];
        self.node(op, vec![x.name.clone()], attrs, shape)
    }

    /// Max pooling.
    pub fn max_pool(&mut self, x: &Value, kernel: usize, stride: usize, pad: usize) -> Value {
        self.pool("MaxPool", x, kernel, stride, pad)
    }

    /// Average pooling (padding excluded from the average, the ONNX default).
    pub fn avg_pool(&mut self, x: &Value, kernel: usize, stride: usize, pad: usize) -> Value {
        self.pool("AveragePool", x, kernel, stride, pad)
    }

    /// Global average pooling to N×C×1×1.
    pub fn global_avg_pool(&mut self, x: &Value) -> Value {
        self.node("GlobalAveragePool", vec![x.name.clone()], vec![], vec![x.shape[0], x.shape[1], 1, 1])
    }

    /// Flatten to N×rest.
    pub fn flatten(&mut self, x: &Value) -> Value {
        let rest = x.shape[1..].iter().product();
        self.node("Flatten", vec![x.name.clone()], vec![attr_int("axis", 1)], vec![x.shape[0], rest])
    }

    /// Flatten to N×rest the way torch exports `x.view(x.size(0), -1)` with a dynamic batch: the
    /// batch is read from the tensor's shape at run time (`Shape`, `Gather`, `Unsqueeze`,
    /// `Concat`) and fed to a `Reshape`.
    pub fn flatten_dynamic(&mut self, x: &Value) -> Value {
        let rest = x.shape[1..].iter().product();
        let shape = self.node("Shape", vec![x.name.clone()], vec![], vec![x.shape.len()]);
        let first = self.constant_i64("index", &[], &[0]);
        let batch = self.node("Gather", vec![shape.name, first], vec![attr_int("axis", 0)], vec![]);
        let axes = self.constant_i64("axes", &[1], &[0]);
        let batch = self.node("Unsqueeze", vec![batch.name, axes], vec![], vec![1]);
        let minus_one = self.constant_i64("rest", &[1], &[-1]);
        let target = self.node("Concat", vec![batch.name, minus_one], vec![attr_int("axis", 0)], vec![2]);
        self.node("Reshape", vec![x.name.clone(), target.name], vec![], vec![x.shape[0], rest])
    }

    /// Reshape to the constant `shape` (`-1` for the rest), as an export of a fixed `view` writes it.
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let volume: usize = x.shape.iter().product();
        let known: usize = shape.iter().filter(|&&d| d > 0).map(|&d| d as usize).product();
        let out = shape.iter().map(|&d| if d > 0 { d as usize } else { volume / known.max(1) }).collect();
        let target = self.constant_i64("shape", &[shape.len()], shape);
        self.node("Reshape", vec![x.name.clone(), target], vec![], out)
    }

    /// Fully connected layer `x · Wᵀ + b` (Gemm with `transB = 1`, as torch exports it).
    pub fn dense(&mut self, x: &Value, out: usize) -> Value {
        let fan_in = x.shape[1];
        let w = self.rng.uniform_vec(out * fan_in, (6.0f32 / fan_in as f32).sqrt());
        let b = vec![0.0; out];
        let inputs = vec![x.name.clone(), self.initializer("fc_w", &[out, fan_in], &w), self.initializer("fc_b", &[out], &b)];
        self.node("Gemm", inputs, vec![attr_int("transB", 1)], vec![x.shape[0], out])
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: &Value) -> Value {
        self.node("Softmax", vec![x.name.clone()], vec![attr_int("axis", -1)], x.shape.clone())
    }

    /// Finishes the graph with `outputs` and returns the model.
    pub fn finish(self, outputs: &[&Value]) -> pb::ModelProto {
        let graph = pb::GraphProto {
            name: self.name.clone(),
            node: self.nodes,
            initializer: self.initializers,
            input: vec![value_info(&self.input)],
            output: outputs.iter().map(|v| value_info(v)).collect(),
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "scission".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}

/// Serialises a model to ONNX bytes.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
