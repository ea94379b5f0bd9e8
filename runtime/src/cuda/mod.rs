//! The CUDA executor: a CUDA model.bin's kernels run on an NVIDIA GPU through the driver API
//! (cudarc, loaded at run time), behind the `cuda` cargo feature. `validate` (always built, no
//! driver) checks the file and builds the step table (`table`: the per-step records the shared
//! kernels read); `symbols` lists the driver functions checked at load; `exec` (feature `cuda`) loads the right blob, uploads the weights
//! once, keeps one arena per session and replays one CUDA graph per batch size. Without the
//! feature, loading a CUDA model is a typed error (`LoadError::BackendNotBuilt`).
//!
//! Must not parse the file format (`format` does) or know the CPU executor.

pub mod symbols;
pub mod table;
pub mod validate;

#[cfg(feature = "cuda")]
mod exec;

#[cfg(feature = "cuda")]
pub use exec::{CudaModel, CudaSession};

#[cfg(not(feature = "cuda"))]
mod stub {
    //! Without the `cuda` feature: the same types, never constructed.

    use crate::error::{LoadError, RunError};
    use crate::format::{Backend, Manifest, ModelFile};

    /// A CUDA model; this build cannot load one.
    #[derive(Debug)]
    pub struct CudaModel {
        manifest: Manifest,
        never: std::convert::Infallible,
    }

    /// A CUDA session; this build cannot make one.
    #[derive(Debug)]
    pub struct CudaSession<'m> {
        model: &'m CudaModel,
    }

    impl CudaModel {
        /// Always [`LoadError::BackendNotBuilt`] (after the checks that need no driver).
        pub fn load(file: &ModelFile<'_>) -> Result<CudaModel, LoadError> {
            super::validate::validate(file)?;
            Err(LoadError::BackendNotBuilt {
                backend: Backend::Cuda,
                feature: "cuda",
            })
        }

        pub fn manifest(&self) -> &Manifest {
            match self.never {}
        }

        pub fn session(&self) -> CudaSession<'_> {
            CudaSession { model: self }
        }
    }

    impl CudaSession<'_> {
        pub fn run(&mut self, _input: &[f32], _batch: usize) -> Result<&[f32], RunError> {
            let _ = &self.model.manifest;
            match self.model.never {}
        }

        pub fn profile(
            &mut self,
            _input: &[f32],
            _batch: usize,
            _iters: usize,
        ) -> Result<crate::profile::Profile, RunError> {
            match self.model.never {}
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub use stub::{CudaModel, CudaSession};
