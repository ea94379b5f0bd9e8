//! The IR verifier: the invariants every stage may rely on, checked between passes in tests and
//! debug builds. It reports every violation it finds, naming nodes by their canonical number.
//!
//! Invariants: the graph is acyclic; every node's stored type equals what shape inference gives
//! for its op and operands (which also checks every parameter's shape); inputs have no operands
//! and are listed as graph inputs; outputs have no readers and are listed as graph outputs; the
//! graph has at least one input and one output; parameters a node names exist.

use crate::print::Numbering;
use crate::{Graph, Op};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// Canonical node name (`%n`), or empty for graph-level errors.
    pub node: String,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.node.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.node, self.message)
        }
    }
}

/// Checks every invariant; `Ok` or every violation found.
pub fn verify(graph: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut errors = Vec::new();
    let graph_err = |message: String| VerifyError {
        node: String::new(),
        message,
    };
    let order = match graph.topo_order() {
        Some(o) => o,
        None => {
            return Err(vec![graph_err("the graph has a cycle".into())]);
        }
    };
    let numbering = Numbering::new(graph, &order);
    if graph.inputs().is_empty() {
        errors.push(graph_err("the graph has no input".into()));
    }
    if graph.outputs().is_empty() {
        errors.push(graph_err("the graph has no output".into()));
    }
    for &id in graph.inputs().iter().chain(graph.outputs()) {
        if !graph.contains(id) {
            errors.push(graph_err(format!(
                "listed input/output {} is not in the graph",
                id.index()
            )));
        }
    }
    let param_count = graph.params.len();
    for &id in &order {
        let node = graph.node(id);
        let mut err = |message: String| {
            errors.push(VerifyError {
                node: numbering.name(id),
                message,
            })
        };
        let operands = graph.operands(id);
        for p in node.op.params() {
            if p.index() >= param_count {
                err(format!("names parameter {p}, which does not exist"));
            }
        }
        match &node.op {
            Op::Input { .. } => {
                if !operands.is_empty() {
                    err("an input has operands".into());
                }
                if !graph.inputs().contains(&id) {
                    err("an input node is not listed as a graph input".into());
                }
                continue;
            }
            Op::Output { .. } => {
                if !graph.users(id).is_empty() {
                    err("an output has readers".into());
                }
                if !graph.outputs().contains(&id) {
                    err("an output node is not listed as a graph output".into());
                }
            }
            _ => {}
        }
        if node.op.params().iter().any(|p| p.index() >= param_count) {
            continue;
        }
        let types: Vec<_> = operands.iter().map(|&o| graph.node(o).ty).collect();
        match node.op.infer(&types, &graph.params) {
            Ok(ty) if ty == node.ty => {}
            Ok(ty) => err(format!("stored type {} but inference gives {ty}", node.ty)),
            Err(e) => err(e.to_string()),
        }
        if node.scope.index() >= graph.scopes().count() {
            err("belongs to a scope that does not exist".into());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
