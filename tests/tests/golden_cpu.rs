//! The compiled CPU path against PyTorch: each golden model is compiled with its golden weights
//! and the default (accuracy-guarded) options to model.bin bytes, loaded by the runtime, and run
//! on the golden input (batch 2): relative error below 5e-5, printed beside ONNX Runtime's and
//! OpenVINO's on the same file. Rows run alone (batch 1) and inside batches of 7 and 64 (with
//! other random rows) give exactly the batched result. The explicit `--winograd` choices stay
//! within the project's 2e-4 bar, and the accuracy guard demotes the layers that round too much.

use anyhow::{Context, Result, bail};
use runtime::Model;
use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, WeightsSource};
use sparsec::driver::{CompileOptions, Target};
use sparsec::kernel_select::KernelPolicy;
use sparsec::kernel_select::KernelSelection;
use std::path::PathBuf;

/// Every explicit kernel choice, however lossy, must stay within this.
const TOLERANCE: f64 = 2e-4;
/// The default options must give this (the accuracy class of ORT and OpenVINO, whose errors
/// on these files are 6e-7 to 4.2e-5).
const DEFAULT_TOLERANCE: f64 = 5e-5;

/// The peers' relative errors against the same golden outputs (ONNX Runtime 1.31.1 and OpenVINO
/// 2026.4.1 with `INFERENCE_PRECISION_HINT=f32`, on `../shared/golden/NAME.onnx`, batch 2),
/// as measured by the peer benchmark's correctness gate; printed for comparison only.
const PEER_ERRORS: [(&str, f64, f64); 4] = [
    ("sparsenet-40-24", 7.9e-7, 1.4e-6),
    ("sparsenet-bc-100-24", 2.5e-5, 4.2e-5),
    ("densenet-bc-100-12", 6.4e-7, 8.4e-7),
    ("sparsenet-bc-1000-12", 1.4e-6, 1.3e-6),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compile(name: &str, max_batch: u32, policy: KernelPolicy) -> Result<Vec<u8>> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let (_, bytes) = driver::compile_cpu_with(graph, &weights, max_batch, true, &policy)?;
    Ok(bytes)
}

fn check(name: &str) -> Result<()> {
    let bytes = compile(name, 64, KernelPolicy::default())?;
    let model = Model::from_bytes(&bytes)?;
    let (input, want) = sparsec_tests::golden_io(name)?;
    let mut session = model.session();
    let got = session.run(&input, 2)?.to_vec();
    let error = ir::interp::relative_error(&got, &want);
    let (ort, openvino) = PEER_ERRORS
        .iter()
        .find(|p| p.0 == name)
        .map_or((f64::NAN, f64::NAN), |p| (p.1, p.2));
    eprintln!(
        "{name}: relative error against PyTorch float64: sparsec {error:.2e}, \
         ONNX Runtime {ort:.2e}, OpenVINO {openvino:.2e}"
    );
    if error.is_nan() || error >= DEFAULT_TOLERANCE {
        bail!("{name}: relative error {error:.3e} is not below {DEFAULT_TOLERANCE:e}");
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
    let (input, want) = sparsec_tests::golden_io(name)?;
    let mut errors = Vec::new();
    for winograd in [Winograd::F4x4, Winograd::F2x2, Winograd::Off] {
        let model = Model::from_bytes(&compile(name, 2, KernelPolicy::Fixed(winograd))?)?;
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

/// The accuracy guard at work on the model whose weights make F(4x4) lossy: by default some
/// layers get a more accurate kernel than F(4x4) and the measured error is within the budget;
/// a loose `--tolerance` keeps F(4x4) wherever it applies; a tolerance below what any kernel
/// reaches keeps the most accurate build measured and says the budget was not met.
#[test]
fn accuracy_guard_demotes_lossy_layers() -> Result<()> {
    let name = "sparsenet-bc-100-24";
    let select = |tolerance: Option<f64>| -> Result<KernelSelection> {
        let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
        let weights =
            WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
        let mut options = CompileOptions::cpu(weights, 2);
        options.target = Target::Cpu(KernelPolicy::Guarded {
            tolerance,
            calibration: None,
        });
        driver::compile(graph, &options)?
            .selection
            .context("the guard measured nothing on a model with Winograd-eligible layers")
    };
    let fastest = |s: &KernelSelection| s.convs.iter().all(|c| c.kernel == c.fastest);

    let default = select(None)?;
    eprintln!("default: {default}");
    let direct = default
        .direct_error
        .context("the default budget measures direct")?;
    if !default.met || default.error > default.budget.limit() || fastest(&default) {
        bail!("default: expected a demoted, within-budget choice, got {default}");
    }
    if default.error > 2.0 * direct {
        bail!(
            "default: error {:.2e} is more than 2x direct's {direct:.2e}",
            default.error
        );
    }

    let loose = select(Some(1e-2))?;
    eprintln!("--tolerance 1e-2: {loose}");
    if !fastest(&loose) || !loose.met {
        bail!("--tolerance 1e-2 should keep the fastest kernel everywhere: {loose}");
    }

    let impossible = select(Some(1e-9))?;
    eprintln!("--tolerance 1e-9: {impossible}");
    if impossible.met {
        bail!("a 1e-9 budget cannot be met by float32 kernels: {impossible}");
    }
    if impossible.error > direct * 1.000_001 {
        bail!("the unmet budget must keep the most accurate build: {impossible}");
    }
    Ok(())
}
