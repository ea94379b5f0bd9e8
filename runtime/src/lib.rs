//! The sparsec runtime: loads a compiled `model.bin` and runs it. Small, with no compiler
//! inside (its dependency tree holds no cranelift, petgraph or clap; a test checks).
//!
//! Trust: a model.bin's checksum detects accidents, not attacks (anyone who edits the file can
//! recompute it). The loader validates every size and offset the kernels rely on, and by
//! default runs **no native code from the file**: a CPU model runs its schedule from the
//! validated manifest through this crate's own kernels, and a CUDA model (whose kernels are the
//! file's code) is refused. [`LoadOptions::allow_unsigned_code`] opts in to the file's native
//! code, for files whose origin you trust.
//!
//! ```no_run
//! let model = runtime::Model::load("model.bin")?;          // validated; runs no code from the file
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
pub use model::{LoadOptions, default_threads};
