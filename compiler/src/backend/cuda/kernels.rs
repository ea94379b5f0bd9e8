//! The CUDA C text of each kernel kind, specialised to one step: every shape, plan offset and
//! weight offset is a literal, so NVRTC folds the index arithmetic. Kernels take
//! `(float* arena, const float* weights, unsigned batch)`; buffer `b` of the step lives at
//! `arena + offset_per_image * batch` (in floats), image `n` at `+ n * floats_per_image`, and
//! `blockIdx.z` is the image. The same text compiles as C++ under `shim.h`, so it uses only
//! what the shim provides (`threadIdx`, `blockIdx`, `__shared__`, `__syncthreads`, `fmaxf`,
//! `INFINITY`) and every thread of a block reaches every `__syncthreads()`.
//!
//! Design:
//! - convolution: implicit GEMM, output tile of `bm` channels x 64 pixels per block, 256
//!   threads each owning `bm/16` x 4 outputs; per 16-deep slice of `k = (c, kh, kw)` the block
//!   stages the weight tile and the im2col input tile (pieces read in place, prologue applied
//!   while loading, zero padding after it) in shared memory between two barriers; bias and
//!   ReLU in the epilogue.
//! - pool: one thread per output value, prologue per loaded value.
//! - linear (the fused head): one block per image; the prologued, globally averaged input is
//!   staged in shared memory, then each thread computes output features.
//!
//! Must not decide layouts or offsets (`mod.rs` and the plan do); only writes text.

use super::THREADS;
use crate::backend::steps::StepPlan;
use ir::op::{Combine, Conv2d, Linear as LinearOp, Pool as PoolOp, PoolKind};
use runtime::format::CudaLaunch;
use std::fmt::Write;

/// Pixels per convolution tile.
const BN: u32 = 64;
/// Depth of a convolution tile's `k` slice.
const BK: u32 = 16;
/// Shared memory a kernel may use statically.
const MAX_SHARED: u64 = 48 * 1024;

/// The prologue of a reader: float offsets of scale and shift in the weights.
#[derive(Clone, Copy, Debug)]
pub struct Prologue {
    pub scale: u64,
    pub shift: u64,
    pub relu: bool,
}

/// The file's first lines.
pub fn header(model: &str, steps: usize) -> String {
    format!(
        "// sparsec CUDA kernels for `{model}`: {steps} steps, one kernel each, launched in step\n\
         // order with (arena, weights, batch); grid z = batch.\n\
         // Generated code: every shape, arena offset and weight offset is a literal.\n\
         #ifndef INFINITY\n\
         #define INFINITY __int_as_float(0x7f800000)\n\
         #endif\n"
    )
}

/// How a step reads its logical input: pieces, combine rule, prologue.
pub struct Input {
    name: String,
    pieces: Vec<(u32, u64, u64)>, // (channels, float offset per image, floats per image)
    combine: Combine,
    plane: u64,
    pub prologue: Option<Prologue>,
}

impl Input {
    pub fn new(
        name: &str,
        step: &StepPlan<'_>,
        prologue: Option<Prologue>,
    ) -> Result<Input, crate::backend::BackendError> {
        Ok(Input {
            name: format!("{name}_x"),
            pieces: step
                .pieces
                .iter()
                .map(|p| {
                    (
                        p.channels,
                        p.buffer.offset_per_image / 4,
                        p.buffer.bytes_per_image / 4,
                    )
                })
                .collect(),
            combine: step.op.access().map_or(Combine::Concat, |a| a.combine),
            plane: u64::from(step.input.height) * u64::from(step.input.width),
            prologue,
        })
    }

    /// The device function `NAME_x(arena, weights, batch, n, c, hw)`: the value of channel
    /// `c` at plane position `hw` of image `n`, pieces combined, prologue applied.
    pub fn emit(&self) -> String {
        let mut s = String::new();
        let hw = self.plane;
        let _ = writeln!(
            s,
            "\n__device__ __forceinline__ float {}(const float* __restrict__ a, const float* \
             __restrict__ w, size_t B, unsigned n, unsigned c, unsigned hw) {{",
            self.name
        );
        let at = |off: u64, per: u64, ch: &str| {
            format!("a[{off}ull * B + (size_t)n * {per}ull + (size_t)({ch}) * {hw}ull + hw]")
        };
        match self.combine {
            Combine::Sum => {
                let terms: Vec<String> = self
                    .pieces
                    .iter()
                    .map(|&(_, off, per)| at(off, per, "c"))
                    .collect();
                let _ = writeln!(s, "  float v = {};", terms.join("\n          + "));
            }
            Combine::Concat if self.pieces.len() == 1 => {
                let (_, off, per) = self.pieces[0];
                let _ = writeln!(s, "  float v = {};", at(off, per, "c"));
            }
            Combine::Concat => {
                let _ = writeln!(s, "  float v;");
                let mut start = 0u32;
                let last = self.pieces.len() - 1;
                for (i, &(ch, off, per)) in self.pieces.iter().enumerate() {
                    let local = if start == 0 {
                        "c".to_string()
                    } else {
                        format!("c - {start}u")
                    };
                    let load = at(off, per, &local);
                    if i == 0 {
                        let _ = writeln!(s, "  if (c < {}u) v = {load};", start + ch);
                    } else if i == last {
                        let _ = writeln!(s, "  else v = {load};");
                    } else {
                        let _ = writeln!(s, "  else if (c < {}u) v = {load};", start + ch);
                    }
                    start += ch;
                }
            }
        }
        if let Some(p) = self.prologue {
            let _ = writeln!(s, "  v = v * w[{}u + c] + w[{}u + c];", p.scale, p.shift);
            if p.relu {
                let _ = writeln!(s, "  v = fmaxf(v, 0.0f);");
            }
        }
        s.push_str("  return v;\n}\n");
        s
    }
}

fn signature(name: &str) -> String {
    format!(
        "extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(float* __restrict__ a, \
         const float* __restrict__ w, unsigned batch) {{\n"
    )
}

fn launch(grid: [u32; 2], shared_bytes: u64) -> CudaLaunch {
    CudaLaunch {
        kernel: String::new(),
        grid,
        block: THREADS,
        shared_bytes: shared_bytes as u32,
    }
}

fn kernel_name(input: &Input) -> &str {
    input.name.trim_end_matches("_x")
}

/// A convolution step.
pub struct Conv<'a> {
    pub input: &'a Input,
    pub step: &'a StepPlan<'a>,
    pub conv: &'a Conv2d,
    /// Float offsets in the weights.
    pub weight: u64,
    pub bias: Option<u64>,
}

impl Conv<'_> {
    pub fn emit(&self) -> (String, CudaLaunch) {
        let (c, s) = (self.conv, self.step);
        let name = kernel_name(self.input);
        let (ih, iw) = (s.input.height, s.input.width);
        let (oh, ow) = (s.output.height, s.output.width);
        let oc = c.out_channels;
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let k = u64::from(s.input.channels) * u64::from(kh * kw);
        let p = u64::from(oh) * u64::from(ow);
        // Output channels per tile: the smallest of 16, 32, 64 that covers them (or 64).
        let bm: u32 = match oc {
            0..=16 => 16,
            17..=32 => 32,
            _ => 64,
        };
        let tm = bm / 16;
        let tn = BN / 16;
        let pointwise = kh == 1 && kw == 1 && c.stride == [1, 1] && c.pad == [0, 0];
        let x = &self.input.name;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n// {}: conv {kh}x{kw} stride {}x{} pad {}x{}, {} -> {oc} channels, {ih}x{iw} -> \
             {oh}x{ow}{}{}",
            s.label,
            c.stride[0],
            c.stride[1],
            c.pad[0],
            c.pad[1],
            s.input.channels,
            if c.bias.is_some() { ", bias" } else { "" },
            if c.relu { ", relu" } else { "" },
        );
        t.push_str(&signature(name));
        let _ = write!(
            t,
            "  __shared__ float ws[{BK}][{bm}];\n\
             \x20 __shared__ float xs[{BK}][{BN}];\n\
             \x20 const unsigned tid = threadIdx.x, tx = tid % 16u, ty = tid / 16u;\n\
             \x20 const unsigned p0 = blockIdx.x * {BN}u, m0 = blockIdx.y * {bm}u, n = blockIdx.z;\n\
             \x20 const size_t B = batch;\n\
             \x20 float acc[{tm}][{tn}];\n\
             \x20 for (unsigned i = 0; i < {tm}u; ++i)\n\
             \x20   for (unsigned j = 0; j < {tn}u; ++j) acc[i][j] = 0.0f;\n\
             \x20 for (unsigned k0 = 0; k0 < {k}u; k0 += {BK}u) {{\n\
             \x20   for (unsigned e = tid; e < {}u; e += {THREADS}u) {{\n\
             \x20     const unsigned k = k0 + e / {bm}u, m = m0 + e % {bm}u;\n\
             \x20     ws[e / {bm}u][e % {bm}u] = (k < {k}u && m < {oc}u) ? w[{}ull + (size_t)k * {oc}u + m] : 0.0f;\n\
             \x20   }}\n\
             \x20   for (unsigned e = tid; e < {}u; e += {THREADS}u) {{\n\
             \x20     const unsigned k = k0 + e / {BN}u, p = p0 + e % {BN}u;\n\
             \x20     float v = 0.0f;\n\
             \x20     if (k < {k}u && p < {p}u) {{\n",
            BK * bm,
            self.weight,
            BK * BN,
        );
        if pointwise {
            let _ = writeln!(t, "        v = {x}(a, w, B, n, k, p);");
        } else {
            let _ = write!(
                t,
                "        const unsigned c = k / {}u, r = k % {}u;\n\
                 \x20       const int ih = (int)(p / {ow}u) * {} - {} + (int)(r / {kw}u);\n\
                 \x20       const int iw = (int)(p % {ow}u) * {} - {} + (int)(r % {kw}u);\n\
                 \x20       if (ih >= 0 && ih < {ih} && iw >= 0 && iw < {iw}) v = {x}(a, w, B, n, c, (unsigned)(ih * {iw} + iw));\n",
                kh * kw,
                kh * kw,
                c.stride[0],
                c.pad[0],
                c.stride[1],
                c.pad[1],
            );
        }
        let bias = match self.bias {
            Some(b) => format!("w[{b}u + m]"),
            None => "0.0f".into(),
        };
        let relu = if c.relu {
            "      v = fmaxf(v, 0.0f);\n"
        } else {
            ""
        };
        let _ = write!(
            t,
            "      }}\n\
             \x20     xs[e / {BN}u][e % {BN}u] = v;\n\
             \x20   }}\n\
             \x20   __syncthreads();\n\
             \x20   for (unsigned kk = 0; kk < {BK}u; ++kk) {{\n\
             \x20     float xv[{tn}];\n\
             \x20     for (unsigned j = 0; j < {tn}u; ++j) xv[j] = xs[kk][tx + 16u * j];\n\
             \x20     for (unsigned i = 0; i < {tm}u; ++i) {{\n\
             \x20       const float wv = ws[kk][ty + 16u * i];\n\
             \x20       for (unsigned j = 0; j < {tn}u; ++j) acc[i][j] += wv * xv[j];\n\
             \x20     }}\n\
             \x20   }}\n\
             \x20   __syncthreads();\n\
             \x20 }}\n\
             \x20 float* out = a + {}ull * B + (size_t)n * {}ull;\n\
             \x20 for (unsigned i = 0; i < {tm}u; ++i) {{\n\
             \x20   const unsigned m = m0 + ty + 16u * i;\n\
             \x20   if (m >= {oc}u) continue;\n\
             \x20   const float b = {bias};\n\
             \x20   for (unsigned j = 0; j < {tn}u; ++j) {{\n\
             \x20     const unsigned p = p0 + tx + 16u * j;\n\
             \x20     if (p >= {p}u) continue;\n\
             \x20     float v = acc[i][j] + b;\n\
             {relu}\
             \x20     out[(size_t)m * {p}u + p] = v;\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n",
            s.out.offset_per_image / 4,
            s.out.bytes_per_image / 4,
        );
        let grid = [p.div_ceil(u64::from(BN)) as u32, oc.div_ceil(bm)];
        (t, launch(grid, 0))
    }
}

/// A pooling step.
pub struct Pool<'a> {
    pub input: &'a Input,
    pub step: &'a StepPlan<'a>,
    pub pool: &'a PoolOp,
}

impl Pool<'_> {
    pub fn emit(&self) -> (String, CudaLaunch) {
        let (p, s) = (self.pool, self.step);
        let name = kernel_name(self.input);
        let x = &self.input.name;
        let (ih, iw) = (s.input.height, s.input.width);
        let (oh, ow) = (s.output.height, s.output.width);
        let ch = s.input.channels;
        let total = u64::from(ch) * u64::from(oh) * u64::from(ow);
        let kind = match p.kind {
            PoolKind::Avg => "avg",
            PoolKind::Max => "max",
        };
        let mut t = String::new();
        if p.global {
            let _ = writeln!(
                t,
                "\n// {}: global {kind} pool, {ch} channels, {ih}x{iw} -> 1x1",
                s.label
            );
        } else {
            let _ = writeln!(
                t,
                "\n// {}: {kind} pool {}x{} stride {}x{} pad {}x{}, {ch} channels, {ih}x{iw} -> \
                 {oh}x{ow}",
                s.label, p.kernel[0], p.kernel[1], p.stride[0], p.stride[1], p.pad[0], p.pad[1]
            );
        }
        t.push_str(&signature(name));
        let _ = write!(
            t,
            "  const unsigned i = blockIdx.x * {THREADS}u + threadIdx.x, n = blockIdx.z;\n\
             \x20 if (i >= {total}u) return;\n\
             \x20 const size_t B = batch;\n\
             \x20 const unsigned c = i / {}u, q = i % {}u;\n",
            u64::from(oh) * u64::from(ow),
            u64::from(oh) * u64::from(ow),
        );
        let (init, acc, fin) = match p.kind {
            PoolKind::Avg => ("0.0f", "s += v;", "s"),
            PoolKind::Max => ("-INFINITY", "s = fmaxf(s, v);", "s"),
        };
        let _ = writeln!(t, "  float s = {init};");
        if p.global {
            let plane = u64::from(ih) * u64::from(iw);
            let _ = writeln!(
                t,
                "  (void)q;\n  for (unsigned hw = 0; hw < {plane}u; ++hw) {{ const float v = \
                 {x}(a, w, B, n, c, hw); {acc} }}"
            );
            if p.kind == PoolKind::Avg {
                let _ = writeln!(t, "  s = s / {plane}.0f;");
            }
        } else {
            let _ = write!(
                t,
                "  const int h0 = (int)(q / {ow}u) * {} - {}, w0 = (int)(q % {ow}u) * {} - {};\n\
                 \x20 for (int r = 0; r < {}; ++r)\n\
                 \x20   for (int t = 0; t < {}; ++t) {{\n\
                 \x20     const int ih = h0 + r, iw = w0 + t;\n\
                 \x20     if (ih < 0 || ih >= {ih} || iw < 0 || iw >= {iw}) continue;\n\
                 \x20     const float v = {x}(a, w, B, n, c, (unsigned)(ih * {iw} + iw));\n\
                 \x20     {acc}\n\
                 \x20   }}\n",
                p.stride[0], p.pad[0], p.stride[1], p.pad[1], p.kernel[0], p.kernel[1],
            );
            if p.kind == PoolKind::Avg {
                let _ = writeln!(t, "  s = s / {}.0f;", p.kernel[0] * p.kernel[1]);
            }
        }
        let _ = write!(
            t,
            "  a[{}ull * B + (size_t)n * {}ull + i] = {fin};\n}}\n",
            s.out.offset_per_image / 4,
            s.out.bytes_per_image / 4
        );
        let grid = [total.div_ceil(u64::from(THREADS)) as u32, 1];
        (t, launch(grid, 0))
    }
}

/// A fully connected step (the fused head when it averages globally).
pub struct Linear<'a> {
    pub input: &'a Input,
    pub step: &'a StepPlan<'a>,
    pub linear: &'a LinearOp,
    pub weight: u64,
    pub bias: Option<u64>,
}

impl Linear<'_> {
    pub fn emit(&self) -> Result<(String, CudaLaunch), String> {
        let (l, s) = (self.linear, self.step);
        let name = kernel_name(self.input);
        let x = &self.input.name;
        let cin = s.input.channels;
        let out = l.out_features;
        let plane = u64::from(s.input.height) * u64::from(s.input.width);
        let shared = u64::from(cin) * 4;
        if shared > MAX_SHARED {
            return Err(format!(
                "the CUDA head stages {cin} input channels in shared memory ({shared} bytes, at \
                 most {MAX_SHARED})"
            ));
        }
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n// {}: linear {cin} -> {out}{}, input {}x{}",
            s.label,
            if l.global_pool {
                " after a global average"
            } else {
                ""
            },
            s.input.height,
            s.input.width
        );
        t.push_str(&signature(name));
        let bias = match self.bias {
            Some(b) => format!("w[{b}u + o]"),
            None => "0.0f".into(),
        };
        let _ = write!(
            t,
            "  __shared__ float xs[{cin}];\n\
             \x20 const unsigned n = blockIdx.z;\n\
             \x20 const size_t B = batch;\n\
             \x20 for (unsigned c = threadIdx.x; c < {cin}u; c += {THREADS}u) {{\n\
             \x20   float s = 0.0f;\n\
             \x20   for (unsigned hw = 0; hw < {plane}u; ++hw) s += {x}(a, w, B, n, c, hw);\n\
             \x20   xs[c] = s / {plane}.0f;\n\
             \x20 }}\n\
             \x20 __syncthreads();\n\
             \x20 float* y = a + {}ull * B + (size_t)n * {}ull;\n\
             \x20 for (unsigned o = threadIdx.x; o < {out}u; o += {THREADS}u) {{\n\
             \x20   float acc = 0.0f;\n\
             \x20   for (unsigned c = 0; c < {cin}u; ++c) acc += w[{}ull + (size_t)c * {out}u + o] * xs[c];\n\
             \x20   y[o] = acc + {bias};\n\
             \x20 }}\n\
             }}\n",
            s.out.offset_per_image / 4,
            s.out.bytes_per_image / 4,
            self.weight,
        );
        Ok((t, launch([1, 1], 0)))
    }
}
