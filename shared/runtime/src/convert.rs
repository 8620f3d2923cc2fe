//! Between tract tensors and wire tensors. Incoming tensors are checked against the shape the
//! model expects for that tensor id, so a peer cannot feed a slice a wrongly shaped input.

use crate::error::{Context, Result, bail};
use scission_engine::tract::prelude::*;

use scission_core::graph::TensorId;
use scission_core::solver::Encoding;
use scission_core::wire::message::{Body, NamedTensor, Stage, StageTiming, encode};
use scission_core::wire::tensor::{Elements, TensorFrame, encode_f32};
use scission_engine::ModelGraph;
use scission_engine::pipeline::Activations;

/// A tensor ready to be framed: id, encoding, shape, payload (borrowed from the tensor where its
/// memory is already the wire's bytes).
pub struct Outgoing<'a> {
    /// Tensor id.
    pub id: u32,
    /// Element encoding.
    pub elements: Elements,
    /// Dimensions.
    pub shape: Vec<u32>,
    /// Payload bytes.
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> Outgoing<'a> {
    /// Encodes `value` (tensor `id`) for the wire with `encoding` (f32 tensors; others as is).
    pub fn encode(id: TensorId, value: &'a TValue, encoding: Encoding) -> Result<Self> {
        let shape = value.shape().iter().map(|&d| u32::try_from(d).context("dimension too large")).collect::<Result<Vec<_>>>()?;
        let id = u32::try_from(id).context("tensor id too large")?;
        let (elements, data) = match value.datum_type() {
            DatumType::F32 => encode_f32(value.try_as_plain_ram()?.as_slice::<f32>()?, encoding),
            DatumType::I64 => (Elements::I64, value.try_as_plain_ram()?.as_bytes().to_vec().into()),
            other => bail!("tensors of type {other:?} cannot be sent yet"),
        };
        Ok(Self { id, elements, shape, data })
    }

    /// Borrowed wire view.
    pub fn frame(&self) -> Result<NamedTensor<'_>> {
        let shape = bounded::<u32, { scission_core::wire::tensor::MAX_RANK }>(self.shape.clone(), "dimensions")
            .with_context(|| format!("tensor {}", self.id))?;
        Ok(NamedTensor { id: self.id, tensor: TensorFrame { elements: self.elements, shape, data: &self.data } })
    }
}

/// Decodes a wire tensor into tract, checking it against the model's fact for its id.
pub fn decode(model: &ModelGraph, named: &NamedTensor<'_>) -> Result<(TensorId, TValue)> {
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
        Elements::F32 => {
            // Straight into the tensor's memory: one pass, no intermediate vector.
            named.tensor.validate()?;
            let mut tensor = Tensor::zero::<f32>(&shape)?;
            let mut plain = tensor.try_as_plain_ram_mut()?;
            for (value, bytes) in plain.as_slice_mut::<f32>()?.iter_mut().zip(named.tensor.data.chunks_exact(4)) {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            tensor
        }
        _ => Tensor::from_shape(&shape, &named.tensor.to_f32()?)?,
    };
    Ok((id, tensor.into_tvalue()))
}

/// Encodes a request for `stages` carrying `live`, to be answered within `deadline_ms` of its
/// arrival (0: no deadline).
pub fn infer_message(
    request: u64,
    model: [u8; 32],
    stages: &[Stage],
    encoding: Encoding,
    deadline_ms: u32,
    live: &Activations,
) -> Result<Vec<u8>> {
    let mut ids: Vec<_> = live.keys().copied().collect();
    ids.sort_unstable();
    let outgoing = ids.iter().map(|&id| Outgoing::encode(id, &live[&id], encoding)).collect::<Result<Vec<_>>>()?;
    let tensors = outgoing.iter().map(Outgoing::frame).collect::<Result<Vec<_>>>()?;
    let tensors = bounded(tensors, "tensors crossing a cut")?;
    let stages = bounded(stages.to_vec(), "stages in a route")?;
    Ok(encode(&Body::Infer { request, model, stages, encoding, tensors, deadline_ms })?)
}

/// Encodes the final outputs of request `request` (always f32: they are small, and the device
/// gets them exactly).
pub fn output_message(request: u64, outputs: &[(usize, TValue)], timings: &[StageTiming]) -> Result<Vec<u8>> {
    let outgoing = outputs.iter().map(|(id, v)| Outgoing::encode(*id, v, Encoding::F32)).collect::<Result<Vec<_>>>()?;
    let tensors = bounded(outgoing.iter().map(Outgoing::frame).collect::<Result<Vec<_>>>()?, "model outputs")?;
    let timings = bounded(timings.to_vec(), "stage timings")?;
    Ok(encode(&Body::Output { request, tensors, timings })?)
}

/// `items` in a bounded vector, or an error naming `what` when there are more than `N`.
pub fn bounded<T, const N: usize>(items: Vec<T>, what: &str) -> Result<heapless::Vec<T, N>> {
    let count = items.len();
    let mut out = heapless::Vec::new();
    for item in items {
        if out.push(item).is_err() {
            bail!("{count} {what}, more than the wire allows ({N})");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_items_than_the_wire_holds_are_an_error_not_a_panic() {
        // 17 crossing tensors used to panic in heapless' collect before the length check.
        let error = bounded::<u32, 16>((0..17).collect(), "tensors crossing a cut").unwrap_err();
        assert!(error.to_string().contains("17 tensors crossing a cut, more than the wire allows (16)"), "{error}");
        assert_eq!(bounded::<u32, 16>((0..16).collect(), "x").unwrap().len(), 16);
    }

    #[test]
    fn a_tensor_of_rank_nine_is_an_error_not_a_panic() {
        let value = Tensor::zero::<f32>(&[1; 9]).unwrap().into_tvalue();
        let outgoing = Outgoing::encode(0, &value, Encoding::F32).unwrap();
        let error = outgoing.frame().unwrap_err();
        assert!(format!("{error:#}").contains("dimensions"), "{error:#}");
    }
}
