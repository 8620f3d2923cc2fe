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
