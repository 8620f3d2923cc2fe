//! Turning a typed tract graph into a [`GraphSummary`]: compute nodes in evaluation
//! order, constants folded into their readers' weight bytes.

use std::collections::HashMap;

use crate::error::{Context, Result, bail};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;

use scission_core::graph::{GraphSummary, NodeInfo, TensorId, TensorInfo};

/// A summary plus the mapping back to the tract graph.
pub(crate) struct Summarised {
    pub summary: GraphSummary,
    /// Tensor id -> outlet.
    pub outlets: Vec<OutletId>,
    /// Position -> node id.
    pub node_ids: Vec<usize>,
}

fn fact_bytes(fact: &TypedFact) -> Option<(Vec<u64>, u64)> {
    let shape: Vec<u64> = fact.shape.as_concrete()?.iter().map(|&d| d as u64).collect();
    let elements: u64 = shape.iter().product();
    Some((shape, elements * fact.datum_type.size_of() as u64))
}

struct Builder<'a> {
    model: &'a TypedModel,
    summary: GraphSummary,
    outlets: Vec<OutletId>,
    ids: HashMap<OutletId, TensorId>,
}

impl Builder<'_> {
    fn add_tensor(&mut self, outlet: OutletId, producer: Option<usize>) -> Result<TensorId> {
        let node = self.model.node(outlet.node);
        let fact = self.model.outlet_fact(outlet)?;
        let Some((shape, bytes)) = fact_bytes(fact) else {
            bail!("node '{}' ({}) has an output of symbolic shape {:?}", node.name, node.op.name(), fact.shape)
        };
        let name = if outlet.slot == 0 { node.name.clone() } else { format!("{}.{}", node.name, outlet.slot) };
        let dtype = format!("{:?}", fact.datum_type);
        let id = self.summary.tensors.len();
        self.summary.tensors.push(TensorInfo { name, dtype, shape, bytes, producer, consumers: Vec::new() });
        self.outlets.push(outlet);
        self.ids.insert(outlet, id);
        Ok(id)
    }

    fn add_node(&mut self, node_id: usize) -> Result<()> {
        let node = self.model.node(node_id);
        let position = self.summary.nodes.len();
        let mut inputs = Vec::new();
        let mut weight_bytes = 0;
        for input in &node.inputs {
            if self.model.node(input.node).op_is::<Const>() {
                weight_bytes += fact_bytes(self.model.outlet_fact(*input)?).map_or(0, |(_, b)| b);
                continue;
            }
            let Some(&t) = self.ids.get(input) else { bail!("node '{}' reads {input:?}, which is not produced before it", node.name) };
            self.summary.tensors[t].consumers.push(position);
            inputs.push(t);
        }
        let outputs = (0..node.outputs.len())
            .map(|slot| self.add_tensor(OutletId::new(node_id, slot), Some(position)))
            .collect::<Result<Vec<_>>>()?;
        let op = node.op.name().to_string();
        self.summary.nodes.push(NodeInfo { name: node.name.clone(), op, inputs, outputs, weight_bytes });
        Ok(())
    }
}

/// Summarises a typed model with concrete shapes.
pub(crate) fn summarise(model: &TypedModel) -> Result<Summarised> {
    let mut b = Builder { model, summary: GraphSummary::default(), outlets: Vec::new(), ids: HashMap::new() };
    for &outlet in model.input_outlets()? {
        let t = b.add_tensor(outlet, None)?;
        b.summary.inputs.push(t);
    }
    let mut node_ids = Vec::new();
    for id in model.eval_order()? {
        let node = model.node(id);
        if node.op_is::<Const>() || node.op_is::<TypedSource>() {
            continue;
        }
        b.add_node(id)?;
        node_ids.push(id);
    }
    for outlet in model.output_outlets()? {
        let t = *b
            .ids
            .get(outlet)
            .with_context(|| format!("graph output '{}' is a constant, not computed from the input", model.node(outlet.node).name))?;
        b.summary.outputs.push(t);
    }
    Ok(Summarised { summary: b.summary, outlets: b.outlets, node_ids })
}
