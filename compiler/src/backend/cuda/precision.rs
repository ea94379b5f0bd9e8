//! The arithmetic precision of each CUDA convolution (`--precision fp32|tf32|bf16`): with
//! `tf32` or `bf16` a convolution may run on tensor cores (`sparsec_conv_mma` in `mma.cuh`:
//! inputs and weights rounded to TF32 or BF16 when staged, FP32 accumulate, FP32 output in the
//! arena), chosen per layer by the same kind of cost model as `tile.rs`'s FP32 tiles. A layer
//! with too few channels (fewer than 16 outputs or a reduction shorter than one 32-deep slice,
//! such as a 3-channel stem) stays FP32, as does one the model estimates no faster on tensor
//! cores. One precision per layer: it is chosen at the throughput batch, then that precision's
//! latency and throughput tiles give the launch variants, as `tile::variants` does for FP32.
//!
//! Owns the choice, the tensor-core tiles' cost model and their kernel names; `kernels.rs`
//! calls [`emit_conv`] before its FP32 path and writes `mma.cuh` into the source when any step
//! uses it. Which buffers are stored in BF16 follows from these choices (`storage.rs`). The
//! figures are estimates in SM cycles, never measurements.

use super::THREADS;
use super::tile::{self, ConvShape};
use runtime::format::CudaLaunch;
use std::fmt;
use std::str::FromStr;

/// The arithmetic of a convolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// FP32 CUDA cores (`sparsec_conv`, `sparsec_conv_direct`).
    #[default]
    Fp32,
    /// Tensor cores, inputs rounded to TF32 (10 mantissa bits, to nearest, ties away).
    Tf32,
    /// Tensor cores, inputs rounded to BF16 (7 mantissa bits, to nearest even).
    Bf16,
}

impl Precision {
    /// Every precision, in order.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    /// The name used by `--precision` and the compile report.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The unit roundoff of the inputs (2^-p for p stored mantissa bits plus one): the size of
    /// one rounding of an operand.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => f64::from(f32::EPSILON) / 2.0,
            Precision::Tf32 => 2f64.powi(-11),
            Precision::Bf16 => 2f64.powi(-8),
        }
    }

    /// `SPARSEC_TF32` / `SPARSEC_BF16` in `mma.cuh`; `None` for FP32.
    fn cpp(self) -> Option<&'static str> {
        match self {
            Precision::Fp32 => None,
            Precision::Tf32 => Some("SPARSEC_TF32"),
            Precision::Bf16 => Some("SPARSEC_BF16"),
        }
    }

    /// Reduction depth of one tensor-core product (`mma.m16n8k8` for TF32, `m16n8k16` BF16).
    fn kstep(self) -> u32 {
        match self {
            Precision::Bf16 => 16,
            _ => 8,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("precision must be fp32, tf32 or bf16, got {s:?}"))
    }
}

/// Depth of a staged k-slice of every tensor-core tile.
const BK: u32 = 32;
/// Static shared memory a kernel may declare.
const MAX_SHARED: u32 = 48 * 1024;
/// Cycles of one global-memory (mostly L2) round trip, and of a block-wide barrier (as in
/// `tile.rs`).
const LATENCY: f64 = 700.0;
const BARRIER: f64 = 40.0;
/// SMs, registers and shared memory per SM of an H100/H200.
const SMS: u64 = 132;
const SM_REGISTERS: u32 = 65_536;
const SM_SHARED: u32 = 228 * 1024;
/// SM cycles one warp's `mma.sync` costs, in `tile.rs`'s units (an SM issues 128 FP32 FMAs a
/// cycle, so a warp's FMA costs 1/4): an H100 SM does about 1024 dense TF32 or 2048 BF16
/// multiply-adds a cycle, so one m16n8k8 TF32 or m16n8k16 BF16 product is one cycle at peak;
/// `mma.sync` reaches about 60% of it on Hopper (the rest needs `wgmma`).
const MMA_CYCLES: f64 = 1.6;
/// The smallest layer worth a tensor-core kernel: a whole 16-row fragment of output channels
/// and at least one whole slice of reduction.
const MIN_OC: u32 = 16;
const MIN_K: u32 = BK;

/// A tensor-core tile: `sparsec_mma_tile<MW, NW, MT, NT, BK>`: MW x NW warps, each MT x NT
/// fragments of 16 output channels x 8 pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmaTile {
    pub mw: u32,
    pub nw: u32,
    pub mt: u32,
    pub nt: u32,
    pub bk: u32,
}

impl MmaTile {
    /// Output channels per block.
    pub fn bm(&self) -> u32 {
        self.mw * self.mt * 16
    }

    /// Pixels per block.
    pub fn bn(&self) -> u32 {
        self.nw * self.nt * 8
    }

    /// The staged slice in shared memory at `p`: a 32-bit word per value at TF32, per pair of
    /// values at BF16 (`sparsec_mma_stage`).
    fn shared_bytes(&self, p: Precision) -> u32 {
        let per_word = if p == Precision::Bf16 { 2 } else { 1 };
        self.bk / per_word * (self.bm() + 8 + self.bn() + 8) * 4
    }

    /// The C++ spelling of the tile type.
    pub fn cpp(&self) -> String {
        format!(
            "sparsec_mma_tile<{}, {}, {}, {}, {}>",
            self.mw, self.nw, self.mt, self.nt, self.bk
        )
    }

    /// `(x_per_image, x_per_block, grid_y)` of the launch: `sparsec_conv`'s grid.
    pub fn grid(&self, shape: &ConvShape) -> (u64, u32, u32) {
        (
            u64::from(shape.pixels),
            self.bn(),
            shape.oc.div_ceil(self.bm()),
        )
    }

    /// Estimated cycles of the whole convolution at `batch` in precision `p`; `None` when the
    /// tile cannot run. Per slice a warp stores its share of the slice loaded into registers
    /// during the previous one (the next slice's loads are in flight while this one is
    /// multiplied, as in `tile.rs`'s kernels), then per k-step loads its fragments from shared
    /// memory (one wavefront per register, BF16 pairs packed in one word) and issues MT x NT
    /// products.
    pub fn cycles(&self, shape: &ConvShape, batch: u32, p: Precision) -> Option<f64> {
        let shared = self.shared_bytes(p);
        // Accumulators, fragments, the prefetched slice (weights and inputs), addressing.
        let prefetched = (self.bk * self.bm()).div_ceil(THREADS) + self.bk * self.bn() / THREADS;
        let regs = self.mt * self.nt * 4 + self.mt * 4 + self.nt * 2 + prefetched + 40;
        if shared > MAX_SHARED || regs > 200 || p == Precision::Fp32 {
            return None;
        }
        let items = u64::from(batch) * u64::from(shape.pixels);
        let blocks = items.div_ceil(u64::from(self.bn())) * u64::from(shape.oc.div_ceil(self.bm()));
        let (mt, nt) = (f64::from(self.mt), f64::from(self.nt));
        let per_step = (mt * nt * MMA_CYCLES).max(mt * 4.0 + nt * 2.0);
        let staged_x = f64::from(self.bk * self.bn() / THREADS);
        let staged_w = f64::from((self.bk * self.bm()).div_ceil(THREADS));
        let x_cost = if shape.im2col { 28.0 } else { 14.0 };
        let staging = (staged_x * x_cost + staged_w * 10.0) / 4.0;
        let work = f64::from(self.bk / p.kstep()) * per_step + staging;
        let slices = f64::from(shape.k.div_ceil(self.bk));
        let per_sm = (SM_REGISTERS / (regs.next_multiple_of(8) * THREADS))
            .min(SM_SHARED / shared)
            .clamp(1, 8);
        let waves = blocks.div_ceil(SMS * u64::from(per_sm));
        let resident = blocks.min(SMS * u64::from(per_sm)).div_ceil(SMS) as f64;
        let warps = f64::from(THREADS / 32);
        let slice = (resident * warps * work).max(LATENCY) + 2.0 * BARRIER;
        let epilogue = mt * nt * 8.0 + LATENCY / 2.0;
        Some(waves as f64 * (slices * slice + epilogue))
    }
}

/// Every tensor-core tile the template accepts for `shape`: eight warps, a block's pixels a
/// divisor of 256 (one staged column per thread), no warp row entirely past the output
/// channels.
fn candidates(shape: &ConvShape) -> impl Iterator<Item = MmaTile> + '_ {
    [1u32, 2, 4, 8].into_iter().flat_map(move |mw| {
        [1u32, 2, 4].into_iter().flat_map(move |mt| {
            [1u32, 2, 4, 8].into_iter().filter_map(move |nt| {
                let t = MmaTile {
                    mw,
                    nw: 8 / mw,
                    mt,
                    nt,
                    bk: BK,
                };
                let useful = (32..=THREADS).contains(&t.bn())
                    && t.bm() <= 128
                    && (t.bm() < shape.oc + mt * 16 || t.bm() <= 16);
                useful.then_some(t)
            })
        })
    })
}

/// The fastest tensor-core tile for `shape` at `batch` in `p`, with its estimated cycles.
fn best(shape: &ConvShape, batch: u32, p: Precision) -> Option<(f64, MmaTile)> {
    let mut best: Option<(f64, MmaTile)> = None;
    for t in candidates(shape) {
        if let Some(c) = t.cycles(shape, batch, p)
            && best.is_none_or(|(b, _)| c < b)
        {
            best = Some((c, t));
        }
    }
    best
}

/// Whether a layer runs on tensor cores when `requested` allows it: big enough, and
/// estimated faster than the best FP32 kernel at the throughput batch. Returns the precision
/// it gets.
pub fn choose(shape: &ConvShape, requested: Precision) -> Precision {
    if requested == Precision::Fp32 || shape.oc < MIN_OC || shape.k < MIN_K {
        return Precision::Fp32;
    }
    let batch = tile::THROUGHPUT_BATCH;
    let fp32 = tile::best(shape, batch).cycles(shape, batch);
    match (best(shape, batch, requested), fp32) {
        (Some((mma, _)), Some(f)) if mma < f => requested,
        (Some(_), None) => requested,
        _ => Precision::Fp32,
    }
}

/// The tensor-core variants of a layer that runs in `p`: `(tile, up_to_batch)`, the latency
/// tile first when it differs (as `tile::variants`).
pub fn variants(shape: &ConvShape, p: Precision) -> Vec<(MmaTile, u32)> {
    let Some((_, large)) = best(shape, tile::THROUGHPUT_BATCH, p) else {
        return Vec::new();
    };
    let small = best(shape, 1, p).map_or(large, |(_, t)| t);
    if small == large {
        return vec![(large, u32::MAX)];
    }
    let mut up_to = 1;
    for batch in 2..tile::THROUGHPUT_BATCH {
        match (small.cycles(shape, batch, p), large.cycles(shape, batch, p)) {
            (Some(s), Some(l)) if s <= l => up_to = batch,
            _ => break,
        }
    }
    vec![(small, up_to), (large, u32::MAX)]
}

/// The kernel name and template instance of a tensor-core tile (`pointwise` and `sum` as for
/// the FP32 kernels; `bf16_storage`: the instance that reads and writes BF16 buffers, named
/// with a trailing `_h`).
pub fn kernel(
    t: &MmaTile,
    p: Precision,
    kh: u32,
    kw: u32,
    pointwise: bool,
    sum: bool,
    bf16_storage: bool,
) -> (String, String) {
    let prec = p.cpp().unwrap_or("SPARSEC_TF32");
    (
        format!(
            "k_mma{}_{kh}x{kw}{}{}_{}_{}_{}_{}_{}{}",
            p.name(),
            if pointwise { "p" } else { "" },
            if sum { "s" } else { "" },
            t.mw,
            t.nw,
            t.mt,
            t.nt,
            t.bk,
            if bf16_storage { "_h" } else { "" }
        ),
        format!(
            "sparsec_conv_mma<{}, {prec}, {kh}, {kw}, {pointwise}, {sum}, {bf16_storage}>",
            t.cpp()
        ),
    )
}

/// A tensor-core kernel of a layer: its name, its template instance and its launch.
pub type MmaKernel = (String, String, CudaLaunch);

/// The precision a layer gets when `requested` is asked for: [`choose`]'s, if the layer has a
/// tensor-core tile; FP32 otherwise. The backend decides every layer's precision first, so the
/// plan can store buffers by it (`storage.rs`), then emits each with [`emit_conv`].
pub fn decide(shape: &ConvShape, requested: Precision) -> Precision {
    let p = choose(shape, requested);
    if p == Precision::Fp32 || variants(shape, p).is_empty() {
        Precision::Fp32
    } else {
        p
    }
}

/// A convolution's launches on tensor cores when the layer got `p` ([`decide`]): `(p,
/// [(kernel name, template instance, launch)])`; `None` for FP32 or a layer without a
/// tensor-core tile, which stays on the FP32 path. `bf16_storage`: the step reads or writes a
/// BF16 buffer.
pub fn emit_conv(
    shape: &ConvShape,
    p: Precision,
    kh: u32,
    kw: u32,
    pointwise: bool,
    sum: bool,
    bf16_storage: bool,
) -> Result<Option<(Precision, Vec<MmaKernel>)>, String> {
    if p == Precision::Fp32 {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (t, up_to) in variants(shape, p) {
        let (name, body) = kernel(&t, p, kh, kw, pointwise, sum, bf16_storage);
        let (x_per_image, x_per_block, grid_y) = t.grid(shape);
        let x_per_image = u32::try_from(x_per_image)
            .map_err(|_| format!("{x_per_image} work items per image (at most 2^32 - 1)"))?;
        out.push((
            name.clone(),
            body,
            CudaLaunch {
                kernel: name,
                up_to_batch: up_to,
                x_per_image,
                x_per_block,
                grid_y,
                block: THREADS,
                shared_bytes: 0,
            },
        ));
    }
    Ok((!out.is_empty()).then_some((p, out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(oc: u32, size: u32, cin: u32, k: u32) -> ConvShape {
        super::tile::square_shape(oc, size, cin, k)
    }

    #[test]
    fn names_parse_back() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp16".parse::<Precision>().is_err());
    }

    #[test]
    fn small_layers_stay_fp32_and_big_ones_use_tensor_cores() {
        // The CIFAR stem: 3 input channels.
        assert_eq!(
            choose(&shape(48, 32, 3, 3), Precision::Tf32),
            Precision::Fp32
        );
        // Eight output channels: not a whole fragment.
        assert_eq!(
            choose(&shape(8, 32, 256, 1), Precision::Bf16),
            Precision::Fp32
        );
        // A bottleneck 1x1 and a wide 3x3.
        for p in [Precision::Tf32, Precision::Bf16] {
            assert_eq!(choose(&shape(96, 32, 384, 1), p), p);
            assert_eq!(choose(&shape(128, 16, 256, 3), p), p);
        }
        assert_eq!(
            choose(&shape(96, 32, 384, 1), Precision::Fp32),
            Precision::Fp32
        );
    }

    #[test]
    fn every_chosen_tile_fits_its_template() {
        for s in [
            shape(16, 8, 32, 1),
            shape(96, 32, 384, 1),
            shape(1000, 1, 2048, 1),
        ] {
            for p in [Precision::Tf32, Precision::Bf16] {
                for (t, _) in variants(&s, p) {
                    assert_eq!(t.mw * t.nw, 8, "{t:?}");
                    assert_eq!(THREADS % t.bn(), 0, "{t:?}");
                    assert!(t.shared_bytes(p) <= MAX_SHARED, "{t:?}");
                    assert_eq!(t.bk % p.kstep(), 0, "{t:?}");
                }
            }
        }
    }
}
