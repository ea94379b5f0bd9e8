//! The CPU executor: the model and session (`exec`, beside `cuda/exec.rs`), executable memory
//! for generated code (`code`), the kernels it calls
//! (`kernels`), the data-only step loop that runs a schedule without generated code
//! (`schedule`), the threads of a session (`team`) and the choice, pass by pass, of how many
//! of them run (`tuner`).

pub mod code;
pub(crate) mod exec;
pub mod kernels;
pub(crate) mod schedule;
// Crate-private: a `Team` runs one job at a time from `&self`, which only a session (that
// owns its team and is `!Sync` through `&mut self` runs) can guarantee.
pub(crate) mod team;
pub mod tuner;
