//! The `sparsec` command line: argument parsing, file I/O and exit codes only. Every piece of
//! work is a library call (`driver`); source errors arrive rendered like rustc's.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sparsec::backend::cpu::Winograd;
use sparsec::driver::{self, CompileOptions, Compiled, DriverError, Target, WeightsSource};
use sparsec::kernel_select::KernelPolicy;
use sparsec::{plan, stats};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sparsec",
    version,
    about = "A static graph compiler for SparseNet-style convolutional networks",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    compile: CompileArgs,
}

#[derive(Args)]
struct CompileArgs {
    /// The `.snet` model to compile.
    #[arg(required = true)]
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
    Cpu,
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
}

#[derive(Subcommand)]
enum Command {
    /// Parameters, multiply-adds, depth and activation memory of a model.
    Stats {
        model: PathBuf,
        /// Machine-readable output (keys documented in docs/stats.md).
        #[arg(long)]
        json: bool,
        /// Batch size for the byte counts.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        batch: u64,
    },
    /// Run a compiled model.bin on an input and print the top-5 classes of each row.
    Run {
        model: PathBuf,
        /// Input batch, NCHW float32: a `.safetensors` file (the tensor `input`, or its only
        /// tensor) or a `.npy` file. Optional with `--profile` (random input of `--batch`).
        #[arg(long, required_unless_present = "profile")]
        input: Option<PathBuf>,
        /// Where to write the output (`.safetensors` or `.npy`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print each kernel's time and GFLOP/s, and the sums per layer kind (3x3, 1x1,
        /// transition, head, ...) as a fraction of this machine's FMA peak measured now.
        #[arg(long)]
        profile: bool,
        /// Batch of random input for `--profile` without `--input`.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Profiled runs to average (after one warm-up run).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Threads of the session (default: `SPARSEC_THREADS`, else every core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<DriverError>() {
                // Rendered diagnostics already end with the summary line.
                Some(DriverError::Source { .. }) => eprintln!("{e}"),
                _ => eprintln!("error: {e:#}"),
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
        profile,
        batch,
        iters,
        threads,
    }) = cli.command
    {
        let threads = threads.unwrap_or_else(runtime::default_threads);
        if profile {
            return sparsec::profile_report::profile_model(
                &model,
                input.as_deref(),
                batch,
                iters,
                threads,
            );
        }
        let Some(input) = input else {
            anyhow::bail!("`sparsec run` needs --input (or --profile)");
        };
        return run_model(&model, &input, output.as_deref(), threads);
    }
    if let Some(Command::Stats { model, json, batch }) = cli.command {
        let graph = driver::load(&model)?;
        let s = stats::full(&graph, batch)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            print!("{}", stats::render(&s));
        }
        return Ok(());
    }
    let args = cli.compile;
    let model = args.model.clone().context("no model given")?;
    let graph = driver::load(&model)?;
    if args.emit == Some(Emit::Ir) {
        print!("{}", ir::print::print(&graph));
        return Ok(());
    }
    let weights = match (&args.weights, args.random_weights) {
        (Some(path), _) => WeightsSource::Safetensors(path.clone()),
        (None, Some(seed)) => WeightsSource::Random(seed),
        (None, None) => WeightsSource::None,
    };
    if let Some(out) = &args.output {
        if matches!(weights, WeightsSource::None) {
            anyhow::bail!(
                "code generation needs weights: pass --weights W.safetensors or --random-weights SEED"
            );
        }
        let target = match args.target {
            TargetKind::Cpu => Target::Cpu(kernel_policy(&args)?),
            TargetKind::Cuda => Target::Cuda {
                archs: args.cuda_arch.clone(),
                ptx: !args.no_ptx,
            },
        };
        let options = CompileOptions {
            weights,
            target,
            max_batch: args.max_batch,
            verify: cfg!(debug_assertions),
        };
        let Compiled {
            opt,
            bytes,
            selection,
        } = driver::compile(graph, &options)?;
        print_timings(args.timings, &opt.timings);
        if let Some(selection) = &selection {
            eprintln!("{selection}");
            if !selection.met {
                eprintln!(
                    "warning: no kernel choice reaches the budget; kept the most accurate one measured"
                );
            }
        }
        std::fs::write(out, &bytes).with_context(|| format!("cannot write `{}`", out.display()))?;
        eprintln!(
            "wrote {} ({} bytes): {} steps, arena {} bytes per image, max batch {}",
            out.display(),
            stats::group(bytes.len() as u64),
            opt.graph.node_count(),
            stats::group(opt.plan.arena.arena_bytes),
            args.max_batch
        );
        return Ok(());
    }
    if args.emit == Some(Emit::Cuda) {
        // Kernels address buffers at `offset_per_image * batch`: the plan is made at batch 1.
        let opt = driver::optimize(graph, &weights, 1, cfg!(debug_assertions))?;
        print_timings(args.timings, &opt.timings);
        let program = sparsec::backend::cuda::generate(&opt.graph, &opt.plan, false)?;
        print!("{}", program.source);
        return Ok(());
    }
    let raw = graph.clone();
    // With weights, `--emit plan` also shows each convolution's CPU kernel as `-o` would
    // choose it (the choice needs the weights and a plan made at batch 1).
    let kernels = if args.emit == Some(Emit::Plan) && !matches!(weights, WeightsSource::None) {
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
        Some(Emit::OptIr) => print!("{}", ir::print::print(&opt.graph)),
        Some(Emit::Plan) => {
            print!("{}", plan::memory::print(&opt.graph, &opt.plan));
            print!("{}", kernels.unwrap_or_default());
        }
        Some(Emit::MemorySvg) => {
            let raw_liveness = plan::liveness::analyze(&raw).context("the graph has a cycle")?;
            print!(
                "{}",
                plan::svg::memory_svg(&raw.name, &raw_liveness, &opt.plan)
            );
        }
        Some(Emit::Ir | Emit::Cuda) | None => {
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

/// `sparsec run`: loads model.bin with the runtime, runs the input batch, prints the top-5
/// classes of each row, optionally writes the output.
fn run_model(
    model: &std::path::Path,
    input: &std::path::Path,
    output: Option<&std::path::Path>,
    threads: usize,
) -> Result<()> {
    let model = runtime::Model::load(model)?;
    let (x, batch) = sparsec::profile_report::read_input(&model, input)?;
    let mut session = model.session_with_threads(threads);
    let y = session.run(&x, batch)?;
    let classes = y.len() / batch.max(1);
    for (row, logits) in y.chunks(classes.max(1)).enumerate() {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let top: Vec<String> = order
            .iter()
            .take(5)
            .map(|&c| format!("{c} ({:.4})", logits[c]))
            .collect();
        println!("row {row}: {}", top.join(", "));
    }
    if let Some(path) = output {
        let array = sparsec::tensor_io::Array {
            shape: vec![batch, classes],
            data: y.to_vec(),
        };
        sparsec::tensor_io::write(path, &model.output().name, &array)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
