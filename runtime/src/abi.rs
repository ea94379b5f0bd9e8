//! The ABI between generated code and the runtime's kernels: the descriptor structs the
//! compiler writes into model.bin's constant section, the piece table generated code builds on
//! its stack, the kernel signatures, and the order of the kernel table passed to generated
//! code. Both sides use these exact `#[repr(C)]` layouts; changing one is a format-version bump.
//!
//! Must not contain kernel code (`cpu::kernels`) or file-format parsing (`format`).

/// Kernel return codes. Kernels never panic (a panic across `extern "C"` aborts).
pub const STATUS_OK: i32 = 0;
/// A descriptor is inconsistent (zero sizes, a piece count that does not add up, ...).
pub const STATUS_BAD_DESCRIPTOR: i32 = 1;

/// `combine` values.
pub const COMBINE_CONCAT: u32 = 0;
pub const COMBINE_SUM: u32 = 1;

/// `flags` bits.
pub const FLAG_PROLOGUE: u32 = 1; // per input channel x * scale + shift
pub const FLAG_PROLOGUE_RELU: u32 = 2; // then max(0, .)
pub const FLAG_BIAS: u32 = 4; // add bias per output channel
pub const FLAG_RELU: u32 = 8; // max(0, .) on the output
pub const FLAG_GLOBAL: u32 = 16; // pool / linear: average (or max) over the whole input plane
pub const FLAG_WINOGRAD: u32 = 32; // conv: Winograd F(2x2, 3x3) with weights packed for it
pub const FLAG_WINOGRAD4: u32 = 64; // conv: Winograd F(4x4, 3x3) with weights packed for it

/// `kind` values of [`PoolDesc`].
pub const POOL_AVG: u32 = 0;
pub const POOL_MAX: u32 = 1;

/// One input piece of one image: `channels` planes of `in_h * in_w` floats, contiguous (NCHW
/// within the image). Generated code fills an array of these on its stack for every call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    pub ptr: *const f32,
    pub channels: u64,
}

/// 2-D convolution of one image. Input: the pieces combined by `combine` (concatenation in
/// piece order, or elementwise sum: then every piece has `in_channels` channels), then the
/// prologue, then zero padding. Weights: packed by `cpu::kernels::pack_conv_weights` at
/// `weight_off` (byte offset into the weights section); bias, scale and shift are plain f32
/// arrays at their offsets (meaningful only when the matching flag is set).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConvDesc {
    pub in_channels: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_channels: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub combine: u32,
    pub flags: u32,
    pub n_pieces: u32,
    pub reserved: u32,
    pub weight_off: u64,
    pub bias_off: u64,
    pub scale_off: u64,
    pub shift_off: u64,
}

/// Pooling of one image (window or `FLAG_GLOBAL`), same input rules as [`ConvDesc`]. Average
/// pools count padding in the divisor; padding never wins a max.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolDesc {
    pub channels: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub kind: u32,
    pub combine: u32,
    pub flags: u32,
    pub n_pieces: u32,
    pub reserved: u32,
    pub scale_off: u64,
    pub shift_off: u64,
}

/// Fully connected layer of one image: `out = W · x + b` with `x` the combined, prologued
/// input, averaged over `in_h * in_w` when `FLAG_GLOBAL` is set (else `in_h = in_w = 1`).
/// `W` is row-major `[out_features, in_channels]` at `weight_off`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinearDesc {
    pub in_channels: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub out_features: u32,
    pub combine: u32,
    pub flags: u32,
    pub n_pieces: u32,
    pub reserved: u32,
    pub weight_off: u64,
    pub bias_off: u64,
    pub scale_off: u64,
    pub shift_off: u64,
}

/// Every kernel: `(descriptor, pieces, output of this image, weights section base, context)`.
/// The context is the runtime's, passed through generated code untouched: for the kernels of
/// [`crate::cpu::kernels::kernel_table`] it is scratch memory of at least the manifest's
/// `scratch_bytes`; for those of `kernel_table_parallel` it is a `cpu::pool::Team` (helper
/// threads, each with its own scratch).
pub type ConvKernel =
    unsafe extern "C" fn(*const ConvDesc, *const Piece, *mut f32, *const u8, *mut u8) -> i32;
pub type PoolKernel =
    unsafe extern "C" fn(*const PoolDesc, *const Piece, *mut f32, *const u8, *mut u8) -> i32;
pub type LinearKernel =
    unsafe extern "C" fn(*const LinearDesc, *const Piece, *mut f32, *const u8, *mut u8) -> i32;

/// Positions in the kernel table (an array of function pointers) passed to generated code.
pub const KERNEL_CONV: usize = 0;
pub const KERNEL_POOL: usize = 1;
pub const KERNEL_LINEAR: usize = 2;
pub const KERNEL_COUNT: usize = 3;

/// The generated entry point: `(kernel table, arena, weights, constants, kernel context, batch,
/// first, end)`. Runs every step for images `first..end` (with `end <= batch`) of a batch of
/// `batch` images, so threads may run disjoint image ranges of one batch at once. Returns
/// `STATUS_OK` or the first kernel's non-zero status, tagged with its step.
pub type Forward = unsafe extern "C" fn(
    *const usize,
    *mut u8,
    *const u8,
    *const u8,
    *mut u8,
    u64,
    u64,
    u64,
) -> i32;
