//! The compiled CPU path against the reference interpreter on every example model: each model
//! is bound to random weights (damped for the deep sum-aggregated ones), compiled to model.bin
//! bytes, loaded by the runtime and run on random non-zero input; its output is compared with
//! `ir::interp` on the same optimised graph (relative error ≤ 2e-4), with one thread and with
//! two (each convolution split between them, or images tiled across them). The golden suite
//! (`golden_cpu.rs`) checks the four golden models against PyTorch; this one covers every
//! shape the examples have, so each kernel variant the compiler picks (Winograd F(4x4) and
//! F(2x2), direct, strided, matrix products, pools) meets the reference somewhere. The kernels
//! are forced to their fastest choice (`--winograd 4x4`) rather than left to the accuracy
//! guard, so every Winograd-eligible layer runs F(4x4) here.
//!
//! The feature extractors of `tests/models/` (no head: the last stage is a block, possibly
//! followed by a batch norm and ReLU; issue 12) run the same way at batches 1 and 3, and their
//! output must have the block output's `[C, H, W]` per image, as the runtime reports it.

use anyhow::{Result, ensure};
use ir::interp;
use runtime::Model;
use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec_tests::{damp_summed_branches, reference_run};
use std::path::PathBuf;

const TOLERANCE: f64 = 2e-4;

fn check(name: &str, batch: usize) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models")
        .join(format!("{name}.snet"));
    check_file(&path, batch).map(drop)
}

/// A feature extractor of `tests/models/` at batches 1 and 3; its output is the last block's
/// tensor, `[C, H, W]` per image, as the lowered graph types it.
fn check_extractor(name: &str) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(format!("{name}.snet"));
    let raw = driver::load(&path)?;
    let t = raw.node(raw.outputs()[0]).ty;
    let shape = [t.channels, t.height, t.width];
    ensure!(
        t.height > 1 && t.width > 1,
        "{name}: a feature map, not a vector"
    );
    for batch in [1, 3] {
        let model = check_file(&path, batch)?;
        ensure!(
            model.output().shape == shape,
            "{name}: the runtime reports {:?}, the model gives {shape:?}",
            model.output().shape
        );
    }
    Ok(())
}

fn check_file(path: &std::path::Path, batch: usize) -> Result<Model> {
    let name = path.display();
    let mut raw = driver::load(path)?;
    driver::bind(&mut raw, &WeightsSource::Random(7))?;
    damp_summed_branches(&mut raw);
    let policy = KernelPolicy::Fixed(Winograd::F4x4);
    let (opt, bytes) =
        driver::compile_cpu_with(raw, &WeightsSource::None, batch as u32, true, &policy)?;
    let (x, want) = reference_run(&opt.graph, batch, 11)?;
    let model = Model::from_bytes(&bytes)?;
    for threads in [1, 2] {
        let mut session = model.session_with_threads(threads);
        let got = session.run(&x, batch)?;
        ensure!(
            got.len() == want.len(),
            "{name}: {} output values, the interpreter gives {}",
            got.len(),
            want.len()
        );
        let error = interp::relative_error(got, &want);
        eprintln!("{name} batch {batch}, {threads} thread(s): relative error {error:.3e}");
        ensure!(
            error <= TOLERANCE,
            "{name} ({threads} threads): relative error {error:.3e} above {TOLERANCE:e}"
        );
    }
    Ok(model)
}

#[test]
fn feature_extractor_sparse_concat_last() -> Result<()> {
    check_extractor("sparse-concat-last")
}

#[test]
fn feature_extractor_sum_last() -> Result<()> {
    check_extractor("sum-last")
}

#[test]
fn feature_extractor_dense_bn_relu_last() -> Result<()> {
    check_extractor("dense-bn-relu-last")
}

#[test]
fn feature_extractor_stem_block() -> Result<()> {
    check_extractor("stem-block")
}

#[test]
fn feature_extractor_block_on_input() -> Result<()> {
    check_extractor("block-on-input")
}

#[test]
fn sparsenet_40_24() -> Result<()> {
    check("sparsenet-40-24", 2)
}

#[test]
fn sparsenet_bc_100_24() -> Result<()> {
    check("sparsenet-bc-100-24", 2)
}

#[test]
fn densenet_bc_100_12() -> Result<()> {
    check("densenet-bc-100-12", 2)
}

#[test]
fn sparsenet_bc_1000_12() -> Result<()> {
    check("sparsenet-bc-1000-12", 1)
}

#[test]
fn sparsenet_100_24() -> Result<()> {
    check("sparsenet-100-24", 2)
}

#[test]
fn sparsenet_100_36() -> Result<()> {
    check("sparsenet-100-36", 2)
}

#[test]
fn sparsenet_100_16_32_64() -> Result<()> {
    check("sparsenet-100-16-32-64", 2)
}

#[test]
fn sparsenet_bc_100_36() -> Result<()> {
    check("sparsenet-bc-100-36", 2)
}

#[test]
fn densenet_40_12() -> Result<()> {
    check("densenet-40-12", 2)
}

#[test]
fn preact_resnet_cifar() -> Result<()> {
    check("preact-resnet-cifar", 2)
}

#[test]
fn sparsenet_bc_400_12() -> Result<()> {
    check("sparsenet-bc-400-12", 1)
}

#[test]
fn sparsenet_plus_1001() -> Result<()> {
    check("sparsenet-plus-1001", 1)
}

#[test]
fn sparsenet_plus_2000() -> Result<()> {
    check("sparsenet-plus-2000", 1)
}

/// ImageNet-size (224x224, 7x7 stride-2 stem, 3x3 max pool, strided convolutions).
#[test]
fn sparsenet_121_32() -> Result<()> {
    check("sparsenet-121-32", 1)
}

#[test]
fn feature_extractor_relu_last() -> Result<()> {
    check_extractor("relu-last")
}
