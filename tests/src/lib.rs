//! End-to-end test helpers shared by the suites in `tests/tests/` and the peer benchmark: test
//! data, and the damping that keeps deep sum-aggregated models finite on random weights.
//!
//! Must not hold assertions of its own: the suites decide what they check.

pub mod fuzz_entry;

use anyhow::{Context, Result, ensure};
use ir::interp::{self, Tensor};
use std::path::PathBuf;

/// Deterministic uniform floats in [-1, 1) (splitmix64), non-zero with probability ~1.
pub use ir::interp::random_input;

/// Deep sum-aggregated networks (SparseNet[+] at depth 1001 and 2000) add hundreds of unit
/// outputs: with uncalibrated random weights the activations overflow float32. Scale each
/// unit's last convolution down (as Fixup / zero-init-residual do for trained ResNets) so the
/// output stays finite and a comparison means something. Other graphs are left as they are.
pub fn damp_summed_branches(graph: &mut ir::Graph) {
    if !graph.name.starts_with("sparsenet-plus") {
        return;
    }
    let ids: Vec<_> = graph
        .params
        .iter()
        .filter(|(_, p)| p.name.ends_with(".conv3.weight"))
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        let p = graph.params.get_mut(id);
        if let Some(data) = &p.data {
            let damped: Vec<f32> = data.iter().map(|v| v * 0.05).collect();
            p.data = Some(damped.into());
        }
    }
}

/// A random input batch for `graph` (seed `seed`) and the reference interpreter's output on it;
/// an error when that output is all zero or not finite (a comparison with it would mean
/// nothing).
pub fn reference_run(graph: &ir::Graph, batch: usize, seed: u64) -> Result<(Vec<f32>, Vec<f32>)> {
    let t = graph.node(graph.inputs()[0]).ty;
    let shape = [
        batch,
        t.channels as usize,
        t.height as usize,
        t.width as usize,
    ];
    let x = random_input(shape.iter().product(), seed);
    let want = interp::run(
        graph,
        &[Tensor {
            shape,
            data: x.clone(),
        }],
    )?;
    let want = want.into_iter().next().map(|t| t.data).unwrap_or_default();
    let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    ensure!(
        scale > 0.0 && scale.is_finite(),
        "{}: reference output zero or not finite",
        graph.name
    );
    Ok((x, want))
}

/// A golden model's input and PyTorch's float64 output on it (`../shared/golden/NAME.io.safetensors`
/// beside the clone; batch 2).
pub fn golden_io(name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../shared/golden/{name}.io.safetensors"));
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let io = sparsec::weights::load_tensors(&bytes)?;
    let get = |n: &str| {
        io.iter()
            .find(|t| t.0 == n)
            .map(|t| t.2.clone())
            .with_context(|| format!("{}: no tensor `{n}`", path.display()))
    };
    Ok((get("input")?, get("output")?))
}
