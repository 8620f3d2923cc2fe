//! What every tier knows of a model, with or without the model file: [`ModelGraph`]; and how
//! a whole model is loaded ([`LoadOptions`], used by `load` where the engine reads ONNX).

use crate::error::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tract_core::prelude::DatumType;

use scission_core::cut::CutAnalysis;
use scission_core::graph::GraphSummary;

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Concrete shape per input, in model order. Needed when the model has symbolic dims
    /// (e.g. a dynamic batch); when empty, the shapes recorded in the model are used.
    pub input_shapes: Vec<Vec<usize>>,
}

/// What every tier knows of a model, whether it holds the whole model or only slices of it
/// (a slice artifact carries it): its name, hash, summary and crossing sets.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// Display name (file name).
    pub name: String,
    /// Hex SHA-256 of the ONNX bytes.
    pub sha256: String,
    /// Framework-neutral summary (what the core works on).
    pub summary: GraphSummary,
    /// Crossing sets of every position.
    pub cuts: CutAnalysis,
}

impl ModelGraph {
    /// Checks `summary` (it may come from a file) and computes its crossing sets.
    pub fn new(name: String, sha256: String, summary: GraphSummary) -> Result<Self> {
        summary.validate().with_context(|| format!("{name}: inconsistent graph"))?;
        scission_core::profile::parse_sha256(&sha256).with_context(|| format!("{name}: bad model hash"))?;
        let cuts = CutAnalysis::new(&summary);
        Ok(Self { name, sha256, summary, cuts })
    }

    /// The element type and shape of tensor `t`, from the summary.
    pub fn tensor_fact(&self, t: usize) -> Result<(DatumType, Vec<usize>)> {
        let Some(info) = self.summary.tensors.get(t) else { bail!("{}: no tensor {t}", self.name) };
        let datum_type =
            info.dtype.parse::<DatumType>().with_context(|| format!("tensor '{}' has unknown type {}", info.name, info.dtype))?;
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("tensor '{}' is too large", info.name))?;
        Ok((datum_type, shape))
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
