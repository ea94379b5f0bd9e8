//! `sparsec bench model.bin`: latency and throughput of whole `Session::run` calls, as
//! OpenVINO's `benchmark_app` and TensorRT's `trtexec` report them: warm-up runs first, then
//! min / median / p90 / p99 latency, images per second, and the model's GFLOP/s as a fraction
//! of this machine's FMA peak measured in the same run (`crate::peak`). Input is random from a
//! fixed seed. The `--json` keys are the fields of [`BenchReport`] (documented in the README).
//!
//! Must not time anything but whole runs (per-kernel times are `sparsec run --profile`'s).

use crate::profile_report::{check_batch, contention_warning, random_input};
use runtime::Model;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub batch: usize,
    pub threads: usize,
    pub warmup: usize,
    pub iters: usize,
    /// What the loader may trust (native code runs only when allowed).
    pub load: runtime::LoadOptions,
}

/// Latency percentiles of the timed runs, in milliseconds (nearest rank).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

/// The result of `sparsec bench` (`--json` prints exactly these keys).
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    /// Whether the runs executed the file's native code (`--allow-unsigned-code`) or the
    /// runtime's data-only schedule.
    pub native_code: bool,
    pub batch: usize,
    pub threads: usize,
    pub warmup: usize,
    pub iters: usize,
    /// One `Session::run` of the whole batch.
    pub latency_ms: Latency,
    /// `batch / median latency`.
    pub images_per_second: f64,
    /// Direct-convolution FLOP per image (2 x multiply-adds; Winograd steps do fewer).
    pub gflop_per_image: f64,
    /// The model's GFLOP/s at the median latency.
    pub gflops: f64,
    /// The FMA peak of one thread and of `threads` threads, measured in this run (`null`
    /// without AVX2 and FMA).
    pub peak_gflops_one_thread: Option<f64>,
    pub peak_gflops: Option<f64>,
    /// `gflops / peak_gflops`.
    pub fraction_of_peak: Option<f64>,
    /// Timed runs that used the whole team of threads, and runs on the calling thread alone
    /// (a CPU session chooses by measured time; see `runtime::cpu::tuner`).
    pub runs_on_all_threads: u64,
    pub runs_on_one_thread: u64,
    /// Set when the peak shows the cores are shared (see `profile_report::contention_warning`).
    pub contention_warning: Option<String>,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Load(#[from] runtime::LoadError),
    #[error(transparent)]
    Run(#[from] runtime::RunError),
    #[error("{0}")]
    Batch(String),
}

/// The `q`-quantile of sorted values by nearest rank (`q` in (0, 1]); 0 for no values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency statistics of run times in seconds.
pub fn latency(seconds: &[f64]) -> Latency {
    let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mean = if ms.is_empty() {
        0.0
    } else {
        ms.iter().sum::<f64>() / ms.len() as f64
    };
    Latency {
        min: ms.first().copied().unwrap_or(0.0),
        median: quantile(&ms, 0.5),
        p90: quantile(&ms, 0.9),
        p99: quantile(&ms, 0.99),
        mean,
        max: ms.last().copied().unwrap_or(0.0),
    }
}

/// Loads `model`, runs `warmup` untimed and `iters` timed batches, measures the FMA peak.
pub fn bench(model: &Path, o: BenchOptions) -> Result<BenchReport, BenchError> {
    let model = Model::load_with(model, &o.load)?;
    check_batch(&model, o.batch).map_err(|e| BenchError::Batch(e.to_string()))?;
    let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
    let x = random_input(per_image * o.batch);
    let mut session = model.session_with_threads(o.threads);
    for _ in 0..o.warmup {
        session.run(&x, o.batch)?;
    }
    let before = session.thread_use();
    let mut times = Vec::with_capacity(o.iters);
    for _ in 0..o.iters {
        let start = Instant::now();
        session.run(&x, o.batch)?;
        times.push(start.elapsed().as_secs_f64());
    }
    let latency_ms = latency(&times);
    let after = session.thread_use();
    let threads = session.threads();
    let peak1 = crate::peak::fma_peak(1, 0.2);
    let peak = crate::peak::fma_peak(threads, 0.2);
    let flops: u64 = model
        .manifest()
        .steps
        .iter()
        .map(|s| s.flops_per_image)
        .sum();
    let median_s = latency_ms.median / 1e3;
    let (images_per_second, gflops) = if median_s > 0.0 {
        (
            o.batch as f64 / median_s,
            flops as f64 * o.batch as f64 / median_s / 1e9,
        )
    } else {
        (0.0, 0.0)
    };
    Ok(BenchReport {
        model: model.name().to_string(),
        backend: model.backend().to_string().to_lowercase(),
        native_code: model.runs_native_code(),
        batch: o.batch,
        threads,
        warmup: o.warmup,
        iters: o.iters,
        latency_ms,
        images_per_second,
        gflop_per_image: flops as f64 / 1e9,
        gflops,
        peak_gflops_one_thread: peak1,
        peak_gflops: peak,
        fraction_of_peak: peak.filter(|&p| p > 0.0).map(|p| gflops / p),
        runs_on_all_threads: after.team - before.team,
        runs_on_one_thread: after.caller - before.caller,
        contention_warning: contention_warning(threads, peak1, peak),
    })
}

/// The report as text.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    let l = &r.latency_ms;
    let _ = writeln!(
        out,
        "bench of {} ({}, {}): batch {}, {} thread(s), {} warm-up + {} timed runs, random input (fixed seed)",
        r.model,
        r.backend.to_uppercase(),
        if r.native_code {
            "native code"
        } else {
            "data-only schedule"
        },
        r.batch,
        r.threads,
        r.warmup,
        r.iters
    );
    let _ = writeln!(
        out,
        "latency (ms per batch): min {:.3}, median {:.3}, p90 {:.3}, p99 {:.3}, mean {:.3}, max {:.3}",
        l.min, l.median, l.p90, l.p99, l.mean, l.max
    );
    let _ = writeln!(
        out,
        "throughput: {:.1} images/s (batch / median latency)",
        r.images_per_second
    );
    if r.threads > 1 {
        let _ = writeln!(
            out,
            "threads: {} timed runs on all {} threads, {} on one (chosen run by run from measured times)",
            r.runs_on_all_threads, r.threads, r.runs_on_one_thread
        );
    }
    let show = |x: Option<f64>| x.map_or_else(|| "not measured".into(), |v| format!("{v:.1}"));
    let pct = r
        .fraction_of_peak
        .map_or_else(|| "–".into(), |f| format!("{:.1}%", 100.0 * f));
    let _ = writeln!(
        out,
        "compute: {:.4} GFLOP per image, {:.1} GFLOP/s = {pct} of the {}-thread FMA peak",
        r.gflop_per_image, r.gflops, r.threads
    );
    let _ = writeln!(
        out,
        "FMA peak measured now (GFLOP/s, AVX2 8-wide FMA): 1 thread {}, {} threads {}",
        show(r.peak_gflops_one_thread),
        r.threads,
        show(r.peak_gflops)
    );
    let _ = writeln!(
        out,
        "FLOPs count the direct convolution (2 x multiply-adds); Winograd steps multiply less, so the fraction of peak is a direct-convolution equivalent."
    );
    if let Some(w) = &r.contention_warning {
        let _ = writeln!(out, "{w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(|i| f64::from(i) / 1e3).collect();
        let l = latency(&s);
        assert_eq!((l.min, l.max), (1.0, 100.0));
        assert_eq!((l.median, l.p90, l.p99), (50.0, 90.0, 99.0));
        assert!((l.mean - 50.5).abs() < 1e-9);
        let one = latency(&[0.002]);
        assert_eq!((one.min, one.median, one.p99), (2.0, 2.0, 2.0));
        assert_eq!(latency(&[]).median, 0.0);
    }
}
