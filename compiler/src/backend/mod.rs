//! Code generation, one folder per target. Each backend turns an optimised graph and its
//! memory plan into the sections of a `model.bin` (see `crate::artifact`).
//!
//! Must not change the graph or the plan: they are inputs.

pub mod cpu;
pub mod cuda;
pub mod descriptors;
pub mod steps;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "code generation needs weights: parameter `{0}` has no data (pass --weights or --random-weights)"
    )]
    Unbound(String),
    #[error("cannot compile `{op}` at {node}: {reason}")]
    Unsupported {
        node: String,
        op: &'static str,
        reason: String,
    },
    #[error("Cranelift: {0}")]
    Cranelift(String),
    #[error(
        "generated code has {0} relocations; it must have none (position-independent, table calls only)"
    )]
    Relocations(usize),
    #[error(transparent)]
    Nvrtc(#[from] cuda::nvrtc::NvrtcError),
    #[error("the model needs {what}, more than a model.bin can describe")]
    TooLarge { what: String },
}
