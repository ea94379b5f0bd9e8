//! The CUDA C text of each step, specialised to it: every shape, plan offset and weight
//! offset is a literal (`static constexpr` members of the step's description struct), so
//! NVRTC folds the index arithmetic. The kernel bodies are templates written once in
//! `prelude.cuh`, at the top of every generated file; each step adds a description struct
//! (with its input loader `x`) and an `extern "C"` kernel instantiating one template. Kernels take
//! `(float* arena, const float* weights, unsigned batch)`; buffer `b` of the step lives at
//! `arena + offset_per_image * batch` (in floats), image `n` at `+ n * floats_per_image`, and
//! grid x walks the work items of the whole batch. The same text compiles as C++ under `shim.h`, so it uses only
//! what the shim provides (`threadIdx`, `blockIdx`, `__shared__`, `__syncthreads`, `fmaxf`,
//! `INFINITY`) and every thread of a block reaches every `__syncthreads()`.
//!
//! Design:
//! - convolution: implicit GEMM over the pixels of the whole batch, with the tile `tile.rs`
//!   chooses (output channels x pixels per thread and per block, in-block split-K, slice
//!   depth); per k-slice the block stages the weight tile and the im2col input tile (pieces
//!   read in place, prologue applied while loading, zero padding after it) in shared memory
//!   while the next slice is loaded into registers; bias and ReLU in the epilogue. Two
//!   kernels when the latency tile (small batches, `NAME_small`) differs from the throughput
//!   tile (`NAME`).
//! - pool: one thread per output value, prologue per loaded value.
//! - linear (the fused head): one block per image; the prologued, globally averaged input is
//!   staged in shared memory, then each thread computes output features.
//!
//! Must not decide layouts or offsets (`mod.rs` and the plan do); only writes text.
//! `prelude.cuh` and the constants written here must agree on names.

use super::THREADS;
use super::tile::{self, ConvShape};
use crate::backend::steps::StepPlan;
use ir::op::{Combine, Conv2d, Linear as LinearOp, Pool as PoolOp, PoolKind};
use runtime::format::CudaLaunch;
use std::fmt::Write;

/// Shared memory a kernel may use statically.
const MAX_SHARED: u64 = 48 * 1024;

/// The kernel bodies, written once as templates over a step description `S` (a struct of
/// `static constexpr` shapes and offsets plus `S::x`, the input loader); each step's
/// `extern "C"` kernel instantiates one of them.
const PRELUDE: &str = include_str!("prelude.cuh");

/// The prologue of a reader: float offsets of scale and shift in the weights.
#[derive(Clone, Copy, Debug)]
pub struct Prologue {
    pub scale: u64,
    pub shift: u64,
    pub relu: bool,
}

/// Text from the source (model name, layer labels) made safe inside a `//` comment: printable
/// ASCII is kept except `\\` (a backslash before the line end would splice the next line of
/// code into the comment); every other character, newlines included, is written `<U+XXXX>`.
pub fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if (c == ' ' || c.is_ascii_graphic()) && c != '\\' {
                c.to_string()
            } else {
                format!("<U+{:04X}>", u32::from(c))
            }
        })
        .collect()
}

/// The file's first lines.
pub fn header(model: &str, steps: usize) -> String {
    let model = comment_text(model);
    format!(
        "// sparsec CUDA kernels for `{model}`: {steps} steps, one kernel each, launched in step\n\
         // order with (arena, weights, batch); grid z = batch.\n\
         // Generated code: every shape, arena offset and weight offset is a literal.\n{PRELUDE}"
    )
}

/// How a step reads its logical input: pieces, combine rule, prologue.
pub struct Input {
    /// The kernel's name; its step description is `NAME_t`.
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
            name: name.to_string(),
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

    /// The loaders of the step description: `raw(a, B, n, c, hw)`, the value of channel `c`
    /// at plane position `hw` of image `n` with the pieces combined (a concatenation picks its
    /// piece's address first, so the load itself is not inside a branch); `pro(w, c, v)`, the
    /// prologue (folded batch norm, ReLU) of channel `c` applied to it; and `x`, both. The
    /// convolutions load `raw` values a slice ahead and apply `pro` when they stage them, so
    /// no load waits on the arithmetic of another.
    fn emit(&self) -> String {
        let mut s = String::new();
        let hw = self.plane;
        s.push_str(
            "  static __device__ __forceinline__ float raw(const float* __restrict__ a, size_t B, \
             unsigned n, unsigned c, unsigned hw) {\n",
        );
        let at = |off: u64, per: u64, ch: &str| {
            format!("{off}ull * B + (size_t)n * {per}ull + (size_t)({ch}) * {hw}ull + hw")
        };
        match self.combine {
            Combine::Sum => {
                let terms: Vec<String> = self
                    .pieces
                    .iter()
                    .map(|&(_, off, per)| format!("a[{}]", at(off, per, "c")))
                    .collect();
                let _ = writeln!(s, "    return {};", terms.join("\n           + "));
            }
            Combine::Concat if self.pieces.len() == 1 => {
                let (_, off, per) = self.pieces[0];
                let _ = writeln!(s, "    return a[{}];", at(off, per, "c"));
            }
            Combine::Concat => {
                let _ = writeln!(s, "    size_t i;");
                let mut start = 0u32;
                let last = self.pieces.len() - 1;
                for (i, &(ch, off, per)) in self.pieces.iter().enumerate() {
                    let local = if start == 0 {
                        "c".to_string()
                    } else {
                        format!("c - {start}u")
                    };
                    let index = at(off, per, &local);
                    if i == 0 {
                        let _ = writeln!(s, "    if (c < {}u) i = {index};", start + ch);
                    } else if i == last {
                        let _ = writeln!(s, "    else i = {index};");
                    } else {
                        let _ = writeln!(s, "    else if (c < {}u) i = {index};", start + ch);
                    }
                    start += ch;
                }
                let _ = writeln!(s, "    return a[i];");
            }
        }
        s.push_str("  }\n");
        s.push_str(
            "  static __device__ __forceinline__ float pro(const float* __restrict__ w, \
             unsigned c, float v) {\n",
        );
        match self.prologue {
            Some(p) => {
                let _ = writeln!(s, "    v = v * w[{}u + c] + w[{}u + c];", p.scale, p.shift);
                if p.relu {
                    let _ = writeln!(s, "    v = fmaxf(v, 0.0f);");
                }
                s.push_str("    return v;\n");
            }
            None => s.push_str("    (void)w;\n    (void)c;\n    return v;\n"),
        }
        s.push_str("  }\n");
        s.push_str(
            "  static __device__ __forceinline__ float x(const float* __restrict__ a, const \
             float* __restrict__ w, size_t B, unsigned n, unsigned c, unsigned hw) {\n    \
             return pro(w, c, raw(a, B, n, c, hw));\n  }\n",
        );
        s
    }
}

/// A step description struct (`constants`, then the loader) and its `extern "C"` kernels,
/// each `(name, template instance)`, e.g. `("s001_conv", "sparsec_conv<s001_conv_t, ...>")`.
fn kernel(
    comment: &str,
    input: &Input,
    constants: &[String],
    instances: &[(String, String)],
) -> String {
    let name = &input.name;
    let comment = comment_text(comment);
    let mut t = String::new();
    let _ = writeln!(t, "\n// {comment}\nstruct {name}_t {{");
    for c in constants {
        let _ = writeln!(t, "  static constexpr {c};");
    }
    t.push_str(&input.emit());
    t.push_str("};\n");
    for (kernel, instance) in instances {
        let _ = write!(
            t,
            "extern \"C\" __global__ void __launch_bounds__({THREADS}) {kernel}(float* __restrict__ \
             a, const float* __restrict__ w, unsigned batch) {{\n  {instance}(a, w, batch);\n}}\n"
        );
    }
    t
}

/// A one-variant launch: `x_per_image` work items per image, `x_per_block` per block.
fn launch(kernel: &str, x_per_image: u64, x_per_block: u32) -> Result<CudaLaunch, String> {
    let x_per_image = u32::try_from(x_per_image)
        .map_err(|_| format!("{x_per_image} work items per image (at most 2^32 - 1)"))?;
    Ok(CudaLaunch {
        kernel: kernel.to_string(),
        up_to_batch: u32::MAX,
        x_per_image,
        x_per_block,
        grid_y: 1,
        block: THREADS,
        shared_bytes: 0,
    })
}

fn bias(b: Option<u64>) -> String {
    format!("long long BIAS = {}", b.map_or(-1, |b| b as i64))
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
    /// The step's text and its launch variants (`tile::variants`: a latency tile for small
    /// batches, then the throughput tile), or why the step cannot be launched.
    pub fn emit(&self) -> Result<(String, Vec<CudaLaunch>), String> {
        let (c, s) = (self.conv, self.step);
        let (ih, iw) = (s.input.height, s.input.width);
        let (oh, ow) = (s.output.height, s.output.width);
        let oc = c.out_channels;
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let p = u64::from(oh) * u64::from(ow);
        let shape = ConvShape {
            oc,
            pixels: u32::try_from(p).map_err(|_| format!("{p} output pixels per image"))?,
            k: s.input.channels * kh * kw,
            im2col: !(kh == 1 && kw == 1 && c.stride == [1, 1] && c.pad == [0, 0]),
            cin: s.input.channels,
            kernel: [kh, kw],
            out: [oh, ow],
            direct: c.stride == [1, 1] && kh * kw > 1,
        };
        let comment = format!(
            "{}: conv {kh}x{kw} stride {}x{} pad {}x{}, {} -> {oc} channels, {ih}x{iw} -> \
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
        let constants = [
            format!(
                "unsigned OC = {oc}, CIN = {}, IH = {ih}, IW = {iw}, OH = {oh}, OW = {ow}, \
                 KH = {kh}, KW = {kw}, SH = {}, SW = {}, PH = {}, PW = {}",
                s.input.channels, c.stride[0], c.stride[1], c.pad[0], c.pad[1]
            ),
            format!(
                "unsigned long long WEIGHT = {}, OUT = {}, OUT_PER_IMAGE = {}",
                self.weight,
                s.out.offset_per_image / 4,
                s.out.bytes_per_image / 4
            ),
            bias(self.bias),
            format!("bool RELU = {}", c.relu),
        ];
        let variants = tile::variants(&shape);
        let name = &self.input.name;
        let mut instances = Vec::new();
        let mut launches = Vec::new();
        for (i, (t, up_to)) in variants.iter().enumerate() {
            let kernel = if i + 1 == variants.len() {
                name.clone()
            } else {
                format!("{name}_small")
            };
            instances.push((kernel.clone(), t.instance(&format!("{name}_t"))));
            let (x_per_image, x_per_block, grid_y) = t.grid(&shape);
            launches.push(CudaLaunch {
                up_to_batch: *up_to,
                grid_y,
                ..launch(&kernel, x_per_image, x_per_block)?
            });
        }
        Ok((
            kernel(&comment, self.input, &constants, &instances),
            launches,
        ))
    }
}

/// A pooling step.
pub struct Pool<'a> {
    pub input: &'a Input,
    pub step: &'a StepPlan<'a>,
    pub pool: &'a PoolOp,
}

impl Pool<'_> {
    pub fn emit(&self) -> Result<(String, Vec<CudaLaunch>), String> {
        let (p, s) = (self.pool, self.step);
        let (ih, iw) = (s.input.height, s.input.width);
        let (oh, ow) = (s.output.height, s.output.width);
        let ch = s.input.channels;
        let total = u64::from(ch) * u64::from(oh) * u64::from(ow);
        let kind = match p.kind {
            PoolKind::Avg => "avg",
            PoolKind::Max => "max",
        };
        let comment = if p.global {
            format!(
                "{}: global {kind} pool, {ch} channels, {ih}x{iw} -> 1x1",
                s.label
            )
        } else {
            format!(
                "{}: {kind} pool {}x{} stride {}x{} pad {}x{}, {ch} channels, {ih}x{iw} -> \
                 {oh}x{ow}",
                s.label, p.kernel[0], p.kernel[1], p.stride[0], p.stride[1], p.pad[0], p.pad[1]
            )
        };
        let constants = [
            format!(
                "unsigned C = {ch}, IH = {ih}, IW = {iw}, OH = {oh}, OW = {ow}, KH = {}, KW = {}, \
                 SH = {}, SW = {}, PH = {}, PW = {}",
                p.kernel[0], p.kernel[1], p.stride[0], p.stride[1], p.pad[0], p.pad[1]
            ),
            format!(
                "unsigned long long OUT = {}, OUT_PER_IMAGE = {}",
                s.out.offset_per_image / 4,
                s.out.bytes_per_image / 4
            ),
            format!(
                "bool MAX = {}, GLOBAL = {}",
                p.kind == PoolKind::Max,
                p.global
            ),
        ];
        let name = &self.input.name;
        let text = kernel(
            &comment,
            self.input,
            &constants,
            &[(name.clone(), format!("sparsec_pool<{name}_t>"))],
        );
        Ok((text, vec![launch(name, total, THREADS)?]))
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
    pub fn emit(&self) -> Result<(String, Vec<CudaLaunch>), String> {
        let (l, s) = (self.linear, self.step);
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
        let comment = format!(
            "{}: linear {cin} -> {out}{}, input {}x{}",
            s.label,
            if l.global_pool {
                " after a global average"
            } else {
                ""
            },
            s.input.height,
            s.input.width
        );
        let constants = [
            format!("unsigned CIN = {cin}, OUTF = {out}, PLANE = {plane}"),
            format!(
                "unsigned long long WEIGHT = {}, OUT = {}, OUT_PER_IMAGE = {}",
                self.weight,
                s.out.offset_per_image / 4,
                s.out.bytes_per_image / 4
            ),
            bias(self.bias),
        ];
        let name = &self.input.name;
        let text = kernel(
            &comment,
            self.input,
            &constants,
            &[(name.clone(), format!("sparsec_linear<{name}_t>"))],
        );
        Ok((text, vec![launch(name, 1, 1)?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_text_keeps_code_out_of_comments() {
        assert_eq!(
            comment_text("block1.conv 3x3 (a<b>)"),
            "block1.conv 3x3 (a<b>)"
        );
        assert_eq!(
            comment_text("x\\\nint y;\r\u{e9}"),
            "x<U+005C><U+000A>int y;<U+000D><U+00E9>"
        );
    }

    /// A model name with a backslash, a carriage return and code in it: it stays on the
    /// comment line, and no comment line ends in a backslash (which would splice the next
    /// line of code into it).
    #[test]
    fn model_names_stay_inside_their_comment() -> Result<(), String> {
        let source = "model \"evil\r*/ int injected = 1; \\\\\"\ninput [3, 8, 8]\n\
            stem { conv0 = conv(4, kernel = 3, pad = 1) }\n\
            head { relu()\n global_avg_pool()\n fc = linear(2) }\n";
        let (graph, diagnostics) = crate::compile_source("evil", source);
        let graph = graph.ok_or_else(|| format!("{diagnostics:?}"))?;
        assert!(graph.name.contains('\r') && graph.name.ends_with('\\'));
        let opt =
            crate::driver::optimize(graph, &crate::driver::WeightsSource::Random(1), 1, false)
                .map_err(|e| e.to_string())?;
        let program =
            super::super::generate(&opt.graph, &opt.plan, true).map_err(|e| e.to_string())?;
        let text = &program.source;
        assert!(!text.contains('\r'), "a raw carriage return in the source");
        for line in text.lines() {
            if line.contains("injected") {
                assert!(line.starts_with("// "), "{line}");
            }
            if line.trim_start().starts_with("//") {
                assert!(
                    !line.ends_with('\\'),
                    "a comment line splices the next: {line}"
                );
            }
        }
        assert!(text.contains("evil<U+000D>*/ int injected = 1; <U+005C>"));
        Ok(())
    }
}
