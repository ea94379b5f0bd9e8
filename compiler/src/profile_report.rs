//! `sparsec run`'s input handling and `sparsec run --profile`: a per-kernel profile of a
//! compiled model (from `runtime::profile`), summed per layer kind and set against this
//! machine's FMA peak measured in the same run (`crate::peak`), with a warning when that peak
//! shows the cores are shared ([`contention_warning`]).
//!
//! Must not time anything itself beyond the whole `run` call it reports beside the profile:
//! kernel times come from the runtime.

use anyhow::{Result, bail};
use runtime::Model;
use runtime::abi;
use runtime::format::StepDesc;
use runtime::profile::Profile;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Checks a batch against the largest one `model` was compiled for, naming the option that
/// raises it.
pub fn check_batch(model: &Model, batch: usize) -> Result<()> {
    let max = model.max_batch();
    if batch > max {
        bail!(
            "a batch of {batch} images is more than this model.bin takes ({max}): compile it \
             again with `--max-batch {batch}` (or more), or run the images in smaller batches"
        );
    }
    Ok(())
}

/// Reads an NCHW batch (or one CHW image) for `model`; returns the floats and the batch.
pub fn read_input(model: &Model, input: &Path) -> Result<(Vec<f32>, usize)> {
    let x = crate::tensor_io::read(input)?;
    let spec = model.input();
    let want = spec.shape.map(|d| d as usize);
    let batch = match x.shape.as_slice() {
        [n, c, h, w] if [*c, *h, *w] == want => *n,
        [c, h, w] if [*c, *h, *w] == want => 1,
        other => bail!(
            "the input has shape {other:?}; the model takes [N, {}, {}, {}]",
            want[0],
            want[1],
            want[2]
        ),
    };
    check_batch(model, batch)?;
    Ok((x.data, batch))
}

/// Deterministic non-zero input in [-1, 1) (`ir::interp::random_input` with a fixed seed, the
/// same on every run).
pub fn random_input(n: usize) -> Vec<f32> {
    ir::interp::random_input(n, 0x9e37_79b9)
}

/// `sparsec run MODEL --profile`: the profile of `iters` runs (after a warm-up), as text.
pub fn profile_model(
    model: &Path,
    input: Option<&Path>,
    batch: usize,
    iters: usize,
    threads: usize,
) -> Result<String> {
    let model = Model::load(model)?;
    let (x, batch) = match input {
        Some(p) => read_input(&model, p)?,
        None => {
            check_batch(&model, batch)?;
            let per_image: usize = model.input().shape.iter().map(|&d| d as usize).product();
            (random_input(per_image * batch), batch)
        }
    };
    let mut session = model.session_with_threads(threads);
    session.run(&x, batch)?;
    let iters = iters.max(1);
    let mut run_times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        session.run(&x, batch)?;
        run_times.push(start.elapsed().as_secs_f64());
    }
    run_times.sort_by(f64::total_cmp);
    let run_median = run_times[run_times.len() / 2];
    session.profile(&x, batch)?;
    let mut sum: Option<Profile> = None;
    for _ in 0..iters {
        let p = session.profile(&x, batch)?;
        match &mut sum {
            None => sum = Some(p),
            Some(s) => {
                s.wall_seconds += p.wall_seconds;
                for (a, b) in s.steps.iter_mut().zip(&p.steps) {
                    a.seconds += b.seconds;
                }
            }
        }
    }
    let Some(mut profile) = sum else {
        bail!("no profiled run");
    };
    profile.wall_seconds /= iters as f64;
    for s in &mut profile.steps {
        s.seconds /= iters as f64;
    }
    let peak1 = crate::peak::fma_peak(1, 0.2);
    let peak = crate::peak::fma_peak(session.threads(), 0.2);
    Ok(render(
        model.name(),
        &profile,
        run_median,
        peak1,
        peak,
        iters,
    ))
}

/// A warning when `threads` threads reached less than 3/4 of `threads` times the one-thread
/// FMA peak, both measured just now: other processes (or SMT siblings) share the cores, so
/// every multi-thread figure of the same run is low and noisy. `None` when they scale.
pub fn contention_warning(threads: usize, peak1: Option<f64>, peak: Option<f64>) -> Option<String> {
    let (p1, pn) = (peak1?, peak?);
    if threads < 2 || p1 <= 0.0 {
        return None;
    }
    let scaling = pn / p1;
    (scaling < 0.75 * threads as f64).then(|| {
        format!(
            "warning: {threads} threads reached only {scaling:.1}x the one-thread FMA peak \
             (ideal {threads}x): the cores are shared with other work (or are SMT siblings), \
             so multi-thread times are slower and noisier than on an idle machine"
        )
    })
}

/// Whether a step is a convolution run as Winograd (fewer multiplications than the direct
/// convolution its FLOP count describes).
fn is_winograd(d: &StepDesc) -> bool {
    matches!(d, StepDesc::Conv(c) if c.flags & (abi::FLAG_WINOGRAD | abi::FLAG_WINOGRAD4) != 0)
}

fn shape(d: &StepDesc) -> String {
    match d {
        StepDesc::Conv(d) => format!(
            "conv {}x{}/{} {}->{} @{}x{}",
            d.kernel_h, d.kernel_w, d.stride_h, d.in_channels, d.out_channels, d.out_h, d.out_w
        ),
        StepDesc::Pool(d) => format!(
            "pool {}x{}/{} {} @{}x{}",
            d.kernel_h, d.kernel_w, d.stride_h, d.channels, d.out_h, d.out_w
        ),
        StepDesc::Linear(d) => format!(
            "linear {}->{} (avg {}x{})",
            d.in_channels, d.out_features, d.in_h, d.in_w
        ),
    }
}

fn gflops(flops: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        flops as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// The profile as text: one line per kernel, then the sums per layer kind.
pub fn render(
    name: &str,
    p: &Profile,
    run_seconds: f64,
    peak1: Option<f64>,
    peak: Option<f64>,
    iters: usize,
) -> String {
    let mut out = String::new();
    let mode = if p.batch < p.threads {
        "each convolution split between the threads"
    } else {
        "images tiled over the threads"
    };
    let _ = writeln!(
        out,
        "profile of {name}: batch {}, {} thread(s) ({mode}), mean of {iters} profiled runs",
        p.batch, p.threads
    );
    let _ = writeln!(
        out,
        "{:>5}  {:<44} {:<34} {:>10} {:>9}",
        "step", "label", "kernel", "ms", "GFLOP/s"
    );
    for (i, s) in p.steps.iter().enumerate() {
        let _ = writeln!(
            out,
            "{i:>5}  {:<44} {:<34} {:>10.4} {:>9.1}",
            s.label,
            shape(&s.desc),
            s.seconds * 1e3,
            gflops(s.flops, s.seconds)
        );
    }
    let total: f64 = p.steps.iter().map(|s| s.seconds).sum();
    let flops: u64 = p.steps.iter().map(|s| s.flops).sum();
    let pct = |g: f64| peak.map_or_else(|| "–".to_string(), |pk| format!("{:.1}%", 100.0 * g / pk));
    let _ = writeln!(out, "\nper layer kind:");
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>10} {:>7} {:>9} {:>11}",
        "kind", "steps", "ms", "share", "GFLOP/s", "% of peak"
    );
    for (kind, seconds, f) in p.by_kind() {
        let steps = p.steps.iter().filter(|s| s.kind == kind).count();
        let g = gflops(f, seconds);
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>10.3} {:>6.1}% {:>9.1} {:>11}",
            kind.name(),
            steps,
            seconds * 1e3,
            100.0 * seconds / total.max(f64::MIN_POSITIVE),
            g,
            pct(g)
        );
    }
    let g = gflops(flops, total);
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>10.3} {:>6.1}% {:>9.1} {:>11}",
        "all kernels",
        p.steps.len(),
        total * 1e3,
        100.0,
        g,
        pct(g)
    );
    let _ = writeln!(
        out,
        "\nwhole batch: {:.3} ms profiled, {:.3} ms by Session::run (median of {iters}, {:.1} GFLOP/s, {})",
        p.wall_seconds * 1e3,
        run_seconds * 1e3,
        gflops(flops, run_seconds),
        pct(gflops(flops, run_seconds))
    );
    let show = |x: Option<f64>| x.map_or_else(|| "not measured".into(), |v| format!("{v:.1}"));
    let _ = writeln!(
        out,
        "FMA peak measured now (GFLOP/s, AVX2 8-wide FMA): 1 thread {}, {} threads {}",
        show(peak1),
        p.threads,
        show(peak)
    );
    let _ = writeln!(
        out,
        "GFLOP/s count 2 x multiply-accumulates of the direct convolution; a kernel's time is its calls' time on all threads divided by the threads running at once."
    );
    let winograd = p.steps.iter().filter(|s| is_winograd(&s.desc)).count();
    if winograd > 0 {
        let _ = writeln!(
            out,
            "{winograd} convolution(s) run as Winograd F(2x2) or F(4x4), which multiply 2.25x or 4x less than the direct convolution their FLOPs count: their GFLOP/s and % of peak are direct-convolution equivalents and can pass 100%."
        );
    }
    if let Some(w) = contention_warning(p.threads, peak1, peak) {
        let _ = writeln!(out, "{w}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::contention_warning;

    #[test]
    fn contention_is_reported_only_when_threads_do_not_scale() {
        assert_eq!(contention_warning(2, Some(50.0), Some(95.0)), None);
        assert_eq!(contention_warning(1, Some(50.0), Some(20.0)), None);
        assert_eq!(contention_warning(2, None, Some(95.0)), None);
        let w = contention_warning(2, Some(50.0), Some(45.0)).expect("2 threads at 0.9x");
        assert!(w.starts_with("warning: 2 threads reached only 0.9x"), "{w}");
    }
}
