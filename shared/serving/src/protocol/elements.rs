//! Tensor elements read from a request's JSON straight into typed buffers: a streaming
//! deserializer over the request's inputs, bounded in depth, with no intermediate JSON tree.

use super::*;

/// Deepest nesting of JSON arrays accepted in tensor data.
pub(super) const MAX_DEPTH: usize = 16;

/// A request input whose elements are read from the JSON: the model input it is, and its spec.
#[derive(Clone, Debug)]
pub(super) struct ElementsPlan {
    pub(super) index: usize,
    pub(super) spec: InputSpec,
}

/// Reads the JSON elements of the inputs `plans` names (by position in the request's `inputs`)
/// straight into tensors: (model input index, tensor) for each.
pub(super) fn json_elements(json: &[u8], plans: &[Option<ElementsPlan>]) -> Result<Vec<(usize, Tensor)>, ProtocolError> {
    use serde::de::DeserializeSeed;
    let mut reader = serde_json::Deserializer::from_slice(json);
    let mut failure = None;
    let read = RequestSeed { plans, failure: &mut failure }.deserialize(&mut reader);
    match (read, failure) {
        (_, Some(failure)) => Err(failure),
        (Ok(tensors), None) => Ok(tensors),
        (Err(e), None) => Err(invalid!("malformed inference request: {e}")),
    }
}

/// The request object: its `inputs` read with the plans, the rest skipped. A failure with a
/// message of its own (an element of the wrong type, too many elements) is left in `failure`.
pub(super) struct RequestSeed<'a> {
    plans: &'a [Option<ElementsPlan>],
    failure: &'a mut Option<ProtocolError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for RequestSeed<'_> {
    type Value = Vec<(usize, Tensor)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RequestSeed<'_> {
    type Value = Vec<(usize, Tensor)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an inference request")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tensors = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "inputs" {
                tensors = map.next_value_seed(InputsSeed { plans: self.plans, failure: &mut *self.failure })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(tensors)
    }
}

pub(super) struct InputsSeed<'a> {
    plans: &'a [Option<ElementsPlan>],
    failure: &'a mut Option<ProtocolError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for InputsSeed<'_> {
    type Value = Vec<(usize, Tensor)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for InputsSeed<'_> {
    type Value = Vec<(usize, Tensor)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the request's inputs")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tensors = Vec::new();
        let mut position = 0;
        loop {
            let plan = self.plans.get(position).and_then(Option::as_ref);
            match seq.next_element_seed(InputSeed { plan, failure: &mut *self.failure })? {
                Some(Some(tensor)) => tensors.push(tensor),
                Some(None) => {}
                None => return Ok(tensors),
            }
            position += 1;
        }
    }
}

/// One input object: its `data` read into a tensor when it has a plan.
pub(super) struct InputSeed<'a> {
    plan: Option<&'a ElementsPlan>,
    failure: &'a mut Option<ProtocolError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for InputSeed<'_> {
    type Value = Option<(usize, Tensor)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for InputSeed<'_> {
    type Value = Option<(usize, Tensor)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an input")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tensor = None;
        while let Some(key) = map.next_key::<String>()? {
            match (key.as_str(), self.plan) {
                ("data", Some(plan)) => {
                    tensor = Some((plan.index, map.next_value_seed(DataSeed { spec: &plan.spec, failure: &mut *self.failure })?));
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(tensor)
    }
}

/// An input's `data`: its elements, of the input's type, into a tensor of its shape.
pub(super) struct DataSeed<'a> {
    pub(super) spec: &'a InputSpec,
    failure: &'a mut Option<ProtocolError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Tensor;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Tensor, D::Error> {
        use serde::de::Error;
        fn typed<'de, T: Element, D: serde::Deserializer<'de>>(
            deserializer: D,
            spec: &InputSpec,
            failure: &mut Option<ProtocolError>,
        ) -> Result<Tensor, D::Error> {
            let elements: usize = spec.shape.iter().product();
            // Reserved as the shape says, but never more than the JSON could hold.
            let mut out: Vec<T> = Vec::with_capacity(elements.min(1 << 20));
            let leaves = Leaves { out: &mut out, limit: elements, depth: 0, name: &spec.name, failure: &mut *failure };
            serde::de::DeserializeSeed::deserialize(leaves, deserializer)?;
            if out.len() != elements {
                *failure =
                    Some(invalid!("input '{}' of shape {:?} needs {elements} elements, the data has {}", spec.name, spec.shape, out.len()));
                return Err(D::Error::custom("wrong element count"));
            }
            let array = tract_ndarray::ArrayD::from_shape_vec(spec.shape.clone(), out).map_err(|e| {
                *failure = Some(invalid!("input '{}': {e}", spec.name));
                D::Error::custom("wrong shape")
            })?;
            Ok(array.into_tensor())
        }
        macro_rules! go {
            ($t:ty) => {
                typed::<$t, D>(deserializer, self.spec, self.failure)
            };
        }
        let name = &self.spec.name;
        match self.spec.datum_type {
            DatumType::Bool => go!(bool),
            DatumType::U8 => go!(u8),
            DatumType::U16 => go!(u16),
            DatumType::U32 => go!(u32),
            DatumType::U64 => go!(u64),
            DatumType::I8 => go!(i8),
            DatumType::I16 => go!(i16),
            DatumType::I32 => go!(i32),
            DatumType::I64 => go!(i64),
            DatumType::F16 => go!(f16),
            DatumType::F32 => go!(f32),
            DatumType::F64 => go!(f64),
            other => {
                *self.failure = Some(invalid!("'{name}' has type {other:?}, which the protocol cannot carry"));
                Err(D::Error::custom("unsupported type"))
            }
        }
    }
}

/// The leaves of (nested) arrays, appended to `out`: at most `limit`, each a `T`.
pub(super) struct Leaves<'a, T> {
    out: &'a mut Vec<T>,
    limit: usize,
    depth: usize,
    pub(super) name: &'a str,
    failure: &'a mut Option<ProtocolError>,
}

impl<T: Element> Leaves<'_, T> {
    fn push<E: serde::de::Error>(self, value: Option<T>, shown: &dyn std::fmt::Display) -> Result<(), E> {
        let index = self.out.len();
        if index >= self.limit {
            *self.failure = Some(invalid!("input '{}': more than the {} elements its shape holds", self.name, self.limit));
            return Err(E::custom("too many elements"));
        }
        match value {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => {
                *self.failure = Some(invalid!("input '{}': element {index} ({shown}) is not a {:?}", self.name, T::datum_type()));
                Err(E::custom("wrong element"))
            }
        }
    }
}

impl<'de, T: Element> serde::de::DeserializeSeed<'de> for Leaves<'_, T> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> serde::de::Visitor<'de> for Leaves<'_, T> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:?} elements", T::datum_type())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let Leaves { out, limit, depth, name, failure } = self;
        if depth >= MAX_DEPTH {
            *failure = Some(invalid!("input '{name}': data nested deeper than {MAX_DEPTH} levels"));
            return Err(A::Error::custom("too deep"));
        }
        while seq.next_element_seed(Leaves { out: &mut *out, limit, depth: depth + 1, name, failure: &mut *failure })?.is_some() {}
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(T::from_f64(v), &v)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(T::from_i64(v), &v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(T::from_u64(v), &v)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(T::from_bool(v), &v)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(None, &format!("{v:?}"))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(None, &"null")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.push(None, &"an object")
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
pub(super) trait Element: Datum + Copy + Sized {
    const SIZE: usize;
    /// From a JSON number with a fraction or exponent (floats only).
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    /// From a negative JSON integer.
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    /// From a non-negative JSON integer.
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    /// From a JSON boolean.
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_le(bytes: &[u8]) -> Self;
    fn to_json(self) -> Value;
    fn put_le(self, out: &mut Vec<u8>);
}

macro_rules! int_element {
    ($t:ty, $json:ident) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn from_i64(v: i64) -> Option<Self> {
                <$t>::try_from(v).ok()
            }
            fn from_u64(v: u64) -> Option<Self> {
                <$t>::try_from(v).ok()
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
int_element!(u8, u64);
int_element!(u16, u64);
int_element!(u32, u64);
int_element!(u64, u64);
int_element!(i8, i64);
int_element!(i16, i64);
int_element!(i32, i64);
int_element!(i64, i64);

impl Element for bool {
    const SIZE: usize = 1;
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
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
            fn from_f64(v: f64) -> Option<Self> {
                Some($from(v))
            }
            fn from_i64(v: i64) -> Option<Self> {
                Some($from(v as f64))
            }
            fn from_u64(v: u64) -> Option<Self> {
                Some($from(v as f64))
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
