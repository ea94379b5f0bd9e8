//! The `sparsec` command line: argument parsing, file I/O and exit codes only. Every piece of
//! work is a library call; errors are rendered by `diagnostics` (source errors) or printed with
//! their context chain (anyhow, I/O).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sparsec::{diagnostics, stats};
use std::path::{Path, PathBuf};
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
    /// Print a stage of the compilation to standard output instead of a summary.
    #[arg(long, value_enum)]
    emit: Option<Emit>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The graph IR as lowered from the source, with shapes.
    Ir,
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
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        batch: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Some(Command::Stats { model, json, batch }) => {
            let Some(graph) = load(&model)? else {
                return Ok(ExitCode::FAILURE);
            };
            let s = stats::stats(&graph, batch);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", stats::render(&s));
            }
        }
        None => {
            let model = cli.compile.model.context("no model given")?;
            let Some(graph) = load(&model)? else {
                return Ok(ExitCode::FAILURE);
            };
            match cli.compile.emit {
                Some(Emit::Ir) => print!("{}", ir::print::print(&graph)),
                None => {
                    let s = stats::stats(&graph, 1);
                    eprintln!(
                        "checked {}: {} nodes, {} parameters, {} multiply-adds per image",
                        model.display(),
                        graph.node_count(),
                        stats::group(s.params),
                        stats::group(s.macs_per_image)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads, parses and lowers a model; renders diagnostics and returns `None` on source errors.
fn load(path: &Path) -> Result<Option<ir::Graph>> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let (graph, errors) = sparsec::compile_source(stem, &source);
    if !errors.is_empty() {
        eprint!(
            "{}",
            diagnostics::render(&path.display().to_string(), &source, &errors)
        );
        let n = errors.len();
        eprintln!(
            "error: could not compile `{}` due to {n} previous error{}",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
        return Ok(None);
    }
    Ok(graph)
}
