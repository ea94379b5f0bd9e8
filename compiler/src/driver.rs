//! The compilation driver: the one place that strings the stages together (read → parse →
//! lower → bind weights → optimise → plan), shared by the CLI, the tests and the benchmarks so
//! they all compile models the same way.
//!
//! Owns the order of stages and the errors that cross them. Must not implement any stage.

pub use crate::backend::cpu::CpuArch;
use crate::diagnostics::{self, Diagnostic};
use crate::kernel_select::{self, KernelPolicy, KernelSelection, SelectError};
use crate::passes::{self, PassError, PassTiming};
use crate::plan::liveness;
use crate::plan::memory::{self, MemoryPlan};
use crate::weights::{self, WeightsError};
use ir::Graph;
use std::path::{Path, PathBuf};

/// Where parameter data comes from.
#[derive(Clone, Debug)]
pub enum WeightsSource {
    /// A safetensors file with the model's parameter names (the official PyTorch names by
    /// default).
    Safetensors(PathBuf),
    /// Tensors already in memory, `(name, shape, row-major data)` under the same names (the
    /// Python binding's dict of arrays or PyTorch `state_dict`); checked like safetensors.
    Tensors(Vec<weights::NamedTensor>),
    /// Deterministic random "trained-looking" weights (benchmarks).
    Random(u64),
    /// No data: the structure only (IR, plan, statistics); derived parameters stay unbound.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Source errors, already rendered like rustc's.
    #[error("{rendered}error: could not compile `{path}` due to {count} previous error{}", if *.count == 1 { "" } else { "s" })]
    Source {
        path: PathBuf,
        rendered: String,
        count: usize,
        diagnostics: Vec<Diagnostic>,
    },
    /// An ONNX model that cannot be imported (docs/onnx.md).
    #[error("cannot import `{path}`: {source}")]
    Onnx {
        path: PathBuf,
        source: crate::onnx::OnnxError,
    },
    #[error("weights from `{path}`: {source}")]
    Weights { path: PathBuf, source: WeightsError },
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error("the graph has a cycle")]
    Cycle,
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Artifact(#[from] crate::artifact::ArtifactError),
    #[error("choosing kernels under the accuracy budget: {0}")]
    Select(#[from] SelectError),
}

/// What [`compile`] makes and how.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub weights: WeightsSource,
    pub target: Target,
    /// Largest batch the model.bin accepts.
    pub max_batch: u32,
    /// Run the IR verifier between passes.
    pub verify: bool,
}

impl CompileOptions {
    /// The CPU target with the accuracy-guarded kernel choice, verifying in debug builds.
    pub fn cpu(weights: WeightsSource, max_batch: u32) -> CompileOptions {
        CompileOptions {
            weights,
            target: Target::Cpu(KernelPolicy::default()),
            max_batch,
            verify: cfg!(debug_assertions),
        }
    }
}

/// The code generator and its choices.
#[derive(Clone, Debug)]
pub enum Target {
    /// Cranelift machine code for this machine's architecture; convolution kernels chosen by
    /// the policy.
    Cpu(KernelPolicy),
    /// Cranelift machine code for `arch` (cross compilation: `--target cpu-aarch64` on an
    /// x86-64 host). The policy's measurements run host code on the host's kernels; the
    /// descriptors and weights they choose are the target's too, only the forward function is
    /// compiled again for `arch` (`backend::cpu::retarget`).
    CpuFor(CpuArch, KernelPolicy),
    /// CUDA kernels compiled by NVRTC: cubins for `archs` (e.g. `sm_90`), and the PTX
    /// fallback when `ptx` (at least one of the two must be asked for); through the user's
    /// on-disk kernel cache when `cache` (`backend::cuda::cache`).
    /// `precision`: what the convolutions may run in (`backend::cuda::precision`: each
    /// layer gets it or stays FP32).
    Cuda {
        archs: Vec<String>,
        ptx: bool,
        cache: bool,
        precision: crate::backend::cuda::precision::Precision,
    },
}

/// A compiled model: the optimised graph and plan, the model.bin bytes, and (CPU, guarded
/// policy) what the accuracy guard chose and measured.
pub struct Compiled {
    pub opt: Optimized,
    pub bytes: Vec<u8>,
    pub selection: Option<KernelSelection>,
    /// CUDA: how many convolutions got each precision (`convolutions: N tf32, M fp32`).
    pub precisions: Option<String>,
    /// The arena per image of the written model.bin: `opt.plan`'s, or with BF16 buffers
    /// (CUDA `--precision bf16`) the narrower plan's.
    pub arena_bytes_per_image: u64,
}

/// Compiles a loaded graph: weights bound, optimised, planned at batch 1 (the runtime scales
/// offsets with the batch), code generated for the target, packaged as model.bin bytes.
pub fn compile(graph: Graph, options: &CompileOptions) -> Result<Compiled, DriverError> {
    if let Target::Cuda { .. } = options.target
        && options.max_batch > crate::backend::cuda::MAX_BATCH
    {
        return Err(DriverError::Backend(
            crate::backend::BackendError::TooLarge {
                what: format!(
                    "a maximum batch of {} (CUDA models take at most {})",
                    options.max_batch,
                    crate::backend::cuda::MAX_BATCH
                ),
            },
        ));
    }
    let opt = optimize(graph, &options.weights, 1, options.verify)?;
    let mut precisions = None;
    let mut arena_bytes_per_image = opt.plan.arena.arena_bytes;
    let (bytes, selection) = match &options.target {
        Target::Cpu(policy) | Target::CpuFor(_, policy) => {
            let (mut program, selection) = kernel_select::compile(&opt.graph, &opt.plan, policy)?;
            if let Target::CpuFor(arch, _) = options.target {
                crate::backend::cpu::retarget(&mut program, arch)?;
            }
            let bytes =
                crate::artifact::write_cpu(&opt.graph, &opt.plan, &program, options.max_batch)?;
            (bytes, selection)
        }
        Target::Cuda {
            archs,
            ptx,
            cache,
            precision,
        } => {
            let archs: Vec<&str> = archs.iter().map(String::as_str).collect();
            let program =
                crate::backend::cuda::generate_with(&opt.graph, &opt.plan, true, *precision)?;
            arena_bytes_per_image = program.plan.arena.arena_bytes;
            if *precision != crate::backend::cuda::precision::Precision::Fp32 {
                precisions = program.precision_summary();
                if let Some(storage) = program.storage_summary(opt.plan.arena.arena_bytes) {
                    precisions = Some(match precisions {
                        Some(p) => format!("{p}; {storage}"),
                        None => storage,
                    });
                }
            }
            let cache = cache
                .then(crate::backend::cuda::cache::KernelCache::user)
                .flatten();
            let compiled = crate::backend::cuda::nvrtc::compile_with_cache(
                &program.source,
                &archs,
                *ptx,
                cache.as_ref(),
            )
            .map_err(crate::backend::BackendError::from)?;
            let bytes =
                crate::artifact::write_cuda(&opt.graph, &program, &compiled, options.max_batch)?;
            (bytes, None)
        }
    };
    Ok(Compiled {
        opt,
        bytes,
        selection,
        precisions,
        arena_bytes_per_image,
    })
}

/// [`compile`] for the CPU with the default, accuracy-guarded kernel choice.
pub fn compile_cpu(
    graph: Graph,
    weights: &WeightsSource,
    max_batch: u32,
    verify: bool,
) -> Result<(Optimized, Vec<u8>), DriverError> {
    compile_cpu_with(graph, weights, max_batch, verify, &KernelPolicy::default())
}

/// [`compile`] for the CPU with the given kernel policy.
pub fn compile_cpu_with(
    graph: Graph,
    weights: &WeightsSource,
    max_batch: u32,
    verify: bool,
    policy: &KernelPolicy,
) -> Result<(Optimized, Vec<u8>), DriverError> {
    let options = CompileOptions {
        weights: weights.clone(),
        target: Target::Cpu(policy.clone()),
        max_batch,
        verify,
    };
    let c = compile(graph, &options)?;
    Ok((c.opt, c.bytes))
}

/// [`compile`] for CUDA: cubins for `sm_80` and `sm_90`, PTX for `compute_80`.
pub fn compile_cuda(
    graph: Graph,
    weights: &WeightsSource,
    max_batch: u32,
    verify: bool,
) -> Result<(Optimized, Vec<u8>), DriverError> {
    compile_cuda_for(
        graph,
        weights,
        max_batch,
        verify,
        crate::backend::cuda::nvrtc::CUBIN_ARCHS,
        true,
    )
}

/// [`compile`] for CUDA with cubins for `archs` (e.g. `["sm_90"]`), and the PTX fallback
/// when `ptx`; NVRTC always runs (no cache).
pub fn compile_cuda_for(
    graph: Graph,
    weights: &WeightsSource,
    max_batch: u32,
    verify: bool,
    archs: &[&str],
    ptx: bool,
) -> Result<(Optimized, Vec<u8>), DriverError> {
    let options = CompileOptions {
        weights: weights.clone(),
        target: Target::Cuda {
            archs: archs.iter().map(|a| a.to_string()).collect(),
            ptx,
            cache: false,
            precision: Default::default(),
        },
        max_batch,
        verify,
    };
    let c = compile(graph, &options)?;
    Ok((c.opt, c.bytes))
}

/// A model parsed and lowered from a file: `.onnx` through the ONNX importer (weights bound
/// from its initializers), anything else as `.snet` source.
pub fn load(path: &Path) -> Result<Graph, DriverError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        let bytes = std::fs::read(path).map_err(|source| DriverError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
        let dir = path.parent().unwrap_or(Path::new("."));
        return crate::onnx::import_from(&bytes, stem, dir).map_err(|source| DriverError::Onnx {
            path: path.to_path_buf(),
            source,
        });
    }
    let source = std::fs::read_to_string(path).map_err(|source| DriverError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let (graph, errors) = crate::compile_source(stem, &source);
    match graph {
        Some(g) if errors.is_empty() => Ok(g),
        _ => Err(DriverError::Source {
            path: path.to_path_buf(),
            rendered: diagnostics::render(&path.display().to_string(), &source, &errors),
            count: errors.len(),
            diagnostics: errors,
        }),
    }
}

/// Binds parameter data.
pub fn bind(graph: &mut Graph, source: &WeightsSource) -> Result<(), DriverError> {
    match source {
        WeightsSource::None => Ok(()),
        WeightsSource::Random(seed) => {
            weights::bind_random(graph, *seed);
            Ok(())
        }
        WeightsSource::Tensors(tensors) => {
            weights::bind_tensors(graph, tensors).map_err(|source| DriverError::Weights {
                path: PathBuf::from("<tensors in memory>"),
                source,
            })
        }
        WeightsSource::Safetensors(path) => {
            let bytes = std::fs::read(path).map_err(|source| DriverError::Io {
                path: path.clone(),
                source,
            })?;
            weights::bind_safetensors(graph, &bytes).map_err(|source| DriverError::Weights {
                path: path.clone(),
                source,
            })
        }
    }
}

/// Everything the back half needs: the optimised graph and its memory plan.
pub struct Optimized {
    pub graph: Graph,
    pub timings: Vec<PassTiming>,
    pub plan: MemoryPlan,
}

/// Binds weights, runs the pass pipeline (verifying between passes when `verify`), and plans
/// memory at `batch`.
pub fn optimize(
    mut graph: Graph,
    weights: &WeightsSource,
    batch: u64,
    verify: bool,
) -> Result<Optimized, DriverError> {
    bind(&mut graph, weights)?;
    let timings = passes::optimize(&mut graph, verify)?;
    let plan = memory::plan(&graph, batch).ok_or(DriverError::Cycle)?;
    Ok(Optimized {
        graph,
        timings,
        plan,
    })
}

/// Peak live bytes of an unoptimised graph under a free-after-last-use executor: what a
/// framework that materialises every concatenation (and BN, ReLU output) holds at its peak.
pub fn materialising_peak_bytes(graph: &Graph, batch: u64) -> Result<u64, DriverError> {
    let l = liveness::analyze(graph).ok_or(DriverError::Cycle)?;
    Ok(liveness::peak_live_bytes(&l) * batch)
}
