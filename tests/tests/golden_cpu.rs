//! The compiled CPU path against PyTorch: each golden model is compiled with its golden weights
//! to model.bin bytes, loaded by the runtime, and run on the golden input (batch 2): relative
//! error below 2e-4. Rows run alone (batch 1) and inside batches of 7 and 64 (with other random
//! rows) give exactly the batched result.

use anyhow::{Context, Result, bail};
use runtime::Model;
use sparsec::backend::cpu::{CpuOptions, Winograd};
use sparsec::driver::{self, WeightsSource};
use sparsec::weights::load_tensors;
use std::path::PathBuf;

const TOLERANCE: f64 = 2e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compile(name: &str, max_batch: u32, winograd: Winograd) -> Result<Vec<u8>> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let options = CpuOptions { winograd };
    let (_, bytes) = driver::compile_cpu_with(graph, &weights, max_batch, true, &options)?;
    Ok(bytes)
}

fn golden_io(name: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let path = repo().join(format!("../shared/golden/{name}.io.safetensors"));
    let io = load_tensors(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    let get = |n: &str| {
        io.iter()
            .find(|t| t.0 == n)
            .map(|t| t.2.clone())
            .context("io tensor")
    };
    Ok((get("input")?, get("output")?))
}

fn check(name: &str) -> Result<()> {
    let bytes = compile(name, 64, Winograd::default())?;
    let model = Model::from_bytes(&bytes)?;
    let (input, want) = golden_io(name)?;
    let mut session = model.session();
    let got = session.run(&input, 2)?.to_vec();
    let error = ir::interp::relative_error(&got, &want);
    eprintln!("{name}: compiled CPU relative error {error:.3e}");
    if error.is_nan() || error >= TOLERANCE {
        bail!("{name}: relative error {error:.3e} is not below {TOLERANCE:e}");
    }
    // Row independence: each golden row alone, and placed among other rows in bigger batches.
    let per_image = input.len() / 2;
    let classes = got.len() / 2;
    for row in 0..2 {
        let alone = session
            .run(&input[row * per_image..(row + 1) * per_image], 1)?
            .to_vec();
        if alone != got[row * classes..(row + 1) * classes] {
            bail!("{name}: row {row} at batch 1 differs from the batched result");
        }
    }
    for batch in [7usize, 64] {
        let mut x: Vec<f32> = (0..batch * per_image)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let place = batch - 1;
        x[place * per_image..(place + 1) * per_image].copy_from_slice(&input[..per_image]);
        let y = session.run(&x, batch)?;
        if y[place * classes..(place + 1) * classes] != got[..classes] {
            bail!("{name}: row 0 inside a batch of {batch} differs from the batched result");
        }
    }
    Ok(())
}

#[test]
fn sparsenet_40_24() -> Result<()> {
    check("sparsenet-40-24")
}

#[test]
fn sparsenet_bc_100_24() -> Result<()> {
    check("sparsenet-bc-100-24")
}

#[test]
fn densenet_bc_100_12() -> Result<()> {
    check("densenet-bc-100-12")
}

#[test]
fn sparsenet_bc_1000_12() -> Result<()> {
    check("sparsenet-bc-1000-12")
}

/// The Winograd choice reaches the kernels: on the most rounding-sensitive golden model every
/// choice is within the tolerance, and F(4x4) is further from PyTorch than F(2x2) and the
/// direct method (so the option is not ignored).
#[test]
fn winograd_choices_trade_rounding() -> Result<()> {
    let name = "sparsenet-bc-100-24";
    let (input, want) = golden_io(name)?;
    let mut errors = Vec::new();
    for winograd in [Winograd::F4x4, Winograd::F2x2, Winograd::Off] {
        let model = Model::from_bytes(&compile(name, 2, winograd)?)?;
        let got = model.session().run(&input, 2)?.to_vec();
        let error = ir::interp::relative_error(&got, &want);
        eprintln!("{name}, Winograd {winograd:?}: relative error {error:.3e}");
        if error.is_nan() || error >= TOLERANCE {
            bail!("{name} ({winograd:?}): relative error {error:.3e} is not below {TOLERANCE:e}");
        }
        errors.push(error);
    }
    if !(errors[0] > errors[1] && errors[0] > errors[2]) {
        bail!("{name}: errors {errors:?} for F(4x4), F(2x2), direct: F(4x4) is not the largest");
    }
    Ok(())
}
