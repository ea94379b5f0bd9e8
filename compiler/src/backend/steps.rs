//! The target-independent half of code generation: the optimised graph and its memory plan
//! as a list of steps, one per reader op (`conv2d`, pool, `linear`) in schedule order, each
//! with its combined input type, its output type, its input pieces and its output as plan
//! buffers (index, offset and size per image), its label and its cost. A backend turns each
//! step into a kernel call of its own (descriptor + CPU kernel, or a generated CUDA kernel).
//!
//! Must not change the graph or the plan, and knows nothing of any target's weight layout or
//! code.

use super::BackendError;
use crate::plan::memory::MemoryPlan;
use ir::op::Combine;
use ir::{Graph, NodeId, Op, TensorType};
use runtime::format::Element;

/// One activation buffer of the plan, as a step sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferUse {
    /// Index into the plan's buffers (and so into the manifest's).
    pub index: u32,
    /// Byte offset in the arena at batch 1 (scaled by the batch at run time).
    pub offset_per_image: u64,
    pub bytes_per_image: u64,
    /// F32 unless the backend re-planned with narrower buffers (`memory::with_elements`).
    pub element: Element,
}

/// One input piece: a buffer and how many channels it contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceUse {
    pub buffer: BufferUse,
    pub channels: u32,
}

/// One reader op as a kernel call.
#[derive(Clone, Debug)]
pub struct StepPlan<'g> {
    pub node: NodeId,
    /// The op: always `Conv2d`, `Pool` or `Linear`.
    pub op: &'g Op,
    /// The logical input after combining the pieces (channels summed for a concatenation).
    pub input: TensorType,
    pub output: TensorType,
    pub pieces: Vec<PieceUse>,
    pub out: BufferUse,
    /// `"%12 conv2d block1"`: node name, op, scope.
    pub label: String,
    /// Floating-point operations per image (2 per multiply-add; window size per pool output).
    pub flops_per_image: u64,
}

fn buffer(
    graph: &Graph,
    plan: &MemoryPlan,
    names: &ir::print::Numbering,
    node: NodeId,
) -> Result<BufferUse, BackendError> {
    let b = plan
        .liveness
        .buffer(node)
        .ok_or_else(|| BackendError::Unsupported {
            node: names.name(node),
            op: graph.node(node).op.mnemonic(),
            reason: "its value has no buffer".into(),
        })?;
    Ok(BufferUse {
        index: b.0,
        offset_per_image: plan.arena.offsets[b.0 as usize],
        bytes_per_image: plan.liveness.buffers[b.0 as usize].bytes_per_image,
        element: plan.liveness.buffers[b.0 as usize].element,
    })
}

/// The steps of an optimised, planned graph in schedule order. Inputs and outputs are no
/// steps; any other op left by the optimiser (batch norm, ReLU, concat, add) is an error.
pub fn analyze<'g>(graph: &'g Graph, plan: &MemoryPlan) -> Result<Vec<StepPlan<'g>>, BackendError> {
    let names = ir::print::Numbering::new(graph, &plan.liveness.schedule);
    let mut steps = Vec::new();
    for &id in &plan.liveness.schedule {
        let node = graph.node(id);
        match &node.op {
            Op::Input { .. } | Op::Output { .. } => continue,
            Op::Conv2d(_) | Op::Pool(_) | Op::Linear(_) => {}
            Op::BatchNorm(_) | Op::Relu | Op::Concat | Op::Add => {
                return Err(BackendError::Unsupported {
                    node: names.name(id),
                    op: node.op.mnemonic(),
                    reason: "the optimiser leaves no such node in a model it compiles; run the \
                             pass pipeline first"
                        .into(),
                });
            }
        }
        let operands = graph.operands(id);
        let types: Vec<TensorType> = operands.iter().map(|&o| graph.node(o).ty).collect();
        let rule = node.op.access().map_or(Combine::Concat, |a| a.combine);
        let input =
            ir::op::combine(rule, "reader", &types).map_err(|e| BackendError::Unsupported {
                node: names.name(id),
                op: node.op.mnemonic(),
                reason: e.to_string(),
            })?;
        let pieces = operands
            .iter()
            .zip(&types)
            .map(|(&o, t)| {
                Ok(PieceUse {
                    buffer: buffer(graph, plan, &names, o)?,
                    channels: t.channels,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        let flops_per_image = ir::cost::node_flops(graph, id);
        steps.push(StepPlan {
            node: id,
            op: &node.op,
            input,
            output: node.ty,
            pieces,
            out: buffer(graph, plan, &names, id)?,
            label: format!(
                "{} {} {}",
                names.name(id),
                node.op.mnemonic(),
                graph.scope(node.scope).name
            ),
            flops_per_image,
        });
    }
    Ok(steps)
}
