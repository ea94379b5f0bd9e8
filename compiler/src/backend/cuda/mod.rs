//! The CUDA backend: turns the optimised graph and its memory plan (as `backend::steps`) into
//! CUDA C with one kernel per tile configuration the steps use, shared by every step with that
//! tile (`kernels.rs` writes the text), the weights section in the layout those kernels read,
//! one `abi` descriptor per step (from which the runtime checks every step's geometry against
//! its buffers and the weights section, then builds the step records the kernels read:
//! `runtime::cuda::table`) and one launch description per step. NVRTC turns the source into
//! cubins and PTX (`nvrtc.rs`, with its on-disk cache `cache.rs`). `shim.h` lets the same source run on the
//! CPU (g++), which is how the kernels are checked without a GPU.
//!
//! Weights layout (f32, each array 64-byte aligned): convolution weights transposed to
//! `[in_channels * kh * kw][out_channels]` (a block's weight tile is one coalesced row per
//! `k`), linear weights transposed to `[in][out]`, bias, scale and shift as plain arrays.
//! Must not change the graph or the plan.

pub mod cache;
pub mod kernels;
pub mod nvrtc;
pub mod precision;
pub mod storage;
pub mod tile;

use super::BackendError;
use super::descriptors::{self, Placed, Section};
use super::steps;
use crate::plan::memory::MemoryPlan;
use ir::op::Access;
use ir::{Graph, Op, ParamId};
use runtime::format::{CudaLaunch, Element, Step, StepDesc, StepKind};
use std::collections::HashMap;

/// The shim header that compiles the generated source as C++ (g++) and runs each launch on
/// the CPU: a grid of blocks one after another, each block's threads as fibers that switch at
/// `__syncthreads()`. Tests write it next to the source.
/// With `mma_shim.h` appended: the emulation of the tensor-core fragments (`mma.cuh`).
pub const SHIM_HEADER: &str = concat!(include_str!("shim.h"), include_str!("mma_shim.h"));

/// Threads per block of every generated kernel.
pub const THREADS: u32 = 256;

/// The largest batch a CUDA model.bin accepts: the batch is the grid's z dimension.
pub const MAX_BATCH: u32 = 65_535;

/// Everything the artifact writer and NVRTC need.
#[derive(Clone, Debug)]
pub struct CudaProgram {
    /// The CUDA C source of every kernel (stable text: `--emit cuda`).
    pub source: String,
    pub weights: Vec<u8>,
    pub consts: Vec<u8>,
    pub steps: Vec<Step>,
    /// Per step, its `abi` descriptor (also in `consts`): what the runtime's step table is
    /// built from (`runtime::cuda::table::build`).
    pub descs: Vec<StepDesc>,
    /// Per step, in step order, its launch variants (`runtime::format::CudaCode::launches`).
    pub launches: Vec<Vec<CudaLaunch>>,
    /// Per convolution step that runs on tensor cores, its precision (`precision.rs`); every
    /// other step is FP32.
    pub precisions: std::collections::BTreeMap<usize, precision::Precision>,
    /// The memory plan the program was generated for: the caller's, or (BF16 buffers,
    /// `storage.rs`) that plan placed again with the narrower buffers. model.bin's buffers and
    /// arena come from this one.
    pub plan: MemoryPlan,
}

impl CudaProgram {
    /// `convolutions: N tf32, M fp32` (the compile report), or `None` without convolutions.
    pub fn precision_summary(&self) -> Option<String> {
        let convs = self
            .steps
            .iter()
            .filter(|s| s.kind == StepKind::Conv)
            .count();
        if convs == 0 {
            return None;
        }
        let mut parts = Vec::new();
        for p in [precision::Precision::Tf32, precision::Precision::Bf16] {
            let n = self.precisions.values().filter(|&&q| q == p).count();
            if n > 0 {
                parts.push(format!("{n} {p}"));
            }
        }
        parts.push(format!("{} fp32", convs - self.precisions.len()));
        Some(format!("convolutions: {}", parts.join(", ")))
    }

    /// `activations: N of M buffers bf16, arena X bytes per image (fp32: Y)` when the plan
    /// stores some buffer in BF16 (`storage.rs`), against `fp32_arena` (the caller's plan).
    pub fn storage_summary(&self, fp32_arena: u64) -> Option<String> {
        let buffers = &self.plan.liveness.buffers;
        let bf16 = buffers
            .iter()
            .filter(|b| b.element == Element::Bf16)
            .count();
        (bf16 > 0).then(|| {
            format!(
                "activations: {bf16} of {} buffers bf16, arena {} bytes per image (fp32: {})",
                buffers.len(),
                crate::numfmt::group(self.plan.arena.arena_bytes),
                crate::numfmt::group(fp32_arena)
            )
        })
    }
}

/// An aligned f32 section being filled; unbound parameters take their size in zeros when the
/// caller only wants the source.
struct Weights<'g> {
    graph: &'g Graph,
    section: Section,
    placed: HashMap<ParamId, u64>,
    need_data: bool,
}

impl Weights<'_> {
    fn data(&self, id: ParamId) -> Result<Option<&[f32]>, BackendError> {
        let p = self.graph.params.get(id);
        match p.data.as_deref() {
            Some(d) => Ok(Some(d)),
            None if self.need_data => Err(BackendError::Unbound(p.name.clone())),
            None => Ok(None),
        }
    }

    /// Appends `len` floats (zeros when `data` is `None`); returns the byte offset.
    fn push(&mut self, data: Option<&[f32]>, len: usize) -> u64 {
        match data {
            Some(d) => self.section.push_f32(d),
            None => self.section.push_zeros(len),
        }
    }

    /// A plain parameter, stored once however many readers it has.
    fn param(&mut self, id: ParamId) -> Result<u64, BackendError> {
        if let Some(&at) = self.placed.get(&id) {
            return Ok(at);
        }
        let len = self.graph.params.get(id).shape.iter().product();
        let data = self.data(id)?.map(<[f32]>::to_vec);
        let at = self.push(data.as_deref(), len);
        self.placed.insert(id, at);
        Ok(at)
    }

    /// A `[rows, cols]` parameter stored transposed as `[cols, rows]`.
    fn transposed(&mut self, id: ParamId, rows: usize, cols: usize) -> Result<u64, BackendError> {
        let data = self.data(id)?.map(|d| {
            let mut t = vec![0.0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = d[r * cols + c];
                }
            }
            t
        });
        Ok(self.push(data.as_deref(), rows * cols))
    }

    fn prologue(&mut self, access: &Access) -> Result<Option<kernels::Prologue>, BackendError> {
        let Some(p) = access.prologue else {
            return Ok(None);
        };
        Ok(Some(kernels::Prologue {
            scale: self.param(p.scale)? / 4,
            shift: self.param(p.shift)? / 4,
            relu: p.relu,
        }))
    }
}

/// Generates the kernels of an optimised, planned graph. With `need_data` every parameter must
/// be bound (model.bin); without it unbound parameters become zeros of their size, which is
/// enough for the source (`--emit cuda`): the text depends on sizes and offsets only.
pub fn generate(
    graph: &Graph,
    plan: &MemoryPlan,
    need_data: bool,
) -> Result<CudaProgram, BackendError> {
    generate_with(graph, plan, need_data, precision::Precision::Fp32)
}

/// [`generate`] with the convolutions' precision asked for (`--precision`): each layer gets it
/// or stays FP32 (`precision.rs`); with `bf16`, the buffers only BF16 layers read are stored in
/// BF16 and the arena placed again (`storage.rs`; the program's `plan`).
pub fn generate_with(
    graph: &Graph,
    plan: &MemoryPlan,
    need_data: bool,
    precision: precision::Precision,
) -> Result<CudaProgram, BackendError> {
    let (plan, chosen) = storage_plan(graph, plan, precision)?;
    let plan = &plan;
    let plans = steps::analyze(graph, plan)?;
    let mut w = Weights {
        graph,
        section: Section::default(),
        placed: HashMap::new(),
        need_data,
    };
    let mut consts = Section::default();
    let mut source = kernels::Source::default();
    source.bf16_storage = plan
        .liveness
        .buffers
        .iter()
        .any(|b| b.element == Element::Bf16);
    let mut out_steps = Vec::new();
    let mut descs = Vec::new();
    let mut launches = Vec::new();
    for (index, s) in plans.iter().enumerate() {
        let prologue = w.prologue_of(s.op)?;
        let unsupported = |reason: String| BackendError::Unsupported {
            node: s.label.clone(),
            op: s.op.mnemonic(),
            reason,
        };
        let (kind, desc, launch) = match s.op {
            Op::Conv2d(c) => {
                let k = (s.input.channels * c.kernel[0] * c.kernel[1]) as usize;
                let weight = w.transposed(c.weight, c.out_channels as usize, k)?;
                let bias = c.bias.map(|b| w.param(b)).transpose()?;
                let placed = Placed {
                    weight,
                    bias,
                    prologue: prologue.map(|p| (p.scale * 4, p.shift * 4)),
                };
                let desc = descriptors::conv(s, c, placed)?;
                let launch = kernels::Conv {
                    step: s,
                    conv: c,
                    precision: chosen[index],
                }
                .emit(index, &mut source)
                .map_err(unsupported)?;
                (StepKind::Conv, StepDesc::Conv(desc), launch)
            }
            Op::Pool(p) => {
                let placed = Placed {
                    prologue: prologue.map(|p| (p.scale * 4, p.shift * 4)),
                    ..Placed::default()
                };
                let desc = descriptors::pool(s, p, placed)?;
                let launch = kernels::Pool { step: s, pool: p }
                    .emit(index, &mut source)
                    .map_err(unsupported)?;
                (StepKind::Pool, StepDesc::Pool(desc), launch)
            }
            Op::Linear(l) => {
                let weight =
                    w.transposed(l.weight, l.out_features as usize, s.input.channels as usize)?;
                let bias = l.bias.map(|b| w.param(b)).transpose()?;
                let placed = Placed {
                    weight,
                    bias,
                    prologue: prologue.map(|p| (p.scale * 4, p.shift * 4)),
                };
                let desc = descriptors::linear(s, l, placed)?;
                let launch = kernels::Linear { step: s, linear: l }
                    .emit(index, &mut source)
                    .map_err(unsupported)?;
                (StepKind::Linear, StepDesc::Linear(desc), launch)
            }
            other => {
                return Err(BackendError::Unsupported {
                    node: s.label.clone(),
                    op: other.mnemonic(),
                    reason: "not a reader op".into(),
                });
            }
        };
        let desc_offset = match &desc {
            StepDesc::Conv(d) => consts.push_desc(d),
            StepDesc::Pool(d) => consts.push_desc(d),
            StepDesc::Linear(d) => consts.push_desc(d),
        };
        out_steps.push(descriptors::manifest_step(s, kind, desc_offset));
        descs.push(desc);
        launches.push(launch);
    }
    Ok(CudaProgram {
        source: source.finish(&graph.name),
        descs,
        weights: w.section.bytes,
        consts: consts.bytes,
        steps: out_steps,
        launches,
        precisions: source.precisions.clone(),
        plan: plan.clone(),
    })
}

/// Every step's precision (`precision::decide`; FP32 for pools and heads) and the plan with
/// the buffers `storage::decide` narrows to BF16 (the caller's plan when there are none).
fn storage_plan(
    graph: &Graph,
    plan: &MemoryPlan,
    requested: precision::Precision,
) -> Result<(MemoryPlan, Vec<precision::Precision>), BackendError> {
    let plans = steps::analyze(graph, plan)?;
    let mut chosen = Vec::with_capacity(plans.len());
    for s in &plans {
        chosen.push(match s.op {
            Op::Conv2d(conv) => {
                let shape = kernels::Conv {
                    step: s,
                    conv,
                    precision: requested,
                }
                .shape()
                .map_err(|reason| BackendError::Unsupported {
                    node: s.label.clone(),
                    op: s.op.mnemonic(),
                    reason,
                })?;
                precision::decide(&shape, requested)
            }
            _ => precision::Precision::Fp32,
        });
    }
    let elements = storage::decide(&plans, &chosen, plan);
    if elements.iter().all(|&e| e == Element::F32) {
        return Ok((plan.clone(), chosen));
    }
    let narrowed = crate::plan::memory::with_elements(plan, &elements).ok_or_else(|| {
        BackendError::Unsupported {
            node: graph.name.clone(),
            op: "plan",
            reason: "one element type per buffer".into(),
        }
    })?;
    Ok((narrowed, chosen))
}

impl Weights<'_> {
    fn prologue_of(&mut self, op: &Op) -> Result<Option<kernels::Prologue>, BackendError> {
        match op.access() {
            Some(a) => self.prologue(a),
            None => Ok(None),
        }
    }
}
