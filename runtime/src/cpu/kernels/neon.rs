//! The NEON variants of the convolution inner loops on aarch64 (picked at run time by
//! `kernel_table` when `is_aarch64_feature_detected!("neon")`): the 6x16 register-tile
//! convolution (direct 1x1, 3x3 and strided windows) and the products of the Winograd F(2x2)
//! and F(4x4) convolutions, on the geometry and arguments the parent module validated.
//!
//! The tile is the AVX2 one (`avx2.rs`) on 128-bit registers: a vector of 8 output pixels is
//! two `float32x4_t`, so a tile of 6 output channels by 2 vectors holds 24 accumulators, and
//! with 4 input registers and 2 weight registers uses 30 of the 32 NEON registers. Each tap
//! loads the block's 6 weights with two loads (4 + 2 lanes) and multiplies by lane
//! (`vfmaq_laneq_f32`), instead of 6 broadcasts. Everything around the products (the input
//! packing with the BN-ReLU prologue, the Winograd transforms, pooling, the head) is the
//! portable code, which on aarch64 is compiled for NEON (part of the ARMv8-A baseline) and
//! vectorised by the compiler.
//!
//! Must not validate or allocate: every slice it touches was checked by the caller.

use super::{CONV_OC_BLOCK, ConvArgs, ConvGeom, LANES, forced_portable, pack_band, winograd};
use std::arch::aarch64::*;

/// Vectors of output pixels per tile (the dispatch in `conv` instantiates 1 and 2).
const NV: usize = 2;
const OB: usize = CONV_OC_BLOCK;
/// Bytes of packed weights a group of output-channel blocks may hold (half of a 64 KiB L1D,
/// as on a Cortex-A76).
const GROUP_BYTES: usize = 16 << 10;

/// How a tile walks the taps.
const TAPS_1X1: u8 = 0;
const TAPS_STRIDE1: u8 = 1;
const TAPS_STRIDED: u8 = 2;
const TAPS_3WIDE: u8 = 3;

pub(super) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon") && !forced_portable()
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

#[target_feature(enable = "neon")]
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
                                (false, TAPS_STRIDE1) => tile::<$n, false, TAPS_STRIDE1>(&s, &t, b),
                                (false, TAPS_3WIDE) => tile::<$n, false, TAPS_3WIDE>(&s, &t, b),
                                (false, _) => tile::<$n, false, TAPS_STRIDED>(&s, &t, b),
                                (true, TAPS_1X1) => tile::<$n, true, TAPS_1X1>(&s, &t, b),
                                (true, TAPS_STRIDE1) => tile::<$n, true, TAPS_STRIDE1>(&s, &t, b),
                                (true, TAPS_3WIDE) => tile::<$n, true, TAPS_3WIDE>(&s, &t, b),
                                (true, _) => tile::<$n, true, TAPS_STRIDED>(&s, &t, b),
                            }
                        };
                    }
                    // SAFETY: the tile's vectors come from `g.vector` for the band just packed
                    // and `b < blocks`, which is what `tile` needs; NEON is enabled.
                    unsafe { if take == 2 { go!(2) } else { go!(1) } }
                }
                v += take;
            }
        }
    }
}

/// Part `part` of `parts` of a Winograd convolution (`super::winograd`): the portable packing
/// and transforms, and the products `M_ξ = U_ξ V_ξ` as 1x1 convolutions over the band's tiles
/// with the register tile below (the products are all but a few percent of the arithmetic).
#[target_feature(enable = "neon")]
fn winograd_conv(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
    let g = a.g;
    let m = g.winograd;
    let l = winograd::layout(m, g.ic, g.oc, g.ih, g.oh, g.ow);
    let gg = winograd::gemm_geom(&g, &l);
    let ocp = g.blocks * OB;
    for (y0, rows) in winograd::bands(&g, &l, part, parts) {
        winograd::pack(a, &l, y0, rows, |r, p| winograd::split_portable(m, r, p));
        winograd::transform_input(a.scratch, &l, g.ic, rows);
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
                    // SAFETY: as above; NEON is enabled.
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
        unsafe { winograd::transform_output(a, &l, y0, rows) };
    }
}

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
