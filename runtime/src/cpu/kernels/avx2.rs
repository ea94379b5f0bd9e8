//! The AVX2+FMA variants of the kernels' inner loops (picked at run time by
//! `kernel_table`): the 6x16 register-tile convolution, pooling and the linear layer, on the
//! geometry and arguments the parent module validated.
//!
//! Must not validate or allocate: every slice it touches was checked by the caller.

use super::simd_conv::{
    GROUP_BYTES, NV, Shared, TAPS_1X1, TAPS_3WIDE, TAPS_STRIDE1, TAPS_STRIDED, Tile,
};
use super::{
    CONV_OC_BLOCK, ConvArgs, LANES, LinearArgs, PoolArgs, forced_portable, linear_body, pack_band,
    pool_body, winograd,
};
use std::arch::x86_64::*;

const OB: usize = CONV_OC_BLOCK;

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

simd_conv_drivers!("avx2,fma", avx2, |a| {});

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
