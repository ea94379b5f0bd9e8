//! The memory plan of a graph at a batch size: every buffer's lifetime (from `liveness`) and
//! its offset in one arena (from `arena`), with the numbers a user needs to judge it: the arena
//! size, the lower bound (peak of aligned live bytes), their ratio, and what a naive executor
//! holds. Also the deterministic `--emit plan` text.
//!
//! Must not change the graph. Offsets are for the batch size given: a buffer of `B` bytes per
//! image takes `align(B * batch)` bytes.

use super::arena::{self, ArenaPlan, BufferRequest};
use super::liveness::{self, Liveness};
use ir::Graph;
use runtime::format::Element;
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub batch: u64,
    pub liveness: Liveness,
    pub arena: ArenaPlan,
    /// Every node's output its own buffer, all held at once.
    pub naive_bytes: u64,
}

impl MemoryPlan {
    pub fn ratio(&self) -> f64 {
        if self.arena.lower_bound_bytes == 0 {
            1.0
        } else {
            self.arena.arena_bytes as f64 / self.arena.lower_bound_bytes as f64
        }
    }
}

/// Requests for the arena planner: one per buffer, sized for `batch` images.
pub fn requests(liveness: &Liveness, batch: u64) -> Vec<BufferRequest> {
    liveness
        .buffers
        .iter()
        .map(|b| BufferRequest {
            size: b.bytes_per_image.saturating_mul(batch),
            first: b.first,
            last: b.last,
        })
        .collect()
}

/// Plans a graph's memory. `None` if the graph has a cycle (the verifier rejects those).
pub fn plan(graph: &Graph, batch: u64) -> Option<MemoryPlan> {
    let liveness = liveness::analyze(graph)?;
    let reqs = requests(&liveness, batch);
    let arena = arena::plan(&reqs);
    let naive_bytes = liveness
        .buffers
        .iter()
        .map(|b| b.bytes_per_image * batch)
        .sum();
    Some(MemoryPlan {
        batch,
        liveness,
        arena,
        naive_bytes,
    })
}

/// `plan` with each buffer stored as `elements[i]` (one per buffer, in the plan's order):
/// sizes recomputed from the element size, the arena placed again. The schedule and the
/// lifetimes are unchanged. `None` when `elements` does not have one entry per buffer.
pub fn with_elements(plan: &MemoryPlan, elements: &[Element]) -> Option<MemoryPlan> {
    if elements.len() != plan.liveness.buffers.len() {
        return None;
    }
    let mut liveness = plan.liveness.clone();
    for (b, &e) in liveness.buffers.iter_mut().zip(elements) {
        // Bytes per image of f32 over 4 is the value count (`liveness::analyze` makes every
        // buffer f32 first; a buffer already narrowed is converted the same way).
        let values = b.bytes_per_image / b.element.bytes();
        b.bytes_per_image = values * e.bytes();
        b.element = e;
    }
    let arena = arena::plan(&requests(&liveness, plan.batch));
    let naive_bytes = liveness
        .buffers
        .iter()
        .map(|b| b.bytes_per_image * plan.batch)
        .sum();
    Some(MemoryPlan {
        batch: plan.batch,
        liveness,
        arena,
        naive_bytes,
    })
}

/// The `--emit plan` text: a summary, then one line per buffer in schedule order.
pub fn print(graph: &Graph, plan: &MemoryPlan) -> String {
    let numbering = ir::print::Numbering::new(graph, &plan.liveness.schedule);
    let group = crate::numfmt::group;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan \"{}\" batch={} align={}",
        graph.name,
        plan.batch,
        arena::ALIGN
    );
    let _ = writeln!(
        out,
        "  schedule: {} steps (program order)",
        plan.liveness.steps()
    );
    out.push_str(
        "  nodes: numbered as in --emit opt-ir (the optimised graph), not as in --emit ir\n",
    );
    let _ = writeln!(out, "  buffers: {}", plan.liveness.buffers.len());
    let _ = writeln!(out, "  arena: {} bytes", group(plan.arena.arena_bytes));
    let _ = writeln!(
        out,
        "  lower bound: {} bytes (peak of aligned live bytes)",
        group(plan.arena.lower_bound_bytes)
    );
    let _ = writeln!(
        out,
        "  ratio: {:.4} (order: {})",
        plan.ratio(),
        plan.arena.strategy
    );
    let _ = writeln!(
        out,
        "  naive: {} bytes (every tensor its own buffer)",
        group(plan.naive_bytes)
    );
    out.push_str("  # buffer  node  type  bytes  offset  live-steps\n");
    for (i, b) in plan.liveness.buffers.iter().enumerate() {
        let pinned = if b.pinned { " pinned" } else { "" };
        let _ = writeln!(
            out,
            "  b{i} {} {}{} {} @{} [{}..{}]{pinned}",
            numbering.name(b.node),
            graph.node(b.node).ty,
            if b.element == Element::F32 {
                String::new()
            } else {
                format!(" {}", b.element)
            },
            b.bytes_per_image * plan.batch,
            plan.arena.offsets[i],
            b.first,
            b.last
        );
    }
    out
}
