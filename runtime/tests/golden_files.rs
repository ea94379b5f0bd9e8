//! The aarch64 half of the cross-compiled golden suite (issue 19), feature `golden-files`: every
//! `NAME.bin` in `$SPARSEC_GOLDEN_DIR` (written on the host by
//! `tests/tests/golden_aarch64.rs`, with `NAME.input.f32` and `NAME.expected.f32`, raw
//! little-endian f32) is loaded on this machine, run data-only (the validated schedule through
//! this runtime's kernels) and natively (the file's Cranelift code, mapped, icache flushed,
//! calling the same kernels), both within 2e-4 of the golden output (relative L2 error) and
//! bit-identical to each other, at one thread and at two (the team kernels).
//!
//! Each run also writes `NAME.out.VARIANT.f32` (VARIANT: the kernel table in use, `neon` or
//! `portable`) and, when the other variant's output is already there, compares the two:
//! `scripts/aarch64.sh golden` runs this test twice, the second time with
//! `SPARSEC_KERNELS=portable`, so the NEON and portable outputs are compared.
//!
//! `SPARSEC_GOLDEN_RUNS=data-only` skips the native and two-thread runs (CI's portable rerun,
//! which is there for the comparison only: qemu is slow).
//!
//! Without the feature the file is empty, so a plain `cargo test` never needs the files; with
//! it, a missing directory or an empty one is a failure, never a pass.
#![cfg(feature = "golden-files")]

use runtime::{LoadOptions, Model};
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 2e-4;

fn floats(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len().is_multiple_of(4),
        "{}: not whole f32s",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "output lengths differ");
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        diff += (f64::from(g) - f64::from(w)).powi(2);
        norm += f64::from(w).powi(2);
    }
    (diff / norm).sqrt()
}

fn run(model: &Model, input: &[f32], batch: usize, threads: usize) -> Vec<f32> {
    let mut session = model.session_with_threads(threads);
    session
        .run(input, batch)
        .unwrap_or_else(|e| panic!("run: {e}"))
        .to_vec()
}

#[test]
fn golden_models_compiled_on_the_host_run_here() {
    let dir = PathBuf::from(
        std::env::var_os("SPARSEC_GOLDEN_DIR")
            .expect("SPARSEC_GOLDEN_DIR names the folder of the cross-compiled golden models"),
    );
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    models.sort();
    assert!(!models.is_empty(), "no model.bin in {}", dir.display());
    let variant = runtime::cpu::kernels::kernel_variant();
    let data_only_runs = std::env::var_os("SPARSEC_GOLDEN_RUNS").is_some_and(|v| v == "data-only");
    for path in &models {
        let started = std::time::Instant::now();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        let input = floats(&dir.join(format!("{name}.input.f32")));
        let want = floats(&dir.join(format!("{name}.expected.f32")));
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let data_only = Model::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!data_only.runs_native_code());
        let native = Model::from_bytes_with(
            &bytes,
            &LoadOptions {
                allow_unsigned_code: true,
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name} (native): {e}"));
        assert!(native.runs_native_code());
        let per_image: usize = data_only
            .input()
            .shape
            .iter()
            .map(|&d| d as usize)
            .product();
        assert!(
            per_image > 0 && input.len().is_multiple_of(per_image),
            "{name}: input size"
        );
        let batch = input.len() / per_image;
        let got = run(&data_only, &input, batch, 1);
        let error = relative_error(&got, &want);
        eprintln!("{name} ({variant} kernels, data-only): relative error {error:.2e}");
        assert!(
            error < TOLERANCE,
            "{name}: relative error {error:.3e} >= {TOLERANCE:e}"
        );
        let others = [
            ("native code, 1 thread", &native, 1),
            ("native code, 2 threads", &native, 2),
            ("data-only, 2 threads", &data_only, 2),
        ];
        let others = if data_only_runs {
            &others[..0]
        } else {
            &others[..]
        };
        for &(how, model, threads) in others {
            let other = run(model, &input, batch, threads);
            assert!(
                other
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{name}: {how} differs from data-only at 1 thread"
            );
        }
        std::fs::write(
            dir.join(format!("{name}.out.{variant}.f32")),
            got.iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        for other in ["neon", "portable"].iter().filter(|&&v| v != variant) {
            let path = dir.join(format!("{name}.out.{other}.f32"));
            if path.exists() {
                let theirs = floats(&path);
                let between = relative_error(&got, &theirs);
                eprintln!(
                    "{name}: {variant} vs {other} kernels: relative difference {between:.2e}"
                );
                assert!(
                    between < TOLERANCE,
                    "{name}: {variant} vs {other}: {between:.3e}"
                );
            }
        }
        eprintln!(
            "{name}: {} runs in {:.1} s",
            1 + others.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
