//! The sparsec runtime: loads a compiled `model.bin` and runs it. Small, with no compiler
//! inside (its dependency tree holds no cranelift, petgraph or clap; a test checks).
//!
//! Trust: a model.bin's checksum detects accidents, not attacks (anyone who edits the file can
//! recompute it). The loader validates every size and offset the kernels rely on, and by
//! default runs **no native code from the file**: a CPU model runs its schedule from the
//! validated manifest through this crate's own kernels, and a CUDA model (whose kernels are the
//! file's code) is refused. A file signed (ed25519, [`signature`]) by a key in
//! [`LoadOptions::trusted_keys`] runs its native code (the CPU Cranelift code, the CUDA
//! kernels); [`LoadOptions::allow_unsigned_code`] opts in to any file's native code, for files
//! whose origin you trust without a signature. [`LoadOptions::require_signature`] refuses
//! files that are not signed by a trusted key. A program that loads files from elsewhere
//! names the keys it trusts; [`signature::user_public_key`] is the key `sparsec` signs with by
//! default on this account.
//!
//! ```no_run
//! let model = runtime::Model::load("model.bin")?;          // validated; runs no code from the file
//! let trusted = runtime::LoadOptions {                       // or: signed by my own key
//!     trusted_keys: runtime::signature::user_public_key()?.into_iter().collect(),
//!     ..Default::default()
//! };
//! let model = runtime::Model::load_with("model.bin", &trusted)?; // native code if signed by it
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
pub mod signature;

mod aligned;
mod dispatch;
pub mod profile;

pub use cpu::exec::default_threads;
pub use dispatch::{LoadOptions, Model, OwnedSession, Session};
pub use error::{KeyError, LoadError, RunError};
