//! The public [`Model`] and [`Session`]: one API whatever the backend. Loading parses the
//! file once to read its target, then hands it to the CPU executor (`cpu/exec.rs`) or the CUDA
//! executor (`cuda/`); every method forwards. A CUDA model loaded by a runtime built without
//! the `cuda` feature is [`LoadError::BackendNotBuilt`].
//!
//! [`OwnedSession`] is the same session holding a share of its model (`Arc<Model>`) instead of
//! a borrow, for callers that cannot keep a borrow alive (the Python and C bindings).
//!
//! It also makes the trust decision, before the file is parsed beyond its header: the
//! signature state (`signature::check`) and the caller's [`LoadOptions`] say whether the
//! file's native code may run (signed by a trusted key, or `allow_unsigned_code`) or not (a
//! CPU model then runs data-only, a CUDA model is refused), or whether the file is refused
//! (`require_signature`).
//!
//! Must not contain executor logic: only the choice of executor and of trust.

use crate::cpu::exec as model;
use crate::cuda::{CudaModel, CudaSession};
use crate::error::{LoadError, RunError};
use crate::format::{self, Backend, Manifest, ModelFile, TensorSpec};
use crate::profile::LayerKind;
use crate::signature::{self, SignatureState};
use std::path::Path;
use std::sync::Arc;

/// What a loader may trust in a model.bin.
///
/// A model.bin carries native code (Cranelift machine code for the CPU, CUDA kernels). Its
/// checksum only detects accidents: anyone who edits the file can recompute it. So by default
/// no code from the file runs: a CPU model runs its schedule from the validated manifest
/// through the runtime's own kernels (the generated code is only that sequence of kernel calls;
/// `docs/model-bin.md` has the timings), and a CUDA model, whose kernels are the file's code,
/// is refused.
///
/// A file signed by one of `trusted_keys` (`crate::signature`: ed25519 over the whole file,
/// checked before anything beyond the header is read) runs its native code. A file signed by
/// another key, or whose signature does not verify, is treated as unsigned, unless
/// `require_signature` makes it an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Map and run the file's native code (the CPU forward function, the CUDA kernels) even
    /// without a trusted signature. Only for files the caller trusts: that code runs with the
    /// process's rights, and the offsets compiled into it are not checked against the manifest.
    pub allow_unsigned_code: bool,
    /// Keys whose signature lets a file's native code run.
    pub trusted_keys: Vec<crate::signature::VerifyingKey>,
    /// Refuse ([`LoadError::NotTrusted`]) a file that is not signed by one of `trusted_keys`
    /// (unsigned, signed by another key, or with a signature that does not verify), whatever
    /// `allow_unsigned_code` says.
    pub require_signature: bool,
}

/// A loaded model (CPU or CUDA): validated, ready to run. `Send + Sync`.
#[derive(Debug)]
pub struct Model {
    inner: Inner,
    signature: SignatureState,
}

#[derive(Debug)]
enum Inner {
    Cpu(model::Model),
    Cuda(CudaModel),
}

impl Model {
    /// Reads and loads a model.bin file with the default [`LoadOptions`]: no native code
    /// from the file runs (a CPU model runs its validated schedule through the runtime's own
    /// kernels; a CUDA model is refused).
    pub fn load(path: impl AsRef<Path>) -> Result<Model, LoadError> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// Reads and loads a model.bin file with `options`.
    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model, LoadError> {
        let bytes = format::read(path.as_ref())?;
        Model::from_bytes_with(&bytes, options)
    }

    /// Validates and loads model.bin bytes with the default [`LoadOptions`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, LoadError> {
        Model::from_bytes_with(bytes, &LoadOptions::default())
    }

    /// Validates and loads model.bin bytes for the executor its target names. Nothing runs
    /// and nothing is mapped or uploaded unless every check passes and `options` allow it.
    ///
    /// The signature is checked first, after the header alone: a file signed by one of
    /// `options.trusted_keys` runs its native code; any other file (unsigned, signed by
    /// another key, or with a signature that does not verify) runs its native code only with
    /// `options.allow_unsigned_code`, and is [`LoadError::NotTrusted`] with
    /// `options.require_signature`.
    pub fn from_bytes_with(bytes: &[u8], options: &LoadOptions) -> Result<Model, LoadError> {
        let signature = signature::check(bytes, &options.trusted_keys)?;
        if options.require_signature && !signature.is_trusted() {
            return Err(LoadError::NotTrusted { signature });
        }
        let native = signature.is_trusted() || options.allow_unsigned_code;
        let file = ModelFile::parse(bytes)?;
        let inner = match file.manifest.target.backend {
            Backend::Cpu => Inner::Cpu(model::Model::from_bytes(bytes, native)?),
            Backend::Cuda if !native => {
                return Err(LoadError::UnsignedCode {
                    backend: Backend::Cuda,
                });
            }
            Backend::Cuda => Inner::Cuda(CudaModel::load(&file)?),
        };
        Ok(Model { inner, signature })
    }

    /// The file's signature as the loader judged it against the caller's trusted keys.
    pub fn signature(&self) -> &SignatureState {
        &self.signature
    }

    /// Whether runs execute native code from the file (CPU machine code or CUDA kernels):
    /// the file is signed by a trusted key, or the caller set
    /// [`LoadOptions::allow_unsigned_code`].
    pub fn runs_native_code(&self) -> bool {
        match &self.inner {
            Inner::Cpu(m) => m.runs_native_code(),
            Inner::Cuda(_) => true,
        }
    }

    /// The backend that runs this model.
    pub fn backend(&self) -> Backend {
        match &self.inner {
            Inner::Cpu(_) => Backend::Cpu,
            Inner::Cuda(_) => Backend::Cuda,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        match &self.inner {
            Inner::Cpu(m) => m.manifest(),
            Inner::Cuda(m) => m.manifest(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.inner {
            Inner::Cpu(m) => m.name(),
            Inner::Cuda(m) => &m.manifest().model_name,
        }
    }

    pub fn input(&self) -> &TensorSpec {
        match &self.inner {
            Inner::Cpu(m) => m.input(),
            Inner::Cuda(m) => &m.manifest().inputs[0],
        }
    }

    pub fn output(&self) -> &TensorSpec {
        match &self.inner {
            Inner::Cpu(m) => m.output(),
            Inner::Cuda(m) => &m.manifest().outputs[0],
        }
    }

    pub fn max_batch(&self) -> usize {
        match &self.inner {
            Inner::Cpu(m) => m.max_batch(),
            Inner::Cuda(m) => m.manifest().max_batch as usize,
        }
    }

    /// The [`LayerKind`] of every step of a parsed file, in step order (what
    /// [`Session::profile`] sums over), for reports about a model that need not run here.
    /// `None` for a file with no input (no executor loads one).
    pub fn layer_kinds(file: &ModelFile<'_>) -> Option<Vec<LayerKind>> {
        let m = &file.manifest;
        m.inputs.first()?;
        (0..m.steps.len())
            .map(|i| Some(LayerKind::of(m, &file.step_descriptor(i)?, i)))
            .collect()
    }

    /// A session: one caller's working memory. On the CPU it runs on up to
    /// [`crate::default_threads`] threads: the caller's, plus as many of its own as the
    /// process-wide budget (the cores, less one) leaves free when it first runs, so sessions
    /// side by side share the cores rather than each taking all of them. Cheap: threads and
    /// memory come with the first `run`.
    pub fn session(&self) -> Session<'_> {
        Session {
            inner: match &self.inner {
                Inner::Cpu(m) => SessionInner::Cpu(m.session_within_budget()),
                Inner::Cuda(m) => SessionInner::Cuda(m.session()),
            },
        }
    }

    /// A session running on `threads` CPU threads (the caller's plus `threads - 1` of its own),
    /// whatever other sessions use (they count against the budget of [`Model::session`]).
    /// A CUDA model ignores `threads`.
    pub fn session_with_threads(&self, threads: usize) -> Session<'_> {
        Session {
            inner: match &self.inner {
                Inner::Cpu(m) => SessionInner::Cpu(m.session_with_threads(threads)),
                Inner::Cuda(m) => SessionInner::Cuda(m.session()),
            },
        }
    }
}

/// One thread's working memory for a [`Model`].
pub struct Session<'m> {
    inner: SessionInner<'m>,
}

enum SessionInner<'m> {
    Cpu(model::Session<'m>),
    Cuda(CudaSession<'m>),
}

impl Session<'_> {
    /// The CPU threads this session runs on (1 for a CUDA model).
    pub fn threads(&self) -> usize {
        match &self.inner {
            SessionInner::Cpu(s) => s.threads(),
            SessionInner::Cuda(_) => 1,
        }
    }

    /// How many of this session's passes ran on its whole team of threads and how many on
    /// the calling thread alone: a CPU session chooses pass by pass, by measured time, so that
    /// a machine whose cores are busy with other work never makes many threads slower than one
    /// (`cpu::tuner`; `SPARSEC_ADAPTIVE_THREADS=0` keeps the whole team). A CUDA session
    /// counts nothing.
    pub fn thread_use(&self) -> crate::cpu::tuner::ThreadUse {
        match &self.inner {
            SessionInner::Cpu(s) => s.thread_use(),
            SessionInner::Cuda(_) => crate::cpu::tuner::ThreadUse::default(),
        }
    }

    /// Runs a batch like [`Session::run`], timing every kernel call (see [`crate::profile`]);
    /// a CUDA session times each step alone over 20 launches between CUDA events.
    pub fn profile(
        &mut self,
        input: &[f32],
        batch: usize,
    ) -> Result<crate::profile::Profile, RunError> {
        match &mut self.inner {
            SessionInner::Cpu(s) => s.profile(input, batch),
            SessionInner::Cuda(s) => s.profile(input, batch, 20),
        }
    }

    /// Runs a batch: `input` holds `batch` images in NCHW order (`batch * C * H * W` floats).
    /// Returns the output (`batch * classes` floats), borrowed from the session.
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32], RunError> {
        match &mut self.inner {
            SessionInner::Cpu(s) => s.run(input, batch),
            SessionInner::Cuda(s) => s.run(input, batch),
        }
    }
}

self_cell::self_cell!(
    /// A [`Session`] stored beside the model it borrows.
    struct OwnedSessionCell {
        owner: Arc<Model>,
        #[covariant]
        dependent: Session,
    }
);

/// A [`Session`] that owns a share of its model, so it has no lifetime: what a binding keeps
/// in a handle. Behaves exactly like the borrowed session (threads and memory come with the
/// first `run`; `run` allocates nothing afterwards).
pub struct OwnedSession(OwnedSessionCell);

impl OwnedSession {
    /// A session of `model` on `threads` CPU threads, or [`crate::default_threads`] when
    /// `None`.
    pub fn new(model: Arc<Model>, threads: Option<usize>) -> OwnedSession {
        OwnedSession(OwnedSessionCell::new(model, |m| match threads {
            Some(n) => m.session_with_threads(n),
            None => m.session(),
        }))
    }

    /// The model this session runs.
    pub fn model(&self) -> &Arc<Model> {
        self.0.borrow_owner()
    }

    /// See [`Session::threads`].
    pub fn threads(&self) -> usize {
        self.0.borrow_dependent().threads()
    }

    /// See [`Session::run`].
    pub fn run(&mut self, input: &[f32], batch: usize) -> Result<&[f32], RunError> {
        self.0.with_dependent_mut(|_, s| s.run(input, batch))
    }

    /// See [`Session::thread_use`].
    pub fn thread_use(&self) -> crate::cpu::tuner::ThreadUse {
        self.0.borrow_dependent().thread_use()
    }
}

impl std::fmt::Debug for OwnedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedSession")
            .field("model", self.model())
            .field("threads", &self.threads())
            .finish()
    }
}
