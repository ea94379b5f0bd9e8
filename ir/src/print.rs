//! The canonical text form of a graph: the project's test API (snapshotted with insta) and what
//! `sparsec --emit ir` / `--emit opt-ir` print.
//!
//! Deterministic by construction: nodes are numbered `%0, %1, ...` in [`Graph::topo_order`],
//! parameters are printed by name, floats with Rust's shortest round-trip form, and nothing
//! depends on hash order or addresses. A `# scope` comment opens each run of nodes of a scope.

use crate::op::{Access, Combine};
use crate::{Graph, NodeId, Op, ParamId, TensorType};
use std::fmt::Write;

/// Canonical numbering: raw node index → printed number.
pub struct Numbering {
    number: Vec<u32>,
}

impl Numbering {
    pub fn new(graph: &Graph, order: &[NodeId]) -> Numbering {
        let mut number = vec![u32::MAX; graph.index_bound()];
        for (i, n) in order.iter().enumerate() {
            number[n.index()] = i as u32;
        }
        Numbering { number }
    }

    /// `%n` of a node, or `%?raw` for one outside the order (only in broken graphs).
    pub fn name(&self, id: NodeId) -> String {
        match self.number.get(id.index()) {
            Some(&n) if n != u32::MAX => format!("%{n}"),
            _ => format!("%?{}", id.index()),
        }
    }
}

/// Prints the whole graph. A graph with a cycle prints in raw index order with a note.
pub fn print(graph: &Graph) -> String {
    let (order, cyclic) = match graph.topo_order() {
        Some(o) => (o, false),
        None => (graph.node_ids().collect(), true),
    };
    let numbering = Numbering::new(graph, &order);
    let mut out = String::with_capacity(order.len() * 96);
    let _ = writeln!(out, "graph \"{}\" {{", graph.name);
    if cyclic {
        out.push_str("  # error: the graph has a cycle; raw order\n");
    }
    let mut scope = None;
    for &id in &order {
        let node = graph.node(id);
        if scope != Some(node.scope) {
            scope = Some(node.scope);
            let _ = writeln!(out, "  # {}", graph.scope(node.scope).name);
        }
        out.push_str("  ");
        out.push_str(&node_line(graph, &numbering, id));
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// One node as `%n = op operands attrs : type`, without indentation or newline.
pub fn node_line(graph: &Graph, numbering: &Numbering, id: NodeId) -> String {
    let node = graph.node(id);
    let operands = graph.operands(id);
    let p = |id: ParamId| format!("@{}", graph.params.get(id).name);
    let mut s = format!("{} = {}", numbering.name(id), node.op.mnemonic());
    let list = |s: &mut String, access: Option<&Access>| {
        let names: Vec<String> = operands.iter().map(|&o| numbering.name(o)).collect();
        let rule = match access.map(|a| a.combine) {
            Some(Combine::Sum) if names.len() > 1 => "sum",
            _ => "",
        };
        if names.len() == 1 && rule.is_empty() {
            let _ = write!(s, " {}", names[0]);
        } else {
            let _ = write!(s, " {rule}[{}]", names.join(", "));
        }
        if let Some(pro) = access.and_then(|a| a.prologue) {
            let relu = if pro.relu { ", relu" } else { "" };
            let scale = &graph.params.get(pro.scale).name;
            let shift = &graph.params.get(pro.shift).name;
            match (scale.strip_suffix(".scale"), shift.strip_suffix(".shift")) {
                // A folded batch norm `P`: print its module once.
                (Some(a), Some(b)) if a == b => {
                    let _ = write!(s, " pre(@{a}.{{scale,shift}}{relu})");
                }
                _ => {
                    let _ = write!(
                        s,
                        " pre(scale={}, shift={}{relu})",
                        p(pro.scale),
                        p(pro.shift)
                    );
                }
            }
        }
    };
    match &node.op {
        Op::Input { name } => {
            let _ = write!(s, " \"{name}\"");
        }
        Op::Output { name } => {
            let _ = write!(s, " \"{name}\"");
            list(&mut s, None);
        }
        Op::Relu | Op::Concat | Op::Add => list(&mut s, None),
        Op::BatchNorm(b) => {
            list(&mut s, None);
            let names =
                [b.gamma, b.beta, b.mean, b.var].map(|id| graph.params.get(id).name.as_str());
            let leaves = [".weight", ".bias", ".running_mean", ".running_var"];
            let prefix = names[0].strip_suffix(leaves[0]).unwrap_or("");
            let _ = write!(s, " eps={:?}", b.eps);
            if !prefix.is_empty()
                && names
                    .iter()
                    .zip(leaves)
                    .all(|(n, l)| *n == format!("{prefix}{l}"))
            {
                // The PyTorch layout: print the module once.
                let _ = write!(
                    s,
                    " params=@{prefix}.{{weight,bias,running_mean,running_var}}"
                );
            } else {
                let _ = write!(
                    s,
                    " gamma={} beta={} mean={} var={}",
                    p(b.gamma),
                    p(b.beta),
                    p(b.mean),
                    p(b.var)
                );
            }
        }
        Op::Conv2d(c) => {
            list(&mut s, Some(&c.access));
            let _ = write!(
                s,
                " out={} kernel={} stride={} pad={} weight={}",
                c.out_channels,
                pair(c.kernel, 'x'),
                pair(c.stride, ','),
                pair(c.pad, ','),
                p(c.weight)
            );
            if let Some(b) = c.bias {
                let _ = write!(s, " bias={}", p(b));
            }
            if c.relu {
                s.push_str(" relu");
            }
        }
        Op::Pool(pool) => {
            list(&mut s, Some(&pool.access));
            if !pool.global {
                let _ = write!(
                    s,
                    " kernel={} stride={} pad={}",
                    pair(pool.kernel, 'x'),
                    pair(pool.stride, ','),
                    pair(pool.pad, ',')
                );
            }
        }
        Op::Linear(l) => {
            list(&mut s, Some(&l.access));
            if l.global_pool {
                s.push_str(" global_pool");
            }
            let _ = write!(s, " out={} weight={}", l.out_features, p(l.weight));
            if let Some(b) = l.bias {
                let _ = write!(s, " bias={}", p(b));
            }
        }
    }
    let _ = write!(s, " : {}", node.ty);
    s
}

/// `3x3` for a square kernel written with `x`, `1` for equal stride/pad, else both values.
fn pair(v: [u32; 2], sep: char) -> String {
    if v[0] == v[1] && sep != 'x' {
        v[0].to_string()
    } else {
        format!("{}{sep}{}", v[0], v[1])
    }
}

/// Prints a tensor type (re-exported for other printers).
pub fn ty(t: TensorType) -> String {
    t.to_string()
}
