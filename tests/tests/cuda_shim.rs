//! The generated CUDA kernels, checked on the CPU: each model's kernel source is compiled as
//! C++ by g++ together with `backend/cuda/shim.h` (blocks run one after another, threads as
//! fibers that really wait at `__syncthreads()`), loaded with `dlopen`, and driven exactly as
//! the GPU runtime drives it: one arena of `arena_bytes_per_image * batch` bytes, the input
//! copied to its buffer at `offset_per_image * batch`, then every step's launch from the
//! program's launch table (kernel by name, grid from the batch, block size). The output is
//! compared with the reference interpreter on the same optimised graph (random non-zero input
//! and weights) for every example model (batch 2; batch 1 for the deep and ImageNet ones), once
//! with every convolution's latency tile and once with its throughput tile, and
//! for the four golden models also with PyTorch's outputs (golden weights and input, batch 2):
//! relative error ≤ 2e-4. The feature extractors of `tests/models/` (no head, issue 12) are
//! checked the same way at batches 1 and 3.
//!
//! g++ is required: without it these tests fail, they do not skip.

use anyhow::{Context, Result, bail, ensure};
use ir::interp;
use sparsec::backend::cuda::{self, CudaProgram, SHIM_HEADER};
use sparsec::driver::{self, Optimized, WeightsSource};
use sparsec::weights::load_tensors;
use sparsec_tests::{damp_summed_branches, reference_run};
use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const TOLERANCE: f64 = 2e-4;

type Kernel = unsafe extern "C" fn(*mut f32, *const f32, u32, *const u64);
type Launch =
    unsafe extern "C" fn(Kernel, u32, u32, u32, u32, *mut f32, *const f32, u32, *const u64) -> i32;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A shared library built from a program's source and the shim, opened with `dlopen`.
struct Library {
    handle: *mut c_void,
}

impl Library {
    fn build(name: &str, source: &str) -> Result<Library> {
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let dir = repo().join("target/cuda-shim").join(format!(
            "{name}-{}-{}",
            std::process::id(),
            BUILDS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("shim.h"), SHIM_HEADER)?;
        std::fs::write(dir.join("kernels.cu"), source)?;
        std::fs::write(
            dir.join("main.cpp"),
            "#include \"shim.h\"\n#include \"kernels.cu\"\n",
        )?;
        let so = dir.join("kernels.so");
        // -O1: g++ on the deep models' sources is most of this suite's time; -O1 compiles
        // sparsenet-bc-400-12 with 30% less CPU than -O2 (shim run included), same results.
        let out = Command::new("g++")
            .args([
                "-O1",
                "-std=c++17",
                "-shared",
                "-fPIC",
                "-U_FORTIFY_SOURCE",
                "-fno-gnu-unique",
            ])
            .args(["-Wno-unknown-pragmas", "-o"])
            .arg(&so)
            .arg(dir.join("main.cpp"))
            .output()
            .context("running g++ (the CUDA shim tests need g++ on PATH)")?;
        ensure!(
            out.status.success(),
            "g++ failed on {name}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = CString::new(so.to_string_lossy().as_bytes())?;
        // SAFETY: `path` is a NUL-terminated path of a library we just built; its static
        // initialisers only zero-initialise globals.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        ensure!(!handle.is_null(), "dlopen {} failed", so.display());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Library { handle })
    }

    fn symbol(&self, name: &str) -> Result<*mut c_void> {
        let c = CString::new(name)?;
        // SAFETY: `handle` is a live dlopen handle; `c` is NUL-terminated.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        ensure!(!p.is_null(), "symbol {name} not found");
        Ok(p)
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and no function pointer from it outlives `self`
        // (they are used only inside `run` while the library is borrowed).
        unsafe { libc::dlclose(self.handle) };
    }
}

/// Which of a step's launch variants runs.
#[derive(Clone, Copy, Debug)]
enum Pick {
    /// The one the GPU runtime picks for the batch (`CudaCode::variant`).
    AsRuntime,
    /// The first (the latency tile where a step has two).
    First,
    /// The last (the throughput tile).
    Last,
}

/// Runs the program's launches over an arena, as the GPU runtime does. Returns the output.
fn run(
    lib: &Library,
    opt: &Optimized,
    program: &CudaProgram,
    input: &[f32],
    batch: u32,
    pick: Pick,
) -> Result<Vec<f32>> {
    let plan = &opt.plan;
    let b = u64::from(batch);
    let mut arena = vec![0.0f32; (plan.arena.arena_bytes * b / 4) as usize];
    let weights: Vec<f32> = program
        .weights
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let g = &opt.graph;
    let buffer_of = |node| {
        let id = plan.liveness.buffer(node).context("no buffer")?;
        let i = id.0 as usize;
        Ok::<_, anyhow::Error>((
            (plan.arena.offsets[i] * b / 4) as usize,
            (plan.liveness.buffers[i].bytes_per_image * b / 4) as usize,
        ))
    };
    let (at, len) = buffer_of(g.inputs()[0])?;
    ensure!(len == input.len(), "input length {} vs {len}", input.len());
    arena[at..at + len].copy_from_slice(input);
    // SAFETY: the shim defines this symbol with exactly this signature.
    let launch: Launch = unsafe { std::mem::transmute(lib.symbol("sparsec_shim_launch")?) };
    // The step records, exactly as the GPU executor builds them from the validated file.
    let buffers: Vec<runtime::format::BufferSpec> = plan
        .liveness
        .buffers
        .iter()
        .zip(&plan.arena.offsets)
        .map(|(b, &offset)| runtime::format::BufferSpec {
            offset_per_image: offset,
            bytes_per_image: b.bytes_per_image,
        })
        .collect();
    let table =
        runtime::cuda::table::build(&program.steps, &buffers, &program.descs, batch.max(64))
            .map_err(|(step, e)| anyhow::anyhow!("step {step}: {e}"))?;
    let code = runtime::format::CudaCode {
        nvrtc_version: String::new(),
        blobs: Vec::new(),
        launches: program.launches.clone(),
    };
    for (i, variants) in program.launches.iter().enumerate() {
        let v = match pick {
            Pick::AsRuntime => code.variant(i, batch),
            Pick::First => Some(0),
            Pick::Last => variants.len().checked_sub(1),
        };
        let l = v
            .and_then(|v| variants.get(v))
            .context("a step without launches")?;
        let [gx, gy, gz] = l.grid(batch).context("grid out of limits")?;
        // SAFETY: every generated kernel is
        // `extern "C" void(float*, const float*, unsigned, const unsigned long long*)`.
        let kernel: Kernel = unsafe { std::mem::transmute(lib.symbol(&l.kernel)?) };
        // SAFETY: the arena holds `arena_bytes_per_image * batch` bytes and the weights the
        // whole section; the step's record (checked by `table::build`, which `?` above
        // required to succeed) addresses only those for this batch.
        let status = unsafe {
            launch(
                kernel,
                gx,
                gy,
                gz,
                l.block,
                arena.as_mut_ptr(),
                weights.as_ptr(),
                batch,
                table.words[table.at[i]..].as_ptr(),
            )
        };
        if status != 0 {
            bail!(
                "step {i} ({}): shim status {status}",
                program.steps[i].label
            );
        }
    }
    let out = g.operands(g.outputs()[0])[0];
    let (at, len) = buffer_of(out)?;
    Ok(arena[at..at + len].to_vec())
}

/// The optimised graph and CUDA program of a model with `weights` bound (random ones damped
/// for the sum-aggregated models).
fn compile(path: &Path, weights: &WeightsSource) -> Result<(Optimized, CudaProgram)> {
    let mut raw = driver::load(path)?;
    driver::bind(&mut raw, weights)?;
    damp_summed_branches(&mut raw);
    let opt = driver::optimize(raw, &WeightsSource::None, 1, false)?;
    let program = cuda::generate(&opt.graph, &opt.plan, true)?;
    Ok((opt, program))
}

/// Builds the model's kernels once, checks them against the interpreter on random weights
/// and input at `batch`, and, for a golden model, with the golden weights against PyTorch's
/// outputs (the source depends on sizes and offsets only, so the same library serves both).
fn check(name: &str, batch: u32, golden: bool) -> Result<()> {
    let path = repo().join(format!("examples/models/{name}.snet"));
    check_file(name, &path, batch, golden)
}

/// A feature extractor of `tests/models/` (issue 12: the last stage is a block, possibly
/// followed by a batch norm and ReLU) at batches 1 and 3, against the interpreter; the output
/// the shim reads is the last block's tensor, `[C, H, W]` per image.
fn check_extractor(name: &str) -> Result<()> {
    let path = repo().join(format!("tests/models/{name}.snet"));
    for batch in [1, 3] {
        check_file(name, &path, batch, false)?;
    }
    Ok(())
}

fn check_file(name: &str, path: &Path, batch: u32, golden: bool) -> Result<()> {
    let start = std::time::Instant::now();
    let (opt, program) = compile(path, &WeightsSource::Random(7))?;
    let lib = Library::build(name, &program.source)?;
    let built = start.elapsed();
    let (x, want) = reference_run(&opt.graph, batch as usize, 11)?;
    let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    // Both tiles of every convolution: the latency ones and the throughput ones.
    for pick in [Pick::First, Pick::Last] {
        let before = start.elapsed();
        let got = run(&lib, &opt, &program, &x, batch, pick)?;
        ensure!(
            got.len() == want.len(),
            "{name}: {} output values, the interpreter gives {}",
            got.len(),
            want.len()
        );
        let error = interp::relative_error(&got, &want);
        eprintln!(
            "{name} batch {batch}, {pick:?} variants: shim vs interpreter relative error \
             {error:.3e} (max |y| {scale:.3}; generate+g++ {:.1} s, shim run {:.1} s)",
            built.as_secs_f64(),
            (start.elapsed() - before).as_secs_f64()
        );
        ensure!(
            error <= TOLERANCE,
            "{name} ({pick:?} variants): relative error {error:.3e} above {TOLERANCE:e}"
        );
    }
    if !golden {
        return Ok(());
    }
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let (opt, golden_program) = compile(path, &weights)?;
    ensure!(
        golden_program.source == program.source,
        "{name}: the source depends on the weights"
    );
    let path = repo().join(format!("../shared/golden/{name}.io.safetensors"));
    let io = load_tensors(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    let get = |n: &str| {
        io.iter()
            .find(|t| t.0 == n)
            .map(|t| t.2.clone())
            .context("io tensor")
    };
    let (input, want) = (get("input")?, get("output")?);
    let got = run(&lib, &opt, &golden_program, &input, 2, Pick::AsRuntime)?;
    let error = interp::relative_error(&got, &want);
    eprintln!("{name}: shim vs PyTorch (golden) relative error {error:.3e}");
    ensure!(
        error <= TOLERANCE,
        "{name}: golden relative error {error:.3e} above {TOLERANCE:e}"
    );
    Ok(())
}

#[test]
fn shim_runs_barriers_and_reports_divergence() -> Result<()> {
    // A block reversal through shared memory needs the barrier; a kernel where half the
    // threads return before a barrier must be reported.
    let source = r#"
extern "C" __global__ void reverse(float* a, const float* w, unsigned batch,
                                            const unsigned long long* d) {
  (void)d;
  __shared__ float s[256];
  s[threadIdx.x] = a[blockIdx.x * 256u + threadIdx.x] + w[0];
  __syncthreads();
  a[blockIdx.x * 256u + threadIdx.x] = s[255u - threadIdx.x] * (float)batch;
}
extern "C" __global__ void diverge(float* a, const float* w, unsigned batch,
                                            const unsigned long long* d) {
  (void)d;
  if (threadIdx.x < 128u) return;
  __syncthreads();
  a[0] = w[0] + (float)batch;
}
"#;
    let lib = Library::build("shim-selftest", source)?;
    // SAFETY: symbols defined by the shim and the source above with these signatures.
    let launch: Launch = unsafe { std::mem::transmute(lib.symbol("sparsec_shim_launch")?) };
    // SAFETY: as above.
    let reverse: Kernel = unsafe { std::mem::transmute(lib.symbol("reverse")?) };
    // SAFETY: as above.
    let diverge: Kernel = unsafe { std::mem::transmute(lib.symbol("diverge")?) };
    let mut a: Vec<f32> = (0..512).map(|i| i as f32).collect();
    let w = [1.0f32];
    // SAFETY: `a` has 2 blocks of 256 floats; `w` one float.
    let status = unsafe {
        launch(
            reverse,
            2,
            1,
            1,
            256,
            a.as_mut_ptr(),
            w.as_ptr(),
            2,
            std::ptr::null(),
        )
    };
    ensure!(status == 0, "status {status}");
    for blk in 0..2 {
        for t in 0..256 {
            let want = ((blk * 256 + 255 - t) as f32 + 1.0) * 2.0;
            ensure!(
                a[blk * 256 + t] == want,
                "block {blk} thread {t}: {}",
                a[blk * 256 + t]
            );
        }
    }
    // SAFETY: as above.
    let status = unsafe {
        launch(
            diverge,
            1,
            1,
            1,
            256,
            a.as_mut_ptr(),
            w.as_ptr(),
            1,
            std::ptr::null(),
        )
    };
    ensure!(status == -1, "a divergent barrier gave status {status}");
    // And the shim recovers for the next launch.
    // SAFETY: as above.
    let status = unsafe {
        launch(
            reverse,
            2,
            1,
            1,
            256,
            a.as_mut_ptr(),
            w.as_ptr(),
            1,
            std::ptr::null(),
        )
    };
    ensure!(status == 0, "status {status} after a divergent launch");
    Ok(())
}

#[test]
fn sparsenet_40_24() -> Result<()> {
    check("sparsenet-40-24", 2, true)
}

#[test]
fn sparsenet_bc_100_24() -> Result<()> {
    check("sparsenet-bc-100-24", 2, true)
}

#[test]
fn densenet_bc_100_12() -> Result<()> {
    check("densenet-bc-100-12", 2, true)
}

#[test]
fn sparsenet_bc_1000_12() -> Result<()> {
    check("sparsenet-bc-1000-12", 1, true)
}

#[test]
fn sparsenet_100_24() -> Result<()> {
    check("sparsenet-100-24", 2, false)
}

#[test]
fn sparsenet_100_36() -> Result<()> {
    check("sparsenet-100-36", 2, false)
}

#[test]
fn sparsenet_100_16_32_64() -> Result<()> {
    check("sparsenet-100-16-32-64", 2, false)
}

#[test]
fn sparsenet_bc_100_36() -> Result<()> {
    check("sparsenet-bc-100-36", 2, false)
}

#[test]
fn densenet_40_12() -> Result<()> {
    check("densenet-40-12", 2, false)
}

#[test]
fn preact_resnet_cifar() -> Result<()> {
    check("preact-resnet-cifar", 2, false)
}

#[test]
fn sparsenet_bc_400_12() -> Result<()> {
    check("sparsenet-bc-400-12", 1, false)
}

#[test]
fn sparsenet_plus_1001() -> Result<()> {
    check("sparsenet-plus-1001", 1, false)
}

#[test]
fn sparsenet_plus_2000() -> Result<()> {
    check("sparsenet-plus-2000", 1, false)
}

/// ImageNet-size (224x224, 7x7 stride-2 stem, 3x3 max pool): the only model with a max pool
/// and a strided convolution.
#[test]
fn sparsenet_121_32() -> Result<()> {
    check("sparsenet-121-32", 1, false)
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
fn feature_extractor_relu_last() -> Result<()> {
    check_extractor("relu-last")
}
