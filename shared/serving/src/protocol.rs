//! The Open Inference Protocol (KServe v2 REST) as data: request and response bodies, tensor
//! data in JSON and in the binary-data extension, and the conversion to and from the engine's
//! tensors. No I/O: bytes in, tensors or a [`ProtocolError`] out.
//!
//! Reference: <https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/> and
//! Triton's binary tensor data extension (`Inference-Header-Content-Length`,
//! `binary_data_size`, `binary_data`, `binary_data_output`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use scission_engine::tract::prelude::*;

/// The header that says how long the JSON part of a binary-extension body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why a request could not be read (an HTTP 400 with the protocol's error object).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

macro_rules! invalid {
    ($($arg:tt)*) => { ProtocolError(format!($($arg)*)) };
}

/// `POST /v2/models/{name}/infer` body (the JSON part).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters (`binary_data_output`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// The input tensors.
    pub inputs: Vec<RequestInput>,
    /// Which outputs, and how (all, as JSON, when absent).
    #[serde(default)]
    pub outputs: Vec<RequestOutput>,
}

/// One input tensor of a request.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    /// The model input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its element type (`FP32`, `INT64`, `BYTES`, ...).
    pub datatype: String,
    /// Tensor parameters (`binary_data_size`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Row-major elements (flat or nested), absent when the data is binary.
    #[serde(default)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOutput {
    /// The model output's name.
    pub name: String,
    /// Output parameters (`binary_data`).
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// The response body (the JSON part).
#[derive(Clone, Debug, Serialize)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Response parameters (Scission's: the route, per-tier times).
    pub parameters: Map<String, Value>,
    /// The output tensors.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor of a response.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseOutput {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub datatype: &'static str,
    /// `binary_data_size` when the data follows the JSON.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    /// Row-major elements, when sent as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A model input or output as metadata shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datatype: String,
    /// Its shape.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its versions (one: its SHA-256 prefix).
    pub versions: Vec<String>,
    /// How it runs.
    pub platform: String,
    /// Its inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Its outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// The protocol's element type name for an engine type, when it has one.
pub fn datatype_name(dt: DatumType) -> Option<&'static str> {
    Some(match dt {
        DatumType::Bool => "BOOL",
        DatumType::U8 => "UINT8",
        DatumType::U16 => "UINT16",
        DatumType::U32 => "UINT32",
        DatumType::U64 => "UINT64",
        DatumType::I8 => "INT8",
        DatumType::I16 => "INT16",
        DatumType::I32 => "INT32",
        DatumType::I64 => "INT64",
        DatumType::F16 => "FP16",
        DatumType::F32 => "FP32",
        DatumType::F64 => "FP64",
        _ => return None,
    })
}

/// Splits a body into its JSON part and the binary part after it. `header_length` is the
/// `Inference-Header-Content-Length` value, when the request had one.
pub fn split_body<'a>(body: &'a [u8], header_length: Option<&str>) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    let Some(text) = header_length else { return Ok((body, &[])) };
    let length: usize = text.trim().parse().map_err(|_| invalid!("Inference-Header-Content-Length '{text}' is not a length"))?;
    if length > body.len() {
        return Err(invalid!("Inference-Header-Content-Length is {length}, but the body has only {} bytes", body.len()));
    }
    Ok(body.split_at(length))
}

/// Parses the JSON part of a request.
pub fn parse_request(json: &[u8]) -> Result<InferRequest, ProtocolError> {
    serde_json::from_slice(json).map_err(|e| invalid!("malformed inference request: {e}"))
}

/// What the model takes at one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub datum_type: DatumType,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// A request input the model takes as an encoded image (`BYTES`), to be decoded by the caller.
pub struct EncodedImage<'a> {
    /// Which model input it is for.
    pub index: usize,
    /// The encoded bytes.
    pub bytes: &'a [u8],
}

/// The request's tensors in model input order, each checked against `specs`; `BYTES` inputs
/// (encoded images) are handed back for the caller to decode.
pub fn request_tensors<'a>(
    request: &'a InferRequest,
    binary: &'a [u8],
    specs: &[InputSpec],
) -> Result<(Vec<Option<Tensor>>, Vec<EncodedImage<'a>>), ProtocolError> {
    let mut tensors: Vec<Option<Tensor>> = specs.iter().map(|_| None).collect();
    let mut images = Vec::new();
    let mut rest = binary;
    for input in &request.inputs {
        let index = specs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| invalid!("the model has no input '{}' (it takes {})", input.name, names(specs)))?;
        if tensors[index].is_some() || images.iter().any(|i: &EncodedImage| i.index == index) {
            return Err(invalid!("input '{}' is given twice", input.name));
        }
        let data = binary_part(input, &mut rest)?;
        if input.datatype == "BYTES" {
            images.push(EncodedImage { index, bytes: image_bytes(input, data)? });
            continue;
        }
        tensors[index] = Some(tensor_of(input, data, &specs[index])?);
    }
    if !rest.is_empty() {
        return Err(invalid!("{} bytes of binary data follow the inputs that no input claims", rest.len()));
    }
    for (index, spec) in specs.iter().enumerate() {
        if tensors[index].is_none() && !images.iter().any(|i| i.index == index) {
            return Err(invalid!("input '{}' is missing", spec.name));
        }
    }
    Ok((tensors, images))
}

fn names(specs: &[InputSpec]) -> String {
    specs.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ")
}

/// This input's share of the binary part, when it declares one (`binary_data_size`).
fn binary_part<'a>(input: &RequestInput, rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, ProtocolError> {
    let Some(size) = input.parameters.get("binary_data_size") else { return Ok(None) };
    let size = size
        .as_u64()
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| invalid!("input '{}': binary_data_size must be a byte count", input.name))?;
    if size > rest.len() {
        return Err(invalid!("input '{}' declares {size} bytes of binary data, but only {} are left", input.name, rest.len()));
    }
    let (mine, after) = rest.split_at(size);
    *rest = after;
    if input.data.is_some() {
        return Err(invalid!("input '{}' has both JSON data and binary_data_size", input.name));
    }
    Ok(Some(mine))
}

/// The encoded image of a `BYTES` input: one element, as binary (4-byte little-endian length
/// then the bytes) or as a JSON string.
fn image_bytes<'a>(input: &'a RequestInput, binary: Option<&'a [u8]>) -> Result<&'a [u8], ProtocolError> {
    // Every dimension 1 (a product of hostile dimensions could wrap to 1).
    if input.shape.is_empty() || input.shape.iter().any(|&d| d != 1) {
        return Err(invalid!("input '{}': a BYTES input holds one encoded image (shape [1]), not {:?}", input.name, input.shape));
    }
    match (binary, &input.data) {
        (Some(bytes), _) => {
            let (length, image) =
                bytes.split_at_checked(4).ok_or_else(|| invalid!("input '{}': BYTES data shorter than its length", input.name))?;
            let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]);
            if usize::try_from(length).ok() != Some(image.len()) {
                return Err(invalid!("input '{}': BYTES element says {length} bytes, {} follow", input.name, image.len()));
            }
            Ok(image)
        }
        (None, Some(Value::Array(items))) => match items.as_slice() {
            [Value::String(text)] => Ok(text.as_bytes()),
            _ => Err(invalid!("input '{}': BYTES data in JSON is one string", input.name)),
        },
        (None, Some(Value::String(text))) => Ok(text.as_bytes()),
        (None, _) => Err(invalid!("input '{}' has no data", input.name)),
    }
}

/// One input as the engine's tensor, checked against what the model takes.
fn tensor_of(input: &RequestInput, binary: Option<&[u8]>, spec: &InputSpec) -> Result<Tensor, ProtocolError> {
    let want = datatype_name(spec.datum_type).unwrap_or("an unsupported type");
    if input.datatype != want {
        return Err(invalid!("input '{}' takes {want}, the request gives {}", input.name, input.datatype));
    }
    let shape: Vec<usize> = input.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if shape != spec.shape {
        return Err(invalid!("input '{}' takes shape {:?}, the request gives {:?}", input.name, spec.shape, input.shape));
    }
    let elements: usize = spec.shape.iter().product();
    match (binary, &input.data) {
        (Some(bytes), _) => from_le_bytes(spec.datum_type, &spec.shape, bytes, &input.name),
        (None, Some(data)) => {
            let mut flat = Vec::new();
            flatten(data, &mut flat, elements, 0).map_err(|e| invalid!("input '{}': {e}", input.name))?;
            if flat.len() != elements {
                return Err(invalid!(
                    "input '{}' of shape {:?} needs {elements} elements, the data has {}",
                    input.name,
                    spec.shape,
                    flat.len()
                ));
            }
            from_json(spec.datum_type, &spec.shape, &flat, &input.name)
        }
        (None, None) => Err(invalid!("input '{}' has no data", input.name)),
    }
}

/// Deepest nesting of JSON arrays accepted in tensor data.
const MAX_DEPTH: usize = 16;

/// Collects the leaves of nested arrays, refusing more than `limit` of them.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>, limit: usize, depth: usize) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(format!("data nested deeper than {MAX_DEPTH} levels"));
            }
            items.iter().try_for_each(|item| flatten(item, out, limit, depth + 1))
        }
        leaf => {
            if out.len() >= limit {
                return Err(format!("more than the {limit} elements its shape holds"));
            }
            out.push(leaf);
            Ok(())
        }
    }
}

macro_rules! by_type {
    ($dt:expr, $name:expr, $mac:ident) => {
        match $dt {
            DatumType::Bool => $mac!(bool),
            DatumType::U8 => $mac!(u8),
            DatumType::U16 => $mac!(u16),
            DatumType::U32 => $mac!(u32),
            DatumType::U64 => $mac!(u64),
            DatumType::I8 => $mac!(i8),
            DatumType::I16 => $mac!(i16),
            DatumType::I32 => $mac!(i32),
            DatumType::I64 => $mac!(i64),
            DatumType::F16 => $mac!(f16),
            DatumType::F32 => $mac!(f32),
            DatumType::F64 => $mac!(f64),
            other => return Err(invalid!("'{}' has type {other:?}, which the protocol cannot carry", $name)),
        }
    };
}

/// An element that can come from a JSON leaf and go to little-endian bytes.
trait Element: Datum + Copy + Sized {
    const SIZE: usize;
    fn from_json(value: &Value) -> Option<Self>;
    fn from_le(bytes: &[u8]) -> Self;
    fn to_json(self) -> Value;
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! int_element {
    ($t:ty, $get:ident, $json:ident) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_json(value: &Value) -> Option<Self> {
                value.$get().and_then(|v| <$t>::try_from(v).ok())
            }
            fn from_le(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
            fn to_json(self) -> Value {
                Value::from(self as $json)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
int_element!(u8, as_u64, u64);
int_element!(u16, as_u64, u64);
int_element!(u32, as_u64, u64);
int_element!(u64, as_u64, u64);
int_element!(i8, as_i64, i64);
int_element!(i16, as_i64, i64);
int_element!(i32, as_i64, i64);
int_element!(i64, as_i64, i64);

impl Element for bool {
    const SIZE: usize = 1;
    fn from_json(value: &Value) -> Option<Self> {
        value.as_bool()
    }
    fn from_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
    fn to_json(self) -> Value {
        Value::from(self)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

macro_rules! float_element {
    ($t:ty, $n:expr, $to:expr, $from:expr) => {
        impl Element for $t {
            const SIZE: usize = $n;
            fn from_json(value: &Value) -> Option<Self> {
                value.as_f64().map($from)
            }
            fn from_le(bytes: &[u8]) -> Self {
                let mut raw = [0u8; $n];
                raw.copy_from_slice(bytes);
                <$t>::from_le_bytes(raw)
            }
            fn to_json(self) -> Value {
                // NaN and infinities have no JSON number: they become null.
                serde_json::Number::from_f64($to(self)).map_or(Value::Null, Value::Number)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
float_element!(f32, 4, f64::from, |v: f64| v as f32);
float_element!(f64, 8, |v: f64| v, |v: f64| v);
float_element!(f16, 2, f16::to_f64, f16::from_f64);

fn from_json(dt: DatumType, shape: &[usize], leaves: &[&Value], name: &str) -> Result<Tensor, ProtocolError> {
    fn typed<T: Element>(shape: &[usize], leaves: &[&Value], name: &str) -> Result<Tensor, ProtocolError> {
        let values: Vec<T> = leaves
            .iter()
            .enumerate()
            .map(|(i, v)| T::from_json(v).ok_or_else(|| invalid!("input '{name}': element {i} ({v}) is not a {:?}", T::datum_type())))
            .collect::<Result<_, _>>()?;
        Tensor::from_shape(shape, &values).map_err(|e| invalid!("input '{name}': {e}"))
    }
    macro_rules! go {
        ($t:ty) => {
            typed::<$t>(shape, leaves, name)
        };
    }
    by_type!(dt, name, go)
}

fn from_le_bytes(dt: DatumType, shape: &[usize], bytes: &[u8], name: &str) -> Result<Tensor, ProtocolError> {
    fn typed<T: Element>(shape: &[usize], bytes: &[u8], name: &str) -> Result<Tensor, ProtocolError> {
        let elements: usize = shape.iter().product();
        if elements.checked_mul(T::SIZE) != Some(bytes.len()) {
            return Err(invalid!(
                "input '{name}' of shape {shape:?} needs {elements} x {} bytes, the binary data has {}",
                T::SIZE,
                bytes.len()
            ));
        }
        let values: Vec<T> = bytes.chunks_exact(T::SIZE).map(T::from_le).collect();
        Tensor::from_shape(shape, &values).map_err(|e| invalid!("input '{name}': {e}"))
    }
    macro_rules! go {
        ($t:ty) => {
            typed::<$t>(shape, bytes, name)
        };
    }
    by_type!(dt, name, go)
}

/// Which outputs go as binary: all when the request says `binary_data_output`, else those
/// whose requested output says `binary_data`.
pub fn binary_outputs(request: &InferRequest) -> impl Fn(&str) -> bool + '_ {
    let all = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    move |name: &str| {
        all || request.outputs.iter().any(|o| o.name == name && o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(false))
    }
}

/// The outputs the request asks for (all when it names none); an unknown name is an error.
pub fn wanted_outputs(request: &InferRequest, names: &[String]) -> Result<Vec<usize>, ProtocolError> {
    if request.outputs.is_empty() {
        return Ok((0..names.len()).collect());
    }
    request
        .outputs
        .iter()
        .map(|o| names.iter().position(|n| *n == o.name).ok_or_else(|| invalid!("the model has no output '{}'", o.name)))
        .collect()
}

/// One output tensor for the response: as JSON, or appended to `binary` (little-endian).
pub fn response_output(name: &str, value: &Tensor, as_binary: bool, binary: &mut Vec<u8>) -> Result<ResponseOutput, ProtocolError> {
    fn typed<T: Element>(value: &Tensor, as_binary: bool, binary: &mut Vec<u8>, name: &str) -> Result<Option<Value>, ProtocolError> {
        let plain = value.try_as_plain_ram().map_err(|e| invalid!("output '{name}': {e}"))?;
        let items = plain.as_slice::<T>().map_err(|e| invalid!("output '{name}': {e}"))?;
        if as_binary {
            items.iter().for_each(|v| v.put_le(binary));
            return Ok(None);
        }
        Ok(Some(Value::Array(items.iter().map(|v| v.to_json()).collect())))
    }
    let datatype = datatype_name(value.datum_type()).ok_or_else(|| invalid!("output '{name}' has a type the protocol cannot carry"))?;
    let before = binary.len();
    macro_rules! go {
        ($t:ty) => {
            typed::<$t>(value, as_binary, binary, name)?
        };
    }
    let data = by_type!(value.datum_type(), name, go);
    let mut parameters = Map::new();
    if as_binary {
        parameters.insert("binary_data_size".into(), Value::from(binary.len().saturating_sub(before)));
    }
    Ok(ResponseOutput { name: name.to_string(), shape: value.shape().to_vec(), datatype, parameters, data })
}

/// The protocol's error object.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Vec<InputSpec> {
        vec![InputSpec { name: "x".into(), datum_type: DatumType::F32, shape: vec![1, 2, 2] }]
    }

    fn request(json: &str) -> InferRequest {
        parse_request(json.as_bytes()).unwrap()
    }

    #[test]
    fn nested_and_flat_json_give_the_same_tensor() {
        let flat = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,2,3.5,4]}]}"#);
        let nested = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[[[1,2],[3.5,4]]]}]}"#);
        let a = request_tensors(&flat, &[], &spec()).unwrap().0.remove(0).unwrap();
        let b = request_tensors(&nested, &[], &spec()).unwrap().0.remove(0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Tensor::from_shape(&[1, 2, 2], &[1f32, 2.0, 3.5, 4.0]).unwrap());
    }

    #[test]
    fn binary_data_is_read_little_endian() {
        let r = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#);
        let bytes: Vec<u8> = [1f32, -2.0, 0.5, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = request_tensors(&r, &bytes, &spec()).unwrap().0.remove(0).unwrap();
        assert_eq!(t, Tensor::from_shape(&[1, 2, 2], &[1f32, -2.0, 0.5, 8.0]).unwrap());
    }

    #[test]
    fn wrong_requests_are_named() {
        let cases = [
            (r#"{"inputs":[{"name":"y","shape":[1,2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#, "no input 'y'"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"INT64","data":[1,2,3,4]}]}"#, "takes FP32"),
            (r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#, "takes shape [1, 2, 2]"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,2,3]}]}"#, "needs 4 elements"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,2,3,4,5]}]}"#, "more than the 4"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,"a",3,4]}]}"#, "element 1"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32"}]}"#, "has no data"),
            (r#"{"inputs":[]}"#, "'x' is missing"),
            (r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","parameters":{"binary_data_size":99}}]}"#, "only 0 are left"),
        ];
        for (json, expected) in cases {
            let err = request_tensors(&request(json), &[], &spec()).err().unwrap();
            assert!(err.0.contains(expected), "{json}: {err}");
        }
        assert!(parse_request(b"{not json").unwrap_err().0.contains("malformed"));
        // Dimensions whose product wraps to 1 are not one image.
        let wrapping = r#"{"inputs":[{"name":"x","shape":[3,-6148914691236517205],"datatype":"BYTES","data":["abc"]}]}"#;
        assert!(request_tensors(&request(wrapping), &[], &spec()).err().unwrap().0.contains("one encoded image"));
        assert!(split_body(b"{}", Some("9")).unwrap_err().0.contains("only 2 bytes"));
    }

    #[test]
    fn outputs_round_trip_through_binary_and_json() {
        let t = Tensor::from_shape(&[1, 3], &[0.25f32, f32::NAN, -1.0]).unwrap();
        let mut binary = Vec::new();
        let json = response_output("y", &t, false, &mut binary).unwrap();
        assert_eq!(json.data, Some(serde_json::json!([0.25, null, -1.0])));
        let bin = response_output("y", &t, true, &mut binary).unwrap();
        assert_eq!(bin.parameters["binary_data_size"], 12);
        let back = from_le_bytes(DatumType::F32, &[1, 3], &binary, "y").unwrap();
        assert_eq!(back.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap()[0], 0.25);
    }

    proptest::proptest! {
        /// Whatever the bytes, reading a request ends in tensors or an error, never a panic.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256), cut in 0usize..300) {
            let length = cut.to_string();
            if let Ok((json, binary)) = split_body(&body, Some(&length))
                && let Ok(request) = parse_request(json)
            {
                let _ = request_tensors(&request, binary, &spec());
            }
        }
    }
}
