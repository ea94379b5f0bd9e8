//! The sparsec graph IR: the one representation every stage after the front end works on.
//!
//! Owns tensor types ([`TensorType`]), the closed op set ([`Op`]), the graph ([`Graph`], a
//! petgraph `StableDiGraph` with typed ids), the parameter table ([`Params`]), shape inference,
//! the verifier ([`verify`]), the canonical text printer ([`print`]), the reference
//! interpreter ([`interp`]), which is the numerical oracle for every pass and backend, and the
//! cost of each node ([`cost`]: MACs and FLOPs per op kind).
//!
//! Must not know about the `.snet` syntax, diagnostics rendering, passes, memory planning or
//! code generation: those live in the `sparsec` crate and only use the API here.

pub mod cost;
mod graph;
mod ids;

pub mod interp;
pub mod op;
mod params;
pub mod print;
mod span;
mod types;
pub mod verify;

pub use graph::{Graph, Node, Scope};
pub use ids::{NodeId, ParamId, ScopeId};
pub use op::{
    Access, BatchNorm, Combine, Conv2d, Linear, MAX_DIM, Op, Pool, PoolKind, Prologue, ShapeError,
};
pub use params::{Param, ParamKind, Params};
pub use span::Span;
pub use types::TensorType;
