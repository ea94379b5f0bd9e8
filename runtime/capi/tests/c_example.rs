//! `examples/c/classify.c` compiled with the system `cc` against the static library and
//! `include/sparsec.h`, run on the golden sparsenet-40-24 (compiled here with the `sparsec`
//! library), its output compared with the golden vector (relative error < 2e-4, checked by the
//! program; a perturbed reference must make it fail). Leaves the program, model.bin and raw
//! vectors in `$CARGO_TARGET_TMPDIR/c-example/` for `scripts/c-tests.sh` to run under valgrind.

use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, CompileOptions, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use std::path::{Path, PathBuf};
use std::process::Command;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The static library cargo built beside this test (in `deps/`, or uplifted one level up).
fn static_lib() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().ok_or("test binary has no folder")?;
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        let candidate = dir.join("libsparsec_capi.a");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!("libsparsec_capi.a not found beside {}", exe.display()).into())
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn c_example_reproduces_the_golden_output() -> TestResult {
    let root = root();
    let golden = root.join("../shared/golden");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-example");
    std::fs::create_dir_all(&out)?;

    // model.bin through the compiler library (F(2x2) Winograd forced: the accuracy guard is
    // the compiler's business, tested there; this test is about the C ABI).
    let graph = driver::load(&root.join("examples/models/sparsenet-40-24.snet"))?;
    let options = CompileOptions {
        weights: WeightsSource::Safetensors(golden.join("sparsenet-40-24.safetensors")),
        target: Target::Cpu(KernelPolicy::Fixed(Winograd::F2x2)),
        max_batch: 2,
        verify: false,
    };
    std::fs::write(
        out.join("model.bin"),
        driver::compile(graph, &options)?.bytes,
    )?;

    let io = sparsec::weights::load_tensors(&std::fs::read(
        golden.join("sparsenet-40-24.io.safetensors"),
    )?)?;
    let tensor = |name: &str| {
        io.iter()
            .find(|t| t.0 == name)
            .map(|t| t.2.clone())
            .ok_or(format!("no `{name}` in the golden io file"))
    };
    let expected = tensor("output")?;
    std::fs::write(out.join("input.f32"), f32_bytes(&tensor("input")?))?;
    std::fs::write(out.join("expected.f32"), f32_bytes(&expected))?;
    let off: Vec<f32> = expected.iter().map(|v| v * 1.01).collect();
    std::fs::write(out.join("perturbed.f32"), f32_bytes(&off))?;

    let exe = out.join("classify");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("runtime/capi/include"))
        .arg(root.join("examples/c/classify.c"))
        .arg(static_lib()?)
        .args([
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lutil",
            "-lgcc_s",
            "-o",
        ])
        .arg(&exe)
        .output()?;
    assert!(
        cc.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    let run = |reference: &str| {
        Command::new(&exe)
            .arg(out.join("model.bin"))
            .arg(out.join("input.f32"))
            .arg(out.join(reference))
            .output()
    };
    let good = run("expected.f32")?;
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "classify failed ({:?}):\n{stdout}\n{}",
        good.status,
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        stdout.contains("model: input [3, 32, 32], 100 classes, max batch 2; 2 image(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("row 0: 83 ("), "{stdout}");
    assert!(stdout.contains("relative error"), "{stdout}");

    let bad = run("perturbed.f32")?;
    assert_eq!(bad.status.code(), Some(1), "a 1% error must fail the check");
    Ok(())
}
