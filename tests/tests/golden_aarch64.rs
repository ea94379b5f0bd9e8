//! Cross compilation for aarch64 (issue 19), the host half: each golden model compiled with
//! `Target::CpuFor(CpuArch::Aarch64, default policy)` (the kernel choice measured here with host
//! code, the forward function then compiled for aarch64 by Cranelift, relocation-free), checked
//! to record `aarch64` and to be refused by this x86-64 runtime with an error naming both
//! architectures, then written with the golden input and output as raw little-endian f32 into
//! `$CARGO_TARGET_TMPDIR/aarch64-golden/` for the aarch64 half, `runtime/tests/golden_files.rs`,
//! which `scripts/aarch64.sh golden` runs under qemu.
//!
//! `SPARSEC_AARCH64_GOLDEN` (comma-separated names) limits the models; all four by default.

use anyhow::{Context, Result, bail};
use runtime::format::ModelFile;
use runtime::{LoadError, LoadOptions, Model};
use sparsec::driver::{self, CompileOptions, CpuArch, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use std::path::PathBuf;

const MODELS: [&str; 4] = [
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "sparsenet-bc-1000-12",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("aarch64-golden")
}

fn raw(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn compile_aarch64(name: &str) -> Result<Vec<u8>> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let options = CompileOptions {
        weights: WeightsSource::Safetensors(
            repo().join(format!("../shared/golden/{name}.safetensors")),
        ),
        target: Target::CpuFor(CpuArch::Aarch64, KernelPolicy::default()),
        max_batch: 8,
        verify: true,
    };
    Ok(driver::compile(graph, &options)?.bytes)
}

#[test]
fn golden_models_cross_compile_for_aarch64() -> Result<()> {
    let selected: Vec<String> = match std::env::var("SPARSEC_AARCH64_GOLDEN") {
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => MODELS.iter().map(|m| m.to_string()).collect(),
    };
    let dir = out_dir();
    // Only this run's models: the aarch64 half runs every file it finds.
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for name in &selected {
        if !MODELS.contains(&name.as_str()) {
            bail!("SPARSEC_AARCH64_GOLDEN names {name:?}, not one of {MODELS:?}");
        }
        let bytes = compile_aarch64(name)?;
        let file = ModelFile::parse(&bytes)?;
        let target = &file.manifest.target;
        if target.arch != "aarch64" || !target.features.is_empty() {
            bail!("{name}: target {target:?}, expected baseline aarch64");
        }
        let (code, _) = file.cpu_code().context("CPU code")?;
        if code.len() % 4 != 0 {
            bail!(
                "{name}: {} code bytes, not whole A64 instructions",
                code.len()
            );
        }
        // This runtime is x86-64: the file is refused, data-only or native, by name.
        for allow_unsigned_code in [false, true] {
            let options = LoadOptions {
                allow_unsigned_code,
                ..LoadOptions::default()
            };
            match Model::from_bytes_with(&bytes, &options) {
                Err(e @ LoadError::Architecture { .. }) => {
                    let text = e.to_string();
                    if !(text.contains("aarch64") && text.contains(std::env::consts::ARCH)) {
                        bail!("{name}: the error does not name both architectures: {text}");
                    }
                }
                Err(e) => bail!("{name}: refused for another reason: {e}"),
                Ok(_) => bail!(
                    "{name}: an aarch64 model.bin loaded on {}",
                    std::env::consts::ARCH
                ),
            }
        }
        let (input, output) = sparsec_tests::golden_io(name)?;
        std::fs::write(dir.join(format!("{name}.bin")), &bytes)?;
        std::fs::write(dir.join(format!("{name}.input.f32")), raw(&input))?;
        std::fs::write(dir.join(format!("{name}.expected.f32")), raw(&output))?;
        eprintln!(
            "{name}: {} bytes for aarch64, {} code bytes",
            bytes.len(),
            code.len()
        );
    }
    Ok(())
}
