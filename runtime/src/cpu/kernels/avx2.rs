//! The AVX2+FMA variants of the kernels' inner loops (picked at run time by
//! `kernel_table`): the 6x16 register-tile convolution, pooling and the linear layer, on the
//! geometry and arguments the parent module validated.
//!
//! Must not validate or allocate: every slice it touches was checked by the caller.

use super::{
    CONV_OC_BLOCK, ConvArgs, ConvGeom, LANES, LinearArgs, PoolArgs, forced_portable, linear_body,
    pack_band, pool_body, winograd,
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
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && !forced_portable()
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
unsafe fn tile<const N: usize, const MASK: bool, const TAPS: u8>(s: &Shared, t: &Tile, b: usize) {
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
