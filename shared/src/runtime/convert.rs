//! Between tract tensors and wire tensors. Incoming tensors are checked against the shape the
//! model expects for that tensor id, so a peer cannot feed a slice a wrongly shaped input.

use std::prelude::rust_2024::*;

use anyhow::{Context, Result, bail};
use tract_onnx::prelude::*;

use crate::engine::Model;
use crate::graph::TensorId;
use crate::solver::Encoding;
use crate::wire::message::NamedTensor;
use crate::wire::tensor::{Elements, TensorFrame, encode_f32};

/// A tensor ready to be framed: id, encoding, shape, payload.
pub struct Outgoing {
    /// Tensor id.
    pub id: u32,
    /// Element encoding.
    pub elements: Elements,
    /// Dimensions.
    pub shape: Vec<u32>,
    /// Payload bytes.
    pub data: Vec<u8>,
}

impl Outgoing {
    /// Encodes `value` (tensor `id`) for the wire with `encoding` (f32 tensors; others as is).
    pub fn encode(id: TensorId, value: &TValue, encoding: Encoding) -> Result<Self> {
        let shape = value.shape().iter().map(|&d| u32::try_from(d).context("dimension too large")).collect::<Result<Vec<_>>>()?;
        let id = u32::try_from(id).context("tensor id too large")?;
        let (elements, data) = match value.datum_type() {
            DatumType::F32 => encode_f32(value.try_as_plain_ram()?.as_slice::<f32>()?, encoding),
            DatumType::I64 => (Elements::I64, value.try_as_plain_ram()?.as_bytes().to_vec()),
            other => bail!("tensors of type {other:?} cannot be sent yet"),
        };
        Ok(Self { id, elements, shape, data })
    }

    /// Borrowed wire view.
    pub fn frame(&self) -> Result<NamedTensor<'_>> {
        let shape = self.shape.iter().copied().collect::<heapless::Vec<u32, { crate::wire::tensor::MAX_RANK }>>();
        if shape.len() != self.shape.len() {
            bail!("tensor {} has rank {}, more than the wire allows", self.id, self.shape.len());
        }
        Ok(NamedTensor { id: self.id, tensor: TensorFrame { elements: self.elements, shape, data: &self.data } })
    }
}

/// Decodes a wire tensor into tract, checking it against the model's fact for its id.
pub fn decode(model: &Model, named: &NamedTensor<'_>) -> Result<(TensorId, TValue)> {
    let id = named.id as usize;
    let info = model.summary.tensors.get(id).with_context(|| format!("tensor id {id} does not exist in the model"))?;
    let shape: Vec<usize> = named.tensor.shape.iter().map(|&d| d as usize).collect();
    let expected: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
    if shape != expected {
        bail!("tensor '{}' has shape {shape:?}, the model expects {expected:?}", info.name);
    }
    let tensor = match named.tensor.elements {
        Elements::I64 => {
            named.tensor.validate()?;
            let values: Vec<i64> =
                named.tensor.data.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
            Tensor::from_shape(&shape, &values)?
        }
        _ => Tensor::from_shape(&shape, &named.tensor.to_f32()?)?,
    };
    Ok((id, tensor.into_tvalue()))
}
