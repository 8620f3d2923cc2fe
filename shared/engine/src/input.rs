//! Deterministic synthetic inputs for benchmarks and checks.

use crate::error::{Result, bail};
use tract_onnx::prelude::*;

use super::Model;
use scission_core::rng::WeightRng;

/// One deterministic input tensor per graph input: uniform in [-1, 1) for floats, zeros for
/// integers and booleans.
pub fn synthetic_inputs(model: &Model, seed: u64) -> Result<TVec<TValue>> {
    let mut rng = WeightRng::new(seed);
    model
        .summary
        .inputs
        .iter()
        .map(|&t| {
            let info = &model.summary.tensors[t];
            let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
            let fact = model.typed.outlet_fact(model.outlets[t])?;
            let tensor = if fact.datum_type == DatumType::F32 {
                let values = rng.uniform_vec(shape.iter().product(), 1.0);
                Tensor::from_shape(&shape, &values)?
            } else if fact.datum_type.is_number() || fact.datum_type == DatumType::Bool {
                Tensor::zero_dt(fact.datum_type, &shape)?
            } else {
                bail!("input '{}' has type {:?}, which synthetic inputs do not support", info.name, fact.datum_type)
            };
            Ok(tensor.into_tvalue())
        })
        .collect()
}

/// The element type and shape graph input `index` takes.
pub fn input_fact(model: &Model, index: usize) -> Result<(DatumType, Vec<usize>)> {
    let Some(&t) = model.summary.inputs.get(index) else { bail!("the model has no input {index}") };
    tensor_fact(model, t)
}

/// The element type and shape of graph output `index`.
pub fn output_fact(model: &Model, index: usize) -> Result<(DatumType, Vec<usize>)> {
    let Some(&t) = model.summary.outputs.get(index) else { bail!("the model has no output {index}") };
    tensor_fact(model, t)
}

fn tensor_fact(model: &Model, t: usize) -> Result<(DatumType, Vec<usize>)> {
    let fact = model.typed.outlet_fact(model.outlets[t])?;
    Ok((fact.datum_type, model.summary.tensors[t].shape.iter().map(|&d| d as usize).collect()))
}

/// Checks that `inputs` are exactly what the model takes: one per graph input, each of its
/// element type and shape. The error names the input and both sides.
pub fn check_inputs(model: &Model, inputs: &[TValue]) -> Result<()> {
    let expected = model.summary.inputs.len();
    if inputs.len() != expected {
        bail!("the model takes {expected} input(s), got {}", inputs.len());
    }
    for (index, value) in inputs.iter().enumerate() {
        let (datum_type, shape) = input_fact(model, index)?;
        if value.datum_type() != datum_type || value.shape() != shape.as_slice() {
            let name = &model.summary.tensors[model.summary.inputs[index]].name;
            bail!("input '{name}' takes {datum_type:?} of shape {shape:?}, got {:?} of shape {:?}", value.datum_type(), value.shape());
        }
    }
    Ok(())
}
