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
use crate::plan::memory::MemoryPlan;
use codegen::{BufferRef, CallPlan};
use ir::op::{Access, Combine, PoolKind};
use ir::{Graph, NodeId, Op, ParamId};
use runtime::abi;
use runtime::cpu::kernels;
use runtime::format::{Descriptor, Step, StepKind};
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
    pub scratch_bytes: u64,
    /// Every convolution's kernel, in schedule order.
    pub convs: Vec<ConvChoice>,
}

/// An aligned byte section being filled.
#[derive(Default)]
struct SectionBuilder {
    bytes: Vec<u8>,
}

impl SectionBuilder {
    fn push_f32(&mut self, data: &[f32]) -> u64 {
        self.align(64);
        let at = self.bytes.len() as u64;
        for v in data {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        at
    }

    fn align(&mut self, to: usize) {
        while !self.bytes.len().is_multiple_of(to) {
            self.bytes.push(0);
        }
    }

    /// Appends a descriptor in the byte layout the runtime reads (`format::Descriptor`).
    fn push_desc<D: Descriptor>(&mut self, desc: &D) -> u64 {
        self.align(64);
        let at = self.bytes.len() as u64;
        desc.encode(&mut self.bytes);
        at
    }
}

struct Lowering<'g> {
    graph: &'g Graph,
    plan: &'g MemoryPlan,
    weights: SectionBuilder,
    consts: SectionBuilder,
    numbering: ir::print::Numbering,
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

    fn buffer(&self, node: NodeId) -> Result<BufferRef, BackendError> {
        let b = self
            .plan
            .liveness
            .buffer(node)
            .ok_or_else(|| BackendError::Unsupported {
                node: self.numbering.name(node),
                op: self.graph.node(node).op.mnemonic(),
                reason: "its value has no buffer".into(),
            })?;
        let buf = &self.plan.liveness.buffers[b.0 as usize];
        Ok(BufferRef {
            offset_per_image: self.plan.arena.offsets[b.0 as usize],
            bytes_per_image: buf.bytes_per_image,
        })
    }

    /// A step's label: its value's name in `--emit opt-ir` numbering, its op and its scope.
    fn step_label(&self, id: NodeId) -> String {
        let node = self.graph.node(id);
        format!(
            "{} {} {}",
            self.numbering.name(id),
            node.op.mnemonic(),
            self.graph.scope(node.scope).name
        )
    }

    /// Prologue flags and parameter offsets of a reader.
    fn access(&mut self, access: &Access) -> Result<(u32, u32, u64, u64), BackendError> {
        let combine = match access.combine {
            Combine::Concat => abi::COMBINE_CONCAT,
            Combine::Sum => abi::COMBINE_SUM,
        };
        let Some(p) = access.prologue else {
            return Ok((combine, 0, 0, 0));
        };
        let mut flags = abi::FLAG_PROLOGUE;
        if p.relu {
            flags |= abi::FLAG_PROLOGUE_RELU;
        }
        let scale = self.param(p.scale)?;
        let shift = self.param(p.shift)?;
        Ok((combine, flags, scale, shift))
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
        plan,
        weights: SectionBuilder::default(),
        consts: SectionBuilder::default(),
        numbering: ir::print::Numbering::new(graph, &plan.liveness.schedule),
        placed: HashMap::new(),
    };
    let mut calls = Vec::new();
    let mut steps = Vec::new();
    let mut scratch = 0u64;
    let mut convs = Vec::new();
    for &id in &plan.liveness.schedule {
        let node = graph.node(id);
        let operands = graph.operands(id);
        let pieces: Vec<(BufferRef, u64)> = operands
            .iter()
            .map(|&o| Ok((l.buffer(o)?, u64::from(graph.node(o).ty.channels))))
            .collect::<Result<_, BackendError>>()?;
        let x = match operands.first() {
            Some(&o) => ir::op::combine(
                node.op.access().map_or(Combine::Concat, |a| a.combine),
                "reader",
                &operands
                    .iter()
                    .map(|&o2| graph.node(o2).ty)
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(graph.node(o).ty),
            None => node.ty,
        };
        let n_pieces = u32::try_from(pieces.len()).map_err(|_| BackendError::TooLarge {
            what: "pieces".into(),
        })?;
        let unsupported = |reason: &str| BackendError::Unsupported {
            node: l.numbering.name(id),
            op: node.op.mnemonic(),
            reason: reason.into(),
        };
        let (kind, kernel, desc_offset, flops) = match &node.op {
            Op::Input { .. } | Op::Output { .. } => continue,
            Op::Conv2d(c) => {
                let (combine, mut flags, scale_off, shift_off) = l.access(&c.access)?;
                let mut desc = abi::ConvDesc {
                    in_channels: x.channels,
                    in_h: x.height,
                    in_w: x.width,
                    out_channels: c.out_channels,
                    out_h: node.ty.height,
                    out_w: node.ty.width,
                    kernel_h: c.kernel[0],
                    kernel_w: c.kernel[1],
                    stride_h: c.stride[0],
                    stride_w: c.stride[1],
                    pad_h: c.pad[0],
                    pad_w: c.pad[1],
                    combine,
                    flags: 0,
                    n_pieces,
                    reserved: 0,
                    weight_off: 0,
                    bias_off: 0,
                    scale_off,
                    shift_off,
                };
                // Winograd F(4x4, 3x3) or F(2x2, 3x3) wherever a kernel takes the shape: 4x or
                // 2.25x fewer multiplications; the weights are transformed here, once.
                let cap = options.winograd_for(id);
                let winograd = kernels::winograd_flag(&desc, cap.largest_tile());
                let fastest = kernels::winograd_flag(&desc, Winograd::F4x4.largest_tile());
                desc.flags = winograd;
                flags |= winograd;
                let packed = kernels::pack_conv_weights(&desc, l.data(c.weight)?);
                desc.weight_off = l.weights.push_f32(&packed);
                if let Some(b) = c.bias {
                    flags |= abi::FLAG_BIAS;
                    desc.bias_off = l.param(b)?;
                }
                if c.relu {
                    flags |= abi::FLAG_RELU;
                }
                desc.flags = flags;
                scratch = scratch.max(kernels::conv_scratch_bytes(&desc));
                let at = l.consts.push_desc(&desc);
                let macs = ir::cost::node_macs(graph, id);
                convs.push(ConvChoice {
                    node: id,
                    label: l.step_label(id),
                    kernel: ConvKernel::from_flag(winograd),
                    fastest: ConvKernel::from_flag(fastest),
                    macs,
                });
                (
                    StepKind::Conv,
                    abi::KERNEL_CONV,
                    at,
                    ir::cost::node_flops(graph, id),
                )
            }
            Op::Pool(p) => {
                let (combine, mut flags, scale_off, shift_off) = l.access(&p.access)?;
                if p.global {
                    flags |= abi::FLAG_GLOBAL;
                }
                let kind = match p.kind {
                    PoolKind::Avg => abi::POOL_AVG,
                    PoolKind::Max => abi::POOL_MAX,
                };
                let desc = abi::PoolDesc {
                    channels: x.channels,
                    in_h: x.height,
                    in_w: x.width,
                    out_h: node.ty.height,
                    out_w: node.ty.width,
                    kernel_h: p.kernel[0],
                    kernel_w: p.kernel[1],
                    stride_h: p.stride[0],
                    stride_w: p.stride[1],
                    pad_h: p.pad[0],
                    pad_w: p.pad[1],
                    kind,
                    combine,
                    flags,
                    n_pieces,
                    reserved: 0,
                    scale_off,
                    shift_off,
                };
                scratch = scratch.max(kernels::pool_scratch_bytes(&desc));
                let at = l.consts.push_desc(&desc);
                (
                    StepKind::Pool,
                    abi::KERNEL_POOL,
                    at,
                    ir::cost::node_flops(graph, id),
                )
            }
            Op::Linear(lin) => {
                let (combine, mut flags, scale_off, shift_off) = l.access(&lin.access)?;
                if lin.global_pool {
                    flags |= abi::FLAG_GLOBAL;
                }
                let weight_off = l.param(lin.weight)?;
                let bias_off = match lin.bias {
                    Some(b) => {
                        flags |= abi::FLAG_BIAS;
                        l.param(b)?
                    }
                    None => 0,
                };
                let desc = abi::LinearDesc {
                    in_channels: x.channels,
                    in_h: x.height,
                    in_w: x.width,
                    out_features: lin.out_features,
                    combine,
                    flags,
                    n_pieces,
                    reserved: 0,
                    weight_off,
                    bias_off,
                    scale_off,
                    shift_off,
                };
                scratch = scratch.max(kernels::linear_scratch_bytes(&desc));
                let at = l.consts.push_desc(&desc);
                (
                    StepKind::Linear,
                    abi::KERNEL_LINEAR,
                    at,
                    ir::cost::node_flops(graph, id),
                )
            }
            Op::BatchNorm(_) | Op::Relu | Op::Concat | Op::Add => {
                return Err(unsupported(
                    "the optimiser leaves no such node in a model it compiles; run the pass pipeline first",
                ));
            }
        };
        let output = l.buffer(id)?;
        let buffer_index = |n: NodeId| l.plan.liveness.buffer(n).map_or(0, |b| b.0);
        steps.push(Step {
            kind,
            label: l.step_label(id),
            desc_offset,
            output: buffer_index(id),
            pieces: operands.iter().map(|&o| buffer_index(o)).collect(),
            flops_per_image: flops,
        });
        calls.push(CallPlan {
            kernel,
            desc_offset,
            output,
            pieces,
        });
    }
    let code = match cache {
        Some((cached_calls, code)) if *cached_calls == calls => code.clone(),
        _ => {
            let code = codegen::compile(&calls)?;
            *cache = Some((calls, code.clone()));
            code
        }
    };
    Ok(CpuProgram {
        weights: l.weights.bytes,
        consts: l.consts.bytes,
        steps,
        code,
        scratch_bytes: scratch,
        convs,
    })
}
