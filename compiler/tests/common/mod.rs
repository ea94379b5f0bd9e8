//! Which example models keep whole-model snapshots (`--emit ir`, `opt-ir`, `plan`, `cuda`), for
//! the snapshot suites (`snapshots.rs`, `optimize.rs`, `cuda.rs`). The four golden models and
//! two that add ops no golden model has (sum aggregation; a 7x7 stride-2 stem with a max pool).
//! Every other example is still compiled, planned and run by the non-snapshot tests; passes are
//! snapshotted one at a time on small inputs (`passes.rs`).
//!
//! Test support only: owns no assertion.

#![allow(dead_code, reason = "each test crate uses part of this module")]

/// Models with whole-model IR, optimised-IR and plan snapshots.
pub const SNAPSHOT_MODELS: [&str; 6] = [
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "sparsenet-bc-1000-12",
    "preact-resnet-cifar",
    "sparsenet-121-32",
];

/// Models with a whole-model `--emit cuda` snapshot: the same but sparsenet-bc-1000-12, whose
/// 1.7 MB of CUDA C repeats sparsenet-bc-100-24's kernel templates ten times over (its kernels
/// are still compiled by NVRTC and run on the CPU shim against the interpreter).
pub const CUDA_SNAPSHOT_MODELS: [&str; 5] = [
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "preact-resnet-cifar",
    "sparsenet-121-32",
];

/// Whether `path` is `<model>.snet` for one of `models`.
pub fn is_listed(path: &std::path::Path, models: &[&str]) -> bool {
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| models.contains(&s))
}

/// An `insta::glob!` pattern matching `<model>.snet` for each model.
pub fn glob(models: &[&str]) -> String {
    format!("{{{}}}.snet", models.join(","))
}
