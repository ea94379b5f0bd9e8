//! Folds a batch norm that directly follows a convolution into that convolution: weights
//! scaled per output channel, `bias = (bias - mean) * scale + beta`. In SparseNet this is the
//! bottleneck's conv1 → bn2.
//!
//! Works with or without bound weights (unbound in, unbound out). Only when the conv has no ReLU epilogue and the batch norm is
//! its only reader (another reader needs the un-normalised tensor). Must not touch a batch norm
//! that reads anything else: pre-activation BNs become reader prologues in
//! `fuse_preactivation`. The original parameters stay in the table, unreferenced; the folded
//! ones are derived tensors named `P.conv1.weight+bn2` and `P.conv1.bias+bn2`.

use super::{PassError, batch_norm_affine, module_name, to_f32};
use ir::{Graph, Op};

pub fn run(graph: &mut Graph) -> Result<usize, PassError> {
    let mut folded = 0;
    for bn_id in graph.topo_order().unwrap_or_default() {
        let Op::BatchNorm(bn) = &graph.node(bn_id).op else {
            continue;
        };
        let bn = bn.clone();
        let [conv_id] = graph.operands(bn_id)[..] else {
            continue;
        };
        let Op::Conv2d(conv) = &graph.node(conv_id).op else {
            continue;
        };
        if conv.relu || graph.use_count(conv_id) != 1 || super::is_pinned(graph, conv_id) {
            continue;
        }
        let conv = conv.clone();
        let folded_data = fold(graph, &conv, &bn);
        // `P.conv1.weight` folded with `P.bn2` is `P.conv1.weight+bn2`.
        let conv_module = module_name(graph, conv.weight);
        let bn_module = module_name(graph, bn.gamma);
        let parent = conv_module.rsplit_once('.').map_or("", |(p, _)| p);
        let bn_short = match bn_module
            .strip_prefix(parent)
            .and_then(|r| r.strip_prefix('.'))
        {
            Some(rest) if !parent.is_empty() => rest.to_string(),
            _ => bn_module.clone(),
        };
        let w_name = format!("{}+{bn_short}", graph.params.get(conv.weight).name);
        let b_name = format!("{conv_module}.bias+{bn_short}");
        let w_shape = graph.params.get(conv.weight).shape.clone();
        let out = w_shape[0];
        let (weight, bias) = folded_data.unzip();
        let new_w = graph.params.add_derived(&w_name, w_shape, weight);
        let new_b = graph.params.add_derived(&b_name, vec![out], bias);
        if let Op::Conv2d(c) = &mut graph.node_mut(conv_id).op {
            c.weight = new_w;
            c.bias = Some(new_b);
        }
        graph.replace_all_uses(bn_id, conv_id);
        graph.remove(bn_id);
        folded += 1;
    }
    Ok(folded)
}

/// The folded weights and bias, or `None` when any input parameter is unbound.
fn fold(graph: &Graph, conv: &ir::Conv2d, bn: &ir::BatchNorm) -> Option<(Vec<f32>, Vec<f32>)> {
    let (scale, _) = batch_norm_affine(graph, bn)?;
    let w = graph.params.data(conv.weight)?;
    let per_out = w.len() / scale.len().max(1);
    let weight: Vec<f64> = w
        .iter()
        .enumerate()
        .map(|(i, &x)| f64::from(x) * scale[i / per_out])
        .collect();
    let old_bias: Vec<f64> = match conv.bias {
        Some(b) => graph
            .params
            .data(b)?
            .iter()
            .map(|&x| f64::from(x))
            .collect(),
        None => vec![0.0; scale.len()],
    };
    let mean = graph.params.data(bn.mean)?;
    let beta = graph.params.data(bn.beta)?;
    // bn(conv(x) + b) = (conv(x) + b - mean) * s + beta = conv_s(x) + (b - mean) * s + beta
    let bias: Vec<f64> = (0..scale.len())
        .map(|o| (old_bias[o] - f64::from(mean[o])) * scale[o] + f64::from(beta[o]))
        .collect();
    Some((to_f32(&weight), to_f32(&bias)))
}
