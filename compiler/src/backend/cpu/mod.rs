//! The CPU backend: turns the optimised graph and its memory plan into kernel calls (one
//! `abi` descriptor per step, in the constant section), the weights section (folded, packed
//! for the kernels, 64-byte aligned) and Cranelift machine code that runs the schedule.
//!
//! Layout: activations are NCHW float32; a buffer of `B` bytes per image at plan offset `o`
//! (planned at batch 1) lives at `o * batch` for a batch, so one plan serves every batch size
//! up to the maximum (offsets and sizes scale together; 64-byte alignment is kept).
//! Must not change the graph or the plan.

pub mod codegen;

use super::BackendError;
use super::descriptors::{self, Placed, Section};
use super::steps;
use crate::plan::memory::MemoryPlan;
pub use codegen::CpuArch;
use codegen::{BufferRef, CallPlan};
use ir::op::Access;
use ir::{Graph, NodeId, Op, ParamId};
use runtime::abi;
use runtime::cpu::kernels;
use runtime::format::{Step, StepKind};
use std::collections::{BTreeMap, HashMap};

/// The largest Winograd tile the backend may use for a 3x3 convolution (the accuracy guard,
/// `crate::kernel_select`, decides it per layer by default). F(4x4, 3x3) does 4x
/// fewer multiplications than the direct method and F(2x2, 3x3) 2.25x. F(4x4) rounds more: on
/// the golden models the largest error against PyTorch is 1.5e-4 with F(4x4), 3.4e-5 with
/// F(2x2) and 4.3e-5 direct (`docs/benchmarks.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Winograd {
    /// Direct convolution only.
    Off,
    /// F(2x2, 3x3) where it applies.
    F2x2,
    /// F(4x4, 3x3) where it applies, else F(2x2, 3x3).
    #[default]
    F4x4,
}

impl Winograd {
    /// The largest output tile size m allowed (`kernels::winograd_flag`).
    pub fn largest_tile(self) -> usize {
        match self {
            Winograd::Off => 0,
            Winograd::F2x2 => 2,
            Winograd::F4x4 => 4,
        }
    }
}

/// Choices of the CPU backend that trade speed against rounding.
#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// The largest Winograd tile of every 3x3 convolution not named in `per_layer`.
    pub winograd: Winograd,
    /// The largest Winograd tile of single convolutions (node ids of the optimised graph),
    /// overriding `winograd`: how the accuracy guard (`crate::kernel_select`) demotes the
    /// layers that round too much.
    pub per_layer: BTreeMap<NodeId, Winograd>,
}

impl CpuOptions {
    /// Every 3x3 convolution capped at `winograd`.
    pub fn uniform(winograd: Winograd) -> CpuOptions {
        CpuOptions {
            winograd,
            per_layer: BTreeMap::new(),
        }
    }

    /// The cap of the convolution `node`.
    pub fn winograd_for(&self, node: NodeId) -> Winograd {
        self.per_layer.get(&node).copied().unwrap_or(self.winograd)
    }
}

/// The kernel a convolution step got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// Direct convolution (every 1x1, strided or small-map convolution, and 3x3 ones where
    /// Winograd is off or does not apply).
    Direct,
    /// Winograd F(2x2, 3x3).
    WinogradF2,
    /// Winograd F(4x4, 3x3).
    WinogradF4,
}

impl ConvKernel {
    fn from_flag(flag: u32) -> ConvKernel {
        if flag & abi::FLAG_WINOGRAD4 != 0 {
            ConvKernel::WinogradF4
        } else if flag & abi::FLAG_WINOGRAD != 0 {
            ConvKernel::WinogradF2
        } else {
            ConvKernel::Direct
        }
    }

    /// The largest-tile cap that selects this kernel where it applies.
    pub fn cap(self) -> Winograd {
        match self {
            ConvKernel::Direct => Winograd::Off,
            ConvKernel::WinogradF2 => Winograd::F2x2,
            ConvKernel::WinogradF4 => Winograd::F4x4,
        }
    }

    /// Multiplications per output relative to the direct method (F(m x m, 3x3): (m+2)^2 per
    /// m^2 outputs against 9).
    pub fn relative_multiplies(self) -> f64 {
        match self {
            ConvKernel::Direct => 1.0,
            ConvKernel::WinogradF2 => 16.0 / (4.0 * 9.0),
            ConvKernel::WinogradF4 => 36.0 / (16.0 * 9.0),
        }
    }
}

impl std::fmt::Display for ConvKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvKernel::Direct => "direct",
            ConvKernel::WinogradF2 => "winograd F(2x2,3x3)",
            ConvKernel::WinogradF4 => "winograd F(4x4,3x3)",
        })
    }
}

/// One convolution step's kernel, as compiled.
#[derive(Clone, Debug)]
pub struct ConvChoice {
    pub node: NodeId,
    /// The step's label (`%12 conv stage-0.block-3`).
    pub label: String,
    pub kernel: ConvKernel,
    /// The fastest kernel the shape allows (what `Winograd::F4x4` would pick).
    pub fastest: ConvKernel,
    /// Multiply-accumulates per image.
    pub macs: u64,
}

/// Sections and tables the artifact writer needs.
pub struct CpuProgram {
    pub weights: Vec<u8>,
    pub consts: Vec<u8>,
    pub steps: Vec<Step>,
    pub code: codegen::Compiled,
    /// The kernel calls `code` was compiled from (to compile them again for another
    /// architecture, [`retarget`]).
    pub calls: Vec<CallPlan>,
    pub scratch_bytes: u64,
    /// Every convolution's kernel, in schedule order.
    pub convs: Vec<ConvChoice>,
}

struct Lowering<'g> {
    graph: &'g Graph,
    weights: Section,
    consts: Section,
    /// Where each plain parameter already went: a batch norm's scale and shift read by several
    /// readers are stored once.
    placed: HashMap<ParamId, u64>,
}

impl Lowering<'_> {
    fn data(&self, id: ParamId) -> Result<&[f32], BackendError> {
        self.graph
            .params
            .data(id)
            .ok_or_else(|| BackendError::Unbound(self.graph.params.get(id).name.clone()))
    }

    fn param(&mut self, id: ParamId) -> Result<u64, BackendError> {
        if let Some(&at) = self.placed.get(&id) {
            return Ok(at);
        }
        let graph = self.graph;
        let data = graph
            .params
            .data(id)
            .ok_or_else(|| BackendError::Unbound(graph.params.get(id).name.clone()))?;
        let at = self.weights.push_f32(data);
        self.placed.insert(id, at);
        Ok(at)
    }

    /// Where a reader's prologue scale and shift went (placed on first use).
    fn prologue(&mut self, access: Option<&Access>) -> Result<Option<(u64, u64)>, BackendError> {
        match access.and_then(|a| a.prologue) {
            Some(p) => Ok(Some((self.param(p.scale)?, self.param(p.shift)?))),
            None => Ok(None),
        }
    }
}

/// Lowers the optimised graph to kernel calls, sections and machine code, every 3x3
/// convolution capped as `options` say (the accuracy guard, `crate::kernel_select`, decides
/// the caps from measurements; the backend only applies them).
pub fn compile_with(
    graph: &Graph,
    plan: &MemoryPlan,
    options: &CpuOptions,
) -> Result<CpuProgram, BackendError> {
    compile_reusing(graph, plan, options, &mut None)
}

/// `program` with its forward function compiled for `arch` instead: weights, descriptors and
/// steps are the same on every architecture (the runtime's kernels read them), only the code
/// that calls the kernels differs. How cross compilation works: the kernel choice is made
/// (and measured) with host code, then the calls are compiled for the target.
pub fn retarget(program: &mut CpuProgram, arch: CpuArch) -> Result<(), BackendError> {
    if program.code.arch != arch.name() {
        program.code = codegen::compile(&program.calls, arch)?;
    }
    Ok(())
}

/// Machine code compiled for one list of kernel calls, kept to be reused by the next compile
/// whose calls are the same (the Winograd choice changes descriptors and weights, which the
/// code reads through offsets, but not the calls).
pub type CodeCache = Option<(Vec<CallPlan>, codegen::Compiled)>;

/// [`compile_with`], reusing `cache`'s machine code when the calls match, and leaving this
/// compile's code in it.
pub fn compile_reusing(
    graph: &Graph,
    plan: &MemoryPlan,
    options: &CpuOptions,
    cache: &mut CodeCache,
) -> Result<CpuProgram, BackendError> {
    let mut l = Lowering {
        graph,
        weights: Section::default(),
        consts: Section::default(),
        placed: HashMap::new(),
    };
    let mut calls = Vec::new();
    let mut steps = Vec::new();
    let mut scratch = 0u64;
    let mut convs = Vec::new();
    for s in steps::analyze(graph, plan)? {
        let prologue = l.prologue(s.op.access())?;
        let (kind, kernel, desc_offset) = match s.op {
            Op::Conv2d(c) => {
                let placed = Placed {
                    prologue,
                    ..Placed::default()
                };
                let mut desc = descriptors::conv(&s, c, placed)?;
                // Winograd F(4x4, 3x3) or F(2x2, 3x3) wherever a kernel takes the shape and
                // the layer's cap allows: 4x or 2.25x fewer multiplications; the weights are
                // transformed here, once.
                let winograd =
                    kernels::winograd_flag(&desc, options.winograd_for(s.node).largest_tile());
                let fastest = kernels::winograd_flag(&desc, Winograd::F4x4.largest_tile());
                desc.flags |= winograd;
                let packed = kernels::pack_conv_weights(&desc, l.data(c.weight)?);
                desc.weight_off = l.weights.push_f32(&packed);
                if let Some(b) = c.bias {
                    desc.bias_off = l.param(b)?;
                }
                scratch = scratch.max(kernels::conv_scratch_bytes(&desc));
                convs.push(ConvChoice {
                    node: s.node,
                    label: s.label.clone(),
                    kernel: ConvKernel::from_flag(winograd),
                    fastest: ConvKernel::from_flag(fastest),
                    macs: ir::cost::node_macs(graph, s.node),
                });
                (StepKind::Conv, abi::KERNEL_CONV, l.consts.push_desc(&desc))
            }
            Op::Pool(p) => {
                let placed = Placed {
                    prologue,
                    ..Placed::default()
                };
                let desc = descriptors::pool(&s, p, placed)?;
                scratch = scratch.max(kernels::pool_scratch_bytes(&desc));
                (StepKind::Pool, abi::KERNEL_POOL, l.consts.push_desc(&desc))
            }
            Op::Linear(lin) => {
                let placed = Placed {
                    weight: l.param(lin.weight)?,
                    bias: lin.bias.map(|b| l.param(b)).transpose()?,
                    prologue,
                };
                let desc = descriptors::linear(&s, lin, placed)?;
                scratch = scratch.max(kernels::linear_scratch_bytes(&desc));
                (
                    StepKind::Linear,
                    abi::KERNEL_LINEAR,
                    l.consts.push_desc(&desc),
                )
            }
            other => {
                return Err(BackendError::Unsupported {
                    node: s.label.clone(),
                    op: other.mnemonic(),
                    reason: "not a reader op".into(),
                });
            }
        };
        let buffer = |b: &steps::BufferUse| BufferRef {
            offset_per_image: b.offset_per_image,
            bytes_per_image: b.bytes_per_image,
        };
        calls.push(CallPlan {
            kernel,
            desc_offset,
            output: buffer(&s.out),
            pieces: s
                .pieces
                .iter()
                .map(|p| (buffer(&p.buffer), u64::from(p.channels)))
                .collect(),
        });
        steps.push(descriptors::manifest_step(&s, kind, desc_offset));
    }
    let code = match cache {
        Some((cached_calls, code)) if *cached_calls == calls => code.clone(),
        _ => {
            // Candidates are measured by running them here: host code (x86-64 off the two
            // architectures sparsec knows, as before cross compilation existed).
            let code = codegen::compile(&calls, CpuArch::host().unwrap_or_default())?;
            *cache = Some((calls.clone(), code.clone()));
            code
        }
    };
    Ok(CpuProgram {
        weights: l.weights.bytes,
        consts: l.consts.bytes,
        steps,
        code,
        calls,
        scratch_bytes: scratch,
        convs,
    })
}
