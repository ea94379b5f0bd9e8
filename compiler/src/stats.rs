//! What a graph costs: trainable parameters (as PyTorch's `model.parameters()` counts them),
//! multiply-accumulates per image (conv: Cout·Cin·kh·kw·Hout·Wout, linear: in·out; BN, ReLU and
//! pooling count nothing), convolution count, depth (weighted layers on the longest path), and
//! the activation memory a naive executor holds (every tensor its own buffer, concatenations
//! materialised), in total and per scope.
//!
//! Read-only over the IR. Used by the `stats` command and the CLI only: the per-node costs are
//! `ir::cost`'s, the number formatting `crate::numfmt`'s. The JSON keys of [`Stats`] are
//! documented in `docs/stats.md` and stable: add keys, never rename or remove them.

use ir::cost::node_macs;
use ir::{Graph, Op};
use serde::Serialize;

/// Re-exported for the CLI, which formats its own summaries with it.
pub use crate::numfmt::group;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub name: String,
    /// `[channels, height, width]` of the input.
    pub input: [u32; 3],
    /// `[channels, height, width]` of the output.
    pub output: [u32; 3],
    pub params: u64,
    pub macs_per_image: u64,
    pub convs: u64,
    pub depth: u64,
    /// The batch size the byte counts are for.
    pub batch: u64,
    pub naive_activation_bytes: u64,
    /// Multiply-accumulates per image of the optimised graph (transitions pool first).
    pub optimized_macs_per_image: u64,
    /// Peak live bytes of the unoptimised graph when every tensor is freed after its last
    /// reader but every concatenation, BN and ReLU output is materialised (a framework's floor).
    pub materialising_peak_bytes: u64,
    /// The planned arena of the optimised graph.
    pub arena_bytes: u64,
    /// Maximum over the schedule of the aligned bytes live at once in the optimised graph.
    pub lower_bound_bytes: u64,
    pub scopes: Vec<ScopeStats>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ScopeStats {
    pub name: String,
    pub params: u64,
    pub macs_per_image: u64,
    pub convs: u64,
    pub naive_activation_bytes: u64,
}

/// Costs of the unoptimised graph only (the memory-plan fields are left 0; see [`full`]).
pub fn stats(graph: &Graph, batch: u64) -> Stats {
    let order = graph
        .topo_order()
        .unwrap_or_else(|| graph.node_ids().collect());
    let mut scopes: Vec<ScopeStats> = graph
        .scopes()
        .map(|(_, s)| ScopeStats {
            name: s.name.clone(),
            params: 0,
            macs_per_image: 0,
            convs: 0,
            naive_activation_bytes: 0,
        })
        .collect();
    let mut depth = vec![0u64; graph.index_bound()];
    let mut max_depth = 0;
    for &id in &order {
        let node = graph.node(id);
        let s = &mut scopes[node.scope.index()];
        let weighted = matches!(node.op, Op::Conv2d(_) | Op::Linear(_));
        s.params = s.params.saturating_add(
            node.op
                .params()
                .iter()
                .map(|&p| graph.params.get(p))
                .filter(|p| p.kind.is_trainable())
                .map(|p| p.elements())
                .fold(0u64, u64::saturating_add),
        );
        s.macs_per_image = s.macs_per_image.saturating_add(node_macs(graph, id));
        s.convs += u64::from(matches!(node.op, Op::Conv2d(_)));
        if !matches!(node.op, Op::Output { .. }) {
            s.naive_activation_bytes = s
                .naive_activation_bytes
                .saturating_add(node.ty.bytes().saturating_mul(batch));
        }
        let d = graph
            .operands(id)
            .iter()
            .map(|o| depth[o.index()])
            .max()
            .unwrap_or(0)
            + u64::from(weighted);
        depth[id.index()] = d;
        max_depth = max_depth.max(d);
    }
    let sum = |f: fn(&ScopeStats) -> u64| scopes.iter().map(f).fold(0u64, u64::saturating_add);
    let dims = |id: Option<&ir::NodeId>| {
        id.map_or([0; 3], |&i| {
            let t = graph.node(i).ty;
            [t.channels, t.height, t.width]
        })
    };
    Stats {
        name: graph.name.clone(),
        input: dims(graph.inputs().first()),
        output: dims(graph.outputs().first()),
        params: sum(|s| s.params),
        macs_per_image: sum(|s| s.macs_per_image),
        convs: sum(|s| s.convs),
        depth: max_depth,
        batch,
        naive_activation_bytes: sum(|s| s.naive_activation_bytes),
        optimized_macs_per_image: 0,
        materialising_peak_bytes: 0,
        arena_bytes: 0,
        lower_bound_bytes: 0,
        scopes: scopes
            .into_iter()
            .filter(|s| s.params + s.macs_per_image + s.naive_activation_bytes > 0)
            .collect(),
    }
}

/// Costs of the graph plus those of its optimised form and memory plan. Optimising needs
/// no parameter data: derived parameters stay unbound.
pub fn full(graph: &Graph, batch: u64) -> Result<Stats, crate::driver::DriverError> {
    let mut s = stats(graph, batch);
    let opt = crate::driver::optimize(
        graph.clone(),
        &crate::driver::WeightsSource::None,
        batch,
        cfg!(debug_assertions),
    )?;
    s.optimized_macs_per_image = ir::cost::graph_macs(&opt.graph);
    s.materialising_peak_bytes = crate::driver::materialising_peak_bytes(graph, batch)?;
    s.arena_bytes = opt.plan.arena.arena_bytes;
    s.lower_bound_bytes = opt.plan.arena.lower_bound_bytes;
    Ok(s)
}

/// Human-readable table.
pub fn render(s: &Stats) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "model {}", s.name);
    let _ = writeln!(
        out,
        "  input                  [{}, {}, {}]",
        s.input[0], s.input[1], s.input[2]
    );
    let _ = writeln!(
        out,
        "  output                 [{}, {}, {}]",
        s.output[0], s.output[1], s.output[2]
    );
    let _ = writeln!(
        out,
        "  parameters             {} ({:.3}M)",
        group(s.params),
        s.params as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "  multiply-adds / image  {} ({:.3}G)",
        group(s.macs_per_image),
        s.macs_per_image as f64 / 1e9
    );
    let _ = writeln!(out, "  convolutions           {}", s.convs);
    let _ = writeln!(out, "  depth                  {}", s.depth);
    let _ = writeln!(
        out,
        "  naive activations      {} bytes at batch {}",
        group(s.naive_activation_bytes),
        s.batch
    );
    if s.arena_bytes > 0 {
        let saved =
            100.0 * (1.0 - s.optimized_macs_per_image as f64 / s.macs_per_image.max(1) as f64);
        let _ = writeln!(
            out,
            "  optimised MACs / image {} ({saved:.2}% fewer: transitions pool first)",
            group(s.optimized_macs_per_image)
        );
        let _ = writeln!(
            out,
            "  concat-materialising   {} bytes peak (a framework freeing after last use)",
            group(s.materialising_peak_bytes)
        );
        let _ = writeln!(
            out,
            "  lower bound            {} bytes (peak of aligned live bytes, optimised)",
            group(s.lower_bound_bytes)
        );
        let _ = writeln!(
            out,
            "  arena                  {} bytes ({:.4} x lower bound)",
            group(s.arena_bytes),
            s.arena_bytes as f64 / s.lower_bound_bytes.max(1) as f64
        );
    }
    let _ = writeln!(
        out,
        "\n  {:<14} {:>12} {:>16} {:>6} {:>16}",
        "scope", "params", "MACs/image", "convs", "naive bytes"
    );
    for sc in &s.scopes {
        let _ = writeln!(
            out,
            "  {:<14} {:>12} {:>16} {:>6} {:>16}",
            sc.name,
            group(sc.params),
            group(sc.macs_per_image),
            sc.convs,
            group(sc.naive_activation_bytes)
        );
    }
    out
}
