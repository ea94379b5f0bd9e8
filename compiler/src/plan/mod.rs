//! Scheduling, liveness and static memory planning: `liveness` (the schedule and every
//! buffer's lifetime), `arena` (offsets in one arena, the lower bound, the plan verifier),
//! `memory` (the two together for a graph, and `--emit plan`), `svg` (`--emit memory-svg`).

pub mod arena;
pub mod liveness;
pub mod memory;
pub mod svg;
