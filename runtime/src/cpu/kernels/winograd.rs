//! Winograd F(m x m, 3x3) convolution (Lavin & Gray, 2016) for m = 2 and m = 4: a 3x3,
//! stride-1, pad-1 convolution computed per m x m output tile as `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ]
//! A`, with n = m + 2 points per dimension. F(2x2, 3x3) takes 16 multiplications per tile and
//! input channel instead of 36 (2.25x fewer); F(4x4, 3x3) takes 36 instead of 144 (4x fewer),
//! for costlier transforms.
//!
//! Per band of output rows (a multiple of m) the kernel (1) packs the band's combined,
//! prologued, zero-padded input rows into scratch, each padded row split into m phases (phase p
//! holds padded columns p, p + m, p + 2m, ...), so that the n x n inputs of 8 horizontally
//! adjacent tiles are n * n contiguous 8-wide loads; (2) transforms them (`V = Bᵀ d B`, 8 tiles
//! at a time) into n² matrices `V_ξ` of `[in_channels][tiles]`; (3) multiplies each by the
//! transformed weights `U_ξ` (`[out_channels][in_channels]`, transformed and packed at compile
//! time by [`pack_weights`]) with the same 6x16 register tiles as a 1x1 convolution; (4)
//! transforms back (`Aᵀ M A`), adds bias and ReLU and writes the m x m outputs of 8 tiles as m
//! runs of 8m pixels.
//!
//! Shapes it takes ([`eligible`]): 3x3 window, stride 1, padding 1, an output height that is a
//! multiple of m, an output width that is a multiple of 8m (whole vectors of 8 tiles), at least
//! 8 input channels; and for m = 4 also a width of 16 with a height that is a multiple of 8
//! (16x16 maps: a vector then holds 4 tiles of each of two tile rows). Other convolutions run direct. Must not be chosen at run time: the compiler
//! sets `FLAG_WINOGRAD` (m = 2) or `FLAG_WINOGRAD4` (m = 4) and packs the weights for it, the
//! loader validates the shape.
//!
//! The portable functions here are the reference for any m (scalar, driven by the transform
//! matrices); `avx2` (8 tiles per vector) and `neon` (4 tiles per vector) have the fast data
//! movement and transforms for each m.

use super::{CONV_OC_BLOCK, ConvArgs, ConvGeom, LANES, Src, plane_stride};

/// Floats of transformed input kept per band (`n² * in_channels * tiles`), about 192 KiB: the
/// band's `V` stays in L2 while it is multiplied.
const V_FLOATS: usize = 48 * 1024;

/// `Bᵀ` of F(2x2, 3x3).
const BT2: [[f32; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
/// `G` of F(2x2, 3x3).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
/// `Aᵀ` of F(2x2, 3x3).
const AT2: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// `Bᵀ` of F(4x4, 3x3) with interpolation points 0, ±1, ±1/2 (and ∞). The usual points 0, ±1,
/// ±2 need coefficients up to 8 in `Aᵀ` and 5 in `Bᵀ`; these keep every coefficient at most
/// 4 in size, and the rounding error per tile about 25% lower (a float32 simulation against
/// float64: 1.75e-6 -> 1.34e-6 relative; F(2x2, 3x3): 3.3e-7).
const BT4: [[f32; 6]; 6] = [
    [0.25, 0.0, -1.25, 0.0, 1.0, 0.0],
    [0.0, -0.25, -0.25, 1.0, 1.0, 0.0],
    [0.0, 0.25, -0.25, -1.0, 1.0, 0.0],
    [0.0, -0.5, -1.0, 0.5, 1.0, 0.0],
    [0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
    [0.0, 0.25, 0.0, -1.25, 0.0, 1.0],
];
/// `G` of F(4x4, 3x3) (the points of [`BT4`]).
const G4: [[f64; 3]; 6] = [
    [4.0, 0.0, 0.0],
    [2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0],
    [2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0],
    [-8.0 / 3.0, -4.0 / 3.0, -2.0 / 3.0],
    [-8.0 / 3.0, 4.0 / 3.0, -2.0 / 3.0],
    [0.0, 0.0, 1.0],
];
/// `Aᵀ` of F(4x4, 3x3) (the points of [`BT4`]).
const AT4: [[f32; 6]; 4] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 0.5, -0.5, 0.0],
    [0.0, 1.0, 1.0, 0.25, 0.25, 0.0],
    [0.0, 1.0, -1.0, 0.125, -0.125, 1.0],
];

/// `Bᵀ` of each tile size as rows of slices (statics: a kernel must not allocate).
static BT2_ROWS: [&[f32]; 4] = [&BT2[0], &BT2[1], &BT2[2], &BT2[3]];
static BT4_ROWS: [&[f32]; 6] = [&BT4[0], &BT4[1], &BT4[2], &BT4[3], &BT4[4], &BT4[5]];
/// `Aᵀ` of each tile size as rows of slices.
static AT2_ROWS: [&[f32]; 2] = [&AT2[0], &AT2[1]];
static AT4_ROWS: [&[f32]; 4] = [&AT4[0], &AT4[1], &AT4[2], &AT4[3]];

/// `Bᵀ` (n x n) for tile size m.
fn bt(m: usize) -> &'static [&'static [f32]] {
    if m == 4 { &BT4_ROWS } else { &BT2_ROWS }
}

/// `Aᵀ` (m x n) for tile size m.
fn at(m: usize) -> &'static [&'static [f32]] {
    if m == 4 { &AT4_ROWS } else { &AT2_ROWS }
}

/// Whether a convolution of this shape can run as Winograd F(m x m, 3x3) (m is 2 or 4).
pub(super) fn eligible(g: &ConvGeom, m: usize) -> bool {
    matches!(m, 2 | 4)
        && g.kh == 3
        && g.kw == 3
        && g.sh == 1
        && g.sw == 1
        && g.ph == 1
        && g.pw == 1
        && g.oh == g.ih
        && g.ow == g.iw
        && g.oh.is_multiple_of(m)
        && g.ic >= 8
        && (g.ow.is_multiple_of(m * LANES)
            // 4 tiles per tile row (16x16 maps): a vector takes two tile rows.
            || (m == 4 && g.ow == m * LANES / 2 && g.oh.is_multiple_of(2 * m)))
}

/// The Winograd layout of a band, from the geometry: tile rows per band, and where the packed
/// input, the row buffer, `V` and `M` live in scratch (float offsets).
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// Output tile size m (2 or 4); n = m + 2 points.
    pub m: usize,
    pub n: usize,
    /// Transformed matrices: n².
    pub xis: usize,
    /// Tiles per tile row (`ow / m`), a multiple of 8, or 4 (`pair`).
    pub tw: usize,
    /// A vector of 8 tiles spans two tile rows of 4 (then bands and parts have an even number
    /// of tile rows).
    pub pair: bool,
    /// Tile rows per band (the band is `m * rows` output rows).
    pub rows: usize,
    /// Floats per packed row: m phases of `tw + 1` floats.
    pub row: usize,
    /// Floats from one packed input plane to the next.
    pub plane: usize,
    /// Tiles per band (`rows * tw`).
    pub tiles: usize,
    pub tmp_at: usize,
    pub v_at: usize,
    /// Floats from `V_ξ` to `V_ξ+1` (at least `in_channels * tiles`, an odd number of cache
    /// lines: a multiple of 4 KiB would make the n² stores of a tile alias).
    pub v_xi: usize,
    pub m_at: usize,
    /// Floats from `M_ξ` to `M_ξ+1` (as `v_xi`).
    pub m_xi: usize,
    pub scratch_len: usize,
}

impl Layout {
    /// Floats per phase of a packed row.
    pub fn wq(&self) -> usize {
        self.tw + 1
    }
}

fn round16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

/// The layout for a geometry eligible for F(m x m, 3x3).
pub(super) fn layout(m: usize, ic: usize, oc: usize, ih: usize, oh: usize, ow: usize) -> Layout {
    let n = m + 2;
    let xis = n * n;
    let tw = ow / m;
    // At least 16 tiles per band where the map has them: the products' register tile is two
    // vectors of 8 tiles.
    let pair = !tw.is_multiple_of(LANES);
    let unit = if pair { 2 } else { 1 };
    let rows = (V_FLOATS / (xis * ic) / tw)
        .max((2 * LANES).div_ceil(tw))
        .clamp(1, oh / m)
        .next_multiple_of(unit);
    let row = m * (tw + 1);
    let plane = plane_stride((m * rows + 2) * row);
    let tiles = rows * tw;
    let tmp_at = ic * plane;
    let v_at = round16(tmp_at + ih.max(ow));
    let v_xi = plane_stride(ic * tiles);
    let m_at = v_at + xis * v_xi;
    let ocp = oc.div_ceil(CONV_OC_BLOCK) * CONV_OC_BLOCK;
    let m_xi = plane_stride(ocp * tiles);
    Layout {
        m,
        n,
        xis,
        tw,
        pair,
        rows,
        row,
        plane,
        tiles,
        tmp_at,
        v_at,
        v_xi,
        m_at,
        m_xi,
        scratch_len: m_at + xis * m_xi,
    }
}

/// Floats of transformed weights: n² matrices of `blocks * 6 * in_channels`.
pub(super) fn weight_len(m: usize, ic: usize, oc: usize) -> usize {
    (m + 2) * (m + 2) * oc.div_ceil(CONV_OC_BLOCK) * CONV_OC_BLOCK * ic
}

/// Transforms PyTorch-layout 3x3 weights `[out][in][3][3]` into `U = G g Gᵀ` (in f64) and packs
/// them as n² matrices (`ξ = n i + j` for `U[i][j]`), each in the 1x1 packed layout: blocks of
/// [`CONV_OC_BLOCK`] output channels, `[in][CONV_OC_BLOCK]` per block, zero-padded. Values
/// missing from a short `weights` count as 0.
pub(super) fn pack_weights(m: usize, ic: usize, oc: usize, weights: &[f32]) -> Vec<f32> {
    let gm: &[[f64; 3]] = if m == 4 { &G4 } else { &G2 };
    let n = gm.len();
    let ob = CONV_OC_BLOCK;
    let blocks = oc.div_ceil(ob);
    let per_xi = blocks * ob * ic;
    let mut packed = vec![0.0f32; n * n * per_xi];
    for o in 0..oc {
        for c in 0..ic {
            let at = (o * ic + c) * 9;
            let g: [f64; 9] =
                std::array::from_fn(|i| f64::from(weights.get(at + i).copied().unwrap_or(0.0)));
            for i in 0..n {
                for j in 0..n {
                    let mut u = 0.0;
                    for a in 0..3 {
                        for b in 0..3 {
                            u += gm[i][a] * g[a * 3 + b] * gm[j][b];
                        }
                    }
                    let xi = n * i + j;
                    packed[xi * per_xi + ((o / ob) * ic + c) * ob + o % ob] = u as f32;
                }
            }
        }
    }
    packed
}

/// The units a Winograd convolution's output splits into between threads: tile rows, or pairs
/// of them where a vector of tiles spans two (`Layout::pair`).
pub(super) fn units(g: &ConvGeom) -> usize {
    let m = g.winograd.max(1);
    let tw = g.ow / m;
    let unit = if tw.is_multiple_of(LANES) { 1 } else { 2 };
    g.oh / m / unit
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
    // In units of tile rows, or of pairs of them (`pair`).
    let unit = if l.pair { 2 } else { 1 };
    let total = units(g);
    let parts = parts.max(1);
    let lo = total * part / parts * unit;
    let hi = total * (part + 1) / parts * unit;
    let (rows, m) = (l.rows, l.m);
    (lo..hi)
        .step_by(rows)
        .map(move |t| (m * t, rows.min(hi - t)))
}

/// Step (1): the band's input rows `y0 - 1 .. y0 + m rows + 1`, prologued and zero-padded, each
/// split into its m phases.
///
/// `split(row, packed)` writes padded column `x = 1..=iw` (which holds `row[x - 1]`) to phase
/// `x % m` at `x / m` of `packed` (phases `wq` floats apart); this function zeroes the padding
/// columns (0 and `iw + 1`) and the unused tail of the phases.
#[inline(always)]
pub(super) fn pack(
    a: &mut ConvArgs<'_>,
    l: &Layout,
    y0: usize,
    rows: usize,
    split: impl Fn(&[f32], &mut [f32]),
) {
    let g = a.g;
    let pro = a.pro;
    let (planes, rest) = a.scratch.split_at_mut(l.tmp_at);
    let tmp = &mut rest[..g.iw];
    let wq = l.wq();
    for (c, src) in a.input.channels() {
        let plane = &mut planes[c * l.plane..][..(l.m * rows + 2) * l.row];
        for (r, packed) in plane.chunks_exact_mut(l.row).enumerate() {
            let Some(y) = (y0 + r).checked_sub(1).filter(|&y| y < g.ih) else {
                packed.fill(0.0);
                continue;
            };
            // SAFETY: row `y < ih` of a plane of `ih * iw` floats.
            unsafe { load(src, y * g.iw, tmp, &pro, c) };
            split(tmp, packed);
            // Padded column 0 (phase 0 at 0); phases 1.. at `tw` hold column `iw + 1` (the
            // right padding) and columns past it.
            packed[0] = 0.0;
            for p in 1..l.m {
                packed[p * wq + l.tw] = 0.0;
            }
        }
    }
}

/// The portable `split` of [`pack`] for output tile size `m` (rows of `m * tw` floats).
#[inline(always)]
pub(super) fn split_portable(m: usize, row: &[f32], packed: &mut [f32]) {
    let wq = row.len() / m + 1;
    for (i, &v) in row.iter().enumerate() {
        let x = i + 1;
        packed[(x % m) * wq + x / m] = v;
    }
}

/// # Safety
/// As `Src::load`.
#[inline(always)]
unsafe fn load(src: Src<'_>, at: usize, dst: &mut [f32], pro: &super::Prologue<'_>, c: usize) {
    // SAFETY: forwarded.
    unsafe { src.load(at, dst, pro, c) }
}

/// `out[i] = Σ_k mat[i][k] x[k]`, skipping zero coefficients (so that, as in the unrolled
/// transforms, a value only reaches the outputs it has a coefficient in).
#[inline(always)]
fn apply(mat: &[&[f32]], x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(mat) {
        *o = row
            .iter()
            .zip(x)
            .filter(|(c, _)| **c != 0.0)
            .fold(0.0, |s, (c, v)| s + c * v);
    }
}

/// Step (2), portable: `V_ξ[c][tile] = (Bᵀ d B)[ξ]` for every input channel and tile of the
/// band, one tile at a time.
pub(super) fn transform_input(scratch: &mut [f32], l: &Layout, ic: usize, rows: usize) {
    let (planes, rest) = scratch.split_at_mut(l.v_at);
    let v = &mut rest[..l.xis * l.v_xi];
    let (m, n, wq) = (l.m, l.n, l.wq());
    let bt = bt(m);
    let mut d = [0.0f32; 36];
    let mut col = [0.0f32; 6];
    let mut tmp = [0.0f32; 36];
    let mut out = [0.0f32; 6];
    for c in 0..ic {
        let plane = &planes[c * l.plane..];
        for r in 0..rows {
            for t in 0..l.tw {
                // d[i][k]: padded row m r + i, padded column m t + k (phase k % m at t + k / m).
                for i in 0..n {
                    for k in 0..n {
                        d[i * n + k] = plane[(m * r + i) * l.row + (k % m) * wq + t + k / m];
                    }
                }
                // tmp = Bᵀ d (per column), then V = tmp B (per row).
                for k in 0..n {
                    for i in 0..n {
                        col[i] = d[i * n + k];
                    }
                    apply(bt, &col[..n], &mut out[..n]);
                    for i in 0..n {
                        tmp[i * n + k] = out[i];
                    }
                }
                for i in 0..n {
                    apply(bt, &tmp[i * n..][..n], &mut out[..n]);
                    for (j, &o) in out[..n].iter().enumerate() {
                        v[(n * i + j) * l.v_xi + c * l.tiles + r * l.tw + t] = o;
                    }
                }
            }
        }
    }
}

/// Step (4), portable: `Y = Aᵀ M A` per output channel and tile, plus bias and ReLU, written to
/// output rows `y0 ..`.
///
/// # Safety
/// `out` is the convolution's output of `oc * oh * ow` floats and only this call writes the
/// band's rows.
pub(super) unsafe fn transform_output(a: &mut ConvArgs<'_>, l: &Layout, y0: usize, rows: usize) {
    let g = a.g;
    let (m, n) = (l.m, l.n);
    let at = at(m);
    let mut mv = [0.0f32; 36];
    let mut col = [0.0f32; 6];
    let mut tmp = [0.0f32; 24];
    let mut out = [0.0f32; 6];
    for o in 0..g.oc {
        let bias = a.bias.map_or(0.0, |b| b[o]);
        for r in 0..rows {
            for t in 0..l.tw {
                let tile = r * l.tw + t;
                for (xi, v) in mv[..l.xis].iter_mut().enumerate() {
                    *v = a.scratch[l.m_at + xi * l.m_xi + o * l.tiles + tile];
                }
                // tmp = Aᵀ M (m x n), then Y = tmp A (m x m).
                for k in 0..n {
                    for i in 0..n {
                        col[i] = mv[i * n + k];
                    }
                    apply(at, &col[..n], &mut out[..m]);
                    for dy in 0..m {
                        tmp[dy * n + k] = out[dy];
                    }
                }
                for dy in 0..m {
                    apply(at, &tmp[dy * n..][..n], &mut out[..m]);
                    let px = o * g.oh * g.ow + (y0 + m * r + dy) * g.ow + m * t;
                    // SAFETY: this band's rows of channel `o`, written by this call only.
                    if let Some(dst) = unsafe { a.out.run(px, m) } {
                        for (d, &v) in dst.iter_mut().zip(&out[..m]) {
                            let v = v + bias;
                            *d = if a.relu { super::relu(v) } else { v };
                        }
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
    for xi in 0..l.xis {
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
        winograd: 0,
        ..*g
    }
}

/// AVX2 versions of the data movement and the transforms, per tile size (the portable ones
/// above are the reference).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use super::super::ConvArgs;
    use super::{LANES, Layout};
    use std::arch::x86_64::*;

    /// [`super::split_portable`] for m = 2 and rows of a multiple of 16 floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn split2(row: &[f32], packed: &mut [f32]) {
        let n = row.len() / 16;
        let wq = 8 * n + 1;
        assert!(row.len().is_multiple_of(16) && packed.len() >= 2 * wq);
        let (even, odd) = packed.split_at_mut(wq);
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

    /// [`super::split_portable`] for m = 4 and rows of a multiple of 32 floats: each 32 floats
    /// are 8 groups of 4, transposed so that element k of every group lands in one vector.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn split4(row: &[f32], packed: &mut [f32]) {
        let n = row.len() / 32;
        let wq = row.len() / 4 + 1;
        assert!(row.len().is_multiple_of(16) && packed.len() >= 4 * wq);
        // A tail of 16 floats (a width of 16, 48, ...), element by element.
        for (i, &v) in row.iter().enumerate().skip(32 * n) {
            let x = i + 1;
            packed[(x % 4) * wq + x / 4] = v;
        }
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let p = packed.as_mut_ptr();
        for j in 0..n {
            // SAFETY: `32 j + 32 <= row.len()`; phase q's stores end at `q wq + 8 j + 9 <=
            // 4 wq` (asserted above).
            unsafe {
                let src = row.as_ptr().add(32 * j);
                let (a, b) = (_mm256_loadu_ps(src), _mm256_loadu_ps(src.add(8)));
                let (c, d) = (_mm256_loadu_ps(src.add(16)), _mm256_loadu_ps(src.add(24)));
                // Groups g0..g7 of 4: a = [g0 | g1], b = [g2 | g3], c = [g4 | g5], d = [g6 | g7].
                let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
                let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
                // Element k of g0 g2 g4 g6 | g1 g3 g5 g7, then in group order.
                let k: [__m256; 4] = [
                    _mm256_shuffle_ps::<0x44>(t0, t2),
                    _mm256_shuffle_ps::<0xEE>(t0, t2),
                    _mm256_shuffle_ps::<0x44>(t1, t3),
                    _mm256_shuffle_ps::<0xEE>(t1, t3),
                ]
                .map(|v| _mm256_permutevar8x32_ps(v, order));
                // Element k of group i is padded column 32 j + 4 i + k + 1: phase (k + 1) % 4
                // at 8 j + i + (k + 1) / 4.
                _mm256_storeu_ps(p.add(wq + 8 * j), k[0]);
                _mm256_storeu_ps(p.add(2 * wq + 8 * j), k[1]);
                _mm256_storeu_ps(p.add(3 * wq + 8 * j), k[2]);
                _mm256_storeu_ps(p.add(8 * j + 1), k[3]);
            }
        }
    }

    /// The band's tiles are whole vectors of 8: whole rows of them, or (`pair`, F(4x4) only)
    /// rows of 4 taken two at a time.
    fn whole_vectors(l: &Layout, rows: usize) -> bool {
        l.tw.is_multiple_of(LANES)
            || (l.pair && l.m == 4 && 2 * l.tw == LANES && rows.is_multiple_of(2))
    }

    /// Checks shared by the input transforms: the packed planes and `V` lie inside the scratch.
    fn check_input(scratch: &[f32], l: &Layout, ic: usize, rows: usize) {
        assert!(l.v_at + l.xis * l.v_xi <= scratch.len() && ic * l.plane <= l.v_at);
        assert!(ic * l.tiles <= l.v_xi);
        assert!(rows <= l.rows && (l.m * rows + 2) * l.row <= l.plane && whole_vectors(l, rows));
    }

    /// [`super::transform_input`] for m = 2, 8 tiles at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn transform_input2(
        scratch: &mut [f32],
        l: &Layout,
        ic: usize,
        rows: usize,
    ) {
        check_input(scratch, l, ic, rows);
        assert!(!l.pair);
        let per_xi = l.v_xi;
        let wq = l.wq();
        let base = scratch.as_mut_ptr();
        for c in 0..ic {
            let plane = base.wrapping_add(c * l.plane).cast_const();
            for r in 0..rows {
                for t in (0..l.tw).step_by(LANES) {
                    // Rows `2 r .. 2 r + 4 <= 2 rows + 2` of plane `c`, columns up to
                    // `wq + t + 1 + 8 <= 2 wq` of a row: inside the packed planes.
                    let d: [[__m256; 4]; 4] = std::array::from_fn(|i| {
                        let row = plane.wrapping_add((2 * r + i) * l.row + t);
                        // SAFETY: in bounds as above (`check_input`).
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
                            // SAFETY: `V_ξ[c][tile..tile + 8]` inside `V` (`check_input`).
                            unsafe { _mm256_storeu_ps(v.add((4 * i + j) * per_xi), *o) };
                        }
                    }
                }
            }
        }
    }

    /// `Bᵀ x` of F(4x4, 3x3), unrolled (the rows of `super::BT4`).
    #[inline(always)]
    fn bt4(x: [__m256; 6]) -> [__m256; 6] {
        // SAFETY (every block): register arithmetic; the caller enables AVX2 and FMA.
        unsafe {
            let (quarter, half) = (_mm256_set1_ps(0.25), _mm256_set1_ps(0.5));
            let five_quarters = _mm256_set1_ps(1.25);
            let t1 = _mm256_fnmadd_ps(quarter, x[2], x[4]);
            let t2 = _mm256_fnmadd_ps(quarter, x[1], x[3]);
            let t3 = _mm256_sub_ps(x[4], x[2]);
            let t4 = _mm256_mul_ps(half, _mm256_sub_ps(x[3], x[1]));
            [
                _mm256_fmadd_ps(quarter, x[0], _mm256_fnmadd_ps(five_quarters, x[2], x[4])),
                _mm256_add_ps(t1, t2),
                _mm256_sub_ps(t1, t2),
                _mm256_add_ps(t3, t4),
                _mm256_sub_ps(t3, t4),
                _mm256_fmadd_ps(quarter, x[1], _mm256_fnmadd_ps(five_quarters, x[3], x[5])),
            ]
        }
    }

    /// `Aᵀ x` of F(4x4, 3x3), unrolled (the rows of `super::AT4`).
    #[inline(always)]
    fn at4(x: [__m256; 6]) -> [__m256; 4] {
        // SAFETY (every block): register arithmetic; the caller enables AVX2 and FMA.
        unsafe {
            let a = _mm256_add_ps(x[1], x[2]);
            let b = _mm256_sub_ps(x[1], x[2]);
            let c = _mm256_add_ps(x[3], x[4]);
            let d = _mm256_sub_ps(x[3], x[4]);
            [
                _mm256_add_ps(_mm256_add_ps(x[0], a), c),
                _mm256_fmadd_ps(_mm256_set1_ps(0.5), d, b),
                _mm256_fmadd_ps(_mm256_set1_ps(0.25), c, a),
                _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(0.125), d, b), x[5]),
            ]
        }
    }

    /// [`super::transform_input`] for m = 4, 8 tiles at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) fn transform_input4(
        scratch: &mut [f32],
        l: &Layout,
        ic: usize,
        rows: usize,
    ) {
        check_input(scratch, l, ic, rows);
        let per_xi = l.v_xi;
        let wq = l.wq();
        let base = scratch.as_mut_ptr();
        for c in 0..ic {
            let plane = base.wrapping_add(c * l.plane).cast_const();
            for first in (0..rows * l.tw).step_by(LANES) {
                let (r, t) = (first / l.tw, first % l.tw);
                {
                    // Bᵀ d per column k (padded column 4 tile + k: phase k % 4 at tile + k / 4),
                    // rows `4 r .. 4 r + 6 <= 4 rows + 2`, columns up to `3 wq + t + 8 <=
                    // 4 wq`: inside the packed planes. With `pair`, tiles 4..8 are those of
                    // tile row r + 1 (rows up to `4 r + 9 <= 4 rows + 1`), 4 floats each.
                    let cols: [[__m256; 6]; 6] = std::array::from_fn(|k| {
                        let at = (k % 4) * wq + t + k / 4;
                        bt4(std::array::from_fn(|i| {
                            let p = plane.wrapping_add((4 * r + i) * l.row + at);
                            // SAFETY: in bounds as above (`check_input`).
                            unsafe {
                                if l.pair {
                                    _mm256_loadu2_m128(p.add(4 * l.row), p)
                                } else {
                                    _mm256_loadu_ps(p)
                                }
                            }
                        }))
                    });
                    let v = base.wrapping_add(l.v_at + c * l.tiles + first);
                    #[expect(clippy::needless_range_loop, reason = "i indexes the inner arrays")]
                    for i in 0..6 {
                        let out = bt4(std::array::from_fn(|k| cols[k][i]));
                        for (j, o) in out.iter().enumerate() {
                            // SAFETY: `V_ξ[c][tile..tile + 8]` inside `V` (`check_input`).
                            unsafe { _mm256_storeu_ps(v.add((6 * i + j) * per_xi), *o) };
                        }
                    }
                }
            }
        }
    }

    /// Bias, then ReLU if asked, of one vector.
    #[inline(always)]
    fn finish(v: __m256, bias: __m256, relu: bool) -> __m256 {
        // SAFETY: register arithmetic; the caller enables AVX2.
        unsafe {
            let v = _mm256_add_ps(v, bias);
            // `max(0, v)` returns `v` when it is NaN, as the reference's ReLU.
            if relu {
                _mm256_max_ps(_mm256_setzero_ps(), v)
            } else {
                v
            }
        }
    }

    /// Checks shared by the output transforms: `M` lies inside the scratch.
    fn check_output(a: &ConvArgs<'_>, l: &Layout, rows: usize) {
        assert!(l.m_at + l.xis * l.m_xi <= a.scratch.len());
        assert!(a.g.oc * l.tiles <= l.m_xi && rows <= l.rows && whole_vectors(l, rows));
    }

    /// [`super::transform_output`] for m = 2, 8 tiles at a time.
    ///
    /// # Safety
    /// As [`super::transform_output`].
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn transform_output2(
        a: &mut ConvArgs<'_>,
        l: &Layout,
        y0: usize,
        rows: usize,
    ) {
        check_output(a, l, rows);
        assert!(!l.pair);
        let g = a.g;
        let m = a.scratch[l.m_at..].as_ptr();
        for o in 0..g.oc {
            let bias = _mm256_set1_ps(a.bias.map_or(0.0, |b| b[o]));
            for r in 0..rows {
                for t in (0..l.tw).step_by(LANES) {
                    let tile = o * l.tiles + r * l.tw + t;
                    // SAFETY: `M_ξ[o][tile..tile + 8]` inside `M` (`check_output`).
                    let mv: [__m256; 16] = std::array::from_fn(|xi| unsafe {
                        _mm256_loadu_ps(m.add(xi * l.m_xi + tile))
                    });
                    // Aᵀ M: 2 x 4.
                    let s: [[__m256; 4]; 2] = [
                        std::array::from_fn(|k| {
                            _mm256_add_ps(_mm256_add_ps(mv[k], mv[4 + k]), mv[8 + k])
                        }),
                        std::array::from_fn(|k| {
                            _mm256_sub_ps(_mm256_sub_ps(mv[4 + k], mv[8 + k]), mv[12 + k])
                        }),
                    ];
                    for (dy, sr) in s.iter().enumerate() {
                        let y0v = _mm256_add_ps(_mm256_add_ps(sr[0], sr[1]), sr[2]);
                        let y1v = _mm256_sub_ps(_mm256_sub_ps(sr[1], sr[2]), sr[3]);
                        let (y0v, y1v) = (finish(y0v, bias, a.relu), finish(y1v, bias, a.relu));
                        // Pixel 2 i + dx of the run is tile i's column dx.
                        let lo = _mm256_unpacklo_ps(y0v, y1v);
                        let hi = _mm256_unpackhi_ps(y0v, y1v);
                        let at = o * g.oh * g.ow + (y0 + 2 * r + dy) * g.ow + 2 * t;
                        // SAFETY: this band's rows of channel `o`, written by this call only.
                        if let Some(dst) = unsafe { a.out.run(at, 2 * LANES) } {
                            let p = dst.as_mut_ptr();
                            // SAFETY: 16 floats of `dst`.
                            unsafe {
                                _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(lo, hi));
                                _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`super::transform_output`] for m = 4, 8 tiles at a time.
    ///
    /// # Safety
    /// As [`super::transform_output`].
    #[target_feature(enable = "avx2,fma")]
    pub(in super::super) unsafe fn transform_output4(
        a: &mut ConvArgs<'_>,
        l: &Layout,
        y0: usize,
        rows: usize,
    ) {
        check_output(a, l, rows);
        let g = a.g;
        let m = a.scratch[l.m_at..].as_ptr();
        for o in 0..g.oc {
            let bias = _mm256_set1_ps(a.bias.map_or(0.0, |b| b[o]));
            for first in (0..rows * l.tw).step_by(LANES) {
                let (r, t) = (first / l.tw, first % l.tw);
                {
                    let tile = o * l.tiles + first;
                    // Aᵀ M per column k: s[k][dy].
                    let s: [[__m256; 4]; 6] = std::array::from_fn(|k| {
                        at4(std::array::from_fn(|i| {
                            // SAFETY: `M_ξ[o][tile..tile + 8]` inside `M` (`check_output`).
                            unsafe { _mm256_loadu_ps(m.add((6 * i + k) * l.m_xi + tile)) }
                        }))
                    });
                    #[expect(clippy::needless_range_loop, reason = "dy indexes the inner arrays")]
                    for dy in 0..4 {
                        let y =
                            at4(std::array::from_fn(|k| s[k][dy])).map(|v| finish(v, bias, a.relu));
                        // Pixel 4 i + dx of the run is tile i's column dx: a 4 x 8 transpose.
                        let u0 = _mm256_unpacklo_ps(y[0], y[1]);
                        let u1 = _mm256_unpackhi_ps(y[0], y[1]);
                        let u2 = _mm256_unpacklo_ps(y[2], y[3]);
                        let u3 = _mm256_unpackhi_ps(y[2], y[3]);
                        // Tiles 0 | 4, 1 | 5, 2 | 6, 3 | 7.
                        let t04 = _mm256_shuffle_ps::<0x44>(u0, u2);
                        let t15 = _mm256_shuffle_ps::<0xEE>(u0, u2);
                        let t26 = _mm256_shuffle_ps::<0x44>(u1, u3);
                        let t37 = _mm256_shuffle_ps::<0xEE>(u1, u3);
                        // Tiles 0..4 (16 pixels), then tiles 4..8: the same output row, or with
                        // `pair` the row 4 below (tile row r + 1).
                        let runs = [
                            (
                                _mm256_permute2f128_ps::<0x20>(t04, t15),
                                _mm256_permute2f128_ps::<0x20>(t26, t37),
                            ),
                            (
                                _mm256_permute2f128_ps::<0x31>(t04, t15),
                                _mm256_permute2f128_ps::<0x31>(t26, t37),
                            ),
                        ];
                        let row = o * g.oh * g.ow + (y0 + 4 * r + dy) * g.ow + 4 * t;
                        let second = if l.pair { row + 4 * g.ow } else { row + 16 };
                        for (at, (lo, hi)) in [row, second].into_iter().zip(runs) {
                            // SAFETY: this band's rows of channel `o`, written by this call
                            // only.
                            if let Some(dst) = unsafe { a.out.run(at, 2 * LANES) } {
                                let p = dst.as_mut_ptr();
                                // SAFETY: 16 floats of `dst`.
                                unsafe {
                                    _mm256_storeu_ps(p, lo);
                                    _mm256_storeu_ps(p.add(8), hi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// NEON versions of the data movement and the transforms, per tile size (the portable ones
/// above are the reference), 4 tiles per `float32x4_t`. A tile row holds a multiple of 4 tiles
/// (`tw` is a multiple of 8, or 4 with `pair`), so a vector never spans two tile rows and
/// `pair` needs no special case; the deinterleaving loads and interleaving stores (`ld2`,
/// `ld4`, `st2`, `st4`) do the phase split and the tiles-to-pixels transpose.
#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use super::super::ConvArgs;
    use super::Layout;
    use std::arch::aarch64::*;

    /// Tiles per vector.
    const TL: usize = 4;

    /// [`super::split_portable`] for m = 2: `row[i]` goes to padded column `i + 1`, the even
    /// `i` to phase 1 at `i / 2`, the odd ones to phase 0 at `(i + 1) / 2`.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(in super::super) fn split2(row: &[f32], packed: &mut [f32]) {
        let wq = row.len() / 2 + 1;
        assert!(packed.len() >= 2 * wq);
        let whole = row.len() / 8;
        let p = packed.as_mut_ptr();
        for j in 0..whole {
            // SAFETY: `8 j + 8 <= row.len()`; the stores end at `wq + 4 j + 4 <= 2 wq` and
            // `4 j + 5 <= wq` (asserted above).
            unsafe {
                let v = vld2q_f32(row.as_ptr().add(8 * j));
                vst1q_f32(p.add(wq + 4 * j), v.0);
                vst1q_f32(p.add(4 * j + 1), v.1);
            }
        }
        for (i, &v) in row.iter().enumerate().skip(8 * whole) {
            let x = i + 1;
            packed[(x % 2) * wq + x / 2] = v;
        }
    }

    /// [`super::split_portable`] for m = 4: `row[16 j + 4 q + k]` (element k of group q) goes
    /// to padded column `16 j + 4 q + k + 1`, phase `(k + 1) % 4` at `4 j + q + (k + 1) / 4`.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(in super::super) fn split4(row: &[f32], packed: &mut [f32]) {
        let wq = row.len() / 4 + 1;
        assert!(packed.len() >= 4 * wq);
        let whole = row.len() / 16;
        let p = packed.as_mut_ptr();
        for j in 0..whole {
            // SAFETY: `16 j + 16 <= row.len()`; phase q's stores end at `q wq + 4 j + 5 <=
            // 4 wq` (asserted above).
            unsafe {
                let v = vld4q_f32(row.as_ptr().add(16 * j));
                vst1q_f32(p.add(wq + 4 * j), v.0);
                vst1q_f32(p.add(2 * wq + 4 * j), v.1);
                vst1q_f32(p.add(3 * wq + 4 * j), v.2);
                vst1q_f32(p.add(4 * j + 1), v.3);
            }
        }
        for (i, &v) in row.iter().enumerate().skip(16 * whole) {
            let x = i + 1;
            packed[(x % 4) * wq + x / 4] = v;
        }
    }

    /// Checks shared by the input transforms: the packed planes and `V` lie inside the scratch,
    /// the tile rows are whole vectors.
    fn check_input(scratch: &[f32], l: &Layout, ic: usize, rows: usize) {
        assert!(l.v_at + l.xis * l.v_xi <= scratch.len() && ic * l.plane <= l.v_at);
        assert!(ic * l.tiles <= l.v_xi && l.tw.is_multiple_of(TL));
        assert!(rows <= l.rows && (l.m * rows + 2) * l.row <= l.plane);
    }

    /// [`super::transform_input`] for m = 2, 4 tiles at a time.
    #[target_feature(enable = "neon")]
    pub(in super::super) fn transform_input2(
        scratch: &mut [f32],
        l: &Layout,
        ic: usize,
        rows: usize,
    ) {
        check_input(scratch, l, ic, rows);
        assert!(l.m == 2);
        let wq = l.wq();
        let base = scratch.as_mut_ptr();
        for c in 0..ic {
            let plane = base.wrapping_add(c * l.plane).cast_const();
            for r in 0..rows {
                for t in (0..l.tw).step_by(TL) {
                    // Rows `2 r .. 2 r + 4 <= 2 rows + 2` of plane `c`, columns up to
                    // `wq + t + 1 + 4 <= 2 wq` of a row: inside the packed planes.
                    let d: [[float32x4_t; 4]; 4] = std::array::from_fn(|i| {
                        let row = plane.wrapping_add((2 * r + i) * l.row + t);
                        // SAFETY: in bounds as above (`check_input`).
                        unsafe {
                            [
                                vld1q_f32(row),
                                vld1q_f32(row.add(wq)),
                                vld1q_f32(row.add(1)),
                                vld1q_f32(row.add(wq + 1)),
                            ]
                        }
                    });
                    // Bᵀ d per column k, then (Bᵀ d) B per row i (the rows of `super::BT2`).
                    let cols: [[float32x4_t; 4]; 4] = std::array::from_fn(|k| {
                        [
                            vsubq_f32(d[0][k], d[2][k]),
                            vaddq_f32(d[1][k], d[2][k]),
                            vsubq_f32(d[2][k], d[1][k]),
                            vsubq_f32(d[1][k], d[3][k]),
                        ]
                    });
                    let v = base.wrapping_add(l.v_at + c * l.tiles + r * l.tw + t);
                    #[expect(clippy::needless_range_loop, reason = "i indexes the inner arrays")]
                    for i in 0..4 {
                        let out = [
                            vsubq_f32(cols[0][i], cols[2][i]),
                            vaddq_f32(cols[1][i], cols[2][i]),
                            vsubq_f32(cols[2][i], cols[1][i]),
                            vsubq_f32(cols[1][i], cols[3][i]),
                        ];
                        for (j, o) in out.iter().enumerate() {
                            // SAFETY: `V_ξ[c][tile..tile + 4]` inside `V` (`check_input`).
                            unsafe { vst1q_f32(v.add((4 * i + j) * l.v_xi), *o) };
                        }
                    }
                }
            }
        }
    }

    /// `Bᵀ x` of F(4x4, 3x3), unrolled (the rows of `super::BT4`).
    #[inline]
    #[target_feature(enable = "neon")]
    fn bt4(x: [float32x4_t; 6]) -> [float32x4_t; 6] {
        let t1 = vfmsq_n_f32(x[4], x[2], 0.25);
        let t2 = vfmsq_n_f32(x[3], x[1], 0.25);
        let t3 = vsubq_f32(x[4], x[2]);
        let t4 = vmulq_n_f32(vsubq_f32(x[3], x[1]), 0.5);
        [
            vfmaq_n_f32(vfmsq_n_f32(x[4], x[2], 1.25), x[0], 0.25),
            vaddq_f32(t1, t2),
            vsubq_f32(t1, t2),
            vaddq_f32(t3, t4),
            vsubq_f32(t3, t4),
            vfmaq_n_f32(vfmsq_n_f32(x[5], x[3], 1.25), x[1], 0.25),
        ]
    }

    /// `Aᵀ x` of F(4x4, 3x3), unrolled (the rows of `super::AT4`).
    #[inline]
    #[target_feature(enable = "neon")]
    fn at4(x: [float32x4_t; 6]) -> [float32x4_t; 4] {
        let a = vaddq_f32(x[1], x[2]);
        let b = vsubq_f32(x[1], x[2]);
        let c = vaddq_f32(x[3], x[4]);
        let d = vsubq_f32(x[3], x[4]);
        [
            vaddq_f32(vaddq_f32(x[0], a), c),
            vfmaq_n_f32(b, d, 0.5),
            vfmaq_n_f32(a, c, 0.25),
            vaddq_f32(vfmaq_n_f32(b, d, 0.125), x[5]),
        ]
    }

    /// [`super::transform_input`] for m = 4, 4 tiles at a time.
    #[target_feature(enable = "neon")]
    pub(in super::super) fn transform_input4(
        scratch: &mut [f32],
        l: &Layout,
        ic: usize,
        rows: usize,
    ) {
        check_input(scratch, l, ic, rows);
        assert!(l.m == 4);
        let wq = l.wq();
        let base = scratch.as_mut_ptr();
        for c in 0..ic {
            let plane = base.wrapping_add(c * l.plane).cast_const();
            for r in 0..rows {
                for t in (0..l.tw).step_by(TL) {
                    // Bᵀ d per column k (padded column 4 tile + k: phase k % 4 at tile + k / 4),
                    // rows `4 r .. 4 r + 6 <= 4 rows + 2`, columns up to `3 wq + t + 1 + 4 <=
                    // 4 wq`: inside the packed planes.
                    let cols: [[float32x4_t; 6]; 6] = std::array::from_fn(|k| {
                        let at = (k % 4) * wq + t + k / 4;
                        bt4(std::array::from_fn(|i| {
                            let p = plane.wrapping_add((4 * r + i) * l.row + at);
                            // SAFETY: in bounds as above (`check_input`).
                            unsafe { vld1q_f32(p) }
                        }))
                    });
                    let v = base.wrapping_add(l.v_at + c * l.tiles + r * l.tw + t);
                    #[expect(clippy::needless_range_loop, reason = "i indexes the inner arrays")]
                    for i in 0..6 {
                        let out = bt4(std::array::from_fn(|k| cols[k][i]));
                        for (j, o) in out.iter().enumerate() {
                            // SAFETY: `V_ξ[c][tile..tile + 4]` inside `V` (`check_input`).
                            unsafe { vst1q_f32(v.add((6 * i + j) * l.v_xi), *o) };
                        }
                    }
                }
            }
        }
    }

    /// Bias, then ReLU if asked (NaN-propagating, as the reference's), of one vector.
    #[inline]
    #[target_feature(enable = "neon")]
    fn finish(v: float32x4_t, bias: float32x4_t, relu: bool) -> float32x4_t {
        let v = vaddq_f32(v, bias);
        if relu {
            vmaxq_f32(vdupq_n_f32(0.0), v)
        } else {
            v
        }
    }

    /// Checks shared by the output transforms: `M` lies inside the scratch.
    fn check_output(a: &ConvArgs<'_>, l: &Layout, rows: usize) {
        assert!(l.m_at + l.xis * l.m_xi <= a.scratch.len());
        assert!(a.g.oc * l.tiles <= l.m_xi && rows <= l.rows && l.tw.is_multiple_of(TL));
    }

    /// [`super::transform_output`] for m = 2, 4 tiles at a time: the 2 x 2 outputs of 4 tiles
    /// as two runs of 8 pixels, interleaved by `st2`.
    ///
    /// # Safety
    /// As [`super::transform_output`].
    #[target_feature(enable = "neon")]
    pub(in super::super) unsafe fn transform_output2(
        a: &mut ConvArgs<'_>,
        l: &Layout,
        y0: usize,
        rows: usize,
    ) {
        check_output(a, l, rows);
        assert!(l.m == 2);
        let g = a.g;
        let m = a.scratch[l.m_at..].as_ptr();
        for o in 0..g.oc {
            let bias = vdupq_n_f32(a.bias.map_or(0.0, |b| b[o]));
            for r in 0..rows {
                for t in (0..l.tw).step_by(TL) {
                    let tile = o * l.tiles + r * l.tw + t;
                    // SAFETY: `M_ξ[o][tile..tile + 4]` inside `M` (`check_output`).
                    let mv: [float32x4_t; 16] =
                        std::array::from_fn(|xi| unsafe { vld1q_f32(m.add(xi * l.m_xi + tile)) });
                    // Aᵀ M: 2 x 4 (the rows of `super::AT2`).
                    let s: [[float32x4_t; 4]; 2] = [
                        std::array::from_fn(|k| vaddq_f32(vaddq_f32(mv[k], mv[4 + k]), mv[8 + k])),
                        std::array::from_fn(|k| {
                            vsubq_f32(vsubq_f32(mv[4 + k], mv[8 + k]), mv[12 + k])
                        }),
                    ];
                    for (dy, sr) in s.iter().enumerate() {
                        let y0v = vaddq_f32(vaddq_f32(sr[0], sr[1]), sr[2]);
                        let y1v = vsubq_f32(vsubq_f32(sr[1], sr[2]), sr[3]);
                        let y = float32x4x2_t(finish(y0v, bias, a.relu), finish(y1v, bias, a.relu));
                        let at = o * g.oh * g.ow + (y0 + 2 * r + dy) * g.ow + 2 * t;
                        // SAFETY: this band's rows of channel `o`, written by this call only.
                        if let Some(dst) = unsafe { a.out.run(at, 2 * TL) } {
                            // SAFETY: 8 floats of `dst`; pixel 2 i + dx is tile i's column dx.
                            unsafe { vst2q_f32(dst.as_mut_ptr(), y) };
                        }
                    }
                }
            }
        }
    }

    /// [`super::transform_output`] for m = 4, 4 tiles at a time: the 4 x 4 outputs of 4 tiles
    /// as four runs of 16 pixels, interleaved by `st4`.
    ///
    /// # Safety
    /// As [`super::transform_output`].
    #[target_feature(enable = "neon")]
    pub(in super::super) unsafe fn transform_output4(
        a: &mut ConvArgs<'_>,
        l: &Layout,
        y0: usize,
        rows: usize,
    ) {
        check_output(a, l, rows);
        assert!(l.m == 4);
        let g = a.g;
        let m = a.scratch[l.m_at..].as_ptr();
        for o in 0..g.oc {
            let bias = vdupq_n_f32(a.bias.map_or(0.0, |b| b[o]));
            for r in 0..rows {
                for t in (0..l.tw).step_by(TL) {
                    let tile = o * l.tiles + r * l.tw + t;
                    // Aᵀ M per column k: s[k][dy].
                    let s: [[float32x4_t; 4]; 6] = std::array::from_fn(|k| {
                        at4(std::array::from_fn(|i| {
                            // SAFETY: `M_ξ[o][tile..tile + 4]` inside `M` (`check_output`).
                            unsafe { vld1q_f32(m.add((6 * i + k) * l.m_xi + tile)) }
                        }))
                    });
                    for dy in 0..4 {
                        let y = at4(std::array::from_fn(|k| s[k][dy]));
                        let y = float32x4x4_t(
                            finish(y[0], bias, a.relu),
                            finish(y[1], bias, a.relu),
                            finish(y[2], bias, a.relu),
                            finish(y[3], bias, a.relu),
                        );
                        let at = o * g.oh * g.ow + (y0 + 4 * r + dy) * g.ow + 4 * t;
                        // SAFETY: this band's rows of channel `o`, written by this call only.
                        if let Some(dst) = unsafe { a.out.run(at, 4 * TL) } {
                            // SAFETY: 16 floats of `dst`; pixel 4 i + dx is tile i's column dx.
                            unsafe { vst4q_f32(dst.as_mut_ptr(), y) };
                        }
                    }
                }
            }
        }
    }
}
