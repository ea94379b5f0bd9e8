//! Pre-activation fusion: a batch norm (optionally followed by a ReLU) that feeds a reader op
//! (conv, pool, linear) becomes that reader's input prologue: per input channel
//! `x * scale + shift`, then ReLU, applied as the reader loads its input. In SparseNet every
//! layer normalises the same stored tensors with its own BN parameters, so nothing normalised
//! is ever stored: the BN and ReLU nodes die once all their readers are rewritten. A ReLU that
//! follows no batch norm (a `relu()` after a block, a pool or the input) becomes the prologue
//! `x * 1 + 0`, then ReLU (exact), with the identity pair `SCOPE.relu.{scale,shift}`.
//!
//! Run after `fold_batch_norm` and `fuse_relu_epilogue`, before `eliminate_concat` (readers
//! must still have their single operand). Must not touch a reader that already has a prologue,
//! nor the batch norm itself (other readers, e.g. an output, keep reading it).

use super::{PassError, batch_norm_affine, module_name, to_f32};
use ir::op::Prologue;
use ir::{Graph, NodeId, Op, ParamId};
use std::collections::HashMap;

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut fused = 0;
    // One scale/shift pair per batch norm (or bare ReLU), shared by all its readers.
    let mut affine: HashMap<NodeId, (ParamId, ParamId)> = HashMap::new();
    for reader in graph.topo_order().unwrap_or_default() {
        let Some(access) = graph.node(reader).op.access() else {
            continue;
        };
        if access.prologue.is_some() {
            continue;
        }
        let [input] = graph.operands(reader)[..] else {
            continue;
        };
        let (bn_id, relu) = match &graph.node(input).op {
            Op::Relu => match graph.operands(input)[..] {
                [bn] if matches!(graph.node(bn).op, Op::BatchNorm(_)) => (bn, true),
                [_] => (input, true),
                _ => continue,
            },
            Op::BatchNorm(_) => (input, false),
            _ => continue,
        };
        let [source] = graph.operands(bn_id)[..] else {
            continue;
        };
        let (scale, shift) = match (affine.get(&bn_id), &graph.node(bn_id).op) {
            (Some(&pair), _) => pair,
            (None, Op::Relu) => {
                // A bare ReLU: the identity affine, whatever the weights.
                let node = graph.node(bn_id);
                let channels = node.ty.channels as usize;
                let name = format!("{}.relu", graph.scope(node.scope).name);
                let params = &mut graph.params;
                let scale = params.add_derived(
                    &format!("{name}.scale"),
                    vec![channels],
                    Some(vec![1.0; channels]),
                );
                let shift = params.add_derived(
                    &format!("{name}.shift"),
                    vec![channels],
                    Some(vec![0.0; channels]),
                );
                affine.insert(bn_id, (scale, shift));
                (scale, shift)
            }
            (None, Op::BatchNorm(bn)) => {
                let bn = bn.clone();
                let channels = graph.params.get(bn.gamma).shape.clone();
                let (s, t) = batch_norm_affine(graph, &bn)
                    .map(|(s, t)| (to_f32(&s), to_f32(&t)))
                    .unzip();
                let name = module_name(graph, bn.gamma);
                let params = &mut graph.params;
                let scale = params.add_derived(&format!("{name}.scale"), channels.clone(), s);
                let shift = params.add_derived(&format!("{name}.shift"), channels, t);
                affine.insert(bn_id, (scale, shift));
                (scale, shift)
            }
            (None, _) => continue,
        };
        if let Some(a) = graph.node_mut(reader).op.access_mut() {
            a.prologue = Some(Prologue { scale, shift, relu });
        }
        graph.set_operands(reader, &[source]);
        fused += 1;
    }
    Ok(fused)
}
