//! The CPU kernels called by generated code through the kernel table, and the weight packing and
//! descriptor checks that go with them.
//!
//! Owns the numbers of a step: combining the input pieces (concatenation or sum), the per-channel
//! prologue `x * scale + shift` and its ReLU, zero padding, convolution, pooling and the linear
//! layer, exactly as `ir::op` defines them (and `ir::interp` computes them); the packed
//! convolution weight layout ([`pack_conv_weights`]); the scratch each kernel needs
//! ([`conv_scratch_bytes`], ...); and the consistency checks a loader runs on every descriptor
//! before it runs a model ([`validate_conv`], ...). Two variants of every kernel exist: a portable
//! one (plain loops) and, on x86-64, an AVX2+FMA one picked by [`kernel_table`] at run time.
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
use crate::cpu::team::Team;
use std::slice;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

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

/// The kernel table for this CPU: AVX2+FMA variants when `is_x86_feature_detected!` says so, else
/// portable ones. Function pointers as `usize`, in `abi::KERNEL_*` order.
pub fn kernel_table() -> [usize; abi::KERNEL_COUNT] {
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

/// Checks a convolution descriptor's internal consistency and that every array it uses lies in
/// a weights section of `weights_len` bytes at a 64-byte-aligned offset.
pub fn validate_conv(desc: &ConvDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad conv2d descriptor: {why} ({desc:?})");
    let g = conv_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = vec![("weights", desc.weight_off, g.weight_len)];
    if desc.flags & abi::FLAG_BIAS != 0 {
        arrays.push(("bias", desc.bias_off, g.oc));
    }
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.ic));
        arrays.push(("shift", desc.shift_off, g.ic));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Checks a pool descriptor like [`validate_conv`].
pub fn validate_pool(desc: &PoolDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad pool descriptor: {why} ({desc:?})");
    let g = pool_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = Vec::new();
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.c));
        arrays.push(("shift", desc.shift_off, g.c));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Checks a linear descriptor like [`validate_conv`].
pub fn validate_linear(desc: &LinearDesc, weights_len: u64) -> Result<(), String> {
    let fail = |why: &str| format!("bad linear descriptor: {why} ({desc:?})");
    let g = linear_geom(desc).map_err(|b| fail(b.0))?;
    let mut arrays = vec![("weights", desc.weight_off, g.weight_len)];
    if desc.flags & abi::FLAG_BIAS != 0 {
        arrays.push(("bias", desc.bias_off, g.out));
    }
    if desc.flags & abi::FLAG_PROLOGUE != 0 {
        arrays.push(("scale", desc.scale_off, g.ic));
        arrays.push(("shift", desc.shift_off, g.ic));
    }
    check_arrays(&arrays, weights_len).map_err(|e| fail(&e))
}

/// Each `(name, byte offset, floats)` must be 64-byte aligned and end inside the section.
fn check_arrays(arrays: &[(&str, u64, usize)], weights_len: u64) -> Result<(), String> {
    for &(name, off, floats) in arrays {
        if off % WEIGHT_ALIGN != 0 {
            return Err(format!(
                "{name} offset {off} is not {WEIGHT_ALIGN}-byte aligned"
            ));
        }
        let end = (floats as u64)
            .checked_mul(4)
            .and_then(|bytes| bytes.checked_add(off));
        if end.is_none_or(|end| end > weights_len) {
            return Err(format!(
                "{name} ({floats} floats at byte {off}) run past the {weights_len}-byte weights section"
            ));
        }
    }
    Ok(())
}

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
// Portable entry points.
// ---------------------------------------------------------------------------------------------

/// Portable convolution ([`abi::ConvKernel`]).
///
/// # Safety
/// The kernel contract (module doc).
pub unsafe extern "C" fn conv2d_portable(
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { conv_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    conv_portable_body(&mut a, 0, 1);
    abi::STATUS_OK
}

/// Portable pooling ([`abi::PoolKernel`]).
///
/// # Safety
/// The kernel contract (module doc).
pub unsafe extern "C" fn pool_portable(
    desc: *const PoolDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { pool_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    pool_body(&mut a);
    abi::STATUS_OK
}

/// Portable linear layer ([`abi::LinearKernel`]).
///
/// # Safety
/// The kernel contract (module doc).
pub unsafe extern "C" fn linear_portable(
    desc: *const LinearDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { linear_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    linear_body(&mut a);
    abi::STATUS_OK
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA entry points. Each checks the CPU itself (a cached atomic load) and falls back to
// the portable kernel, so calling one directly on any x86-64 CPU is sound.
// ---------------------------------------------------------------------------------------------

/// AVX2+FMA convolution ([`abi::ConvKernel`]); the portable one on a CPU without them.
///
/// # Safety
/// The kernel contract (module doc).
#[cfg(target_arch = "x86_64")]
pub unsafe extern "C" fn conv2d_avx2(
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { conv_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { avx2::conv(&mut a, 0, 1) };
    } else {
        conv_portable_body(&mut a, 0, 1);
    }
    abi::STATUS_OK
}

/// Pooling compiled with AVX2+FMA ([`abi::PoolKernel`]); the portable one without them.
///
/// # Safety
/// The kernel contract (module doc).
#[cfg(target_arch = "x86_64")]
pub unsafe extern "C" fn pool_avx2(
    desc: *const PoolDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { pool_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { avx2::pool(&mut a) };
    } else {
        pool_body(&mut a);
    }
    abi::STATUS_OK
}

/// Linear layer compiled with AVX2+FMA ([`abi::LinearKernel`]); the portable one without them.
///
/// # Safety
/// The kernel contract (module doc).
#[cfg(target_arch = "x86_64")]
pub unsafe extern "C" fn linear_avx2(
    desc: *const LinearDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    scratch: *mut u8,
) -> i32 {
    // SAFETY: the kernel contract, forwarded.
    let Some(mut a) = (unsafe { linear_args(desc, pieces, out, weights, scratch) }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { avx2::linear(&mut a) };
    } else {
        linear_body(&mut a);
    }
    abi::STATUS_OK
}

// ---------------------------------------------------------------------------------------------
// Team entry points: the context is a `Team` (the session's threads). A convolution's output is
// split between the members; pooling and the linear layer are small and run on the caller.
// ---------------------------------------------------------------------------------------------

/// The kernel table for running one image on a [`Team`]: the context argument is a `*const
/// Team`. Function pointers as `usize`, in `abi::KERNEL_*` order.
pub fn kernel_table_team() -> [usize; abi::KERNEL_COUNT] {
    let mut t = [0; abi::KERNEL_COUNT];
    t[abi::KERNEL_CONV] = conv2d_team as abi::ConvKernel as usize;
    t[abi::KERNEL_POOL] = pool_team as abi::PoolKernel as usize;
    t[abi::KERNEL_LINEAR] = linear_team as abi::LinearKernel as usize;
    t
}

/// The smallest convolution (multiply-accumulates) split between members: below it the
/// fork-join (about a microsecond) costs more than the second core saves.
const SPLIT_MIN_MACS: usize = 1 << 17;

/// Parts of a split convolution per member of the team.
const PARTS_PER_MEMBER: usize = 1;

/// Which parts of a split kernel have been claimed. Member `m` owns parts `m * per ..
/// (m + 1) * per` (`per = parts / members`, the rest to the last member) and claims them first,
/// in order; then it takes any other member's unclaimed parts from the end. Owning the same
/// parts in every layer keeps each member's share of the activations in its own core's cache
/// (a part of one layer reads mostly what the same part of the layer before wrote); taking the
/// rest lets a member that starts late, or never, cost no more than its own share.
struct PartClaims {
    claimed: AtomicU64,
    parts: usize,
}

impl PartClaims {
    /// At most 64 parts.
    fn new(parts: usize) -> PartClaims {
        PartClaims {
            claimed: AtomicU64::new(0),
            parts: parts.min(64),
        }
    }

    /// Tries to claim `part`.
    fn claim(&self, part: usize) -> bool {
        let bit = 1u64 << part;
        self.claimed.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    /// The next part member `member` of `members` runs, or `None` when all are claimed.
    fn next(&self, member: usize, members: usize) -> Option<usize> {
        let per = (self.parts / members.max(1)).max(1);
        let first = (member * per).min(self.parts);
        let last = if member + 1 >= members {
            self.parts
        } else {
            ((member + 1) * per).min(self.parts)
        };
        (first..last)
            .chain((0..self.parts).rev())
            .find(|&part| self.claim(part))
    }
}

/// The pooling kernel for this CPU (the AVX2 entry falls back to portable code by itself).
fn best_pool() -> abi::PoolKernel {
    #[cfg(target_arch = "x86_64")]
    return pool_avx2;
    #[cfg(not(target_arch = "x86_64"))]
    return pool_portable;
}

/// The linear kernel for this CPU (as [`best_pool`]).
fn best_linear() -> abi::LinearKernel {
    #[cfg(target_arch = "x86_64")]
    return linear_avx2;
    #[cfg(not(target_arch = "x86_64"))]
    return linear_portable;
}

/// Part `part` of `parts` of a convolution, with AVX2+FMA where the CPU has them.
fn conv_part(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { avx2::conv(a, part, parts) };
        return;
    }
    conv_portable_body(a, part, parts);
}

/// A convolution's operands, shared by the members of a team.
struct ConvCall {
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
}

// SAFETY: the members only read the descriptor, pieces and weights, and write disjoint parts of
// the output (`ConvGeom::bands`); the caller keeps them all alive until every member is done.
unsafe impl Sync for ConvCall {}

/// Convolution on a team ([`abi::ConvKernel`]; the context is a `*const Team`): each member
/// packs the input its part of the output rows (or pixel runs) reads into its own scratch and
/// computes that part; the parts are disjoint.
///
/// # Safety
/// The kernel contract (module doc), with `team` a live [`Team`] whose members' scratch holds
/// the descriptor's scratch bytes, not running another job.
pub unsafe extern "C" fn conv2d_team(
    desc: *const ConvDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    if !desc.is_aligned() {
        return abi::STATUS_BAD_DESCRIPTOR;
    }
    // SAFETY: aligned, and valid or null by the contract.
    let Some(Ok(g)) = (unsafe { desc.as_ref() }).map(conv_geom) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let status = AtomicI32::new(abi::STATUS_OK);
    let call = ConvCall {
        desc,
        pieces,
        out,
        weights,
    };
    let run_part = |member: usize, part: usize, parts: usize| {
        let c = &call;
        // SAFETY: the kernel contract, forwarded; each member uses its own scratch, and the
        // parts of the output are disjoint (`ConvGeom::bands`), each run once.
        match unsafe { conv_args(c.desc, c.pieces, c.out, c.weights, team.scratch(member)) } {
            Some(mut a) => conv_part(&mut a, part, parts),
            None => status.store(abi::STATUS_BAD_DESCRIPTOR, Ordering::Relaxed),
        }
    };
    let members = team.size();
    // Parts of whole output rows (tile rows for Winograd, 16-pixel tiles when flat), a few per
    // member (`PartClaims`).
    let units = if g.winograd != 0 {
        winograd::units(&g)
    } else if g.flat {
        (g.oh * g.ow).div_ceil(2 * LANES)
    } else {
        g.oh
    };
    let parts = (PARTS_PER_MEMBER * members).min(units).min(64);
    if members == 1 || parts < 2 || g.macs() < SPLIT_MIN_MACS {
        run_part(0, 0, 1);
    } else {
        let claims = PartClaims::new(parts);
        let ok = team.run(&|member| {
            while let Some(part) = claims.next(member, members) {
                run_part(member, part, parts);
            }
        });
        if !ok {
            return abi::STATUS_BAD_DESCRIPTOR;
        }
    }
    status.load(Ordering::Relaxed)
}

/// Pooling on a team: on the caller, with member 0's scratch.
///
/// # Safety
/// As [`conv2d_team`].
pub unsafe extern "C" fn pool_team(
    desc: *const PoolDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let kernel = best_pool();
    // SAFETY: the kernel contract, forwarded with member 0's scratch.
    unsafe { kernel(desc, pieces, out, weights, team.scratch(0)) }
}

/// Linear layer on a team: on the caller, with member 0's scratch.
///
/// # Safety
/// As [`conv2d_team`].
pub unsafe extern "C" fn linear_team(
    desc: *const LinearDesc,
    pieces: *const Piece,
    out: *mut f32,
    weights: *const u8,
    team: *mut u8,
) -> i32 {
    // SAFETY: a live team or null, by the contract.
    let Some(team) = (unsafe { team.cast::<Team>().as_ref() }) else {
        return abi::STATUS_BAD_DESCRIPTOR;
    };
    let kernel = best_linear();
    // SAFETY: the kernel contract, forwarded with member 0's scratch.
    unsafe { kernel(desc, pieces, out, weights, team.scratch(0)) }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        CONV_OC_BLOCK, ConvArgs, ConvGeom, LANES, LinearArgs, PoolArgs, linear_body, pack_band,
        pool_body, winograd,
    };
    use std::arch::x86_64::*;

    /// Vectors of output pixels per tile (the dispatch in `conv` instantiates 1 and 2).
    const NV: usize = 2;
    const OB: usize = CONV_OC_BLOCK;
    /// Bytes of packed weights a group of output-channel blocks may hold (see `conv`).
    const GROUP_BYTES: usize = 16 << 10;

    /// How a tile walks the taps.
    const TAPS_1X1: u8 = 0;
    const TAPS_STRIDE1: u8 = 1;
    const TAPS_STRIDED: u8 = 2;
    const TAPS_3WIDE: u8 = 3;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn pool(a: &mut PoolArgs<'_>) {
        pool_body(a);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn linear(a: &mut LinearArgs<'_>) {
        linear_body(a);
    }

    /// Up to `NV` output vectors computed together.
    struct Tile {
        vin: [usize; NV],
        vout: [usize; NV],
        n: [usize; NV],
    }

    /// What every tile of one convolution shares.
    struct Shared {
        g: ConvGeom,
        input: *const f32,
        w: *const f32,
        bias: *const f32,
        has_bias: bool,
        relu: bool,
        out: *mut f32,
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn conv(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
        let g = a.g;
        if g.winograd != 0 {
            winograd_conv(a, part, parts);
            return;
        }
        let taps = if g.kh == 1 && g.kw == 1 {
            TAPS_1X1
        } else if g.sw == 1 && g.kw == 3 {
            TAPS_3WIDE
        } else if g.sw == 1 {
            TAPS_STRIDE1
        } else {
            TAPS_STRIDED
        };
        for band in g.bands(part, parts) {
            pack_band(a, band);
            let s = Shared {
                g,
                input: a.scratch.as_ptr(),
                w: a.w.as_ptr(),
                bias: a.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                has_bias: a.bias.is_some(),
                relu: a.relu,
                out: a.out.ptr,
            };
            let nvec = g.vectors(band);
            // Blocks of output channels in groups whose weights fit half of L1: a group's
            // weights stay there while every tile of the band passes under them.
            let per_block = g.ic * g.kh * g.kw * OB * 4;
            let group = (GROUP_BYTES / per_block).max(1);
            for b0 in (0..g.blocks).step_by(group) {
                let blocks = b0..(b0 + group).min(g.blocks);
                let mut v = 0;
                while v < nvec {
                    let take = (nvec - v).min(NV);
                    let mut t = Tile {
                        vin: [0; NV],
                        vout: [0; NV],
                        n: [0; NV],
                    };
                    for j in 0..take {
                        (t.vin[j], t.vout[j], t.n[j]) = g.vector(band, v + j);
                    }
                    let masked = t.n[..take].iter().any(|&n| n < LANES);
                    for b in blocks.clone() {
                        macro_rules! go {
                            ($n:literal) => {
                                match (masked, taps) {
                                    (false, TAPS_1X1) => tile::<$n, false, TAPS_1X1>(&s, &t, b),
                                    (false, TAPS_STRIDE1) => {
                                        tile::<$n, false, TAPS_STRIDE1>(&s, &t, b)
                                    }
                                    (false, TAPS_3WIDE) => tile::<$n, false, TAPS_3WIDE>(&s, &t, b),
                                    (false, _) => tile::<$n, false, TAPS_STRIDED>(&s, &t, b),
                                    (true, TAPS_1X1) => tile::<$n, true, TAPS_1X1>(&s, &t, b),
                                    (true, TAPS_STRIDE1) => {
                                        tile::<$n, true, TAPS_STRIDE1>(&s, &t, b)
                                    }
                                    (true, TAPS_3WIDE) => tile::<$n, true, TAPS_3WIDE>(&s, &t, b),
                                    (true, _) => tile::<$n, true, TAPS_STRIDED>(&s, &t, b),
                                }
                            };
                        }
                        // SAFETY: the tile's vectors come from `g.vector` for the band just packed
                        // and `b < blocks`, which is what `tile` needs; AVX2 and FMA are enabled.
                        unsafe { if take == 2 { go!(2) } else { go!(1) } }
                    }
                    v += take;
                }
            }
        }
    }

    /// Part `part` of `parts` of a Winograd convolution (`super::winograd`), its products
    /// `M_ξ = U_ξ V_ξ` as 1x1 convolutions over the band's tiles with the register tiles below.
    #[target_feature(enable = "avx2,fma")]
    fn winograd_conv(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
        let g = a.g;
        let four = g.winograd == 4;
        let l = winograd::layout(g.winograd, g.ic, g.oc, g.ih, g.oh, g.ow);
        let gg = winograd::gemm_geom(&g, &l);
        let ocp = g.blocks * OB;
        for (y0, rows) in winograd::bands(&g, &l, part, parts) {
            if four {
                winograd::pack(a, &l, y0, rows, |r, p| winograd::avx2::split4(r, p));
                winograd::avx2::transform_input4(a.scratch, &l, g.ic, rows);
            } else {
                winograd::pack(a, &l, y0, rows, |r, p| winograd::avx2::split2(r, p));
                winograd::avx2::transform_input2(a.scratch, &l, g.ic, rows);
            }
            let base = a.scratch.as_mut_ptr();
            for xi in 0..l.xis {
                let s = Shared {
                    g: gg,
                    input: base.wrapping_add(l.v_at + xi * l.v_xi),
                    w: a.w.as_ptr().wrapping_add(xi * ocp * g.ic),
                    bias: std::ptr::null(),
                    has_bias: false,
                    relu: false,
                    out: base.wrapping_add(l.m_at + xi * l.m_xi),
                };
                // Only the band's tiles (a short last band, or a part of a split, has fewer).
                let mut v = 0;
                let nvec = rows * l.tw / LANES;
                while v < nvec {
                    let take = (nvec - v).min(NV);
                    let t = Tile {
                        vin: std::array::from_fn(|j| (v + j) * LANES),
                        vout: std::array::from_fn(|j| (v + j) * LANES),
                        n: [LANES; NV],
                    };
                    for b in 0..g.blocks {
                        // `V_ξ` holds `ic` planes of `tiles` floats and `M_ξ` `ocp` planes of
                        // `tiles` floats inside the scratch (`winograd::layout`), `U_ξ` is a
                        // packed 1x1 weight block matrix, the vectors are whole (tiles are a
                        // multiple of 8) and `b < blocks`.
                        // SAFETY: as above; AVX2 and FMA are enabled.
                        unsafe {
                            if take == 2 {
                                tile::<2, false, TAPS_1X1>(&s, &t, b)
                            } else {
                                tile::<1, false, TAPS_1X1>(&s, &t, b)
                            }
                        }
                    }
                    v += take;
                }
            }
            // SAFETY: this part's band, written by this call only.
            unsafe {
                if four {
                    winograd::avx2::transform_output4(a, &l, y0, rows)
                } else {
                    winograd::avx2::transform_output2(a, &l, y0, rows)
                }
            };
        }
    }

    /// Lanes `0..n` set.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn mask(n: usize) -> __m256i {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
    }

    /// One tile: output channels `b * OB ..` (those that exist) by the first `N` vectors of `t`.
    /// `MASK`: some vector has fewer than 8 pixels (its stores are masked).
    ///
    /// # Safety
    /// `s` describes a band packed by `pack_band`, packed weights and an output of `s.g`'s
    /// sizes, `t` holds vectors from `s.g.vector` for that band, `b < s.g.blocks`. Every load
    /// then stays inside the scratch and reads what `pack_band` wrote: a vector's pixels `0..n`
    /// read packed columns `x + kx_off(kx)`, inside the row (`(ow - 1) * sw + kw <= padded
    /// width`); lanes `n..8` of a short vector read at most `8 - n` floats further, into the
    /// next row or the zeroed floats after the plane's packed part, and are never stored.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const N: usize, const MASK: bool, const TAPS: u8>(
        s: &Shared,
        t: &Tile,
        b: usize,
    ) {
        let g = &s.g;
        let mut acc = [[_mm256_setzero_ps(); N]; OB];
        let base: [*const f32; N] = std::array::from_fn(|j| s.input.wrapping_add(t.vin[j]));
        let k = g.ic * g.kh * g.kw;
        let mut w = s.w.wrapping_add(b * k * OB);

        // One tap at packed offset `$off`: N input vectors times OB broadcast weights.
        macro_rules! step {
            ($off:expr) => {{
                let off = $off;
                let mut x = [_mm256_setzero_ps(); N];
                for j in 0..N {
                    // SAFETY: inside the scratch, written by `pack_band` (function doc).
                    x[j] = unsafe { _mm256_loadu_ps(base[j].add(off)) };
                }
                for o in 0..OB {
                    // SAFETY: `w` walks the block's `k * OB` packed weights.
                    let wv = unsafe { _mm256_broadcast_ss(&*w.add(o)) };
                    for j in 0..N {
                        acc[o][j] = _mm256_fmadd_ps(wv, x[j], acc[o][j]);
                    }
                }
                w = w.wrapping_add(OB);
            }};
        }

        match TAPS {
            TAPS_1X1 => {
                let mut off = 0;
                for _ in 0..g.ic {
                    step!(off);
                    off += g.plane;
                }
            }
            TAPS_3WIDE => {
                for c in 0..g.ic {
                    for ky in 0..g.kh {
                        let row = c * g.plane + ky * g.rowlen;
                        step!(row);
                        step!(row + 1);
                        step!(row + 2);
                    }
                }
            }
            TAPS_STRIDE1 => {
                for c in 0..g.ic {
                    for ky in 0..g.kh {
                        let row = c * g.plane + ky * g.rowlen;
                        for kx in 0..g.kw {
                            step!(row + kx);
                        }
                    }
                }
            }
            _ => {
                for c in 0..g.ic {
                    for ky in 0..g.kh {
                        let row = c * g.plane + ky * g.rowlen;
                        // `kx_off(kx)` without a division per tap.
                        let (mut phase, mut q) = (0, 0);
                        for _ in 0..g.kw {
                            step!(row + phase * g.wq + q);
                            phase += 1;
                            if phase == g.sw {
                                (phase, q) = (0, q + 1);
                            }
                        }
                    }
                }
            }
        }

        let oplane = g.oh * g.ow;
        let zero = _mm256_setzero_ps();
        for (o, acc_o) in acc.iter().enumerate() {
            let oc = b * OB + o;
            if oc >= g.oc {
                break;
            }
            let bias = if s.has_bias {
                // SAFETY: the bias holds `oc` floats.
                unsafe { _mm256_broadcast_ss(&*s.bias.add(oc)) }
            } else {
                zero
            };
            for ((&a, &vout), &n) in acc_o.iter().zip(&t.vout).zip(&t.n) {
                let mut v = _mm256_add_ps(a, bias);
                if s.relu {
                    // `max(0, v)` returns `v` when it is NaN, as the reference's ReLU.
                    v = _mm256_max_ps(zero, v);
                }
                let dst = s.out.wrapping_add(oc * oplane + vout);
                // SAFETY: lanes `0..n` of the vector are output pixels of channel `oc`.
                unsafe {
                    if MASK {
                        _mm256_maskstore_ps(dst, mask(n), v);
                    } else {
                        _mm256_storeu_ps(dst, v);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The same rule as `ir::interp::relative_error`: `‖got − want‖₂ / ‖want‖₂`.
    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len(), "output lengths differ");
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (&g, &w) in got.iter().zip(want) {
            diff += (f64::from(g) - w).powi(2);
            norm += w * w;
        }
        if diff == 0.0 {
            0.0
        } else {
            (diff / norm).sqrt()
        }
    }

    /// The tolerance of every comparison with the f64 reference (false for NaN).
    fn within_tolerance(err: f64) -> bool {
        err < 1e-5
    }

    /// A descriptor spoiled in one named way.
    type Spoil<D> = (&'static str, fn(&mut D));

    /// xorshift64*: deterministic test data without dependencies.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Uniform in `lo..=hi`.
        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + (self.next() % u64::from(hi - lo + 1)) as u32
        }
        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }
        /// Uniform in [-1, 1).
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f()).collect()
        }
    }

    /// The kernel tables under test, named: the portable one always, and the detected one (the
    /// AVX2 one where the CPU has it). Never empty, so no test can pass by skipping.
    fn tables() -> Vec<(&'static str, [usize; abi::KERNEL_COUNT])> {
        let portable = portable_kernel_table();
        let detected = kernel_table();
        if detected == portable {
            eprintln!("note: no AVX2+FMA on this CPU: only the portable kernels run");
            vec![("portable", portable)]
        } else {
            vec![("portable", portable), ("avx2", detected)]
        }
    }

    fn conv_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::ConvKernel {
        // SAFETY: the table holds a `ConvKernel` at `KERNEL_CONV`.
        unsafe { std::mem::transmute::<usize, abi::ConvKernel>(t[abi::KERNEL_CONV]) }
    }

    fn pool_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::PoolKernel {
        // SAFETY: the table holds a `PoolKernel` at `KERNEL_POOL`.
        unsafe { std::mem::transmute::<usize, abi::PoolKernel>(t[abi::KERNEL_POOL]) }
    }

    fn linear_kernel(t: &[usize; abi::KERNEL_COUNT]) -> abi::LinearKernel {
        // SAFETY: the table holds a `LinearKernel` at `KERNEL_LINEAR`.
        unsafe { std::mem::transmute::<usize, abi::LinearKernel>(t[abi::KERNEL_LINEAR]) }
    }

    /// A weights section under construction: arrays at 64-byte-aligned offsets.
    #[derive(Default)]
    struct Section(Vec<f32>);

    impl Section {
        fn push(&mut self, data: &[f32]) -> u64 {
            while !self.0.len().is_multiple_of(16) {
                self.0.push(f32::NAN);
            }
            let off = 4 * self.0.len() as u64;
            self.0.extend_from_slice(data);
            off
        }
        fn bytes(&self) -> u64 {
            4 * self.0.len() as u64
        }
    }

    /// Input pieces of one image, their channel counts and the combined input in f64 with the
    /// prologue applied: `[c][h][w]`.
    struct Pieces {
        data: Vec<Vec<f32>>,
        channels: Vec<u64>,
    }

    impl Pieces {
        fn random(rng: &mut Rng, sum: bool, n: usize, channels: usize, hw: usize) -> Pieces {
            let channels: Vec<u64> = if sum {
                vec![channels as u64; n]
            } else {
                // Split `channels` into `n` nonzero parts.
                let mut parts = vec![1u64; n];
                for _ in n..channels {
                    parts[rng.next() as usize % n] += 1;
                }
                parts
            };
            let data = channels.iter().map(|&c| rng.vec(c as usize * hw)).collect();
            Pieces { data, channels }
        }
        fn abi(&self) -> Vec<Piece> {
            self.data
                .iter()
                .zip(&self.channels)
                .map(|(d, &channels)| Piece {
                    ptr: d.as_ptr(),
                    channels,
                })
                .collect()
        }
        fn combined(&self, sum: bool, pro: Option<(&[f32], &[f32])>, relu: bool) -> Vec<f64> {
            let mut x: Vec<f64> = if sum {
                let mut x = vec![0.0f64; self.data[0].len()];
                for d in &self.data {
                    for (a, &v) in x.iter_mut().zip(d) {
                        *a += f64::from(v);
                    }
                }
                x
            } else {
                self.data.iter().flatten().map(|&v| f64::from(v)).collect()
            };
            let channels = if sum {
                self.channels[0] as usize
            } else {
                self.channels.iter().sum::<u64>() as usize
            };
            let hw = x.len() / channels;
            for (c, plane) in x.chunks_exact_mut(hw).enumerate() {
                for v in plane {
                    if let Some((s, t)) = pro {
                        *v = *v * f64::from(s[c]) + f64::from(t[c]);
                    }
                    if relu && *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
            x
        }
    }

    struct ConvCase {
        desc: ConvDesc,
        section: Section,
        pieces: Pieces,
        want: Vec<f64>,
    }

    /// A random convolution (or the given shape) and its f64 reference output.
    #[expect(clippy::too_many_arguments, reason = "a test's shape, spelled out")]
    fn conv_case(
        rng: &mut Rng,
        ic: usize,
        hw: (u32, u32),
        oc: u32,
        k: u32,
        stride: u32,
        pad: u32,
        n_pieces: usize,
        sum: bool,
        flags: u32,
    ) -> ConvCase {
        let (ih, iw) = hw;
        let oh = (ih + 2 * pad - k) / stride + 1;
        let ow = (iw + 2 * pad - k) / stride + 1;
        let mut desc = ConvDesc {
            in_channels: ic as u32,
            in_h: ih,
            in_w: iw,
            out_channels: oc,
            out_h: oh,
            out_w: ow,
            kernel_h: k,
            kernel_w: k,
            stride_h: stride,
            stride_w: stride,
            pad_h: pad,
            pad_w: pad,
            combine: if sum {
                abi::COMBINE_SUM
            } else {
                abi::COMBINE_CONCAT
            },
            flags,
            n_pieces: n_pieces as u32,
            ..ConvDesc::default()
        };
        let (ih, iw, oc, k, stride, pad) = (
            ih as usize,
            iw as usize,
            oc as usize,
            k as usize,
            stride as usize,
            pad as usize,
        );
        let (oh, ow) = (oh as usize, ow as usize);
        let pieces = Pieces::random(rng, sum, n_pieces, ic, ih * iw);
        let weight = rng.vec(oc * ic * k * k);
        let bias = rng.vec(oc);
        let scale = rng.vec(ic);
        let shift = rng.vec(ic);
        let mut section = Section::default();
        desc.weight_off = section.push(&pack_conv_weights(&desc, &weight));
        if flags & abi::FLAG_BIAS != 0 {
            desc.bias_off = section.push(&bias);
        }
        if flags & abi::FLAG_PROLOGUE != 0 {
            desc.scale_off = section.push(&scale);
            desc.shift_off = section.push(&shift);
        }
        let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
        let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
        let mut want = vec![0.0f64; oc * oh * ow];
        for o in 0..oc {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = if flags & abi::FLAG_BIAS != 0 {
                        f64::from(bias[o])
                    } else {
                        0.0
                    };
                    for c in 0..ic {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky).wrapping_sub(pad);
                                let ix = (ox * stride + kx).wrapping_sub(pad);
                                if iy < ih && ix < iw {
                                    let wv = weight[((o * ic + c) * k + ky) * k + kx];
                                    s += f64::from(wv) * x[(c * ih + iy) * iw + ix];
                                }
                            }
                        }
                    }
                    if flags & abi::FLAG_RELU != 0 && s < 0.0 {
                        s = 0.0;
                    }
                    want[(o * oh + oy) * ow + ox] = s;
                }
            }
        }
        ConvCase {
            desc,
            section,
            pieces,
            want,
        }
    }

    /// Runs a case's convolution with `kernel`, checking the descriptor first.
    fn run_conv(kernel: abi::ConvKernel, case: &ConvCase) -> Result<Vec<f32>, String> {
        validate_conv(&case.desc, case.section.bytes())?;
        let d = &case.desc;
        let mut out = vec![f32::NAN; (d.out_channels * d.out_h * d.out_w) as usize];
        let mut scratch = vec![f32::NAN; conv_scratch_bytes(d).div_ceil(4) as usize];
        let pieces = case.pieces.abi();
        // SAFETY: the descriptor is valid for this section, and every buffer has its size.
        let status = unsafe {
            kernel(
                d,
                pieces.as_ptr(),
                out.as_mut_ptr(),
                case.section.0.as_ptr().cast(),
                scratch.as_mut_ptr().cast(),
            )
        };
        if status != abi::STATUS_OK {
            return Err(format!("status {status}"));
        }
        Ok(out)
    }

    fn random_flags(rng: &mut Rng, known: u32) -> u32 {
        (rng.next() as u32) & known
    }

    #[test]
    fn conv_matches_the_f64_reference() -> Result<(), String> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let all = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_BIAS | abi::FLAG_RELU;
        let mut cases = Vec::new();
        for _ in 0..160 {
            let sum = rng.coin();
            let n_pieces = rng.range(1, 4) as usize;
            let ic = if sum {
                rng.range(1, 19) as usize
            } else {
                rng.range(n_pieces as u32, 19) as usize
            };
            let k = if rng.coin() { 1 } else { 3 };
            let (stride, pad) = (rng.range(1, 2), rng.range(0, 1));
            let ih = rng.range(k.max(1), 14);
            let iw = rng.range(k.max(1), 21);
            let oc = rng.range(1, 13);
            let flags = random_flags(&mut rng, all);
            cases.push(conv_case(
                &mut rng,
                ic,
                (ih, iw),
                oc,
                k,
                stride,
                pad,
                n_pieces,
                sum,
                flags,
            ));
        }
        // Real layer shapes: full tiles, flat 1x1, widths of 8, 7 and 32, output-channel tails.
        let f = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU;
        for (ic, hw, oc, k, stride, pad, n) in [
            (48, (8, 8), 24, 3, 1, 1, 3),
            (96, (16, 16), 24, 3, 1, 1, 4),
            (37, (7, 7), 13, 3, 1, 1, 2),
            (64, (32, 32), 18, 1, 1, 0, 4),
            (40, (14, 14), 10, 1, 2, 0, 2),
            (3, (23, 23), 9, 7, 2, 3, 1),
            (5, (9, 11), 6, 3, 2, 1, 1),
            (24, (32, 32), 12, 3, 1, 1, 1),
            // Several bands: of pixels (flat), of rows, of strided rows, of single rows.
            (300, (20, 20), 7, 1, 1, 0, 3),
            (200, (24, 24), 8, 3, 1, 1, 4),
            (150, (30, 30), 5, 3, 2, 1, 2),
            (2000, (10, 10), 5, 3, 1, 1, 4),
        ] {
            cases.push(conv_case(&mut rng, ic, hw, oc, k, stride, pad, n, false, f));
        }
        for (name, table) in tables() {
            for (i, case) in cases.iter().enumerate() {
                let got = run_conv(conv_kernel(&table), case)?;
                let err = rel_err(&got, &case.want);
                if !within_tolerance(err) {
                    return Err(format!(
                        "{name}: case {i}: relative error {err:e} for {:?}",
                        case.desc
                    ));
                }
            }
        }
        Ok(())
    }

    /// Winograd F(2x2, 3x3) and F(4x4, 3x3) against the same f64 reference: every flag,
    /// concatenated and summed pieces, one and several bands, output-channel tails; and which
    /// flag the compiler picks for each shape.
    #[test]
    fn winograd_matches_the_f64_reference() -> Result<(), String> {
        let mut rng = Rng(0x5eed);
        let (w2, w4) = (abi::FLAG_WINOGRAD, abi::FLAG_WINOGRAD4);
        let (pro, pro_relu) = (abi::FLAG_PROLOGUE, abi::FLAG_PROLOGUE_RELU);
        let (bias, relu) = (abi::FLAG_BIAS, abi::FLAG_RELU);
        let mut cases = Vec::new();
        for (ic, hw, oc, n, sum, flags, w) in [
            (8, (2, 16), 1, 1, false, 0, w2),
            (24, (32, 32), 24, 3, false, pro | pro_relu, w4),
            (96, (16, 16), 13, 4, false, bias | relu, w4),
            (12, (6, 32), 7, 2, true, pro | bias, w2),
            (600, (16, 16), 5, 4, false, pro_relu, w4),
            (20, (8, 16), 6, 2, true, pro | pro_relu, w4),
            (16, (12, 16), 8, 1, false, bias, w2),
            (16, (8, 48), 8, 1, false, relu, w2),
            (40, (20, 48), 30, 2, false, pro | relu, w2),
            (8, (4, 32), 1, 1, false, 0, w4),
            (96, (32, 32), 24, 4, false, pro | pro_relu | bias, w4),
            (12, (8, 64), 7, 2, true, pro | bias | relu, w4),
            (300, (12, 32), 9, 3, false, pro_relu | relu, w4),
        ] {
            let case = conv_case(&mut rng, ic, hw, oc, 3, 1, 1, n, sum, flags | w);
            let plain = ConvDesc { flags, ..case.desc };
            assert_eq!(winograd_flag(&plain, 4), w, "{:?}", case.desc);
            assert_eq!(winograd_flag(&plain, 2), w2, "{:?}", case.desc);
            assert_eq!(winograd_flag(&plain, 0), 0, "{:?}", case.desc);
            cases.push(case);
        }
        for (name, table) in tables() {
            for (i, case) in cases.iter().enumerate() {
                let got = run_conv(conv_kernel(&table), case)?;
                let err = rel_err(&got, &case.want);
                if !within_tolerance(err) {
                    return Err(format!(
                        "{name}: winograd case {i}: relative error {err:e} for {:?}",
                        case.desc
                    ));
                }
            }
        }
        // Not eligible for either: odd height, width not a multiple of 16, stride 2, 1x1, too
        // few channels. Not for F(4x4): height not a multiple of 4, width not one of 32 (or 16
        // with a height that is a multiple of 8).
        for (ic, hw, k, stride, flags) in [
            (16, (7, 16), 3, 1, w2 | w4),
            (16, (8, 24), 3, 1, w2 | w4),
            (16, (16, 16), 3, 2, w2 | w4),
            (16, (16, 16), 1, 1, w2 | w4),
            (4, (16, 16), 3, 1, w2 | w4),
            (16, (6, 32), 3, 1, w4),
            (16, (12, 16), 3, 1, w4),
            (16, (8, 48), 3, 1, w4),
        ] {
            let pad = if k == 3 { 1 } else { 0 };
            let case = conv_case(&mut rng, ic, hw, 4, k, stride, pad, 1, false, 0);
            if flags & w2 != 0 {
                assert_eq!(winograd_flag(&case.desc, 4), 0, "{:?}", case.desc);
            }
            for w in [w2, w4] {
                if flags & w != 0 {
                    let d = ConvDesc {
                        flags: w,
                        ..case.desc
                    };
                    assert!(validate_conv(&d, 1 << 30).is_err(), "{d:?}");
                }
            }
        }
        // Both flags at once are inconsistent, even on a shape both take.
        let case = conv_case(&mut rng, 16, (32, 32), 4, 3, 1, 1, 1, false, 0);
        let d = ConvDesc {
            flags: w2 | w4,
            ..case.desc
        };
        assert!(validate_conv(&d, 1 << 30).is_err());
        Ok(())
    }

    #[test]
    fn conv_pads_after_the_prologue() -> Result<(), String> {
        // One 1x1 input 0, prologue 0 * 2 + 1 = 1, a 3x3 window of ones with pad 1: only the
        // centre tap sees 1, the 8 padded taps see 0 (not the prologue of 0).
        let desc = ConvDesc {
            in_channels: 1,
            in_h: 1,
            in_w: 1,
            out_channels: 1,
            out_h: 1,
            out_w: 1,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_h: 1,
            pad_w: 1,
            flags: abi::FLAG_PROLOGUE,
            n_pieces: 1,
            ..ConvDesc::default()
        };
        let mut section = Section::default();
        let mut d = desc;
        d.weight_off = section.push(&pack_conv_weights(&desc, &[1.0; 9]));
        d.scale_off = section.push(&[2.0]);
        d.shift_off = section.push(&[1.0]);
        let case = ConvCase {
            desc: d,
            section,
            pieces: Pieces {
                data: vec![vec![0.0]],
                channels: vec![1],
            },
            want: vec![1.0],
        };
        for (name, table) in tables() {
            assert_eq!(run_conv(conv_kernel(&table), &case)?, [1.0], "{name}");
        }
        Ok(())
    }

    struct PoolCase {
        desc: PoolDesc,
        section: Section,
        pieces: Pieces,
        want: Vec<f64>,
    }

    fn random_pool(rng: &mut Rng) -> PoolCase {
        let sum = rng.coin();
        let n_pieces = rng.range(1, 4) as usize;
        let c = rng.range(n_pieces as u32, 9) as usize;
        let global = rng.range(0, 3) == 0;
        let max = rng.coin();
        // 2x2 (transitions), 3x3 (stems, strided or not), 1x1 stride 1 (the identity that
        // materialises a graph output).
        let (k, stride) = match rng.range(0, 2) {
            0 => (2, 2),
            1 => (3, rng.range(1, 2)),
            _ => (1, 1),
        };
        let pad = if k == 3 { rng.range(0, 1) } else { 0 };
        let (ih, iw) = (rng.range(k, 12) as usize, rng.range(k, 12) as usize);
        let flags = random_flags(
            rng,
            abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_RELU,
        ) | if global { abi::FLAG_GLOBAL } else { 0 };
        let (k, s, p) = (k as usize, stride as usize, pad as usize);
        let (oh, ow) = if global {
            (1, 1)
        } else {
            ((ih + 2 * p - k) / s + 1, (iw + 2 * p - k) / s + 1)
        };
        let mut desc = PoolDesc {
            channels: c as u32,
            in_h: ih as u32,
            in_w: iw as u32,
            out_h: oh as u32,
            out_w: ow as u32,
            kernel_h: k as u32,
            kernel_w: k as u32,
            stride_h: s as u32,
            stride_w: s as u32,
            pad_h: p as u32,
            pad_w: p as u32,
            kind: if max { abi::POOL_MAX } else { abi::POOL_AVG },
            combine: if sum {
                abi::COMBINE_SUM
            } else {
                abi::COMBINE_CONCAT
            },
            flags,
            n_pieces: n_pieces as u32,
            ..PoolDesc::default()
        };
        let pieces = Pieces::random(rng, sum, n_pieces, c, ih * iw);
        let (scale, shift) = (rng.vec(c), rng.vec(c));
        let mut section = Section::default();
        if flags & abi::FLAG_PROLOGUE != 0 {
            desc.scale_off = section.push(&scale);
            desc.shift_off = section.push(&shift);
        }
        let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
        let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
        let mut want = Vec::new();
        for plane in x.chunks_exact(ih * iw) {
            if global {
                want.push(if max {
                    plane.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    plane.iter().sum::<f64>() / plane.len() as f64
                });
            } else {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut inside = Vec::new();
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky).wrapping_sub(p);
                                let ix = (ox * s + kx).wrapping_sub(p);
                                if iy < ih && ix < iw {
                                    inside.push(plane[iy * iw + ix]);
                                }
                            }
                        }
                        want.push(if max {
                            inside.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                        } else {
                            inside.iter().sum::<f64>() / (k * k) as f64
                        });
                    }
                }
            }
        }
        if flags & abi::FLAG_RELU != 0 {
            want.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        PoolCase {
            desc,
            section,
            pieces,
            want,
        }
    }

    fn run_pool(kernel: abi::PoolKernel, case: &PoolCase) -> Result<Vec<f32>, String> {
        validate_pool(&case.desc, case.section.bytes())?;
        let d = &case.desc;
        let mut out = vec![f32::NAN; (d.channels * d.out_h * d.out_w) as usize];
        let mut scratch = vec![f32::NAN; pool_scratch_bytes(d).div_ceil(4) as usize];
        let pieces = case.pieces.abi();
        // SAFETY: the descriptor is valid for this section, and every buffer has its size.
        let status = unsafe {
            kernel(
                d,
                pieces.as_ptr(),
                out.as_mut_ptr(),
                case.section.0.as_ptr().cast(),
                scratch.as_mut_ptr().cast(),
            )
        };
        if status != abi::STATUS_OK {
            return Err(format!("status {status}"));
        }
        Ok(out)
    }

    #[test]
    fn pool_matches_the_f64_reference() -> Result<(), String> {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let cases: Vec<PoolCase> = (0..200).map(|_| random_pool(&mut rng)).collect();
        for (name, table) in tables() {
            for (i, case) in cases.iter().enumerate() {
                let got = run_pool(pool_kernel(&table), case)?;
                let err = rel_err(&got, &case.want);
                if !within_tolerance(err) {
                    return Err(format!(
                        "{name}: case {i}: relative error {err:e} for {:?}",
                        case.desc
                    ));
                }
            }
        }
        Ok(())
    }

    struct LinearCase {
        desc: LinearDesc,
        section: Section,
        pieces: Pieces,
        want: Vec<f64>,
    }

    fn random_linear(rng: &mut Rng) -> LinearCase {
        let sum = rng.coin();
        let n_pieces = rng.range(1, 4) as usize;
        let ic = rng.range(n_pieces as u32, 70) as usize;
        let out = rng.range(1, 20) as usize;
        let global = rng.coin();
        let (ih, iw) = if global {
            (rng.range(1, 8) as usize, rng.range(1, 8) as usize)
        } else {
            (1, 1)
        };
        let flags = random_flags(
            rng,
            abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU | abi::FLAG_BIAS | abi::FLAG_RELU,
        ) | if global { abi::FLAG_GLOBAL } else { 0 };
        let mut desc = LinearDesc {
            in_channels: ic as u32,
            in_h: ih as u32,
            in_w: iw as u32,
            out_features: out as u32,
            combine: if sum {
                abi::COMBINE_SUM
            } else {
                abi::COMBINE_CONCAT
            },
            flags,
            n_pieces: n_pieces as u32,
            ..LinearDesc::default()
        };
        let pieces = Pieces::random(rng, sum, n_pieces, ic, ih * iw);
        let (weight, bias) = (rng.vec(out * ic), rng.vec(out));
        let (scale, shift) = (rng.vec(ic), rng.vec(ic));
        let mut section = Section::default();
        desc.weight_off = section.push(&weight);
        if flags & abi::FLAG_BIAS != 0 {
            desc.bias_off = section.push(&bias);
        }
        if flags & abi::FLAG_PROLOGUE != 0 {
            desc.scale_off = section.push(&scale);
            desc.shift_off = section.push(&shift);
        }
        let pro = (flags & abi::FLAG_PROLOGUE != 0).then_some((&scale[..], &shift[..]));
        let x = pieces.combined(sum, pro, flags & abi::FLAG_PROLOGUE_RELU != 0);
        let feat: Vec<f64> = x
            .chunks_exact(ih * iw)
            .map(|p| p.iter().sum::<f64>() / p.len() as f64)
            .collect();
        let want = (0..out)
            .map(|o| {
                let b = if flags & abi::FLAG_BIAS != 0 {
                    f64::from(bias[o])
                } else {
                    0.0
                };
                let v = b + weight[o * ic..][..ic]
                    .iter()
                    .zip(&feat)
                    .map(|(&w, &x)| f64::from(w) * x)
                    .sum::<f64>();
                if flags & abi::FLAG_RELU != 0 {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect();
        LinearCase {
            desc,
            section,
            pieces,
            want,
        }
    }

    fn run_linear(kernel: abi::LinearKernel, case: &LinearCase) -> Result<Vec<f32>, String> {
        validate_linear(&case.desc, case.section.bytes())?;
        let d = &case.desc;
        let mut out = vec![f32::NAN; d.out_features as usize];
        let mut scratch = vec![f32::NAN; linear_scratch_bytes(d).div_ceil(4) as usize];
        let pieces = case.pieces.abi();
        // SAFETY: the descriptor is valid for this section, and every buffer has its size.
        let status = unsafe {
            kernel(
                d,
                pieces.as_ptr(),
                out.as_mut_ptr(),
                case.section.0.as_ptr().cast(),
                scratch.as_mut_ptr().cast(),
            )
        };
        if status != abi::STATUS_OK {
            return Err(format!("status {status}"));
        }
        Ok(out)
    }

    #[test]
    fn linear_matches_the_f64_reference() -> Result<(), String> {
        let mut rng = Rng(0x0bad_cafe_f00d_0001);
        let cases: Vec<LinearCase> = (0..200).map(|_| random_linear(&mut rng)).collect();
        for (name, table) in tables() {
            for (i, case) in cases.iter().enumerate() {
                let got = run_linear(linear_kernel(&table), case)?;
                let err = rel_err(&got, &case.want);
                if !within_tolerance(err) {
                    return Err(format!(
                        "{name}: case {i}: relative error {err:e} for {:?}",
                        case.desc
                    ));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn nan_propagates_through_relu_and_max() -> Result<(), String> {
        let mut rng = Rng(7);
        let mut case = conv_case(
            &mut rng,
            2,
            (3, 3),
            2,
            1,
            1,
            0,
            1,
            false,
            abi::FLAG_PROLOGUE_RELU | abi::FLAG_RELU,
        );
        case.pieces.data[0][4] = f32::NAN;
        for (name, table) in tables() {
            let got = run_conv(conv_kernel(&table), &case)?;
            assert!(got[4].is_nan() && got[9 + 4].is_nan(), "{name}: {got:?}");
            assert!(got.iter().filter(|v| v.is_nan()).count() == 2, "{name}");
        }
        Ok(())
    }

    fn valid_conv() -> (ConvDesc, u64) {
        let mut d = ConvDesc {
            in_channels: 8,
            in_h: 8,
            in_w: 8,
            out_channels: 6,
            out_h: 8,
            out_w: 8,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_h: 1,
            pad_w: 1,
            combine: abi::COMBINE_CONCAT,
            flags: abi::FLAG_PROLOGUE | abi::FLAG_BIAS,
            n_pieces: 2,
            ..ConvDesc::default()
        };
        let w = 4 * packed_conv_weight_len(&d);
        d.bias_off = w.next_multiple_of(64);
        d.scale_off = d.bias_off + 64;
        d.shift_off = d.scale_off + 64;
        (d, d.shift_off + 32)
    }

    #[test]
    fn validate_conv_rejects_inconsistent_descriptors() {
        let (good, len) = valid_conv();
        assert_eq!(validate_conv(&good, len), Ok(()));
        let bad: [Spoil<ConvDesc>; 13] = [
            ("zero in_channels", |d| d.in_channels = 0),
            ("zero out_channels", |d| d.out_channels = 0),
            ("zero stride", |d| d.stride_w = 0),
            ("zero kernel", |d| d.kernel_h = 0),
            ("out_h off by one", |d| d.out_h = 7),
            ("out_w for stride 2", |d| d.stride_w = 2),
            ("window larger than the input", |d| {
                (d.kernel_h, d.pad_h, d.out_h) = (11, 1, 0)
            }),
            ("no pieces", |d| d.n_pieces = 0),
            ("more pieces than channels", |d| d.n_pieces = 9),
            ("unknown combine", |d| d.combine = 2),
            ("global flag", |d| d.flags |= abi::FLAG_GLOBAL),
            ("misaligned bias", |d| d.bias_off += 4),
            ("shift past the end", |d| d.shift_off += 64),
        ];
        for (what, spoil) in bad {
            let mut d = good;
            spoil(&mut d);
            assert!(validate_conv(&d, len).is_err(), "{what} was accepted");
        }
        // Too short a section for the weights; a bias past the end only matters with its flag.
        assert!(validate_conv(&good, 4 * packed_conv_weight_len(&good) - 4).is_err());
        let mut d = good;
        d.flags = abi::FLAG_PROLOGUE;
        d.bias_off = u64::MAX;
        assert_eq!(validate_conv(&d, len), Ok(()));
        // Absurd sizes are rejected, never overflow.
        let mut d = good;
        (d.in_channels, d.out_channels) = (1 << 20, 1 << 20);
        assert!(validate_conv(&d, u64::MAX).is_err());
        d.in_channels = u32::MAX;
        assert!(validate_conv(&d, u64::MAX).is_err());
        assert_eq!(conv_scratch_bytes(&d), 0);
    }

    #[test]
    fn validate_pool_and_linear_reject_inconsistent_descriptors() {
        let pool = PoolDesc {
            channels: 4,
            in_h: 8,
            in_w: 8,
            out_h: 4,
            out_w: 4,
            kernel_h: 2,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 2,
            kind: abi::POOL_AVG,
            n_pieces: 1,
            flags: abi::FLAG_PROLOGUE,
            scale_off: 0,
            shift_off: 64,
            ..PoolDesc::default()
        };
        assert_eq!(validate_pool(&pool, 128), Ok(()));
        assert!(validate_pool(&pool, 64 + 12).is_err(), "shift past the end");
        let bad: [Spoil<PoolDesc>; 7] = [
            ("zero channels", |d| d.channels = 0),
            ("out_h off by one", |d| d.out_h = 3),
            ("unknown kind", |d| d.kind = 2),
            ("bias flag", |d| d.flags |= abi::FLAG_BIAS),
            ("global with a 4x4 output", |d| d.flags |= abi::FLAG_GLOBAL),
            ("zero stride", |d| d.stride_h = 0),
            ("misaligned scale", |d| d.scale_off = 16),
        ];
        for (what, spoil) in bad {
            let mut d = pool;
            spoil(&mut d);
            assert!(validate_pool(&d, 128).is_err(), "{what} was accepted");
        }
        let mut global = pool;
        global.flags |= abi::FLAG_GLOBAL;
        (global.out_h, global.out_w, global.kernel_h, global.stride_h) = (1, 1, 0, 0);
        assert_eq!(validate_pool(&global, 128), Ok(()));

        let linear = LinearDesc {
            in_channels: 16,
            in_h: 8,
            in_w: 8,
            out_features: 10,
            flags: abi::FLAG_GLOBAL | abi::FLAG_BIAS,
            n_pieces: 3,
            weight_off: 0,
            bias_off: 640,
            ..LinearDesc::default()
        };
        assert_eq!(validate_linear(&linear, 680), Ok(()));
        assert!(validate_linear(&linear, 679).is_err(), "bias past the end");
        let bad: [Spoil<LinearDesc>; 5] = [
            ("not global on 8x8", |d| d.flags &= !abi::FLAG_GLOBAL),
            ("zero out_features", |d| d.out_features = 0),
            ("zero in_h", |d| d.in_h = 0),
            ("unknown flag", |d| d.flags |= 1 << 7),
            ("prologue without room", |d| {
                d.flags |= abi::FLAG_PROLOGUE;
                (d.scale_off, d.shift_off) = (640, 704);
            }),
        ];
        for (what, spoil) in bad {
            let mut d = linear;
            spoil(&mut d);
            assert!(validate_linear(&d, 680).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn kernels_reject_bad_calls_with_a_status() -> Result<(), String> {
        let mut rng = Rng(99);
        let case = conv_case(&mut rng, 6, (5, 5), 3, 3, 1, 1, 2, false, 0);
        let d = case.desc;
        let mut out = vec![0.0f32; 75];
        let mut scratch = vec![0.0f32; conv_scratch_bytes(&d) as usize / 4];
        let w: *const u8 = case.section.0.as_ptr().cast();
        for (name, table) in tables() {
            let conv = conv_kernel(&table);
            let call = |d: &ConvDesc, pieces: &[Piece], out: *mut f32, scratch: *mut f32| {
                // SAFETY: every non-null buffer has the size `d` asks for.
                unsafe { conv(d, pieces.as_ptr(), out, w, scratch.cast()) }
            };
            let good = case.pieces.abi();
            let (o, s) = (out.as_mut_ptr(), scratch.as_mut_ptr());
            assert_eq!(call(&d, &good, o, s), abi::STATUS_OK, "{name}");
            // The pieces' channels do not add up to in_channels.
            let mut pieces = good.clone();
            pieces[1].channels += 1;
            assert_eq!(
                call(&d, &pieces, o, s),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            // A null piece, output or scratch; a misaligned output.
            pieces = good.clone();
            pieces[0].ptr = std::ptr::null();
            assert_eq!(
                call(&d, &pieces, o, s),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            let null = std::ptr::null_mut();
            assert_eq!(
                call(&d, &good, null, s),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            assert_eq!(
                call(&d, &good, o, null),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            let skew = o.cast::<u8>().wrapping_add(1).cast::<f32>();
            assert_eq!(
                call(&d, &good, skew, s),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            // An inconsistent descriptor, and a null one.
            let mut bad = d;
            bad.out_h += 1;
            assert_eq!(
                call(&bad, &good, o, s),
                abi::STATUS_BAD_DESCRIPTOR,
                "{name}"
            );
            // SAFETY: a null descriptor is rejected before anything is read.
            let status = unsafe { conv(std::ptr::null(), good.as_ptr(), o, w, s.cast()) };
            assert_eq!(status, abi::STATUS_BAD_DESCRIPTOR, "{name}");
        }
        Ok(())
    }

    #[test]
    fn packing_places_each_weight_once() {
        let d = ConvDesc {
            in_channels: 3,
            out_channels: 6,
            kernel_h: 2,
            kernel_w: 3,
            ..ConvDesc::default()
        };
        let w: Vec<f32> = (0..6 * 3 * 6).map(|i| i as f32 + 1.0).collect();
        let p = pack_conv_weights(&d, &w);
        assert_eq!(p.len() as u64, packed_conv_weight_len(&d));
        let ob = CONV_OC_BLOCK;
        for o in 0..6 {
            for i in 0..18 {
                assert_eq!(p[((o / ob) * 18 + i) * ob + o % ob], w[o * 18 + i]);
            }
        }
        let zeros = p.len() - w.len();
        assert_eq!(p.iter().filter(|&&v| v == 0.0).count(), zeros);
    }

    #[test]
    fn part_claims_give_each_part_once_owners_first() {
        // Member 0 of 2 owns 0..3 and member 1 owns 3..7 (the last takes the rest).
        let c = PartClaims::new(7);
        assert_eq!(c.next(1, 2), Some(3));
        assert_eq!(c.next(0, 2), Some(0));
        assert_eq!(c.next(0, 2), Some(1));
        assert_eq!(c.next(0, 2), Some(2));
        // Member 0's own parts are done: it takes member 1's from the end.
        assert_eq!(c.next(0, 2), Some(6));
        assert_eq!(c.next(1, 2), Some(4));
        assert_eq!(c.next(1, 2), Some(5));
        assert_eq!(c.next(1, 2), None);
        assert_eq!(c.next(0, 2), None);
        // Any number of members, claiming in any interleaving, covers every part exactly once.
        for parts in 1..=64 {
            for members in 1..=5 {
                let c = PartClaims::new(parts);
                let mut seen = vec![0; parts];
                let mut m = 0;
                while let Some(p) = c.next(m % members, members) {
                    seen[p] += 1;
                    m = (m * 7 + 3) % 101;
                }
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{parts} parts, {members} members"
                );
            }
        }
    }

    /// Not an assertion: GFLOP/s of the detected convolution on typical layers (run with
    /// `cargo test --release -p runtime -- --nocapture conv_throughput`).
    #[test]
    fn conv_throughput() -> Result<(), String> {
        let mut rng = Rng(42);
        let f = abi::FLAG_PROLOGUE | abi::FLAG_PROLOGUE_RELU;
        for (name, table) in tables() {
            let (w2, w4) = (abi::FLAG_WINOGRAD, abi::FLAG_WINOGRAD4);
            for (what, ic, oc, k, pad, n, extra, hw) in [
                ("3x3 96->24 at 32x32", 96, 24, 3, 1, 4, 0, 32),
                (
                    "3x3 96->24 at 32x32, Winograd F(2x2)",
                    96,
                    24,
                    3,
                    1,
                    4,
                    w2,
                    32,
                ),
                (
                    "3x3 96->24 at 32x32, Winograd F(4x4)",
                    96,
                    24,
                    3,
                    1,
                    4,
                    w4,
                    32,
                ),
                (
                    "3x3 96->24 at 16x16, Winograd F(2x2)",
                    96,
                    24,
                    3,
                    1,
                    4,
                    w2,
                    16,
                ),
                (
                    "3x3 96->24 at 16x16, Winograd F(4x4)",
                    96,
                    24,
                    3,
                    1,
                    4,
                    w4,
                    16,
                ),
                ("1x1 384->96 at 32x32", 384, 96, 1, 0, 5, 0, 32),
                ("1x1 96->96 at 32x32", 96, 96, 1, 0, 4, 0, 32),
                ("1x1 96->96 at 16x16", 96, 96, 1, 0, 4, 0, 16),
                ("1x1 96->96 at 8x8", 96, 96, 1, 0, 4, 0, 8),
                ("1x1 300->48 at 32x32, 25 pieces", 300, 48, 1, 0, 25, 0, 32),
            ] {
                let case = conv_case(&mut rng, ic, (hw, hw), oc, k, 1, pad, n, false, f | extra);
                let kernel = conv_kernel(&table);
                run_conv(kernel, &case)?;
                let d = &case.desc;
                let mut out = vec![0.0f32; (d.out_channels * d.out_h * d.out_w) as usize];
                let mut scratch = vec![0.0f32; conv_scratch_bytes(d).div_ceil(4) as usize];
                let pieces = case.pieces.abi();
                let w: *const u8 = case.section.0.as_ptr().cast();
                let flops = 2.0 * (oc as usize * ic * (k * k) as usize * (hw * hw) as usize) as f64;
                // The best of many runs: other processes on the machine only ever slow one down.
                let start = Instant::now();
                let (mut runs, mut best) = (0u32, f64::INFINITY);
                while runs < 3 || start.elapsed().as_secs_f64() < 0.3 {
                    let t = Instant::now();
                    // SAFETY: as in `run_conv`: a valid descriptor and buffers of its sizes.
                    let status = unsafe {
                        kernel(
                            d,
                            pieces.as_ptr(),
                            out.as_mut_ptr(),
                            w,
                            scratch.as_mut_ptr().cast(),
                        )
                    };
                    best = best.min(t.elapsed().as_secs_f64());
                    assert_eq!(status, abi::STATUS_OK);
                    runs += 1;
                }
                eprintln!(
                    "conv_throughput: {name} {what}: {:.1} GFLOP/s direct-equivalent ({:.1} us/image, best of {runs})",
                    flops / best / 1e9,
                    best * 1e6
                );
            }
        }
        Ok(())
    }
}
