//! Scopes for an imported graph. ONNX has no stages, so the names the `.snet` path gives
//! (`input`, `stem`, `blockN`, `transitionN`, `head`, `output`) are recovered from the graph's
//! structure, in program order:
//!
//! - `stem`: every node up to and including the first one an aggregation (`concat`/`add`)
//!   reads (the first block's input);
//! - `head`: every node after the last aggregation;
//! - in between, a windowed pool ends a `transitionN`, which starts right after the last
//!   aggregation before it; the nodes between transitions are `blockN`.
//!
//! A graph without aggregations is one `layers` scope. Scopes are labels only (step labels,
//! `--emit ir` comments, profile groups): they never change what a node computes.
//!
//! Owns only the assignment of scopes; must not add, remove or change any node's op.

use ir::{Graph, NodeId, Op, Span};

/// Assigns every node of `graph` its structural scope. The graph was built with every node in
/// its first scope, `input`, which keeps the input nodes.
pub fn assign(graph: &mut Graph) {
    let Some(order) = graph.topo_order() else {
        return;
    };
    let body: Vec<NodeId> = order
        .into_iter()
        .filter(|&id| !matches!(graph.node(id).op, Op::Input { .. } | Op::Output { .. }))
        .collect();
    let is_agg = |g: &Graph, id: NodeId| matches!(g.node(id).op, Op::Concat | Op::Add);
    let aggs: Vec<usize> = (0..body.len())
        .filter(|&i| is_agg(graph, body[i]))
        .collect();
    let mut names: Vec<String> = vec![String::new(); body.len()];
    match (aggs.first(), aggs.last()) {
        (Some(&first_agg), Some(&last_agg)) => {
            // The first node (in order) that an aggregation reads: the first block's input.
            let mut fed = vec![false; graph.index_bound()];
            for &i in &aggs {
                for o in graph.operands(body[i]) {
                    fed[o.index()] = true;
                }
            }
            let stem_end = body.iter().position(|id| fed[id.index()]);
            let stem_end = stem_end.filter(|&p| p < first_agg);
            let block_start = stem_end.map_or(0, |p| {
                for n in names.iter_mut().take(p + 1) {
                    *n = "stem".into();
                }
                p + 1
            });
            let (mut block, mut start, mut last_agg_seen) = (0, block_start, None);
            for i in block_start..=last_agg {
                let node = graph.node(body[i]);
                if is_agg(graph, body[i]) {
                    last_agg_seen = Some(i);
                }
                let windowed_pool = matches!(&node.op, Op::Pool(p) if !p.global);
                if windowed_pool && let Some(a) = last_agg_seen.filter(|&a| a >= start) {
                    for n in &mut names[start..=a] {
                        *n = format!("block{block}");
                    }
                    for n in &mut names[a + 1..=i] {
                        *n = format!("transition{block}");
                    }
                    block += 1;
                    start = i + 1;
                }
            }
            for n in names.iter_mut().take(last_agg + 1).skip(start) {
                *n = format!("block{block}");
            }
            for n in names.iter_mut().skip(last_agg + 1) {
                *n = "head".into();
            }
        }
        _ => names.iter_mut().for_each(|n| *n = "layers".into()),
    }
    // Scopes in first-use order, as the `.snet` lowering creates them stage by stage.
    let mut made: Vec<(String, ir::ScopeId)> = Vec::new();
    for (&id, name) in body.iter().zip(&names) {
        let scope = match made.iter().find(|(n, _)| n == name) {
            Some(&(_, s)) => s,
            None => {
                let s = graph.add_scope(name.clone(), Span::default());
                made.push((name.clone(), s));
                s
            }
        };
        graph.node_mut(id).scope = scope;
    }
    let output_scope = graph.add_scope("output", Span::default());
    for id in graph.outputs().to_vec() {
        graph.node_mut(id).scope = output_scope;
    }
}
