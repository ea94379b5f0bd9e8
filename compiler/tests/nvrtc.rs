//! NVRTC compiles the generated kernels of the models that add coverage (feature
//! `nvrtc-tests`, which `.ci/run` enables after installing `nvidia-cuda-nvrtc-cu12==12.9.*` and
//! putting it on `LD_LIBRARY_PATH`; without NVRTC these tests fail, they do not skip): the four
//! golden models and one model of each op or aggregation they lack ([`MODELS`]). Every example
//! model's source is still generated and checked by `cuda.rs` and run on the CPU shim by
//! `tests/tests/cuda_shim.rs`. Each model is compiled as `sparsec --target cuda` compiles it:
//! full optimisation, sm_80 and sm_90 cubins and compute_80 PTX (until issue 18 this suite used
//! `--Ofast-compile=max` and PTX only for the deep model: one fully unrolled kernel per step
//! took tens of minutes to optimise; the shared kernels make every model a few dozen kernels at
//! most). Each PTX holds an entry for every launched kernel, each cubin is an ELF image, a full
//! `--target cuda` model.bin loads up to the executor, and the kernel cache hits, misses and
//! rebuilds corrupt entries with real NVRTC output.
#![cfg(feature = "nvrtc-tests")]

use sparsec::backend::cuda::{self, nvrtc};
use sparsec::driver::{self, WeightsSource};
use std::path::{Path, PathBuf};

/// The models NVRTC compiles, in two halves of about equal work (one thread each): the golden
/// models, preact-resnet-cifar (sum aggregation) and sparsenet-121-32 (7x7 stride-2 stem, max
/// pool, 224x224). The other examples repeat these ops at other sizes.
const MODELS: [&[&str]; 2] = [
    &[
        "sparsenet-bc-1000-12",
        "sparsenet-bc-100-24",
        "preact-resnet-cifar",
    ],
    &["sparsenet-40-24", "densenet-bc-100-12", "sparsenet-121-32"],
];

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/models/{name}.snet"))
}

fn check(path: &Path) {
    let graph = driver::load(path).expect("example compiles");
    let opt = driver::optimize(graph, &WeightsSource::None, 1, false).expect("optimises");
    let program = cuda::generate(&opt.graph, &opt.plan, false).expect("generates");
    let archs = nvrtc::CUBIN_ARCHS;
    let start = std::time::Instant::now();
    let compiled = nvrtc::compile_for(&program.source, archs, true)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!(
        "{}: {} steps, {} kernels, NVRTC {} for {archs:?} + PTX in {:.1} s",
        path.display(),
        program.steps.len(),
        program.source.matches("extern \"C\" __global__").count(),
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

/// The tensor-core kernels (`mma.cuh`, `--precision tf32|bf16`): sparsenet-bc-100-24's
/// convolutions at TF32 and BF16 compiled to sm_80 and sm_90 cubins and PTX, so ptxas checks
/// the inline `mma.sync` PTX (a PTX-only compile would pass it through unchecked); with
/// `--Ofast-compile=max` (`nvrtc::check_compiles`: a few seconds instead of about 50 s of CPU
/// per precision at full optimisation, measured 2026-12-06), the two precisions in parallel.
/// `sparsec --target cuda --precision tf32|bf16` compiles them at full optimisation: checked by
/// hand for this model (sm_80, 16.5 s, 796 KB cubin at TF32).
#[test]
fn the_tensor_core_kernels_compile() {
    use cuda::precision::Precision;
    let graph = driver::load(&model("sparsenet-bc-100-24")).expect("example compiles");
    let opt = driver::optimize(graph, &WeightsSource::None, 1, false).expect("optimises");
    let one = |p: Precision| {
        let program = cuda::generate_with(&opt.graph, &opt.plan, false, p).expect("generates");
        let mma = program
            .source
            .matches("extern \"C\" __global__ void __launch_bounds__(256) k_mma")
            .count();
        assert!(mma >= 2, "{p}: {mma} tensor-core kernels");
        // At bf16 the plan stores buffers in BF16 (`cuda::storage`): the instances that read
        // and write them (`_h`) are compiled too.
        let bf16_storage = program.source.matches("_h(float* __restrict__ a").count();
        if p == Precision::Bf16 {
            assert!(bf16_storage >= 2, "{bf16_storage} BF16-storage kernels");
        } else {
            assert_eq!(bf16_storage, 0, "{p}");
        }
        let start = std::time::Instant::now();
        let compiled = nvrtc::check_compiles(&program.source, &["sm_80", "sm_90"])
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        eprintln!(
            "sparsenet-bc-100-24 at {p}: {} ({mma} tensor-core kernels), NVRTC sm_80 + sm_90 + PTX (fast) in {:.1} s",
            program.precision_summary().unwrap_or_default(),
            start.elapsed().as_secs_f64()
        );
        assert_eq!(compiled.blobs.len(), 3, "{p}");
        for (arch, bytes) in &compiled.blobs[..2] {
            assert!(bytes.starts_with(b"\x7fELF"), "{p} {arch}");
        }
    };
    std::thread::scope(|s| {
        let tf32 = s.spawn(|| one(Precision::Tf32));
        one(Precision::Bf16);
        tf32.join().expect("tf32");
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

/// The kernel cache: a miss compiles and stores every target, a second compile of the same
/// source hits for every target and gets the same bytes, a changed source misses, and a
/// corrupted entry is detected, recompiled and rewritten.
#[test]
fn the_kernel_cache_hits_misses_and_rebuilds_corrupt_entries() {
    let dir = std::env::temp_dir().join(format!("sparsec-nvrtc-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = cuda::cache::KernelCache::at(&dir);
    let source = "extern \"C\" __global__ void k(float* a) { a[threadIdx.x] *= 2.0f; }\n";
    let compile = |src: &str| {
        nvrtc::compile_with_cache(src, &["sm_90"], true, Some(&cache)).expect("compiles")
    };
    let first = compile(source);
    assert_eq!(first.cache_hits, 0);
    let second = compile(source);
    assert_eq!(second.cache_hits, 2);
    assert_eq!(first.blobs, second.blobs);
    let other = compile(&format!("{source}// changed\n"));
    assert_eq!(other.cache_hits, 0);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("cache folder")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 4, "{entries:?}");
    for e in &entries {
        let mut bytes = std::fs::read(e).expect("entry");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(e, bytes).expect("corrupting");
    }
    let rebuilt = compile(source);
    assert_eq!(rebuilt.cache_hits, 0);
    assert_eq!(rebuilt.blobs, first.blobs);
    assert_eq!(compile(source).cache_hits, 2);
    std::fs::remove_dir_all(&dir).expect("cleaning up");
}
