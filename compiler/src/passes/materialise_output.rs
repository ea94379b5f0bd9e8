//! Output materialisation: a graph output must be one contiguous NCHW tensor written by a
//! kernel step, so an output that reads a node no backend runs as a step (a `concat` or an
//! `add`: a feature extractor whose last stage is a block; a batch norm or ReLU after one; the
//! graph input itself) gets an explicit copy in between: an identity reader, the 1x1 average
//! pool with stride 1 and no padding (`x / 1` is exact). The passes after this one fuse into
//! it what they fuse into any reader: the batch norm and ReLU become its prologue
//! (`fuse_preactivation`), the concatenation or sum its pieces read in place
//! (`eliminate_concat`). So the copy is the only one in the model, one pass over the output,
//! and every backend and the interpreter run it as the pool they already implement.
//!
//! The alternative, placing a concatenation's pieces inside the output buffer so their
//! producers write there, was not taken: a buffer is `[batch, C, H, W]` at `offset * batch`,
//! so a piece inside the output is not contiguous across images (every kernel and CUDA
//! template would need an image stride), the arena would need sub-buffers, and it would not
//! serve a sum, a prologue or the graph input as a piece.
//!
//! Run after `fold_batch_norm` and `fuse_relu_epilogue` (a conv → bn → relu at the end is
//! folded into the conv first and needs no copy), before `fuse_preactivation` and
//! `eliminate_concat`. Must not touch an output that reads a reader op (conv, pool, linear):
//! that op already writes the output buffer.

use super::PassError;
use ir::op::{Access, Pool, PoolKind};
use ir::{Graph, Op};

/// The identity reader: a 1x1 average pool, stride 1, no padding, plain access.
fn identity() -> Op {
    Op::Pool(Pool {
        kind: PoolKind::Avg,
        global: false,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [0, 0],
        access: Access::PLAIN,
    })
}

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut inserted = 0;
    for output in graph.outputs().to_vec() {
        let [source] = graph.operands(output)[..] else {
            continue;
        };
        let node = graph.node(source);
        if node.op.access().is_some() {
            continue;
        }
        let (span, scope) = (node.span, node.scope);
        let copy = graph
            .add(identity(), &[source], span, scope)
            .map_err(|error| PassError::Shape {
                pass: "materialise-output",
                error,
            })?;
        graph.set_operands(output, &[copy]);
        inserted += 1;
    }
    Ok(inserted)
}
