//! What each node costs, per image: multiply-accumulates (MACs) and floating-point operations
//! (FLOPs), by op kind, in one place for every stage that reports or weighs work (`sparsec
//! stats`, the backends' per-step costs, profiles, the peer benchmark).
//!
//! MACs follow the papers' convention: conv `Cout·Cin·kh·kw·Hout·Wout`, linear `in·out`; batch
//! norm, ReLU, pooling, concatenation and sums count nothing. FLOPs are what a kernel executes:
//! 2 per MAC for conv and linear, one add (or compare) per window element for pooling.
//!
//! Read-only over the graph; must not know about backends, plans or formatting.

use crate::{Graph, NodeId, Op};

/// Multiply-accumulates one node performs per image.
pub fn node_macs(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    match &node.op {
        Op::Conv2d(c) => {
            let cin = graph.params.get(c.weight).shape[1] as u64;
            let window = cin * u64::from(c.kernel[0]) * u64::from(c.kernel[1]);
            node.ty.elements().saturating_mul(window)
        }
        Op::Linear(l) => graph.params.get(l.weight).elements(),
        _ => 0,
    }
}

/// Floating-point operations one node performs per image: twice its MACs, or for a pool one
/// per output element and window element.
pub fn node_flops(graph: &Graph, id: NodeId) -> u64 {
    let node = graph.node(id);
    match &node.op {
        Op::Pool(p) => node.ty.elements() * u64::from(p.kernel[0]) * u64::from(p.kernel[1]),
        _ => 2 * node_macs(graph, id),
    }
}

/// Multiply-accumulates of the whole graph per image.
pub fn graph_macs(graph: &Graph) -> u64 {
    graph
        .node_ids()
        .map(|n| node_macs(graph, n))
        .fold(0, u64::saturating_add)
}
