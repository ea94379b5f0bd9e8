//! The `sparsec` command line: argument parsing, file I/O and exit codes only. Every piece of
//! work is a library call (`driver`, `model_info`, `bench`, ...); source errors arrive
//! rendered like rustc's.
//!
//! Standard output goes through [`out`]: a reader that closes the pipe early (`| head`) ends
//! the program quietly with status 0, as rustc and cargo do, never with a panic.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use sparsec::backend::cpu::Winograd;
use sparsec::backend::cuda::precision::Precision;
use sparsec::driver::{
    self, CompileOptions, Compiled, CpuArch, DriverError, Target, WeightsSource,
};
use sparsec::kernel_select::KernelPolicy;
use sparsec::{plan, stats};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sparsec",
    version,
    about = "A static graph compiler for SparseNet-style convolutional networks",
    long_about = "A static graph compiler for SparseNet-style convolutional networks: compiles \
                  a .snet model to model.bin (`sparsec MODEL.snet -o model.bin`), runs, \
                  describes and benchmarks model.bin files.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compile: CompileArgs,
}

#[derive(Args)]
struct CompileArgs {
    /// The `.snet` model to compile (or a subcommand: run, stats, info, bench, completions).
    #[arg(required = true, value_name = "MODEL.snet")]
    model: Option<PathBuf>,
    /// Print a stage of the compilation to standard output.
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Weights as safetensors, under the model's parameter names (official PyTorch names by
    /// default). Not needed for the IR, the plan or statistics: no count or plan depends on
    /// the values.
    #[arg(long, conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Deterministic random weights from this seed (benchmarks).
    #[arg(long, value_name = "SEED")]
    random_weights: Option<u64>,
    /// Batch size the memory plan is made for.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch: u64,
    /// Print each pass's time and rewrite count to standard error.
    #[arg(long)]
    timings: bool,
    /// Write the compiled model (CPU machine code, weights, plan) to this file.
    #[arg(short = 'o', long = "output", value_name = "MODEL.bin")]
    output: Option<PathBuf>,
    /// What `-o` compiles for: CPU machine code, or CUDA kernels (NVRTC: cubins for sm_80 and
    /// sm_90, PTX fallback).
    #[arg(long, value_enum, default_value = "cpu")]
    target: TargetKind,
    /// With `--target cuda`: the real architectures to build cubins for (PTX for compute_80
    /// is always included, for any other GPU).
    #[arg(long, value_delimiter = ',', default_value = "sm_80,sm_90", value_parser = cuda_arch)]
    cuda_arch: Vec<String>,
    /// With `--target cuda`: leave the PTX fallback out (a smaller file that runs only on the
    /// `--cuda-arch` GPUs).
    #[arg(long)]
    no_ptx: bool,
    /// With `--target cuda`: run NVRTC for every target even when the on-disk kernel cache
    /// (`$SPARSEC_CACHE_DIR`, else `$XDG_CACHE_HOME/sparsec`, else `~/.cache/sparsec`) holds
    /// its output, and store nothing there.
    #[arg(long)]
    no_cache: bool,
    /// With `--target cuda` (and `--emit cuda`): what the convolutions may run in. `tf32`
    /// and `bf16` put each layer the cost model finds faster on tensor cores (inputs rounded
    /// to TF32 or BF16, FP32 accumulate, FP32 activations); small layers stay `fp32`.
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "tf32", "bf16"])]
    precision: String,
    /// With `--target cpu`: the 3x3 convolution kernels. `auto` measures the compiled
    /// model against the f64 reference interpreter on calibration input and picks, layer by
    /// layer, the fastest of Winograd F(4x4), F(2x2) and direct whose end-to-end error stays
    /// within `--tolerance`. `4x4`, `2x2` and `off` force the largest Winograd tile everywhere,
    /// unmeasured (`4x4` is the fastest and rounds the most).
    #[arg(long, value_enum, default_value = "auto")]
    winograd: WinogradArg,
    /// With `--winograd auto`: the largest end-to-end relative error allowed (default: 1.5x
    /// the error of the all-direct build of the same model, measured on the same input).
    #[arg(long, value_name = "T", conflicts_with_all = ["winograd"])]
    tolerance: Option<f64>,
    /// With `--winograd auto`: the input rows to measure on (`.safetensors` or `.npy`, NCHW
    /// float32, any number of images); two random rows by default.
    #[arg(long, value_name = "X")]
    calibration: Option<PathBuf>,
    /// Largest batch the compiled model accepts (the arena grows with the batch).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_batch: u32,
    /// Sign `-o`'s model.bin with this secret key (`sparsec keygen`). By default it is signed
    /// with the per-user key (created on first use in `$SPARSEC_KEY_DIR`, else
    /// `$XDG_CONFIG_HOME/sparsec`, else `~/.config/sparsec`), which `sparsec run` trusts.
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// Write `-o`'s model.bin unsigned (it then runs data-only, or with
    /// `--allow-unsigned-code`).
    #[arg(long, conflicts_with = "sign")]
    no_sign: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WinogradArg {
    Auto,
    #[value(name = "4x4")]
    F4x4,
    #[value(name = "2x2")]
    F2x2,
    Off,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetKind {
    /// Machine code for this machine's architecture.
    Cpu,
    /// Machine code for x86-64 (from any host).
    #[value(name = "cpu-x86_64")]
    CpuX86_64,
    /// Machine code for 64-bit ARM (from any host: cross compilation for ARM boards).
    #[value(name = "cpu-aarch64")]
    CpuAarch64,
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Emit {
    /// The graph IR as lowered from the source, with shapes.
    Ir,
    /// The IR after the optimisation pipeline.
    OptIr,
    /// Schedule, buffer lifetimes and arena offsets.
    Plan,
    /// An SVG of live memory over the schedule and the arena's blocks.
    MemorySvg,
    /// The generated CUDA C kernels (plan made at batch 1; weights not needed).
    Cuda,
    /// The graph as a standard ONNX model (opset 17) written to `-o` (weights from --weights
    /// or --random-weights; docs/onnx.md).
    Onnx,
}

#[derive(Subcommand)]
enum Command {
    /// Run a compiled model.bin on an input and print the top classes of each row (softmax
    /// probabilities, or logits with --logits).
    Run {
        /// The compiled model (`sparsec MODEL.snet --weights W.safetensors -o model.bin`).
        #[arg(value_name = "MODEL.bin")]
        model: PathBuf,
        /// Input batch, NCHW float32: a `.safetensors` file (the tensor `input`, or its only
        /// tensor) or a `.npy` file. Optional with `--profile` (random input of `--batch`).
        #[arg(long, required_unless_present = "profile")]
        input: Option<PathBuf>,
        /// Where to write the output logits (`.safetensors` or `.npy`, by the extension).
        #[arg(long)]
        output: Option<PathBuf>,
        /// How many of the most likely classes to print per row.
        #[arg(long, value_name = "K", default_value_t = 5, value_parser = at_least_one)]
        top: usize,
        /// Print the raw logits instead of softmax probabilities.
        #[arg(long)]
        logits: bool,
        /// Print each kernel's time and GFLOP/s, and the sums per layer kind (3x3, 1x1,
        /// transition, head, ...) as a fraction of this machine's FMA peak measured now.
        #[arg(long)]
        profile: bool,
        /// Batch of random input for `--profile` without `--input`.
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        batch: usize,
        /// Profiled runs to average (after one warm-up run).
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        iters: usize,
        /// Threads of the session (default: `SPARSEC_THREADS`, else every core).
        #[arg(long, value_parser = at_least_one)]
        threads: Option<usize>,
        /// Run the native code of a file signed by this public key (`sparsec keygen`'s
        /// `.pub`), besides the per-user key `sparsec` signs with by default. Repeatable.
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        /// Refuse a file that is not signed by a trusted key (rather than running it
        /// data-only, or refusing only a CUDA model).
        #[arg(long)]
        require_signature: bool,
        /// Run the native code in the file (CPU machine code, CUDA kernels) although it is not
        /// signed by a trusted key: only for files whose origin you trust. Without it (or a
        /// trusted signature) a CPU model runs its validated schedule through the runtime's
        /// own kernels, and a CUDA model is refused.
        #[arg(long)]
        allow_unsigned_code: bool,
    },
    /// Parameters, multiply-adds, depth and activation memory of a model.
    Stats {
        /// The `.snet` model (source, not model.bin: no weights needed).
        #[arg(value_name = "MODEL.snet")]
        model: PathBuf,
        /// Machine-readable output (keys documented in docs/stats.md).
        #[arg(long)]
        json: bool,
        /// Batch size for the byte counts.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        batch: u64,
    },
    /// Describe a compiled model.bin: target and CPU features, input, classes, maximum batch,
    /// memory, steps and the kernel of each layer kind.
    Info {
        /// The compiled model (need not be runnable on this machine).
        #[arg(value_name = "MODEL.bin")]
        model: PathBuf,
        /// Machine-readable output (keys in the README, "Using it").
        #[arg(long)]
        json: bool,
    },
    /// Measure a compiled model.bin: latency percentiles and throughput over random input,
    /// and its GFLOP/s against this machine's FMA peak measured in the same run.
    Bench {
        /// The compiled model.
        #[arg(value_name = "MODEL.bin")]
        model: PathBuf,
        /// Images per run (at most the model's maximum batch).
        #[arg(long, default_value_t = 1, value_parser = at_least_one)]
        batch: usize,
        /// Threads of the session (default: `SPARSEC_THREADS`, else every core).
        #[arg(long, value_parser = at_least_one)]
        threads: Option<usize>,
        /// Timed runs.
        #[arg(long, default_value_t = 50, value_parser = at_least_one)]
        iters: usize,
        /// Untimed runs first (threads started, memory grown, caches warm).
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Machine-readable output (keys in the README, "Using it").
        #[arg(long)]
        json: bool,
        /// Run the native code of a file signed by this public key (`sparsec keygen`'s
        /// `.pub`), besides the per-user key `sparsec` signs with by default. Repeatable.
        #[arg(long, value_name = "KEY.pub")]
        trust: Vec<PathBuf>,
        /// Refuse a file that is not signed by a trusted key (rather than running it
        /// data-only, or refusing only a CUDA model).
        #[arg(long)]
        require_signature: bool,
        /// Run the native code in the file (CPU machine code, CUDA kernels) although it is not
        /// signed by a trusted key: only for files whose origin you trust. Without it (or a
        /// trusted signature) a CPU model runs its validated schedule through the runtime's
        /// own kernels, and a CUDA model is refused.
        #[arg(long)]
        allow_unsigned_code: bool,
    },
    /// Write a new ed25519 signing keypair: the secret key (mode 0600) and `KEY.pub`, the
    /// public key to give to whoever runs your model.bin files (`--trust KEY.pub`).
    Keygen {
        /// Where to write the secret key (default: the per-user key `sparsec` signs with).
        #[arg(long, value_name = "KEY")]
        out: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) to standard
    /// output.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// The key `-o` signs with: `--sign KEY`, none with `--no-sign`, else the per-user key
/// (created, with a note on standard error, on first use).
fn signing_key(args: &CompileArgs) -> Result<Option<runtime::signature::SigningKey>> {
    if args.no_sign {
        return Ok(None);
    }
    if let Some(path) = &args.sign {
        return Ok(Some(runtime::signature::read_secret_key(path)?));
    }
    let (key, created, path) = sparsec::keys::user_signing_key()?;
    if created {
        eprintln!(
            "created your signing key {} (public: {}, {}); `sparsec run` trusts it",
            path.display(),
            sparsec::keys::public_path(&path).display(),
            runtime::signature::fingerprint(key.verifying_key().as_bytes())
        );
    }
    Ok(Some(key))
}

/// What `run` and `bench` trust: the per-user public key (if there is one), every `--trust`
/// file, and `--allow-unsigned-code`.
fn load_options(
    trust: &[PathBuf],
    require_signature: bool,
    allow_unsigned_code: bool,
) -> Result<runtime::LoadOptions> {
    let mut trusted_keys: Vec<_> = runtime::signature::user_public_key()?.into_iter().collect();
    for path in trust {
        trusted_keys.push(runtime::signature::read_public_key(path)?);
    }
    Ok(runtime::LoadOptions {
        allow_unsigned_code,
        trusted_keys,
        require_signature,
    })
}

/// A count that must be at least 1 (`--threads`, `--iters`, `--batch`, `--top`).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

/// Writes to standard output. A closed pipe comes back as an `io::Error` of kind
/// `BrokenPipe`, which `main` turns into a quiet exit.
fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Whether an error is (caused by) a closed standard output.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes on one line, each cause once: a message that already ends with
/// its cause's text (`cannot read x: Is a directory`) is not followed by it again.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.ends_with(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader has gone (`sparsec ... | head`): nothing left to say, as rustc and cargo.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<DriverError>() {
                // Rendered diagnostics already end with the summary line.
                Some(DriverError::Source { .. }) => eprintln!("{e}"),
                _ => eprintln!("error: {}", error_line(&e)),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(Command::Run {
        model,
        input,
        output,
        top,
        logits,
        profile,
        batch,
        iters,
        threads,
        trust,
        require_signature,
        allow_unsigned_code,
    }) = cli.command
    {
        let threads = threads.unwrap_or_else(runtime::default_threads);
        let load = load_options(&trust, require_signature, allow_unsigned_code)?;
        if profile {
            let report = sparsec::profile_report::profile_model(
                &model,
                input.as_deref(),
                batch,
                iters,
                threads,
            )?;
            return out(&report);
        }
        let Some(input) = input else {
            anyhow::bail!("`sparsec run` needs --input (or --profile)");
        };
        let show = if logits {
            Show::Logits
        } else {
            Show::Probabilities
        };
        return run_model(&model, &load, &input, output.as_deref(), threads, top, show);
    }
    if let Some(Command::Stats { model, json, batch }) = cli.command {
        let graph = driver::load(&model)?;
        let s = stats::full(&graph, batch)?;
        if json {
            out(&format!("{}\n", serde_json::to_string_pretty(&s)?))?;
        } else {
            out(&stats::render(&s))?;
        }
        return Ok(());
    }
    if let Some(Command::Info { model, json }) = cli.command {
        let trusted: Vec<_> = runtime::signature::user_public_key()?.into_iter().collect();
        let info = sparsec::model_info::read_with(&model, &trusted)?;
        if json {
            out(&format!("{}\n", serde_json::to_string_pretty(&info)?))?;
        } else {
            out(&sparsec::model_info::render(&info))?;
        }
        return Ok(());
    }
    if let Some(Command::Bench {
        model,
        batch,
        threads,
        iters,
        warmup,
        json,
        trust,
        require_signature,
        allow_unsigned_code,
    }) = cli.command
    {
        let load = load_options(&trust, require_signature, allow_unsigned_code)?;
        let options = sparsec::bench::BenchOptions {
            batch,
            threads: threads.unwrap_or_else(runtime::default_threads),
            warmup,
            iters,
            load,
        };
        let report = sparsec::bench::bench(&model, options)?;
        if json {
            out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        } else {
            out(&sparsec::bench::render(&report))?;
        }
        return Ok(());
    }
    if let Some(Command::Keygen { out: path }) = cli.command {
        let path = match path {
            Some(p) => p,
            None => sparsec::keys::user_secret_path()?,
        };
        let key = sparsec::keys::generate()?;
        sparsec::keys::write_keypair(&path, &key)?;
        let public = sparsec::keys::public_path(&path);
        eprintln!(
            "wrote {} (secret, keep it private) and {} (public key {})",
            path.display(),
            public.display(),
            runtime::signature::fingerprint(key.verifying_key().as_bytes())
        );
        return Ok(());
    }
    if let Some(Command::Completions { shell }) = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "sparsec", &mut script);
        return out(&String::from_utf8_lossy(&script));
    }
    let args = cli.compile;
    let model = args.model.clone().context("no model given")?;
    let graph = driver::load(&model)?;
    if args.emit == Some(Emit::Ir) {
        return out(&ir::print::print(&graph));
    }
    let weights = match (&args.weights, args.random_weights) {
        (Some(path), _) => WeightsSource::Safetensors(path.clone()),
        (None, Some(seed)) => WeightsSource::Random(seed),
        (None, None) => WeightsSource::None,
    };
    if args.emit == Some(Emit::Onnx) {
        let out = args
            .output
            .as_ref()
            .context("--emit onnx writes a file: pass -o MODEL.onnx")?;
        let mut graph = graph;
        driver::bind(&mut graph, &weights)?;
        let bytes = sparsec::onnx::export(&graph)?;
        std::fs::write(out, &bytes).with_context(|| format!("cannot write `{}`", out.display()))?;
        eprintln!(
            "wrote {} ({} bytes): ONNX opset {}",
            out.display(),
            stats::group(bytes.len() as u64),
            sparsec::onnx::OPSET
        );
        return Ok(());
    }
    if let Some(out) = &args.output {
        // An ONNX model brings its weights (its initializers, bound by `driver::load`).
        if matches!(weights, WeightsSource::None) && !graph.params.all_bound() {
            anyhow::bail!(
                "code generation needs weights: pass --weights W.safetensors or --random-weights SEED"
            );
        }
        let target = match args.target {
            TargetKind::Cpu => Target::Cpu(kernel_policy(&args)?),
            TargetKind::CpuX86_64 => Target::CpuFor(CpuArch::X86_64, kernel_policy(&args)?),
            TargetKind::CpuAarch64 => Target::CpuFor(CpuArch::Aarch64, kernel_policy(&args)?),
            TargetKind::Cuda => Target::Cuda {
                archs: args.cuda_arch.clone(),
                ptx: !args.no_ptx,
                cache: !args.no_cache,
                precision: precision(&args)?,
            },
        };
        let options = CompileOptions {
            weights,
            target,
            max_batch: args.max_batch,
            verify: cfg!(debug_assertions),
        };
        // The key first: a missing or malformed one fails before the compile's work.
        let signing_key = signing_key(&args)?;
        let Compiled {
            opt,
            bytes,
            selection,
            precisions,
            arena_bytes_per_image,
        } = driver::compile(graph, &options)?;
        let (bytes, signed_by) = match &signing_key {
            Some(key) => (
                sparsec::artifact::sign(&bytes, key)?,
                format!(
                    ", signed by {}",
                    runtime::signature::fingerprint(key.verifying_key().as_bytes())
                ),
            ),
            None => (bytes, ", unsigned".to_string()),
        };
        print_timings(args.timings, &opt.timings);
        if let Some(selection) = &selection {
            eprintln!("{selection}");
            if !selection.met {
                eprintln!(
                    "warning: no kernel choice reaches the budget; kept the most accurate one measured"
                );
            }
        }
        if let Some(precisions) = &precisions {
            eprintln!("{precisions}");
        }
        std::fs::write(out, &bytes).with_context(|| format!("cannot write `{}`", out.display()))?;
        eprintln!(
            "wrote {} ({} bytes): {} steps, arena {} bytes per image, max batch {}{signed_by}",
            out.display(),
            stats::group(bytes.len() as u64),
            opt.graph.node_count(),
            stats::group(arena_bytes_per_image),
            args.max_batch
        );
        return Ok(());
    }
    if args.emit == Some(Emit::Cuda) {
        // Kernels address buffers at `offset_per_image * batch`: the plan is made at batch 1.
        let opt = driver::optimize(graph, &weights, 1, cfg!(debug_assertions))?;
        print_timings(args.timings, &opt.timings);
        let precision = precision(&args)?;
        let program =
            sparsec::backend::cuda::generate_with(&opt.graph, &opt.plan, false, precision)?;
        if let (Precision::Tf32 | Precision::Bf16, Some(summary)) =
            (precision, program.precision_summary())
        {
            eprintln!("{summary}");
        }
        if let Some(storage) = program.storage_summary(opt.plan.arena.arena_bytes) {
            eprintln!("{storage}");
        }
        return out(&program.source);
    }
    let raw = graph.clone();
    // With weights, `--emit plan` also shows each convolution's CPU kernel as `-o` would
    // choose it (the choice needs the weights and a plan made at batch 1).
    let kernels = if args.emit == Some(Emit::Plan)
        && args.target != TargetKind::Cuda
        && !matches!(weights, WeightsSource::None)
    {
        let opt = driver::optimize(graph.clone(), &weights, 1, cfg!(debug_assertions))?;
        let (_, selection) =
            sparsec::kernel_select::compile(&opt.graph, &opt.plan, &kernel_policy(&args)?)
                .map_err(DriverError::from)?;
        selection.map(|s| format!("{}{s}\n", s.render_kernels()))
    } else {
        None
    };
    let opt = driver::optimize(graph, &weights, args.batch, cfg!(debug_assertions))?;
    print_timings(args.timings, &opt.timings);
    match args.emit {
        Some(Emit::OptIr) => out(&ir::print::print(&opt.graph))?,
        Some(Emit::Plan) if args.target == TargetKind::Cuda => {
            // The CUDA backend's plan: with `--precision bf16` some buffers are BF16 and the
            // arena is placed again (`backend/cuda/storage.rs`); otherwise the same plan.
            let program = sparsec::backend::cuda::generate_with(
                &opt.graph,
                &opt.plan,
                false,
                precision(&args)?,
            )?;
            out(&plan::memory::print(&opt.graph, &program.plan))?;
        }
        Some(Emit::Plan) => {
            let plan = plan::memory::print(&opt.graph, &opt.plan);
            out(&format!("{plan}{}", kernels.unwrap_or_default()))?;
        }
        Some(Emit::MemorySvg) => {
            let raw_liveness = plan::liveness::analyze(&raw).context("the graph has a cycle")?;
            out(&plan::svg::memory_svg(
                &raw.name,
                &raw_liveness,
                &opt.graph,
                &opt.plan,
            ))?;
        }
        Some(Emit::Ir | Emit::Cuda | Emit::Onnx) | None => {
            eprintln!(
                "checked {}: {} nodes after optimisation, arena {} bytes at batch {}",
                model.display(),
                opt.graph.node_count(),
                stats::group(opt.plan.arena.arena_bytes),
                args.batch
            );
        }
    }
    Ok(())
}

/// The CUDA precision of the compile arguments.
fn precision(args: &CompileArgs) -> Result<Precision> {
    args.precision.parse().map_err(anyhow::Error::msg)
}

/// The CPU kernel policy of the compile arguments.
fn kernel_policy(args: &CompileArgs) -> Result<KernelPolicy> {
    Ok(match args.winograd {
        WinogradArg::Auto => KernelPolicy::Guarded {
            tolerance: args.tolerance,
            calibration: match &args.calibration {
                Some(path) => Some(sparsec::tensor_io::read(path)?.data),
                None => None,
            },
        },
        WinogradArg::F4x4 => KernelPolicy::Fixed(Winograd::F4x4),
        WinogradArg::F2x2 => KernelPolicy::Fixed(Winograd::F2x2),
        WinogradArg::Off => KernelPolicy::Fixed(Winograd::Off),
    })
}

/// `sm_` and two or three digits (`sm_80`, `sm_90`, `sm_100`).
fn cuda_arch(s: &str) -> Result<String, String> {
    let ok = s
        .strip_prefix("sm_")
        .is_some_and(|v| (2..=3).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a real GPU architecture like sm_80 or sm_90"
        ))
    }
}

fn print_timings(enabled: bool, timings: &[sparsec::passes::PassTiming]) {
    if !enabled {
        return;
    }
    let total: f64 = timings.iter().map(|t| t.time.as_secs_f64()).sum();
    for t in timings {
        eprintln!(
            "{:<22} {:>9.3} ms  {:>6} rewrites",
            t.name,
            t.time.as_secs_f64() * 1e3,
            t.rewrites
        );
    }
    eprintln!("{:<22} {:>9.3} ms", "total", total * 1e3);
}

/// What `sparsec run` prints beside each class.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Show {
    Probabilities,
    Logits,
}

/// Softmax of one row, in float64 (stable: the largest logit is subtracted first).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logits.iter().map(|&v| (f64::from(v) - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

/// `sparsec run`: loads model.bin with the runtime, runs the input batch, writes the output if
/// asked, then prints the top `top` classes of each row (or, for a feature-map output, its
/// shape and a summary per row). Arguments are checked (file types, batch) before anything
/// runs.
fn run_model(
    model_path: &Path,
    load: &runtime::LoadOptions,
    input: &Path,
    output: Option<&Path>,
    threads: usize,
    top: usize,
    show: Show,
) -> Result<()> {
    sparsec::tensor_io::kind(input)?;
    if let Some(path) = output {
        sparsec::tensor_io::kind(path)?;
    }
    let model = runtime::Model::load_with(model_path, load)?;
    let (x, batch) = sparsec::profile_report::read_input(&model, input)?;
    let mut session = model.session_with_threads(threads);
    let y = session.run(&x, batch)?;
    let classes = y.len() / batch.max(1);
    let [c, h, w] = model.output().shape;
    // A model without a classifier head gives a feature map per image.
    let feature_map = (h, w) != (1, 1);
    if let Some(path) = output {
        let shape = if feature_map {
            vec![batch, c as usize, h as usize, w as usize]
        } else {
            vec![batch, classes]
        };
        let array = sparsec::tensor_io::Array {
            shape,
            data: y.to_vec(),
        };
        sparsec::tensor_io::write(path, &model.output().name, &array)?;
        eprintln!("wrote {}", path.display());
    }
    if feature_map {
        let mut text = String::new();
        for (row, map) in y.chunks(classes.max(1)).enumerate() {
            let (lo, hi) = map
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &v| {
                    (l.min(v), u.max(v))
                });
            let mean = map.iter().map(|&v| f64::from(v)).sum::<f64>() / map.len().max(1) as f64;
            text.push_str(&format!(
                "row {row}: [{c}, {h}, {w}] feature map, mean {mean:.4}, min {lo:.4}, max {hi:.4}\n"
            ));
        }
        return out(&text);
    }
    let k = top.min(classes);
    let mut text = match show {
        Show::Probabilities => {
            format!("top {k} of {classes} classes per row (softmax probability):\n")
        }
        Show::Logits => format!("top {k} of {classes} classes per row (logit):\n"),
    };
    for (row, logits) in y.chunks(classes.max(1)).enumerate() {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let probabilities = softmax(logits);
        let best: Vec<String> = order
            .iter()
            .take(k)
            .map(|&c| match show {
                Show::Probabilities => format!("{c} ({:.4})", probabilities[c]),
                Show::Logits => format!("{c} ({:.4})", logits[c]),
            })
            .collect();
        text.push_str(&format!("row {row}: {}\n", best.join(", ")));
    }
    out(&text)
}
