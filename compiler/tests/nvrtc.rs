//! NVRTC compiles the generated kernels of every example model (feature `nvrtc-tests`, which
//! `.ci/run` enables after installing `nvidia-cuda-nvrtc-cu12==12.9.*` and putting it on
//! `LD_LIBRARY_PATH`; without NVRTC these tests fail, they do not skip). Every example is
//! compiled with `--Ofast-compile=max` (`nvrtc::check_compiles`: NVRTC's whole front end, code
//! generation and ptxas, with the least optimisation, about 10-20x faster): models of up to
//! 130 steps for every target `sparsec --target cuda` makes (sm_80 and sm_90 cubins,
//! compute_80 PTX), the four deep ones (400 to 2000 steps) PTX only; their optimised compile
//! takes tens of minutes (`scripts/gpu-bench-build.sh` does it for sparsenet-bc-1000-12).
//! The optimised path itself is compiled for sparsenet-40-24 by the model.bin test below. Each PTX holds an entry
//! for every launch, each cubin is an ELF image, and a full `--target cuda` model.bin loads
//! up to the executor.
#![cfg(feature = "nvrtc-tests")]

use sparsec::backend::cuda::{self, nvrtc};
use sparsec::driver::{self, WeightsSource};
use std::path::{Path, PathBuf};

fn models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("examples")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    paths
}

fn check(path: &Path) {
    let graph = driver::load(path).expect("example compiles");
    let opt = driver::optimize(graph, &WeightsSource::None, 1, false).expect("optimises");
    let program = cuda::generate(&opt.graph, &opt.plan, false).expect("generates");
    let archs: &[&str] = if program.steps.len() <= 130 {
        nvrtc::CUBIN_ARCHS
    } else {
        &[]
    };
    let start = std::time::Instant::now();
    let compiled = nvrtc::check_compiles(&program.source, archs)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!(
        "{}: {} kernels, NVRTC {} for {archs:?} + PTX in {:.1} s",
        path.display(),
        program.steps.len(),
        compiled.version,
        start.elapsed().as_secs_f64()
    );
    assert!(compiled.version.starts_with("12."), "{}", compiled.version);
    assert_eq!(compiled.blobs.len(), archs.len() + 1);
    for (arch, bytes) in &compiled.blobs {
        if arch == "ptx" {
            let ptx = std::str::from_utf8(bytes).expect("PTX is text");
            for l in program.launches.iter().flatten() {
                assert!(
                    ptx.contains(&format!(".entry {}(", l.kernel)),
                    "{}: no PTX entry {}",
                    path.display(),
                    l.kernel
                );
            }
        } else {
            assert!(bytes.starts_with(b"\x7fELF"), "{}: {arch}", path.display());
        }
    }
}

#[test]
fn every_example_model_compiles() {
    let paths = models();
    let (a, b) = paths.split_at(paths.len() / 2);
    std::thread::scope(|s| {
        let first = s.spawn(|| a.iter().for_each(|p| check(p)));
        b.iter().for_each(|p| check(p));
        first.join().expect("first half");
    });
}

#[test]
fn a_cuda_model_bin_loads_up_to_the_executor() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/sparsenet-40-24.snet");
    let graph = driver::load(&path).expect("example compiles");
    let (_, bytes) = driver::compile_cuda(graph, &WeightsSource::Random(1), 64, true)
        .expect("compiles for CUDA");
    let file = runtime::format::ModelFile::parse(&bytes).expect("parses");
    let code = file.manifest.cuda.as_ref().expect("CUDA code");
    let archs: Vec<&str> = code.blobs.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(archs, ["sm_80", "sm_90", "ptx"]);
    assert!(code.nvrtc_version.starts_with("12."));
    // The default runtime build has no CUDA executor: the file passes every check, then the
    // typed error says which feature is missing.
    let trusting = runtime::LoadOptions {
        allow_unsigned_code: true,
        ..Default::default()
    };
    match runtime::Model::from_bytes_with(&bytes, &trusting) {
        Err(runtime::LoadError::BackendNotBuilt { .. }) => {}
        other => panic!("expected BackendNotBuilt, got {other:?}"),
    }
}
