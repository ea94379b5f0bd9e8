//! The CPU kernels called by generated code through the kernel table, and the weight packing and
//! descriptor checks that go with them.
//!
//! Owns the numbers of a step: combining the input pieces (concatenation or sum), the per-channel
//! prologue `x * scale + shift` and its ReLU, zero padding, convolution, pooling and the linear
//! layer, exactly as `ir::op` defines them (and `ir::interp` computes them); the packed
//! convolution weight layout ([`pack_conv_weights`]); the scratch each kernel needs
//! ([`conv_scratch_bytes`], ...); and the consistency checks a loader runs on every descriptor
//! before it runs a model ([`validate_conv`], ...). Two variants of every kernel exist: a portable
//! one (plain loops) and, on x86-64, an AVX2+FMA one (on aarch64 a NEON one) picked by
//! [`kernel_table`] at run time. `SPARSEC_KERNELS=portable` in the environment (read once) makes
//! every table portable, to compare the two on a machine.
//!
//! Must not parse anything (the loader owns `model.bin`), must not allocate inside a kernel, and a
//! kernel must never panic (a panic across `extern "C"` aborts): a kernel re-checks the cheap,
//! per-call facts (null pointers, alignment, the descriptor's geometry, that the pieces add up)
//! and returns [`abi::STATUS_BAD_DESCRIPTOR`] instead. What a kernel cannot check (that offsets
//! and lengths lie inside the weights section, that buffers are as large as the descriptor says)
//! the loader checks once with `validate_*` and the caller guarantees.
//!
//! # The kernel contract
//! Every kernel takes `(desc, pieces, out, weights, scratch)` for one image:
//! - `desc` points to a descriptor that passed `validate_*` against this weights section;
//! - `pieces` points to `desc.n_pieces` pieces, each `ptr` valid for `channels * in_h * in_w`
//!   reads (for a sum, every piece has all `in_channels` channels; for a concatenation the
//!   channels add up to `in_channels`);
//! - `out` is valid for writes of the whole output of the image (`out_channels * out_h * out_w`
//!   floats, `channels * out_h * out_w` for a pool, `out_features` for a linear layer);
//! - `scratch` is valid for writes of the `*_scratch_bytes` of the descriptor;
//! - `out`, `scratch` and the pieces do not overlap (pieces may overlap each other);
//! - every pointer is 4-byte aligned (64-byte alignment of `scratch`, `out` and the weights
//!   section is recommended for speed, never required).
//!
//! # Flags
//! `FLAG_PROLOGUE` applies `x * scale + shift`, `FLAG_PROLOGUE_RELU` then the input ReLU (also
//! without the affine part), `FLAG_RELU` an output ReLU in every kernel, `FLAG_BIAS` a bias in
//! convolutions and linear layers, `FLAG_GLOBAL` a whole-plane pool or average in pools and linear
//! layers; any other bit makes a descriptor inconsistent. ReLU and max pooling propagate NaN, as
//! PyTorch and `ir::interp` do.
//!
//! # Convolution
//! The output is cut into bands: runs of output rows, or for a plain matrix product (1x1
//! window, no padding, stride 1) runs of output pixels, each band's input about 256 KiB (64 KiB
//! for a matrix product, whose output is as large) so that it stays in L2. Per band the kernel (1) packs the combined, prologued, zero-padded input the
//! band reads into `scratch`, each input element transformed once (only the `kernel_h -
//! stride_h` rows shared by two row bands twice): one plane per input channel, `plane` floats
//! apart (an odd number of 64-byte lines, against cache-set aliasing), of padded rows of
//! `row = stride_w * ceil((in_w + 2 pad_w) / stride_w)` floats where padded column `x` sits at
//! `(x % stride_w) * (row / stride_w) + x / stride_w` (stride 1: at `x`), so that the input an
//! output row reads at one tap is contiguous whatever the stride; then (2) computes tiles of
//! [`CONV_OC_BLOCK`] output channels by 2 vectors of 8 output pixels (a vector is a run along
//! one output row, or along the band's pixels for a matrix product; shorter ones are masked),
//! accumulating over input channels and taps in f32 registers with broadcast weights and FMA,
//! and adding bias and ReLU as it stores. The blocks of output channels go in groups whose
//! weights fit half of L1; every tile of the band passes under one group before the next, so
//! the group's weights stay in L1 and a tile's input is read from L2 once per group.

use crate::abi::{self, ConvDesc, LinearDesc, Piece, PoolDesc};
use crate::cpu::team::{MAX_PARTS, Team};
use std::slice;
use std::sync::atomic::{AtomicI32, Ordering};

mod winograd;

/// Output channels per block of the packed convolution weights (see [`pack_conv_weights`]).
pub const CONV_OC_BLOCK: usize = 6;

/// Output pixels per vector (8 f32 lanes of an AVX register).
const LANES: usize = 8;
/// Largest channel count, spatial size or padding a descriptor may state.
const MAX_DIM: u64 = 1 << 20;
/// Largest number of floats any buffer of one step may hold (64 GiB): every size computed from a
/// valid descriptor fits in `usize` on a 64-bit target and never overflows.
const MAX_FLOATS: u64 = 1 << 34;
/// The alignment the compiler gives every offset into the weights section.
const WEIGHT_ALIGN: u64 = 64;

// ---------------------------------------------------------------------------------------------
// Public API: tables, packing, scratch sizes, validation.
// ---------------------------------------------------------------------------------------------

/// Whether `SPARSEC_KERNELS=portable` asks for the portable kernels only (read once).
fn forced_portable() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("SPARSEC_KERNELS").is_some_and(|v| v == "portable"))
}

/// The name of the kernels [`kernel_table`] picks on this CPU: `"avx2"`, `"neon"` or
/// `"portable"`.
pub fn kernel_variant() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return "avx2";
    }
    #[cfg(target_arch = "aarch64")]
    if neon::available() {
        return "neon";
    }
    "portable"
}

/// The kernel table for this CPU: AVX2+FMA variants when `is_x86_feature_detected!` says so,
/// NEON ones on aarch64 when `is_aarch64_feature_detected!` does, else portable ones. Function
/// pointers as `usize`, in `abi::KERNEL_*` order.
pub fn kernel_table() -> [usize; abi::KERNEL_COUNT] {
    #[cfg(target_arch = "aarch64")]
    if neon::available() {
        let mut t = [0; abi::KERNEL_COUNT];
        t[abi::KERNEL_CONV] = conv2d_neon as abi::ConvKernel as usize;
        t[abi::KERNEL_POOL] = pool_neon as abi::PoolKernel as usize;
        t[abi::KERNEL_LINEAR] = linear_neon as abi::LinearKernel as usize;
        return t;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        let mut t = [0; abi::KERNEL_COUNT];
        t[abi::KERNEL_CONV] = conv2d_avx2 as abi::ConvKernel as usize;
        t[abi::KERNEL_POOL] = pool_avx2 as abi::PoolKernel as usize;
        t[abi::KERNEL_LINEAR] = linear_avx2 as abi::LinearKernel as usize;
        return t;
    }
    portable_kernel_table()
}

/// The portable kernels, whatever the CPU (tests compare them with [`kernel_table`]).
pub fn portable_kernel_table() -> [usize; abi::KERNEL_COUNT] {
    let mut t = [0; abi::KERNEL_COUNT];
    t[abi::KERNEL_CONV] = conv2d_portable as abi::ConvKernel as usize;
    t[abi::KERNEL_POOL] = pool_portable as abi::PoolKernel as usize;
    t[abi::KERNEL_LINEAR] = linear_portable as abi::LinearKernel as usize;
    t
}

/// Floats of the packed weights of `desc` ([`pack_conv_weights`]): `out_channels` rounded up to
/// [`CONV_OC_BLOCK`], times `in_channels * kernel_h * kernel_w`. Saturates on absurd descriptors
/// (which [`validate_conv`] rejects).
pub fn packed_conv_weight_len(desc: &ConvDesc) -> u64 {
    let m = winograd_tile(desc.flags) as u64;
    if m != 0 {
        return ((m + 2) * (m + 2)).saturating_mul(
            u64::from(desc.out_channels)
                .div_ceil(CONV_OC_BLOCK as u64)
                .saturating_mul(CONV_OC_BLOCK as u64)
                .saturating_mul(u64::from(desc.in_channels)),
        );
    }
    let blocks = u64::from(desc.out_channels).div_ceil(CONV_OC_BLOCK as u64);
    [
        CONV_OC_BLOCK as u64,
        u64::from(desc.in_channels),
        u64::from(desc.kernel_h),
        u64::from(desc.kernel_w),
    ]
    .iter()
    .fold(blocks, |a, &b| a.saturating_mul(b))
}

/// Packs PyTorch-layout convolution weights `[out][in][kh][kw]` into the layout the convolution
/// kernels read: blocks of [`CONV_OC_BLOCK`] output channels, each block
/// `[in][kh][kw][CONV_OC_BLOCK]` (the block's weights of one input channel and tap are
/// contiguous), the last block padded with zeros. Element
/// `((((b * in + c) * kh + y) * kw + x) * CONV_OC_BLOCK + o)` holds `w[b * CONV_OC_BLOCK + o][c][y][x]`.
/// The length is [`packed_conv_weight_len`]. The layout is the same for every kernel variant.
///
/// `weights` must hold `out * in * kh * kw` values (the IR verifier guarantees it); values
/// missing from a shorter slice pack as 0 and extra ones are ignored. Never panics: sizes beyond
/// what [`validate_conv`] accepts pack to an empty vector.
pub fn pack_conv_weights(desc: &ConvDesc, weights: &[f32]) -> Vec<f32> {
    let ob = CONV_OC_BLOCK;
    let len = packed_conv_weight_len(desc);
    if len > MAX_FLOATS {
        return Vec::new();
    }
    // In range: `len` (which bounds all of these) is at most 2^34.
    let oc = desc.out_channels as usize;
    let m = winograd_tile(desc.flags);
    if m != 0 {
        return winograd::pack_weights(m, desc.in_channels as usize, oc, weights);
    }
    let k = desc.in_channels as usize * desc.kernel_h as usize * desc.kernel_w as usize;
    let mut packed = vec![0.0f32; len as usize];
    for o in 0..oc {
        let (b, lane) = (o / ob, o % ob);
        for i in 0..k {
            // `i` runs over (c, y, x) in PyTorch order, which is also the packed order.
            packed[(b * k + i) * ob + lane] = weights.get(o * k + i).copied().unwrap_or(0.0);
        }
    }
    packed
}

/// Bytes of scratch a convolution needs for one image: the packed, padded input of one band
/// (module doc), at most about 256 KiB unless one output row's input is larger.
/// 0 for an invalid descriptor.
pub fn conv_scratch_bytes(desc: &ConvDesc) -> u64 {
    conv_geom(desc).map_or(0, |g| 4 * g.scratch_len as u64)
}

/// Bytes of scratch a pool needs for one image: one prologued input plane.
/// 0 for an invalid descriptor.
pub fn pool_scratch_bytes(desc: &PoolDesc) -> u64 {
    pool_geom(desc).map_or(0, |g| 4 * g.scratch_len as u64)
}

/// Bytes of scratch a linear layer needs for one image: its feature vector.
/// 0 for an invalid descriptor.
pub fn linear_scratch_bytes(desc: &LinearDesc) -> u64 {
    linear_geom(desc).map_or(0, |g| 4 * g.scratch_len as u64)
}

mod validate;
pub use validate::{validate_conv, validate_linear, validate_pool};

// ---------------------------------------------------------------------------------------------
// Descriptor geometry: the checks a kernel repeats on every call (no allocation).
// ---------------------------------------------------------------------------------------------

/// Why a descriptor is inconsistent (static text: kernels must not allocate).
#[derive(Clone, Copy, Debug)]
struct Bad(&'static str);

fn dim(v: u32, why: &'static str) -> Result<usize, Bad> {
    if v == 0 || u64::from(v) > MAX_DIM {
        return Err(Bad(why));
    }
    Ok(v as usize)
}

fn pad(v: u32) -> Result<usize, Bad> {
    if u64::from(v) > MAX_DIM {
        return Err(Bad("padding must be at most 2^20"));
    }
    Ok(v as usize)
}

/// The product of `parts`, if it is at most [`MAX_FLOATS`].
fn floats(parts: &[usize], why: &'static str) -> Result<usize, Bad> {
    let mut p: u64 = 1;
    for &x in parts {
        p = p.checked_mul(x as u64).ok_or(Bad(why))?;
    }
    if p > MAX_FLOATS {
        return Err(Bad(why));
    }
    usize::try_from(p).map_err(|_| Bad(why))
}

/// Checks the sliding-window rule along one axis: `out == (size + 2 pad - k) / s + 1`.
fn window(size: usize, k: usize, s: usize, p: usize, out: usize) -> Result<usize, Bad> {
    let padded = size + 2 * p;
    if k > padded {
        return Err(Bad("the window is larger than the padded input"));
    }
    if out != (padded - k) / s + 1 {
        return Err(Bad(
            "out_h/out_w do not match (in + 2 pad - kernel) / stride + 1",
        ));
    }
    Ok(padded)
}

fn check_combine(combine: u32, n_pieces: u32, channels: usize) -> Result<usize, Bad> {
    if combine != abi::COMBINE_CONCAT && combine != abi::COMBINE_SUM {
        return Err(Bad("unknown combine rule"));
    }
    let n = n_pieces as usize;
    if n == 0 {
        return Err(Bad("no input pieces"));
    }
    if combine == abi::COMBINE_CONCAT && n > channels {
        return Err(Bad("more concatenated pieces than input channels"));
    }
    if u64::from(n_pieces) > MAX_DIM {
        return Err(Bad("more than 2^20 pieces"));
    }
    Ok(n)
}

/// A valid convolution descriptor in `usize`, with the packed-input layout.
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    ic: usize,
    ih: usize,
    iw: usize,
    oc: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    /// Packed input: floats per phase of a row (`ceil(padded width / sw)`) and per row
    /// (`sw * wq`); floats from one packed plane to the next ([`plane_stride`]).
    wq: usize,
    rowlen: usize,
    plane: usize,
    /// A plain matrix product: 1x1 window, no padding, stride 1. Bands are then runs of output
    /// pixels (packed planes hold just those pixels, without rows); otherwise bands are runs of
    /// output rows (packed planes hold the padded input rows they read).
    flat: bool,
    /// Output pixels (flat) or rows per band; the last band may be shorter.
    band: usize,
    /// Output vectors per row (when not flat).
    cpr: usize,
    /// Blocks of `CONV_OC_BLOCK` output channels.
    blocks: usize,
    n_pieces: usize,
    weight_len: usize,
    out_len: usize,
    scratch_len: usize,
    /// Computed as Winograd F(m x m, 3x3) with this m (`FLAG_WINOGRAD`: 2, `FLAG_WINOGRAD4`:
    /// 4; see `winograd`); 0 for the direct method.
    winograd: usize,
}

/// A band of a convolution's output: pixels (flat) or rows `start..end`, computed from one
/// packing of the input it reads.
#[derive(Clone, Copy, Debug)]
struct Band {
    start: usize,
    end: usize,
}

/// About how many floats of packed input one band holds (256 KiB): the band stays in L2 while
/// every block of output channels reads it, and a tile's share of it in L1.
const BAND_FLOATS: usize = 1 << 16;

/// The same for a plain matrix product (1x1), whose band's output is as large as its packed
/// input: a quarter of [`BAND_FLOATS`] keeps the source, the packed band and the output all in
/// a 512 KiB L2 (1x1 96->96 at 32x32 on one thread: best of many 226.6 -> 213.6 us)...
const FLAT_BAND_FLOATS: usize = 1 << 14;
/// ...but never fewer pixels than this: with hundreds of input channels (DenseNet's 1x1 layers)
/// a short band packs many short runs and feeds few tiles per packing (1x1 300->48 at 32x32
/// from 25 pieces, one thread: 455 -> 366 us; 96->96 unchanged).
const FLAT_BAND_PIXELS: usize = 128;

impl ConvGeom {
    /// The bands of part `part` of `parts` of the output, in order: the output rows (or, flat,
    /// the pixels, in whole tiles) cut into `parts` near-equal contiguous runs, each run cut
    /// into bands. `(0, 1)` gives the whole output; the parts of one split are disjoint.
    #[inline(always)]
    fn bands(&self, part: usize, parts: usize) -> impl Iterator<Item = Band> + use<> {
        let (unit, total) = if self.flat {
            (2 * LANES, self.oh * self.ow)
        } else {
            (1, self.oh)
        };
        let units = total.div_ceil(unit);
        let parts = parts.max(1);
        let lo = (units * part / parts * unit).min(total);
        let hi = (units * (part + 1) / parts * unit).min(total);
        let band = self.band;
        (lo..hi).step_by(band).map(move |start| Band {
            start,
            end: (start + band).min(hi),
        })
    }

    /// Multiply-accumulates of the whole convolution (for deciding whether to split it).
    fn macs(&self) -> usize {
        self.oc * self.oh * self.ow * self.ic * self.kh * self.kw
    }

    /// Output vectors in `band`.
    #[inline(always)]
    fn vectors(&self, band: Band) -> usize {
        let n = band.end - band.start;
        if self.flat {
            n.div_ceil(LANES)
        } else {
            n * self.cpr
        }
    }

    /// Vector `v` of `band`: (offset of its first pixel's input in a packed plane at tap (0, 0),
    /// offset of its first output in an output plane, number of pixels 1..=8).
    #[inline(always)]
    fn vector(&self, band: Band, v: usize) -> (usize, usize, usize) {
        if self.flat {
            let at = v * LANES;
            (at, band.start + at, (band.end - band.start - at).min(LANES))
        } else {
            let (row, x) = (v / self.cpr, v % self.cpr * LANES);
            (
                row * self.sh * self.rowlen + x,
                (band.start + row) * self.ow + x,
                (self.ow - x).min(LANES),
            )
        }
    }

    /// Offset of tap column `kx` in a packed row.
    #[inline(always)]
    fn kx_off(&self, kx: usize) -> usize {
        (kx % self.sw) * self.wq + kx / self.sw
    }
}

/// The floats from one packed input plane to the next: at least `floats`, a whole odd number of
/// 64-byte lines, so that the same pixel of successive planes falls in different cache sets (a
/// stride of a multiple of 4 KiB, as 32x32 planes have, would make a 1x1 convolution's inner
/// loop over input channels hit one L1 set).
fn plane_stride(floats: usize) -> usize {
    let lines = floats.div_ceil(16);
    16 * (lines | 1)
}

fn conv_geom(d: &ConvDesc) -> Result<ConvGeom, Bad> {
    let ic = dim(d.in_channels, "in_channels must be in 1..=2^20")?;
    let ih = dim(d.in_h, "in_h must be in 1..=2^20")?;
    let iw = dim(d.in_w, "in_w must be in 1..=2^20")?;
    let oc = dim(d.out_channels, "out_channels must be in 1..=2^20")?;
    let oh = dim(d.out_h, "out_h must be in 1..=2^20")?;
    let ow = dim(d.out_w, "out_w must be in 1..=2^20")?;
    let kh = dim(d.kernel_h, "kernel_h must be in 1..=2^20")?;
    let kw = dim(d.kernel_w, "kernel_w must be in 1..=2^20")?;
    let sh = dim(d.stride_h, "stride_h must be in 1..=2^20")?;
    let sw = dim(d.stride_w, "stride_w must be in 1..=2^20")?;
    let (ph, pw) = (pad(d.pad_h)?, pad(d.pad_w)?);
    let known = abi::FLAG_PROLOGUE
        | abi::FLAG_PROLOGUE_RELU
        | abi::FLAG_BIAS
        | abi::FLAG_RELU
        | abi::FLAG_WINOGRAD
        | abi::FLAG_WINOGRAD4;
    if d.flags & !known != 0 {
        return Err(Bad("flags has bits a convolution does not define"));
    }
    let n_pieces = check_combine(d.combine, d.n_pieces, ic)?;
    window(ih, kh, sh, ph, oh)?;
    let wp = window(iw, kw, sw, pw, ow)?;
    let wq = wp.div_ceil(sw);
    let rowlen = wq * sw;
    floats(&[ic, ih, iw], "the input is too large")?;
    let out_len = floats(&[oc, oh, ow], "the output is too large")?;
    let blocks = oc.div_ceil(CONV_OC_BLOCK);
    let weight_len = floats(
        &[blocks, CONV_OC_BLOCK, ic, kh, kw],
        "the weights are too large",
    )?;
    let flat = kh == 1 && kw == 1 && ph == 0 && pw == 0 && sh == 1 && sw == 1;
    let (band, band_floats) = if flat {
        // Whole tiles (2 vectors) of pixels, as many as fit the budget.
        let tile = 2 * LANES;
        let band = (FLAT_BAND_FLOATS / ic).max(FLAT_BAND_PIXELS) / tile * tile;
        let band = band.max(tile).min(oh * ow);
        (band, band)
    } else {
        // Output rows whose input rows fit the budget, at least one.
        let fit = BAND_FLOATS / ic / rowlen;
        let band = if fit >= kh { (fit - kh) / sh + 1 } else { 1 }.min(oh);
        let rows = (band - 1) * sh + kh;
        (
            band,
            floats(&[rows, rowlen], "the padded input is too large")?,
        )
    };
    let plane = plane_stride(band_floats);
    // One vector of slack past the last plane (see `pack_band`).
    let scratch_len = floats(&[ic, plane], "the padded input is too large")? + LANES;
    let mut g = ConvGeom {
        ic,
        ih,
        iw,
        oc,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        wq,
        rowlen,
        plane,
        flat,
        band,
        cpr: ow.div_ceil(LANES),
        blocks,
        n_pieces,
        weight_len,
        out_len,
        scratch_len,
        winograd: 0,
    };
    if d.flags & abi::FLAG_WINOGRAD != 0 && d.flags & abi::FLAG_WINOGRAD4 != 0 {
        return Err(Bad("FLAG_WINOGRAD and FLAG_WINOGRAD4 together"));
    }
    let m = winograd_tile(d.flags);
    if m != 0 {
        if !winograd::eligible(&g, m) {
            return Err(Bad(
                "a Winograd flag on a convolution that is not 3x3, stride 1, pad 1, height a \
                 multiple of m, width a multiple of 8m and at least 8 input channels (m = 2 for \
                 FLAG_WINOGRAD, 4 for FLAG_WINOGRAD4)",
            ));
        }
        let l = winograd::layout(m, ic, oc, ih, oh, ow);
        g.winograd = m;
        g.weight_len = winograd::weight_len(m, ic, oc);
        g.scratch_len = l.scratch_len;
    }
    Ok(g)
}

/// The output tile size m of the Winograd flag in `flags` (2 or 4), or 0 for none (both set is
/// rejected by [`validate_conv`]; 4 wins here).
fn winograd_tile(flags: u32) -> usize {
    if flags & abi::FLAG_WINOGRAD4 != 0 {
        4
    } else if flags & abi::FLAG_WINOGRAD != 0 {
        2
    } else {
        0
    }
}

/// The Winograd flag the compiler should set on this convolution (and pack its weights for),
/// with output tiles of at most `largest` (4, 2, or 0 for none): [`abi::FLAG_WINOGRAD4`] where
/// the F(4x4, 3x3) kernel takes the shape (4x fewer multiplications than direct), else
/// [`abi::FLAG_WINOGRAD`] where F(2x2, 3x3) does (2.25x), else 0.
pub fn winograd_flag(desc: &ConvDesc, largest: usize) -> u32 {
    let plain = ConvDesc {
        flags: desc.flags & !(abi::FLAG_WINOGRAD | abi::FLAG_WINOGRAD4),
        ..*desc
    };
    match conv_geom(&plain) {
        Ok(g) if largest >= 4 && winograd::eligible(&g, 4) => abi::FLAG_WINOGRAD4,
        Ok(g) if largest >= 2 && winograd::eligible(&g, 2) => abi::FLAG_WINOGRAD,
        _ => 0,
    }
}

/// A valid pool descriptor in `usize`.
#[derive(Clone, Copy, Debug)]
struct PoolGeom {
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    max: bool,
    global: bool,
    n_pieces: usize,
    out_len: usize,
    scratch_len: usize,
}

fn pool_geom(d: &PoolDesc) -> Result<PoolGeom, Bad> {
    let c = dim(d.channels, "channels must be in 1..=2^20")?;
    let ih = dim(d.in_h, "in_h must be in 1..=2^20")?;
    let iw = dim(d.in_w, "in_w must be in 1..=2^20")?;
    let oh = dim(d.out_h, "out_h must be in 1..=2^20")?;
    let ow = dim(d.out_w, "out_w must be in 1..=2^20")?;
    let known = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_RELU | abi::FLAG_GLOBAL;
    if d.flags & !known != 0 {
        return Err(Bad("flags has bits a pool does not define"));
    }
    let max = match d.kind {
        abi::POOL_AVG => false,
        abi::POOL_MAX => true,
        _ => return Err(Bad("unknown pool kind")),
    };
    let n_pieces = check_combine(d.combine, d.n_pieces, c)?;
    let global = d.flags & abi::FLAG_GLOBAL != 0;
    let (mut kh, mut kw, mut sh, mut sw, mut ph, mut pw) = (ih, iw, 1, 1, 0, 0);
    if global {
        if (oh, ow) != (1, 1) {
            return Err(Bad("a global pool's output must be 1x1"));
        }
    } else {
        kh = dim(d.kernel_h, "kernel_h must be in 1..=2^20")?;
        kw = dim(d.kernel_w, "kernel_w must be in 1..=2^20")?;
        sh = dim(d.stride_h, "stride_h must be in 1..=2^20")?;
        sw = dim(d.stride_w, "stride_w must be in 1..=2^20")?;
        (ph, pw) = (pad(d.pad_h)?, pad(d.pad_w)?);
        window(ih, kh, sh, ph, oh)?;
        window(iw, kw, sw, pw, ow)?;
    }
    floats(&[c, ih, iw], "the input is too large")?;
    let out_len = floats(&[c, oh, ow], "the output is too large")?;
    let scratch_len = floats(&[ih, iw], "the input is too large")?;
    Ok(PoolGeom {
        c,
        ih,
        iw,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        max,
        global,
        n_pieces,
        out_len,
        scratch_len,
    })
}

/// A valid linear descriptor in `usize`.
#[derive(Clone, Copy, Debug)]
struct LinearGeom {
    ic: usize,
    hw: usize,
    out: usize,
    n_pieces: usize,
    weight_len: usize,
    scratch_len: usize,
}

fn linear_geom(d: &LinearDesc) -> Result<LinearGeom, Bad> {
    let ic = dim(d.in_channels, "in_channels must be in 1..=2^20")?;
    let ih = dim(d.in_h, "in_h must be in 1..=2^20")?;
    let iw = dim(d.in_w, "in_w must be in 1..=2^20")?;
    let out = dim(d.out_features, "out_features must be in 1..=2^20")?;
    let known = abi::FLAG_PROLOGUE
        | abi::FLAG_PROLOGUE_RELU
        | abi::FLAG_BIAS
        | abi::FLAG_RELU
        | abi::FLAG_GLOBAL;
    if d.flags & !known != 0 {
        return Err(Bad("flags has bits a linear layer does not define"));
    }
    if d.flags & abi::FLAG_GLOBAL == 0 && (ih, iw) != (1, 1) {
        return Err(Bad("without FLAG_GLOBAL the input must be 1x1"));
    }
    let n_pieces = check_combine(d.combine, d.n_pieces, ic)?;
    floats(&[ic, ih, iw], "the input is too large")?;
    let weight_len = floats(&[out, ic], "the weights are too large")?;
    Ok(LinearGeom {
        ic,
        hw: ih * iw,
        out,
        n_pieces,
        weight_len,
        scratch_len: ic,
    })
}

// ---------------------------------------------------------------------------------------------
// Kernel arguments: raw pointers turned into checked slices.
// ---------------------------------------------------------------------------------------------

/// The logical input of a step: its pieces and how they combine.
#[derive(Clone, Copy)]
struct Input<'a> {
    pieces: &'a [Piece],
    sum: bool,
    /// Floats per channel plane.
    hw: usize,
    /// Logical channels (the pieces add up to them).
    channels: usize,
}

/// Where one logical input channel comes from.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// A concatenated channel: one plane.
    One(*const f32),
    /// A summed channel: the plane at this float offset in every piece.
    Sum(&'a [Piece], usize),
}

impl Src<'_> {
    /// Writes channel `c`'s prologue of the combined values `at..at + dst.len()` of the plane
    /// into `dst`, in one pass over the input for a concatenated channel.
    ///
    /// # Safety
    /// `at + dst.len()` must not exceed the plane (`Input::hw`), and the pieces must be valid.
    #[inline(always)]
    unsafe fn load(self, at: usize, dst: &mut [f32], pro: &Prologue<'_>, c: usize) {
        match self {
            Src::One(p) => {
                // SAFETY: the plane holds `hw` floats (kernel contract) and the caller keeps
                // `at + dst.len() <= hw`.
                let src = unsafe { slice::from_raw_parts(p.add(at), dst.len()) };
                pro.map(c, src, dst);
            }
            Src::Sum(pieces, off) => {
                for (i, piece) in pieces.iter().enumerate() {
                    // SAFETY: as above, for the plane at `off` of every piece.
                    let src = unsafe { slice::from_raw_parts(piece.ptr.add(off + at), dst.len()) };
                    if i == 0 {
                        dst.copy_from_slice(src);
                    } else {
                        #[cfg(target_arch = "aarch64")]
                        if pro.neon {
                            // SAFETY: `neon` is set only by the NEON kernels, which run only
                            // where the CPU has NEON.
                            unsafe { neon::add(dst, src) };
                            continue;
                        }
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    }
                }
                pro.apply(c, dst);
            }
        }
    }

    /// The combined value at `at`.
    ///
    /// # Safety
    /// `at` must lie in the plane, and the pieces must be valid.
    #[inline(always)]
    unsafe fn get(self, at: usize) -> f32 {
        match self {
            // SAFETY: the caller keeps `at` inside the plane.
            Src::One(p) => unsafe { *p.add(at) },
            Src::Sum(pieces, off) => pieces
                .iter()
                // SAFETY: as above, for every piece.
                .fold(0.0, |acc, piece| acc + unsafe { *piece.ptr.add(off + at) }),
        }
    }
}

/// The logical input channels in order, with their sources. An iterator rather than a callback,
/// so that loop bodies stay in the (AVX2-compiled) caller.
struct Channels<'a> {
    input: Input<'a>,
    c: usize,
    piece: usize,
    k: usize,
}

impl<'a> Iterator for Channels<'a> {
    type Item = (usize, Src<'a>);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, Src<'a>)> {
        let c = self.c;
        if c >= self.input.channels {
            return None;
        }
        self.c += 1;
        if self.input.sum {
            return Some((c, Src::Sum(self.input.pieces, c * self.input.hw)));
        }
        loop {
            let piece = self.input.pieces.get(self.piece)?;
            if (self.k as u64) < piece.channels {
                // Inside the piece: k < channels (`wrapping_add`: no unsafe needed here).
                let plane = piece.ptr.wrapping_add(self.k * self.input.hw);
                self.k += 1;
                return Some((c, Src::One(plane)));
            }
            (self.piece, self.k) = (self.piece + 1, 0);
        }
    }
}

impl<'a> Input<'a> {
    #[inline(always)]
    fn channels(&self) -> Channels<'a> {
        Channels {
            input: *self,
            c: 0,
            piece: 0,
            k: 0,
        }
    }
}

/// The per-input-channel prologue of a step.
#[derive(Clone, Copy)]
struct Prologue<'a> {
    affine: Option<(&'a [f32], &'a [f32])>,
    relu: bool,
    /// Run [`Prologue::map`] and [`Prologue::apply`] as the hand-written NEON loops
    /// (`neon::map`): set by the NEON kernels only, after checking the CPU, so that the portable
    /// kernels stay portable for comparison (`SPARSEC_KERNELS=portable`). Always false off
    /// aarch64.
    #[cfg_attr(
        not(target_arch = "aarch64"),
        expect(dead_code, reason = "read by the NEON loops only")
    )]
    neon: bool,
}

/// ReLU that propagates NaN (as PyTorch and `ir::interp`).
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v < 0.0 { 0.0 } else { v }
}

impl Prologue<'_> {
    /// `dst = prologue_c(src)`, element by element.
    #[inline(always)]
    fn map(&self, c: usize, src: &[f32], dst: &mut [f32]) {
        #[cfg(target_arch = "aarch64")]
        if self.neon {
            // SAFETY: `neon` is set only by the NEON kernels, which run only where the CPU
            // has NEON.
            unsafe { neon::map(self, c, Some(src), dst) };
            return;
        }
        let pairs = dst.iter_mut().zip(src);
        match (self.affine, self.relu) {
            (Some((scale, shift)), true) => {
                let (s, t) = (scale[c], shift[c]);
                pairs.for_each(|(d, &x)| *d = relu(x * s + t));
            }
            (Some((scale, shift)), false) => {
                let (s, t) = (scale[c], shift[c]);
                pairs.for_each(|(d, &x)| *d = x * s + t);
            }
            (None, true) => pairs.for_each(|(d, &x)| *d = relu(x)),
            (None, false) => pairs.for_each(|(d, &x)| *d = x),
        }
    }

    /// Applies channel `c`'s prologue to `row` in place.
    #[inline(always)]
    fn apply(&self, c: usize, row: &mut [f32]) {
        #[cfg(target_arch = "aarch64")]
        if self.neon {
            // SAFETY: `neon` is set only by the NEON kernels, which run only where the CPU
            // has NEON.
            unsafe { neon::map(self, c, None, row) };
            return;
        }
        match (self.affine, self.relu) {
            (Some((scale, shift)), true) => {
                let (s, t) = (scale[c], shift[c]);
                row.iter_mut().for_each(|v| *v = relu(*v * s + t));
            }
            (Some((scale, shift)), false) => {
                let (s, t) = (scale[c], shift[c]);
                row.iter_mut().for_each(|v| *v = *v * s + t);
            }
            (None, true) => row.iter_mut().for_each(|v| *v = relu(*v)),
            (None, false) => {}
        }
    }

    /// Channel `c`'s prologue of one value.
    #[inline(always)]
    fn one(&self, c: usize, v: f32) -> f32 {
        let v = match self.affine {
            Some((scale, shift)) => v * scale[c] + shift[c],
            None => v,
        };
        if self.relu { relu(v) } else { v }
    }
}

/// The pieces of a step, checked against the descriptor: `None` when they do not add up.
///
/// # Safety
/// `ptr` must be null or valid for `n` reads of [`Piece`].
unsafe fn input<'a>(
    ptr: *const Piece,
    n: usize,
    combine: u32,
    channels: usize,
    hw: usize,
) -> Option<Input<'a>> {
    if ptr.is_null() || !ptr.is_aligned() {
        return None;
    }
    // SAFETY: non-null and aligned; the caller guarantees `n` valid pieces.
    let pieces = unsafe { slice::from_raw_parts(ptr, n) };
    let sum = combine == abi::COMBINE_SUM;
    let mut total = 0u64;
    for p in pieces {
        if p.ptr.is_null() || !p.ptr.is_aligned() || p.channels == 0 {
            return None;
        }
        if sum && p.channels != channels as u64 {
            return None;
        }
        total = total.saturating_add(p.channels);
    }
    if !sum && total != channels as u64 {
        return None;
    }
    Some(Input {
        pieces,
        sum,
        hw,
        channels,
    })
}

/// `n` floats at byte `off` of the weights section.
///
/// # Safety
/// The weights section must hold `n` floats at `off` (checked by `validate_*` at load time).
unsafe fn section<'a>(weights: *const u8, off: u64, n: usize) -> Option<&'a [f32]> {
    let off = usize::try_from(off).ok()?;
    if weights.is_null() {
        return None;
    }
    let p = weights.wrapping_add(off).cast::<f32>();
    if !p.is_aligned() {
        return None;
    }
    // SAFETY: non-null, aligned, and in the section by the caller's guarantee.
    Some(unsafe { slice::from_raw_parts(p, n) })
}

/// A kernel's writable buffer of `n` floats.
///
/// # Safety
/// `p` must be null or valid for `n` writes and not overlap anything else the kernel reads.
unsafe fn buffer<'a>(p: *mut f32, n: usize) -> Option<&'a mut [f32]> {
    if p.is_null() || !p.is_aligned() {
        return None;
    }
    // SAFETY: non-null, aligned, valid for `n` writes and unaliased by the caller's guarantee.
    Some(unsafe { slice::from_raw_parts_mut(p, n) })
}

/// The prologue arrays of a step.
///
/// # Safety
/// As [`section`], for `channels` floats at each offset when `FLAG_PROLOGUE` is set.
unsafe fn prologue<'a>(
    weights: *const u8,
    flags: u32,
    scale_off: u64,
    shift_off: u64,
    channels: usize,
) -> Option<Prologue<'a>> {
    let affine = if flags & abi::FLAG_PROLOGUE != 0 {
        // SAFETY: forwarded from the caller.
        let scale = unsafe { section(weights, scale_off, channels) }?;
        // SAFETY: forwarded from the caller.
        let shift = unsafe { section(weights, shift_off, channels) }?;
        Some((scale, shift))
    } else {
        None
    };
    Some(Prologue {
        affine,
        relu: flags & abi::FLAG_PROLOGUE_RELU != 0,
        neon: false,
    })
}

struct ConvArgs<'a> {
    g: ConvGeom,
    input: Input<'a>,
    pro: Prologue<'a>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
    /// Raw, not `&mut`: the members of a team write disjoint parts of one output at once.
    out: Out,
    scratch: &'a mut [f32],
}

/// A convolution's output: `len` floats at `ptr`, written in disjoint runs.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
}

impl Out {
    /// Floats `at..at + n`, or `None` outside the output.
    ///
    /// # Safety
    /// No other reference to these floats may live while the slice does (members of a team
    /// write disjoint output rows or pixel runs).
    #[inline(always)]
    unsafe fn run<'o>(self, at: usize, n: usize) -> Option<&'o mut [f32]> {
        let end = at.checked_add(n)?;
        if end > self.len {
            return None;
        }
        // SAFETY: inside the output (checked just above), unaliased by the caller's guarantee.
        Some(unsafe { slice::from_raw_parts_mut(self.ptr.add(at), n) })
    }
}

/// # Safety
/// The kernel contract (module doc).
unsafe fn conv_args<'a>(
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> Option<ConvArgs<'a>> {
    if !desc.is_aligned() {
        return None;
    }
    // SAFETY: aligned, and valid or null by the contract.
    let d = unsafe { desc.as_ref() }?;
    let g = conv_geom(d).ok()?;
    // SAFETY (all of the block): the kernel contract, forwarded.
    unsafe {
        Some(ConvArgs {
            g,
            input: input(pieces, g.n_pieces, d.combine, g.ic, g.ih * g.iw)?,
            pro: prologue(weights, d.flags, d.scale_off, d.shift_off, g.ic)?,
            w: section(weights, d.weight_off, g.weight_len)?,
            bias: match d.flags & abi::FLAG_BIAS {
                0 => None,
                _ => Some(section(weights, d.bias_off, g.oc)?),
            },
            relu: d.flags & abi::FLAG_RELU != 0,
            out: {
                buffer(out, 0)?;
                Out {
                    ptr: out,
                    len: g.out_len,
                }
            },
            scratch: buffer(scratch.cast(), g.scratch_len)?,
        })
    }
}

struct PoolArgs<'a> {
    g: PoolGeom,
    input: Input<'a>,
    pro: Prologue<'a>,
    relu: bool,
    out: &'a mut [f32],
    scratch: &'a mut [f32],
}

/// # Safety
/// The kernel contract (module doc).
unsafe fn pool_args<'a>(
    desc: *const PoolDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> Option<PoolArgs<'a>> {
    if !desc.is_aligned() {
        return None;
    }
    // SAFETY: aligned, and valid or null by the contract.
    let d = unsafe { desc.as_ref() }?;
    let g = pool_geom(d).ok()?;
    // SAFETY (all of the block): the kernel contract, forwarded.
    unsafe {
        Some(PoolArgs {
            g,
            input: input(pieces, g.n_pieces, d.combine, g.c, g.ih * g.iw)?,
            pro: prologue(weights, d.flags, d.scale_off, d.shift_off, g.c)?,
            relu: d.flags & abi::FLAG_RELU != 0,
            out: buffer(out, g.out_len)?,
            scratch: buffer(scratch.cast(), g.scratch_len)?,
        })
    }
}

struct LinearArgs<'a> {
    g: LinearGeom,
    input: Input<'a>,
    pro: Prologue<'a>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    relu: bool,
    out: &'a mut [f32],
    scratch: &'a mut [f32],
}

/// # Safety
/// The kernel contract (module doc).
unsafe fn linear_args<'a>(
    desc: *const LinearDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> Option<LinearArgs<'a>> {
    if !desc.is_aligned() {
        return None;
    }
    // SAFETY: aligned, and valid or null by the contract.
    let d = unsafe { desc.as_ref() }?;
    let g = linear_geom(d).ok()?;
    // SAFETY (all of the block): the kernel contract, forwarded.
    unsafe {
        Some(LinearArgs {
            g,
            input: input(pieces, g.n_pieces, d.combine, g.ic, g.hw)?,
            pro: prologue(weights, d.flags, d.scale_off, d.shift_off, g.ic)?,
            w: section(weights, d.weight_off, g.weight_len)?,
            bias: match d.flags & abi::FLAG_BIAS {
                0 => None,
                _ => Some(section(weights, d.bias_off, g.out)?),
            },
            relu: d.flags & abi::FLAG_RELU != 0,
            out: buffer(out, g.out)?,
            scratch: buffer(scratch.cast(), g.scratch_len)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel bodies shared by both variants (`inline(always)`: the AVX2 variant compiles them with
// AVX2 enabled, so their plain loops vectorise there).
// ---------------------------------------------------------------------------------------------

/// Zeroes a short run (padding columns) in place.
#[inline(always)]
fn zero(run: &mut [f32]) {
    run.iter_mut().for_each(|v| *v = 0.0);
}

/// Step (1) of a convolution band: the combined, prologued, zero-padded input that `band`
/// reads, packed into `a.scratch` (module doc). The `LANES` floats after each plane's packed
/// part are zeroed too (spilling into the next plane's head, packed later, or into the slack
/// after the last plane): a short vector's unused lanes may read them, and so read only what
/// this call wrote.
#[inline(always)]
fn pack_band(a: &mut ConvArgs<'_>, band: Band) {
    let g = a.g;
    let pro = a.pro;
    let scratch = &mut *a.scratch;
    for (c, src) in a.input.channels() {
        let used = if g.flat {
            band.end - band.start
        } else {
            ((band.end - band.start - 1) * g.sh + g.kh) * g.rowlen
        };
        zero(&mut scratch[c * g.plane + used..][..LANES]);
        let plane = &mut scratch[c * g.plane..][..g.plane];
        if g.flat {
            // Pixels `start..end` of a plane of `oh * ow == ih * iw` floats.
            let dst = &mut plane[..used];
            // SAFETY: `start + dst.len() == end <= ih * iw`.
            unsafe { src.load(band.start, dst, &pro, c) };
            continue;
        }
        // Padded input rows `first..`, all below `ih + 2 ph` by the window rule.
        let first = band.start * g.sh;
        for (r, row) in plane[..used].chunks_exact_mut(g.rowlen).enumerate() {
            let Some(y) = (first + r).checked_sub(g.ph).filter(|&y| y < g.ih) else {
                row.fill(0.0);
                continue;
            };
            if g.sw == 1 {
                let (left, rest) = row.split_at_mut(g.pw);
                let (mid, right) = rest.split_at_mut(g.iw);
                zero(left);
                zero(right);
                // SAFETY: row `y < ih` of a plane of `ih * iw` floats.
                unsafe { src.load(y * g.iw, mid, &pro, c) };
            } else {
                row.fill(0.0);
                #[cfg(target_arch = "aarch64")]
                if pro.neon && g.sw == 2 {
                    // SAFETY: row `y < ih` of a plane of `ih * iw` floats; `neon` is set only by
                    // the NEON kernels, which run only where the CPU has NEON.
                    unsafe { neon::pack_row2(src, y * g.iw, (g.iw, g.pw, g.wq), row, &pro, c) };
                    continue;
                }
                for x in 0..g.iw {
                    // SAFETY: `y * iw + x < ih * iw`.
                    let v = pro.one(c, unsafe { src.get(y * g.iw + x) });
                    row[g.kx_off(g.pw + x)] = v;
                }
            }
        }
    }
}

/// Output pixels the portable kernel accumulates at once (on the stack, in L1).
const RUN: usize = 64;

/// Step (2) of a convolution band, portable: per block of output channels, runs of up to
/// [`RUN`] output pixels (along a row, or along the band for a matrix product), accumulated
/// over the taps in plain loops over the run that the compiler vectorises for the target's
/// baseline (SSE2, NEON).
fn conv_compute_portable(a: &mut ConvArgs<'_>, band: Band) {
    let g = a.g;
    let k = g.ic * g.kh * g.kw;
    let oplane = g.oh * g.ow;
    let input = &*a.scratch;
    // Tap column offsets without a division per tap for stride 1.
    let kx_off = |kx: usize| if g.sw == 1 { kx } else { g.kx_off(kx) };
    // Runs: (input offset in a packed plane, output offset in an output plane, pixels).
    let (rows, per_row) = if g.flat {
        (1, band.end - band.start)
    } else {
        (band.end - band.start, g.ow)
    };
    let runs = (0..rows).flat_map(|r| {
        (0..per_row).step_by(RUN).map(move |x| {
            let n = (per_row - x).min(RUN);
            if g.flat {
                (x, band.start + x, n)
            } else {
                (r * g.sh * g.rowlen + x, (band.start + r) * g.ow + x, n)
            }
        })
    });
    for (vin, vout, n) in runs {
        for b in 0..g.blocks {
            let block = &a.w[b * k * CONV_OC_BLOCK..][..k * CONV_OC_BLOCK];
            let (wb, _) = block.as_chunks::<CONV_OC_BLOCK>();
            let oc0 = b * CONV_OC_BLOCK;
            let mut acc = [[0.0f32; RUN]; CONV_OC_BLOCK];
            let mut taps = wb.iter();
            for c in 0..g.ic {
                for ky in 0..g.kh {
                    let row = c * g.plane + ky * g.rowlen + vin;
                    for kx in 0..g.kw {
                        let Some(w) = taps.next() else { break };
                        let xs = &input[row + kx_off(kx)..][..n];
                        for (acc_o, &w_o) in acc.iter_mut().zip(w) {
                            for (s, &x) in acc_o[..n].iter_mut().zip(xs) {
                                *s += w_o * x;
                            }
                        }
                    }
                }
            }
            for (o, acc_o) in acc.iter().enumerate().take(g.oc - oc0) {
                let bv = a.bias.map_or(0.0, |bias| bias[oc0 + o]);
                // SAFETY: this band's pixels, which only this call writes.
                let Some(dst) = (unsafe { a.out.run((oc0 + o) * oplane + vout, n) }) else {
                    return;
                };
                for (d, &s) in dst.iter_mut().zip(acc_o) {
                    let v = s + bv;
                    *d = if a.relu { relu(v) } else { v };
                }
            }
        }
    }
}

/// Part `part` of `parts` of a portable convolution (the whole of it for `(0, 1)`).
fn conv_portable_body(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
    let g = a.g;
    if g.winograd != 0 {
        let m = g.winograd;
        let l = winograd::layout(m, g.ic, g.oc, g.ih, g.oh, g.ow);
        for (y0, rows) in winograd::bands(&g, &l, part, parts) {
            winograd::pack(a, &l, y0, rows, |r, p| winograd::split_portable(m, r, p));
            winograd::transform_input(a.scratch, &l, g.ic, rows);
            winograd::multiply_portable(a, &l, rows);
            // SAFETY: this part's band, written by this call only.
            unsafe { winograd::transform_output(a, &l, y0, rows) };
        }
        return;
    }
    for band in a.g.bands(part, parts) {
        pack_band(a, band);
        conv_compute_portable(a, band);
    }
}

/// Maximum that propagates NaN and is `-inf` over nothing.
#[inline(always)]
fn nan_max(m: f32, v: f32) -> f32 {
    if m.is_nan() || !(v > m || v.is_nan()) {
        m
    } else {
        v
    }
}

#[inline(always)]
fn pool_body(a: &mut PoolArgs<'_>) {
    let g = a.g;
    let pro = a.pro;
    let plane = &mut a.scratch[..g.ih * g.iw];
    let area = (g.kh * g.kw) as f32;
    // A 1x1 window, stride 1, no padding: the identity (`x / 1` and a max of one are `x`), as
    // the compiler uses it to materialise a graph output (`passes/materialise_output.rs`).
    let identity = !g.global && (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (1, 1, 1, 1, 0, 0);
    for (c, src) in a.input.channels() {
        let dst = &mut a.out[c * g.oh * g.ow..][..g.oh * g.ow];
        if identity {
            // SAFETY: the output plane is the input plane's size (`oh = ih`, `ow = iw`).
            unsafe { src.load(0, dst, &pro, c) };
            if a.relu {
                dst.iter_mut().for_each(|v| *v = relu(*v));
            }
            continue;
        }
        // SAFETY: the whole plane of `ih * iw` floats.
        unsafe { src.load(0, plane, &pro, c) };
        if g.global {
            dst[0] = if g.max {
                plane.iter().fold(f32::NEG_INFINITY, |m, &v| nan_max(m, v))
            } else {
                (plane.iter().map(|&v| f64::from(v)).sum::<f64>() / plane.len() as f64) as f32
            };
        } else if !g.max && (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw) == (2, 2, 2, 2, 0, 0) {
            // The transitions' 2x2 average, in straight loops that vectorise; the same sums in
            // the same order as the general case below ((row 0) + (row 1), then / 4).
            for (oy, row) in dst.chunks_exact_mut(g.ow).enumerate() {
                let r0 = &plane[2 * oy * g.iw..][..2 * g.ow];
                let r1 = &plane[(2 * oy + 1) * g.iw..][..2 * g.ow];
                for ((d, a), b) in row
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *d = ((a[0] + a[1]) + (b[0] + b[1])) / area;
                }
            }
        } else {
            for oy in 0..g.oh {
                // The window's rows inside the unpadded input.
                let y0 = (oy * g.sh).saturating_sub(g.ph);
                let y1 = (oy * g.sh + g.kh).saturating_sub(g.ph).min(g.ih);
                for ox in 0..g.ow {
                    let x0 = (ox * g.sw).saturating_sub(g.pw);
                    let x1 = (ox * g.sw + g.kw).saturating_sub(g.pw).min(g.iw);
                    let rows =
                        (y0..y1).map(|y| plane[y * g.iw..][..g.iw].get(x0..x1).unwrap_or(&[]));
                    dst[oy * g.ow + ox] = if g.max {
                        rows.fold(f32::NEG_INFINITY, |m, r| {
                            r.iter().fold(m, |m, &v| nan_max(m, v))
                        })
                    } else {
                        // Padding adds zeros and counts in the divisor.
                        rows.map(|r| r.iter().sum::<f32>()).sum::<f32>() / area
                    };
                }
            }
        }
        if a.relu {
            dst.iter_mut().for_each(|v| *v = relu(*v));
        }
    }
}

/// `a · b` in f32 with 8 partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn linear_body(a: &mut LinearArgs<'_>) {
    let g = a.g;
    let pro = a.pro;
    let feat = &mut a.scratch[..g.ic];
    for (c, src) in a.input.channels() {
        let mut s = 0.0f64;
        for i in 0..g.hw {
            // SAFETY: `i < hw`, inside the plane.
            s += f64::from(pro.one(c, unsafe { src.get(i) }));
        }
        feat[c] = (s / g.hw as f64) as f32;
    }
    for (o, (dst, row)) in a.out.iter_mut().zip(a.w.chunks_exact(g.ic)).enumerate() {
        let v = dot(row, feat) + a.bias.map_or(0.0, |b| b[o]);
        *dst = if a.relu { relu(v) } else { v };
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points: portable, AVX2 + FMA (x86-64) and NEON (aarch64). A SIMD one checks the CPU
// itself (a cached atomic load) and falls back to the portable kernel, so calling one directly
// on any CPU of its architecture is sound.
// ---------------------------------------------------------------------------------------------

/// One `extern "C"` kernel: turns the raw arguments into checked slices with `$args` (a bad
/// descriptor is `STATUS_BAD_DESCRIPTOR`), then runs `$simd` where `$isa::available()`, else
/// `$portable`; `$a` names the arguments in both.
macro_rules! entry_point {
    ($(#[$attr:meta])* $name:ident($desc:ty) = $args:ident, |$a:ident| $portable:expr
     $(, $isa:ident => $simd:expr)?) => {
        $(#[$attr])*
        ///
        /// # Safety
        /// The kernel contract (module doc).
        pub unsafe extern "C" fn $name(
            desc: *const $desc,
            pieces: *const Piece,
            out: *mut f32,
            weights: *const u8,
            scratch: *mut u8,
        ) -> i32 {
            // SAFETY: the kernel contract, forwarded.
            let Some(mut $a) = (unsafe { $args(desc, pieces, out, weights, scratch) }) else {
                return abi::STATUS_BAD_DESCRIPTOR;
            };
            $(
                if $isa::available() {
                    // SAFETY: the CPU has the instruction set (checked just above).
                    unsafe { $simd };
                    return abi::STATUS_OK;
                }
            )?
            $portable;
            abi::STATUS_OK
        }
    };
}

entry_point!(
    /// Portable convolution ([`abi::ConvKernel`]).
    conv2d_portable(ConvDesc) = conv_args, |a| conv_portable_body(&mut a, 0, 1)
);
entry_point!(
    /// Portable pooling ([`abi::PoolKernel`]).
    pool_portable(PoolDesc) = pool_args, |a| pool_body(&mut a)
);
entry_point!(
    /// Portable linear layer ([`abi::LinearKernel`]).
    linear_portable(LinearDesc) = linear_args, |a| linear_body(&mut a)
);

entry_point!(
    /// AVX2+FMA convolution ([`abi::ConvKernel`]); the portable one on a CPU without them.
    #[cfg(target_arch = "x86_64")]
    conv2d_avx2(ConvDesc) = conv_args, |a| conv_portable_body(&mut a, 0, 1),
    avx2 => avx2::conv(&mut a, 0, 1)
);
entry_point!(
    /// Pooling compiled with AVX2+FMA ([`abi::PoolKernel`]); the portable one without them.
    #[cfg(target_arch = "x86_64")]
    pool_avx2(PoolDesc) = pool_args, |a| pool_body(&mut a), avx2 => avx2::pool(&mut a)
);
entry_point!(
    /// Linear layer compiled with AVX2+FMA ([`abi::LinearKernel`]); the portable one without
    /// them.
    #[cfg(target_arch = "x86_64")]
    linear_avx2(LinearDesc) = linear_args, |a| linear_body(&mut a), avx2 => avx2::linear(&mut a)
);

entry_point!(
    /// NEON convolution ([`abi::ConvKernel`]); the portable one on a CPU without NEON (or with
    /// `SPARSEC_KERNELS=portable`).
    #[cfg(target_arch = "aarch64")]
    conv2d_neon(ConvDesc) = conv_args, |a| conv_portable_body(&mut a, 0, 1),
    neon => neon::conv(&mut a, 0, 1)
);
entry_point!(
    /// NEON pooling ([`abi::PoolKernel`]); the portable one on a CPU without NEON (or with
    /// `SPARSEC_KERNELS=portable`).
    #[cfg(target_arch = "aarch64")]
    pool_neon(PoolDesc) = pool_args, |a| pool_body(&mut a), neon => neon::pool(&mut a)
);
entry_point!(
    /// NEON linear layer, the head's global average and classifier ([`abi::LinearKernel`]);
    /// the portable one on a CPU without NEON (or with `SPARSEC_KERNELS=portable`).
    #[cfg(target_arch = "aarch64")]
    linear_neon(LinearDesc) = linear_args, |a| linear_body(&mut a), neon => neon::linear(&mut a)
);

// ---------------------------------------------------------------------------------------------
// Team entry points: the context is a `Team` (the session's threads). A convolution's output is
// split between the members; pooling and the linear layer are small and run on the caller.
// ---------------------------------------------------------------------------------------------

mod team;
pub use team::kernel_table_team;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[macro_use]
mod simd_conv;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests;
