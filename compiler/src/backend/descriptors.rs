//! The `abi` side of a step, shared by every backend: the descriptor of a conv, pool or linear
//! step (geometry from the step's types, the flags its op implies, the offsets where the
//! backend placed its arrays), the 64-byte aligned sections descriptors and weights go into,
//! and the manifest's `Step`. The CPU backend runs its kernels on these descriptors; the CUDA
//! backend writes them so the loader can check every step's geometry against its buffers.
//!
//! Must not decide a weight layout (each backend packs its own arrays and says where they
//! went, [`Placed`]) and must not change the graph or the plan.

use super::BackendError;
use super::steps::StepPlan;
use ir::op::{Access, Combine, Conv2d, Linear, Pool, PoolKind};
use runtime::abi;
use runtime::format::{Descriptor, Step, StepKind};

/// Byte offsets in the weights section of the arrays a step reads (0 where it reads none).
#[derive(Clone, Copy, Debug, Default)]
pub struct Placed {
    pub weight: u64,
    pub bias: Option<u64>,
    /// The input prologue's scale and shift.
    pub prologue: Option<(u64, u64)>,
}

/// `abi::COMBINE_*` of a reader.
pub fn combine(access: &Access) -> u32 {
    match access.combine {
        Combine::Concat => abi::COMBINE_CONCAT,
        Combine::Sum => abi::COMBINE_SUM,
    }
}

/// The prologue's flags of a reader.
pub fn prologue_flags(access: &Access) -> u32 {
    match access.prologue {
        None => 0,
        Some(p) if p.relu => abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU,
        Some(_) => abi::FLAG_PROLOGUE,
    }
}

fn n_pieces(s: &StepPlan<'_>) -> Result<u32, BackendError> {
    u32::try_from(s.pieces.len()).map_err(|_| BackendError::TooLarge {
        what: "pieces".into(),
    })
}

fn flag(on: bool, flag: u32) -> u32 {
    if on { flag } else { 0 }
}

/// A convolution step's descriptor: prologue, bias and ReLU flags set; no Winograd flag (the
/// CPU backend adds its choice).
pub fn conv(s: &StepPlan<'_>, c: &Conv2d, placed: Placed) -> Result<abi::ConvDesc, BackendError> {
    let (scale_off, shift_off) = placed.prologue.unwrap_or((0, 0));
    Ok(abi::ConvDesc {
        in_channels: s.input.channels,
        in_h: s.input.height,
        in_w: s.input.width,
        out_channels: c.out_channels,
        out_h: s.output.height,
        out_w: s.output.width,
        kernel_h: c.kernel[0],
        kernel_w: c.kernel[1],
        stride_h: c.stride[0],
        stride_w: c.stride[1],
        pad_h: c.pad[0],
        pad_w: c.pad[1],
        combine: combine(&c.access),
        flags: prologue_flags(&c.access)
            | flag(c.bias.is_some(), abi::FLAG_BIAS)
            | flag(c.relu, abi::FLAG_RELU),
        n_pieces: n_pieces(s)?,
        reserved: 0,
        weight_off: placed.weight,
        bias_off: placed.bias.unwrap_or(0),
        scale_off,
        shift_off,
    })
}

/// A pooling step's descriptor.
pub fn pool(s: &StepPlan<'_>, p: &Pool, placed: Placed) -> Result<abi::PoolDesc, BackendError> {
    let (scale_off, shift_off) = placed.prologue.unwrap_or((0, 0));
    Ok(abi::PoolDesc {
        channels: s.input.channels,
        in_h: s.input.height,
        in_w: s.input.width,
        out_h: s.output.height,
        out_w: s.output.width,
        kernel_h: p.kernel[0],
        kernel_w: p.kernel[1],
        stride_h: p.stride[0],
        stride_w: p.stride[1],
        pad_h: p.pad[0],
        pad_w: p.pad[1],
        kind: match p.kind {
            PoolKind::Avg => abi::POOL_AVG,
            PoolKind::Max => abi::POOL_MAX,
        },
        combine: combine(&p.access),
        flags: prologue_flags(&p.access) | flag(p.global, abi::FLAG_GLOBAL),
        n_pieces: n_pieces(s)?,
        reserved: 0,
        scale_off,
        shift_off,
    })
}

/// A linear step's descriptor.
pub fn linear(
    s: &StepPlan<'_>,
    l: &Linear,
    placed: Placed,
) -> Result<abi::LinearDesc, BackendError> {
    let (scale_off, shift_off) = placed.prologue.unwrap_or((0, 0));
    Ok(abi::LinearDesc {
        in_channels: s.input.channels,
        in_h: s.input.height,
        in_w: s.input.width,
        out_features: l.out_features,
        combine: combine(&l.access),
        flags: prologue_flags(&l.access)
            | flag(l.bias.is_some(), abi::FLAG_BIAS)
            | flag(l.global_pool, abi::FLAG_GLOBAL),
        n_pieces: n_pieces(s)?,
        reserved: 0,
        weight_off: placed.weight,
        bias_off: placed.bias.unwrap_or(0),
        scale_off,
        shift_off,
    })
}

/// The manifest's entry for a step whose descriptor went to `desc_offset`.
pub fn manifest_step(s: &StepPlan<'_>, kind: StepKind, desc_offset: u64) -> Step {
    Step {
        kind,
        label: s.label.clone(),
        desc_offset,
        output: s.out.index,
        pieces: s.pieces.iter().map(|p| p.buffer.index).collect(),
        flops_per_image: s.flops_per_image,
    }
}

/// A byte section being filled, every entry 64-byte aligned (weights: vector loads never split
/// a cache line at an array's start; constants: descriptors are read in place).
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub bytes: Vec<u8>,
}

impl Section {
    fn align(&mut self) -> u64 {
        while !self.bytes.len().is_multiple_of(64) {
            self.bytes.push(0);
        }
        self.bytes.len() as u64
    }

    /// Appends little-endian floats; returns their byte offset.
    pub fn push_f32(&mut self, data: &[f32]) -> u64 {
        let at = self.align();
        for v in data {
            self.bytes.extend_from_slice(&v.to_le_bytes());
        }
        at
    }

    /// Appends `len` zero floats (a parameter's size, when only the layout is wanted).
    pub fn push_zeros(&mut self, len: usize) -> u64 {
        let at = self.align();
        self.bytes.resize(self.bytes.len() + 4 * len, 0);
        at
    }

    /// Appends a descriptor in the byte layout the runtime reads; returns its offset.
    pub fn push_desc<D: Descriptor>(&mut self, desc: &D) -> u64 {
        let at = self.align();
        desc.encode(&mut self.bytes);
        at
    }
}
