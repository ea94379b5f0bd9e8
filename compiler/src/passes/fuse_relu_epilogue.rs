//! Fuses a ReLU into the convolution it follows when the convolution has no other reader: the
//! conv applies `max(0, ·)` as it writes (after its bias), and the ReLU node disappears.
//!
//! Run after `fold_batch_norm` (so conv → bn → relu has become conv → relu). Must not touch a
//! ReLU whose input is read elsewhere, nor one after a batch norm (that is a prologue, see
//! `fuse_preactivation`).

use super::PassError;
use ir::{Graph, Op};

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut fused = 0;
    for relu_id in graph.topo_order().unwrap_or_default() {
        if graph.node(relu_id).op != Op::Relu {
            continue;
        }
        let [conv_id] = graph.operands(relu_id)[..] else {
            continue;
        };
        let Op::Conv2d(conv) = &graph.node(conv_id).op else {
            continue;
        };
        if conv.relu || graph.use_count(conv_id) != 1 || super::is_pinned(graph, conv_id) {
            continue;
        }
        if let Op::Conv2d(c) = &mut graph.node_mut(conv_id).op {
            c.relu = true;
        }
        graph.replace_all_uses(relu_id, conv_id);
        graph.remove(relu_id);
        fused += 1;
    }
    Ok(fused)
}
