//! The CUDA backend's generated source on the models of `common::CUDA_SNAPSHOT_MODELS`:
//! `--emit cuda` is snapshotted (the text is the test API: `cargo insta review` after an
//! intended change), every example model's source is generated and checked, it is the same
//! with and without weights (the text depends on sizes and offsets only), every kernel a
//! launch names exists and every kernel is launched (kernels are shared by the steps with the
//! same tile: far fewer kernels than steps on the deep models), with launches inside CUDA's
//! limits. Whether the kernels compute the right numbers is `tests/tests/cuda_shim.rs`; whether
//! NVRTC compiles them is `nvrtc.rs`.

mod common;

use sparsec::backend::cuda;
use sparsec::driver::{self, WeightsSource};
use std::path::Path;

fn source(path: &Path, weights: &WeightsSource) -> cuda::CudaProgram {
    let graph = driver::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opt = driver::optimize(graph, weights, 1, true)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cuda::generate(
        &opt.graph,
        &opt.plan,
        !matches!(weights, WeightsSource::None),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn emit_cuda() {
    insta::glob!("../../examples/models", "*.snet", |path| {
        let program = source(path, &WeightsSource::None);
        check_launches(&program, &path.display().to_string());
        assert_eq!(program.descs.len(), program.steps.len());
        assert_eq!(program.launches.len(), program.steps.len());
        if common::is_listed(path, &common::CUDA_SNAPSHOT_MODELS) {
            insta::assert_snapshot!(program.source);
        }
    });
}

#[test]
fn the_source_does_not_depend_on_weight_values() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/sparsenet-bc-100-24.snet");
    let without = source(&path, &WeightsSource::None);
    let with = source(&path, &WeightsSource::Random(5));
    assert_eq!(without.source, with.source);
    assert_eq!(without.weights.len(), with.weights.len());
    assert!(without.weights.iter().all(|&b| b == 0));
    assert!(with.weights.iter().any(|&b| b != 0));
}

/// Every example at TF32 and BF16 (`--precision`): every launched kernel exists and every
/// kernel is launched, launches within limits, some convolutions on tensor cores (and only
/// those launch `k_mma*` kernels); the FP32 source carries no tensor-core code.
#[test]
fn every_example_generates_at_every_precision() {
    use cuda::precision::Precision;
    insta::glob!("../../examples/models", "*.snet", |path| {
        let graph = driver::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let opt = driver::optimize(graph, &WeightsSource::None, 1, false)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for p in Precision::ALL {
            let program = cuda::generate_with(&opt.graph, &opt.plan, false, p)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_launches(&program, &format!("{} {p}", path.display()));
            for l in program.launches.iter().flatten() {
                assert_eq!(
                    l.kernel.starts_with("k_mma"),
                    program
                        .precisions
                        .contains_key(&launched_step(&program, &l.kernel)),
                    "{} {p}: {}",
                    path.display(),
                    l.kernel
                );
            }
            let mma = program.source.contains("sparsec_conv_mma<");
            assert_eq!(mma, !program.precisions.is_empty(), "{}", path.display());
            if p == Precision::Fp32 {
                assert!(program.precisions.is_empty(), "{}", path.display());
            } else {
                assert!(
                    program.precisions.values().all(|&q| q == p) && mma,
                    "{} {p}: {:?}",
                    path.display(),
                    program.precisions
                );
            }
        }
    });
}

/// Every kernel the source defines is launched, every launch names a kernel of the source,
/// and every launch is within CUDA's limits (256 threads a block); `what` names the program.
fn check_launches(program: &cuda::CudaProgram, what: &str) {
    let kernels = program.source.matches("extern \"C\" __global__").count();
    let launched: std::collections::BTreeSet<&str> = program
        .launches
        .iter()
        .flatten()
        .map(|l| l.kernel.as_str())
        .collect();
    assert_eq!(kernels, launched.len(), "{what}");
    for l in program.launches.iter().flatten() {
        assert!(
            program
                .source
                .contains(&format!("__launch_bounds__(256) {}(", l.kernel)),
            "{what}: no kernel {}",
            l.kernel
        );
        l.check(256).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// The first step launching `kernel`.
fn launched_step(program: &cuda::CudaProgram, kernel: &str) -> usize {
    program
        .launches
        .iter()
        .position(|ls| ls.iter().any(|l| l.kernel == kernel))
        .unwrap_or(usize::MAX)
}
