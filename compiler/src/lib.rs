//! sparsec: a static graph compiler for SparseNet-style convolutional networks.
//!
//! The pipeline, one module per stage: [`frontend`] (text → syntax tree), [`lower`] (syntax
//! tree → IR graph with shapes), [`stats`] (what the graph costs, for the `stats` command).
//! Diagnostics from every stage are rendered in one place, [`diagnostics`]. The IR itself, and
//! the cost of each node (`ir::cost`), live in the `ir` crate; [`numfmt`] formats numbers for
//! every report.

pub mod artifact;
pub mod backend;
pub mod bench;
pub mod diagnostics;
pub mod driver;
pub mod frontend;
pub mod kernel_select;
pub mod keys;
pub mod lower;
pub mod model_info;
pub mod numfmt;
pub mod onnx;
pub mod passes;
pub mod peak;
pub mod plan;
pub mod profile_report;
pub mod stats;
pub mod tensor_io;
pub mod weights;

pub use lower::compile_source;
