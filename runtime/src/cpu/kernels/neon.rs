//! The NEON kernels on aarch64 (picked at run time by `kernel_table` when
//! `is_aarch64_feature_detected!("neon")`), on the geometry and arguments the parent module
//! validated: the 6x16 register-tile convolution (direct 1x1, 3x3 and strided windows) and the
//! products of the Winograd F(2x2) and F(4x4) convolutions; the BN-ReLU prologue with the
//! combining of summed pieces, which every kernel's input packing runs through ([`map`],
//! [`add`]), and the phase split of a stride-2 convolution's packed rows ([`pack_row2`]); pooling ([`pool`]: the transitions' 2x2 windows, the global pool, the identity);
//! and the head ([`linear`]: global average and the fully connected layer). The Winograd data
//! movement and transforms are `winograd::neon`.
//!
//! The convolution tile is the AVX2 one (`avx2.rs`) on 128-bit registers: a vector of 8 output
//! pixels is two `float32x4_t`, so a tile of 6 output channels by 2 vectors holds 24
//! accumulators, and with 4 input registers and 2 weight registers uses 30 of the 32 NEON
//! registers. Each tap loads the block's 6 weights with two loads (4 + 2 lanes) and multiplies
//! by lane (`vfmaq_laneq_f32`), instead of 6 broadcasts.
//!
//! The prologue and pooling do the portable code's arithmetic in the same order (a multiply
//! then an add, never fused; `(a + b) + (c + d)` then `* 0.25`, exact as `/ 4`), so their
//! results are the portable ones bit for bit; the sums of the global average (f64) and of the
//! linear layer's dot products (f32, fused) are in a different order.
//!
//! Must not validate or allocate: every slice it touches was checked by the caller. Must not
//! change what a kernel computes: `ir::interp` and the portable kernels define that.

use super::simd_conv::{
    GROUP_BYTES, NV, Shared, TAPS_1X1, TAPS_3WIDE, TAPS_STRIDE1, TAPS_STRIDED, Tile,
};
use super::{
    CONV_OC_BLOCK, ConvArgs, LANES, LinearArgs, PoolArgs, Prologue, Src, forced_portable, nan_max,
    pack_band, pool_body, relu, winograd,
};
use std::arch::aarch64::*;

const OB: usize = CONV_OC_BLOCK;

pub(super) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon") && !forced_portable()
}

simd_conv_drivers!("neon", neon, |a| {
    // The input packing's prologue as NEON loops.
    a.pro.neon = true;
});

/// One tile: output channels `b * OB ..` (those that exist) by the first `N` vectors of `t`,
/// each vector two 4-lane registers. `MASK`: some vector has fewer than 8 pixels (its stores
/// go lane by lane).
///
/// # Safety
/// `s` describes a band packed by `pack_band`, packed weights and an output of `s.g`'s
/// sizes, `t` holds vectors from `s.g.vector` for that band, `b < s.g.blocks`. Every load
/// then stays inside the scratch and reads what `pack_band` wrote: a vector's pixels `0..n`
/// read packed columns `x + kx_off(kx)`, inside the row (`(ow - 1) * sw + kw <= padded
/// width`); lanes `n..8` of a short vector read at most `8 - n` floats further, into the
/// next row or the zeroed floats after the plane's packed part, and are never stored.
#[target_feature(enable = "neon")]
unsafe fn tile<const N: usize, const MASK: bool, const TAPS: u8>(s: &Shared, t: &Tile, b: usize) {
    let g = &s.g;
    let zero = vdupq_n_f32(0.0);
    // acc[o][2 * j + h]: output channel o, vector j, half h.
    let mut acc = [[zero; 4]; OB];
    let base: [*const f32; N] = std::array::from_fn(|j| s.input.wrapping_add(t.vin[j]));
    let k = g.ic * g.kh * g.kw;
    let mut w = s.w.wrapping_add(b * k * OB);

    // One tap at packed offset `$off`: N input vectors (2N registers) times OB weights.
    macro_rules! step {
        ($off:expr) => {{
            let off = $off;
            let mut x = [zero; 4];
            for j in 0..N {
                // SAFETY: inside the scratch, written by `pack_band` (function doc).
                unsafe {
                    x[2 * j] = vld1q_f32(base[j].add(off));
                    x[2 * j + 1] = vld1q_f32(base[j].add(off + 4));
                }
            }
            // SAFETY: `w` walks the block's `k * OB` packed weights, `OB = 6` per tap.
            let (w03, w45) = unsafe { (vld1q_f32(w), vld1_f32(w.add(4))) };
            for h in 0..2 * N {
                acc[0][h] = vfmaq_laneq_f32::<0>(acc[0][h], x[h], w03);
                acc[1][h] = vfmaq_laneq_f32::<1>(acc[1][h], x[h], w03);
                acc[2][h] = vfmaq_laneq_f32::<2>(acc[2][h], x[h], w03);
                acc[3][h] = vfmaq_laneq_f32::<3>(acc[3][h], x[h], w03);
                acc[4][h] = vfmaq_lane_f32::<0>(acc[4][h], x[h], w45);
                acc[5][h] = vfmaq_lane_f32::<1>(acc[5][h], x[h], w45);
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
    for (o, acc_o) in acc.iter().enumerate() {
        let oc = b * OB + o;
        if oc >= g.oc {
            break;
        }
        let bias = if s.has_bias {
            // SAFETY: the bias holds `oc` floats.
            unsafe { vld1q_dup_f32(s.bias.add(oc)) }
        } else {
            zero
        };
        for j in 0..N {
            let dst = s.out.wrapping_add(oc * oplane + t.vout[j]);
            let mut v = [
                vaddq_f32(acc_o[2 * j], bias),
                vaddq_f32(acc_o[2 * j + 1], bias),
            ];
            if s.relu {
                // `max(0, v)` must return `v` when it is NaN, as the reference's ReLU:
                // `vmaxq_f32` propagates NaN (FMAX), and so does this.
                v = [vmaxq_f32(zero, v[0]), vmaxq_f32(zero, v[1])];
            }
            if MASK && t.n[j] < LANES {
                let mut lanes = [0.0f32; LANES];
                // SAFETY: a local array of 8 floats.
                unsafe {
                    vst1q_f32(lanes.as_mut_ptr(), v[0]);
                    vst1q_f32(lanes.as_mut_ptr().add(4), v[1]);
                }
                for (i, &x) in lanes.iter().enumerate().take(t.n[j]) {
                    // SAFETY: lanes `0..n` of the vector are output pixels of channel `oc`.
                    unsafe { dst.add(i).write(x) };
                }
            } else {
                // SAFETY: all 8 lanes of the vector are output pixels of channel `oc`.
                unsafe {
                    vst1q_f32(dst, v[0]);
                    vst1q_f32(dst.add(4), v[1]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The prologue: what every kernel's input packing runs through.
// ---------------------------------------------------------------------------------------------

/// `dst[i] = prologue(src[i])` over `0..n`, 8 floats per iteration, then one at a time.
///
/// # Safety
/// `src` valid for `n` reads and `dst` for `n` writes; they may be the same run (in place),
/// never partly overlapping.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn map_run<const AFFINE: bool, const RELU: bool>(
    s: f32,
    t: f32,
    src: *const f32,
    dst: *mut f32,
    n: usize,
) {
    let (vs, vt, zero) = (vdupq_n_f32(s), vdupq_n_f32(t), vdupq_n_f32(0.0));
    // The portable arithmetic: `x * s + t` (two roundings), then `max(0, x)`, which returns
    // `x` when it is NaN (FMAX propagates NaN).
    macro_rules! f {
        ($x:expr) => {{
            let x = $x;
            let x = if AFFINE {
                vaddq_f32(vmulq_f32(x, vs), vt)
            } else {
                x
            };
            if RELU { vmaxq_f32(zero, x) } else { x }
        }};
    }
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` floats of both runs (function doc); both loads come before
        // the stores, so an in-place run reads its own values.
        unsafe {
            let (a, b) = (vld1q_f32(src.add(i)), vld1q_f32(src.add(i + 4)));
            vst1q_f32(dst.add(i), f!(a));
            vst1q_f32(dst.add(i + 4), f!(b));
        }
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n` (function doc).
        unsafe {
            let x = *src.add(i);
            let x = if AFFINE { x * s + t } else { x };
            *dst.add(i) = if RELU { relu(x) } else { x };
        }
        i += 1;
    }
}

/// Channel `c`'s prologue: `dst = prologue(src)`, or `dst = prologue(dst)` in place when `src`
/// is `None` (`Prologue::map` and `Prologue::apply`, which call this when `pro.neon`). The
/// results are the portable loops' bit for bit (but ReLU gives +0.0 for -0.0).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn map(pro: &Prologue<'_>, c: usize, src: Option<&[f32]>, dst: &mut [f32]) {
    let n = src.map_or(dst.len(), |s| s.len().min(dst.len()));
    let d = dst.as_mut_ptr();
    let from = src.map_or(d.cast_const(), |s| s.as_ptr());
    let (s, t) = pro
        .affine
        .map_or((1.0, 0.0), |(scale, shift)| (scale[c], shift[c]));
    // SAFETY: `n` floats of `src` (or `dst`, in place) and of `dst`, which a `&mut` keeps
    // apart from `src`.
    unsafe {
        match (pro.affine.is_some(), pro.relu) {
            (true, true) => map_run::<true, true>(s, t, from, d, n),
            (true, false) => map_run::<true, false>(s, t, from, d, n),
            (false, true) => map_run::<false, true>(s, t, from, d, n),
            (false, false) if src.is_some() => map_run::<false, false>(s, t, from, d, n),
            (false, false) => {}
        }
    }
}

/// `dst += src`, element by element (the sum of a summed input's pieces).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn add(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` floats of both slices.
        unsafe {
            let a = vaddq_f32(vld1q_f32(d.add(i)), vld1q_f32(s.add(i)));
            let b = vaddq_f32(vld1q_f32(d.add(i + 4)), vld1q_f32(s.add(i + 4)));
            vst1q_f32(d.add(i), a);
            vst1q_f32(d.add(i + 4), b);
        }
        i += 8;
    }
    for (x, &y) in dst[i..n].iter_mut().zip(&src[i..n]) {
        *x += y;
    }
}

/// One padded input row of a stride-2 convolution's packing (`pack_band`, which zeroed `row`):
/// the prologued values `at..at + iw` of `src` to padded columns `pw ..`, column `x` at phase
/// `x % 2`, `x / 2` (phases `wq` floats apart): prologued in runs of 64 on the stack, then
/// split into the two phases by one deinterleaving load (`ld2`) per 8 floats.
///
/// # Safety
/// As `Src::load` for the floats `at..at + iw` of a plane.
#[target_feature(enable = "neon")]
pub(super) unsafe fn pack_row2(
    src: Src<'_>,
    at: usize,
    (iw, pw, wq): (usize, usize, usize),
    row: &mut [f32],
    pro: &Prologue<'_>,
    c: usize,
) {
    // Every column `pw + x < pw + iw <= 2 wq` has its place `(x % 2) wq + x / 2 < 2 wq`.
    assert!(pw + iw <= 2 * wq && row.len() >= 2 * wq);
    let mut run = [0.0f32; 64];
    let p = row.as_mut_ptr();
    for x0 in (0..iw).step_by(run.len()) {
        let n = (iw - x0).min(run.len());
        // SAFETY: `x0 + n <= iw` (function doc).
        unsafe { src.load(at + x0, &mut run[..n], pro, c) };
        // `run[i]` goes to column `first + i`: the even `i` to one phase from `first / 2`, the
        // odd ones to the other from `(first + 1) / 2`.
        let first = pw + x0;
        let (even, odd) = if first.is_multiple_of(2) {
            (first / 2, wq + (first + 1) / 2)
        } else {
            (wq + first / 2, (first + 1) / 2)
        };
        let whole = n / 8;
        for k in 0..whole {
            // SAFETY: `8 k + 8 <= n` floats of `run`; the 4 stores of each phase are the places
            // of columns `first + 8 k ..= first + 8 k + 7`, inside the row (assert above).
            unsafe {
                let v = vld2q_f32(run.as_ptr().add(8 * k));
                vst1q_f32(p.add(even + 4 * k), v.0);
                vst1q_f32(p.add(odd + 4 * k), v.1);
            }
        }
        for (i, &v) in run[..n].iter().enumerate().skip(8 * whole) {
            let x = first + i;
            row[(x % 2) * wq + x / 2] = v;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling.
// ---------------------------------------------------------------------------------------------

/// A pool: the transitions' 2x2 stride-2 windows (average or maximum), the global pool and the
/// identity (a 1x1 window that materialises a graph output) in NEON; other windows (a stem's
/// 3x3 maximum) are `pool_body`'s portable loops, with the NEON prologue.
#[target_feature(enable = "neon")]
pub(super) fn pool(a: &mut PoolArgs<'_>) {
    a.pro.neon = true;
    let g = a.g;
    let window = (g.kh, g.kw, g.sh, g.sw, g.ph, g.pw);
    let identity = !g.global && window == (1, 1, 1, 1, 0, 0);
    let two = !g.global && window == (2, 2, 2, 2, 0, 0);
    if !(g.global || identity || two) {
        pool_body(a);
        return;
    }
    let pro = a.pro;
    let after = Prologue {
        affine: None,
        relu: true,
        neon: true,
    };
    let plane = &mut a.scratch[..g.ih * g.iw];
    for (c, src) in a.input.channels() {
        let dst = &mut a.out[c * g.oh * g.ow..][..g.oh * g.ow];
        if identity {
            // SAFETY: the output plane is the input plane's size (`oh = ih`, `ow = iw`).
            unsafe { src.load(0, dst, &pro, c) };
        } else {
            // SAFETY: the whole plane of `ih * iw` floats.
            unsafe { src.load(0, plane, &pro, c) };
            if !g.global {
                pool2x2(plane, g.iw, g.max, dst, g.ow);
            } else if g.max {
                dst[0] = max_all(plane);
            } else {
                dst[0] = (sum_f64(plane) / plane.len() as f64) as f32;
            }
        }
        if a.relu {
            map(&after, c, None, dst);
        }
    }
}

/// The 2x2 stride-2 pool of `plane` (rows of `iw` floats) into `dst` (rows of `ow`, `2 ow <=
/// iw`): 4 outputs per iteration from two deinterleaving loads (`ld2`) per input row.
#[inline]
#[target_feature(enable = "neon")]
fn pool2x2(plane: &[f32], iw: usize, max: bool, dst: &mut [f32], ow: usize) {
    for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
        let r0 = &plane[2 * oy * iw..][..2 * ow];
        let r1 = &plane[(2 * oy + 1) * iw..][..2 * ow];
        let whole = ow / 4 * 4;
        for x in (0..whole).step_by(4) {
            // SAFETY: `2 x + 8 <= 2 ow` floats of each input row, `x + 4 <= ow` of the output
            // row.
            unsafe {
                let a = vld2q_f32(r0.as_ptr().add(2 * x));
                let b = vld2q_f32(r1.as_ptr().add(2 * x));
                let v = if max {
                    vmaxq_f32(vmaxq_f32(a.0, a.1), vmaxq_f32(b.0, b.1))
                } else {
                    // The portable order: (row 0) + (row 1), then / 4 (exact as * 0.25).
                    let s = vaddq_f32(vaddq_f32(a.0, a.1), vaddq_f32(b.0, b.1));
                    vmulq_n_f32(s, 0.25)
                };
                vst1q_f32(row.as_mut_ptr().add(x), v);
            }
        }
        for x in whole..ow {
            let (a, b) = (&r0[2 * x..][..2], &r1[2 * x..][..2]);
            row[x] = if max {
                [a[0], a[1], b[0], b[1]]
                    .into_iter()
                    .fold(f32::NEG_INFINITY, nan_max)
            } else {
                ((a[0] + a[1]) + (b[0] + b[1])) / 4.0
            };
        }
    }
}

/// The maximum of `x`, NaN if any is NaN, `-inf` for none.
#[inline]
#[target_feature(enable = "neon")]
fn max_all(x: &[f32]) -> f32 {
    let (chunks, tail) = x.as_chunks::<4>();
    let mut m = vdupq_n_f32(f32::NEG_INFINITY);
    for v in chunks {
        // SAFETY: 4 floats.
        m = vmaxq_f32(m, unsafe { vld1q_f32(v.as_ptr()) });
    }
    let mut lanes = [0.0f32; 4];
    // SAFETY: a local array of 4 floats.
    unsafe { vst1q_f32(lanes.as_mut_ptr(), m) };
    lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, nan_max)
}

/// The sum of `x` in f64 (as the portable global average), 4 lanes of f64 at once.
#[inline]
#[target_feature(enable = "neon")]
fn sum_f64(x: &[f32]) -> f64 {
    let (chunks, tail) = x.as_chunks::<4>();
    let (mut lo, mut hi) = (vdupq_n_f64(0.0), vdupq_n_f64(0.0));
    for v in chunks {
        // SAFETY: 4 floats.
        let v = unsafe { vld1q_f32(v.as_ptr()) };
        lo = vaddq_f64(lo, vcvt_f64_f32(vget_low_f32(v)));
        hi = vaddq_f64(hi, vcvt_high_f64_f32(v));
    }
    vaddvq_f64(vaddq_f64(lo, hi)) + tail.iter().map(|&v| f64::from(v)).sum::<f64>()
}

// ---------------------------------------------------------------------------------------------
// The head: global average and the fully connected layer.
// ---------------------------------------------------------------------------------------------

/// Floats of a channel's plane prologued at once by [`linear`] (an 8x8 map in one go).
const HEAD_RUN: usize = 64;

/// A linear layer (with `FLAG_GLOBAL`, the head's global average first): per channel the
/// prologued plane in runs of [`HEAD_RUN`] summed in f64, then per output a dot product with
/// 16 partial sums in 4 registers.
#[target_feature(enable = "neon")]
pub(super) fn linear(a: &mut LinearArgs<'_>) {
    a.pro.neon = true;
    let g = a.g;
    let pro = a.pro;
    let feat = &mut a.scratch[..g.ic];
    let mut run = [0.0f32; HEAD_RUN];
    for (c, src) in a.input.channels() {
        let mut s = 0.0f64;
        for at in (0..g.hw).step_by(HEAD_RUN) {
            let run = &mut run[..(g.hw - at).min(HEAD_RUN)];
            // SAFETY: `at + run.len() <= hw`, inside the plane.
            unsafe { src.load(at, run, &pro, c) };
            s += sum_f64(run);
        }
        feat[c] = (s / g.hw as f64) as f32;
    }
    for (o, (dst, row)) in a.out.iter_mut().zip(a.w.chunks_exact(g.ic)).enumerate() {
        let v = dot(row, feat) + a.bias.map_or(0.0, |b| b[o]);
        *dst = if a.relu { relu(v) } else { v };
    }
}

/// `a · b` in f32: 16 partial sums (4 registers, fused multiply-adds), then the tail.
#[inline]
#[target_feature(enable = "neon")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ac, ar) = a.as_chunks::<16>();
    let (bc, br) = b.as_chunks::<16>();
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (x, y) in ac.iter().zip(bc) {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: floats `4 j .. 4 j + 4` of two chunks of 16.
            let (x, y) = unsafe {
                (
                    vld1q_f32(x.as_ptr().add(4 * j)),
                    vld1q_f32(y.as_ptr().add(4 * j)),
                )
            };
            *s = vfmaq_f32(*s, x, y);
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    vaddvq_f32(sum) + tail
}
