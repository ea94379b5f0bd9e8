//! Chooses the kernel and tile of each CUDA convolution (`sparsec_conv` with a `sparsec_tile`,
//! or `sparsec_conv_direct` with a `sparsec_direct_tile`, in `prelude.cuh`) from a small cost
//! model of an H100/H200-class GPU, once for latency (batch 1) and once for throughput (batch
//! 256), and the largest batch for which the latency choice is still the faster one. Owns
//! only that choice: the kernel text is `kernels.rs`'s, and the model's figures are estimates
//! in SM cycles, never measurements.
//!
//! The model: a block runs a number of slices (of k for the implicit GEMM, of input channels
//! for the direct kernel); each costs the larger of one global-memory round trip (the next
//! slice is loaded while this one is multiplied) and the SM's work on it (FMA issue,
//! shared-memory wavefronts, the staging instructions), shared by the blocks resident on the
//! SM; blocks come in waves over the SMs. Small batches thus favour many small blocks and
//! in-block split-K; large ones big register tiles and, for spatial kernels, the direct kernel,
//! which stages and prologues each input value once per slice instead of once per tap.

/// Threads per block (the prelude's `SPARSEC_THREADS`).
const THREADS: u32 = 256;
/// SMs of the target GPU (H100 SXM and H200: 132).
const SMS: u64 = 132;
/// Cycles of one global-memory (mostly L2) round trip.
const LATENCY: f64 = 700.0;
/// Cycles of one block-wide barrier.
const BARRIER: f64 = 40.0;
/// Registers and shared memory per SM.
const SM_REGISTERS: u32 = 65_536;
const SM_SHARED: u32 = 228 * 1024;
/// Static shared memory a kernel may declare.
const MAX_SHARED: u32 = 48 * 1024;
/// Inputs a thread stages per slice, at most (one validity bit each in a 64-bit mask).
const MAX_STAGED: u32 = 64;
/// The batch the throughput tile is chosen for, and the largest batch compared when finding
/// the crossover.
pub const THROUGHPUT_BATCH: u32 = 256;

/// The shape of a convolution as the cost model sees it.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Output channels.
    pub oc: u32,
    /// Output pixels per image.
    pub pixels: u32,
    /// Reduction depth: input channels x kernel height x kernel width.
    pub k: u32,
    /// Whether the input is read through the im2col index arithmetic (not a 1x1, stride 1, no
    /// padding convolution).
    pub im2col: bool,
    /// Input channels, kernel and output size, for the direct kernel.
    pub cin: u32,
    pub kernel: [u32; 2],
    pub out: [u32; 2],
    /// Whether the direct kernel applies: stride 1 and a kernel larger than 1x1.
    pub direct: bool,
}

/// A convolution's kernel and tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvTile {
    /// `sparsec_conv`: implicit GEMM over the pixels of the whole batch.
    Gemm(Tile),
    /// `sparsec_conv_direct`: stride-1 direct convolution over pixel tiles of one image.
    Direct(DirectTile),
}

impl ConvTile {
    /// Estimated cycles at `batch`; `None` when the tile cannot run.
    pub fn cycles(&self, shape: &ConvShape, batch: u32) -> Option<f64> {
        match self {
            ConvTile::Gemm(t) => t.cycles(shape, batch),
            ConvTile::Direct(t) => t.cycles(shape, batch),
        }
    }

    /// `(x_per_image, x_per_block, grid_y)` of the launch.
    pub fn grid(&self, shape: &ConvShape) -> (u64, u32, u32) {
        match self {
            ConvTile::Gemm(t) => (u64::from(shape.pixels), t.bn(), shape.oc.div_ceil(t.bm())),
            ConvTile::Direct(t) => (t.tiles(shape), 1, shape.oc.div_ceil(t.bm())),
        }
    }
}

/// One direct tile: `sparsec_direct_tile<TM, WM, TN, WN, TW, CB>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirectTile {
    /// Output channels per thread.
    pub tm: u32,
    /// Threads along output channels.
    pub wm: u32,
    /// Pixels per thread.
    pub tn: u32,
    /// Threads along pixels.
    pub wn: u32,
    /// Width of the pixel tile (its height is `tn * wn / tw`).
    pub tw: u32,
    /// Input channels staged per slice.
    pub cb: u32,
}

impl DirectTile {
    const fn new(tm: u32, wm: u32, tn: u32, wn: u32, tw: u32, cb: u32) -> Self {
        DirectTile {
            tm,
            wm,
            tn,
            wn,
            tw,
            cb,
        }
    }

    fn bm(&self) -> u32 {
        self.tm * self.wm
    }

    fn th(&self) -> u32 {
        self.tn * self.wn / self.tw
    }

    /// Pixel tiles per image.
    fn tiles(&self, shape: &ConvShape) -> u64 {
        u64::from(shape.out[0].div_ceil(self.th())) * u64::from(shape.out[1].div_ceil(self.tw))
    }

    fn patch(&self, shape: &ConvShape) -> u32 {
        (self.th() + shape.kernel[0] - 1) * (self.tw + shape.kernel[1] - 1)
    }

    /// The C++ spelling of the tile type.
    pub fn cpp(&self) -> String {
        format!(
            "sparsec_direct_tile<{}, {}, {}, {}, {}, {}>",
            self.tm, self.wm, self.tn, self.wn, self.tw, self.cb
        )
    }

    fn cycles(&self, shape: &ConvShape, batch: u32) -> Option<f64> {
        let taps = shape.kernel[0] * shape.kernel[1];
        // A thread stages the same patch positions of each of the slice's channels.
        let staged_x = self.cb * self.patch(shape).div_ceil(THREADS);
        let staged_w = (self.cb * taps * self.bm()).div_ceil(THREADS);
        let regs = self.tm * self.tn + self.tm + 2 * self.tn + staged_x + staged_w + 28;
        // The patch, the weights and the row table (two u64 per channel).
        let shared = (self.cb * self.patch(shape) + self.cb * taps * self.bm() + 4 * self.cb) * 4;
        if regs > 200 || shared > MAX_SHARED || staged_x > MAX_STAGED {
            return None;
        }
        let blocks = u64::from(batch) * self.tiles(shape) * u64::from(shape.oc.div_ceil(self.bm()));
        let per_k = per_k(self.tm, self.tn, self.wn, self.wm);
        let staging = (f64::from(staged_x) * 14.0 + f64::from(staged_w) * 8.0) / 4.0;
        let work = f64::from(self.cb * taps) * per_k + staging;
        let slices = f64::from(shape.cin.div_ceil(self.cb));
        let epilogue = f64::from(self.tm * self.tn) * 2.0 + LATENCY / 2.0;
        Some(waves(blocks, regs, shared, slices, work, epilogue))
    }
}

/// SM cycles a warp spends per reduction step `k` of a TM x TN thread tile: the largest of
/// FMA throughput, shared-memory wavefronts (inputs per lane, weights broadcast per distinct
/// row in the warp) and instruction issue.
fn per_k(tm: u32, tn: u32, wn: u32, rows: u32) -> f64 {
    let rows_per_warp = f64::from((32 / wn.min(32)).min(rows).max(1));
    let (tm, tn) = (f64::from(tm), f64::from(tn));
    let fma = tm * tn / 4.0;
    let wavefronts = tn + rows_per_warp * (tm / 4.0).ceil();
    let issue = (tm * tn + tn + tm) / 4.0;
    fma.max(wavefronts).max(issue)
}

/// Total cycles of `blocks` blocks of 256 threads, each running `slices` slices of `work`
/// cycles per warp (overlapped with one memory round trip) and an epilogue.
fn waves(blocks: u64, regs: u32, shared: u32, slices: f64, work: f64, epilogue: f64) -> f64 {
    let per_sm = (SM_REGISTERS / (regs.next_multiple_of(8) * THREADS))
        .min(SM_SHARED / shared.max(1))
        .clamp(1, 8);
    let waves = blocks.div_ceil(SMS * u64::from(per_sm));
    let resident = blocks.min(SMS * u64::from(per_sm)).div_ceil(SMS) as f64;
    let warps = f64::from(THREADS / 32);
    waves as f64 * (slices * ((resident * warps * work).max(LATENCY) + 2.0 * BARRIER) + epilogue)
}

/// One tile: `sparsec_tile<TM, WM, TN, WN, KS, BK>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Output channels per thread.
    pub tm: u32,
    /// Threads along output channels in a k-group.
    pub wm: u32,
    /// Pixels per thread.
    pub tn: u32,
    /// Threads along pixels in a k-group.
    pub wn: u32,
    /// k-groups (split-K inside the block).
    pub ks: u32,
    /// Depth of a staged k-slice.
    pub bk: u32,
}

impl Tile {
    const fn new(tm: u32, wm: u32, tn: u32, wn: u32, ks: u32, bk: u32) -> Self {
        Tile {
            tm,
            wm,
            tn,
            wn,
            ks,
            bk,
        }
    }

    /// Output channels per block.
    pub fn bm(&self) -> u32 {
        self.tm * self.wm
    }

    /// Pixels per block.
    pub fn bn(&self) -> u32 {
        self.tn * self.wn
    }

    /// Floats of shared memory: the staged slice and the row table (two u64 per row), or the
    /// split-K partial sums.
    fn shared_floats(&self) -> u32 {
        let stage = self.bk * (self.bm() + self.bn()) + 4 * self.bk;
        let reduce = if self.ks > 1 {
            self.ks * self.bm() * self.bn()
        } else {
            0
        };
        stage.max(reduce)
    }

    /// Estimated registers per thread: accumulators, operands, the prefetched slice.
    fn registers(&self) -> u32 {
        let staged = (self.bk * (self.bm() + self.bn())).div_ceil(THREADS);
        self.tm * self.tn + self.tm + self.tn + staged + 28
    }

    /// The C++ spelling of the tile type.
    pub fn cpp(&self) -> String {
        format!(
            "sparsec_tile<{}, {}, {}, {}, {}, {}>",
            self.tm, self.wm, self.tn, self.wn, self.ks, self.bk
        )
    }

    /// Estimated cycles of the whole convolution at `batch`; `None` when the tile cannot run
    /// (too many registers or too much shared memory).
    pub fn cycles(&self, shape: &ConvShape, batch: u32) -> Option<f64> {
        let regs = self.registers();
        let shared = self.shared_floats() * 4;
        if regs > 200 || shared > MAX_SHARED || (self.bk * self.bn()).div_ceil(THREADS) > MAX_STAGED
        {
            return None;
        }
        let items = u64::from(batch) * u64::from(shape.pixels);
        let blocks = items.div_ceil(u64::from(self.bn())) * u64::from(shape.oc.div_ceil(self.bm()));
        let per_k = per_k(self.tm, self.tn, self.wn, self.wm * self.ks);
        let staged_x = f64::from((self.bk * self.bn()).div_ceil(THREADS));
        let staged_w = f64::from((self.bk * self.bm()).div_ceil(THREADS));
        let x_cost = if shape.im2col { 24.0 } else { 10.0 };
        let staging = (staged_x * x_cost + staged_w * 6.0) / 4.0;
        let work = f64::from(self.bk / self.ks) * per_k + staging;
        let slices = f64::from(shape.k.div_ceil(self.bk));
        let epilogue = if self.ks > 1 {
            BARRIER + f64::from(self.ks * self.bm() * self.bn() / THREADS) * 4.0 + LATENCY / 2.0
        } else {
            f64::from(self.tm * self.tn) * 2.0 + LATENCY / 2.0
        };
        Some(waves(blocks, regs, shared, slices, work, epilogue))
    }
}

/// The implicit-GEMM tiles the backend instantiates: `best` chooses among these (and
/// [`DIRECT_MENU`]) instead of the whole space the template accepts, so a model needs fewer
/// kernels (issue 18: code size and NVRTC time grow with the kernels). Chosen offline by
/// greedy selection over the free per-layer choices of every example model at batch 1 and
/// 256, adding each time the tile that most reduced the cost model's total time of the golden
/// models (first) and the other examples; the fallback (one channel, one pixel per thread)
/// fits every shape. `the_tile_menu_costs_the_golden_models_little` checks the result.
const GEMM_MENU: [Tile; 12] = [
    Tile::new(1, 1, 1, 256, 1, 16),
    Tile::new(12, 2, 4, 8, 16, 64),
    Tile::new(8, 1, 1, 16, 16, 128),
    Tile::new(12, 4, 8, 64, 1, 16),
    Tile::new(12, 1, 1, 16, 16, 128),
    Tile::new(4, 16, 8, 16, 1, 16),
    Tile::new(4, 4, 8, 16, 4, 64),
    Tile::new(4, 1, 1, 16, 16, 128),
    Tile::new(12, 1, 2, 16, 16, 128),
    Tile::new(6, 8, 8, 16, 2, 16),
    Tile::new(12, 8, 8, 32, 1, 16),
    Tile::new(8, 8, 8, 32, 1, 16),
];

/// The direct tiles the backend instantiates (see [`GEMM_MENU`]).
const DIRECT_MENU: [DirectTile; 10] = [
    DirectTile::new(6, 2, 8, 128, 32, 4),
    DirectTile::new(4, 4, 4, 64, 16, 16),
    DirectTile::new(6, 4, 4, 64, 16, 8),
    DirectTile::new(12, 2, 8, 128, 32, 8),
    DirectTile::new(8, 2, 8, 128, 32, 8),
    DirectTile::new(3, 4, 4, 64, 16, 16),
    DirectTile::new(4, 4, 1, 64, 8, 16),
    DirectTile::new(3, 8, 2, 32, 8, 8),
    DirectTile::new(8, 4, 4, 64, 16, 16),
    DirectTile::new(3, 4, 1, 64, 8, 16),
];

/// The menu's tiles for `shape`: every GEMM tile, and the direct ones when the direct kernel
/// applies. A tile too big for a layer wastes work, which its estimate counts.
fn menu(shape: &ConvShape) -> impl Iterator<Item = ConvTile> + '_ {
    let direct = if shape.direct { &DIRECT_MENU[..] } else { &[] };
    GEMM_MENU
        .into_iter()
        .map(ConvTile::Gemm)
        .chain(direct.iter().copied().map(ConvTile::Direct))
}

/// Every direct tile the kernel template accepts for `shape` (none unless `shape.direct`):
/// the free choice the menu was chosen from.
#[cfg(test)]
pub(crate) fn direct_candidates(shape: &ConvShape) -> impl Iterator<Item = DirectTile> + '_ {
    const TMS: [u32; 8] = [1, 2, 3, 4, 6, 8, 12, 16];
    const POW2: [u32; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
    const TNS: [u32; 4] = [1, 2, 4, 8];
    const TWS: [u32; 5] = [4, 8, 16, 32, 64];
    const CBS: [u32; 5] = [1, 2, 4, 8, 16];
    let on = shape.direct;
    TMS.into_iter().flat_map(move |tm| {
        POW2.into_iter().flat_map(move |wm| {
            TNS.into_iter().flat_map(move |tn| {
                TWS.into_iter().flat_map(move |tw| {
                    CBS.into_iter().filter_map(move |cb| {
                        let wn = THREADS / wm;
                        let t = DirectTile {
                            tm,
                            wm,
                            tn,
                            wn,
                            tw,
                            cb,
                        };
                        let useful = on
                            && (tn * wn).is_multiple_of(tw)
                            && tw <= shape.out[1].next_power_of_two()
                            && t.th() <= shape.out[0].next_power_of_two()
                            && (t.bm() < shape.oc + tm || t.bm() <= tm)
                            && t.bm() <= 128
                            && cb <= shape.cin.next_power_of_two();
                        useful.then_some(t)
                    })
                })
            })
        })
    })
}

/// Every implicit-GEMM tile the kernel template accepts for `shape`: the free choice the
/// menu was chosen from.
#[cfg(test)]
pub(crate) fn candidates(shape: &ConvShape) -> impl Iterator<Item = Tile> + '_ {
    const TMS: [u32; 8] = [1, 2, 3, 4, 6, 8, 12, 16];
    const POW2: [u32; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
    const TNS: [u32; 4] = [1, 2, 4, 8];
    const KSS: [u32; 5] = [1, 2, 4, 8, 16];
    const BKS: [u32; 4] = [16, 32, 64, 128];
    TMS.into_iter().flat_map(move |tm| {
        POW2.into_iter().flat_map(move |wm| {
            KSS.into_iter().flat_map(move |ks| {
                TNS.into_iter().flat_map(move |tn| {
                    BKS.into_iter().filter_map(move |bk| {
                        let wn = THREADS.checked_div(wm * ks)?;
                        let tile = Tile {
                            tm,
                            wm,
                            tn,
                            wn,
                            ks,
                            bk,
                        };
                        let useful = wm * ks * wn == THREADS
                            && bk % ks == 0
                            && bk / ks >= 2
                            // no thread row entirely past the output channels
                            && (tile.bm() < shape.oc + tm || tile.bm() <= tm)
                            && tile.bm() <= 128
                            && tile.bn() <= 2048
                            && bk <= shape.k.next_power_of_two().max(16);
                        useful.then_some(tile)
                    })
                })
            })
        })
    })
}

/// The fastest kernel and tile of the menu for `shape` at `batch` by the model (ties keep
/// the first).
pub fn best(shape: &ConvShape, batch: u32) -> ConvTile {
    fastest(menu(shape), shape, batch)
}

/// The fastest of every tile the templates accept (the free per-layer choice the menu
/// replaced), for tests that measure what the menu costs.
#[cfg(test)]
pub(crate) fn best_free(shape: &ConvShape, batch: u32) -> ConvTile {
    let all = candidates(shape)
        .map(ConvTile::Gemm)
        .chain(direct_candidates(shape).map(ConvTile::Direct));
    fastest(all, shape, batch)
}

fn fastest(tiles: impl Iterator<Item = ConvTile>, shape: &ConvShape, batch: u32) -> ConvTile {
    let mut best: Option<(f64, ConvTile)> = None;
    for tile in tiles {
        if let Some(c) = tile.cycles(shape, batch)
            && best.is_none_or(|(b, _)| c < b)
        {
            best = Some((c, tile));
        }
    }
    // The one-channel, one-pixel, no-split GEMM tile always fits, so a candidate exists.
    best.map_or(ConvTile::Gemm(GEMM_MENU[0]), |(_, t)| t)
}

/// A convolution's variants: `(tile, up_to_batch)` ordered by batch, the last serving every
/// batch. The latency choice (batch 1) comes first when it differs from the throughput choice
/// (batch 256), serving batches up to the last one where the model still prefers it.
pub fn variants(shape: &ConvShape) -> Vec<(ConvTile, u32)> {
    let small = best(shape, 1);
    let large = best(shape, THROUGHPUT_BATCH);
    if small == large {
        return vec![(large, u32::MAX)];
    }
    let mut up_to = 1;
    for batch in 2..THROUGHPUT_BATCH {
        match (small.cycles(shape, batch), large.cycles(shape, batch)) {
            (Some(s), Some(l)) if s <= l => up_to = batch,
            _ => break,
        }
    }
    vec![(small, up_to), (large, u32::MAX)]
}

/// A square convolution for tests (here and in `precision.rs`): `oc` outputs, `size`x`size`
/// output, `cin` inputs, `k`x`k` kernel, stride 1 with "same" padding.
#[cfg(test)]
pub(super) fn square_shape(oc: u32, size: u32, cin: u32, k: u32) -> ConvShape {
    ConvShape {
        oc,
        pixels: size * size,
        k: cin * k * k,
        im2col: k > 1,
        cin,
        kernel: [k, k],
        out: [size, size],
        direct: k > 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(oc: u32, size: u32, cin: u32, k: u32) -> ConvShape {
        square_shape(oc, size, cin, k)
    }

    #[test]
    fn every_chosen_tile_fits_its_kernel_template() {
        for s in [
            shape(24, 32, 100, 3),
            shape(12, 8, 48, 3),
            shape(96, 16, 300, 1),
            shape(200, 32, 400, 1),
            shape(1, 1, 1, 1),
            shape(1000, 1, 2048, 1),
            shape(64, 7, 64, 3),
        ] {
            for (t, _) in variants(&s) {
                match t {
                    ConvTile::Gemm(t) => {
                        assert_eq!(t.wm * t.wn * t.ks, THREADS, "{t:?}");
                        assert_eq!(t.bk % t.ks, 0, "{t:?}");
                        assert!(t.shared_floats() * 4 <= MAX_SHARED, "{t:?}");
                    }
                    ConvTile::Direct(t) => {
                        assert!(s.direct, "{t:?}");
                        assert_eq!(t.wm * t.wn, THREADS, "{t:?}");
                        assert_eq!((t.tn * t.wn) % t.tw, 0, "{t:?}");
                    }
                }
                assert!(t.cycles(&s, 1).is_some(), "{t:?}");
            }
        }
    }

    /// Every menu tile is one the kernel templates accept, and the first fits every shape.
    #[test]
    fn every_menu_tile_fits_its_kernel_template() {
        for t in GEMM_MENU {
            assert_eq!(t.wm * t.wn * t.ks, THREADS, "{t:?}");
            assert!(t.bk.is_multiple_of(t.ks) && t.bk / t.ks >= 2, "{t:?}");
            assert!(t.shared_floats() * 4 <= MAX_SHARED, "{t:?}");
        }
        for t in DIRECT_MENU {
            assert_eq!(t.wm * t.wn, THREADS, "{t:?}");
            assert!((t.tn * t.wn).is_multiple_of(t.tw), "{t:?}");
        }
        for s in [
            shape(1, 1, 1, 1),
            shape(1000, 1, 12288, 1),
            shape(2048, 56, 2048, 7),
        ] {
            assert!(
                ConvTile::Gemm(GEMM_MENU[0]).cycles(&s, 1).is_some(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn batch_one_spreads_a_layer_over_more_blocks_than_batch_256() {
        // A 32x32 layer with 24 output channels: at batch 1 the latency choice must spread
        // the layer over more blocks than the throughput choice does.
        let s = shape(24, 32, 100, 3);
        let v = variants(&s);
        assert_eq!(v.len(), 2, "{v:?}");
        let blocks = |t: &ConvTile| {
            let (items, per_block, y) = t.grid(&s);
            items.div_ceil(u64::from(per_block)) * u64::from(y)
        };
        assert!(blocks(&v[0].0) > blocks(&v[1].0), "{v:?}");
        assert!(v[0].1 >= 1 && v[0].1 < THROUGHPUT_BATCH, "{v:?}");
    }
}
