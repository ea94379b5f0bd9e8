//! The fuzz corpus as a regression test (stable Rust, no libFuzzer): every file committed under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` is fed to the same entry function
//! as the fuzz target (`sparsec_tests::fuzz_entry`). Typed errors are fine; a panic fails the
//! test naming the file (an abort or a hang fails it too, less politely).

use anyhow::{Result, ensure};
use sparsec_tests::fuzz_entry::{TARGETS, run_target, seeds};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn check(target: &str) -> Result<()> {
    let mut corpus = files(&fuzz_dir().join("corpus").join(target))?;
    ensure!(!corpus.is_empty(), "no committed corpus for `{target}`");
    corpus.extend(files(&fuzz_dir().join("regressions").join(target))?);
    let mut panicked = Vec::new();
    for path in &corpus {
        let data = std::fs::read(path)?;
        if catch_unwind(AssertUnwindSafe(|| run_target(target, &data))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    ensure!(
        panicked.is_empty(),
        "`{target}` panicked on {} of {} files: {panicked:?}",
        panicked.len(),
        corpus.len()
    );
    Ok(())
}

/// The seeds made from `fuzz/seeds/tiny.snet` run clean too; with `SPARSEC_FUZZ_SEEDS=DIR` they
/// are written to `DIR/<target>/` (what `scripts/fuzz.sh` starts each corpus from).
#[test]
fn seeds_run_clean() -> Result<()> {
    let seeds = seeds()?;
    for target in TARGETS {
        ensure!(
            seeds.iter().any(|s| s.0 == target),
            "no seed for `{target}`"
        );
    }
    let out = std::env::var_os("SPARSEC_FUZZ_SEEDS").map(PathBuf::from);
    for (target, name, bytes) in &seeds {
        ensure!(
            catch_unwind(AssertUnwindSafe(|| run_target(target, bytes))).is_ok(),
            "`{target}` panicked on seed {name}"
        );
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir.join(target))?;
            std::fs::write(dir.join(target).join(name), bytes)?;
        }
    }
    Ok(())
}

#[test]
fn every_target_has_a_test() {
    assert_eq!(TARGETS, ["model_bin", "npy", "safetensors", "snet", "onnx"]);
}

#[test]
fn model_bin_corpus() -> Result<()> {
    check("model_bin")
}

#[test]
fn npy_corpus() -> Result<()> {
    check("npy")
}

#[test]
fn safetensors_corpus() -> Result<()> {
    check("safetensors")
}

#[test]
fn snet_corpus() -> Result<()> {
    check("snet")
}

#[test]
fn onnx_corpus() -> Result<()> {
    check("onnx")
}
