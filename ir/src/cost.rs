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

#[cfg(test)]
mod tests {
    use super::{graph_macs, node_flops, node_macs};
    use crate::{Access, Conv2d, Graph, Linear, Op, ParamKind, Pool, PoolKind, Span, TensorType};

    #[test]
    fn conv_linear_and_pool_costs() {
        let mut g = Graph::new("cost");
        let s = g.add_scope("s", Span::DUMMY);
        let x = g.add_input("x", TensorType::new(3, 8, 8), Span::DUMMY, s);
        let w = g
            .params
            .add("w".into(), vec![4, 3, 3, 3], ParamKind::Weight)
            .unwrap_or_else(|_| panic!("fresh name"));
        let conv = Op::Conv2d(Conv2d {
            out_channels: 4,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1],
            weight: w,
            bias: None,
            access: Access::PLAIN,
            relu: false,
        });
        let c = g.add(conv, &[x], Span::DUMMY, s).expect("conv types");
        let pool = Op::Pool(Pool {
            kind: PoolKind::Avg,
            global: false,
            kernel: [2, 2],
            stride: [2, 2],
            pad: [0, 0],
            access: Access::PLAIN,
        });
        let p = g.add(pool, &[c], Span::DUMMY, s).expect("pool types");
        let lw = g
            .params
            .add("lw".into(), vec![10, 4], ParamKind::Weight)
            .unwrap_or_else(|_| panic!("fresh name"));
        let lin = Op::Linear(Linear {
            out_features: 10,
            weight: lw,
            bias: None,
            access: Access::PLAIN,
            global_pool: true,
        });
        let l = g.add(lin, &[p], Span::DUMMY, s).expect("linear types");
        // conv: 4 * 8 * 8 outputs, 3 * 3 * 3 window.
        assert_eq!(node_macs(&g, c), 4 * 64 * 27);
        assert_eq!(node_flops(&g, c), 2 * 4 * 64 * 27);
        // pool: no MACs; one add per output element and window element.
        assert_eq!(node_macs(&g, p), 0);
        assert_eq!(node_flops(&g, p), 4 * 4 * 4 * 4);
        // linear: in * out (its global average counts nothing).
        assert_eq!(node_macs(&g, l), 40);
        assert_eq!(node_flops(&g, l), 80);
        assert_eq!(node_macs(&g, x), 0);
        assert_eq!(graph_macs(&g), 4 * 64 * 27 + 40);
    }
}
