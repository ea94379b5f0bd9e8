//! Transition reordering: a 1x1 convolution (stride 1, no padding, no ReLU epilogue) followed
//! by a non-overlapping average pool commutes with it, because both are linear per pixel:
//! `avgpool(W·p(x) + b) = W·avgpool(p(x)) + b` for the conv's prologue `p`. Pooling first does
//! the conv on a quarter of the pixels (4x fewer multiply-adds for a 2x2 pool).
//!
//! Float-level difference: the pooled sum is taken before the dot product instead of after,
//! so results differ by rounding only (relative 1e-7 in float32), never by more; the golden
//! tests bound it.
//!
//! Run after `fuse_preactivation` and `eliminate_concat`: the new pool takes over the conv's
//! operands, combine rule and prologue. Must not touch a conv with other readers or a ReLU
//! epilogue (ReLU does not commute with averaging), nor max pools or padded pools.

use super::PassError;
use ir::op::{Access, Pool, PoolKind};
use ir::{Graph, Op};

const PASS: &str = "pool-before-conv";

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut moved = 0;
    for pool_id in graph.topo_order().unwrap_or_default() {
        let Op::Pool(pool) = &graph.node(pool_id).op else {
            continue;
        };
        let plain = pool.access.prologue.is_none();
        if pool.kind != PoolKind::Avg
            || pool.global
            || pool.pad != [0, 0]
            || pool.kernel != pool.stride
            || !plain
        {
            continue;
        }
        let pool = pool.clone();
        let [conv_id] = graph.operands(pool_id)[..] else {
            continue;
        };
        let Op::Conv2d(conv) = &graph.node(conv_id).op else {
            continue;
        };
        let pointwise = conv.kernel == [1, 1] && conv.stride == [1, 1] && conv.pad == [0, 0];
        if !pointwise
            || conv.relu
            || graph.use_count(conv_id) != 1
            || super::is_pinned(graph, conv_id)
        {
            continue;
        }
        let mut conv = conv.clone();
        let sources = graph.operands(conv_id);
        let (span, scope) = (graph.node(pool_id).span, graph.node(pool_id).scope);
        let new_pool = Pool {
            access: conv.access,
            ..pool
        };
        let pooled = graph
            .add(Op::Pool(new_pool), &sources, span, scope)
            .map_err(|error| super::PassError::Shape { pass: PASS, error })?;
        conv.access = Access::PLAIN;
        let new_conv = graph
            .add(Op::Conv2d(conv), &[pooled], graph.node(conv_id).span, scope)
            .map_err(|error| super::PassError::Shape { pass: PASS, error })?;
        graph.replace_all_uses(pool_id, new_conv);
        graph.remove(pool_id);
        graph.remove(conv_id);
        moved += 1;
    }
    Ok(moved)
}
