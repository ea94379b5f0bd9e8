//! The CPU executor: executable memory for generated code (`code`), the kernels it calls
//! (`kernels`) and the threads of a session (`team`).

pub mod code;
pub mod kernels;
pub mod team;
