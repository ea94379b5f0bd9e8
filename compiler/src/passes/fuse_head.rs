//! Head fusion: a global average pool (or an average pool whose window is its whole input)
//! feeding a linear layer becomes one `linear ... global_pool` op that averages while it reads,
//! taking over the pool's operands, combine rule and BN-ReLU prologue. Together with
//! `fuse_preactivation` and `eliminate_concat` the whole BN-ReLU-pool-linear head is one op
//! reading the last block's pieces in place.
//!
//! Run after `eliminate_concat`. Must not touch a pool with other readers or a linear layer
//! that already has a prologue or several operands.

use super::PassError;
use ir::op::{Access, PoolKind};
use ir::{Graph, Op};

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut fused = 0;
    for linear_id in graph.topo_order().unwrap_or_default() {
        let Op::Linear(linear) = &graph.node(linear_id).op else {
            continue;
        };
        if linear.global_pool || linear.access != Access::PLAIN {
            continue;
        }
        let [pool_id] = graph.operands(linear_id)[..] else {
            continue;
        };
        let Op::Pool(pool) = &graph.node(pool_id).op else {
            continue;
        };
        let sources = graph.operands(pool_id);
        let Some(&first) = sources.first() else {
            continue;
        };
        let input = graph.node(first).ty;
        let whole =
            pool.global || (pool.pad == [0, 0] && pool.kernel == [input.height, input.width]);
        if pool.kind != PoolKind::Avg
            || !whole
            || graph.use_count(pool_id) != 1
            || super::is_pinned(graph, pool_id)
        {
            continue;
        }
        let access = pool.access;
        if let Op::Linear(l) = &mut graph.node_mut(linear_id).op {
            l.global_pool = true;
            l.access = access;
        }
        graph.set_operands(linear_id, &sources);
        graph.remove(pool_id);
        fused += 1;
    }
    Ok(fused)
}
