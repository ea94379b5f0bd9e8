//! The convolution driver the SIMD kernels share (`avx2.rs` on x86-64, `neon.rs` on aarch64):
//! the band, block-group and vector loops of a direct convolution and of a Winograd
//! convolution's products, around each module's own register tile (`tile`) and Winograd
//! transforms (`winograd::avx2`, `winograd::neon`), and the types they pass it. The modules
//! differ in their instruction set, in their tile and in what they set up before a convolution
//! (NEON runs the input packing's prologue as NEON loops); [`simd_conv_drivers!`] writes the
//! same `conv` and `winograd_conv` into each, compiled with its instruction set enabled.
//!
//! Must not validate or allocate (the parent module did), and must not hold arithmetic: the
//! register tiles and transforms are each module's own.

use super::ConvGeom;

/// Vectors of output pixels per tile (the dispatch in `conv` instantiates 1 and 2).
pub(super) const NV: usize = 2;
/// Bytes of packed weights a group of output-channel blocks may hold (half of a 32 KiB L1D;
/// see `conv`).
pub(super) const GROUP_BYTES: usize = 16 << 10;

/// How a tile walks the taps.
pub(super) const TAPS_1X1: u8 = 0;
pub(super) const TAPS_STRIDE1: u8 = 1;
pub(super) const TAPS_STRIDED: u8 = 2;
pub(super) const TAPS_3WIDE: u8 = 3;

/// Up to `NV` output vectors computed together.
pub(super) struct Tile {
    pub(super) vin: [usize; NV],
    pub(super) vout: [usize; NV],
    pub(super) n: [usize; NV],
}

/// What every tile of one convolution shares.
pub(super) struct Shared {
    pub(super) g: ConvGeom,
    pub(super) input: *const f32,
    pub(super) w: *const f32,
    pub(super) bias: *const f32,
    pub(super) has_bias: bool,
    pub(super) relu: bool,
    pub(super) out: *mut f32,
}

/// `tile::<N, MASK, TAPS>(s, t, b)` of the module it expands in, with `MASK` and `TAPS` picked
/// from run-time values (`N` a literal).
macro_rules! tile_variant {
    ($n:literal, $masked:expr, $taps:expr, $s:expr, $t:expr, $b:expr) => {
        match ($masked, $taps) {
            (false, TAPS_1X1) => tile::<$n, false, TAPS_1X1>($s, $t, $b),
            (false, TAPS_STRIDE1) => tile::<$n, false, TAPS_STRIDE1>($s, $t, $b),
            (false, TAPS_3WIDE) => tile::<$n, false, TAPS_3WIDE>($s, $t, $b),
            (false, _) => tile::<$n, false, TAPS_STRIDED>($s, $t, $b),
            (true, TAPS_1X1) => tile::<$n, true, TAPS_1X1>($s, $t, $b),
            (true, TAPS_STRIDE1) => tile::<$n, true, TAPS_STRIDE1>($s, $t, $b),
            (true, TAPS_3WIDE) => tile::<$n, true, TAPS_3WIDE>($s, $t, $b),
            (true, _) => tile::<$n, true, TAPS_STRIDED>($s, $t, $b),
        }
    };
}

/// Writes `pub(super) fn conv` and `fn winograd_conv` into a SIMD module, compiled with
/// `$feature` enabled, calling that module's `tile` and `winograd::$isa` transforms; `$setup`
/// runs first in `conv` (with `$a` the arguments). The module must have the instruction set
/// whenever `conv` is called (its entry point checks `available()`).
macro_rules! simd_conv_drivers {
    ($feature:literal, $isa:ident, |$a:ident| $setup:block) => {
        #[target_feature(enable = $feature)]
        pub(super) fn conv($a: &mut ConvArgs<'_>, part: usize, parts: usize) {
                    $setup
            let g = $a.g;
            if g.winograd != 0 {
                winograd_conv($a, part, parts);
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
                pack_band($a, band);
                let s = Shared {
                    g,
                    input: $a.scratch.as_ptr(),
                    w: $a.w.as_ptr(),
                    bias: $a.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    has_bias: $a.bias.is_some(),
                    relu: $a.relu,
                    out: $a.out.ptr,
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
                            // SAFETY: the tile's vectors come from `g.vector` for the band
                            // just packed and `b < blocks`, which is what `tile` needs; the
                            // instruction set is enabled.
                            unsafe {
                                if take == 2 {
                                    tile_variant!(2, masked, taps, &s, &t, b)
                                } else {
                                    tile_variant!(1, masked, taps, &s, &t, b)
                                }
                            }
                        }
                        v += take;
                    }
                }
            }
        }

        /// Part `part` of `parts` of a Winograd convolution (`super::winograd`): the packing
        /// and transforms of `winograd::avx2` or `winograd::neon`, and the products
        /// `M_ξ = U_ξ V_ξ` as 1x1 convolutions over the band's tiles with the module's
        /// register tile.
        #[target_feature(enable = $feature)]
        fn winograd_conv(a: &mut ConvArgs<'_>, part: usize, parts: usize) {
            let g = a.g;
            let four = g.winograd == 4;
            let l = winograd::layout(g.winograd, g.ic, g.oc, g.ih, g.oh, g.ow);
            let gg = winograd::gemm_geom(&g, &l);
            let ocp = g.blocks * OB;
            for (y0, rows) in winograd::bands(&g, &l, part, parts) {
                if four {
                    winograd::pack(a, &l, y0, rows, |r, p| winograd::$isa::split4(r, p));
                    winograd::$isa::transform_input4(a.scratch, &l, g.ic, rows);
                } else {
                    winograd::pack(a, &l, y0, rows, |r, p| winograd::$isa::split2(r, p));
                    winograd::$isa::transform_input2(a.scratch, &l, g.ic, rows);
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
                            // SAFETY: as above; the instruction set is enabled.
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
                        winograd::$isa::transform_output4(a, &l, y0, rows)
                    } else {
                        winograd::$isa::transform_output2(a, &l, y0, rows)
                    }
                };
            }
        }
    };
}
