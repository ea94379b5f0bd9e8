//! Which activation buffers a CUDA model stores in BF16 (`--precision bf16`): the plan's
//! element type per buffer, decided from the precision every convolution got
//! (`precision::decide`). A reader *rounds to BF16* when it is a convolution on BF16 tensor
//! cores (it rounds every value it stages to BF16), or a pool whose own output is stored in
//! BF16 (what it computes is rounded to BF16 when written, and every reader of that rounds
//! again). A buffer is BF16 when every reader of it rounds to BF16: storing it so costs one
//! more rounding of the same size (before the batch-norm prologue, or before the pooling,
//! instead of after) and halves its traffic and its bytes in the arena. A buffer that an FP32
//! convolution, an FP32 pool or the head reads stays FP32, as do the model's input and output
//! (the caller's f32 tensors, pinned for the whole run). The arena is then placed again with
//! the new sizes (`memory::with_elements`).
//!
//! Owns the rule only; must not change the graph, the schedule or the lifetimes, and decides
//! nothing about kernels (`kernels.rs` picks each step's BF16-capable instance from the
//! result).

use super::precision::Precision;
use crate::backend::steps::StepPlan;
use crate::plan::memory::MemoryPlan;
use ir::Op;
use runtime::format::Element;

/// The element type of every buffer of `plan` (in its order), given the steps of the graph
/// under `plan` in schedule order and the precision each got (`precisions[i]` for
/// `steps[i]`; FP32 for any step that is not a convolution).
pub fn decide(steps: &[StepPlan<'_>], precisions: &[Precision], plan: &MemoryPlan) -> Vec<Element> {
    let buffers = &plan.liveness.buffers;
    let mut elements = vec![Element::F32; buffers.len()];
    // Per buffer, the steps that read it.
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); buffers.len()];
    for (i, step) in steps.iter().enumerate() {
        for piece in &step.pieces {
            if let Some(r) = readers.get_mut(piece.buffer.index as usize) {
                r.push(i);
            }
        }
    }
    // Steps in reverse: a step's output is read only by later steps, so whether a pool reader
    // rounds to BF16 (its own output's element) is known when its input is decided.
    for step in steps.iter().rev() {
        let out = step.out.index as usize;
        let Some(b) = buffers.get(out) else {
            continue;
        };
        // A convolution or a pool can write BF16; the head writes the model's output.
        let writable = matches!(step.op, Op::Conv2d(_) | Op::Pool(_));
        let rounds = |&r: &usize| match steps[r].op {
            Op::Conv2d(_) => precisions.get(r) == Some(&Precision::Bf16),
            Op::Pool(_) => elements.get(steps[r].out.index as usize) == Some(&Element::Bf16),
            _ => false,
        };
        if writable && !b.pinned && !readers[out].is_empty() && readers[out].iter().all(rounds) {
            elements[out] = Element::Bf16;
        }
    }
    elements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{self, WeightsSource};
    use ir::Graph;

    fn model(name: &str) -> Result<Graph, String> {
        let path = format!(
            "{}/../examples/models/{name}.snet",
            env!("CARGO_MANIFEST_DIR")
        );
        let source = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let (graph, diagnostics) = crate::compile_source(name, &source);
        let graph = graph.ok_or_else(|| format!("{diagnostics:?}"))?;
        let opt = driver::optimize(graph, &WeightsSource::Random(1), 1, false)
            .map_err(|e| e.to_string())?;
        Ok(opt.graph)
    }

    /// The rule, checked from the program's side on models with pools between blocks: a
    /// buffer is BF16 exactly when it is not pinned, its writer is a convolution or a pool,
    /// and every step reading it is a BF16 convolution or a pool writing BF16; at FP32 and
    /// TF32 nothing is narrowed and the plan is the caller's.
    #[test]
    fn a_buffer_is_bf16_exactly_when_every_reader_rounds_to_bf16() -> Result<(), String> {
        for name in [
            "densenet-bc-100-12",
            "sparsenet-bc-100-24",
            "sparsenet-121-32",
        ] {
            let graph = model(name)?;
            let plan = crate::plan::memory::plan(&graph, 1).ok_or("cycle")?;
            for p in [Precision::Fp32, Precision::Tf32] {
                let program = super::super::generate_with(&graph, &plan, false, p)
                    .map_err(|e| e.to_string())?;
                assert!(
                    program
                        .plan
                        .liveness
                        .buffers
                        .iter()
                        .all(|b| b.element == Element::F32)
                );
                assert_eq!(program.plan.arena, plan.arena, "{name} {p}");
            }
            let program = super::super::generate_with(&graph, &plan, false, Precision::Bf16)
                .map_err(|e| e.to_string())?;
            let narrowed = &program.plan;
            let steps =
                crate::backend::steps::analyze(&graph, narrowed).map_err(|e| e.to_string())?;
            let element = |b: u32| narrowed.liveness.buffers[b as usize].element;
            let mut bf16 = 0;
            for (i, b) in narrowed.liveness.buffers.iter().enumerate() {
                let i = i as u32;
                let writer = steps.iter().position(|s| s.out.index == i);
                let readers: Vec<usize> = (0..steps.len())
                    .filter(|&s| steps[s].pieces.iter().any(|p| p.buffer.index == i))
                    .collect();
                let rounds = |&s: &usize| match steps[s].op {
                    Op::Conv2d(_) => program.precisions.get(&s) == Some(&Precision::Bf16),
                    Op::Pool(_) => element(steps[s].out.index) == Element::Bf16,
                    _ => false,
                };
                let want = !b.pinned
                    && writer.is_some_and(|w| matches!(steps[w].op, Op::Conv2d(_) | Op::Pool(_)))
                    && !readers.is_empty()
                    && readers.iter().all(rounds);
                assert_eq!(b.element == Element::Bf16, want, "{name} b{i}");
                // The size follows the element.
                let values = graph.node(b.node).ty.elements();
                assert_eq!(b.bytes_per_image, values * b.element.bytes(), "{name} b{i}");
                bf16 += usize::from(want);
            }
            assert!(bf16 > 0, "{name}: nothing narrowed");
            assert!(
                narrowed.arena.arena_bytes < plan.arena.arena_bytes,
                "{name}"
            );
            crate::plan::arena::verify(
                &crate::plan::memory::requests(&narrowed.liveness, 1),
                &narrowed.arena,
            )
            .map_err(|e| format!("{name}: {e:?}"))?;
        }
        Ok(())
    }
}
