//! Typed ids: a node, a parameter tensor and a scope are never confused with each other or with
//! a bare integer. `Display` matches the text IR (`%n` is printed from the canonical numbering,
//! not from these raw indices, which passes may leave with holes).

use petgraph::stable_graph::NodeIndex;
use std::fmt;

/// A node of the graph; each node defines exactly one tensor, so this is also a value id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) NodeIndex<u32>);

impl NodeId {
    /// The raw index: stable across removals of other nodes, dense only before any removal.
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// A parameter tensor in [`crate::Params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) u32);

impl ParamId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A named region of the network (`stem`, `block0`, `transition0`, `head`) that nodes belong to;
/// statistics and profiles are broken down by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(pub(crate) u32);

impl ScopeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ParamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "param{}", self.0)
    }
}
