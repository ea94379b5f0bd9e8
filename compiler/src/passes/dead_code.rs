//! Dead-code elimination: removes every node that no graph output depends on (the batch norms,
//! ReLUs and concatenations that fusion left without readers).
//!
//! Run last. Must not remove graph inputs (a model keeps its input even if unused) or outputs.

use super::PassError;
use ir::Graph;

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut live = vec![false; graph.index_bound()];
    let mut stack: Vec<_> = graph.outputs().to_vec();
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut live[n.index()], true) {
            continue;
        }
        stack.extend(graph.operands(n));
    }
    let dead: Vec<_> = graph
        .node_ids()
        .filter(|n| !live[n.index()] && !graph.inputs().contains(n))
        .collect();
    for &n in &dead {
        graph.remove(n);
    }
    Ok(dead.len())
}
