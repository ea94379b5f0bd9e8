//! Schedule and liveness: the order nodes execute in, and every buffer's lifetime.
//!
//! The schedule is [`Graph::topo_order`]: Kahn's algorithm taking the lowest node index first,
//! which for a lowered model is program order (layer after layer, as the source reads). For a
//! SparseNet that order is already the one that frees skip tensors soonest: layer i's output
//! cannot die before layer i + 2^m reads it whatever the order, and program order never starts
//! a layer early. It is deterministic and is the same order the printer numbers nodes by.
//!
//! A buffer is one node's output tensor; `output` nodes alias their operand and get none. A
//! buffer lives from the step that defines it to the step of its last reader, inclusive. Graph
//! inputs and the tensors that graph outputs read are pinned: they live for the whole run, so a
//! caller can write the input before and read the output after. Must not assign offsets:
//! that is `arena`'s job.

use ir::{Graph, NodeId, Op};
use runtime::format::Element;
use std::fmt;

/// Index of a buffer in a [`Liveness`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub node: NodeId,
    /// Bytes per image: the tensor's values times the element's size.
    pub bytes_per_image: u64,
    /// F32 from [`analyze`]; a backend may store a buffer narrower and re-plan
    /// (`memory::with_elements`).
    pub element: Element,
    /// First and last schedule steps (inclusive) at which the buffer holds live data.
    pub first: u32,
    pub last: u32,
    pub pinned: bool,
}

#[derive(Clone, Debug)]
pub struct Liveness {
    /// Nodes in execution order.
    pub schedule: Vec<NodeId>,
    pub buffers: Vec<Buffer>,
    /// Buffer of each node, indexed by raw node index (`None` for outputs and removed nodes).
    pub buffer_of: Vec<Option<BufferId>>,
}

impl Liveness {
    pub fn buffer(&self, node: NodeId) -> Option<BufferId> {
        self.buffer_of.get(node.index()).copied().flatten()
    }

    /// Steps in the schedule.
    pub fn steps(&self) -> u32 {
        self.schedule.len() as u32
    }
}

/// Computes the schedule and every buffer's lifetime. `None` if the graph has a cycle.
pub fn analyze(graph: &Graph) -> Option<Liveness> {
    let schedule = graph.topo_order()?;
    let end = (schedule.len() as u32).saturating_sub(1);
    let mut step_of = vec![0u32; graph.index_bound()];
    for (s, n) in schedule.iter().enumerate() {
        step_of[n.index()] = s as u32;
    }
    let mut buffer_of = vec![None; graph.index_bound()];
    let mut buffers = Vec::new();
    for &n in &schedule {
        let node = graph.node(n);
        if matches!(node.op, Op::Output { .. }) {
            continue;
        }
        let first = step_of[n.index()];
        let users = graph.users(n);
        let feeds_output = users
            .iter()
            .any(|&u| matches!(graph.node(u).op, Op::Output { .. }));
        let pinned = matches!(node.op, Op::Input { .. }) || feeds_output;
        let last = if pinned {
            end
        } else {
            users
                .iter()
                .map(|u| step_of[u.index()])
                .max()
                .unwrap_or(first)
        };
        let first = if matches!(node.op, Op::Input { .. }) {
            0
        } else {
            first
        };
        buffer_of[n.index()] = Some(BufferId(buffers.len() as u32));
        buffers.push(Buffer {
            node: n,
            bytes_per_image: node.ty.bytes(),
            element: Element::F32,
            first,
            last,
            pinned,
        });
    }
    Some(Liveness {
        schedule,
        buffers,
        buffer_of,
    })
}

/// The most bytes live at any one step (per image, unaligned): what an executor that frees
/// every tensor after its last reader must hold at its peak.
pub fn peak_live_bytes(liveness: &Liveness) -> u64 {
    let steps = liveness.steps() as usize + 1;
    let mut delta = vec![0i128; steps + 1];
    for b in &liveness.buffers {
        delta[b.first as usize] += i128::from(b.bytes_per_image);
        delta[b.last as usize + 1] -= i128::from(b.bytes_per_image);
    }
    let mut live = 0i128;
    let mut peak = 0i128;
    for d in delta {
        live += d;
        peak = peak.max(live);
    }
    peak as u64
}
