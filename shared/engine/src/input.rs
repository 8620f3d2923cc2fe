//! Deterministic synthetic inputs for benchmarks and checks.

use crate::error::{Result, bail};
use tract_core::prelude::*;

use super::ModelGraph;
use scission_core::rng::WeightRng;

/// One deterministic input tensor per graph input: uniform in [-1, 1) for floats, zeros for
/// integers and booleans.
pub fn synthetic_inputs(model: &ModelGraph, seed: u64) -> Result<TVec<TValue>> {
    let mut rng = WeightRng::new(seed);
    model
        .summary
        .inputs
        .iter()
        .map(|&t| {
            let (datum_type, shape) = model.tensor_fact(t)?;
            synthetic_tensor(&mut rng, datum_type, &shape, &model.summary.tensors[t].name)
        })
        .collect()
}

/// One deterministic tensor: uniform in [-1, 1) for floats, zeros for integers and booleans.
pub(crate) fn synthetic_tensor(rng: &mut WeightRng, datum_type: DatumType, shape: &[usize], name: &str) -> Result<TValue> {
    let tensor = if datum_type == DatumType::F32 {
        let values = rng.uniform_vec(shape.iter().product(), 1.0);
        Tensor::from_shape(shape, &values)?
    } else if datum_type.is_number() || datum_type == DatumType::Bool {
        Tensor::zero_dt(datum_type, shape)?
    } else {
        bail!("input '{name}' has type {datum_type:?}, which synthetic inputs do not support")
    };
    Ok(tensor.into_tvalue())
}

/// The element type and shape graph input `index` takes.
pub fn input_fact(model: &ModelGraph, index: usize) -> Result<(DatumType, Vec<usize>)> {
    let Some(&t) = model.summary.inputs.get(index) else { bail!("the model has no input {index}") };
    model.tensor_fact(t)
}

/// The element type and shape of graph output `index`.
pub fn output_fact(model: &ModelGraph, index: usize) -> Result<(DatumType, Vec<usize>)> {
    let Some(&t) = model.summary.outputs.get(index) else { bail!("the model has no output {index}") };
    model.tensor_fact(t)
}

/// Checks that `inputs` are exactly what the model takes: one per graph input, each of its
/// element type and shape. The error names the input and both sides.
pub fn check_inputs(model: &ModelGraph, inputs: &[TValue]) -> Result<()> {
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
