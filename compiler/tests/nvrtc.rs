//! NVRTC compiles the generated kernels of the models that add coverage (feature
//! `nvrtc-tests`, which `.ci/run` enables after installing `nvidia-cuda-nvrtc-cu12==12.9.*` and
//! putting it on `LD_LIBRARY_PATH`; without NVRTC these tests fail, they do not skip): the four
//! golden models and one model of each op or aggregation they lack ([`MODELS`]). Every example
//! model's source is still generated and checked by `cuda.rs` and run on the CPU shim by
//! `tests/tests/cuda_shim.rs`; NVRTC on all fourteen took 401 s of CI (6.7 min, issue 13).
//! Each model is compiled with `--Ofast-compile=max` (`nvrtc::check_compiles`: NVRTC's whole
//! front end, code generation and ptxas, with the least optimisation, about 10-20x faster):
//! models of up to 130 steps for every target `sparsec --target cuda` makes (sm_80 and sm_90
//! cubins, compute_80 PTX), the deep sparsenet-bc-1000-12 PTX only; its optimised compile takes
//! tens of minutes (`scripts/gpu-bench-build.sh` does it). The optimised path itself is
//! compiled for sparsenet-40-24 by the model.bin test below. Each PTX holds an entry for every
//! launch, each cubin is an ELF image, and a full `--target cuda` model.bin loads up to the
//! executor.
#![cfg(feature = "nvrtc-tests")]

use sparsec::backend::cuda::{self, nvrtc};
use sparsec::driver::{self, WeightsSource};
use std::path::{Path, PathBuf};

/// The models NVRTC compiles, in two halves of about equal work (one thread each): the golden
/// models, preact-resnet-cifar (sum aggregation) and sparsenet-121-32 (7x7 stride-2 stem, max
/// pool, 224x224). The other examples repeat these ops at other sizes; sparsenet-bc-1000-12
/// adds no kernel instantiation the other golden models lack, but is golden.
const MODELS: [&[&str]; 2] = [
    &["sparsenet-bc-1000-12"],
    &[
        "sparsenet-40-24",
        "sparsenet-bc-100-24",
        "densenet-bc-100-12",
        "preact-resnet-cifar",
        "sparsenet-121-32",
    ],
];

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/models/{name}.snet"))
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
fn the_covering_models_compile() {
    let [a, b] = MODELS;
    std::thread::scope(|s| {
        let first = s.spawn(|| a.iter().for_each(|m| check(&model(m))));
        b.iter().for_each(|m| check(&model(m)));
        first.join().expect("first half");
    });
}

/// Every model of [`MODELS`] exists (a renamed example must not silently drop out).
#[test]
fn the_covering_models_exist() {
    for m in MODELS.concat() {
        assert!(model(m).exists(), "{}", model(m).display());
    }
}

#[test]
fn a_cuda_model_bin_loads_up_to_the_executor() {
    let graph = driver::load(&model("sparsenet-40-24")).expect("example compiles");
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
