//! Concat elimination: no concatenation is materialised. A reader op (conv, pool, linear) whose
//! operand is a `concat` reads the concat's pieces in place instead (access `concat`), and one
//! whose operand is an `add` sums the pieces as it loads them (access `sum`); its prologue,
//! if any, applies to the combined input as before. Nested concats are flattened.
//!
//! Run after `fuse_preactivation` (which leaves readers reading the concat directly). Must not
//! touch a concat read by anything but reader ops: that one stays (and is reported by the plan
//! as materialised).

use super::PassError;
use ir::op::Combine;
use ir::{Graph, NodeId, Op};

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut rewritten = 0;
    for reader in graph.topo_order().unwrap_or_default() {
        let Some(access) = graph.node(reader).op.access() else {
            continue;
        };
        let [input] = graph.operands(reader)[..] else {
            continue;
        };
        let combine = match graph.node(input).op {
            Op::Concat => Combine::Concat,
            Op::Add => Combine::Sum,
            _ => continue,
        };
        if access.combine != combine && graph.operands(reader).len() > 1 {
            continue;
        }
        let pieces = flatten(graph, input, combine);
        graph.set_operands(reader, &pieces);
        if let Some(a) = graph.node_mut(reader).op.access_mut() {
            a.combine = combine;
        }
        rewritten += 1;
    }
    Ok(rewritten)
}

/// The leaves of a tree of same-kind combine nodes, in order.
fn flatten(graph: &Graph, node: NodeId, combine: Combine) -> Vec<NodeId> {
    let same = |n: NodeId| {
        matches!(
            (&graph.node(n).op, combine),
            (Op::Concat, Combine::Concat) | (Op::Add, Combine::Sum)
        )
    };
    let mut out = Vec::new();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if same(n) {
            let ops = graph.operands(n);
            stack.extend(ops.into_iter().rev());
        } else {
            out.push(n);
        }
    }
    out
}
