//! The CPU executor: executable memory for generated code (`code`) and the kernels it calls
//! (`kernels`).

pub mod code;
pub mod kernels;
