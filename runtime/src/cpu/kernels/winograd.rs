//! Winograd F(2x2, 3x3) convolution (Lavin & Gray, 2016): a 3x3, stride-1, pad-1 convolution
//! computed per 2x2 output tile as `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`, which takes 16
//! multiplications per tile and input channel instead of 36: 2.25x fewer than the direct method.
//!
//! Per band of output rows (an even number) the kernel (1) packs the band's combined,
//! prologued, zero-padded input rows into scratch, each row split into its even and odd
//! columns so that the 4x4 inputs of 8 horizontally adjacent tiles are 16 contiguous 8-wide
//! loads; (2) transforms them (`V = Bᵀ d B`, 8 tiles at a time) into 16 matrices `V_ξ` of
//! `[in_channels][tiles]`; (3) multiplies each by the transformed weights `U_ξ`
//! (`[out_channels][in_channels]`, transformed and packed at compile time by [`pack_weights`])
//! with the same 6x16 register tiles as a 1x1 convolution; (4) transforms back (`Aᵀ M A`),
//! adds bias and ReLU and writes the 2x2 outputs of 8 tiles as two runs of 16 pixels.
//!
//! Shapes it takes ([`eligible`]): 3x3 window, stride 1, padding 1, an even output height, an
//! output width that is a multiple of 16 (whole vectors of 8 tiles), at least 8 input channels.
//! Other convolutions run direct. Must not be chosen at run time: the compiler sets
//! `FLAG_WINOGRAD` and packs the weights for it, the loader validates the shape.

use super::{CONV_OC_BLOCK, ConvArgs, ConvGeom, LANES, Src, plane_stride};

/// Floats of transformed input kept per band (`16 * in_channels * tiles`), about 192 KiB: the
/// band's `V` stays in L2 while it is multiplied.
const V_FLOATS: usize = 48 * 1024;

/// Whether a convolution of this shape can run as Winograd F(2x2, 3x3).
pub(super) fn eligible(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.ph == 1
        && g.pw == 1
        && g.oh == g.ih
        && g.ow == g.iw
        && g.oh.is_multiple_of(2)
        && g.ow.is_multiple_of(2 * LANES)
        && g.ic >= 8
}

/// The Winograd layout of a band, from the geometry: tile rows per band, and where the packed
/// input, the row buffer, `V` and `M` live in scratch (float offsets).
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// Tiles per tile row (`ow / 2`), a multiple of 8.
    pub tw: usize,
    /// Tile rows per band (the band is `2 * rows` output rows).
    pub rows: usize,
    /// Floats per packed row: the even columns then the odd ones, `tw + 1` each.
    pub row: usize,
    /// Floats from one packed input plane to the next.
    pub plane: usize,
    /// Tiles per band (`rows * tw`).
    pub tiles: usize,
    pub tmp_at: usize,
    pub v_at: usize,
    /// Floats from `V_ξ` to `V_ξ+1` (at least `in_channels * tiles`, an odd number of cache
    /// lines: a multiple of 4 KiB would make the 16 stores of a tile alias).
    pub v_xi: usize,
    pub m_at: usize,
    /// Floats from `M_ξ` to `M_ξ+1` (as `v_xi`).
    pub m_xi: usize,
    pub scratch_len: usize,
}

fn round16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The layout for an eligible geometry.
pub(super) fn layout(ic: usize, oc: usize, ih: usize, oh: usize, ow: usize) -> Layout {
    let tw = ow / 2;
    let rows = (V_FLOATS / (16 * ic) / tw).clamp(1, oh / 2);
    let row = 2 * (tw + 1);
    let plane = plane_stride((2 * rows + 2) * row);
    let tiles = rows * tw;
    let tmp_at = ic * plane;
    let v_at = round16(tmp_at + ih.max(ow));
    let v_xi = plane_stride(ic * tiles);
    let m_at = v_at + 16 * v_xi;
    let ocp = oc.div_ceil(CONV_OC_BLOCK) * CONV_OC_BLOCK;
    let m_xi = plane_stride(ocp * tiles);
    Layout {
        tw,
        rows,
        row,
        plane,
        tiles,
        tmp_at,
        v_at,
        v_xi,
        m_at,
        m_xi,
        scratch_len: m_at + 16 * m_xi,
    }
}

/// Floats of transformed weights: 16 matrices of `blocks * 6 * in_channels`.
pub(super) fn weight_len(ic: usize, oc: usize) -> usize {
    16 * oc.div_ceil(CONV_OC_BLOCK) * CONV_OC_BLOCK * ic
}

/// Transforms PyTorch-layout 3x3 weights `[out][in][3][3]` into `U = G g Gᵀ` and packs them as
/// 16 matrices (`ξ = 4 i + j` for `U[i][j]`), each in the 1x1 packed layout: blocks of
/// [`CONV_OC_BLOCK`] output channels, `[in][CONV_OC_BLOCK]` per block, zero-padded. Values
/// missing from a short `weights` count as 0.
pub(super) fn pack_weights(ic: usize, oc: usize, weights: &[f32]) -> Vec<f32> {
    let ob = CONV_OC_BLOCK;
    let blocks = oc.div_ceil(ob);
    let per_xi = blocks * ob * ic;
    let mut packed = vec![0.0f32; 16 * per_xi];
    for o in 0..oc {
        for c in 0..ic {
            let at = (o * ic + c) * 9;
            let g: [f64; 9] =
                std::array::from_fn(|i| f64::from(weights.get(at + i).copied().unwrap_or(0.0)));
            // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
            let gm = |r: usize, k: usize| -> f64 {
                match r {
                    0 => [1.0, 0.0, 0.0][k],
                    1 => 0.5,
                    2 => [0.5, -0.5, 0.5][k],
                    _ => [0.0, 0.0, 1.0][k],
                }
            };
            for i in 0..4 {
                for j in 0..4 {
                    let mut u = 0.0;
                    for a in 0..3 {
                        for b in 0..3 {
                            u += gm(i, a) * g[a * 3 + b] * gm(j, b);
                        }
                    }
                    let xi = 4 * i + j;
                    packed[xi * per_xi + ((o / ob) * ic + c) * ob + o % ob] = u as f32;
                }
            }
        }
    }
    packed
}

/// The bands of part `part` of `parts`: the output's tile rows cut into `parts` near-equal
/// contiguous runs, each cut into bands of `rows` tile rows. Yields `(first output row, tile
/// rows)`.
pub(super) fn bands(
    g: &ConvGeom,
    l: &Layout,
    part: usize,
    parts: usize,
) -> impl Iterator<Item = (usize, usize)> + use<> {
    let total = g.oh / 2;
    let parts = parts.max(1);
    let lo = total * part / parts;
    let hi = total * (part + 1) / parts;
    let rows = l.rows;
    (lo..hi)
        .step_by(rows)
        .map(move |t| (2 * t, rows.min(hi - t)))
}

/// Step (1): the band's input rows `y0 - 1 .. y0 + 2 rows + 1`, prologued and zero-padded, each
/// split into even and odd padded columns.
///
/// `split(row, even, odd)` writes `row[1], row[3], ...` to `even[1..]` and `row[0], row[2], ...`
/// to `odd[..tw]` (padded column `x` holds `row[x - 1]`).
#[inline(always)]
pub(super) fn pack(
    a: &mut ConvArgs<'_>,
    l: &Layout,
    y0: usize,
    rows: usize,
    split: impl Fn(&[f32], &mut [f32], &mut [f32]),
) {
    let g = a.g;
    let pro = a.pro;
    let (planes, rest) = a.scratch.split_at_mut(l.tmp_at);
    let tmp = &mut rest[..g.iw];
    let wq = l.tw + 1;
    for (c, src) in a.input.channels() {
        let plane = &mut planes[c * l.plane..][..(2 * rows + 2) * l.row];
        for (r, packed) in plane.chunks_exact_mut(l.row).enumerate() {
            let (even, odd) = packed.split_at_mut(wq);
            let Some(y) = (y0 + r).checked_sub(1).filter(|&y| y < g.ih) else {
                even.fill(0.0);
                odd.fill(0.0);
                continue;
            };
            // SAFETY: row `y < ih` of a plane of `ih * iw` floats.
            unsafe { load(src, y * g.iw, tmp, &pro, c) };
            // Padded column x holds tmp[x - 1] for 1 <= x <= iw, else 0.
            even[0] = 0.0;
            odd[l.tw] = 0.0;
            split(tmp, even, odd);
        }
    }
}

/// The portable `split` of [`pack`].
#[inline(always)]
pub(super) fn split_portable(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for (q, pair) in row.chunks_exact(2).enumerate() {
        odd[q] = pair[0];
        even[q + 1] = pair[1];
    }
}

/// # Safety
/// As `Src::load`.
#[inline(always)]
unsafe fn load(src: Src<'_>, at: usize, dst: &mut [f32], pro: &super::Prologue<'_>, c: usize) {
    // SAFETY: forwarded.
    unsafe { src.load(at, dst, pro, c) }
}

type V8 = [f32; LANES];

#[inline(always)]
fn add(a: V8, b: V8) -> V8 {
    std::array::from_fn(|i| a[i] + b[i])
}

#[inline(always)]
fn sub(a: V8, b: V8) -> V8 {
    std::array::from_fn(|i| a[i] - b[i])
}

#[inline(always)]
fn get8(s: &[f32], at: usize) -> V8 {
    let mut v = [0.0; LANES];
    v.copy_from_slice(&s[at..at + LANES]);
    v
}

/// Step (2): `V_ξ[c][tile] = (Bᵀ d B)[ξ]` for every input channel and tile of the band, 8
/// tiles at a time. `Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
#[inline(always)]
pub(super) fn transform_input(scratch: &mut [f32], l: &Layout, ic: usize, rows: usize) {
    let (planes, rest) = scratch.split_at_mut(l.v_at);
    let v = &mut rest[..16 * l.v_xi];
    let wq = l.tw + 1;
    let per_xi = l.v_xi;
    for c in 0..ic {
        let plane = &planes[c * l.plane..];
        for r in 0..rows {
            for t in (0..l.tw).step_by(LANES) {
                // d[i][k]: padded row 2r + i, padded column 2 tile + k.
                let d: [[V8; 4]; 4] = std::array::from_fn(|i| {
                    let row = (2 * r + i) * l.row;
                    [
                        get8(plane, row + t),
                        get8(plane, row + wq + t),
                        get8(plane, row + t + 1),
                        get8(plane, row + wq + t + 1),
                    ]
                });
                // Bᵀ d (rows), then (Bᵀ d) B (columns).
                let bt = |k: usize| -> [V8; 4] {
                    [
                        sub(d[0][k], d[2][k]),
                        add(d[1][k], d[2][k]),
                        sub(d[2][k], d[1][k]),
                        sub(d[1][k], d[3][k]),
                    ]
                };
                let cols = [bt(0), bt(1), bt(2), bt(3)];
                let tile = r * l.tw + t;
                #[expect(clippy::needless_range_loop, reason = "i indexes the inner arrays")]
                for i in 0..4 {
                    let out = [
                        sub(cols[0][i], cols[2][i]),
                        add(cols[1][i], cols[2][i]),
                        sub(cols[2][i], cols[1][i]),
                        sub(cols[1][i], cols[3][i]),
                    ];
                    for (j, o) in out.iter().enumerate() {
                        let at = (4 * i + j) * per_xi + c * l.tiles + tile;
                        v[at..at + LANES].copy_from_slice(o);
                    }
                }
            }
        }
    }
}

/// Step (4): `Y = Aᵀ M A` per output channel and tile, plus bias and ReLU, written to output
/// rows `y0 ..`. `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`.
///
/// # Safety
/// `out` is the convolution's output of `oc * oh * ow` floats and only this call writes the
/// band's rows.
#[inline(always)]
pub(super) unsafe fn transform_output(a: &mut ConvArgs<'_>, l: &Layout, y0: usize, rows: usize) {
    let g = a.g;
    let m = &a.scratch[l.m_at..];
    let per_xi = l.m_xi;
    for o in 0..g.oc {
        let bias = a.bias.map_or(0.0, |b| b[o]);
        for r in 0..rows {
            for t in (0..l.tw).step_by(LANES) {
                let tile = r * l.tw + t;
                let mv: [V8; 16] =
                    std::array::from_fn(|xi| get8(m, xi * per_xi + o * l.tiles + tile));
                // Aᵀ M: 2 x 4.
                let s: [[V8; 4]; 2] = [
                    std::array::from_fn(|k| add(add(mv[k], mv[4 + k]), mv[8 + k])),
                    std::array::from_fn(|k| sub(sub(mv[4 + k], mv[8 + k]), mv[12 + k])),
                ];
                for (dy, sr) in s.iter().enumerate() {
                    let y = [add(add(sr[0], sr[1]), sr[2]), sub(sub(sr[1], sr[2]), sr[3])];
                    let mut run = [0.0f32; 2 * LANES];
                    for i in 0..LANES {
                        for (dx, yv) in y.iter().enumerate() {
                            let v = yv[i] + bias;
                            run[2 * i + dx] = if a.relu { super::relu(v) } else { v };
                        }
                    }
                    let at = o * g.oh * g.ow + (y0 + 2 * r + dy) * g.ow + 2 * t;
                    // SAFETY: this band's rows of channel `o`, written by this call only.
                    if let Some(dst) = unsafe { a.out.run(at, 2 * LANES) } {
                        dst.copy_from_slice(&run);
                    }
                }
            }
        }
    }
}

/// Step (3), portable: `M_ξ = U_ξ V_ξ` in plain loops, for the band's `rows * tw` tiles.
#[inline(always)]
pub(super) fn multiply_portable(a: &mut ConvArgs<'_>, l: &Layout, rows: usize) {
    let n = rows * l.tw;
    let g = a.g;
    let ob = CONV_OC_BLOCK;
    let ocp = g.blocks * ob;
    let (front, m) = a.scratch.split_at_mut(l.m_at);
    let v = &front[l.v_at..];
    for xi in 0..16 {
        let u = &a.w[xi * ocp * g.ic..][..ocp * g.ic];
        let vx = &v[xi * l.v_xi..][..g.ic * l.tiles];
        let mx = &mut m[xi * l.m_xi..][..ocp * l.tiles];
        mx.fill(0.0);
        for b in 0..g.blocks {
            for c in 0..g.ic {
                let row = &vx[c * l.tiles..][..n];
                for lane in 0..ob {
                    let w = u[(b * g.ic + c) * ob + lane];
                    let dst = &mut mx[(b * ob + lane) * l.tiles..][..n];
                    for (d, &x) in dst.iter_mut().zip(row) {
                        *d += w * x;
                    }
                }
            }
        }
    }
}

/// The geometry of step (3) as a 1x1 convolution over the band's tiles, for the AVX2 tiles:
/// `ic` input planes of `tiles` floats, `ocp` output planes of `tiles` floats.
pub(super) fn gemm_geom(g: &ConvGeom, l: &Layout) -> ConvGeom {
    ConvGeom {
        ih: 1,
        iw: l.tiles,
        oh: 1,
        ow: l.tiles,
        kh: 1,
        kw: 1,
        sh: 1,
        sw: 1,
        ph: 0,
        pw: 0,
        wq: l.tiles,
        rowlen: l.tiles,
        plane: l.tiles,
        flat: true,
        band: l.tiles,
        cpr: l.tiles.div_ceil(LANES),
        winograd: false,
        ..*g
    }
}

/// AVX2 versions of the data-movement steps (the portable ones above are the reference).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::{LANES, Layout};
    use std::arch::x86_64::*;

    /// [`super::split_portable`] for rows of a multiple of 16 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn split(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let n = row.len() / 16;
        assert!(row.len().is_multiple_of(16) && odd.len() >= 8 * n && even.len() > 8 * n);
        for i in 0..n {
            // SAFETY: `16 i + 16 <= row.len()`, `8 i + 8 <= odd.len()`, `8 i + 9 <= even.len()`
            // (asserted above).
            unsafe {
                let a = _mm256_loadu_ps(row.as_ptr().add(16 * i));
                let b = _mm256_loadu_ps(row.as_ptr().add(16 * i + 8));
                // [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6]
                let ev = _mm256_shuffle_ps::<0x88>(a, b);
                let od = _mm256_shuffle_ps::<0xDD>(a, b);
                let ev = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(ev)));
                let od = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(od)));
                _mm256_storeu_ps(odd.as_mut_ptr().add(8 * i), ev);
                _mm256_storeu_ps(even.as_mut_ptr().add(8 * i + 1), od);
            }
        }
    }

    /// [`super::transform_input`] with AVX2 loads and stores.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn transform_input(
        scratch: &mut [f32],
        l: &Layout,
        ic: usize,
        rows: usize,
    ) {
        let per_xi = l.v_xi;
        assert!(l.v_at + 16 * per_xi <= scratch.len() && ic * l.plane <= l.v_at);
        assert!(ic * l.tiles <= per_xi);
        assert!(rows <= l.rows && (2 * rows + 2) * l.row <= l.plane && l.tw.is_multiple_of(LANES));
        let wq = l.tw + 1;
        let base = scratch.as_mut_ptr();
        for c in 0..ic {
            let plane = base.wrapping_add(c * l.plane).cast_const();
            for r in 0..rows {
                for t in (0..l.tw).step_by(LANES) {
                    // Rows `2 r .. 2 r + 4 <= 2 rows + 2` of plane `c`, columns up to
                    // `wq + t + 1 + 8 <= 2 wq` of a row: inside the packed planes.
                    let d: [[__m256; 4]; 4] = std::array::from_fn(|i| {
                        let row = plane.wrapping_add((2 * r + i) * l.row + t);
                        // SAFETY: in bounds as above (the asserts at the top).
                        unsafe {
                            [
                                _mm256_loadu_ps(row),
                                _mm256_loadu_ps(row.add(wq)),
                                _mm256_loadu_ps(row.add(1)),
                                _mm256_loadu_ps(row.add(wq + 1)),
                            ]
                        }
                    });
                    let cols: [[__m256; 4]; 4] = std::array::from_fn(|k| {
                        [
                            _mm256_sub_ps(d[0][k], d[2][k]),
                            _mm256_add_ps(d[1][k], d[2][k]),
                            _mm256_sub_ps(d[2][k], d[1][k]),
                            _mm256_sub_ps(d[1][k], d[3][k]),
                        ]
                    });
                    let at = c * l.tiles + r * l.tw + t;
                    let v = base.wrapping_add(l.v_at + at);
                    #[expect(clippy::needless_range_loop, reason = "i indexes the inner arrays")]
                    for i in 0..4 {
                        let out = [
                            _mm256_sub_ps(cols[0][i], cols[2][i]),
                            _mm256_add_ps(cols[1][i], cols[2][i]),
                            _mm256_sub_ps(cols[2][i], cols[1][i]),
                            _mm256_sub_ps(cols[1][i], cols[3][i]),
                        ];
                        for (j, o) in out.iter().enumerate() {
                            // SAFETY: `V_ξ[c][tile..tile + 8]` inside `V` (asserted above).
                            unsafe { _mm256_storeu_ps(v.add((4 * i + j) * per_xi), *o) };
                        }
                    }
                }
            }
        }
    }
}
