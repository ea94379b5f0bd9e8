//! The `sparsec` command line: argument parsing, file I/O and exit codes only. Every piece of
//! work is a library call (`driver`); source errors arrive rendered like rustc's.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    let raw = graph.clone();
    let opt = driver::optimize(graph, &weights, args.batch, cfg!(debug_assertions))?;
    if args.timings {
        let total: f64 = opt.timings.iter().map(|t| t.time.as_secs_f64()).sum();
        for t in &opt.timings {
            eprintln!(
                "{:<22} {:>9.3} ms  {:>6} rewrites",
                t.name,
                t.time.as_secs_f64() * 1e3,
                t.rewrites
            );
        }
        eprintln!("{:<22} {:>9.3} ms", "total", total * 1e3);
    }
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
        Some(Emit::Ir) | None => {
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
