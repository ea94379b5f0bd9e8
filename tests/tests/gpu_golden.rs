//! The golden models on a GPU (feature `gpu-tests`; needs NVRTC on `LD_LIBRARY_PATH` and an
//! NVIDIA driver with GPU 0): each is compiled for CUDA with its golden weights, loaded by the
//! runtime's CUDA executor and run on the golden input (batch 2): relative error below 2e-4
//! against PyTorch's float64 forward (the kernels are plain FP32: no TF32, no fast math).
//! Each golden row run alone (batch 1) and inside batches of 7 and 64 agrees with the batched
//! result within 1e-5 relative (the convolution tiles, and so the order of the sums, depend on
//! the batch size); replaying a graph again gives the same bits.
//!
//! Tensor cores (`--precision tf32|bf16`, [`tensor_cores`]): each golden model compiled at the
//! precision runs on the GPU against the reference interpreter on random weights, within the
//! shim suite's bound of eight operand roundings (`tests/tests/cuda_shim.rs`, whose emulation
//! measured about a tenth of it), and against PyTorch's float64 outputs with the golden
//! weights within the shim suite's golden bounds (0.1, 0.25); each error is printed beside
//! what the emulation measured (docs/cuda.md "Precisions"), which is how the hardware's
//! accumulation is compared with the emulation's.
#![cfg(feature = "gpu-tests")]

use anyhow::{Result, bail};
use runtime::Model;
use runtime::format::Backend;
use sparsec::backend::cuda::precision::Precision;
use sparsec::driver::{self, CompileOptions, Target, WeightsSource};
use std::path::PathBuf;

const TOLERANCE: f64 = 2e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(name: &str) -> Result<()> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let (_, bytes) = driver::compile_cuda(graph, &weights, 64, true)?;
    // Compiled just above, in this process: its kernels are ours to trust.
    let trusting = runtime::LoadOptions {
        allow_unsigned_code: true,
        ..Default::default()
    };
    let model = Model::from_bytes_with(&bytes, &trusting)?;
    assert_eq!(model.backend(), Backend::Cuda);
    let (input, want) = sparsec_tests::golden_io(name)?;
    let mut session = model.session();
    let got = session.run(&input, 2)?.to_vec();
    let error = ir::interp::relative_error(&got, &want);
    eprintln!("{name}: CUDA relative error {error:.3e}");
    if error.is_nan() || error >= TOLERANCE {
        bail!("{name}: relative error {error:.3e} is not below {TOLERANCE:e}");
    }
    let per_image = input.len() / 2;
    let classes = got.len() / 2;
    for row in 0..2 {
        let alone = session
            .run(&input[row * per_image..(row + 1) * per_image], 1)?
            .to_vec();
        if ir::interp::relative_error(&alone, &got[row * classes..(row + 1) * classes]) > 1e-5 {
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
        if ir::interp::relative_error(&y[place * classes..(place + 1) * classes], &got[..classes])
            > 1e-5
        {
            bail!("{name}: row 0 inside a batch of {batch} differs from the batched result");
        }
    }
    // Replaying a captured graph again gives the same answer.
    let again = session.run(&input, 2)?.to_vec();
    if again != got {
        bail!("{name}: a second replay at batch 2 differs");
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

/// A golden model compiled at `precision` with `weights`, loaded on the GPU.
fn compile_at(
    name: &str,
    weights: WeightsSource,
    precision: Precision,
) -> Result<(ir::Graph, Model)> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let options = CompileOptions {
        weights,
        target: Target::Cuda {
            archs: sparsec::backend::cuda::nvrtc::CUBIN_ARCHS
                .iter()
                .map(|a| a.to_string())
                .collect(),
            ptx: true,
            cache: false,
            precision,
        },
        max_batch: 64,
        verify: true,
    };
    let c = driver::compile(graph, &options)?;
    // Compiled just above, in this process: its kernels are ours to trust.
    let trusting = runtime::LoadOptions {
        allow_unsigned_code: true,
        ..Default::default()
    };
    Ok((c.opt.graph, Model::from_bytes_with(&c.bytes, &trusting)?))
}

/// [`compile_at`] and run: against the interpreter (random weights, batch 2) within eight
/// operand roundings, and against the golden outputs within `golden_bound`.
fn check_at(name: &str, precision: Precision, golden_bound: f64) -> Result<()> {
    let (graph, model) = compile_at(name, WeightsSource::Random(7), precision)?;
    let (x, want) = sparsec_tests::reference_run(&graph, 2, 11)?;
    let got = model.session().run(&x, 2)?.to_vec();
    let error = ir::interp::relative_error(&got, &want);
    let bound = 8.0 * precision.unit_roundoff();
    eprintln!(
        "{name} at {precision}: GPU vs interpreter relative error {error:.3e} (bound {bound:.1e})"
    );
    if error.is_nan() || error > bound {
        bail!("{name} at {precision}: relative error {error:.3e} above {bound:e}");
    }
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let (_, model) = compile_at(name, weights, precision)?;
    let (input, want) = sparsec_tests::golden_io(name)?;
    let got = model.session().run(&input, 2)?.to_vec();
    let error = ir::interp::relative_error(&got, &want);
    eprintln!("{name} at {precision}: GPU vs PyTorch (golden) relative error {error:.3e}");
    if error.is_nan() || error > golden_bound {
        bail!("{name} at {precision}: golden relative error {error:.3e} above {golden_bound:e}");
    }
    Ok(())
}

/// The golden models at TF32 and BF16 on tensor cores (BF16 with its BF16 buffers).
mod tensor_cores {
    use super::*;

    macro_rules! precision_tests {
        ($($name:ident: $model:literal),* $(,)?) => {
            $(
                #[test]
                fn $name() -> Result<()> {
                    check_at($model, Precision::Tf32, 0.1)?;
                    check_at($model, Precision::Bf16, 0.25)
                }
            )*
        };
    }

    precision_tests!(
        sparsenet_40_24: "sparsenet-40-24",
        sparsenet_bc_100_24: "sparsenet-bc-100-24",
        densenet_bc_100_12: "densenet-bc-100-12",
    );
}
