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
//! Tensor cores (`--precision tf32|bf16`, `backend/cuda/precision.rs`): the covering models
//! ([`tf32`] and [`bf16`] tests) are compiled at each precision and run the same way, the
//! tensor-core products emulated fragment by fragment by `mma_shim.h`; the tolerance is
//! derived from the precision's unit roundoff ([`tolerance`]), and the golden models' error
//! against PyTorch's float64 outputs is printed and checked with it. At BF16 the plan stores
//! buffers in BF16 (`backend/cuda/storage.rs`): the suite runs the program's own plan, requires
//! some BF16 buffer (and none at FP32 or TF32), and the arena's BF16 buffers are read and
//! written through 16-bit views as on the GPU. A unit test checks the TF32 and BF16 rounding of
//! the generated source, and a value's trip through a BF16 buffer, against known bit patterns.
//!
//! g++ is required: without it these tests fail, they do not skip.

use anyhow::{Context, Result, bail, ensure};
use ir::interp;
use sparsec::backend::cuda::precision::Precision;
use sparsec::backend::cuda::{self, CudaProgram, SHIM_HEADER};
use sparsec::driver::{self, Optimized, WeightsSource};
use sparsec_tests::{damp_summed_branches, reference_run};
use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const TOLERANCE: f64 = 2e-4;

/// The relative error against PyTorch's float64 outputs allowed with the golden weights: FP32
/// the suite's 2e-4; TF32 0.1 and BF16 0.25, a check against gross errors only (a wrong
/// fragment layout gives errors of order 1): the trained golden weights amplify rounding
/// differently per model (sparsenet-bc-100-24's FP32 error is already 40x the others'; at TF32
/// it measured 3.6e-2, at BF16 1.2e-1, the other golden models 4.9e-4 to 6.8e-3). The
/// precise check is [`tolerance`] against the interpreter.
fn golden_tolerance(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => TOLERANCE,
        Precision::Tf32 => 0.1,
        Precision::Bf16 => 0.25,
    }
}

/// The relative error allowed at a precision: FP32 the suite's 2e-4; TF32 and BF16 eight
/// roundings of an operand (2^-11 and 2^-8 each: 3.9e-3 and 3.1e-2). Measured (docs/cuda.md
/// "Precisions") the errors are about a tenth of these.
fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::Fp32 => TOLERANCE,
        _ => 8.0 * p.unit_roundoff(),
    }
}

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
                // BF16 buffers are written and read through `unsigned short*` views of the
                // float arena, as on the GPU.
                "-fno-strict-aliasing",
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

/// The weights section as floats.
fn weights_f32(program: &CudaProgram) -> Vec<f32> {
    program
        .weights
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The plan's buffers as model.bin's manifest gives them.
fn buffer_specs(plan: &sparsec::plan::memory::MemoryPlan) -> Vec<runtime::format::BufferSpec> {
    plan.liveness
        .buffers
        .iter()
        .zip(&plan.arena.offsets)
        .map(|(b, &offset)| runtime::format::BufferSpec {
            offset_per_image: offset,
            bytes_per_image: b.bytes_per_image,
            element: b.element,
        })
        .collect()
}

impl Library {
    /// Runs launch `l` of a step at `batch` over `arena` with the step's `record`, as the GPU
    /// executor does; the shim's status (0: every block ran, -1: a barrier diverged).
    ///
    /// # Safety
    /// `arena` must hold what `record` addresses at this batch, and `weights` the whole weights
    /// section (a record from `table::build` over the program's plan does).
    unsafe fn launch(
        &self,
        l: &runtime::format::CudaLaunch,
        batch: u32,
        arena: &mut [f32],
        weights: &[f32],
        record: &[u64],
    ) -> Result<i32> {
        // SAFETY: the shim defines this symbol with exactly this signature.
        let launch: Launch = unsafe { std::mem::transmute(self.symbol("sparsec_shim_launch")?) };
        let [gx, gy, gz] = l.grid(batch).context("grid out of limits")?;
        // SAFETY: every generated kernel is
        // `extern "C" void(float*, const float*, unsigned, const unsigned long long*)`.
        let kernel: Kernel = unsafe { std::mem::transmute(self.symbol(&l.kernel)?) };
        // SAFETY: the caller's contract: the record addresses only `arena` and `weights`.
        Ok(unsafe {
            launch(
                kernel,
                gx,
                gy,
                gz,
                l.block,
                arena.as_mut_ptr(),
                weights.as_ptr(),
                batch,
                record.as_ptr(),
            )
        })
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
    // The program's plan: the optimiser's, or the one with BF16 buffers (`cuda::storage`).
    let plan = &program.plan;
    let b = u64::from(batch);
    let mut arena = vec![0.0f32; (plan.arena.arena_bytes * b / 4) as usize];
    let weights = weights_f32(program);
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
    // The step records, exactly as the GPU executor builds them from the validated file.
    let buffers = buffer_specs(plan);
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
        let record = &table.words[table.at[i]..];
        // SAFETY: the arena holds `arena_bytes_per_image * batch` bytes and the weights the
        // whole section; the record (`table::build` succeeded above) addresses only those.
        let status = unsafe { lib.launch(l, batch, &mut arena, &weights, record)? };
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
fn compile(
    path: &Path,
    weights: &WeightsSource,
    precision: Precision,
) -> Result<(Optimized, CudaProgram)> {
    let mut raw = driver::load(path)?;
    driver::bind(&mut raw, weights)?;
    damp_summed_branches(&mut raw);
    let opt = driver::optimize(raw, &WeightsSource::None, 1, false)?;
    let program = cuda::generate_with(&opt.graph, &opt.plan, true, precision)?;
    Ok((opt, program))
}

/// Builds the model's kernels once, checks them against the interpreter on random weights
/// and input at `batch`, and, for a golden model, with the golden weights against PyTorch's
/// outputs (the source depends on sizes and offsets only, so the same library serves both).
fn check(name: &str, batch: u32, golden: bool) -> Result<()> {
    let path = repo().join(format!("examples/models/{name}.snet"));
    check_file(name, &path, batch, golden, Precision::Fp32)
}

/// [`check`] at a tensor-core precision: at least one convolution must get it.
fn check_at(name: &str, batch: u32, golden: bool, precision: Precision) -> Result<()> {
    let path = repo().join(format!("examples/models/{name}.snet"));
    check_file(name, &path, batch, golden, precision)
}

/// A feature extractor of `tests/models/` (issue 12: the last stage is a block, possibly
/// followed by a batch norm and ReLU) at batches 1 and 3, against the interpreter; the output
/// the shim reads is the last block's tensor, `[C, H, W]` per image.
fn check_extractor(name: &str) -> Result<()> {
    let path = repo().join(format!("tests/models/{name}.snet"));
    for batch in [1, 3] {
        check_file(name, &path, batch, false, Precision::Fp32)?;
    }
    Ok(())
}

fn check_file(
    name: &str,
    path: &Path,
    batch: u32,
    golden: bool,
    precision: Precision,
) -> Result<()> {
    let start = std::time::Instant::now();
    let tolerance = tolerance(precision);
    let (opt, program) = compile(path, &WeightsSource::Random(7), precision)?;
    if precision != Precision::Fp32 {
        let summary = program.precision_summary().unwrap_or_default();
        eprintln!("{name} at {precision}: {summary}");
        ensure!(
            program.precisions.values().any(|&p| p == precision),
            "{name}: no convolution runs in {precision}"
        );
    }
    // BF16 storage (`cuda::storage`): at bf16 some buffer must be stored in BF16, so this
    // suite runs the kernels that read and write them; at any other precision none is.
    let bf16_buffers = program
        .plan
        .liveness
        .buffers
        .iter()
        .filter(|b| b.element == runtime::format::Element::Bf16)
        .count();
    if precision == Precision::Bf16 {
        let summary = program.storage_summary(opt.plan.arena.arena_bytes);
        eprintln!(
            "{name} at {precision}: {}",
            summary.as_deref().unwrap_or("-")
        );
        ensure!(bf16_buffers > 0, "{name}: no buffer is stored in bf16");
    } else {
        ensure!(
            bf16_buffers == 0,
            "{name}: {bf16_buffers} bf16 buffers at {precision}"
        );
    }
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
            "{name} batch {batch}, {precision}, {pick:?} variants: shim vs interpreter relative \
             error {error:.3e} (max |y| {scale:.3}; generate+g++ {:.1} s, shim run {:.1} s)",
            built.as_secs_f64(),
            (start.elapsed() - before).as_secs_f64()
        );
        ensure!(
            error <= tolerance,
            "{name} ({precision}, {pick:?} variants): relative error {error:.3e} above \
             {tolerance:e}"
        );
    }
    if !golden {
        return Ok(());
    }
    let weights =
        WeightsSource::Safetensors(repo().join(format!("../shared/golden/{name}.safetensors")));
    let (opt, golden_program) = compile(path, &weights, precision)?;
    ensure!(
        golden_program.source == program.source,
        "{name}: the source depends on the weights"
    );
    let (input, want) = sparsec_tests::golden_io(name)?;
    let got = run(&lib, &opt, &golden_program, &input, 2, Pick::AsRuntime)?;
    let error = interp::relative_error(&got, &want);
    eprintln!("{name} at {precision}: shim vs PyTorch (golden) relative error {error:.3e}");
    let bound = golden_tolerance(precision);
    ensure!(
        error <= bound,
        "{name} ({precision}): golden relative error {error:.3e} above {bound:e}"
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

/// The TF32 and BF16 rounding of the generated source (`sparsec_round_tf32`/`_bf16` in
/// `mma.cuh`, the same integer code the GPU runs) on known bit patterns: TF32 rounds to
/// nearest with ties away from zero (cvt.rna.tf32.f32), BF16 to nearest even
/// (__float2bfloat16_rn); both overflow to infinity and keep NaNs NaN.
#[test]
fn tensor_core_rounding_matches_known_bit_patterns() -> Result<()> {
    let path = repo().join("examples/models/sparsenet-bc-100-24.snet");
    let opt = driver::optimize(driver::load(&path)?, &WeightsSource::None, 1, false)?;
    let program = cuda::generate_with(&opt.graph, &opt.plan, false, Precision::Tf32)?;
    let source = format!(
        "{}\n{}",
        program.source,
        r#"
extern "C" __global__ void round_tf32(float* a, const float* w, unsigned n,
                                      const unsigned long long* d) {
  (void)w; (void)d;
  if (threadIdx.x < n) a[threadIdx.x] = sparsec_round_tf32(a[threadIdx.x]);
}
extern "C" __global__ void round_bf16(float* a, const float* w, unsigned n,
                                      const unsigned long long* d) {
  (void)w; (void)d;
  if (threadIdx.x < n) a[threadIdx.x] = sparsec_round_bf16(a[threadIdx.x]);
}
// A value through a BF16 buffer: stored by the epilogues' sparsec_st, read back by the
// staging's sparsec_ld (the arena's halves: index 2i is float i's low half).
extern "C" __global__ void store_bf16(float* a, const float* w, unsigned n,
                                      const unsigned long long* d) {
  (void)w; (void)d;
  if (threadIdx.x < n) {
    const float x = a[threadIdx.x];
    sparsec_st<true>(a, true, 2u * threadIdx.x + 1u, x);
    sparsec_st<true>(a, true, 2u * threadIdx.x, 0.0f);
    a[threadIdx.x] = sparsec_ld<true>(a, true, 2u * threadIdx.x + 1u);
  }
}
"#
    );
    let lib = Library::build("rounding", &source)?;
    // SAFETY: symbols defined by the shim and the source above with these signatures.
    let launch: Launch = unsafe { std::mem::transmute(lib.symbol("sparsec_shim_launch")?) };
    let bf16: &[(u32, u32)] = &[
        (0x3f80_0000, 0x3f80_0000), // 1.0 exact
        (0x3f80_7fff, 0x3f80_0000), // below half: down
        (0x3f80_8000, 0x3f80_0000), // a tie with an even kept part: down (to even)
        (0x3f81_8000, 0x3f82_0000), // a tie with an odd kept part: up (to even)
        (0xbf81_8000, 0xbf82_0000), // negative tie, odd: away
        (0x3f80_8001, 0x3f81_0000), // above half: up
        (0x3fff_8000, 0x4000_0000), // carry into the exponent
        (0x0000_8000, 0x0000_0000), // subnormal tie, even: down
        (0x7f7f_ffff, 0x7f80_0000), // the largest float: infinity
        (0x7f80_0000, 0x7f80_0000), // infinity
    ];
    let cases: [(&str, &[(u32, u32)]); 3] = [
        (
            "round_tf32",
            &[
                (0x3f80_0000, 0x3f80_0000), // 1.0 exact
                (0x3f80_0fff, 0x3f80_0000), // below half an ulp: down
                (0x3f80_1000, 0x3f80_2000), // a tie with an even kept part: away (RNE: down)
                (0xbf80_1000, 0xbf80_2000), // negative tie: away from zero
                (0x3f80_3000, 0x3f80_4000), // a tie with an odd kept part: away
                (0x3f80_1001, 0x3f80_2000), // above half: up
                (0x3fff_f000, 0x4000_0000), // carry into the exponent
                (0x0000_1000, 0x0000_2000), // subnormal tie
                (0x7f7f_ffff, 0x7f80_0000), // the largest float: infinity
                (0xff80_0000, 0xff80_0000), // -infinity
            ],
        ),
        ("round_bf16", bf16),
        ("store_bf16", bf16),
    ];
    for (kernel_name, pairs) in cases {
        // SAFETY: as above.
        let kernel: Kernel = unsafe { std::mem::transmute(lib.symbol(kernel_name)?) };
        let mut a: Vec<f32> = pairs.iter().map(|&(x, _)| f32::from_bits(x)).collect();
        a.push(f32::from_bits(0x7f80_0001)); // a NaN whose payload lies in the dropped bits
        let n = a.len() as u32;
        // SAFETY: one block of 256 threads; each thread below `n` touches its own float.
        let status = unsafe {
            launch(
                kernel,
                1,
                1,
                1,
                256,
                a.as_mut_ptr(),
                a.as_ptr(),
                n,
                std::ptr::null(),
            )
        };
        ensure!(status == 0, "{kernel_name}: status {status}");
        for (&(x, want), got) in pairs.iter().zip(&a) {
            ensure!(
                got.to_bits() == want,
                "{kernel_name}({x:#010x}) = {:#010x}, want {want:#010x}",
                got.to_bits()
            );
        }
        ensure!(
            a[pairs.len()].is_nan(),
            "{kernel_name}: a NaN became {}",
            a[pairs.len()]
        );
    }
    Ok(())
}

/// The tensor-core suite at one precision, as module `$module`: the golden models with 3x3
/// (basic), bottleneck 1x1 + 3x3 and many-piece 1x1 layers, sum aggregation, and the strided
/// 7x7 stem (ImageNet size).
macro_rules! tensor_core_suite {
    ($module:ident, $precision:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn sparsenet_40_24() -> Result<()> {
                check_at("sparsenet-40-24", 2, true, $precision)
            }

            #[test]
            fn sparsenet_bc_100_24() -> Result<()> {
                check_at("sparsenet-bc-100-24", 2, true, $precision)
            }

            #[test]
            fn densenet_bc_100_12() -> Result<()> {
                check_at("densenet-bc-100-12", 2, true, $precision)
            }

            #[test]
            fn preact_resnet_cifar() -> Result<()> {
                check_at("preact-resnet-cifar", 2, false, $precision)
            }

            /// ImageNet-size: the 7x7 stride-2 stem on tensor cores (strided im2col), every
            /// layer on tensor cores.
            #[test]
            fn sparsenet_121_32() -> Result<()> {
                check_at("sparsenet-121-32", 1, false, $precision)
            }
        }
    };
}

tensor_core_suite!(tf32, Precision::Tf32);
tensor_core_suite!(bf16, Precision::Bf16);

/// A kernel instance built without BF16 support (every instance of an FP32 program) computes
/// nothing for a record with a BF16 output or piece: it would read halves as floats, or write
/// floats over halves, past the buffer's bytes. The FP32 program of sparsenet-40-24 runs with
/// every buffer relabelled BF16 in the records (half the bytes, so the table accepts them, as
/// it would a tampered file's): every step's kernel leaves its whole output untouched.
#[test]
fn kernels_without_bf16_support_refuse_bf16_records() -> Result<()> {
    let path = repo().join("examples/models/sparsenet-40-24.snet");
    let (_, program) = compile(&path, &WeightsSource::Random(7), Precision::Fp32)?;
    let lib = Library::build("refuse-bf16", &program.source)?;
    let plan = &program.plan;
    let batch = 2u32;
    const SENTINEL: f32 = 12345.0;
    let mut arena = vec![SENTINEL; (plan.arena.arena_bytes * u64::from(batch) / 4) as usize];
    let weights = weights_f32(&program);
    let buffers: Vec<_> = buffer_specs(plan)
        .into_iter()
        .map(|b| runtime::format::BufferSpec {
            bytes_per_image: b.bytes_per_image / 2,
            element: runtime::format::Element::Bf16,
            ..b
        })
        .collect();
    let table = runtime::cuda::table::build(&program.steps, &buffers, &program.descs, 64)
        .map_err(|(step, e)| anyhow::anyhow!("step {step}: {e}"))?;
    for (i, variants) in program.launches.iter().enumerate() {
        for l in variants {
            let record = &table.words[table.at[i]..];
            // SAFETY: the arena holds the f32 plan at this batch, the weights the whole
            // section; the record addresses at most half of each buffer's f32 bytes.
            let status = unsafe { lib.launch(l, batch, &mut arena, &weights, record)? };
            ensure!(status == 0, "step {i}: shim status {status}");
        }
    }
    let written = arena
        .iter()
        .filter(|&&v| v.to_bits() != SENTINEL.to_bits())
        .count();
    ensure!(
        written == 0,
        "{written} arena values written by kernels given BF16 records"
    );
    ensure!(table.words.len() > program.steps.len(), "an empty table");
    Ok(())
}
