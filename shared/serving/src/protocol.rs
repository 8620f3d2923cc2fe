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
    /// Row-major elements (flat or nested), absent when the data is binary. Only its form is
    /// kept here: the elements are read straight into the tensor by [`request_tensors`].
    #[serde(default)]
    pub data: Option<JsonData>,
}

/// What a request input's JSON `data` holds, as [`parse_request`] reads it: text (an encoded
/// image of a `BYTES` input, as a string or a one-string array) kept, anything else only noted.
/// Numbers are read once the input's type and shape are known, into the tensor directly (no
/// tree of JSON values: a 224x224 image's 150,528 numbers would take about 7 MB as one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonData {
    /// A string, or an array of one string.
    Text(String),
    /// Anything else (numbers, nested arrays, booleans), read later.
    Elements,
}

impl<'de> Deserialize<'de> for JsonData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(DataVisitor { top: true }, deserializer)
    }
}

/// Reads `data` as [`JsonData`]; `top` is false for the elements of its array (where only a
/// string itself is text).
struct DataVisitor {
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for DataVisitor {
    type Value = JsonData;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<JsonData, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DataVisitor {
    type Value = JsonData;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<JsonData, E> {
        Ok(JsonData::Text(text.to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonData, A::Error> {
        // [string] is text; anything else is skipped (its depth is checked when it is read).
        let first = if self.top { seq.next_element_seed(DataVisitor { top: false })? } else { None };
        let rest = seq.next_element::<serde::de::IgnoredAny>()?.is_some();
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        match first {
            Some(JsonData::Text(text)) if !rest => Ok(JsonData::Text(text)),
            _ => Ok(JsonData::Elements),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonData, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(JsonData::Elements)
    }

    fn visit_bool<E>(self, _: bool) -> Result<JsonData, E> {
        Ok(JsonData::Elements)
    }
    fn visit_i64<E>(self, _: i64) -> Result<JsonData, E> {
        Ok(JsonData::Elements)
    }
    fn visit_u64<E>(self, _: u64) -> Result<JsonData, E> {
        Ok(JsonData::Elements)
    }
    fn visit_f64<E>(self, _: f64) -> Result<JsonData, E> {
        Ok(JsonData::Elements)
    }
    fn visit_unit<E>(self) -> Result<JsonData, E> {
        Ok(JsonData::Elements)
    }
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
/// (encoded images) are handed back for the caller to decode. `json` is the text `request` was
/// parsed from: JSON elements are read from it into their tensors directly.
pub fn request_tensors<'a>(
    json: &[u8],
    request: &'a InferRequest,
    binary: &'a [u8],
    specs: &[InputSpec],
) -> Result<(Vec<Option<Tensor>>, Vec<EncodedImage<'a>>), ProtocolError> {
    let mut tensors: Vec<Option<Tensor>> = specs.iter().map(|_| None).collect();
    let mut images = Vec::new();
    let mut rest = binary;
    // The inputs (by position in the request) whose elements are in the JSON: read below.
    let mut from_json: Vec<Option<ElementsPlan>> = request.inputs.iter().map(|_| None).collect();
    for (position, input) in request.inputs.iter().enumerate() {
        let index = specs
            .iter()
            .position(|s| s.name == input.name)
            .ok_or_else(|| invalid!("the model has no input '{}' (it takes {})", input.name, names(specs)))?;
        if tensors[index].is_some()
            || images.iter().any(|i: &EncodedImage| i.index == index)
            || from_json.iter().flatten().any(|p| p.index == index)
        {
            return Err(invalid!("input '{}' is given twice", input.name));
        }
        let data = binary_part(input, &mut rest)?;
        if input.datatype == "BYTES" {
            images.push(EncodedImage { index, bytes: image_bytes(input, data)? });
            continue;
        }
        check_fact(input, &specs[index])?;
        match (data, &input.data) {
            (Some(bytes), _) => tensors[index] = Some(from_le_bytes(specs[index].datum_type, &specs[index].shape, bytes, &input.name)?),
            (None, Some(_)) => from_json[position] = Some(ElementsPlan { index, spec: specs[index].clone() }),
            (None, None) => return Err(invalid!("input '{}' has no data", input.name)),
        }
    }
    if !rest.is_empty() {
        return Err(invalid!("{} bytes of binary data follow the inputs that no input claims", rest.len()));
    }
    if from_json.iter().any(Option::is_some) {
        for (plan, tensor) in json_elements(json, &from_json)? {
            tensors[plan] = Some(tensor);
        }
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
        (None, Some(JsonData::Text(text))) => Ok(text.as_bytes()),
        (None, Some(JsonData::Elements)) => Err(invalid!("input '{}': BYTES data in JSON is one string", input.name)),
        (None, _) => Err(invalid!("input '{}' has no data", input.name)),
    }
}

/// Checks a request input's type and shape against what the model takes.
fn check_fact(input: &RequestInput, spec: &InputSpec) -> Result<(), ProtocolError> {
    let want = datatype_name(spec.datum_type).unwrap_or("an unsupported type");
    if input.datatype != want {
        return Err(invalid!("input '{}' takes {want}, the request gives {}", input.name, input.datatype));
    }
    let shape: Vec<usize> = input.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if shape != spec.shape {
        return Err(invalid!("input '{}' takes shape {:?}, the request gives {:?}", input.name, spec.shape, input.shape));
    }
    Ok(())
}

#[macro_use]
mod elements;
use elements::*;

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
        // The values become the tensor's buffer (no second copy).
        let array = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), values).map_err(|e| invalid!("input '{name}': {e}"))?;
        Ok(array.into_tensor())
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

    fn request(json: &str) -> (InferRequest, &str) {
        (parse_request(json.as_bytes()).unwrap(), json)
    }

    #[test]
    fn nested_and_flat_json_give_the_same_tensor() {
        let flat = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[1,2,3.5,4]}]}"#);
        let nested = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","data":[[[1,2],[3.5,4]]]}]}"#);
        let a = request_tensors(flat.1.as_bytes(), &flat.0, &[], &spec()).unwrap().0.remove(0).unwrap();
        let b = request_tensors(nested.1.as_bytes(), &nested.0, &[], &spec()).unwrap().0.remove(0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Tensor::from_shape(&[1, 2, 2], &[1f32, 2.0, 3.5, 4.0]).unwrap());
    }

    /// The tensor `request_tensors` reads for one input of `dt` and `shape` from `data`.
    fn read_one(dt: DatumType, shape: &[usize], datatype: &str, data: &str) -> Result<Tensor, ProtocolError> {
        let json =
            format!(r#"{{"id":"a","inputs":[{{"data":{data},"name":"x","shape":{shape:?},"datatype":"{datatype}"}}],"outputs":[]}}"#);
        let specs = [InputSpec { name: "x".into(), datum_type: dt, shape: shape.to_vec() }];
        let request = parse_request(json.as_bytes())?;
        Ok(request_tensors(json.as_bytes(), &request, &[], &specs)?.0.remove(0).unwrap())
    }

    #[test]
    fn json_elements_are_read_exactly_into_their_type() {
        // Integers beyond 2^53 stay exact (no detour through f64); `data` before `name` works.
        let big = read_one(DatumType::I64, &[3], "INT64", "[9007199254740993, -9223372036854775808, 7]").unwrap();
        assert_eq!(big, Tensor::from_shape(&[3], &[9_007_199_254_740_993i64, i64::MIN, 7]).unwrap());
        let unsigned = read_one(DatumType::U64, &[1], "UINT64", "[18446744073709551615]").unwrap();
        assert_eq!(unsigned, Tensor::from_shape(&[1], &[u64::MAX]).unwrap());
        let flags = read_one(DatumType::Bool, &[2], "BOOL", "[[true],[false]]").unwrap();
        assert_eq!(flags, Tensor::from_shape(&[2], &[true, false]).unwrap());
        let half = read_one(DatumType::F16, &[2], "FP16", "[0.5, 2]").unwrap();
        assert_eq!(half, Tensor::from_shape(&[2], &[f16::from_f32(0.5), f16::from_f32(2.0)]).unwrap());
        let refusals = [
            (DatumType::I32, "INT32", "[1.5, 2]", "element 0 (1.5) is not a I32"),
            (DatumType::U8, "UINT8", "[1, 256]", "element 1 (256) is not a U8"),
            (DatumType::U8, "UINT8", "[1, -1]", "element 1 (-1) is not a U8"),
            (DatumType::F32, "FP32", "[1, null]", "element 1 (null) is not a F32"),
            (DatumType::F32, "FP32", "[true, 1]", "element 0 (true) is not a F32"),
            (DatumType::F32, "FP32", "[1, {\"a\":1}]", "element 1 (an object) is not a F32"),
            (DatumType::F32, "FP32", "[1, 2, 3]", "more than the 2 elements"),
            (DatumType::F32, "FP32", "[[[[[[[[[[[[[[[[[[1, 2]]]]]]]]]]]]]]]]]]", "nested deeper than 16"),
        ];
        for (dt, name, data, expected) in refusals {
            let err = read_one(dt, &[2], name, data).unwrap_err();
            assert!(err.0.contains(expected), "{data}: {err}");
        }
    }

    #[test]
    fn data_is_text_only_as_a_string_or_an_array_of_one_string() {
        let form = |data: &str| serde_json::from_str::<JsonData>(data).unwrap();
        assert_eq!(form(r#""abc""#), JsonData::Text("abc".into()));
        assert_eq!(form(r#"["abc"]"#), JsonData::Text("abc".into()));
        for other in [r#"[["abc"]]"#, r#"["a", "b"]"#, "[1, 2]", "[]", "1", "null", "{}", "[[1], [2]]"] {
            assert_eq!(form(other), JsonData::Elements, "{other}");
        }
    }

    proptest::proptest! {
        /// JSON elements, flat or nested by the shape, read to the same tensor as the values.
        #[test]
        fn json_floats_read_to_the_tensor_of_their_values(values in proptest::collection::vec(-1e6f32..1e6, 6), nested: bool) {
            let data = if nested {
                serde_json::json!([[values[0], values[1], values[2]], [values[3], values[4], values[5]]])
            } else {
                serde_json::json!(values)
            };
            let read = read_one(DatumType::F32, &[2, 3], "FP32", &data.to_string()).unwrap();
            proptest::prop_assert_eq!(read, Tensor::from_shape(&[2, 3], &values).unwrap());
        }
    }

    #[test]
    fn binary_data_is_read_little_endian() {
        let r = request(r#"{"inputs":[{"name":"x","shape":[1,2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}]}"#);
        let bytes: Vec<u8> = [1f32, -2.0, 0.5, 8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = request_tensors(r.1.as_bytes(), &r.0, &bytes, &spec()).unwrap().0.remove(0).unwrap();
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
            let err = request_tensors(json.as_bytes(), &request(json).0, &[], &spec()).err().unwrap();
            assert!(err.0.contains(expected), "{json}: {err}");
        }
        assert!(parse_request(b"{not json").unwrap_err().0.contains("malformed"));
        // Dimensions whose product wraps to 1 are not one image.
        let wrapping = r#"{"inputs":[{"name":"x","shape":[3,-6148914691236517205],"datatype":"BYTES","data":["abc"]}]}"#;
        assert!(request_tensors(wrapping.as_bytes(), &request(wrapping).0, &[], &spec()).err().unwrap().0.contains("one encoded image"));
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
                let _ = request_tensors(json, &request, binary, &spec());
            }
        }
    }
}
