//! The peer benchmark: sparsec against ONNX Runtime, OpenVINO and tract on the golden models, in
//! one run.
//!
//! `bash benches/peers/run.sh [--quick] [--no-ort] [--no-openvino] [--no-tract] [--batch N]...
//! [NAME...]` (or `PEERS_MODELS=a,b` and `PEERS_QUICK=1`): `run.sh` installs the Python peers
//! into a venv under `target/` (`setup.sh`), then runs this binary in release mode. A package of
//! its own, outside the main workspace, so that the test build never compiles tract. For each golden model it compiles
//! `examples/models/NAME.snet` with the golden weights, loads it with `runtime::Model` and times
//! `Session::run` at batch 1 and 64; times tract on `../shared/golden/NAME.onnx` (batch fixed,
//! optimised, single-threaded); and times ONNX Runtime and OpenVINO by spawning
//! `benches/peers/ort_bench.py` and `openvino_bench.py` (2 threads each; OpenVINO in f32, latency
//! hint, one stream, reshaped to the batch). Every peer's output on the golden input is checked against the golden
//! output (relative error below 2e-4) before its times are reported. It also measures the
//! machine's AVX2 FMA peak (1 and 2 threads, at the start and the end) and prints a markdown
//! table of medians, speed-ups (and their geometric means), the fraction of the 2-core peak that sparsec and ORT reach, and
//! how much CPU other processes took while each cell ran (the figures mean little on a busy
//! machine). Memory stands beside time: each peer's peak resident memory while it loads the model
//! for the batch and runs it, less its resident memory just before ([`memory_probe`]; the Python
//! peers measure the same in `peer_timing.py`).
//!
//! Owns nothing the product uses: a measurement program only.

use anyhow::{Context, Result, bail};
use runtime::Model;
use sparsec::driver::{self, WeightsSource};
use sparsec::weights::load_tensors;
use sparsec_tests::random_input;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

const MODELS: [&str; 4] = [
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "sparsenet-bc-1000-12",
];
const BATCHES: [usize; 2] = [1, 64];
/// Threads of each Python peer (ONNX Runtime's intra-op threads, OpenVINO's inference threads).
const PY_THREADS: usize = 2;
const TOLERANCE: f64 = 2e-4;
const SEED: u64 = 42;
const IMAGE: [usize; 3] = [3, 32, 32];
const PER_IMAGE: usize = IMAGE[0] * IMAGE[1] * IMAGE[2];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden(file: &str) -> PathBuf {
    repo().join("../shared/golden").join(file)
}

/// How long each measurement may take.
#[derive(Clone, Copy)]
struct Budget {
    /// Timed calls stop after this long (once `min_iters` are done).
    cell: Duration,
    min_iters: usize,
    max_iters: usize,
    /// Untimed calls first, at batch 1 and at batch 64.
    warmup: [usize; 2],
    /// A batch-64 cell is skipped when its warm-up and one timed call are estimated (from batch
    /// 1, see [`fits`]) to take longer than this, or to run past `total`; a cell whose warm-up
    /// shows slow calls gets fewer timed calls (at least one) to stay within it.
    cell_cap: Duration,
    /// The whole run.
    total: Duration,
    /// Batch-1 cells are measured in this many rounds, sparsec, ORT and OpenVINO taking turns, and the
    /// times of all rounds pooled: on a shared VM the machine's speed drifts over seconds (the
    /// host runs other guests), and a peer measured in one block of seconds may get a slow
    /// stretch the other never sees.
    rounds: usize,
}

impl Budget {
    fn full() -> Budget {
        Budget {
            cell: Duration::from_secs(5),
            min_iters: 3,
            max_iters: 50,
            warmup: [3, 1],
            cell_cap: Duration::from_secs(45),
            total: Duration::from_secs(540),
            rounds: 4,
        }
    }

    fn quick() -> Budget {
        Budget {
            cell: Duration::from_millis(1000),
            min_iters: 2,
            max_iters: 10,
            warmup: [1, 1],
            cell_cap: Duration::from_secs(6),
            total: Duration::from_secs(120),
            rounds: 1,
        }
    }

    /// Rounds for a batch size (see `rounds`).
    fn rounds(&self, batch: usize) -> usize {
        if batch == 1 { self.rounds.max(1) } else { 1 }
    }

    /// The budget of one of `rounds` rounds of a cell: its share of the time and the calls.
    fn round(&self, rounds: usize) -> Budget {
        let n = rounds.max(1);
        Budget {
            cell: self.cell / n as u32,
            min_iters: self.min_iters.div_ceil(n).max(1),
            max_iters: self.max_iters.div_ceil(n).max(1),
            cell_cap: self.cell_cap / n as u32,
            ..*self
        }
    }

    fn warmup(&self, batch: usize) -> usize {
        if batch == 1 {
            self.warmup[0]
        } else {
            self.warmup[1]
        }
    }
}

struct Options {
    budget: Budget,
    quick: bool,
    models: Vec<&'static str>,
    ort: bool,
    openvino: bool,
    tract: bool,
    /// The batch sizes to measure (`--batch N`, repeatable; default [`BATCHES`]).
    batches: Vec<usize>,
}

fn options() -> Result<Options> {
    let mut quick = std::env::var("PEERS_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let mut filters: Vec<String> = std::env::var("PEERS_MODELS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let (mut ort, mut openvino, mut tract) = (true, true, true);
    let mut batches = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--batch" => {
                let n = args.next().context("--batch needs a value")?;
                let b: usize = n.parse().with_context(|| format!("--batch {n}"))?;
                if !BATCHES.contains(&b) {
                    bail!("--batch {b}: the batches are {BATCHES:?}");
                }
                batches.push(b);
            }
            "--quick" => quick = true,
            "--no-ort" => ort = false,
            "--no-openvino" => openvino = false,
            "--no-tract" => tract = false,
            "-h" | "--help" => {
                println!(
                    "usage: bash benches/peers/run.sh [--quick] [--no-ort] [--no-openvino] \
                     [--no-tract] [--batch N]... [MODEL-FILTER...]\nmodels: {}",
                    MODELS.join(", ")
                );
                std::process::exit(0);
            }
            a if a.starts_with('-') => eprintln!("peers: ignoring unknown flag `{a}`"),
            a => filters.push(a.to_string()),
        }
    }
    let models: Vec<&'static str> = MODELS
        .into_iter()
        .filter(|m| filters.is_empty() || filters.iter().any(|f| m.contains(f.as_str())))
        .collect();
    if models.is_empty() {
        bail!(
            "no model matches {filters:?}; the models are {}",
            MODELS.join(", ")
        );
    }
    Ok(Options {
        budget: if quick {
            Budget::quick()
        } else {
            Budget::full()
        },
        quick,
        models,
        ort,
        openvino,
        tract,
        batches: if batches.is_empty() {
            BATCHES.to_vec()
        } else {
            batches
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Timing

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `f` `warmup` times, then times it until the budget is spent; the median in ms. A slow
/// call (a big batch) gets fewer timed calls, at least one, to keep the cell within its cap.
fn time_calls(warmup: usize, budget: &Budget, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    let cell_start = Instant::now();
    let mut last = 0.0;
    for _ in 0..warmup {
        let t = Instant::now();
        f()?;
        last = t.elapsed().as_secs_f64();
    }
    let left = budget.cell_cap.as_secs_f64() - cell_start.elapsed().as_secs_f64();
    let min_iters = if last > 0.0 {
        ((left / last) as usize).clamp(1, budget.min_iters)
    } else {
        budget.min_iters
    };
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < budget.max_iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() >= min_iters && start.elapsed() > budget.cell {
            break;
        }
    }
    Ok(Timing { times_ms: times })
}

/// The timed calls of one peer at one batch size (of every round), in ms.
#[derive(Clone)]
struct Timing {
    times_ms: Vec<f64>,
}

impl Timing {
    fn median_ms(&self) -> f64 {
        median(&self.times_ms)
    }

    fn iters(&self) -> usize {
        self.times_ms.len()
    }
}

/// One peer at one batch size.
#[derive(Clone)]
enum Cell {
    Time(Timing),
    Skipped,
    Unavailable(&'static str),
    Failed(String),
}

impl Cell {
    fn ms(&self) -> Option<f64> {
        match self {
            Cell::Time(t) => Some(t.median_ms()),
            _ => None,
        }
    }

    fn show(&self, wrong: bool) -> String {
        match self {
            Cell::Time(t) if wrong => format!("{:.2} (WRONG)", t.median_ms()),
            Cell::Time(t) => format!("{:.2}", t.median_ms()),
            Cell::Skipped => "skipped (time budget)".into(),
            Cell::Unavailable(why) => format!("– ({why})"),
            Cell::Failed(_) => "failed".into(),
        }
    }

    /// This cell with another round's: times pooled; a failure wins over times, times over a
    /// skip.
    fn merge(self, next: Cell) -> Cell {
        match (self, next) {
            (Cell::Time(mut a), Cell::Time(b)) => {
                a.times_ms.extend(b.times_ms);
                Cell::Time(a)
            }
            (f @ Cell::Failed(_), _) | (_, f @ Cell::Failed(_)) => f,
            (Cell::Skipped, c) => c,
            (c, _) => c,
        }
    }

    fn progress(&self) -> String {
        match self {
            Cell::Time(t) => format!("{:.2} ms (median of {})", t.median_ms(), t.iters()),
            Cell::Skipped => "skipped (time budget)".into(),
            Cell::Unavailable(why) => format!("unavailable ({why})"),
            Cell::Failed(e) => format!("FAILED: {e}"),
        }
    }
}

/// Whether a batch-64 cell fits the budget: its warm-up and one timed call, estimated from the
/// same peer's batch-1 median times the batch times `scaling` (the worst ratio of batch-64 time
/// to 64 batch-1 calls this peer has shown on the models before).
fn fits(budget: &Budget, run_start: Instant, batch: usize, batch1: &Cell, scaling: f64) -> bool {
    let Some(ms) = batch1.ms() else {
        return true;
    };
    let calls = (budget.warmup(batch) + 1) as f64;
    let estimate = Duration::from_secs_f64(ms * 1e-3 * batch as f64 * scaling * calls);
    estimate <= budget.cell_cap && run_start.elapsed() + estimate <= budget.total
}

// ---------------------------------------------------------------------------------------------
// Inputs

fn write_f32(path: &Path, xs: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| path.display().to_string())
}

struct GoldenIo {
    input: Vec<f32>,
    output: Vec<f32>,
    images: usize,
}

fn golden_io(name: &str) -> Result<GoldenIo> {
    let path = golden(&format!("{name}.io.safetensors"));
    let io = load_tensors(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    let get = |n: &str| {
        io.iter()
            .find(|t| t.0 == n)
            .map(|t| t.2.clone())
            .with_context(|| format!("{}: no tensor `{n}`", path.display()))
    };
    let input = get("input")?;
    let images = input.len() / PER_IMAGE;
    Ok(GoldenIo {
        input,
        output: get("output")?,
        images,
    })
}

fn macs_per_image(name: &str) -> Result<u64> {
    let path = golden(&format!("{name}.json"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| path.display().to_string())?)?;
    json["macs_per_image"]
        .as_u64()
        .with_context(|| format!("{}: no macs_per_image", path.display()))
}

/// The check of one peer's output on the golden input.
#[derive(Clone)]
enum Check {
    Error(f64),
    NotRun(String),
}

impl Check {
    fn wrong(&self) -> bool {
        matches!(self, Check::Error(e) if e.is_nan() || *e >= TOLERANCE)
    }

    fn show(&self) -> String {
        match self {
            Check::Error(e) if self.wrong() => format!("{e:.2e} FAIL"),
            Check::Error(e) => format!("{e:.2e} ok"),
            Check::NotRun(why) => format!("not checked ({why})"),
        }
    }
}

fn check_of(got: Result<Vec<f32>>, want: &[f32]) -> Check {
    match got {
        Ok(got) => Check::Error(ir::interp::relative_error(&got, want)),
        Err(e) => Check::NotRun(format!("{e:#}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The peers

/// The golden model compiled for the largest batch: the loaded model and its model.bin bytes.
fn sparsec_model(name: &str) -> Result<(Model, Vec<u8>)> {
    let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
    let weights = WeightsSource::Safetensors(golden(&format!("{name}.safetensors")));
    let max_batch = *BATCHES.iter().max().unwrap_or(&1) as u32;
    let (_, bytes) = driver::compile_cpu(graph, &weights, max_batch, false)?;
    Ok((Model::from_bytes(&bytes)?, bytes))
}

type TractPlan = std::sync::Arc<TypedRunnableModel>;

fn tract_plan(name: &str, batch: usize) -> Result<TractPlan> {
    let plan = tract_onnx::onnx()
        .model_for_path(golden(&format!("{name}.onnx")))?
        .with_input_fact(0, f32::fact([batch, IMAGE[0], IMAGE[1], IMAGE[2]]).into())?
        .into_optimized()?
        .into_runnable()?;
    Ok(plan)
}

fn tract_tensor(x: &[f32], batch: usize) -> Result<TValue> {
    Ok(Tensor::from_shape(&[batch, IMAGE[0], IMAGE[1], IMAGE[2]], x)?.into())
}

/// tract's output on the golden input, one image at a time through the batch-1 plan.
fn tract_golden(plan: &TractPlan, io: &GoldenIo) -> Result<Vec<f32>> {
    let mut state = plan.spawn()?;
    let mut out = Vec::new();
    for image in io.input.chunks(PER_IMAGE) {
        let y = state.run(tvec!(tract_tensor(image, 1)?))?;
        out.extend(y[0].to_plain_array_view::<f32>()?.iter().copied());
    }
    Ok(out)
}

fn time_tract(plan: &TractPlan, x: &[f32], batch: usize, budget: &Budget) -> Result<Timing> {
    let mut state = plan.spawn()?;
    let input = tract_tensor(x, batch)?;
    time_calls(budget.warmup(batch), budget, || {
        black_box(state.run(tvec!(input.clone()))?);
        Ok(())
    })
}

/// A peer that runs in Python: a script beside this package, on `peer_timing.py`'s harness.
struct PyPeer {
    /// The product's name, for the header.
    long: &'static str,
    /// The Python module whose `__version__` is reported.
    module: &'static str,
    script: &'static str,
    /// How it is set up, for the header.
    settings: &'static str,
}

const ORT: PyPeer = PyPeer {
    long: "ONNX Runtime",
    module: "onnxruntime",
    script: "ort_bench.py",
    settings: "2 intra-op threads, 1 inter-op, sequential, all graph optimisations",
};

const OPENVINO: PyPeer = PyPeer {
    long: "OpenVINO",
    module: "openvino",
    script: "openvino_bench.py",
    settings: "CPU plugin, INFERENCE_PRECISION_HINT=f32, INFERENCE_NUM_THREADS=2, \
               PERFORMANCE_HINT=LATENCY, NUM_STREAMS=1, reshaped to the batch",
};

/// The Python peers, in `PEERS` order after sparsec.
const PY_PEERS: [&PyPeer; 2] = [&ORT, &OPENVINO];

/// `PYTHON`, else the venv `setup.sh` makes (`target/peers-venv`), else `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("PYTHON") {
        return p;
    }
    let venv = repo().join("target/peers-venv/bin/python");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".into()
    }
}

impl PyPeer {
    fn script(&self) -> PathBuf {
        repo().join("benches/peers").join(self.script)
    }

    /// The peer's version, or why it cannot run.
    fn version(&self) -> Result<String, String> {
        let code = format!("import {m}; print({m}.__version__)", m = self.module);
        let out = Command::new(python())
            .args(["-c", &code])
            .output()
            .map_err(|e| format!("cannot run `{}`: {e}", python()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// One cell (or one round of it): the script's timed calls, and its output on `check_input`.
    fn run(
        &self,
        name: &str,
        batch: usize,
        input: &Path,
        check_input: Option<&Path>,
        budget: &Budget,
    ) -> Result<PyRun> {
        let script = self.script;
        let mut cmd = Command::new(python());
        cmd.arg(self.script())
            .arg("--model")
            .arg(golden(&format!("{name}.onnx")))
            .args(["--batch", &batch.to_string()])
            .args(["--threads", &PY_THREADS.to_string()])
            .args(["--iters", &budget.max_iters.to_string()])
            .args(["--min-iters", &budget.min_iters.to_string()])
            .args(["--warmup", &budget.warmup(batch).to_string()])
            .args(["--budget-s", &budget.cell.as_secs_f64().to_string()])
            .args(["--cap-s", &budget.cell_cap.as_secs_f64().to_string()])
            .args(["--seed", &SEED.to_string()])
            .arg("--input")
            .arg(input);
        if let Some(c) = check_input {
            cmd.arg("--check-input").arg(c);
        }
        let out = cmd.output().with_context(|| format!("running {script}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "{script} printed no JSON (status {}): {}{}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if let Some(e) = json["error"].as_str() {
            bail!("{script}: {e}");
        }
        let times_ms: Vec<f64> = json["times_ms"]
            .as_array()
            .with_context(|| format!("{script}: no times_ms"))?
            .iter()
            .map(|v| {
                v.as_f64()
                    .with_context(|| format!("{script}: a time is not a number"))
            })
            .collect::<Result<_>>()?;
        let check_output = json["check_output"].as_array().map(|a| {
            a.iter()
                .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
                .collect()
        });
        Ok(PyRun {
            timing: Timing { times_ms },
            check_output,
            memory_mib: json["peak_rss_delta_mib"].as_f64(),
        })
    }
}

struct PyRun {
    timing: Timing,
    check_output: Option<Vec<f32>>,
    /// `peer_timing.py`'s `peak_rss_delta_mib`: absent where /proc cannot reset the peak.
    memory_mib: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Memory

/// A `VmRSS` / `VmHWM` figure of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resets this process's peak resident memory (`VmHWM`) to its current size (Linux 4.0+).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Which in-process peer a `--memory-probe` child measures.
const PROBE_FLAG: &str = "--memory-probe";

/// The child side of [`memory_probe`]: `--memory-probe sparsec|tract NAME BATCH [MODEL.BIN]`.
/// Reads (sparsec: the model.bin file; tract: the ONNX file), loads and runs the model for
/// `BATCH` images (the cell's warm-up plus one timed call), and prints the peak resident
/// memory above the resident memory just before loading, in MiB. A fresh process per cell, so
/// memory an earlier model freed into the allocator cannot hide this one's.
fn memory_probe_child(args: &[String]) -> Result<()> {
    let [kind, name, batch, rest @ ..] = args else {
        bail!("usage: {PROBE_FLAG} sparsec|tract NAME BATCH [MODEL.BIN]");
    };
    let batch: usize = batch.parse().with_context(|| format!("batch `{batch}`"))?;
    let x = random_input(batch * PER_IMAGE, SEED);
    let calls = Budget::full().warmup(batch) + 1;
    let before = status_kib("VmRSS").context("no VmRSS in /proc/self/status")?;
    if !reset_peak_rss() {
        bail!("cannot reset the peak RSS (/proc/self/clear_refs)");
    }
    match kind.as_str() {
        "sparsec" => {
            let path = rest.first().context("sparsec needs the model.bin path")?;
            let bytes = std::fs::read(path).with_context(|| path.clone())?;
            let model = Model::from_bytes(&bytes)?;
            drop(bytes);
            let mut session = model.session();
            for _ in 0..calls {
                black_box(session.run(&x, batch)?);
            }
        }
        "tract" => {
            let plan = tract_plan(name, batch)?;
            let mut state = plan.spawn()?;
            let input = tract_tensor(&x, batch)?;
            for _ in 0..calls {
                black_box(state.run(tvec!(input.clone()))?);
            }
        }
        other => bail!("{PROBE_FLAG}: unknown peer `{other}`"),
    }
    let peak = status_kib("VmHWM").context("no VmHWM in /proc/self/status")?;
    println!("{}", peak.saturating_sub(before) as f64 / 1024.0);
    Ok(())
}

/// The peak-memory figure of an in-process peer (sparsec, tract) for one cell, measured in a
/// child process of this binary (`--memory-probe`), or why not.
fn memory_probe(kind: &str, name: &str, batch: usize, model_bin: Option<&Path>) -> Result<f64> {
    let exe = std::env::current_exe().context("the benchmark's own path")?;
    let mut cmd = Command::new(exe);
    cmd.args([PROBE_FLAG, kind, name, &batch.to_string()]);
    if let Some(p) = model_bin {
        cmd.arg(p);
    }
    let out = cmd
        .output()
        .with_context(|| format!("{PROBE_FLAG} {kind}"))?;
    if !out.status.success() {
        bail!(
            "{PROBE_FLAG} {kind} {name} {batch}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("{PROBE_FLAG} printed `{}`", text.trim()))
}

fn show_memory(m: Option<f64>) -> String {
    m.map_or_else(|| "–".into(), |m| format!("{m:.0}"))
}

// ---------------------------------------------------------------------------------------------
// The run

/// The columns: sparsec, the Python peers (`PY_PEERS`), tract.
const PEERS: [&str; 4] = ["sparsec", "ORT", "OpenVINO", "tract"];
const N: usize = PEERS.len();
const TRACT: usize = N - 1;

struct Row {
    model: &'static str,
    batch: usize,
    macs_per_image: u64,
    /// In `PEERS` order.
    cells: [Cell; N],
    /// The share of the machine's CPU time other processes used while each cell ran.
    others: [Option<f64>; N],
    /// Each peer's peak resident memory for this model and batch, MiB (see [`memory_probe`]).
    memory_mib: [Option<f64>; N],
}

struct ModelChecks {
    model: &'static str,
    checks: [Check; N],
}

fn cell_of(r: Result<Timing>) -> Cell {
    match r {
        Ok(t) => Cell::Time(t),
        Err(e) => Cell::Failed(format!("{e:#}")),
    }
}

/// Each Python peer's version, or why it does not run (`--no-ort`, `--no-openvino`, not
/// installed), in `PY_PEERS` order.
type PyVersions = [Result<String, String>; 2];

fn bench_model(
    name: &'static str,
    opts: &Options,
    py: &PyVersions,
    tmp: &Path,
    run_start: Instant,
    scaling: &mut [f64; N],
    rows: &mut Vec<Row>,
) -> Result<ModelChecks> {
    let budget = &opts.budget;
    let macs = match macs_per_image(name) {
        Ok(m) => m,
        Err(_) => {
            let graph = driver::load(&repo().join(format!("examples/models/{name}.snet")))?;
            ir::cost::graph_macs(&graph)
        }
    };
    let io = golden_io(name)?;
    let golden_input = tmp.join(format!("{name}.golden-input.bin"));
    write_f32(&golden_input, &io.input)?;

    let t = Instant::now();
    let model = sparsec_model(name);
    eprintln!(
        "{name}: sparsec compile + load {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let model_error = model.as_ref().err().map(|e| format!("{e:#}"));
    let model_bin = tmp.join(format!("{name}.model.bin"));
    if let Ok((_, bytes)) = &model {
        std::fs::write(&model_bin, bytes).with_context(|| model_bin.display().to_string())?;
    }
    let mut session = model.as_ref().ok().map(|(m, _)| m.session());
    let mut checks: [Check; N] = std::array::from_fn(|_| Check::NotRun("disabled".into()));
    checks[0] = match session.as_mut() {
        Some(s) => check_of(
            s.run(&io.input, io.images)
                .map(<[f32]>::to_vec)
                .map_err(anyhow::Error::from),
            &io.output,
        ),
        None => Check::NotRun(model_error.clone().unwrap_or_default()),
    };
    for (i, v) in py.iter().enumerate() {
        if let Err(why) = v {
            checks[1 + i] = Check::NotRun(why.lines().last().unwrap_or("not installed").into());
        }
    }
    let mut batch1: [Cell; N] = std::array::from_fn(|_| Cell::Skipped);

    for &batch in &opts.batches {
        let x = random_input(batch * PER_IMAGE, SEED);
        let input_file = tmp.join(format!("input-b{batch}.bin"));
        write_f32(&input_file, &x)?;
        let mut cells: [Cell; N] = std::array::from_fn(|_| Cell::Skipped);
        let mut others = [None; N];
        let mut memory_mib: [Option<f64>; N] = [None; N];

        // sparsec and the Python peers, taking turns (`Budget::rounds`).
        let rounds = budget.rounds(batch);
        let round = budget.round(rounds);
        let mut shares: [Vec<f64>; TRACT] = std::array::from_fn(|_| Vec::new());
        for r in 0..rounds {
            let before = cpu_sample();
            let cell = match session.as_mut() {
                _ if batch > 1 && !fits(budget, run_start, batch, &batch1[0], scaling[0]) => {
                    Cell::Skipped
                }
                Some(s) => cell_of(time_calls(budget.warmup(batch), &round, || {
                    black_box(s.run(&x, batch)?);
                    Ok(())
                })),
                None => Cell::Failed(model_error.clone().unwrap_or_default()),
            };
            cells[0] = std::mem::replace(&mut cells[0], Cell::Skipped).merge(cell);
            shares[0].extend(others_share(before, cpu_sample()));

            for (k, (peer, version)) in PY_PEERS.iter().zip(py).enumerate() {
                let i = 1 + k;
                let before = cpu_sample();
                let cell = match version {
                    Err(why) if why.starts_with("--no-") => Cell::Unavailable("disabled"),
                    Err(_) => Cell::Unavailable("not installed"),
                    Ok(_)
                        if batch > 1 && !fits(budget, run_start, batch, &batch1[i], scaling[i]) =>
                    {
                        Cell::Skipped
                    }
                    Ok(_) => {
                        let check = (batch == 1 && r == 0).then_some(golden_input.as_path());
                        match peer.run(name, batch, &input_file, check, &round) {
                            Ok(run) => {
                                memory_mib[i] = match (memory_mib[i], run.memory_mib) {
                                    (Some(a), Some(b)) => Some(a.max(b)),
                                    (a, b) => a.or(b),
                                };
                                if let Some(out) = run.check_output {
                                    checks[i] = check_of(Ok(out), &io.output);
                                }
                                Cell::Time(run.timing)
                            }
                            Err(e) => {
                                if check.is_some() {
                                    checks[i] = Check::NotRun(format!("{e:#}"));
                                }
                                Cell::Failed(format!("{e:#}"))
                            }
                        }
                    }
                };
                cells[i] = std::mem::replace(&mut cells[i], Cell::Skipped).merge(cell);
                shares[i].extend(others_share(before, cpu_sample()));
            }
        }
        for (i, peer) in shares.into_iter().enumerate() {
            // The worst round: how quiet the machine was at least.
            others[i] = peer.into_iter().reduce(f64::max);
            eprintln!(
                "{name} b{batch}: {} {}{}{}",
                PEERS[i],
                cells[i].progress(),
                if rounds > 1 {
                    format!(" over {rounds} rounds")
                } else {
                    String::new()
                },
                show_others(others[i])
            );
        }

        // tract.
        let before = cpu_sample();
        cells[TRACT] = if !opts.tract {
            Cell::Unavailable("--no-tract")
        } else if batch > 1 && !fits(budget, run_start, batch, &batch1[TRACT], scaling[TRACT]) {
            Cell::Skipped
        } else {
            let t = Instant::now();
            match tract_plan(name, batch) {
                Ok(plan) => {
                    eprintln!(
                        "{name} b{batch}: tract load + optimise {:.2} s",
                        t.elapsed().as_secs_f64()
                    );
                    if batch == 1 {
                        checks[TRACT] = check_of(tract_golden(&plan, &io), &io.output);
                    }
                    cell_of(time_tract(&plan, &x, batch, budget))
                }
                Err(e) => {
                    if batch == 1 {
                        checks[TRACT] = Check::NotRun(format!("{e:#}"));
                    }
                    Cell::Failed(format!("{e:#}"))
                }
            }
        };
        others[TRACT] = others_share(before, cpu_sample());
        eprintln!(
            "{name} b{batch}: tract {}{}",
            cells[TRACT].progress(),
            show_others(others[TRACT])
        );

        // Memory of the in-process peers, each in a child process of its own.
        for (i, kind) in [(0, "sparsec"), (TRACT, "tract")] {
            if matches!(cells[i], Cell::Time(_)) {
                let bin = (i == 0).then_some(model_bin.as_path());
                match memory_probe(kind, name, batch, bin) {
                    Ok(m) => memory_mib[i] = Some(m),
                    Err(e) => eprintln!("{name} b{batch}: {kind} memory not measured: {e:#}"),
                }
            }
        }
        eprintln!(
            "{name} b{batch}: peak memory MiB (sparsec/ORT/OpenVINO/tract) {}",
            memory_mib.map(show_memory).join("/")
        );

        if batch == 1 {
            batch1 = cells.clone();
        } else {
            for (i, c) in cells.iter().enumerate() {
                if let (Some(big), Some(one)) = (c.ms(), batch1[i].ms()) {
                    scaling[i] = scaling[i].max(big / (one * batch as f64));
                }
            }
        }
        rows.push(Row {
            model: name,
            batch,
            macs_per_image: macs,
            cells,
            others,
            memory_mib,
        });
    }
    Ok(ModelChecks {
        model: name,
        checks,
    })
}

fn tract_version() -> String {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock"))
        .unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"tract-onnx\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map_or_else(
            || "0.23 (version unknown)".into(),
            |v| v.trim_matches('"').into(),
        )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Machine-wide busy and total CPU ticks (`/proc/stat`) and this process's own, its waited-for
/// children included (`/proc/self/stat`), to tell a quiet measurement from a contended one.
#[derive(Clone, Copy)]
struct CpuSample {
    busy: u64,
    total: u64,
    own: u64,
}

fn cpu_sample() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let busy = total.checked_sub(f.get(3)? + f.get(4)?)?;
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after `(comm) `: state is field 3; utime, stime, cutime, cstime are fields 14-17.
    let rest = me.get(me.rfind(')')? + 2..)?;
    let g: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let own = g.get(11..15)?.iter().sum();
    Some(CpuSample { busy, total, own })
}

/// The share of all CPUs' time between two samples that other processes used.
fn others_share(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let total = b.total.checked_sub(a.total).filter(|&t| t > 0)?;
    let busy = b.busy.saturating_sub(a.busy);
    let own = b.own.saturating_sub(a.own);
    Some(busy.saturating_sub(own) as f64 / total as f64)
}

fn show_others(share: Option<f64>) -> String {
    share.map_or_else(String::new, |s| {
        format!("; other processes used {:.0}% of the CPUs", 100.0 * s)
    })
}

/// The 2-core peak the table divides by, from measurements at the start and the end of the run
/// (the better of each): the 2-thread figure, unless other work on the machine held the second
/// core back (then twice the 1-thread figure, with a warning).
fn report_peak(start: (Option<f64>, Option<f64>), end: (Option<f64>, Option<f64>)) -> Option<f64> {
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let show = |p: Option<f64>| p.map_or_else(|| "–".into(), |p| format!("{p:.1}"));
    let (Some(p1), Some(p2)) = (best(start.0, end.0), best(start.1, end.1)) else {
        println!("FMA peak: not measured (needs x86-64 with AVX2 and FMA)");
        return None;
    };
    println!(
        "FMA peak (AVX2 vfmadd on 12 independent 8-wide accumulators, GFLOP/s; at the start / \
         end of the run): 1 thread {} / {}, 2 threads {} / {}; taken: 1 thread {p1:.1}, 2 threads \
         {p2:.1}",
        show(start.0),
        show(end.0),
        show(start.1),
        show(end.1)
    );
    if p2 < 1.8 * p1 {
        println!(
            "warning: 2 threads reach only {:.2}x one thread: the machine is busy; the table uses \
             2 x the 1-thread peak ({:.1} GFLOP/s) as the 2-core peak",
            p2 / p1,
            2.0 * p1
        );
        Some(2.0 * p1)
    } else {
        Some(p2)
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn ratio(peer: Option<f64>, ours: Option<f64>) -> String {
    match (peer, ours) {
        (Some(p), Some(o)) if o > 0.0 => format!("{:.2}x", p / o),
        _ => "–".into(),
    }
}

fn gflops(macs_per_image: u64, batch: usize, ms: f64) -> f64 {
    2.0 * macs_per_image as f64 * batch as f64 / (ms * 1e-3) / 1e9
}

/// The geometric mean of the speed-ups over `peer` (index into `PEERS`) in the rows where both
/// sides have a time, and how many such rows there are.
fn geomean_speedup(rows: &[Row], peer: usize) -> Option<(f64, usize)> {
    let logs: Vec<f64> = rows
        .iter()
        .filter_map(|r| match (r.cells[peer].ms(), r.cells[0].ms()) {
            (Some(p), Some(o)) if p > 0.0 && o > 0.0 => Some((p / o).ln()),
            _ => None,
        })
        .collect();
    (!logs.is_empty()).then(|| {
        (
            (logs.iter().sum::<f64>() / logs.len() as f64).exp(),
            logs.len(),
        )
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(PROBE_FLAG) {
        return memory_probe_child(&args[1..]);
    }
    let opts = options()?;
    let run_start = Instant::now();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# sparsec vs ONNX Runtime vs OpenVINO vs tract (CPU)\n");
    println!(
        "CPU: {} ({cores} logical cores); {} run; models: {}",
        cpu_model(),
        if opts.quick { "quick" } else { "full" },
        opts.models.join(", ")
    );

    let peak_seconds = if opts.quick { 0.15 } else { 0.4 };
    let start_peaks = (
        sparsec::peak::fma_peak(1, peak_seconds),
        sparsec::peak::fma_peak(2, peak_seconds),
    );

    let enabled = [opts.ort, opts.openvino];
    let flags = ["--no-ort", "--no-openvino"];
    let py: PyVersions = std::array::from_fn(|k| {
        if enabled[k] {
            PY_PEERS[k].version()
        } else {
            Err(flags[k].into())
        }
    });
    for ((peer, version), flag) in PY_PEERS.iter().zip(&py).zip(flags) {
        match version {
            Ok(v) => println!(
                "{} {v} (python: {}; {})",
                peer.long,
                python(),
                peer.settings
            ),
            Err(e) if e == flag => println!("{}: disabled ({flag})", peer.long),
            Err(e) => println!(
                "{}: not available ({}). Install it with `bash benches/peers/setup.sh` (a venv \
                 in target/, which the bench then uses); continuing without it.",
                peer.long,
                e.lines().last().unwrap_or("import failed")
            ),
        }
    }
    println!(
        "tract-onnx {}: single-threaded (tract-linalg built without `multithread-mm`)",
        tract_version()
    );
    println!(
        "sparsec: {} threads per session",
        runtime::default_threads()
    );
    println!("load average at start: {}\n", load_average());

    let tmp = std::env::temp_dir().join(format!("sparsec-peers-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    let mut errors = Vec::new();
    let mut scaling = [1.0; N];
    for &name in &opts.models {
        match bench_model(name, &opts, &py, &tmp, run_start, &mut scaling, &mut rows) {
            Ok(c) => checks.push(c),
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    // Best effort: a leftover temporary folder is harmless.
    let _ = std::fs::remove_dir_all(&tmp);

    let end_peaks = (
        sparsec::peak::fma_peak(1, peak_seconds),
        sparsec::peak::fma_peak(2, peak_seconds),
    );
    println!();
    let peak2 = report_peak(start_peaks, end_peaks);

    // Correctness.
    let mut wrong = Vec::new();
    println!(
        "\nCorrectness on the golden input (relative error vs the float64 reference, must be \
         below {TOLERANCE:e}):\n"
    );
    for c in &checks {
        let parts: Vec<String> = PEERS
            .iter()
            .zip(&c.checks)
            .map(|(p, ch)| format!("{p} {}", ch.show()))
            .collect();
        println!("- {}: {}", c.model, parts.join(", "));
        for (p, ch) in PEERS.iter().zip(&c.checks) {
            if ch.wrong() {
                wrong.push(format!("{} ({p})", c.model));
            }
        }
    }

    // The table.
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\n| model | batch | sparsec ms | ORT ms | OpenVINO ms | tract ms | sparsec/ORT speed-up | \
         sparsec/OpenVINO speed-up | sparsec/tract speed-up | sparsec GFLOP/s | \
         % of 2-core peak | ORT % of 2-core peak | OpenVINO % of 2-core peak | \
         peak memory MiB (sparsec/ORT/OpenVINO/tract) | \
         others' CPU % (sparsec/ORT/OpenVINO/tract) |"
    );
    let _ = writeln!(
        t,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        let is_wrong = |i: usize| {
            checks
                .iter()
                .find(|c| c.model == r.model)
                .is_some_and(|c| c.checks[i].wrong())
        };
        let ours = r.cells[0].ms();
        let pct = |ms: Option<f64>| match (ms, peak2) {
            (Some(ms), Some(p)) => {
                format!("{:.1}%", 100.0 * gflops(r.macs_per_image, r.batch, ms) / p)
            }
            _ => "–".into(),
        };
        let shown: Vec<String> = (0..N).map(|i| r.cells[i].show(is_wrong(i))).collect();
        let ratios: Vec<String> = (1..N).map(|i| ratio(r.cells[i].ms(), ours)).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.model,
            r.batch,
            shown.join(" | "),
            ratios.join(" | "),
            ours.map_or_else(
                || "–".into(),
                |ms| format!("{:.1}", gflops(r.macs_per_image, r.batch, ms))
            ),
            pct(ours),
            pct(r.cells[1].ms()),
            pct(r.cells[2].ms()),
            r.memory_mib.map(show_memory).join("/"),
            r.others
                .iter()
                .zip(&r.cells)
                .map(|(o, c)| match (o, c) {
                    (Some(o), Cell::Time(_)) => format!("{:.0}", 100.0 * o),
                    _ => "–".into(),
                })
                .collect::<Vec<_>>()
                .join("/"),
        );
    }
    print!("{t}");
    let means: Vec<String> = (1..N)
        .map(|i| match geomean_speedup(&rows, i) {
            Some((g, n)) => format!(
                "{} **{g:.2}x** ({n} cell{})",
                PEERS[i],
                if n == 1 { "" } else { "s" }
            ),
            None => format!("{} –", PEERS[i]),
        })
        .collect();
    println!(
        "\nGeometric mean of the speed-ups (peer ms / sparsec ms over the cells both ran): {}",
        means.join(", ")
    );
    println!(
        "\nMedians of timed calls after warm-up (full run: at least {} calls or {:.0} s per cell). \
         Speed-up = peer ms / sparsec ms (above 1: sparsec is faster). GFLOP/s count 2 x the \
         model's multiply-accumulates per image (golden JSON) x batch. Peak memory: the \
         peer's peak resident memory while loading the model for the batch and running it, less \
         its resident memory just before loading (sparsec and tract in a child process each; the \
         model.bin file's bytes count for sparsec, the .onnx file's for the others).",
        Budget::full().min_iters,
        Budget::full().cell.as_secs_f64()
    );
    println!(
        "sparsec runs {} threads per session (`runtime::default_threads`, `SPARSEC_THREADS`); \
         ORT and OpenVINO use {PY_THREADS} threads; tract runs single-threaded.",
        runtime::default_threads()
    );
    for r in &rows {
        for (p, c) in PEERS.iter().zip(&r.cells) {
            if let Cell::Failed(e) = c {
                println!("- {} batch {} {p} failed: {e}", r.model, r.batch);
            }
        }
    }
    println!(
        "\nTotal benchmark time: {:.0} s; load average at the end: {} (other work on the machine \
         skews every figure)",
        run_start.elapsed().as_secs_f64(),
        load_average()
    );
    if !errors.is_empty() {
        bail!(
            "models that could not be benchmarked:\n{}",
            errors.join("\n")
        );
    }
    if !wrong.is_empty() {
        bail!(
            "outputs differ from the golden output by {TOLERANCE:e} or more: {}",
            wrong.join(", ")
        );
    }
    Ok(())
}
