//! The CUDA C text of a model: the kernel bodies are templates written once in `prelude.cuh`
//! (at the top of every generated file), and the file instantiates each one only for the
//! configurations the model's steps use (a convolution tile and kernel size, the pool, the
//! head), so steps with the same tile share one `extern "C"` kernel. Everything that differs
//! between steps (shapes, plan offsets, weight offsets, the piece table of a concatenated
//! input, flags) reaches a kernel at run time as its step's record in the descriptor table
//! (`runtime::cuda::table`, built by the runtime from the validated file), passed as the
//! fourth argument: kernels take `(float* arena, const float* weights, unsigned batch, const
//! unsigned long long* step)`. A comment lists each step with the kernels it launches. The same
//! text compiles as C++ under `shim.h`, so it uses only what the shim provides (`threadIdx`,
//! `blockIdx`, `__shared__`, `__syncthreads`, `fmaxf`, `INFINITY`) and every thread of a block
//! reaches every `__syncthreads()`.
//!
//! Design:
//! - convolution: implicit GEMM over the pixels of the whole batch, with the tile `tile.rs`
//!   chooses (output channels x pixels per thread and per block, in-block split-K, slice
//!   depth), or the direct kernel for stride-1 spatial convolutions; the kernel size is a
//!   template argument (the tap loops unroll), the rest is read from the step's record. Two
//!   launch variants when the latency tile (small batches) differs from the throughput tile.
//! - pool: one thread per output value, prologue per loaded value.
//! - linear (the fused head): one block per image; the prologued, globally averaged input is
//!   staged in shared memory, then each thread computes output features.
//!
//! Must not decide layouts or offsets (`mod.rs` and the plan do); only writes text and names
//! kernels. `prelude.cuh` and the names written here must agree.

use super::THREADS;
use super::precision::{self, Precision};
use super::tile::{self, ConvShape, ConvTile};
use crate::backend::steps::StepPlan;
use ir::op::{Combine, Conv2d, Linear as LinearOp, Pool as PoolOp, PoolKind};
use runtime::format::CudaLaunch;
use runtime::format::Element;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The most input channels the head kernel stages in shared memory
/// (`SPARSEC_LINEAR_MAX_IN`, `runtime::cuda::table::LINEAR_MAX_IN`).
const LINEAR_MAX_IN: u32 = runtime::cuda::table::LINEAR_MAX_IN;

/// The kernel bodies, written once as templates; the file instantiates them.
const PRELUDE: &str = include_str!("prelude.cuh");

/// The tensor-core templates (`precision.rs`), written after the prelude when a step uses them.
const MMA: &str = include_str!("mma.cuh");

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

/// The kernels a model needs, by name (sorted, so the text is deterministic), and one comment
/// line per step.
#[derive(Default)]
pub struct Source {
    kernels: BTreeMap<String, String>,
    steps: String,
    /// The precision of each convolution step that got a tensor-core one (`precision.rs`).
    pub precisions: BTreeMap<usize, Precision>,
    /// The plan stores some buffer in BF16 (`storage.rs`): every convolution and pool uses its
    /// kernels' BF16-capable instances (`_h`; they read each record's flags, so one instance
    /// serves FP32 and BF16 buffers and the program holds no second copy of a kernel).
    pub bf16_storage: bool,
}

impl Source {
    /// Records a kernel `name` calling `body` (a template instance), once.
    fn kernel(&mut self, name: &str, body: String) {
        self.kernels.entry(name.to_string()).or_insert(body);
    }

    /// Records step `index`'s comment line and the kernels it launches.
    fn step(&mut self, index: usize, comment: &str, launches: &[CudaLaunch]) {
        let names: Vec<&str> = launches.iter().map(|l| l.kernel.as_str()).collect();
        let _ = writeln!(
            self.steps,
            "// s{index:03} {}\n//      -> {}",
            comment_text(comment),
            names.join(", ")
        );
    }

    /// The whole file.
    pub fn finish(&self, model: &str) -> String {
        let model = comment_text(model);
        let mut s = format!(
            "// sparsec CUDA kernels for `{model}`: {} kernels shared by the steps below, each \
             launched\n// with (arena, weights, batch, step record); grid z = batch. Shapes and \
             offsets come\n// from the step's record in the runtime's descriptor table, not \
             from this text.\n{PRELUDE}{}\n// ---- steps ----\n{}\n// ---- kernels ----\n",
            self.kernels.len(),
            if self.precisions.is_empty() { "" } else { MMA },
            self.steps
        );
        for (name, body) in &self.kernels {
            let _ = write!(
                s,
                "extern \"C\" __global__ void __launch_bounds__({THREADS}) {name}(float* \
                 __restrict__ a, const float* __restrict__ w, unsigned batch, const \
                 sparsec_u64* __restrict__ d) {{\n  {body}(a, w, batch, d);\n}}\n"
            );
        }
        s
    }
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

/// The kernel name and template instance of a convolution tile for a `kh` x `kw` kernel
/// (`pointwise`: 1x1, stride 1, no padding, read without im2col arithmetic; `sum`: the input
/// is a sum of pieces; `bf16_out`: the instance that may write a BF16 output buffer, named
/// with a trailing `_h`).
fn conv_kernel(
    t: &ConvTile,
    kh: u32,
    kw: u32,
    pointwise: bool,
    sum: bool,
    bf16_out: bool,
) -> (String, String) {
    let s = if sum { "s" } else { "" };
    let h = if bf16_out { "_h" } else { "" };
    match t {
        ConvTile::Gemm(t) => (
            format!(
                "k_conv{kh}x{kw}{}{s}_{}_{}_{}_{}_{}_{}{h}",
                if pointwise { "p" } else { "" },
                t.tm,
                t.wm,
                t.tn,
                t.wn,
                t.ks,
                t.bk
            ),
            format!(
                "sparsec_conv<{}, {kh}, {kw}, {pointwise}, {sum}, {bf16_out}>",
                t.cpp()
            ),
        ),
        ConvTile::Direct(t) => (
            format!(
                "k_direct{kh}x{kw}{s}_{}_{}_{}_{}_{}_{}{h}",
                t.tm, t.wm, t.tn, t.wn, t.tw, t.cb
            ),
            format!(
                "sparsec_conv_direct<{}, {kh}, {kw}, {sum}, {bf16_out}>",
                t.cpp()
            ),
        ),
    }
}

/// A convolution step.
pub struct Conv<'a> {
    pub step: &'a StepPlan<'a>,
    pub conv: &'a Conv2d,
    /// The precision the layer got (`precision::decide`).
    pub precision: Precision,
}

/// The comment's note on a step's BF16 buffers (`storage.rs`): empty when it has none.
fn storage_note(step: &StepPlan<'_>) -> String {
    let pieces = step
        .pieces
        .iter()
        .filter(|p| p.buffer.element == Element::Bf16)
        .count();
    let mut note = String::new();
    if pieces > 0 {
        note += &format!(", {pieces} bf16 piece(s)");
    }
    if step.out.element == Element::Bf16 {
        note += ", bf16 output";
    }
    note
}

/// Whether a step reads or writes a BF16 buffer.
fn touches_bf16(step: &StepPlan<'_>) -> bool {
    step.out.element == Element::Bf16
        || step
            .pieces
            .iter()
            .any(|p| p.buffer.element == Element::Bf16)
}

impl Conv<'_> {
    /// The convolution as `tile.rs`'s cost model sees it.
    pub fn shape(&self) -> Result<ConvShape, String> {
        let (c, s) = (self.conv, self.step);
        let (oh, ow) = (s.output.height, s.output.width);
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let p = u64::from(oh) * u64::from(ow);
        let pointwise = kh == 1 && kw == 1 && c.stride == [1, 1] && c.pad == [0, 0];
        Ok(ConvShape {
            oc: c.out_channels,
            pixels: u32::try_from(p).map_err(|_| format!("{p} output pixels per image"))?,
            k: s.input.channels * kh * kw,
            im2col: !pointwise,
            cin: s.input.channels,
            kernel: [kh, kw],
            out: [oh, ow],
            direct: c.stride == [1, 1] && kh * kw > 1,
        })
    }

    /// Records the step's kernels in `src`; its launch variants (`tile::variants`: a latency
    /// tile for small batches, then the throughput tile), or why the step cannot be launched.
    pub fn emit(&self, index: usize, src: &mut Source) -> Result<Vec<CudaLaunch>, String> {
        let (c, s) = (self.conv, self.step);
        let (ih, iw) = (s.input.height, s.input.width);
        let (oh, ow) = (s.output.height, s.output.width);
        let oc = c.out_channels;
        let (kh, kw) = (c.kernel[0], c.kernel[1]);
        let pointwise = !self.shape()?.im2col;
        let sum = c.access.combine == Combine::Sum;
        let shape = self.shape()?;
        let half = src.bf16_storage;
        let comment = format!(
            "{}: conv {kh}x{kw} stride {}x{} pad {}x{}, {} -> {oc} channels, {ih}x{iw} -> \
             {oh}x{ow}, {} piece(s){}{}{}",
            s.label,
            c.stride[0],
            c.stride[1],
            c.pad[0],
            c.pad[1],
            s.input.channels,
            s.pieces.len(),
            if c.bias.is_some() { ", bias" } else { "" },
            if c.relu { ", relu" } else { "" },
            storage_note(s),
        );
        // Tensor cores, when the layer got them (`precision::decide`).
        if let Some((p, mma)) =
            precision::emit_conv(&shape, self.precision, kh, kw, pointwise, sum, half)?
        {
            let launches: Vec<CudaLaunch> = mma
                .into_iter()
                .map(|(name, body, l)| {
                    src.kernel(&name, body);
                    l
                })
                .collect();
            src.precisions.insert(index, p);
            src.step(index, &format!("{comment}, {p}"), &launches);
            return Ok(launches);
        }
        if s.pieces.iter().any(|p| p.buffer.element == Element::Bf16) {
            return Err(
                "an FP32 convolution reading a BF16 buffer (the plan keeps every \
                        buffer an FP32 layer reads in FP32)"
                    .into(),
            );
        }
        let mut launches = Vec::new();
        for (t, up_to) in tile::variants(&shape) {
            let (name, body) = conv_kernel(&t, kh, kw, pointwise, sum, half);
            src.kernel(&name, body);
            let (x_per_image, x_per_block, grid_y) = t.grid(&shape);
            launches.push(CudaLaunch {
                up_to_batch: up_to,
                grid_y,
                ..launch(&name, x_per_image, x_per_block)?
            });
        }
        src.step(index, &comment, &launches);
        Ok(launches)
    }
}

/// A pooling step.
pub struct Pool<'a> {
    pub step: &'a StepPlan<'a>,
    pub pool: &'a PoolOp,
}

impl Pool<'_> {
    pub fn emit(&self, index: usize, src: &mut Source) -> Result<Vec<CudaLaunch>, String> {
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
                "{}: global {kind} pool, {ch} channels, {ih}x{iw} -> 1x1{}",
                s.label,
                storage_note(s)
            )
        } else {
            format!(
                "{}: {kind} pool {}x{} stride {}x{} pad {}x{}, {ch} channels, {ih}x{iw} -> \
                 {oh}x{ow}{}",
                s.label,
                p.kernel[0],
                p.kernel[1],
                p.stride[0],
                p.stride[1],
                p.pad[0],
                p.pad[1],
                storage_note(s)
            )
        };
        let (name, body) = if src.bf16_storage {
            ("k_pool_h", "sparsec_pool<true>")
        } else {
            ("k_pool", "sparsec_pool<false>")
        };
        src.kernel(name, body.into());
        let launches = vec![launch(name, total, THREADS)?];
        src.step(index, &comment, &launches);
        Ok(launches)
    }
}

/// A fully connected step (the fused head when it averages globally).
pub struct Linear<'a> {
    pub step: &'a StepPlan<'a>,
    pub linear: &'a LinearOp,
}

impl Linear<'_> {
    pub fn emit(&self, index: usize, src: &mut Source) -> Result<Vec<CudaLaunch>, String> {
        let (l, s) = (self.linear, self.step);
        let cin = s.input.channels;
        let out = l.out_features;
        if touches_bf16(s) {
            return Err(
                "a head reading or writing a BF16 buffer (the plan keeps them FP32)".into(),
            );
        }
        if cin > LINEAR_MAX_IN {
            return Err(format!(
                "the CUDA head stages {cin} input channels in shared memory (at most \
                 {LINEAR_MAX_IN})"
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
        src.kernel("k_linear", "sparsec_linear".into());
        let launches = vec![launch("k_linear", 1, 1)?];
        src.step(index, &comment, &launches);
        Ok(launches)
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

    /// The cost model's total time of a golden model's convolutions, at batch 1 and 256, with
    /// the tile menu and with the free per-layer choice it replaced: the menu costs at most 2%
    /// (`cargo test -p sparsec --lib tile_menu -- --nocapture` prints the table).
    #[test]
    fn the_tile_menu_costs_the_golden_models_little() -> Result<(), String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/models");
        for model in [
            "sparsenet-40-24",
            "densenet-bc-100-12",
            "sparsenet-bc-100-24",
            "sparsenet-bc-1000-12",
        ] {
            let source = std::fs::read_to_string(format!("{dir}/{model}.snet"))
                .map_err(|e| e.to_string())?;
            let (graph, diagnostics) = crate::compile_source(model, &source);
            let graph = graph.ok_or_else(|| format!("{diagnostics:?}"))?;
            let opt =
                crate::driver::optimize(graph, &crate::driver::WeightsSource::Random(1), 1, false)
                    .map_err(|e| e.to_string())?;
            let plans =
                crate::backend::steps::analyze(&opt.graph, &opt.plan).map_err(|e| e.to_string())?;
            let mut line = format!("{model}:");
            for batch in [1, tile::THROUGHPUT_BATCH] {
                let (mut menu, mut free) = (0.0, 0.0);
                for step in &plans {
                    if let ir::Op::Conv2d(conv) = step.op {
                        let s = Conv {
                            step,
                            conv,
                            precision: Precision::Fp32,
                        }
                        .shape()?;
                        let cost = |t: ConvTile| t.cycles(&s, batch).unwrap_or(f64::INFINITY);
                        menu += cost(tile::best(&s, batch));
                        free += cost(tile::best_free(&s, batch));
                    }
                }
                let ratio = menu / free;
                line += &format!(" batch {batch}: {menu:.3e} / {free:.3e} cycles = {ratio:.4}");
                assert!(ratio <= 1.02, "{line}");
            }
            println!("{line}");
        }
        Ok(())
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
