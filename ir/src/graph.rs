//! The graph: a petgraph `StableDiGraph` whose nodes are ops with their inferred output type,
//! source span and scope, and whose edges run from an operand to its reader, weighted by the
//! operand position. `StableDiGraph` keeps ids valid across removals, so passes can hold ids.
//!
//! Owns construction (with shape inference at every insertion), operand and use queries,
//! rewiring, and the deterministic topological order every later stage numbers nodes by.
//! Must not know about passes or backends.

use crate::op::ShapeError;
use crate::{NodeId, Op, Params, ScopeId, Span, TensorType};
use petgraph::Direction;
use petgraph::stable_graph::StableDiGraph;
use petgraph::visit::{EdgeRef, IntoEdgeReferences, NodeIndexable};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    pub span: Span,
    pub scope: ScopeId,
}

/// A named region of the network; nodes point to one.
#[derive(Clone, Debug)]
pub struct Scope {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub params: Params,
    graph: StableDiGraph<Node, u32, u32>,
    scopes: Vec<Scope>,
    inputs: Vec<NodeId>,
    outputs: Vec<NodeId>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn add_scope(&mut self, name: impl Into<String>, span: Span) -> ScopeId {
        let id = ScopeId(u32::try_from(self.scopes.len()).expect("fewer than 2^32 scopes"));
        self.scopes.push(Scope {
            name: name.into(),
            span,
        });
        id
    }

    pub fn scope(&self, id: ScopeId) -> &Scope {
        &self.scopes[id.index()]
    }

    pub fn scopes(&self) -> impl Iterator<Item = (ScopeId, &Scope)> {
        self.scopes
            .iter()
            .enumerate()
            .map(|(i, s)| (ScopeId(i as u32), s))
    }

    /// Adds a graph input of the given type.
    pub fn add_input(&mut self, name: &str, ty: TensorType, span: Span, scope: ScopeId) -> NodeId {
        let op = Op::Input {
            name: name.to_string(),
        };
        let id = NodeId(self.graph.add_node(Node {
            op,
            ty,
            span,
            scope,
        }));
        self.inputs.push(id);
        id
    }

    /// Adds an op reading `operands` in order; infers and checks its type.
    pub fn add(
        &mut self,
        op: Op,
        operands: &[NodeId],
        span: Span,
        scope: ScopeId,
    ) -> Result<NodeId, ShapeError> {
        let types: Vec<TensorType> = operands.iter().map(|&o| self.node(o).ty).collect();
        let ty = op.infer(&types, &self.params)?;
        if ty.elements() > crate::op::MAX_ELEMENTS {
            return Err(ShapeError::TooLarge {
                what: format!("a {ty} tensor ({} elements per image)", ty.elements()),
            });
        }
        let is_output = matches!(op, Op::Output { .. });
        let id = NodeId(self.graph.add_node(Node {
            op,
            ty,
            span,
            scope,
        }));
        for (pos, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, pos as u32);
        }
        if is_output {
            self.outputs.push(id);
        }
        Ok(id)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.graph[id.0]
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.graph.contains_node(id.0)
    }

    pub fn inputs(&self) -> &[NodeId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// Upper bound of raw node indices (for dense side tables indexed by `NodeId::index`).
    pub fn index_bound(&self) -> usize {
        self.graph.node_bound()
    }

    /// All node ids in raw index order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices().map(NodeId)
    }

    /// Operands in position order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut edges: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        edges.sort_unstable();
        edges.into_iter().map(|(_, n)| n).collect()
    }

    /// Distinct readers of a node, in raw index order.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        let mut users: Vec<NodeId> = self
            .graph
            .edges_directed(id.0, Direction::Outgoing)
            .map(|e| NodeId(e.target()))
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Number of edges leaving a node (a reader using it twice counts twice).
    pub fn use_count(&self, id: NodeId) -> usize {
        self.graph.edges_directed(id.0, Direction::Outgoing).count()
    }

    /// Replaces the operand list of `id` (its op must accept the new operands: call
    /// [`Graph::reinfer`] afterwards when the types may have changed).
    pub fn set_operands(&mut self, id: NodeId, operands: &[NodeId]) {
        let old: Vec<_> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        for (pos, &o) in operands.iter().enumerate() {
            self.graph.add_edge(o.0, id.0, pos as u32);
        }
    }

    /// Recomputes the type of `id` from its op and operands.
    pub fn reinfer(&mut self, id: NodeId) -> Result<TensorType, ShapeError> {
        let types: Vec<TensorType> = self.operands(id).iter().map(|&o| self.node(o).ty).collect();
        let ty = self.node(id).op.infer(&types, &self.params)?;
        self.node_mut(id).ty = ty;
        Ok(ty)
    }

    /// Makes every reader of `old` read `new` instead, at the same operand positions.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<_> = self
            .graph
            .edges_directed(old.0, Direction::Outgoing)
            .map(|e| (e.id(), e.target(), *e.weight()))
            .collect();
        for (edge, target, pos) in uses {
            self.graph.remove_edge(edge);
            self.graph.add_edge(new.0, target, pos);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node and its edges. Graph inputs and outputs are never removed.
    pub fn remove(&mut self, id: NodeId) {
        if self.inputs.contains(&id) || self.outputs.contains(&id) {
            return;
        }
        self.graph.remove_node(id.0);
    }

    /// A deterministic topological order: Kahn's algorithm taking the lowest raw index first,
    /// so a graph built in program order prints in program order, and nodes a pass appends
    /// come right where their operands allow. Returns `None` on a cycle.
    pub fn topo_order(&self) -> Option<Vec<NodeId>> {
        let bound = self.graph.node_bound();
        let mut indegree = vec![0u32; bound];
        for e in self.graph.edge_references() {
            indegree[e.target().index()] += 1;
        }
        let mut ready: BinaryHeap<Reverse<u32>> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(|n| Reverse(n.index() as u32))
            .collect();
        let mut order = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(i)) = ready.pop() {
            let n = petgraph::stable_graph::NodeIndex::new(i as usize);
            order.push(NodeId(n));
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let t = e.target().index();
                indegree[t] -= 1;
                if indegree[t] == 0 {
                    ready.push(Reverse(t as u32));
                }
            }
        }
        (order.len() == self.graph.node_count()).then_some(order)
    }
}
