//! model.bin assembly: the manifest (inputs, outputs, buffers of the plan, steps, target) and
//! the sections a backend produced, written with `runtime::format::Writer` so the compiler and
//! the runtime share one definition of the format (the runtime crate owns it; the compiler
//! depends on the runtime, never the other way round).
//!
//! Must not generate code or plan memory: it packages what `backend` and `plan` made.

use crate::backend::cpu::CpuProgram;
use crate::backend::cuda::CudaProgram;
use crate::backend::cuda::nvrtc::Compiled;
use crate::plan::memory::MemoryPlan;
use ir::{Graph, Op};
use runtime::error::LoadError;
use runtime::format::{
    Backend, BufferSpec, CpuCode, CudaCode, Manifest, Target, TensorSpec, Writer,
};

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("the plan must be made at batch 1 (offsets scale with the batch), not {0}")]
    PlanBatch(u64),
    #[error("{0} has no buffer in the plan")]
    NoBuffer(String),
    #[error("writing model.bin: {0}")]
    Format(#[from] LoadError),
}

/// Signs model.bin bytes with `key` (`runtime::signature::sign`: an ed25519 signature over
/// the whole file, in a trailer); a runtime that trusts the key runs the file's native code.
pub fn sign(bytes: &[u8], key: &runtime::signature::SigningKey) -> Result<Vec<u8>, ArtifactError> {
    Ok(runtime::signature::sign(bytes, key)?)
}

/// Packages a CPU program into model.bin bytes.
pub fn write_cpu(
    graph: &Graph,
    plan: &MemoryPlan,
    program: &CpuProgram,
    max_batch: u32,
) -> Result<Vec<u8>, ArtifactError> {
    if plan.batch != 1 {
        return Err(ArtifactError::PlanBatch(plan.batch));
    }
    let (buffers, inputs, outputs) = tensors(graph, plan)?;
    let mut w = Writer::new();
    let weights = w.add_section(&program.weights);
    let consts = w.add_section(&program.consts);
    let code = w.add_section(&program.code.code);
    let manifest = Manifest {
        compiler_version: concat!("sparsec ", env!("CARGO_PKG_VERSION")).to_string(),
        model_name: graph.name.clone(),
        target: Target {
            backend: Backend::Cpu,
            arch: program.code.arch.clone(),
            features: program.code.features.clone(),
        },
        inputs,
        outputs,
        max_batch,
        arena_bytes_per_image: plan.arena.arena_bytes,
        scratch_bytes: program.scratch_bytes,
        buffers,
        steps: program.steps.clone(),
        weights,
        consts,
        cpu_code: Some(CpuCode {
            code,
            entry_offset: 0,
        }),
        cuda: None,
    };
    Ok(w.finish(&manifest)?)
}

/// The plan's buffers, and the graph's inputs and outputs, as manifest entries.
type Tensors = (Vec<BufferSpec>, Vec<TensorSpec>, Vec<TensorSpec>);

/// The plan's buffers and the graph's inputs and outputs as manifest entries.
fn tensors(graph: &Graph, plan: &MemoryPlan) -> Result<Tensors, ArtifactError> {
    let buffers = plan
        .liveness
        .buffers
        .iter()
        .zip(&plan.arena.offsets)
        .map(|(b, &offset)| BufferSpec {
            offset_per_image: offset,
            bytes_per_image: b.bytes_per_image,
            element: b.element,
        })
        .collect();
    let spec = |name: &str, node: ir::NodeId| -> Result<TensorSpec, ArtifactError> {
        let buffer = plan
            .liveness
            .buffer(node)
            .ok_or_else(|| ArtifactError::NoBuffer(name.to_string()))?;
        let t = graph.node(node).ty;
        Ok(TensorSpec {
            name: name.to_string(),
            shape: [t.channels, t.height, t.width],
            buffer: buffer.0,
        })
    };
    let mut inputs = Vec::new();
    for &i in graph.inputs() {
        if let Op::Input { name } = &graph.node(i).op {
            inputs.push(spec(name, i)?);
        }
    }
    let mut outputs = Vec::new();
    for &o in graph.outputs() {
        let Op::Output { name } = &graph.node(o).op else {
            continue;
        };
        let source = graph
            .operands(o)
            .first()
            .copied()
            .ok_or_else(|| ArtifactError::NoBuffer(name.clone()))?;
        outputs.push(spec(name, source)?);
    }
    Ok((buffers, inputs, outputs))
}

/// Packages a CUDA program and its NVRTC output into model.bin bytes.
pub fn write_cuda(
    graph: &Graph,
    program: &CudaProgram,
    compiled: &Compiled,
    max_batch: u32,
) -> Result<Vec<u8>, ArtifactError> {
    // The program's plan: the caller's, or the one with BF16 buffers (`cuda::storage`).
    let plan = &program.plan;
    if plan.batch != 1 {
        return Err(ArtifactError::PlanBatch(plan.batch));
    }
    let (buffers, inputs, outputs) = tensors(graph, plan)?;
    let mut w = Writer::new();
    let weights = w.add_section(&program.weights);
    let consts = w.add_section(&program.consts);
    let blobs = compiled
        .blobs
        .iter()
        .map(|(arch, bytes)| (arch.clone(), w.add_section(bytes)))
        .collect();
    let manifest = Manifest {
        compiler_version: concat!("sparsec ", env!("CARGO_PKG_VERSION")).to_string(),
        model_name: graph.name.clone(),
        target: Target {
            backend: Backend::Cuda,
            arch: "nvptx64".into(),
            features: vec![],
        },
        inputs,
        outputs,
        max_batch,
        arena_bytes_per_image: plan.arena.arena_bytes,
        scratch_bytes: 0,
        buffers,
        steps: program.steps.clone(),
        weights,
        consts,
        cpu_code: None,
        cuda: Some(CudaCode {
            nvrtc_version: compiled.version.clone(),
            blobs,
            launches: program.launches.clone(),
        }),
    };
    Ok(w.finish(&manifest)?)
}
