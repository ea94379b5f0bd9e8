//! The `sparsec` command line: argument parsing, file I/O and exit codes only. Every piece of
//! work is a library call (`driver`); source errors arrive rendered like rustc's.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sparsec::backend::cpu::{CpuOptions, Winograd};
use sparsec::driver::{self, DriverError, WeightsSource};
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
    /// With `--target cpu`: the largest Winograd tile for 3x3 convolutions. `4x4` does the
    /// fewest multiplications; `2x2` and `off` round less (the largest golden-model errors
    /// against PyTorch: 1.5e-4, 3.4e-5 and 4.3e-5, all on sparsenet-bc-100-24).
    #[arg(long, value_enum, default_value = "4x4")]
    winograd: WinogradArg,
    /// Largest batch the compiled model accepts (the arena grows with the batch).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_batch: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WinogradArg {
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
    let model = args.model.context("no model given")?;
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
        let verify = cfg!(debug_assertions);
        let (opt, bytes) = match args.target {
            TargetKind::Cpu => {
                let winograd = match args.winograd {
                    WinogradArg::F4x4 => Winograd::F4x4,
                    WinogradArg::F2x2 => Winograd::F2x2,
                    WinogradArg::Off => Winograd::Off,
                };
                let options = CpuOptions { winograd };
                driver::compile_cpu_with(graph, &weights, args.max_batch, verify, &options)?
            }
            TargetKind::Cuda => {
                let archs: Vec<&str> = args.cuda_arch.iter().map(String::as_str).collect();
                driver::compile_cuda_for(
                    graph,
                    &weights,
                    args.max_batch,
                    verify,
                    &archs,
                    !args.no_ptx,
                )?
            }
        };
        print_timings(args.timings, &opt.timings);
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
    let opt = driver::optimize(graph, &weights, args.batch, cfg!(debug_assertions))?;
    print_timings(args.timings, &opt.timings);
    match args.emit {
        Some(Emit::OptIr) => print!("{}", ir::print::print(&opt.graph)),
        Some(Emit::Plan) => print!("{}", plan::memory::print(&opt.graph, &opt.plan)),
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
/// classes of each row (or, for a feature map output, its shape and a summary), optionally
/// writes the output.
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
    let [c, h, w] = model.output().shape;
    let feature_map = (h, w) != (1, 1);
    if feature_map {
        // A feature map (a model without a classifier head): its shape and a summary per row.
        for (row, map) in y.chunks(classes.max(1)).enumerate() {
            let (lo, hi) = map
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &v| {
                    (l.min(v), u.max(v))
                });
            let mean = map.iter().map(|&v| f64::from(v)).sum::<f64>() / map.len().max(1) as f64;
            println!(
                "row {row}: [{c}, {h}, {w}] feature map, mean {mean:.4}, min {lo:.4}, max {hi:.4}"
            );
        }
    } else {
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
    }
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
    Ok(())
}
