//! The sparsec runtime: loads a compiled `model.bin` and runs it. Small, with no compiler
//! inside (its dependency tree holds no cranelift, petgraph or clap; a test checks).
//!
//! ```no_run
//! let model = runtime::Model::load("model.bin")?;          // validated before any code maps
//! let mut session = model.session();                        // one per thread
//! let input = vec![0.5f32; 3 * 32 * 32];
//! let logits = session.run(&input, 1)?;                     // batch 1
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod abi;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod format;

mod aligned;
mod dispatch;
mod model;
pub mod profile;

pub use dispatch::{Model, OwnedSession, Session};
pub use error::{LoadError, RunError};
pub use model::default_threads;
