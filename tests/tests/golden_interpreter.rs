//! The reference interpreter against the official PyTorch model: each golden model's `.snet`
//! source is compiled (lowering only, no passes), bound to the golden weights under their
//! official state-dict names, and run on the golden input; the output must match PyTorch's
//! float64 eval-mode forward within the golden tolerance (relative error 2e-4).
//!
//! This checks the front end, the lowering (topology, concat order, parameter names and
//! shapes), weight binding and the interpreter together. The `_optimized` variants run the
//! same check after the whole pass pipeline, so every pass is checked against PyTorch too.

use anyhow::{Context, Result, bail};
use ir::interp::{self, Tensor};
use sparsec::weights::{NamedTensor, bind_safetensors, load_tensors};
use std::path::PathBuf;
use std::time::Instant;

/// The golden tolerance (`shared/golden/README.md`).
const TOLERANCE: f64 = 2e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: PathBuf) -> Result<Vec<u8>> {
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn tensor(tensors: &[NamedTensor], name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let (_, shape, data) = tensors
        .iter()
        .find(|(n, _, _)| n == name)
        .with_context(|| format!("no tensor `{name}` in the io file"))?;
    Ok((shape.clone(), data.clone()))
}

/// Runs the golden check on the lowered graph, or (`optimized`) on the graph after the whole
/// pass pipeline with the verifier between passes.
fn check(name: &str, optimized: bool) -> Result<()> {
    let start = Instant::now();
    let source = String::from_utf8(read(repo().join(format!("examples/models/{name}.snet")))?)?;
    let (graph, diagnostics) = sparsec::compile_source(name, &source);
    let Some(mut graph) = graph else {
        bail!("{name}.snet does not compile: {diagnostics:?}");
    };
    let golden = repo().join("../shared/golden");
    bind_safetensors(
        &mut graph,
        &read(golden.join(format!("{name}.safetensors")))?,
    )
    .with_context(|| format!("binding {name}.safetensors"))?;
    if optimized {
        sparsec::passes::optimize(&mut graph, true)?;
    }
    let io = load_tensors(&read(golden.join(format!("{name}.io.safetensors")))?)?;
    let (in_shape, input) = tensor(&io, "input")?;
    let (out_shape, want) = tensor(&io, "output")?;
    let shape: [usize; 4] = in_shape
        .as_slice()
        .try_into()
        .with_context(|| format!("input shape {in_shape:?} is not NCHW"))?;
    let loaded = start.elapsed();

    let outputs = interp::run(&graph, &[Tensor { shape, data: input }])?;
    let [got] = outputs.as_slice() else {
        bail!("{name}: expected one output, got {}", outputs.len());
    };
    let [n, c, h, w] = got.shape;
    if [n, c * h * w] != out_shape.as_slice() {
        bail!(
            "{name}: output shape {:?}, reference {out_shape:?}",
            got.shape
        );
    }
    let error = interp::relative_error(&got.data, &want);
    eprintln!(
        "{name}{}: relative error {error:.3e} (load {:.2} s, interpret {:.2} s)",
        if optimized { " (optimised)" } else { "" },
        loaded.as_secs_f64(),
        (start.elapsed() - loaded).as_secs_f64()
    );
    if error.is_nan() || error >= TOLERANCE {
        bail!("{name}: relative error {error:.3e} is not below {TOLERANCE:e}");
    }
    Ok(())
}

#[test]
fn sparsenet_40_24() -> Result<()> {
    check("sparsenet-40-24", false)
}

#[test]
fn sparsenet_bc_100_24() -> Result<()> {
    check("sparsenet-bc-100-24", false)
}

#[test]
fn densenet_bc_100_12() -> Result<()> {
    check("densenet-bc-100-12", false)
}

#[test]
fn sparsenet_bc_1000_12() -> Result<()> {
    check("sparsenet-bc-1000-12", false)
}

#[test]
fn sparsenet_40_24_optimized() -> Result<()> {
    check("sparsenet-40-24", true)
}

#[test]
fn sparsenet_bc_100_24_optimized() -> Result<()> {
    check("sparsenet-bc-100-24", true)
}

#[test]
fn densenet_bc_100_12_optimized() -> Result<()> {
    check("densenet-bc-100-12", true)
}

#[test]
fn sparsenet_bc_1000_12_optimized() -> Result<()> {
    check("sparsenet-bc-1000-12", true)
}
